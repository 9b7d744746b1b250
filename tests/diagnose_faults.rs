//! Diagnosis on real clusters (`Node::diagnose`, docs/operations.md, "Diagnosis"): each
//! test injects one fault through a wrapped log store, transport or state machine,
//! waits for the finding it should cause (on the node it should name), heals the fault
//! and waits for the finding to go. Every cluster first shows it reports nothing when
//! healthy.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raftnode::raft_types::{ConfState, Entry, HardState, Message, MessageType, Snapshot};
use raftnode::{
    ChannelNetwork, ChannelTransport, Config, Finding, FindingKind, LogStore, Mailbox, MemLogStore,
    Node, Role, StateMachine, StateMachineError, StorageError, Transport, TransportError,
};

const VOTERS: [u64; 3] = [1, 2, 3];

// ---- polling helpers -------------------------------------------------------------------

fn find<M: StateMachine>(node: &Node<M>, kind: FindingKind) -> Option<Finding> {
    node.diagnose()
        .expect("diagnose")
        .into_iter()
        .find(|f| f.kind == kind)
}

/// Polls `node` until it reports `kind`, calling `between` before every poll (to keep
/// writes flowing, say).
fn wait_finding<M: StateMachine>(
    node: &Node<M>,
    kind: FindingKind,
    mut between: impl FnMut(),
) -> Finding {
    let deadline = Instant::now() + DEADLINE;
    loop {
        between();
        if let Some(f) = find(node, kind) {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never reported {kind}; it reports {:?}",
            node.id(),
            node.diagnose()
        );
        // Poll interval; the loop is bounded by `deadline`.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `node` until it no longer reports `kind`, calling `between` before every poll.
fn wait_gone<M: StateMachine>(node: &Node<M>, kind: FindingKind, mut between: impl FnMut()) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        between();
        let Some(f) = find(node, kind) else { return };
        assert!(
            Instant::now() < deadline,
            "node {} still reports {f} after the fault was healed",
            node.id()
        );
        // Poll interval; the loop is bounded by `deadline`.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no node reports anything, then checks that stays so over status calls
/// spread over a second: longer than the `DIAGNOSE_AFTER_TIMEOUTS` election timeouts
/// (600 ms) a condition must hold, so a finding that fires on a healthy group shows.
fn wait_healthy<M: StateMachine>(nodes: &BTreeMap<u64, Node<M>>) {
    wait_until("a healthy cluster reports no findings", || {
        nodes
            .values()
            .all(|n| n.diagnose().expect("diagnose").is_empty())
    });
    for _ in 0..25 {
        for node in nodes.values() {
            let findings = node.diagnose().expect("diagnose");
            assert!(
                findings.is_empty(),
                "healthy node {} reports {findings:?}",
                node.id()
            );
        }
        // The sleep is the point: 25 checks 40 ms apart span 1 s, longer than the 600 ms a
        // condition must hold to be reported, so a finding that fires on a healthy
        // cluster shows up here. Nothing is being waited for.
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// Waits until exactly one node leads and every node agrees on it.
fn wait_leader<M: StateMachine>(nodes: &BTreeMap<u64, Node<M>>) -> u64 {
    let mut leader = 0;
    wait_until("one agreed leader", || {
        let statuses: Vec<_> = nodes.values().filter_map(|n| n.status().ok()).collect();
        let leaders: Vec<u64> = statuses
            .iter()
            .filter(|s| s.role == Role::Leader)
            .map(|s| s.id)
            .collect();
        if leaders.len() != 1 || statuses.len() != nodes.len() {
            return false;
        }
        leader = leaders[0];
        statuses.iter().all(|s| s.leader == Some(leader))
    });
    leader
}

/// Proposes `count` puts on `node`, all in flight at once, and waits for every one.
fn write<M: StateMachine>(node: &Node<M>, prefix: &str, count: usize) {
    let handles: Vec<_> = (0..count)
        .map(|i| {
            node.propose(put(&format!("{prefix}{i}"), "v"))
                .expect("queued")
        })
        .collect();
    for mut h in handles {
        h.wait_timeout(DEADLINE).expect("proposal applied");
    }
}

/// Proposes one put on `node` without waiting for it (keeps entries, and so syncs,
/// flowing while a test polls).
fn nudge<M: StateMachine>(node: &Node<M>, n: &mut u64) {
    *n += 1;
    // The handle is dropped: the write's outcome does not matter, only that it happens.
    let _ = node.propose(put(&format!("nudge{n}"), "v"));
}

fn followers(leader: u64) -> Vec<u64> {
    VOTERS.iter().copied().filter(|id| *id != leader).collect()
}

fn start<M: StateMachine, S: LogStore, T: Transport>(
    id: u64,
    configure: impl Fn(&mut Config),
    store: S,
    sm: M,
    transport: T,
) -> Node<M> {
    let mut config = test_config(id, &VOTERS);
    configure(&mut config);
    Node::start(config, store, sm, transport, &logger()).expect("node starts")
}

// ---- a log store whose sync can be made slow ---------------------------------------------

/// A [`MemLogStore`] whose `sync` first sleeps for `delay_ms` (a slow disk).
struct SlowSyncStore {
    inner: MemLogStore,
    delay_ms: Arc<AtomicU64>,
}

common::forward_storage!(SlowSyncStore, inner);

impl LogStore for SlowSyncStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.apply_snapshot(snapshot)
    }
    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.store_snapshot(snapshot)
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            // The injected fault itself: a disk that takes this long to sync.
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.sync()
    }
}

#[test]
fn slow_disk_is_reported_on_the_slow_node_and_clears() {
    let network = ChannelNetwork::new();
    let delays: BTreeMap<u64, Arc<AtomicU64>> = VOTERS
        .iter()
        .map(|id| (*id, Arc::new(AtomicU64::new(0))))
        .collect();
    let nodes: BTreeMap<u64, Node<Kv>> = VOTERS
        .iter()
        .map(|&id| {
            let store = SlowSyncStore {
                inner: MemLogStore::new(),
                delay_ms: delays[&id].clone(),
            };
            let node = start(id, |_| {}, store, Kv::default(), network.transport(id));
            (id, node)
        })
        .collect();
    let leader = wait_leader(&nodes);
    write(&nodes[&leader], "warm", 5);
    wait_healthy(&nodes);

    // 150 ms per sync, three times the threshold (a quarter of the 200 ms election
    // timeout), on one follower.
    let slow = followers(leader)[0];
    delays[&slow].store(150, Ordering::Relaxed);
    let mut n = 0;
    let finding = wait_finding(&nodes[&slow], FindingKind::SlowDisk, || {
        nudge(&nodes[&leader], &mut n)
    });
    assert!(
        finding.evidence.contains("log store sync took"),
        "evidence: {}",
        finding.evidence
    );
    for id in VOTERS.iter().filter(|id| **id != slow) {
        assert_eq!(
            find(&nodes[id], FindingKind::SlowDisk),
            None,
            "node {id}'s disk is fast"
        );
    }

    delays[&slow].store(0, Ordering::Relaxed);
    wait_gone(&nodes[&slow], FindingKind::SlowDisk, || {
        nudge(&nodes[&leader], &mut n)
    });
    for node in nodes.values() {
        node.kill();
    }
}

// ---- a transport that swallows snapshots -----------------------------------------------

/// A [`ChannelTransport`] that, while `swallow` is set, drops every `MsgSnapshot` without
/// reporting on it (the inner transport never sees it, so it never calls
/// `report_snapshot`): a transport that breaks its contract.
struct SnapshotSwallower {
    inner: ChannelTransport,
    swallow: Arc<AtomicBool>,
    swallowed: Arc<AtomicU64>,
}

impl Transport for SnapshotSwallower {
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        self.inner.start(mailbox)
    }

    fn send(&mut self, mut messages: Vec<Message>) {
        if self.swallow.load(Ordering::Relaxed) {
            messages.retain(|m| {
                let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                if snapshot {
                    self.swallowed.fetch_add(1, Ordering::Relaxed);
                }
                !snapshot
            });
        }
        self.inner.send(messages);
    }

    fn stop(&mut self) {
        self.inner.stop();
    }
}

