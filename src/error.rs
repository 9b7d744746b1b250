//! Error types, one enum per operation family.
//!
//! Errors a caller can retry (`NotLeader`, `Dropped`, `Timeout`, `Busy`) are kept apart
//! from the ones that mean the node is gone (`Stopped`). A fatal storage or state
//! machine error stops the node; every later call then returns `Stopped`.

use std::fmt;

/// Why a node stopped. Returned by [`crate::Node::stop_reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// [`crate::Node::shutdown`] was called, or the last handle was dropped.
    Shutdown,
    /// [`crate::Node::kill`] was called: the driver stopped at once, between two
    /// requests.
    Killed,
    /// A `LogStore` write or sync failed; nothing after it was acknowledged.
    Storage(String),
    /// The state machine failed to take or restore a snapshot.
    StateMachine(String),
    /// The driver thread panicked; the message is the panic payload.
    Panic(String),
    /// raft-rs returned an error the driver cannot continue after.
    Raft(String),
    /// This node's state machine diverged from the leader's and
    /// `Config::stop_on_divergence` is set (docs/operations.md, "Divergence").
    Diverged(crate::status::Divergence),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Shutdown => write!(f, "shut down"),
            StopReason::Killed => write!(f, "killed"),
            StopReason::Storage(e) => write!(f, "storage error: {e}"),
            StopReason::StateMachine(e) => write!(f, "state machine error: {e}"),
            StopReason::Panic(e) => write!(f, "driver panicked: {e}"),
            StopReason::Raft(e) => write!(f, "raft error: {e}"),
            StopReason::Diverged(d) => write!(f, "state machine diverged: {d}"),
        }
    }
}

/// A configuration value is out of range. The message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    /// The field at fault, as spelled in [`crate::Config`].
    pub field: &'static str,
    /// What is wrong, with the value and the limit.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            field,
            message: message.into(),
        }
    }
}

/// A `LogStore` operation failed.
///
/// Returned by the write side of [`crate::LogStore`]. The driver treats every such error
/// as fatal: the node stops with [`StopReason::Storage`] and never acknowledges what it
/// could not persist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done ("append", "sync", "open ...").
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed a check. `path` names the file or key; `detail` says what to do.
    #[error("corrupt data in {path}: {detail}")]
    Corrupt {
        /// The file, directory or key holding the bad data.
        path: String,
        /// What was found and what the operator can do about it.
        detail: String,
    },
    /// The request asks for entries that were compacted away.
    #[error("index {index} is compacted (first available index is {first_index})")]
    Compacted {
        /// The requested index.
        index: u64,
        /// The first index still in the log.
        first_index: u64,
    },
    /// The write does not fit what is stored (a hole in the log, a stale snapshot).
    #[error("{op}: {detail}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An error from the storage engine that fits none of the above.
    #[error("{op}: {detail}")]
    Engine {
        /// The operation.
        op: &'static str,
        /// The engine's message.
        detail: String,
    },
}

impl StorageError {
    /// Turns this error into the `raft::Error` that `raft::Storage` methods return.
    pub fn into_raft(self) -> raft::Error {
        match self {
            StorageError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}

/// A state machine could not take or restore a snapshot.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StateMachineError {
    /// What failed.
    pub message: String,
}

impl StateMachineError {
    /// Builds an error from anything printable.
    pub fn new(message: impl fmt::Display) -> Self {
        StateMachineError {
            message: message.to_string(),
        }
    }
}

/// Why a proposal did not produce a response.
///
/// `NotLeader`, `Dropped`, `Busy` mean the command was **not** and will never be applied:
/// retrying is safe. `OutcomeUnknown` and `Timeout` mean it **may** still be applied:
/// retry only if the command is idempotent or carries its own deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader. `leader` is the leader it knows of, if any.
    /// Proposals are never forwarded silently.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader as this node knows it.
        leader: Option<u64>,
    },
    /// raft rejected the proposal (leadership transfer under way, uncommitted-size limit,
    /// or its log entry was overwritten by a new leader). It will never be applied.
    #[error("proposal dropped; it will not be applied")]
    Dropped,
    /// The entry was appended at `index` in `term`, then this node lost leadership before
    /// it was applied here. It may still commit under the new leader.
    #[error("leadership lost after the entry was appended at index {index} term {term}; it may still commit")]
    OutcomeUnknown {
        /// The log index the entry was appended at.
        index: u64,
        /// The term it was appended in.
        term: u64,
    },
    /// The wait ended before the outcome was known; the proposal may still be applied.
    #[error("timed out waiting for the proposal; it may still be applied")]
    Timeout,
    /// The node's input queue is full. Nothing was proposed.
    #[error("node is busy (input queue full); nothing was proposed")]
    Busy,
    /// The command is larger than `Config::max_proposal_bytes`.
    #[error("proposal of {size} bytes exceeds max_proposal_bytes ({limit})")]
    TooLarge {
        /// The command's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Empty commands are refused: raft uses empty entries as leader no-ops.
    #[error("empty proposals are refused (raft uses empty entries internally)")]
    Empty,
    /// The node has stopped; see [`crate::Node::stop_reason`].
    #[error("node stopped")]
    Stopped,
}

