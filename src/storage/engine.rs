//! [`EngineLogStore`]: a durable [`LogStore`] on TiKV's raft-engine, and [`LogEngine`],
//! one opened engine directory that several Raft groups can share.
//!
//! See `docs/durability.md` for the guarantees, the file layout and the fault behaviour.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use raft_engine::env::{DefaultFileSystem, FileSystem, Handle, Permission};
use raft_engine::{Command, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use crate::error::StorageError;
use crate::log_store::LogStore;
use crate::storage::snapshot_file;
use crate::storage::window::LogWindow;

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// `(index, term)` of the entry just before the first one (the compaction point).
const KEY_TRUNCATED: &[u8] = b"truncated";

/// Pending writes above this size are written to the engine (without fsync) before the
/// next `sync`, so one huge Ready does not build an unbounded batch in memory.
const MAX_PENDING_BYTES: usize = 8 << 20;
/// `purge_expired_files` runs once every this many compactions.
const COMPACTIONS_PER_PURGE: u64 = 16;
/// Entries read per engine call when loading the log at open.
const LOAD_CHUNK: u64 = 1024;

/// Tells raft-engine how to find the index of a raft-rs [`Entry`].
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// Knobs of a [`LogEngine`]; [`EngineOptions::default`] suits most uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Size at which raft-engine starts a new log file. Default 32 MiB.
    pub target_file_size_bytes: u64,
    /// Once the log files take more than this, raft-engine rewrites or purges old files
    /// when asked to purge (after compactions). Default 1 GiB.
    pub purge_threshold_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            target_file_size_bytes: 32 << 20,
            purge_threshold_bytes: 1 << 30,
        }
    }
}

/// One raft-engine directory, opened once and shared by every [`EngineLogStore`] on it
/// (one Raft group each, the group id being raft-engine's region id).
///
/// Layout of `dir`: `engine/` holds raft-engine's log files, `snapshots/` the snapshot
/// files (`<group>-<index>-<term>.snap`). raft-engine locks `engine/`: a second process
/// (or a second `LogEngine` in this one) cannot open the same directory.
///
/// After a write to the engine fails (a failed fsync makes raft-engine panic; that panic
/// is caught here), the engine is marked failed and every store on it refuses further
/// writes: drop them all and reopen the directory.
pub struct LogEngine<F: FileSystem = DefaultFileSystem> {
    engine: Engine<CheckedFs<F>>,
    dir: PathBuf,
    snapshot_dir: PathBuf,
    /// Groups with an open store: two stores for one group would corrupt each other's
    /// view of the log.
    open_groups: Mutex<BTreeSet<u64>>,
    /// Set by the first failed write or fsync (shared with the [`CheckedFs`] under the
    /// engine); every later write on any group fails with it.
    failure: Arc<Mutex<Option<String>>>,
}

impl LogEngine<DefaultFileSystem> {
    /// Opens (or creates) the engine directory `dir` with default options.
    ///
    /// # Errors
    ///
    /// [`StorageError::Io`] when the directory cannot be created or read, or is locked by
    /// another process; [`StorageError::Corrupt`] naming the damaged log file when
    /// recovery finds damage before the tail of the last file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<Self>, StorageError> {
        Self::open_with(dir, Arc::new(DefaultFileSystem), EngineOptions::default())
    }
}

