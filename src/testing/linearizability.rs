//! A linearizability checker over a user-supplied sequential [`Model`]: every history is
//! decided, linearizable or not, unless it is too hard for the budget, which is reported
//! as such ([`CheckError::BudgetExhausted`]), never as a pass.
//!
//! The history is split into independent partitions ([`Model::partition`], one per key
//! for a key-value store), each checked on its own. Operations with an unknown outcome
//! (`output: None`) may take effect at any point after their invocation, or never.
//! Unknown-outcome operations that cannot change the state ([`Model::is_read_only`])
//! are left out: whether and when they took effect cannot matter.
//!
//! Each partition is checked in two steps:
//!
//! 1. **Quick search**: Wing & Gong's depth-first search with Lowe's memo of (linearized
//!    set, state), as in porcupine. It stops at the first linearization, which makes it
//!    fast on the usual passing history; but to prove that no linearization exists it
//!    may have to try every subset of the pending unknown-outcome operations. It gets a
//!    small budget, and only its "linearizable" is taken as final.
//! 2. **Exhaustive search** (Lowe's just-in-time linearization), which decides: the
//!    history is read event by event, keeping the *frontier*, every configuration (model
//!    state, which pending acknowledged operations are linearized, how many unknown ones
//!    of each kind took effect) that explains all responses so far. At each response the
//!    frontier is extended by linearizing pending and unknown operations until that
//!    operation is linearized; an empty frontier is a violation at that response. This
//!    is the history split at every response: the frontier is all that the past passes
//!    on to the future.
//!
//! The exhaustive search prunes, and each rule only leaves out a configuration that a
//! kept one *dominates*: same state and linearized set, and no more unknown operations
//! used, so every continuation of the left-out one is a continuation of the kept one.
//! Leaving out dominated configurations therefore never changes a verdict, and nothing
//! is ever added that a real linearization does not produce, so a non-linearizable
//! history cannot pass.
//!
//! - **Interchangeable unknown operations** ([`Model::same_input`]): copies of one
//!   request are counted, not told apart; any invoked copy can stand for any other.
//! - **Unknown operations that change nothing** are never applied: the configuration
//!   without it has the same state and one more operation still available.
//! - **Unknown operations overwritten unseen** are never applied: an unknown operation
//!   directly followed by an operation that gives the same output and leaves the same
//!   state whether or not it ran (a blind write after it) is left out; the same step
//!   without it is explored and dominates. So an unknown write that no later read or
//!   compare-and-set can observe never survives a step, while one that only explains
//!   why a compare-and-set failed still does.
//! - **Responses explained earlier**: a configuration that already linearized the
//!   responding operation is kept as it is, and the extension stops at the responding
//!   operation: anything linearized after it can be linearized at the next response.
//! - **Dominance and one-step reachability** in the frontier: of configurations with
//!   the same state and linearized set only those with a minimal use of unknown
//!   operations are kept, and one that a single step from another kept one reaches (or
//!   dominates) is left out, since the next extension starts from the other and can
//!   take that step again (steps only grow the linearized and used sets, so no
//!   configuration is left out in favour of itself).
//!
//! `tests/linearizability.rs` checks both searches against a brute-force search on
//! 30,000 random small histories, and has a small history for each rule that a careless
//! version of it would decide wrongly.
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

use std::collections::{BTreeMap, HashMap, HashSet};
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

    /// Whether `a` and `b` are the same request: `step` gives the same result for both
    /// from every state. The checker counts pending unknown-outcome operations with the
    /// same input as interchangeable copies instead of trying each one in turn, which
    /// is what keeps hundreds of them cheap.
    ///
    /// # Correctness
    ///
    /// Returning `true` for inputs `step` treats differently can make the checker pass
    /// a history that is not linearizable. The default, `false`, is always sound (every
    /// pending operation is tried on its own); a model whose input is `PartialEq` can
    /// return `a == b`, as the built-in KV model does.
    fn same_input(&self, a: &Self::Input, b: &Self::Input) -> bool {
        let _ = (a, b);
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
    /// The search visited more than the budget of states without an answer. Its
    /// `Display` form begins with `inconclusive: `, so that reports which keep only the
    /// text (the simulator's [`SimFailure`](crate::testing::sim::SimFailure)) can count
    /// it apart from violations.
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
                "inconclusive: linearizability search gave up on partition {partition} ({operations} operations): \
                 raise the budget or shorten the history"
            ),
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks that `history` is linearizable with respect to `model`.
///
/// `budget` bounds the number of search states each of the two searches (module docs)
/// visits per partition; the quick one stops at `min(budget, 1_000_000)`.
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
    run(model, history, budget, true)
}

