//! `Status` and `Metrics`: what a node reports about itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::validate::{Refusal, Refusals};

/// The raft role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before a real election (`pre_vote` on).
    PreCandidate,
    /// Asking for votes.
    Candidate,
    /// Leads the group.
    Leader,
}

impl From<raft::StateRole> for Role {
    fn from(r: raft::StateRole) -> Self {
        match r {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// How far the leader has replicated to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// The peer's id.
    pub id: u64,
    /// Highest index known to be in the peer's log.
    pub matched: u64,
    /// Next index the leader will send.
    pub next_index: u64,
    /// How the leader replicates to the peer.
    pub state: ProgressState,
    /// Whether the peer is a learner.
    pub is_learner: bool,
    /// Whether the leader heard from it in the last election timeout.
    pub recent_active: bool,
}

/// How a leader replicates to one peer (raft's progress state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProgressState {
    /// The leader is finding where the peer's log matches its own: one append at a
    /// time.
    Probe,
    /// The peer keeps up: appends are pipelined.
    Replicate,
    /// The peer is behind the leader's log start and gets a snapshot.
    Snapshot,
}

impl From<raft::ProgressState> for ProgressState {
    fn from(state: raft::ProgressState) -> Self {
        match state {
            raft::ProgressState::Probe => ProgressState::Probe,
            raft::ProgressState::Replicate => ProgressState::Replicate,
            raft::ProgressState::Snapshot => ProgressState::Snapshot,
        }
    }
}

impl std::fmt::Display for ProgressState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProgressState::Probe => "Probe",
            ProgressState::Replicate => "Replicate",
            ProgressState::Snapshot => "Snapshot",
        })
    }
}

/// A point-in-time view of a node, from [`crate::Node::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader this node can vouch for: itself, or one heard from within the last
    /// election timeout (see [`crate::Node::leader`]).
    pub leader: Option<u64>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the state machine.
    pub applied: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// First index still in the log (earlier ones were compacted).
    pub first_index: u64,
    /// Index of the latest stored snapshot (0: none).
    pub snapshot_index: u64,
    /// Voters, in id order (the incoming half while in a joint configuration).
    pub voters: Vec<u64>,
    /// Voters of the outgoing half of a joint configuration, in id order; empty when
    /// not joint.
    pub voters_outgoing: Vec<u64>,
    /// Learners, in id order.
    pub learners: Vec<u64>,
    /// Per-peer replication progress; only on the leader, else empty.
    pub progress: Vec<PeerProgress>,
    /// True when this node was removed from the group by a membership change.
    pub removed: bool,
    /// True while the group is quiet on this node: it does not tick until an input
    /// wakes it (`Config::quiesce_after_timeouts`, docs/multi-raft.md).
    pub quiet: bool,
    /// Counters since the node started.
    pub metrics: MetricsSnapshot,
    /// What looks wrong with the group from this node, each with its evidence and a
    /// remedy (`Node::diagnose`; docs/operations.md, "Diagnosis"). Empty when healthy.
    pub findings: Vec<crate::diagnose::Finding>,
    /// The first divergence this node found since it started: its state machine's
    /// digest at a checkpoint differs from the leader's (`Config::checkpoint_every`,
    /// docs/operations.md, "Divergence"). `None` when none was found; it stays set
    /// until the node restarts.
    pub divergence: Option<Divergence>,
    /// How long this node's proposals took to reach each stage of their life, while it
    /// led (`Config::proposal_timing`; docs/operations.md, "Proposal timing"). Empty
    /// stages until it timed one.
    pub proposal_timing: crate::timing::ProposalTiming,
}

/// This replica's state machine disagrees with the leader's at a checkpoint: after
/// applying the same entries up to `index`, their digests
/// ([`crate::StateMachine::digest`]) differ.
///
/// A comparison has two sides and cannot say which is wrong: the state machine of
/// `replica` or that of `leader` applied something non-deterministically. When several
/// followers report a divergence from one leader, the leader is the odd one out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Divergence {
    /// The checkpoint's index: both digests were taken right after applying it.
    pub index: u64,
    /// This node, whose digest is `local_digest`.
    pub replica: u64,
    /// The leader that reported its digest `leader_digest` at `index`.
    pub leader: u64,
    /// This node's digest at `index`.
    pub local_digest: u64,
    /// The leader's digest at `index`.
    pub leader_digest: u64,
    /// Index of the log entry that carried the leader's digest: where this node
    /// found the divergence.
    pub reported_at: u64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replica {} diverged from leader {} at checkpoint index {}: digest {:#018x}, \
             the leader's {:#018x} (found at index {})",
            self.replica,
            self.leader,
            self.index,
            self.local_digest,
            self.leader_digest,
            self.reported_at
        )
    }
}

/// Counters a node keeps; cheap atomics shared with its handles.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub proposals: AtomicU64,
    pub proposal_batches: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub elections_started: AtomicU64,
    pub elections_won: AtomicU64,
    pub elections_lost: AtomicU64,
    pub leader_changes: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_restored: AtomicU64,
    pub step_errors: AtomicU64,
    pub reads_served: AtomicU64,
    pub followers_lost_entries: AtomicU64,
    pub quiesced: AtomicU64,
    pub last_election_us: AtomicU64,
    pub leaderless_us: AtomicU64,
    pub leaderless_gaps: AtomicU64,
    pub requests_busy: AtomicU64,
    pub election_backoff: AtomicU64,
    pub checkpoints_compared: AtomicU64,
    pub divergences: AtomicU64,
    pub checkpoints_ignored: AtomicU64,
    /// Peer messages refused before `step`, by reason, and their warnings' rate limit.
    pub refused: Refusals,
}

