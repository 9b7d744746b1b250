//! The simulation loop: nodes, network, clients, faults and invariant checks.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, EntryType, Message,
    MessageType,
};
use raft::{SnapshotStatus, StateRole};
use slog::Logger;

use super::disk::SimStore;
use super::hostile::{Hostile, HostileTarget, Mutation};
use super::network::{Delivery, Network};
use super::node::{NodeSettings, Refused, SimNode};
use super::{
    ClientOp, History, OpId, ReadMode, SimConfig, SimFailure, SimReport, SimRng, Workload,
};
use crate::digest::fnv;
use crate::state_machine::StateMachine;
use crate::testing::linearizability::{self, Model};

type Input<W> = <<W as Workload>::Model as Model>::Input;
type Output<W> = <<W as Workload>::Model as Model>::Output;

/// Runs one simulation and checks it.
///
/// # Errors
///
/// A [`SimFailure`] when an invariant broke, the history is not linearizable, the
/// cluster did not recover once faults stopped, or the code under test panicked. Its
/// `Display` names the seed and the command that replays the run.
pub fn run<W: Workload>(workload: &W, config: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(workload, config);
    match catch_unwind(AssertUnwindSafe(|| sim.run())) {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            Err(sim.failure(format!("panic in the code under test: {text}")))
        }
    }
}

enum Slot<W: Workload> {
    Up(Box<SimNode<W>>),
    Down {
        disk: Box<SimStore>,
        restart_at: u64,
    },
}

struct Client {
    id: u64,
    target: u64,
    /// Stays on `target` whatever it answers.
    pinned: bool,
    /// Issues only the reads the workload draws (see `reader_takes`), skipping the rest.
    reads_only: bool,
    current: Option<(OpId, u64)>,
    next_at: u64,
    /// With sessions: (session id, next sequence number).
    session: Option<(u64, u64)>,
    /// With sessions: the registration in flight, and when the client gives up on it.
    registering: Option<(OpId, u64)>,
    /// With sessions: the write in flight, for resending it.
    retry: Option<Retry>,
    /// With sessions: where the client's last answered write was applied.
    last_token: Option<crate::proposals::WriteToken>,
}

/// A session write that may be resent: every attempt proposes the same bytes.
struct Retry {
    op: OpId,
    bytes: bytes::Bytes,
    /// Whether an attempt may have been applied (its outcome was unknown): a refused
    /// or dropped later attempt then does not make the whole operation a no-op.
    maybe_applied: bool,
    /// After this step the client stops retrying: the outcome stays unknown.
    give_up_at: u64,
    /// The node of the latest attempt: what other nodes say of earlier attempts is
    /// ignored (their answers still count, being the same by deduplication).
    node: u64,
    /// Resend at the client's next turn.
    due: bool,
}

impl Client {
    fn new(id: u64, target: u64, pinned: bool, reads_only: bool) -> Self {
        Client {
            id,
            target,
            pinned,
            reads_only,
            current: None,
            next_at: 0,
            session: None,
            registering: None,
            retry: None,
            last_token: None,
        }
    }
}

struct Sim<'a, W: Workload> {
    w: &'a W,
    cfg: &'a SimConfig,
    model: W::Model,
    plan: super::FaultPlan,
    step: u64,
    rng_net: SimRng,
    rng_faults: SimRng,
    rng_clients: SimRng,
    rng_timeouts: SimRng,
    /// Every node not removed from the group: members and spares.
    ids: Vec<u64>,
    /// The voters the group started with.
    initial_voters: Vec<u64>,
    /// The id the next spare node gets, and the last one allowed.
    next_id: u64,
    max_id: u64,
    settings: NodeSettings,
    /// Where every node's clock starts; each reads it with its own drift.
    base: std::time::Instant,
    nodes: BTreeMap<u64, Slot<W>>,
    net: Network,
    history: History<Input<W>, Output<W>>,
    clients: Vec<Client>,
    owner: BTreeMap<OpId, usize>,
    /// Term → the one node that led in it.
    leaders: BTreeMap<u64, u64>,
    /// Index → (term, command hash) of every entry any node applied.
    applied_log: BTreeMap<u64, (u64, u64)>,
    /// Applied index → digest of the state there.
    digests: BTreeMap<u64, u64>,
    max_commit: u64,
    crashes: u64,
    snapshots: u64,
    /// Node-ticks on which the node was quiet (quiescence).
    quiet_ticks: u64,
    trace: Option<String>,
    recent: VecDeque<String>,
    logger: Logger,
    /// The hostile-message generator, when [`SimConfig::hostile_per_million`] is on.
    hostile: Option<Hostile>,
    hostile_counts: HostileCounts,
    /// Whether clients open sessions and retry ([`Workload::register_command`]).
    sessions: bool,
    /// Registrations in flight: op → client. Their ops are not in the history.
    registrations: BTreeMap<OpId, usize>,
    next_registration: usize,
    /// (session, seq) → the one index it was applied at.
    fresh: BTreeMap<(u64, u64), u64>,
    sessions_opened: u64,
    retries: u64,
    /// Checkpoints compared by nodes no longer up (crashed, retired, restarted).
    checkpoints_compared: u64,
    /// Set once the faulty phase ends: unknown outcomes are final from then on.
    recovering: bool,
    /// With sessions: token reads in flight (outside the history), op → its token.
    token_reads: BTreeMap<OpId, crate::proposals::WriteToken>,
    /// Token reads served, each checked against its token.
    token_reads_served: u64,
    /// Which reads of a session client are token reads, and where they go: a stream of
    /// its own, so the other streams stay as they were.
    rng_tokens: SimRng,
}

/// What the hostile messages did, for the report.
#[derive(Default)]
struct HostileCounts {
    messages: u64,
    by_mutation: BTreeMap<Mutation, u64>,
    refused: BTreeMap<crate::Refusal, u64>,
    passed: u64,
}

