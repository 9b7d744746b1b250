//! Reads on a leader cut off from its group, on the real runtime (docs/reads.md): a
//! `Linearizable` read never returns the old value, whatever `lease_reads` says; a `Lease`
//! read returns it only while the lease provably holds, before any new leader could
//! exist. The bug switches that put 0.1's lease bugs back make these checks fail.
#![cfg(feature = "testing")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raftnode::testing::sim::Bugs;
use raftnode::{ChannelNetwork, Config, MemLogStore, Node, ReadConsistency, Role};

/// A three-node cluster on the in-process network, started with `bugs`.
struct Group {
    network: ChannelNetwork,
    nodes: BTreeMap<u64, Node<Kv>>,
    config: Config,
    /// The delay on every link, put back after each round's heal.
    delay: Duration,
}

/// How a round cuts the old leader off.
#[derive(Clone, Copy)]
enum Cut {
    /// A partition: nothing crosses in either direction, in flight or not.
    Both,
    /// Only the links from the old leader are cut; the links to it are slow (the given
    /// delay), so confirmations sent before the cut still arrive after it.
    FromLeader(Duration),
}

impl Group {
    fn start(lease_reads: bool, bugs: Bugs, delay: Duration) -> Group {
        let network = ChannelNetwork::new();
        network.set_delay(delay);
        let mut nodes = BTreeMap::new();
        let mut config = test_config(1, &[1, 2, 3]);
        config.lease_reads = lease_reads;
        for id in 1..=3 {
            let mut c = config.clone();
            c.id = id;
            let node = Node::start_with_bugs(
                c,
                MemLogStore::new(),
                Kv::default(),
                network.transport(id),
                &logger(),
                &bugs,
            )
            .expect("node starts");
            nodes.insert(id, node);
        }
        Group {
            network,
            nodes,
            config,
            delay,
        }
    }

    fn leader_among(&self, ids: &[u64], above_term: u64) -> u64 {
        let mut found = None;
        wait_until("a leader", || {
            found = ids.iter().copied().find(|id| {
                self.nodes[id]
                    .status()
                    .is_ok_and(|s| s.role == Role::Leader && s.term > above_term)
            });
            found.is_some()
        });
        found.expect("found")
    }

    /// Proposes on `leader` until one proposal is acknowledged.
    fn write(&self, leader: u64, key: &str, value: &str) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no write of {key}={value} acknowledged"
            );
            let acked = self.nodes[&leader]
                .propose(put(key, value))
                .ok()
                .and_then(|mut h| h.wait_timeout(Duration::from_secs(2)).ok());
            if acked.is_some() {
                return Instant::now();
            }
        }
    }
}

#[derive(Debug)]
struct ReadRecord {
    consistency: ReadConsistency,
    invoked: Instant,
    returned: Instant,
    value: Option<Option<String>>,
}

