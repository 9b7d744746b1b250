//! The `LogStore` trait: where the Raft log, HardState, ConfState and snapshot live.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::error::StorageError;

/// Persistent storage for one Raft group: raft-rs's [`raft::Storage`] for reads, plus
/// the writes the Ready loop makes.
///
/// The driver calls the write methods in the order of `docs/ready-loop.md`: within one
/// Ready, `apply_snapshot`, then `append`, then `set_hard_state`, then `sync` (when the
/// Ready needs it) **before** any message that depends on those writes leaves the node.
/// In the box: [`crate::MemLogStore`] (in memory, not durable).
///
/// # Correctness
///
/// These obligations hold for every implementation; the conformance suite in
/// `raftnode::testing` (feature `testing`) checks them.
///
/// - **Read your writes.** When a write method returns `Ok`, the `raft::Storage` reads
///   (`entries`, `term`, `first_index`, `last_index`, `initial_state`, `snapshot`) reflect
///   it, even before `sync`.
/// - **Durability point.** When [`LogStore::sync`] returns `Ok`, every write made before
///   it survives a crash or power loss. Writes not yet synced may be lost, but only as a
///   suffix: never a hole in the log, never a later write without an earlier one.
/// - **No holes.** The log is the contiguous range `first_index()..=last_index()`, and
///   `term(first_index() - 1)` is always answerable (from the snapshot or the compaction
///   point).
/// - **Fail loudly.** A write that fails returns `Err`; the node stops and acknowledges
///   nothing more. Never report `Ok` for a write that was not made.
/// - `raft::Storage::snapshot` returns the snapshot stored by [`LogStore::store_snapshot`]
///   or [`LogStore::apply_snapshot`]. If there is none yet, it returns
///   `SnapshotTemporarilyUnavailable`; it never returns an index-0 snapshot or another
///   error (raft-rs panics on those).
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends `entries`, which are contiguous and start at most at `last_index() + 1`.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails or would leave a hole; the node stops.
    ///
    /// # Correctness
    ///
    /// Every stored entry at or after `entries[0].index` is dropped first: raft may
    /// overwrite a conflicting suffix written in an earlier term. An empty slice is a
    /// no-op.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Records the HardState (term, vote, commit).
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails; the node stops.
    ///
    /// # Correctness
    ///
    /// The driver calls this both with a Ready's HardState and with the commit index a
    /// `LightReady` reports; both must reach the disk at the next `sync`. A restart must
    /// find the newest HardState written before the last successful `sync`.
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Records the ConfState after a membership change was applied, or at bootstrap.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails; the node stops.
    ///
    /// # Correctness
    ///
    /// `initial_state()` returns it from now on, and after a restart once synced.
    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StorageError>;

    /// Installs a snapshot received from the leader, replacing the log.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails; the node stops.
    ///
    /// # Correctness
    ///
    /// Afterwards: every entry is gone; `first_index()` is `meta.index + 1`; `last_index()`
    /// is `meta.index`; `term(meta.index)` is `meta.term` (the dummy entry); the ConfState
    /// is `meta.conf_state`; the HardState's commit is at least `meta.index` and its term
    /// at least `meta.term`; `snapshot()` returns this snapshot (with its data) until a
    /// newer one is stored.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError>;

    /// Keeps a snapshot this node took of its own state machine, to serve followers.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails, or when the snapshot is older than the one
    /// already stored.
    ///
    /// # Correctness
    ///
    /// The log is not changed. `snapshot()` returns this snapshot from now on. The driver
    /// only passes snapshots at an index that is committed and present in the log.
    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError>;

    /// Drops every entry before `compact_index`; `first_index()` becomes `compact_index`.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the write fails, when `compact_index > last_index() + 1`, or
    /// when it would drop entries the stored snapshot does not cover
    /// (`compact_index - 1 > snapshot index`).
    ///
    /// # Correctness
    ///
    /// `term(compact_index - 1)` stays answerable. Compacting at or below `first_index()`
    /// is a no-op.
    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError>;

    /// Makes every write so far durable.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the data could not be made durable. The driver never retries
    /// a failed sync (after a failed fsync the page cache may already have dropped the
    /// data): the node stops.
    ///
    /// # Correctness
    ///
    /// When it returns `Ok`, every earlier write survives a crash. The driver calls it
    /// once per Ready that needs it, so one sync covers every entry in the Ready.
    fn sync(&mut self) -> Result<(), StorageError>;
}
