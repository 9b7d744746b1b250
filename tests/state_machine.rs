//! State machine application: in order, exactly once, across restarts (the guide's
//! "state machine application" and "idempotent application" tests, pitfall 1).

mod common;

use common::*;

/// Proves commands are applied in sequence and the applied index follows them.
#[test]
fn state_machine_application() {
    let c = Cluster::new(1);
    c.wait_leader();
    c.propose_ok(put("key1", "value1"));
    c.propose_ok(put("key2", "value2"));
    let s = c.states[&1].state.lock();
    assert_eq!(s.map.get("key1").map(String::as_str), Some("value1"));
    assert_eq!(s.map.get("key2").map(String::as_str), Some("value2"));
    assert_eq!(s.applied, c.status(1).applied);
    let indexes: Vec<u64> = s.log.iter().map(|(i, _)| *i).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "applied out of order: {indexes:?}"
    );
}

/// Proves idempotent application across a restart: a node whose state machine already
/// applied index N resumes at N+1 and never hands an entry at or below N to it again,
/// although its log still holds them.
#[test]
fn restart_applies_nothing_twice() {
    let mut c = Cluster::new(3);
    c.wait_leader();
    for i in 0..30 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    let leader = c.wait_leader();
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let applied_before = c.states[&victim].state.lock().applied;
    c.kill(victim);
    c.start_node(victim, &[1, 2, 3]);
    c.propose_ok(put("after", "restart"));
    let leader = c.wait_leader();
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    assert!(c.states[&victim].state.lock().applied > applied_before);
    c.assert_no_double_apply();
    assert_eq!(c.map_of(victim), c.map_of(leader));
}

/// Proves a state machine that loses everything on restart (in memory) is rebuilt to
/// the same state from the log store.
#[test]
fn volatile_state_machine_is_rebuilt_from_the_log() {
    let mut c = Cluster::new(3);
    c.wait_leader();
    for i in 0..20 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    let leader = c.wait_leader();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let commit = c.status(leader).commit;
    c.wait_applied(&[victim], commit);
    c.kill(victim);
    c.states.insert(victim, Kv::default()); // the state is gone
    c.start_node(victim, &[1, 2, 3]);
    let commit = c.status(leader).commit;
    c.wait_applied(&[victim], commit);
    assert_eq!(c.map_of(victim), c.map_of(leader));
}
