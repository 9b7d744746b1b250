//! [`SimStore`]: a [`LogStore`] on a simulated disk that keeps written and synced state
//! apart, so a simulated crash loses exactly what a real one could.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use super::SimRng;
use crate::error::StorageError;
use crate::log_store::LogStore;
use crate::storage::window::LogWindow;

/// What the disk holds: the same shape as `MemLogStore`'s state, on the same
/// [`LogWindow`] the shipped stores use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    window: LogWindow,
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

impl Image {
    /// Checks a write against the image without changing it; `permissive_compact`
    /// skips compaction's snapshot rule (the `compact_past_snapshot` bug).
    fn check(&self, write: &Write, permissive_compact: bool) -> Result<(), StorageError> {
        match write {
            Write::Append(entries) => self.window.check_append(entries),
            Write::Compact(index) if permissive_compact => self.window.check_compact_in_log(*index),
            Write::Compact(index) => self.window.check_compact(*index).map(|_| ()),
            Write::ApplySnapshot(s) => self.window.check_not_stale("apply_snapshot", s),
            Write::StoreSnapshot(s) => self.window.check_store_snapshot(s),
            Write::HardState(_) | Write::ConfState(_) => Ok(()),
        }
    }

    /// Applies a checked write, as `MemLogStore` does.
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Append(entries) => self.window.append(entries),
            Write::HardState(hs) => self.hard_state = hs.clone(),
            Write::ConfState(cs) => self.conf_state = cs.clone(),
            Write::ApplySnapshot(s) => {
                let meta = s.get_metadata();
                self.conf_state = meta.get_conf_state().clone();
                if self.hard_state.term < meta.term {
                    self.hard_state.term = meta.term;
                    self.hard_state.vote = 0;
                }
                self.hard_state.commit = self.hard_state.commit.max(meta.index);
                self.window.apply_snapshot(s.clone());
            }
            Write::StoreSnapshot(s) => self.window.store_snapshot(s.clone()),
            Write::Compact(index) => self.window.compact(*index),
        }
    }

    /// Every entry the image holds, oldest first, for log-matching checks.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.window.iter()
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
        self.written.check(&write, self.permissive_compact)?;
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
        self.written.window.entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.written.window.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.written.window.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.written.window.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.written.window.snapshot_for(request_index)
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
