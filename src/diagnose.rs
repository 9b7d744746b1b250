//! Diagnosis: what is wrong with a group, with the evidence and what to do
//! (docs/operations.md, "Diagnosis").
//!
//! [`Watch`] lives in the per-group core and notes, tick by tick, since when each
//! worrying condition has held; [`Watch::findings`] turns the ones that have held for
//! [`DIAGNOSE_AFTER_TIMEOUTS`] election timeouts (or happened within that window) into
//! [`Finding`]s. A condition that ends is forgotten on the next tick, so a healed
//! group reports nothing.

use std::time::Duration;

/// How long (in election timeouts) a condition must hold, or how recently an event
/// must have happened, before it is reported: long enough that an election, a
/// snapshot or a burst of writes in progress is not a finding.
pub const DIAGNOSE_AFTER_TIMEOUTS: u64 = 3;

/// What a [`Finding`] is about. Its [`FindingKind::name`] is stable (metrics labels,
/// alerts, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FindingKind {
    /// This node has known no leader for a while; the evidence names the voters it has
    /// not heard from.
    NoQuorum,
    /// Elections keep starting without a leader lasting an election timeout.
    ElectionStorm,
    /// This node leads but has not committed an entry of its own term: reads,
    /// transfers and membership changes wait.
    LeaderNotCommitted,
    /// The group has stayed in a joint configuration.
    StuckJoint,
    /// The leader sent a follower a snapshot and the transport has not reported on it:
    /// the follower gets nothing else meanwhile.
    SnapshotUnreported,
    /// A learner stays behind the leader's commit index.
    LearnerBehind,
    /// This node's state machine applies slower than the group commits.
    ApplyLagging,
    /// A log store sync took longer than a quarter of an election timeout.
    SlowDisk,
    /// Requests were refused with `Busy`: the request queue was full.
    BackPressure,
    /// This node's state machine digest at a checkpoint differs from the leader's
    /// ([`crate::Status::divergence`]): one of the two applied something
    /// non-deterministically. Reported until the node restarts.
    Diverged,
}

impl FindingKind {
    /// The finding's stable name, in snake case (`"no_quorum"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::NoQuorum => "no_quorum",
            FindingKind::ElectionStorm => "election_storm",
            FindingKind::LeaderNotCommitted => "leader_not_committed",
            FindingKind::StuckJoint => "stuck_joint",
            FindingKind::SnapshotUnreported => "snapshot_unreported",
            FindingKind::LearnerBehind => "learner_behind",
            FindingKind::ApplyLagging => "apply_lagging",
            FindingKind::SlowDisk => "slow_disk",
            FindingKind::BackPressure => "back_pressure",
            FindingKind::Diverged => "diverged",
        }
    }

    /// What to do about it, in one sentence.
    pub fn remedy(self) -> &'static str {
        match self {
            FindingKind::NoQuorum => {
                "start or reconnect the silent voters: a majority of the voters must reach \
                 each other to elect a leader"
            }
            FindingKind::ElectionStorm => {
                "check the network between the voters (loss, one-way partitions) and that the \
                 election timeout is well above the round trip and the disk's sync time"
            }
            FindingKind::LeaderNotCommitted => {
                "a quorum is not acknowledging the leader's appends: check the followers' \
                 disks and the links from them back to the leader"
            }
            FindingKind::StuckJoint => {
                "leaving a joint configuration needs a majority of both voter sets: start or \
                 reconnect the silent voters of the set that lacks one"
            }
            FindingKind::SnapshotUnreported => {
                "the transport must call report_snapshot once a snapshot is delivered or lost; \
                 the leader gives up after snapshot.report_timeout"
            }
            FindingKind::LearnerBehind => {
                "the learner is down, unreachable or slower than the write rate: check it, or \
                 remove it if it is gone"
            }
            FindingKind::ApplyLagging => {
                "the state machine applies slower than the group commits: make apply cheaper \
                 (batch its writes) or give the node more resources"
            }
            FindingKind::SlowDisk => {
                "the log store's disk is slow or overloaded: check it (latency, other \
                 writers), or raise the election timeout above its sync time"
            }
            FindingKind::BackPressure => {
                "clients send faster than the node drains its queue: slow them down, spread \
                 them over more groups, or raise max_pending_requests"
            }
            FindingKind::Diverged => {
                "stop writes and compare the replicas (the one whose digest differs from the \
                 majority's is wrong), fix the non-deterministic apply, then wipe the diverged \
                 replica and add it back so it restores from a healthy snapshot"
            }
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing wrong with a group, as this node sees it: what, the numbers that show
/// it, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What it is about.
    pub kind: FindingKind,
    /// The numbers that show it, in one line.
    pub evidence: String,
    /// What to do, in one sentence (`kind.remedy()`).
    pub remedy: &'static str,
}

