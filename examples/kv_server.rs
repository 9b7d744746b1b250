//! A replicated key-value service: one process per node, raft over [`TcpTransport`],
//! the log in an [`EngineLogStore`] (real fsync), the data in a `DurableKv`, and a small
//! HTTP/1.1 API written on `std::net` (thread per connection, keep-alive, bounded).
//!
//! ```sh
//! cargo run --release --features testing --example kv_server -- \
//!   --id 1 --cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!   --http 127.0.0.1:8001 --peers-http 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 \
//!   --data-dir /tmp/kv1
//! ```
//!
//! `examples/kv_cluster.sh` starts three of them on loopback.
//!
//! # Flags
//!
//! | flag | meaning |
//! |---|---|
//! | `--id N` | this node's id (non-zero, never reused) |
//! | `--cluster ID=HOST:PORT,...` | raft addresses of the members, this node's included (it listens there) |
//! | `--http HOST:PORT` | where the HTTP API listens |
//! | `--peers-http ID=HOST:PORT,...` | the members' HTTP addresses, for redirects to the leader |
//! | `--data-dir DIR` | `DIR/raft` holds the raft log (raft-engine), `DIR/kv` the key-value data |
//! | `--join` | start empty and wait to be added by the leader (`POST /members`) |
//! | `--cluster-id N` | cluster id checked in every raft connection's handshake (default 1) |
//! | `--tick-ms N` | raft tick length (default 100; elections after 10-20 ticks) |
//! | `--max-connections N` | HTTP connections served at once; more get `503` (default 1024) |
//! | `--verbose` | log raft events to stderr |
//! | `--tls-ca FILE --tls-cert FILE --tls-key FILE` | mutual TLS between nodes (build with `--features testing,tls`): the cluster CA, this node's certificate (DNS name `node-<id>.raftnode`) and key, PEM; all three or none |
//!
//! On first start without `--join` the node bootstraps the group with every id of
//! `--cluster` as a voter; later starts on the same `--data-dir` resume from it.
//!
//! # HTTP API
//!
//! | request | answer |
//! |---|---|
//! | `PUT /kv/{key}`, body = value | `204` once committed and applied on the leader |
//! | `GET /kv/{key}[?consistency=linearizable\|lease\|stale]` | `200` with the value, `404` if absent |
//! | `DELETE /kv/{key}` | `204` if it existed, `404` if not (committed either way) |
//! | `POST /members`, body `id=4&addr=127.0.0.1:7004&role=learner\|voter[&http=127.0.0.1:8004]` | `200` with the new voters/learners |
//! | `DELETE /members/{id}` | `200` with the new voters/learners |
//! | `POST /leader`, body `to=2` | `200` once node 2 leads |
//! | `GET /status` | `200`, JSON: id, role, term, leader, leader_http, commit, applied, voters, learners, ... |
//!
//! Keys are the rest of the path after `/kv/`, percent-decoded, at most 4 KiB; values
//! at most 512 KiB (`413` beyond). The form body of `POST /members` is
//! `application/x-www-form-urlencoded` (what `curl -d` sends); `role=voter` adds the
//! node as a learner, waits until it has caught up, then promotes it.
//!
//! **Followers redirect.** Writes, lease reads and admin requests sent to a follower get
//! `307 Temporary Redirect` with `Location: http://<leader's --peers-http address><same
//! path>` (`curl -L` follows it and re-sends the body). Linearizable and stale reads are
//! served by any node: a follower asks the leader for the read index (ReadIndex), then
//! answers from its own state. With no leader known, or the leader's HTTP address not
//! known (missing from `--peers-http`; `http=` in `POST /members` teaches it to the
//! leader only), the answer is `503` with a message.
//!
//! **Errors.** `400` malformed request or bad parameter, `404` unknown path or key, `405`
//! wrong method, `411` a body without `Content-Length` (chunked bodies are refused),
//! `413` body too large, `431` headers too large, `503` no leader, queue full, timeout
//! (a timed-out write *may* still be applied: its outcome is unknown), node stopped. The
//! body of every error is one line of text saying what happened.
//!
//! **When the raft node stops** (its disk fails or fills, its state machine fails), the
//! process prints `kv_server: raft node stopped: <reason>` and exits with status 1 at
//! once; a restart on a healthy disk recovers every acknowledged write.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raftnode::testing::durable_kv::{encode_delete, encode_put, DurableKv, KvResponse};
use raftnode::{
    Config, EngineLogStore, MembershipError, Node, ProposeError, ReadConsistency, ReadError, Role,
    StopReason, TcpConfig, TcpTransport,
};

