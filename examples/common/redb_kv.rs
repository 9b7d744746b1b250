//! [`RedbKv`]: a key-value [`StateMachine`] on [redb](https://www.redb.org), an embedded
//! copy-on-write B-tree database. Used by `examples/kv_server.rs` and by the crash loop
//! and durability tests, which include this file with `#[path]`.
//!
//! One file, `<dir>/kv.redb`, holds two tables:
//!
//! - `data`: key → (version, index of the last write, value);
//! - `meta`: `"applied_index"` → the index of the last applied entry;
//! - `sessions`: client session id → (last sequence number, index last used, the
//!   encoded response to that sequence number), for [`raftnode::Sessions`].
//!
//! Every `apply`, `apply_noop` and `restore` (and their session variants, which also
//! write the session table) is **one** redb write transaction that changes the data,
//! the session table and the applied index together, so after a crash both survived or
//! neither did (the contract on [`StateMachine::apply`]).
//!
//! # Durability
//!
//! Applies commit with [`Durability::None`] (no fsync: the commit is visible at once and
//! becomes durable with the next durable commit), and every
//! [`DURABLE_EVERY_APPLIES`]-th commit is [`Durability::Immediate`] (fsynced before
//! `commit` returns). A crash therefore rolls the database back to its last durable
//! commit, data and applied index together, and that is safe because of what raftnode
//! guarantees (`docs/durability.md`):
//!
//! - an entry is applied only after it is durable in the `LogStore`, and at start raft
//!   resumes applying right after [`RedbKv::applied_index`]: the rolled-back entries are
//!   applied again, once, from the log;
//! - the log is compacted only behind a snapshot that the `LogStore` stored durably
//!   first, and a state machine that is behind the log's first index at start is
//!   restored from that snapshot (`Node::start`) before anything is applied.
//!
//! `restore` commits with [`Durability::Immediate`], as its contract asks. Dropping a
//! `RedbKv` (a clean shutdown) makes the last non-durable commits durable, so a clean
//! restart replays nothing.
//!
//! Snapshots are taken in one read transaction (a consistent view of data and index,
//! whatever writes follow) and restored in one write transaction that replaces the
//! whole `data` table.
//!
//! Commands and snapshots are encoded with postcard (serde): no hand-written format.
//!
//! # Examples
//!
//! ```ignore
//! let dir = tempfile::tempdir()?;
//! let mut kv = RedbKv::open(dir.path())?;
//! assert_eq!(kv.apply(1, &encode_put(b"x", b"1")), KvResponse::Put { previous: None });
//! drop(kv);
//! let kv = RedbKv::open(dir.path())?;
//! assert_eq!(kv.applied_index(), 1);
//! assert_eq!(kv.get(b"x"), Some(bytes::Bytes::from_static(b"1")));
//! ```
// Each file that includes this module (the example, several test binaries) uses a
// different part of it.
#![allow(dead_code)]
// redb::Error is large (its TableAlreadyOpen carries a caller location); it is only ever
// the rare failure path, turned into a panic or a StateMachineError right away.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftnode::sessions::{SessionRecord, SessionUpdate};
use raftnode::{SessionMachine, StateMachine, StateMachineError, StorageError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

/// The database file inside the directory given to [`RedbKv::open`].
pub const DB_FILE: &str = "kv.redb";
/// Every this many commits, one is fsynced ([`Durability::Immediate`]); the others are
/// not ([`Durability::None`]). Bounds what a crash rolls back (and raft applies again
/// from its log). redb 5 reuses the pages of earlier non-durable commits, so the file
/// no longer grows with the interval (1.1 MB at 64 and at 1024 after 5,000 small puts;
/// redb 2.6 freed pages only in durable commits and reached 6.7 MB and 99 MB).
pub const DURABLE_EVERY_APPLIES: u64 = 64;
/// redb's page cache per database (its default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;
/// key → (version, index of the last write, value).
const DATA: TableDefinition<&[u8], (u64, u64, &[u8])> = TableDefinition::new("data");
/// `APPLIED_KEY` → applied index.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED_KEY: &str = "applied_index";
/// Session id → (last sequence number, index last used, has a response, response).
const SESSIONS: TableDefinition<u64, (u64, u64, bool, &[u8])> = TableDefinition::new("sessions");
/// Written first in every snapshot; a snapshot with another value is refused.
const SNAPSHOT_FORMAT: u32 = 1;

/// A command for [`RedbKv`], as [`KvCommand::encode`] writes it (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Read `key` through the log (a read ordered with the writes).
    Get {
        /// The key.
        key: Bytes,
    },
    /// Set `key` to `value` only if its current value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold, or `None` for "must not exist".
        expected: Option<Bytes>,
        /// The new value.
        value: Bytes,
    },
}

