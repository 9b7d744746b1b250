//! [`TcpTransport`]: raft messages over TCP between processes, refusing strangers.
//!
//! Threads, no async runtime:
//!
//! - one **acceptor** blocked in `accept`; `stop` wakes it by connecting to itself;
//! - one **reader** per inbound connection: handshake, then frames, each checked by
//!   [`crate::wire`] before `protobuf` parses it and the message reaches the mailbox;
//! - one **writer** per peer with a bounded queue: it drains the queue into one buffered
//!   write, reconnects with capped exponential backoff, sends every `MsgSnapshot` in
//!   chunks, waiting for the receiver's ack before `report_snapshot`, and pings the
//!   receiver to replace a connection that stopped delivering (`stall_timeout`).
//!
//! Connections are one-way: a node sends on the connection it opened and receives on
//! the ones it accepted. The only bytes going back on a connection are the handshake
//! answer, snapshot acks and pongs. Every frame carries a CRC-32 of its bytes.
//!
//! Each handshake (the TLS handshake, if any, and raftnode's own) must end within
//! `connect_timeout` of the connection's start, however its bytes are spread.
//!
//! With `TcpConfig::tls` set (feature `tls`), each connection runs a TLS 1.3 handshake
//! (both sides present certificates) before the raftnode handshake, and the accepting
//! node checks that the certificate names the node id the raftnode handshake claims.
//! Everything after travels inside TLS, unchanged.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use slog::{info, o, warn, Logger};

use crate::error::{ConfigError, TransportError};
use crate::mailbox::Mailbox;
use crate::transport::Transport;

#[path = "tcp_inbound.rs"]
mod inbound;
#[path = "tcp_outbound.rs"]
mod outbound;

use crate::wire::{self, ReassemblyBudget, WireError, FRAME_HEADER_BYTES};
use inbound::accept_loop;
use outbound::WriterCtx;

/// Most messages a writer drains from its queue into one write.
const MAX_BATCH: usize = 1024;

/// Configuration of a [`TcpTransport`].
///
/// Build it with [`TcpConfig::new`] and adjust fields; [`TcpTransport::bind`] validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpConfig {
    /// Identifies the cluster: connections whose handshake carries another id are
    /// refused. Pick a random value per cluster, so that two clusters on one network
    /// never talk to each other by mistake. It is not a secret (see `docs/security.md`).
    pub cluster_id: u64,
    /// Where to accept connections from peers. Port 0 picks a free port;
    /// [`TcpTransport::local_addr`] tells which.
    pub listen: SocketAddr,
    /// The other members and their addresses. Only these ids (plus those added by
    /// membership changes) may connect. This node's own id, if present, is ignored.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Largest frame sent or accepted, length field included. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Messages queued per peer; when full, further messages to that peer are dropped
    /// and counted, never blocking the driver. Default 4096.
    pub queue_capacity: usize,
    /// Deadline of a connection's whole opening, in both directions: the TCP connect,
    /// the TLS handshake (with the `tls` feature) and the raftnode handshake together.
    /// A peer that has not finished by then, even one still trickling bytes, is
    /// dropped (counted as [`RefusalReason::BadHandshake`] or [`RefusalReason::Tls`]
    /// on the accepting side). Default 2 s.
    pub connect_timeout: Duration,
    /// First wait after a failed connect; doubled on each failure. Default 50 ms.
    pub backoff_min: Duration,
    /// Cap of the reconnect backoff. Default 500 ms, so that a peer back from a
    /// partition is reached again within about one election timeout.
    pub backoff_max: Duration,
    /// Longest an open outbound connection may go without the peer answering a ping.
    /// The writer pings every `stall_timeout / 4` (on an idle connection too); when a
    /// ping stays unanswered this long, the connection is taken as stalled (a partition,
    /// a peer that stopped reading, a path that drops packets while the kernel backs off
    /// its retransmissions) and replaced by a new one. A ping waits behind the bytes
    /// written before it, so on slow links carrying large batches keep it well above
    /// their transfer time. Tie it to the heartbeat interval: about 5 heartbeats (the
    /// default election timeout), at least 20 ms. Default 1 s.
    pub stall_timeout: Duration,
    /// Data bytes per snapshot chunk. Must fit a frame with its 33-byte header.
    /// Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Bytes all snapshot reassemblies of this node may hold at once; a larger
    /// snapshot is refused. Default 1 GiB.
    pub max_reassembly_bytes: u64,
    /// Longest a single write may block, and longest a frame may take to arrive once
    /// its first byte did; a reassembly with no new chunk for this long is dropped.
    /// Default 10 s.
    pub io_timeout: Duration,
    /// Longest a writer waits for the receiver to acknowledge a snapshot before
    /// reporting it failed. Default 60 s.
    pub snapshot_ack_timeout: Duration,
    /// Most inbound connections at once (authenticated or not). Default 256.
    pub max_inbound_connections: usize,
    /// Mutual TLS (feature `tls`): when set, every connection, in and out, runs TLS 1.3
    /// with both nodes presenting a certificate from the cluster CA that names their
    /// node id, and plaintext peers are refused. `None` (the default): plain TCP.
    /// [`Transport::start`] refuses a configuration made for another node id.
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::TlsConfig>,
}

