//! A linearizability checker: Wing & Gong's search with Lowe's memoization (the
//! algorithm behind porcupine), over a user-supplied sequential [`Model`].
//!
//! The history is split into independent partitions ([`Model::partition`], one per key
//! for a key-value store), each checked on its own: a search over `n` operations costs
//! up to `2^n` states, so small partitions are what make long histories checkable.
//!
//! Operations with an unknown outcome (`output: None`) may take effect at any point
//! after their invocation or never; the checker treats their response as arriving after
//! every other event, which covers both (an effect placed last is observed by nobody).
//!
//! # Examples
//!
//! ```
//! use raftnode::testing::linearizability::{check, Model};
//! use raftnode::testing::sim::Operation;
//!
//! /// A single register.
//! struct Register;
//!
//! #[derive(Debug, Clone)]
//! enum Op { Write(u64), Read }
//!
//! impl Model for Register {
//!     type State = u64;
//!     type Input = Op;
//!     type Output = u64;
//!     fn init(&self) -> u64 { 0 }
//!     fn step(&self, state: &u64, input: &Op) -> (u64, u64) {
//!         match input { Op::Write(v) => (*v, *v), Op::Read => (*state, *state) }
//!     }
//! }
//!
//! let op = |input, output, invoke, ret| Operation {
//!     client: 0, input, output: Some(output), invoke, ret: Some(ret),
//!     invoke_step: invoke, return_step: Some(ret),
//! };
//! // The read overlaps the write: it may see either value.
//! let ok = vec![op(Op::Write(1), 1, 1, 4), op(Op::Read, 0, 2, 3)];
//! assert!(check(&Register, &ok, 100_000).is_ok());
//! // The read starts after the write returned: it must see 1.
//! let stale = vec![op(Op::Write(1), 1, 1, 2), op(Op::Read, 0, 3, 4)];
//! assert!(check(&Register, &stale, 100_000).is_err());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;

use crate::testing::sim::Operation;

/// A sequential specification: the object's behaviour when operations run one at a time.
///
/// The model must be deterministic: `step` gives the one next state and the one output.
/// A checker comparing against a nondeterministic spec is out of scope.
pub trait Model {
    /// The object's state. Hashed to memoize the search.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// What a client asks.
    type Input: fmt::Debug;
    /// What a client is told.
    type Output: PartialEq + fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Runs `input` on `state` and returns the next state and the output it gives.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Operations in different partitions never affect each other (different keys):
    /// each partition is checked on its own. The default puts everything in one.
    fn partition(&self, input: &Self::Input) -> u64 {
        let _ = input;
        0
    }

    /// Whether `input` never changes the state, whatever the state (a read). Such an
    /// operation with an unknown outcome cannot constrain the history, so the checker
    /// leaves it out: each one left in may be linearized at any point after its call,
    /// which multiplies the search. The default, `false`, is always sound.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }
}

/// Why a history was not shown linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckError {
    /// No order of the operations of `partition` fits both real time and the model.
    NotLinearizable {
        /// The partition (see [`Model::partition`]) that failed.
        partition: u64,
        /// The partition's operations, one per line, for the failure report.
        operations: Vec<String>,
    },
    /// The search visited more than the budget of states without an answer.
    BudgetExhausted {
        /// The partition being checked.
        partition: u64,
        /// Its number of operations.
        operations: usize,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable {
                partition,
                operations,
            } => {
                writeln!(
                    f,
                    "history is not linearizable (partition {partition}, {} operations):",
                    operations.len()
                )?;
                for line in operations {
                    writeln!(f, "  {line}")?;
                }
                Ok(())
            }
            CheckError::BudgetExhausted {
                partition,
                operations,
            } => write!(
                f,
                "linearizability search gave up on partition {partition} ({operations} operations): \
                 raise the budget or shorten the history"
            ),
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks that `history` is linearizable with respect to `model`.
///
/// `budget` bounds the number of search states visited per partition.
///
/// # Errors
///
/// [`CheckError::NotLinearizable`] with the offending partition's operations, or
/// [`CheckError::BudgetExhausted`] when the search hit `budget`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<(), CheckError> {
    type Part<'h, M> = Vec<&'h Operation<<M as Model>::Input, <M as Model>::Output>>;
    let mut partitions: BTreeMap<u64, Part<'_, M>> = BTreeMap::new();
    for op in history {
        if op.output.is_none() && model.is_read_only(&op.input) {
            continue;
        }
        partitions
            .entry(model.partition(&op.input))
            .or_default()
            .push(op);
    }
    for (partition, ops) in partitions {
        match search(model, &ops, budget) {
            Search::Linearizable => {}
            Search::Violation => {
                return Err(CheckError::NotLinearizable {
                    partition,
                    operations: ops.iter().map(|o| describe(o)).collect(),
                })
            }
            Search::GaveUp => {
                return Err(CheckError::BudgetExhausted {
                    partition,
                    operations: ops.len(),
                })
            }
        }
    }
    Ok(())
}