impl KvCommand {
    /// Encodes the command (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types into a Vec cannot fail: no maps, no unsized sequences.
        postcard::to_allocvec(self).expect("a KvCommand always serializes")
    }

    /// Decodes a command written by [`KvCommand::encode`].
    ///
    /// # Errors
    ///
    /// A message saying what is wrong when `raw` is not exactly one valid command.
    pub fn decode(raw: &[u8]) -> Result<KvCommand, String> {
        let (command, rest) =
            postcard::take_from_bytes(raw).map_err(|e| format!("bad command: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the command", rest.len()));
        }
        Ok(command)
    }
}

/// What applying a [`KvCommand`] returned (postcard-encoded in the session table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// A put was applied; `previous` is the value it replaced.
    Put {
        /// The value before the put.
        previous: Option<Bytes>,
    },
    /// A delete was applied; `previous` is the value it removed.
    Deleted {
        /// The value before the delete.
        previous: Option<Bytes>,
    },
    /// The value a get read.
    Value(Option<Bytes>),
    /// A compare-and-swap: `swapped` tells whether it wrote; `current` is the value
    /// after it.
    Cas {
        /// Whether the expected value matched and the new value was written.
        swapped: bool,
        /// The key's value after the command.
        current: Option<Bytes>,
    },
    /// The command did not decode; nothing changed but the applied index.
    Invalid(String),
}

/// One key's stored value and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The current value.
    pub value: Bytes,
    /// How many writes (put, successful cas) were applied to this key since it was last
    /// created. A crash test that writes each key once expects 1: 2 is a double apply.
    pub version: u64,
    /// The log index of the last write to this key.
    pub index: u64,
}

/// Encodes a put of `value` at `key`.
pub fn encode_put(key: &[u8], value: &[u8]) -> Vec<u8> {
    KvCommand::Put {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
    }
    .encode()
}

/// Encodes a delete of `key`.
pub fn encode_delete(key: &[u8]) -> Vec<u8> {
    KvCommand::Delete {
        key: Bytes::copy_from_slice(key),
    }
    .encode()
}

/// Encodes a get of `key` through the log.
pub fn encode_get(key: &[u8]) -> Vec<u8> {
    KvCommand::Get {
        key: Bytes::copy_from_slice(key),
    }
    .encode()
}

/// Encodes a compare-and-swap: set `key` to `value` if it holds `expected` (`None`:
/// if it is absent).
pub fn encode_cas(key: &[u8], expected: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    KvCommand::Cas {
        key: Bytes::copy_from_slice(key),
        expected: expected.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(value),
    }
    .encode()
}

/// A snapshot: every key in key order.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    /// [`SNAPSHOT_FORMAT`].
    format: u32,
    entries: Vec<SnapshotEntry>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: Bytes,
    value: Bytes,
    version: u64,
    index: u64,
}

