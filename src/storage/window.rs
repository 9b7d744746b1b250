//! [`LogWindow`]: the in-memory part of a log store, one copy for every store.
//!
//! `MemLogStore` keeps its whole log in one, `EngineLogStore` serves every read from
//! one in front of raft-engine, and the simulator's disk keeps one for what was written
//! and one for what was synced. Term lookup, `entries(max_size)`, append with its hole
//! and contiguity checks, compaction and the snapshot checks live here once, so the
//! simulator's storage semantics are the shipped ones.
//!
//! Every change comes in two halves: a `check_*` that reads the window and says whether
//! the change is valid, and the change itself, which panics on an invalid argument
//! (callers check first; a store that must stage a write elsewhere, such as in an
//! engine batch, checks, stages, then changes the window).

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{Entry, Snapshot};

use crate::error::StorageError;

/// A contiguous run of log entries after a compaction point, with the newest snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogWindow {
    /// The newest snapshot stored or applied, with its data; index 0 means none yet.
    /// `Storage::snapshot` serves it, and compaction may not drop entries past it.
    snapshot: Snapshot,
    /// Index of the entry just before `entries[0]` (the compaction point). raft asks for
    /// its term when matching a follower's log, so the term is kept after the entry is
    /// gone. 0 on a fresh store.
    truncated_index: u64,
    /// Term of the entry at `truncated_index`.
    truncated_term: u64,
    /// The log: `entries[k]` has index `truncated_index + 1 + k`.
    entries: VecDeque<Entry>,
}

fn invalid(op: &'static str, detail: String) -> StorageError {
    StorageError::Invalid { op, detail }
}

impl LogWindow {
    /// A window restored from what a store read back: its snapshot, compaction point and
    /// the entries after it.
    pub(crate) fn restored(
        snapshot: Snapshot,
        truncated_index: u64,
        truncated_term: u64,
        entries: VecDeque<Entry>,
    ) -> Self {
        for entry in &entries {
            // `entries` sizes with the cached size, which `append` sets for new ones.
            entry.compute_size();
        }
        LogWindow {
            snapshot,
            truncated_index,
            truncated_term,
            entries,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    /// The compaction point: (index, term) of the entry just before the first.
    pub(crate) fn truncated(&self) -> (u64, u64) {
        (self.truncated_index, self.truncated_term)
    }

    /// The newest snapshot stored or applied (index 0: none).
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Number of entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry held, oldest first (the simulator's disk reads it).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Position in `entries` of the entry at `index`, which must be in
    /// `first_index()..=last_index() + 1`.
    fn position(&self, index: u64) -> usize {
        debug_assert!(index > self.truncated_index && index <= self.last_index() + 1);
        (index - self.first_index()) as usize
    }

    /// `Storage::term`: the compaction point's term is kept.
    pub(crate) fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[self.position(index)].term)
    }

    /// `Storage::entries` for `[low, high)`, at most `max_size` bytes (`None` or
    /// `NO_LIMIT`: no limit) by raft's own rule (`raft::util::limit_size`: the first
    /// entry always, then entries while the running size stays within the limit).
    pub(crate) fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low > high {
            return Err(invalid("entries", format!("low {low} > high {high}")).into_raft());
        }
        let range = self.position(low)..self.position(high);
        let max_size = max_size.filter(|&max| max != raft::NO_LIMIT);
        let Some(max_size) = max_size else {
            return Ok(self.entries.range(range).cloned().collect());
        };
        // Applied while copying, so entries past the limit are never cloned.
        let mut taken = Vec::new();
        let mut size = 0u64;
        for entry in self.entries.range(range) {
            // Cached by `append`: stored entries are never mutated afterwards.
            size += u64::from(entry.get_cached_size());
            if !taken.is_empty() && size > max_size {
                break;
            }
            taken.push(entry.clone());
        }
        Ok(taken)
    }

