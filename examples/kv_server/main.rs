//! A replicated key-value service: one process per node, raft over [`TcpTransport`],
//! the log in an [`EngineLogStore`] (real fsync), the data in a `RedbKv` (redb, `examples/common/redb_kv.rs`), and an HTTP
//! API on [axum] and [hyper] over a small [tokio] runtime, with a cluster status page.
//!
//! ```sh
//! cargo run --release --example kv_server -- \
//!   --id 1 --cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!   --http 127.0.0.1:8001 --peers-http 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 \
//!   --data-dir /tmp/kv1
//! ```
//!
//! `examples/kv_cluster.sh` starts three of them on loopback; `docs/kv-example.md` walks
//! through the API with curl and shows the status page.
//!
//! # Flags
//!
//! | flag | meaning |
//! |---|---|
//! | `--id N` | this node's id (non-zero, never reused) |
//! | `--cluster ID=HOST:PORT,...` | raft addresses of the members, this node's included (it listens there) |
//! | `--http HOST:PORT` | where the HTTP API listens |
//! | `--peers-http ID=HOST:PORT,...` | the members' HTTP addresses, for redirects to the leader and the status page |
//! | `--data-dir DIR` | `DIR/raft` holds the raft log (raft-engine), `DIR/kv` the key-value data |
//! | `--join` | start empty and wait to be added by the leader (`POST /members`) |
//! | `--cluster-id N` | cluster id checked in every raft connection's handshake (default 1) |
//! | `--tick-ms N` | raft tick length (default 100; elections after 10-20 ticks) |
//! | `--request-timeout-ms N` | how long a write or read waits for raft (default 5000) |
//! | `--max-connections N` | HTTP connections served at once; more get `503` (default 1024) |
//! | `--verbose` | log raft events to stderr |
//! | `--tls-ca FILE --tls-cert FILE --tls-key FILE` | mutual TLS between nodes (build with `--features tls`): the cluster CA, this node's certificate (DNS name `node-<id>.raftnode`) and key, PEM; all three or none |
//!
//! On first start without `--join` the node bootstraps the group with every id of
//! `--cluster` as a voter; later starts on the same `--data-dir` resume from it.
//!
//! # HTTP API
//!
//! | request | answer |
//! |---|---|
//! | `POST /sessions` | `201`, `{"session": <id>}` and `Raft-Session: <id>`: a client session for `Idempotency-Key` |
//! | `PUT /kv/{key}`, body = value `[Idempotency-Key: <session>:<seq>]` | `204` once committed and applied on the leader, with `Raft-Write-Token` |
//! | `GET /kv/{key}[?consistency=linearizable\|lease\|stale]` | `200` with the value, `404` if absent |
//! | `GET /kv/{key}?after=<index>-<term>` | the same, on this node once it applied the write of that token |
//! | `DELETE /kv/{key}` `[Idempotency-Key: <session>:<seq>]` | `204` if it existed, `404` if not (committed either way), with `Raft-Write-Token` |
//! | `POST /members`, body `id=4&addr=127.0.0.1:7004&role=learner\|voter[&http=127.0.0.1:8004]` | `200` with the new voters/learners |
//! | `DELETE /members/{id}` | `200` with the new voters/learners |
//! | `POST /leader`, body `to=2` | `200` once node 2 leads |
//! | `GET /status` | `200`, JSON: id, role, term, leader, leader_http, commit, applied, voters, learners, progress (leader only), findings (`Node::diagnose`), ... |
//! | `GET /cluster` | `200`, JSON: every known member's `/status` (or why it could not be had), fetched by this node |
//! | `GET /` | `200`, the cluster status page (HTML; it polls `/cluster` once a second) |
//!
//! Keys are the rest of the path after `/kv/`, percent-decoded, at most 4 KiB; values
//! at most 512 KiB (`413` beyond, from `Content-Length` alone when the client sends one).
//! The form bodies of `POST /members` and `POST /leader` are
//! `application/x-www-form-urlencoded` (what `curl -d` sends; the `Content-Type` is not
//! checked); `role=voter` adds the node as a learner, waits until it has caught up, then
//! promotes it.
//!
//! **Followers redirect.** Writes, lease reads and admin requests sent to a follower get
//! `307 Temporary Redirect` with `Location: http://<leader's --peers-http address><same
//! path>` (`curl -L` follows it and re-sends the body). Linearizable and stale reads are
//! served by any node: a follower asks the leader for the read index (ReadIndex), then
//! answers from its own state. With no leader known, or the leader's HTTP address not
//! known (missing from `--peers-http`; `http=` in `POST /members` teaches it to the
//! leader only), the answer is `503`.
//!
//! **Write tokens (read-your-writes).** Every answer to a `PUT` or `DELETE` that was
//! applied (`204`, and the `404` of a `DELETE` of an absent key) carries
//! `Raft-Write-Token: <index>-<term>`, the log entry the write was applied at
//! ([`raftnode::WriteToken`]). `GET /kv/{key}?after=<index>-<term>` on any node, followers
//! and learners included, is served there without a redirect
//! ([`raftnode::ReadConsistency::AtLeast`]): once that node has applied the token's index,
//! with no message to anyone; it sees the write and every one before it, not
//! necessarily newer writes by others. It waits at most `--request-timeout-ms`, then
//! answers `503` with `Retry-After`. A token that is not two decimal numbers joined by
//! `-` is a `400`, as is `after=` together with `consistency=`. The request header is
//! not read: pass the token in the query.
//!
//! **Retries that apply once (`Idempotency-Key`).** `POST /sessions` opens a client
//! session ([`raftnode::Sessions`]: the id is the log index of its registration). A `PUT`
//! or `DELETE` with `Idempotency-Key: <session>:<seq>` (a sequence number from 1, one
//! higher for each new write of that session, one write at a time) is applied at most
//! once: after a `504`, or a lost connection, send the same request with the same key
//! again, to any node, until it answers; a retry of a write already applied gets the
//! first application's status and `Idempotent-Replayed: true`, and is not applied again.
//! `410 Gone`: the session expired (10,000 sessions at most, the least recently used
//! go first; or idle for 1,000,000 log entries): whether an earlier attempt was applied
//! is unknown, open a new session. `409`: a sequence number below the session's last
//! (that write's answer is no longer kept). The session table is replicated, in
//! snapshots, and in the same redb transaction as the data. Without the header a write
//! is applied as sent, each time.
//!
//! **Errors.** The body of every error is one line of text saying what happened, but
//! for the `400` and `431` hyper itself sends (bytes that are not HTTP, a head over
//! 16 KiB), which have none. A connection that sends no complete request head for 30 s,
//! an idle keep-alive one included, is closed.
//!
//! | status | meaning |
//! |---|---|
//! | `400` | malformed request or bad parameter |
//! | `404` | unknown path or key |
//! | `405` | wrong method |
//! | `409` | membership change refused by raft (another one pending); an `Idempotency-Key` sequence number below its session's last |
//! | `410` | the `Idempotency-Key` session expired: outcome of earlier attempts unknown, open a new session |
//! | `413` | body too large |
//! | `431` | request head too large (hyper's limit) |
//! | `503` + `Retry-After: 1` | **not applied, safe to retry**: no leader known, the leader's HTTP address unknown, the node's queue full, the proposal dropped by raft, a read not confirmed in time (or, with `after=`, this node not yet at the token), too many connections, the node stopped. Every `503` carries `Retry-After` |
//! | `504` | **outcome unknown**: the write or membership change was handed to raft and then the wait ended (timeout, or leadership lost after the entry was appended). It may or may not have been applied; retry with the same `Idempotency-Key` (applied at most once), or read the key before retrying a write sent without one. No `Retry-After` |
//!
//! **When the raft node stops** (its disk fails or fills, its state machine fails), the
//! process prints `kv_server: raft node stopped: <reason>` and exits with status 1 at
//! once; a restart on a healthy disk recovers every acknowledged write.
//!
//! # Threads
//!
//! The raft node runs on its own driver thread, as always. HTTP runs on a tokio runtime
//! with two worker threads: a write awaits [`raftnode::ProposalHandle::applied`], a
//! `Future` of the response and its [`raftnode::WriteToken`]; reads, status and
//! membership changes call `Node`'s blocking methods on tokio's blocking pool (at most
//! [`MAX_BLOCKING_THREADS`] threads). One more thread waits for the node to stop.

