//! [`DurableKv`]: a key-value [`StateMachine`] that survives crashes, for tests, the crash
//! loop and examples.
//!
//! The state lives in memory and in one append-only file, `<dir>/kv.log`, of checksummed
//! records: one per applied entry (`index`, command), or one holding the whole state
//! (after a snapshot restore, or when the file is rewritten to keep it short). A record
//! carries its index, so the applied index and the effect of a command reach the file in
//! the same write: after a crash both survived or neither did (the state machine
//! contract in `state_machine.rs`).
//!
//! Records are written (one `write` call each) but not fsynced: the Raft log is the redo
//! log. An entry is applied only after it is durable in the `LogStore`, and raft resumes
//! applying after [`DurableKv::applied_index`] at start, so a record lost in a power
//! failure is applied again from the log (or the node restores the log store's snapshot
//! when the log was compacted past it). What must never happen is a later record without
//! an earlier one; records are checked in order at open and the file is cut at the first
//! damaged one. Whole-state rewrites go through a temporary file, fsync and rename.
//!
//! # Examples
//!
//! ```
//! use raftnode::testing::durable_kv::{encode_put, DurableKv, KvResponse};
//! use raftnode::StateMachine;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut kv = DurableKv::open(dir.path())?;
//! assert_eq!(kv.apply(1, &encode_put(b"x", b"1")), KvResponse::Put { previous: None });
//! drop(kv);
//!
//! let kv = DurableKv::open(dir.path())?;
//! assert_eq!(kv.applied_index(), 1);
//! assert_eq!(kv.get(b"x").map(|v| v.to_vec()), Some(b"1".to_vec()));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{StateMachineError, StorageError};
use crate::state_machine::StateMachine;
use crate::storage::snapshot_file::{crc32, sync_dir};

const LOG_FILE: &str = "kv.log";
const KIND_COMMAND: u8 = 1;
const KIND_NOOP: u8 = 2;
const KIND_STATE: u8 = 3;
/// Record header: body length (u32) and CRC-32 of the body (u32).
const RECORD_HEADER: usize = 8;
/// Body prefix: index (u64) and kind (u8).
const BODY_PREFIX: usize = 9;
/// The file is rewritten as one whole-state record once it is larger than twice its
/// size after the last rewrite plus this slack: amortized constant work per apply, and
/// a replay at open of at most about three times the state.
const REWRITE_SLACK_BYTES: u64 = 1 << 20;

/// A command for [`DurableKv`], as [`KvCommand::encode`] writes it and
/// [`KvCommand::decode`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What applying a [`KvCommand`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The command did not decode; nothing changed.
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

