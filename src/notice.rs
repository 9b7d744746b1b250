//! Notices: what a follower must tell its leader and raft-rs 0.7 has no message for.
//!
//! raft-rs never sends its local message types between nodes, so raftnode uses two of
//! them, always with `reject` set or an index, as notices between raftnode peers. The
//! replica intercepts them before the checks every other message gets: raft-rs never
//! steps one.
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
//! A notice only ever makes the leader send more: a forged one costs a resend, nothing
//! else. Stale notices (another term, no longer the leader) are ignored.

use raft::eraftpb::{Message, MessageType};

use crate::validate::{check_ranges, Refusal};

/// A notice from a peer, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The sender's log ends at this index.
    LogEnds(u64),
    /// The sender refused the snapshot at this index.
    SnapshotRefused(u64),
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

/// `None` when `m` is not of a notice's type; otherwise the notice, or why its shape
/// is wrong for this node, `id`.
pub(crate) fn parse(m: &Message, id: u64) -> Option<Result<Notice, Refusal>> {
    let notice = match m.get_msg_type() {
        MessageType::MsgUnreachable => Notice::LogEnds(m.index),
        MessageType::MsgSnapStatus => Notice::SnapshotRefused(m.index),
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
    if m.term == 0 || extra || !reject_ok {
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
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(parse(&m, 1), None);
    }
}
