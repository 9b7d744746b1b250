//! Durability of `EngineLogStore`: the LogStore conformance suite on disk (reopen = drop
//! and open the directory again), restarts of durable nodes, injected disk faults, and
//! damaged files reported by name.
#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, Storage};
use raft_engine::env::{DefaultFileSystem, FileSystem, Handle, Permission, WriteExt};
use raftnode::testing::conformance;
use raftnode::{
    ChannelNetwork, Config, EngineLogStore, EngineOptions, LogEngine, LogStore, Node,
    ReadConsistency, StopReason, StorageError,
};

mod common;
#[path = "../examples/common/redb_kv.rs"]
mod redb_kv;

use common::DEADLINE;
use redb_kv::{encode_put, KvResponse, RedbKv};

fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64, size: usize) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            index,
            term,
            data: format!("{index:>size$}").into(),
            ..Entry::default()
        })
        .collect()
}

fn read_all<S: Storage>(store: &S) -> Vec<Entry> {
    let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
    store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
}

/// Proves EngineLogStore meets every LogStore obligation the suite checks, including
/// that a store dropped and reopened from disk reads the same (restart equivalence).
#[test]
fn engine_log_store_passes_the_conformance_suite() {
    let dirs = Rc::new(RefCell::new(Vec::new()));
    let kept = dirs.clone();
    conformance::run_all(
        move || {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = EngineLogStore::open(dir.path(), 1).expect("open store");
            kept.borrow_mut().push(dir);
            store
        },
        |store: EngineLogStore| {
            let dir = store.engine().dir().to_path_buf();
            let group = store.group();
            drop(store);
            EngineLogStore::open(dir, group).expect("reopen store")
        },
    );
}

/// Proves two engines read from one thread each return their own entries: raft-engine
/// 0.4's thread-local entry-block cache is keyed by file number and offset only, and
/// two stores with identical layouts would otherwise read each other's data.
#[test]
fn two_engines_in_one_thread_read_their_own_entries() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    conformance::check_compact(EngineLogStore::open(d1.path(), 1).unwrap());
    conformance::check_compact_past_snapshot_rejected(EngineLogStore::open(d2.path(), 1).unwrap());
    let mut a = EngineLogStore::open(d1.path().join("x"), 1).unwrap();
    let mut b = EngineLogStore::open(d2.path().join("x"), 1).unwrap();
    a.append(&entries(1..=10, 1, 8)).unwrap();
    b.append(&entries(1..=10, 2, 8)).unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    drop((a, b));
    let a = EngineLogStore::open(d1.path().join("x"), 1).unwrap();
    let b = EngineLogStore::open(d2.path().join("x"), 1).unwrap();
    assert_eq!(read_all(&a), entries(1..=10, 1, 8));
    assert_eq!(read_all(&b), entries(1..=10, 2, 8));
}

/// Proves several groups share one engine directory, each with its own log, state and
/// snapshot files, and that a second store for an open group is refused.
#[test]
fn groups_share_one_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let mut one = EngineLogStore::with_engine(engine.clone(), 1).unwrap();
    let mut two = EngineLogStore::with_engine(engine.clone(), 2).unwrap();
    let err = EngineLogStore::with_engine(engine.clone(), 1).unwrap_err();
    assert!(matches!(err, StorageError::Invalid { .. }), "{err}");
    one.append(&entries(1..=5, 1, 4)).unwrap();
    two.append(&entries(1..=3, 7, 4)).unwrap();
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 2;
    snapshot.mut_metadata().term = 7;
    snapshot.data = "two at 2".into();
    two.store_snapshot(snapshot).unwrap();
    one.sync().unwrap();
    two.sync().unwrap();
    drop((one, two, engine));

    let engine = LogEngine::open(dir.path()).unwrap();
    assert_eq!(engine.groups().len(), 2);
    let one = EngineLogStore::with_engine(engine.clone(), 1).unwrap();
    let two = EngineLogStore::with_engine(engine, 2).unwrap();
    assert_eq!(read_all(&one), entries(1..=5, 1, 4));
    assert_eq!(read_all(&two), entries(1..=3, 7, 4));
    assert_eq!(two.snapshot(0, 0).unwrap().data, "two at 2".as_bytes());
    assert!(one.snapshot(0, 0).is_err(), "group 1 has no snapshot");
}

