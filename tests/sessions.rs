//! Client sessions on a real cluster: a proposal whose outcome was unknown (its leader
//! was cut off after appending it, before it committed) is retried through
//! [`Session::send`] against the new leader, and is applied exactly once; also across a
//! restart of every node and across a snapshot install on the node that answers the
//! retry.
//!
//! The state machine counts, per key, how often an `incr` ran: exactly once means the
//! key holds 1 on every replica. With deduplication off (`RAFTNODE_TEST_NO_DEDUP=1`,
//! which switches the wrapper's test fault on) each of the three retry tests fails with
//! 2; the expired-session test does not depend on deduplication.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{logger, test_config, wait_until, DEADLINE};
use raftnode::sessions::SessionCommand;
use raftnode::{
    ChannelNetwork, MemLogStore, Node, ProposeError, ReadConsistency, RetryPolicy, Session,
    SessionMachine, SessionReply, Sessions, StateMachine, StateMachineError,
};

/// `incr <key>` adds one to `key` and answers the new count. In memory: a restart
/// starts it empty and the node rebuilds it from the snapshot and the log.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    applied: u64,
    restores: u64,
}

impl StateMachine for Tally {
    type Response = u64;
    fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
        self.applied = index;
        let key = String::from_utf8_lossy(command.strip_prefix(b"incr ").unwrap_or(command));
        let n = self.counts.entry(key.into_owned()).or_default();
        *n += 1;
        *n
    }
    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        let text: String = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect();
        Ok(text.into_bytes().into())
    }
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let text = std::str::from_utf8(data).map_err(StateMachineError::new)?;
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| StateMachineError::new("line"))?;
            counts.insert(k.to_string(), v.parse().map_err(StateMachineError::new)?);
        }
        self.counts = counts;
        self.applied = index;
        self.restores += 1;
        Ok(())
    }
}

impl SessionMachine for Tally {
    fn encode_response(n: &u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }
    fn decode_response(b: &[u8]) -> Result<u64, StateMachineError> {
        Ok(u64::from_le_bytes(
            b.try_into().map_err(StateMachineError::new)?,
        ))
    }
}

type N = Node<Sessions<Tally>>;

struct Cluster {
    net: ChannelNetwork,
    stores: BTreeMap<u64, MemLogStore>,
    nodes: Vec<N>,
}

fn machine() -> Sessions<Tally> {
    let s = Sessions::new(Tally::default()).expect("an empty machine");
    // The test fault exists only with the `testing` feature (as `cargo test
    // --all-features` builds).
    #[cfg(feature = "testing")]
    if std::env::var_os("RAFTNODE_TEST_NO_DEDUP").is_some() {
        return s.without_dedup_for_tests();
    }
    s
}

impl Cluster {
    fn new() -> Cluster {
        let mut c = Cluster {
            net: ChannelNetwork::new(),
            stores: BTreeMap::new(),
            nodes: Vec::new(),
        };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    /// Starts node `id` on its store (kept across restarts) with an empty machine.
    fn start(&mut self, id: u64) {
        let mut config = test_config(id, &[1, 2, 3]);
        // Snapshots only when a test asks for one; compaction keeps no trailing entries
        // so that a node behind a snapshot must install it.
        config.snapshot.every_applied = 0;
        config.snapshot.trailing_entries = 0;
        let store = self.stores.entry(id).or_default().clone();
        let node = Node::start(config, store, machine(), self.net.transport(id), &logger())
            .expect("node starts");
        self.nodes.retain(|n| n.id() != id);
        self.nodes.push(node);
        self.nodes.sort_by_key(|n| n.id());
    }

    fn node(&self, id: u64) -> &N {
        &self.nodes[id as usize - 1]
    }

    fn leader_among(&self, ids: &[u64]) -> u64 {
        let mut found = 0;
        wait_until("a leader among the reachable nodes", || {
            let leaders: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| {
                    self.node(*id)
                        .status()
                        .is_ok_and(|s| s.role == raftnode::Role::Leader && s.leader == Some(*id))
                })
                .collect();
            found = leaders.first().copied().unwrap_or(0);
            leaders.len() == 1
        });
        found
    }

    /// The count of `key` on node `id`, read at its applied index once it has applied
    /// everything committed.
    fn count(&self, id: u64, key: &str) -> u64 {
        let key = key.to_string();
        self.node(id)
            .read(
                ReadConsistency::Linearizable,
                DEADLINE,
                move |s: &Sessions<Tally>| s.inner().counts.get(&key).copied().unwrap_or(0),
            )
            .expect("linearizable read")
    }

    fn shutdown(&self) {
        for n in &self.nodes {
            n.shutdown();
        }
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        deadline: DEADLINE,
        attempt_timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    }
}