/// Checks `history` with the exhaustive search alone, the one [`check`] falls back to
/// when its quick search finds no linearization. Same answers as [`check`], usually
/// slower on histories that pass; exposed so the exhaustive search can be tested on
/// its own.
///
/// # Errors
///
/// As [`check`].
pub fn check_exhaustive<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<(), CheckError> {
    run(model, history, budget, false)
}

fn run<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
    quick: bool,
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
        if quick
            && matches!(
                search_dfs(model, &ops, budget.min(QUICK_STATES)),
                Dfs::Linearizable
            )
        {
            continue;
        }
        match search(model, &ops, budget) {
            Search::Linearizable => {}
            Search::Violation(at) => {
                let mut operations: Vec<String> = ops.iter().map(|o| describe(o)).collect();
                operations[at].push_str("   <- no linearization explains this response");
                return Err(CheckError::NotLinearizable {
                    partition,
                    operations,
                });
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

/// States the quick search may visit before the exhaustive one takes over.
const QUICK_STATES: u64 = 1_000_000;

/// The quick search's answer: only a found linearization is final.
enum Dfs {
    Linearizable,
    NotShown,
}

enum Search {
    Linearizable,
    /// No linearization explains the response of this operation (its index).
    Violation(usize),
    GaveUp,
}

/// A fixed-size bitset, hashable for the memo.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// How many operations of each class of interchangeable unknown-outcome operations
/// (see [`Model::same_input`]) have taken effect; `is_within` is the dominance test.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Counts(Vec<u32>);

impl Counts {
    fn is_within(&self, other: &Counts) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a <= b)
    }
}

/// One way the operations seen so far can have been linearized.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Config<S> {
    /// The model's state after them.
    state: S,
    /// Which pending operations with a known response are linearized (by slot).
    linearized: Bits,
    /// How many unknown-outcome operations of each class have taken effect.
    used: Counts,
}

/// A configuration to extend, with the state before it when an unknown operation led
/// to it (for the rule on overwritten unknown operations).
type Node<S> = (Config<S>, Option<S>);

/// An operation of the partition as the search sees it.
enum Event {
    Call(usize),
    Return(usize),
}

/// What stays fixed while one response is explained: the operations that can be
/// linearized now, and the memo.
struct Frame<'a, 'h, M: Model> {
    model: &'a M,
    ops: &'a [&'h Operation<M::Input, M::Output>],
    /// Slot -> pending operation with a known response.
    pending: &'a [Option<usize>],
    /// Classes of unknown-outcome operations invoked so far: (one of them, class).
    available: &'a [(usize, usize)],
    /// How many of each class have been invoked.
    invoked: &'a [u32],
    visited: &'a mut u64,
    budget: u64,
}