impl TcpConfig {
    /// A configuration with the defaults documented on each field.
    pub fn new(cluster_id: u64, listen: SocketAddr) -> Self {
        TcpConfig {
            cluster_id,
            listen,
            peers: BTreeMap::new(),
            max_frame_bytes: 16 << 20,
            queue_capacity: 4096,
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(1),
            snapshot_chunk_bytes: 1 << 20,
            max_reassembly_bytes: 1 << 30,
            io_timeout: Duration::from_secs(10),
            snapshot_ack_timeout: Duration::from_secs(60),
            max_inbound_connections: 256,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Checks every field and their relations.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field out of range and its limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min_frame = 1024;
        if self.max_frame_bytes < min_frame || self.max_frame_bytes > u32::MAX as usize {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!(
                    "({}) must be within {min_frame}..={}",
                    self.max_frame_bytes,
                    u32::MAX
                ),
            ));
        }
        let chunk_limit = self.max_frame_bytes - FRAME_HEADER_BYTES - wire::CHUNK_HEADER_BYTES;
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > chunk_limit {
            return Err(ConfigError::new(
                "snapshot_chunk_bytes",
                format!(
                    "({}) must be within 1..={chunk_limit} (max_frame_bytes minus 33 bytes of headers)",
                    self.snapshot_chunk_bytes
                ),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::new("queue_capacity", "must be at least 1"));
        }
        if self.max_inbound_connections == 0 {
            return Err(ConfigError::new(
                "max_inbound_connections",
                "must be at least 1",
            ));
        }
        if self.max_reassembly_bytes == 0 {
            return Err(ConfigError::new(
                "max_reassembly_bytes",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("backoff_min", self.backoff_min),
            ("io_timeout", self.io_timeout),
            ("snapshot_ack_timeout", self.snapshot_ack_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        let min_stall = Duration::from_millis(20);
        if self.stall_timeout < min_stall {
            return Err(ConfigError::new(
                "stall_timeout",
                format!("({:?}) must be at least {min_stall:?}", self.stall_timeout),
            ));
        }
        if self.backoff_max < self.backoff_min {
            return Err(ConfigError::new(
                "backoff_max",
                format!(
                    "({:?}) must not be below backoff_min ({:?})",
                    self.backoff_max, self.backoff_min
                ),
            ));
        }
        if self.peers.contains_key(&0) {
            return Err(ConfigError::new("peers", "node id 0 is reserved by raft"));
        }
        Ok(())
    }
}

/// Why a [`TcpTransport`] refused a connection or a frame. Every refusal is logged at
/// warn level with the peer's address and the detail, counted in [`TcpStats`], and
/// closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The handshake was missing, not finished within `connect_timeout`, not ours
    /// (magic, wire format version), or failed its checksum.
    BadHandshake,
    /// The handshake carried another cluster id.
    WrongCluster,
    /// The sender's node id is not in the current peer set (or is this node's own id).
    NonMember,
    /// The handshake or a message is addressed to another node.
    Misaddressed,
    /// A message's `from` is not the node id of the connection's handshake.
    SenderMismatch,
    /// A message type that never travels between nodes (local types, `MsgPropose`).
    ForbiddenType,
    /// A frame's length field is above `max_frame_bytes`.
    Oversized,
    /// A group wire type (the RUSTSEC-2024-0437 trigger).
    Group,
    /// Bytes that do not follow the frame layout or the `eraftpb` schema.
    Malformed,
    /// A decodable message with impossible contents.
    Invalid,
    /// A frame's checksum failed: its bytes are not the ones its sender wrote.
    Checksum,
    /// A chunk that does not continue its message, a snapshot over the reassembly
    /// budget, or a reassembly that stalled past `io_timeout`.
    Reassembly,
    /// The connection ended or stalled in the middle of a frame.
    Truncated,
    /// `max_inbound_connections` were already open.
    TooManyConnections,
    /// With TLS configured: the TLS handshake failed or did not end within
    /// `connect_timeout` (no client certificate, one not from the cluster CA, plaintext
    /// or garbage instead of TLS). Never counted without the `tls` feature.
    Tls,
    /// With TLS configured: the peer's certificate does not name the node id its
    /// handshake claims (see `tls::node_server_name`). Never counted without the
    /// `tls` feature.
    Identity,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 16] = [
        RefusalReason::BadHandshake,
        RefusalReason::WrongCluster,
        RefusalReason::NonMember,
        RefusalReason::Misaddressed,
        RefusalReason::SenderMismatch,
        RefusalReason::ForbiddenType,
        RefusalReason::Oversized,
        RefusalReason::Group,
        RefusalReason::Malformed,
        RefusalReason::Invalid,
        RefusalReason::Checksum,
        RefusalReason::Reassembly,
        RefusalReason::Truncated,
        RefusalReason::TooManyConnections,
        RefusalReason::Tls,
        RefusalReason::Identity,
    ];

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::BadHandshake => "bad_handshake",
            RefusalReason::WrongCluster => "wrong_cluster",
            RefusalReason::NonMember => "non_member",
            RefusalReason::Misaddressed => "misaddressed",
            RefusalReason::SenderMismatch => "sender_mismatch",
            RefusalReason::ForbiddenType => "forbidden_type",
            RefusalReason::Oversized => "oversized",
            RefusalReason::Group => "group_wire_type",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Invalid => "invalid",
            RefusalReason::Checksum => "checksum",
            RefusalReason::Reassembly => "reassembly",
            RefusalReason::Truncated => "truncated",
            RefusalReason::TooManyConnections => "too_many_connections",
            RefusalReason::Tls => "tls",
            RefusalReason::Identity => "identity",
        }
    }

