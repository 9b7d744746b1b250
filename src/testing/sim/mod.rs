//! A deterministic simulator: a seeded, single-threaded cluster that runs the real Ready
//! loop (`driver::drive`) under virtual time, injects faults drawn from the seed, and
//! checks every run for linearizability and Raft's invariants.
//!
//! One seed is one run: the same seed replays the same run, event for event. A failing
//! run reports its seed and the command that replays it.
//!
//! What a run does, step by step (one step is one unit of virtual time):
//!
//! 1. deliver the messages due now (faults: drop, duplicate, delay and so reorder,
//!    symmetric and one-way partitions that come and go);
//! 2. let idle clients issue their next operation to the node they believe leads;
//! 3. every `tick_steps` steps, tick every live node's raft clock;
//! 4. drive every node's Ready loop (the real `driver::drive`), serve reads,
//!    take snapshots per policy;
//! 5. inject node faults: crash (the disk keeps only what was synced), fsync failure (the
//!    node stops, like the runtime), restart, leadership transfer, membership change
//!    (add a spare as learner, promote, remove, joint replacement; a removed node leaves
//!    for good and a fresh spare takes its place);
//! 6. check invariants: one leader per term, applied entries agree across nodes (log
//!    matching on the committed prefix), equal state at equal applied index; with
//!    client sessions ([`SessionWorkload`]), no command applied at two indexes.
//!
//! After the faulty phase the network heals and every node restarts: the cluster must
//! elect a leader and commit again within a bound, then every key is read once more and
//! the whole history goes through the [`crate::testing::linearizability`] checker.
//!
//! # Examples
//!
//! Run the simulator on your own state machine: implement [`Workload`] (what clients do
//! and what they should see) and a sequential [`Model`].
//!
//! ```
//! use bytes::Bytes;
//! use raftnode::testing::linearizability::Model;
//! use raftnode::testing::sim::{self, ClientOp, ReadMode, SimConfig, SimRng, Workload};
//! use raftnode::{StateMachine, StateMachineError};
//!
//! /// The user's state machine: a counter that adds each command's first byte.
//! #[derive(Default)]
//! struct Counter { total: u64, applied: u64 }
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
//!         self.total += u64::from(command.first().copied().unwrap_or(0));
//!         self.applied = index;
//!         self.total
//!     }
//!     fn apply_noop(&mut self, index: u64) { self.applied = index; }
//!     fn applied_index(&self) -> u64 { self.applied }
//!     fn snapshot(&self) -> Result<Bytes, StateMachineError> {
//!         Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
//!     }
//!     fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
//!         let raw: [u8; 8] = data.try_into().map_err(StateMachineError::new)?;
//!         self.total = u64::from_le_bytes(raw);
//!         self.applied = index;
//!         Ok(())
//!     }
//! }
//!
//! #[derive(Debug, Clone)]
//! enum Op { Add(u8), Read }
//!
//! /// What a counter should do, one operation at a time.
//! struct CounterModel;
//! impl Model for CounterModel {
//!     type State = u64;
//!     type Input = Op;
//!     type Output = u64;
//!     fn init(&self) -> u64 { 0 }
//!     fn step(&self, total: &u64, op: &Op) -> (u64, u64) {
//!         match op { Op::Add(n) => (total + u64::from(*n), total + u64::from(*n)), Op::Read => (*total, *total) }
//!     }
//! }
//!
//! struct CounterWorkload;
//! impl Workload for CounterWorkload {
//!     type Machine = Counter;
//!     type Model = CounterModel;
//!     fn model(&self) -> CounterModel { CounterModel }
//!     fn new_machine(&self) -> Counter { Counter::default() }
//!     fn next_op(&self, rng: &mut SimRng) -> ClientOp<Op> {
//!         if rng.below(2) == 0 {
//!             let n = rng.between(1, 9) as u8;
//!             ClientOp::Write(Op::Add(n), Bytes::from(vec![n]))
//!         } else {
//!             ClientOp::Read(Op::Read, ReadMode::Linearizable)
//!         }
//!     }
//!     fn write_output(&self, _op: &Op, response: u64) -> u64 { response }
//!     fn read_output(&self, counter: &Counter, _op: &Op) -> u64 { counter.total }
//!     fn final_reads(&self) -> Vec<Op> { vec![Op::Read] }
//! }
//!
//! for seed in 0..3 {
//!     let config = SimConfig { steps: 2_000, ..SimConfig::from_seed(seed) };
//!     let report = sim::run(&CounterWorkload, &config)?;
//!     assert!(report.operations > 0);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cluster;
pub(crate) mod disk;
mod history;
mod hostile;
pub mod kv;
mod network;
mod node;
mod rng;
mod sessions;