/// Proves a log file damaged in the middle (not a torn tail) makes the restart fail with
/// `StorageError::Corrupt` naming that file, instead of silently dropping entries.
#[test]
fn damaged_log_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EngineOptions::default();
    options.target_file_size_bytes = 64 << 10;
    options.purge_threshold_bytes = 1 << 20;
    let fs = Arc::new(DefaultFileSystem);
    {
        let engine = LogEngine::open_with(dir.path(), fs.clone(), options.clone()).unwrap();
        let mut store = EngineLogStore::with_engine(engine, 1).unwrap();
        // Incompressible data, so the log spans several 64 KiB files.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for batch in 0..40u64 {
            let mut batch_entries = entries(batch * 10 + 1..=batch * 10 + 10, 1, 1);
            for entry in &mut batch_entries {
                let data: Vec<u8> = (0..1000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                entry.data = data.into();
            }
            store.append(&batch_entries).unwrap();
            store.sync().unwrap();
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("engine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the log spans several files: {files:?}");
    let victim = &files[0];
    damage_middle(victim);

    // Damage in a record header fails the engine's recovery; damage in entry data fails
    // the store's load (entries are checksummed per batch). Either must name the file.
    let err = LogEngine::open_with(dir.path(), fs, options)
        .and_then(|engine| EngineLogStore::with_engine(engine, 1))
        .unwrap_err();
    let StorageError::Corrupt { path, detail } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(Path::new(path), victim.as_path(), "{err}");
    assert!(detail.contains("re-add the node"), "{detail}");
}

/// Proves a damaged snapshot file is caught by its checksum at open, with an error
/// naming the file.
#[test]
fn damaged_snapshot_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut store = EngineLogStore::open(dir.path(), 1).unwrap();
        store.append(&entries(1..=3, 1, 4)).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        snapshot.mut_metadata().term = 1;
        snapshot.data = vec![7u8; 4096].into();
        store.store_snapshot(snapshot).unwrap();
        store.snapshot_path().unwrap().to_path_buf()
    };
    damage_middle(&path);
    let err = EngineLogStore::open(dir.path(), 1).unwrap_err();
    let StorageError::Corrupt { path: named, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(Path::new(named), path.as_path(), "{err}");
}

fn damage_middle(path: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).unwrap();
    let middle = raw.len() / 2;
    let garbage: Vec<u8> = raw[middle..middle + 64].iter().map(|b| !b).collect();
    file.seek(SeekFrom::Start(middle as u64)).unwrap();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
}

// ------------------------------------------------------------ fault injection

/// Switches shared by a [`FaultyFs`] and every file it opened.
#[derive(Default)]
struct Faults {
    fail_sync: AtomicBool,
    fail_write: AtomicBool,
}

/// raft-engine's default file system with fsync and write failures on demand.
struct FaultyFs {
    inner: DefaultFileSystem,
    faults: Arc<Faults>,
}

type InnerHandle = <DefaultFileSystem as FileSystem>::Handle;
type InnerWriter = <DefaultFileSystem as FileSystem>::Writer;

struct FaultyHandle {
    inner: Arc<InnerHandle>,
    faults: Arc<Faults>,
}

impl Handle for FaultyHandle {
    fn truncate(&self, offset: usize) -> std::io::Result<()> {
        self.inner.truncate(offset)
    }

    fn file_size(&self) -> std::io::Result<usize> {
        self.inner.file_size()
    }

    fn sync(&self) -> std::io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        self.inner.sync()
    }
}

struct FaultyWriter {
    inner: InnerWriter,
    faults: Arc<Faults>,
}