impl<F: FileSystem + 'static> LogEngine<F> {
    /// Opens `dir` through the file system `file_system` (raft-engine's I/O layer; tests
    /// pass one that injects faults) with `options`.
    ///
    /// # Errors
    ///
    /// As [`LogEngine::open`].
    pub fn open_with(
        dir: impl AsRef<Path>,
        file_system: Arc<F>,
        options: EngineOptions,
    ) -> Result<Arc<Self>, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let engine_dir = dir.join("engine");
        let snapshot_dir = dir.join("snapshots");
        for d in [&dir, &engine_dir, &snapshot_dir] {
            std::fs::create_dir_all(d).map_err(|source| StorageError::Io {
                op: format!("create directory {}", d.display()),
                source,
            })?;
        }
        let config = raft_engine::Config {
            dir: engine_dir.display().to_string(),
            // A crash can tear the last write; that write was never acknowledged (its
            // sync did not return), so dropping it is correct. Damage anywhere else is
            // reported, never skipped. See docs/durability.md.
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize(options.target_file_size_bytes),
            purge_threshold: ReadableSize(options.purge_threshold_bytes),
            recovery_threads: 1,
            ..raft_engine::Config::default()
        };
        let failure = Arc::new(Mutex::new(None));
        let checked = Arc::new(CheckedFs {
            inner: file_system,
            failure: failure.clone(),
        });
        let engine = Engine::open_with_file_system(config, checked.clone())
            .map_err(|e| open_error(&engine_dir, &checked, e))?;
        if let Some(why) = failure.lock().clone() {
            return Err(StorageError::Engine {
                op: "open raft-engine",
                detail: why,
            });
        }
        Ok(Arc::new(LogEngine {
            engine,
            dir,
            snapshot_dir,
            open_groups: Mutex::new(BTreeSet::new()),
            failure,
        }))
    }

    /// The directory this engine was opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of the groups that have state in this engine.
    pub fn groups(&self) -> Vec<u64> {
        self.engine.raft_groups()
    }

    /// Why the engine stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Writes `batch`, turning raft-engine's panic on a failed fsync into an error and
    /// marking the engine failed on any error.
    fn write(
        &self,
        op: &'static str,
        batch: &mut LogBatch,
        sync: bool,
    ) -> Result<(), StorageError> {
        if let Some(failure) = self.failure() {
            return Err(failed(op, &failure));
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| self.engine.write(batch, sync)));
        let detail = match outcome {
            // An fsync that failed under this write was recorded by CheckedFs.
            Ok(Ok(_)) => match self.failure() {
                None => return Ok(()),
                Some(why) => return Err(StorageError::Engine { op, detail: why }),
            },
            Ok(Err(raft_engine::Error::Io(source))) => {
                self.fail(format!("{op}: {source}"));
                return Err(StorageError::Io {
                    op: format!("{op} (raft-engine write)"),
                    source,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!(
                "raft-engine panicked (fsync or write failed): {}",
                panic_text(&panic)
            ),
        };
        self.fail(format!("{op}: {detail}"));
        Err(StorageError::Engine { op, detail })
    }

    fn fail(&self, why: String) {
        self.failure.lock().get_or_insert(why);
    }
}

impl<F: FileSystem> fmt::Debug for LogEngine<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogEngine")
            .field("dir", &self.dir)
            .field("failure", &*self.failure.lock())
            .finish_non_exhaustive()
    }
}

fn failed(op: &'static str, failure: &str) -> StorageError {
    StorageError::Engine {
        op,
        detail: format!(
            "the log engine failed earlier ({failure}); no write is accepted after that: \
             drop every store and reopen the directory"
        ),
    }
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// Maps an error from `Engine::open`; for corruption, finds the damaged file.
fn open_error<F: FileSystem>(
    engine_dir: &Path,
    file_system: &Arc<F>,
    error: raft_engine::Error,
) -> StorageError {
    match error {
        raft_engine::Error::Io(source) => StorageError::Io {
            op: format!("open raft-engine directory {}", engine_dir.display()),
            source,
        },
        raft_engine::Error::Corruption(_) | raft_engine::Error::Codec(_) => {
            let file = find_damaged_file(engine_dir, file_system);
            StorageError::Corrupt {
                path: file.unwrap_or_else(|| engine_dir.display().to_string()),
                detail: format!(
                    "raft-engine recovery failed: {error}. The damage is before the tail of \
                     the last log file, so it is not a torn write from a crash: entries this \
                     node acknowledged may be lost. Do not delete the file by hand; move this \
                     node's data directory aside and re-add the node to the cluster so it \
                     catches up from the leader"
                ),
            }
        }
        other => StorageError::Engine {
            op: "open raft-engine",
            detail: other.to_string(),
        },
    }
}

/// Reads each log file on its own and returns the first that fails to decode.
fn find_damaged_file<F: FileSystem>(engine_dir: &Path, file_system: &Arc<F>) -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(engine_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "raftlog" || ext == "rewrite")
        })
        .collect();
    files.sort();
    files.into_iter().find_map(|file| {
        let damaged = match Engine::<F>::dump_with_file_system(&file, file_system.clone()) {
            Ok(mut items) => items.any(|item| item.is_err()),
            Err(_) => true,
        };
        damaged.then(|| file.display().to_string())
    })
}

