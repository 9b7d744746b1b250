//! The driver thread: a thin loop around the per-group core. It waits for input or the
//! next tick, hands what is queued (bounded) to the [`Replica`], ticks it on time, and
//! lets it handle every Ready. Every decision is the replica's; this file owns only the
//! queue, the wall clock and the transport. With `Config::record` it also hands every
//! call it makes into the replica, and what the replica emitted for it, to a
//! [`Recorder`] (src/record.rs), so that `replay` can re-drive a core from the file.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use raft::eraftpb::{ConfChangeV2, ConfState, Message};
use slog::{info, Logger};

use crate::config::Config;
use crate::driver::{DriverError, Faults};
use crate::error::{MembershipError, NodeError, ProposeError, ReadError, StartError, StopReason};
use crate::log_store::LogStore;
use crate::mailbox::PeerInput;
use crate::node::{ReadConsistency, Shared};
use crate::proposals::{Completer, WriteToken};
use crate::record::{self, Effects, EndState, Input, Recorder, StartState, TappedStore};
use crate::replica::{Host, Phase, Replica};
use crate::state_machine::StateMachine;
use crate::status::Status;
use crate::transport::Transport;

/// A query run against the state machine on the driver thread; it resolves its own
/// waiter. Dropping it unrun resolves the waiter with `Stopped`.
pub(crate) type Query<M> = Box<dyn FnOnce(Result<&M, ReadError>) + Send>;

/// Requests a turn took off the queue, by bound.
#[derive(Default)]
struct Taken {
    /// Peer inputs (`Shared::peers_queued`).
    peers: usize,
    /// Everything else (`Shared::requests_queued`).
    requests: usize,
}

impl Taken {
    fn all(&self) -> usize {
        self.peers + self.requests
    }
}

/// What a `Node` handle asks of its driver.
///
/// Kept small (64 bytes): the request queue is a crossbeam list channel, which keeps a
/// block of 31 slots of this size alive per group from the first send on, so every byte
/// here costs 31 in every replica. The big payloads (a raft `Message`, a
/// `ConfChangeV2`) are boxed for that.
pub(crate) enum Request<M: StateMachine> {
    /// From the transport, through the `Mailbox`.
    Peer(Box<PeerInput>),
    /// A command, and when `Node::propose` was called (`None` with timing off).
    Propose(
        Bytes,
        Completer<(M::Response, WriteToken), ProposeError>,
        Option<crate::timing::Tick>,
    ),
    /// A membership change; the voters it adds in `joining` catch up first, before
    /// `deadline`.
    ConfChange {
        change: Box<ConfChangeV2>,
        joining: Vec<u64>,
        deadline: Instant,
        done: Completer<ConfState, MembershipError>,
    },
    Read {
        consistency: ReadConsistency,
        deadline: Instant,
        query: Query<M>,
    },
    TransferLeader {
        to: u64,
        deadline: Instant,
        done: Completer<(), MembershipError>,
    },
    Status(Completer<Status, NodeError>),
    SnapshotNow(Completer<Option<u64>, NodeError>),
    Campaign,
    Shutdown {
        graceful: bool,
    },
}

/// The runtime's side of the replica: the transport, and completers for waiting
/// callers.
pub(crate) struct RuntimeHost {
    transport: Box<dyn Transport>,
    /// While recording: the digest of the current input's effects (src/record.rs).
    effects: Option<Effects>,
}

impl<M: StateMachine> Host<M> for RuntimeHost {
    type Propose = Completer<(M::Response, WriteToken), ProposeError>;
    type ConfChange = Completer<ConfState, MembershipError>;
    type Read = Query<M>;
    type Transfer = Completer<(), MembershipError>;

    fn send(&mut self, messages: Vec<Message>) {
        if let Some(e) = &mut self.effects {
            e.sent(&messages);
        }
        self.transport.send(messages);
    }

    fn add_peer(&mut self, id: u64, context: &[u8]) {
        if let Some(e) = &mut self.effects {
            e.peer_added(id, context);
        }
        self.transport.add_peer(id, context);
    }

    fn remove_peer(&mut self, id: u64) {
        if let Some(e) = &mut self.effects {
            e.peer_removed(id);
        }
        self.transport.remove_peer(id);
    }

    fn proposed(
        &mut self,
        token: Self::Propose,
        result: Result<(M::Response, WriteToken), ProposeError>,
    ) {
        if let Some(e) = &mut self.effects {
            e.proposed(&result);
        }
        token.complete(result);
    }

    fn conf_change_done(
        &mut self,
        token: Self::ConfChange,
        result: Result<ConfState, MembershipError>,
    ) {
        if let Some(e) = &mut self.effects {
            e.conf_change_done(&result);
        }
        token.complete(result);
    }