impl Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.faults.fail_write.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for FaultyWriter {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl WriteExt for FaultyWriter {
    fn truncate(&mut self, offset: usize) -> std::io::Result<()> {
        self.inner.truncate(offset)
    }

    fn allocate(&mut self, offset: usize, size: usize) -> std::io::Result<()> {
        self.inner.allocate(offset, size)
    }
}

impl FileSystem for FaultyFs {
    type Handle = FaultyHandle;
    type Reader = <DefaultFileSystem as FileSystem>::Reader;
    type Writer = FaultyWriter;

    fn create<P: AsRef<Path>>(&self, path: P) -> std::io::Result<FaultyHandle> {
        Ok(FaultyHandle {
            inner: Arc::new(self.inner.create(path)?),
            faults: self.faults.clone(),
        })
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> std::io::Result<FaultyHandle> {
        Ok(FaultyHandle {
            inner: Arc::new(self.inner.open(path, perm)?),
            faults: self.faults.clone(),
        })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> std::io::Result<()> {
        self.inner.delete(path)
    }

    fn rename<P: AsRef<Path>>(&self, src: P, dst: P) -> std::io::Result<()> {
        self.inner.rename(src, dst)
    }

    fn new_reader(&self, handle: Arc<FaultyHandle>) -> std::io::Result<Self::Reader> {
        self.inner.new_reader(handle.inner.clone())
    }

    fn new_writer(&self, handle: Arc<FaultyHandle>) -> std::io::Result<FaultyWriter> {
        Ok(FaultyWriter {
            inner: self.inner.new_writer(handle.inner.clone())?,
            faults: self.faults.clone(),
        })
    }
}

fn single_node_config() -> Config {
    let mut config = Config::new(1);
    config.initial_voters = vec![1];
    config.tick_interval = Duration::from_millis(5);
    config
}

fn start_leader<S: LogStore>(store: S, kv: RedbKv, network: &ChannelNetwork) -> Node<RedbKv> {
    let node = Node::start(
        single_node_config(),
        store,
        kv,
        network.transport(1),
        &raftnode::discard_logger(),
    )
    .unwrap();
    node.wait_for_leader(DEADLINE).unwrap();
    node
}

/// Runs the fault scenario with one fault switch: writes acknowledged before the fault
/// survive a restart on a healthy disk; after the fault the node stops with
/// `StopReason::Storage` and acknowledges nothing more.
fn fault_scenario(arm: impl FnOnce(&Faults), fault_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let fs = Arc::new(FaultyFs {
        inner: DefaultFileSystem,
        faults: faults.clone(),
    });
    let network = ChannelNetwork::new();
    let engine =
        LogEngine::open_with(dir.path().join("raft"), fs, EngineOptions::default()).unwrap();
    let store = EngineLogStore::with_engine(engine, 1).unwrap();
    let kv = RedbKv::open(dir.path().join("kv")).unwrap();
    let node = start_leader(store, kv, &network);

    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("before-{i}");
        let response = node
            .propose(encode_put(key.as_bytes(), b"v"))
            .unwrap()
            .wait();
        assert_eq!(response, Ok(KvResponse::Put { previous: None }));
        acked.push(key);
    }

    assert!(
        node.wait_stopped(Duration::from_millis(1)).is_none(),
        "{fault_name}: wait_stopped returned while the node runs"
    );
    arm(&faults);
    let mut late_acks = Vec::new();
    for i in 0..20 {
        let key = format!("after-{i}");
        if let Ok(mut handle) = node.propose(encode_put(key.as_bytes(), b"v")) {
            // Bounded wait: a proposal queued just as the driver stops is not resolved
            // until the node is dropped (reported to the runtime's owner). Either way
            // it must not come back Ok.
            if handle.wait_timeout(Duration::from_secs(2)).is_ok() {
                late_acks.push(key);
            }
        }
    }
    assert!(
        late_acks.is_empty(),
        "{fault_name}: writes acknowledged after the fault: {late_acks:?}"
    );
    let reason = node.wait_stopped(DEADLINE);
    assert!(
        matches!(&reason, Some(StopReason::Storage(_))),
        "{fault_name}: stop reason {reason:?}"
    );
    assert_eq!(node.stop_reason(), reason);
    drop(node);

    // Restart on a healthy disk: every acknowledged write is there, applied once.
    let network = ChannelNetwork::new();
    let store = EngineLogStore::open(dir.path().join("raft"), 1).unwrap();
    let kv = RedbKv::open(dir.path().join("kv")).unwrap();
    let node = start_leader(store, kv, &network);
    let expected = acked.clone();
    let missing = node
        .read(ReadConsistency::Linearizable, DEADLINE, move |kv| {
            expected
                .iter()
                .filter(|k| kv.entry(k.as_bytes()).map(|e| e.version) != Some(1))
                .cloned()
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        missing.is_empty(),
        "{fault_name}: lost or double-applied: {missing:?}"
    );
    node.shutdown();
}

/// Proves a failed fsync stops the node with a storage error, acknowledges nothing after
/// it, and loses nothing acknowledged before it (restart on a healthy disk).
#[test]
fn failed_fsync_stops_the_node_and_loses_nothing_acknowledged() {
    fault_scenario(|f| f.fail_sync.store(true, Ordering::SeqCst), "fsync");
}

/// Proves the same for a failed write to the log file.
#[test]
fn failed_write_stops_the_node_and_loses_nothing_acknowledged() {
    fault_scenario(|f| f.fail_write.store(true, Ordering::SeqCst), "write");
}

// ------------------------------------------------------------ RedbKv

/// Every state `kv` went through: (applied index, all keys) after each commit.
fn redb_state(kv: &RedbKv) -> (u64, Vec<(bytes::Bytes, redb_kv::KvEntry)>) {
    use raftnode::StateMachine;
    (kv.applied_index(), kv.scan_prefix(b""))
}

/// Proves RedbKv commits the data and the applied index in one transaction: whatever a
/// crash leaves (the file as written so far, copied while the database is open, as a
/// SIGKILL leaves it), a reopen finds the exact state of one earlier applied index, never
/// a mix, and never one older than the last durable commit.
#[test]
fn redb_kv_crash_leaves_data_and_applied_index_of_one_commit() {
    use raftnode::StateMachine;
    use redb_kv::{encode_cas, encode_delete, encode_get};
    const DURABLE_EVERY: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut kv = RedbKv::open_with(dir.path().join("live"), DURABLE_EVERY).unwrap();
    let mut states = vec![redb_state(&kv)];
    let mut last_durable = 0;
    for index in 1..=40u64 {
        let key = format!("k{:02}", index % 7);
        match index % 5 {
            0 => kv.apply_noop(index),
            1 => drop(kv.apply(index, &encode_put(key.as_bytes(), b"p"))),
            2 => drop(kv.apply(index, &encode_cas(key.as_bytes(), Some(b"p"), b"c"))),
            3 => drop(kv.apply(
                index,
                &encode_delete(format!("k{:02}", index % 3).as_bytes()),
            )),
            _ => drop(kv.apply(index, &encode_get(key.as_bytes()))),
        }
        if index % DURABLE_EVERY == 0 {
            last_durable = index;
        }
        states.push(redb_state(&kv));

        let crashed = dir.path().join(format!("crash-{index}"));
        std::fs::create_dir(&crashed).unwrap();
        std::fs::copy(kv.path(), crashed.join(redb_kv::DB_FILE)).unwrap();
        let reopened = RedbKv::open(&crashed).unwrap();
        let (applied, keys) = redb_state(&reopened);
        assert!(
            (last_durable..=index).contains(&applied),
            "after commit {index}: reopened at {applied}, last durable commit {last_durable}"
        );
        assert_eq!(
            (applied, keys),
            states[applied as usize],
            "after commit {index}: the data is not the state at its applied index"
        );
    }
}

/// Proves a clean drop makes the non-durable commits durable (a restart replays nothing),
/// and that entries applied on top of a reopened store count versions on from the
/// stored ones.
#[test]
fn redb_kv_clean_drop_keeps_every_apply() {
    use raftnode::StateMachine;
    let dir = tempfile::tempdir().unwrap();
    let mut kv = RedbKv::open(dir.path()).unwrap();
    for index in 1..=5u64 {
        kv.apply(index, &encode_put(b"k", format!("v{index}").as_bytes()));
    }
    drop(kv);
    let mut kv = RedbKv::open(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 5);
    assert_eq!(
        kv.apply(6, &encode_put(b"k", b"v6")),
        KvResponse::Put {
            previous: Some("v5".into())
        }
    );
    let entry = kv.entry(b"k").unwrap();
    assert_eq!((entry.version, entry.index), (6, 6));
    assert_eq!((kv.len(), kv.total_versions()), (1, 6));
}

/// Proves undecodable commands are `Invalid` (no panic, no change, the applied index
/// still moves), and that commands round-trip through their encoding.
#[test]
fn redb_kv_bad_commands_are_invalid_and_change_nothing() {
    use raftnode::StateMachine;
    use redb_kv::{encode_cas, encode_delete, encode_get, KvCommand};
    let dir = tempfile::tempdir().unwrap();
    let mut kv = RedbKv::open(dir.path()).unwrap();
    kv.apply(1, &encode_put(b"a", b"1"));
    let before = kv.scan_prefix(b"");
    let mut put = encode_put(b"b", b"2");
    put.push(0); // a byte after the command
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut index = 1;
    let mut bad = vec![Vec::new(), vec![0xff], vec![7, 1, 2], put];
    bad.extend((0..500).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Tag 0..=4 (4 is unknown), then random lengths and bytes.
        let mut raw = vec![(x % 5) as u8];
        raw.extend((0..(x >> 8) % 12).map(|i| (x >> (i * 5)) as u8));
        raw
    }));
    for raw in bad {
        let Err(reason) = KvCommand::decode(&raw) else {
            continue; // a random input that happens to be a valid command
        };
        index += 1;
        assert_eq!(kv.apply(index, &raw), KvResponse::Invalid(reason));
        assert_eq!(kv.applied_index(), index);
    }
    assert!(index > 100, "most random inputs are invalid");
    assert_eq!(kv.scan_prefix(b""), before);
    for command in [
        encode_put(b"k", b"v"),
        encode_delete(b"k"),
        encode_get(b"k"),
        encode_cas(b"k", Some(b"a"), b"b"),
        encode_cas(b"k", None, b""),
    ] {
        assert_eq!(KvCommand::decode(&command).unwrap().encode(), command);
    }
}

/// Proves a snapshot restores an equal state (replacing every old key, atomically and
/// durably), and that truncated, padded, foreign, unordered or overlong snapshots are
/// refused by `check_snapshot` and by `restore` without changing the state.
#[test]
fn redb_kv_snapshot_restores_and_bad_snapshots_are_refused() {
    use raftnode::StateMachine;
    let dir = tempfile::tempdir().unwrap();
    let mut source = RedbKv::open(dir.path().join("source")).unwrap();
    for i in 1..=50u64 {
        source.apply(i, &encode_put(format!("s{i:03}").as_bytes(), b"x"));
    }
    source.apply(51, &encode_put(b"s001", b"y"));
    let snapshot = source.snapshot().unwrap();
    let mut target = RedbKv::open(dir.path().join("target")).unwrap();
    target.apply(1, &encode_put(b"old", b"gone after restore"));
    let target_before = redb_state(&target);

    let mut padded = snapshot.to_vec();
    padded.push(0);
    let mut foreign = snapshot.to_vec();
    foreign[0] = 2; // format 2 (postcard: a u32 below 128 is one byte)
                    // postcard by hand: format 1, 2 entries, ("b", "x", 1, 1) then ("a", "x", 1, 2).
    let out_of_order = vec![1, 2, 1, b'b', 1, b'x', 1, 1, 1, b'a', 1, b'x', 1, 2];
    // Format 1 and a claim of 2^32 - 1 entries with none following: refused without
    // allocating for them.
    let huge_count = vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f];
    for (name, bad) in [
        ("empty", Vec::new()),
        ("truncated", snapshot[..snapshot.len() - 1].to_vec()),
        ("padded", padded),
        ("foreign format", foreign),
        ("keys out of order", out_of_order),
        ("huge entry count", huge_count),
    ] {
        assert!(
            target.check_snapshot(60, &bad).is_err(),
            "{name} passed the check"
        );
        assert!(target.restore(60, &bad).is_err(), "{name} restored");
        assert_eq!(
            redb_state(&target),
            target_before,
            "{name} changed the state"
        );
    }

