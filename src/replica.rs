//! The per-group core: one Raft group's `RawNode`, state machine and bookkeeping,
//! free of threads, sockets and clocks.
//!
//! [`Replica`] decides everything between a request and a Ready: proposal batching,
//! waiters, reads (ReadIndex and the leader lease), membership checks, leaving a joint
//! configuration, snapshot policy and report timeouts, leadership transfers, graceful
//! shutdown, the members' table and start-up recovery. Time comes in as ticks and as the
//! `now` every call carries; effects leave through one narrow [`Host`]. The runtime
//! thread (`runtime.rs`) and the simulator (`testing/sim/node.rs`) both drive this one
//! copy, so the simulator checks the code that ships (docs/architecture.md).

mod checkpoint;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{GetEntriesContext, RawNode, ReadState, SnapshotStatus, SoftState, StateRole};
use slog::{debug, error, info, warn, Drain, Logger};

use crate::config::Config;
use crate::driver::{self, DriverError, DriverStats, Faults, Outbox};
use crate::error::{MembershipError, ProposeError, ReadError, StartError, StorageError};
use crate::log_store::LogStore;
use crate::membership::MembershipChange;
use crate::node::{ReadConsistency, Shared};
use crate::notice::Notice;
use crate::peer_watch::PeerWatch;
use crate::proposals::{self, AppliedAs, Outcome, Pending, Waiter, WriteToken};
use crate::snapshot_codec::{self, MemberContexts};
use crate::state_machine::StateMachine;
use crate::status::{bump, Divergence, PeerProgress, Role, Status};
use crate::timing::{Stamp, Timing};
use crate::validate::Refusal;

use checkpoint::{Checkpoints, Marker};

/// What a [`Replica`] needs from whoever runs it: a way to reach peers, and somewhere to
/// deliver each request's outcome. The tokens are the host's own handles for waiting
/// callers (the runtime's completers, the simulator's operation ids).
pub(crate) trait Host<M: StateMachine> {
    /// What a proposal's caller waits on.
    type Propose;
    /// What a membership change's caller waits on.
    type ConfChange;
    /// What a read's caller waits on.
    type Read;
    /// What a leadership transfer's caller waits on.
    type Transfer;

    /// Messages that may leave now: the Ready's writes they depend on are synced.
    fn send(&mut self, messages: Vec<Message>);
    /// A member joined (or its context is known again after a restart or snapshot).
    fn add_peer(&mut self, id: u64, context: &[u8]);
    /// A member left the group.
    fn remove_peer(&mut self, id: u64);
    /// A proposal ended.
    fn proposed(
        &mut self,
        token: Self::Propose,
        result: Result<(M::Response, WriteToken), ProposeError>,
    );
    /// A membership change ended.
    fn conf_change_done(
        &mut self,
        token: Self::ConfChange,
        result: Result<ConfState, MembershipError>,
    );
    /// A read may run now against the state machine, or failed.
    fn read_done(&mut self, token: Self::Read, result: Result<&M, ReadError>);
    /// A leadership transfer ended.
    fn transfer_done(&mut self, token: Self::Transfer, result: Result<(), MembershipError>);
    /// The entry at `index` of `term` was applied (observers only).
    fn applied_entry(&mut self, index: u64, term: u64) {
        let _ = (index, term);
    }
    /// Draws the next randomized election timeout in `[min, max]` ticks, or `None` to
    /// keep raft-rs's own draw. The simulator seeds it (raft-rs's RNG is unseeded).
    fn election_timeout(&mut self, min: usize, max: usize) -> Option<usize> {
        let _ = (min, max);
        None
    }
}

struct PendingRead<T> {
    deadline: Instant,
    token: T,
}

struct Transfer<T> {
    to: u64,
    deadline: Instant,
    token: T,
}

/// A membership change that adds voters, held back until each of them has caught up as
/// a learner (docs/membership.md, "Adding a voter safely").
struct Growth<T> {
    /// The change the caller asked for, proposed once every joining node caught up.
    change: ConfChangeV2,
    /// The nodes the change makes voters that must catch up first.
    joining: Vec<u64>,
    /// Index of the entry that added the joining nodes that were not members as
    /// learners; `None` when all of them already were.
    learners_at: Option<u64>,
    /// The term this leader proposed in: a new term ends the growth.
    term: u64,
    deadline: Instant,
    token: T,
}

/// Leader-election bookkeeping for metrics and the storm warning.
struct Elections {
    role: StateRole,
    leader: u64,
    since_stable_leader: u64,
    leader_ticks: u64,
    /// Since when this node has known no leader (`MetricsSnapshot::last_election_us`).
    leaderless_since: Option<Instant>,
    /// The factor on the randomized election timeout range (`election_backoff_limit`).
    backoff: usize,
    /// Draws the timeout when the backoff is on and the host leaves the draw to raft.
    rng: u64,
}

/// Election timeouts a leader must last before the election backoff halves.
pub(crate) const ELECTION_BACKOFF_STABLE_TIMEOUTS: u64 = 5;

/// How the replica ends: running, handing leadership over before a graceful
/// shutdown, or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Graceful shutdown: leadership is being handed over until the deadline.
    Leaving(Instant),
    Exit,
}

/// The leader lease (docs/reads.md, "Lease reads").
///
/// A quorum round is a ReadIndex request: raft-rs (in its safe mode) broadcasts a
/// heartbeat carrying the request's context and releases it once a quorum answered that
/// heartbeat. Every voter that answered reset its election timer after the round was
/// sent, and with `check_quorum` on, raft-rs makes a voter refuse to vote for anyone
/// else until `election_ticks` ticks pass on its own clock. So no other leader can exist
/// before `sent + (election_ticks - 1) * tick_interval` measured on a follower's clock;
/// the lease ends `max_clock_drift` earlier than that on the leader's.
struct Lease {
    /// Rounds this leader started and has not seen confirmed: context → (sent, term).
    rounds: BTreeMap<u64, (Instant, u64)>,
    /// The lease holds until this instant, in `term`.
    until: Option<(Instant, u64)>,
    /// A leadership transfer started in this term: `MsgTimeoutNow` makes its target
    /// campaign past every voter's lease, and it may still be in flight, so no lease
    /// read is served for the rest of the term.
    void_term: u64,
    /// When the last lease read was asked for: renewal rounds run only while in use.
    last_wanted: Option<Instant>,
    length: Duration,
}

/// Everything the driver's [`Outbox`] touches, apart from the RawNode and the state
/// machine.
struct Book<M: StateMachine, H: Host<M>> {
    id: u64,
    /// Differs on every start of this node, so that its ReadIndex contexts never repeat
    /// (see [`read_ctx`]).
    incarnation: u64,
    host: H,
    pending: Pending<H::Propose, H::ConfChange>,
    shared: Arc<Shared>,
    logger: Logger,
    log_messages: bool,
    /// The instant of the current call, for deadlines set while sending.
    now: Instant,
    snapshot_report_timeout: Duration,
    /// Peers sent a `MsgSnapshot` whose fate the transport has not reported yet, with
    /// the time after which the replica reports a failure itself
    /// (docs/implementing-transport.md, `report_snapshot`).
    snapshots_in_flight: BTreeMap<u64, Instant>,
    /// Peers raft wanted to send a snapshot that does not hold them in its ConfState
    /// (they were added after it was taken): they would ignore it, so it is not sent;
    /// the replica takes a fresh snapshot and reports the failure so raft sends that.
    stale_snapshot_peers: BTreeSet<u64>,
    /// The context (address) each member's membership change carried, for the
    /// transport; written into every snapshot so it outlives log compaction.
    members: MemberContexts,
    /// Read index confirmations not yet matched to their reads: (context, index).
    confirmed_reads: Vec<(u64, u64)>,
    removed: bool,
    ss_changed: bool,
    /// When each peer was last heard from, which are stopping, which say this node was
    /// removed.
    peers: PeerWatch,
    /// Divergence detection: the digests taken at checkpoints, the leader's next one,
    /// what was found. `None` until the first marker (docs/operations.md,
    /// "Divergence").
    checkpoints: Option<Box<Checkpoints>>,
    /// `Config::stop_on_divergence`.
    stop_on_divergence: bool,
    /// Per-proposal lifecycle timing (`Config::proposal_timing`): `None` until the
    /// first timed proposal (one the handle stamped), and always when timing is off.
    timing: Option<Box<Timing>>,
}

fn finish_waiter<M: StateMachine, H: Host<M>>(
    host: &mut H,
    waiter: Waiter<H::Propose, H::ConfChange>,
    outcome: Outcome<'_, M::Response>,
    at: (u64, u64),
) {
    match waiter {
        Waiter::Command(token) => host.proposed(token, proposals::propose_result(outcome, at)),
        Waiter::ConfChange(token) => {
            host.conf_change_done(token, proposals::conf_change_result(outcome))
        }
    }
}

impl<M: StateMachine, H: Host<M>> Book<M, H> {
    /// Counts a context on an empty entry that is not a marker this version writes,
    /// and logs it (the first time, then at every power of two): it is ignored.
    fn ignore_marker(&mut self, index: u64, why: &'static str) {
        let metrics = &self.shared.metrics;
        let n = metrics.checkpoints_ignored.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(self.logger, "ignored an empty entry whose context is not a checkpoint marker";
                "index" => index, "why" => why, "ignored_so_far" => n);
        }
    }

    /// The leader `leader` reports its digest `theirs` at the checkpoint `index`, in the
    /// entry at `at`: compares it with this replica's, if it has one.
    fn compare_digest(
        &mut self,
        at: u64,
        leader: u64,
        index: u64,
        theirs: u64,
    ) -> Result<(), DriverError> {
        let checkpoints = self.checkpoints.get_or_insert_with(Default::default);
        let Some(ours) = checkpoints.digest_at(index) else {
            debug!(self.logger, "no digest of our own at the reported checkpoint";
                "index" => index, "leader" => leader);
            return Ok(());
        };
        let metrics = &self.shared.metrics;
        bump(&metrics.checkpoints_compared);
        if ours == theirs {
            return Ok(());
        }
        bump(&metrics.divergences);
        let divergence = Divergence {
            index,
            replica: self.id,
            leader,
            local_digest: ours,
            leader_digest: theirs,
            reported_at: at,
        };
        error!(self.logger, "state machine diverged from the leader's";
            "checkpoint_index" => index, "replica" => self.id, "leader" => leader,
            "digest" => format!("{ours:#018x}"), "leader_digest" => format!("{theirs:#018x}"),
            "found_at" => at, "stop" => self.stop_on_divergence);
        checkpoints.first.get_or_insert_with(|| divergence.clone());
        if self.stop_on_divergence {
            return Err(DriverError::Diverged(divergence));
        }
        Ok(())
    }

    fn fail_pending_unknown(&mut self) {
        let n = self.pending.len() as u64;
        self.shared
            .metrics
            .proposals_failed
            .fetch_add(n, Ordering::Relaxed);
        let host = &mut self.host;
        self.pending.unknown_all(|w, o: Outcome<'_, M::Response>| {
            finish_waiter::<M, H>(host, w, o, (0, 0))
        });
        if let Some(timing) = &mut self.timing {
            timing.forget_all();
        }
    }
}

