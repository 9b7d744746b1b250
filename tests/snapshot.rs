//! Snapshots and log compaction (Raft paper §7): followers far behind catch up through a
//! snapshot, the log is compacted to the configured trailing size, restarts after a
//! snapshot apply nothing twice, and a large state machine transfers within a measured
//! memory bound.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use parking_lot::Mutex;
use raftnode::{ChannelNetwork, MemLogStore, Node, ReadConsistency};

/// Tests here run one at a time: the memory measurement reads the process-wide peak RSS.
static SERIAL: Mutex<()> = Mutex::new(());

const EVERY_APPLIED: u64 = 500;
const TRAILING: u64 = 100;

fn small_snapshots(c: &mut raftnode::Config) {
    c.snapshot.every_applied = EVERY_APPLIED;
    c.snapshot.trailing_entries = TRAILING;
}

/// Proves a follower cut off while 10,000 entries commit rejoins through a snapshot
/// (the leader sent one, the follower restored one), ends with the leader's state, and
/// that the leader's log was compacted to `trailing_entries` behind its snapshot (§7).
#[test]
fn isolated_follower_catches_up_through_a_snapshot() {
    let _serial = SERIAL.lock();
    let c = Cluster::with_config(3, small_snapshots);
    let leader = c.wait_leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.network.isolate(follower);

    propose_in_flight(c.node(leader), "k", 10_000, 2_000);

    let before = c.status(leader);
    assert!(
        before.metrics.snapshots_taken >= 1,
        "leader took {} snapshots",
        before.metrics.snapshots_taken
    );
    c.network.heal();
    let commit = c.status(leader).commit;
    c.wait_applied(&[follower], commit);

    let leader_status = c.status(leader);
    let follower_status = c.status(follower);
    assert!(
        leader_status.metrics.snapshots_sent >= 1,
        "no snapshot sent"
    );
    assert!(
        follower_status.metrics.snapshots_restored >= 1,
        "no snapshot restored"
    );
    assert!(c.states[&follower].state.lock().restores >= 1);
    assert_eq!(c.map_of(follower), c.map_of(leader));
    assert_eq!(c.map_of(follower).len(), 10_000);

    // Compaction keeps exactly `trailing_entries` entries behind the latest snapshot.
    let s = c.status(leader);
    assert!(s.snapshot_index > 0);
    assert_eq!(
        s.first_index,
        s.snapshot_index + 1 - TRAILING,
        "first_index {} snapshot_index {}",
        s.first_index,
        s.snapshot_index
    );
    assert!(
        s.last_index - s.first_index < EVERY_APPLIED + TRAILING + 10,
        "log holds {} entries",
        s.last_index + 1 - s.first_index
    );
    c.assert_no_double_apply();
}

/// Proves a node restarted after snapshots and compaction resumes at its durable applied
/// index and applies no entry twice, for a follower restart and a full-cluster restart.
#[test]
fn restart_after_snapshot_applies_nothing_twice() {
    let _serial = SERIAL.lock();
    let mut c = Cluster::with_config(3, small_snapshots);
    let leader = c.wait_leader();
    propose_in_flight(c.node(leader), "a", 2_000, 500);
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    for id in 1..=3 {
        assert!(
            c.status(id).snapshot_index > 0,
            "node {id} took no snapshot"
        );
    }

    // One follower restarts.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(follower);
    c.start_node(follower, &[1, 2, 3]);
    let leader = c.wait_leader();
    propose_in_flight(c.node(leader), "b", 500, 500);
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    c.assert_no_double_apply();

    // Every node restarts.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.start_node(id, &[1, 2, 3]);
    }
    let leader = c.wait_leader();
    propose_in_flight(c.node(leader), "c", 500, 500);
    let commit = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3], commit);
    c.assert_no_double_apply();
    let reference = c.map_of(leader);
    assert_eq!(reference.len(), 3_000);
    for id in 1..=3 {
        assert_eq!(c.map_of(id), reference, "node {id} diverged");
    }
}

