//! Pending proposals: one waiter per `(index, term)`, resolved when that index is applied.
//!
//! A [`ProposalHandle`] and its [`Completer`] share one slot. The driver keeps the
//! completers in log order; applying index `i` resolves the waiter at `i` with the state
//! machine's response if the applied entry has the waiter's term, and with `Dropped` if
//! it has another term (a new leader overwrote it). A completer dropped unresolved (the
//! driver stopped or panicked) resolves its handle with `Stopped`, so no caller hangs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{MembershipError, ProposeError, ReadError};

/// An error type that has a "the node stopped" value, for completers dropped unresolved.
pub(crate) trait StoppedError {
    fn stopped() -> Self;
    fn timeout() -> Self;
}

impl StoppedError for ProposeError {
    fn stopped() -> Self {
        ProposeError::Stopped
    }
    fn timeout() -> Self {
        ProposeError::Timeout
    }
}

impl StoppedError for ReadError {
    fn stopped() -> Self {
        ReadError::Stopped
    }
    fn timeout() -> Self {
        ReadError::Timeout
    }
}

impl StoppedError for crate::error::NodeError {
    fn stopped() -> Self {
        crate::error::NodeError::Stopped
    }
    fn timeout() -> Self {
        crate::error::NodeError::Timeout
    }
}

impl StoppedError for MembershipError {
    fn stopped() -> Self {
        MembershipError::Stopped
    }
    fn timeout() -> Self {
        MembershipError::Timeout
    }
}

enum State<T> {
    Pending(Option<Waker>),
    Done(T),
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// Creates a connected handle/completer pair.
pub(crate) fn slot<T, E: StoppedError>() -> (Handle<T, E>, Completer<T, E>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Pending(None)),
        ready: Condvar::new(),
    });
    (
        Handle { slot: slot.clone() },
        Completer { slot: Some(slot) },
    )
}

/// The resolving side of a slot, held by the driver.
pub(crate) struct Completer<T, E: StoppedError> {
    slot: Option<Arc<Slot<Result<T, E>>>>,
}

impl<T, E: StoppedError> Completer<T, E> {
    /// Resolves the handle. Later calls and the drop do nothing.
    pub(crate) fn complete(mut self, value: Result<T, E>) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, value);
        }
    }
}

impl<T, E: StoppedError> Drop for Completer<T, E> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, Err(E::stopped()));
        }
    }
}

