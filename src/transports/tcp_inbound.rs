//! The inbound side of [`super::TcpTransport`]: the acceptor thread and one reader
//! thread per connection (handshake, then frames checked by [`crate::wire`] before they
//! reach the mailbox, and pings answered).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use slog::{debug, warn};

use super::{add, read_exact_by, write_all_by, Conn, RefusalReason, Shared};
use crate::mailbox::{DeliverError, Mailbox};
use crate::wire::{
    self, DecodeContext, Handshake, Reassembly, WireError, FRAME_HEADER_BYTES, HANDSHAKE_BYTES,
    KIND_CHUNK, KIND_MESSAGES, KIND_PING, KIND_PONG,
};

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mailbox: Mailbox) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::Acquire) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                warn!(shared.logger, "accept failed"; "error" => %e);
                // Out of file descriptors, say: do not spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // The handshake deadline runs from here, not from when the reader thread starts.
        let accepted = Instant::now();
        let addr = stream.peer_addr().ok();
        let mut inbound = shared.inbound.lock();
        inbound.threads.retain(|t| !t.is_finished());
        if inbound.conns.len() >= shared.config.max_inbound_connections {
            drop(inbound);
            shared.refuse(RefusalReason::TooManyConnections, addr, &"limit reached");
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let conn_id = inbound.next_id;
        inbound.next_id += 1;
        inbound.conns.insert(conn_id, (None, handle));
        let reader = Reader {
            shared: shared.clone(),
            mailbox: mailbox.clone(),
            conn_id,
            addr,
            accepted,
        };
        match thread::Builder::new()
            .name("raftnode-tcp-in".into())
            .spawn(move || reader.run(stream))
        {
            Ok(thread) => inbound.threads.push(thread),
            Err(e) => {
                inbound.conns.remove(&conn_id);
                warn!(shared.logger, "cannot spawn a reader thread"; "error" => %e);
            }
        }
    }
    debug!(shared.logger, "acceptor stopped");
}

/// A refusal: what to count and log.
struct Refusal {
    reason: RefusalReason,
    detail: String,
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Refusal {
            reason: RefusalReason::of(&e),
            detail: e.to_string(),
        }
    }
}

fn refusal(reason: RefusalReason, detail: impl fmt::Display) -> Refusal {
    Refusal {
        reason,
        detail: detail.to_string(),
    }
}

/// The reader of one inbound connection.
struct Reader {
    shared: Arc<Shared>,
    mailbox: Mailbox,
    conn_id: u64,
    addr: Option<SocketAddr>,
    /// When the connection was accepted: its handshake must end `connect_timeout` later.
    accepted: Instant,
}

impl Reader {
    fn run(self, tcp: TcpStream) {
        // One deadline for the whole opening: TLS handshake and raftnode handshake.
        let deadline = self.accepted + self.shared.config.connect_timeout;
        let outcome = self
            .open(tcp, deadline)
            .and_then(|mut stream| self.serve(&mut stream, deadline));
        match outcome {
            Ok(()) => {
                debug!(self.shared.logger, "inbound connection closed"; "addr" => ?self.addr)
            }
            Err(r) => self.shared.refuse(r.reason, self.addr, &r.detail),
        }
        // The registered clone shares the socket: shut it down, whatever path got here.
        if let Some((_, handle)) = self.shared.inbound.lock().conns.remove(&self.conn_id) {
            let _ = handle.shutdown(Shutdown::Both);
        }
    }

    /// Sets the socket's options and, with TLS configured, runs the TLS handshake (by
    /// `deadline`).
    fn open(&self, tcp: TcpStream, deadline: Instant) -> Result<Conn, Refusal> {
        let _ = tcp.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.config.tls {
            return crate::transports::tls::accept(tls, tcp, deadline)
                .map(|stream| Conn::Tls(Box::new(stream)))
                .map_err(|detail| refusal(RefusalReason::Tls, detail));
        }
        #[cfg(not(feature = "tls"))]
        let _ = deadline; // only a TLS handshake runs here
        Ok(Conn::Plain(tcp))
    }

    fn serve(&self, stream: &mut Conn, deadline: Instant) -> Result<(), Refusal> {
        let config = &self.shared.config;
        let peer = self.handshake(stream, deadline)?;
        let _ = stream.tcp().set_read_timeout(Some(config.io_timeout));
        let _ = stream.tcp().set_write_timeout(Some(config.io_timeout));
        let ctx = DecodeContext {
            local_id: self.mailbox.id(),
            peer_id: peer,
            max_frame_bytes: config.max_frame_bytes,
        };
        let mut reassembly = Reassembly::new(self.shared.budget.clone());
        let mut last_chunk = Instant::now();
        loop {
            let frame = match self.read_frame(stream, &mut reassembly, last_chunk)? {
                Some(frame) => frame,
                None => return Ok(()),
            };
            if !self.shared.is_member(peer) {
                return Err(refusal(
                    RefusalReason::NonMember,
                    format!("node {peer} was removed"),
                ));
            }
            // Before the kind is trusted: a flipped kind bit is a checksum failure.
            wire::check_frame(&frame)?;
            match frame[FRAME_HEADER_BYTES - 1] {
                KIND_MESSAGES => {
                    if reassembly.is_pending() {
                        // A sender writes a chunked message's chunks back to back.
                        return Err(refusal(
                            RefusalReason::Reassembly,
                            "message frame inside a chunked message",
                        ));
                    }
                    for m in wire::decode_frame(&frame, &ctx)? {
                        if !self.deliver(m, None, stream) {
                            return Ok(());
                        }
                    }
                }
                KIND_CHUNK => {
                    let chunk = wire::decode_chunk(&frame, config.max_frame_bytes)?;
                    last_chunk = Instant::now();
                    if let Some((transfer, bytes)) = reassembly.push(chunk)? {
                        drop(frame);
                        let m = wire::decode_message(&bytes, &ctx)?;
                        drop(bytes);
                        if !self.deliver(m, Some(transfer), stream) {
                            return Ok(());
                        }
                    }
                }
                KIND_PING => {
                    let sequence = wire::decode_ping(&frame, KIND_PING)?;
                    let pong = wire::encode_ping(KIND_PONG, sequence);
                    if let Err(e) = stream.write_all(&pong).and_then(|()| stream.flush()) {
                        // The sender will see its ping unanswered and reconnect.
                        debug!(self.shared.logger, "pong not sent"; "error" => %e);
                        return Ok(());
                    }
                }
                _ => return Err(refusal(RefusalReason::Malformed, "unknown frame kind")),
            }
        }
    }

