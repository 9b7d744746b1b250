//! The built-in workload: a small key-value store with put, get, delete and
//! compare-and-set, its state machine and its sequential model.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{ClientOp, ReadMode, SimRng, Workload};
use crate::digest::fnv1a;
use crate::error::StateMachineError;
use crate::sessions::SessionMachine;
use crate::state_machine::StateMachine;
use crate::testing::linearizability::Model;

/// A client request to the key-value store. Keys and values are small numbers so that
/// a run touches each key often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvInput {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: u8,
        /// The value.
        value: u64,
    },
    /// Reads `key` through the given read path.
    Get {
        /// The key.
        key: u8,
        /// Linearizable (ReadIndex) or lease read.
        mode: ReadMode,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: u8,
    },
    /// Sets `key` to `new` if it currently holds `expected` (`None`: absent).
    Cas {
        /// The key.
        key: u8,
        /// The value the key must hold.
        expected: Option<u64>,
        /// The value to store.
        new: u64,
    },
}

/// What the key-value store answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOutput {
    /// A put or delete was applied.
    Done,
    /// The value a get read.
    Value(Option<u64>),
    /// Whether a compare-and-set matched and wrote.
    Swapped(bool),
}

/// The sequential specification of the key-value store, partitioned by key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    /// Only one key's value: the history is partitioned by key.
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    /// `KvInput` is plain data: equal inputs are the same request.
    fn same_input(&self, a: &KvInput, b: &KvInput) -> bool {
        a == b
    }

    fn step(&self, state: &Option<u64>, input: &KvInput) -> (Option<u64>, KvOutput) {
        match input {
            KvInput::Put { value, .. } => (Some(*value), KvOutput::Done),
            KvInput::Get { .. } => (*state, KvOutput::Value(*state)),
            KvInput::Delete { .. } => (None, KvOutput::Done),
            KvInput::Cas { expected, new, .. } => {
                if state == expected {
                    (Some(*new), KvOutput::Swapped(true))
                } else {
                    (*state, KvOutput::Swapped(false))
                }
            }
        }
    }

    fn partition(&self, input: &KvInput) -> u64 {
        match input {
            KvInput::Put { key, .. }
            | KvInput::Get { key, .. }
            | KvInput::Delete { key }
            | KvInput::Cas { key, .. } => u64::from(*key),
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }
}

/// The replicated key-value state machine the built-in workload runs.
#[derive(Debug, Clone, Default)]
pub struct KvMachine {
    map: BTreeMap<u8, u64>,
    applied: u64,
}