/// A durable [`LogStore`] for one Raft group on raft-engine.
///
/// Writes of one Ready (snapshot, entries, HardState, ConfState) are gathered in one
/// raft-engine `LogBatch` and written with a single `write(batch, sync = true)` when the
/// driver calls [`LogStore::sync`]: one fsync per Ready. Until then they live in the
/// batch and in memory, and every read sees them (read your writes). Writes not followed
/// by a sync (the commit index of a `LightReady`) ride with the next sync, or are
/// written when the store is dropped.
///
/// Snapshots are files next to the engine (see [`LogEngine`]); the engine holds their
/// metadata, and [`raft::Storage::snapshot`] serves the newest one with its data cached
/// in memory.
///
/// The log between the compaction point and the last index is also kept in memory (as
/// etcd keeps its `MemoryStorage` next to its WAL): raft reads entries and terms
/// constantly, and the engine is only read when the store opens. Memory use is bounded
/// by [`crate::SnapshotPolicy`], which compacts the log. Reading at open happens on a
/// short-lived thread of its own: raft-engine 0.4 caches the last entry block it read
/// in a thread-local keyed by file number and offset only, so a thread that read from
/// another engine (or from an earlier instance of this one) could be served a stale
/// block.
///
/// # Examples
///
/// ```
/// use raft::eraftpb::Entry;
/// use raft::Storage;
/// use raftnode::{EngineLogStore, LogStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let mut store = EngineLogStore::open(dir.path(), 1)?;
/// store.append(&[Entry { index: 1, term: 1, data: "set x".into(), ..Entry::default() }])?;
/// store.sync()?;
/// drop(store);
///
/// let store = EngineLogStore::open(dir.path(), 1)?;
/// assert_eq!(store.last_index()?, 1);
/// # Ok(())
/// # }
/// ```
pub struct EngineLogStore<F: FileSystem + 'static = DefaultFileSystem> {
    engine: Arc<LogEngine<F>>,
    group: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// The file holding the window's snapshot's data.
    snapshot_path: Option<PathBuf>,
    /// The log, its compaction point and the newest snapshot stored or applied (with
    /// its data), on the window every store shares (src/storage/window.rs). Every read
    /// is served from here, including entries still in `pending`.
    window: LogWindow,
    /// Writes not yet handed to the engine.
    pending: LogBatch,
    /// Writes handed to the engine without fsync (the next `sync` must fsync).
    unsynced: bool,
    /// Snapshot files to delete once the snapshot replacing them is durable.
    obsolete_snapshots: Vec<PathBuf>,
    compactions: u64,
}

impl EngineLogStore<DefaultFileSystem> {
    /// Opens the store of group `group` in its own engine directory `dir` (created if
    /// missing). To run several groups on one directory, open a [`LogEngine`] once and
    /// use [`EngineLogStore::with_engine`].
    ///
    /// # Errors
    ///
    /// See [`LogEngine::open`] and [`EngineLogStore::with_engine`].
    pub fn open(dir: impl AsRef<Path>, group: u64) -> Result<Self, StorageError> {
        Self::with_engine(LogEngine::open(dir)?, group)
    }
}

