//! Notices: what a follower must tell its leader and raft-rs 0.7 has no message for.
//!
//! raft-rs never sends its local message types between nodes, so raftnode uses five of
//! them as notices between raftnode peers. The replica intercepts them before the
//! checks every other message gets: raft-rs never steps one.
//!
//! - **Log ends here** (`MsgUnreachable`, `index` = the sender's last index). Sent by a
//!   follower whose leader heartbeats a commit past the follower's log: the follower
//!   lost entries it had acknowledged (restored from an older copy, or a tail cut after
//!   corruption). raft-rs's leader never lowers what it believes a follower holds, so
//!   without the notice it keeps sending heartbeats the follower must refuse and the
//!   follower stays cut off. The leader lowers its record of the follower to the
//!   notice's index and probes back from there (docs/security.md, "Data loss").
//! - **Snapshot refused** (`MsgSnapStatus` with `reject`, `index` = the snapshot's
//!   index). Sent by a follower that refused a snapshot (damaged, or refused by
//!   `StateMachine::check_snapshot`): the leader reports the snapshot failed at once and
//!   sends a fresh one, instead of waiting for the transport's report or its timeout.
//!
//! - **Stopping** (`MsgBeat`). Sent to every other member by a node that begins a
//!   graceful shutdown: no leader hands leadership to it while it goes
//!   (docs/membership.md, "Shutting a cluster down").
//! - **Not a member** (`MsgCheckQuorum`, `index` = the sender's applied index). Sent in
//!   answer to a message from a node that is not in the sender's configuration. A node
//!   that missed the commit of its own removal learns it this way: once voters forming
//!   a majority of its configuration say so, each from an applied index past its own,
//!   it reports `removed` and stops campaigning (docs/membership.md, "Removal").
//!
//! - **Quiet** (`MsgHup`, `index` = the leader's commit). Sent by a leader whose group
//!   has had nothing to do for `Config::quiesce_after_timeouts` election timeouts: a
//!   follower of that leader and term whose log and commit end at that index stops
//!   ticking until something wakes it (docs/multi-raft.md, "Quiescence").
//!
//! The first two only ever make the leader send more: a forged one costs a resend,
//! nothing else. Stale ones (another term, no longer the leader) are ignored. A forged
//! "stopping" only keeps leadership away from its (authenticated) sender; "not a member"
//! needs a majority, which can commit a real removal anyway, and the belief it creates
//! ends on the first sign of membership or after ten election timeouts; a forged
//! "quiet" quiets only a follower caught up with that leader, whose next heartbeat wakes
//! it.

use raft::eraftpb::{Message, MessageType};

use crate::validate::{check_ranges, Refusal};

/// A notice from a peer, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The sender's log ends at this index.
    LogEnds(u64),
    /// The sender refused the snapshot at this index.
    SnapshotRefused(u64),
    /// The sender is shutting down.
    Stopping,
    /// This node is not in the sender's configuration as of the sender's applied index.
    NotAMember(u64),
    /// The sender, leading, goes quiet with its log committed up to this index.
    Quiet(u64),
}

/// "My log ends at `last_index`", from `from` to the leader `to` of `term`.
pub(crate) fn log_ends(from: u64, to: u64, term: u64, last_index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgUnreachable);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = last_index;
    m
}

/// "I refused your snapshot at `index`", from `from` to the leader `to` of `term`.
pub(crate) fn snapshot_refused(from: u64, to: u64, term: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapStatus);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = index;
    m.reject = true;
    m
}

/// "I am shutting down", from `from` to `to`, at the sender's `term`.
pub(crate) fn stopping(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgBeat);
    m.from = from;
    m.to = to;
    m.term = term.max(1);
    m
}

/// "You are not a member as of my applied index `applied`", from `from` to `to`.
pub(crate) fn not_a_member(from: u64, to: u64, term: u64, applied: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgCheckQuorum);
    m.from = from;
    m.to = to;
    m.term = term.max(1);
    m.index = applied;
    m
}

/// "The group goes quiet, committed up to `commit`", from the leader `from` of `term`.
pub(crate) fn quiet(from: u64, to: u64, term: u64, commit: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHup);
    m.from = from;
    m.to = to;
    m.term = term.max(1);
    m.index = commit;
    m
}

/// `None` when `m` is not of a notice's type; otherwise the notice, or why its shape
/// is wrong for this node, `id`.
pub(crate) fn parse(m: &Message, id: u64) -> Option<Result<Notice, Refusal>> {
    let notice = match m.get_msg_type() {
        MessageType::MsgUnreachable => Notice::LogEnds(m.index),
        MessageType::MsgSnapStatus => Notice::SnapshotRefused(m.index),
        MessageType::MsgBeat => Notice::Stopping,
        MessageType::MsgCheckQuorum => Notice::NotAMember(m.index),
        MessageType::MsgHup => Notice::Quiet(m.index),
        _ => return None,
    };
    Some(check(m, id).map(|()| notice))
}

fn check(m: &Message, id: u64) -> Result<(), Refusal> {
    if m.to != id {
        return Err(Refusal::Misaddressed);
    }
    if m.from == 0 || m.from == id {
        return Err(Refusal::BadSender);
    }
    check_ranges(m)?;
    let extra = !m.entries.is_empty()
        || m.has_snapshot()
        || !m.context.is_empty()
        || m.commit != 0
        || m.log_term != 0
        || m.reject_hint != 0
        || m.request_snapshot != 0;
    let reject_ok = (m.get_msg_type() == MessageType::MsgSnapStatus) == m.reject;
    let index_ok = m.get_msg_type() != MessageType::MsgBeat || m.index == 0;
    if m.term == 0 || extra || !reject_ok || !index_ok {
        return Err(Refusal::BadNotice);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(
            parse(&log_ends(2, 1, 5, 40), 1),
            Some(Ok(Notice::LogEnds(40)))
        );
        assert_eq!(
            parse(&snapshot_refused(2, 1, 5, 40), 1),
            Some(Ok(Notice::SnapshotRefused(40)))
        );
        assert_eq!(
            parse(&log_ends(2, 1, 5, 40), 3),
            Some(Err(Refusal::Misaddressed))
        );
        assert_eq!(
            parse(&log_ends(1, 1, 5, 40), 1),
            Some(Err(Refusal::BadSender))
        );
        let mut m = log_ends(2, 1, 0, 40);
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        m.term = 5;
        m.reject = true;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        let mut m = snapshot_refused(2, 1, 5, 40);
        m.reject = false;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        let mut m = snapshot_refused(2, 1, 5, 40);
        m.commit = 3;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        let mut m = log_ends(2, 1, 5, 40);
        m.index = u64::MAX;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::OutOfRange)));
        assert_eq!(parse(&stopping(2, 1, 5), 1), Some(Ok(Notice::Stopping)));
        assert_eq!(
            parse(&not_a_member(2, 1, 5, 40), 1),
            Some(Ok(Notice::NotAMember(40)))
        );
        let mut m = stopping(2, 1, 5);
        m.index = 3;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        assert_eq!(parse(&quiet(2, 1, 5, 40), 1), Some(Ok(Notice::Quiet(40))));
        let mut m = quiet(2, 1, 5, 40);
        m.commit = 40;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        let mut m = not_a_member(2, 1, 5, 40);
        m.reject = true;
        assert_eq!(parse(&m, 1), Some(Err(Refusal::BadNotice)));
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(parse(&m, 1), None);
    }
}
