//! Log replication and application (Raft paper §5.3), proposals and their outcomes.

mod common;

use std::time::Duration;

use common::*;
use raftnode::ProposeError;

/// Proves entries proposed on the leader are applied on every node, in the same order,
/// exactly once (§5.3 log matching, state machine safety).
#[test]
fn proposals_are_applied_identically_on_every_node() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            c.node(leader)
                .propose(put(&format!("k{i}"), &i.to_string()))
                .unwrap()
        })
        .collect();
    for mut h in handles {
        h.wait_timeout(DEADLINE).unwrap();
    }
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    let reference = c.states[&leader].state.lock().log.clone();
    assert_eq!(reference.len(), 200);
    for id in 1..=3 {
        assert_eq!(
            c.states[&id].state.lock().log,
            reference,
            "node {id} applied another sequence"
        );
    }
    c.assert_no_double_apply();
}

/// Proves the response is the state machine's own answer for this command.
#[test]
fn proposal_resolves_with_state_machine_response() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let n = c.node(leader);
    assert_eq!(n.propose(put("a", "1")).unwrap().wait().unwrap(), None);
    assert_eq!(
        n.propose(put("a", "2")).unwrap().wait().unwrap(),
        Some("1".into())
    );
}

/// Proves a proposal to a follower is refused with NotLeader and the right leader hint,
/// and is never forwarded silently.
#[test]
fn proposal_to_follower_gets_not_leader_with_hint() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let err = c
        .node(follower)
        .propose(put("x", "1"))
        .unwrap()
        .wait_timeout(DEADLINE)
        .unwrap_err();
    assert_eq!(
        err,
        ProposeError::NotLeader {
            leader: Some(leader)
        }
    );
    // Nothing was applied for it anywhere.
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    assert!(!c.map_of(leader).contains_key("x"));
}

/// Proves a proposal whose entry is overwritten after a leader change never reports
/// success: the old leader, isolated, appends it; the majority elects a new leader and
/// commits other entries at that index; the old proposal fails.
#[test]
fn overwritten_proposal_never_reports_success() {
    let c = Cluster::new(3);
    let old = c.wait_leader();
    c.propose_ok(put("base", "0"));
    c.network.isolate(old);
    let mut doomed = c.node(old).propose(put("doomed", "1")).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = c.wait_leader_among(&others);
    for i in 0..5 {
        c.node(new)
            .propose(put(&format!("new{i}"), "v"))
            .unwrap()
            .wait_timeout(DEADLINE)
            .unwrap();
    }
    c.network.heal();
    let outcome = doomed.wait_timeout(DEADLINE);
    assert!(
        matches!(
            outcome,
            Err(ProposeError::OutcomeUnknown { .. }) | Err(ProposeError::Dropped)
        ),
        "the overwritten proposal reported {outcome:?}"
    );
    let leader = c.wait_leader();
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    for id in 1..=3 {
        assert!(
            !c.map_of(id).contains_key("doomed"),
            "node {id} applied the overwritten entry"
        );
    }
}

/// Proves many concurrent proposals all resolve and share Readies (batching).
#[test]
fn concurrent_proposers_all_resolve() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let node = c.node(leader).clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let node = node.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    node.propose(put(&format!("t{t}-{i}"), "v"))
                        .unwrap()
                        .wait_timeout(DEADLINE)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = c.status(leader);
    assert_eq!(c.map_of(leader).len(), 800);
    assert!(
        s.metrics.readies < 800 * 2,
        "no batching at all? {:?}",
        s.metrics
    );
    let _ = Duration::ZERO;
}

/// Proves an async caller can await a proposal.
#[test]
fn proposal_handle_is_a_future() {
    let c = Cluster::new(1);
    let leader = c.wait_leader();
    let h = c.node(leader).propose(put("f", "1")).unwrap();
    let r = futures::executor::block_on(h);
    assert_eq!(r, Ok(None));
}