/// Largest value accepted in a `PUT` body.
const MAX_VALUE_BYTES: usize = 512 << 10;
/// Largest body of the other requests.
const MAX_FORM_BYTES: usize = 4 << 10;
/// Largest key, after percent-decoding.
const MAX_KEY_BYTES: usize = 4 << 10;
/// Largest request line plus headers.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Most header lines in one request.
const MAX_HEADERS: usize = 100;
/// How long a write or read waits for raft before answering `503`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long membership changes and transfers may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a response write may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parsed command line.
struct Args {
    id: u64,
    cluster: BTreeMap<u64, SocketAddr>,
    http: SocketAddr,
    peers_http: BTreeMap<u64, String>,
    data_dir: PathBuf,
    join: bool,
    cluster_id: u64,
    tick: Duration,
    max_connections: usize,
    verbose: bool,
    /// `--tls-ca`, `--tls-cert`, `--tls-key`; only accepted when built with `tls`.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: Option<TlsFiles>,
}

/// The PEM files of mutual TLS between nodes.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

const USAGE: &str = "usage: kv_server --id N --cluster ID=HOST:PORT,... --http HOST:PORT \
--data-dir DIR [--peers-http ID=HOST:PORT,...] [--join] [--cluster-id N] [--tick-ms N] \
[--max-connections N] [--verbose] [--tls-ca FILE --tls-cert FILE --tls-key FILE]";

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut id = None;
    let mut cluster = None;
    let mut http = None;
    let mut peers_http = BTreeMap::new();
    let mut data_dir = None;
    let mut join = false;
    let mut cluster_id = 1;
    let mut tick_ms = 100u64;
    let mut max_connections = 1024usize;
    let mut verbose = false;
    let (mut tls_ca, mut tls_cert, mut tls_key) = (None, None, None);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => id = Some(parse_num(&flag, &value()?)?),
            "--cluster" => {
                let list = parse_id_list(&flag, &value()?)?;
                let mut addrs = BTreeMap::new();
                for (id, addr) in list {
                    let addr = addr
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--cluster: {addr:?} is not an ip:port ({e})"))?;
                    addrs.insert(id, addr);
                }
                cluster = Some(addrs);
            }
            "--http" => {
                let v = value()?;
                http = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--http: {v:?} is not an ip:port ({e})"))?,
                );
            }
            "--peers-http" => peers_http = parse_id_list(&flag, &value()?)?,
            "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
            "--join" => join = true,
            "--cluster-id" => cluster_id = parse_num(&flag, &value()?)?,
            "--tick-ms" => tick_ms = parse_num(&flag, &value()?)?,
            "--max-connections" => max_connections = parse_num(&flag, &value()?)? as usize,
            "--verbose" => verbose = true,
            "--tls-ca" => tls_ca = Some(PathBuf::from(value()?)),
            "--tls-cert" => tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    let id = id.ok_or_else(|| format!("--id is required\n{USAGE}"))?;
    let cluster = cluster.ok_or_else(|| format!("--cluster is required\n{USAGE}"))?;
    if id == 0 {
        return Err("--id: node id 0 is reserved; use 1 or more".into());
    }
    if !cluster.contains_key(&id) {
        return Err(format!(
            "--cluster must include this node ({id}): it listens at its own address"
        ));
    }
    if tick_ms == 0 || max_connections == 0 {
        return Err("--tick-ms and --max-connections must be at least 1".into());
    }
    let tls = match (tls_ca, tls_cert, tls_key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) if cfg!(feature = "tls") => {
            Some(TlsFiles { ca, cert, key })
        }
        (Some(_), Some(_), Some(_)) => {
            return Err("--tls-* need kv_server built with the `tls` feature \
                (cargo run --features testing,tls --example kv_server)"
                .into())
        }
        _ => return Err("--tls-ca, --tls-cert and --tls-key go together".into()),
    };
    let http = http.ok_or_else(|| format!("--http is required\n{USAGE}"))?;
    peers_http.entry(id).or_insert_with(|| http.to_string());
    Ok(Args {
        id,
        cluster,
        http,
        peers_http,
        data_dir: data_dir.ok_or_else(|| format!("--data-dir is required\n{USAGE}"))?,
        join,
        cluster_id,
        tick: Duration::from_millis(tick_ms),
        max_connections,
        verbose,
        tls,
    })
}