use std::fmt;

use bytes::Bytes;

pub use cluster::run;
pub use disk::SimStore;
pub use history::{History, OpId, Operation};
pub use hostile::{Hostile, HostileTarget, Mutation};
pub use rng::SimRng;
pub use sessions::SessionWorkload;

use crate::state_machine::StateMachine;
use crate::testing::linearizability::Model;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: the leader confirms its leadership with a quorum round first.
    Linearizable,
    /// The leader's lease (needs [`SimConfig::lease_reads`]); falls back to ReadIndex
    /// until the leader has committed in its term.
    Lease,
}

/// What a simulated client does next.
#[derive(Debug, Clone)]
pub enum ClientOp<I> {
    /// Propose `command` (the bytes the state machine's `apply` receives); `I` is the
    /// same operation as the model sees it.
    Write(I, Bytes),
    /// Read through `ReadMode`, answered by [`Workload::read_output`].
    Read(I, ReadMode),
}

/// What the simulator runs: the user's state machine, the operations clients issue, and
/// the sequential model their results are checked against.
pub trait Workload {
    /// The replicated state machine; one fresh instance per node start (a restart
    /// rebuilds it from the synced snapshot and log, so its applied index is never ahead
    /// of what is durable).
    type Machine: StateMachine;
    /// The sequential specification the history must be linearizable against.
    type Model: Model;

    /// Returns the model.
    fn model(&self) -> Self::Model;

    /// Returns a fresh, empty state machine.
    fn new_machine(&self) -> Self::Machine;

    /// Draws a client's next operation.
    fn next_op(&self, rng: &mut SimRng) -> ClientOp<<Self::Model as Model>::Input>;

    /// The output the client sees for a write, from the state machine's response.
    fn write_output(
        &self,
        input: &<Self::Model as Model>::Input,
        response: <Self::Machine as StateMachine>::Response,
    ) -> <Self::Model as Model>::Output;

    /// The output the client sees for a read, computed on the serving node's state.
    fn read_output(
        &self,
        machine: &Self::Machine,
        input: &<Self::Model as Model>::Input,
    ) -> <Self::Model as Model>::Output;

    /// Reads issued once the cluster has recovered, so that every acknowledged write is
    /// checked to have survived.
    fn final_reads(&self) -> Vec<<Self::Model as Model>::Input>;

    /// A digest of the whole state, compared across nodes at equal applied index.
    /// The default hashes [`StateMachine::snapshot`]'s bytes; `None` skips the check.
    fn digest(&self, machine: &Self::Machine) -> Option<u64> {
        machine.snapshot().ok().map(|b| crate::digest::fnv(&b))
    }

    /// With client sessions ([`crate::Sessions`]; see [`SessionWorkload`]): the command
    /// a client proposes to open its session before its first write. `None`, the
    /// default, runs without sessions: a client whose write's outcome is unknown gives
    /// up on it. With sessions, it retries the same command on another node until one
    /// answers, and the simulator checks no command is applied twice.
    fn register_command(&self) -> Option<Bytes> {
        None
    }

    /// The session id a registration's response carries.
    fn registered(&self, response: &<Self::Machine as StateMachine>::Response) -> Option<u64> {
        let _ = response;
        None
    }

    /// `command` as the `seq`-th of session `session`.
    fn in_session(&self, session: u64, seq: u64, command: &Bytes) -> Bytes {
        let _ = (session, seq);
        command.clone()
    }

    /// Whether a write's response says it was not applied for its session (expired,
    /// stale): its outcome stays unknown and the client opens a new session.
    fn session_lost(&self, response: &<Self::Machine as StateMachine>::Response) -> bool {
        let _ = response;
        false
    }

    /// The (session, sequence number) a command was applied for, when this application
    /// ran it (not a repeat answered from the session table): the simulator fails a run
    /// in which one is applied at two indexes.
    fn fresh_apply(
        command: &[u8],
        response: &<Self::Machine as StateMachine>::Response,
    ) -> Option<(u64, u64)>
    where
        Self: Sized,
    {
        let _ = (command, response);
        None
    }
}