mod api;
mod cluster;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::RwLock;
use raftnode::{Config, EngineLogStore, Node, Sessions, StopReason, TcpConfig, TcpTransport};
use tokio::net::TcpListener;

/// The state machine and its commands, for every module here: the one line to change
/// to put the data in another store with the same API.
#[path = "../common/redb_kv.rs"]
mod redb_kv;
pub(crate) use redb_kv::{encode_delete, encode_put, KvResponse, RedbKv};

/// Threads of the runtime's blocking pool, where reads, status and membership changes
/// wait on the raft node. Each HTTP/1.1 connection has at most one request in
/// flight, so this is also how many such requests wait at once; more queue for a thread.
const MAX_BLOCKING_THREADS: usize = 64;
/// A client must send a request's head within this long, or its connection is closed;
/// hyper counts an idle keep-alive connection's wait for its next request too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head hyper buffers; larger ones get `431`.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Command line; the flags are documented in the module docs above.
#[derive(Parser, Debug)]
#[command(
    name = "kv_server",
    about = "A replicated key-value service on raftnode"
)]
struct Args {
    /// This node's id (non-zero, never reused).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Raft addresses of the members, this node's included: ID=IP:PORT,...
    #[arg(long, value_parser = parse_raft_addrs)]
    cluster: BTreeMap<u64, SocketAddr>,
    /// Where the HTTP API listens: IP:PORT.
    #[arg(long)]
    http: SocketAddr,
    /// The members' HTTP addresses, for redirects and the status page: ID=HOST:PORT,...
    #[arg(long, value_parser = parse_http_addrs)]
    peers_http: Option<BTreeMap<u64, String>>,
    /// `DIR/raft` holds the raft log, `DIR/kv` the key-value data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Start empty and wait to be added by the leader (`POST /members`).
    #[arg(long)]
    join: bool,
    /// Cluster id checked in every raft connection's handshake.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Raft tick length in milliseconds (elections after 10-20 ticks).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,
    /// How long a write or read waits for raft, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// HTTP connections served at once; more get `503`.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Log raft events to stderr.
    #[arg(long)]
    verbose: bool,
    /// The cluster CA (PEM), for mutual TLS between nodes (needs the `tls` feature).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), DNS name `node-<id>.raftnode`.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

/// Parses `1=a,2=b` into ids and addresses; ids are non-zero.
fn parse_id_list(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
        if id == 0 {
            return Err("node id 0 is reserved".into());
        }
        out.insert(id, addr.to_string());
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

fn parse_raft_addrs(text: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    parse_id_list(text)?
        .into_iter()
        .map(|(id, addr)| {
            let parsed = addr
                .parse::<SocketAddr>()
                .map_err(|e| format!("{addr:?} is not an ip:port ({e})"))?;
            Ok((id, parsed))
        })
        .collect()
}

fn parse_http_addrs(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let list = parse_id_list(text)?;
    for addr in list.values() {
        if addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
    }
    Ok(list)
}

/// The PEM files of mutual TLS between nodes.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Args {
    /// Checks what clap cannot, and returns the TLS files if given.
    fn check(&self) -> Result<Option<TlsFiles>, String> {
        if !self.cluster.contains_key(&self.id) {
            return Err(format!(
                "--cluster must include this node ({}): it listens at its own address",
                self.id
            ));
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key)
        else {
            return Ok(None);
        };
        if !cfg!(feature = "tls") {
            return Err("--tls-* need kv_server built with the `tls` feature \
                (cargo run --features tls --example kv_server)"
                .into());
        }
        Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }))
    }
}