impl<M: StateMachine, H: Host<M>> Outbox<M::Response> for Book<M, H> {
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
                    .insert(m.to, self.now + self.snapshot_report_timeout);
                info!(self.logger, "sending snapshot"; "to" => m.to,
                    "index" => m.get_snapshot().get_metadata().index,
                    "bytes" => m.get_snapshot().data.len());
            }
            if !self.shared.message_log.log(&self.logger, "send", m) && self.log_messages {
                debug!(self.logger, "send"; "type" => ?m.get_msg_type(), "to" => m.to,
                    "term" => m.term, "index" => m.index, "log_term" => m.log_term,
                    "commit" => m.commit, "entries" => m.entries.len());
            }
        }
        if !messages.is_empty() {
            self.host.send(messages);
        }
    }

    fn applied(&mut self, index: u64, term: u64, applied: AppliedAs<'_, M::Response>) {
        self.host.applied_entry(index, term);
        if self.pending.wants(index) {
            let stamped = self
                .timing
                .as_deref_mut()
                .and_then(|t| t.applied(index, term));
            let host = &mut self.host;
            self.pending.resolve(index, term, applied, |w, o| {
                finish_waiter::<M, H>(host, w, o, (index, term))
            });
            if let (Some(timing), Some(at)) = (self.timing.as_deref_mut(), stamped) {
                timing.returned(at, &self.logger);
            }
        }
    }

    fn timing(&self) -> bool {
        self.timing.as_ref().is_some_and(|t| t.wanted())
    }

    fn stamp(&mut self, stamp: Stamp) {
        if let Some(timing) = &mut self.timing {
            timing.stamp(stamp, &self.logger);
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
                    self.host.add_peer(id, &changes.context);
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
                self.peers.forget(id);
                self.host.remove_peer(id);
            }
        }
    }

    fn snapshot_restored(&mut self, snapshot: &Snapshot) {
        let index = snapshot.get_metadata().index;
        bump(&self.shared.metrics.snapshots_restored);
        info!(self.logger, "restored snapshot from leader"; "index" => index);
        // Entries the snapshot covers were applied elsewhere: whether a waiter's entry
        // was the one applied at its index is unknown.
        let host = &mut self.host;
        self.pending
            .unknown_up_to(index, |w, o: Outcome<'_, M::Response>| {
                finish_waiter::<M, H>(host, w, o, (0, 0))
            });
        if let Some(timing) = &mut self.timing {
            timing.forget_up_to(index);
        }
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
                        self.host.add_peer(*id, context);
                    }
                }
            }
            Err(e) => warn!(self.logger, "snapshot's member table is unreadable"; "error" => %e),
        }
    }

    fn read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(ctx) = parse_read_ctx(self.id, self.incarnation, &rs.request_ctx) {
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

    fn killed(&self) -> bool {
        self.shared.killed.load(Ordering::Acquire)
    }

    fn marker(
        &mut self,
        index: u64,
        context: &[u8],
        digest: &dyn Fn() -> Option<u64>,
    ) -> Result<(), DriverError> {
        match Marker::parse(context, index) {
            Err(why) => self.ignore_marker(index, why),
            Ok(Marker::Checkpoint { .. }) => self
                .checkpoints
                .get_or_insert_with(Default::default)
                .on_checkpoint(index, digest()),
            Ok(Marker::Report {
                leader,
                index: checkpoint,
                digest,
            }) => self.compare_digest(index, leader, checkpoint, digest)?,
        }
        Ok(())
    }
}

/// One Raft group's core. See the module docs.
pub(crate) struct Replica<S: LogStore, M: StateMachine, H: Host<M>> {
    raw: RawNode<S>,
    sm: M,
    book: Book<M, H>,
    config: Config,
    faults: Faults,
    batch: Vec<Entry>,
    batch_tokens: Vec<H::Propose>,
    reads: BTreeMap<u64, PendingRead<H::Read>>,
    /// Rounds issued again for reads still waiting, each with a fresh context: the
    /// round's context, and the reads (keys of `reads`) its confirmation answers.
    reissued: BTreeMap<u64, Vec<u64>>,
    /// Reads confirmed at an index, served once applied reaches it: (index, seq).
    ready_reads: BTreeMap<(u64, u64), H::Read>,
    /// `AtLeast` reads waiting for applied to reach their token: (index, seq) →
    /// (deadline, read).
    token_reads: BTreeMap<(u64, u64), (Instant, H::Read)>,
    next_read_ctx: u64,
    lease: Lease,
    transfers: Vec<Transfer<H::Transfer>>,
    /// An addition of voters waiting for them to catch up (at most one at a time;
    /// boxed, as it is rare and every replica of a big host carries the slot).
    growth: Option<Box<Growth<H::ConfChange>>>,
    /// Diagnosis: since when each worrying condition has held.
    diag: crate::diagnose::Watch,
    stats: DriverStats,
    elections: Elections,
    last_snapshot_index: u64,
    ticks: u64,
    /// Ticks since a message from the leader of the current term was stepped; the
    /// leader hint goes stale past `election_ticks` of them (`leader_hint`).
    leader_silent_ticks: usize,
    /// The leader hint last published to the handles (`Shared::leader`; 0 for none).
    published_leader: u64,
    /// Set on each tick: `after_ready` then runs the checks that need no faster pace.
    housekeeping_due: bool,
    phase: Phase,
    /// (term, role, leader) when the election timeout was last drawn by the host.
    timeout_key: (u64, StateRole, u64),
    /// Quiescence (`Config::quiesce_after_timeouts`): ticks this leader has had
    /// nothing to do, and whether the group is quiet here (no ticks until woken).
    idle_ticks: u64,
    quiet: bool,
    /// This node believes it was removed because a majority of its voters said so (it
    /// missed the commit); see [`Replica::on_not_a_member`].
    removal: Option<PeerRemoval>,
}

/// A removal this node learnt from its peers rather than from its own log.
///
/// Forged notices can claim it as easily as honest ones, so the belief is never final:
/// the node stops campaigning only for [`REMOVAL_RECHECK_TIMEOUTS`] election timeouts,
/// then campaigns again and needs its voters to say it anew; a leader replicating to it,
/// or a voter sending it what members send only to members, ends it. A group whose
/// every node was talked into it therefore elects a leader again on its own.
#[derive(Debug, Clone, Copy)]
struct PeerRemoval {
    /// The tick from which the node campaigns again to hear its voters anew.
    recheck_at: u64,
    /// `Elections::since_stable_leader` when the belief formed: votes count again only
    /// after the node started an election since.
    elections: u64,
}

/// Opens a group's storage the way every start does: bootstraps a new group, restores
/// the state machine from the stored snapshot when it is behind it, and repairs a
/// commit index the state machine has proven. Returns the applied index to start from.
///
/// # Errors
///
/// [`StartError`] when the store cannot be read or written, the snapshot cannot be
/// restored, or the state machine claims entries the log does not hold.
pub(crate) fn recover<S: LogStore, M: StateMachine>(
    config: &Config,
    store: &mut S,
    sm: &mut M,
    logger: &Logger,
) -> Result<u64, StartError> {
    crate::node::bootstrap_if_new(config, store, logger)?;
    let first = store.first_index().map_err(raft_to_storage)?;
    let last = store.last_index().map_err(raft_to_storage)?;
    if sm.applied_index() + 1 < first {
        let snapshot = store.snapshot(0, 0).map_err(raft_to_storage)?;
        info!(logger, "restoring state machine from the stored snapshot";
            "state_machine_applied" => sm.applied_index(), "snapshot_index" => snapshot.get_metadata().index);
        driver::restore_state_machine(sm, &snapshot).map_err(|e| match e {
            DriverError::StateMachine(e) => StartError::StateMachine(e),
            other => StartError::Raft(other.to_string()),
        })?;
    }
    let applied = sm.applied_index();
    if applied > last {
        return Err(StartError::Storage(StorageError::Invalid {
            op: "start",
            detail: format!(
                "the state machine is ahead of the log: it has applied index {applied} but \
                 the log store ends at {last}, so the log lost entries {}..={applied} the \
                 state machine saw (a log restored from an older copy than the state \
                 machine, a tail cut after corruption, or another node's data directory); \
                 restore both from the same copy, or wipe this node and add it back as a \
                 new member (docs/security.md, \"Data loss\")",
                last + 1
            ),
        }));
    }
    let mut hs = store.initial_state().map_err(raft_to_storage)?.hard_state;
    if hs.commit > last {
        // The log lost its tail (cut after corruption) below the commit index it had
        // recorded. raft-rs refuses to start on that ("hs.commit out of range"). The
        // entries were committed: the leader still has them and, told where this log
        // ends (crate::notice), sends them again. The state machine applied at most
        // `last` (checked above), so nothing applied is lost.
        warn!(logger, "log store ends below its recorded commit index: it lost its tail; \
            the leader will send the entries again";
            "commit" => hs.commit, "last_index" => last);
        hs.commit = last;
        store.set_hard_state(&hs)?;
        store.sync()?;
    }
    // Commit index writes are not synced on their own; the state machine only applies
    // committed entries, so its applied index is a commit index we may trust.
    if hs.commit < applied {
        hs.commit = applied;
        store.set_hard_state(&hs)?;
        store.sync()?;
    }
    Ok(applied)
}

fn raft_to_storage(e: raft::Error) -> StorageError {
    StorageError::Engine {
        op: "read",
        detail: e.to_string(),
    }
}