impl Finding {
    fn new(kind: FindingKind, evidence: String) -> Finding {
        Finding {
            kind,
            evidence,
            remedy: kind.remedy(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}; {}", self.kind, self.evidence, self.remedy)
    }
}

/// The finding for a divergence this node found.
pub(crate) fn diverged(d: &crate::status::Divergence) -> Finding {
    Finding::new(
        FindingKind::Diverged,
        format!(
            "replica {}'s state machine digest at checkpoint index {} is {:#018x}, leader {}'s \
             is {:#018x} (found at index {})",
            d.replica, d.index, d.local_digest, d.leader, d.leader_digest, d.reported_at
        ),
    )
}

/// One tick's view of the group, from the core.
pub(crate) struct Observed<'a> {
    pub tick: u64,
    pub election_ticks: u64,
    pub leader: u64,
    pub is_leader: bool,
    /// The leader committed an entry of its own term.
    pub committed_in_term: bool,
    pub joint: bool,
    pub commit: u64,
    /// Peers the leader replicates to by snapshot.
    pub snapshot_peers: &'a [u64],
    /// The slowest log store sync since the last tick, when it was slow.
    pub slow_sync: Option<Duration>,
    /// The longest one turn spent applying committed entries since the last tick, when
    /// it was slow.
    pub slow_apply: Option<Duration>,
    /// `Busy` refusals since the node started.
    pub busy: u64,
}

/// What the core tells [`Watch::findings`] beyond what it watched.
pub(crate) struct Context<'a> {
    pub tick: u64,
    pub tick_interval: Duration,
    pub election_ticks: u64,
    /// Elections started since a leader last lasted an election timeout, and the
    /// threshold from which that is a storm.
    pub elections: u64,
    pub storm_threshold: u64,
    pub max_pending_requests: usize,
    pub voters: &'a [u64],
    pub voters_outgoing: &'a [u64],
    /// Voters (other than this node) not heard from within an election timeout.
    pub silent: &'a [u64],
    /// Learners (on the leader) and the last index each is known to hold.
    pub learners: &'a [(u64, u64)],
    pub commit: u64,
    pub applied: u64,
}

/// Since when each condition has held, in ticks (0: it does not; ticks start at 1).
/// Small on purpose: every replica of a host with thousands of groups carries one.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    leaderless_since: u64,
    uncommitted_leader_since: u64,
    joint_since: u64,
    /// (peer, since) for peers in snapshot state; almost always empty.
    snapshot_since: Vec<(u64, u64)>,
    /// The commit index sampled once every election timeout, newest last, the newest
    /// taken at tick `commits_at`: what was committed a window ago.
    commits: [u64; DIAGNOSE_AFTER_TIMEOUTS as usize + 1],
    commits_at: u64,
    /// How many samples `commits` holds.
    samples: u64,
    /// The last tick a sync was slow, and the slowest such sync in the window (µs).
    slow_sync_at: u64,
    slow_sync_us: u64,
    /// The same for the longest one turn spent applying committed entries.
    slow_apply_at: u64,
    slow_apply_us: u64,
    busy_seen: u64,
    /// The current run of `Busy` refusals: first and last tick, and how many.
    busy_first: u64,
    busy_last: u64,
    busy_count: u64,
}

/// Notes a slow operation of `d` at tick `t`: the slowest within the window is kept.
fn note_slow(at: &mut u64, us: &mut u64, d: Duration, t: u64, window: u64) {
    let this = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let recent = *at != 0 && t.saturating_sub(*at) < window;
    *us = if recent { (*us).max(this) } else { this };
    *at = t;
}

fn since(slot: &mut u64, holds: bool, tick: u64) {
    if !holds {
        *slot = 0;
    } else if *slot == 0 {
        *slot = tick;
    }
}

