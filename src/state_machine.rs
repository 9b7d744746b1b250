//! The `StateMachine` trait: the host application's domain logic.

use bytes::Bytes;

use crate::error::StateMachineError;

/// The replicated state: commands come in committed, in log order, exactly once.
///
/// The driver thread owns the state machine; every method is called from that one thread,
/// so implementations need no locking of their own. Reads from other threads go through
/// [`crate::Node::read`], which runs a closure on the driver thread.
///
/// # Correctness
///
/// Every replica applies the same commands in the same order, so `apply` must be
/// deterministic: no clocks, no randomness, no iteration over `HashMap` order, no reads of
/// local files that differ between nodes. Errors that depend only on the command (a key
/// that does not exist, say) belong in the `Response`, not in a panic.
///
/// # Examples
///
/// ```
/// use raftnode::{StateMachine, StateMachineError};
///
/// #[derive(Default)]
/// struct Counter { total: u64, applied: u64 }
///
/// impl StateMachine for Counter {
///     type Response = u64;
///     fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
///         self.total += command.len() as u64;
///         self.applied = index;
///         self.total
///     }
///     fn apply_noop(&mut self, index: u64) { self.applied = index; }
///     fn applied_index(&self) -> u64 { self.applied }
///     fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
///         Ok(bytes::Bytes::copy_from_slice(&self.total.to_le_bytes()))
///     }
///     fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
///         let raw: [u8; 8] = data.try_into().map_err(StateMachineError::new)?;
///         self.total = u64::from_le_bytes(raw);
///         self.applied = index;
///         Ok(())
///     }
/// }
/// ```
pub trait StateMachine: Send + 'static {
    /// What a proposer receives once its command is applied on the node it proposed to.
    type Response: Send + 'static;

    /// Applies the committed command at `index` and returns the proposer's response.
    ///
    /// # Correctness
    ///
    /// - Called once per committed non-empty command, in strictly increasing `index`
    ///   order, never for an index at or below [`Self::applied_index`] as it stood when
    ///   the node started or after the last [`Self::restore`].
    /// - After it returns, `applied_index()` must be `index`.
    /// - Must be deterministic (see the trait docs). It must not panic on any command a
    ///   client can propose: a panic stops the node.
    /// - A durable state machine that persists its state must persist `index` atomically
    ///   with the effect of the command (same write batch or same file), so that after a
    ///   crash either both or neither survived. That is what makes apply exactly-once
    ///   across restarts.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Response;

    /// Records that the entry at `index` carried no command: a new leader's empty entry,
    /// a membership change, or a conf change raft rejected.
    ///
    /// # Correctness
    ///
    /// After it returns, `applied_index()` must be `index`. Persisting that index is
    /// optional (re-applying such entries after a restart is harmless), but it must never
    /// move backwards.
    fn apply_noop(&mut self, index: u64);

    /// The index of the last entry whose effect survives a restart of this state machine.
    ///
    /// # Correctness
    ///
    /// - Called when the node starts; raft resumes applying right after it, so it must
    ///   never be ahead of what is durable (an in-memory state machine that starts empty
    ///   returns 0, and the node then restores it from the log store's snapshot).
    /// - Between restarts it equals the index passed to the last `apply`, `apply_noop` or
    ///   `restore`.
    fn applied_index(&self) -> u64;

    /// Serializes the whole state as of [`Self::applied_index`].
    ///
    /// The driver takes snapshots under [`crate::SnapshotPolicy`] and on
    /// [`crate::Node::snapshot_now`], stores them in the `LogStore` (with the applied index
    /// and `ConfState`) and then compacts the log behind them.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] stops the node: a node that cannot snapshot cannot compact.
    ///
    /// # Correctness
    ///
    /// The bytes must restore, through [`Self::restore`], a state equal to the current
    /// one on any replica. Called on the driver thread: a large state blocks the node
    /// while it serializes (see `docs/snapshots.md`).
    fn snapshot(&self) -> Result<Bytes, StateMachineError>;

    /// Replaces the whole state with the snapshot `data` taken at `index`.
    ///
    /// Called when a leader sends a snapshot to a lagging follower, and at start when the
    /// state machine is behind the log store's snapshot.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] stops the node.
    ///
    /// # Correctness
    ///
    /// After it returns, the state equals the snapshot's and `applied_index()` is `index`
    /// (which is always greater than the current applied index). A durable state machine
    /// persists both atomically before returning.
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError>;

    /// Checks snapshot `data` taken at `index` before this node accepts it from a
    /// leader. The default accepts everything [`Self::restore`] is then given.
    ///
    /// raftnode already checks the snapshot's framing and its end-to-end checksum
    /// (taken where [`Self::snapshot`] returned the bytes) before calling this; override
    /// it to check what only the state machine can: that the bytes decode, a format
    /// version, a digest of its own.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] refuses the snapshot: it is counted in
    /// [`crate::MetricsSnapshot::refused`] (`Refusal::SnapshotRejected`), logged, never
    /// reaches the log store, and the leader is told so it sends a fresh snapshot. The
    /// node keeps running.
    ///
    /// # Correctness
    ///
    /// - Must not change the state: it runs before the snapshot is installed, and the
    ///   snapshot may still be refused or superseded.
    /// - Should refuse whatever [`Self::restore`] would fail on: a snapshot that passes
    ///   here and then fails in `restore` stops the node, and every restart after.
    /// - Must be deterministic in `data`: an honest leader's snapshot that it refuses
    ///   is sent again and refused again.
    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let _ = (index, data);
        Ok(())
    }

    /// A digest of the whole replicated state as of [`Self::applied_index`], for
    /// divergence detection; the default `None` opts out.
    ///
    /// With `Config::checkpoint_every` set, the leader puts a checkpoint in the log
    /// every that many entries; every replica calls `digest` right after applying it,
    /// and the leader then logs its own digest for the others to compare with theirs.
    /// A mismatch is reported in [`crate::Status::divergence`], as a
    /// [`crate::FindingKind::Diverged`] finding, in
    /// [`crate::MetricsSnapshot::divergences`] and in an error log line, and stops the
    /// node when `Config::stop_on_divergence` is set (docs/operations.md,
    /// "Divergence"; docs/implementing-state-machine.md, "The digest").
    ///
    /// # Correctness
    ///
    /// - A deterministic function of the replicated state alone: two replicas that
    ///   applied the same entries return the same value, whatever their history of
    ///   restarts, snapshots and restores. Leave out what differs between replicas
    ///   without being replicated (caches, local timestamps, node ids) and hash maps
    ///   in iteration order.
    /// - Cheap, or kept incrementally (updated in `apply`, say): it runs on the
    ///   driver thread at every checkpoint, and the node does nothing else meanwhile.
    /// - Returns `None` always or never: a replica that returns `None` is not
    ///   compared, and is not told anything.
    /// - Must not change the state.
    fn digest(&self) -> Option<u64> {
        None
    }
}
