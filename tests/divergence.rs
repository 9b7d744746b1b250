//! Divergence detection (docs/operations.md, "Divergence"): with `checkpoint_every` set,
//! a replica whose state machine applies non-deterministically is flagged at the first
//! checkpoint at or after its first divergent apply, naming it and the leader; healthy
//! replicas never are; `stop_on_divergence` stops the diverged replica alone.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{logger, test_config, wait_until, DEADLINE};
use parking_lot::Mutex;
use raftnode::export::prometheus::Registry;
use raftnode::export::NodeCollector;
use raftnode::{
    ChannelNetwork, Config, Divergence, FindingKind, MemLogStore, Node, Role, StateMachine,
    StateMachineError, StopReason,
};

/// Entries between checkpoints in these tests.
const EVERY: u64 = 20;

/// The entries that may be appended after a checkpoint is due and before it is (or
/// before its report is), with one write in flight at a time: the write itself and
/// the report of the previous checkpoint.
const IN_FLIGHT: u64 = 2;

#[derive(Default)]
struct TallyState {
    /// FNV-1a over every command applied, in order: the digest.
    hash: u64,
    applied: u64,
    /// The bug under test: this replica also hashes a byte no other replica does.
    skewed: bool,
    /// The first index this replica applied differently from the others.
    diverged_at: Option<u64>,
    /// The applied index at every call of `digest`: the checkpoints this replica saw.
    checkpoints: Vec<u64>,
}

/// A state machine whose whole state is a running hash of its commands, so its digest
/// is exact: any divergent apply changes every later digest.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<TallyState>>);

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    if hash == 0 {
        hash = 0xcbf2_9ce4_8422_2325;
    }
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl StateMachine for Tally {
    type Response = u64;

    fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
        let mut s = self.0.lock();
        s.hash = fnv(s.hash, command);
        if s.skewed {
            s.hash = fnv(s.hash, b"!");
            s.diverged_at.get_or_insert(index);
        }
        s.applied = index;
        s.hash
    }

    fn apply_noop(&mut self, index: u64) {
        self.0.lock().applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.0.lock().applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        Ok(bytes::Bytes::copy_from_slice(
            &self.0.lock().hash.to_le_bytes(),
        ))
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let raw: [u8; 8] = data.try_into().map_err(StateMachineError::new)?;
        let mut s = self.0.lock();
        s.hash = u64::from_le_bytes(raw);
        s.applied = index;
        Ok(())
    }

    fn digest(&self) -> Option<u64> {
        let mut s = self.0.lock();
        let applied = s.applied;
        s.checkpoints.push(applied);
        Some(s.hash)
    }
}

/// Three voters on one in-process network.
struct Group {
    nodes: BTreeMap<u64, Node<Tally>>,
    states: BTreeMap<u64, Tally>,
    _network: ChannelNetwork,
}