impl Watch {
    /// Notes one tick's state.
    pub(crate) fn on_tick(&mut self, o: Observed<'_>) {
        let t = o.tick.max(1);
        let window = DIAGNOSE_AFTER_TIMEOUTS * o.election_ticks;
        since(&mut self.leaderless_since, o.leader == 0, t);
        since(
            &mut self.uncommitted_leader_since,
            o.is_leader && !o.committed_in_term,
            t,
        );
        since(&mut self.joint_since, o.joint, t);
        self.snapshot_since
            .retain(|(peer, _)| o.snapshot_peers.contains(peer));
        for peer in o.snapshot_peers {
            if !self.snapshot_since.iter().any(|(p, _)| p == peer) {
                self.snapshot_since.push((*peer, t));
            }
        }
        if t.is_multiple_of(o.election_ticks.max(1)) {
            self.commits.rotate_left(1);
            *self.commits.last_mut().expect("not empty") = o.commit;
            self.commits_at = t;
            self.samples = (self.samples + 1).min(self.commits.len() as u64);
        }
        if let Some(d) = o.slow_sync {
            note_slow(&mut self.slow_sync_at, &mut self.slow_sync_us, d, t, window);
        }
        if let Some(d) = o.slow_apply {
            note_slow(
                &mut self.slow_apply_at,
                &mut self.slow_apply_us,
                d,
                t,
                window,
            );
        }
        let fresh = o.busy.saturating_sub(self.busy_seen);
        self.busy_seen = o.busy;
        if fresh > 0 {
            if self.busy_last != 0 && t.saturating_sub(self.busy_last) < window {
                self.busy_count += fresh;
            } else {
                self.busy_first = t;
                self.busy_count = fresh;
            }
            self.busy_last = t;
        }
    }

    /// The commit index of at least `after` ticks ago, if this node has watched that
    /// long.
    fn old_commit(&self, tick: u64, after: u64, election_ticks: u64) -> Option<u64> {
        let len = self.commits.len() as u64;
        // Newest first: sample i was taken at `commits_at - i * election_ticks`.
        (0..self.samples)
            .find(|i| {
                let at = self.commits_at.saturating_sub(i * election_ticks);
                tick.saturating_sub(at) >= after
            })
            .map(|i| self.commits[(len - 1 - i) as usize])
    }

