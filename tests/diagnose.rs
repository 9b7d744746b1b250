//! Diagnosis (docs/operations.md, "Diagnosis"): each finding appears on a real cluster
//! in the state it names, with its evidence, and is gone once the state is healed; a
//! healthy cluster reports none. The findings that need a slow disk, a lossy
//! transport or a slow state machine are in `tests/diagnose_faults.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftnode::{Finding, FindingKind, MembershipChange, Node, ProposeError};

/// `test_config`'s election timeout is 200 ms; findings need 3 of them.
const WINDOW: Duration = Duration::from_millis(600);

fn findings(node: &Node<Kv>) -> Vec<Finding> {
    node.diagnose().unwrap_or_default()
}

fn has(node: &Node<Kv>, kind: FindingKind) -> Option<Finding> {
    findings(node).into_iter().find(|f| f.kind == kind)
}

/// Polls until `node` reports `kind`, and returns that finding.
fn wait_for(node: &Node<Kv>, kind: FindingKind) -> Finding {
    let mut found = None;
    wait_until(&format!("node {} reports {kind}", node.id()), || {
        found = has(node, kind);
        found.is_some()
    });
    found.expect("found")
}

fn wait_gone(node: &Node<Kv>, kind: FindingKind) {
    wait_until(
        &format!("node {} no longer reports {kind}", node.id()),
        || has(node, kind).is_none(),
    );
}

/// A healthy cluster (elected, writing) reports nothing on any node, and keeps
/// reporting nothing for longer than the diagnosis window.
#[test]
fn healthy_cluster_reports_nothing() {
    let c = Cluster::new(3);
    c.wait_leader();
    for i in 0..20 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    wait_until("no node reports a finding", || {
        (1..=3).all(|id| findings(c.node(id)).is_empty())
    });
    let until = Instant::now() + 2 * WINDOW;
    while Instant::now() < until {
        c.propose_ok(put("k", "v"));
        for id in 1..=3 {
            let f = findings(c.node(id));
            assert!(f.is_empty(), "node {id}: {f:?}");
        }
        // The sleep is the point: samples across two diagnosis windows (bounded by
        // `until`) in which nothing may be found; nothing is being waited for.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two of three voters down: the survivor knows no leader, names the silent voters,
/// and sees an election storm; both end once they are back.
#[test]
fn lost_quorum_and_election_storm_are_reported_and_clear() {
    let mut c = Cluster::new(3);
    c.wait_leader();
    c.propose_ok(put("a", "1"));
    c.kill(2);
    c.kill(3);
    let f = wait_for(c.node(1), FindingKind::NoQuorum);
    assert!(
        f.evidence.contains("[2, 3]"),
        "silent voters named: {}",
        f.evidence
    );
    assert_eq!(f.remedy, FindingKind::NoQuorum.remedy());
    let storm = wait_for(c.node(1), FindingKind::ElectionStorm);
    assert!(storm.evidence.contains("elections"), "{}", storm.evidence);
    c.start_node(2, &[1, 2, 3]);
    c.start_node(3, &[1, 2, 3]);
    c.wait_leader();
    c.propose_ok(put("b", "2"));
    for id in 1..=3 {
        wait_gone(c.node(id), FindingKind::NoQuorum);
        wait_gone(c.node(id), FindingKind::ElectionStorm);
    }
}

/// A joint change whose incoming voters 4 and 5 never run leaves the group joint (the
/// incoming set has no majority); every member reports it, naming the silent voters,
/// until 4 and 5 start and the group leaves the joint configuration.
#[test]
fn stuck_joint_configuration_is_reported_and_clears() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    c.propose_ok(put("a", "1"));
    let out = if leader == 3 { 2 } else { 3 };
    let joint = c
        .node(leader)
        .change_membership(
            &[
                MembershipChange::AddVoterNow(4),
                MembershipChange::AddVoterNow(5),
                MembershipChange::Remove(out),
            ],
            "",
            DEADLINE,
        )
        .expect("the joint change applies");
    assert!(joint.is_joint());
    let f = wait_for(c.node(leader), FindingKind::StuckJoint);
    assert!(
        f.evidence.contains('4') && f.evidence.contains('5'),
        "{}",
        f.evidence
    );
    c.start_node(4, &[]);
    c.start_node(5, &[]);
    let members: Vec<u64> = (1..=5).filter(|id| *id != out).collect();
    wait_until("the group leaves the joint configuration", || {
        members.iter().all(|id| {
            c.node(*id)
                .status()
                .is_ok_and(|s| s.voters_outgoing.is_empty())
        })
    });
    for id in &members {
        wait_gone(c.node(*id), FindingKind::StuckJoint);
    }
}

/// A learner that never runs stays behind; the leader names it until it starts and
/// catches up.
#[test]
fn learner_behind_is_reported_and_clears() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    c.node(leader)
        .add_learner(9, "", DEADLINE)
        .expect("learner added");
    for i in 0..20 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    let f = wait_for(c.node(leader), FindingKind::LearnerBehind);
    assert!(f.evidence.contains("learner 9"), "{}", f.evidence);
    // Not a finding of the followers: only the leader knows the learner's progress.
    c.start_node(9, &[]);
    let commit = c.status(leader).commit;
    c.wait_applied(&[9], commit);
    // Keep the log moving so the leader hears from node 9 at the new commit.
    c.propose_ok(put("after", "v"));
    wait_gone(c.node(leader), FindingKind::LearnerBehind);
}

fn tiny_queue(c: &mut raftnode::Config) {
    c.max_pending_requests = 4;
}

/// Flooding a node whose queue holds 4 requests gets some refused as `Busy`; the node
/// reports back-pressure with the count, and stops once the window has passed without
/// refusals.
#[test]
fn back_pressure_is_reported_and_clears() {
    let c = Cluster::with_config(3, tiny_queue);
    let leader = c.wait_leader();
    let node = c.node(leader);
    let mut busy = 0;
    let mut handles = Vec::new();
    for i in 0..2_000 {
        match node.propose(put(&format!("k{i}"), "v")) {
            Ok(h) => handles.push(h),
            Err(ProposeError::Busy) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0, "the flood was refused at least once");
    for mut h in handles {
        let _ = h.wait_timeout(DEADLINE);
    }
    let f = wait_for(node, FindingKind::BackPressure);
    assert!(f.evidence.contains("Busy"), "{}", f.evidence);
    assert!(c.status(leader).metrics.requests_busy >= busy);
    wait_gone(node, FindingKind::BackPressure);
}