/// Counters since the node started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Commands proposed on this node while it led.
    pub proposals: u64,
    /// `MsgPropose` messages those commands went to raft in: everything drained from
    /// the request queue in one turn goes as one (`proposals / proposal_batches` is the
    /// mean batch size).
    pub proposal_batches: u64,
    /// Proposals that ended in an error.
    pub proposals_failed: u64,
    /// Incoming messages dropped because the message queue was full.
    pub messages_dropped: u64,
    /// Elections (pre-vote or vote) this node started.
    pub elections_started: u64,
    /// Elections this node won.
    pub elections_won: u64,
    /// Elections this node started and did not win.
    pub elections_lost: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// Snapshots this node took of its state machine.
    pub snapshots_taken: u64,
    /// `MsgSnapshot`s this node sent.
    pub snapshots_sent: u64,
    /// Snapshots received from a leader and restored.
    pub snapshots_restored: u64,
    /// Peer messages dropped at `step`: refused by the checks before raft-rs (also
    /// counted by reason in `refused`) or refused by raft-rs (an unknown peer, say).
    pub step_errors: u64,
    /// Peer messages refused before raft-rs saw them, by reason (only reasons seen at
    /// least once). See [`Refusal`] and docs/security.md.
    pub refused: BTreeMap<Refusal, u64>,
    /// Reads served (all consistency levels).
    pub reads_served: u64,
    /// Times this node, leading, learned that a follower lost entries it had
    /// acknowledged (its log now ends below them: restored from an older copy, or a
    /// tail cut after corruption) and replicated them again. See docs/security.md,
    /// "Data loss".
    pub followers_lost_entries: u64,
    /// Times the group went quiet on this node (`Config::quiesce_after_timeouts`).
    pub quiesced: u64,
    /// How long, in microseconds, this node's last election took: from when it knew no
    /// leader (it began an election, or heard of a newer term) to when it knew the next
    /// one (itself included). 0 until a leader was known after such a gap. The time it
    /// took to notice a dead leader (an election timeout) is not in it.
    pub last_election_us: u64,
    /// Microseconds this node spent knowing no leader, over all such gaps that ended
    /// (as `last_election_us`).
    pub leaderless_us: u64,
    /// How many gaps without a leader ended (those `leaderless_us` adds up): the
    /// elections this node saw through. See [`MetricsSnapshot::average_election_us`].
    pub leaderless_gaps: u64,
    /// Requests (proposals, reads, membership changes, ...) refused with `Busy`
    /// because `max_pending_requests` were queued.
    pub requests_busy: u64,
    /// The factor on the randomized election timeout range now: 1, or more during an
    /// election storm (`Config::election_backoff_limit`).
    pub election_backoff: u64,
    /// Checkpoints at which this node compared its state machine's digest with the
    /// leader's (`Config::checkpoint_every`; docs/operations.md, "Divergence").
    pub checkpoints_compared: u64,
    /// Checkpoints at which those digests differed ([`Status::divergence`] holds the
    /// first).
    pub divergences: u64,
    /// Log entries that looked like checkpoint markers (an empty command with a
    /// context) but did not parse, ignored: from a newer raftnode, or forged.
    pub checkpoints_ignored: u64,
    /// Readies handled.
    pub readies: u64,
    /// Log store syncs.
    pub syncs: u64,
    /// Entries appended to the log store.
    pub entries_appended: u64,
    /// Entries applied.
    pub entries_applied: u64,
}

impl MetricsSnapshot {
    /// The average election duration, in microseconds, over every gap without a leader
    /// that ended (`leaderless_us / leaderless_gaps`); `None` before the first. For the
    /// average over a window, take two snapshots and divide the differences (or use
    /// `rate()` of the two exported counters).
    pub fn average_election_us(&self) -> Option<u64> {
        self.leaderless_us.checked_div(self.leaderless_gaps)
    }
}

impl Metrics {
    pub(crate) fn snapshot(&self, driver: &crate::driver::DriverStats) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            proposals: get(&self.proposals),
            proposal_batches: get(&self.proposal_batches),
            proposals_failed: get(&self.proposals_failed),
            messages_dropped: get(&self.messages_dropped),
            elections_started: get(&self.elections_started),
            elections_won: get(&self.elections_won),
            elections_lost: get(&self.elections_lost),
            leader_changes: get(&self.leader_changes),
            snapshots_taken: get(&self.snapshots_taken),
            snapshots_sent: get(&self.snapshots_sent),
            snapshots_restored: get(&self.snapshots_restored),
            step_errors: get(&self.step_errors),
            refused: self.refused.snapshot(),
            reads_served: get(&self.reads_served),
            followers_lost_entries: get(&self.followers_lost_entries),
            quiesced: get(&self.quiesced),
            last_election_us: get(&self.last_election_us),
            leaderless_us: get(&self.leaderless_us),
            leaderless_gaps: get(&self.leaderless_gaps),
            requests_busy: get(&self.requests_busy),
            election_backoff: get(&self.election_backoff).max(1),
            checkpoints_compared: get(&self.checkpoints_compared),
            divergences: get(&self.divergences),
            checkpoints_ignored: get(&self.checkpoints_ignored),
            readies: driver.readies,
            syncs: driver.syncs,
            entries_appended: driver.entries_appended,
            entries_applied: driver.entries_applied,
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