impl<S: LogStore, M: StateMachine, H: Host<M>> Replica<S, M, H> {
    /// Starts the core on a recovered store (see [`recover`]): creates the `RawNode`,
    /// reads the members' table back and hands it to the host.
    ///
    /// # Errors
    ///
    /// [`StartError::Raft`] when raft-rs refuses the stored state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        store: S,
        sm: M,
        applied: u64,
        mut host: H,
        shared: Arc<Shared>,
        logger: Logger,
        faults: Faults,
        incarnation: u64,
        now: Instant,
    ) -> Result<Self, StartError> {
        let mut raft_config = config.to_raft(applied);
        if faults.linearizable_from_raft_lease() && config.lease_reads {
            raft_config.read_only_option = raft::ReadOnlyOption::LeaseBased;
        }
        // raft-rs adds `raft_id` to the logger it is given; the core's own lines get the
        // same key, once.
        let raw = RawNode::new(&raft_config, store, &logger)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let logger = logger.new(slog::o!("raft_id" => config.id));
        let members = recover_members(&raw, &logger);
        for (peer, context) in &members {
            if *peer != config.id {
                host.add_peer(*peer, context);
            }
        }
        let last_snapshot_index = raw
            .store()
            .snapshot(0, 0)
            .map(|s| s.get_metadata().index)
            .unwrap_or(0)
            .max(raw.raft.raft_log.applied);
        let role = raw.raft.state;
        let removed = {
            let cs = raw.raft.prs().conf().to_conf_state();
            raw.raft.raft_log.last_index() > 0
                && !cs.voters.contains(&config.id)
                && !cs.learners.contains(&config.id)
                && !cs.voters.is_empty()
        };
        let lease_length = config.lease_length();
        let mut replica = Replica {
            book: Book {
                id: config.id,
                incarnation: if faults.read_ctx_reused() {
                    0
                } else {
                    incarnation
                },
                host,
                pending: Pending::default(),
                shared,
                log_messages: logger.is_debug_enabled(),
                logger,
                now,
                snapshot_report_timeout: config.snapshot.report_timeout,
                snapshots_in_flight: BTreeMap::new(),
                stale_snapshot_peers: BTreeSet::new(),
                members,
                confirmed_reads: Vec::new(),
                removed,
                ss_changed: false,
                peers: PeerWatch::default(),
                checkpoints: None,
                stop_on_divergence: config.stop_on_divergence,
                timing: None,
            },
            raw,
            sm,
            faults,
            batch: Vec::new(),
            batch_tokens: Vec::new(),
            reads: BTreeMap::new(),
            reissued: BTreeMap::new(),
            ready_reads: BTreeMap::new(),
            token_reads: BTreeMap::new(),
            next_read_ctx: 1,
            lease: Lease {
                rounds: BTreeMap::new(),
                until: None,
                void_term: 0,
                last_wanted: None,
                length: lease_length,
            },
            transfers: Vec::new(),
            growth: None,
            diag: crate::diagnose::Watch::default(),
            stats: DriverStats::default(),
            elections: Elections {
                role,
                leader: 0,
                since_stable_leader: 0,
                leader_ticks: 0,
                leaderless_since: None,
                backoff: 1,
                rng: election_seed(incarnation),
            },
            last_snapshot_index,
            ticks: 0,
            leader_silent_ticks: 0,
            published_leader: 0,
            housekeeping_due: true,
            phase: Phase::Running,
            timeout_key: (u64::MAX, StateRole::Leader, u64::MAX),
            idle_ticks: 0,
            quiet: false,
            removal: None,
            config,
        };
        replica.rerandomize();
        Ok(replica)
    }

    /// The host, for the caller's own bookkeeping.
    pub(crate) fn host_mut(&mut self) -> &mut H {
        &mut self.book.host
    }

    /// The state machine (the simulator's checks, the recorder's end-of-segment digest).
    pub(crate) fn state_machine(&self) -> &M {
        &self.sm
    }

    /// The state machine, for the simulator's bookkeeping (never for applying).
    #[cfg(feature = "testing")]
    pub(crate) fn state_machine_mut(&mut self) -> &mut M {
        &mut self.sm
    }

    /// raft-rs's node, read-only (the simulator's checks, the recorder's end state).
    pub(crate) fn raw(&self) -> &RawNode<S> {
        &self.raw
    }

    /// raft-rs's node, for the simulator's storage faults.
    #[cfg(feature = "testing")]
    pub(crate) fn raw_mut(&mut self) -> &mut RawNode<S> {
        &mut self.raw
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Stops the replica on the next check of [`Replica::phase`].
    pub(crate) fn exit(&mut self) {
        self.phase = Phase::Exit;
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node can name: itself while it leads, or the leader of its term
    /// if it heard from it within the last `election_ticks` ticks. raft-rs keeps
    /// `leader_id` until the term changes, so a dead leader would otherwise be named
    /// (in `Node::leader` and every `NotLeader` hint) until an election ends.
    pub(crate) fn leader_hint(&self) -> Option<u64> {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader {
            return Some(self.book.id);
        }
        match raft.leader_id {
            0 => None,
            _ if self.leader_silent_ticks > self.config.election_ticks => None,
            id => Some(id),
        }
    }

    /// Publishes the leader hint to the handles when it changed.
    fn publish_leader(&mut self) {
        let hint = self.leader_hint().unwrap_or(0);
        if hint != self.published_leader {
            self.published_leader = hint;
            self.book.shared.leader.store(hint, Ordering::Relaxed);
        }
    }

    /// Replaces raft-rs's randomized election timeout with the host's draw after every
    /// change of term, role or leader (where raft-rs draws a new one).
    fn rerandomize(&mut self) {
        let raft = &self.raw.raft;
        let key = (raft.term, raft.state, raft.leader_id);
        if key == self.timeout_key {
            return;
        }
        self.timeout_key = key;
        // [min, max] inclusive, times the storm backoff (raft-rs was configured with
        // room for the largest, `Config::to_raft`).
        let (min, end) = self.config.election_ticks_range();
        let k = self.elections.backoff;
        let (min, max) = (min * k, (end - 1) * k);
        let timeout = match self.book.host.election_timeout(min, max) {
            Some(timeout) => timeout,
            None => {
                // xorshift64; raft-rs's own draw would span its whole widened range.
                let r = &mut self.elections.rng;
                *r ^= *r << 13;
                *r ^= *r >> 7;
                *r ^= *r << 17;
                min + (*r % (max - min + 1) as u64) as usize
            }
        };
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Steps a message from a peer, after the checks every message gets.
    pub(crate) fn step(&mut self, m: Message, now: Instant) {
        self.book.now = now;
        if let Some(notice) = crate::notice::parse(&m, self.book.id) {
            match notice {
                Ok(Notice::Stopping) => self.on_stopping(m.from),
                Ok(Notice::NotAMember(applied)) => self.on_not_a_member(m.from, applied),
                Ok(Notice::Quiet(commit)) => self.on_quiet(m.from, m.term, commit),
                Ok(notice) => {
                    self.wake();
                    self.on_notice(m.from, m.term, notice, now)
                }
                Err(refusal) => self.refuse(refusal, &m, now),
            }
            return;
        }
        // Any message wakes a quiet group, the sender has something to say, but a
        // follower's late answer to the leader's last heartbeat or append.
        if !self.is_idle_echo(&m) {
            self.wake();
        }
        if let Err(refusal) = crate::validate::check_message(&m, self.book.id, &self.raw) {
            self.refuse(refusal, &m, now);
            return;
        }
        if m.get_msg_type() == MessageType::MsgSnapshot {
            if let Err(refusal) = self.check_snapshot(&m) {
                self.refuse(refusal, &m, now);
                return;
            }
        }
        if self.holds_vote_after_restart(&m) {
            debug!(self.book.logger, "not voting yet: a lease granted before the restart may still hold";
                "type" => ?m.get_msg_type(), "from" => m.from, "term" => m.term);
            return;
        }
        let logged = self
            .book
            .shared
            .message_log
            .log(&self.book.logger, "recv", &m);
        if !logged && self.book.log_messages {
            debug!(self.book.logger, "recv"; "type" => ?m.get_msg_type(), "from" => m.from,
                "term" => m.term, "index" => m.index, "log_term" => m.log_term,
                "commit" => m.commit, "entries" => m.entries.len());
        }
        let (from, term, msg_type) = (m.from, m.term, m.get_msg_type());
        if self.raw.raft.prs().get(from).is_some() {
            self.book.peers.heard(from, self.ticks);
        } else {
            self.tell_not_a_member(from, msg_type);
        }
        if let Err(e) = self.raw.step(m) {
            // Unknown or removed peers, local types: routine, never fatal.
            bump(&self.book.shared.metrics.step_errors);
            debug!(self.book.logger, "message dropped by raft"; "from" => from,
                "type" => ?msg_type, "error" => %e);
        }
        if self.removal.is_some() && speaks_to_a_member(msg_type) {
            self.member_evidence(from, term);
        }
        let raft = &self.raw.raft;
        if from == raft.leader_id && term == raft.term && from != 0 {
            if self.removal.is_some() {
                // A leader replicates to this node: it is a member after all.
                warn!(self.book.logger, "a leader replicates to this node: it was not removed";
                    "leader" => from, "term" => term);
                self.end_removal();
            }
            self.leader_silent_ticks = 0;
            if self.published_leader != from {
                self.publish_leader();
            }
        }
        self.note_transfer();
        self.rerandomize();
    }

    /// Counts and (rate-limited) logs a refused message, and tells its sender what it
    /// needs to know to stop sending it: a leader heartbeating a commit past this
    /// node's log learns where the log ends, one whose snapshot was refused learns it
    /// failed (see [`crate::notice`]).
    fn refuse(&mut self, refusal: Refusal, m: &Message, now: Instant) {
        let metrics = &self.book.shared.metrics;
        bump(&metrics.step_errors);
        if let Some(suppressed) = metrics.refused.record(refusal, now) {
            warn!(self.book.logger, "refused a message before raft"; "reason" => %refusal,
                "type" => ?m.get_msg_type(), "from" => m.from, "term" => m.term,
                "index" => m.index, "not_logged_since_last" => suppressed);
        }
        let id = self.book.id;
        let notice = match (refusal, m.get_msg_type()) {
            (Refusal::CommitPastLog, MessageType::MsgHeartbeat) => {
                let last = self.raw.raft.raft_log.last_index();
                crate::notice::log_ends(id, m.from, m.term, last)
            }
            (
                Refusal::SnapshotChecksum | Refusal::SnapshotData | Refusal::SnapshotRejected,
                MessageType::MsgSnapshot,
            ) => {
                let index = m.get_snapshot().get_metadata().index;
                crate::notice::snapshot_refused(id, m.from, m.term, index)
            }
            _ => return,
        };
        Outbox::<M::Response>::send(&mut self.book, vec![notice]);
    }

    /// The state machine's own check of a snapshot raft-rs would install (one past the
    /// commit index, from a term this node accepts), before raft-rs and the log store
    /// see it.
    fn check_snapshot(&mut self, m: &Message) -> Result<(), Refusal> {
        let meta = m.get_snapshot().get_metadata();
        if m.term < self.raw.raft.term || meta.index <= self.raw.raft.raft_log.committed {
            return Ok(());
        }
        let data = snapshot_codec::decode(&m.get_snapshot().data).map_err(|e| {
            warn!(self.book.logger, "snapshot from peer does not decode"; "from" => m.from,
                "index" => meta.index, "error" => %e);
            Refusal::SnapshotData
        })?;
        self.sm.check_snapshot(meta.index, &data).map_err(|e| {
            warn!(self.book.logger, "state machine refused a snapshot from peer";
                "from" => m.from, "index" => meta.index, "error" => %e);
            Refusal::SnapshotRejected
        })
    }

    /// Acts on a well-formed notice when this node leads the notice's term; a stale
    /// notice (leadership moved since) is dropped.
    fn on_notice(&mut self, from: u64, term: u64, notice: Notice, now: Instant) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Leader || term != raft.term {
            debug!(self.book.logger, "stale notice dropped"; "from" => from, "term" => term,
                "notice" => ?notice);
            return;
        }
        let last_index = raft.raft_log.last_index();
        let Some(pr) = raft.mut_prs().get_mut(from) else {
            return self.refuse_notice(from, term, notice, now);
        };
        match notice {
            Notice::LogEnds(index) if index > last_index => {
                self.refuse_notice(from, term, notice, now)
            }
            Notice::LogEnds(index) => {
                if index >= pr.matched || pr.state == raft::ProgressState::Snapshot {
                    return;
                }
                warn!(self.book.logger, "follower lost entries it had acknowledged; replicating them again";
                    "peer" => from, "acknowledged" => pr.matched, "log_ends_at" => index);
                bump(&self.book.shared.metrics.followers_lost_entries);
                pr.matched = index;
                pr.become_probe();
                raft.send_append(from);
            }
            Notice::SnapshotRefused(index) => {
                info!(self.book.logger, "follower refused the snapshot sent; sending a fresh one";
                    "peer" => from, "index" => index);
                self.book.snapshots_in_flight.remove(&from);
                self.raw.report_snapshot(from, SnapshotStatus::Failure);
            }
            Notice::Stopping | Notice::NotAMember(_) | Notice::Quiet(_) => {
                unreachable!("handled in `step`")
            }
        }
    }

    /// A member announced it is shutting down: leadership no longer goes to it, and a
    /// hand-over already aimed at it moves to another voter (or, for a caller's
    /// transfer, fails).
    fn on_stopping(&mut self, from: u64) {
        if self.raw.raft.prs().get(from).is_none() {
            return;
        }
        info!(self.book.logger, "peer is shutting down"; "peer" => from);
        self.book.peers.stopping(from, self.ticks);
        if !self.is_leader() || self.raw.raft.lead_transferee != Some(from) {
            return;
        }
        self.raw.raft.abort_leader_transfer();
        let mut i = 0;
        while i < self.transfers.len() {
            if self.transfers[i].to == from {
                let t = self.transfers.swap_remove(i);
                self.book.host.transfer_done(
                    t.token,
                    Err(MembershipError::Invalid(format!(
                        "cannot transfer leadership to node {from}: it is shutting down"
                    ))),
                );
            } else {
                i += 1;
            }
        }
        if matches!(self.phase, Phase::Leaving(_)) {
            match self.best_transfer_target() {
                Some(to) => {
                    info!(self.book.logger, "shutting down: transferring leadership to another voter";
                        "to" => to);
                    self.raw.transfer_leader(to);
                }
                None => self.phase = Phase::Exit,
            }
        }
    }

    /// The leader `from` of `term` goes quiet with its log committed up to `commit`: a
    /// follower that holds exactly that log, committed and applied, goes quiet too. A
    /// follower behind it stays awake; its election timer then wakes the group.
    fn on_quiet(&mut self, from: u64, term: u64, commit: u64) {
        let raft = &self.raw.raft;
        let caught_up = raft.state == StateRole::Follower
            && raft.leader_id == from
            && raft.term == term
            && raft.raft_log.committed == commit
            && raft.raft_log.last_index() == commit
            && raft.raft_log.applied == commit;
        if caught_up && self.config.quiesce_after_timeouts > 0 && self.phase == Phase::Running {
            debug!(self.book.logger, "group goes quiet"; "leader" => from, "commit" => commit);
            self.quiet = true;
            bump(&self.book.shared.metrics.quiesced);
        }
    }

    /// Ends quiescence: the group ticks again. Called for every input but the notices
    /// that need no answer.
    ///
    /// A message alone does not make the group busy (heartbeat responses arrive all the
    /// time): `maybe_quiesce` judges idleness from the group's state on every tick.
    fn wake(&mut self) {
        if self.quiet {
            debug!(self.book.logger, "group wakes");
            self.quiet = false;
            self.idle_ticks = 0;
        }
    }

    /// A request from this node's host (a proposal, a read, a membership change or a
    /// transfer) wakes a quiet group, also on a follower: it is how a quiet group
    /// whose leader died notices, since a dead leader sends nothing.
    /// A request is activity: the idle count starts again (a stream of lease reads,
    /// served from the lease without a trace in the group's state, keeps it awake).
    fn wake_for_request(&mut self) {
        if !self.faults.quiet_wakes_only_on_messages() {
            self.wake();
            self.idle_ticks = 0;
        }
    }

    /// Whether the group is quiet on this node: no ticks until an input wakes it.
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Once per tick on a leader: counts the ticks with nothing to do, and after
    /// `quiesce_after_timeouts` election timeouts of them tells every member the group
    /// goes quiet, and goes quiet itself.
    fn maybe_quiesce(&mut self) {
        let after = self.config.quiesce_after_timeouts as u64;
        if after == 0 {
            return;
        }
        if !self.is_idle_leader() {
            self.idle_ticks = 0;
            return;
        }
        self.idle_ticks += 1;
        if self.idle_ticks < after * self.config.election_ticks as u64 {
            return;
        }
        if !self.raw.raft.msgs.is_empty() {
            // This tick's heartbeats would follow the notices and wake the followers
            // again: go quiet on a tick that sends nothing else.
            return;
        }
        let raft = &self.raw.raft;
        let (id, term, commit) = (self.book.id, raft.term, raft.raft_log.committed);
        let notices: Vec<Message> = raft
            .prs()
            .iter()
            .map(|(peer, _)| *peer)
            .filter(|peer| *peer != id)
            .map(|peer| crate::notice::quiet(id, peer, term, commit))
            .collect();
        debug!(self.book.logger, "group goes quiet"; "commit" => commit);
        Outbox::<M::Response>::send(&mut self.book, notices);
        if self.faults.lease_kept_while_quiet() {
            // The bug: "the followers are quiet, none will campaign", so the lease is
            // stretched over the quiet time. A follower woken by a client does campaign.
            self.lease.until = Some((self.book.now + Duration::from_secs(3600), term));
        }
        self.quiet = true;
        bump(&self.book.shared.metrics.quiesced);
    }

    /// Whether `m`, arriving at a quiet leader, is only a follower's late answer that
    /// changes nothing: a heartbeat response, or an accepting append response, in this
    /// term, from a member that already holds the whole log, with no read context.
    fn is_idle_echo(&self, m: &Message) -> bool {
        let raft = &self.raw.raft;
        let answer = match m.get_msg_type() {
            MessageType::MsgHeartbeatResponse => m.context.is_empty(),
            MessageType::MsgAppendResponse => !m.reject,
            _ => false,
        };
        let last = raft.raft_log.last_index();
        self.quiet
            && answer
            && raft.state == StateRole::Leader
            && m.term == raft.term
            && raft.prs().get(m.from).is_some_and(|pr| pr.matched == last)
    }

    /// A leader with nothing to do: nothing queued or waiting, no transfer, membership
    /// change or snapshot under way, and every member holding its whole log, committed
    /// and applied here.
    fn is_idle_leader(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        raft.state == StateRole::Leader
            && self.phase == Phase::Running
            && self.batch.is_empty()
            && self.book.pending.len() == 0
            && self.reads.is_empty()
            && self.ready_reads.is_empty()
            && self.token_reads.is_empty()
            && self.transfers.is_empty()
            && self.growth.is_none()
            && raft.lead_transferee.is_none()
            && self.book.snapshots_in_flight.is_empty()
            && raft.raft_log.committed == last
            && raft.raft_log.applied == last
            && raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
            && raft.prs().iter().all(|(_, pr)| pr.matched == last)
    }

    /// A peer says this node is not in its configuration as of its applied index.
    ///
    /// Counted only on a node that has heard from no leader for three election timeouts
    /// and started an election since: a node a leader replicates to is a member whatever
    /// anyone says, and one that missed its removal never hears from a leader again.
    /// A leader that replicates to it later clears the belief (see `step`).
    fn on_not_a_member(&mut self, from: u64, their_applied: u64) {
        let learnt_from_log = self.book.removed && self.removal.is_none();
        if learnt_from_log || self.faults.removal_notice_ignored() {
            return;
        }
        let timeout = self.config.election_ticks;
        let campaigned =
            self.elections.since_stable_leader > self.removal.map_or(0, |r| r.elections);
        let leaderless = !self.is_leader() && self.leader_silent_ticks >= 3 * timeout && campaigned;
        if !leaderless {
            return;
        }
        let voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        let applied = self.raw.raft.raft_log.applied;
        if self
            .book
            .peers
            .removal_vote(from, their_applied, applied, &voters)
        {
            if self.removal.is_none() {
                warn!(self.book.logger, "this node was removed from the group (a majority of its voters say so; it missed the commit)";
                    "applied" => applied, "voters" => ?voters);
            }
            self.book.removed = true;
            self.removal = Some(PeerRemoval {
                recheck_at: self.ticks + REMOVAL_RECHECK_TIMEOUTS * timeout as u64,
                elections: self.elections.since_stable_leader,
            });
        }
    }

    /// Voter `from` sent, at `term`, what members send only to a node they count as a
    /// member: its "not a member" is taken back, and the belief ends once a majority no
    /// longer says so.
    fn member_evidence(&mut self, from: u64, term: u64) {
        let voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        if !voters.contains(&from) || !self.book.peers.revoke_removal_vote(from) {
            return;
        }
        let applied = self.raw.raft.raft_log.applied;
        if !self.book.peers.removal_confirmed(applied, &voters) {
            warn!(self.book.logger, "a voter treats this node as a member: it was not removed";
                "peer" => from, "term" => term);
            self.end_removal();
        }
    }

    /// This node is a member after all: it reports so and campaigns again.
    fn end_removal(&mut self) {
        self.removal = None;
        self.book.removed = false;
        self.book.peers.clear_removal_votes();
    }

    /// Answers a message from `from`, which is not in this node's configuration, with
    /// a "not a member" notice when it is one a node that missed its removal sends
    /// (a bounded number per tick).
    fn tell_not_a_member(&mut self, from: u64, msg_type: MessageType) {
        let asks = matches!(
            msg_type,
            MessageType::MsgRequestPreVote
                | MessageType::MsgRequestVote
                | MessageType::MsgAppendResponse
                | MessageType::MsgHeartbeatResponse
        );
        let id = self.book.id;
        if !asks
            || self.raw.raft.prs().get(id).is_none()
            || !self.book.peers.take_notice_allowance()
        {
            return;
        }
        let raft = &self.raw.raft;
        let notice = crate::notice::not_a_member(id, from, raft.term, raft.raft_log.applied);
        debug!(self.book.logger, "telling a non-member it is not one"; "to" => from);
        Outbox::<M::Response>::send(&mut self.book, vec![notice]);
    }

    fn refuse_notice(&mut self, from: u64, term: u64, notice: Notice, now: Instant) {
        let id = self.book.id;
        let m = match notice {
            Notice::LogEnds(i) => crate::notice::log_ends(from, id, term, i),
            Notice::SnapshotRefused(i) => crate::notice::snapshot_refused(from, id, term, i),
            Notice::Stopping => crate::notice::stopping(from, id, term),
            Notice::NotAMember(i) => crate::notice::not_a_member(from, id, term, i),
            Notice::Quiet(i) => crate::notice::quiet(from, id, term, i),
        };
        self.refuse(Refusal::BadNotice, &m, now);
    }

    /// With leases on, a node that just started refuses (pre-)votes for an election
    /// timeout: before its restart it may have answered a leader's quorum round, and
    /// the leader's lease counts on it not voting for anyone else until an election
    /// timeout after that answer. A forced campaign (leadership transfer) is exempt.
    fn holds_vote_after_restart(&self, m: &Message) -> bool {
        self.config.lease_reads
            && self.ticks < self.config.election_ticks as u64
            && matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
            && m.term > self.raw.raft.term
            && m.context.as_ref() != raft::CAMPAIGN_TRANSFER
    }

    /// A transfer raft started (ours, or one a follower forwarded) voids the lease for
    /// the rest of the term.
    fn note_transfer(&mut self) {
        if self.raw.raft.lead_transferee.is_some() {
            self.lease.void_term = self.raw.raft.term;
        }
    }

    pub(crate) fn report_unreachable(&mut self, peer: u64) {
        // A member's suspicion wakes a quiet group: its leader may be gone.
        self.wake();
        if self.raw.raft.prs().get(peer).is_some() {
            self.book.peers.unreachable(peer);
        }
        self.raw.report_unreachable(peer);
    }

    /// The transport's report on a snapshot sent to `peer`; ignored unless one is in
    /// flight (a late report after the replica's own timeout would confuse raft).
    pub(crate) fn report_snapshot(&mut self, peer: u64, status: SnapshotStatus) {
        self.wake();
        if self.book.snapshots_in_flight.remove(&peer).is_some() {
            self.raw.report_snapshot(peer, status);
        }
    }

    /// Queues a command for the next batch, or refuses it at once. `proposed_at` is
    /// when the caller proposed it, for the lifecycle timing (`None`: not timed).
    pub(crate) fn propose(
        &mut self,
        data: Bytes,
        token: H::Propose,
        proposed_at: Option<crate::timing::Tick>,
    ) {
        // Also on a follower: a client's request is what lets a quiet group notice a
        // dead leader (its election timer runs again).
        self.wake_for_request();
        if !self.is_leader() || self.phase != Phase::Running {
            let err = self.refusal();
            bump(&self.book.shared.metrics.proposals_failed);
            return self.book.host.proposed(token, Err(err));
        }
        if proposed_at.is_some() && self.book.timing.is_none() {
            self.book.timing = Some(Timing::new(self.config.slow_proposal, self.batch.len()));
        }
        if let Some(timing) = &mut self.book.timing {
            timing.queued(proposed_at);
        }
        let mut entry = Entry::default();
        entry.data = data;
        self.batch.push(entry);
        self.batch_tokens.push(token);
    }

    fn refusal(&self) -> ProposeError {
        if self.phase == Phase::Running {
            ProposeError::NotLeader {
                leader: self.leader_hint(),
            }
        } else {
            ProposeError::Dropped
        }
    }

    /// Proposes everything queued as one `MsgPropose`, and registers one waiter per
    /// entry at `(index, term)` read right after (docs/ready-loop.md, "Proposals").
    pub(crate) fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.batch);
        let tokens = std::mem::take(&mut self.batch_tokens);
        let metrics = &self.book.shared.metrics;
        if !self.is_leader() || self.phase != Phase::Running {
            if let Some(timing) = &mut self.book.timing {
                timing.batch_refused();
            }
            let err = self.refusal();
            metrics
                .proposals_failed
                .fetch_add(tokens.len() as u64, Ordering::Relaxed);
            for t in tokens {
                self.book.host.proposed(t, Err(err.clone()));
            }
            return;
        }
        let n = entries.len() as u64;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.book.id;
        m.set_entries(entries.into());
        match self.raw.step(m) {
            Ok(()) => {
                metrics.proposals.fetch_add(n, Ordering::Relaxed);
                bump(&metrics.proposal_batches);
                let last = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                for (i, t) in (last + 1 - n..).zip(tokens) {
                    self.book.pending.push(i, term, Waiter::Command(t));
                }
                if let Some(timing) = &mut self.book.timing {
                    timing.proposed(last + 1 - n, term);
                }
            }
            Err(e) => {
                if let Some(timing) = &mut self.book.timing {
                    timing.batch_refused();
                }
                debug!(self.book.logger, "proposals dropped by raft"; "count" => n, "error" => %e);
                metrics.proposals_failed.fetch_add(n, Ordering::Relaxed);
                for t in tokens {
                    self.book.host.proposed(t, Err(ProposeError::Dropped));
                }
            }
        }
    }

    /// Proposes a membership change after checking it against the current
    /// configuration. The nodes in `joining` (voters the change adds) first join as
    /// learners, and the change itself is proposed only once each of them has caught up
    /// (`Config::catch_up_lag`), before `deadline`; an empty `joining` proposes at once.
    pub(crate) fn propose_conf_change(
        &mut self,
        cc: ConfChangeV2,
        joining: Vec<u64>,
        deadline: Instant,
        token: H::ConfChange,
    ) {
        self.wake_for_request();
        if let Err(e) = self.check_conf_change(&cc) {
            return self.book.host.conf_change_done(token, Err(e));
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        // Only voters this change adds can be caught up first; a voter already is one.
        let mut joining: Vec<u64> = joining
            .into_iter()
            .filter(|id| {
                !conf.voters.contains(id)
                    && cc
                        .get_changes()
                        .iter()
                        .any(|c| c.node_id == *id && c.get_change_type() == ConfChangeType::AddNode)
            })
            .collect();
        joining.dedup();
        if joining.is_empty() || self.faults.promote_without_catch_up() {
            return self.append_conf_change(cc, token);
        }
        let new: Vec<u64> = joining
            .iter()
            .copied()
            .filter(|id| !conf.learners.contains(id))
            .collect();
        let learners_at = if new.is_empty() {
            None
        } else {
            let changes: Vec<MembershipChange> = new
                .iter()
                .map(|id| MembershipChange::AddLearner(*id))
                .collect();
            let learners = crate::membership::build(&changes, cc.context.clone());
            match self.append(learners) {
                Ok(index) => Some(index),
                Err(e) => return self.book.host.conf_change_done(token, Err(e)),
            }
        };
        info!(self.book.logger, "adding voters as learners until they catch up";
            "joining" => ?joining, "learners_at" => ?learners_at);
        self.growth = Some(Box::new(Growth {
            change: cc,
            joining,
            learners_at,
            term: self.raw.raft.term,
            deadline,
            token,
        }));
    }

    /// Why a membership change cannot be proposed now, if it cannot.
    fn check_conf_change(&self, cc: &ConfChangeV2) -> Result<(), MembershipError> {
        if !(self.raw.raft.state == StateRole::Leader) || self.phase != Phase::Running {
            let leader = self.leader_hint();
            return Err(MembershipError::NotLeader { leader });
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        crate::membership::validate_change(cc, &conf)?;
        if let Some(g) = &self.growth {
            return Err(MembershipError::Rejected(format!(
                "an earlier change is waiting for node {:?} to catch up",
                g.joining
            )));
        }
        if self.raw.raft.has_pending_conf() {
            return Err(MembershipError::Rejected(
                "another membership change is still pending".into(),
            ));
        }
        if !conf.voters_outgoing.is_empty() && !cc.changes.is_empty() {
            return Err(MembershipError::Rejected(
                "the group is in a joint configuration; it must leave it first".into(),
            ));
        }
        Ok(())
    }

    /// Appends a checked change; the caller's waiter completes when it applies.
    fn append_conf_change(&mut self, cc: ConfChangeV2, token: H::ConfChange) {
        match self.append(cc) {
            Ok(index) => {
                let term = self.raw.raft.term;
                self.book
                    .pending
                    .push(index, term, Waiter::ConfChange(token));
            }
            Err(e) => self.book.host.conf_change_done(token, Err(e)),
        }
    }

    /// Appends a checked change to the log and returns its index.
    fn append(&mut self, cc: ConfChangeV2) -> Result<u64, MembershipError> {
        // Flush queued commands first so waiters stay in index order.
        self.flush_proposals();
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| MembershipError::Rejected(e.to_string()))?;
        let last = self.raw.raft.raft_log.last_index();
        // raft turns a refused change into an empty normal entry.
        let refused = self
            .raw
            .raft
            .raft_log
            .unstable_entries()
            .last()
            .is_some_and(|e| e.index == last && e.get_entry_type() == EntryType::EntryNormal);
        if refused {
            return Err(MembershipError::Rejected(
                "raft refused the change (pending change or joint state)".into(),
            ));
        }
        Ok(last)
    }

    /// Moves a pending addition of voters on: fails it when leadership or the deadline
    /// is gone, and proposes the change once every joining learner has caught up.
    fn check_growth(&mut self, now: Instant) {
        let Some(g) = &self.growth else {
            return;
        };
        let raft = &self.raw.raft;
        let applied = raft.raft_log.applied;
        let learners_pending = g.learners_at.is_some_and(|at| applied < at);
        let failure = if raft.state != StateRole::Leader || raft.term != g.term {
            Some(match g.learners_at {
                Some(index) if learners_pending => MembershipError::OutcomeUnknown { index },
                _ => MembershipError::NotLeader {
                    leader: self.leader_hint(),
                },
            })
        } else if g.deadline <= now {
            let commit = raft.raft_log.committed;
            let (id, matched) = g
                .joining
                .iter()
                .map(|id| (*id, raft.prs().get(*id).map_or(0, |pr| pr.matched)))
                .min_by_key(|(_, matched)| *matched)
                .unwrap_or((0, 0));
            Some(MembershipError::CatchUpTimeout {
                id,
                matched,
                commit,
            })
        } else {
            None
        };
        if let Some(e) = failure {
            warn!(self.book.logger, "adding voters failed"; "joining" => ?g.joining, "error" => %e);
            let g = self.growth.take().expect("checked above");
            return self.book.host.conf_change_done(g.token, Err(e));
        }
        if learners_pending
            || raft.has_pending_conf()
            || !raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
        {
            return;
        }
        let lag = self.config.catch_up_lag;
        let commit = raft.raft_log.committed;
        let caught_up = g.joining.iter().all(|id| {
            raft.prs().get(*id).is_some_and(|pr| {
                pr.state == raft::ProgressState::Replicate
                    && pr.matched.saturating_add(lag) >= commit
            })
        });
        if !caught_up {
            return;
        }
        let g = self.growth.take().expect("checked above");
        info!(self.book.logger, "joining learners caught up; promoting"; "joining" => ?g.joining);
        match self.check_conf_change(&g.change) {
            Ok(()) => self.append_conf_change(g.change, g.token),
            Err(e) => self.book.host.conf_change_done(g.token, Err(e)),
        }
    }

    /// Starts a read at `consistency` (docs/reads.md).
    pub(crate) fn read(
        &mut self,
        consistency: ReadConsistency,
        deadline: Instant,
        token: H::Read,
        now: Instant,
    ) {
        self.book.now = now;
        self.wake_for_request();
        match consistency {
            ReadConsistency::Stale => self.serve(token),
            ReadConsistency::AtLeast(write) => {
                let applied = self.raw.raft.raft_log.applied;
                if write.index() <= applied || self.faults.token_read_without_wait() {
                    return self.serve(token);
                }
                let seq = self.next_seq();
                self.token_reads
                    .insert((write.index(), seq), (deadline, token));
            }
            ReadConsistency::Lease => {
                if !self.config.lease_reads {
                    return self
                        .book
                        .host
                        .read_done(token, Err(ReadError::LeaseNotEnabled));
                }
                if !self.is_leader() {
                    let leader = self.leader_hint();
                    return self
                        .book
                        .host
                        .read_done(token, Err(ReadError::NotLeader { leader }));
                }
                if self.faults.read_without_read_index() {
                    return self.serve(token);
                }
                self.lease.last_wanted = Some(now);
                if self.lease_holds(now) {
                    // No other leader can exist now, so every write acknowledged so far
                    // is at or below our commit index: serve once applied reaches it.
                    let index = self.raw.raft.raft_log.committed;
                    let seq = self.next_seq();
                    self.ready_reads.insert((index, seq), token);
                } else {
                    self.start_read_index(deadline, token, now);
                }
            }
            ReadConsistency::Linearizable => {
                if self.faults.read_without_read_index() && self.is_leader() {
                    return self.serve(token);
                }
                self.start_read_index(deadline, token, now);
            }
        }
    }

    /// Whether this leader's lease provably holds at `now` (see [`Lease`]).
    fn lease_holds(&self, now: Instant) -> bool {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        raft.state == StateRole::Leader
            && self.lease.void_term != raft.term
            && raft.lead_transferee.is_none()
            && log.term(log.committed).ok() == Some(raft.term)
            && self
                .lease
                .until
                .is_some_and(|(until, term)| term == raft.term && now < until)
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.next_read_ctx;
        self.next_read_ctx += 1;
        seq
    }

    fn start_read_index(&mut self, deadline: Instant, token: H::Read, now: Instant) {
        let seq = self.issue_round(now);
        self.reads.insert(seq, PendingRead { deadline, token });
    }

    /// Starts a ReadIndex round; a leader remembers when it was sent, for the lease.
    fn issue_round(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq();
        if self.config.lease_reads && self.is_leader() {
            self.lease.rounds.insert(seq, (now, self.raw.raft.term));
        }
        self.raw
            .read_index(read_ctx(self.book.id, self.book.incarnation, seq));
        seq
    }

    fn serve(&mut self, token: H::Read) {
        bump(&self.book.shared.metrics.reads_served);
        self.book.host.read_done(token, Ok(&self.sm));
    }

    /// Starts a leadership transfer to `to`.
    pub(crate) fn transfer_leader(&mut self, to: u64, deadline: Instant, token: H::Transfer) {
        self.wake_for_request();
        if !self.is_leader() {
            let leader = self.leader_hint();
            return self
                .book
                .host
                .transfer_done(token, Err(MembershipError::NotLeader { leader }));
        }
        if to == self.book.id {
            return self.book.host.transfer_done(token, Ok(()));
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if !conf.voters.contains(&to) {
            let what = if conf.learners.contains(&to) {
                "is a learner; promote it first"
            } else {
                "is not a member"
            };
            return self.book.host.transfer_done(
                token,
                Err(MembershipError::Invalid(format!(
                    "cannot transfer leadership to node {to}: it {what}"
                ))),
            );
        }
        if let Some(why) = self.why_not_lead(to) {
            return self.book.host.transfer_done(
                token,
                Err(MembershipError::Invalid(format!(
                    "cannot transfer leadership to node {to}: it {why}"
                ))),
            );
        }
        info!(self.book.logger, "transferring leadership"; "to" => to);
        self.lease.void_term = self.raw.raft.term;
        self.raw.transfer_leader(to);
        self.rerandomize();
        self.transfers.push(Transfer {
            to,
            deadline,
            token,
        });
    }

    /// Starts an election now.
    pub(crate) fn campaign(&mut self) {
        self.wake();
        if let Err(e) = self.raw.campaign() {
            warn!(self.book.logger, "campaign refused"; "error" => %e);
        }
        self.rerandomize();
    }

    /// Begins shutting down: a graceful shutdown of a leader hands leadership over
    /// first (until `shutdown_transfer_timeout`); anything else ends at once.
    pub(crate) fn begin_shutdown(&mut self, graceful: bool, now: Instant) {
        self.wake();
        if graceful {
            self.announce_stopping();
        }
        if !graceful || !self.is_leader() {
            self.phase = Phase::Exit;
            return;
        }
        match self.best_transfer_target() {
            Some(to) => {
                info!(self.book.logger, "shutting down: transferring leadership first"; "to" => to);
                self.lease.void_term = self.raw.raft.term;
                self.raw.transfer_leader(to);
                self.phase = Phase::Leaving(now + self.config.shutdown_transfer_timeout);
            }
            None => self.phase = Phase::Exit,
        }
    }

    /// Tells every other member this node is going, so no leader hands it leadership.
    /// Best effort: a notice the network loses leaves the peer to notice the silence.
    fn announce_stopping(&mut self) {
        let (id, term) = (self.book.id, self.raw.raft.term);
        let notices: Vec<Message> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(peer, _)| *peer)
            .filter(|peer| *peer != id)
            .map(|peer| crate::notice::stopping(id, peer, term))
            .collect();
        Outbox::<M::Response>::send(&mut self.book, notices);
    }

    /// Why leadership may not go to voter `to` now; `None` when it may: it was heard
    /// from within an election timeout, was not reported unreachable since and did not
    /// announce it is stopping ([`PeerWatch`]).
    fn why_not_lead(&self, to: u64) -> Option<&'static str> {
        if self.faults.transfer_to_any_voter() {
            return None;
        }
        let window = self.config.election_ticks as u64;
        self.book
            .peers
            .why_not_lead(to, self.ticks, window, STOPPING_WINDOW_TIMEOUTS * window)
    }

    /// The most up-to-date voter other than this node that may lead
    /// ([`Replica::why_not_lead`]): the one a hand-over goes to.
    fn best_transfer_target(&self) -> Option<u64> {
        let prs = self.raw.raft.prs();
        prs.iter()
            .filter(|(id, _)| **id != self.book.id && prs.conf().voters().contains(**id))
            .filter(|(id, _)| self.why_not_lead(**id).is_none())
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Takes a snapshot now, if anything was applied since the last one.
    ///
    /// # Errors
    ///
    /// As `driver::take_snapshot`: the node must stop.
    pub(crate) fn snapshot_now(&mut self) -> Result<Option<u64>, DriverError> {
        let taken = driver::take_snapshot(
            &mut self.raw,
            &self.sm,
            self.config.snapshot.trailing_entries,
            self.faults,
            &self.book.members,
        )?;
        if let Some(index) = taken {
            self.last_snapshot_index = index;
            bump(&self.book.shared.metrics.snapshots_taken);
            info!(self.book.logger, "snapshot taken"; "index" => index,
                "first_index" => self.raw.store().first_index().unwrap_or(0));
        }
        Ok(taken)
    }

    /// One tick of raft's logical clock, and the chores that run at its pace.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.book.now = now;
        if self.quiet {
            // Quiescence: nothing runs until an input wakes the group.
            return;
        }
        self.book.peers.on_tick();
        // A node removed from the group stops campaigning. (One whose removal applied
        // here is no longer promotable; one that learnt it from its peers still is, and
        // campaigns again after a while to hear them anew: see `PeerRemoval`.)
        match self.removal {
            Some(r) if self.ticks < r.recheck_at || self.faults.removal_belief_final() => {}
            Some(r) => {
                if self.ticks == r.recheck_at {
                    info!(
                        self.book.logger,
                        "campaigning again to hear the voters that said this node was removed"
                    );
                    self.book.peers.clear_removal_votes();
                }
                self.tick_raft();
            }
            None => {
                self.tick_raft();
            }
        }
        self.ticks += 1;
        self.watch();
        self.leader_silent_ticks = self.leader_silent_ticks.saturating_add(1);
        self.publish_leader();
        self.housekeeping_due = true;
        self.note_transfer();
        self.rerandomize();
        // Reads past their deadline fail; the others are re-issued every heartbeat:
        // raft drops a ReadIndex silently with no leader or before the leader committed
        // in its term, and ignores a context that is still pending.
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(r) = self.reads.remove(&ctx) {
                self.book.host.read_done(r.token, Err(ReadError::Timeout));
            }
        }
        let late: Vec<(u64, u64)> = self
            .token_reads
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in late {
            if let Some((_, token)) = self.token_reads.remove(&key) {
                self.book.host.read_done(token, Err(ReadError::Timeout));
            }
        }
        if self
            .ticks
            .is_multiple_of(self.config.heartbeat_ticks as u64)
        {
            // One fresh round answers every read still waiting: they were all invoked
            // before it was sent. Never the old context again: a late acknowledgement
            // of its first round would confirm the second, and with it every request
            // queued before it, without a quorum having answered after they came.
            let reads = &self.reads;
            self.reissued
                .retain(|_, waiting| waiting.iter().any(|seq| reads.contains_key(seq)));
            if self.faults.read_ctx_reused() {
                let ctxs: Vec<u64> = self.reads.keys().copied().collect();
                for seq in ctxs {
                    let ctx = read_ctx(self.book.id, self.book.incarnation, seq);
                    self.raw.read_index(ctx);
                }
            } else if !self.reads.is_empty() {
                let waiting: Vec<u64> = self.reads.keys().copied().collect();
                let round = self.issue_round(now);
                self.reissued.insert(round, waiting);
            }
            self.renew_lease(now);
        }
        // Transfers: expired, or re-issued when raft gave up on the first try.
        let mut i = 0;
        while i < self.transfers.len() {
            if self.transfers[i].deadline <= now {
                let t = self.transfers.swap_remove(i);
                self.book
                    .host
                    .transfer_done(t.token, Err(MembershipError::Timeout));
            } else {
                if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
                    self.lease.void_term = self.raw.raft.term;
                    self.raw.transfer_leader(self.transfers[i].to);
                }
                i += 1;
            }
        }
        // Backstop for transports that never report on a snapshot.
        let overdue: Vec<u64> = self
            .book
            .snapshots_in_flight
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in overdue {
            warn!(self.book.logger, "no report on snapshot sent; reporting failure"; "peer" => peer);
            self.book.snapshots_in_flight.remove(&peer);
            self.raw.report_snapshot(peer, SnapshotStatus::Failure);
        }
        if let Phase::Leaving(deadline) = self.phase {
            if deadline <= now {
                warn!(
                    self.book.logger,
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
            let et = self.config.election_ticks as u64;
            if self.elections.leader_ticks >= et {
                self.elections.since_stable_leader = 0;
            }
            if self.elections.backoff > 1
                && self
                    .elections
                    .leader_ticks
                    .is_multiple_of(ELECTION_BACKOFF_STABLE_TIMEOUTS * et)
            {
                self.elections.backoff /= 2;
                info!(self.book.logger, "a leader lasted: shortening the election timeout";
                    "factor" => self.elections.backoff);
                self.set_backoff_metric();
            }
        }
        self.rerandomize();
        self.maybe_quiesce();
    }

    /// Counts an election this node started; each `election_storm_threshold` of them
    /// without a lasting leader doubles the election timeout range, up to
    /// `election_backoff_limit`.
    fn election_started(&mut self) {
        bump(&self.book.shared.metrics.elections_started);
        let e = &mut self.elections;
        e.since_stable_leader += 1;
        let threshold = self.config.election_storm_threshold;
        if e.since_stable_leader.is_multiple_of(threshold)
            && e.backoff < self.config.election_backoff_limit
        {
            e.backoff = (e.backoff * 2).min(self.config.election_backoff_limit);
            info!(self.book.logger, "election storm: lengthening the election timeout";
                "factor" => e.backoff, "elections" => e.since_stable_leader);
            self.set_backoff_metric();
        }
    }

    fn set_backoff_metric(&mut self) {
        // Draw again with the new range at the next chance.
        self.timeout_key = (u64::MAX, StateRole::Leader, u64::MAX);
        self.book
            .shared
            .metrics
            .election_backoff
            .store(self.elections.backoff as u64, Ordering::Relaxed);
    }

    /// Ticks raft, counting an election a (pre-)candidate starts again after its own
    /// timed out: its role does not change, so `on_soft_state_change` does not see it.
    fn tick_raft(&mut self) {
        let role = self.raw.raft.state;
        let campaigning = matches!(role, StateRole::PreCandidate | StateRole::Candidate);
        let elapsed = self.raw.raft.election_elapsed;
        self.raw.tick();
        let raft = &self.raw.raft;
        if campaigning && raft.state == role && elapsed > 0 && raft.election_elapsed == 0 {
            self.election_started();
        }
    }

    /// Notes this tick's state for diagnosis.
    fn watch(&mut self) {
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        let commit = raft.raft_log.committed;
        let snapshot_peers: Vec<u64> = if is_leader {
            raft.prs()
                .iter()
                .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        };
        let election_timeout = self.config.tick_interval * self.config.election_ticks as u32;
        let slowest = std::mem::take(&mut self.stats.slowest_sync);
        let slowest_apply = std::mem::take(&mut self.stats.slowest_apply);
        self.diag.on_tick(crate::diagnose::Observed {
            tick: self.ticks,
            election_ticks: self.config.election_ticks as u64,
            leader: raft.leader_id,
            is_leader,
            committed_in_term: raft.raft_log.term(commit).is_ok_and(|t| t == raft.term),
            joint: !raft.prs().conf().to_conf_state().voters_outgoing.is_empty(),
            commit,
            snapshot_peers: &snapshot_peers,
            slow_sync: (slowest > election_timeout / 4).then_some(slowest),
            slow_apply: (slowest_apply > election_timeout / 4).then_some(slowest_apply),
            busy: self
                .book
                .shared
                .metrics
                .requests_busy
                .load(Ordering::Relaxed),
        });
    }

    /// Keeps the lease warm while lease reads are asked for: one quorum round per
    /// heartbeat, and stale unconfirmed rounds forgotten.
    fn renew_lease(&mut self, now: Instant) {
        if !self.config.lease_reads {
            return;
        }
        let length = self.lease.length;
        self.lease
            .rounds
            .retain(|_, (sent, _)| now.saturating_duration_since(*sent) < length);
        let in_use = self
            .lease
            .last_wanted
            .is_some_and(|t| now.saturating_duration_since(t) < length);
        if in_use && self.is_leader() && self.lease.void_term != self.raw.raft.term {
            self.issue_round(now);
        }
    }

    /// Handles every Ready, then the follow-ups: role changes, reads, transfers,
    /// snapshots.
    ///
    /// # Errors
    ///
    /// A [`DriverError`] means the node must stop.
    pub(crate) fn drive(&mut self, now: Instant) -> Result<(), DriverError> {
        self.book.now = now;
        // Before the Ready: a promotion it proposes leaves in this one.
        self.check_growth(now);
        self.flush_proposals();
        let driven = driver::drive(
            &mut self.raw,
            &mut self.sm,
            &mut self.book,
            &mut self.stats,
            self.faults,
        );
        let applying = std::mem::take(&mut self.stats.applying);
        self.stats.slowest_apply = self.stats.slowest_apply.max(applying);
        driven?;
        self.rerandomize();
        self.after_ready(now)
    }

    fn after_ready(&mut self, now: Instant) -> Result<(), DriverError> {
        if self.book.ss_changed {
            self.book.ss_changed = false;
            self.on_soft_state_change();
        }
        if !self.book.confirmed_reads.is_empty() {
            for (ctx, index) in std::mem::take(&mut self.book.confirmed_reads) {
                self.on_round_confirmed(ctx, now);
                let answered = self.reissued.remove(&ctx).unwrap_or_default();
                for seq in answered.into_iter().chain([ctx]) {
                    if let Some(r) = self.reads.remove(&seq) {
                        self.ready_reads.insert((index, seq), r.token);
                    }
                }
            }
        }
        let applied = self.raw.raft.raft_log.applied;
        while let Some(entry) = self.ready_reads.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let token = entry.remove();
            self.serve(token);
        }
        while let Some(entry) = self.token_reads.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let (_, token) = entry.remove();
            self.serve(token);
        }
        if !self.transfers.is_empty() {
            // A transfer makes us step down before the new leader is known: keep waiting
            // until a leader is known (or the deadline passes).
            let leader = self.raw.raft.leader_id;
            let deposed = !self.is_leader() && leader != 0;
            let mut i = 0;
            while i < self.transfers.len() {
                if self.transfers[i].to == leader {
                    let t = self.transfers.swap_remove(i);
                    self.book.host.transfer_done(t.token, Ok(()));
                } else if deposed {
                    let t = self.transfers.swap_remove(i);
                    self.book.host.transfer_done(
                        t.token,
                        Err(MembershipError::NotLeader {
                            leader: Some(leader),
                        }),
                    );
                } else {
                    i += 1;
                }
            }
        }
        if matches!(self.phase, Phase::Leaving(_)) && !self.is_leader() {
            self.phase = Phase::Exit;
        }
        if !self.book.stale_snapshot_peers.is_empty() {
            self.replace_stale_snapshot()?;
        }
        if self.housekeeping_due {
            // Once per tick, off the per-Ready hot path: none of these is urgent.
            self.housekeeping_due = false;
            self.maybe_leave_joint();
        }
        self.maybe_checkpoint();
        let every = self.config.snapshot.every_applied;
        if every > 0 && applied >= self.last_snapshot_index + every {
            self.snapshot_now()?;
        }
        Ok(())
    }

    /// Divergence detection on a leader (docs/operations.md, "Divergence"): reports its
    /// digest at the checkpoint it just applied, and proposes the next checkpoint once
    /// `checkpoint_every` entries were applied since the last.
    fn maybe_checkpoint(&mut self) {
        let report = self
            .book
            .checkpoints
            .as_mut()
            .and_then(|c| c.report_due.take());
        let every = self.config.checkpoint_every;
        if every == 0 || !self.is_leader() || self.phase != Phase::Running {
            return;
        }
        let (id, term) = (self.book.id, self.raw.raft.term);
        if let Some((index, digest)) = report {
            self.propose_marker(Marker::Report {
                leader: id,
                index,
                digest,
            });
        }
        let applied = self.raw.raft.raft_log.applied;
        let due = self
            .book
            .checkpoints
            .as_ref()
            .is_none_or(|c| c.is_due(applied, term, every));
        if !due {
            return;
        }
        if let Some(index) = self.propose_marker(Marker::Checkpoint { leader: id }) {
            debug!(self.book.logger, "checkpoint proposed"; "index" => index);
            self.book
                .checkpoints
                .get_or_insert_with(Default::default)
                .proposed(index, term);
        }
    }

    /// Appends `marker` as an empty entry (the state machine sees `apply_noop`) and
    /// returns its index; `None` when raft dropped it (a transfer under way, the
    /// uncommitted limit reached): the next turn tries again.
    fn propose_marker(&mut self, marker: Marker) -> Option<u64> {
        // Queued commands first, so their waiters' indexes stay right.
        self.flush_proposals();
        match self.raw.propose(marker.encode(), Vec::new()) {
            Ok(()) => Some(self.raw.raft.raft_log.last_index()),
            Err(e) => {
                debug!(self.book.logger, "checkpoint marker dropped by raft";
                    "marker" => ?marker, "error" => %e);
                None
            }
        }
    }

    /// A quorum confirmed the round `ctx`: the lease now runs from when it was sent.
    fn on_round_confirmed(&mut self, ctx: u64, now: Instant) {
        let Some((sent, term)) = self.lease.rounds.remove(&ctx) else {
            return;
        };
        if term != self.raw.raft.term || !self.is_leader() {
            return;
        }
        // Rounds are released in order: every earlier one is answered by this one.
        self.lease.rounds.retain(|c, _| *c > ctx);
        let from = if self.faults.lease_from_receipt() {
            now
        } else {
            sent
        };
        let until = from + self.lease.length;
        let longer = match self.lease.until {
            Some((u, t)) if t == term => until > u,
            _ => true,
        };
        if longer {
            self.lease.until = Some((until, term));
        }
    }

    fn on_soft_state_change(&mut self) {
        let elected = self.is_leader() && self.elections.role != StateRole::Leader;
        if elected && self.removal.is_some() {
            // A majority voted for this node: they count it as a member.
            warn!(self.book.logger, "elected by a majority: this node was not removed";
                "term" => self.raw.raft.term);
            self.end_removal();
        }
        let (role, leader) = (self.raw.raft.state, self.raw.raft.leader_id);
        let was = self.elections.role;
        if role != was {
            let metrics = &self.book.shared.metrics;
            match role {
                StateRole::PreCandidate => self.election_started(),
                StateRole::Candidate if was != StateRole::PreCandidate => self.election_started(),
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
                warn!(self.book.logger, "election storm: elections keep starting without a stable leader";
                    "elections" => self.elections.since_stable_leader,
                    "hint" => "raise election_ticks or tick_interval, check the network");
            }
        }
        let metrics = &self.book.shared.metrics;
        if leader != self.elections.leader {
            bump(&metrics.leader_changes);
            self.elections.leader_ticks = 0;
        }
        let now = self.book.now;
        match (leader, self.elections.leaderless_since) {
            (0, None) => self.elections.leaderless_since = Some(now),
            (l, Some(since)) if l != 0 => {
                let us = now.saturating_duration_since(since).as_micros() as u64;
                metrics.last_election_us.store(us, Ordering::Relaxed);
                metrics.leaderless_us.fetch_add(us, Ordering::Relaxed);
                bump(&metrics.leaderless_gaps);
                self.elections.leaderless_since = None;
            }
            _ => {}
        }
        let raft = &self.raw.raft;
        info!(self.book.logger, "role changed";
            "role" => ?role, "term" => raft.term, "leader" => leader,
            "commit" => raft.raft_log.committed, "applied" => raft.raft_log.applied,
            "last_index" => raft.raft_log.last_index());
        self.publish_leader();
        if was == StateRole::Leader && role != StateRole::Leader {
            // Entries appended under our leadership may or may not commit now.
            self.book.fail_pending_unknown();
            self.lease.until = None;
            self.lease.rounds.clear();
        }
        self.elections.role = role;
        self.elections.leader = leader;
    }

    /// Raft chose to send a snapshot that predates some peer's membership (see
    /// [`Book::stale_snapshot_peers`]): take a fresh one, which holds the current
    /// membership, and report the unsent one as failed so raft sends the fresh one on
    /// its next probe.
    fn replace_stale_snapshot(&mut self) -> Result<(), DriverError> {
        let peers: Vec<u64> = std::mem::take(&mut self.book.stale_snapshot_peers)
            .into_iter()
            .collect();
        let taken = driver::replace_stale_snapshot(
            &mut self.raw,
            &self.sm,
            self.config.snapshot.trailing_entries,
            self.faults,
            &self.book.members,
            &peers,
        )?;
        if let Some(index) = taken {
            self.last_snapshot_index = index;
            bump(&self.book.shared.metrics.snapshots_taken);
            info!(self.book.logger, "stored snapshot predated a new member; took a fresh one";
                "peers" => ?peers, "index" => index);
        }
        Ok(())
    }

    /// A new leader that finds the group in a joint configuration leaves it itself:
    /// raft-rs only auto-leaves on the leader that applied the entering change
    /// (docs/membership.md).
    fn maybe_leave_joint(&mut self) {
        if !self.is_leader() || self.phase != Phase::Running {
            return;
        }
        let raft = &self.raw.raft;
        if raft.prs().conf().to_conf_state().voters_outgoing.is_empty() || raft.has_pending_conf() {
            return;
        }
        info!(
            self.book.logger,
            "leaving joint configuration left behind by the previous leader"
        );
        if let Err(e) = self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            warn!(self.book.logger, "proposing leave-joint failed"; "error" => %e);
        }
    }

    /// Takes back every token the replica holds without resolving it (the simulator's
    /// crash; the runtime lets them drop, which resolves them `Stopped`).
    #[cfg(feature = "testing")]
    pub(crate) fn take_all_tokens(&mut self) -> Tokens<M, H> {
        let mut tokens = Tokens {
            proposals: std::mem::take(&mut self.batch_tokens),
            conf_changes: Vec::new(),
            reads: Vec::new(),
        };
        self.batch.clear();
        self.book.timing = None;
        tokens
            .conf_changes
            .extend(self.growth.take().map(|g| g.token));
        for w in self.book.pending.take_all() {
            match w {
                Waiter::Command(t) => tokens.proposals.push(t),
                Waiter::ConfChange(t) => tokens.conf_changes.push(t),
            }
        }
        self.reissued.clear();
        tokens.reads.extend(
            std::mem::take(&mut self.reads)
                .into_values()
                .map(|r| r.token),
        );
        tokens
            .reads
            .extend(std::mem::take(&mut self.ready_reads).into_values());
        tokens.reads.extend(
            std::mem::take(&mut self.token_reads)
                .into_values()
                .map(|(_, token)| token),
        );
        tokens
    }

    /// A point-in-time view of this replica.
    pub(crate) fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let mut progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    matched: pr.matched,
                    next_index: pr.next_idx,
                    state: pr.state.into(),
                    is_learner: cs.learners.contains(id),
                    recent_active: pr.recent_active,
                })
                .collect::<Vec<_>>()
        } else {
            Vec::new()
        };
        progress.sort_by_key(|p| p.id);
        let learners: Vec<(u64, u64)> = progress
            .iter()
            .filter(|p| p.is_learner)
            .map(|p| (p.id, p.matched))
            .collect();
        let mut voters_all: Vec<u64> = cs.voters.clone();
        voters_all.extend(cs.voters_outgoing.iter().filter(|v| !cs.voters.contains(v)));
        let store = self.raw.store();
        let divergence = self.book.checkpoints.as_ref().and_then(|c| c.first.clone());
        let mut findings = self.diag.findings(&crate::diagnose::Context {
            tick: self.ticks,
            tick_interval: self.config.tick_interval,
            election_ticks: self.config.election_ticks as u64,
            elections: self.elections.since_stable_leader,
            storm_threshold: self.config.election_storm_threshold,
            max_pending_requests: self.config.max_pending_requests,
            voters: &cs.voters,
            voters_outgoing: &cs.voters_outgoing,
            silent: &self.book.peers.silent(
                &voters_all,
                self.book.id,
                self.ticks,
                self.config.election_ticks as u64,
            ),
            learners: &learners,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
        });
        if let Some(d) = &divergence {
            findings.push(crate::diagnose::diverged(d));
        }
        Status {
            id: self.book.id,
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
            voters: sorted(&cs.voters),
            voters_outgoing: sorted(&cs.voters_outgoing),
            learners: sorted(&cs.learners),
            progress,
            removed: self.book.removed,
            quiet: self.quiet,
            metrics: self.book.shared.metrics.snapshot(&self.stats),
            findings,
            divergence,
            proposal_timing: self
                .book
                .timing
                .as_ref()
                .map(|t| t.summary())
                .unwrap_or_default(),
        }
    }
}

