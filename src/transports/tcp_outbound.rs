//! The outbound side of [`super::TcpTransport`]: one writer thread per peer, draining
//! its bounded queue into buffered writes, reconnecting with backoff, and sending
//! snapshots in chunks.

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

use super::{add, Conn, Shared, MAX_BATCH};
use crate::mailbox::Mailbox;
use crate::wire::{self, Handshake, HANDSHAKE_BYTES};

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
        let mut conn: Option<Conn> = None;
        let mut backoff = config.backoff_min;
        let mut attempted = false;
        let mut transfer = 0u64;
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
            if self.stopping() {
                self.fail(batch);
                break;
            }
            if conn.is_none() {
                match self.connect() {
                    Ok(stream) => {
                        if attempted {
                            add(&self.shared.counters.reconnects, 1);
                        }
                        attempted = true;
                        backoff = config.backoff_min;
                        *self.live.lock() = stream.tcp().try_clone().ok();
                        conn = Some(stream);
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
            let stream = conn.as_mut().expect("connected above");
            if let Err(e) = self.send_batch(stream, batch, &mut transfer) {
                info!(self.logger, "connection to peer lost"; "error" => %e);
                if !self.stopping() {
                    self.mailbox.report_unreachable(self.peer);
                }
                let _ = stream.tcp().shutdown(Shutdown::Both);
                conn = None;
                *self.live.lock() = None;
            }
        }
        // Retired or stopped: whatever is still queued will never be sent.
        self.fail(self.rx.try_iter().collect());
        if let Some(stream) = conn {
            let _ = stream.tcp().shutdown(Shutdown::Both);
        }
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

    fn connect_to(&self, addr: SocketAddr) -> Result<Conn, String> {
        let config = &self.shared.config;
        let tcp =
            TcpStream::connect_timeout(&addr, config.connect_timeout).map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(config.io_timeout))
            .and_then(|()| tcp.set_read_timeout(Some(config.connect_timeout)))
            .map_err(|e| e.to_string())?;
        let mut stream = self.secure(tcp)?;
        let hello = Handshake {
            cluster_id: config.cluster_id,
            from: self.local,
            to: self.peer,
        };
        stream
            .write_all(&hello.encode())
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending handshake: {e}"))?;
        let mut answer = [0u8; HANDSHAKE_BYTES];
        stream
            .read_exact(&mut answer)
            .map_err(|e| format!("no handshake answer (refused?): {e}"))?;
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

    /// With TLS configured, runs the TLS handshake (bounded by `connect_timeout`): the
    /// peer must prove it is node `peer` of this cluster's CA.
    fn secure(&self, tcp: TcpStream) -> Result<Conn, String> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.config.tls {
            let timeout = self.shared.config.connect_timeout;
            return crate::transports::tls::connect(tls, self.peer, tcp, timeout)
                .map(|stream| Conn::Tls(Box::new(stream)));
        }
        Ok(Conn::Plain(tcp))
    }

    /// Writes `batch`: runs of ordinary messages as message frames in one buffer, each
    /// snapshot (or message too large for a frame) as chunks. On error, every message
    /// not yet written is failed.
    fn send_batch(
        &self,
        stream: &mut Conn,
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
            let written = frames.write(stream, counters).and_then(|()| {
                *transfer += 1;
                self.send_chunked(stream, *transfer, &encoded, is_snapshot)
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
        frames.write(stream, counters)
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
        stream: &mut Conn,
        transfer: u64,
        encoded: &[u8],
        is_snapshot: bool,
    ) -> io::Result<()> {
        let config = &self.shared.config;
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
        stream
            .tcp()
            .set_read_timeout(Some(config.snapshot_ack_timeout))?;
        let mut ack = [0u8; 14];
        stream.read_exact(&mut ack)?;
        let (acked, delivered) = wire::decode_snapshot_ack(&ack)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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
