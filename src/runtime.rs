//! The driver thread: owns the RawNode, the state machine and the transport; waits for
//! input or the next tick, drains what is queued (bounded), proposes it as one batch,
//! then hands every Ready to [`crate::driver::drive`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{GetEntriesContext, RawNode, ReadState, SnapshotStatus, SoftState, StateRole};
use slog::{debug, info, warn, Drain, Logger};

use crate::config::Config;
use crate::driver::{self, DriverError, DriverStats, Faults, Outbox};
use crate::error::{MembershipError, ProposeError, ReadError, StopReason};
use crate::log_store::LogStore;
use crate::mailbox::PeerInput;
use crate::node::{ReadConsistency, Shared};
use crate::proposals::{AppliedAs, Completer, Pending, Waiter};
use crate::snapshot_codec::{self, MemberContexts};
use crate::state_machine::StateMachine;
use crate::status::{bump, PeerProgress, Role, Status};
use crate::transport::Transport;

/// A query run against the state machine on the driver thread; it resolves its own
/// waiter. Dropping it unrun resolves the waiter with `Stopped`.
pub(crate) type Query<M> = Box<dyn FnOnce(Result<&M, ReadError>) + Send>;

/// What a `Node` handle asks of its driver.
pub(crate) enum Request<M: StateMachine> {
    /// From the transport, through the `Mailbox`.
    Peer(PeerInput),
    Propose(Bytes, Completer<M::Response, ProposeError>),
    ConfChange(ConfChangeV2, Completer<ConfState, MembershipError>),
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
    Status(Completer<Status, ReadError>),
    SnapshotNow(Completer<Option<u64>, ReadError>),
    Campaign,
    Shutdown {
        graceful: bool,
    },
}

struct PendingRead<M> {
    deadline: Instant,
    query: Query<M>,
}

struct Transfer {
    to: u64,
    deadline: Instant,
    done: Completer<(), MembershipError>,
}

/// Everything the driver's [`Outbox`] touches, apart from the RawNode and state machine.
struct Ctx<M: StateMachine> {
    id: u64,
    transport: Box<dyn Transport>,
    pending: Pending<M::Response>,
    shared: Arc<Shared>,
    logger: Logger,
    log_messages: bool,
    snapshot_report_timeout: Duration,
    /// Peers sent a `MsgSnapshot` whose fate the transport has not reported yet, with
    /// the time after which the driver reports a failure itself (ERRATA 13).
    snapshots_in_flight: BTreeMap<u64, Instant>,
    /// Peers raft wanted to send a snapshot that does not hold them in its ConfState
    /// (they were added after it was taken): they would ignore it, so it is not sent;
    /// the driver takes a fresh snapshot and reports the failure so raft sends that.
    stale_snapshot_peers: BTreeSet<u64>,
    /// The context (address) each member's membership change carried, for the
    /// transport; written into every snapshot so it outlives log compaction.
    members: MemberContexts,
    /// Read index confirmations waiting for `applied >= index`.
    confirmed_reads: Vec<(u64, u64)>,
    removed: bool,
    ss_changed: bool,
}

