//! The outbound side of [`super::TcpTransport`]: one writer thread per peer, draining
//! its bounded queue into buffered writes, reconnecting with backoff, sending snapshots
//! in chunks, and pinging the receiver to replace a stalled connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use slog::{debug, info, warn, Logger};

use super::{add, read_exact_by, time_left, write_all_by, Conn, Shared, MAX_BATCH};
use crate::mailbox::Mailbox;
use crate::wire::{
    self, Handshake, FRAME_HEADER_BYTES, HANDSHAKE_BYTES, KIND_PING, KIND_PONG, KIND_SNAPSHOT_ACK,
    SNAPSHOT_ACK_BYTES,
};

/// The writer thread of one peer.
pub(super) struct WriterCtx {
    pub(super) peer: u64,
    pub(super) local: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) mailbox: Mailbox,
    pub(super) rx: Receiver<Message>,
    pub(super) retired: Arc<AtomicBool>,
    pub(super) live: Arc<Mutex<Option<TcpStream>>>,
    pub(super) logger: Logger,
}

impl WriterCtx {
    fn stopping(&self) -> bool {
        self.retired.load(Ordering::Acquire) || self.shared.shutdown.load(Ordering::Acquire)
    }

    pub(super) fn run(self) {
        let config = &self.shared.config;
        let mut link: Option<Link> = None;
        let mut backoff = config.backoff_min;
        let mut attempted = false;
        let mut transfer = 0u64;
        loop {
            // While connected, wake up to ping even when nothing is queued.
            let first = match &link {
                Some(_) => match self.rx.recv_timeout(config.stall_timeout / 4) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            if let Some(live) = link.as_mut() {
                if let Err(e) = live.keep_alive(config.stall_timeout) {
                    info!(self.logger, "connection to peer stalled or closed; replacing it";
                        "error" => %e);
                    add(&self.shared.counters.stalled_connections, 1);
                    // What was written since the last pong is likely lost: let raft
                    // probe this peer again rather than wait for its replies.
                    if !self.stopping() {
                        self.mailbox.report_unreachable(self.peer);
                    }
                    self.drop_link(&mut link);
                }
            }
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
            if self.stopping() {
                self.fail(batch);
                break;
            }
            if link.is_none() {
                match self.connect() {
                    Ok(stream) => {
                        if attempted {
                            add(&self.shared.counters.reconnects, 1);
                        }
                        attempted = true;
                        backoff = config.backoff_min;
                        *self.live.lock() = stream.tcp().try_clone().ok();
                        link = Some(Link::new(stream));
                    }
                    Err(e) => {
                        attempted = true;
                        add(&self.shared.counters.connect_failures, 1);
                        debug!(self.logger, "connect failed"; "error" => %e, "backoff" => ?backoff);
                        self.fail(batch);
                        if !self.wait_backoff(backoff) {
                            break;
                        }
                        backoff = (backoff * 2).min(config.backoff_max);
                        continue;
                    }
                }
            }
            let live = link.as_mut().expect("connected above");
            if let Err(e) = self.send_batch(live, batch, &mut transfer) {
                info!(self.logger, "connection to peer lost"; "error" => %e);
                if !self.stopping() {
                    self.mailbox.report_unreachable(self.peer);
                }
                self.drop_link(&mut link);
            }
        }
        // Retired or stopped: whatever is still queued will never be sent.
        self.fail(self.rx.try_iter().collect());
        if let Some(live) = link {
            let _ = live.conn.tcp().shutdown(Shutdown::Both);
        }
    }

    /// Closes the connection; the next batch opens a new one.
    fn drop_link(&self, link: &mut Option<Link>) {
        if let Some(live) = link.take() {
            let _ = live.conn.tcp().shutdown(Shutdown::Both);
        }
        *self.live.lock() = None;
    }

    /// Drops messages that cannot be sent: unreachable once, and `Failure` for each
    /// snapshot among them.
    fn fail(&self, batch: Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        add(&self.shared.counters.messages_lost, batch.len() as u64);
        if !self.stopping() {
            self.mailbox.report_unreachable(self.peer);
        }
        for m in batch {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                add(&self.shared.counters.snapshots_failed, 1);
                self.mailbox
                    .report_snapshot(self.peer, SnapshotStatus::Failure);
            }
        }
    }