/// Proves a 64 MiB state machine is snapshotted, sent to a new learner and restored
/// intact, and measures the peak memory the transfer adds to the process (the leader
/// and the learner share it here); docs/snapshots.md quotes the figure.
#[test]
fn large_snapshot_transfers_to_a_new_learner_within_a_memory_bound() {
    let _serial = SERIAL.lock();
    let size = blob_bytes("RAFTNODE_SNAPSHOT_MIB", 64);
    let network = ChannelNetwork::new();
    let logger = logger();
    let leader = Node::start(
        blob_config(1, &[1]),
        MemLogStore::new(),
        Blob::default(),
        network.transport(1),
        &logger,
    )
    .expect("leader starts");
    leader.wait_for_leader(DEADLINE).expect("leader elected");
    leader
        .propose(format!("fill 7 {size}").into_bytes())
        .expect("queued")
        .wait_timeout(DEADLINE)
        .expect("filled");
    let want = leader
        .read(ReadConsistency::Linearizable, DEADLINE, |b| {
            fingerprint(&b.data)
        })
        .expect("read");
    assert_eq!(want.0, size);
    let index = leader
        .snapshot_now()
        .expect("snapshot")
        .expect("new snapshot");
    let status = leader.status().expect("status");
    assert_eq!(
        status.first_index,
        index + 1,
        "log compacted to the snapshot"
    );

    let measured = reset_peak_rss();
    let rss_before = rss_kib().unwrap_or(0);
    let started = Instant::now();
    let learner = Node::start(
        blob_config(2, &[]),
        MemLogStore::new(),
        Blob::default(),
        network.transport(2),
        &logger,
    )
    .expect("learner starts");
    leader
        .add_learner(2, Bytes::new(), DEADLINE)
        .expect("learner added");
    wait_until("learner restored the snapshot", || {
        learner
            .status()
            .map(|s| s.applied >= index)
            .unwrap_or(false)
    });
    let elapsed = started.elapsed();
    let peak = peak_rss_kib().unwrap_or(0);

    let got = learner.read_stale(|b| fingerprint(&b.data)).expect("read");
    assert_eq!(got, want, "learner's blob differs from the leader's");
    assert_eq!(learner.status().unwrap().metrics.snapshots_restored, 1);
    assert!(leader.status().unwrap().metrics.snapshots_sent >= 1);

    let size_kib = (size >> 10) as u64;
    let extra_kib = peak.saturating_sub(rss_before);
    eprintln!(
        "large snapshot: state {} MiB, transfer + restore {:?}, rss before {} MiB, \
         peak {} MiB, peak added {} MiB ({:.2} x state){}",
        size >> 20,
        elapsed,
        rss_before >> 10,
        peak >> 10,
        extra_kib >> 10,
        extra_kib as f64 / size_kib as f64,
        if measured {
            ""
        } else {
            " (peak not resettable)"
        }
    );
    if measured {
        // Measured 1.3x (a fresh framed snapshot on the leader, the restored copy on the learner); 3x leaves room for allocator noise.
        assert!(
            extra_kib <= 3 * size_kib,
            "snapshot transfer added {extra_kib} KiB for a {size_kib} KiB state"
        );
    }
    learner.kill();
    leader.kill();
}

/// Damages the data of the next `damage` snapshots it sends, as a faulty disk or a
/// transport without checksums would: one byte in the middle flipped.
struct DamagingTransport {
    inner: raftnode::ChannelTransport,
    damage: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl raftnode::Transport for DamagingTransport {
    fn start(&mut self, mailbox: raftnode::Mailbox) -> Result<(), raftnode::TransportError> {
        self.inner.start(mailbox)
    }

    fn send(&mut self, mut messages: Vec<raftnode::raft_types::Message>) {
        use std::sync::atomic::Ordering;
        for m in &mut messages {
            if m.get_msg_type() == raftnode::raft_types::MessageType::MsgSnapshot
                && self
                    .damage
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                let mut data = m.get_snapshot().data.to_vec();
                let middle = data.len() / 2;
                data[middle] ^= 0x20;
                m.mut_snapshot().data = data.into();
            }
        }
        self.inner.send(messages);
    }
}