impl KvMachine {
    /// Returns the value of `key`.
    pub fn get(&self, key: u8) -> Option<u64> {
        self.map.get(&key).copied()
    }
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CAS: u8 = 3;

/// Encodes a write command: `[op, key, new: u64 le, has_expected, expected: u64 le]`.
fn encode(input: &KvInput) -> Option<Bytes> {
    let mut out = Vec::with_capacity(19);
    match input {
        KvInput::Put { key, value } => {
            out.extend([PUT, *key]);
            out.extend(value.to_le_bytes());
        }
        KvInput::Delete { key } => out.extend([DELETE, *key]),
        KvInput::Cas { key, expected, new } => {
            out.extend([CAS, *key]);
            out.extend(new.to_le_bytes());
            out.push(u8::from(expected.is_some()));
            out.extend(expected.unwrap_or(0).to_le_bytes());
        }
        KvInput::Get { .. } => return None,
    }
    Some(out.into())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

impl StateMachine for KvMachine {
    /// `None` for a command that does not decode (never proposed by the workload).
    type Response = Option<KvOutput>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<KvOutput> {
        self.applied = index;
        let (&op, rest) = command.split_first()?;
        let &key = rest.first()?;
        match op {
            PUT => {
                self.map.insert(key, u64_at(rest, 1)?);
                Some(KvOutput::Done)
            }
            DELETE => {
                self.map.remove(&key);
                Some(KvOutput::Done)
            }
            CAS => {
                let new = u64_at(rest, 1)?;
                let expected = match rest.get(9)? {
                    0 => None,
                    _ => Some(u64_at(rest, 10)?),
                };
                if self.map.get(&key).copied() == expected {
                    self.map.insert(key, new);
                    Some(KvOutput::Swapped(true))
                } else {
                    Some(KvOutput::Swapped(false))
                }
            }
            _ => None,
        }
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        let mut out = Vec::with_capacity(self.map.len() * 9);
        for (k, v) in &self.map {
            out.push(*k);
            out.extend(v.to_le_bytes());
        }
        Ok(out.into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        if !data.len().is_multiple_of(9) {
            return Err(StateMachineError::new(format!(
                "KV snapshot of {} bytes is not a whole number of 9-byte records",
                data.len()
            )));
        }
        self.map = data
            .chunks_exact(9)
            .map(|c| (c[0], u64_at(c, 1).expect("9-byte chunk")))
            .collect();
        self.applied = index;
        Ok(())
    }

    /// FNV-1a of the map, for the checkpoints' divergence check
    /// ([`crate::Config::checkpoint_every`]).
    fn digest(&self) -> Option<u64> {
        let mut h = crate::digest::FNV_START;
        for (k, v) in &self.map {
            h = fnv1a(fnv1a(h, &[*k]), &v.to_le_bytes());
        }
        Some(h)
    }
}

/// Responses in the session table: `[0]` for `None`, `[1, 0]` done, `[2, has, value]`
/// a read value, `[3, swapped]`.
impl SessionMachine for KvMachine {
    fn encode_response(response: &Option<KvOutput>) -> Vec<u8> {
        match response {
            None => vec![0],
            Some(KvOutput::Done) => vec![1],
            Some(KvOutput::Value(v)) => {
                let mut out = vec![2, u8::from(v.is_some())];
                out.extend(v.unwrap_or(0).to_le_bytes());
                out
            }
            Some(KvOutput::Swapped(b)) => vec![3, u8::from(*b)],
        }
    }

    fn decode_response(bytes: &[u8]) -> Result<Option<KvOutput>, StateMachineError> {
        let bad = || StateMachineError::new(format!("bad KV response {bytes:?}"));
        Ok(match bytes {
            [0] => None,
            [1] => Some(KvOutput::Done),
            [2, 0, ..] => Some(KvOutput::Value(None)),
            [2, 1, rest @ ..] => Some(KvOutput::Value(Some(u64_at(rest, 0).ok_or_else(bad)?))),
            [3, b] => Some(KvOutput::Swapped(*b != 0)),
            _ => return Err(bad()),
        })
    }
}

/// The built-in workload: put, get (linearizable and lease), delete and compare-and-set
/// on `keys` keys.
#[derive(Debug, Clone)]
pub struct KvWorkload {
    /// How many distinct keys clients use (at least 1).
    pub keys: u8,
    /// Whether clients also issue lease reads (needs `SimConfig::lease_reads`).
    pub lease_reads: bool,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload {
            keys: 4,
            lease_reads: false,
        }
    }
}

impl Workload for KvWorkload {
    type Machine = KvMachine;
    type Model = KvModel;

    fn model(&self) -> KvModel {
        KvModel
    }

    fn new_machine(&self) -> KvMachine {
        KvMachine::default()
    }

    fn next_op(&self, rng: &mut SimRng) -> ClientOp<KvInput> {
        let key = rng.below(u64::from(self.keys.max(1))) as u8;
        // A small value space makes compare-and-set succeed often enough to matter.
        let value = rng.below(32);
        let input = match rng.below(10) {
            0..=2 => KvInput::Put { key, value },
            3..=5 => {
                let mode = if self.lease_reads && rng.below(2) == 0 {
                    ReadMode::Lease
                } else {
                    ReadMode::Linearizable
                };
                return ClientOp::Read(KvInput::Get { key, mode }, mode);
            }
            6 => KvInput::Delete { key },
            _ => {
                // Expect a recent value often enough that some swaps succeed.
                let expected = match rng.below(4) {
                    0 => None,
                    _ => Some(rng.below(32)),
                };
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        let command = encode(&input).expect("writes encode");
        ClientOp::Write(input, command)
    }

    fn write_output(&self, _input: &KvInput, response: Option<KvOutput>) -> KvOutput {
        // The workload only proposes commands that decode; `None` would fail the check.
        response.unwrap_or(KvOutput::Value(None))
    }

    fn read_output(&self, machine: &KvMachine, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Get { key, .. } => KvOutput::Value(machine.get(*key)),
            _ => KvOutput::Done,
        }
    }

    fn final_reads(&self) -> Vec<KvInput> {
        (0..self.keys.max(1))
            .map(|key| KvInput::Get {
                key,
                mode: ReadMode::Linearizable,
            })
            .collect()
    }
}
