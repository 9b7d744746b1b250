//! [`MessageLog`]: which raft messages a node logs, switchable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::ProtobufEnum;
use raft::eraftpb::{Message, MessageType};
use slog::{info, Logger};

/// The raft message types a node logs, one `info` line per message sent or received
/// (a level release builds keep), with the fields `dir` (`send` / `recv`), `type`,
/// `from`, `to`, `term`, `index`, `log_term`, `commit`, `entries` (how many) and
/// `reject`. Set with [`crate::Node::set_message_log`]; off by default.
///
/// # Examples
///
/// ```
/// use raftnode::MessageLog;
/// use raftnode::raft_types::MessageType;
///
/// let votes = MessageLog::only(&[MessageType::MsgRequestVote, MessageType::MsgRequestVoteResponse]);
/// assert!(votes.logs(MessageType::MsgRequestVote));
/// assert!(!votes.logs(MessageType::MsgAppend));
/// assert!(MessageLog::all().logs(MessageType::MsgHeartbeat));
/// assert!(!MessageLog::off().logs(MessageType::MsgHeartbeat));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageLog {
    mask: u64,
}

fn bit(t: MessageType) -> u64 {
    // raft-rs's message types are numbered 0 to 18; a higher one is never logged.
    u32::try_from(t.value())
        .ok()
        .and_then(|v| 1u64.checked_shl(v))
        .unwrap_or(0)
}

impl MessageLog {
    /// Logs nothing (the default).
    pub fn off() -> Self {
        MessageLog { mask: 0 }
    }

    /// Logs every message type. On a busy leader that is a line per append and
    /// heartbeat per peer: for chasing a problem, not for always.
    pub fn all() -> Self {
        MessageLog { mask: u64::MAX }
    }

    /// Logs the given types only.
    pub fn only(types: &[MessageType]) -> Self {
        MessageLog {
            mask: types.iter().fold(0, |m, t| m | bit(*t)),
        }
    }

    /// This filter with `t` logged too.
    pub fn with(self, t: MessageType) -> Self {
        MessageLog {
            mask: self.mask | bit(t),
        }
    }

    /// Whether messages of type `t` are logged.
    pub fn logs(&self, t: MessageType) -> bool {
        self.mask & bit(t) != 0
    }

    /// True when nothing is logged.
    pub fn is_off(&self) -> bool {
        self.mask == 0
    }
}

/// The filter a running node reads on every message: one atomic load.
#[derive(Debug, Default)]
pub(crate) struct MessageLogSwitch(AtomicU64);

impl MessageLogSwitch {
    pub(crate) fn set(&self, log: MessageLog) {
        self.0.store(log.mask, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> MessageLog {
        MessageLog {
            mask: self.0.load(Ordering::Relaxed),
        }
    }

    /// Logs `m` at `info` if its type is switched on; returns whether it did.
    pub(crate) fn log(&self, logger: &Logger, dir: &'static str, m: &Message) -> bool {
        let mask = self.0.load(Ordering::Relaxed);
        if mask & bit(m.get_msg_type()) == 0 {
            return false;
        }
        info!(logger, "raft message"; "dir" => dir, "type" => ?m.get_msg_type(),
            "from" => m.from, "to" => m.to, "term" => m.term, "index" => m.index,
            "log_term" => m.log_term, "commit" => m.commit, "entries" => m.entries.len(),
            "reject" => m.reject);
        true
    }
}
