//! [`SimNode`]: one replica in the simulator, the single-threaded counterpart of the
//! runtime's driver thread: it batches proposals into one `MsgPropose`, keeps a waiter
//! per `(index, term)`, serves ReadIndex and lease reads once applied, and hands every
//! Ready to the real [`crate::driver::drive`].

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, Message, MessageType};
use raft::{RawNode, ReadState, SoftState, StateRole};
use slog::Logger;

use super::disk::SimStore;
use super::{Bugs, OpId, ReadMode, SimRng, Workload};
use crate::config::Config;
use crate::driver::{self, DriverError, DriverStats, Faults, Outbox};
use crate::error::StateMachineError;
use crate::proposals::AppliedAs;
use crate::state_machine::StateMachine;

/// FNV-1a, for hashing commands and states without `std`'s randomized hasher.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Wraps the user's state machine to record what was applied at each index.
pub(crate) struct Recorded<M> {
    pub(crate) inner: M,
    /// (index, hash of the command; 0 for an entry without one), in apply order.
    pub(crate) applied: Vec<(u64, u64)>,
}

impl<M: StateMachine> StateMachine for Recorded<M> {
    type Response = M::Response;

    fn apply(&mut self, index: u64, command: &[u8]) -> M::Response {
        self.applied.push((index, fnv(command) | 1));
        self.inner.apply(index, command)
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
}

/// What one drive produced, collected by the node's [`Outbox`].
pub(crate) struct NodeOutbox<R> {
    logger: Logger,
    pub(crate) sent: Vec<Message>,
    /// Waiters by (index, term) in log order (ERRATA 11).
    pending: VecDeque<(u64, u64, OpId)>,
    pub(crate) completed: Vec<(OpId, R)>,
    /// Proposals that certainly were not applied (their entry was overwritten).
    pub(crate) dropped: Vec<OpId>,
    /// Proposals whose outcome is unknown.
    pub(crate) unknown: Vec<OpId>,
    /// (index, term) of each applied entry, in order.
    pub(crate) applied_terms: Vec<(u64, u64)>,
    read_states: Vec<(u64, u64)>,
    ss_changed: bool,
    /// Peers a snapshot predating their membership was held back from.
    stale_snapshot_peers: Vec<u64>,
    /// Nodes a applied conf change took out of the group entirely.
    pub(crate) removed: Vec<u64>,
}

impl<R> Outbox<R> for NodeOutbox<R> {
    fn send(&mut self, mut messages: Vec<Message>) {
        let held = driver::hold_back_stale_snapshots(&mut messages);
        self.stale_snapshot_peers.extend(held);
        self.sent.extend(messages);
    }

    fn applied(&mut self, index: u64, term: u64, applied: AppliedAs<'_, R>) {
        self.applied_terms.push((index, term));
        let mut applied = Some(applied);
        while let Some(&(i, t, op)) = self.pending.front() {
            if i > index {
                return;
            }
            self.pending.pop_front();
            match applied.take() {
                Some(AppliedAs::Command(r)) if i == index && t == term => {
                    self.completed.push((op, r));
                    return;
                }
                other => {
                    self.dropped.push(op);
                    applied = other;
                }
            }
        }
    }

    fn conf_changed(&mut self, _: u64, _: &ConfChangeV2, _: &ConfState, removed: &[u64]) {
        self.removed.extend_from_slice(removed);
    }

    fn snapshot_restored(&mut self, snapshot: &raft::eraftpb::Snapshot) {
        let index = snapshot.get_metadata().index;
        // Entries inside the snapshot were applied elsewhere: whether ours was among
        // them is unknown.
        while self.pending.front().is_some_and(|(i, _, _)| *i <= index) {
            let (_, _, op) = self.pending.pop_front().expect("front exists");
            self.unknown.push(op);
        }
    }