impl<M: StateMachine> Outbox<M::Response> for Ctx<M> {
    fn send(&mut self, mut messages: Vec<Message>) {
        for to in driver::hold_back_stale_snapshots(&mut messages) {
            info!(self.logger, "not sending a snapshot that predates the peer's membership";
                "to" => to);
            self.stale_snapshot_peers.insert(to);
        }
        for m in &messages {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                bump(&self.shared.metrics.snapshots_sent);
                self.snapshots_in_flight
                    .insert(m.to, Instant::now() + self.snapshot_report_timeout);
                info!(self.logger, "sending snapshot"; "to" => m.to,
                    "index" => m.get_snapshot().get_metadata().index,
                    "bytes" => m.get_snapshot().data.len());
            }
            if self.log_messages {
                debug!(self.logger, "send"; "type" => ?m.get_msg_type(), "to" => m.to,
                    "term" => m.term, "index" => m.index, "log_term" => m.log_term,
                    "commit" => m.commit, "entries" => m.entries.len());
            }
        }
        self.transport.send(messages);
    }

    fn applied(&mut self, index: u64, term: u64, applied: AppliedAs<'_, M::Response>) {
        if self.pending.wants(index) {
            self.pending.resolve(index, term, applied);
        }
    }

    fn conf_changed(
        &mut self,
        index: u64,
        changes: &ConfChangeV2,
        cs: &ConfState,
        removed: &[u64],
    ) {
        info!(self.logger, "membership changed"; "index" => index,
            "voters" => ?cs.voters, "learners" => ?cs.learners,
            "voters_outgoing" => ?cs.voters_outgoing, "removed" => ?removed);
        for change in changes.get_changes() {
            let id = change.node_id;
            if driver::is_addition(change.get_change_type()) {
                if !changes.context.is_empty() {
                    self.members.insert(id, changes.context.clone());
                }
                if id != self.id {
                    self.transport.add_peer(id, &changes.context);
                }
            }
        }
        // Removals come from the ConfState before and after: a node removed in a joint
        // change leaves the group only when the (change-less) leave-joint entry applies.
        for &id in removed {
            if id == self.id {
                warn!(self.logger, "this node was removed from the group"; "index" => index);
                self.removed = true;
            } else {
                self.members.remove(&id);
                self.transport.remove_peer(id);
            }
        }
    }

    fn snapshot_restored(&mut self, snapshot: &Snapshot) {
        let index = snapshot.get_metadata().index;
        bump(&self.shared.metrics.snapshots_restored);
        info!(self.logger, "restored snapshot from leader"; "index" => index);
        // The snapshot replaces the log, membership changes included: take the members'
        // contexts from it.
        match snapshot_codec::decode_members(&snapshot.data) {
            Ok(members) => {
                let cs = snapshot.get_metadata().get_conf_state();
                self.members = members
                    .into_iter()
                    .filter(|(id, _)| driver::is_member(cs, *id))
                    .collect();
                for (id, context) in &self.members {
                    if *id != self.id && !context.is_empty() {
                        self.transport.add_peer(*id, context);
                    }
                }
            }
            Err(e) => warn!(self.logger, "snapshot's member table is unreadable"; "error" => %e),
        }
    }

    fn read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(ctx) = parse_read_ctx(self.id, &rs.request_ctx) {
                self.confirmed_reads.push((ctx, rs.index));
            }
        }
    }

    fn soft_state(&mut self, _ss: &SoftState) {
        self.ss_changed = true;
    }

    fn logger(&self) -> &Logger {
        &self.logger
    }
}

/// Leader-election bookkeeping for metrics and the storm warning.
struct Elections {
    role: StateRole,
    leader: u64,
    since_stable_leader: u64,
    leader_ticks: u64,
}

/// How the driver thread ends its loop.
#[derive(PartialEq, Eq)]
enum Phase {
    Running,
    /// Graceful shutdown: leadership is being handed over until the deadline.
    Leaving(Instant),
    Exit,
}

pub(crate) struct Runtime<S: LogStore, M: StateMachine> {
    raw: RawNode<S>,
    sm: M,
    ctx: Ctx<M>,
    config: Config,
    req_rx: Receiver<Request<M>>,
    batch: Vec<Entry>,
    batch_waiters: Vec<Completer<M::Response, ProposeError>>,
    reads: BTreeMap<u64, PendingRead<M>>,
    ready_reads: VecDeque<(u64, Query<M>)>,
    next_read_ctx: u64,
    transfers: Vec<Transfer>,
    stats: DriverStats,
    elections: Elections,
    last_snapshot_index: u64,
    next_tick: Instant,
    ticks: u64,
    /// Set on each tick: `after_ready` then runs the checks that need no faster pace.
    housekeeping_due: bool,
    phase: Phase,
}