    /// The findings as of `c.tick`.
    pub(crate) fn findings(&self, c: &Context<'_>) -> Vec<Finding> {
        let after = DIAGNOSE_AFTER_TIMEOUTS * c.election_ticks;
        let held =
            |since: u64| (since != 0 && c.tick.saturating_sub(since) >= after).then_some(since);
        let time = |ticks: u64| c.tick_interval * u32::try_from(ticks).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        if let Some(s) = held(self.leaderless_since) {
            out.push(Finding::new(
                FindingKind::NoQuorum,
                format!(
                    "no leader known for {:?}; voters {:?}, not heard from within an election \
                     timeout: {:?}",
                    time(c.tick - s),
                    c.voters,
                    c.silent
                ),
            ));
        }
        if c.elections >= c.storm_threshold {
            out.push(Finding::new(
                FindingKind::ElectionStorm,
                format!(
                    "{} elections started without a leader lasting an election timeout \
                     (threshold {})",
                    c.elections, c.storm_threshold
                ),
            ));
        }
        if let Some(s) = held(self.uncommitted_leader_since) {
            out.push(Finding::new(
                FindingKind::LeaderNotCommitted,
                format!(
                    "leading for {:?} without committing an entry of its term (commit index {})",
                    time(c.tick - s),
                    c.commit
                ),
            ));
        }
        if let Some(s) = held(self.joint_since) {
            out.push(Finding::new(
                FindingKind::StuckJoint,
                format!(
                    "joint for {:?}: incoming voters {:?}, outgoing voters {:?}, not heard from: \
                     {:?}",
                    time(c.tick - s),
                    c.voters,
                    c.voters_outgoing,
                    c.silent
                ),
            ));
        }
        for (peer, s) in &self.snapshot_since {
            if c.tick.saturating_sub(*s) >= after {
                out.push(Finding::new(
                    FindingKind::SnapshotUnreported,
                    format!(
                        "follower {peer} has waited {:?} on a snapshot with no report from the \
                         transport",
                        time(c.tick - s)
                    ),
                ));
            }
        }
        if let Some(old) = self.old_commit(c.tick, after, c.election_ticks) {
            for (id, matched) in c.learners {
                if *matched < old {
                    out.push(Finding::new(
                        FindingKind::LearnerBehind,
                        format!(
                            "learner {id} holds {matched} entries, fewer than the {old} \
                             committed {:?} ago (commit index now {})",
                            time(after),
                            c.commit
                        ),
                    ));
                }
            }
        }
        // Entries are applied on the driver thread as soon as they commit, so a slow
        // state machine shows as time spent applying, not as a gap between the commit
        // and applied indexes (the same turn closes it before anyone can look).
        if self.slow_apply_at != 0 && c.tick.saturating_sub(self.slow_apply_at) < after {
            let d = Duration::from_micros(self.slow_apply_us);
            out.push(Finding::new(
                FindingKind::ApplyLagging,
                format!(
                    "one turn spent {d:?} applying committed entries (over a quarter of the \
                     election timeout, {:?}) within the last {:?}; applied index {}",
                    time(c.election_ticks) / 4,
                    time(after),
                    c.applied
                ),
            ));
        }
        if self.slow_sync_at != 0 && c.tick.saturating_sub(self.slow_sync_at) < after {
            let d = Duration::from_micros(self.slow_sync_us);
            out.push(Finding::new(
                FindingKind::SlowDisk,
                format!(
                    "a log store sync took {d:?} (over a quarter of the election timeout, \
                     {:?}) within the last {:?}",
                    time(c.election_ticks) / 4,
                    time(after)
                ),
            ));
        }
        if self.busy_last != 0 && c.tick.saturating_sub(self.busy_last) < after {
            out.push(Finding::new(
                FindingKind::BackPressure,
                format!(
                    "{} requests refused as Busy within {:?} (max_pending_requests = {})",
                    self.busy_count,
                    time(self.busy_last - self.busy_first + 1),
                    c.max_pending_requests
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ET: u64 = 10;

    fn observe(w: &mut Watch, tick: u64, commit: u64, busy: u64) {
        w.on_tick(Observed {
            tick,
            election_ticks: ET,
            leader: 1,
            is_leader: false,
            committed_in_term: true,
            joint: false,
            commit,
            snapshot_peers: &[],
            slow_sync: None,
            slow_apply: None,
            busy,
        });
    }

    fn kinds(w: &Watch, tick: u64, commit: u64, applied: u64) -> Vec<FindingKind> {
        w.findings(&Context {
            tick,
            tick_interval: Duration::from_millis(10),
            election_ticks: ET,
            elections: 0,
            storm_threshold: 5,
            max_pending_requests: 4,
            voters: &[1, 2, 3],
            voters_outgoing: &[],
            silent: &[],
            learners: &[],
            commit,
            applied,
        })
        .into_iter()
        .map(|f| f.kind)
        .collect()
    }

    #[test]
    fn the_commit_of_a_window_ago_is_sampled_every_election_timeout() {
        let mut w = Watch::default();
        for t in 1..=60 {
            observe(&mut w, t, t * 10, 0);
        }
        // 3 election timeouts ago (tick 30) the commit index was 300.
        assert_eq!(w.old_commit(60, 3 * ET, ET), Some(300));
        assert_eq!(w.old_commit(65, 3 * ET, ET), Some(300));
        // Not watched for a window yet: nothing to compare with.
        let mut young = Watch::default();
        for t in 1..=25 {
            observe(&mut young, t, t, 0);
        }
        assert_eq!(young.old_commit(25, 3 * ET, ET), None);
    }

    /// docs/multi-raft.md quotes this size (every replica of a big host carries one).
    #[test]
    fn the_watch_stays_small() {
        assert_eq!(std::mem::size_of::<Watch>(), 160);
    }

    #[test]
    fn busy_refusals_are_reported_for_a_window_after_the_last() {
        let mut w = Watch::default();
        observe(&mut w, 1, 0, 0);
        observe(&mut w, 2, 0, 7);
        observe(&mut w, 3, 0, 9);
        assert_eq!(kinds(&w, 3, 0, 0), vec![FindingKind::BackPressure]);
        assert_eq!(w.busy_count, 9);
        for t in 4..=33 {
            observe(&mut w, t, 0, 9);
        }
        assert_eq!(kinds(&w, 32, 0, 0), vec![FindingKind::BackPressure]);
        assert!(kinds(&w, 33, 0, 0).is_empty(), "a window without refusals");
    }
}
