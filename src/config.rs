//! Node configuration: raftnode's knobs and the `raft::Config` built from them.

use std::time::Duration;

use crate::error::ConfigError;

/// When the node takes a snapshot of its state machine and compacts its log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotPolicy {
    /// Take a snapshot once this many entries were applied since the last one.
    /// `0` disables automatic snapshots ([`crate::Node::snapshot_now`] still works).
    pub every_applied: u64,
    /// Entries kept in the log behind the snapshot index, so that a follower only a
    /// little behind catches up from the log instead of a full snapshot.
    pub trailing_entries: u64,
    /// How long a leader waits for the transport to report on a `MsgSnapshot` it sent
    /// before it reports a failure itself (so the follower is never stuck paused).
    pub report_timeout: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_applied: 10_000,
            trailing_entries: 1_000,
            report_timeout: Duration::from_secs(60),
        }
    }
}

/// Configuration of one node.
///
/// Build it with [`Config::new`] and adjust fields; [`Config::validate`] (called by
/// [`crate::Node::start`]) names the field and the limit of anything out of range.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let mut config = raftnode::Config::new(1);
/// config.tick_interval = Duration::from_millis(50);
/// config.validate()?;
/// # Ok::<(), raftnode::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's id: non-zero, unique in the cluster, never reused after removal.
    pub id: u64,
    /// Voters of a new cluster. On first start (empty `LogStore`) a node whose list is
    /// non-empty bootstraps the group with these voters; a node started with an empty
    /// list waits to be added by a leader. Ignored when the store already holds state.
    pub initial_voters: Vec<u64>,
    /// Ticks without hearing from a leader before a follower campaigns. raft-rs draws the
    /// real timeout from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats. Must be smaller than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Wall-clock length of one tick.
    pub tick_interval: Duration,
    /// Most bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// A leader that has not heard from a quorum for an election timeout steps down.
    pub check_quorum: bool,
    /// A node asks for votes in a pre-vote round first, so a partitioned node does not
    /// disrupt the cluster when it returns.
    pub pre_vote: bool,
    /// Serve [`crate::ReadConsistency::Lease`] reads from the leader's lease
    /// (docs/reads.md). Requires `check_quorum`. `Linearizable` reads always cost a
    /// quorum round, whatever this says.
    pub lease_reads: bool,
    /// The most a follower's clock may run faster than the leader's, as a fraction of
    /// the time measured (0.1: ten per cent). The lease lasts
    /// `(election_ticks - 1) * tick_interval * (1 - max_clock_drift)` from when its
    /// quorum round was sent; a drift beyond this bound can make a lease read stale.
    pub max_clock_drift: f64,
    /// Most bytes of proposed-but-uncommitted entries a leader holds; beyond it proposals
    /// are dropped. `0` means no limit.
    pub max_uncommitted_bytes: u64,
    /// Most bytes of committed entries handed to the state machine per Ready.
    pub max_committed_bytes_per_ready: u64,
    /// Largest command accepted by `propose`.
    pub max_proposal_bytes: usize,
    /// Capacity of the queue of client requests (proposals, reads, admin calls).
    pub max_pending_requests: usize,
    /// Capacity of the queue of messages from peers; when full, messages are dropped
    /// (raft retransmits).
    pub max_pending_messages: usize,
    /// Most queued inputs the driver takes before it handles a Ready; all proposals
    /// taken in one round travel in one `MsgPropose`.
    pub max_batch: usize,
    /// Snapshot and compaction policy.
    pub snapshot: SnapshotPolicy,
    /// How long graceful shutdown waits for leadership to move before stopping anyway.
    pub shutdown_transfer_timeout: Duration,
    /// Log a warning when this many elections start without a leader lasting for an
    /// election timeout in between; also what raises the election timeout
    /// (`election_backoff_limit`).
    pub election_storm_threshold: u64,
    /// Election storms back off: each `election_storm_threshold` elections without a
    /// lasting leader double the randomized election timeout range, up to this factor;
    /// once a leader has lasted 5 election timeouts the
    /// factor halves again, down to 1. A longer timeout only makes followers wait
    /// longer, so the lease and check-quorum stay as they are. 1 turns it off. See
    /// docs/operations.md, "Election storms".
    pub election_backoff_limit: usize,
    /// Pin raft-rs's randomized election timeout range `[min, max)` in ticks; `None`
    /// keeps raft-rs's default `[election_ticks, 2 * election_ticks)`.
    pub election_tick_range: Option<(usize, usize)>,
    /// Quiescence: after this many election timeouts with nothing to do (no proposal,
    /// read, transfer or membership change, every member holding the whole log), a
    /// leader tells its followers and the group stops ticking: no heartbeats, no
    /// elections, no timer turns, until a proposal, a read, a message or an unreachable
    /// report wakes it. 0 (the default) never quiesces. See docs/multi-raft.md,
    /// "Quiescence", for what it costs: a quiet group notices a dead leader only once
    /// something wakes it.
    pub quiesce_after_timeouts: usize,
    /// Adding a voter safely: a node joining as a voter first receives the log as a
    /// learner and is promoted only once the leader replicates to it steadily (no
    /// snapshot in flight) and it holds all but at most this many committed entries.
    /// See docs/membership.md, "Adding a voter safely".
    pub catch_up_lag: u64,
    /// Divergence detection: the leader puts a checkpoint in the log once this many
    /// entries were applied since the last one, every replica takes its state
    /// machine's [`digest`](crate::StateMachine::digest) right after applying it, and
    /// the leader then logs its own digest for the others to compare with. 0 (the
    /// default) turns it off; otherwise at least 10 (each checkpoint adds two empty
    /// entries to the log). A state machine without a
    /// digest gains nothing from it. See docs/operations.md, "Divergence".
    pub checkpoint_every: u64,
    /// Stop this node (`StopReason::Diverged`) when its state machine's digest at a
    /// checkpoint differs from the leader's, instead of only reporting it. Off by
    /// default. If the leader's own state machine is the faulty one, every follower
    /// stops and the group loses its majority: it stops serving rather than serve
    /// diverged state.
    pub stop_on_divergence: bool,
    /// Time every proposal through queued, appended, synced, committed, applied and
    /// returned, kept as histograms in [`Status::proposal_timing`](crate::Status::proposal_timing)
    /// (docs/operations.md, "Proposal timing"). On by default: it reads the clock once
    /// per proposal and a few times per Ready (docs/benchmarks.md measures what that
    /// costs); [`Node::set_proposal_timing`](crate::Node::set_proposal_timing) switches
    /// it at run time. A replica keeps about 1.3 KiB for it once it has timed a
    /// proposal (up to about 4.5 KiB, by the sizes of its parts, when its stages' times
    /// spread widely).
    pub proposal_timing: bool,
    /// With `proposal_timing`, a proposal that takes longer than this from `propose` to
    /// returned is counted in [`ProposalTiming::slow_proposals`](crate::ProposalTiming::slow_proposals)
    /// and logged at warn with the time it spent in each stage and the slowest stage
    /// named (at most one line a second). `None` (the default) turns it off.
    pub slow_proposal: Option<Duration>,
    /// Record every input the core receives to a file, for an offline
    /// [`replay`](crate::replay) (docs/operations.md, "Record and replay"). `None` (the
    /// default) records nothing.
    pub record: Option<crate::RecordTo>,
}

