//! What the benchmarks share: the trivial state machine they all replicate.

use bytes::Bytes;
use raftnode::{StateMachine, StateMachineError};

/// Counts applied commands and answers with the index; keeps nothing on disk (a
/// durable benchmark measures the log, which is the redo log, docs/durability.md).
#[derive(Default)]
pub struct Counter {
    pub commands: u64,
    pub applied: u64,
}

impl StateMachine for Counter {
    type Response = u64;

    fn apply(&mut self, index: u64, _command: &[u8]) -> u64 {
        self.commands += 1;
        self.applied = index;
        index
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::copy_from_slice(&self.commands.to_le_bytes()))
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let raw: [u8; 8] = data.try_into().map_err(StateMachineError::new)?;
        self.commands = u64::from_le_bytes(raw);
        self.applied = index;
        Ok(())
    }
}