/// Snapshots every 50 applied entries, keeping 10 behind; the leader gives up on an
/// unreported snapshot after 3 s, well past the 600 ms a finding needs to show.
fn small_snapshots(config: &mut Config) {
    config.snapshot.every_applied = 50;
    config.snapshot.trailing_entries = 10;
    config.snapshot.report_timeout = Duration::from_secs(3);
}

#[test]
fn unreported_snapshot_is_reported_on_the_leader_and_clears() {
    let network = ChannelNetwork::new();
    let swallow = Arc::new(AtomicBool::new(false));
    let swallowed = Arc::new(AtomicU64::new(0));
    let stores: BTreeMap<u64, MemLogStore> =
        VOTERS.iter().map(|id| (*id, MemLogStore::new())).collect();
    let states: BTreeMap<u64, Kv> = VOTERS.iter().map(|id| (*id, Kv::default())).collect();
    let start_one = |id: u64| {
        let transport = SnapshotSwallower {
            inner: network.transport(id),
            swallow: swallow.clone(),
            swallowed: swallowed.clone(),
        };
        start(
            id,
            small_snapshots,
            stores[&id].clone(),
            states[&id].clone(),
            transport,
        )
    };
    let mut nodes: BTreeMap<u64, Node<Kv>> = VOTERS.iter().map(|&id| (id, start_one(id))).collect();
    let leader = wait_leader(&nodes);
    write(&nodes[&leader], "warm", 5);
    wait_healthy(&nodes);

    // One follower misses enough that the leader compacts past its log.
    let behind = followers(leader)[0];
    nodes.remove(&behind).expect("running").kill();
    swallow.store(true, Ordering::Relaxed);
    write(&nodes[&leader], "gap", 120);
    let behind_last = raft::Storage::last_index(&stores[&behind]).expect("last index");
    wait_until(
        "the leader compacted past the stopped follower's log",
        || nodes[&leader].status().expect("status").first_index > behind_last + 1,
    );
    nodes.insert(behind, start_one(behind));

    let finding = wait_finding(&nodes[&leader], FindingKind::SnapshotUnreported, || {});
    assert!(
        finding.evidence.contains(&format!("follower {behind} ")),
        "evidence names follower {behind}: {}",
        finding.evidence
    );
    assert!(
        swallowed.load(Ordering::Relaxed) > 0,
        "no snapshot swallowed"
    );
    for id in followers(leader) {
        assert_eq!(find(&nodes[&id], FindingKind::SnapshotUnreported), None);
    }

    // Healed: snapshots pass (and are reported) again. The swallowed one is given up
    // after report_timeout, then the leader sends a fresh one.
    swallow.store(false, Ordering::Relaxed);
    wait_gone(&nodes[&leader], FindingKind::SnapshotUnreported, || {});
    let commit = nodes[&leader].status().expect("status").commit;
    wait_until("the follower caught up through a snapshot", || {
        nodes[&behind].status().expect("status").applied >= commit
    });
    assert!(states[&behind].state.lock().restores > 0, "restored");
    assert_eq!(find(&nodes[&leader], FindingKind::SnapshotUnreported), None);
    for node in nodes.values() {
        node.kill();
    }
}