/// The smallest non-zero [`Config::checkpoint_every`]: each checkpoint adds two
/// entries, which must not be enough to make the next one due.
pub(crate) const MIN_CHECKPOINT_EVERY: u64 = 10;

impl Config {
    /// A configuration with the defaults below for node `id`.
    ///
    /// | knob | default |
    /// |---|---|
    /// | `election_ticks` / `heartbeat_ticks` | 10 / 2 |
    /// | `tick_interval` | 100 ms |
    /// | `max_size_per_msg` | 1 MiB |
    /// | `max_inflight_msgs` | 256 |
    /// | `check_quorum`, `pre_vote` | on |
    /// | `lease_reads` | off |
    /// | `max_clock_drift` | 0.1 |
    /// | `max_uncommitted_bytes` | 256 MiB |
    /// | `max_committed_bytes_per_ready` | 16 MiB |
    /// | `max_proposal_bytes` | 1 MiB |
    /// | `max_pending_requests` / `max_pending_messages` | 65 536 / 65 536 |
    /// | `max_batch` | 4 096 |
    /// | `election_storm_threshold` / `election_backoff_limit` | 5 / 4 |
    /// | `quiesce_after_timeouts` | 0 (never) |
    /// | `catch_up_lag` | 1 000 entries |
    /// | `checkpoint_every` / `stop_on_divergence` | 0 (off) / off |
    /// | `proposal_timing` / `slow_proposal` | on / `None` (no log) |
    /// | `record` | `None` (off) |
    pub fn new(id: u64) -> Self {
        Config {
            id,
            initial_voters: Vec::new(),
            election_ticks: 10,
            heartbeat_ticks: 2,
            tick_interval: Duration::from_millis(100),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            lease_reads: false,
            max_clock_drift: 0.1,
            max_uncommitted_bytes: 256 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            max_proposal_bytes: 1 << 20,
            max_pending_requests: 65_536,
            max_pending_messages: 65_536,
            max_batch: 4_096,
            snapshot: SnapshotPolicy::default(),
            shutdown_transfer_timeout: Duration::from_secs(2),
            election_storm_threshold: 5,
            election_backoff_limit: 4,
            election_tick_range: None,
            quiesce_after_timeouts: 0,
            catch_up_lag: 1_000,
            checkpoint_every: 0,
            stop_on_divergence: false,
            proposal_timing: true,
            slow_proposal: None,
            record: None,
        }
    }