impl<F: FileSystem + 'static> EngineLogStore<F> {
    /// Opens the store of group `group` on a shared engine and loads its state.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] when a store for `group` is already open on this
    /// engine; [`StorageError::Corrupt`] when the stored state does not decode, the log
    /// does not start at the compaction point, or the snapshot file is missing or
    /// damaged (the error names the file); [`StorageError::Engine`] when reading fails.
    pub fn with_engine(engine: Arc<LogEngine<F>>, group: u64) -> Result<Self, StorageError> {
        if !engine.open_groups.lock().insert(group) {
            return Err(StorageError::Invalid {
                op: "open",
                detail: format!(
                    "a store for group {group} is already open on {}",
                    engine.dir.display()
                ),
            });
        }
        let mut store = EngineLogStore {
            engine,
            group,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_path: None,
            window: LogWindow::default(),
            pending: LogBatch::default(),
            unsynced: false,
            obsolete_snapshots: Vec::new(),
            compactions: 0,
        };
        // On error the store is dropped here and releases the group.
        store.load()?;
        Ok(store)
    }

    /// The group (raft-engine region) this store holds.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The engine this store writes to.
    pub fn engine(&self) -> &Arc<LogEngine<F>> {
        &self.engine
    }

    /// The stored HardState.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The stored ConfState.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Path of the file holding the newest snapshot, if one was stored.
    pub fn snapshot_path(&self) -> Option<&Path> {
        self.snapshot_path.as_deref()
    }

    fn load(&mut self) -> Result<(), StorageError> {
        let engine = &self.engine.engine;
        let group = self.group;
        let key_error = |key: &[u8], e: raft_engine::Error| StorageError::Corrupt {
            path: format!(
                "{} (group {group}, key {})",
                self.engine.dir.join("engine").display(),
                String::from_utf8_lossy(key)
            ),
            detail: format!(
                "{e}; the stored state does not decode: restore the directory from a backup \
                 or re-add the node"
            ),
        };
        self.hard_state = engine
            .get_message::<HardState>(group, KEY_HARD_STATE)
            .map_err(|e| key_error(KEY_HARD_STATE, e))?
            .unwrap_or_default();
        self.conf_state = engine
            .get_message::<ConfState>(group, KEY_CONF_STATE)
            .map_err(|e| key_error(KEY_CONF_STATE, e))?
            .unwrap_or_default();
        let meta = engine
            .get_message::<SnapshotMetadata>(group, KEY_SNAPSHOT)
            .map_err(|e| key_error(KEY_SNAPSHOT, e))?
            .unwrap_or_default();
        let (mut truncated_index, mut truncated_term) = (0, 0);
        if let Some(raw) = engine.get(group, KEY_TRUNCATED) {
            let (index, term) = decode_truncated(&raw).ok_or_else(|| {
                key_error(
                    KEY_TRUNCATED,
                    raft_engine::Error::Corruption(format!("{} bytes, want 16", raw.len())),
                )
            })?;
            truncated_index = index;
            truncated_term = term;
        }
        let mut snapshot = Snapshot::default();
        let mut entries = VecDeque::new();
        if meta.index > 0 {
            let path = self
                .engine
                .snapshot_dir
                .join(snapshot_file::file_name(group, meta.index, meta.term));
            snapshot.data = snapshot_file::read(&path)?;
            snapshot.set_metadata(meta);
            self.snapshot_path = Some(path);
        }
        if let (Some(first), Some(last)) = (engine.first_index(group), engine.last_index(group)) {
            if first != truncated_index + 1 {
                return Err(StorageError::Corrupt {
                    path: self.engine.dir.join("engine").display().to_string(),
                    detail: format!(
                        "group {group}: the log starts at {first} but the compaction point is \
                         {truncated_index}: entries are missing; re-add the node"
                    ),
                });
            }
            entries = load_entries(&self.engine, group, first, last)?;
        }
        self.window = LogWindow::restored(snapshot, truncated_index, truncated_term, entries);
        // A crash between writing a snapshot file and recording it leaves an orphan.
        let _ = snapshot_file::remove_others(
            &self.engine.snapshot_dir,
            group,
            self.snapshot_path.as_deref(),
        );
        Ok(())
    }

    fn first(&self) -> u64 {
        self.window.first_index()
    }

    fn last(&self) -> u64 {
        self.window.last_index()
    }

    fn put_message<M: protobuf::Message>(
        &mut self,
        key: &[u8],
        message: &M,
    ) -> Result<(), StorageError> {
        self.pending
            .put_message(self.group, key.to_vec(), message)
            .map_err(|e| StorageError::Engine {
                op: "encode",
                detail: e.to_string(),
            })
    }

    fn put_truncated(&mut self) -> Result<(), StorageError> {
        let (index, term) = self.window.truncated();
        let mut raw = index.to_le_bytes().to_vec();
        raw.extend_from_slice(&term.to_le_bytes());
        self.pending
            .put(self.group, KEY_TRUNCATED.to_vec(), raw)
            .map_err(|e| StorageError::Engine {
                op: "encode",
                detail: e.to_string(),
            })
    }

    /// Hands the pending batch to the engine, with an fsync when `sync`.
    fn flush(&mut self, op: &'static str, sync: bool) -> Result<(), StorageError> {
        if self.pending.is_empty() && !(sync && self.unsynced) {
            return self
                .engine
                .failure()
                .map_or(Ok(()), |f| Err(failed(op, &f)));
        }
        self.engine.write(op, &mut self.pending, sync)?;
        self.unsynced = !sync;
        if sync && !self.obsolete_snapshots.is_empty() {
            // The snapshot replacing these is durable now. A failed delete only leaves
            // a file that the next open removes.
            for path in std::mem::take(&mut self.obsolete_snapshots) {
                let _ = std::fs::remove_file(path);
            }
            let _ = snapshot_file::sync_dir(&self.engine.snapshot_dir);
        }
        Ok(())
    }

    /// Writes the snapshot's file and records it (in the pending batch) as the newest;
    /// the caller then hands it to the window.
    fn record_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata().clone();
        let path = snapshot_file::write(
            &self.engine.snapshot_dir,
            self.group,
            meta.index,
            meta.term,
            &snapshot.data,
        )?;
        self.put_message(KEY_SNAPSHOT, &meta)?;
        if let Some(old) = self.snapshot_path.replace(path.clone()) {
            if old != path {
                self.obsolete_snapshots.push(old);
            }
        }
        self.obsolete_snapshots.retain(|p| *p != path);
        Ok(())
    }
}

