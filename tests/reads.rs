//! Reads (Raft paper §8, ReadIndex; raft-rs read_index and lease reads): linearizable
//! reads on leaders and followers, lease reads, stale reads, deadlines.

mod common;

use std::time::Duration;

use common::*;
use raftnode::{ReadConsistency, ReadError};

fn get(key: &str) -> impl FnOnce(&Kv) -> Option<String> + Send + 'static {
    let key = key.to_string();
    move |kv: &Kv| kv.state.lock().map.get(&key).cloned()
}

/// Proves a leader cut off in a minority cannot serve a linearizable read (it times
/// out: no quorum confirms its read index), while the majority's new leader serves the
/// newer value; a stale read on the old leader returns the old value (§8).
#[test]
fn partitioned_leader_cannot_serve_linearizable_reads() {
    let c = Cluster::new(3);
    let old = c.wait_leader();
    c.propose_ok(put("x", "old"));
    c.wait_applied(&[1, 2, 3], c.status(old).commit);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    c.network.partition(&[old], &rest);

    let read = c.node(old).read(
        ReadConsistency::Linearizable,
        Duration::from_millis(500),
        get("x"),
    );
    assert_eq!(read, Err(ReadError::Timeout));

    let new = c.wait_leader_among(&rest);
    c.node(new)
        .propose(put("x", "new"))
        .unwrap()
        .wait_timeout(DEADLINE)
        .expect("majority commits");
    assert_eq!(c.read(new, "x").unwrap().as_deref(), Some("new"));
    let follower = rest.iter().copied().find(|id| *id != new).unwrap();
    assert_eq!(c.read(follower, "x").unwrap().as_deref(), Some("new"));

    assert_eq!(
        c.node(old).read_stale(get("x")).unwrap().as_deref(),
        Some("old"),
        "a stale read shows the minority's old state"
    );
    assert_eq!(
        c.node(old)
            .read(ReadConsistency::Stale, Duration::from_secs(1), get("x"))
            .unwrap()
            .as_deref(),
        Some("old")
    );
    assert_eq!(
        c.node(old).read(
            ReadConsistency::Linearizable,
            Duration::from_millis(300),
            get("x")
        ),
        Err(ReadError::Timeout)
    );

    c.network.heal();
    wait_until("old leader catches up", || {
        c.read(old, "x").ok().flatten().as_deref() == Some("new")
    });
}

fn lease_on(c: &mut raftnode::Config) {
    c.lease_reads = true;
}

/// Proves lease reads are served by the leader when `lease_reads` is on and see the
/// latest acknowledged write; followers answer `NotLeader` with the leader's id.
#[test]
fn lease_reads_work_on_the_leader_only() {
    let c = Cluster::with_config(3, lease_on);
    let leader = c.wait_leader();
    for i in 0..20 {
        let v = i.to_string();
        c.node(leader)
            .propose(put("k", &v))
            .unwrap()
            .wait_timeout(DEADLINE)
            .unwrap();
        let got = c
            .node(leader)
            .read(ReadConsistency::Lease, DEADLINE, get("k"))
            .unwrap();
        assert_eq!(got, Some(v));
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(
        c.node(follower)
            .read(ReadConsistency::Lease, DEADLINE, get("k")),
        Err(ReadError::NotLeader {
            leader: Some(leader)
        })
    );
}

/// Proves lease reads are refused with `LeaseNotEnabled` when `lease_reads` is off (the
/// default), on leader and followers alike.
#[test]
fn lease_reads_refused_when_not_enabled() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    for id in 1..=3 {
        assert_eq!(
            c.node(id).read(ReadConsistency::Lease, DEADLINE, get("k")),
            Err(ReadError::LeaseNotEnabled),
            "node {id} (leader {leader})"
        );
    }
}

/// Proves a linearizable read on a follower (read index forwarded to the leader, then
/// served once the follower applied up to it) sees every write acknowledged before the
/// read began.
#[test]
fn follower_linearizable_reads_see_acknowledged_writes() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for i in 0..50 {
        let v = i.to_string();
        c.node(leader)
            .propose(put("k", &v))
            .unwrap()
            .wait_timeout(DEADLINE)
            .unwrap();
        let follower = followers[i % 2];
        let got = c
            .node(follower)
            .read(ReadConsistency::Linearizable, DEADLINE, get("k"))
            .unwrap();
        assert_eq!(got, Some(v), "follower {follower} read a stale value");
    }
    assert!(c.status(followers[0]).metrics.reads_served >= 25);
}

/// Proves a zero deadline is refused with `ZeroDeadline` at every consistency level,
/// without reaching the driver.
#[test]
fn zero_deadline_read_is_refused() {
    let c = Cluster::new(1);
    c.wait_leader();
    for consistency in [
        ReadConsistency::Linearizable,
        ReadConsistency::Lease,
        ReadConsistency::Stale,
    ] {
        assert_eq!(
            c.node(1).read(consistency, Duration::ZERO, get("k")),
            Err(ReadError::ZeroDeadline)
        );
    }
}

/// Proves a read on a stopped node fails with `Stopped` instead of hanging.
#[test]
fn read_on_stopped_node_is_stopped() {
    let c = Cluster::new(1);
    c.wait_leader();
    let node = c.node(1).clone();
    node.shutdown();
    assert_eq!(
        node.read(ReadConsistency::Linearizable, DEADLINE, get("k")),
        Err(ReadError::Stopped)
    );
    assert_eq!(node.read_stale(get("k")), Err(ReadError::Stopped));
}