    fn read_done(&mut self, token: Self::Read, result: Result<&M, ReadError>) {
        if let Some(e) = &mut self.effects {
            e.read_done(&result);
        }
        token(result);
    }

    fn transfer_done(&mut self, token: Self::Transfer, result: Result<(), MembershipError>) {
        if let Some(e) = &mut self.effects {
            e.transfer_done(&result);
        }
        token.complete(result);
    }

    fn applied_entry(&mut self, index: u64, term: u64) {
        if let Some(e) = &mut self.effects {
            e.applied_entry(index, term);
        }
    }
}

pub(crate) struct Runtime<S: LogStore, M: StateMachine> {
    /// The store is tapped so a recording can note the write that failed.
    replica: Replica<TappedStore<S>, M, RuntimeHost>,
    /// `Config::record`: every call into the replica, written to a file.
    recorder: Option<Box<Recorder>>,
    req_rx: Receiver<Request<M>>,
    shared: Arc<Shared>,
    logger: Logger,
    /// The two knobs of `Config` the loop reads (`Config::max_batch`,
    /// `Config::tick_interval`); the replica holds the one full copy.
    max_batch: usize,
    tick_interval: Duration,
    next_tick: Instant,
}

/// How far a quiet group's next timer turn is pushed out: far enough to cost nothing,
/// finite so `Instant` arithmetic stays in range.
const QUIET_TIMER: Duration = Duration::from_secs(3600);