    /// Reads and checks the peer's handshake, registers the connection under its id
    /// (closing an older one from the same peer), and answers, all by `deadline`.
    fn handshake(&self, stream: &mut Conn, deadline: Instant) -> Result<u64, Refusal> {
        let config = &self.shared.config;
        let mut bytes = [0u8; HANDSHAKE_BYTES];
        read_exact_by(stream, &mut bytes, deadline).map_err(|e| {
            refusal(
                RefusalReason::BadHandshake,
                format!("no whole handshake within connect_timeout: {e}"),
            )
        })?;
        let h = Handshake::decode(&bytes)?;
        let local = self.mailbox.id();
        if h.cluster_id != config.cluster_id {
            return Err(WireError::WrongCluster {
                got: h.cluster_id,
                want: config.cluster_id,
            }
            .into());
        }
        if h.to != local {
            return Err(WireError::Misaddressed { to: h.to, local }.into());
        }
        if h.from == local || !self.shared.is_member(h.from) {
            return Err(WireError::NonMember(h.from).into());
        }
        // The claim is plausible; with TLS, the certificate must back it.
        #[cfg(feature = "tls")]
        if let Conn::Tls(tls) = stream {
            crate::transports::tls::check_identity(tls, h.from)
                .map_err(|detail| refusal(RefusalReason::Identity, detail))?;
        }
        {
            let mut inbound = self.shared.inbound.lock();
            for (id, (from, other)) in inbound.conns.iter() {
                if *id != self.conn_id && *from == Some(h.from) {
                    // The peer reconnected: its old connection is dead or about to be.
                    let _ = other.shutdown(Shutdown::Both);
                }
            }
            if let Some(entry) = inbound.conns.get_mut(&self.conn_id) {
                entry.0 = Some(h.from);
            }
        }
        let answer = Handshake {
            cluster_id: config.cluster_id,
            from: local,
            to: h.from,
        };
        write_all_by(stream, &answer.encode(), deadline)
            .map_err(|e| refusal(RefusalReason::BadHandshake, format!("answer failed: {e}")))?;
        debug!(self.shared.logger, "peer connected"; "peer" => h.from, "addr" => ?self.addr);
        Ok(h.from)
    }

    /// Reads one whole frame, header included. `None`: the connection closed (or the
    /// node is stopping) between frames.
    fn read_frame(
        &self,
        stream: &mut Conn,
        reassembly: &mut Reassembly,
        last_chunk: Instant,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let config = &self.shared.config;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let mut got = 0;
        while got < FRAME_HEADER_BYTES {
            match stream.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(refusal(
                        RefusalReason::Truncated,
                        "closed inside a frame header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && got == 0 => {
                    if self.shared.shutdown.load(Ordering::Acquire) {
                        return Ok(None);
                    }
                    if reassembly.is_pending() && last_chunk.elapsed() >= config.io_timeout {
                        reassembly.clear();
                        return Err(refusal(
                            RefusalReason::Reassembly,
                            "snapshot chunks stopped arriving",
                        ));
                    }
                }
                Err(e) if got == 0 => {
                    debug!(self.shared.logger, "inbound read failed"; "error" => %e);
                    return Ok(None);
                }
                Err(e) => {
                    return Err(refusal(
                        RefusalReason::Truncated,
                        format!("inside a frame header: {e}"),
                    ))
                }
            }
        }
        let (_, len) = wire::decode_header(&header, config.max_frame_bytes)?;
        let mut frame = vec![0u8; FRAME_HEADER_BYTES + len];
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        stream
            .read_exact(&mut frame[FRAME_HEADER_BYTES..])
            .map_err(|e| {
                refusal(
                    RefusalReason::Truncated,
                    format!("{len}-byte frame body not received: {e}"),
                )
            })?;
        Ok(Some(frame))
    }

    /// Queues `m` in the mailbox; acks a chunked snapshot. False: the node stopped.
    fn deliver(&self, m: Message, transfer: Option<u64>, stream: &mut Conn) -> bool {
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let counters = &self.shared.counters;
        let outcome = self.mailbox.deliver(m);
        match outcome {
            Ok(()) => {
                add(&counters.messages_received, 1);
                if is_snapshot {
                    add(&counters.snapshots_received, 1);
                }
            }
            Err(DeliverError::Full) => add(&counters.mailbox_full, 1),
            Err(_) => return false,
        }
        if let (true, Some(transfer)) = (is_snapshot, transfer) {
            let ack = wire::encode_snapshot_ack(transfer, outcome.is_ok());
            if let Err(e) = stream.write_all(&ack).and_then(|()| stream.flush()) {
                debug!(self.shared.logger, "snapshot ack not sent"; "error" => %e);
            }
        }
        true
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