fn parse_num(flag: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{flag}: {text:?} is not a non-negative integer"))
}

/// Parses `1=a,2=b`.
fn parse_id_list(flag: &str, text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{flag}: {item:?} is not ID=HOST:PORT"))?;
        let id = parse_num(flag, id)?;
        if id == 0 {
            return Err(format!("{flag}: node id 0 is reserved"));
        }
        out.insert(id, addr.to_string());
    }
    if out.is_empty() {
        return Err(format!("{flag}: empty list"));
    }
    Ok(out)
}

/// What every connection thread shares.
struct Server {
    node: Node<DurableKv>,
    /// HTTP addresses of the members, for redirects: from `--peers-http`, plus `http=`
    /// of `POST /members` handled here.
    peers_http: RwLock<BTreeMap<u64, String>>,
    /// Open HTTP connections, bounded by `max_connections`.
    connections: AtomicUsize,
    max_connections: usize,
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("kv_server: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
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

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
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
    if let Some(files) = &args.tls {
        let tls = raftnode::TlsConfig::from_pem_files(args.id, &files.ca, &files.cert, &files.key)
            .map_err(|e| format!("TLS: {e}"))?;
        tcp.tls = Some(tls);
    }
    let transport =
        TcpTransport::bind(tcp, &logger).map_err(|e| format!("raft transport on {listen}: {e}"))?;
    // Bind HTTP before starting raft, so a busy port fails fast and cleanly.
    let http = TcpListener::bind(args.http).map_err(|e| format!("HTTP on {}: {e}", args.http))?;

    let store = EngineLogStore::open(args.data_dir.join("raft"), 1)
        .map_err(|e| format!("opening the raft log: {e}"))?;
    let kv = DurableKv::open(args.data_dir.join("kv"))
        .map_err(|e| format!("opening the key-value data: {e}"))?;
    let mut config = Config::new(args.id);
    if !args.join {
        config.initial_voters = args.cluster.keys().copied().collect();
    }
    config.tick_interval = args.tick;
    config.lease_reads = true;
    let node = Node::start(config, store, kv, transport, &logger)?;

    // Leave as soon as the node stops (a full disk, a failed state machine), with its
    // reason and a non-zero status, rather than on the next HTTP connection.
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

    let server = Arc::new(Server {
        node,
        peers_http: RwLock::new(args.peers_http),
        connections: AtomicUsize::new(0),
        max_connections: args.max_connections,
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
    for stream in http.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // Out of file descriptors and the like: keep serving the open connections.
            Err(e) => {
                eprintln!("kv_server: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if server.node.is_stopped() {
            return Err(format!("raft node stopped: {:?}", server.node.stop_reason()).into());
        }
        if server.connections.fetch_add(1, Ordering::AcqRel) >= server.max_connections {
            server.connections.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(
                &mut stream,
                &Response::text(503, "too many connections; retry later"),
                false,
            );
            continue;
        }
        let server = server.clone();
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                serve_connection(&server, stream);
                server.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            eprintln!("kv_server: spawning a connection thread: {e}");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ HTTP plumbing

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

/// One response.
struct Response {
    status: u16,
    content_type: &'static str,
    location: Option<String>,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, message: impl Into<String>) -> Response {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            location: None,
            body,
        }
    }

    fn empty(status: u16) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            location: None,
            body: Vec::new(),
        }
    }

    fn json(body: String) -> Response {
        Response {
            status: 200,
            content_type: "application/json",
            location: None,
            body: body.into_bytes(),
        }
    }
}

/// Why a request could not be read. `Closed`: the client went away between requests.
enum ReadFailure {
    Closed,
    Reply(Response),
}

fn serve_connection(server: &Server, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        match read_request(&mut reader, &mut writer) {
            Ok((request, keep_alive)) => {
                let response = handle(server, &request);
                if write_response(&mut writer, &response, keep_alive).is_err() || !keep_alive {
                    return;
                }
            }
            Err(ReadFailure::Closed) => return,
            Err(ReadFailure::Reply(response)) => {
                // After a bad request the stream position is unknown: close, but drain
                // a bounded amount first, so that a client still sending its (refused)
                // body reads the answer instead of a connection reset.
                let _ = write_response(&mut writer, &response, false);
                let _ = writer.shutdown(std::net::Shutdown::Write);
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(1)));
                let _ = io::copy(
                    &mut (&mut reader).take(2 * MAX_VALUE_BYTES as u64),
                    &mut io::sink(),
                );
                return;
            }
        }
    }
}