    /// Waits out a backoff, dropping what arrives meanwhile. False: time to exit.
    fn wait_backoff(&self, backoff: Duration) -> bool {
        let until = Instant::now() + backoff;
        loop {
            match self.rx.recv_deadline(until) {
                Ok(m) => self.fail(vec![m]),
                Err(RecvTimeoutError::Timeout) => return !self.stopping(),
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Connects to the peer's current address and exchanges handshakes.
    fn connect(&self) -> Result<Conn, String> {
        let address = self
            .shared
            .peers
            .read()
            .get(&self.peer)
            .cloned()
            .flatten()
            .ok_or("no address known")?;
        let addrs = address
            .resolve()
            .map_err(|e| format!("resolve {address}: {e}"))?;
        let mut last = format!("{address} resolved to no address");
        for addr in addrs {
            match self.connect_to(addr) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// Connects to `addr` and exchanges handshakes, all within `connect_timeout`.
    fn connect_to(&self, addr: SocketAddr) -> Result<Conn, String> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.connect_timeout;
        let tcp =
            TcpStream::connect_timeout(&addr, config.connect_timeout).map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut stream = self.secure(tcp, deadline)?;
        let hello = Handshake {
            cluster_id: config.cluster_id,
            from: self.local,
            to: self.peer,
        };
        write_all_by(&mut stream, &hello.encode(), deadline)
            .map_err(|e| format!("sending handshake: {e}"))?;
        let mut answer = [0u8; HANDSHAKE_BYTES];
        read_exact_by(&mut stream, &mut answer, deadline)
            .map_err(|e| format!("no handshake answer within connect_timeout (refused?): {e}"))?;
        stream
            .tcp()
            .set_write_timeout(Some(config.io_timeout))
            .map_err(|e| e.to_string())?;
        let answer = Handshake::decode(&answer).map_err(|e| e.to_string())?;
        let expected = Handshake {
            cluster_id: config.cluster_id,
            from: self.peer,
            to: self.local,
        };
        if answer != expected {
            return Err(format!("answer {answer:?} does not match {expected:?}"));
        }
        Ok(stream)
    }

    /// With TLS configured, runs the TLS handshake (by `deadline`): the peer must prove
    /// it is node `peer` of this cluster's CA.
    fn secure(&self, tcp: TcpStream, deadline: Instant) -> Result<Conn, String> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.config.tls {
            return crate::transports::tls::connect(tls, self.peer, tcp, deadline)
                .map(|stream| Conn::Tls(Box::new(stream)));
        }
        #[cfg(not(feature = "tls"))]
        let _ = deadline; // only a TLS handshake runs here
        Ok(Conn::Plain(tcp))
    }

    /// Writes `batch`: runs of ordinary messages as message frames in one buffer, each
    /// snapshot (or message too large for a frame) as chunks. On error, every message
    /// not yet written is failed.
    fn send_batch(
        &self,
        link: &mut Link,
        batch: Vec<Message>,
        transfer: &mut u64,
    ) -> io::Result<()> {
        let max = self.shared.config.max_frame_bytes;
        let counters = &self.shared.counters;
        let mut frames = Frames::default();
        let mut rest = batch.into_iter();
        while let Some(m) = rest.next() {
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let encoded = match protobuf::Message::write_to_bytes(&m) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(self.logger, "cannot encode a message; dropped"; "error" => %e);
                    self.fail(vec![m]);
                    continue;
                }
            };
            if !is_snapshot && wire::messages_frame_bytes([encoded.len()].into_iter()) <= max {
                frames.push(encoded, max);
                continue;
            }
            let written = frames.write(&mut link.conn, counters).and_then(|()| {
                *transfer += 1;
                self.send_chunked(link, *transfer, &encoded, is_snapshot)
            });
            match written {
                Ok(()) => add(&counters.messages_sent, 1),
                Err(e) => {
                    if is_snapshot {
                        self.report_snapshot(false);
                    }
                    add(&counters.messages_lost, 1);
                    self.fail(rest.collect());
                    return Err(e);
                }
            }
        }
        frames.write(&mut link.conn, counters)
    }

    fn write(&self, stream: &mut Conn, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            stream.write_all(out)?;
            out.clear();
        }
        Ok(())
    }

