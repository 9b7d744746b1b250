//! The checks every peer message passes before raft-rs's `step`.
//!
//! raft-rs 0.7 trusts its peers: a decodable message that no honest peer sends can panic
//! it inside `step` (raft-rs note 20), or make it send an honest peer a message that panics
//! that peer. [`check_message`] refuses every message that cannot be safe for this node
//! in its current state, on every node and whatever the transport; a refused message is
//! counted by [`Refusal`] and never reaches raft. Nothing is "repaired": a message is
//! stepped as it came, or not at all. docs/security.md lists each check and the raft-rs
//! panic it stands in front of.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};

/// Largest index or term a message may carry: no real log reaches it, and refusing more
/// keeps `index + entries` (and raft-rs's `term + 1`) from overflowing.
pub(crate) use crate::wire::MAX_INDEX;

use crate::replica::READ_CTX_LEN;

/// Why a node refused a peer's message before raft-rs saw it.
///
/// Every refusal is counted by reason in [`crate::MetricsSnapshot::refused`] and logged
/// at warn level, at most once per reason per second (with the number of refusals not
/// logged since). An honest raftnode peer never sends a refused message: a count above
/// zero means a bug, a foreign binary, data loss on a peer, or an attacker who can reach
/// the raft port (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The message is addressed to another node.
    Misaddressed,
    /// The message names no sender (`from` 0) or this node itself.
    BadSender,
    /// A type that never travels between nodes: `MsgPropose`, and raft-rs's local types
    /// (`MsgHup`, `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`) when
    /// they reach raft-rs's checks: they travel only as raftnode's notices, checked
    /// apart (see [`Refusal::BadNotice`]), and raft-rs never steps one.
    LocalType,
    /// An index or term above 2^63 - 1.
    OutOfRange,
    /// A term of 0 (raft-rs would take the message for a local one), or a `MsgReadIndex`
    /// with a term (a follower forwarding it would panic: "term should not be set").
    BadTerm,
    /// A `MsgAppend` whose `(index, log_term)` no log holds: `log_term` above the term, or
    /// 0 at an index above 0 (raft-rs takes the term of an index past its log to be 0,
    /// "matches" it, and panics in `commit_to`).
    AppendAnchor,
    /// A `MsgAppend` whose entries do not follow its index one by one.
    AppendGap,
    /// A `MsgAppend` entry with term 0, a term above the message's, or a term below the
    /// entry (or anchor) before it.
    EntryTerm,
    /// A `MsgAppend` carrying a conf change entry that does not decode (it would stop
    /// every node at apply).
    EntryConfChange,
    /// An append, heartbeat or snapshot from a node that is not the leader this node
    /// follows in that term (or sent to the leader of that term itself): two leaders in
    /// one term. No honest peer sends one.
    NotFromLeader,
    /// A heartbeat committing past this node's last index (raft-rs panics: "to_commit
    /// is out of range").
    CommitPastLog,
    /// An append or heartbeat response naming an index (or commit) past this leader's
    /// last index: raft-rs would then send the follower an append that panics it.
    PastLeaderLog,
    /// A response asking for a snapshot (`request_snapshot`), which raftnode never does.
    SnapshotRequest,
    /// A vote request from a log position no candidate has: an index and a `log_term`
    /// one of which is 0, or a commit past the index.
    VoteLog,
    /// A `MsgReadIndex` or `MsgReadIndexResp` without exactly one entry holding a
    /// ReadIndex context of the node that asked (raft-rs indexes the entry: panic).
    ReadContext,
    /// A request only the leader serves, to a node that does not lead: a
    /// `MsgTransferLeader` (a follower would forward it and panic: "term should not be
    /// set"), or a `MsgReadIndex` (a follower would forward it under the asker's name,
    /// which the leader cannot answer). Honest peers send these too when leadership has
    /// just moved ([`can_be_honest`](Self::can_be_honest)).
    NotLeader,
    /// A `MsgSnapshot` whose metadata index or term is 0, or whose term is above the
    /// message's.
    SnapshotMetadata,
    /// A `MsgSnapshot` whose data is not in raftnode's snapshot framing (header, member
    /// table, codec): installing it would stop the node, and every restart after.
    SnapshotData,
    /// A `MsgTimeoutNow` or `MsgReadIndexResp` from a node that is not (or no longer)
    /// the leader this node follows. Honest peers send these too when leadership has
    /// just moved ([`can_be_honest`](Self::can_be_honest)).
    StaleLeader,
    /// A `MsgSnapshot` whose ConfState raft-rs cannot restore ("invalid restore",
    /// "removed all voters"): no voters, an id 0 or twice in a list, a voter that is
    /// also a learner, `learners_next` not within the outgoing voters, or `learners_next`
    /// or `auto_leave` outside a joint configuration.
    ConfState,
    /// A `MsgSnapshot` whose data lacks the checksum every raftnode peer writes, or
    /// whose checksum does not match: damaged after the snapshot was taken. The sender
    /// is told (a notice, docs/security.md) and sends a fresh snapshot.
    SnapshotChecksum,
    /// A `MsgSnapshot` the state machine's
    /// [`StateMachine::check_snapshot`](crate::StateMachine::check_snapshot) refused; the
    /// sender is told and sends a fresh snapshot.
    SnapshotRejected,
    /// A raftnode notice (`MsgUnreachable`: "my log ends here"; `MsgSnapStatus`: "your
    /// snapshot was refused") that is malformed: not from a member, naming an index past
    /// this node's log, or not a rejection.
    BadNotice,
}

