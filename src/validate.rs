//! Sanity checks on a peer's message before raft-rs sees it.
//!
//! raft-rs trusts its peers: several malformed-but-decodable messages panic inside
//! `step` (ERRATA 20). The transport authenticates who may send; these checks make sure
//! a message from an authenticated peer is at least well-formed for this node.

use raft::eraftpb::{Message, MessageType};
use raft::RawNode;

use crate::log_store::LogStore;

/// Returns why `m` must be dropped, or `Ok` when it may be stepped.
pub(crate) fn check_message<S: LogStore>(
    m: &Message,
    id: u64,
    raw: &RawNode<S>,
) -> Result<(), &'static str> {
    check_shape(m, id)?;
    match m.get_msg_type() {
        // A heartbeat's commit is applied without checking the log: past our last index
        // it panics raft ("to_commit is out of range").
        MessageType::MsgHeartbeat if m.commit > raw.raft.raft_log.last_index() => {
            // A legitimate leader never sends a commit beyond what we acknowledged.
            Err("heartbeat commit beyond this node's last index")
        }
        _ => Ok(()),
    }
}

/// Checks that need no node state; also used by transports before decoding further.
pub(crate) fn check_shape(m: &Message, id: u64) -> Result<(), &'static str> {
    if m.to != id {
        return Err("message is addressed to another node");
    }
    if m.from == 0 {
        return Err("message has no sender (from = 0)");
    }
    if m.from == id {
        return Err("message claims to come from this node");
    }
    match m.get_msg_type() {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => {
            return Err("local message type never travels between nodes")
        }
        // Proposals are answered on the leader, never forwarded between nodes.
        MessageType::MsgPropose => return Err("proposals never travel between nodes"),
        MessageType::MsgAppend => {
            if m.log_term > m.term {
                return Err("append's log_term is above its term");
            }
            for (i, e) in m.entries.iter().enumerate() {
                if e.index != m.index + 1 + i as u64 {
                    return Err("append's entries are not contiguous after its index");
                }
                if e.term > m.term || e.term < m.log_term {
                    return Err("append carries an entry with an impossible term");
                }
            }
        }
        MessageType::MsgSnapshot => {
            let meta = m.get_snapshot().get_metadata();
            if meta.index == 0 || meta.term == 0 || meta.term > m.term {
                return Err("snapshot metadata is impossible");
            }
            if meta.get_conf_state().voters.is_empty() {
                return Err("snapshot has no voters");
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn msg(t: MessageType, from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = to;
        m.term = 5;
        m
    }

    #[test]
    fn refuses_misaddressed_and_local() {
        assert!(check_shape(&msg(MessageType::MsgHeartbeat, 2, 1), 1).is_ok());
        assert!(check_shape(&msg(MessageType::MsgHeartbeat, 2, 3), 1).is_err());
        assert!(check_shape(&msg(MessageType::MsgHeartbeat, 0, 1), 1).is_err());
        assert!(check_shape(&msg(MessageType::MsgHeartbeat, 1, 1), 1).is_err());
        assert!(check_shape(&msg(MessageType::MsgHup, 2, 1), 1).is_err());
        assert!(check_shape(&msg(MessageType::MsgPropose, 2, 1), 1).is_err());
    }

    #[test]
    fn refuses_non_contiguous_append() {
        let mut m = msg(MessageType::MsgAppend, 2, 1);
        m.index = 10;
        m.log_term = 4;
        let mut e = Entry::default();
        e.index = 12;
        e.term = 5;
        m.mut_entries().push(e);
        assert!(check_shape(&m, 1).is_err());
        m.mut_entries()[0].index = 11;
        assert!(check_shape(&m, 1).is_ok());
        m.mut_entries()[0].term = 6;
        assert!(check_shape(&m, 1).is_err());
    }
}
