//! Record and replay (docs/operations.md, "Record and replay"): a three-node run with a
//! partition and a restart, recorded on every node, replays exactly (every message byte
//! for byte, every entry applied, the end state); and a replay catches what it must:
//! an altered input, a state machine that is not deterministic, a corrupt or cut file,
//! and the size bound's truncation.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as _;
use raftnode::raft_types::{Message, MessageType};
use raftnode::{
    replay, ChannelNetwork, Config, MemLogStore, Node, RecordTo, ReplayError, ReplayReport,
    StateMachine, StateMachineError, StorageError,
};

use common::{logger, test_config, wait_until};

/// How long one proposal may take before the write is tried again.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A map with a digest. The state is shared, so a node restarted with a clone resumes
/// where it stopped (a durable state machine). `skew` makes it non-deterministic: it
/// adds a key of its own on every seventh index.
#[derive(Default, Clone)]
struct Map {
    state: Arc<Mutex<MapState>>,
    skew: bool,
}

#[derive(Default)]
struct MapState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: u64,
}

impl StateMachine for Map {
    type Response = ();

    fn apply(&mut self, index: u64, command: &[u8]) {
        let mut s = self.state.lock();
        let (k, v) = command.split_at(command.iter().position(|b| *b == b'=').unwrap_or(0));
        s.map.insert(k.to_vec(), v.to_vec());
        if self.skew && index.is_multiple_of(7) {
            s.map.insert(b"skew".to_vec(), index.to_le_bytes().to_vec());
        }
        s.applied = index;
    }

    fn apply_noop(&mut self, index: u64) {
        self.state.lock().applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.state.lock().applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        let s = self.state.lock();
        let mut out = Vec::new();
        for (k, v) in &s.map {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        Ok(out.into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let mut map = BTreeMap::new();
        let mut rest = data;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StateMachineError> {
            let bad = || StateMachineError::new("cut snapshot");
            let n = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap());
            let part = rest.get(4..4 + n as usize).ok_or_else(bad)?.to_vec();
            *rest = &rest[4 + n as usize..];
            Ok(part)
        };
        while !rest.is_empty() {
            let k = take(&mut rest)?;
            map.insert(k, take(&mut rest)?);
        }
        *self.state.lock() = MapState {
            map,
            applied: index,
        };
        Ok(())
    }

    fn digest(&self) -> Option<u64> {
        let s = self.state.lock();
        let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ s.applied;
        for (k, v) in &s.map {
            for b in k.iter().chain([&0]).chain(v) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Some(h)
    }
}

/// In-memory voters 1..=n on one network, every node recording to `<dir>/node-<id>.rec`.
struct Recorded {
    network: ChannelNetwork,
    nodes: BTreeMap<u64, Node<Map>>,
    stores: BTreeMap<u64, MemLogStore>,
    sms: BTreeMap<u64, Map>,
    voters: Vec<u64>,
    dir: PathBuf,
    max_bytes: u64,
    /// Applied to every node's config after the test defaults.
    configure: fn(&mut Config),
}

impl Recorded {
    fn start(n: u64, dir: &Path, max_bytes: u64) -> Recorded {
        Recorded::start_with(n, dir, max_bytes, |_| {})
    }

    fn start_with(n: u64, dir: &Path, max_bytes: u64, configure: fn(&mut Config)) -> Recorded {
        let mut c = Recorded {
            network: ChannelNetwork::new(),
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            sms: BTreeMap::new(),
            voters: (1..=n).collect(),
            dir: dir.to_path_buf(),
            max_bytes,
            configure,
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    fn file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.rec"))
    }

    /// Starts (or restarts, on its retained store and state machine) node `id`.
    fn start_node(&mut self, id: u64) {
        let mut config: Config = test_config(id, &self.voters);
        config.record = Some(RecordTo::new(self.file(id), self.max_bytes));
        (self.configure)(&mut config);
        let store = self.stores.entry(id).or_default().clone();
        let sm = self.sms.entry(id).or_default().clone();
        let node = Node::start(config, store, sm, self.network.transport(id), &logger())
            .expect("node starts");
        self.nodes.insert(id, node);
    }

    fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("running");
        node.shutdown();
    }

    /// The one leader every running node in `ids` agrees on.
    fn leader_among(&self, ids: &[u64]) -> u64 {
        let mut leader = 0;
        wait_until("one agreed leader", || {
            let views: Vec<_> = ids.iter().map(|id| self.nodes[id].leader()).collect();
            leader = views[0].unwrap_or(0);
            leader != 0 && views.iter().all(|v| *v == Some(leader))
        });
        leader
    }

    /// Writes `key=value` through the leader of `ids`, trying again on a leader change
    /// until it applied.
    fn put(&self, ids: &[u64], key: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "{key} was never written");
            let leader = self.leader_among(ids);
            let written = self.nodes[&leader]
                .propose(format!("{key}={key}").into_bytes())
                .and_then(|mut h| h.wait_timeout(PROPOSE_TIMEOUT));
            if written.is_ok() {
                return;
            }
        }
    }