impl<S: LogStore, M: StateMachine> Runtime<S, M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        raw: RawNode<S>,
        sm: M,
        transport: Box<dyn Transport>,
        config: Config,
        req_rx: Receiver<Request<M>>,
        shared: Arc<Shared>,
        logger: Logger,
        members: MemberContexts,
    ) -> Self {
        let last_snapshot_index = raw
            .store()
            .snapshot(0, 0)
            .map(|s| s.get_metadata().index)
            .unwrap_or(0)
            .max(raw.raft.raft_log.applied);
        let role = raw.raft.state;
        let log_messages = logger.is_debug_enabled();
        let next_tick = Instant::now() + config.tick_interval;
        let removed = {
            let cs = raw.raft.prs().conf().to_conf_state();
            raw.raft.raft_log.last_index() > 0
                && !cs.voters.contains(&config.id)
                && !cs.learners.contains(&config.id)
                && !cs.voters.is_empty()
        };
        Runtime {
            ctx: Ctx {
                id: config.id,
                transport,
                pending: Pending::default(),
                shared,
                logger,
                log_messages,
                snapshot_report_timeout: config.snapshot.report_timeout,
                snapshots_in_flight: BTreeMap::new(),
                stale_snapshot_peers: BTreeSet::new(),
                members,
                confirmed_reads: Vec::new(),
                removed,
                ss_changed: false,
            },
            raw,
            sm,
            req_rx,
            batch: Vec::new(),
            batch_waiters: Vec::new(),
            reads: BTreeMap::new(),
            ready_reads: VecDeque::new(),
            next_read_ctx: 1,
            transfers: Vec::new(),
            stats: DriverStats::default(),
            elections: Elections {
                role,
                leader: 0,
                since_stable_leader: 0,
                leader_ticks: 0,
            },
            last_snapshot_index,
            next_tick,
            ticks: 0,
            housekeeping_due: true,
            phase: Phase::Running,
            config,
        }
    }

    /// Runs until shutdown or a fatal error; returns why it stopped.
    pub(crate) fn run(&mut self) -> StopReason {
        let reason = loop {
            if let Err(e) = self.turn() {
                let reason = e.stop_reason();
                slog::error!(self.ctx.logger, "node stopping on a fatal error"; "error" => %e);
                break reason;
            }
            if self.phase == Phase::Exit {
                break StopReason::Shutdown;
            }
        };
        self.ctx.transport.stop();
        info!(self.ctx.logger, "node stopped"; "reason" => %reason);
        // Recorded before `Drop` releases the waiters, so whoever gets `Stopped` can read
        // why.
        self.ctx
            .shared
            .stop_reason
            .lock()
            .get_or_insert(reason.clone());
        reason
    }

    /// One round: wait, drain, propose, tick, handle every Ready, then the follow-ups.
    fn turn(&mut self) -> Result<(), DriverError> {
        let timeout = self.next_tick.saturating_duration_since(Instant::now());
        match self.req_rx.recv_timeout(timeout) {
            Ok(request) => self.on_request(request),
            Err(RecvTimeoutError::Timeout) => {}
            // Every handle is gone: nobody can wait on us any more.
            Err(RecvTimeoutError::Disconnected) => self.phase = Phase::Exit,
        }
        self.drain_inputs();
        self.flush_proposals();

        let now = Instant::now();
        if now >= self.next_tick {
            // Missed ticks are not caught up: a slow fsync delays ticks, it never
            // fires a burst of them (ERRATA 17).
            self.raw.tick();
            self.ticks += 1;
            self.next_tick = now + self.config.tick_interval;
            self.on_tick(now);
            self.housekeeping_due = true;
        }

        driver::drive(
            &mut self.raw,
            &mut self.sm,
            &mut self.ctx,
            &mut self.stats,
            Faults::default(),
        )?;
        self.after_ready()
    }

    fn drain_inputs(&mut self) {
        for _ in 1..self.config.max_batch {
            match self.req_rx.try_recv() {
                Ok(request) => self.on_request(request),
                Err(_) => break,
            }
        }
    }

    fn on_peer_input(&mut self, input: PeerInput) {
        match input {
            PeerInput::Message(m) => self.step(m),
            PeerInput::Unreachable(peer) => self.raw.report_unreachable(peer),
            PeerInput::Snapshot(peer, status) => {
                if self.ctx.snapshots_in_flight.remove(&peer).is_some() {
                    self.raw.report_snapshot(peer, status);
                }
            }
        }
    }

    fn step(&mut self, m: Message) {
        if let Err(reason) = crate::validate::check_message(&m, self.ctx.id, &self.raw) {
            bump(&self.ctx.shared.metrics.step_errors);
            warn!(self.ctx.logger, "dropping invalid message"; "reason" => reason,
                "type" => ?m.get_msg_type(), "from" => m.from, "to" => m.to);
            return;
        }
        if self.ctx.log_messages {
            debug!(self.ctx.logger, "recv"; "type" => ?m.get_msg_type(), "from" => m.from,
                "term" => m.term, "index" => m.index, "log_term" => m.log_term,
                "commit" => m.commit, "entries" => m.entries.len());
        }
        let (from, msg_type) = (m.from, m.get_msg_type());
        if let Err(e) = self.raw.step(m) {
            // Unknown or removed peers, local types: routine, never fatal (ERRATA 15).
            bump(&self.ctx.shared.metrics.step_errors);
            debug!(self.ctx.logger, "message dropped by raft"; "from" => from,
                "type" => ?msg_type, "error" => %e);
        }
    }

    fn on_request(&mut self, request: Request<M>) {
        let shared = &self.ctx.shared;
        if let Request::Peer(input) = request {
            shared.peers_queued.fetch_sub(1, Ordering::AcqRel);
            return self.on_peer_input(input);
        }
        shared.requests_queued.fetch_sub(1, Ordering::AcqRel);
        match request {
            Request::Peer(_) => unreachable!("handled above"),
            Request::Propose(data, done) => {
                let mut entry = Entry::default();
                entry.data = data;
                self.batch.push(entry);
                self.batch_waiters.push(done);
            }
            Request::ConfChange(cc, done) => self.propose_conf_change(cc, done),
            Request::Read {
                consistency,
                deadline,
                query,
            } => self.start_read(consistency, deadline, query),
            Request::TransferLeader { to, deadline, done } => {
                self.start_transfer(to, deadline, done)
            }
            Request::Status(done) => done.complete(Ok(self.status())),
            Request::SnapshotNow(done) => match self.snapshot_now() {
                Ok(index) => done.complete(Ok(index)),
                Err(e) => {
                    // The node stops on the next turn; the caller sees Stopped.
                    slog::error!(self.ctx.logger, "snapshot failed"; "error" => %e);
                    self.phase = Phase::Exit;
                    *self.ctx.shared.stop_reason.lock() = Some(e.stop_reason());
                }
            },
            Request::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    warn!(self.ctx.logger, "campaign refused"; "error" => %e);
                }
            }
            Request::Shutdown { graceful } => self.begin_shutdown(graceful),
        }
    }

    fn leader_hint(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Proposes everything drained this round as one `MsgPropose`, and registers one
    /// waiter per entry at `(index, term)` read right after (ERRATA 11).
    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.batch);
        let waiters = std::mem::take(&mut self.batch_waiters);
        let metrics = &self.ctx.shared.metrics;
        if !self.is_leader() || self.phase != Phase::Running {
            let err = if self.phase == Phase::Running {
                ProposeError::NotLeader {
                    leader: self.leader_hint(),
                }
            } else {
                ProposeError::Dropped
            };
            metrics
                .proposals_failed
                .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            for w in waiters {
                w.complete(Err(err.clone()));
            }
            return;
        }
        let n = entries.len() as u64;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.ctx.id;
        m.set_entries(entries.into());
        match self.raw.step(m) {
            Ok(()) => {
                metrics.proposals.fetch_add(n, Ordering::Relaxed);
                let last = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                for (i, w) in (last + 1 - n..).zip(waiters) {
                    self.ctx.pending.push(i, term, Waiter::Command(w));
                }
            }
            Err(e) => {
                debug!(self.ctx.logger, "proposals dropped by raft"; "count" => n, "error" => %e);
                metrics.proposals_failed.fetch_add(n, Ordering::Relaxed);
                for w in waiters {
                    w.complete(Err(ProposeError::Dropped));
                }
            }
        }
    }

    fn propose_conf_change(
        &mut self,
        cc: ConfChangeV2,
        done: Completer<ConfState, MembershipError>,
    ) {
        if !self.is_leader() || self.phase != Phase::Running {
            return done.complete(Err(MembershipError::NotLeader {
                leader: self.leader_hint(),
            }));
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if let Err(e) = crate::membership::validate_change(&cc, &conf) {
            return done.complete(Err(e));
        }
        if self.raw.raft.has_pending_conf() {
            return done.complete(Err(MembershipError::Rejected(
                "another membership change is still pending".into(),
            )));
        }
        if !conf.voters_outgoing.is_empty() && !cc.changes.is_empty() {
            return done.complete(Err(MembershipError::Rejected(
                "the group is in a joint configuration; it must leave it first".into(),
            )));
        }
        // Flush queued commands first so waiters stay in index order.
        self.flush_proposals();
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                let last = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                // raft turns a refused change into an empty normal entry (ERRATA 9).
                let refused = self
                    .raw
                    .raft
                    .raft_log
                    .unstable_entries()
                    .last()
                    .is_some_and(|e| {
                        e.index == last && e.get_entry_type() == EntryType::EntryNormal
                    });
                if refused {
                    done.complete(Err(MembershipError::Rejected(
                        "raft refused the change (pending change or joint state)".into(),
                    )));
                } else {
                    self.ctx.pending.push(last, term, Waiter::ConfChange(done));
                }
            }
            Err(e) => done.complete(Err(MembershipError::Rejected(e.to_string()))),
        }
    }

    fn start_read(&mut self, consistency: ReadConsistency, deadline: Instant, query: Query<M>) {
        match consistency {
            ReadConsistency::Stale => self.serve(query),
            ReadConsistency::Lease => {
                if !self.config.lease_reads {
                    return query(Err(ReadError::LeaseNotEnabled));
                }
                if !self.is_leader() {
                    return query(Err(ReadError::NotLeader {
                        leader: self.leader_hint(),
                    }));
                }
                let log = &self.raw.raft.raft_log;
                let committed_in_term = log.term(log.committed).ok() == Some(self.raw.raft.term);
                if committed_in_term && self.quorum_heard_since_last_check() {
                    // Within the lease (check_quorum steps a leader down when it loses its
                    // quorum), the commit index is current: serve once applied reaches it.
                    let index = log.committed;
                    self.ready_reads.push_back((index, query));
                } else {
                    self.start_read_index(deadline, query);
                }
            }
            ReadConsistency::Linearizable => self.start_read_index(deadline, query),
        }
    }

    /// Whether a quorum of voters was heard from since raft's last CheckQuorum (at most
    /// one election timeout ago). check_quorum alone lets a cut-off leader lead for up to
    /// two election timeouts, while the others may elect a new leader after one; asking
    /// for fresh contact shrinks the stale window of a lease read to about one message
    /// delay. When it fails, the lease read falls back to ReadIndex.
    fn quorum_heard_since_last_check(&self) -> bool {
        let prs = self.raw.raft.prs();
        let id = self.ctx.id;
        // raft-rs's hash set type is private; let `has_quorum` name it.
        let heard = prs
            .iter()
            .filter(|(peer, pr)| **peer == id || pr.recent_active)
            .map(|(peer, _)| *peer)
            .collect();
        prs.has_quorum(&heard)
    }

    fn start_read_index(&mut self, deadline: Instant, query: Query<M>) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.raw.read_index(read_ctx(self.ctx.id, ctx));
        self.reads.insert(ctx, PendingRead { deadline, query });
    }

    fn serve(&mut self, query: Query<M>) {
        bump(&self.ctx.shared.metrics.reads_served);
        query(Ok(&self.sm));
    }

    fn start_transfer(&mut self, to: u64, deadline: Instant, done: Completer<(), MembershipError>) {
        if !self.is_leader() {
            return done.complete(Err(MembershipError::NotLeader {
                leader: self.leader_hint(),
            }));
        }
        if to == self.ctx.id {
            return done.complete(Ok(()));
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if !conf.voters.contains(&to) {
            let what = if conf.learners.contains(&to) {
                "is a learner; promote it first"
            } else {
                "is not a member"
            };
            return done.complete(Err(MembershipError::Invalid(format!(
                "cannot transfer leadership to node {to}: it {what}"
            ))));
        }
        info!(self.ctx.logger, "transferring leadership"; "to" => to);
        self.raw.transfer_leader(to);
        self.transfers.push(Transfer { to, deadline, done });
    }

    fn begin_shutdown(&mut self, graceful: bool) {
        if !graceful || !self.is_leader() {
            self.phase = Phase::Exit;
            return;
        }
        match self.best_transfer_target() {
            Some(to) => {
                info!(self.ctx.logger, "shutting down: transferring leadership first"; "to" => to);
                self.raw.transfer_leader(to);
                self.phase = Phase::Leaving(Instant::now() + self.config.shutdown_transfer_timeout);
            }
            None => self.phase = Phase::Exit,
        }
    }

    /// The most up-to-date voter other than this node, the one a hand-over goes to.
    fn best_transfer_target(&self) -> Option<u64> {
        let prs = self.raw.raft.prs();
        prs.iter()
            .filter(|(id, _)| **id != self.ctx.id && prs.conf().voters().contains(**id))
            .max_by_key(|(id, pr)| (pr.recent_active, pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    fn snapshot_now(&mut self) -> Result<Option<u64>, DriverError> {
        let taken = driver::take_snapshot(
            &mut self.raw,
            &self.sm,
            self.config.snapshot.trailing_entries,
            Faults::default(),
            &self.ctx.members,
        )?;
        if let Some(index) = taken {
            self.last_snapshot_index = index;
            bump(&self.ctx.shared.metrics.snapshots_taken);
            info!(self.ctx.logger, "snapshot taken"; "index" => index,
                "first_index" => self.raw.store().first_index().unwrap_or(0));
        }
        Ok(taken)
    }

    fn on_tick(&mut self, now: Instant) {
        // Re-issue unanswered reads: raft drops a ReadIndex silently with no leader or
        // before the leader committed in its term; a still-pending context is ignored.
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(r) = self.reads.remove(&ctx) {
                (r.query)(Err(ReadError::Timeout));
            }
        }
        if self
            .ticks
            .is_multiple_of(self.config.heartbeat_ticks as u64)
        {
            let ctxs: Vec<u64> = self.reads.keys().copied().collect();
            for ctx in ctxs {
                self.raw.read_index(read_ctx(self.ctx.id, ctx));
            }
        }
        // Transfers: done, expired, or re-issued when raft gave up on the first try.
        let mut i = 0;
        while i < self.transfers.len() {
            if self.transfers[i].deadline <= now {
                let t = self.transfers.swap_remove(i);
                t.done.complete(Err(MembershipError::Timeout));
            } else {
                if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
                    self.raw.transfer_leader(self.transfers[i].to);
                }
                i += 1;
            }
        }
        // Backstop for transports that never report on a snapshot.
        let overdue: Vec<u64> = self
            .ctx
            .snapshots_in_flight
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in overdue {
            warn!(self.ctx.logger, "no report on snapshot sent; reporting failure"; "peer" => peer);
            self.ctx.snapshots_in_flight.remove(&peer);
            self.raw.report_snapshot(peer, SnapshotStatus::Failure);
        }
        if let Phase::Leaving(deadline) = self.phase {
            if deadline <= now {
                warn!(
                    self.ctx.logger,
                    "leadership transfer did not finish before shutdown"
                );
                self.phase = Phase::Exit;
            } else if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
                // raft gave up on the last target after an election timeout: try the best
                // one again, keeping the first deadline so shutdown always ends.
                match self.best_transfer_target() {
                    Some(to) => self.raw.transfer_leader(to),
                    None => self.phase = Phase::Exit,
                }
            }
        }
        // A leader stable for an election timeout ends an election storm.
        if self.raw.raft.leader_id != 0 {
            self.elections.leader_ticks += 1;
            if self.elections.leader_ticks >= self.config.election_ticks as u64 {
                self.elections.since_stable_leader = 0;
            }
        }
    }

    /// Follow-ups after the Readies: role changes, reads, transfers, snapshots.
    fn after_ready(&mut self) -> Result<(), DriverError> {
        if self.ctx.ss_changed {
            self.ctx.ss_changed = false;
            self.on_soft_state_change();
        }
        if !self.ctx.confirmed_reads.is_empty() {
            for (ctx, index) in std::mem::take(&mut self.ctx.confirmed_reads) {
                if let Some(r) = self.reads.remove(&ctx) {
                    self.ready_reads.push_back((index, r.query));
                }
            }
        }
        let applied = self.raw.raft.raft_log.applied;
        while self.ready_reads.front().is_some_and(|(i, _)| *i <= applied) {
            let (_, query) = self.ready_reads.pop_front().expect("front exists");
            self.serve(query);
        }
        if !self.transfers.is_empty() {
            // A transfer makes us step down before the new leader is known: keep waiting
            // until a leader is known (or the deadline passes).
            let leader = self.raw.raft.leader_id;
            let deposed = !self.is_leader() && leader != 0;
            let mut i = 0;
            while i < self.transfers.len() {
                if self.transfers[i].to == leader {
                    self.transfers.swap_remove(i).done.complete(Ok(()));
                } else if deposed {
                    let t = self.transfers.swap_remove(i);
                    t.done.complete(Err(MembershipError::NotLeader {
                        leader: Some(leader),
                    }));
                } else {
                    i += 1;
                }
            }
        }
        if self.phase != Phase::Running && self.phase != Phase::Exit && !self.is_leader() {
            self.phase = Phase::Exit;
        }
        if !self.ctx.stale_snapshot_peers.is_empty() {
            self.replace_stale_snapshot()?;
        }
        if self.housekeeping_due {
            // Once per tick, off the per-Ready hot path: none of these is urgent.
            self.housekeeping_due = false;
            self.maybe_leave_joint();
        }
        let every = self.config.snapshot.every_applied;
        if every > 0 && applied >= self.last_snapshot_index + every {
            self.snapshot_now()?;
        }
        Ok(())
    }

    fn on_soft_state_change(&mut self) {
        let raft = &self.raw.raft;
        let (role, leader) = (raft.state, raft.leader_id);
        let metrics = &self.ctx.shared.metrics;
        let was = self.elections.role;
        if role != was {
            match role {
                StateRole::PreCandidate => {
                    bump(&metrics.elections_started);
                    self.elections.since_stable_leader += 1;
                }
                StateRole::Candidate if was != StateRole::PreCandidate => {
                    bump(&metrics.elections_started);
                    self.elections.since_stable_leader += 1;
                }
                StateRole::Leader => bump(&metrics.elections_won),
                StateRole::Follower
                    if matches!(was, StateRole::Candidate | StateRole::PreCandidate) =>
                {
                    bump(&metrics.elections_lost)
                }
                _ => {}
            }
            if self.elections.since_stable_leader >= self.config.election_storm_threshold
                && matches!(role, StateRole::PreCandidate | StateRole::Candidate)
            {
                warn!(self.ctx.logger, "election storm: elections keep starting without a stable leader";
                    "elections" => self.elections.since_stable_leader,
                    "hint" => "raise election_ticks or tick_interval, check the network");
            }
        }
        if leader != self.elections.leader {
            bump(&metrics.leader_changes);
            self.elections.leader_ticks = 0;
        }
        info!(self.ctx.logger, "role changed";
            "role" => ?role, "term" => raft.term, "leader" => leader,
            "commit" => raft.raft_log.committed, "applied" => raft.raft_log.applied,
            "last_index" => raft.raft_log.last_index());
        self.ctx.shared.leader.store(leader, Ordering::Relaxed);
        if was == StateRole::Leader && role != StateRole::Leader {
            // Entries appended under our leadership may or may not commit now.
            let n = self.ctx.pending.len() as u64;
            metrics.proposals_failed.fetch_add(n, Ordering::Relaxed);
            self.ctx.pending.fail_all_unknown();
        }
        self.elections.role = role;
        self.elections.leader = leader;
    }

    /// Raft chose to send a snapshot that predates some peer's membership (see
    /// [`Ctx::stale_snapshot_peers`]): take a fresh one, which holds the current
    /// membership, and report the unsent one as failed so raft sends the fresh one on
    /// its next probe.
    fn replace_stale_snapshot(&mut self) -> Result<(), DriverError> {
        let peers: Vec<u64> = std::mem::take(&mut self.ctx.stale_snapshot_peers)
            .into_iter()
            .collect();
        let taken = driver::replace_stale_snapshot(
            &mut self.raw,
            &self.sm,
            self.config.snapshot.trailing_entries,
            Faults::default(),
            &self.ctx.members,
            &peers,
        )?;
        if let Some(index) = taken {
            self.last_snapshot_index = index;
            bump(&self.ctx.shared.metrics.snapshots_taken);
            info!(self.ctx.logger, "stored snapshot predated a new member; took a fresh one";
                "peers" => ?peers, "index" => index);
        }
        Ok(())
    }

    /// A new leader that finds the group in a joint configuration leaves it itself:
    /// raft-rs only auto-leaves on the leader that applied the entering change (ERRATA 9).
    fn maybe_leave_joint(&mut self) {
        if !self.is_leader() || self.phase != Phase::Running {
            return;
        }
        let raft = &self.raw.raft;
        if raft.prs().conf().to_conf_state().voters_outgoing.is_empty() || raft.has_pending_conf() {
            return;
        }
        info!(
            self.ctx.logger,
            "leaving joint configuration left behind by the previous leader"
        );
        if let Err(e) = self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            warn!(self.ctx.logger, "proposing leave-joint failed"; "error" => %e);
        }
    }

    fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let mut progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    matched: pr.matched,
                    next_index: pr.next_idx,
                    state: format!("{:?}", pr.state),
                    is_learner: cs.learners.contains(id),
                    recent_active: pr.recent_active,
                })
                .collect::<Vec<_>>()
        } else {
            Vec::new()
        };
        progress.sort_by_key(|p| p.id);
        let store = self.raw.store();
        Status {
            id: self.ctx.id,
            role: Role::from(raft.state),
            term: raft.term,
            leader: self.leader_hint(),
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            first_index: store.first_index().unwrap_or(0),
            snapshot_index: store
                .snapshot(0, 0)
                .map(|s| s.get_metadata().index)
                .unwrap_or(0),
            voters: cs.voters.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners: cs.learners.clone(),
            progress,
            removed: self.ctx.removed,
            metrics: self.ctx.shared.metrics.snapshot(&self.stats),
        }
    }
}