/// Reads entries `first..=last` of `group`, on a thread of its own (see the type docs:
/// raft-engine's thread-local block cache must start empty).
fn load_entries<F: FileSystem + 'static>(
    engine: &LogEngine<F>,
    group: u64,
    first: u64,
    last: u64,
) -> Result<VecDeque<Entry>, StorageError> {
    let engine_dir = engine.dir.join("engine").display().to_string();
    let read = || -> Result<VecDeque<Entry>, StorageError> {
        let mut out = VecDeque::with_capacity((last + 1 - first) as usize);
        let mut low = first;
        while low <= last {
            let high = (low + LOAD_CHUNK).min(last + 1);
            let mut chunk = Vec::new();
            engine
                .engine
                .fetch_entries_to::<EntryExt>(group, low, high, None, &mut chunk)
                .map_err(|e| StorageError::Corrupt {
                    path: LAST_READ
                        .with(|last| last.borrow_mut().take())
                        .map_or_else(|| engine_dir.clone(), |p| p.display().to_string()),
                    detail: format!(
                        "group {group}: entries {low}..{high} cannot be read: {e}. The damage \
                         is inside a log file, not a torn write from a crash: entries this \
                         node acknowledged are lost. Move this node's data directory aside \
                         and re-add the node to the cluster so it catches up from the leader"
                    ),
                })?;
            for (expected, entry) in (low..).zip(chunk) {
                if entry.index != expected {
                    return Err(StorageError::Corrupt {
                        path: engine_dir.clone(),
                        detail: format!(
                            "group {group}: entry at position {expected} says index {}",
                            entry.index
                        ),
                    });
                }
                out.push_back(entry);
            }
            low = high;
        }
        Ok(out)
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("raftnode-load".into())
            .spawn_scoped(scope, read)
            .map_err(|source| StorageError::Io {
                op: "spawn the log loading thread".into(),
                source,
            })?
            .join()
            .unwrap_or_else(|panic| {
                Err(StorageError::Engine {
                    op: "load log",
                    detail: format!("raft-engine panicked: {}", panic_text(&panic)),
                })
            })
    })
}