    /// Waits until every node in `ids` applied what the first one did.
    fn wait_converged(&self, ids: &[u64]) {
        wait_until("the nodes apply the same entries", || {
            let applied: Vec<_> = ids
                .iter()
                .map(|id| self.nodes[id].status().map(|s| (s.commit, s.applied)))
                .collect();
            applied.iter().all(|a| a.is_ok() && *a == applied[0])
        });
    }

    fn shutdown(&mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown();
        }
    }
}

/// The file's frames: (offset of the frame, payload).
fn frames(file: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 16;
    while at < file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, file[at + 8..at + 8 + len].to_vec()));
        at += 8 + len;
    }
    out
}

/// The file with frame `k`'s payload replaced (and its length and CRC made to match).
fn with_payload(file: &[u8], k: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = file[..16].to_vec();
    for (i, (_, p)) in frames(file).iter().enumerate() {
        let p = if i == k { payload } else { p };
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Record kinds and input kinds, as docs/operations.md lists them.
const INPUT: u8 = 2;
const START: u8 = 1;
const STEP: u8 = 1;
const DRIVE: u8 = 13;

/// The input kind of an input record (after the kind byte and the 8-byte offset).
fn input_kind(payload: &[u8]) -> Option<u8> {
    (payload[0] == INPUT).then(|| payload[9])
}

/// The messages of the file's step records.
fn steps(file: &[u8]) -> Vec<Message> {
    frames(file)
        .iter()
        .filter(|(_, p)| input_kind(p) == Some(STEP))
        .map(|(_, p)| {
            let len = u32::from_le_bytes(p[10..14].try_into().unwrap()) as usize;
            Message::parse_from_bytes(&p[14..14 + len]).unwrap()
        })
        .collect()
}

fn input_records(file: &[u8]) -> u64 {
    frames(file).iter().filter(|(_, p)| p[0] == INPUT).count() as u64
}

fn replay_ok(path: &Path) -> ReplayReport {
    let report = replay(path, Map::default).expect("the recording replays");
    assert_eq!(report.mismatch, None, "{}", path.display());
    report
}

/// Records the main run: writes, the leader cut off by a partition and healed, a
/// restart of that node on its retained store, more writes. Returns the cluster
/// (stopped), the restarted node's id, and the temporary directory.
fn record_run() -> (Recorded, u64, tempfile::TempDir) {
    record_run_with(|_| {})
}

fn record_run_with(configure: fn(&mut Config)) -> (Recorded, u64, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Recorded::start_with(3, dir.path(), 64 << 20, configure);
    let all = [1, 2, 3];
    for i in 0..10 {
        c.put(&all, &format!("a{i}"));
    }
    let victim = c.leader_among(&all);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != victim).collect();
    c.network.partition(&[victim], &rest);
    for i in 0..10 {
        c.put(&rest, &format!("b{i}"));
    }
    c.network.heal_partitions();
    c.wait_converged(&all);
    c.stop_node(victim);
    c.put(&rest, "c0");
    c.start_node(victim);
    for i in 1..10 {
        c.put(&all, &format!("c{i}"));
    }
    c.wait_converged(&all);
    c.shutdown();
    (c, victim, dir)
}

/// Proves the recorder and replay agree exactly on a run with a partition and a
/// restart: every node's file replays with no mismatch, input for input (every
/// message the replayed core sent has the recorded bytes), with the recorded segments
/// (two for the restarted node) and end states, to the live state machine's digest.
#[test]
fn a_partition_and_a_restart_replay_exactly() {
    let (c, victim, _dir) = record_run();
    assert_replays_exactly(&c, victim);
}

/// Proves the same with snapshots every few entries: compactions, the cut-off node
/// catching up from a `MsgSnapshot` and the snapshot reports replay exactly too.
#[test]
fn snapshots_and_compaction_replay_exactly() {
    let (c, victim, _dir) = record_run_with(|config| {
        config.snapshot.every_applied = 4;
        config.snapshot.trailing_entries = 1;
    });
    let file = std::fs::read(c.file(victim)).unwrap();
    let received = steps(&file)
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
    assert!(received, "node {victim} caught up from a snapshot");
    assert_replays_exactly(&c, victim);
}

fn assert_replays_exactly(c: &Recorded, victim: u64) {
    for id in [1, 2, 3] {
        let path = c.file(id);
        let file = std::fs::read(&path).unwrap();
        let report = replay_ok(&path);
        let segments = if id == victim { 2 } else { 1 };
        assert_eq!(report.segments, segments, "node {id}");
        assert_eq!(report.inputs, input_records(&file), "node {id}");
        assert_eq!(
            (report.truncated, report.unfinished),
            (false, 0),
            "node {id}"
        );
        assert!(
            report.messages > 0 && report.entries_applied >= 20,
            "{report:?}"
        );
        assert_eq!(report.final_digest, c.sms[&id].digest(), "node {id}");
    }
}

/// Proves a replay names the input where the core's effects first differ: a recorded
/// message from the leader altered to a later term makes the core answer with that
/// term, caught at that step or the drive after it (messages leave in drives); an
/// altered effects digest is caught at exactly its input.
#[test]
fn an_altered_input_is_a_mismatch_at_that_input() {
    let (c, victim, _dir) = record_run();
    let follower = [1, 2, 3].into_iter().find(|id| *id != victim).unwrap();
    let file = std::fs::read(c.file(follower)).unwrap();
    let all = frames(&file);
    // The first append or heartbeat of a leader's, well after the start.
    let (k, message) = all
        .iter()
        .enumerate()
        .skip(100)
        .find_map(|(k, (_, p))| {
            if input_kind(p) != Some(STEP) {
                return None;
            }
            let len = u32::from_le_bytes(p[10..14].try_into().unwrap()) as usize;
            let m = Message::parse_from_bytes(&p[14..14 + len]).unwrap();
            let kind = m.get_msg_type();
            (kind == MessageType::MsgAppend || kind == MessageType::MsgHeartbeat).then_some((k, m))
        })
        .expect("a heartbeat or append in the recording");
    let mut altered = message.clone();
    altered.term += 100;
    let p = &all[k].1;
    let len = u32::from_le_bytes(p[10..14].try_into().unwrap()) as usize;
    let bytes = altered.write_to_bytes().unwrap();
    let mut payload = p[..10].to_vec();
    payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    payload.extend_from_slice(&bytes);
    payload.extend_from_slice(&p[14 + len..]);
    let next_drive = (k..all.len())
        .find(|j| input_kind(&all[*j].1) == Some(DRIVE))
        .unwrap();
    let path = c.dir.join("altered-step.rec");
    std::fs::write(&path, with_payload(&file, k, &payload)).unwrap();
    let report = replay(&path, Map::default).unwrap();
    let mismatch = report.mismatch.expect("the altered message is caught");
    // The segment starts at frame 0, so a frame's index is its input number.
    let at = mismatch.input.expect("at an input") as usize;
    assert!(
        at >= k && at <= next_drive,
        "{mismatch} (altered {k}, drive {next_drive})"
    );
    assert_eq!(mismatch.segment, 0);

    // The digest of a later input changed: caught exactly there.
    let j = all.len() / 2;
    let mut p = all[j].1.clone();
    assert_eq!(p[0], INPUT);
    let digest_at = p.len() - 16;
    p[digest_at] ^= 0x01;
    std::fs::write(&path, with_payload(&file, j, &p)).unwrap();
    let mismatch = replay(&path, Map::default)
        .unwrap()
        .mismatch
        .expect("caught");
    assert_eq!(
        (mismatch.segment, mismatch.input),
        (0, Some(j as u64)),
        "{mismatch}"
    );
}

/// Proves a state machine that does not apply deterministically in the replay is caught
/// at the segment's end, by its digest (its responses are not part of the effects).
#[test]
fn a_non_deterministic_state_machine_is_caught_at_the_segment_end() {
    let (c, _, _dir) = record_run();
    let skewed = || Map {
        skew: true,
        ..Map::default()
    };
    let report = replay(c.file(1), skewed).unwrap();
    let mismatch = report.mismatch.expect("the skewed state machine is caught");
    assert_eq!((mismatch.input, mismatch.what), (None, "end"), "{mismatch}");
    assert!(mismatch.expected.contains("digest"), "{mismatch}");
}

/// Proves bad files are errors, never panics: a cut frame, a flipped bit (its CRC), a
/// foreign or empty file, another version, a missing file; a cut at a frame boundary is
/// a shorter recording whose last segment is unfinished; a node restarted on a file
/// whose last frame a crash cut cuts it off and appends a segment that replays.
#[test]
fn corrupt_or_cut_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Recorded::start(1, dir.path(), 64 << 20);
    for i in 0..5 {
        c.put(&[1], &format!("k{i}"));
    }
    c.shutdown();
    let file = std::fs::read(c.file(1)).unwrap();
    let path = dir.path().join("bad.rec");
    let format_error = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        match replay(&path, Map::default) {
            Err(ReplayError::Format { offset, detail }) => (offset, detail),
            other => panic!("not a format error: {other:?}"),
        }
    };
    let all = frames(&file);
    for &(offset, ref p) in all.iter().step_by(7) {
        let (at, detail) = format_error(&file[..offset + 8 + p.len() / 2]);
        assert_eq!(at, offset, "{detail}");
        assert!(detail.contains("ends inside"), "{detail}");
    }
    let mut flipped = file.clone();
    flipped[all[3].0 + 9] ^= 0x10;
    assert!(format_error(&flipped).1.contains("CRC"));
    assert!(format_error(b"").1.contains("not a raftnode recording"));
    assert!(format_error(b"GIF89a and then some")
        .1
        .contains("not a raftnode recording"));
    let mut version = file.clone();
    version[12] = 9;
    assert!(format_error(&version).1.contains("version 9"));
    std::fs::write(&path, &file[..all[all.len() / 2].0]).unwrap();
    let report = replay(&path, Map::default).unwrap();
    assert_eq!((report.mismatch, report.unfinished), (None, 1));
    // Frames whose CRC matches their altered bytes: a replay may differ or refuse
    // them, but it returns.
    for seed in 1..=200_u64 {
        let noise = common::xorshift_bytes(seed, 17);
        let k = 1 + noise[0] as usize % (all.len() - 1);
        let mut p = all[k].1.clone();
        for pair in noise[1..].chunks(2) {
            let at = 1 + pair[0] as usize % p.len().max(2).saturating_sub(1);
            if let Some(b) = p.get_mut(at) {
                *b ^= pair[1] | 1;
            }
        }
        std::fs::write(&path, with_payload(&file, k, &p)).unwrap();
        let outcome = replay(&path, Map::default);
        assert!(
            outcome
                .as_ref()
                .map_or(true, |r| r.inputs <= all.len() as u64),
            "seed {seed}: {outcome:?}"
        );
    }
    // A crash cut the last frame; the next start cuts it off and appends a segment.
    let end = all.last().unwrap().0;
    std::fs::write(c.file(1), &file[..end + 5]).unwrap();
    c.start_node(1);
    c.put(&[1], "after-the-crash");
    c.shutdown();
    let report = replay_ok(&c.file(1));
    assert_eq!((report.segments, report.unfinished), (2, 1));
    assert_eq!(report.final_digest, c.sms[&1].digest());
    let missing = dir.path().join("missing.rec");
    assert!(matches!(
        replay(&missing, Map::default),
        Err(ReplayError::Io { .. })
    ));
}

