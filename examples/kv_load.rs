//! A closed-loop HTTP load generator for `kv_server` and etcd's JSON gateway: `N`
//! keep-alive connections, one thread each, each sending one request at a time.
//!
//! ```sh
//! cargo run --release --example kv_load -- --url 127.0.0.1:8001 --connections 64 --duration 10
//! cargo run --release --example kv_load -- --target etcd --url 127.0.0.1:42370 --connections 64
//! ```
//!
//! | flag | meaning (default) |
//! |---|---|
//! | `--url HOST:PORT` | where to send (required); send writes to the leader |
//! | `--target raftnode\|etcd` | `PUT /kv/{key}` and `GET /kv/{key}`, or etcd's `POST /v3/kv/put` and `POST /v3/kv/range` with base64 JSON bodies (raftnode) |
//! | `--mode put\|get` | writes, or linearizable reads (put) |
//! | `--connections N` | concurrent connections (1) |
//! | `--duration S` | seconds of measurement (10) |
//! | `--keys N` | keys drawn uniformly from `key-0 .. key-(N-1)` (100000) |
//! | `--value-bytes N` | value size (64) |
//!
//! Prints one line of `name=value` pairs: `ops`, `errors`, `ops_per_s`, `p50_ms`,
//! `p99_ms`, `max_ms`. A `404` on a read counts as a success (the key was never written);
//! any other status but 2xx, and any I/O error, counts as an error (the connection is
//! then reopened). Latency is from writing the request to reading the whole response.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Raftnode,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Put,
    Get,
}

struct Args {
    url: String,
    target: Target,
    mode: Mode,
    connections: usize,
    duration: Duration,
    keys: u64,
    value_bytes: usize,
}

const USAGE: &str = "usage: kv_load --url HOST:PORT [--target raftnode|etcd] [--mode put|get] \
[--connections N] [--duration SECONDS] [--keys N] [--value-bytes N]";

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        target: Target::Raftnode,
        mode: Mode::Put,
        connections: 1,
        duration: Duration::from_secs(10),
        keys: 100_000,
        value_bytes: 64,
    };
    let num = |flag: &str, v: String| -> Result<u64, String> {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag}: {v:?} is not a positive integer"))
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--url" => {
                args.url = value
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            }
            "--target" => {
                args.target = match value.as_str() {
                    "raftnode" => Target::Raftnode,
                    "etcd" => Target::Etcd,
                    _ => return Err(format!("--target {value}: use raftnode or etcd")),
                }
            }
            "--mode" => {
                args.mode = match value.as_str() {
                    "put" => Mode::Put,
                    "get" => Mode::Get,
                    _ => return Err(format!("--mode {value}: use put or get")),
                }
            }
            "--connections" => args.connections = num(&flag, value)? as usize,
            "--duration" => args.duration = Duration::from_secs(num(&flag, value)?),
            "--keys" => args.keys = num(&flag, value)?,
            "--value-bytes" => args.value_bytes = num(&flag, value)? as usize,
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    if args.url.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    Ok(args)
}

/// Standard base64 with padding (RFC 4648 §4), for etcd's JSON gateway.
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// xorshift64*: a fast per-thread key picker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One keep-alive connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads the whole response; returns its status.
    fn round_trip(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.writer.write_all(request)?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let name = name.to_ascii_lowercase();
                if name == "content-length" {
                    length = value.trim().parse().map_err(|_| bad("bad length"))?;
                } else if name == "connection" && value.trim().eq_ignore_ascii_case("close") {
                    close = true;
                } else if name == "transfer-encoding" {
                    return Err(bad("chunked responses are not supported"));
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if close {
            return Err(bad("server closed the connection"));
        }
        Ok(status)
    }
}

fn build_request(args: &Args, key: &str, value: &[u8]) -> Vec<u8> {
    let host = &args.url;
    match (args.target, args.mode) {
        (Target::Raftnode, Mode::Put) => {
            let mut r = format!(
                "PUT /kv/{key} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                value.len()
            )
            .into_bytes();
            r.extend_from_slice(value);
            r
        }
        (Target::Raftnode, Mode::Get) => {
            format!("GET /kv/{key} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
        }
        (Target::Etcd, mode) => {
            let (path, body) = match mode {
                Mode::Put => (
                    "/v3/kv/put",
                    format!(
                        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                        base64(key.as_bytes()),
                        base64(value)
                    ),
                ),
                Mode::Get => (
                    "/v3/kv/range",
                    format!("{{\"key\":\"{}\"}}", base64(key.as_bytes())),
                ),
            };
            format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

/// One connection's loop; returns its latencies in microseconds and its error count.
fn worker(args: Arc<Args>, seed: u64, stop: Arc<AtomicBool>) -> (Vec<u32>, u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let value: Vec<u8> = (0..args.value_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&args.url) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let key = format!("key-{}", rng.next() % args.keys);
        let request = build_request(&args, &key, &value);
        let started = Instant::now();
        match c.round_trip(&request) {
            Ok(status) if (200..300).contains(&status) || status == 404 => {
                latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (latencies, errors)
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("kv_load: {e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|i| {
            let (args, stop) = (args.clone(), stop.clone());
            std::thread::spawn(move || worker(args, i as u64 + 1, stop))
        })
        .collect();
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        match w.join() {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ops = latencies.len();
    println!(
        "target={} mode={} connections={} ops={ops} errors={errors} ops_per_s={:.0} \
         p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        match args.target {
            Target::Raftnode => "raftnode",
            Target::Etcd => "etcd",
        },
        match args.mode {
            Mode::Put => "put",
            Mode::Get => "get",
        },
        args.connections,
        ops as f64 / elapsed,
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    );
}

#[cfg(test)]
mod tests {
    use super::base64;

    /// RFC 4648 §10 test vectors.
    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