// ---- a transport that loses append acknowledgements --------------------------------------

/// A [`ChannelTransport`] that drops every `MsgAppendResponse` while `drop_acks` is set;
/// votes and heartbeats (and their responses) pass.
struct AckDropper {
    inner: ChannelTransport,
    drop_acks: Arc<AtomicBool>,
}

impl Transport for AckDropper {
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        self.inner.start(mailbox)
    }

    fn send(&mut self, mut messages: Vec<Message>) {
        if self.drop_acks.load(Ordering::Relaxed) {
            messages.retain(|m| m.get_msg_type() != MessageType::MsgAppendResponse);
        }
        self.inner.send(messages);
    }

    fn stop(&mut self) {
        self.inner.stop();
    }
}

#[test]
fn leader_that_cannot_commit_is_reported_and_clears() {
    let network = ChannelNetwork::new();
    let drop_acks = Arc::new(AtomicBool::new(false));
    let mut nodes: BTreeMap<u64, Node<Kv>> = VOTERS
        .iter()
        .map(|&id| {
            let transport = AckDropper {
                inner: network.transport(id),
                drop_acks: drop_acks.clone(),
            };
            (
                id,
                start(id, |_| {}, MemLogStore::new(), Kv::default(), transport),
            )
        })
        .collect();
    let first = wait_leader(&nodes);
    write(&nodes[&first], "warm", 5);
    wait_healthy(&nodes);

    // Acks lost from now on; the leader goes, and one of the two left is elected (votes
    // pass) but cannot commit the empty entry of its term.
    drop_acks.store(true, Ordering::Relaxed);
    nodes.remove(&first).expect("running").kill();
    let leader = wait_leader(&nodes);
    assert_ne!(leader, first);
    let finding = wait_finding(&nodes[&leader], FindingKind::LeaderNotCommitted, || {});
    assert!(
        finding
            .evidence
            .contains("without committing an entry of its term"),
        "evidence: {}",
        finding.evidence
    );
    assert_eq!(
        nodes[&leader].status().expect("status").role,
        Role::Leader,
        "heartbeats pass, so it keeps leading"
    );
    for (id, node) in &nodes {
        if *id != leader {
            assert_eq!(find(node, FindingKind::LeaderNotCommitted), None);
        }
    }

    drop_acks.store(false, Ordering::Relaxed);
    wait_gone(&nodes[&leader], FindingKind::LeaderNotCommitted, || {});
    write(&nodes[&leader], "after", 3);
    for node in nodes.values() {
        node.kill();
    }
}