impl Refusal {
    /// Every reason, in declaration order.
    pub const ALL: [Refusal; 23] = [
        Refusal::Misaddressed,
        Refusal::BadSender,
        Refusal::LocalType,
        Refusal::OutOfRange,
        Refusal::BadTerm,
        Refusal::AppendAnchor,
        Refusal::AppendGap,
        Refusal::EntryTerm,
        Refusal::EntryConfChange,
        Refusal::NotFromLeader,
        Refusal::CommitPastLog,
        Refusal::PastLeaderLog,
        Refusal::SnapshotRequest,
        Refusal::VoteLog,
        Refusal::ReadContext,
        Refusal::NotLeader,
        Refusal::SnapshotMetadata,
        Refusal::SnapshotData,
        Refusal::StaleLeader,
        Refusal::ConfState,
        Refusal::SnapshotChecksum,
        Refusal::SnapshotRejected,
        Refusal::BadNotice,
    ];

    /// Whether an honest peer can cause this refusal: a request or answer that raced a
    /// change of leader (`NotLeader`, `StaleLeader`). A few of these in a healthy
    /// cluster are normal; every other reason means a peer with a bug, an impostor, or
    /// damage on the way.
    pub fn can_be_honest(self) -> bool {
        matches!(self, Refusal::NotLeader | Refusal::StaleLeader)
    }

    /// The reason in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Misaddressed => "message is addressed to another node",
            Refusal::BadSender => "message names no sender or this node as its sender",
            Refusal::LocalType => "message type never travels between nodes",
            Refusal::OutOfRange => "index or term above 2^63 - 1",
            Refusal::BadTerm => "term 0 on a message that needs one, or a term on MsgReadIndex",
            Refusal::AppendAnchor => "append's index and log_term match no possible log",
            Refusal::AppendGap => "append's entries do not follow its index one by one",
            Refusal::EntryTerm => "append carries an entry with an impossible term",
            Refusal::EntryConfChange => "append carries a conf change that does not decode",
            Refusal::NotFromLeader => "message only this term's leader sends, from another node",
            Refusal::CommitPastLog => "heartbeat commits past this node's last index",
            Refusal::PastLeaderLog => "response names an index past this leader's last index",
            Refusal::SnapshotRequest => "response asks for a snapshot, which raftnode never does",
            Refusal::VoteLog => "vote request from a log position no candidate has",
            Refusal::ReadContext => {
                "read index message without exactly one read context of its node"
            }
            Refusal::NotLeader => "request only the leader serves, to a node that does not lead",
            Refusal::SnapshotMetadata => "snapshot's index or term is impossible",
            Refusal::SnapshotData => "snapshot's data is not in raftnode's snapshot framing",
            Refusal::StaleLeader => "answer or hand-over from a node this node does not follow",
            Refusal::ConfState => "snapshot's ConfState cannot be restored",
            Refusal::SnapshotChecksum => "snapshot's checksum is missing or does not match",
            Refusal::SnapshotRejected => "the state machine's check_snapshot refused the snapshot",
            Refusal::BadNotice => "raftnode notice that is malformed or not from a member",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// At most one warning per reason per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Refusal counters by reason, and the rate limit on their warnings.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
    /// Per reason: when its last warning was logged, and how many refusals since were
    /// not logged (reported with the next warning).
    log: Mutex<[(Option<Instant>, u64); Refusal::ALL.len()]>,
}