/// Proves the size bound: the file stops growing at `max_bytes` and says it was
/// truncated, the node keeps serving, a restart adds nothing to a full file, and the
/// replay reproduces the prefix exactly.
#[test]
fn the_size_bound_truncates_and_the_prefix_replays() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 16 << 10;
    let mut c = Recorded::start(1, dir.path(), max_bytes);
    let full = || std::fs::metadata(c.file(1)).map_or(0, |m| m.len()) + 64 > max_bytes;
    let mut i = 0;
    wait_until("the recording reaches its bound", || {
        c.put(&[1], &format!("k{i}"));
        i += 1;
        full()
    });
    for k in 0..5 {
        c.put(&[1], &format!("after{k}"));
    }
    c.stop_node(1);
    let len = std::fs::metadata(c.file(1)).unwrap().len();
    c.start_node(1);
    c.put(&[1], "restarted");
    c.shutdown();
    let file = std::fs::read(c.file(1)).unwrap();
    assert!(file.len() as u64 <= max_bytes, "{} bytes", file.len());
    assert_eq!(file.len() as u64, len, "a full file gets no new segment");
    let all = frames(&file);
    assert_eq!(
        all.last().unwrap().1,
        [4],
        "the file ends with the truncation marker"
    );
    assert_eq!(all[0].1[0], START);
    let report = replay_ok(&c.file(1));
    assert!(report.truncated);
    assert_eq!(report.inputs, input_records(&file));
    assert_eq!(report.segments, 1);
}