impl<S: LogStore, M: StateMachine> Runtime<S, M> {
    /// Starts the core on a recovered store (`replica::recover`).
    ///
    /// # Errors
    ///
    /// [`StartError::Raft`] when raft-rs refuses the stored state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: S,
        sm: M,
        applied: u64,
        transport: Box<dyn Transport>,
        config: Config,
        req_rx: Receiver<Request<M>>,
        shared: Arc<Shared>,
        logger: Logger,
        faults: Faults,
    ) -> Result<Self, StartError> {
        let now = Instant::now();
        let parent = logger;
        let logger = parent.new(slog::o!("raft_id" => config.id));
        let incarnation = crate::replica::fresh_incarnation();
        let mut recorder = config
            .record
            .as_ref()
            .and_then(|to| Recorder::open(to, now, &logger));
        if let Some(r) = &mut recorder {
            match StartState::capture(&config, incarnation, applied, &store, &sm) {
                Ok(state) => {
                    r.begin_start(&state);
                    r.announce();
                }
                Err(e) => {
                    slog::warn!(logger, "not recording: the starting state cannot be read";
                        "error" => e);
                    recorder = None;
                }
            }
        }
        let store = TappedStore::new(store, recorder.as_ref().map(Recorder::tap));
        let host = RuntimeHost {
            transport,
            effects: recorder.as_ref().map(|_| Effects::default()),
        };
        let (max_batch, tick_interval) = (config.max_batch, config.tick_interval);
        let mut replica = Replica::new(
            config,
            store,
            sm,
            applied,
            host,
            shared.clone(),
            parent,
            faults,
            incarnation,
            now,
        )?;
        if let Some(r) = &mut recorder {
            r.end_input(replica.host_mut().effects.take().unwrap_or_default());
        }
        Ok(Runtime {
            replica,
            recorder: recorder.map(Box::new),
            req_rx,
            shared,
            logger,
            max_batch,
            tick_interval,
            next_tick: now + tick_interval,
        })
    }

    /// Runs until shutdown or a fatal error on its own thread; returns why it stopped.
    pub(crate) fn run(&mut self) -> StopReason {
        let reason = loop {
            let timeout = self.next_tick.saturating_duration_since(Instant::now());
            let first = match self.req_rx.recv_timeout(timeout) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                // Every handle is gone: nobody can wait on us any more.
                Err(RecvTimeoutError::Disconnected) => {
                    self.exit();
                    None
                }
            };
            if let Some(reason) = self.work(first) {
                break reason;
            }
        };
        self.finish(reason)
    }

    /// One turn without waiting, for a host thread that runs many groups (`host.rs`):
    /// what is queued, a tick if one is due, every Ready. `Some(reason)` once the group
    /// has stopped; the caller then calls [`Runtime::finish`] and drops it.
    pub(crate) fn poll(&mut self) -> Option<StopReason> {
        let first = match self.req_rx.try_recv() {
            Ok(request) => Some(request),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.exit();
                None
            }
        };
        self.work(first)
    }

    /// When this group next needs a turn without new input (its next tick).
    pub(crate) fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// Whether input is waiting (a turn takes at most `max_batch` of it).
    pub(crate) fn has_queued(&self) -> bool {
        !self.req_rx.is_empty()
    }

    /// One round after the wait: drain (bounded), propose, tick, handle every Ready.
    /// `Some(reason)` once the group has stopped.
    fn work(&mut self, first: Option<Request<M>>) -> Option<StopReason> {
        if self.killed() {
            return Some(StopReason::Killed);
        }
        if let Err(e) = self.turn(first) {
            let reason = e.stop_reason();
            if reason != StopReason::Killed {
                slog::error!(self.logger, "node stopping on a fatal error"; "error" => %e);
            }
            return Some(reason);
        }
        if self.killed() {
            return Some(StopReason::Killed);
        }
        if self.replica.phase() == Phase::Exit {
            return Some(
                self.shared
                    .stop_reason
                    .lock()
                    .clone()
                    .unwrap_or(StopReason::Shutdown),
            );
        }
        None
    }

    /// Stops the transport and records why the group stopped; the waiters are released
    /// when the runtime is dropped.
    pub(crate) fn finish(&mut self, reason: StopReason) -> StopReason {
        self.replica.host_mut().transport.stop();
        info!(self.logger, "node stopped"; "reason" => %reason);
        // Recorded before `Drop` releases the waiters, so whoever gets `Stopped` can read
        // why.
        self.shared.stop_reason.lock().get_or_insert(reason.clone());
        reason
    }

    fn killed(&self) -> bool {
        self.shared.killed.load(Ordering::Acquire)
    }

    fn turn(&mut self, first: Option<Request<M>>) -> Result<(), DriverError> {
        let was_quiet = self.replica.is_quiet();
        let mut taken = Taken::default();
        if let Some(request) = first {
            self.on_request(request, &mut taken);
        }
        for _ in taken.all()..self.max_batch {
            if self.killed() {
                // Nothing more: no Ready, no message (`Node::kill`).
                self.give_back(taken);
                return Ok(());
            }
            match self.req_rx.try_recv() {
                Ok(request) => self.on_request(request, &mut taken),
                Err(_) => break,
            }
        }
        self.give_back(taken);
        self.begin(None, || Input::FlushProposals);
        self.replica.flush_proposals();
        self.end(None);

        let now = Instant::now();
        if was_quiet && !self.replica.is_quiet() {
            // Woken: tick again from now on.
            self.next_tick = now + self.tick_interval;
        }
        if now >= self.next_tick {
            // Missed ticks are not caught up: a slow fsync delays ticks, it never fires a
            // burst of them (docs/architecture.md, "Ticks").
            self.begin(Some(now), || Input::Tick);
            self.replica.tick(now);
            self.end(None);
            self.next_tick = now + self.tick_interval;
        }
        self.begin(Some(now), || Input::Drive);
        let driven = self.replica.drive(now);
        self.end(Some(driven.as_ref().map(|()| None)));
        if self.replica.is_quiet() {
            // Quiet: no timer turn until an input wakes the group (its wake-up path, the
            // request queue, is the only way in).
            self.next_tick = now + QUIET_TIMER;
        }
        driven
    }

    /// Handles one request. The clock is read only for the requests that take the time
    /// (a peer's message, a read, a shutdown): about 24 ns a proposal otherwise, on the
    /// driver's hot path. The recorder reads it itself for the others.
    fn on_request(&mut self, request: Request<M>, taken: &mut Taken) {
        if let Request::Peer(input) = request {
            let now = Instant::now();
            taken.peers += 1;
            match *input {
                PeerInput::Message(m) => {
                    self.begin(Some(now), || Input::Step(Cow::Borrowed(&m)));
                    self.replica.step(m, now);
                }
                PeerInput::Unreachable(peer) => {
                    self.begin(Some(now), || Input::Unreachable(peer));
                    self.replica.report_unreachable(peer);
                }
                PeerInput::Snapshot(peer, status) => {
                    self.begin(Some(now), || Input::ReportSnapshot(peer, status));
                    self.replica.report_snapshot(peer, status);
                }
            }
            return self.end(None);
        }
        taken.requests += 1;
        match request {
            Request::Peer(_) => unreachable!("handled above"),
            Request::Propose(data, done, at) => {
                self.begin(None, || Input::Propose(data.clone()));
                self.replica.propose(data, done, at);
            }
            Request::ConfChange {
                change,
                joining,
                deadline,
                done,
            } => {
                self.begin(None, || Input::ConfChange {
                    change: Cow::Borrowed(&change),
                    joining: Cow::Borrowed(&joining),
                    deadline,
                });
                self.replica
                    .propose_conf_change(*change, joining, deadline, done);
            }
            Request::Read {
                consistency,
                deadline,
                query,
            } => {
                let now = Instant::now();
                self.begin(Some(now), || Input::Read {
                    consistency,
                    deadline,
                });
                self.replica.read(consistency, deadline, query, now);
            }
            Request::TransferLeader { to, deadline, done } => {
                self.begin(None, || Input::TransferLeader { to, deadline });
                self.replica.transfer_leader(to, deadline, done);
            }
            // A status request changes nothing: it is not recorded.
            Request::Status(done) => return done.complete(Ok(self.replica.status())),
            Request::SnapshotNow(done) => {
                self.begin(None, || Input::SnapshotNow);
                let result = self.replica.snapshot_now();
                self.end(Some(result.as_ref().map(|index| *index)));
                return match result {
                    Ok(index) => done.complete(Ok(index)),
                    Err(e) => {
                        // The node stops on the next turn; the caller sees Stopped.
                        slog::error!(self.logger, "snapshot failed"; "error" => %e);
                        *self.shared.stop_reason.lock() = Some(e.stop_reason());
                        self.exit();
                    }
                };
            }
            Request::Campaign => {
                self.begin(None, || Input::Campaign);
                self.replica.campaign();
            }
            Request::Shutdown { graceful } => {
                let now = Instant::now();
                self.begin(Some(now), || Input::BeginShutdown { graceful });
                self.replica.begin_shutdown(graceful, now);
            }
        }
        self.end(None);
    }

    /// Gives the queues' bounds back what this turn took off them: once per turn, not per
    /// request, because the handles' threads add to the same counters and every
    /// decrement moves their cache line between cores. Until then a queue counts as
    /// fuller than it is, which only refuses sooner; the channels have room for both
    /// bounds whatever the counters say.
    fn give_back(&self, taken: Taken) {
        if taken.peers > 0 {
            self.shared
                .peers_queued
                .fetch_sub(taken.peers, Ordering::AcqRel);
        }
        if taken.requests > 0 {
            self.shared
                .requests_queued
                .fetch_sub(taken.requests, Ordering::AcqRel);
        }
    }

    /// Stops the replica on its next phase check (recorded).
    fn exit(&mut self) {
        self.begin(None, || Input::Exit);
        self.replica.exit();
        self.end(None);
    }

    /// While recording: starts the record of `input`, made at `now` (when the call
    /// takes one), and collects its effects from here on.
    fn begin<'a>(&mut self, now: Option<Instant>, input: impl FnOnce() -> Input<'a>) {
        if let Some(r) = self.recorder.as_mut().filter(|r| r.is_recording()) {
            r.begin_input(now.unwrap_or_else(Instant::now), &input());
            self.replica.host_mut().effects = Some(Effects::default());
        }
    }

    /// While recording: ends the input begun last, with what the call `returned` (for
    /// the calls that return something). A drive cut short by `Node::kill` is left
    /// open: it did not finish, and the segment ends unfinished.
    fn end(&mut self, returned: Option<Result<Option<u64>, &DriverError>>) {
        let Some(r) = &mut self.recorder else {
            return;
        };
        let mut effects = self.replica.host_mut().effects.take().unwrap_or_default();
        match returned {
            Some(Err(DriverError::Killed)) => return,
            Some(result) => effects.returned(result.map_err(record::error_kind)),
            None => {}
        }
        r.end_input(effects);
    }
}

