//! [`SimNode`]: one replica in the simulator. It is wiring only: the per-group core
//! ([`crate::replica::Replica`], the one the runtime thread drives) decides everything;
//! this file gives it the simulated disk, a per-node clock with bounded drift, and a
//! [`Host`] that turns outcomes into the history's operation ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Message};
use raft::{RawNode, SnapshotStatus};
use slog::Logger;

use super::disk::SimStore;
use super::{Bugs, OpId, ReadMode, SimRng, Workload};
use crate::config::Config;
use crate::digest::fnv;
use crate::driver::DriverError;
use crate::error::{MembershipError, ProposeError, ReadError, StateMachineError};
use crate::node::{ReadConsistency, Shared};
use crate::proposals::WriteToken;
use crate::replica::{self, Host, Replica};
use crate::state_machine::StateMachine;

/// Which (session, sequence number) an application ran: [`Workload::fresh_apply`].
pub(crate) type Audit<R> = fn(&[u8], &R) -> Option<(u64, u64)>;

/// Wraps the user's state machine to record what was applied at each index.
pub(crate) struct Recorded<M: StateMachine> {
    pub(crate) inner: M,
    /// (index, hash of the command; 0 for an entry without one), in apply order.
    pub(crate) applied: Vec<(u64, u64)>,
    /// (index, session, sequence number) of each session command run, in apply order.
    pub(crate) fresh: Vec<(u64, u64, u64)>,
    audit: Audit<M::Response>,
}

impl<M: StateMachine> StateMachine for Recorded<M> {
    type Response = M::Response;

    fn apply(&mut self, index: u64, command: &[u8]) -> M::Response {
        self.applied.push((index, fnv(command) | 1));
        let response = self.inner.apply(index, command);
        if let Some((session, seq)) = (self.audit)(command, &response) {
            self.fresh.push((index, session, seq));
        }
        response
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied.push((index, 0));
        self.inner.apply_noop(index)
    }

    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        self.inner.snapshot()
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.inner.restore(index, data)
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.inner.check_snapshot(index, data)
    }

    fn digest(&self) -> Option<u64> {
        self.inner.digest()
    }
}

/// Virtual time: one simulation step is one millisecond of true time.
const STEP: Duration = Duration::from_millis(1);

/// What the core's outcomes mean to the simulator, collected between drives.
pub(crate) struct SimHost<R> {
    pub(crate) sent: Vec<Message>,
    pub(crate) completed: Vec<(OpId, R)>,
    /// Operations that certainly had no effect (dropped, overwritten, failed reads).
    pub(crate) dropped: Vec<OpId>,
    /// Proposals whose outcome is unknown.
    pub(crate) unknown: Vec<OpId>,
    /// Operations refused at once, with the leader hint: the client goes elsewhere.
    refused: Vec<(OpId, Option<u64>)>,
    /// Reads that may be answered now from the node's state.
    pub(crate) served: Vec<OpId>,
    /// (read, the state machine's applied index when it was served).
    pub(crate) served_at: Vec<(OpId, u64)>,
    /// (write, where it was applied), for the client's next token read.
    pub(crate) tokens: Vec<(OpId, WriteToken)>,
    /// (index, term) of each applied entry, in order.
    pub(crate) applied_terms: Vec<(u64, u64)>,
    /// Nodes an applied conf change took out of the group entirely.
    pub(crate) removed: Vec<u64>,
    /// Membership changes refused (at once or later), by token.
    conf_refused: Vec<u64>,
    /// Draws each randomized election timeout in place of raft-rs's unseeded
    /// thread-local RNG (docs/testing.md, "Determinism").
    timeouts: SimRng,
}

impl<M: StateMachine> Host<M> for SimHost<M::Response> {
    type Propose = OpId;
    type ConfChange = u64;
    type Read = OpId;
    type Transfer = ();

    fn send(&mut self, messages: Vec<Message>) {
        self.sent.extend(messages);
    }

    fn add_peer(&mut self, _id: u64, _context: &[u8]) {}

    fn remove_peer(&mut self, id: u64) {
        self.removed.push(id);
    }

    fn proposed(&mut self, op: OpId, result: Result<(M::Response, WriteToken), ProposeError>) {
        match result {
            Ok((r, token)) => {
                self.tokens.push((op, token));
                self.completed.push((op, r));
            }
            Err(ProposeError::NotLeader { leader }) => self.refused.push((op, leader)),
            Err(ProposeError::Dropped) => self.dropped.push(op),
            Err(_) => self.unknown.push(op),
        }
    }