impl Group {
    fn start(stop_on_divergence: bool) -> Group {
        let network = ChannelNetwork::new();
        let logger = logger();
        let mut nodes = BTreeMap::new();
        let mut states = BTreeMap::new();
        for id in 1..=3 {
            let mut config: Config = test_config(id, &[1, 2, 3]);
            // Long enough that a loaded machine does not move leadership mid-test.
            config.election_ticks = 50;
            config.heartbeat_ticks = 5;
            config.checkpoint_every = EVERY;
            config.stop_on_divergence = stop_on_divergence;
            let tally = Tally::default();
            let node = Node::start(
                config,
                MemLogStore::new(),
                tally.clone(),
                network.transport(id),
                &logger,
            )
            .expect("node starts");
            nodes.insert(id, node);
            states.insert(id, tally);
        }
        Group {
            nodes,
            states,
            _network: network,
        }
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.is_stopped())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The leader every running node agrees on.
    fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("one agreed leader", || {
            let statuses: Vec<_> = self
                .running()
                .iter()
                .filter_map(|id| self.nodes[id].status().ok())
                .collect();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter(|s| s.role == Role::Leader)
                .map(|s| s.id)
                .collect();
            if leaders.len() != 1 {
                return false;
            }
            leader = leaders[0];
            statuses.iter().all(|s| s.leader == Some(leader))
        });
        leader
    }

    /// Writes `n` commands in windows of `window` in flight, each applied on the leader
    /// before the next window; retries what a leader change failed.
    fn write(&self, n: u64, window: u64) {
        let deadline = Instant::now() + DEADLINE;
        let mut done = 0;
        while done < n {
            assert!(Instant::now() < deadline, "writes never succeeded");
            let node = &self.nodes[&self.leader()];
            let handles: Vec<_> = (done..(done + window).min(n))
                .filter_map(|i| node.propose(format!("cmd {i}").into_bytes()).ok())
                .collect();
            let mut ok = 0;
            for mut h in handles {
                if h.wait_timeout(Duration::from_secs(5)).is_ok() {
                    ok += 1;
                }
            }
            if ok == 0 {
                // Not one write applied: the leader just changed or none is known yet.
                // The pause is the point (an election needs time, and an instant
                // resubmission only spins); the loop is bounded by the deadline above.
                std::thread::sleep(Duration::from_millis(10));
            }
            done += ok;
        }
    }

    fn status(&self, id: u64) -> raftnode::Status {
        self.nodes[&id].status().expect("status")
    }

    /// Waits until every one of `ids` applied at least `index`.
    fn wait_applied(&self, ids: &[u64], index: u64) {
        wait_until(&format!("{ids:?} applied {index}"), || {
            ids.iter().all(|id| self.status(*id).applied >= index)
        });
    }

    /// Writes one command at a time until `found` holds (at most `limit` writes).
    fn write_until(&self, limit: u64, what: &str, mut found: impl FnMut() -> bool) {
        for _ in 0..limit {
            if found() {
                return;
            }
            self.write(1, 1);
        }
        wait_until(what, found);
    }
}

/// `raftnode_divergences_total` as node `node`'s Prometheus collector exports it.
fn exported_divergences(node: &Node<Tally>) -> f64 {
    let registry = Registry::new();
    let collector = NodeCollector::new(node.clone(), &[]).expect("collector");
    registry.register(Box::new(collector)).expect("registers");
    registry
        .gather()
        .iter()
        .find(|f| f.get_name() == "raftnode_divergences_total")
        .map(|f| f.get_metric()[0].get_counter().get_value())
        .expect("exported")
}

/// Proves healthy replicas agree at every checkpoint, also with writes pipelined (so a
/// checkpoint applies in the middle of a batch of entries: the digest must be taken
/// right after it, not at the batch's end): several checkpoints compared on every
/// node, the same checkpoint indexes everywhere, and no divergence.
#[test]
fn healthy_replicas_agree_at_every_checkpoint() {
    let g = Group::start(false);
    g.write(8 * EVERY, 8);
    wait_until("every node compared five checkpoints", || {
        (1..=3).all(|id| g.status(id).metrics.checkpoints_compared >= 5)
    });
    let commit = g.status(g.leader()).commit;
    g.wait_applied(&[1, 2, 3], commit);
    for id in 1..=3 {
        let s = g.status(id);
        assert_eq!(s.divergence, None, "node {id}");
        assert_eq!(s.metrics.divergences, 0, "node {id}");
        assert_eq!(s.metrics.checkpoints_ignored, 0, "node {id}");
        assert!(
            s.findings.iter().all(|f| f.kind != FindingKind::Diverged),
            "node {id}: {:?}",
            s.findings
        );
        assert_eq!(exported_divergences(&g.nodes[&id]), 0.0);
    }
    let seen = |id: u64| g.states[&id].0.lock().checkpoints.clone();
    assert!(seen(1).len() >= 5, "{:?}", seen(1));
    assert_eq!(seen(1), seen(2));
    assert_eq!(seen(1), seen(3));
    for pair in seen(1).windows(2) {
        assert!(
            pair[1] - pair[0] >= EVERY,
            "checkpoints closer than checkpoint_every: {pair:?}"
        );
    }
}

