//! A log store whose `sync` can be made slow, for the tests that need a slow disk
//! (diagnosis, proposal timing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftnode::raft_types::{ConfState, Entry, HardState, Snapshot};
use raftnode::{LogStore, MemLogStore, StorageError};

/// A [`MemLogStore`] whose `sync` first sleeps for `delay_ms` (a slow disk).
pub struct SlowSyncStore {
    pub inner: MemLogStore,
    pub delay_ms: Arc<AtomicU64>,
}

super::forward_storage!(SlowSyncStore, inner);

impl LogStore for SlowSyncStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.apply_snapshot(snapshot)
    }
    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.store_snapshot(snapshot)
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            // The injected fault itself: a disk that takes this long to sync.
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.sync()
    }
}