fn decode_truncated(raw: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let term = u64::from_le_bytes(raw.get(8..16)?.try_into().ok()?);
    (raw.len() == 16).then_some((index, term))
}

impl<F: FileSystem + 'static> Drop for EngineLogStore<F> {
    fn drop(&mut self) {
        // Best effort: writes never followed by a sync (a LightReady's commit index).
        // Nothing was acknowledged on them, so a failure here loses nothing promised.
        if self.engine.failure().is_none() {
            let _ = self.flush("close", true);
        }
        self.engine.open_groups.lock().remove(&self.group);
    }
}

impl<F: FileSystem + 'static> fmt::Debug for EngineLogStore<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineLogStore")
            .field("dir", &self.engine.dir)
            .field("group", &self.group)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("hard_state", &self.hard_state)
            .field(
                "snapshot_index",
                &self.window.snapshot().get_metadata().index,
            )
            .finish_non_exhaustive()
    }
}

impl<F: FileSystem + 'static> Storage for EngineLogStore<F> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.window.entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.window.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.window.snapshot_for(request_index)
    }
}

impl<F: FileSystem + 'static> LogStore for EngineLogStore<F> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.window.check_append(entries)?;
        if let Some(failure) = self.engine.failure() {
            return Err(failed("append", &failure));
        }
        self.pending
            .add_entries::<EntryExt>(self.group, entries)
            .map_err(|e| StorageError::Engine {
                op: "append",
                detail: e.to_string(),
            })?;
        // Raft may overwrite a conflicting suffix written in an earlier term; the window
        // drops it now, the engine when the batch is written.
        self.window.append(entries);
        if self.pending.approximate_size() > MAX_PENDING_BYTES {
            self.flush("append", false)?;
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.put_message(KEY_HARD_STATE, hard_state)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.put_message(KEY_CONF_STATE, conf_state)?;
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.window.check_not_stale("apply_snapshot", &snapshot)?;
        let meta = snapshot.get_metadata().clone();
        // Drop the whole group (log and keys) and write its state again, in the same
        // batch: the engine never holds entries past the snapshot that it replaced.
        self.pending.add_command(self.group, Command::Clean);
        self.record_snapshot(&snapshot)?;
        self.window.apply_snapshot(snapshot);
        self.put_truncated()?;
        self.conf_state = meta.get_conf_state().clone();
        let cs = self.conf_state.clone();
        self.put_message(KEY_CONF_STATE, &cs)?;
        let mut hs = self.hard_state.clone();
        if hs.term < meta.term {
            // The stored vote was cast in an older term; it says nothing about this one.
            hs.term = meta.term;
            hs.vote = 0;
        }
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(&hs)
    }

    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.window.check_store_snapshot(&snapshot)?;
        self.record_snapshot(&snapshot)?;
        self.window.store_snapshot(snapshot);
        // Durable now, so that compaction behind it can never outlive it.
        self.flush("store_snapshot", true)
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if !self.window.check_compact(compact_index)? {
            return Ok(());
        }
        self.window.compact(compact_index);
        self.pending.add_command(
            self.group,
            Command::Compact {
                index: compact_index,
            },
        );
        self.put_truncated()?;
        self.flush("compact", false)?;
        self.compactions += 1;
        if self.compactions.is_multiple_of(COMPACTIONS_PER_PURGE) {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.engine.engine.purge_expired_files()
            }));
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(StorageError::Engine {
                        op: "purge",
                        detail: e.to_string(),
                    })
                }
                Err(panic) => {
                    let detail = format!("raft-engine panicked: {}", panic_text(&panic));
                    self.engine.fail(format!("purge: {detail}"));
                    return Err(StorageError::Engine {
                        op: "purge",
                        detail,
                    });
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.flush("sync", true)
    }
}