fn fill<T>(slot: &Slot<T>, value: T) {
    let waker = {
        let mut state = slot.state.lock();
        match std::mem::replace(&mut *state, State::Done(value)) {
            State::Pending(waker) => waker,
            // Already resolved: keep the first outcome.
            other => {
                *state = other;
                return;
            }
        }
    };
    slot.ready.notify_all();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The waiting side of a slot.
pub(crate) struct Handle<T, E: StoppedError> {
    slot: Arc<Slot<Result<T, E>>>,
}

impl<T, E: StoppedError> Handle<T, E> {
    pub(crate) fn wait_deadline(&self, deadline: Option<Instant>) -> Result<T, E> {
        let mut state = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(value) => return value,
                State::Taken => return Err(E::stopped()),
                pending @ State::Pending(_) => {
                    *state = pending;
                    match deadline {
                        None => self.slot.ready.wait(&mut state),
                        Some(d) => {
                            if self.slot.ready.wait_until(&mut state, d).timed_out() {
                                if let State::Done(_) = &*state {
                                    continue;
                                }
                                return Err(E::timeout());
                            }
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn try_take(&self) -> Option<Result<T, E>> {
        let mut state = self.slot.state.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(value) => Some(value),
            State::Taken => Some(Err(E::stopped())),
            pending => {
                *state = pending;
                None
            }
        }
    }

    fn poll_slot(&self, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut state = self.slot.state.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(value) => Poll::Ready(value),
            State::Taken => Poll::Ready(Err(E::stopped())),
            State::Pending(old) => {
                let waker = match old {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Pending(Some(waker));
                Poll::Pending
            }
        }
    }
}

/// Where a write landed: the index and term of its log entry. Returned with a proposal's
/// outcome ([`ProposalHandle::wait_applied`]); pass it to a read on any replica with
/// [`ReadConsistency::AtLeast`](crate::ReadConsistency::AtLeast) to see that write
/// there (read-your-writes) without a quorum round. Ordered by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteToken {
    index: u64,
    term: u64,
}

impl WriteToken {
    /// The token of the entry at `index` of `term`.
    pub fn new(index: u64, term: u64) -> Self {
        WriteToken { index, term }
    }

    /// The log index the write was applied at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The term of the write's log entry.
    pub fn term(&self) -> u64 {
        self.term
    }
}

/// The outcome of a proposal: block on it, poll it, or `.await` it.
///
/// Resolves once the command is applied on the node it was proposed to, with the state
/// machine's response, or with a [`ProposeError`] saying what happened. Dropping the
/// handle does not cancel the proposal.
///
/// # Examples
///
/// ```
/// # use std::time::Duration;
/// # fn demo<M: raftnode::StateMachine>(node: &raftnode::Node<M>) -> Result<(), raftnode::ProposeError> {
/// // Block for the outcome:
/// let response = node.propose(b"set x 1".to_vec())?.wait_timeout(Duration::from_secs(5))?;
/// // Or await it from async code: `node.propose(cmd)?.await?`
/// # let _ = response; Ok(()) }
/// ```
#[must_use = "a proposal's outcome is only known by waiting on its handle"]
pub struct ProposalHandle<R> {
    inner: Handle<(R, WriteToken), ProposeError>,
}

impl<R> ProposalHandle<R> {
    pub(crate) fn new(inner: Handle<(R, WriteToken), ProposeError>) -> Self {
        ProposalHandle { inner }
    }

    /// Blocks until the proposal is applied here or fails.
    ///
    /// # Errors
    ///
    /// Any [`ProposeError`] but `Timeout`, `Busy`, `TooLarge` and `Empty`.
    pub fn wait(self) -> Result<R, ProposeError> {
        self.wait_applied().map(|(r, _)| r)
    }

    /// As [`wait`](Self::wait), with the [`WriteToken`] of where the command was
    /// applied, for read-your-writes on any replica.
    ///
    /// # Errors
    ///
    /// As [`ProposalHandle::wait`].
    pub fn wait_applied(self) -> Result<(R, WriteToken), ProposeError> {
        self.inner.wait_deadline(None)
    }

    /// As [`wait_timeout`](Self::wait_timeout), with the [`WriteToken`].
    ///
    /// # Errors
    ///
    /// As [`ProposalHandle::wait_timeout`].
    pub fn wait_applied_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<(R, WriteToken), ProposeError> {
        self.inner.wait_deadline(Some(Instant::now() + timeout))
    }

    /// Blocks for at most `timeout`. After a `Timeout` the handle still waits for the
    /// outcome: call it again (or [`wait`](Self::wait), or `.await` it).
    ///
    /// # Errors
    ///
    /// [`ProposeError::Timeout`] when the outcome is still unknown after `timeout` (the
    /// proposal may still be applied), else as [`ProposalHandle::wait`]. Once it returned
    /// anything else, later calls return `Err(Stopped)`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<R, ProposeError> {
        self.wait_applied_timeout(timeout).map(|(r, _)| r)
    }

    /// Returns the outcome if it is known, without blocking. After it returned `Some`,
    /// later calls return `Some(Err(Stopped))`.
    pub fn try_take(&self) -> Option<Result<R, ProposeError>> {
        self.inner.try_take().map(|o| o.map(|(r, _)| r))
    }

    /// A future of the response with its [`WriteToken`]: what `.await` on the handle
    /// gives, plus the token, for async code that needs read-your-writes.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn demo<M: raftnode::StateMachine>(node: &raftnode::Node<M>) -> Result<(), raftnode::ProposeError> {
    /// let (response, token) = node.propose(b"set x 1".to_vec())?.applied().await?;
    /// // Any replica serves ReadConsistency::AtLeast(token) once it applied the write.
    /// # let _ = (response, token); Ok(()) }
    /// ```
    pub fn applied(self) -> Applied<R> {
        Applied { inner: self.inner }
    }
}

/// The future [`ProposalHandle::applied`] returns: the response and its
/// [`WriteToken`], or the [`ProposeError`] the handle would give.
#[must_use = "futures do nothing unless awaited"]
pub struct Applied<R> {
    inner: Handle<(R, WriteToken), ProposeError>,
}

impl<R> Future for Applied<R> {
    type Output = Result<(R, WriteToken), ProposeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_slot(cx)
    }
}

impl<R> std::fmt::Debug for Applied<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied").finish_non_exhaustive()
    }
}