/// Which faults a run injects, and how often (rates are per million steps or
/// messages). [`FaultPlan::from_rng`] draws one per seed.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Whether faults are on; the simulator turns them off for the recovery phase.
    pub active: bool,
    /// Chance a message is lost, per million messages.
    pub drop_per_million: u32,
    /// Chance a message is delivered twice.
    pub duplicate_per_million: u32,
    /// Normal delivery takes `1..=max_delay_steps` steps (so messages reorder).
    pub max_delay_steps: u64,
    /// Chance a message is held back 20 to 200 steps more.
    pub long_delay_per_million: u32,
    /// Chance per step that a partition starts (when none is active).
    pub partition_per_million: u32,
    /// How long a partition lasts, in steps: (min, max).
    pub partition_steps: (u64, u64),
    /// Chance per step and node that it crashes.
    pub crash_per_million: u32,
    /// Chance per step and node that its next fsync fails (the node stops).
    pub sync_failure_per_million: u32,
    /// Whether a crash may persist a prefix of the unsynced writes (a torn write).
    pub torn_writes: bool,
    /// A stopped node restarts after this many steps: (min, max).
    pub restart_steps: (u64, u64),
    /// Chance per step that the leader is asked to transfer leadership.
    pub transfer_per_million: u32,
    /// Chance per step that the leader proposes a membership change: add a spare node
    /// as a learner, promote a learner, remove a voter or a learner, or replace a voter
    /// by a learner through a joint configuration.
    pub membership_per_million: u32,
    /// Chance per step and node that its clock jumps forward by up to a second (a
    /// paused VM, an NTP step): a leader's lease must then end early, never late.
    pub clock_jump_per_million: u32,
    /// Chance per step that the leader's inbound links turn slow for a partition's
    /// length: every message to it takes `slow_leader_extra_steps` more (a congested
    /// leader), while its own messages go out at normal speed. The slowness stays on
    /// that node while it believes it leads.
    pub slow_leader_per_million: u32,
    /// How much later a message to a slow leader arrives, in steps: (min, max).
    pub slow_leader_extra_steps: (u64, u64),
}

impl FaultPlan {
    /// No faults at all; messages still take 1 to 3 steps.
    pub fn none() -> Self {
        FaultPlan {
            active: false,
            drop_per_million: 0,
            duplicate_per_million: 0,
            max_delay_steps: 3,
            long_delay_per_million: 0,
            partition_per_million: 0,
            partition_steps: (50, 500),
            crash_per_million: 0,
            sync_failure_per_million: 0,
            torn_writes: false,
            restart_steps: (20, 300),
            transfer_per_million: 0,
            membership_per_million: 0,
            clock_jump_per_million: 0,
            slow_leader_per_million: 0,
            slow_leader_extra_steps: (30, 90),
        }
    }

    /// Draws a plan: each fault class is on or off and at a rate chosen by `rng`, so
    /// that some seeds stress one fault hard and others mix them.
    pub fn from_rng(rng: &mut SimRng) -> Self {
        let mut rate = |max: u64| -> u32 {
            if rng.below(4) == 0 {
                0
            } else {
                rng.below(max + 1) as u32
            }
        };
        let drop = rate(50_000);
        let duplicate = rate(20_000);
        let long_delay = rate(5_000);
        let partition = rate(3_000);
        let crash = rate(1_000);
        let sync_failure = rate(300);
        let transfer = rate(2_000);
        let membership = rate(2_000);
        let clock_jump = rate(200);
        let slow_leader = rate(1_000);
        FaultPlan {
            active: true,
            drop_per_million: drop,
            duplicate_per_million: duplicate,
            max_delay_steps: rng.between(1, 6),
            long_delay_per_million: long_delay,
            partition_per_million: partition,
            partition_steps: (20, rng.between(100, 1_000)),
            crash_per_million: crash,
            sync_failure_per_million: sync_failure,
            torn_writes: rng.below(2) == 0,
            restart_steps: (5, rng.between(50, 500)),
            transfer_per_million: transfer,
            membership_per_million: membership,
            clock_jump_per_million: clock_jump,
            slow_leader_per_million: slow_leader,
            slow_leader_extra_steps: (30, 90),
        }
    }
}