    fn read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                self.read_states.push((u64::from_le_bytes(ctx), rs.index));
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

/// Why a client request was refused before it reached the log.
pub(crate) struct Refused {
    pub(crate) leader: Option<u64>,
}

/// A running replica.
pub(crate) struct SimNode<W: Workload> {
    pub(crate) id: u64,
    pub(crate) raw: RawNode<SimStore>,
    pub(crate) sm: Recorded<W::Machine>,
    pub(crate) out: NodeOutbox<<W::Machine as StateMachine>::Response>,
    stats: DriverStats,
    faults: Faults,
    bugs: Bugs,
    batch: Vec<(Bytes, OpId)>,
    reads: BTreeMap<u64, OpId>,
    ready_reads: VecDeque<(u64, OpId)>,
    /// Reads that may be served now (applied index reached), taken by the cluster.
    pub(crate) served: Vec<OpId>,
    next_ctx: u64,
    last_snapshot: u64,
    was_leader: bool,
    ticks: u64,
    heartbeat_ticks: usize,
    snapshot_every: u64,
    snapshot_trailing: u64,
    pub(crate) snapshots_taken: u64,
    /// Draws each randomized election timeout in place of raft-rs's unseeded
    /// thread-local RNG (ERRATA 18).
    timeouts: SimRng,
    election_tick: usize,
    /// (term, role, leader) when the timeout was last drawn: raft re-randomizes it
    /// whenever one of them changes.
    timeout_key: (u64, StateRole, u64),
}

/// Per-node settings drawn from the seed.
#[derive(Clone, Copy)]
pub(crate) struct NodeSettings {
    pub(crate) election_tick: usize,
    pub(crate) heartbeat_ticks: usize,
    pub(crate) lease_reads: bool,
    pub(crate) snapshot_every: u64,
    pub(crate) snapshot_trailing: u64,
}

impl<W: Workload> SimNode<W> {
    /// Starts a replica on `store` (a fresh disk or what survived a crash) with a fresh
    /// state machine, the way `Node::start` does (ERRATA 16).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        id: u64,
        voters: &[u64],
        mut store: SimStore,
        machine: W::Machine,
        settings: NodeSettings,
        bugs: Bugs,
        timeouts: SimRng,
        logger: &Logger,
    ) -> Result<Self, String> {
        use raft::Storage as _;
        let mut config = Config::new(id);
        // A new group's voters start the way `Node::start` writes them: as committed
        // conf-change entries, so members added later learn them from the log. Spare
        // nodes start with no voters and wait to be added.
        config.initial_voters = voters.to_vec();
        crate::node::bootstrap_if_new(&config, &mut store, logger).map_err(|e| e.to_string())?;
        let mut sm = Recorded {
            inner: machine,
            applied: Vec::new(),
        };
        let first = store.first_index().map_err(|e| e.to_string())?;
        if sm.applied_index() + 1 < first {
            let snapshot = store.snapshot(0, 0).map_err(|e| e.to_string())?;
            driver::restore_state_machine(&mut sm, &snapshot).map_err(|e| e.to_string())?;
        }
        let applied = sm.applied_index();
        config.heartbeat_ticks = settings.heartbeat_ticks;
        config.election_ticks = settings.election_tick;
        // raft-rs draws the timeout from an unseeded RNG (ERRATA 18); `rerandomize`
        // overrides every draw with one from the seed.
        config.election_tick_range = Some((settings.election_tick, 2 * settings.election_tick));
        config.lease_reads = settings.lease_reads;
        store.lying_sync = bugs.ack_before_sync;
        store.permissive_compact = bugs.compact_past_snapshot;
        let raw = RawNode::new(&config.to_raft(applied), store, logger)
            .map_err(|e| format!("RawNode::new: {e}"))?;
        let last_snapshot = raw
            .store()
            .snapshot(0, 0)
            .map(|s| s.get_metadata().index)
            .unwrap_or(0)
            .max(applied);
        let faults = Faults {
            send_before_sync: bugs.send_before_sync,
            skip_snapshot_restore: bugs.skip_snapshot_restore,
            apply_before_commit: bugs.apply_before_commit,
            compact_past_snapshot: bugs.compact_past_snapshot,
        };
        let mut node = SimNode {
            id,
            raw,
            sm,
            out: NodeOutbox {
                logger: logger.clone(),
                sent: Vec::new(),
                pending: VecDeque::new(),
                completed: Vec::new(),
                dropped: Vec::new(),
                unknown: Vec::new(),
                applied_terms: Vec::new(),
                read_states: Vec::new(),
                ss_changed: false,
                stale_snapshot_peers: Vec::new(),
                removed: Vec::new(),
            },
            stats: DriverStats::default(),
            faults,
            bugs,
            batch: Vec::new(),
            reads: BTreeMap::new(),
            ready_reads: VecDeque::new(),
            served: Vec::new(),
            next_ctx: 1,
            last_snapshot,
            was_leader: false,
            ticks: 0,
            heartbeat_ticks: settings.heartbeat_ticks,
            snapshot_every: settings.snapshot_every,
            snapshot_trailing: settings.snapshot_trailing,
            snapshots_taken: 0,
            timeouts,
            election_tick: settings.election_tick,
            timeout_key: (u64::MAX, StateRole::Leader, u64::MAX),
        };
        node.rerandomize();
        Ok(node)
    }