impl<R> Future for ProposalHandle<R> {
    type Output = Result<R, ProposeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_slot(cx).map(|o| o.map(|(r, _)| r))
    }
}

impl<R> std::fmt::Debug for ProposalHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProposalHandle").finish_non_exhaustive()
    }
}

/// What a waiter expects at its index: a command's token `P` or a conf change's `C`
/// (the runtime's completers, the simulator's operation ids).
pub(crate) enum Waiter<P, C> {
    /// A normal command; resolved with the state machine's response.
    Command(P),
    /// A conf change; resolved with the ConfState after it, or `Rejected` when raft
    /// turned it into an empty entry (docs/ready-loop.md, "Refused conf changes").
    ConfChange(C),
}

/// What was applied at an index, for [`Pending::resolve`].
pub(crate) enum AppliedAs<'a, R> {
    Command(R),
    ConfChange(&'a raft::eraftpb::ConfState),
    /// An empty normal entry: a leader's no-op or a rejected conf change.
    Empty,
}

/// How a waiter ended.
pub(crate) enum Outcome<'a, R> {
    /// Its entry was applied: this is what was applied there.
    Applied(AppliedAs<'a, R>),
    /// Another entry took its place: it will never be applied.
    Dropped,
    /// It may or may not have been applied (leadership lost, or a snapshot covered it).
    Unknown { index: u64, term: u64 },
}

/// Waiters in log order.
pub(crate) struct Pending<P, C> {
    queue: VecDeque<(u64, u64, Waiter<P, C>)>,
}

impl<P, C> Default for Pending<P, C> {
    fn default() -> Self {
        Pending {
            queue: VecDeque::new(),
        }
    }
}

impl<P, C> Pending<P, C> {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Registers a waiter; indexes must be increasing.
    pub(crate) fn push(&mut self, index: u64, term: u64, waiter: Waiter<P, C>) {
        debug_assert!(self.queue.back().is_none_or(|(i, _, _)| *i < index));
        self.queue.push_back((index, term, waiter));
    }

    /// Returns true when some waiter is at `index` or below.
    #[inline]
    pub(crate) fn wants(&self, index: u64) -> bool {
        self.queue.front().is_some_and(|(i, _, _)| *i <= index)
    }

