//! [`TappedStore`]: a `LogStore` wrapper that numbers the writes of each input. While
//! recording it notes the write that failed; while replaying it fails the write the
//! recording says failed (the same call of the same input), with the recorded message.

use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::error::StorageError;
use crate::log_store::LogStore;

/// The `LogStore` writes, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOp {
    Append = 1,
    SetHardState,
    SetConfState,
    ApplySnapshot,
    StoreSnapshot,
    Compact,
    Sync,
}

impl WriteOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WriteOp::Append => "append",
            WriteOp::SetHardState => "set_hard_state",
            WriteOp::SetConfState => "set_conf_state",
            WriteOp::ApplySnapshot => "apply_snapshot",
            WriteOp::StoreSnapshot => "store_snapshot",
            WriteOp::Compact => "compact",
            WriteOp::Sync => "sync",
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<WriteOp> {
        [
            WriteOp::Append,
            WriteOp::SetHardState,
            WriteOp::SetConfState,
            WriteOp::ApplySnapshot,
            WriteOp::StoreSnapshot,
            WriteOp::Compact,
            WriteOp::Sync,
        ]
        .into_iter()
        .find(|op| *op as u8 == b)
    }
}

/// A write that failed: the how-manieth write of its input, which one, and the error's
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreFailure {
    pub(crate) call: u32,
    pub(crate) op: WriteOp,
    pub(crate) detail: String,
}

/// What the tap knows of the current input's writes; reset before each input.
#[derive(Debug, Default)]
pub(crate) struct StoreTap {
    /// Writes so far in this input.
    calls: u32,
    /// Replay: the write to fail in this input.
    inject: Option<StoreFailure>,
    /// The write that failed in this input (recorded, or injected).
    failed: Option<StoreFailure>,
}

impl StoreTap {
    /// Starts a new input; a replay passes the failure the recording saw in it.
    pub(crate) fn begin(&mut self, inject: Option<StoreFailure>) {
        *self = StoreTap {
            calls: 0,
            inject,
            failed: None,
        };
    }

    /// Ends the input: the write that failed in it, and (replay) an injection the core
    /// never reached.
    pub(crate) fn end(&mut self) -> (Option<StoreFailure>, Option<StoreFailure>) {
        (self.failed.take(), self.inject.take())
    }
}

/// A `LogStore` that counts its writes per input (see the module docs). Without a tap
/// it only forwards.
pub(crate) struct TappedStore<S> {
    inner: S,
    tap: Option<Arc<Mutex<StoreTap>>>,
}

impl<S: LogStore> TappedStore<S> {
    pub(crate) fn new(inner: S, tap: Option<Arc<Mutex<StoreTap>>>) -> Self {
        TappedStore { inner, tap }
    }

    fn write(
        &mut self,
        op: WriteOp,
        f: impl FnOnce(&mut S) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let Some(tap) = &self.tap else {
            return f(&mut self.inner);
        };
        let call = {
            let mut tap = tap.lock();
            let call = tap.calls;
            tap.calls += 1;
            if let Some(failure) = tap.inject.take_if(|f| f.call == call) {
                let error = StorageError::Engine {
                    op: failure.op.name(),
                    detail: failure.detail.clone(),
                };
                // A different write at this position is a divergence: noted as failed
                // with this op, which the replay compares with the recording.
                tap.failed = Some(StoreFailure { op, ..failure });
                return Err(error);
            }
            call
        };
        let result = f(&mut self.inner);
        if let Err(e) = &result {
            tap.lock().failed.get_or_insert(StoreFailure {
                call,
                op,
                detail: e.to_string(),
            });
        }
        result
    }
}

impl<S: LogStore> Storage for TappedStore<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.inner.snapshot(request_index, to)
    }
}

impl<S: LogStore> LogStore for TappedStore<S> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(WriteOp::Append, |s| s.append(entries))
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.write(WriteOp::SetHardState, |s| s.set_hard_state(hard_state))
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.write(WriteOp::SetConfState, |s| s.set_conf_state(conf_state))
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.write(WriteOp::ApplySnapshot, |s| s.apply_snapshot(snapshot))
    }

    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.write(WriteOp::StoreSnapshot, |s| s.store_snapshot(snapshot))
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        self.write(WriteOp::Compact, |s| s.compact(compact_index))
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.write(WriteOp::Sync, |s| s.sync())
    }
}
