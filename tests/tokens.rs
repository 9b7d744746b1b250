//! Write tokens: read-your-writes on any replica without a quorum round
//! (`ReadConsistency::AtLeast`, docs/reads.md).

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftnode::testing::sim::Bugs;
use raftnode::{ChannelNetwork, MemLogStore, Node, ReadConsistency, ReadError, Role, WriteToken};

struct Group {
    network: ChannelNetwork,
    nodes: Vec<Node<Kv>>,
}

impl Group {
    fn start(bugs: &Bugs) -> Group {
        let network = ChannelNetwork::new();
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                Node::start_with_bugs(
                    test_config(id, &voters),
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

    fn leader(&self) -> &Node<Kv> {
        let mut found = None;
        wait_until("a leader", || {
            found = self
                .nodes
                .iter()
                .find(|n| n.status().is_ok_and(|s| s.role == Role::Leader));
            found.is_some()
        });
        found.expect("found")
    }

    fn follower_of(&self, leader: &Node<Kv>) -> &Node<Kv> {
        self.nodes
            .iter()
            .find(|n| n.id() != leader.id())
            .expect("a follower")
    }
}

/// Writes `k = n` twenty times through the leader while its link to one follower is
/// 100 ms slow, reading each write back on both followers with its token at once.
/// Returns the reads that did not see their own write.
fn read_your_writes_on_followers(bugs: &Bugs) -> Vec<String> {
    let g = Group::start(bugs);
    let leader = g.leader();
    let followers: Vec<&Node<Kv>> = g.nodes.iter().filter(|n| n.id() != leader.id()).collect();
    // One follower lags: the leader commits with the other, so a write is applied on
    // the slow follower about 100 ms after it was acknowledged.
    g.network
        .set_link_delay(leader.id(), followers[0].id(), Duration::from_millis(100));
    let mut missed = Vec::new();
    for n in 0..20 {
        let value = n.to_string();
        let (_, token) = leader
            .propose(put("k", &value))
            .expect("queued")
            .wait_applied()
            .expect("applied");
        for f in &followers {
            match f.read(
                ReadConsistency::AtLeast(token),
                Duration::from_secs(5),
                get("k"),
            ) {
                Ok(Some(seen)) if seen == value => {}
                other => missed.push(format!("node {} after write {n}: {other:?}", f.id())),
            }
        }
    }
    for n in &g.nodes {
        n.kill();
    }
    missed
}

/// Proves a read with a write's token sees that write on every follower, also on one
/// that lags the leader by 100 ms: it waits until it has applied the write.
#[test]
fn a_token_read_sees_its_write_on_every_follower() {
    let missed = read_your_writes_on_followers(&Bugs::default());
    assert!(
        missed.is_empty(),
        "reads that missed their write: {missed:?}"
    );
}

/// Served at once (bug switch `token_read_without_wait`), the lagging follower answers
/// with the previous value: the test above can fail.
#[test]
fn without_waiting_a_token_read_misses_the_write() {
    let bugs = Bugs {
        token_read_without_wait: true,
        ..Bugs::default()
    };
    assert!(!read_your_writes_on_followers(&bugs).is_empty());
}

/// Proves a token read on a node that cannot reach the token's write (cut off from the
/// group) fails with `Timeout` at its deadline, and a token from the future never
/// blocks past it either.
#[test]
fn a_token_read_that_cannot_be_served_times_out() {
    let g = Group::start(&Bugs::default());
    let leader = g.leader();
    let follower = g.follower_of(leader);
    g.network.isolate(follower.id());
    let (_, token) = leader
        .propose(put("k", "1"))
        .expect("queued")
        .wait_applied()
        .expect("applied by the leader and the other follower");
    for t in [token, WriteToken::new(1_000_000, 1)] {
        let started = Instant::now();
        let outcome = follower.read(
            ReadConsistency::AtLeast(t),
            Duration::from_millis(300),
            get("k"),
        );
        assert_eq!(outcome, Err(ReadError::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    g.network.heal();
    assert_eq!(
        follower
            .read(
                ReadConsistency::AtLeast(token),
                Duration::from_secs(10),
                get("k")
            )
            .expect("served once the write arrives"),
        Some("1".to_string())
    );
    for n in &g.nodes {
        n.kill();
    }
}

/// Measures follower reads of one's own write: `AtLeast(token)` beside `Linearizable`,
/// 200 each, no network delay (in memory). Prints the medians (docs/benchmarks.md).
#[test]
fn token_reads_beside_linearizable_follower_reads() {
    let g = Group::start(&Bugs::default());
    let leader = g.leader();
    let follower = g.follower_of(leader);
    let mut times = [Vec::new(), Vec::new()];
    for n in 0..200 {
        let value = n.to_string();
        let (_, token) = leader
            .propose(put("k", &value))
            .expect("queued")
            .wait_applied()
            .expect("applied");
        for (i, c) in [
            ReadConsistency::AtLeast(token),
            ReadConsistency::Linearizable,
        ]
        .into_iter()
        .enumerate()
        {
            let started = Instant::now();
            let seen = follower
                .read(c, Duration::from_secs(5), get("k"))
                .expect("read");
            times[i].push(started.elapsed());
            assert_eq!(seen.as_deref(), Some(value.as_str()), "{c:?}");
        }
    }
    for t in &mut times {
        t.sort();
    }
    eprintln!(
        "follower read of one's own write, median of 200: AtLeast(token) {:?}, Linearizable {:?}; p99 {:?} / {:?}",
        times[0][100], times[1][100], times[0][197], times[1][197]
    );
    for n in &g.nodes {
        n.kill();
    }
}