impl<'a, W: Workload> Sim<'a, W> {
    fn new(w: &'a W, cfg: &'a SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let voters = cfg.nodes.max(1);
        let initial_voters: Vec<u64> = (1..=voters).collect();
        let ids: Vec<u64> = (1..=voters + cfg.spare_nodes).collect();
        let settings = NodeSettings {
            election_tick: cfg.election_ticks.max(cfg.heartbeat_ticks + 1),
            heartbeat_ticks: cfg.heartbeat_ticks.max(1),
            tick_steps: cfg.tick_steps.max(1),
            read_timeout_steps: cfg.client_timeout_steps,
            lease_reads: cfg.lease_reads,
            snapshot_every: cfg.snapshot_every,
            snapshot_trailing: cfg.snapshot_trailing,
            quiesce_after_timeouts: cfg.quiesce_after_timeouts,
            checkpoint_every: cfg.checkpoint_every,
        };
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            nodes.insert(
                id,
                Slot::Down {
                    disk: Box::new(SimStore::new()),
                    restart_at: 0,
                },
            );
        }
        let mut clients: Vec<Client> = (0..cfg.clients)
            .map(|k| Client::new(k + 1, ids[(k as usize) % ids.len()], false, false))
            .collect();
        if cfg.pinned_clients {
            // Two per node: a reader, which is never stuck behind a write that cannot
            // commit, and one with the whole mix, which writes on whoever leads.
            for &target in &ids {
                for reads_only in [true, false] {
                    clients.push(Client::new(
                        clients.len() as u64 + 1,
                        target,
                        true,
                        reads_only,
                    ));
                }
            }
        }
        Sim {
            w,
            cfg,
            model: w.model(),
            plan: cfg.faults.clone(),
            step: 0,
            rng_net: rng.fork(),
            rng_faults: rng.fork(),
            rng_clients: rng.fork(),
            rng_timeouts: rng.fork(),
            next_id: ids.len() as u64 + 1,
            max_id: ids.len() as u64 + 6,
            ids,
            initial_voters,
            settings,
            base: std::time::Instant::now(),
            nodes,
            net: Network::default(),
            history: History::new(),
            clients,
            owner: BTreeMap::new(),
            leaders: BTreeMap::new(),
            applied_log: BTreeMap::new(),
            digests: BTreeMap::new(),
            max_commit: 0,
            crashes: 0,
            snapshots: 0,
            quiet_ticks: 0,
            trace: cfg.trace.then(String::new),
            recent: VecDeque::new(),
            logger: crate::node::discard_logger(),
            // A stream of its own, not a fork of `rng`: the other streams stay as they
            // were before the generator existed.
            hostile: (cfg.hostile_per_million > 0)
                .then(|| Hostile::new(cfg.seed ^ 0x4057_11E5_F022_0001)),
            hostile_counts: HostileCounts::default(),
            sessions: w.register_command().is_some(),
            registrations: BTreeMap::new(),
            next_registration: 0,
            fresh: BTreeMap::new(),
            sessions_opened: 0,
            retries: 0,
            checkpoints_compared: 0,
            recovering: false,
            token_reads: BTreeMap::new(),
            token_reads_served: 0,
            rng_tokens: SimRng::new(cfg.seed ^ 0x70CE_2EAD_0000_0001),
        }
    }

    fn event(&mut self, what: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let line = format!("{:>7} {}", self.step, what());
            let _ = writeln!(trace, "{line}");
            if self.recent.len() == 40 {
                self.recent.pop_front();
            }
            self.recent.push_back(line);
        }
    }

    fn failure(&self, message: String) -> SimFailure {
        SimFailure {
            seed: self.cfg.seed,
            step: self.step,
            message,
            hostile_per_million: self.cfg.hostile_per_million,
            // With tracing on, the whole trace: the cause may be long before the failure.
            recent_events: match &self.trace {
                Some(trace) => trace.lines().map(str::to_string).collect(),
                None => self.recent.iter().cloned().collect(),
            },
        }
    }

    fn run(&mut self) -> Result<SimReport, SimFailure> {
        self.restart_due()?;
        while self.step < self.cfg.steps {
            self.one_step(true)?;
        }
        self.recover()?;
        self.check_logs()?;
        let operations = self.history.len() as u64;
        let ops = std::mem::take(&mut self.history).into_operations();
        let completed = ops.iter().filter(|o| o.output.is_some()).count() as u64;
        let check_started = std::time::Instant::now();
        linearizability::check(&self.model, &ops, self.cfg.check_budget)
            .map_err(|e| self.failure(e.to_string()))?;
        let check_time = check_started.elapsed();
        Ok(SimReport {
            seed: self.cfg.seed,
            steps: self.step,
            operations,
            completed,
            messages: self.net.sent,
            messages_dropped: self.net.dropped,
            crashes: self.crashes,
            commit_index: self.max_commit,
            leaders: self.leaders.len() as u64,
            snapshots: self.snapshots,
            quiet_ticks: self.quiet_ticks,
            check_time,
            trace: self.trace.take(),
            hostile_messages: self.hostile_counts.messages,
            hostile_by_mutation: std::mem::take(&mut self.hostile_counts.by_mutation),
            hostile_refused: std::mem::take(&mut self.hostile_counts.refused),
            hostile_passed: self.hostile_counts.passed,
            sessions: self.sessions_opened,
            retries: self.retries,
            session_applies: self.fresh.len() as u64,
            token_reads: self.token_reads_served,
            checkpoints_compared: self.checkpoints_compared
                + self
                    .nodes
                    .values()
                    .map(|slot| match slot {
                        Slot::Up(node) => node.checkpoint_counts().0,
                        Slot::Down { .. } => 0,
                    })
                    .sum::<u64>(),
        })
    }

    fn one_step(&mut self, clients: bool) -> Result<(), SimFailure> {
        self.step += 1;
        self.deliver();
        self.inject_hostile()?;
        if clients {
            self.run_clients();
        }
        self.expire_ops();
        if self.step.is_multiple_of(self.cfg.tick_steps.max(1)) {
            let step = self.step;
            for slot in self.nodes.values_mut() {
                if let Slot::Up(node) = slot {
                    self.quiet_ticks += u64::from(node.is_quiet());
                    node.tick(step);
                }
            }
        }
        self.drive_all()?;
        self.inject_faults();
        self.restart_due()?;
        if self.step.is_multiple_of(1_000) {
            self.check_logs()?;
        }
        Ok(())
    }

    fn deliver(&mut self) {
        let step = self.step;
        while let Some(delivery) = self.net.next_due(step) {
            let (m, delivered) = match delivery {
                Delivery::Deliver(m) => (m, true),
                Delivery::Blocked(m) => (m, false),
            };
            let (from, to, is_snapshot) =
                (m.from, m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let up = matches!(self.nodes.get(&to), Some(Slot::Up(_)));
            self.event(|| describe(&m, delivered && up));
            if delivered && up {
                if let Some(Slot::Up(node)) = self.nodes.get_mut(&to) {
                    node.step(m, step);
                }
            }
            if let Some(Slot::Up(sender)) = self.nodes.get_mut(&from) {
                if !(delivered && up) {
                    sender.report_unreachable(to);
                }
                if is_snapshot {
                    // raft-rs note 13: report every snapshot sent, success or failure.
                    let status = if delivered && up {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    sender.report_snapshot(to, status);
                }
            }
        }
    }

    /// Steps this step's hostile messages into live nodes, during the faulty phase:
    /// `hostile_per_million / 1e6` per step on average.
    fn inject_hostile(&mut self) -> Result<(), SimFailure> {
        let rate = self.cfg.hostile_per_million;
        let Some(hostile) = &mut self.hostile else {
            return Ok(());
        };
        if !self.plan.active {
            return Ok(());
        }
        let mut n = rate / 1_000_000;
        if hostile.rng().below(1_000_000) < rate % 1_000_000 {
            n += 1;
        }
        for _ in 0..n {
            self.inject_one_hostile()?;
        }
        Ok(())
    }

    fn inject_one_hostile(&mut self) -> Result<(), SimFailure> {
        let Some(hostile) = &mut self.hostile else {
            return Ok(());
        };
        let up: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| matches!(self.nodes.get(id), Some(Slot::Up(_))))
            .collect();
        if up.is_empty() {
            return Ok(());
        }
        let id = up[hostile.rng().below(up.len() as u64) as usize];
        let Some(Slot::Up(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let raft = &node.raw().raft;
        let target = HostileTarget {
            id,
            term: raft.term,
            leading: raft.state == StateRole::Leader,
            leader: raft.leader_id,
            last_index: raft.raft_log.last_index(),
            peers: self.ids.iter().copied().filter(|&i| i != id).collect(),
        };
        let Some((kind, m)) = hostile.generate(&target) else {
            return Ok(());
        };
        let brief = (kind.must_be_refused() || self.trace.is_some()).then(|| describe(&m, true));
        let refusal = node.step_hostile(m, self.step);
        let counts = &mut self.hostile_counts;
        counts.messages += 1;
        *counts.by_mutation.entry(kind).or_default() += 1;
        match refusal {
            Some(reason) => *counts.refused.entry(reason).or_default() += 1,
            None => counts.passed += 1,
        }
        if let Some(brief) = &brief {
            self.event(|| format!("hostile {kind:?} ({refusal:?}): {brief}"));
        }
        if kind.must_be_refused() && refusal.is_none() {
            return Err(self.failure(format!(
                "node {id} let a hostile {kind:?} message through its checks: {}",
                brief.unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn run_clients(&mut self) {
        let spell = self.cfg.quiesce_after_timeouts > 0
            && self.step < self.cfg.steps
            && self.step % super::QUIET_SPELL_EVERY
                >= super::QUIET_SPELL_EVERY - super::QUIET_SPELL;
        if spell {
            // A quiet spell: the group may go quiet while faults go on.
            return;
        }
        for k in 0..self.clients.len() {
            let client = &self.clients[k];
            if client.next_at > self.step {
                continue;
            }
            if client.retry.as_ref().is_some_and(|r| r.due) {
                self.resend(k);
                continue;
            }
            if client.current.is_some() || client.registering.is_some() {
                continue;
            }
            let op = self.w.next_op(&mut self.rng_clients);
            if self.clients[k].reads_only && !self.reader_takes(&op) {
                continue;
            }
            if self.sessions
                && matches!(op, ClientOp::Write(..))
                && self.clients[k].session.is_none()
            {
                self.register(k);
                continue;
            }
            if self.sessions && matches!(op, ClientOp::Read(..)) && self.rng_tokens.below(2) == 0 {
                if let Some(token) = self.clients[k].last_token {
                    self.token_read(k, token);
                    continue;
                }
            }
            let target = self.clients[k].target;
            let cid = self.clients[k].id;
            self.invoke(k, cid, target, op);
        }
    }

    /// Client `k` reads its own last write back on any node, through its token
    /// (`ReadConsistency::AtLeast`). Not linearizable, so not in the history: the check
    /// is that the node serving it had applied the token's write.
    fn token_read(&mut self, k: usize, token: crate::proposals::WriteToken) {
        self.next_registration += 1;
        let op = OpId(usize::MAX - self.next_registration);
        let target = self.ids[self.rng_tokens.below(self.ids.len() as u64) as usize];
        let step = self.step;
        let result = match self.nodes.get_mut(&target) {
            Some(Slot::Up(node)) => node.read_at_least(op, token, step),
            _ => Err(Refused { leader: None }),
        };
        match result {
            Ok(()) => {
                self.token_reads.insert(op, token);
                self.clients[k].current = Some((op, step + self.cfg.client_timeout_steps));
                self.owner.insert(op, k);
            }
            Err(_) => self.clients[k].next_at = step + 1 + self.rng_tokens.below(5),
        }
    }

    /// Client `k` opens a session on the node it believes leads.
    fn register(&mut self, k: usize) {
        let Some(command) = self.w.register_command() else {
            return;
        };
        // Registration ops live outside the history (they are no operation of the
        // model), numbered down from the top so they never meet a history op.
        self.next_registration += 1;
        let op = OpId(usize::MAX - self.next_registration);
        let target = self.clients[k].target;
        let result = match self.nodes.get_mut(&target) {
            Some(Slot::Up(node)) => node.propose(op, command),
            _ => Err(Refused { leader: None }),
        };
        match result {
            Ok(()) => {
                self.registrations.insert(op, k);
                self.clients[k].registering = Some((op, self.step + self.cfg.client_timeout_steps));
            }
            Err(refused) => self.redirect(k, target, refused.leader),
        }
    }

    /// Sends client `k` to `leader` if it names another node, else to a random one; its
    /// next turn is a few steps away.
    fn redirect(&mut self, k: usize, target: u64, leader: Option<u64>) {
        let step = self.step;
        if self.clients[k].pinned {
            self.clients[k].next_at = step + 1 + self.rng_clients.below(5);
            return;
        }
        let next = match leader {
            Some(l) if l != target => l,
            _ => self.ids[self.rng_clients.below(self.ids.len() as u64) as usize],
        };
        self.clients[k].target = next;
        self.clients[k].next_at = step + 1 + self.rng_clients.below(5);
    }

    /// Resends client `k`'s session write to its target.
    fn resend(&mut self, k: usize) {
        let Some(retry) = &self.clients[k].retry else {
            return;
        };
        let (op, bytes) = (retry.op, retry.bytes.clone());
        if self.step >= retry.give_up_at {
            // Refused and redirected until its time ran out: the outcome stays unknown.
            self.history.fail_unknown(op, self.step);
            self.release(op);
            return;
        }
        let target = self.clients[k].target;
        let cid = self.clients[k].id;
        self.event(|| format!("client {cid} resends {op:?} to node {target}"));
        let result = match self.nodes.get_mut(&target) {
            Some(Slot::Up(node)) => node.propose(op, bytes),
            _ => Err(Refused { leader: None }),
        };
        match result {
            Ok(()) => {
                self.retries += 1;
                let deadline = self.step + self.cfg.client_timeout_steps;
                let client = &mut self.clients[k];
                client.current = Some((op, deadline));
                if let Some(r) = &mut client.retry {
                    r.node = target;
                    r.due = false;
                }
            }
            Err(refused) => self.redirect(k, target, refused.leader),
        }
    }

    /// An attempt of `op` on node `node` ended without a known outcome (unknown, timed
    /// out, crashed with it, or, when `applied_never`, certainly not applied). A session
    /// write is resent while its time lasts; anything else closes as before.
    fn attempt_failed(&mut self, op: OpId, node: u64, applied_never: bool) {
        if let Some(k) = self.registrations.remove(&op) {
            // A lost registration may leave a session nobody uses; it expires.
            self.clients[k].registering = None;
            return;
        }
        let retry = self.owner.get(&op).and_then(|&k| {
            let r = self.clients[k].retry.as_ref()?;
            (r.op == op).then_some((k, r.node, r.maybe_applied, r.give_up_at))
        });
        let Some((k, latest, maybe_applied, give_up_at)) = retry else {
            if applied_never {
                self.history.discard(op);
            } else {
                self.history.fail_unknown(op, self.step);
            }
            self.release(op);
            return;
        };
        if node != latest {
            // An earlier attempt on another node; the latest is still in flight.
            return;
        }
        if applied_never && !maybe_applied {
            self.history.discard(op);
            self.release(op);
            return;
        }
        if self.recovering || self.step >= give_up_at {
            self.history.fail_unknown(op, self.step);
            self.release(op);
            return;
        }
        self.event(|| format!("{op:?}: outcome unknown, the client will resend it"));
        let target = self.clients[k].target;
        if let Some(r) = &mut self.clients[k].retry {
            r.maybe_applied |= !applied_never;
            r.due = true;
        }
        self.redirect(k, target, None);
    }

    /// Whether a reads-only client issues `op`: reads only, and with lease reads on only
    /// `Lease` reads, which a leader cut off from the group answers until its lease
    /// ends instead of holding the client until a quorum answers.
    fn reader_takes(&self, op: &ClientOp<Input<W>>) -> bool {
        match op {
            ClientOp::Write(..) => false,
            ClientOp::Read(_, mode) => !self.cfg.lease_reads || *mode == ReadMode::Lease,
        }
    }

    /// Issues `op` from client `k` to `target`; a refusal redirects the client.
    fn invoke(&mut self, k: usize, client: u64, target: u64, op: ClientOp<Input<W>>) {
        let step = self.step;
        let (input, request) = match op {
            ClientOp::Write(input, command) => (input, Ok(command)),
            ClientOp::Read(input, mode) => (input, Err(mode)),
        };
        self.event(|| format!("client {client} -> node {target}: {input:?}"));
        let id = self.history.invoke(client, input, step);
        let request = match (request, self.clients[k].session) {
            (Ok(command), Some((session, seq))) if self.sessions => {
                let bytes = self.w.in_session(session, seq, &command);
                self.clients[k].session = Some((session, seq + 1));
                self.clients[k].retry = Some(Retry {
                    op: id,
                    bytes: bytes.clone(),
                    maybe_applied: false,
                    give_up_at: step + 4 * self.cfg.client_timeout_steps,
                    node: target,
                    due: false,
                });
                Ok(bytes)
            }
            (request, _) => request,
        };
        let result = match self.nodes.get_mut(&target) {
            Some(Slot::Up(node)) => match request {
                Ok(command) => node.propose(id, command),
                Err(mode) => node.read(id, mode, step),
            },
            _ => Err(Refused { leader: None }),
        };
        match result {
            Ok(()) => {
                self.clients[k].current = Some((id, step + self.cfg.client_timeout_steps));
                self.owner.insert(id, k);
            }
            Err(refused) => {
                self.history.discard(id);
                self.clients[k].retry = None;
                self.redirect(k, target, refused.leader);
            }
        }
    }

    fn expire_ops(&mut self) {
        for k in 0..self.clients.len() {
            if let Some((op, deadline)) = self.clients[k].registering {
                if deadline <= self.step {
                    self.registrations.remove(&op);
                    self.clients[k].registering = None;
                }
            }
            if self.clients[k].retry.as_ref().is_some_and(|r| r.due) {
                continue;
            }
            if let Some((op, deadline)) = self.clients[k].current {
                if deadline <= self.step {
                    self.event(|| format!("client {} timed out: outcome unknown", k + 1));
                    if self.clients[k].retry.is_some() {
                        let node = self.clients[k].retry.as_ref().map_or(0, |r| r.node);
                        self.attempt_failed(op, node, false);
                    } else {
                        self.history.fail_unknown(op, self.step);
                        self.release(op);
                    }
                }
            }
        }
    }

    /// Frees the client waiting on `op`, if any.
    fn release(&mut self, op: OpId) {
        self.token_reads.remove(&op);
        if let Some(k) = self.owner.remove(&op) {
            if self.clients[k].current.is_some_and(|(o, _)| o == op) {
                self.clients[k].current = None;
                self.clients[k].retry = None;
                self.clients[k].next_at = self.step + self.rng_clients.below(4);
            }
        }
    }

    fn drive_all(&mut self) -> Result<(), SimFailure> {
        let ids = self.ids.clone();
        for id in ids {
            let Some(Slot::Up(node)) = self.nodes.get_mut(&id) else {
                continue;
            };
            let result = node.drive(self.step);
            // A drive cut short by a failed sync may leave the state machine ahead of
            // raft's applied index: the node is about to stop, so skip the state check.
            self.collect(id, result.is_ok())?;
            if let Err(e) = result {
                let sync_failed = match self.nodes.get(&id) {
                    Some(Slot::Up(node)) => node.raw().store().sync_failed(),
                    _ => false,
                };
                if !sync_failed {
                    return Err(self.failure(format!("node {id} stopped: {e}")));
                }
                self.event(|| format!("node {id} stopped on fsync failure"));
                self.crash(id);
            }
        }
        Ok(())
    }

    /// Takes what a drive produced: messages, client results, applied entries; and
    /// checks the per-node invariants.
    fn collect(&mut self, id: u64, check_state: bool) -> Result<(), SimFailure> {
        let Some(Slot::Up(node)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        // Invariant: honest peers are never refused for a reason only a faulty or hostile
        // peer can cause (src/validate.rs); races with a change of leader are allowed.
        let mut refused = node.honest_refused();
        refused.retain(|reason, _| !reason.can_be_honest());
        if !refused.is_empty() {
            return Err(self.failure(format!(
                "node {id} refused a message from an honest peer: {refused:?}"
            )));
        }
        // Invariant: honest replicas of a deterministic state machine never diverge at a
        // checkpoint, and no honest marker is ever unreadable.
        let (_, diverged, ignored) = node.checkpoint_counts();
        if diverged > 0 || (ignored > 0 && self.hostile.is_none()) {
            return Err(self.failure(format!(
                "node {id}: {diverged} checkpoint divergences, {ignored} markers ignored, \
                 in an honest run"
            )));
        }
        let host = node.host();
        let sent = std::mem::take(&mut host.sent);
        let completed = std::mem::take(&mut host.completed);
        let dropped = std::mem::take(&mut host.dropped);
        let unknown = std::mem::take(&mut host.unknown);
        let served = std::mem::take(&mut host.served);
        let served_at = std::mem::take(&mut host.served_at);
        let tokens = std::mem::take(&mut host.tokens);
        let terms = std::mem::take(&mut host.applied_terms);
        let removed = std::mem::take(&mut host.removed);
        let hashes = std::mem::take(&mut node.machine_mut().applied);
        let fresh = std::mem::take(&mut node.machine_mut().fresh);
        let machine_applied = node.machine().applied_index();
        let raw = node.raw();
        let (role, term, commit) = (raw.raft.state, raw.raft.term, raw.raft.raft_log.committed);
        let applied = raw.raft.raft_log.applied;
        // What the store holds now (written, synced or not), for the durability checks.
        let stored = raft::Storage::initial_state(raw.store()).ok();
        let raft_conf = raw.raft.prs().conf().to_conf_state();
        let detail = format!(
            "machine applied {}, raft applied {applied}, commit {commit}, store first {}, \
             snapshot {}",
            node.machine().applied_index(),
            raft::Storage::first_index(node.raw().store()).unwrap_or(0),
            raft::Storage::snapshot(node.raw().store(), 0, 0)
                .map(|s| s.get_metadata().index)
                .unwrap_or(0)
        );
        let digest = if !check_state || (terms.is_empty() && applied == 0) {
            None
        } else {
            self.w.digest(&node.machine().inner)
        };
        self.snapshots += node.take_snapshots_taken();
        let step = self.step;
        let mut outputs = Vec::with_capacity(completed.len() + served.len());
        let mut lost = Vec::new();
        let mut opened = Vec::new();
        for (op, response) in completed {
            if let Some(k) = self.registrations.remove(&op) {
                opened.push((k, self.w.registered(&response)));
            } else if self.w.session_lost(&response) {
                lost.push(op);
            } else if let Some(input) = self.history.open_input(op) {
                outputs.push((op, self.w.write_output(input, response)));
            }
        }
        for op in served {
            if let Some(input) = self.history.open_input(op) {
                outputs.push((op, self.w.read_output(&node.machine().inner, input)));
            }
        }
        // Invariant: a token read is served only once its node applied the token's write
        // (read-your-writes on any replica).
        for (op, applied) in served_at {
            if let Some(token) = self.token_reads.remove(&op) {
                if applied < token.index() {
                    return Err(self.failure(format!(
                        "node {id} served a token read at applied index {applied}, below its \
                         token's index {}: the client's own write is not in what it read",
                        token.index()
                    )));
                }
                self.token_reads_served += 1;
                self.release(op);
            }
        }
        for (op, token) in tokens {
            if let Some(&k) = self.owner.get(&op) {
                if self.clients[k].current.is_some_and(|(o, _)| o == op) {
                    self.clients[k].last_token = Some(token);
                }
            }
        }
        for m in sent {
            if let Some(hostile) = &mut self.hostile {
                hostile.observe(&m);
            }
            self.net.send(step, m, &self.plan, &mut self.rng_net);
        }
        for (op, output) in outputs {
            self.event(|| format!("node {id} answered {op:?}: {output:?}"));
            self.history.complete(op, output, step);
            self.release(op);
        }
        for (k, session) in opened {
            self.clients[k].registering = None;
            if let Some(session) = session {
                let cid = self.clients[k].id;
                self.event(|| format!("client {cid} opened session {session}"));
                self.sessions_opened += 1;
                self.clients[k].session = Some((session, 1));
            }
        }
        for op in lost {
            // Not applied for its session (expired): earlier attempts may have been, so
            // the outcome is unknown unless this was the only one. A new session next.
            self.event(|| format!("node {id}: {op:?}'s session is gone"));
            let owner = self.owner.get(&op).copied();
            let only_attempt = owner
                .and_then(|k| self.clients[k].retry.as_ref())
                .is_some_and(|r| r.op == op && !r.maybe_applied);
            if only_attempt {
                self.history.discard(op);
            } else {
                self.history.fail_unknown(op, step);
            }
            if let Some(k) = owner {
                self.clients[k].session = None;
            }
            self.release(op);
        }
        for op in dropped {
            self.attempt_failed(op, id, true);
        }
        for op in unknown {
            self.attempt_failed(op, id, false);
        }
        // Invariant: a session command runs at one index only (exactly once, however
        // often its client resent it).
        for (index, session, seq) in fresh {
            let first = *self.fresh.entry((session, seq)).or_insert(index);
            if first != index {
                return Err(self.failure(format!(
                    "node {id} applied command {seq} of session {session} at index {index}, \
                     it was applied at index {first} already: a retried command ran twice"
                )));
            }
        }
        // Invariant: at most one leader per term (Raft §5.2, Election Safety).
        if role == StateRole::Leader {
            if !self.leaders.contains_key(&term) {
                self.event(|| format!("node {id} leads term {term}"));
            }
            let first = *self.leaders.entry(term).or_insert(id);
            if first != id {
                return Err(self.failure(format!(
                    "two leaders in term {term}: node {first} and node {id}"
                )));
            }
        }
        self.max_commit = self.max_commit.max(commit);
        if check_state {
            // Invariant: raft is told an entry was applied only after the state machine
            // applied it (docs/ready-loop.md, step 5).
            if applied > machine_applied {
                return Err(self.failure(format!(
                    "node {id}: raft counts index {applied} as applied, the state machine \
                     has applied only {machine_applied}"
                )));
            }
            if let Some(stored) = stored {
                // Invariant: what was applied is known committed on disk, so a restart
                // never starts below it (docs/ready-loop.md, step 7).
                if stored.hard_state.commit < applied {
                    return Err(self.failure(format!(
                        "node {id}: applied index {applied} is above the commit index its \
                         store holds ({})",
                        stored.hard_state.commit
                    )));
                }
                // Invariant: the store's ConfState is raft's (docs/ready-loop.md, step 5).
                if !same_conf(&stored.conf_state, &raft_conf) {
                    return Err(self.failure(format!(
                        "node {id}: the store's ConfState {:?} is not raft's {:?}",
                        stored.conf_state, raft_conf
                    )));
                }
            }
        }
        // Invariant: every node applies the same entry at each index (State Machine
        // Safety, §5.4.3); a committed entry is never lost or changed.
        if terms.len() != hashes.len() {
            return Err(self.failure(format!(
                "node {id}: driver reported {} applied entries, state machine saw {}",
                terms.len(),
                hashes.len()
            )));
        }
        for ((index, term), (index2, hash)) in terms.into_iter().zip(hashes) {
            if index != index2 {
                return Err(self.failure(format!(
                    "node {id}: driver applied {index} but the state machine saw {index2}"
                )));
            }
            let seen = *self.applied_log.entry(index).or_insert((term, hash));
            if seen != (term, hash) {
                return Err(self.failure(format!(
                    "node {id} applied (term {term}, hash {hash:x}) at index {index}, another \
                     node applied (term {}, hash {:x}): a committed entry was lost or changed",
                    seen.0, seen.1
                )));
            }
        }
        // Invariant: equal state at equal applied index (the state machine's own).
        if let Some(digest) = digest {
            let seen = *self.digests.entry(machine_applied).or_insert(digest);
            if seen != digest {
                return Err(self.failure(format!(
                    "node {id} state at applied index {machine_applied} differs from another \
                     node's ({detail})"
                )));
            }
        }
        // A conf change that took a node out of the group is committed once applied
        // anywhere: the node is gone for good (ids are never reused).
        for gone in removed {
            self.retire(gone);
        }
        Ok(())
    }

    /// Takes node `id` out of the simulation for good after the group removed it, and
    /// starts a fresh spare in its place while ids last.
    fn retire(&mut self, id: u64) {
        if !self.ids.contains(&id) {
            return;
        }
        self.event(|| format!("node {id} was removed from the group and leaves"));
        if let Some(Slot::Up(mut node)) = self.nodes.remove(&id) {
            self.checkpoints_compared += node.checkpoint_counts().0;
            for op in node.abandon_all() {
                self.attempt_failed(op, id, false);
            }
        }
        self.ids.retain(|i| *i != id);
        if self.next_id <= self.max_id {
            let spare = self.next_id;
            self.next_id += 1;
            self.ids.push(spare);
            self.nodes.insert(
                spare,
                Slot::Down {
                    disk: Box::new(SimStore::new()),
                    restart_at: self.step + 1,
                },
            );
            self.event(|| format!("spare node {spare} is ready to be added"));
        }
    }

    /// Has the leader propose one membership change, drawn from what the current
    /// configuration allows; the group keeps at least three voters.
    fn change_membership(&mut self) {
        let Some(leader) = self.nodes.values().find_map(|slot| match slot {
            Slot::Up(node) if node.is_leader() => Some(node.id),
            _ => None,
        }) else {
            return;
        };
        let (cs, pending) = match self.nodes.get(&leader) {
            Some(Slot::Up(node)) => (
                node.raw().raft.prs().conf().to_conf_state(),
                node.raw().raft.has_pending_conf(),
            ),
            _ => return,
        };
        if pending || !cs.voters_outgoing.is_empty() {
            return;
        }
        let spares: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !cs.voters.contains(id) && !cs.learners.contains(id))
            .filter(|id| matches!(self.nodes.get(id), Some(Slot::Up(_))))
            .collect();
        let rng = &mut self.rng_faults;
        let pick = |rng: &mut SimRng, from: &[u64]| from[rng.below(from.len() as u64) as usize];
        let mut changes: Vec<(ConfChangeType, u64)> = Vec::new();
        match rng.below(5) {
            0 | 1 if !spares.is_empty() && cs.learners.len() < 2 => {
                changes.push((ConfChangeType::AddLearnerNode, pick(rng, &spares)));
            }
            2 if !cs.learners.is_empty() => {
                changes.push((ConfChangeType::AddNode, pick(rng, &cs.learners)));
            }
            3 if cs.voters.len() > 3 => {
                changes.push((ConfChangeType::RemoveNode, pick(rng, &cs.voters)));
            }
            3 if !cs.learners.is_empty() => {
                changes.push((ConfChangeType::RemoveNode, pick(rng, &cs.learners)));
            }
            4 if !cs.learners.is_empty() => {
                // Replace a voter by a learner in one step, through a joint configuration.
                changes.push((ConfChangeType::AddNode, pick(rng, &cs.learners)));
                changes.push((ConfChangeType::RemoveNode, pick(rng, &cs.voters)));
            }
            _ => return,
        }
        let mut cc = ConfChangeV2::default();
        for (change_type, node_id) in &changes {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(*change_type);
            single.node_id = *node_id;
            cc.mut_changes().push(single);
        }
        if changes.len() > 1 {
            cc.set_transition(ConfChangeTransition::Auto);
        }
        // Half the promotions wait for the learner to catch up (`Node::add_voter`), half
        // are immediate (`Node::add_voter_now`); by step parity, so the choice draws
        // nothing from the fault stream and every seed keeps its other faults.
        let catch_up = self.step.is_multiple_of(2);
        let step = self.step;
        let accepted = match self.nodes.get_mut(&leader) {
            Some(Slot::Up(node)) => node.propose_conf_change(cc, catch_up, step),
            _ => false,
        };
        self.event(|| {
            format!(
                "leader {leader} proposes {changes:?} (catch up: {catch_up}, accepted: {accepted})"
            )
        });
    }

    fn inject_faults(&mut self) {
        if !self.plan.active {
            return;
        }
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Up(node) if node.is_leader() => Some(*id),
                _ => None,
            })
            .collect();
        let leader = leaders.first().copied();
        if let Some(what) = self.net.update_partitions(
            self.step,
            &self.ids,
            leader,
            &self.plan,
            &mut self.rng_faults,
        ) {
            self.event(|| what);
        }
        // The slowness stays on a congested leader while it believes it leads (cut off,
        // it still does), then moves to the one that leads now.
        if !self.net.move_slowness(self.step, &leaders)
            && self.rng_faults.chance(self.plan.slow_leader_per_million)
        {
            if let Some(leader) = leader {
                let (min, max) = self.plan.partition_steps;
                let until = self.step + self.rng_faults.between(min, max);
                self.net.slow_inbound(leader, until);
                self.event(|| format!("messages to the leader are slow until step {until}"));
            }
        }
        for id in self.ids.clone() {
            if !matches!(self.nodes.get(&id), Some(Slot::Up(_))) {
                continue;
            }
            if self.rng_faults.chance(self.plan.clock_jump_per_million) {
                let by = std::time::Duration::from_millis(self.rng_faults.between(1, 1_000));
                self.event(|| format!("node {id}'s clock jumps {by:?} ahead"));
                if let Some(Slot::Up(node)) = self.nodes.get_mut(&id) {
                    node.jump_clock(by);
                }
            }
            if self.rng_faults.chance(self.plan.crash_per_million) {
                self.event(|| format!("node {id} crashes"));
                self.crash(id);
            } else if self.rng_faults.chance(self.plan.sync_failure_per_million) {
                if let Some(Slot::Up(node)) = self.nodes.get_mut(&id) {
                    node.raw_mut().mut_store().fail_next_sync();
                }
            }
        }
        if self.rng_faults.chance(self.plan.membership_per_million) {
            self.change_membership();
        }
        if self.rng_faults.chance(self.plan.transfer_per_million) {
            let to = self.ids[self.rng_faults.below(self.ids.len() as u64) as usize];
            let leader = self.nodes.iter_mut().find_map(|(id, slot)| match slot {
                Slot::Up(node) if node.is_leader() => Some((*id, node)),
                _ => None,
            });
            if let Some((from, node)) = leader {
                if from != to {
                    node.transfer_leader(to, self.step);
                    self.event(|| format!("leadership transfer {from} -> {to}"));
                }
            }
        }
    }

    /// Stops node `id`: its disk keeps what was synced; its clients' outcomes are unknown.
    fn crash(&mut self, id: u64) {
        let Some(Slot::Up(mut node)) = self.nodes.remove(&id) else {
            return;
        };
        self.crashes += 1;
        self.checkpoints_compared += node.checkpoint_counts().0;
        let disk = node.crash_disk(&mut self.rng_faults, self.plan.torn_writes);
        for op in node.abandon_all() {
            self.attempt_failed(op, id, false);
        }
        let (lo, hi) = self.plan.restart_steps;
        let restart_at = self.step + self.rng_faults.between(lo, hi.max(lo));
        self.nodes.insert(
            id,
            Slot::Down {
                disk: Box::new(disk),
                restart_at,
            },
        );
    }

    fn restart_due(&mut self) -> Result<(), SimFailure> {
        for id in self.ids.clone() {
            let due = matches!(self.nodes.get(&id), Some(Slot::Down { restart_at, .. }) if *restart_at <= self.step);
            if !due {
                continue;
            }
            let Some(Slot::Down { disk, .. }) = self.nodes.remove(&id) else {
                continue;
            };
            let voters: &[u64] = if self.initial_voters.contains(&id) {
                &self.initial_voters
            } else {
                &[]
            };
            let node = SimNode::start(
                id,
                voters,
                *disk,
                self.w.new_machine(),
                self.settings,
                self.cfg.bugs,
                self.rng_timeouts.fork(),
                self.base,
                self.step,
                &self.logger,
            )
            .map_err(|e| self.failure(format!("node {id} failed to restart: {e}")))?;
            self.event(|| format!("node {id} starts"));
            self.nodes.insert(id, Slot::Up(Box::new(node)));
        }
        Ok(())
    }

    /// Stops the faults, heals the network, restarts every node; then the cluster must
    /// elect a leader, commit in its term and answer a final read of every key.
    fn recover(&mut self) -> Result<(), SimFailure> {
        self.plan.active = false;
        self.net.heal();
        self.event(|| "faults stop; network healed".into());
        // Resends stop with the faults: a write waiting for one stays unknown.
        self.recovering = true;
        for k in 0..self.clients.len() {
            let due = self.clients[k]
                .retry
                .as_ref()
                .filter(|r| r.due)
                .map(|r| r.op);
            if let Some(op) = due {
                self.history.fail_unknown(op, self.step);
                self.release(op);
            }
        }
        for slot in self.nodes.values_mut() {
            if let Slot::Down { restart_at, .. } = slot {
                *restart_at = 0;
            }
        }
        self.restart_due()?;
        let deadline = self.step + self.cfg.recovery_steps;
        let finals = self.w.final_reads().len();
        let mut next_final = 0;
        let final_client = self.clients.len();
        self.clients.push(Client::new(0, self.ids[0], false, false));
        while next_final < finals || self.clients.iter().any(|c| c.current.is_some()) {
            if self.step >= deadline {
                return Err(self.failure(format!(
                    "no recovery: {} steps after faults stopped, {} of {finals} final reads \
                     are still unanswered (latest leaders by term: {:?})",
                    self.cfg.recovery_steps,
                    finals - next_final,
                    self.leaders.iter().rev().take(3).collect::<Vec<_>>()
                )));
            }
            self.one_step(false)?;
            let c = &self.clients[final_client];
            if next_final < finals
                && c.current.is_none()
                && c.next_at <= self.step
                && self.leader_committed_in_term()
            {
                let target = c.target;
                let Some(input) = self.w.final_reads().into_iter().nth(next_final) else {
                    break;
                };
                let before = self.history.len();
                self.invoke(
                    final_client,
                    0,
                    target,
                    ClientOp::Read(input, ReadMode::Linearizable),
                );
                if self.history.len() > before {
                    next_final += 1;
                }
            }
        }
        Ok(())
    }

    fn leader_committed_in_term(&self) -> bool {
        self.nodes.values().any(|slot| match slot {
            Slot::Up(node) => {
                let log = &node.raw().raft.raft_log;
                node.is_leader() && log.term(log.committed).ok() == Some(node.raw().raft.term)
            }
            Slot::Down { .. } => false,
        })
    }

    /// Log matching on committed prefixes: every committed entry a node holds equals the
    /// entry applied at that index anywhere (Raft §5.3, Log Matching; §5.4 Leader
    /// Completeness).
    fn check_logs(&self) -> Result<(), SimFailure> {
        for (id, slot) in &self.nodes {
            let Slot::Up(node) = slot else { continue };
            let commit = node.raw().raft.raft_log.committed;
            for e in node.raw().store().written().entries() {
                if e.index > commit {
                    break;
                }
                // Conf changes and empty entries reach the state machine as no-ops.
                let hash = if e.data.is_empty() || e.get_entry_type() != EntryType::EntryNormal {
                    0
                } else {
                    fnv(&e.data) | 1
                };
                if let Some(&(term, h)) = self.applied_log.get(&e.index) {
                    if (term, h) != (e.term, hash) {
                        return Err(self.failure(format!(
                            "node {id} holds committed entry {} of term {} that differs from \
                             the one applied (term {term})",
                            e.index, e.term
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn describe(m: &Message, delivered: bool) -> String {
    // A read context is (node, incarnation, round): the trace shows node and round.
    let ctx = match m.context.len() {
        24 => format!(
            " ctx={}:{}",
            u64::from_le_bytes(m.context[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(m.context[16..].try_into().expect("8 bytes"))
        ),
        _ => String::new(),
    };
    format!(
        "{} {}->{} {:?} term={} index={} log_term={} commit={} entries={} reject={}{ctx}",
        if delivered { "deliver" } else { "lost" },
        m.from,
        m.to,
        m.get_msg_type(),
        m.term,
        m.index,
        m.log_term,
        m.commit,
        m.entries.len(),
        m.reject
    )
}

/// Whether two ConfStates name the same members in the same roles.
fn same_conf(a: &raft::eraftpb::ConfState, b: &raft::eraftpb::ConfState) -> bool {
    let set = |v: &[u64]| {
        v.iter()
            .copied()
            .collect::<std::collections::BTreeSet<u64>>()
    };
    set(&a.voters) == set(&b.voters)
        && set(&a.voters_outgoing) == set(&b.voters_outgoing)
        && set(&a.learners) == set(&b.learners)
        && set(&a.learners_next) == set(&b.learners_next)
        && a.auto_leave == b.auto_leave
}