    /// Sends one encoded message in chunks; for a snapshot, waits for the ack and
    /// reports the outcome.
    fn send_chunked(
        &self,
        link: &mut Link,
        transfer: u64,
        encoded: &[u8],
        is_snapshot: bool,
    ) -> io::Result<()> {
        let config = &self.shared.config;
        let stream = &mut link.conn;
        let total = encoded.len() as u64;
        let mut frame = Vec::with_capacity(config.snapshot_chunk_bytes + 64);
        for (i, data) in encoded.chunks(config.snapshot_chunk_bytes).enumerate() {
            let offset = (i * config.snapshot_chunk_bytes) as u64;
            wire::encode_chunk(transfer, total, offset, data, &mut frame);
            self.write(stream, &mut frame)?;
        }
        stream.flush()?;
        if !is_snapshot {
            return Ok(());
        }
        let deadline = Instant::now() + config.snapshot_ack_timeout;
        let (acked, delivered) = link.wait_ack(deadline)?;
        if acked != transfer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ack for another snapshot",
            ));
        }
        self.report_snapshot(delivered);
        debug!(self.logger, "snapshot sent"; "bytes" => total, "delivered" => delivered);
        Ok(())
    }

    fn report_snapshot(&self, delivered: bool) {
        let counters = &self.shared.counters;
        if delivered {
            add(&counters.snapshots_sent, 1);
            self.mailbox
                .report_snapshot(self.peer, SnapshotStatus::Finish);
        } else {
            add(&counters.snapshots_failed, 1);
            self.mailbox
                .report_snapshot(self.peer, SnapshotStatus::Failure);
        }
    }
}

/// Message frames waiting for one buffered write.
#[derive(Default)]
struct Frames {
    /// Encoded frames, ready to write.
    out: Vec<u8>,
    /// Messages in `out`.
    in_out: u64,
    /// Encoded messages of the frame being filled, and its size so far.
    run: Vec<Vec<u8>>,
    run_bytes: usize,
}

impl Frames {
    /// Adds a message that fits a frame of `max` bytes, closing the current frame first
    /// if the message would overflow it.
    fn push(&mut self, encoded: Vec<u8>, max: usize) {
        if self.run.is_empty() {
            self.run_bytes = wire::messages_frame_bytes(std::iter::empty());
        }
        if self.run_bytes + 4 + encoded.len() > max {
            self.close_frame();
            self.run_bytes = wire::messages_frame_bytes(std::iter::empty());
        }
        self.run_bytes += 4 + encoded.len();
        self.run.push(encoded);
    }

    fn close_frame(&mut self) {
        if !self.run.is_empty() {
            wire::encode_messages_frame(&self.run, &mut self.out);
            self.in_out += self.run.len() as u64;
            self.run.clear();
        }
    }

    /// Writes every pending message in one `write_all`; counts them sent or lost.
    fn write(&mut self, stream: &mut Conn, counters: &super::Counters) -> io::Result<()> {
        self.close_frame();
        if self.out.is_empty() {
            return Ok(());
        }
        // One flush per batch: TLS holds back the tail of the last record until then.
        let outcome = stream.write_all(&self.out).and_then(|()| stream.flush());
        let n = std::mem::take(&mut self.in_out);
        self.out.clear();
        match outcome {
            Ok(()) => add(&counters.messages_sent, n),
            Err(_) => add(&counters.messages_lost, n),
        }
        outcome
    }
}

/// What comes back on an outbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    Pong(u64),
    /// `(transfer, delivered)`.
    Ack(u64, bool),
}