    /// Whether `entries` may be appended: contiguous, starting after the compaction
    /// point and without leaving a hole after the last entry.
    pub(crate) fn check_append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        if head.index < self.first_index() {
            return Err(invalid(
                "append",
                format!(
                    "first new entry {} is at or below the compaction point {}",
                    head.index, self.truncated_index
                ),
            ));
        }
        if head.index > self.last_index() + 1 {
            return Err(invalid(
                "append",
                format!(
                    "first new entry {} would leave a hole after last index {}",
                    head.index,
                    self.last_index()
                ),
            ));
        }
        if let Some((k, entry)) = (0u64..)
            .zip(entries)
            .find(|&(k, entry)| entry.index != head.index + k)
        {
            return Err(invalid(
                "append",
                format!(
                    "entries are not contiguous: entry {} is at position {k} after {}",
                    entry.index, head.index
                ),
            ));
        }
        Ok(())
    }

    /// Appends checked `entries`, first dropping every entry at or after the first new
    /// index (raft may overwrite a conflicting suffix written in an earlier term).
    ///
    /// # Panics
    ///
    /// If `check_append` refuses them.
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        if let Err(e) = self.check_append(entries) {
            panic!("append without check: {e}");
        }
        let Some(head) = entries.first() else {
            return;
        };
        let keep = self.position(head.index);
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().map(|e| {
            let stored = e.clone();
            // Cache the encoded size once: `entries` sizes every entry it returns, once
            // per follower, and protobuf keeps the cached value on every clone.
            stored.compute_size();
            stored
        }));
    }

    /// Whether the log may be compacted so that `compact_index` becomes the first
    /// index: not past the last index + 1, and not past what the stored snapshot
    /// covers. Returns whether there is anything to drop.
    pub(crate) fn check_compact(&self, compact_index: u64) -> Result<bool, StorageError> {
        self.check_compact_in_log(compact_index)?;
        if compact_index <= self.first_index() {
            return Ok(false);
        }
        let snapshot_index = self.snapshot.get_metadata().index;
        if compact_index - 1 > snapshot_index {
            return Err(invalid(
                "compact",
                format!(
                    "compacting to {compact_index} would drop entries up to {} but the stored \
                     snapshot covers only up to {snapshot_index}",
                    compact_index - 1
                ),
            ));
        }
        Ok(true)
    }

    /// The part of [`check_compact`](Self::check_compact) that keeps the window
    /// consistent: the new compaction point is in the log. A store that skipped the
    /// snapshot rule (the simulator's `compact_past_snapshot` bug) still needs this one.
    pub(crate) fn check_compact_in_log(&self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index > self.first_index() && compact_index > self.last_index() + 1 {
            return Err(invalid(
                "compact",
                format!(
                    "compact index {compact_index} is past last index {} + 1",
                    self.last_index()
                ),
            ));
        }
        Ok(())
    }

    /// Drops the entries before `compact_index`, keeping the new compaction point's
    /// term. Nothing happens at or below the first index.
    ///
    /// # Panics
    ///
    /// If `check_compact_in_log` refuses it.
    pub(crate) fn compact(&mut self, compact_index: u64) {
        if let Err(e) = self.check_compact_in_log(compact_index) {
            panic!("compact without check: {e}");
        }
        if compact_index <= self.first_index() {
            return;
        }
        let new_truncated = compact_index - 1;
        let new_truncated_term = self.entries[self.position(new_truncated)].term;
        let drop = self.position(compact_index);
        self.entries.drain(..drop);
        self.truncated_index = new_truncated;
        self.truncated_term = new_truncated_term;
    }

    /// Whether `snapshot` may replace the stored one: not empty, not older.
    pub(crate) fn check_not_stale(
        &self,
        op: &'static str,
        snapshot: &Snapshot,
    ) -> Result<(), StorageError> {
        let index = snapshot.get_metadata().index;
        if index == 0 {
            return Err(invalid(op, "a snapshot at index 0 is empty".to_owned()));
        }
        let stored = self.snapshot.get_metadata().index;
        if index < stored {
            return Err(invalid(
                op,
                format!("snapshot at index {index} is older than the stored one at {stored}"),
            ));
        }
        Ok(())
    }

    /// Whether a snapshot this node took may be stored: not stale, and at an index the
    /// log holds with the same term. The driver only stores snapshots of entries it has;
    /// anything else would let a follower install a state this log cannot vouch for.
    pub(crate) fn check_store_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_not_stale("store_snapshot", snapshot)?;
        let meta = snapshot.get_metadata();
        match self.term(meta.index) {
            Ok(term) if term == meta.term => Ok(()),
            Ok(term) => Err(invalid(
                "store_snapshot",
                format!(
                    "snapshot at index {} has term {} but the log has term {term} there",
                    meta.index, meta.term
                ),
            )),
            Err(_) => Err(invalid(
                "store_snapshot",
                format!(
                    "snapshot index {} is outside the log {}..={}",
                    meta.index,
                    self.truncated_index,
                    self.last_index()
                ),
            )),
        }
    }

    /// Keeps a snapshot this node took (checked with `check_store_snapshot`); the log is
    /// unchanged.
    pub(crate) fn store_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
    }

    /// Installs a leader's snapshot (checked with `check_not_stale`): the log is
    /// replaced by the snapshot's compaction point. The store updates its HardState and
    /// ConfState itself.
    pub(crate) fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        // The compaction point never passes the stored snapshot, so a snapshot that is
        // not stale is not behind the compaction point either.
        debug_assert!(meta.index >= self.truncated_index);
        self.entries.clear();
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.snapshot = snapshot;
    }

    /// `Storage::snapshot`: the stored snapshot if it reaches `request_index`.
    pub(crate) fn snapshot_for(&self, request_index: u64) -> raft::Result<Snapshot> {
        let index = self.snapshot.get_metadata().index;
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}