    fn of(error: &WireError) -> RefusalReason {
        match error {
            WireError::Oversized { .. } => RefusalReason::Oversized,
            WireError::Group { .. } => RefusalReason::Group,
            WireError::Checksum(_) => RefusalReason::Checksum,
            WireError::Handshake(_) | WireError::Version { .. } => RefusalReason::BadHandshake,
            WireError::WrongCluster { .. } => RefusalReason::WrongCluster,
            WireError::NonMember(_) => RefusalReason::NonMember,
            WireError::Misaddressed { .. } => RefusalReason::Misaddressed,
            WireError::SenderMismatch { .. } => RefusalReason::SenderMismatch,
            WireError::ForbiddenType(_) => RefusalReason::ForbiddenType,
            WireError::Invalid(_) => RefusalReason::Invalid,
            WireError::Reassembly(_) => RefusalReason::Reassembly,
            _ => RefusalReason::Malformed,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of a [`TcpTransport`], from [`TcpHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Refused connections and frames, by reason (reasons never seen are absent).
    pub refused: BTreeMap<RefusalReason, u64>,
    /// Messages written to a peer's socket.
    pub messages_sent: u64,
    /// Messages received, checked and queued in this node's mailbox.
    pub messages_received: u64,
    /// Messages dropped because their peer's queue was full.
    pub messages_dropped: u64,
    /// Messages lost because their peer was unknown or unreachable, or a write failed.
    pub messages_lost: u64,
    /// Received messages dropped because this node's mailbox was full.
    pub mailbox_full: u64,
    /// Connections opened to a peer after an earlier one to it was lost or never made.
    pub reconnects: u64,
    /// Failed connection attempts (connect, handshake).
    pub connect_failures: u64,
    /// Outbound connections closed because a ping went unanswered for
    /// `TcpConfig::stall_timeout` (or the peer closed them); the next message opens a
    /// new one.
    pub stalled_connections: u64,
    /// Snapshots the receiver acknowledged (reported `Finish`).
    pub snapshots_sent: u64,
    /// Snapshots reported `Failure`.
    pub snapshots_failed: u64,
    /// Snapshots reassembled, checked and queued in this node's mailbox.
    pub snapshots_received: u64,
}

impl TcpStats {
    /// How many connections or frames were refused for `reason`.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }

    /// How many connections or frames were refused, for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

#[derive(Default)]
struct Counters {
    refused: [AtomicU64; RefusalReason::ALL.len()],
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    messages_dropped: AtomicU64,
    messages_lost: AtomicU64,
    mailbox_full: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    stalled_connections: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshots_failed: AtomicU64,
    snapshots_received: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A peer's address: resolved at connect time on the writer thread, so that a host
/// name never blocks the driver on DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Socket(SocketAddr),
    Host(String),
}

impl Address {
    fn parse(context: &[u8]) -> Result<Address, &'static str> {
        let text = std::str::from_utf8(context).map_err(|_| "not UTF-8")?;
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Address::Socket(addr));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Host(text.to_string()))
            }
            _ => Err("not host:port"),
        }
    }

    fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Address::Socket(addr) => Ok(vec![*addr]),
            Address::Host(host) => Ok(host.to_socket_addrs()?.collect()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(addr) => write!(f, "{addr}"),
            Address::Host(host) => f.write_str(host),
        }
    }
}

/// A connection's bytes: plain TCP, or TLS over it. Whoever must shut a connection down
/// from another thread (`stop`, `remove_peer`) keeps a `try_clone` of its socket.
enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsStream>),
}

impl Conn {
    /// The socket under the stream: for timeouts and shutdown.
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.tcp(),
        }
    }
}

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.read(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

/// Writers call `flush` once per batch (and after each handshake or ack): TLS holds
/// the tail of what was written until then. Plain TCP does not buffer.
impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.write(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.flush(),
            #[cfg(feature = "tls")]
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

/// Time left until `deadline`; an error once it passed.
fn time_left(deadline: Instant, what: &str) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed")))
}

/// Reads exactly `buf.len()` bytes, all of them by `deadline` however the peer spreads
/// them (a per-read timeout alone lets a peer trickle one byte per timeout forever).
fn read_exact_by(conn: &mut Conn, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    use io::Read;
    let mut got = 0;
    while got < buf.len() {
        conn.tcp()
            .set_read_timeout(Some(time_left(deadline, "handshake")?))?;
        match conn.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes and flushes `bytes` by `deadline`.
fn write_all_by(conn: &mut Conn, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    use io::Write;
    conn.tcp()
        .set_write_timeout(Some(time_left(deadline, "handshake")?))?;
    conn.write_all(bytes)?;
    conn.flush()
}

/// What the transport, its threads and its handles share.
struct Shared {
    config: TcpConfig,
    /// The peer set: who may connect, and where to connect to. `None`: a member whose
    /// address is not known yet (it may connect to us; we cannot reach it).
    peers: RwLock<BTreeMap<u64, Option<Address>>>,
    /// Set by `stop`; every thread checks it before blocking again.
    shutdown: AtomicBool,
    counters: Counters,
    budget: Arc<ReassemblyBudget>,
    inbound: Mutex<Inbound>,
    logger: Logger,
}

/// The open inbound connections, so that `stop` and `remove_peer` can shut them down.
#[derive(Default)]
struct Inbound {
    next_id: u64,
    /// Connection id to (peer id once the handshake passed, a handle on the socket).
    conns: BTreeMap<u64, (Option<u64>, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn refuse(&self, reason: RefusalReason, addr: Option<SocketAddr>, detail: &dyn fmt::Display) {
        add(&self.counters.refused[reason as usize], 1);
        warn!(self.logger, "refused peer traffic; closing the connection";
            "reason" => reason.as_str(), "addr" => ?addr, "detail" => %detail);
    }

    fn is_member(&self, id: u64) -> bool {
        self.peers.read().contains_key(&id)
    }
}

/// A cheap, cloneable view of a [`TcpTransport`] that outlives handing the transport to
/// a [`crate::Node`]: its address and counters.
#[derive(Clone)]
pub struct TcpHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl fmt::Debug for TcpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TcpHandle {
    /// The address the transport listens on (with the real port when `listen` had 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            refused: RefusalReason::ALL
                .iter()
                .map(|&r| (r, load(&c.refused[r as usize])))
                .filter(|&(_, n)| n > 0)
                .collect(),
            messages_sent: load(&c.messages_sent),
            messages_received: load(&c.messages_received),
            messages_dropped: load(&c.messages_dropped),
            messages_lost: load(&c.messages_lost),
            mailbox_full: load(&c.mailbox_full),
            reconnects: load(&c.reconnects),
            connect_failures: load(&c.connect_failures),
            stalled_connections: load(&c.stalled_connections),
            snapshots_sent: load(&c.snapshots_sent),
            snapshots_failed: load(&c.snapshots_failed),
            snapshots_received: load(&c.snapshots_received),
        }
    }
}

/// A [`Transport`] over TCP for nodes in separate processes or machines.
///
/// [`TcpTransport::bind`] binds the listening socket at once (so port 0 can be used and
/// read back with [`TcpTransport::local_addr`]); [`Transport::start`] starts accepting.
/// See `docs/implementing-transport.md` for how to use it and `docs/security.md` for
/// what it does and does not protect against.
///
/// # Correctness
///
/// - `send` never blocks: each peer has a queue of `queue_capacity` messages; a full
///   queue drops and counts. A message to a peer with no known address, or lost to a
///   failed connect or write, is reported with [`Mailbox::report_unreachable`].
/// - Every `MsgSnapshot` is reported once with [`Mailbox::report_snapshot`]: `Finish`
///   when the receiver acknowledged that it queued it, `Failure` otherwise (raft-rs note 13).
/// - Inbound: only connections whose handshake carries this cluster's id, this node's
///   id, and a member's id are served; each message must be addressed to this node,
///   come from the handshake's node, be of a type that travels between nodes, and pass
///   the wire scan and shape checks. Anything else is logged, counted in
///   [`TcpStats::refused`], and the connection closed; the node keeps serving.
/// - With TLS (feature `tls`, `TcpConfig::tls`): no byte of the raftnode handshake is
///   read before a TLS handshake in which the peer proved it holds a certificate from
///   the cluster CA (else [`RefusalReason::Tls`]), and a handshake claiming a node id
///   the certificate does not name is refused ([`RefusalReason::Identity`]). Outbound,
///   a peer whose certificate does not name the node dialed is never sent anything.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use raftnode::{TcpConfig, TcpTransport};
///
/// let mut config = TcpConfig::new(0x5eed, "127.0.0.1:0".parse()?);
/// config.peers = BTreeMap::from([(2, "127.0.0.1:7002".parse()?), (3, "127.0.0.1:7003".parse()?)]);
/// let transport = TcpTransport::bind(config, &raftnode::discard_logger())?;
/// let handle = transport.handle();
/// assert_ne!(handle.local_addr().port(), 0);
/// // Node::start(config, store, state_machine, transport, &logger)?;
/// assert_eq!(handle.stats().refused_total(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Taken by `start`, which hands it to the acceptor thread.
    listener: Option<TcpListener>,
    acceptor: Option<JoinHandle<()>>,
    mailbox: Option<Mailbox>,
    writers: BTreeMap<u64, Writer>,
    /// Threads of writers retired by `remove_peer`, joined by `stop`.
    retired: Vec<JoinHandle<()>>,
    stopped: bool,
}

/// The driver's side of one peer's writer thread.
struct Writer {
    tx: Sender<Message>,
    /// Tells the thread to stop sending even though messages are queued.
    retired: Arc<AtomicBool>,
    /// The live connection, so that `stop` can shut it down under a blocked write.
    live: Arc<Mutex<Option<TcpStream>>>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn retire(self) -> JoinHandle<()> {
        self.retired.store(true, Ordering::Release);
        if let Some(stream) = self.live.lock().take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        drop(self.tx);
        self.thread
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local_addr", &self.local_addr)
            .field("started", &self.mailbox.is_some())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Validates `config` and binds the listening socket.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for an invalid config, [`TransportError::Io`] when the
    /// address cannot be bound.
    pub fn bind(config: TcpConfig, logger: &Logger) -> Result<TcpTransport, TransportError> {
        config
            .validate()
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let listener = TcpListener::bind(config.listen).map_err(|source| TransportError::Io {
            op: format!("bind {}", config.listen),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| TransportError::Io {
            op: "local_addr".into(),
            source,
        })?;
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| (id, Some(Address::Socket(addr))))
            .collect();
        let logger = logger.new(o!("transport" => "tcp", "listen" => local_addr.to_string()));
        let shared = Arc::new(Shared {
            budget: ReassemblyBudget::new(config.max_reassembly_bytes),
            config,
            peers: RwLock::new(peers),
            shutdown: AtomicBool::new(false),
            counters: Counters::default(),
            inbound: Mutex::new(Inbound::default()),
            logger,
        });
        Ok(TcpTransport {
            shared,
            local_addr,
            listener: Some(listener),
            acceptor: None,
            mailbox: None,
            writers: BTreeMap::new(),
            retired: Vec::new(),
            stopped: false,
        })
    }

    /// The address the transport listens on (with the real port when `listen` had 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle on the address and counters, usable after the transport moved into a
    /// node.
    pub fn handle(&self) -> TcpHandle {
        TcpHandle {
            shared: self.shared.clone(),
            local_addr: self.local_addr,
        }
    }

    /// Sets (or replaces) the address of peer `id` and makes it a member; the next
    /// connection to it uses the new address.
    pub fn set_peer(&mut self, id: u64, addr: SocketAddr) {
        self.shared
            .peers
            .write()
            .insert(id, Some(Address::Socket(addr)));
    }

    fn local_id(&self) -> Option<u64> {
        self.mailbox.as_ref().map(Mailbox::id)
    }

    fn writer_for(&mut self, peer: u64, mailbox: &Mailbox) -> Option<&Writer> {
        if !self.writers.contains_key(&peer) {
            if !matches!(self.shared.peers.read().get(&peer), Some(Some(_))) {
                return None;
            }
            let (tx, rx) = bounded(self.shared.config.queue_capacity);
            let retired = Arc::new(AtomicBool::new(false));
            let live = Arc::new(Mutex::new(None));
            let ctx = WriterCtx {
                peer,
                local: mailbox.id(),
                shared: self.shared.clone(),
                mailbox: mailbox.clone(),
                rx,
                retired: retired.clone(),
                live: live.clone(),
                logger: self.shared.logger.new(o!("peer" => peer)),
            };
            let thread = thread::Builder::new()
                .name(format!("raftnode-tcp-out-{peer}"))
                .spawn(move || ctx.run());
            let thread = match thread {
                Ok(t) => t,
                Err(e) => {
                    warn!(self.shared.logger, "cannot spawn a writer thread"; "peer" => peer, "error" => %e);
                    return None;
                }
            };
            self.writers.insert(
                peer,
                Writer {
                    tx,
                    retired,
                    live,
                    thread,
                },
            );
        }
        self.writers.get(&peer)
    }
}

impl Transport for TcpTransport {
    /// Starts the acceptor thread; writer threads start with the first message to each
    /// peer.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] when started twice, or (feature `tls`) when
    /// `TcpConfig::tls` was made for another node id than the mailbox's;
    /// [`TransportError::Io`] when the acceptor thread cannot be spawned.
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        let id = mailbox.id();
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.config.tls {
            if tls.node_id() != id {
                return Err(TransportError::Config(format!(
                    "tls: the certificate is for node {} but this node is {id}",
                    tls.node_id()
                )));
            }
        }
        let listener = self.listener.take().ok_or_else(|| {
            TransportError::Config("TcpTransport started twice (or after stop)".into())
        })?;
        // Our own id is not a peer: nobody may connect claiming it.
        self.shared.peers.write().remove(&id);
        let shared = self.shared.clone();
        let accept_mailbox = mailbox.clone();
        let acceptor = thread::Builder::new()
            .name(format!("raftnode-tcp-accept-{id}"))
            .spawn(move || accept_loop(listener, shared, accept_mailbox))
            .map_err(|source| TransportError::Io {
                op: "spawn the acceptor thread".into(),
                source,
            })?;
        self.acceptor = Some(acceptor);
        self.mailbox = Some(mailbox);
        info!(self.shared.logger, "tcp transport started"; "id" => id,
            "peers" => ?self.shared.peers.read().keys().collect::<Vec<_>>());
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        let Some(mailbox) = self.mailbox.clone() else {
            debug_assert!(false, "TcpTransport::send before start");
            return;
        };
        let shared = self.shared.clone();
        let counters = &shared.counters;
        // Peers already reported unreachable in this call: once is enough.
        let mut reported: Vec<u64> = Vec::new();
        for m in messages {
            let peer = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let Some(writer) = self.writer_for(peer, &mailbox) else {
                add(&counters.messages_lost, 1);
                if !reported.contains(&peer) {
                    reported.push(peer);
                    mailbox.report_unreachable(peer);
                }
                if is_snapshot {
                    add(&counters.snapshots_failed, 1);
                    mailbox.report_snapshot(peer, SnapshotStatus::Failure);
                }
                continue;
            };
            match writer.tx.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    add(&counters.messages_dropped, 1);
                    if is_snapshot {
                        add(&counters.snapshots_failed, 1);
                        mailbox.report_snapshot(peer, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    /// `context` is the new member's address as UTF-8 `host:port` (an IP literal such as
    /// `10.0.0.4:7000` or `[::1]:7000`, or a host name resolved when connecting). An
    /// empty context keeps the address already known; an unparsable one is logged and
    /// the peer is a member without an address (it may connect to us; we cannot reach
    /// it until [`TcpTransport::set_peer`] or a later change gives one).
    fn add_peer(&mut self, peer: u64, context: &[u8]) {
        if Some(peer) == self.local_id() {
            return;
        }
        let mut peers = self.shared.peers.write();
        let known = peers.get(&peer).cloned().flatten();
        let address = match Address::parse(context) {
            Ok(address) => Some(address),
            Err(_) if context.is_empty() => known.clone(),
            Err(problem) => {
                warn!(self.shared.logger, "membership change carries no usable address";
                    "peer" => peer, "problem" => problem,
                    "context" => %String::from_utf8_lossy(context));
                known.clone()
            }
        };
        info!(self.shared.logger, "peer added"; "peer" => peer,
            "address" => address.as_ref().map(|a| a.to_string()));
        let changed = known.is_some() && address != known;
        peers.insert(peer, address);
        drop(peers);
        if changed {
            // The old writer may be connected to the old address.
            if let Some(writer) = self.writers.remove(&peer) {
                self.retired.push(writer.retire());
            }
        }
    }

    fn remove_peer(&mut self, peer: u64) {
        self.shared.peers.write().remove(&peer);
        if let Some(writer) = self.writers.remove(&peer) {
            self.retired.push(writer.retire());
        }
        for (from, stream) in self.shared.inbound.lock().conns.values() {
            if *from == Some(peer) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        self.retired.retain(|t| !t.is_finished());
        info!(self.shared.logger, "peer removed"; "peer" => peer);
    }

    /// Stops accepting, shuts every connection down, and joins the threads, waiting at
    /// most `connect_timeout` plus one second in all; a thread still running then (a
    /// connect or DNS lookup in progress) is left to finish on its own.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.shutdown.store(true, Ordering::Release);
        self.listener = None;
        let deadline = Instant::now() + self.shared.config.connect_timeout + Duration::from_secs(1);
        let mut threads = std::mem::take(&mut self.retired);
        if let Some(acceptor) = self.acceptor.take() {
            // `accept` blocks: a connection to ourselves wakes it to see the flag.
            let _ =
                TcpStream::connect_timeout(&wake_address(self.local_addr), Duration::from_secs(1));
            threads.push(acceptor);
        }
        for (_, writer) in std::mem::take(&mut self.writers) {
            threads.push(writer.retire());
        }
        {
            let mut inbound = self.shared.inbound.lock();
            for (_, stream) in inbound.conns.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            threads.append(&mut inbound.threads);
        }
        let mut lingering = 0;
        for thread in threads {
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                lingering += 1;
            }
        }
        if lingering > 0 {
            warn!(self.shared.logger, "tcp transport stopped with threads still running";
                "threads" => lingering);
        } else {
            info!(self.shared.logger, "tcp transport stopped");
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        if self.mailbox.is_some() {
            self.stop();
        }
    }
}

/// The loopback address with `addr`'s port when `addr` is a wildcard.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::PeerInput;
    use crossbeam_channel::Receiver;
    use raft::eraftpb::{ConfState, Snapshot};

    fn started(config: TcpConfig, id: u64) -> (TcpTransport, Receiver<PeerInput>) {
        let mut transport = TcpTransport::bind(config, &crate::discard_logger()).expect("bind");
        let (tx, rx) = bounded(4096);
        transport
            .start(Mailbox::new(id, tx, Arc::default()))
            .expect("start");
        (transport, rx)
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    fn next(rx: &Receiver<PeerInput>) -> PeerInput {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("an input within the deadline")
    }

    fn snapshot(from: u64, to: u64, bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = from;
        m.to = to;
        m.term = 2;
        let mut s = Snapshot::default();
        s.data = (0..bytes)
            .map(|i| (i * 7) as u8)
            .collect::<Vec<u8>>()
            .into();
        s.mut_metadata().index = 5;
        s.mut_metadata().term = 2;
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        s.mut_metadata().set_conf_state(cs);
        m.set_snapshot(s);
        m
    }

    /// Proves a snapshot larger than a chunk arrives whole, and the sender reports
    /// `Finish` only after the receiver's ack (raft-rs note 13).
    #[test]
    fn chunked_snapshot_is_delivered_and_reported_finish() {
        let (mut receiver, rx2) = started(TcpConfig::new(7, loopback()), 2);
        let mut config = TcpConfig::new(7, loopback());
        config.snapshot_chunk_bytes = 64 << 10;
        config.peers.insert(2, receiver.local_addr());
        let (mut sender, rx1) = started(config, 1);
        receiver.set_peer(1, sender.local_addr());

        let m = snapshot(1, 2, 300 << 10);
        sender.send(vec![m.clone()]);
        assert!(matches!(next(&rx2), PeerInput::Message(got) if got == m));
        assert!(matches!(
            next(&rx1),
            PeerInput::Snapshot(2, SnapshotStatus::Finish)
        ));
        let stats = sender.handle().stats();
        assert_eq!((stats.snapshots_sent, stats.snapshots_failed), (1, 0));
        assert_eq!(receiver.handle().stats().snapshots_received, 1);
        sender.stop();
        receiver.stop();
    }

    /// Proves a batch larger than one frame is split across frames of at most
    /// `max_frame_bytes` and arrives complete and in order.
    /// `count` heartbeat responses from 1 to 2, numbered by `commit`, each with a
    /// `context_bytes`-byte context.
    fn heartbeat_responses(count: u64, context_bytes: usize) -> Vec<Message> {
        (0..count)
            .map(|i| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgHeartbeatResponse);
                m.from = 1;
                m.to = 2;
                m.term = 1;
                m.commit = i;
                m.context = vec![b'x'; context_bytes].into();
                m
            })
            .collect()
    }

    #[test]
    fn batches_split_into_frames_and_keep_order() {
        let mut small = TcpConfig::new(7, loopback());
        small.max_frame_bytes = 1024;
        small.snapshot_chunk_bytes = 512;
        let (mut receiver, rx2) = started(small.clone(), 2);
        small.peers.insert(2, receiver.local_addr());
        let (mut sender, _rx1) = started(small, 1);
        receiver.set_peer(1, sender.local_addr());
        let batch = heartbeat_responses(200, 50);
        sender.send(batch);
        for i in 0..200u64 {
            assert!(matches!(next(&rx2), PeerInput::Message(m) if m.commit == i));
        }
        // The writer counts a frame's messages after its write returns, which can be
        // after the receiver already took them: poll, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sender.handle().stats().messages_sent < 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sender.handle().stats().messages_sent, 200);
        assert_eq!(receiver.handle().stats().refused_total(), 0);
        sender.stop();
        receiver.stop();
    }

    /// Proves a peer that refuses connections, and a peer with no address, are reported
    /// unreachable, and a snapshot to either is reported `Failure`; `stop` returns.
    #[test]
    fn unreachable_peers_are_reported() {
        let closed = TcpListener::bind(loopback()).expect("bind");
        let dead = closed.local_addr().expect("addr");
        drop(closed);
        let mut config = TcpConfig::new(7, loopback());
        config.peers.insert(2, dead);
        let (mut transport, rx) = started(config, 1);

        transport.send(vec![snapshot(1, 2, 10)]);
        let mut got = [next(&rx), next(&rx)];
        got.sort_by_key(|input| matches!(input, PeerInput::Snapshot(..)));
        assert!(matches!(got[0], PeerInput::Unreachable(2)));
        assert!(matches!(
            got[1],
            PeerInput::Snapshot(2, SnapshotStatus::Failure)
        ));

        transport.send(vec![snapshot(1, 5, 10)]);
        assert!(matches!(next(&rx), PeerInput::Unreachable(5)));
        assert!(matches!(
            next(&rx),
            PeerInput::Snapshot(5, SnapshotStatus::Failure)
        ));
        let started = Instant::now();
        transport.stop();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(transport.handle().stats().connect_failures >= 1);
    }

    /// TLS configs for nodes 1 and 2 from one fresh CA.
    #[cfg(feature = "tls")]
    fn tls_pair() -> (super::super::tls::TlsConfig, super::super::tls::TlsConfig) {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let node = |id: u64| {
            let mut params = CertificateParams::new(vec![super::super::tls::node_server_name(id)])
                .expect("params");
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("cert");
            super::super::tls::TlsConfig::from_pem(
                id,
                ca.pem().as_bytes(),
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .expect("TLS config")
        };
        (node(1), node(2))
    }

    /// Proves the chunked snapshot path (chunks flushed before the wait, the ack
    /// flushed back) and split batches work over TLS, with nothing refused.
    #[cfg(feature = "tls")]
    #[test]
    fn chunked_snapshot_and_batches_over_tls() {
        let (tls1, tls2) = tls_pair();
        let mut config2 = TcpConfig::new(7, loopback());
        config2.tls = Some(tls2);
        let (mut receiver, rx2) = started(config2, 2);
        let mut config1 = TcpConfig::new(7, loopback());
        config1.tls = Some(tls1);
        config1.snapshot_chunk_bytes = 64 << 10;
        config1.peers.insert(2, receiver.local_addr());
        let (mut sender, rx1) = started(config1, 1);
        receiver.set_peer(1, sender.local_addr());

        let m = snapshot(1, 2, 300 << 10);
        sender.send(vec![m.clone()]);
        assert!(matches!(next(&rx2), PeerInput::Message(got) if got == m));
        assert!(matches!(
            next(&rx1),
            PeerInput::Snapshot(2, SnapshotStatus::Finish)
        ));
        let batch = heartbeat_responses(500, 100);
        sender.send(batch);
        for i in 0..500u64 {
            assert!(matches!(next(&rx2), PeerInput::Message(m) if m.commit == i));
        }
        assert_eq!(receiver.handle().stats().refused_total(), 0);
        assert_eq!(sender.handle().stats().snapshots_sent, 1);
        sender.stop();
        receiver.stop();
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut c = TcpConfig::new(1, "127.0.0.1:0".parse().expect("addr"));
        assert!(c.validate().is_ok());
        c.snapshot_chunk_bytes = c.max_frame_bytes;
        assert_eq!(c.validate().unwrap_err().field, "snapshot_chunk_bytes");
        c.snapshot_chunk_bytes = 1024;
        c.backoff_max = Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().field, "backoff_max");
        c.backoff_max = Duration::from_secs(1);
        c.stall_timeout = Duration::from_millis(19);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "stall_timeout");
        assert!(e.to_string().contains("19ms"), "{e}");
    }

    /// Proves a connection whose receiver answered the handshake and then went silent
    /// (open, reading nothing, answering no ping: a stalled path) is replaced once a
    /// ping stayed unanswered for `stall_timeout`, and counted.
    #[test]
    fn stalled_connection_is_replaced() {
        let silent = TcpListener::bind(loopback()).expect("bind");
        let mut config = TcpConfig::new(7, loopback());
        config.peers.insert(2, silent.local_addr().expect("addr"));
        config.stall_timeout = Duration::from_millis(200);
        let stall_timeout = config.stall_timeout;
        let (accepted_tx, accepted) = bounded(16);
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in silent.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut hello = [0u8; wire::HANDSHAKE_BYTES];
                if std::io::Read::read_exact(&mut stream, &mut hello).is_err() {
                    continue;
                }
                let answer = wire::Handshake {
                    cluster_id: 7,
                    from: 2,
                    to: 1,
                };
                let _ = std::io::Write::write_all(&mut stream, &answer.encode());
                held.push(stream); // open, never read again
                if accepted_tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
        let (mut transport, _rx) = started(config, 1);
        transport.send(heartbeat_responses(1, 0));
        let first = accepted
            .recv_timeout(Duration::from_secs(30))
            .expect("first connection");
        // The writer reconnects on its next message: keep some coming.
        let deadline = Instant::now() + Duration::from_secs(30);
        let second = loop {
            assert!(
                Instant::now() < deadline,
                "the stalled connection was never replaced"
            );
            transport.send(heartbeat_responses(1, 0));
            if let Ok(at) = accepted.recv_timeout(Duration::from_millis(20)) {
                break at;
            }
        };
        let replaced = second - first;
        assert!(replaced >= stall_timeout, "replaced after {replaced:?}");
        assert!(
            replaced < stall_timeout + Duration::from_secs(2),
            "replaced after {replaced:?}"
        );
        // The listener saw the new connection before the writer read its answer.
        let handle = transport.handle();
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.stats().reconnects == 0 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            thread::sleep(Duration::from_millis(5)); // poll interval, bounded by the deadline
        }
        let stats = handle.stats();
        assert!(stats.stalled_connections >= 1, "{stats:?}");
        transport.stop();
    }

    /// Proves pings keep a healthy connection: over 8 stall timeouts of traffic with
    /// pauses longer than the ping interval, no connection is replaced.
    #[test]
    fn healthy_connection_is_kept() {
        let mut config = TcpConfig::new(7, loopback());
        config.stall_timeout = Duration::from_millis(200);
        let (mut receiver, rx2) = started(config.clone(), 2);
        config.peers.insert(2, receiver.local_addr());
        let (mut sender, _rx1) = started(config.clone(), 1);
        receiver.set_peer(1, sender.local_addr());
        let until = Instant::now() + 8 * config.stall_timeout;
        let mut sent = 0;
        while Instant::now() < until {
            sender.send(heartbeat_responses(1, 0));
            sent += 1;
            assert!(matches!(next(&rx2), PeerInput::Message(_)));
            // An idle stretch of two ping intervals: only pings cross meanwhile.
            let _ = rx2.recv_timeout(config.stall_timeout / 2);
        }
        let stats = sender.handle().stats();
        assert_eq!(stats.stalled_connections, 0, "{stats:?}");
        assert_eq!(stats.reconnects, 0, "{stats:?}");
        assert_eq!(stats.messages_sent, sent, "{stats:?}");
        sender.stop();
        receiver.stop();
    }

    #[test]
    fn addresses_parse_from_context() {
        assert_eq!(
            Address::parse(b"127.0.0.1:7000"),
            Ok(Address::Socket("127.0.0.1:7000".parse().expect("addr")))
        );
        assert_eq!(
            Address::parse(b"[::1]:7000"),
            Ok(Address::Socket("[::1]:7000".parse().expect("addr")))
        );
        assert_eq!(
            Address::parse(b"node-4.internal:7000"),
            Ok(Address::Host("node-4.internal:7000".into()))
        );
        assert!(Address::parse(b"node-4").is_err());
        assert!(Address::parse(b":7000").is_err());
        assert!(Address::parse(&[0xff, 0xfe]).is_err());
    }
}