/// One round: the leader is cut off, a reader hammers it with reads while the other two
/// elect a new leader and commit `x = new`. Returns what went wrong, if anything.
fn round(g: &Group, n: usize, how: Cut) -> Result<(), String> {
    let old = g.leader_among(&[1, 2, 3], 0);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    if let Cut::FromLeader(slow) = how {
        for &f in &rest {
            g.network.set_link_delay(f, old, slow);
        }
    }
    let old_value = format!("old-{n}");
    let new_value = format!("new-{n}");
    g.write(old, "x", &old_value);
    let term = g.nodes[&old].status().map_err(|e| e.to_string())?.term;
    if g.config.lease_reads {
        // Warm the lease: a lease read now is served by the leader.
        wait_until("a lease read on the leader", || {
            g.nodes[&old]
                .read(ReadConsistency::Lease, Duration::from_secs(1), get("x"))
                .is_ok()
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let node = g.nodes[&old].clone();
        let stop = stop.clone();
        let lease = g.config.lease_reads;
        std::thread::spawn(move || {
            let mut records = Vec::new();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let consistency = if lease && k.is_multiple_of(2) {
                    ReadConsistency::Lease
                } else {
                    ReadConsistency::Linearizable
                };
                let invoked = Instant::now();
                let value = node
                    .read(consistency, Duration::from_millis(100), get("x"))
                    .ok();
                records.push(ReadRecord {
                    consistency,
                    invoked,
                    returned: Instant::now(),
                    value,
                });
            }
            records
        })
    };
    // Let the reader start before the cut, so it reads across it.
    wait_until("the reader runs", || {
        g.nodes[&old]
            .status()
            .is_ok_and(|s| s.metrics.reads_served > 0)
    });
    let cut = Instant::now();
    match how {
        Cut::Both => g.network.partition(&[old], &rest),
        Cut::FromLeader(_) => rest.iter().for_each(|&f| g.network.cut(old, f)),
    }
    let new = g.leader_among(&rest, term);
    let acked = g.write(new, "x", &new_value);
    // Keep reading on the old leader for a while after the new value is acknowledged.
    let until = Instant::now() + Duration::from_millis(150);
    wait_until("reads after the new write", || Instant::now() >= until);
    stop.store(true, Ordering::Relaxed);
    let records = reader.join().expect("reader thread");
    g.network.heal();
    g.network.set_delay(g.delay);
    g.network.set_delay(g.delay);
    wait_until("the old leader catches up", || {
        g.nodes[&old]
            .read_stale(get("x"))
            .is_ok_and(|v| v.as_deref() == Some(new_value.as_str()))
    });

    // No other leader can exist before a follower's election timeout ran out after the
    // last round the old leader sent, which was before the cut.
    let new_leader_possible = cut + g.config.tick_interval * (g.config.election_ticks as u32 - 1);
    for r in &records {
        let Some(value) = &r.value else { continue };
        let stale = value.as_deref() == Some(old_value.as_str());
        match r.consistency {
            ReadConsistency::Linearizable if r.invoked > cut => {
                return Err(format!(
                    "round {n}: a Linearizable read invoked {:?} after the cut returned {value:?}",
                    r.invoked - cut
                ));
            }
            ReadConsistency::Lease if stale && r.returned >= new_leader_possible => {
                return Err(format!(
                    "round {n}: a Lease read returned the old value {:?} after the cut, when \
                     a new leader could exist after {:?}",
                    r.returned - cut,
                    new_leader_possible - cut
                ));
            }
            _ if stale && r.invoked > acked => {
                return Err(format!(
                    "round {n}: a {:?} read invoked after x = {new_value} was acknowledged \
                     returned {old_value}",
                    r.consistency
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn rounds(
    lease_reads: bool,
    bugs: Bugs,
    delay: Duration,
    how: Cut,
    count: usize,
) -> Result<(), String> {
    let g = Group::start(lease_reads, bugs, delay);
    (0..count).try_for_each(|n| round(&g, n, how))
}

/// The one-way cut with slow confirmations: where a lease measured from the wrong
/// instant outlives the followers' election timeouts.
const SLOW_CONFIRMATIONS: Cut = Cut::FromLeader(Duration::from_millis(150));

/// Must-show of docs/reads.md: 20 rounds with `lease_reads` on, the old leader never
/// answers a `Linearizable` read after the cut, and answers a `Lease` read with the
/// old value only before a new leader could exist.
#[test]
fn cut_off_leader_keeps_its_word_with_leases() {
    rounds(true, Bugs::default(), Duration::ZERO, Cut::Both, 20).unwrap();
}

/// The same 20 rounds with `lease_reads` off.
#[test]
fn cut_off_leader_keeps_its_word_without_leases() {
    rounds(false, Bugs::default(), Duration::ZERO, Cut::Both, 20).unwrap();
}

/// With slow links the lease is held to the same bound.
#[test]
fn cut_off_leader_keeps_its_word_on_slow_links() {
    rounds(
        true,
        Bugs::default(),
        Duration::from_millis(30),
        Cut::Both,
        5,
    )
    .unwrap();
}

/// Putting back 0.1's bug (`Linearizable` reads answered by raft-rs's lease when
/// `lease_reads` is on) makes the rounds fail.
#[test]
fn linearizable_from_raft_lease_is_caught() {
    let bugs = Bugs {
        linearizable_from_raft_lease: true,
        ..Bugs::default()
    };
    let err =
        rounds(true, bugs, Duration::ZERO, Cut::Both, 20).expect_err("the bug must be caught");
    println!("caught: {err}");
}

/// A one-way cut with confirmations still arriving after it: the lease, measured from
/// each round's send, still ends before a new leader can exist.
#[test]
fn cut_off_leader_keeps_its_word_with_late_confirmations() {
    rounds(
        true,
        Bugs::default(),
        Duration::ZERO,
        SLOW_CONFIRMATIONS,
        10,
    )
    .unwrap();
}

/// Measuring the lease from the confirmation's receipt instead of the round's send makes
/// it outlast the followers' election timeouts when confirmations are slow: caught.
#[test]
fn lease_from_receipt_is_caught() {
    let bugs = Bugs {
        lease_from_receipt: true,
        ..Bugs::default()
    };
    let err = rounds(true, bugs, Duration::ZERO, SLOW_CONFIRMATIONS, 20)
        .expect_err("the bug must be caught");
    println!("caught: {err}");
}
