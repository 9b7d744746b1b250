//! `Mailbox`: the handle a transport uses to hand incoming messages to its node.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(test)]
use crossbeam_channel::{Sender, TrySendError};
use raft::eraftpb::Message;
use raft::SnapshotStatus;

/// What a transport hands the driver.
pub(crate) enum PeerInput {
    Message(Message),
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
}

/// Why [`Mailbox::deliver`] did not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// The node's message queue (`Config::max_pending_messages`) is full; the message was
    /// dropped and counted. Raft retransmits.
    #[error("message queue full; message dropped")]
    Full,
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
}

/// How a mailbox queues an input; built by the node around its one request channel.
pub(crate) type Push = Arc<dyn Fn(PeerInput) -> Result<(), DeliverError> + Send + Sync>;

/// The inbound side of a node, given to its [`crate::Transport`] in `start`.
///
/// Cheap to clone; every method is non-blocking and safe to call from any thread.
#[derive(Clone)]
pub struct Mailbox {
    id: u64,
    push: Push,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("id", &self.id).finish()
    }
}

impl Mailbox {
    /// A mailbox that queues into `push` (the node's request channel).
    pub(crate) fn from_fn(id: u64, push: Push) -> Self {
        Mailbox { id, push }
    }

    /// A mailbox on its own channel, counting drops in `dropped` (transport unit tests).
    #[cfg(test)]
    pub(crate) fn new(id: u64, tx: Sender<PeerInput>, dropped: Arc<AtomicU64>) -> Self {
        let push = move |input| match tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                Err(DeliverError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(DeliverError::Stopped),
        };
        Mailbox::from_fn(id, Arc::new(push))
    }

    /// The id of the node this mailbox belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a message from a peer for the driver to `step`.
    ///
    /// The driver drops (and logs at debug level) messages whose `to` is not this node,
    /// local message types, and messages from peers raft does not know.
    ///
    /// # Errors
    ///
    /// [`DeliverError::Full`] when the queue is full (the message is dropped and counted in
    /// [`crate::MetricsSnapshot::messages_dropped`]), [`DeliverError::Stopped`] when the
    /// node stopped.
    pub fn deliver(&self, message: Message) -> Result<(), DeliverError> {
        self.push(PeerInput::Message(message))
    }

    /// Tells raft that the last send to `peer` failed, so the leader stops pipelining
    /// to it and probes instead. Best effort: dropped if the queue is full.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.push(PeerInput::Unreachable(peer));
    }

    /// Tells raft whether the `MsgSnapshot` sent to `peer` arrived. Must be called once
    /// for every `MsgSnapshot` a transport handles (raft-rs note 13).
    pub fn report_snapshot(&self, peer: u64, status: SnapshotStatus) {
        let _ = self.push(PeerInput::Snapshot(peer, status));
    }

    fn push(&self, input: PeerInput) -> Result<(), DeliverError> {
        (self.push)(input)
    }
}