impl KvCommand {
    /// Encodes the command: a tag byte, then length-prefixed (u32 little endian) fields;
    /// the last field runs to the end.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvCommand::Put { key, value } => {
                out.push(b'P');
                put_field(&mut out, key);
                out.extend_from_slice(value);
            }
            KvCommand::Delete { key } => {
                out.push(b'D');
                out.extend_from_slice(key);
            }
            KvCommand::Get { key } => {
                out.push(b'G');
                out.extend_from_slice(key);
            }
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                out.push(b'C');
                put_field(&mut out, key);
                match expected {
                    Some(expected) => {
                        out.push(1);
                        put_field(&mut out, expected);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(value);
            }
        }
        out
    }

    /// Decodes a command written by [`KvCommand::encode`].
    ///
    /// # Errors
    ///
    /// A message saying what is wrong when `raw` is not a valid command.
    pub fn decode(raw: &[u8]) -> Result<KvCommand, String> {
        let (&tag, mut rest) = raw.split_first().ok_or("empty command")?;
        let command = match tag {
            b'P' => {
                let key = take_field(&mut rest)?;
                KvCommand::Put {
                    key,
                    value: Bytes::copy_from_slice(rest),
                }
            }
            b'D' => KvCommand::Delete {
                key: Bytes::copy_from_slice(rest),
            },
            b'G' => KvCommand::Get {
                key: Bytes::copy_from_slice(rest),
            },
            b'C' => {
                let key = take_field(&mut rest)?;
                let (&has_expected, after) = rest.split_first().ok_or("cas: missing flag")?;
                rest = after;
                let expected = match has_expected {
                    0 => None,
                    1 => Some(take_field(&mut rest)?),
                    other => return Err(format!("cas: bad expected-value flag {other}")),
                };
                KvCommand::Cas {
                    key,
                    expected,
                    value: Bytes::copy_from_slice(rest),
                }
            }
            other => return Err(format!("unknown command tag {other:#04x}")),
        };
        Ok(command)
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

fn take_field(rest: &mut &[u8]) -> Result<Bytes, String> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return Err(format!(
            "field of {len} bytes but only {} remain",
            rest.len()
        ));
    }
    let (field, after) = rest.split_at(len);
    *rest = after;
    Ok(Bytes::copy_from_slice(field))
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, String> {
    let raw: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated length")?;
    *rest = &rest[4..];
    Ok(u32::from_le_bytes(raw))
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, String> {
    let raw: [u8; 8] = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated number")?;
    *rest = &rest[8..];
    Ok(u64::from_le_bytes(raw))
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

/// A key-value state machine persisted in `<dir>/kv.log` (see the module docs).
#[derive(Debug)]
pub struct DurableKv {
    dir: PathBuf,
    /// `kv.log`, opened for appending.
    file: File,
    map: BTreeMap<Bytes, KvEntry>,
    applied: u64,
    /// Size of `kv.log`.
    file_bytes: u64,
    /// Size of the file right after its last rewrite; the next rewrite waits until the
    /// file is `2 * rewritten_bytes + REWRITE_SLACK_BYTES` long.
    rewritten_bytes: u64,
}

impl DurableKv {
    /// Opens (or creates) the store in `dir` and replays `kv.log`. A damaged or torn
    /// record ends the replay and the file is cut there (raft applies the lost entries
    /// again from its log).
    ///
    /// # Errors
    ///
    /// [`StorageError::Io`] when the directory or file cannot be created, read or cut;
    /// [`StorageError::Corrupt`] naming the file when a record with a valid checksum
    /// does not make sense (an index that goes backwards, an unknown record kind).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(LOG_FILE);
        let io = |op: &str, source: io::Error| StorageError::Io {
            op: format!("{op} {}", path.display()),
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| io("create directory for", e))?;
        let _ = fs::remove_file(dir.join(format!("{LOG_FILE}.tmp")));
        let mut raw = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut raw).map_err(|e| io("read", e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("open", e)),
        }
        let mut kv = DurableKv {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io("open", e))?,
            dir,
            map: BTreeMap::new(),
            applied: 0,
            file_bytes: 0,
            rewritten_bytes: 0,
        };
        let valid = kv.replay(&raw).map_err(|detail| StorageError::Corrupt {
            path: path.display().to_string(),
            detail: format!(
                "{detail}; move the file aside to rebuild the state from the Raft log \
                     and snapshot"
            ),
        })?;
        if valid < raw.len() {
            kv.file
                .set_len(valid as u64)
                .and_then(|()| kv.file.sync_all())
                .map_err(|e| io("cut the torn tail of", e))?;
        }
        kv.file_bytes = valid as u64;
        kv.rewritten_bytes = kv.file_bytes;
        Ok(kv)
    }

    /// Replays records; returns the length of the valid prefix.
    fn replay(&mut self, raw: &[u8]) -> Result<usize, String> {
        let mut offset = 0;
        while raw.len() - offset >= RECORD_HEADER {
            let mut header = &raw[offset..offset + RECORD_HEADER];
            let len = take_u32(&mut header)? as usize;
            let crc = take_u32(&mut header)?;
            let Some(body) = raw.get(offset + RECORD_HEADER..offset + RECORD_HEADER + len) else {
                break; // torn tail
            };
            if len < BODY_PREFIX || crc32(body) != crc {
                break; // torn or damaged: everything after it is dropped
            }
            let mut rest = body;
            let index = take_u64(&mut rest)?;
            let kind = rest[0];
            let payload = &rest[1..];
            if kind != KIND_STATE && index <= self.applied {
                return Err(format!(
                    "record at byte {offset} has index {index} at or below the applied index {}",
                    self.applied
                ));
            }
            match kind {
                KIND_COMMAND => {
                    self.execute(index, payload);
                }
                KIND_NOOP => {}
                KIND_STATE => {
                    self.map = decode_state(payload)
                        .map_err(|e| format!("state record at byte {offset}: {e}"))?;
                }
                other => return Err(format!("record at byte {offset} has unknown kind {other}")),
            }
            self.applied = index;
            offset += RECORD_HEADER + len;
        }
        Ok(offset)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key).map(|e| &e.value)
    }

    /// The value of `key` with its version and last write index.
    pub fn entry(&self, key: &[u8]) -> Option<&KvEntry> {
        self.map.get(key)
    }

    /// Every key that starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Bytes, KvEntry)> {
        self.map
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of every key's [`KvEntry::version`]: equal to [`DurableKv::len`] when every
    /// key was written exactly once.
    pub fn total_versions(&self) -> u64 {
        self.map.values().map(|e| e.version).sum()
    }

    /// The directory holding `kv.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies a command to the in-memory map (no I/O).
    fn execute(&mut self, index: u64, command: &[u8]) -> KvResponse {
        let command = match KvCommand::decode(command) {
            Ok(command) => command,
            Err(e) => return KvResponse::Invalid(e),
        };
        match command {
            KvCommand::Put { key, value } => KvResponse::Put {
                previous: self.write_key(key, value, index),
            },
            KvCommand::Delete { key } => KvResponse::Deleted {
                previous: self.map.remove(&key).map(|e| e.value),
            },
            KvCommand::Get { key } => KvResponse::Value(self.get(&key).cloned()),
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                if self.get(&key) == expected.as_ref() {
                    self.write_key(key, value.clone(), index);
                    KvResponse::Cas {
                        swapped: true,
                        current: Some(value),
                    }
                } else {
                    KvResponse::Cas {
                        swapped: false,
                        current: self.get(&key).cloned(),
                    }
                }
            }
        }
    }

    fn write_key(&mut self, key: Bytes, value: Bytes, index: u64) -> Option<Bytes> {
        let version = self.map.get(&key).map_or(0, |e| e.version) + 1;
        self.map
            .insert(
                key,
                KvEntry {
                    value,
                    version,
                    index,
                },
            )
            .map(|e| e.value)
    }

    /// Appends one record. A failed write panics, which stops the node: continuing
    /// could leave a later record without this one.
    fn append_record(&mut self, index: u64, kind: u8, payload: &[u8]) {
        let record = encode_record(index, kind, payload);
        if let Err(e) = self.file.write_all(&record) {
            panic!(
                "DurableKv: appending to {} failed: {e}; stopping the node",
                self.dir.join(LOG_FILE).display()
            );
        }
        self.file_bytes += record.len() as u64;
    }

    /// Replaces `kv.log` with one whole-state record, atomically.
    fn rewrite(&mut self) -> Result<(), String> {
        let path = self.dir.join(LOG_FILE);
        let tmp = self.dir.join(format!("{LOG_FILE}.tmp"));
        let record = encode_record(self.applied, KIND_STATE, &encode_state(&self.map));
        let write = || -> io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&record)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            OpenOptions::new().append(true).open(&path)
        };
        self.file = write().map_err(|e| format!("rewriting {}: {e}", path.display()))?;
        sync_dir(&self.dir).map_err(|e| e.to_string())?;
        self.file_bytes = record.len() as u64;
        self.rewritten_bytes = self.file_bytes;
        Ok(())
    }
}