/// A `MemLogStore` whose `sync` fails once `fail` is set: a disk that broke.
#[derive(Clone, Default)]
struct BreakingStore {
    inner: MemLogStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

common::forward_storage!(BreakingStore, inner);

impl raftnode::LogStore for BreakingStore {
    fn append(&mut self, entries: &[raftnode::raft_types::Entry]) -> Result<(), StorageError> {
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &raftnode::raft_types::HardState) -> Result<(), StorageError> {
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &raftnode::raft_types::ConfState) -> Result<(), StorageError> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, s: raftnode::raft_types::Snapshot) -> Result<(), StorageError> {
        self.inner.apply_snapshot(s)
    }
    fn store_snapshot(&mut self, s: raftnode::raft_types::Snapshot) -> Result<(), StorageError> {
        self.inner.store_snapshot(s)
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Io {
                op: "sync".to_owned(),
                source: std::io::Error::other("the disk is gone"),
            });
        }
        self.inner.sync()
    }
}

/// Proves a failed write is part of the recording: the node stops on its broken disk,
/// and the replay fails the same write of the same input (the replay's store is in
/// memory and never fails on its own) and ends where the node ended.
#[test]
fn a_failed_write_fails_again_in_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node-1.rec");
    let mut config = test_config(1, &[1]);
    config.record = Some(RecordTo::new(&path, 64 << 20));
    let store = BreakingStore::default();
    let node = Node::start(
        config,
        store.clone(),
        Map::default(),
        ChannelNetwork::new().transport(1),
        &logger(),
    )
    .expect("node starts");
    wait_until("node 1 leads", || node.leader() == Some(1));
    for i in 0..3 {
        let mut h = node.propose(format!("k{i}=v").into_bytes()).unwrap();
        h.wait_timeout(PROPOSE_TIMEOUT).unwrap();
    }
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = node.propose(b"doomed=v".to_vec());
    let reason = node.wait_stopped(Duration::from_secs(10));
    assert!(
        matches!(reason, Some(raftnode::StopReason::Storage(_))),
        "{reason:?}"
    );
    let report = replay_ok(&path);
    assert_eq!((report.segments, report.unfinished), (1, 0));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(report.inputs, input_records(&file));
}