    target.check_snapshot(60, &snapshot).unwrap();
    target.restore(60, &snapshot).unwrap();
    assert_eq!(target.applied_index(), 60);
    assert_eq!(target.scan_prefix(b""), source.scan_prefix(b""));
    assert!(target.get(b"old").is_none());
    // Durable before `restore` returned: the file as it is now reopens at 60.
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    std::fs::copy(target.path(), crashed.join(redb_kv::DB_FILE)).unwrap();
    let reopened = RedbKv::open(&crashed).unwrap();
    assert_eq!(redb_state(&reopened), redb_state(&target));
    assert_eq!((reopened.len(), reopened.total_versions()), (50, 51));
}

/// Proves RedbKv writes the session table in the same transaction as the data: whatever
/// a crash leaves (the file copied while open, as after a SIGKILL), `Sessions::new` on
/// the reopened store has exactly the table and data of one earlier applied index (the
/// wrapper's snapshot, table and data, is byte for byte the one taken at that index),
/// so a retry is never answered by a table older or newer than the data.
#[test]
fn redb_kv_session_table_commits_with_the_data() {
    use raftnode::{Session, Sessions, StateMachine};
    const DURABLE_EVERY: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let live = RedbKv::open_with(dir.path().join("live"), DURABLE_EVERY).unwrap();
    let mut kv = Sessions::new(live).unwrap();
    let mut states = vec![kv.snapshot().unwrap()];
    let mut sessions: Vec<Session> = Vec::new();
    for index in 1..=40u64 {
        match index % 4 {
            // A registration, a new command, a repeat, a plain command.
            1 => {
                kv.apply(index, &Sessions::<RedbKv>::register_command());
                sessions.push(Session::resume(index, 1));
            }
            2 => {
                let s = sessions.last_mut().unwrap();
                drop(kv.apply(
                    index,
                    s.command(&encode_put(b"k", &index.to_le_bytes())).bytes(),
                ));
            }
            3 => {
                let s = sessions.last().unwrap();
                let repeat = Session::resume(s.id(), s.next_seq() - 1);
                drop(kv.apply(
                    index,
                    repeat.clone().command(&encode_put(b"k", b"again")).bytes(),
                ));
            }
            _ => drop(kv.apply(index, &Sessions::<RedbKv>::plain(&encode_put(b"p", b"v")))),
        }
        states.push(kv.snapshot().unwrap());
        let crashed = dir.path().join(format!("crash-{index}"));
        std::fs::create_dir(&crashed).unwrap();
        std::fs::copy(kv.inner().path(), crashed.join(redb_kv::DB_FILE)).unwrap();
        let reopened = Sessions::new(RedbKv::open(&crashed).unwrap()).unwrap();
        let applied = reopened.applied_index();
        assert!(
            applied <= index,
            "after commit {index}: reopened at {applied}"
        );
        assert_eq!(
            reopened.snapshot().unwrap(),
            states[applied as usize],
            "after commit {index}: table and data are not those of applied index {applied}"
        );
    }
    assert!(kv.len() >= 10, "ten sessions registered: {}", kv.len());
}