fn encode_record(index: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_PREFIX + payload.len());
    body.extend_from_slice(&index.to_le_bytes());
    body.push(kind);
    body.extend_from_slice(payload);
    let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

fn encode_state(map: &BTreeMap<Bytes, KvEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (key, entry) in map {
        put_field(&mut out, key);
        put_field(&mut out, &entry.value);
        out.extend_from_slice(&entry.version.to_le_bytes());
        out.extend_from_slice(&entry.index.to_le_bytes());
    }
    out
}

fn decode_state(mut raw: &[u8]) -> Result<BTreeMap<Bytes, KvEntry>, String> {
    let count = take_u64(&mut raw)?;
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let key = take_field(&mut raw)?;
        let value = take_field(&mut raw)?;
        let version = take_u64(&mut raw)?;
        let index = take_u64(&mut raw)?;
        map.insert(
            key,
            KvEntry {
                value,
                version,
                index,
            },
        );
    }
    if !raw.is_empty() {
        return Err(format!("{} bytes after the last key", raw.len()));
    }
    Ok(map)
}

impl StateMachine for DurableKv {
    type Response = KvResponse;

    fn apply(&mut self, index: u64, command: &[u8]) -> KvResponse {
        let response = self.execute(index, command);
        // Index and effect in one record, one write.
        self.append_record(index, KIND_COMMAND, command);
        self.applied = index;
        if self.file_bytes > 2 * self.rewritten_bytes + REWRITE_SLACK_BYTES {
            if let Err(e) = self.rewrite() {
                panic!("DurableKv: {e}; stopping the node");
            }
        }
        response
    }