/// Decodes a snapshot fully: format, every entry, keys strictly increasing, no bytes
/// left over.
fn decode_snapshot(raw: &[u8]) -> Result<SnapshotData, String> {
    let (snapshot, rest): (SnapshotData, _) =
        postcard::take_from_bytes(raw).map_err(|e| format!("bad RedbKv snapshot: {e}"))?;
    if snapshot.format != SNAPSHOT_FORMAT {
        return Err(format!(
            "RedbKv snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
            snapshot.format
        ));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the RedbKv snapshot", rest.len()));
    }
    if let Some(pair) = snapshot.entries.windows(2).find(|w| w[0].key >= w[1].key) {
        return Err(format!(
            "RedbKv snapshot keys out of order at {:?}",
            String::from_utf8_lossy(&pair[1].key)
        ));
    }
    Ok(snapshot)
}

type DataTable<'txn> = Table<'txn, &'static [u8], (u64, u64, &'static [u8])>;

/// A key-value state machine in `<dir>/kv.redb` (see the module docs).
///
/// Reads ([`RedbKv::get`], [`RedbKv::scan_prefix`], ...) each run in their own redb read
/// transaction.
///
/// # Panics
///
/// `apply`, `apply_noop` and the read methods panic when redb fails (an I/O error, a
/// damaged page): the [`StateMachine`] methods cannot return an error, and going on
/// without the write could apply a later entry without an earlier one. On the driver
/// thread the panic stops the node (`Stopped`); nothing after it is acknowledged.
pub struct RedbKv {
    db: Database,
    path: PathBuf,
    /// Index of the last committed apply (durable or not); what `applied_index` returns.
    applied: u64,
    /// Commits since the last durable one; the next commit is durable when this reaches
    /// `durable_every`.
    since_durable: u64,
    durable_every: u64,
}