/// `ids` in increasing order (raft-rs keeps members in hash order).
fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Tokens taken back from a crashed replica.
#[cfg(feature = "testing")]
pub(crate) struct Tokens<M: StateMachine, H: Host<M>> {
    pub(crate) proposals: Vec<H::Propose>,
    pub(crate) conf_changes: Vec<H::ConfChange>,
    pub(crate) reads: Vec<H::Read>,
}

/// A ReadIndex context never used before in the cluster: node id, incarnation, round.
///
/// raft-rs matches acknowledgements to rounds by context alone, and a confirmed round
/// releases every request queued before it. A context used twice (by two nodes, by one
/// node before and after a restart, or for a retry) lets a late acknowledgement of the
/// first use confirm the second: a read served without a quorum having answered after
/// it arrived, which the simulator caught as a stale read.
fn read_ctx(id: u64, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(READ_CTX_LEN);
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx.extend_from_slice(&incarnation.to_le_bytes());
    ctx.extend_from_slice(&seq.to_le_bytes());
    ctx
}

/// Length of a [`read_ctx`]; the peer-message checks (src/validate.rs) use it too.
pub(crate) const READ_CTX_LEN: usize = 24;

/// How many election timeouts a peer's "stopping" notice keeps leadership away from it.
/// Longer than the silence after which it is passed over anyway (one election timeout),
/// short enough that a node restarted at once is a candidate again soon.
const STOPPING_WINDOW_TIMEOUTS: u64 = 3;

