//! [`MemLogStore`]: a [`LogStore`] kept in process memory. **Not durable.**

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};

use super::window::LogWindow;
use crate::error::StorageError;
use crate::log_store::LogStore;

/// A [`LogStore`] that keeps the Raft log, HardState, ConfState and latest snapshot in
/// process memory.
///
/// **It is not durable.** [`LogStore::sync`] does nothing, and everything is lost when
/// the process exits. Use it for tests, examples and simulations, never for data that
/// must survive a crash.
///
/// Cloning is cheap and every clone shares the same state. A test can keep a clone, stop
/// a node, and start a new node on the same store: a restart that keeps the "disk". Since
/// nothing is ever lost, such a restart sees every write, synced or not.
///
/// Reads and writes take one short lock; entries are cloned out of the store (their
/// `data` and `context` are [`bytes::Bytes`], so a clone does not copy the payload).
///
/// Unlike raft-rs's `MemStorage`, `snapshot()` returns only a snapshot that was stored
/// or applied (with its data), never one made up from the commit index.
///
/// # Examples
///
/// ```
/// use raft::eraftpb::Entry;
/// use raft::Storage;
/// use raftnode::{LogStore, MemLogStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut store = MemLogStore::new();
/// let entries: Vec<Entry> = (1..=2)
///     .map(|index| Entry { index, term: 1, data: "set x".into(), ..Entry::default() })
///     .collect();
/// store.append(&entries)?;
/// assert_eq!(store.first_index()?, 1);
/// assert_eq!(store.last_index()?, 2);
///
/// // Clones share the state: keep one to restart a node on the same "disk".
/// let kept = store.clone();
/// drop(store);
/// assert_eq!(kept.term(2)?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemLogStore {
    core: Arc<Mutex<Core>>,
}

/// The shared state behind every clone of a [`MemLogStore`].
#[derive(Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// The log and the newest snapshot (shared with the other stores, src/storage/window.rs).
    window: LogWindow,
}

impl MemLogStore {
    /// Creates an empty store: no entries, `first_index()` 1, `last_index()` 0, default
    /// HardState and ConfState, no snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the stored HardState.
    pub fn hard_state(&self) -> HardState {
        self.core.lock().hard_state.clone()
    }

    /// Returns the stored ConfState.
    pub fn conf_state(&self) -> ConfState {
        self.core.lock().conf_state.clone()
    }

    /// Returns the metadata (index, term, ConfState) of the stored snapshot; index 0
    /// means no snapshot was stored or applied yet.
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.core.lock().window.snapshot().get_metadata().clone()
    }

    /// A store holding exactly this state (a recording's starting state, src/record.rs):
    /// the log after the compaction point `truncated` (index, term) is `entries`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] when `entries` do not follow the compaction point one
    /// index after another, or when raft-rs would refuse the state with a panic: a
    /// commit index outside `[compaction point, last index]`, or a member listed twice
    /// (twice in one list, or both voter and learner).
    pub(crate) fn restored(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Snapshot,
        truncated: (u64, u64),
        entries: Vec<Entry>,
    ) -> Result<Self, StorageError> {
        let (index, term) = truncated;
        if let Some((k, e)) = (1..)
            .zip(&entries)
            .find(|(k, e)| index.checked_add(*k) != Some(e.index))
        {
            return Err(StorageError::Invalid {
                op: "restore",
                detail: format!(
                    "entry {k} after the compaction point {index} has index {}",
                    e.index
                ),
            });
        }
        let last = index + entries.len() as u64;
        let invalid = |detail: String| StorageError::Invalid {
            op: "restore",
            detail,
        };
        if hard_state.commit < index || hard_state.commit > last {
            return Err(invalid(format!(
                "commit index {} outside [{index}, {last}] (raft-rs refuses it)",
                hard_state.commit
            )));
        }
        let mut ids: Vec<u64> = conf_state
            .voters
            .iter()
            .chain(&conf_state.learners)
            .copied()
            .collect();
        let mut outgoing = conf_state.voters_outgoing.clone();
        for list in [&mut ids, &mut outgoing] {
            list.sort_unstable();
            if let Some(w) = list.windows(2).find(|w| w[0] == w[1]) {
                return Err(invalid(format!(
                    "member {} is listed twice in the configuration",
                    w[0]
                )));
            }
        }
        let window = LogWindow::restored(snapshot, index, term, entries.into());
        let core = Core {
            hard_state,
            conf_state,
            window,
        };
        Ok(MemLogStore {
            core: Arc::new(Mutex::new(core)),
        })
    }

    /// Returns how many entries the log holds (`last_index() + 1 - first_index()`).
    pub fn entry_count(&self) -> usize {
        self.core.lock().window.len()
    }
}