impl std::fmt::Debug for RedbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbKv")
            .field("path", &self.path)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl RedbKv {
    /// Opens `<dir>/kv.redb`, or creates it (through `kv.redb.new` and a rename, so a
    /// crash during creation leaves no half-made file), with a durable commit every
    /// [`DURABLE_EVERY_APPLIES`] applies. After a crash redb rolls back to its last
    /// durable commit and repairs the file (a walk over every page checksum).
    ///
    /// # Errors
    ///
    /// [`StorageError::Io`] when the directory or file cannot be created or renamed;
    /// [`StorageError::Engine`] naming the file when redb cannot create or open it
    /// (locked by another process, damaged, another format).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir, DURABLE_EVERY_APPLIES)
    }

    /// [`RedbKv::open`] with a durable commit every `durable_every_applies` commits (1:
    /// every commit is fsynced).
    ///
    /// # Errors
    ///
    /// As [`RedbKv::open`].
    pub fn open_with(
        dir: impl AsRef<Path>,
        durable_every_applies: u64,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            op: format!("create directory {}", dir.display()),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let exists = path.try_exists().map_err(|source| StorageError::Io {
            op: format!("look for {}", path.display()),
            source,
        })?;
        if !exists {
            create_database(dir, &path)?;
        }
        let engine = |e: redb::Error| StorageError::Engine {
            op: "open the RedbKv state machine",
            detail: format!("{}: {e}", path.display()),
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open(&path)
            .map_err(|e| engine(e.into()))?;
        let applied = read_applied(&db).map_err(engine)?;
        Ok(RedbKv {
            db,
            path,
            applied,
            since_durable: 0,
            durable_every: durable_every_applies.max(1),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.entry(key).map(|e| e.value)
    }

    /// The value of `key` with its version and last write index.
    pub fn entry(&self, key: &[u8]) -> Option<KvEntry> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DATA)?;
            let found = table.get(key)?.map(|guard| to_entry(guard.value()));
            Ok(found)
        })
    }

    /// Every key that starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Bytes, KvEntry)> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DATA)?;
            let mut found = Vec::new();
            for item in table.range(prefix..)? {
                let (key, value) = item?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                found.push((Bytes::copy_from_slice(key.value()), to_entry(value.value())));
            }
            Ok(found)
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.read(|db| Ok(db.begin_read()?.open_table(DATA)?.len()? as usize))
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of every key's [`KvEntry::version`]: equal to [`RedbKv::len`] when every key
    /// was written exactly once. Reads every key.
    pub fn total_versions(&self) -> u64 {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DATA)?;
            let mut total = 0;
            for item in table.iter()? {
                total += item?.1.value().0;
            }
            Ok(total)
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Database) -> Result<T, redb::Error>) -> T {
        f(&self.db).unwrap_or_else(|e| panic!("RedbKv: reading {}: {e}", self.path.display()))
    }

    /// One write transaction: runs `command` (if any) against the data and sets the
    /// applied index to `index`, then commits, durably every `durable_every` commits.
    fn commit_apply(
        &mut self,
        index: u64,
        command: Option<&[u8]>,
    ) -> Result<Option<KvResponse>, redb::Error> {
        self.commit_apply_in_session(index, command, None)
    }

    /// [`Self::commit_apply`], writing the session table's `update` in the same
    /// transaction.
    fn commit_apply_in_session(
        &mut self,
        index: u64,
        command: Option<&[u8]>,
        update: Option<&SessionUpdate<'_, KvResponse>>,
    ) -> Result<Option<KvResponse>, redb::Error> {
        let mut txn = self.db.begin_write()?;
        let durable = self.since_durable + 1 >= self.durable_every;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let response = match command {
            Some(raw) => Some(execute(&mut txn.open_table(DATA)?, index, raw)?),
            None => None,
        };
        if let Some(update) = update.filter(|u| !u.is_empty()) {
            let mut sessions = txn.open_table(SESSIONS)?;
            for id in update.expired {
                sessions.remove(id)?;
            }
            if let Some(r) = &update.upsert {
                // The record's response, or (for a command being applied) the one just
                // produced: stored with the effect it answers.
                let answer = r.response.or(response.as_ref());
                let encoded = answer.map(encode_response).unwrap_or_default();
                sessions.insert(
                    r.id,
                    (r.last_seq, r.last_index, answer.is_some(), &encoded[..]),
                )?;
            }
        }
        txn.open_table(META)?.insert(APPLIED_KEY, index)?;
        txn.commit()?;
        self.since_durable = if durable { 0 } else { self.since_durable + 1 };
        self.applied = index;
        Ok(response)
    }

    /// Makes every commit so far durable (an empty durable transaction).
    fn make_durable(&mut self) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        self.since_durable = 0;
        Ok(())
    }

    fn restore_inner(
        &mut self,
        index: u64,
        snapshot: SnapshotData,
        sessions: &[SessionRecord<KvResponse>],
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(DATA)?;
        txn.delete_table(SESSIONS)?;
        {
            let mut data = txn.open_table(DATA)?;
            for e in &snapshot.entries {
                data.insert(&e.key[..], (e.version, e.index, &e.value[..]))?;
            }
            let mut table = txn.open_table(SESSIONS)?;
            for r in sessions {
                let encoded = r.response.as_ref().map(encode_response).unwrap_or_default();
                table.insert(
                    r.id,
                    (r.last_seq, r.last_index, r.response.is_some(), &encoded[..]),
                )?;
            }
        }
        txn.open_table(META)?.insert(APPLIED_KEY, index)?;
        txn.commit()?;
        self.since_durable = 0;
        self.applied = index;
        Ok(())
    }
}

/// Creates an empty database at `path` through a temporary file and a rename. redb 2.6
/// writes a new file's magic number last and refuses, for good, a non-empty file
/// without one, so a crash inside `Database::create` on the final path would leave a
/// file no later open accepts.
fn create_database(dir: &Path, path: &Path) -> Result<(), StorageError> {
    let new = dir.join(format!("{DB_FILE}.new"));
    let io = |op: &str, source: std::io::Error| StorageError::Io {
        op: format!("{op} {}", new.display()),
        source,
    };
    match std::fs::remove_file(&new) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", e)),
        _ => {}
    }
    let created = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(&new)
        .map_err(redb::Error::from)
        .and_then(|db| {
            let txn = db.begin_write()?; // Immediate: durable before the rename
            txn.open_table(DATA)?;
            txn.open_table(META)?;
            txn.open_table(SESSIONS)?;
            txn.commit()?;
            Ok(())
        });
    created.map_err(|e| StorageError::Engine {
        op: "create the RedbKv state machine",
        detail: format!("{}: {e}", new.display()),
    })?;
    std::fs::rename(&new, path).map_err(|e| io("rename into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory of", e))
}