/// An open outbound connection and what the writer knows of its health.
///
/// Liveness protocol: at most one ping is outstanding; the next goes out
/// `stall_timeout / 4` after the previous was answered. A ping unanswered for
/// `stall_timeout` means the connection no longer delivers, whatever the kernel thinks.
struct Link {
    conn: Conn,
    /// Bytes read back from the peer and not yet parsed into whole frames.
    back: Vec<u8>,
    /// Sequence number of the last ping sent.
    sequence: u64,
    /// When the outstanding ping went out; `None` when every ping was answered.
    outstanding: Option<Instant>,
    /// When the last ping was answered (or the connection opened).
    answered: Instant,
    /// When `keep_alive` last looked at the socket: it looks at most every
    /// `stall_timeout / 8`, so that a busy writer does not pay three system calls per
    /// batch.
    checked: Instant,
}

impl Link {
    fn new(conn: Conn) -> Link {
        Link {
            conn,
            back: Vec::new(),
            sequence: 0,
            outstanding: None,
            answered: Instant::now(),
            checked: Instant::now(),
        }
    }

    /// Reads the pongs that arrived, fails if the outstanding ping is older than
    /// `stall_timeout` or the peer closed, and pings when one is due.
    fn keep_alive(&mut self, stall_timeout: Duration) -> io::Result<()> {
        if self.checked.elapsed() < stall_timeout / 8 {
            return Ok(());
        }
        self.checked = Instant::now();
        self.conn.tcp().set_nonblocking(true)?;
        let read = self.read_available();
        self.conn.tcp().set_nonblocking(false)?;
        read?;
        while let Some(back) = self.parse()? {
            if let Back::Ack(..) = back {
                return Err(invalid("a snapshot ack nobody waits for"));
            }
        }
        if let Some(sent) = self.outstanding {
            if sent.elapsed() >= stall_timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("ping unanswered for {:?} (stall_timeout)", sent.elapsed()),
                ));
            }
        } else if self.answered.elapsed() >= stall_timeout / 4 {
            self.sequence += 1;
            self.conn
                .write_all(&wire::encode_ping(KIND_PING, self.sequence))?;
            self.conn.flush()?;
            self.outstanding = Some(Instant::now());
        }
        Ok(())
    }

    /// Reads what the socket holds without blocking (the socket is non-blocking).
    fn read_available(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 512];
        loop {
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.back.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for the ack of a snapshot until `deadline`, taking pongs on the way.
    fn wait_ack(&mut self, deadline: Instant) -> io::Result<(u64, bool)> {
        let mut buf = [0u8; 512];
        loop {
            match self.parse()? {
                Some(Back::Ack(transfer, delivered)) => return Ok((transfer, delivered)),
                Some(Back::Pong(_)) => continue,
                None => {}
            }
            self.conn
                .tcp()
                .set_read_timeout(Some(time_left(deadline, "snapshot ack")?))?;
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.back.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes one whole frame off `back`, if there is one; a pong answers the ping.
    fn parse(&mut self) -> io::Result<Option<Back>> {
        let Some(header) = self.back.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let header: &[u8; FRAME_HEADER_BYTES] = header.try_into().expect("header size");
        // Nothing bigger than an ack ever comes back.
        let (kind, len) = wire::decode_header(header, SNAPSHOT_ACK_BYTES).map_err(invalid)?;
        if self.back.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.back.drain(..FRAME_HEADER_BYTES + len).collect();
        let back = match kind {
            KIND_PONG => Back::Pong(wire::decode_ping(&frame, KIND_PONG).map_err(invalid)?),
            KIND_SNAPSHOT_ACK => {
                let (transfer, delivered) = wire::decode_snapshot_ack(&frame).map_err(invalid)?;
                Back::Ack(transfer, delivered)
            }
            _ => return Err(invalid("unexpected frame kind from the receiver")),
        };
        if back == Back::Pong(self.sequence) {
            self.outstanding = None;
            self.answered = Instant::now();
        }
        Ok(Some(back))
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