    /// Checks every field and their relations.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field out of range and its limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::new(
                "id",
                "node id 0 is reserved; use 1 or more",
            ));
        }
        if self.slow_proposal == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "slow_proposal",
                "slow_proposal (0) must be more than zero; None turns the log off",
            ));
        }
        if self.initial_voters.contains(&0) {
            return Err(ConfigError::new(
                "initial_voters",
                "node id 0 is reserved and cannot be a voter",
            ));
        }
        let mut voters = self.initial_voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if voters.len() != self.initial_voters.len() {
            return Err(ConfigError::new(
                "initial_voters",
                format!("{:?} lists a node twice", self.initial_voters),
            ));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::new("heartbeat_ticks", "must be at least 1"));
        }
        if self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::new(
                "heartbeat_ticks",
                format!(
                    "heartbeat_ticks ({}) must be smaller than election_ticks ({})",
                    self.heartbeat_ticks, self.election_ticks
                ),
            ));
        }
        if self.tick_interval < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "tick_interval",
                format!("{:?} is below the 1 ms minimum", self.tick_interval),
            ));
        }
        if self.tick_interval > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "tick_interval",
                format!("{:?} is above the 60 s maximum", self.tick_interval),
            ));
        }
        if self.max_size_per_msg == 0 {
            return Err(ConfigError::new("max_size_per_msg", "must be at least 1"));
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::new("max_inflight_msgs", "must be at least 1"));
        }
        if self.lease_reads && !self.check_quorum {
            return Err(ConfigError::new(
                "lease_reads",
                "lease reads need check_quorum = true (a leader must step down when it loses its quorum)",
            ));
        }
        if !(0.0..1.0).contains(&self.max_clock_drift) {
            return Err(ConfigError::new(
                "max_clock_drift",
                format!("({}) must be at least 0 and below 1", self.max_clock_drift),
            ));
        }
        if self.lease_reads && self.lease_length().is_zero() {
            return Err(ConfigError::new(
                "lease_reads",
                "the lease would be empty: election_ticks must be at least 2",
            ));
        }
        if self.max_committed_bytes_per_ready == 0 {
            return Err(ConfigError::new(
                "max_committed_bytes_per_ready",
                "must be at least 1",
            ));
        }
        if self.max_proposal_bytes == 0 {
            return Err(ConfigError::new("max_proposal_bytes", "must be at least 1"));
        }
        if self.max_uncommitted_bytes != 0 && self.max_uncommitted_bytes < self.max_size_per_msg {
            return Err(ConfigError::new(
                "max_uncommitted_bytes",
                format!(
                    "max_uncommitted_bytes ({}) must be at least max_size_per_msg ({})",
                    self.max_uncommitted_bytes, self.max_size_per_msg
                ),
            ));
        }
        if self.max_uncommitted_bytes != 0
            && (self.max_proposal_bytes as u64) > self.max_uncommitted_bytes
        {
            return Err(ConfigError::new(
                "max_proposal_bytes",
                format!(
                    "max_proposal_bytes ({}) exceeds max_uncommitted_bytes ({})",
                    self.max_proposal_bytes, self.max_uncommitted_bytes
                ),
            ));
        }
        for (field, value) in [
            ("max_pending_requests", self.max_pending_requests),
            ("max_pending_messages", self.max_pending_messages),
            ("max_batch", self.max_batch),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
            if value > 1 << 24 {
                return Err(ConfigError::new(
                    field,
                    format!("{value} is above the limit of {}", 1 << 24),
                ));
            }
        }
        if self.snapshot.report_timeout.is_zero() {
            return Err(ConfigError::new(
                "snapshot.report_timeout",
                "must be greater than zero",
            ));
        }
        if self.election_storm_threshold == 0 {
            return Err(ConfigError::new(
                "election_storm_threshold",
                "must be at least 1",
            ));
        }
        if !(1..=64).contains(&self.election_backoff_limit) {
            return Err(ConfigError::new(
                "election_backoff_limit",
                "must be within 1..=64 (1 turns the backoff off)",
            ));
        }
        if self.checkpoint_every != 0 && self.checkpoint_every < MIN_CHECKPOINT_EVERY {
            return Err(ConfigError::new(
                "checkpoint_every",
                format!(
                    "({}) must be 0 (off) or at least {MIN_CHECKPOINT_EVERY}",
                    self.checkpoint_every
                ),
            ));
        }
        if let Some(record) = &self.record {
            if record.max_bytes < crate::record::MIN_RECORD_BYTES {
                return Err(ConfigError::new(
                    "record.max_bytes",
                    format!(
                        "({}) must be at least {}",
                        record.max_bytes,
                        crate::record::MIN_RECORD_BYTES
                    ),
                ));
            }
        }
        if let Some((min, max)) = self.election_tick_range {
            if min < self.election_ticks || max <= min {
                return Err(ConfigError::new(
                    "election_tick_range",
                    format!(
                        "({min}, {max}) must satisfy election_ticks ({}) <= min < max",
                        self.election_ticks
                    ),
                ));
            }
        }
        self.to_raft(0).validate().map_err(|e| {
            ConfigError::new("election_ticks", format!("raft-rs refused the config: {e}"))
        })
    }

    /// The randomized election timeout range `[min, max)` in ticks without backoff.
    pub(crate) fn election_ticks_range(&self) -> (usize, usize) {
        self.election_tick_range
            .unwrap_or((self.election_ticks, 2 * self.election_ticks))
    }

    /// How long a leader's lease lasts from when its quorum round was sent: shorter than
    /// any follower's election timeout (`election_ticks` ticks, of which the first may
    /// come at once) by the drift bound. See docs/reads.md.
    pub fn lease_length(&self) -> Duration {
        let base = self
            .tick_interval
            .saturating_mul(self.election_ticks.saturating_sub(1) as u32);
        let drift = self.max_clock_drift.clamp(0.0, 1.0);
        base.mul_f64(1.0 - drift)
    }

    /// The `raft::Config` this configuration gives, starting from `applied`.
    pub(crate) fn to_raft(&self, applied: u64) -> raft::Config {
        // raft-rs accepts a drawn timeout only within its configured range: widen the
        // top to the longest the election backoff may draw. The core draws every
        // timeout itself (`Replica::rerandomize`), from the range the backoff sets.
        let (min_election_tick, max) = self.election_ticks_range();
        let max_election_tick = (max - 1) * self.election_backoff_limit.max(1) + 1;
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            min_election_tick,
            max_election_tick,
            // Always safe: raft-rs's lease-based mode answers every ReadIndex from a
            // lease check_quorum alone keeps, which a cut-off leader holds for up to two
            // election timeouts. Lease reads use the replica's own provable lease.
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: if self.max_uncommitted_bytes == 0 {
                raft::NO_LIMIT
            } else {
                self.max_uncommitted_bytes
            },
            max_committed_size_per_ready: self.max_committed_bytes_per_ready,
            ..raft::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::new(1).validate().unwrap();
    }

    #[test]
    fn checkpoint_every_is_off_or_at_least_the_minimum() {
        let mut c = Config::new(1);
        for ok in [0, MIN_CHECKPOINT_EVERY, 10_000] {
            c.checkpoint_every = ok;
            c.validate().unwrap();
        }
        c.checkpoint_every = MIN_CHECKPOINT_EVERY - 1;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "checkpoint_every");
        assert!(e.to_string().contains("(9) must be 0 (off) or at least 10"));
    }

    #[test]
    fn errors_name_field_and_limit() {
        let mut c = Config::new(1);
        c.heartbeat_ticks = 10;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "heartbeat_ticks");
        assert!(e
            .to_string()
            .contains("heartbeat_ticks (10) must be smaller than election_ticks (10)"));

        let e = Config::new(0).validate().unwrap_err();
        assert_eq!(e.field, "id");

        let mut c = Config::new(1);
        c.lease_reads = true;
        c.check_quorum = false;
        assert_eq!(c.validate().unwrap_err().field, "lease_reads");

        let mut c = Config::new(1);
        c.max_clock_drift = 1.0;
        assert_eq!(c.validate().unwrap_err().field, "max_clock_drift");

        let mut c = Config::new(1);
        c.initial_voters = vec![1, 2, 2];
        assert_eq!(c.validate().unwrap_err().field, "initial_voters");

        let mut c = Config::new(1);
        c.max_batch = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_batch");

        let mut c = Config::new(1);
        c.max_uncommitted_bytes = 256 << 10;
        c.max_size_per_msg = 512 << 10;
        assert_eq!(c.validate().unwrap_err().field, "max_uncommitted_bytes");

        let mut c = Config::new(1);
        c.snapshot.every_applied = 0;
        c.snapshot.report_timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "snapshot.report_timeout");

        let mut c = Config::new(1);
        c.election_tick_range = Some((5, 4));
        assert_eq!(c.validate().unwrap_err().field, "election_tick_range");

        let mut c = Config::new(1);
        c.election_backoff_limit = 0;
        assert_eq!(c.validate().unwrap_err().field, "election_backoff_limit");
    }
}