/// Reads the applied index (0 before the first apply).
fn read_applied(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let applied = txn
        .open_table(META)?
        .get(APPLIED_KEY)?
        .map_or(0, |g| g.value());
    Ok(applied)
}

fn encode_response(response: &KvResponse) -> Vec<u8> {
    postcard::to_allocvec(response).expect("a KvResponse always encodes")
}

fn decode_response(raw: &[u8]) -> Result<KvResponse, String> {
    let (response, rest) =
        postcard::take_from_bytes(raw).map_err(|e| format!("bad session response: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the session response", rest.len()));
    }
    Ok(response)
}

/// Reads the session table (empty in a database made before it existed).
fn read_sessions(db: &Database) -> Result<Vec<SessionRecord<KvResponse>>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(SESSIONS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut records = Vec::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (id, value) = item.map_err(|e| e.to_string())?;
        let (last_seq, last_index, has, raw) = value.value();
        records.push(SessionRecord {
            id: id.value(),
            last_seq,
            response: if has {
                Some(decode_response(raw)?)
            } else {
                None
            },
            last_index,
        });
    }
    Ok(records)
}

fn to_entry((version, index, value): (u64, u64, &[u8])) -> KvEntry {
    KvEntry {
        value: Bytes::copy_from_slice(value),
        version,
        index,
    }
}

/// Runs one command against the data table. An undecodable command changes nothing.
fn execute(data: &mut DataTable<'_>, index: u64, raw: &[u8]) -> Result<KvResponse, redb::Error> {
    let command = match KvCommand::decode(raw) {
        Ok(command) => command,
        Err(e) => return Ok(KvResponse::Invalid(e)),
    };
    let value_of = |data: &DataTable<'_>, key: &[u8]| -> Result<Option<Bytes>, redb::Error> {
        Ok(data.get(key)?.map(|g| Bytes::copy_from_slice(g.value().2)))
    };
    Ok(match command {
        KvCommand::Put { key, value } => KvResponse::Put {
            previous: write_key(data, &key, &value, index)?,
        },
        KvCommand::Delete { key } => KvResponse::Deleted {
            previous: data
                .remove(&key[..])?
                .map(|g| Bytes::copy_from_slice(g.value().2)),
        },
        KvCommand::Get { key } => KvResponse::Value(value_of(data, &key)?),
        KvCommand::Cas {
            key,
            expected,
            value,
        } => {
            let current = value_of(data, &key)?;
            if current == expected {
                write_key(data, &key, &value, index)?;
                KvResponse::Cas {
                    swapped: true,
                    current: Some(value),
                }
            } else {
                KvResponse::Cas {
                    swapped: false,
                    current,
                }
            }
        }
    })
}

/// Writes `value` at `key`, one version up; returns the value it replaced.
fn write_key(
    data: &mut DataTable<'_>,
    key: &[u8],
    value: &[u8],
    index: u64,
) -> Result<Option<Bytes>, redb::Error> {
    let (version, previous) = match data.get(key)? {
        Some(guard) => {
            let (version, _, old) = guard.value();
            (version, Some(Bytes::copy_from_slice(old)))
        }
        None => (0, None),
    };
    data.insert(key, (version + 1, index, value))?;
    Ok(previous)
}

impl StateMachine for RedbKv {
    type Response = KvResponse;

    fn apply(&mut self, index: u64, command: &[u8]) -> KvResponse {
        match self.commit_apply(index, Some(command)) {
            Ok(response) => response.expect("a command gives a response"),
            Err(e) => panic!(
                "RedbKv: applying entry {index} to {}: {e}; stopping the node",
                self.path.display()
            ),
        }
    }