/// Test-only switches that re-introduce classic bugs, to prove the simulator catches
/// them. All off by default; never turn one on outside such a test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Send votes and append acks before the Ready's writes are synced (the driver's
    /// `send_before_sync` fault).
    pub send_before_sync: bool,
    /// The disk acknowledges a sync one Ready before it makes the writes durable.
    pub ack_before_sync: bool,
    /// Serve a linearizable read from a node that believes it leads, without ReadIndex.
    pub read_without_read_index: bool,
    /// Install a leader's snapshot in the log store without restoring the state
    /// machine from it (the driver's `skip_snapshot_restore` fault).
    pub skip_snapshot_restore: bool,
    /// Apply and acknowledge a leader's new entries once they are on its own disk,
    /// before a quorum has them: before the commit is durable (the driver's
    /// `apply_before_commit` fault).
    pub apply_before_commit: bool,
    /// Compact the log to its last index when taking a snapshot, past the snapshot
    /// (the driver's `compact_past_snapshot` fault; the simulated disk then accepts it,
    /// as a store that does not check would).
    pub compact_past_snapshot: bool,
    /// Tell raft a Ready's entries were applied before the state machine applied them
    /// (the guide's `advance` before apply); they reach the state machine a drive later.
    pub advance_before_apply: bool,
    /// Forget to persist the commit index a `LightReady` carries.
    pub light_commit_not_persisted: bool,
    /// Forget to persist the ConfState `apply_conf_change` returns.
    pub conf_state_not_persisted: bool,
    /// Hand `Linearizable` reads to raft-rs's `LeaseBased` read-only mode when
    /// `lease_reads` is on (raftnode 0.1's bug: a cut-off leader answers them).
    pub linearizable_from_raft_lease: bool,
    /// Measure the leader lease from when a quorum round's confirmation was received,
    /// not from when the round was sent.
    pub lease_from_receipt: bool,
    /// Number ReadIndex contexts from 1 at every start and retry a waiting read with
    /// the same context (raftnode 0.1's bug: a late acknowledgement of the first use
    /// confirms the second, and every read queued before it).
    pub read_ctx_reused: bool,
    /// Ignore peers' "not a member" notices (raftnode 0.1: a node that missed the
    /// commit of its own removal never learns it).
    pub removal_notice_ignored: bool,
    /// Keep a removal learnt from peers' notices for good, never campaigning to hear
    /// the voters again: forged notices to every node stop the group for good.
    pub removal_belief_final: bool,
    /// Hand leadership to any voter, also one that announced it is shutting down or has
    /// not been heard from (raftnode 0.1).
    pub transfer_to_any_voter: bool,
    /// Wake a quiet group only on peer messages, not on a proposal or read from the
    /// node's own host: a quiet group whose leader died never notices.
    pub quiet_wakes_only_on_messages: bool,
    /// Stretch a leader's lease over the time its group is quiet: a cut-off quiet
    /// leader answers lease reads after another leader was elected.
    pub lease_kept_while_quiet: bool,
    /// Serve an `AtLeast` read at once, without waiting for the token's write.
    pub token_read_without_wait: bool,
    /// Promote a joining voter at once, without waiting for it to catch up as a
    /// learner (raftnode 0.1's `add_voter`).
    pub promote_without_catch_up: bool,
}

impl Bugs {
    /// The switches the per-group core itself honours (all but `ack_before_sync`, which
    /// is the simulated disk's).
    pub(crate) fn faults(&self) -> crate::driver::Faults {
        crate::driver::Faults {
            send_before_sync: self.send_before_sync,
            skip_snapshot_restore: self.skip_snapshot_restore,
            apply_before_commit: self.apply_before_commit,
            compact_past_snapshot: self.compact_past_snapshot,
            advance_before_apply: self.advance_before_apply,
            light_commit_not_persisted: self.light_commit_not_persisted,
            conf_state_not_persisted: self.conf_state_not_persisted,
            read_without_read_index: self.read_without_read_index,
            linearizable_from_raft_lease: self.linearizable_from_raft_lease,
            lease_from_receipt: self.lease_from_receipt,
            read_ctx_reused: self.read_ctx_reused,
            removal_notice_ignored: self.removal_notice_ignored,
            removal_belief_final: self.removal_belief_final,
            transfer_to_any_voter: self.transfer_to_any_voter,
            quiet_wakes_only_on_messages: self.quiet_wakes_only_on_messages,
            lease_kept_while_quiet: self.lease_kept_while_quiet,
            token_read_without_wait: self.token_read_without_wait,
            promote_without_catch_up: self.promote_without_catch_up,
        }
    }
}