/// A ReadIndex context unique in the cluster: the leader ignores a context that is
/// already pending, so two nodes numbering their reads alike must not collide.
fn read_ctx(id: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx.extend_from_slice(&seq.to_le_bytes());
    ctx
}

fn parse_read_ctx(id: u64, ctx: &[u8]) -> Option<u64> {
    let (owner, seq) = ctx.split_at_checked(8)?;
    if owner != id.to_le_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(seq.try_into().ok()?))
}

impl<S: LogStore, M: StateMachine> Drop for Runtime<S, M> {
    /// Runs on every exit, after the thread recorded why it stopped (a panic included):
    /// closes the queue and drops what is in it, so every caller waiting on a queued
    /// request gets `Stopped` (the pending waiters drop with the fields right after).
    fn drop(&mut self) {
        self.ctx
            .shared
            .stop_reason
            .lock()
            .get_or_insert(StopReason::Shutdown);
        *self.ctx.shared.closed.write() = true;
        while self.req_rx.try_recv().is_ok() {}
    }
}

/// The members' contexts a restarting node knows: the stored snapshot's member table,
/// then what the membership changes in the committed log after it carried; kept for
/// the current members only. The caller hands them to the transport.
pub(crate) fn recover_members<S: LogStore>(raw: &RawNode<S>, logger: &Logger) -> MemberContexts {
    use protobuf::Message as _;
    let store = raw.store();
    let mut members = MemberContexts::new();
    if let Ok(snapshot) = store.snapshot(0, 0) {
        if snapshot.get_metadata().index > 0 {
            match snapshot_codec::decode_members(&snapshot.data) {
                Ok(table) => members = table,
                Err(e) => {
                    warn!(logger, "stored snapshot's member table is unreadable"; "error" => %e)
                }
            }
        }
    }
    let commit = raw.raft.raft_log.committed;
    let mut low = store.first_index().unwrap_or(commit + 1);
    while low <= commit {
        let high = (low + 1024).min(commit + 1);
        let entries = match store.entries(low, high, None, GetEntriesContext::empty(false)) {
            Ok(entries) if !entries.is_empty() => entries,
            Ok(_) => break,
            Err(e) => {
                warn!(logger, "reading the log for membership changes failed"; "error" => %e);
                break;
            }
        };
        low = entries.last().map_or(high, |e| e.index + 1);
        for entry in entries {
            let change = match entry.get_entry_type() {
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&entry.data)
                        .ok()
                        .map(|()| driver::v1_to_v2(&cc))
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&entry.data).ok().map(|()| cc)
                }
                EntryType::EntryNormal => None,
            };
            let Some(change) = change.filter(|c| !c.context.is_empty()) else {
                continue;
            };
            for single in change.get_changes() {
                if driver::is_addition(single.get_change_type()) {
                    members.insert(single.node_id, change.context.clone());
                }
            }
        }
    }
    let cs = raw.raft.prs().conf().to_conf_state();
    members.retain(|id, _| driver::is_member(&cs, *id));
    members
}