/// Decides one partition, event by event (Lowe's just-in-time linearization): the
/// frontier holds every configuration whose linearization ends with the response just
/// seen, up to dominance, and each response must extend one of them. See the module
/// docs for why each pruning keeps the verdict exact.
fn search<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], budget: u64) -> Search {
    let known = |op: &Operation<M::Input, M::Output>| op.output.is_some() && op.ret.is_some();
    // Calls before returns at equal positions (History never produces ties): touching
    // intervals count as concurrent.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
    let mut unknown_bit = vec![usize::MAX; ops.len()];
    let mut unknowns = 0;
    let mut class_of = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, k));
        match op.ret {
            Some(ret) if known(op) => events.push((ret, 1, k)),
            _ => {
                unknown_bit[k] = match class_of
                    .iter()
                    .find(|&&(j, _)| same_unknown(model, ops[j], op))
                {
                    Some(&(_, class)) => class,
                    None => {
                        class_of.push((k, unknowns));
                        unknowns += 1;
                        unknowns - 1
                    }
                };
            }
        }
    }
    events.sort_unstable();
    let events: Vec<Event> = events
        .into_iter()
        .map(|(_, kind, k)| {
            if kind == 0 {
                Event::Call(k)
            } else {
                Event::Return(k)
            }
        })
        .collect();
    // At most this many operations with a known response are pending at once.
    let mut slots = 0usize;
    let mut open = 0usize;
    for e in &events {
        match *e {
            Event::Call(k) if unknown_bit[k] == usize::MAX => {
                open += 1;
                slots = slots.max(open);
            }
            Event::Return(_) => open -= 1,
            Event::Call(_) => {}
        }
    }

    let mut pending: Vec<Option<usize>> = vec![None; slots];
    let mut slot_of = vec![usize::MAX; ops.len()];
    let mut available: Vec<(usize, usize)> = Vec::new();
    let mut invoked = vec![0u32; unknowns];
    let mut frontier = vec![Config {
        state: model.init(),
        linearized: Bits::new(slots),
        used: Counts(vec![0; unknowns]),
    }];
    let mut visited = 0u64;
    for e in events {
        match e {
            Event::Call(k) if unknown_bit[k] != usize::MAX => {
                let class = unknown_bit[k];
                if invoked[class] == 0 {
                    available.push((k, class));
                }
                invoked[class] += 1;
            }
            Event::Call(k) => {
                let slot = pending
                    .iter()
                    .position(Option::is_none)
                    .expect("slots counted");
                pending[slot] = Some(k);
                slot_of[k] = slot;
            }
            Event::Return(k) => {
                let slot = slot_of[k];
                let mut frame = Frame {
                    model,
                    ops,
                    pending: &pending,
                    available: &available,
                    invoked: &invoked,
                    visited: &mut visited,
                    budget,
                };
                let Some(mut next) = frame.explain(frontier, slot) else {
                    return Search::GaveUp;
                };
                if next.is_empty() {
                    return Search::Violation(k);
                }
                for c in &mut next {
                    c.linearized.clear(slot);
                }
                pending[slot] = None;
                frontier = next;
            }
        }
    }
    Search::Linearizable
}

impl<M: Model> Frame<'_, '_, M> {
    /// Every configuration reachable from `frontier` whose last linearized operation is
    /// the one in `slot`, with dominated ones left out; `None` when over budget.
    fn explain(
        &mut self,
        frontier: Vec<Config<M::State>>,
        slot: usize,
    ) -> Option<Vec<Config<M::State>>> {
        // Configurations that linearized this operation earlier already explain it.
        let (found, rest): (Vec<_>, Vec<_>) =
            frontier.into_iter().partition(|c| c.linearized.get(slot));
        let mut found: HashSet<Config<M::State>> = found.into_iter().collect();
        let mut memo: HashSet<Config<M::State>> = rest.iter().cloned().collect();
        // Each node carries the state before it when an unknown operation led to it.
        let mut stack: Vec<Node<M::State>> = rest.into_iter().map(|c| (c, None)).collect();
        while let Some((config, before)) = stack.pop() {
            *self.visited += 1;
            if *self.visited > self.budget {
                return None;
            }
            for (s, k) in self.pending.iter().enumerate() {
                let Some(k) = *k else { continue };
                if config.linearized.get(s) {
                    continue;
                }
                let input = &self.ops[k].input;
                let (state, output) = self.model.step(&config.state, input);
                if self.ops[k].output.as_ref() != Some(&output) {
                    continue;
                }
                // Rule 3: the unknown operation just applied changed nothing this one
                // sees or leaves behind.
                if let Some(b) = &before {
                    let (s2, o2) = self.model.step(b, input);
                    if s2 == state && o2 == output {
                        continue;
                    }
                }
                let mut child = Config {
                    state,
                    linearized: config.linearized.clone(),
                    used: config.used.clone(),
                };
                child.linearized.set(s);
                if s == slot {
                    found.insert(child);
                } else if memo.insert(child.clone()) {
                    stack.push((child, None));
                }
            }
            for &(k, class) in self.available {
                if config.used.0[class] == self.invoked[class] {
                    continue;
                }
                let op = self.ops[k];
                let (state, output) = self.model.step(&config.state, &op.input);
                // Rule 2: an unknown operation that changes nothing need not happen.
                if state == config.state || op.output.as_ref().is_some_and(|o| *o != output) {
                    continue;
                }
                // Rule 3: nor one whose effect the next unknown one overwrites.
                if let Some(b) = &before {
                    let (s2, o2) = self.model.step(b, &op.input);
                    if s2 == state && op.output.as_ref().is_none_or(|o| *o == o2) {
                        continue;
                    }
                }
                let mut child = Config {
                    state,
                    linearized: config.linearized.clone(),
                    used: config.used.clone(),
                };
                child.used.0[class] += 1;
                if memo.insert(child.clone()) {
                    stack.push((child, Some(config.state.clone())));
                }
            }
        }
        Some(self.unreachable(undominated(found)))
    }
}