// ---- a state machine whose apply can be made slow ----------------------------------------

/// A [`Kv`] whose `apply` first sleeps for `delay_ms` (an expensive state machine).
struct SlowApply {
    inner: Kv,
    delay_ms: Arc<AtomicU64>,
}

impl StateMachine for SlowApply {
    type Response = Option<String>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<String> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            // The injected fault itself: an apply that takes this long.
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.apply(index, command)
    }
    fn apply_noop(&mut self, index: u64) {
        self.inner.apply_noop(index);
    }
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
    fn snapshot(&self) -> Result<raftnode::bytes::Bytes, StateMachineError> {
        self.inner.snapshot()
    }
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.inner.restore(index, data)
    }
}

#[test]
fn lagging_apply_is_reported_on_the_slow_node_and_clears() {
    let network = ChannelNetwork::new();
    let delays: BTreeMap<u64, Arc<AtomicU64>> = VOTERS
        .iter()
        .map(|id| (*id, Arc::new(AtomicU64::new(0))))
        .collect();
    let nodes: BTreeMap<u64, Node<SlowApply>> = VOTERS
        .iter()
        .map(|&id| {
            let sm = SlowApply {
                inner: Kv::default(),
                delay_ms: delays[&id].clone(),
            };
            let node = start(id, |_| {}, MemLogStore::new(), sm, network.transport(id));
            (id, node)
        })
        .collect();
    let leader = wait_leader(&nodes);
    write(&nodes[&leader], "warm", 5);
    wait_healthy(&nodes);

    // 30 ms per entry on one follower; 200 entries pipelined commit on the other two
    // in far less than the 6 s it needs to apply them.
    let slow = followers(leader)[0];
    delays[&slow].store(30, Ordering::Relaxed);
    write(&nodes[&leader], "burst", 200);
    let finding = wait_finding(&nodes[&slow], FindingKind::ApplyLagging, || {});
    assert!(
        finding.evidence.contains("applied index"),
        "evidence: {}",
        finding.evidence
    );
    for id in followers(slow) {
        assert_eq!(find(&nodes[&id], FindingKind::ApplyLagging), None);
    }

    delays[&slow].store(0, Ordering::Relaxed);
    wait_gone(&nodes[&slow], FindingKind::ApplyLagging, || {});
    let commit = nodes[&leader].status().expect("status").commit;
    wait_until("the slow follower applied everything", || {
        nodes[&slow].status().expect("status").applied >= commit
    });
    for node in nodes.values() {
        node.kill();
    }
}

#[test]
fn healthy_cluster_reports_nothing() {
    let network = ChannelNetwork::new();
    let nodes: BTreeMap<u64, Node<Kv>> = VOTERS
        .iter()
        .map(|&id| {
            let node = start(
                id,
                |_| {},
                MemLogStore::new(),
                Kv::default(),
                network.transport(id),
            );
            (id, node)
        })
        .collect();
    let leader = wait_leader(&nodes);
    write(&nodes[&leader], "k", 20);
    wait_healthy(&nodes);
    for node in nodes.values() {
        node.kill();
    }
}