/// Everything that defines one run. [`SimConfig::from_seed`] derives it all from the
/// seed, which is what makes a seed replayable on its own.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Steps of the faulty phase.
    pub steps: u64,
    /// Number of voters (3 or 5 from the seed).
    pub nodes: u64,
    /// Nodes started outside the group, for membership changes to add (0 to 2 from
    /// the seed). A removed node never comes back; a fresh spare with a new id takes
    /// its place, up to `nodes + spare_nodes + 6` ids in all.
    pub spare_nodes: u64,
    /// Number of clients, each with at most one operation outstanding. They follow
    /// refusals to the leader.
    pub clients: u64,
    /// Two more clients per node, pinned to it: they never follow a refusal, so they
    /// keep reading on a leader cut off from the group (`Lease` reads there) and on
    /// followers (`Linearizable` reads forwarded to the leader). One of each pair only
    /// reads, so it is never stuck behind a write that cannot commit. On in half the
    /// seeds.
    pub pinned_clients: bool,
    /// The faults to inject.
    pub faults: FaultPlan,
    /// Steps per raft tick.
    pub tick_steps: u64,
    /// Election timeout, in ticks; each randomized timeout is drawn from the seed in
    /// `election_ticks..2*election_ticks`.
    pub election_ticks: usize,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// A client gives up on an operation after this many steps (outcome unknown).
    pub client_timeout_steps: u64,
    /// Take a snapshot after this many applied entries (0: never).
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot when compacting.
    pub snapshot_trailing: u64,
    /// Serve lease reads (raft's `LeaseBased` read-only option); on in a quarter of
    /// the seeds.
    pub lease_reads: bool,
    /// After the faulty phase, the cluster must commit again within this many steps.
    pub recovery_steps: u64,
    /// Search budget of the linearizability checker, per key.
    pub check_budget: u64,
    /// Record every event in [`SimReport::trace`].
    pub trace: bool,
    /// Bugs to re-introduce (tests of the harness only).
    pub bugs: Bugs,
    /// Hostile messages per million steps during the faulty phase (may exceed a
    /// million: several per step), each aimed at a random live node in the name of
    /// another (docs/hostile-fuzzing.md). 0, the default, turns the generator off; it
    /// draws from a stream of its own, so a seed replays the same with it off as it
    /// did before it existed.
    pub hostile_per_million: u64,
    /// Every node's `Config::quiesce_after_timeouts` (0: off). With it on, clients
    /// also pause for [`QUIET_SPELL`] of every [`QUIET_SPELL_EVERY`] steps of the faulty
    /// phase, so groups go quiet while faults go on. On (1 or 2) in a third of the
    /// seeds, drawn from a stream of its own: the other seeds replay as before.
    pub quiesce_after_timeouts: usize,
    /// Every node's `Config::checkpoint_every` (0: off): leaders put checkpoint markers
    /// in the log and replicas compare state machine digests there; an honest run must
    /// report no divergence. On (10 to 60) in a third of the seeds, drawn from a stream
    /// of its own: the other seeds replay as before.
    pub checkpoint_every: u64,
}

/// Steps of each quiet spell: clients issue nothing (see
/// [`SimConfig::quiesce_after_timeouts`]).
pub const QUIET_SPELL: u64 = 600;
/// A quiet spell ends every this many steps of the faulty phase.
pub const QUIET_SPELL_EVERY: u64 = 2_000;