/// Proposes `incr key` in `session` on the leader with its appends reaching one
/// follower whose acknowledgements are cut, then isolates the leader: the follower that
/// holds the entry wins the election and commits it, and the old leader's proposer gets
/// `OutcomeUnknown`. Returns (old leader, new leader, the command).
fn outcome_unknown(c: &Cluster, session: &mut Session, key: &str) -> (u64, u64, SessionCommand) {
    let old = c.leader_among(&[1, 2, 3]);
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let (holder, other) = (others[0], others[1]);
    c.net.cut(old, other);
    c.net.cut(holder, old);
    let command = session.command(format!("incr {key}").as_bytes());
    let before = c.node(old).status().unwrap().last_index;
    let mut first = c
        .node(old)
        .propose(command.bytes().clone())
        .expect("queued");
    let mut target = 0;
    wait_until("the entry in the leader's log", || {
        target = c.node(old).status().unwrap().last_index;
        target > before
    });
    wait_until("the entry on the follower whose acks are cut", || {
        c.node(holder)
            .status()
            .is_ok_and(|s| s.last_index >= target)
    });
    assert!(
        c.node(old).status().unwrap().commit < target,
        "the leader must not know the entry committed"
    );
    c.net.heal();
    c.net.isolate(old);
    let new = c.leader_among(&others);
    assert_eq!(new, holder, "only the follower holding the entry can win");
    let outcome = first.wait_timeout(DEADLINE);
    assert!(
        matches!(outcome, Err(ProposeError::OutcomeUnknown { .. })),
        "the first attempt's outcome must be unknown, got {outcome:?}"
    );
    (old, new, command)
}

#[test]
fn outcome_unknown_retried_through_the_helper_applies_once() {
    let c = Cluster::new();
    let mut session = Session::register(&c.nodes, &policy()).expect("registered");
    let (_old, _new, command) = outcome_unknown(&c, &mut session, "x");
    // The old leader is still cut off: the helper finds the new one.
    let answer = Session::send(&c.nodes, &command, &policy()).expect("retry answered");
    assert_eq!(
        answer, 1,
        "the retry returns the first application's response"
    );
    c.net.heal();
    for id in 1..=3 {
        assert_eq!(c.count(id, "x"), 1, "node {id} applied the command once");
    }
    // The session goes on: the next command is new.
    assert_eq!(session.propose(&c.nodes, b"incr x", &policy()).unwrap(), 2);
    c.shutdown();
}

#[test]
fn a_retry_after_every_node_restarted_applies_once() {
    let mut c = Cluster::new();
    let mut session = Session::register(&c.nodes, &policy()).expect("registered");
    let (_old, new, command) = outcome_unknown(&c, &mut session, "y");
    c.net.heal();
    assert_eq!(
        c.count(new, "y"),
        1,
        "the new leader committed the first attempt"
    );
    c.shutdown();
    for id in 1..=3 {
        c.start(id);
    }
    // Fresh in-memory machines: the table is rebuilt from the log.
    let answer = Session::send(&c.nodes, &command, &policy()).expect("retry answered");
    assert_eq!(answer, 1);
    for id in 1..=3 {
        assert_eq!(c.count(id, "y"), 1, "node {id} after the restart");
    }
    c.shutdown();
}

#[test]
fn a_retry_answered_by_a_node_that_installed_a_snapshot_applies_once() {
    let c = Cluster::new();
    let mut session = Session::register(&c.nodes, &policy()).expect("registered");
    let (old, new, command) = outcome_unknown(&c, &mut session, "z");
    // While the old leader is away, the group moves on, snapshots and compacts: the old
    // leader can only catch up by installing the snapshot, table included.
    let mut filler = Session::register(&c.nodes, &policy()).expect("registered");
    for _ in 0..20 {
        filler.propose(&c.nodes, b"incr filler", &policy()).unwrap();
    }
    for id in (1..=3).filter(|id| *id != old) {
        c.node(id).snapshot_now().expect("snapshot");
    }
    wait_until("the log compacted past the old leader's entries", || {
        c.node(new)
            .status()
            .is_ok_and(|s| s.first_index > s.commit.saturating_sub(1))
    });
    c.net.heal();
    wait_until("the old leader restored from a snapshot", || {
        c.node(old)
            .status()
            .is_ok_and(|s| s.metrics.snapshots_restored >= 1)
    });
    c.node(new)
        .transfer_leader(old, DEADLINE)
        .expect("transfer");
    wait_until("the old leader leads again", || {
        c.node(old).leader() == Some(old)
    });
    let answer = Session::send(&[c.node(old).clone()], &command, &policy()).expect("answered");
    assert_eq!(answer, 1, "answered from the snapshot's session table");
    for id in 1..=3 {
        assert_eq!(c.count(id, "z"), 1, "node {id}");
    }
    c.shutdown();
}

#[test]
fn an_expired_session_is_refused_not_applied() {
    let c = Cluster::new();
    let leader = c.leader_among(&[1, 2, 3]);
    let ghost = Session::resume(1_000_000, 1).command(b"incr g");
    let reply = c
        .node(leader)
        .propose(ghost.bytes().clone())
        .unwrap()
        .wait_timeout(DEADLINE)
        .unwrap();
    assert!(matches!(reply, SessionReply::Rejected(_)), "{reply:?}");
    assert!(matches!(
        Session::send(&c.nodes, &ghost, &policy()),
        Err(raftnode::RetryError::Rejected(_))
    ));
    assert_eq!(c.count(leader, "g"), 0);
    c.shutdown();
}
