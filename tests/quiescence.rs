//! Quiescence (`Config::quiesce_after_timeouts`): an idle group stops ticking, and it
//! stays safe and live under partitions and a dead leader (docs/multi-raft.md,
//! "Quiescence").

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftnode::testing::sim::Bugs;
use raftnode::{ChannelNetwork, MemLogStore, Node, ReadConsistency, Role};

/// `test_config`'s election timeout: 20 ticks of 10 ms.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(200);

struct Group {
    network: ChannelNetwork,
    nodes: Vec<Node<Kv>>,
}

impl Group {
    /// Three voters that go quiet after one election timeout with nothing to do.
    fn start(lease_reads: bool, bugs: &Bugs) -> Group {
        let network = ChannelNetwork::new();
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut config = test_config(id, &voters);
                config.quiesce_after_timeouts = 1;
                config.lease_reads = lease_reads;
                Node::start_with_bugs(
                    config,
                    MemLogStore::new(),
                    Kv::default(),
                    network.transport(id),
                    &logger(),
                    bugs,
                )
                .expect("node starts")
            })
            .collect();
        Group { network, nodes }
    }

    fn node(&self, id: u64) -> &Node<Kv> {
        &self.nodes[(id - 1) as usize]
    }

    /// The node that leads among `ids`, once one does.
    fn leader_among(&self, ids: &[u64]) -> u64 {
        let mut leader = None;
        wait_until("a leader", || {
            leader = ids
                .iter()
                .copied()
                .find(|&id| self.node(id).status().is_ok_and(|s| s.role == Role::Leader));
            leader.is_some()
        });
        leader.expect("found")
    }

    fn wait_quiet(&self, ids: &[u64]) {
        wait_until("the group goes quiet", || {
            ids.iter()
                .all(|&id| self.node(id).status().is_ok_and(|s| s.quiet))
        });
    }

    /// Writes `key = value` through whichever of `ids` leads, retrying (each try also
    /// wakes the node it reaches) until `deadline`. Returns when it was applied.
    fn write_through(&self, ids: &[u64], key: &str, value: &str, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            for &id in ids {
                let outcome = self
                    .node(id)
                    .propose(put(key, value))
                    .and_then(|mut h| h.wait_timeout(Duration::from_secs(1)));
                if outcome.is_ok() {
                    return true;
                }
            }
            // Back off between rounds of tries (a refused proposal returns at once);
            // bounded by `deadline`.
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Proves an idle group goes quiet on every node and stops ticking: its term and
/// elections stay put while nothing happens, and a write wakes it.
#[test]
fn an_idle_group_goes_quiet_and_a_write_wakes_it() {
    let g = Group::start(false, &Bugs::default());
    let leader = g.leader_among(&[1, 2, 3]);
    assert!(g.write_through(&[leader], "a", "1", Instant::now() + DEADLINE));
    g.wait_quiet(&[1, 2, 3]);
    let before: Vec<_> = g.nodes.iter().map(|n| n.status().unwrap()).collect();
    // Sampling over a fixed window of five election timeouts: nothing may move.
    let until = Instant::now() + 5 * ELECTION_TIMEOUT;
    while Instant::now() < until {
        for (n, b) in g.nodes.iter().zip(&before) {
            let s = n.status().unwrap();
            assert!(s.quiet, "node {} woke with nothing to do", s.id);
            assert_eq!(s.term, b.term);
            assert_eq!(s.metrics.elections_started, b.metrics.elections_started);
        }
        // The sleep is the point: nothing may change over a fixed window (bounded by
        // `until`), sampled every 20 ms; there is no event to wait for.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(g.write_through(&[leader], "a", "2", Instant::now() + DEADLINE));
    for n in &g.nodes {
        wait_until("every node applies the write", || {
            n.read(ReadConsistency::Stale, DEADLINE, get("a"))
                .ok()
                .flatten()
                .as_deref()
                == Some("2")
        });
    }
    assert!(g
        .nodes
        .iter()
        .all(|n| n.status().unwrap().metrics.quiesced >= 1));
    for n in &g.nodes {
        n.kill();
    }
}

/// The group goes quiet, its leader dies, and a client writes through a follower: how
/// long until the write is applied, or `None` when it was not within 20 election
/// timeouts.
fn recovers_from_a_dead_quiet_leader(bugs: &Bugs) -> Option<Duration> {
    let g = Group::start(false, bugs);
    let leader = g.leader_among(&[1, 2, 3]);
    assert!(g.write_through(&[leader], "a", "1", Instant::now() + DEADLINE));
    g.wait_quiet(&[1, 2, 3]);
    g.network.isolate(leader);
    g.node(leader).kill();
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let started = Instant::now();
    let done = g.write_through(&rest, "a", "2", started + 20 * ELECTION_TIMEOUT);
    let took = started.elapsed();
    for n in &g.nodes {
        n.kill();
    }
    done.then_some(took)
}

/// Proves a quiet group whose leader died recovers on the next request: a proposal to
/// a follower wakes it, it campaigns, and the write is applied.
#[test]
fn a_quiet_group_whose_leader_died_recovers_on_the_next_request() {
    let took = recovers_from_a_dead_quiet_leader(&Bugs::default())
        .expect("no write applied within 20 election timeouts of the leader's death");
    eprintln!("write applied {took:?} after the quiet leader died");
}

/// With requests not waking a quiet group (bug switch `quiet_wakes_only_on_messages`),
/// the same group never recovers: the test above can fail.
#[test]
fn without_requests_waking_it_a_quiet_group_never_notices_its_dead_leader() {
    let bugs = Bugs {
        quiet_wakes_only_on_messages: true,
        ..Bugs::default()
    };
    assert_eq!(recovers_from_a_dead_quiet_leader(&bugs), None);
}

/// The group goes quiet with `x = old`; its leader is cut off; a write through a
/// follower elects a new leader and commits `x = new`; then the old leader is asked
/// for `x` with a lease read and a linearizable read. Returns the reads that answered
/// `old` after `new` was acknowledged.
fn stale_reads_on_a_cut_off_quiet_leader(bugs: &Bugs) -> Vec<String> {
    let g = Group::start(true, bugs);
    let old = g.leader_among(&[1, 2, 3]);
    assert!(g.write_through(&[old], "x", "old", Instant::now() + DEADLINE));
    // A lease read warms the lease, then the group goes quiet with it.
    wait_until("a lease read on the leader", || {
        g.node(old)
            .read(ReadConsistency::Lease, Duration::from_secs(1), get("x"))
            .is_ok()
    });
    g.wait_quiet(&[1, 2, 3]);
    g.network.isolate(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    assert!(
        g.write_through(&rest, "x", "new", Instant::now() + DEADLINE),
        "the majority side never committed"
    );
    let mut stale = Vec::new();
    for consistency in [ReadConsistency::Lease, ReadConsistency::Linearizable] {
        if let Ok(Some(v)) = g
            .node(old)
            .read(consistency, Duration::from_millis(500), get("x"))
        {
            if v == "old" {
                stale.push(format!("{consistency:?}"));
            }
        }
    }
    for n in &g.nodes {
        n.kill();
    }
    stale
}

/// Proves a quiet leader that was cut off answers no stale read once another leader
/// committed: its lease ran out while it was quiet (a quiet group makes no quorum
/// rounds), so it must reach a quorum, and cannot.
#[test]
fn a_cut_off_quiet_leader_serves_no_stale_read() {
    let stale = stale_reads_on_a_cut_off_quiet_leader(&Bugs::default());
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

/// With the lease stretched over the quiet time (bug switch `lease_kept_while_quiet`)
/// the cut-off leader answers the lease read with the overwritten value: the test
/// above can fail.
#[test]
fn with_the_lease_kept_while_quiet_a_cut_off_leader_serves_stale_reads() {
    let bugs = Bugs {
        lease_kept_while_quiet: true,
        ..Bugs::default()
    };
    let stale = stale_reads_on_a_cut_off_quiet_leader(&bugs);
    assert_eq!(stale, vec!["Lease".to_string()]);
}