/// Reads one line of the head, counting it against `budget`.
fn read_head_line(
    reader: &mut BufReader<TcpStream>,
    budget: &mut usize,
) -> Result<String, ReadFailure> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|_| ReadFailure::Closed)?;
    if n == 0 {
        return Err(ReadFailure::Closed);
    }
    if n > *budget {
        return Err(ReadFailure::Reply(Response::text(
            431,
            format!("request line and headers exceed {MAX_HEAD_BYTES} bytes"),
        )));
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(ReadFailure::Closed);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| ReadFailure::Reply(Response::text(400, "request head is not UTF-8")))
}

/// Reads one request; returns it with whether the connection stays open after it.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<(Request, bool), ReadFailure> {
    let bad = |m: &str| ReadFailure::Reply(Response::text(400, m));
    let mut budget = MAX_HEAD_BYTES;
    let mut line = read_head_line(reader, &mut budget)?;
    // Tolerate blank lines between requests (RFC 9112 §2.2).
    while line.is_empty() {
        line = read_head_line(reader, &mut budget)?;
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(bad("only HTTP/1.0 and HTTP/1.1 are served")),
    };
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for count in 0.. {
        let header = read_head_line(reader, &mut budget)?;
        if header.is_empty() {
            break;
        }
        if count >= MAX_HEADERS {
            return Err(ReadFailure::Reply(Response::text(
                431,
                format!("more than {MAX_HEADERS} headers"),
            )));
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| bad("Content-Length is not a number"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(ReadFailure::Reply(Response::text(
                    411,
                    "chunked bodies are not supported; send Content-Length",
                )))
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let limit = if method == "PUT" {
        MAX_VALUE_BYTES
    } else {
        MAX_FORM_BYTES
    };
    let length = content_length.unwrap_or(0);
    if length > limit {
        return Err(ReadFailure::Reply(Response::text(
            413,
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        )));
    }
    if expect_continue && length > 0 {
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadFailure::Closed)?;
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|_| ReadFailure::Closed)?;
    Ok((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            body,
        },
        keep_alive,
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response, keep_alive: bool) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    if r.status != 204 {
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            r.content_type,
            r.body.len()
        ));
    }
    if let Some(location) = &r.location {
        out.push_str(&format!("Location: {location}\r\n"));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&r.body);
    stream.write_all(&bytes)
}

/// Decodes `%XX` escapes (and `+` as space when `form` is set).
fn percent_decode(text: &str, form: bool) -> Result<Vec<u8>, String> {
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if form => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Parses `a=1&b=2` (form body or query string).
fn parse_form(raw: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "form is not UTF-8".to_string())?;
    let mut out = BTreeMap::new();
    for pair in text.trim().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8(percent_decode(k, true)?)
            .map_err(|_| "form key is not UTF-8".to_string())?;
        let v = String::from_utf8(percent_decode(v, true)?)
            .map_err(|_| "form value is not UTF-8".to_string())?;
        out.insert(k, v);
    }
    Ok(out)
}

// ------------------------------------------------------------------ handlers

fn handle(server: &Server, request: &Request) -> Response {
    let path = request.path.as_str();
    if let Some(raw_key) = path.strip_prefix("/kv/") {
        let key = match percent_decode(raw_key, false) {
            Ok(k) if k.is_empty() => return Response::text(400, "empty key"),
            Ok(k) if k.len() > MAX_KEY_BYTES => {
                return Response::text(400, format!("key exceeds {MAX_KEY_BYTES} bytes"))
            }
            Ok(k) => k,
            Err(e) => return Response::text(400, e),
        };
        return match request.method.as_str() {
            "PUT" => put(server, request, &key),
            "GET" => get(server, request, key),
            "DELETE" => delete(server, request, &key),
            _ => Response::text(405, "use GET, PUT or DELETE on /kv/{key}"),
        };
    }
    match (request.method.as_str(), path) {
        ("GET", "/status") => status(server),
        ("POST", "/members") => add_member(server, request),
        ("DELETE", p) if p.starts_with("/members/") => remove_member(server, request),
        ("POST", "/leader") => transfer(server, request),
        (_, "/status" | "/members" | "/leader") => Response::text(405, "wrong method"),
        _ => Response::text(
            404,
            "unknown path; see /kv/{key}, /members, /leader, /status",
        ),
    }
}