/// The claim: a deliberately non-deterministic state machine on one follower
/// is flagged within one checkpoint interval, naming that replica. Precisely: the
/// divergence names the first checkpoint at or after the first divergent apply, so
/// `index - diverged_at < EVERY + IN_FLIGHT`, and it is found when the leader's report
/// of that checkpoint applies, right after it. The others report nothing.
#[test]
fn a_non_deterministic_replica_is_flagged_at_the_first_checkpoint_after_it() {
    let g = Group::start(false);
    g.write(2 * EVERY, 1);
    wait_until("a healthy checkpoint compared everywhere", || {
        (1..=3).all(|id| g.status(id).metrics.checkpoints_compared >= 1)
    });
    let leader = g.leader();
    let bad = (1..=3).rev().find(|id| *id != leader).expect("a follower");
    g.states[&bad].0.lock().skewed = true;
    g.write_until(3 * EVERY, "the skewed replica reports a divergence", || {
        g.status(bad).divergence.is_some()
    });
    let d: Divergence = g.status(bad).divergence.expect("found");
    let (diverged_at, checkpoints) = {
        let s = g.states[&bad].0.lock();
        (
            s.diverged_at.expect("it applied skewed"),
            s.checkpoints.clone(),
        )
    };
    assert_eq!(d.replica, bad);
    assert_eq!(d.leader, leader, "{d}");
    assert_ne!(d.local_digest, d.leader_digest);
    let first_after = checkpoints.iter().copied().find(|c| *c >= diverged_at);
    assert_eq!(
        Some(d.index),
        first_after,
        "checkpoints seen: {checkpoints:?}"
    );
    assert!(
        d.index - diverged_at < EVERY + IN_FLIGHT,
        "diverged at {diverged_at}, flagged at checkpoint {}",
        d.index
    );
    assert!(
        d.reported_at > d.index && d.reported_at - d.index <= IN_FLIGHT,
        "checkpoint {} reported at {}",
        d.index,
        d.reported_at
    );
    let s = g.status(bad);
    let finding = s
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Diverged)
        .expect("a Diverged finding");
    assert!(
        finding.evidence.contains(&format!("replica {bad}'s")),
        "{finding}"
    );
    assert!(s.metrics.divergences >= 1);
    assert!(exported_divergences(&g.nodes[&bad]) >= 1.0);
    assert!(!g.nodes[&bad].is_stopped(), "stop_on_divergence is off");
    let healthy: Vec<u64> = (1..=3).filter(|id| *id != bad).collect();
    g.wait_applied(&healthy, d.reported_at);
    for id in healthy {
        let s = g.status(id);
        assert_eq!(s.divergence, None, "node {id}");
        assert_eq!(s.metrics.divergences, 0, "node {id}");
        assert!(
            s.metrics.checkpoints_compared >= 2,
            "node {id} compared too"
        );
    }
}

/// Proves `stop_on_divergence` stops the diverged replica, with a `StopReason` naming
/// the divergence, and only it: the other two keep committing and comparing.
#[test]
fn stop_on_divergence_stops_only_the_diverged_replica() {
    let g = Group::start(true);
    g.write(EVERY, 1);
    let leader = g.leader();
    let bad = (1..=3).rev().find(|id| *id != leader).expect("a follower");
    g.states[&bad].0.lock().skewed = true;
    g.write_until(3 * EVERY, "the skewed replica stops", || {
        g.nodes[&bad].is_stopped()
    });
    match g.nodes[&bad].wait_stopped(DEADLINE) {
        Some(StopReason::Diverged(d)) => {
            assert_eq!((d.replica, d.leader), (bad, leader), "{d}");
        }
        other => panic!("node {bad} stopped for another reason: {other:?}"),
    }
    let healthy: Vec<u64> = (1..=3).filter(|id| *id != bad).collect();
    let compared = |id: u64| g.status(id).metrics.checkpoints_compared;
    let before: Vec<u64> = healthy.iter().map(|id| compared(*id)).collect();
    g.write(3 * EVERY, 1);
    let commit = g.status(g.leader()).commit;
    g.wait_applied(&healthy, commit);
    for (id, before) in healthy.iter().zip(before) {
        assert!(!g.nodes[id].is_stopped(), "node {id} stopped");
        let s = g.status(*id);
        assert_eq!(s.divergence, None, "node {id}");
        assert!(
            s.metrics.checkpoints_compared > before,
            "node {id} went on comparing"
        );
    }
}