impl<S: LogStore, M: StateMachine> Drop for Runtime<S, M> {
    /// Runs on every exit, after the thread recorded why it stopped (a panic included):
    /// closes the queue and drops what is in it, so every caller waiting on a queued
    /// request gets `Stopped` (the replica's waiters drop with it right after).
    fn drop(&mut self) {
        let finished = !std::thread::panicking() && !self.killed();
        if let Some(r) = &mut self.recorder {
            r.end_segment(finished.then(|| EndState::of(&self.replica)).as_ref());
        }
        self.shared
            .stop_reason
            .lock()
            .get_or_insert(StopReason::Shutdown);
        *self.shared.closed.write() = true;
        while self.req_rx.try_recv().is_ok() {}
        // Under the lock `Node::wait_stopped` waits with, so no waiter misses it.
        let _reason = self.shared.stop_reason.lock();
        self.shared.stopped.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unit;

    impl StateMachine for Unit {
        type Response = ();
        fn apply(&mut self, _: u64, _: &[u8]) {}
        fn apply_noop(&mut self, _: u64) {}
        fn applied_index(&self) -> u64 {
            0
        }
        fn snapshot(&self) -> Result<Bytes, crate::error::StateMachineError> {
            Ok(Bytes::new())
        }
        fn restore(&mut self, _: u64, _: &[u8]) -> Result<(), crate::error::StateMachineError> {
            Ok(())
        }
    }

    /// A request stays at 64 bytes: the queue keeps 31 slots of it per group
    /// (docs/multi-raft.md, "Capacity"), so an unboxed `Message` (192 bytes) in a variant
    /// would cost every replica about 4 KiB.
    #[test]
    fn request_stays_small() {
        assert!(
            std::mem::size_of::<Request<Unit>>() <= 64,
            "Request is {} bytes",
            std::mem::size_of::<Request<Unit>>()
        );
    }
}