impl fmt::Debug for MemLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A summary: the log itself can be large.
        let core = self.core.lock();
        let meta = core.window.snapshot().get_metadata();
        f.debug_struct("MemLogStore")
            .field("first_index", &core.window.first_index())
            .field("last_index", &core.window.last_index())
            .field("hard_state", &core.hard_state)
            .field("snapshot_index", &meta.index)
            .field("snapshot_term", &meta.term)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.window.check_not_stale("apply_snapshot", &snapshot)?;
        let meta = snapshot.get_metadata();
        self.conf_state = meta.get_conf_state().clone();
        if self.hard_state.term < meta.term {
            // The stored vote was cast in an older term; it says nothing about this one.
            self.hard_state.term = meta.term;
            self.hard_state.vote = 0;
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.window.apply_snapshot(snapshot);
        Ok(())
    }
}

impl Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.lock();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.core.lock().window.entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.core.lock().window.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.lock().window.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.lock().window.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // raft-rs panics on an index-0 snapshot and wants one at or past request_index;
        // "not yet" is the only answer it handles otherwise.
        self.core.lock().window.snapshot_for(request_index)
    }
}

impl LogStore for MemLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut core = self.core.lock();
        core.window.check_append(entries)?;
        core.window.append(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.core.lock().hard_state = hard_state.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.core.lock().conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.core.lock().apply_snapshot(snapshot)
    }

    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut core = self.core.lock();
        core.window.check_store_snapshot(&snapshot)?;
        core.window.store_snapshot(snapshot);
        Ok(())
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        let mut core = self.core.lock();
        if core.window.check_compact(compact_index)? {
            core.window.compact(compact_index);
        }
        Ok(())
    }

    /// Does nothing: a `MemLogStore` is not durable.
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
    use raft::{GetEntriesContext, Storage, StorageError as RaftStorageError};

    use super::MemLogStore;
    use crate::log_store::LogStore;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![b'x'; index as usize * 7].into(),
            ..Entry::default()
        }
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        indexes.map(|index| entry(index, term)).collect()
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut snapshot = Snapshot {
            data: format!("state at {index}").into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.mut_conf_state().voters = vec![1, 2, 3];
        snapshot
    }

    fn read(
        store: &MemLogStore,
        low: u64,
        high: u64,
        max: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        store.entries(low, high, max, GetEntriesContext::empty(false))
    }

    fn store_error(e: RaftStorageError) -> raft::Error {
        raft::Error::Store(e)
    }

    // Every budget from 0 past the total gives exactly what raft's own limit_size gives.
    #[test]
    fn max_size_matches_raft_limit_size() {
        let mut store = MemLogStore::new();
        store.append(&entries(1..=6, 1)).unwrap();
        let all = read(&store, 1, 7, None).unwrap();
        let total: u64 = all
            .iter()
            .map(|e| u64::from(protobuf::Message::compute_size(e)))
            .sum();
        for low in 1..=6 {
            for max in 0..=total + 3 {
                let mut want = read(&store, low, 7, None).unwrap();
                raft::util::limit_size(&mut want, Some(max));
                assert_eq!(
                    read(&store, low, 7, Some(max)).unwrap(),
                    want,
                    "low {low} max {max}"
                );
            }
        }
        assert_eq!(read(&store, 1, 7, Some(raft::NO_LIMIT)).unwrap().len(), 6);
    }

    // raft-rs's MemStorage loses term(first_index - 1) when compacting below its
    // snapshot; this store keeps the compaction point's term.
    #[test]
    fn term_before_first_index_survives_compaction_below_snapshot() {
        let mut store = MemLogStore::new();
        store.append(&entries(1..=4, 1)).unwrap();
        store.append(&entries(5..=10, 2)).unwrap();
        store.store_snapshot(snapshot(8, 2)).unwrap();
        store.compact(5).unwrap();
        assert_eq!(store.first_index().unwrap(), 5);
        assert_eq!(store.term(4), Ok(1));
        assert_eq!(store.term(3), Err(store_error(RaftStorageError::Compacted)));
        assert_eq!(store.term(8), Ok(2));
        store.compact(9).unwrap();
        assert_eq!(store.term(8), Ok(2));
        assert_eq!(store.entry_count(), 2);
    }

    #[test]
    fn append_rejects_compacted_and_non_contiguous_and_changes_nothing() {
        let mut store = MemLogStore::new();
        store.append(&entries(1..=5, 1)).unwrap();
        store.store_snapshot(snapshot(3, 1)).unwrap();
        store.compact(4).unwrap();
        let before = read(&store, 4, 6, None).unwrap();

        assert!(
            store.append(&entries(3..=6, 2)).is_err(),
            "overwrites compacted entry 3"
        );
        let gap = vec![entry(5, 2), entry(7, 2)];
        assert!(store.append(&gap).is_err(), "gap inside the slice");
        assert!(store.append(&entries(7..=8, 2)).is_err(), "hole after 5");

        assert_eq!(store.first_index().unwrap(), 4);
        assert_eq!(read(&store, 4, 6, None).unwrap(), before);
        // Appending exactly at first_index replaces the whole log.
        store.append(&entries(4..=4, 3)).unwrap();
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(4), Ok(3));
    }

    #[test]
    fn entries_edges() {
        let mut store = MemLogStore::new();
        assert_eq!(read(&store, 1, 1, None), Ok(vec![]));
        assert_eq!(
            read(&store, 1, 2, None),
            Err(store_error(RaftStorageError::Unavailable))
        );
        store.append(&entries(1..=3, 1)).unwrap();
        assert_eq!(read(&store, 4, 4, Some(0)), Ok(vec![]));
        assert!(read(&store, 3, 2, None).is_err(), "low > high");
        assert_eq!(
            read(&store, 0, 2, None),
            Err(store_error(RaftStorageError::Compacted))
        );
    }

    #[test]
    fn apply_snapshot_moves_hard_state_forward_only() {
        let mut store = MemLogStore::new();
        store
            .set_hard_state(&HardState {
                term: 2,
                vote: 3,
                commit: 1,
                ..HardState::default()
            })
            .unwrap();
        store.apply_snapshot(snapshot(10, 4)).unwrap();
        let hs = store.hard_state();
        assert_eq!(
            (hs.term, hs.vote, hs.commit),
            (4, 0, 10),
            "older vote cleared"
        );
        assert_eq!(store.conf_state().voters, vec![1, 2, 3]);

        store
            .set_hard_state(&HardState {
                term: 9,
                vote: 2,
                commit: 30,
                ..HardState::default()
            })
            .unwrap();
        store.apply_snapshot(snapshot(20, 5)).unwrap();
        let hs = store.hard_state();
        assert_eq!(
            (hs.term, hs.vote, hs.commit),
            (9, 2, 30),
            "newer hard state kept"
        );
        assert_eq!(store.snapshot_metadata().index, 20);
        assert_eq!(store.entry_count(), 0);

        assert!(store.apply_snapshot(snapshot(15, 5)).is_err(), "stale");
        assert!(
            store.apply_snapshot(Snapshot::default()).is_err(),
            "index 0"
        );
        assert_eq!(store.last_index().unwrap(), 20);
    }

    #[test]
    fn store_snapshot_must_match_the_log() {
        let mut store = MemLogStore::new();
        store.append(&entries(1..=5, 2)).unwrap();
        assert!(
            store.store_snapshot(snapshot(6, 2)).is_err(),
            "past last index"
        );
        assert!(
            store.store_snapshot(snapshot(4, 1)).is_err(),
            "term mismatch"
        );
        assert!(
            store.store_snapshot(Snapshot::default()).is_err(),
            "index 0"
        );
        store.store_snapshot(snapshot(4, 2)).unwrap();
        assert!(store.store_snapshot(snapshot(3, 2)).is_err(), "older");
        store.store_snapshot(snapshot(4, 2)).unwrap();
        assert_eq!(store.snapshot_metadata().index, 4);
        assert_eq!(store.entry_count(), 5);
    }

    #[test]
    fn snapshot_needs_request_index() {
        let mut store = MemLogStore::new();
        let unavailable = Err(store_error(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ));
        assert_eq!(store.snapshot(0, 2), unavailable);
        store.append(&entries(1..=5, 1)).unwrap();
        store.store_snapshot(snapshot(3, 1)).unwrap();
        assert_eq!(store.snapshot(3, 2).map(|s| s.get_metadata().index), Ok(3));
        assert_eq!(store.snapshot(4, 2), unavailable);
    }

    #[test]
    fn clones_share_state() {
        let mut store = MemLogStore::new();
        let kept = store.clone();
        store.append(&entries(1..=3, 1)).unwrap();
        store
            .set_conf_state(&ConfState {
                voters: vec![1],
                ..ConfState::default()
            })
            .unwrap();
        drop(store);
        assert_eq!(kept.last_index().unwrap(), 3);
        assert_eq!(kept.initial_state().unwrap().conf_state.voters, vec![1]);
        assert!(format!("{kept:?}").contains("last_index: 3"));
    }

    /// A recording's starting state that raft-rs would panic on is refused first.
    #[test]
    fn restored_refuses_what_raft_rs_would_panic_on() {
        let entry = |index| {
            let mut e = Entry::default();
            e.index = index;
            e.term = 1;
            e
        };
        let restore = |commit, voters: Vec<u64>, learners: Vec<u64>| {
            let mut hs = HardState::default();
            hs.commit = commit;
            hs.term = 1;
            let mut cs = ConfState::default();
            cs.voters = voters;
            cs.learners = learners;
            MemLogStore::restored(
                hs,
                cs,
                Snapshot::default(),
                (0, 0),
                vec![entry(1), entry(2)],
            )
        };
        assert!(restore(2, vec![1, 2, 3], vec![]).is_ok());
        assert!(
            restore(3, vec![1, 2, 3], vec![]).is_err(),
            "commit past the log"
        );
        assert!(restore(1, vec![1, 2, 2], vec![]).is_err(), "a voter twice");
        assert!(
            restore(1, vec![1, 2], vec![2]).is_err(),
            "voter and learner"
        );
    }
}