impl<M: Model> Frame<'_, '_, M> {
    /// Leaves out every configuration that one step (one more pending or unknown
    /// operation) from another one reaches or dominates: the next search starts from
    /// the other one and takes that step again if it is needed. Every configuration
    /// left out is reached again from a kept one: each step grows the linearized or the
    /// used set, so there are no cycles.
    fn unreachable(&mut self, configs: Vec<Config<M::State>>) -> Vec<Config<M::State>> {
        let mut index: HashMap<(M::State, Bits), Vec<usize>> = HashMap::new();
        for (i, c) in configs.iter().enumerate() {
            index
                .entry((c.state.clone(), c.linearized.clone()))
                .or_default()
                .push(i);
        }
        let mut drop = vec![false; configs.len()];
        let covers = |key: (M::State, Bits), used: &Counts, drop: &mut Vec<bool>| {
            for &j in index.get(&key).into_iter().flatten() {
                if used.is_within(&configs[j].used) {
                    drop[j] = true;
                }
            }
        };
        for a in &configs {
            for (s, k) in self.pending.iter().enumerate() {
                let Some(k) = *k else { continue };
                if a.linearized.get(s) {
                    continue;
                }
                let (state, output) = self.model.step(&a.state, &self.ops[k].input);
                if self.ops[k].output.as_ref() == Some(&output) {
                    let mut linearized = a.linearized.clone();
                    linearized.set(s);
                    covers((state, linearized), &a.used, &mut drop);
                }
            }
            for &(k, class) in self.available {
                if a.used.0[class] == self.invoked[class] {
                    continue;
                }
                let op = self.ops[k];
                let (state, output) = self.model.step(&a.state, &op.input);
                if state != a.state && op.output.as_ref().is_none_or(|o| *o == output) {
                    let mut used = a.used.clone();
                    used.0[class] += 1;
                    covers((state, a.linearized.clone()), &used, &mut drop);
                }
            }
        }
        configs
            .into_iter()
            .zip(drop)
            .filter_map(|(c, d)| (!d).then_some(c))
            .collect()
    }
}

/// Whether two unknown-outcome operations are interchangeable: the same input and the
/// same required output, if any.
fn same_unknown<M: Model>(
    model: &M,
    a: &Operation<M::Input, M::Output>,
    b: &Operation<M::Input, M::Output>,
) -> bool {
    a.output == b.output && model.same_input(&a.input, &b.input)
}

/// Leaves out every configuration another one dominates: same state and linearized
/// set, and a subset of its unknown operations used (so everything that can follow the
/// dominated one can follow the other).
fn undominated<S: Clone + Eq + Hash>(found: HashSet<Config<S>>) -> Vec<Config<S>> {
    let mut groups: HashMap<(S, Bits), Vec<Counts>> = HashMap::new();
    for c in found {
        groups
            .entry((c.state, c.linearized))
            .or_default()
            .push(c.used);
    }
    let mut out = Vec::new();
    for ((state, linearized), mut used) in groups {
        // Fewer used first: a set can only be dominated by one no larger.
        used.sort_by_key(|u| u.0.iter().sum::<u32>());
        let mut kept: Vec<Counts> = Vec::new();
        for u in used {
            if !kept.iter().any(|k| k.is_within(&u)) {
                kept.push(u);
            }
        }
        out.extend(kept.into_iter().map(|used| Config {
            state: state.clone(),
            linearized: linearized.clone(),
            used,
        }));
    }
    out
}

/// Wing & Gong's search over a doubly linked list of call and return events; Lowe's
/// memo of (linearized set, state) prunes states already explored. It stops at the
/// first linearization, so it is quick on the usual passing history, but unknown
/// outcomes can make it try every subset of them: past its budget, [`search`] decides.
fn search_dfs<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], budget: u64) -> Dfs {
    let n = ops.len();
    if n == 0 {
        return Dfs::Linearizable;
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
            return Dfs::Linearizable;
        }
        visited += 1;
        if visited > budget {
            return Dfs::NotShown;
        }
        if cursor == usize::MAX {
            // Cannot happen: the last event is always a return.
            return Dfs::NotShown;
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
                return Dfs::NotShown;
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
