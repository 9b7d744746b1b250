//! [`History`]: the record of what clients asked and what they were told.

/// One client operation: when it was invoked, what it asked, and what came back.
///
/// `invoke` and `ret` are positions in one total order of client events (the simulator
/// is single-threaded, so every event has a place in it). An operation whose `output`
/// is `None` has an unknown outcome (a timeout, a lost leadership, a crash): it may have
/// taken effect at any point after `invoke`, or never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued it.
    pub client: u64,
    /// What the client asked.
    pub input: I,
    /// What the client was told; `None` when the outcome is unknown.
    pub output: Option<O>,
    /// Position of the invocation in the event order.
    pub invoke: u64,
    /// Position of the response in the event order; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// Virtual time (simulator step) of the invocation, for traces.
    pub invoke_step: u64,
    /// Virtual time of the response, for traces.
    pub return_step: Option<u64>,
}

/// Identifies an operation recorded in a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// Records client operations in the order they happen.
///
/// Operations that certainly had no effect (the node refused them before proposing)
/// are removed with [`History::discard`]; the others end with [`History::complete`] or
/// [`History::fail_unknown`]. An operation left open is treated as unknown.
///
/// # Examples
///
/// ```
/// use raftnode::testing::sim::History;
///
/// let mut h: History<&str, u64> = History::new();
/// let op = h.invoke(1, "get x", 0);
/// h.complete(op, 7, 3);
/// assert_eq!(h.operations()[0].output, Some(7));
/// ```
#[derive(Debug, Clone)]
pub struct History<I, O> {
    ops: Vec<Option<Operation<I, O>>>,
    clock: u64,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History {
            ops: Vec::new(),
            clock: 0,
        }
    }
}

impl<I, O> History<I, O> {
    /// Creates an empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records that `client` invoked `input` at virtual time `step`.
    pub fn invoke(&mut self, client: u64, input: I, step: u64) -> OpId {
        let invoke = self.tick();
        self.ops.push(Some(Operation {
            client,
            input,
            output: None,
            invoke,
            ret: None,
            invoke_step: step,
            return_step: None,
        }));
        OpId(self.ops.len() - 1)
    }

    /// Records the response to `op`. Returns false (and records nothing) when `op` was
    /// already closed or discarded.
    pub fn complete(&mut self, op: OpId, output: O, step: u64) -> bool {
        let ret = self.tick();
        match self.ops.get_mut(op.0) {
            Some(Some(o)) if o.ret.is_none() && o.return_step.is_none() => {
                o.output = Some(output);
                o.ret = Some(ret);
                o.return_step = Some(step);
                true
            }
            _ => false,
        }
    }

    /// Records that the outcome of `op` is unknown. Returns false when it was already
    /// closed or discarded.
    pub fn fail_unknown(&mut self, op: OpId, step: u64) -> bool {
        match self.ops.get_mut(op.0) {
            Some(Some(o)) if o.ret.is_none() && o.return_step.is_none() => {
                o.return_step = Some(step);
                true
            }
            _ => false,
        }
    }

    /// Removes `op`: it certainly had no effect (refused before it was proposed, or its
    /// log entry was overwritten).
    pub fn discard(&mut self, op: OpId) {
        if let Some(slot) = self.ops.get_mut(op.0) {
            if slot.as_ref().is_some_and(|o| o.ret.is_none()) {
                *slot = None;
            }
        }
    }

    /// Returns the input of `op` if it is recorded and still open.
    pub fn open_input(&self, op: OpId) -> Option<&I> {
        match self.ops.get(op.0) {
            Some(Some(o)) if o.ret.is_none() && o.return_step.is_none() => Some(&o.input),
            _ => None,
        }
    }

    /// Returns every recorded (not discarded) operation, in invocation order.
    pub fn operations(&self) -> Vec<&Operation<I, O>> {
        self.ops.iter().flatten().collect()
    }

    /// Moves the recorded operations out, in invocation order.
    pub fn into_operations(self) -> Vec<Operation<I, O>> {
        self.ops.into_iter().flatten().collect()
    }

    /// How many operations are recorded (discarded ones excluded).
    pub fn len(&self) -> usize {
        self.ops.iter().flatten().count()
    }

    /// Returns true when no operation is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