impl Refusals {
    /// Counts one refusal at `now`. `Some(suppressed)` when it is to be logged now,
    /// with the number of refusals for the same reason not logged since the last warning.
    pub(crate) fn record(&self, reason: Refusal, now: Instant) -> Option<u64> {
        let i = reason as usize;
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock();
        let (last, suppressed) = &mut log[i];
        match last {
            Some(at) if now.saturating_duration_since(*at) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }

    /// The reasons counted at least once, with their counts.
    pub(crate) fn snapshot(&self) -> BTreeMap<Refusal, u64> {
        Refusal::ALL
            .iter()
            .map(|&r| (r, self.counts[r as usize].load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// What the checks need to know about this node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local {
    pub id: u64,
    pub term: u64,
    pub leading: bool,
    /// The leader this node follows in `term` (0: none known).
    pub leader: u64,
    pub last_index: u64,
}

/// Returns why `m` must not be stepped into `raw` (this node, `id`), or `Ok`.
pub(crate) fn check_message<S: raft::Storage>(
    m: &Message,
    id: u64,
    raw: &RawNode<S>,
) -> Result<(), Refusal> {
    let raft = &raw.raft;
    check(
        m,
        &Local {
            id,
            term: raft.term,
            leading: raft.state == StateRole::Leader,
            leader: raft.leader_id,
            last_index: raft.raft_log.last_index(),
        },
    )
}

/// [`check_shape`], then the checks against this node's state.
pub(crate) fn check(m: &Message, local: &Local) -> Result<(), Refusal> {
    check_shape(m, local.id)?;
    if m.get_msg_type() == MessageType::MsgReadIndex && !local.leading {
        return Err(Refusal::NotLeader);
    }
    if m.term < local.term {
        // raft-rs gives a message from an older term only its stale-term answer (an
        // empty append response or a pre-vote rejection), whatever it holds. A
        // MsgReadIndex (term 0) needs no node state.
        return Ok(());
    }
    let this_term = m.term == local.term;
    match m.get_msg_type() {
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            if this_term && (local.leading || (local.leader != 0 && local.leader != m.from)) =>
        {
            // One leader per term: this node, or the one it already follows.
            Err(Refusal::NotFromLeader)
        }
        // The commit is applied without a look at the log. A leader sends at most what
        // the follower acknowledged.
        MessageType::MsgHeartbeat if m.commit > local.last_index => Err(Refusal::CommitPastLog),
        MessageType::MsgAppendResponse | MessageType::MsgHeartbeatResponse
            if local.leading
                && this_term
                && [m.index, m.commit, m.reject_hint]
                    .iter()
                    .any(|&i| i > local.last_index) =>
        {
            // A follower answers what this leader sent it (and commits what some
            // leader's log held): nothing past this leader's log.
            Err(Refusal::PastLeaderLog)
        }
        // The leader sends it once the follower holds its whole log, so the follower
        // already follows it in its term.
        MessageType::MsgTimeoutNow if !this_term || m.from != local.leader => {
            Err(Refusal::StaleLeader)
        }
        // Only the leader this node forwarded its read to answers it.
        MessageType::MsgReadIndexResp if local.leader == 0 || m.from != local.leader => {
            Err(Refusal::StaleLeader)
        }
        MessageType::MsgTransferLeader if !this_term || !local.leading => Err(Refusal::NotLeader),
        _ => Ok(()),
    }
}

/// The checks that need no node state.
pub(crate) fn check_shape(m: &Message, id: u64) -> Result<(), Refusal> {
    if m.to != id {
        return Err(Refusal::Misaddressed);
    }
    if m.from == 0 || m.from == id {
        return Err(Refusal::BadSender);
    }
    check_ranges(m)?;
    let t = m.get_msg_type();
    // raft-rs sets the term on everything it sends except MsgPropose and MsgReadIndex.
    if (t == MessageType::MsgReadIndex) != (m.term == 0) {
        return Err(Refusal::BadTerm);
    }
    if m.request_snapshot != 0 {
        return Err(Refusal::SnapshotRequest);
    }
    match t {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum
        | MessageType::MsgPropose => Err(Refusal::LocalType),
        MessageType::MsgAppend => check_append(m),
        MessageType::MsgSnapshot => check_snapshot(m),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => {
            // A candidate sends its last index and term, and its commit. Its last term may
            // be above the campaign's term: entries persisted, then a crash lost the
            // unsynced HardState that held their term (simulator seed 2034355).
            if (m.index == 0) != (m.log_term == 0) || m.commit > m.index {
                return Err(Refusal::VoteLog);
            }
            Ok(())
        }
        MessageType::MsgReadIndex => check_read_context(m, m.from),
        MessageType::MsgReadIndexResp => check_read_context(m, m.to),
        MessageType::MsgAppendResponse
        | MessageType::MsgRequestVoteResponse
        | MessageType::MsgHeartbeat
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgTransferLeader
        | MessageType::MsgTimeoutNow
        | MessageType::MsgRequestPreVoteResponse => Ok(()),
    }
}

pub(crate) fn check_ranges(m: &Message) -> Result<(), Refusal> {
    let meta = m.get_snapshot().get_metadata();
    // MAX_INDEX is 2^63 - 1: a value is above it exactly when its top bit is set, so
    // one OR over every index and term tells (no branch per entry).
    let mut any = m.term
        | m.log_term
        | m.index
        | m.commit
        | m.commit_term
        | m.reject_hint
        | m.request_snapshot
        | meta.index
        | meta.term;
    for e in m.entries.iter() {
        any |= e.index | e.term;
    }
    if any > MAX_INDEX || m.index + m.entries.len() as u64 > MAX_INDEX {
        return Err(Refusal::OutOfRange);
    }
    Ok(())
}

fn check_append(m: &Message) -> Result<(), Refusal> {
    // Every entry has a term of at least 1, so only the empty log's index 0 has term 0.
    if m.log_term > m.term || (m.index == 0) != (m.log_term == 0) {
        return Err(Refusal::AppendAnchor);
    }
    let mut previous_term = m.log_term;
    for (i, e) in m.entries.iter().enumerate() {
        if e.index != m.index + 1 + i as u64 {
            return Err(Refusal::AppendGap);
        }
        if e.term == 0 || e.term > m.term || e.term < previous_term {
            return Err(Refusal::EntryTerm);
        }
        previous_term = e.term;
        let decodes = match e.get_entry_type() {
            EntryType::EntryNormal => true,
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data).is_ok(),
            EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data).is_ok(),
        };
        if !decodes {
            return Err(Refusal::EntryConfChange);
        }
    }
    Ok(())
}

fn check_snapshot(m: &Message) -> Result<(), Refusal> {
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > m.term {
        return Err(Refusal::SnapshotMetadata);
    }
    check_conf_state(meta.get_conf_state())?;
    // Every frame a raftnode peer sends ends in the checksum taken where the state
    // machine's bytes were framed; then the framing itself. The state machine's own
    // check (`StateMachine::check_snapshot`) runs in the replica, which holds it.
    let data = &m.get_snapshot().data;
    if crate::snapshot_codec::checksum_matches(data) != Some(true) {
        return Err(Refusal::SnapshotChecksum);
    }
    crate::snapshot_codec::check(data)
        .map(|_| ())
        .map_err(|_| Refusal::SnapshotData)
}

/// Refuses the ConfStates raft-rs's `restore` cannot rebuild: it replays the ConfState as
/// conf changes (`confchange/restore.rs`) and panics when one fails or the result
/// differs from the ConfState.
pub(crate) fn check_conf_state(cs: &ConfState) -> Result<(), Refusal> {
    let lists = [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ];
    for list in lists {
        let mut seen = std::collections::BTreeSet::new();
        if list.iter().any(|&id| id == 0 || !seen.insert(id)) {
            return Err(Refusal::ConfState);
        }
    }
    let joint = !cs.voters_outgoing.is_empty();
    let ok = !cs.voters.is_empty()
        && !cs
            .learners
            .iter()
            .any(|id| cs.voters.contains(id) || cs.voters_outgoing.contains(id))
        && cs
            .learners_next
            .iter()
            .all(|id| cs.voters_outgoing.contains(id) && !cs.voters.contains(id))
        && (joint || (cs.learners_next.is_empty() && !cs.auto_leave));
    if ok {
        Ok(())
    } else {
        Err(Refusal::ConfState)
    }
}

fn check_read_context(m: &Message, asker: u64) -> Result<(), Refusal> {
    match m.entries.as_ref() {
        [e] if e.data.len() == READ_CTX_LEN && e.data[..8] == asker.to_le_bytes() => Ok(()),
        _ => Err(Refusal::ReadContext),
    }
}

#[cfg(test)]
mod tests;