/// A `307` to the leader, or `503` when it or its HTTP address is unknown.
fn redirect(server: &Server, request: &Request, leader: Option<u64>) -> Response {
    let Some(leader) = leader.or_else(|| server.node.leader()) else {
        return Response::text(503, "no leader known; retry shortly");
    };
    if leader == server.node.id() {
        return Response::text(503, "leadership is changing; retry shortly");
    }
    let Some(addr) = server.peers_http.read().get(&leader).cloned() else {
        return Response::text(
            503,
            format!(
                "the leader is node {leader}, whose HTTP address is unknown here (--peers-http)"
            ),
        );
    };
    let mut location = format!("http://{addr}{}", request.path);
    if !request.query.is_empty() {
        location.push('?');
        location.push_str(&request.query);
    }
    Response {
        location: Some(location),
        ..Response::text(307, format!("node {leader} leads"))
    }
}

fn propose(server: &Server, request: &Request, command: Vec<u8>) -> Response {
    if server.node.leader() != Some(server.node.id()) {
        return redirect(server, request, None);
    }
    let outcome = server
        .node
        .propose(command)
        .and_then(|h| h.wait_timeout(REQUEST_TIMEOUT));
    match outcome {
        Ok(KvResponse::Put { .. }) => Response::empty(204),
        Ok(KvResponse::Deleted { previous: Some(_) }) => Response::empty(204),
        Ok(KvResponse::Deleted { previous: None }) => Response::text(404, "no such key"),
        Ok(KvResponse::Invalid(e)) => Response::text(400, e),
        Ok(other) => Response::text(500, format!("unexpected state machine answer {other:?}")),
        Err(ProposeError::NotLeader { leader }) => redirect(server, request, leader),
        Err(e @ ProposeError::TooLarge { .. }) => Response::text(413, e.to_string()),
        Err(e @ (ProposeError::OutcomeUnknown { .. } | ProposeError::Timeout)) => {
            Response::text(503, format!("{e} (outcome unknown)"))
        }
        Err(e) => Response::text(503, e.to_string()),
    }
}

fn put(server: &Server, request: &Request, key: &[u8]) -> Response {
    propose(server, request, encode_put(key, &request.body))
}

fn delete(server: &Server, request: &Request, key: &[u8]) -> Response {
    propose(server, request, encode_delete(key))
}

fn get(server: &Server, request: &Request, key: Vec<u8>) -> Response {
    let query = match parse_form(request.query.as_bytes()) {
        Ok(q) => q,
        Err(e) => return Response::text(400, e),
    };
    let consistency = match query.get("consistency").map(String::as_str) {
        None | Some("linearizable") => ReadConsistency::Linearizable,
        Some("lease") => ReadConsistency::Lease,
        Some("stale") => ReadConsistency::Stale,
        Some(other) => {
            return Response::text(
                400,
                format!("consistency={other}: use linearizable, lease or stale"),
            )
        }
    };
    if consistency == ReadConsistency::Lease && server.node.leader() != Some(server.node.id()) {
        return redirect(server, request, None);
    }
    let value = server.node.read(consistency, REQUEST_TIMEOUT, move |kv| {
        kv.get(&key).cloned()
    });
    match value {
        Ok(Some(value)) => Response {
            content_type: "application/octet-stream",
            ..Response::empty(200)
        }
        .with_body(value.to_vec()),
        Ok(None) => Response::text(404, "no such key"),
        Err(ReadError::NotLeader { leader }) => redirect(server, request, leader),
        Err(ReadError::Timeout) => Response::text(
            503,
            "read timed out: no leader or no quorum confirmed the read index",
        ),
        Err(e) => Response::text(503, e.to_string()),
    }
}

impl Response {
    fn with_body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }
}

fn membership_error(server: &Server, request: &Request, e: MembershipError) -> Response {
    match e {
        MembershipError::NotLeader { leader } => redirect(server, request, leader),
        MembershipError::Invalid(_) => Response::text(400, e.to_string()),
        MembershipError::Rejected(_) => Response::text(409, e.to_string()),
        _ => Response::text(503, e.to_string()),
    }
}

/// `[1,2,3]`: sorted, no spaces.
fn id_list(ids: &[u64]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let items: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}

fn conf_json(voters: &[u64], learners: &[u64]) -> String {
    format!(
        "{{\"voters\":{},\"learners\":{}}}\n",
        id_list(voters),
        id_list(learners)
    )
}