    fn conf_change_done(&mut self, token: u64, result: Result<ConfState, MembershipError>) {
        if result.is_err() {
            self.conf_refused.push(token);
        }
    }

    fn read_done(&mut self, op: OpId, result: Result<&M, ReadError>) {
        match result {
            Ok(m) => {
                self.served.push(op);
                self.served_at.push((op, m.applied_index()));
            }
            Err(ReadError::NotLeader { leader }) => self.refused.push((op, leader)),
            // A read that failed had no effect.
            Err(_) => self.dropped.push(op),
        }
    }

    fn transfer_done(&mut self, _: (), _: Result<(), MembershipError>) {}

    fn applied_entry(&mut self, index: u64, term: u64) {
        self.applied_terms.push((index, term));
    }

    fn election_timeout(&mut self, min: usize, max: usize) -> Option<usize> {
        Some(self.timeouts.between(min as u64, max as u64) as usize)
    }
}

/// Why a client request was refused before it reached the log.
pub(crate) struct Refused {
    pub(crate) leader: Option<u64>,
}

/// A node's own clock: true time scaled by a drift drawn from the seed (within the
/// bound the lease allows for), plus forward jumps.
struct Clock {
    base: Instant,
    /// Nanoseconds of this clock per millisecond of true time.
    nanos_per_step: u64,
    jumped: Duration,
}

impl Clock {
    fn at(&self, step: u64) -> Instant {
        self.base + Duration::from_nanos(step.saturating_mul(self.nanos_per_step)) + self.jumped
    }
}

type Core<W> = Replica<
    SimStore,
    Recorded<<W as Workload>::Machine>,
    SimHost<<<W as Workload>::Machine as StateMachine>::Response>,
>;

/// A running replica.
pub(crate) struct SimNode<W: Workload> {
    pub(crate) id: u64,
    core: Core<W>,
    clock: Clock,
    read_timeout: Duration,
    next_conf_token: u64,
    shared: Arc<Shared>,
    snapshots_reported: u64,
    /// Refusals of hostile messages (the simulator's own forgeries), by reason: kept
    /// apart so that the check on honest traffic still sees every other refusal.
    hostile_refused: std::collections::BTreeMap<crate::Refusal, u64>,
}

/// Per-node settings drawn from the seed.
#[derive(Clone, Copy)]
pub(crate) struct NodeSettings {
    pub(crate) election_tick: usize,
    pub(crate) heartbeat_ticks: usize,
    pub(crate) tick_steps: u64,
    pub(crate) lease_reads: bool,
    pub(crate) snapshot_every: u64,
    pub(crate) snapshot_trailing: u64,
    pub(crate) read_timeout_steps: u64,
    pub(crate) quiesce_after_timeouts: usize,
    pub(crate) checkpoint_every: u64,
}

/// The drift bound the simulated nodes are configured with; each node's clock drifts
/// by less than this.
const MAX_CLOCK_DRIFT: f64 = 0.1;

