//! [`SimStore`]: a [`LogStore`] on a simulated disk that keeps written and synced state
//! apart, so a simulated crash loses exactly what a real one could.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, NO_LIMIT};

use super::SimRng;
use crate::error::StorageError;
use crate::log_store::LogStore;

/// What the disk holds: the same shape as `MemLogStore`'s state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    truncated_index: u64,
    truncated_term: u64,
    entries: Vec<Entry>,
}

/// One write, kept until `sync` makes it durable.
#[derive(Debug, Clone)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    ApplySnapshot(Snapshot),
    StoreSnapshot(Snapshot),
    Compact(u64),
}

fn invalid(op: &'static str, detail: String) -> StorageError {
    StorageError::Invalid { op, detail }
}

impl Image {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    fn last_index(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first_index()) as usize].term)
    }

    /// Checks a write against the image without changing it.
    fn check(&self, write: &Write) -> Result<(), StorageError> {
        match write {
            Write::Append(entries) => {
                let Some(head) = entries.first() else {
                    return Ok(());
                };
                if head.index < self.first_index() || head.index > self.last_index() + 1 {
                    return Err(invalid(
                        "append",
                        format!(
                            "first new entry {} is outside {}..={}",
                            head.index,
                            self.first_index(),
                            self.last_index() + 1
                        ),
                    ));
                }
                if entries
                    .iter()
                    .zip(head.index..)
                    .any(|(e, want)| e.index != want)
                {
                    return Err(invalid("append", "entries are not contiguous".into()));
                }
                Ok(())
            }
            Write::Compact(index) => {
                if *index <= self.first_index() {
                    return Ok(());
                }
                if *index > self.last_index() + 1 {
                    return Err(invalid(
                        "compact",
                        format!("{index} is past last index {} + 1", self.last_index()),
                    ));
                }
                let snap = self.snapshot.get_metadata().index;
                if index - 1 > snap {
                    return Err(invalid(
                        "compact",
                        format!("{index} would drop entries the snapshot at {snap} misses"),
                    ));
                }
                Ok(())
            }
            Write::ApplySnapshot(s) | Write::StoreSnapshot(s) => {
                let index = s.get_metadata().index;
                let stored = self.snapshot.get_metadata().index;
                if index == 0 || index < stored {
                    return Err(invalid(
                        "snapshot",
                        format!("snapshot at {index} is empty or older than the stored {stored}"),
                    ));
                }
                if let Write::StoreSnapshot(_) = write {
                    if self.term(index).ok() != Some(s.get_metadata().term) {
                        return Err(invalid(
                            "store_snapshot",
                            format!("snapshot at {index} does not match the log"),
                        ));
                    }
                }
                Ok(())
            }
            Write::HardState(_) | Write::ConfState(_) => Ok(()),
        }
    }

    /// Applies a checked write.
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Append(entries) => {
                let Some(head) = entries.first() else { return };
                let keep = (head.index - self.first_index()) as usize;
                self.entries.truncate(keep);
                self.entries.extend(entries.iter().cloned());
            }
            Write::HardState(hs) => self.hard_state = hs.clone(),
            Write::ConfState(cs) => self.conf_state = cs.clone(),
            Write::ApplySnapshot(s) => {
                let meta = s.get_metadata();
                self.entries.clear();
                self.truncated_index = meta.index;
                self.truncated_term = meta.term;
                self.conf_state = meta.get_conf_state().clone();
                if self.hard_state.term < meta.term {
                    self.hard_state.term = meta.term;
                    self.hard_state.vote = 0;
                }
                self.hard_state.commit = self.hard_state.commit.max(meta.index);
                self.snapshot = s.clone();
            }
            Write::StoreSnapshot(s) => self.snapshot = s.clone(),
            Write::Compact(index) => {
                if *index <= self.first_index() {
                    return;
                }
                let new_truncated = index - 1;
                self.truncated_term = self
                    .term(new_truncated)
                    .expect("checked: compaction point is in the log");
                let drop = (index - self.first_index()) as usize;
                self.entries.drain(..drop);
                self.truncated_index = new_truncated;
            }
        }
    }

    /// Returns (index, term) of every entry, for log-matching checks.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// A [`LogStore`] for the simulator: reads see every write, a crash keeps only what was