    fn apply_noop(&mut self, index: u64) {
        self.append_record(index, KIND_NOOP, &[]);
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        Ok(encode_state(&self.map).into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let map = decode_state(data)
            .map_err(|e| StateMachineError::new(format!("bad DurableKv snapshot: {e}")))?;
        self.map = map;
        self.applied = index;
        self.rewrite().map_err(StateMachineError::new)
    }

    fn check_snapshot(&self, _index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        decode_state(data)
            .map(|_| ())
            .map_err(|e| StateMachineError::new(format!("bad DurableKv snapshot: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_roundtrip_and_bad_input_is_an_error() {
        let commands = [
            KvCommand::decode(&encode_put(b"k", b"v")).unwrap(),
            KvCommand::decode(&encode_delete(b"k")).unwrap(),
            KvCommand::decode(&encode_get(b"k")).unwrap(),
            KvCommand::decode(&encode_cas(b"k", Some(b"a"), b"b")).unwrap(),
            KvCommand::decode(&encode_cas(b"k", None, b"b")).unwrap(),
        ];
        for c in commands {
            assert_eq!(KvCommand::decode(&c.encode()).unwrap(), c);
        }
        assert!(KvCommand::decode(b"").is_err());
        assert!(KvCommand::decode(b"P\xff\xff\xff\xffk").is_err());
        assert!(KvCommand::decode(b"C\x01\0\0\0k\x07").is_err());
        assert!(KvCommand::decode(b"Z").is_err());
    }

    #[test]
    fn replay_restores_state_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = DurableKv::open(dir.path()).unwrap();
        kv.apply(1, &encode_put(b"a", b"1"));
        kv.apply_noop(2);
        assert_eq!(
            kv.apply(3, &encode_cas(b"a", Some(b"1"), b"2")),
            KvResponse::Cas {
                swapped: true,
                current: Some(Bytes::from_static(b"2"))
            }
        );
        kv.apply(4, &encode_put(b"b", b"x"));
        assert!(matches!(kv.apply(5, b"?"), KvResponse::Invalid(_)));
        drop(kv);
        // Tear the last record.
        let path = dir.path().join(LOG_FILE);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let kv = DurableKv::open(dir.path()).unwrap();
        assert_eq!(kv.applied_index(), 4);
        assert_eq!(kv.entry(b"a").unwrap().version, 2);
        assert_eq!(kv.scan_prefix(b"b").len(), 1);
        assert_eq!(kv.total_versions(), 3);
    }

    #[test]
    fn restore_rewrites_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = DurableKv::open(dir.path()).unwrap();
        kv.apply(1, &encode_put(b"a", b"1"));
        let snapshot = kv.snapshot().unwrap();
        let mut other = DurableKv::open(dir.path().join("other")).unwrap();
        other.restore(9, &snapshot).unwrap();
        other.apply(10, &encode_delete(b"a"));
        drop(other);
        let other = DurableKv::open(dir.path().join("other")).unwrap();
        assert_eq!(other.applied_index(), 10);
        assert!(other.is_empty());
    }
}