fn add_member(server: &Server, request: &Request) -> Response {
    let form = match parse_form(&request.body) {
        Ok(f) => f,
        Err(e) => return Response::text(400, e),
    };
    let id = match form.get("id").map(|v| v.parse::<u64>()) {
        Some(Ok(id)) if id > 0 => id,
        _ => return Response::text(400, "id=N (non-zero) is required"),
    };
    let Some(addr) = form.get("addr") else {
        return Response::text(
            400,
            "addr=HOST:PORT (the new node's raft address) is required",
        );
    };
    if addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Response::text(400, format!("addr={addr:?} is not HOST:PORT"));
    }
    let voter = match form.get("role").map(String::as_str) {
        None | Some("learner") => false,
        Some("voter") => true,
        Some(other) => return Response::text(400, format!("role={other}: use learner or voter")),
    };
    if server.node.leader() != Some(server.node.id()) {
        return redirect(server, request, None);
    }
    if let Some(http) = form.get("http") {
        server.peers_http.write().insert(id, http.clone());
    }
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let cs = match server.node.add_learner(id, addr.clone(), ADMIN_TIMEOUT) {
        Ok(cs) => cs,
        Err(e) => return membership_error(server, request, e),
    };
    if !voter {
        return Response::json(conf_json(&cs.voters, &cs.learners));
    }
    // Promote only once the learner holds the log up to now, so the quorum never waits
    // on an empty node.
    loop {
        let caught_up = server.node.status().ok().is_some_and(|s| {
            s.progress
                .iter()
                .any(|p| p.id == id && p.matched >= s.commit)
        });
        if caught_up {
            break;
        }
        if Instant::now() >= deadline {
            return Response::text(
                503,
                format!("node {id} was added as a learner but did not catch up in time; promote it later with role=voter"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    match server.node.promote(id, remaining) {
        Ok(cs) => Response::json(conf_json(&cs.voters, &cs.learners)),
        Err(e) => membership_error(server, request, e),
    }
}

fn remove_member(server: &Server, request: &Request) -> Response {
    let Some(Ok(id)) = request
        .path
        .strip_prefix("/members/")
        .map(|s| s.parse::<u64>())
    else {
        return Response::text(400, "use DELETE /members/{id} with a numeric id");
    };
    if server.node.leader() != Some(server.node.id()) {
        return redirect(server, request, None);
    }
    match server.node.remove(id, ADMIN_TIMEOUT) {
        Ok(cs) => Response::json(conf_json(&cs.voters, &cs.learners)),
        Err(e) => membership_error(server, request, e),
    }
}

fn transfer(server: &Server, request: &Request) -> Response {
    let form = match parse_form(&request.body) {
        Ok(f) => f,
        Err(e) => return Response::text(400, e),
    };
    let to = match form.get("to").map(|v| v.parse::<u64>()) {
        Some(Ok(to)) if to > 0 => to,
        _ => return Response::text(400, "to=N (a voter's id) is required"),
    };
    if server.node.leader() != Some(server.node.id()) {
        return redirect(server, request, None);
    }
    if to == server.node.id() {
        return Response::text(200, format!("node {to} already leads"));
    }
    match server.node.transfer_leader(to, ADMIN_TIMEOUT) {
        Ok(()) => Response::text(200, format!("node {to} leads")),
        Err(e) => membership_error(server, request, e),
    }
}

fn status(server: &Server) -> Response {
    let s = match server.node.status() {
        Ok(s) => s,
        Err(e) => return Response::text(503, e.to_string()),
    };
    let role = match s.role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    };
    let leader_http = s
        .leader
        .and_then(|l| server.peers_http.read().get(&l).cloned());
    let opt = |v: Option<String>| v.map_or("null".to_string(), |v| format!("{v:?}"));
    let json = format!(
        "{{\"id\":{},\"role\":\"{role}\",\"term\":{},\"leader\":{},\"leader_http\":{},\
         \"commit\":{},\"applied\":{},\"last_index\":{},\"snapshot_index\":{},\
         \"members\":{{\"voters\":{},\"voters_outgoing\":{},\"learners\":{}}},\
         \"removed\":{},\"http_connections\":{}}}\n",
        s.id,
        s.term,
        s.leader.map_or("null".to_string(), |l| l.to_string()),
        opt(leader_http),
        s.commit,
        s.applied,
        s.last_index,
        s.snapshot_index,
        id_list(&s.voters),
        id_list(&s.voters_outgoing),
        id_list(&s.learners),
        s.removed,
        server.connections.load(Ordering::Relaxed),
    );
    Response::json(json)
}