/// Why a read did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A lease read was asked of a node that is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader as this node knows it.
        leader: Option<u64>,
    },
    /// No read index was confirmed before the deadline (no leader, no quorum, or the
    /// leader has not yet committed an entry in its term).
    #[error("read timed out before a quorum confirmed the read index")]
    Timeout,
    /// The deadline given was zero.
    #[error("read deadline must be greater than zero")]
    ZeroDeadline,
    /// Lease reads need `Config::lease_reads` (and `check_quorum`).
    #[error("lease reads are not enabled (Config::lease_reads is false)")]
    LeaseNotEnabled,
    /// The node's input queue is full.
    #[error("node is busy (input queue full)")]
    Busy,
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
}

/// Why a call about the node itself (`status`, `snapshot_now`, `campaign`,
/// `wait_for_leader`, `confirmed_leader`) did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node's input queue is full: retry shortly.
    #[error("node is busy (input queue full)")]
    Busy,
    /// No answer within the call's deadline.
    #[error("timed out")]
    Timeout,
    /// The node has stopped ([`crate::Node::stop_reason`] says why).
    #[error("node stopped")]
    Stopped,
}

/// Why a membership change or leadership transfer did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader as this node knows it.
        leader: Option<u64>,
    },
    /// The change is invalid against the current configuration (adding an existing
    /// member, removing an unknown one, removing the last voter, node id 0, ...).
    #[error("invalid membership change: {0}")]
    Invalid(String),
    /// raft rejected the change: another change is still pending, or the group is in a
    /// joint configuration. The change was not applied.
    #[error("membership change rejected: {0}")]
    Rejected(String),
    /// Leadership was lost after the change was appended; it may still be applied.
    #[error("leadership lost after the change was appended at index {index}; it may still apply")]
    OutcomeUnknown {
        /// The log index of the change.
        index: u64,
    },
    /// The deadline passed.
    #[error("timed out; the change or transfer may still complete")]
    Timeout,
    /// A node joining as a voter had not caught up as a learner by the deadline
    /// (docs/membership.md, "Adding a voter safely"). Nothing was promoted; the node
    /// stays a learner and keeps receiving the log: call `promote` again later, or
    /// `remove` it.
    #[error(
        "node {id} did not catch up before the deadline (it holds {matched} of {commit} \
         committed entries); it stays a learner"
    )]
    CatchUpTimeout {
        /// The joining node furthest behind.
        id: u64,
        /// The last index the leader knows it holds.
        matched: u64,
        /// The leader's commit index at the deadline.
        commit: u64,
    },
    /// The node's input queue is full.
    #[error("node is busy (input queue full)")]
    Busy,
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log store could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The state machine could not be restored from the stored snapshot.
    #[error("state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// The transport refused to start.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// raft-rs refused the stored state.
    #[error("raft: {0}")]
    Raft(String),
    /// The driver thread could not be spawned.
    #[error("spawning the driver thread failed: {0}")]
    Spawn(#[source] std::io::Error),
    /// A [`crate::GroupHost`] already runs a group with this id (stop it first).
    #[error("group {0} is already running on this host")]
    GroupExists(u64),
    /// The [`crate::GroupHost`] has shut down; it starts no more groups.
    #[error("the group host has shut down")]
    HostStopped,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// An I/O operation failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The transport was misconfigured or used out of order.
    #[error("{0}")]
    Config(String),
}

/// A recording could not be replayed ([`crate::replay`]). A replay that runs but
/// differs from its recording is not an error: it reports a
/// [`Mismatch`](crate::Mismatch).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The recording's path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a recording of this version, is cut short, or is corrupt: a
    /// frame's CRC fails or a record does not decode.
    #[error("bad recording at byte {offset}: {detail}")]
    Format {
        /// Where in the file the bad header, frame or record starts.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// The state machine could not be restored from the recorded snapshot.
    #[error("state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// The recorded starting state was refused (by raft-rs, the store, or the state
    /// machine), or the core panicked on it.
    #[error("segment {segment}: {detail}")]
    Refused {
        /// The segment, from 0.
        segment: usize,
        /// What refused it, and why.
        detail: String,
    },
}