    /// Resolves the waiter at `index` with what was applied there in `term`, and drops
    /// any waiter below `index` (its entry can no longer be applied). `done` receives
    /// each waiter with its outcome.
    pub(crate) fn resolve<R>(
        &mut self,
        index: u64,
        term: u64,
        applied: AppliedAs<'_, R>,
        mut done: impl FnMut(Waiter<P, C>, Outcome<'_, R>),
    ) {
        while let Some((i, _, _)) = self.queue.front() {
            if *i > index {
                return;
            }
            let (i, t, waiter) = self.queue.pop_front().expect("front exists");
            if i < index {
                done(waiter, Outcome::Dropped);
                continue;
            }
            if t != term {
                done(waiter, Outcome::Dropped);
            } else {
                done(waiter, Outcome::Applied(applied));
            }
            return;
        }
    }

    /// Ends every waiter at or below `index` as unknown: a snapshot from the leader
    /// covered them, so whether their entry was the one applied there is not known.
    pub(crate) fn unknown_up_to<R>(
        &mut self,
        index: u64,
        mut done: impl FnMut(Waiter<P, C>, Outcome<'_, R>),
    ) {
        while self.queue.front().is_some_and(|(i, _, _)| *i <= index) {
            let (index, term, waiter) = self.queue.pop_front().expect("front exists");
            done(waiter, Outcome::Unknown { index, term });
        }
    }

    /// Ends every waiter as unknown: leadership was lost, so their entries may or may
    /// not commit.
    pub(crate) fn unknown_all<R>(&mut self, done: impl FnMut(Waiter<P, C>, Outcome<'_, R>)) {
        self.unknown_up_to(u64::MAX, done);
    }

    /// Takes every waiter out without resolving it (the simulator's crash).
    #[cfg(feature = "testing")]
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = Waiter<P, C>> + '_ {
        self.queue.drain(..).map(|(_, _, w)| w)
    }
}

/// The runtime's resolution of a command waiter with its outcome; `at` is the waiter's (index, term), which an applied outcome was applied at.
pub(crate) fn propose_result<R>(
    outcome: Outcome<'_, R>,
    at: (u64, u64),
) -> Result<(R, WriteToken), ProposeError> {
    match outcome {
        Outcome::Applied(AppliedAs::Command(r)) => Ok((r, WriteToken::new(at.0, at.1))),
        Outcome::Applied(_) | Outcome::Dropped => Err(ProposeError::Dropped),
        Outcome::Unknown { index, term } => Err(ProposeError::OutcomeUnknown { index, term }),
    }
}

/// The resolution of a conf-change waiter with its outcome.
pub(crate) fn conf_change_result<R>(
    outcome: Outcome<'_, R>,
) -> Result<raft::eraftpb::ConfState, MembershipError> {
    match outcome {
        Outcome::Applied(AppliedAs::ConfChange(cs)) => Ok(cs.clone()),
        Outcome::Applied(AppliedAs::Empty) => Err(MembershipError::Rejected(
            "raft refused the change (another change pending or wrong joint state)".into(),
        )),
        Outcome::Applied(AppliedAs::Command(_)) | Outcome::Dropped => Err(
            MembershipError::Rejected("the entry was overwritten by a new leader".into()),
        ),
        Outcome::Unknown { index, .. } => Err(MembershipError::OutcomeUnknown { index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_completer_resolves_stopped() {
        let (h, c) = slot::<u32, ProposeError>();
        drop(c);
        assert_eq!(h.wait_deadline(None), Err(ProposeError::Stopped));
    }

    #[test]
    fn wait_timeout_reports_timeout_then_value() {
        let (h, c) = slot::<u32, ProposeError>();
        let d = Instant::now() + Duration::from_millis(5);
        assert_eq!(h.wait_deadline(Some(d)), Err(ProposeError::Timeout));
        c.complete(Ok(7));
        assert_eq!(h.wait_deadline(None), Ok(7));
    }

    /// Proves a handle that timed out still gets the outcome: `wait_timeout` borrows it.
    #[test]
    fn a_proposal_handle_waits_again_after_a_timeout() {
        let (h, c) = slot::<(u32, WriteToken), ProposeError>();
        let mut handle = ProposalHandle::new(h);
        assert_eq!(
            handle.wait_timeout(Duration::from_millis(5)),
            Err(ProposeError::Timeout)
        );
        c.complete(Ok((7, WriteToken::new(12, 3))));
        assert_eq!(
            handle.wait_applied_timeout(Duration::from_secs(5)),
            Ok((7, WriteToken::new(12, 3)))
        );
        assert_eq!(handle.try_take(), Some(Err(ProposeError::Stopped)));
    }

    #[test]
    fn resolve_matches_index_and_term() {
        let mut p: Pending<u32, ()> = Pending::default();
        p.push(5, 2, Waiter::Command(1));
        p.push(6, 2, Waiter::Command(2));
        p.push(7, 2, Waiter::Command(3));
        let mut seen = Vec::new();
        let mut record = |w: Waiter<u32, ()>, o: Outcome<'_, u32>| {
            let Waiter::Command(id) = w else {
                unreachable!()
            };
            seen.push((id, propose_result(o, (5, 2))));
        };
        p.resolve(5, 2, AppliedAs::Command(50), &mut record);
        // Index 6 was overwritten by term 3: the waiter must never see success.
        p.resolve(6, 3, AppliedAs::Command(60), &mut record);
        p.unknown_all(&mut record);
        assert_eq!(
            seen,
            vec![
                (1, Ok((50, WriteToken::new(5, 2)))),
                (2, Err(ProposeError::Dropped)),
                (3, Err(ProposeError::OutcomeUnknown { index: 7, term: 2 })),
            ]
        );
    }

    #[test]
    fn a_snapshot_leaves_covered_waiters_unknown() {
        let mut p: Pending<u32, ()> = Pending::default();
        p.push(5, 2, Waiter::Command(1));
        p.push(9, 2, Waiter::Command(2));
        let mut seen = Vec::new();
        p.unknown_up_to(7, |w: Waiter<u32, ()>, o: Outcome<'_, u32>| {
            let Waiter::Command(id) = w else {
                unreachable!()
            };
            seen.push((id, propose_result(o, (5, 2))));
        });
        assert_eq!(
            seen,
            vec![(1, Err(ProposeError::OutcomeUnknown { index: 5, term: 2 }))]
        );
        assert_eq!(p.len(), 1);
    }
}
