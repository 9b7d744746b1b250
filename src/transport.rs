//! The `Transport` trait: how raft messages reach peers and come back.

use raft::eraftpb::Message;

use crate::error::TransportError;
use crate::mailbox::Mailbox;

/// Carries raft messages between the nodes of one cluster.
///
/// Outgoing: the driver hands each batch of messages to [`Transport::send`]. Incoming: the
/// transport delivers what arrives for this node into the [`Mailbox`] it was given in
/// [`Transport::start`]. In the box: [`crate::ChannelNetwork`] (in-process, with fault
/// injection).
///
/// # Correctness
///
/// - Raft tolerates loss, duplication and reordering of messages, so the transport may
///   drop messages it cannot deliver; it must never alter one, and must never deliver a
///   message to a node other than `msg.to`.
/// - It must only deliver messages from members of this cluster (see `docs/security.md`):
///   raft-rs trusts its peers, and several malformed-but-decodable messages panic it.
pub trait Transport: Send + 'static {
    /// Starts the transport for the node that owns `mailbox`. Called once by
    /// [`crate::Node::start`], on the caller's thread, before the driver thread starts and
    /// before the first `send`.
    ///
    /// # Errors
    ///
    /// [`TransportError`] when the transport cannot start (address in use, say); the node
    /// does not start.
    ///
    /// # Correctness
    ///
    /// Messages for this node that arrive from now on go to `mailbox.deliver`.
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError>;

    /// Sends `messages`, each to its `to` peer.
    ///
    /// # Correctness
    ///
    /// - **Never block the driver** on the network: queue, and drop when a bounded queue
    ///   is full (counting the drop). The driver calls this on its hot path.
    /// - When a peer cannot be reached, call [`Mailbox::report_unreachable`] for it, so
    ///   raft stops pipelining to it.
    /// - For every `MsgSnapshot`, call [`Mailbox::report_snapshot`] once its fate is
    ///   known (delivered or failed); a follower stays paused until then. The driver
    ///   reports a failure itself after `SnapshotPolicy::report_timeout` as a backstop.
    fn send(&mut self, messages: Vec<Message>);

    /// A membership change added `peer`; `context` is the bytes the change carried
    /// (raftnode's membership calls put the peer's address there). Default: ignore.
    fn add_peer(&mut self, peer: u64, context: &[u8]) {
        let _ = (peer, context);
    }

    /// A membership change removed `peer`. Default: ignore.
    fn remove_peer(&mut self, peer: u64) {
        let _ = peer;
    }

    /// The node is stopping: release threads and sockets. Called once, on the driver
    /// thread, after the last `send`, when the node shuts down or stops on a fatal error.
    /// After a driver panic it is not called and the transport is only dropped, so a
    /// transport holding threads should also release them in `Drop`. Default: nothing.
    fn stop(&mut self) {}
}