impl<W: Workload> SimNode<W> {
    /// Starts a replica on `store` (a fresh disk or what survived a crash) with a fresh
    /// state machine, the way `Node::start` does.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        id: u64,
        voters: &[u64],
        mut store: SimStore,
        machine: W::Machine,
        settings: NodeSettings,
        bugs: Bugs,
        mut timeouts: SimRng,
        base: Instant,
        step: u64,
        logger: &Logger,
    ) -> Result<Self, String> {
        let mut config = Config::new(id);
        // A new group's voters start the way `Node::start` writes them: as committed
        // conf-change entries, so members added later learn them from the log. Spare
        // nodes start with no voters and wait to be added.
        config.initial_voters = voters.to_vec();
        config.heartbeat_ticks = settings.heartbeat_ticks;
        config.election_ticks = settings.election_tick;
        config.tick_interval = STEP * settings.tick_steps as u32;
        // raft-rs draws the timeout from an unseeded RNG; the host overrides every draw
        // with one from the seed.
        config.election_tick_range = Some((settings.election_tick, 2 * settings.election_tick));
        config.lease_reads = settings.lease_reads;
        config.quiesce_after_timeouts = settings.quiesce_after_timeouts;
        config.checkpoint_every = settings.checkpoint_every;
        config.max_clock_drift = MAX_CLOCK_DRIFT;
        config.snapshot.every_applied = settings.snapshot_every;
        config.snapshot.trailing_entries = settings.snapshot_trailing;
        store.lying_sync = bugs.ack_before_sync;
        store.permissive_compact = bugs.compact_past_snapshot;
        let mut sm = Recorded {
            inner: machine,
            applied: Vec::new(),
            fresh: Vec::new(),
            audit: W::fresh_apply,
        };
        let applied =
            replica::recover(&config, &mut store, &mut sm, logger).map_err(|e| e.to_string())?;
        // This node's clock runs up to 9 % fast or slow (inside the 10 % bound), and
        // starts at an offset: only differences between its own readings matter.
        let drift = timeouts.between(0, 180) as i64 - 90;
        // Each start draws its own incarnation, as `Node::start` does at random.
        let incarnation = timeouts.next_u64();
        let clock = Clock {
            base: base + Duration::from_millis(timeouts.below(1_000)),
            nanos_per_step: (1_000_000 + drift * 1_000) as u64,
            jumped: Duration::ZERO,
        };
        let host = SimHost {
            sent: Vec::new(),
            completed: Vec::new(),
            dropped: Vec::new(),
            unknown: Vec::new(),
            refused: Vec::new(),
            served: Vec::new(),
            served_at: Vec::new(),
            tokens: Vec::new(),
            applied_terms: Vec::new(),
            removed: Vec::new(),
            conf_refused: Vec::new(),
            timeouts,
        };
        let now = clock.at(step);
        let shared = Arc::new(Shared::new());
        let core = Replica::new(
            config,
            store,
            sm,
            applied,
            host,
            shared.clone(),
            logger.clone(),
            bugs.faults(),
            incarnation,
            now,
        )
        .map_err(|e| e.to_string())?;
        Ok(SimNode {
            id,
            core,
            clock,
            read_timeout: STEP * settings.read_timeout_steps as u32,
            next_conf_token: 0,
            shared,
            snapshots_reported: 0,
            hostile_refused: Default::default(),
        })
    }

    pub(crate) fn raw(&self) -> &RawNode<SimStore> {
        self.core.raw()
    }

    pub(crate) fn raw_mut(&mut self) -> &mut RawNode<SimStore> {
        self.core.raw_mut()
    }

    pub(crate) fn host(&mut self) -> &mut SimHost<<W::Machine as StateMachine>::Response> {
        self.core.host_mut()
    }

    pub(crate) fn machine(&self) -> &Recorded<W::Machine> {
        self.core.state_machine()
    }

    pub(crate) fn machine_mut(&mut self) -> &mut Recorded<W::Machine> {
        self.core.state_machine_mut()
    }

    /// Honest peers' messages this node refused before raft-rs saw them, by reason:
    /// every refusal but those of hostile messages. Any refusal an honest peer cannot
    /// cause is a check that is wrong.
    pub(crate) fn honest_refused(&self) -> std::collections::BTreeMap<crate::Refusal, u64> {
        let mut refused = self.shared.metrics.refused.snapshot();
        for (reason, n) in &self.hostile_refused {
            if let Some(count) = refused.get_mut(reason) {
                *count -= n;
            }
        }
        refused.retain(|_, n| *n > 0);
        refused
    }

    /// Steps a hostile message; returns the reason it was refused, or `None` when it
    /// passed the checks. A notice the node sends at once in answer (to the member the
    /// message claims to come from) is lost on the way, as the network may lose any
    /// message: the claimed sender never sent what it answers.
    pub(crate) fn step_hostile(&mut self, m: Message, step: u64) -> Option<crate::Refusal> {
        let before = self.shared.metrics.refused.snapshot();
        let sent = self.core.host_mut().sent.len();
        self.step(m, step);
        self.core.host_mut().sent.truncate(sent);
        let after = self.shared.metrics.refused.snapshot();
        let reason = after
            .into_iter()
            .find(|(r, n)| before.get(r).copied().unwrap_or(0) < *n)
            .map(|(r, _)| r)?;
        *self.hostile_refused.entry(reason).or_default() += 1;
        Some(reason)
    }

    /// Snapshots taken since the last call.
    pub(crate) fn take_snapshots_taken(&mut self) -> u64 {
        let total = self
            .shared
            .metrics
            .snapshots_taken
            .load(std::sync::atomic::Ordering::Relaxed);
        let new = total - self.snapshots_reported;
        self.snapshots_reported = total;
        new
    }

    /// (checkpoints compared, divergences found, markers ignored) since this start.
    pub(crate) fn checkpoint_counts(&self) -> (u64, u64, u64) {
        let m = &self.shared.metrics;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (
            get(&m.checkpoints_compared),
            get(&m.divergences),
            get(&m.checkpoints_ignored),
        )
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.core.is_leader()
    }

    /// Moves this node's clock forward by `by` (a suspended VM, an NTP step).
    pub(crate) fn jump_clock(&mut self, by: Duration) {
        self.clock.jumped += by;
    }

    fn take_refusal(&mut self, op: OpId) -> Result<(), Refused> {
        let refused = &mut self.core.host_mut().refused;
        match refused.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(Refused {
                leader: refused.swap_remove(i).1,
            }),
            None => Ok(()),
        }
    }

    /// Queues a command for the next batch. Refused unless this node leads.
    pub(crate) fn propose(&mut self, op: OpId, command: Bytes) -> Result<(), Refused> {
        // Untimed: the stamps would read the wall clock, not the simulated one.
        self.core.propose(command, op, None);
        self.take_refusal(op)
    }

    /// Starts a read; a lease read is refused unless this node leads.
    pub(crate) fn read(&mut self, op: OpId, mode: ReadMode, step: u64) -> Result<(), Refused> {
        // The core answers a `Lease` read without `lease_reads` itself (an error), as the
        // runtime does; the workload asks for one only with lease reads on.
        let consistency = match mode {
            ReadMode::Lease => ReadConsistency::Lease,
            ReadMode::Linearizable => ReadConsistency::Linearizable,
        };
        let now = self.clock.at(step);
        self.core
            .read(consistency, now + self.read_timeout, op, now);
        self.take_refusal(op)
    }

    /// Starts a read served once this node has applied `token`'s write
    /// (`ReadConsistency::AtLeast`); any node serves it.
    pub(crate) fn read_at_least(
        &mut self,
        op: OpId,
        token: WriteToken,
        step: u64,
    ) -> Result<(), Refused> {
        let now = self.clock.at(step);
        self.core.read(
            ReadConsistency::AtLeast(token),
            now + self.read_timeout,
            op,
            now,
        );
        self.take_refusal(op)
    }

    /// Proposes a membership change; false when it was refused at once. With
    /// `catch_up`, the voters it adds catch up as learners first (`Node::add_voter`);
    /// without, they are promoted at once (`Node::add_voter_now`).
    pub(crate) fn propose_conf_change(
        &mut self,
        change: ConfChangeV2,
        catch_up: bool,
        step: u64,
    ) -> bool {
        let token = self.next_conf_token;
        self.next_conf_token += 1;
        let joining = if catch_up {
            change
                .get_changes()
                .iter()
                .filter(|c| c.get_change_type() == ConfChangeType::AddNode)
                .map(|c| c.node_id)
                .collect()
        } else {
            Vec::new()
        };
        let deadline = self.clock.at(step) + self.read_timeout;
        self.core
            .propose_conf_change(change, joining, deadline, token);
        let refused = &mut self.core.host_mut().conf_refused;
        let accepted = !refused.contains(&token);
        refused.clear();
        accepted
    }

    /// Asks the leader to hand leadership to `to`.
    pub(crate) fn transfer_leader(&mut self, to: u64, step: u64) {
        let now = self.clock.at(step);
        self.core
            .transfer_leader(to, now + Duration::from_secs(3600), ());
    }

    /// One tick of raft's logical clock, with the core's periodic chores.
    pub(crate) fn tick(&mut self, step: u64) {
        self.core.tick(self.clock.at(step));
    }

    /// Whether the group is quiet on this node (quiescence).
    pub(crate) fn is_quiet(&self) -> bool {
        self.core.is_quiet()
    }

    /// Steps a message from a peer.
    pub(crate) fn step(&mut self, m: Message, step: u64) {
        self.core.step(m, self.clock.at(step));
    }

    pub(crate) fn report_unreachable(&mut self, peer: u64) {
        self.core.report_unreachable(peer);
    }

    pub(crate) fn report_snapshot(&mut self, peer: u64, status: SnapshotStatus) {
        self.core.report_snapshot(peer, status);
    }

    /// Handles every Ready and the core's follow-ups.
    pub(crate) fn drive(&mut self, step: u64) -> Result<(), DriverError> {
        self.core.drive(self.clock.at(step))
    }

    /// Every client operation this node still holds: proposals and reads.
    pub(crate) fn abandon_all(&mut self) -> Vec<OpId> {
        let tokens = self.core.take_all_tokens();
        let host = self.core.host_mut();
        let mut ops = tokens.proposals;
        ops.extend(tokens.reads);
        ops.append(&mut host.served);
        ops.append(&mut host.dropped);
        ops.append(&mut host.unknown);
        ops.extend(host.completed.drain(..).map(|(op, _)| op));
        ops.extend(host.refused.drain(..).map(|(op, _)| op));
        ops
    }

    /// What survives if this node crashes now.
    pub(crate) fn crash_disk(&self, rng: &mut SimRng, torn: bool) -> SimStore {
        self.core.raw().store().crash(rng, torn)
    }
}