    /// Replaces raft-rs's randomized election timeout with a seeded draw after every
    /// change of term, role or leader (where raft-rs draws a new one).
    pub(crate) fn rerandomize(&mut self) {
        let raft = &self.raw.raft;
        let key = (raft.term, raft.state, raft.leader_id);
        if key != self.timeout_key {
            self.timeout_key = key;
            let t = self.election_tick as u64;
            let timeout = self.timeouts.between(t, 2 * t - 1) as usize;
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn refuse(&self) -> Refused {
        Refused {
            leader: Some(self.raw.raft.leader_id).filter(|&l| l != 0),
        }
    }

    /// Queues a command for the next batch. Refused unless this node leads.
    pub(crate) fn propose(&mut self, op: OpId, command: Bytes) -> Result<(), Refused> {
        if !self.is_leader() {
            return Err(self.refuse());
        }
        self.batch.push((command, op));
        Ok(())
    }

    /// Starts a read. Refused unless this node leads.
    pub(crate) fn read(&mut self, op: OpId, mode: ReadMode) -> Result<(), Refused> {
        if !self.is_leader() {
            return Err(self.refuse());
        }
        if self.bugs.read_without_read_index {
            // The bug: a node that believes it leads answers from local state.
            self.served.push(op);
            return Ok(());
        }
        let log = &self.raw.raft.raft_log;
        if mode == ReadMode::Lease && log.term(log.committed).ok() == Some(self.raw.raft.term) {
            self.ready_reads.push_back((log.committed, op));
            return Ok(());
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.raw.read_index(ctx.to_le_bytes().to_vec());
        self.reads.insert(ctx, op);
        Ok(())
    }

    /// Proposes the queued batch as one `MsgPropose` and registers its waiters.
    pub(crate) fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if !self.is_leader() {
            // A follower would forward the entries with no index to wait on (ERRATA 11):
            // refuse them instead, as the runtime does.
            self.out.dropped.extend(batch.into_iter().map(|(_, op)| op));
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        m.set_entries(
            batch
                .iter()
                .map(|(data, _)| Entry {
                    data: data.clone(),
                    ..Entry::default()
                })
                .collect::<Vec<_>>()
                .into(),
        );
        let n = batch.len() as u64;
        if self.raw.step(m).is_ok() {
            let last = self.raw.raft.raft_log.last_index();
            let term = self.raw.raft.term;
            for (i, (_, op)) in (last + 1 - n..).zip(batch) {
                self.out.pending.push_back((i, term, op));
            }
        } else {
            self.out.dropped.extend(batch.into_iter().map(|(_, op)| op));
        }
    }

    /// One tick of raft's logical clock, plus the runtime's periodic chores.
    pub(crate) fn tick(&mut self) {
        self.raw.tick();
        self.rerandomize();
        self.ticks += 1;
        self.maybe_leave_joint();
        if self.ticks.is_multiple_of(self.heartbeat_ticks as u64) {
            // raft drops a ReadIndex silently with no leader; ask again.
            for ctx in self.reads.keys() {
                self.raw.read_index(ctx.to_le_bytes().to_vec());
            }
        }
    }

    /// Steps a message from a peer, after the same checks the runtime makes.
    pub(crate) fn step(&mut self, m: Message) {
        if crate::validate::check_message(&m, self.id, &self.raw).is_ok() {
            // Unknown peers and local types are routine (ERRATA 15).
            let _ = self.raw.step(m);
            self.rerandomize();
        }
    }

    /// Handles every Ready, then the follow-ups (reads, leadership loss, snapshots).
    pub(crate) fn drive(&mut self) -> Result<(), DriverError> {
        self.flush_proposals();
        driver::drive(
            &mut self.raw,
            &mut self.sm,
            &mut self.out,
            &mut self.stats,
            self.faults,
        )?;
        self.rerandomize();
        if std::mem::take(&mut self.out.ss_changed) {
            let leader = self.is_leader();
            if self.was_leader && !leader {
                // Entries appended under our leadership may or may not commit now.
                let lost = self.out.pending.drain(..).map(|(_, _, op)| op);
                self.out.unknown.extend(lost);
            }
            self.was_leader = leader;
        }
        for (ctx, index) in std::mem::take(&mut self.out.read_states) {
            if let Some(op) = self.reads.remove(&ctx) {
                self.ready_reads.push_back((index, op));
            }
        }
        let applied = self.raw.raft.raft_log.applied;
        // Reads become servable in any order of index; keep the queue small and exact.
        let mut i = 0;
        while i < self.ready_reads.len() {
            if self.ready_reads[i].0 <= applied {
                let (_, op) = self.ready_reads.remove(i).expect("in range");
                self.served.push(op);
            } else {
                i += 1;
            }
        }
        if !self.out.stale_snapshot_peers.is_empty() {
            let peers = std::mem::take(&mut self.out.stale_snapshot_peers);
            if let Some(index) = driver::replace_stale_snapshot(
                &mut self.raw,
                &self.sm,
                self.snapshot_trailing,
                self.faults,
                &Default::default(),
                &peers,
            )? {
                self.last_snapshot = index;
                self.snapshots_taken += 1;
            }
        }
        if self.snapshot_every > 0 && applied >= self.last_snapshot + self.snapshot_every {
            if let Some(index) = driver::take_snapshot(
                &mut self.raw,
                &self.sm,
                self.snapshot_trailing,
                self.faults,
                &Default::default(),
            )? {
                self.last_snapshot = index;
                self.snapshots_taken += 1;
            }
        }
        Ok(())
    }

    /// A leader that finds the group in a joint configuration and nothing pending leaves
    /// it (raft-rs auto-leaves only on the leader that applied the entering change,
    /// ERRATA 9), as the runtime does once per tick.
    fn maybe_leave_joint(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
            || raft.has_pending_conf()
        {
            return;
        }
        let _ = self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default());
    }

    /// Proposes a membership change; false when raft refused it at once.
    pub(crate) fn propose_conf_change(&mut self, change: ConfChangeV2) -> bool {
        self.raw.propose_conf_change(Vec::new(), change).is_ok()
    }

    /// Every client operation this node still holds: proposals and reads.
    pub(crate) fn abandon_all(&mut self) -> Vec<OpId> {
        let mut ops: Vec<OpId> = self.batch.drain(..).map(|(_, op)| op).collect();
        ops.extend(self.out.pending.drain(..).map(|(_, _, op)| op));
        ops.extend(std::mem::take(&mut self.reads).into_values());
        ops.extend(self.ready_reads.drain(..).map(|(_, op)| op));
        ops.append(&mut self.served);
        ops
    }

    /// What survives if this node crashes now.
    pub(crate) fn crash_disk(&self, rng: &mut SimRng, torn: bool) -> SimStore {
        self.raw.store().crash(rng, torn)
    }
}