/// synced (plus, optionally, a prefix of the unsynced writes: a torn write).
///
/// Failing syncs are injected by the simulator through [`SimStore::fail_next_sync`].
#[derive(Debug, Clone, Default)]
pub struct SimStore {
    written: Image,
    synced: Image,
    unsynced: Vec<Write>,
    fail_next_sync: bool,
    sync_failed: bool,
    /// Test-only bug: `sync` reports success but makes durable only what was written
    /// before the previous `sync` (acknowledging writes one Ready ahead of the disk).
    pub(crate) lying_sync: bool,
    /// With `lying_sync`: how many of `unsynced` the previous `sync` covered.
    lag_mark: usize,
    /// Test-only: accept a compaction past the stored snapshot, as a store that does not
    /// check its arguments would, so the harness (not this store) has to catch the bug.
    pub(crate) permissive_compact: bool,
}

impl SimStore {
    /// Creates an empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `sync` fail (the node then stops, as on a real fsync error).
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Returns true once a `sync` has failed.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed
    }

    /// What survives a crash now: the synced state, plus a random prefix of the
    /// unsynced writes when `torn` (the disk may have persisted some of them).
    pub(crate) fn crash(&self, rng: &mut SimRng, torn: bool) -> SimStore {
        let mut image = self.synced.clone();
        if torn && !self.unsynced.is_empty() {
            let keep = rng.below(self.unsynced.len() as u64 + 1) as usize;
            for (k, write) in self.unsynced.iter().enumerate().take(keep + 1) {
                match write {
                    // The write in flight may itself be torn: a prefix of its entries.
                    Write::Append(entries) if k == keep => {
                        let n = rng.below(entries.len() as u64 + 1) as usize;
                        image.apply(&Write::Append(entries[..n].to_vec()));
                    }
                    _ if k == keep => {}
                    w => image.apply(w),
                }
            }
        }
        SimStore {
            written: image.clone(),
            synced: image,
            ..SimStore::default()
        }
    }

    pub(crate) fn written(&self) -> &Image {
        &self.written
    }

    fn write(&mut self, write: Write) -> Result<(), StorageError> {
        let unchecked = self.permissive_compact
            && matches!(write, Write::Compact(i) if i <= self.written.last_index() + 1);
        if !unchecked {
            self.written.check(&write)?;
        }
        self.written.apply(&write);
        self.unsynced.push(write);
        Ok(())
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.written.hard_state.clone(),
            self.written.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let img = &self.written;
        if low < img.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > img.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let from = (low - img.first_index()) as usize;
        let to = (high - img.first_index()) as usize;
        let max = max_size.into().filter(|&m| m != NO_LIMIT);
        let mut out = Vec::with_capacity(to - from);
        let mut size = 0u64;
        for e in &img.entries[from..to] {
            size += u64::from(e.compute_size());
            if max.is_some_and(|m| !out.is_empty() && size > m) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.written.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.written.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.written.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let index = self.written.snapshot.get_metadata().index;
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.written.snapshot.clone())
    }
}

impl LogStore for SimStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(Write::Append(entries.to_vec()))
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.write(Write::HardState(hard_state.clone()))
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.write(Write::ConfState(conf_state.clone()))
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.write(Write::ApplySnapshot(snapshot))
    }

    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.write(Write::StoreSnapshot(snapshot))
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        self.write(Write::Compact(compact_index))
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.fail_next_sync || self.sync_failed {
            self.fail_next_sync = false;
            self.sync_failed = true;
            return Err(StorageError::Io {
                op: "sync".into(),
                source: std::io::Error::other("injected fsync failure"),
            });
        }
        if self.lying_sync {
            for write in self.unsynced.drain(..self.lag_mark) {
                self.synced.apply(&write);
            }
            self.lag_mark = self.unsynced.len();
            return Ok(());
        }
        for write in self.unsynced.drain(..) {
            self.synced.apply(&write);
        }
        Ok(())
    }
}