/// The file system under every [`LogEngine`]: `F` with fsync failures recorded instead of
/// returned.
///
/// raft-engine 0.4 `unwrap`s the result of fsync: a failed fsync panics inside
/// `Engine::write`, and a second panic while unwinding aborts the process. So the
/// failure is recorded in the engine's `failure` slot and fsync reports success to
/// raft-engine; [`LogEngine::write`] checks the slot after every write and fails it, and
/// the engine accepts no write after that. Nothing written after the failed fsync is
/// ever acknowledged: the data may or may not be on disk, which is what a crash would
/// leave too, and recovery handles it.
struct CheckedFs<F: FileSystem> {
    inner: Arc<F>,
    failure: Arc<Mutex<Option<String>>>,
}

thread_local! {
    /// The log file this thread last opened for reading: when an entry fails its
    /// checksum, the error can name the file (raft-engine's error does not).
    static LAST_READ: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// A file handle of [`CheckedFs`].
struct CheckedHandle<F: FileSystem> {
    inner: Arc<F::Handle>,
    path: PathBuf,
    failure: Arc<Mutex<Option<String>>>,
}

impl<F: FileSystem> Handle for CheckedHandle<F> {
    fn truncate(&self, offset: usize) -> std::io::Result<()> {
        self.inner.truncate(offset)
    }

    fn file_size(&self) -> std::io::Result<usize> {
        self.inner.file_size()
    }

    fn sync(&self) -> std::io::Result<()> {
        if let Err(e) = self.inner.sync() {
            self.failure
                .lock()
                .get_or_insert(format!("fsync of a raft-engine log file failed: {e}"));
        }
        Ok(())
    }
}

impl<F: FileSystem> FileSystem for CheckedFs<F> {
    type Handle = CheckedHandle<F>;
    type Reader = F::Reader;
    type Writer = F::Writer;

    fn create<P: AsRef<Path>>(&self, path: P) -> std::io::Result<Self::Handle> {
        Ok(CheckedHandle {
            path: path.as_ref().to_path_buf(),
            inner: Arc::new(self.inner.create(path)?),
            failure: self.failure.clone(),
        })
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> std::io::Result<Self::Handle> {
        Ok(CheckedHandle {
            path: path.as_ref().to_path_buf(),
            inner: Arc::new(self.inner.open(path, perm)?),
            failure: self.failure.clone(),
        })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> std::io::Result<()> {
        self.inner.delete(path)
    }

    fn rename<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> std::io::Result<()> {
        self.inner.rename(src_path, dst_path)
    }

    fn reuse<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> std::io::Result<()> {
        self.inner.reuse(src_path, dst_path)
    }

    fn delete_metadata<P: AsRef<Path>>(&self, path: P) -> std::io::Result<()> {
        self.inner.delete_metadata(path)
    }

    fn exists_metadata<P: AsRef<Path>>(&self, path: P) -> bool {
        self.inner.exists_metadata(path)
    }

    fn new_reader(&self, handle: Arc<Self::Handle>) -> std::io::Result<Self::Reader> {
        LAST_READ.with(|last| *last.borrow_mut() = Some(handle.path.clone()));
        self.inner.new_reader(handle.inner.clone())
    }

    fn new_writer(&self, handle: Arc<Self::Handle>) -> std::io::Result<Self::Writer> {
        self.inner.new_writer(handle.inner.clone())
    }
}