impl SimConfig {
    /// Derives a whole run from `seed`, with 10,000 steps.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SimRng::new(seed ^ 0x5151_5151_5151_5151);
        let nodes = if rng.below(3) == 0 { 5 } else { 3 };
        let lease_reads = rng.below(4) == 0;
        SimConfig {
            seed,
            steps: 10_000,
            nodes,
            spare_nodes: rng.below(3),
            clients: rng.between(1, 5),
            faults: FaultPlan::from_rng(&mut rng),
            tick_steps: 5,
            election_ticks: 10,
            heartbeat_ticks: 2,
            client_timeout_steps: rng.between(100, 400),
            snapshot_every: rng.between(5, 80),
            snapshot_trailing: rng.below(10),
            lease_reads,
            recovery_steps: 5_000,
            check_budget: 100_000_000,
            trace: false,
            bugs: Bugs::default(),
            pinned_clients: rng.below(2) == 0,
            hostile_per_million: 0,
            checkpoint_every: {
                let mut c = SimRng::new(seed ^ 0x00C4_EC4B_0000_0001);
                if c.below(3) == 0 {
                    c.between(10, 60)
                } else {
                    0
                }
            },
            quiesce_after_timeouts: {
                let mut q = SimRng::new(seed ^ 0x0051_E700_0000_0001);
                if q.below(3) == 0 {
                    1 + q.below(2) as usize
                } else {
                    0
                }
            },
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// The run's seed.
    pub seed: u64,
    /// Steps simulated, recovery included.
    pub steps: u64,
    /// Client operations recorded and checked.
    pub operations: u64,
    /// Of those, how many got a response (the rest are unknown).
    pub completed: u64,
    /// Messages sent, and dropped by faults or partitions.
    pub messages: u64,
    /// Messages lost to faults or partitions.
    pub messages_dropped: u64,
    /// Node crashes and fsync failures injected.
    pub crashes: u64,
    /// Highest commit index reached.
    pub commit_index: u64,
    /// Leaders elected (distinct terms with a leader).
    pub leaders: u64,
    /// Snapshots taken by all nodes.
    pub snapshots: u64,
    /// Node-ticks on which the node was quiet ([`SimConfig::quiesce_after_timeouts`]).
    pub quiet_ticks: u64,
    /// Wall-clock time the linearizability check of the history took.
    pub check_time: std::time::Duration,
    /// Every event, one per line, when [`SimConfig::trace`] was set.
    pub trace: Option<String>,
    /// Hostile messages stepped into live nodes ([`SimConfig::hostile_per_million`]).
    pub hostile_messages: u64,
    /// Of those, how many of each kind.
    pub hostile_by_mutation: std::collections::BTreeMap<Mutation, u64>,
    /// Of those, how many the checks refused, by reason.
    pub hostile_refused: std::collections::BTreeMap<crate::Refusal, u64>,
    /// Of those, how many passed the checks to raft-rs (or to the notice handling).
    pub hostile_passed: u64,
    /// Sessions opened by clients ([`Workload::register_command`]).
    pub sessions: u64,
    /// Write attempts resent because an earlier attempt's outcome was unknown.
    pub retries: u64,
    /// Session commands applied, each checked to be applied at one index only.
    pub session_applies: u64,
    /// Token reads served (session clients reading their last write back on any
    /// node), each checked to be served at or past its token.
    pub token_reads: u64,
    /// Checkpoint digests compared with the leader's ([`SimConfig::checkpoint_every`]),
    /// over every node start; none may differ.
    pub checkpoints_compared: u64,
}

/// A failed run: what went wrong, and how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The run's seed.
    pub seed: u64,
    /// The step at which the failure was found.
    pub step: u64,
    /// What was violated.
    pub message: String,
    /// The last events before the failure; every event when [`SimConfig::trace`] was set.
    pub recent_events: Vec<String>,
    /// The run's [`SimConfig::hostile_per_million`], for the replay command.
    pub hostile_per_million: u64,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        if !self.recent_events.is_empty() {
            writeln!(f, "last events:")?;
            for e in &self.recent_events {
                writeln!(f, "  {e}")?;
            }
        }
        if self.hostile_per_million > 0 {
            return write!(
                f,
                "replay: RAFTNODE_HOSTILE_SEED={} RAFTNODE_HOSTILE_RATE={} RAFTNODE_SIM_TRACE=1 \
                 cargo test --release --all-features --test hostile_fuzz replay -- --nocapture",
                self.seed, self.hostile_per_million
            );
        }
        write!(
            f,
            "replay: RAFTNODE_SIM_SEED={} RAFTNODE_SIM_TRACE=1 cargo test --release --all-features \
             --test simulation replay -- --nocapture",
            self.seed
        )
    }
}

impl std::error::Error for SimFailure {}