/// Election timeouts a node that learnt its removal from its peers stops campaigning
/// for before it asks them again ([`PeerRemoval`]).
const REMOVAL_RECHECK_TIMEOUTS: u64 = 10;

/// Whether a member sends a message of this type only to a node it counts as a member
/// (so a "not a member" from the same sender is contradicted): requests and leader
/// traffic, not answers, which members send to anyone who asked.
fn speaks_to_a_member(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgAppend
            | MessageType::MsgHeartbeat
            | MessageType::MsgSnapshot
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestPreVote
            | MessageType::MsgTimeoutNow
    )
}

/// The round of a context this incarnation of node `id` made, if it did.
fn parse_read_ctx(id: u64, incarnation: u64, ctx: &[u8]) -> Option<u64> {
    if ctx.len() != READ_CTX_LEN
        || ctx[..8] != id.to_le_bytes()
        || ctx[8..16] != incarnation.to_le_bytes()
    {
        return None;
    }
    Some(u64::from_le_bytes(ctx[16..].try_into().ok()?))
}

/// An incarnation number for a node starting now: random, so that two starts of one
/// node (even in one process) differ. Drawn from the standard library's per-process
/// random hash keys, which need no extra dependency.
pub(crate) fn fresh_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The seed of the election timeout draw (`Elections::rng`) for a start with
/// `incarnation`: derived from it, so a recording that keeps the incarnation replays the
/// same draws (src/record.rs). Never zero (xorshift stays at zero).
fn election_seed(incarnation: u64) -> u64 {
    incarnation
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(31)
        | 1
}