/// What every request handler shares.
pub(crate) struct Server {
    pub(crate) node: Node<Sessions<RedbKv>>,
    /// HTTP addresses of the members, for redirects and `/cluster`: from `--peers-http`
    /// (this node's `--http` included), plus `http=` of `POST /members` handled here.
    pub(crate) peers_http: RwLock<BTreeMap<u64, String>>,
    /// Open HTTP connections; the accept loop counts them against `max_connections`
    /// and each connection's task gives its slot back when it ends.
    pub(crate) connections: AtomicUsize,
    max_connections: usize,
    /// How long a write or read waits for raft before answering `503` or `504`.
    pub(crate) request_timeout: Duration,
    /// `GET /metrics`: this node's `raftnode::export::NodeCollector`.
    pub(crate) metrics: raftnode::export::prometheus::Registry,
}

fn main() {
    let args = Args::parse();
    let tls = match args.check() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("kv_server: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args, tls) {
        eprintln!("kv_server: {e}");
        std::process::exit(1);
    }
}

fn logger(verbose: bool) -> slog::Logger {
    if !verbose {
        return raftnode::discard_logger();
    }
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

fn run(args: Args, tls: Option<TlsFiles>) -> Result<(), Box<dyn std::error::Error>> {
    let logger = logger(args.verbose);
    let listen = args.cluster[&args.id];
    let mut tcp = TcpConfig::new(args.cluster_id, listen);
    tcp.peers = args
        .cluster
        .iter()
        .filter(|(id, _)| **id != args.id)
        .map(|(id, addr)| (*id, *addr))
        .collect();
    #[cfg(feature = "tls")]
    if let Some(files) = &tls {
        let tls = raftnode::TlsConfig::from_pem_files(args.id, &files.ca, &files.cert, &files.key)
            .map_err(|e| format!("TLS: {e}"))?;
        tcp.tls = Some(tls);
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    let transport =
        TcpTransport::bind(tcp, &logger).map_err(|e| format!("raft transport on {listen}: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
    // Bind HTTP before starting raft, so a busy port fails fast and cleanly.
    let http = runtime
        .block_on(TcpListener::bind(args.http))
        .map_err(|e| format!("HTTP on {}: {e}", args.http))?;

    let store = EngineLogStore::open(args.data_dir.join("raft"), 1)
        .map_err(|e| format!("opening the raft log: {e}"))?;
    let kv = RedbKv::open(args.data_dir.join("kv"))
        .map_err(|e| format!("opening the key-value data: {e}"))?;
    // Client sessions (Idempotency-Key): the table lives in the same redb file.
    let kv = Sessions::new(kv).map_err(|e| format!("opening the session table: {e}"))?;
    let mut config = Config::new(args.id);
    if !args.join {
        config.initial_voters = args.cluster.keys().copied().collect();
    }
    config.tick_interval = Duration::from_millis(args.tick_ms);
    config.lease_reads = true;
    let node = Node::start(config, store, kv, transport, &logger)?;

    // Leave as soon as the node stops (a full disk, a failed state machine), with its
    // reason and a non-zero status, rather than on the next HTTP request.
    let watched = node.clone();
    std::thread::Builder::new()
        .name("stop-watch".into())
        .spawn(move || loop {
            if let Some(reason) = watched.wait_stopped(Duration::from_secs(3600)) {
                eprintln!("kv_server: raft node stopped: {reason}");
                std::process::exit(if reason == StopReason::Shutdown { 0 } else { 1 });
            }
        })
        .map_err(|e| format!("spawning the stop watcher: {e}"))?;

    let mut peers_http = args.peers_http.unwrap_or_default();
    peers_http
        .entry(args.id)
        .or_insert_with(|| args.http.to_string());
    let metrics = raftnode::export::prometheus::Registry::new();
    let collector =
        raftnode::export::NodeCollector::new(node.clone(), &[]).expect("the node label is valid");
    metrics
        .register(Box::new(collector))
        .expect("the only collector registers");
    let server = Arc::new(Server {
        metrics,
        node,
        peers_http: RwLock::new(peers_http),
        connections: AtomicUsize::new(0),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    });
    eprintln!(
        "kv_server: node {} raft {listen} http {}{}",
        args.id,
        args.http,
        if args.join {
            " (joining: waiting to be added)"
        } else {
            ""
        }
    );
    runtime.block_on(serve(http, server));
    Ok(())
}

/// Accepts connections forever; each is served by hyper (HTTP/1.1, keep-alive) on its
/// own task. Beyond `max_connections` a connection gets one `503` and is closed.
async fn serve(listener: TcpListener, server: Arc<Server>) {
    let router = api::router(server.clone());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: keep serving the open connections,
            // and do not spin on the error.
            Err(e) => {
                eprintln!("kv_server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        let Some(slot) = ConnectionSlot::take(&server) else {
            http1.keep_alive(false);
            tokio::spawn(async move {
                let busy = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(api::too_many_connections())
                });
                let _ = http1.serve_connection(io, busy).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            // Errors here are the client's (a reset, bytes that are not HTTP: hyper has
            // answered those with 400 or 431 already).
            let _ = http1.serve_connection(io, service).await;
            drop(slot);
        });
    }
}

/// One of the `--max-connections` slots, held by a connection's task; given back when
/// dropped, also when the task panics.
struct ConnectionSlot(Arc<Server>);

impl ConnectionSlot {
    /// A slot, or `None` when all are taken.
    fn take(server: &Arc<Server>) -> Option<ConnectionSlot> {
        if server.connections.fetch_add(1, Ordering::AcqRel) >= server.max_connections {
            server.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(server.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