/// Isolates a follower of `c` while the leader commits past two snapshots, then heals;
/// returns (leader, follower, time from the heal until the follower caught up).
fn catch_up_after_isolation(c: &Cluster, before_heal: impl FnOnce(u64)) -> (u64, u64, f64) {
    let leader = c.wait_leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.network.isolate(follower);
    propose_in_flight(c.node(leader), "k", 2 * EVERY_APPLIED as usize + 200, 200);
    assert!(c.status(leader).metrics.snapshots_taken >= 1);
    before_heal(follower);
    let healed = Instant::now();
    c.network.heal();
    let commit = c.status(leader).commit;
    c.wait_applied(&[follower], commit);
    (leader, follower, healed.elapsed().as_secs_f64())
}

/// Proves a snapshot damaged on its way is refused before the follower's log store sees
/// it (counted as `SnapshotChecksum`), that the follower keeps running, and that the
/// leader, told by the follower, sends a good snapshot the follower installs.
#[test]
fn damaged_snapshot_is_refused_and_the_leader_sends_a_good_one() {
    let _serial = SERIAL.lock();
    let damage = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut c = Cluster {
        network: ChannelNetwork::new(),
        nodes: Default::default(),
        stores: Default::default(),
        states: Default::default(),
        logger: logger(),
        configure: small_snapshots,
    };
    for id in 1..=3 {
        let mut config = test_config(id, &[1, 2, 3]);
        small_snapshots(&mut config);
        let store = c.stores.entry(id).or_default().clone();
        let kv = c.states.entry(id).or_default().clone();
        let transport = DamagingTransport {
            inner: c.network.transport(id),
            damage: damage.clone(),
        };
        let node = Node::start(config, store, kv, transport, &c.logger).expect("node starts");
        c.nodes.insert(id, node);
    }
    let (leader, follower, secs) = catch_up_after_isolation(&c, |_| {
        damage.store(1, std::sync::atomic::Ordering::SeqCst);
    });
    println!("follower caught up {secs:.2} s after the heal, past one damaged snapshot");
    assert_eq!(
        damage.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing damaged"
    );
    let f = c.status(follower);
    assert_eq!(
        f.metrics.refused.get(&raftnode::Refusal::SnapshotChecksum),
        Some(&1),
        "refusals: {:?}",
        f.metrics.refused
    );
    assert!(f.metrics.snapshots_restored >= 1);
    assert!(c.status(leader).metrics.snapshots_sent >= 2);
    assert!(!c.node(follower).is_stopped());
    assert_eq!(c.map_of(follower), c.map_of(leader));
    c.assert_no_double_apply();
}

/// Proves a snapshot the state machine's `check_snapshot` refuses never reaches the log
/// store (counted as `SnapshotRejected`), and that the leader sends another, which the
/// follower installs.
#[test]
fn snapshot_refused_by_the_state_machine_is_sent_again() {
    let _serial = SERIAL.lock();
    let c = Cluster::with_config(3, small_snapshots);
    let (leader, follower, secs) = catch_up_after_isolation(&c, |follower| {
        c.states[&follower].state.lock().refuse_snapshot_checks = 1;
    });
    println!("follower caught up {secs:.2} s after the heal, past one refused snapshot");
    let f = c.status(follower);
    assert_eq!(
        f.metrics.refused.get(&raftnode::Refusal::SnapshotRejected),
        Some(&1),
        "refusals: {:?}",
        f.metrics.refused
    );
    let state = c.states[&follower].state.lock();
    assert_eq!(state.refuse_snapshot_checks, 0);
    assert!(state.snapshot_checks >= 2 && state.restores >= 1);
    drop(state);
    assert!(c.status(leader).metrics.snapshots_sent >= 2);
    assert_eq!(c.map_of(follower), c.map_of(leader));
    c.assert_no_double_apply();
}