/// The members' contexts a restarting node knows: the stored snapshot's member table,
/// then what the membership changes in the committed log after it carried; kept for
/// the current members only.
fn recover_members<S: LogStore>(raw: &RawNode<S>, logger: &Logger) -> MemberContexts {
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

#[cfg(test)]
mod tests {
    //! The core driven by hand: a three-voter group seen from node 1, with the other
    //! two voters' messages written by the test.
    use super::*;
    use crate::storage::MemLogStore;

    #[derive(Default)]
    struct Counter {
        applied: u64,
    }

    impl StateMachine for Counter {
        type Response = u64;
        fn apply(&mut self, index: u64, _: &[u8]) -> u64 {
            self.applied = index;
            index
        }
        fn apply_noop(&mut self, index: u64) {
            self.applied = index;
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn snapshot(&self) -> Result<Bytes, crate::error::StateMachineError> {
            Ok(Bytes::from(self.applied.to_le_bytes().to_vec()))
        }
        fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), crate::error::StateMachineError> {
            self.applied = index;
            Ok(())
        }
        fn digest(&self) -> Option<u64> {
            Some(digest_of(self.applied))
        }
    }

    fn digest_of(applied: u64) -> u64 {
        applied.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Records what the core hands out.
    #[derive(Default)]
    struct Recording {
        sent: Vec<Message>,
        proposed: Vec<(u32, Result<u64, ProposeError>)>,
    }

    impl Host<Counter> for Recording {
        type Propose = u32;
        type ConfChange = ();
        type Read = ();
        type Transfer = ();
        fn send(&mut self, messages: Vec<Message>) {
            self.sent.extend(messages);
        }
        fn add_peer(&mut self, _: u64, _: &[u8]) {}
        fn remove_peer(&mut self, _: u64) {}
        fn proposed(&mut self, token: u32, result: Result<(u64, WriteToken), ProposeError>) {
            self.proposed.push((token, result.map(|(r, _)| r)));
        }
        fn conf_change_done(&mut self, _: (), _: Result<ConfState, MembershipError>) {}
        fn read_done(&mut self, _: (), _: Result<&Counter, ReadError>) {}
        fn transfer_done(&mut self, _: (), _: Result<(), MembershipError>) {}
    }

    type Core = Replica<MemLogStore, Counter, Recording>;

    fn msg(t: MessageType, from: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = 1;
        m.term = term;
        m
    }

    /// Node 1 of voters 1, 2, 3, elected with node 2's votes, its term's no-op
    /// committed with node 2's acknowledgement.
    fn leader() -> (Core, Instant) {
        let mut config = Config::new(1);
        config.initial_voters = vec![1, 2, 3];
        let logger = Logger::root(slog::Discard, slog::o!());
        let mut store = MemLogStore::new();
        let mut sm = Counter::default();
        let applied = recover(&config, &mut store, &mut sm, &logger).unwrap();
        let now = Instant::now();
        let mut core = Replica::new(
            config,
            store,
            sm,
            applied,
            Recording::default(),
            Arc::new(Shared::new()),
            logger,
            Faults::default(),
            7,
            now,
        )
        .unwrap();
        core.drive(now).unwrap();
        core.campaign();
        core.drive(now).unwrap();
        // Pre-vote (when on), then the vote, both granted by node 2.
        for _ in 0..2 {
            let sent = std::mem::take(&mut core.host_mut().sent);
            let Some(ask) = sent.iter().find(|m| m.to == 2) else {
                break;
            };
            let kind = match ask.get_msg_type() {
                MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
                _ => MessageType::MsgRequestVoteResponse,
            };
            core.step(msg(kind, 2, ask.term), now);
            core.drive(now).unwrap();
        }
        assert!(core.is_leader(), "node 1 was not elected");
        acknowledge(&mut core, 2, now);
        let log = &core.raw().raft.raft_log;
        assert_eq!(
            log.committed,
            log.last_index(),
            "the no-op is not committed"
        );
        (core, now)
    }

    /// `from` acknowledges the leader's whole log.
    fn acknowledge(core: &mut Core, from: u64, now: Instant) {
        let term = core.raw().raft.term;
        let mut ack = msg(MessageType::MsgAppendResponse, from, term);
        ack.index = core.raw().raft.raft_log.last_index();
        core.step(ack, now);
        core.drive(now).unwrap();
    }

    /// Proves everything queued between two flushes goes to raft as one `MsgPropose`:
    /// ten commands, one batch, ten consecutive entries of one term.
    #[test]
    fn one_flush_is_one_msg_propose() {
        let (mut core, now) = leader();
        let before = core.raw().raft.raft_log.last_index();
        for token in 0..10 {
            core.propose(Bytes::from_static(b"x"), token, None);
        }
        core.flush_proposals();
        core.drive(now).unwrap();
        let metrics = &core.book.shared.metrics;
        assert_eq!(metrics.proposal_batches.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.proposals.load(Ordering::Relaxed), 10);
        assert_eq!(core.raw().raft.raft_log.last_index(), before + 10);
        acknowledge(&mut core, 2, now);
        let results = &core.host_mut().proposed;
        assert_eq!(results.len(), 10);
        for (k, (token, result)) in results.iter().enumerate() {
            assert_eq!(*token, k as u32);
            assert_eq!(
                *result,
                Ok(before + 1 + k as u64),
                "entries are consecutive"
            );
        }
    }

    /// Proves a leader that learns of a higher term while its entry is uncommitted
    /// reports `OutcomeUnknown`: the entry may still commit under the new leader.
    #[test]
    fn deposed_leader_reports_outcome_unknown() {
        let (mut core, now) = leader();
        core.propose(Bytes::from_static(b"x"), 1, None);
        core.flush_proposals();
        core.drive(now).unwrap();
        let term = core.raw().raft.term;
        let mut heartbeat = msg(MessageType::MsgHeartbeat, 3, term + 1);
        heartbeat.commit = 0;
        core.step(heartbeat, now);
        core.drive(now).unwrap();
        assert!(!core.is_leader());
        let results = &core.host_mut().proposed;
        assert!(
            matches!(results[..], [(1, Err(ProposeError::OutcomeUnknown { .. }))]),
            "{results:?}"
        );
    }

    /// Proves an entry overwritten by a new leader reports `Dropped` when the
    /// overwriting entry commits in the same Ready the leader learns of it: the
    /// entry at the waiter's index has another term, so it can never commit.
    #[test]
    fn overwritten_entry_reports_dropped() {
        let (mut core, now) = leader();
        let (index, term) = (core.raw().raft.raft_log.last_index(), core.raw().raft.term);
        core.propose(Bytes::from_static(b"doomed"), 1, None);
        core.flush_proposals();
        core.drive(now).unwrap();
        // Node 3, leader of the next term, replaces the entry at index + 1 with its
        // own no-op and says it is committed.
        let mut append = msg(MessageType::MsgAppend, 3, term + 1);
        append.index = index;
        append.log_term = term;
        append.commit = index + 1;
        let mut e = Entry::default();
        e.index = index + 1;
        e.term = term + 1;
        append.mut_entries().push(e);
        core.step(append, now);
        core.drive(now).unwrap();
        assert!(!core.is_leader());
        let results = &core.host_mut().proposed;
        assert!(
            matches!(results[..], [(1, Err(ProposeError::Dropped))]),
            "{results:?}"
        );
    }

    /// The checkpoint markers in node 1's log, in index order.
    fn markers(core: &Core) -> Vec<(u64, Marker)> {
        let log = &core.raw.raft.raft_log;
        log.entries(log.first_index(), None, GetEntriesContext::empty(false))
            .unwrap()
            .into_iter()
            .filter(|e| e.data.is_empty() && !e.context.is_empty())
            .map(|e| (e.index, Marker::parse(&e.context, e.index).unwrap()))
            .collect()
    }

    /// Acknowledges and drives until everything in node 1's log is applied.
    fn apply_all(core: &mut Core, now: Instant) {
        for _ in 0..8 {
            let log = &core.raw.raft.raft_log;
            if log.applied == log.last_index() {
                return;
            }
            acknowledge(core, 2, now);
        }
        panic!("the log was not applied");
    }

    /// Appends an empty entry with `context` as node 1 (leading) and applies it; returns
    /// its index.
    fn append_marker(core: &mut Core, context: Vec<u8>, now: Instant) -> Result<u64, DriverError> {
        core.raw.propose(context, Vec::new()).unwrap();
        let index = core.raw.raft.raft_log.last_index();
        for _ in 0..8 {
            if core.raw.raft.raft_log.applied >= index {
                return Ok(index);
            }
            let term = core.raw.raft.term;
            let mut ack = msg(MessageType::MsgAppendResponse, 2, term);
            ack.index = index;
            core.step(ack, now);
            core.drive(now)?;
        }
        panic!("the marker at {index} was not applied");
    }

    /// Proves the leader's side of divergence detection: once `checkpoint_every`
    /// entries were applied it appends a checkpoint, and once that applied it appends
    /// its digest there; the report applies everywhere and compares equal; no third
    /// marker follows (the markers alone never make the next checkpoint due).
    #[test]
    fn a_leader_checkpoints_every_interval_then_reports_its_digest_there() {
        let (mut core, now) = leader();
        core.config.checkpoint_every = 10;
        for i in 0..10 {
            core.propose(Bytes::from_static(b"x"), i, None);
        }
        core.drive(now).unwrap();
        apply_all(&mut core, now);
        let found = markers(&core);
        let [(c, checkpoint), (r, report)] = found[..] else {
            panic!("not a checkpoint and a report: {found:?}");
        };
        assert_eq!(checkpoint, Marker::Checkpoint { leader: 1 });
        assert_eq!(
            report,
            Marker::Report {
                leader: 1,
                index: c,
                digest: digest_of(c)
            }
        );
        assert_eq!(r, c + 1, "reported as soon as the checkpoint applied");
        assert!(c > 10, "due once 10 entries were applied");
        let metrics = core.status().metrics;
        assert_eq!((metrics.checkpoints_compared, metrics.divergences), (1, 0));
        core.drive(now).unwrap();
        assert_eq!(markers(&core).len(), 2, "no marker without new entries");
        assert_eq!(core.status().divergence, None);
    }

    /// Proves a replica compares a reported digest with its own at that checkpoint:
    /// a different one is a divergence naming the checkpoint, this replica and the
    /// reporting leader, in status and findings; with `stop_on_divergence` the drive
    /// fails with it (the node stops).
    #[test]
    fn a_report_that_disagrees_is_a_divergence_and_stops_only_when_asked() {
        let (mut core, now) = leader();
        let c = append_marker(&mut core, Marker::Checkpoint { leader: 2 }.encode(), now).unwrap();
        let lie = Marker::Report {
            leader: 2,
            index: c,
            digest: digest_of(c) ^ 1,
        };
        let r = append_marker(&mut core, lie.encode(), now).unwrap();
        let expected = Divergence {
            index: c,
            replica: 1,
            leader: 2,
            local_digest: digest_of(c),
            leader_digest: digest_of(c) ^ 1,
            reported_at: r,
        };
        let status = core.status();
        assert_eq!(status.divergence.as_ref(), Some(&expected));
        assert_eq!(
            (
                status.metrics.checkpoints_compared,
                status.metrics.divergences
            ),
            (1, 1)
        );
        let finding = status
            .findings
            .iter()
            .find(|f| f.kind == crate::diagnose::FindingKind::Diverged)
            .expect("a Diverged finding");
        assert!(finding.evidence.contains("replica 1's"), "{finding}");
        // An honest report agrees; the first divergence stays reported.
        let honest = Marker::Report {
            leader: 2,
            index: c,
            digest: digest_of(c),
        };
        append_marker(&mut core, honest.encode(), now).unwrap();
        assert_eq!(core.status().divergence.as_ref(), Some(&expected));
        assert_eq!(core.status().metrics.divergences, 1);
        core.book.stop_on_divergence = true;
        match append_marker(&mut core, lie.encode(), now) {
            Err(DriverError::Diverged(d)) => assert_eq!((d.index, d.replica, d.leader), (c, 1, 2)),
            other => panic!("the replica did not stop: {other:?}"),
        }
    }

    /// Bad input never crashes a node: empty entries whose contexts are not markers an
    /// honest leader writes (forged, or from a newer version) apply as no-ops, are
    /// counted and ignored; a well-formed report of a checkpoint this replica never saw
    /// is not compared.
    #[test]
    fn forged_checkpoint_contexts_are_counted_and_ignored() {
        let (mut core, now) = leader();
        let good = Marker::Report {
            leader: 2,
            index: 1,
            digest: 7,
        }
        .encode();
        let mut bad_kind = good.clone();
        bad_kind[8] = 0xee;
        let mut no_leader = good.clone();
        no_leader[9..17].fill(0);
        let forged: Vec<Vec<u8>> = vec![
            vec![1],
            vec![0; 33],
            [good.as_slice(), b"trailing"].concat(),
            bad_kind,
            no_leader,
            // A report of a checkpoint at its own index or later.
            Marker::Report {
                leader: 2,
                index: u64::MAX,
                digest: 0,
            }
            .encode(),
        ];
        let n = forged.len() as u64;
        for context in forged {
            append_marker(&mut core, context, now).unwrap();
        }
        // Well formed, but node 1 took no digest at index 1.
        append_marker(&mut core, good, now).unwrap();
        let status = core.status();
        assert_eq!(status.metrics.checkpoints_ignored, n);
        assert_eq!(status.metrics.checkpoints_compared, 0);
        assert_eq!(status.divergence, None);
        assert_eq!(status.role, Role::Leader);
        assert_eq!(status.applied, status.last_index, "every entry applied");
    }
}