fn describe<I: fmt::Debug, O: fmt::Debug>(op: &Operation<I, O>) -> String {
    match (&op.output, op.return_step) {
        (Some(out), Some(at)) => format!(
            "client {} step {}..{}: {:?} -> {:?}",
            op.client, op.invoke_step, at, op.input, out
        ),
        _ => format!(
            "client {} step {}..?: {:?} -> unknown",
            op.client, op.invoke_step, op.input
        ),
    }
}

enum Search {
    Linearizable,
    Violation,
    GaveUp,
}

/// A fixed-size bitset of linearized operations, hashable for the memo.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing & Gong's search over a doubly linked list of call and return events; Lowe's
/// memo of (linearized set, state) prunes states already explored.
fn search<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], budget: u64) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Linearizable;
    }
    // Events: 2k is the call of op k, 2k+1 its return. Unknown returns go last.
    let mut events: Vec<(u64, usize)> = Vec::with_capacity(2 * n);
    for (k, op) in ops.iter().enumerate() {
        events.push((op.invoke, 2 * k));
        let ret = match (&op.output, op.ret) {
            (Some(_), Some(ret)) => ret,
            _ => u64::MAX,
        };
        events.push((ret, 2 * k + 1));
    }
    // Ties (only among unknown returns) break by event id: deterministic.
    events.sort_unstable();
    // Linked list over positions 1..=2n; 0 is the head sentinel.
    let len = 2 * n + 1;
    let mut next = vec![usize::MAX; len];
    let mut prev = vec![0usize; len];
    let mut event_at = vec![0usize; len];
    let mut pos_of = vec![0usize; 2 * n];
    for (p, (_, e)) in events.iter().enumerate() {
        event_at[p + 1] = *e;
        pos_of[*e] = p + 1;
    }
    for p in 0..len {
        next[p] = if p + 1 < len { p + 1 } else { usize::MAX };
        prev[p] = p.saturating_sub(1);
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = b;
        if b != usize::MAX {
            prev[b] = a;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = p;
        if b != usize::MAX {
            prev[b] = p;
        }
    };

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut memo: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut visited = 0u64;
    let mut cursor = next[0];
    loop {
        if next[0] == usize::MAX {
            return Search::Linearizable;
        }
        visited += 1;
        if visited > budget {
            return Search::GaveUp;
        }
        if cursor == usize::MAX {
            // Cannot happen: the last event is always a return.
            return Search::Violation;
        }
        let event = event_at[cursor];
        if event % 2 == 0 {
            let k = event / 2;
            let op = ops[k];
            let (new_state, output) = model.step(&state, &op.input);
            let fits = op.output.as_ref().is_none_or(|o| *o == output);
            if fits {
                let mut bits = linearized.clone();
                bits.set(k);
                if memo.insert((bits.clone(), new_state.clone())) {
                    // Lift the call and its return out of the list.
                    let ret_pos = pos_of[2 * k + 1];
                    unlink(&mut next, &mut prev, cursor);
                    unlink(&mut next, &mut prev, ret_pos);
                    stack.push((k, std::mem::replace(&mut state, new_state)));
                    linearized = bits;
                    cursor = next[0];
                    continue;
                }
            }
            cursor = next[cursor];
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((k, old_state)) = stack.pop() else {
                return Search::Violation;
            };
            state = old_state;
            linearized.clear(k);
            let call_pos = pos_of[2 * k];
            relink(&mut next, &mut prev, pos_of[2 * k + 1]);
            relink(&mut next, &mut prev, call_pos);
            cursor = next[call_pos];
        }
    }
}