    fn apply_noop(&mut self, index: u64) {
        if let Err(e) = self.commit_apply(index, None) {
            panic!(
                "RedbKv: recording empty entry {index} in {}: {e}; stopping the node",
                self.path.display()
            );
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        let failed = |e: redb::Error| {
            StateMachineError::new(format!("RedbKv snapshot of {}: {e}", self.path.display()))
        };
        // One read transaction: a consistent view as of the last commit.
        let txn = self.db.begin_read().map_err(|e| failed(e.into()))?;
        let table = txn.open_table(DATA).map_err(|e| failed(e.into()))?;
        let mut entries = Vec::new();
        for item in table.iter().map_err(|e| failed(e.into()))? {
            let (key, value) = item.map_err(|e| failed(e.into()))?;
            let (version, index, value) = value.value();
            entries.push(SnapshotEntry {
                key: Bytes::copy_from_slice(key.value()),
                value: Bytes::copy_from_slice(value),
                version,
                index,
            });
        }
        let snapshot = SnapshotData {
            format: SNAPSHOT_FORMAT,
            entries,
        };
        postcard::to_allocvec(&snapshot)
            .map(Bytes::from)
            .map_err(|e| StateMachineError::new(format!("encoding a RedbKv snapshot: {e}")))
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.restore_with_sessions(index, data, &[])
    }

    fn check_snapshot(&self, _index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        decode_snapshot(data)
            .map(|_| ())
            .map_err(StateMachineError::new)
    }
}

/// Keeps [`raftnode::Sessions`]' table in the `sessions` table, in the same transaction
/// as each entry's effect and applied index: after a crash the table matches the data.
impl SessionMachine for RedbKv {
    fn encode_response(response: &KvResponse) -> Vec<u8> {
        encode_response(response)
    }

    fn decode_response(bytes: &[u8]) -> Result<KvResponse, StateMachineError> {
        decode_response(bytes).map_err(StateMachineError::new)
    }

    fn apply_in_session(
        &mut self,
        index: u64,
        command: &[u8],
        update: &SessionUpdate<'_, KvResponse>,
    ) -> KvResponse {
        match self.commit_apply_in_session(index, Some(command), Some(update)) {
            Ok(response) => response.expect("a command gives a response"),
            Err(e) => panic!(
                "RedbKv: applying entry {index} to {}: {e}; stopping the node",
                self.path.display()
            ),
        }
    }

    fn apply_noop_in_session(&mut self, index: u64, update: &SessionUpdate<'_, KvResponse>) {
        if let Err(e) = self.commit_apply_in_session(index, None, Some(update)) {
            panic!(
                "RedbKv: recording entry {index} in {}: {e}; stopping the node",
                self.path.display()
            );
        }
    }

    fn restore_with_sessions(
        &mut self,
        index: u64,
        data: &[u8],
        sessions: &[SessionRecord<KvResponse>],
    ) -> Result<(), StateMachineError> {
        let snapshot = decode_snapshot(data).map_err(StateMachineError::new)?;
        self.restore_inner(index, snapshot, sessions).map_err(|e| {
            StateMachineError::new(format!(
                "RedbKv restore at {index} into {}: {e}",
                self.path.display()
            ))
        })
    }

    fn load_sessions(&self) -> Result<Option<Vec<SessionRecord<KvResponse>>>, StateMachineError> {
        read_sessions(&self.db).map(Some).map_err(|e| {
            StateMachineError::new(format!("RedbKv sessions in {}: {e}", self.path.display()))
        })
    }
}

impl Drop for RedbKv {
    /// A clean shutdown: makes the last non-durable commits durable, so the next open
    /// replays nothing. A failure here loses nothing (raft applies those entries again).
    /// redb 2.6's own drop happened to keep them as well when we tried, but its docs
    /// promise that only for a later durable commit.
    fn drop(&mut self) {
        if self.since_durable > 0 && !std::thread::panicking() {
            let _ = self.make_durable();
        }
    }
}