/// Proves groups on a `GroupHost` record too: one group of three members on three
/// hosts, each member recording to its own file, replays exactly.
#[test]
fn a_group_on_a_group_host_records_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut host_config = raftnode::HostConfig::default();
    host_config.threads = 1;
    let network = ChannelNetwork::new();
    let mut nodes = BTreeMap::new();
    let mut hosts = Vec::new();
    for id in 1..=3 {
        let host = raftnode::GroupHost::start(host_config.clone(), &logger()).unwrap();
        let mut config = test_config(id, &[1, 2, 3]);
        let path = dir.path().join(format!("group-5-node-{id}.rec"));
        config.record = Some(RecordTo::new(&path, 64 << 20));
        let sm = Map::default();
        let node = host
            .start_group(
                5,
                config,
                MemLogStore::new(),
                sm.clone(),
                network.transport(id),
            )
            .expect("group starts");
        nodes.insert(id, (node, sm, path));
        hosts.push(host);
    }
    let c = Recorded {
        network,
        nodes: nodes.iter().map(|(id, (n, ..))| (*id, n.clone())).collect(),
        stores: BTreeMap::new(),
        sms: BTreeMap::new(),
        voters: vec![1, 2, 3],
        dir: dir.path().to_path_buf(),
        max_bytes: 64 << 20,
        configure: |_| {},
    };
    for i in 0..10 {
        c.put(&[1, 2, 3], &format!("g{i}"));
    }
    c.wait_converged(&[1, 2, 3]);
    for (node, ..) in nodes.values() {
        node.shutdown();
    }
    for (id, (_, sm, path)) in &nodes {
        let report = replay_ok(path);
        assert_eq!((report.segments, report.unfinished), (1, 0), "node {id}");
        assert_eq!(report.final_digest, sm.digest(), "node {id}");
    }
    for host in hosts {
        host.shutdown();
    }
}

/// Proves the bound is validated: below `MIN_RECORD_BYTES` the config names the field.
#[test]
fn a_bound_below_the_minimum_is_refused() {
    let mut config = Config::new(1);
    config.record = Some(RecordTo::new("unused.rec", raftnode::MIN_RECORD_BYTES - 1));
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("record.max_bytes") && e.contains("4096"), "{e}");
    config.record = Some(RecordTo::new("unused.rec", raftnode::MIN_RECORD_BYTES));
    config.validate().unwrap();
}
