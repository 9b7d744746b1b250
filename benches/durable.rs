//! Durable benchmark: how many committed writes per second three in-process nodes on
//! `EngineLogStore` reach, against how many fsyncs per second the disk does.
//!
//! What is measured, in one run (see `docs/benchmarks.md`, section "Durable: group
//! commit"):
//!
//! 1. **The disk's fsync rate.** In a temporary directory on the file system the stores
//!    use, one thread writes 4 KiB and calls `File::sync_data` in a loop, two ways:
//!    appending (each fsync also commits the new file size: on ext4, a journal commit)
//!    and overwriting a file written beforehand (data only; raft-engine preallocates its
//!    log files 2 MiB ahead, so its syncs sit between the two). fsyncs/s and latencies,
//!    before and after the cluster runs (the disk's speed moves with other processes'
//!    I/O); the factors below use both passes together.
//! 2. **Committed writes/s.** Three nodes, each with an `EngineLogStore` in its own
//!    directory, joined by a `ChannelNetwork`, tick 100 ms; node 1 campaigns and leads.
//!    For 1, 64 and 256 proposers: a warm-up, then a timed window in which every
//!    proposer loops "propose a 16-64 byte command to the leader, await its outcome".
//!    The log store syncs of each node are read from `status().metrics` before and
//!    after the window, which gives entries per sync: the group-commit batch size.
//!
//! The client model is `benches/cluster.rs`'s: one client thread (the benchmark
//! thread) runs N async tasks on a `futures` `LocalPool`; no OS thread per proposer.
//!
//! The figure of merit is the group-commit factor, writes/s ÷ fsyncs/s (one column per
//! probe): how many acknowledged writes one fsync of the disk buys. Entries per leader
//! sync is the same idea without the probe's noise. Every write is fsynced by the leader
//! and then by at least one follower before it is acknowledged: without batching, one
//! write costs two fsyncs in sequence.
//!
//! Knobs, all optional: `RAFTNODE_DURABLE_SECS` (5, the timed window per point),
//! `RAFTNODE_DURABLE_WARMUP_SECS` (1), `RAFTNODE_DURABLE_FSYNC_SECS` (2, the fsync
//! probe), `RAFTNODE_DURABLE_PROPOSERS` (`1,64,256`) and `RAFTNODE_DURABLE_DIR` (where
//! the temporary directories go; the system temporary directory by default).

mod common;

use common::Counter;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::LocalPool;
use futures::stream::{FuturesUnordered, StreamExt};
use raftnode::{ChannelNetwork, Config, EngineLogStore, MetricsSnapshot, Node};
use tempfile::TempDir;

/// Commands are 16 to 64 bytes: slices of this buffer; slicing a static `Bytes`
/// allocates nothing.
const PAYLOAD: Bytes =
    Bytes::from_static(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
const MIN_COMMAND: usize = 16;
/// Raft ticks are this far apart, so elections and heartbeats do not show in the
/// figures.
const TICK: Duration = Duration::from_millis(100);
/// Longest wait for a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Size of each write of the fsync probe: one page, about a small batch of entries.
const PROBE_WRITE: usize = 4096;

// ---------------------------------------------------------------------------------------
// Settings.
// ---------------------------------------------------------------------------------------

struct Settings {
    measure: Duration,
    warm_up: Duration,
    fsync_probe: Duration,
    proposers: Vec<usize>,
    dir: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid number")),
        Err(_) => default,
    }
}

fn env_secs(name: &str, default: f64) -> Duration {
    let secs: f64 = env_or(name, default);
    assert!(
        secs.is_finite() && secs >= 0.0,
        "{name}={secs} must be a non-negative number of seconds"
    );
    Duration::from_secs_f64(secs)
}

impl Settings {
    fn from_env() -> Settings {
        let proposers = match std::env::var("RAFTNODE_DURABLE_PROPOSERS") {
            Ok(text) => text
                .split(',')
                .map(|n| match n.trim().parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => panic!(
                        "RAFTNODE_DURABLE_PROPOSERS={text:?}: expected positive counts separated by commas"
                    ),
                })
                .collect(),
            Err(_) => vec![1, 64, 256],
        };
        Settings {
            measure: env_secs("RAFTNODE_DURABLE_SECS", 5.0),
            warm_up: env_secs("RAFTNODE_DURABLE_WARMUP_SECS", 1.0),
            fsync_probe: env_secs("RAFTNODE_DURABLE_FSYNC_SECS", 2.0),
            proposers,
            dir: std::env::var_os("RAFTNODE_DURABLE_DIR").map(PathBuf::from),
        }
    }

    /// A fresh temporary directory under `RAFTNODE_DURABLE_DIR` or the system's.
    fn temp_dir(&self, prefix: &str) -> TempDir {
        let builder = &mut tempfile::Builder::new();
        builder.prefix(prefix);
        match &self.dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .expect("a temporary directory can be created")
    }
}

// ---------------------------------------------------------------------------------------
// Step 1: the disk's fsync rate.
// ---------------------------------------------------------------------------------------

/// How the fsync probe writes.
#[derive(Clone, Copy)]
enum Probe {
    /// Appends to the end: every `sync_data` also commits the new file size (on ext4 a
    /// journal commit). What the brief's "append + fsync" measures.
    Append,
    /// Overwrites blocks of a file written and synced beforehand: `sync_data` flushes
    /// data only. Closer to raft-engine, which preallocates its log files 2 MiB ahead.
    Overwrite,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Append => "append",
            Probe::Overwrite => "overwrite",
        }
    }
}

/// What the fsync probe saw.
struct FsyncRate {
    probe: Probe,
    per_sec: f64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl FsyncRate {
    /// Both passes of one probe as one: the rate over their total time.
    fn merge(mut self, other: FsyncRate) -> FsyncRate {
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.per_sec = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
        self
    }
}

/// Blocks the overwrite probe cycles through (16 MiB).
const OVERWRITE_BLOCKS: u64 = 4096;

/// Writes 4 KiB and `sync_data`s, in a loop, for `duration` (at least 10 times).
fn probe_fsync(dir: &Path, probe: Probe, duration: Duration) -> FsyncRate {
    let path = dir.join(format!("fsync-probe-{}", probe.name()));
    let mut file: File = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("the probe file opens");
    let block = [0x5au8; PROBE_WRITE];
    if let Probe::Overwrite = probe {
        for _ in 0..OVERWRITE_BLOCKS {
            file.write_all(&block).expect("the probe file is written");
        }
        file.sync_all().expect("the probe file is synced");
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration || latencies.len() < 10 {
        let t = Instant::now();
        match probe {
            Probe::Append => file.write_all(&block),
            Probe::Overwrite => {
                let offset = (latencies.len() as u64 % OVERWRITE_BLOCKS) * PROBE_WRITE as u64;
                file.write_all_at(&block, offset)
            }
        }
        .expect("the probe write succeeds");
        file.sync_data().expect("the probe fsync succeeds");
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    FsyncRate {
        probe,
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        elapsed,
        latencies,
    }
}

// ---------------------------------------------------------------------------------------
// Step 2: the durable cluster.
// ---------------------------------------------------------------------------------------

/// Three nodes on `EngineLogStore`, each in its own directory, on one `ChannelNetwork`.
struct DurableCluster {
    nodes: Vec<Node<Counter>>,
    leader: usize,
    /// Removed when the cluster is dropped, after the nodes were stopped.
    _dirs: Vec<TempDir>,
}

impl DurableCluster {
    fn start(settings: &Settings) -> DurableCluster {
        let network = ChannelNetwork::new();
        let logger = raftnode::discard_logger();
        let dirs: Vec<TempDir> = (1..=3)
            .map(|id| settings.temp_dir(&format!("raftnode-durable-{id}-")))
            .collect();
        let nodes: Vec<_> = (1..=3u64)
            .zip(&dirs)
            .map(|(id, dir)| {
                let store = EngineLogStore::open(dir.path(), 1).expect("the log store opens");
                let mut config = Config::new(id);
                config.initial_voters = vec![1, 2, 3];
                config.tick_interval = TICK;
                Node::start(
                    config,
                    store,
                    Counter::default(),
                    network.transport(id),
                    &logger,
                )
                .expect("the node starts")
            })
            .collect();
        nodes[0].campaign().expect("node 1 campaigns");
        let leader = nodes[0]
            .wait_for_leader(LEADER_DEADLINE)
            .expect("a leader is elected");
        DurableCluster {
            leader: nodes
                .iter()
                .position(|n| n.id() == leader)
                .expect("the leader is one of the nodes"),
            nodes,
            _dirs: dirs,
        }
    }

    /// Every node's counters, leader first.
    fn metrics(&self) -> Vec<MetricsSnapshot> {
        let order = std::iter::once(self.leader).chain((0..3).filter(|&i| i != self.leader));
        order
            .map(|i| {
                self.nodes[i]
                    .status()
                    .expect("the node reports its status")
                    .metrics
            })
            .collect()
    }

    /// Proposes `command` to the leader and waits until it is applied there.
    async fn propose(&self, command: Bytes) {
        let leader = &self.nodes[self.leader];
        leader
            .propose(command)
            .expect("the proposal is queued")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the proposal failed: {e} (leader changes: {})",
                    leader
                        .status()
                        .map(|s| s.metrics.leader_changes)
                        .unwrap_or(0)
                )
            });
    }
}

impl Drop for DurableCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

/// What one closed-loop window did.
struct Window {
    writes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Keeps `proposers` proposals in flight, as async tasks on the calling thread, until
/// `duration` has passed; every proposal is timed.
fn closed_loop(
    pool: &mut LocalPool,
    cluster: &DurableCluster,
    proposers: usize,
    duration: Duration,
) -> Window {
    let issued = &Cell::new(0usize);
    let latencies = &RefCell::new(Vec::new());
    let start = Instant::now();
    let end = start + duration;
    pool.run_until(async {
        let mut tasks: FuturesUnordered<_> = (0..proposers)
            .map(|_| async move {
                while Instant::now() < end {
                    let n = issued.get();
                    issued.set(n + 1);
                    let len = MIN_COMMAND + n % (PAYLOAD.len() - MIN_COMMAND + 1);
                    let t = Instant::now();
                    cluster.propose(PAYLOAD.slice(..len)).await;
                    latencies.borrow_mut().push(t.elapsed());
                }
            })
            .collect();
        while tasks.next().await.is_some() {}
    });
    let latencies = latencies.take();
    Window {
        writes: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
    }
}

// ---------------------------------------------------------------------------------------
// Step 3: the table.
// ---------------------------------------------------------------------------------------

/// One row: a proposer count's window and the counters' deltas over it.
struct Point {
    proposers: usize,
    window: Window,
    /// Per node, leader first: (syncs, entries appended, readies) during the window.
    deltas: Vec<(u64, u64, u64)>,
}

impl Point {
    fn writes_per_sec(&self) -> f64 {
        self.window.writes as f64 / self.window.elapsed.as_secs_f64()
    }

    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.window.elapsed.as_secs_f64()
    }
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn measure(
    pool: &mut LocalPool,
    cluster: &DurableCluster,
    settings: &Settings,
    proposers: usize,
) -> Point {
    closed_loop(pool, cluster, proposers, settings.warm_up);
    let before = cluster.metrics();
    let window = closed_loop(pool, cluster, proposers, settings.measure);
    let after = cluster.metrics();
    let deltas = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            (
                a.syncs - b.syncs,
                a.entries_appended - b.entries_appended,
                a.readies - b.readies,
            )
        })
        .collect();
    Point {
        proposers,
        window,
        deltas,
    }
}

fn print_fsync(label: &str, probes: &[FsyncRate]) {
    println!("{label}:");
    for fsync in probes {
        let mut sorted = fsync.latencies.clone();
        sorted.sort();
        let mean = sorted.iter().map(Duration::as_secs_f64).sum::<f64>() / sorted.len() as f64;
        println!(
            "  {:>9}: {:>6.0} fsyncs/s; latency mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms ({} fsyncs)",
            fsync.probe.name(),
            fsync.per_sec,
            mean * 1e3,
            percentile_ms(&sorted, 0.5),
            percentile_ms(&sorted, 0.99),
            sorted.len(),
        );
    }
}

fn print_table(points: &[Point], probes: &[FsyncRate], settings: &Settings) {
    println!();
    println!(
        "committed writes, {:.1} s per point after {:.1} s warm-up; syncs from status().metrics",
        settings.measure.as_secs_f64(),
        settings.warm_up.as_secs_f64()
    );
    let factor_headers: Vec<String> = probes
        .iter()
        .map(|f| format!("{:>11}", format!("÷{}", f.probe.name())))
        .collect();
    println!(
        "{:>9} | {:>9} | {:>8} | {:>8} | {:>14} | {:>14} | {:>15} | {:>14} | {}",
        "proposers",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "leader syncs/s",
        "entries/l.sync",
        "follower sync/s",
        "readies/l.sync",
        factor_headers.join(" | ")
    );
    for p in points {
        let mut sorted = p.window.latencies.clone();
        sorted.sort();
        let (l_syncs, l_entries, l_readies) = p.deltas[0];
        let follower_syncs = p.deltas[1..].iter().map(|d| d.0).sum::<u64>() as f64
            / (p.deltas.len() - 1).max(1) as f64;
        let factors: Vec<String> = probes
            .iter()
            .map(|f| format!("{:>11.1}", p.writes_per_sec() / f.per_sec))
            .collect();
        println!(
            "{:>9} | {:>9.0} | {:>8.2} | {:>8.2} | {:>14.0} | {:>14.1} | {:>15.0} | {:>14.2} | {}",
            p.proposers,
            p.writes_per_sec(),
            percentile_ms(&sorted, 0.5),
            percentile_ms(&sorted, 0.99),
            p.per_sec(l_syncs),
            l_entries as f64 / l_syncs.max(1) as f64,
            follower_syncs / p.window.elapsed.as_secs_f64(),
            l_readies as f64 / l_syncs.max(1) as f64,
            factors.join(" | "),
        );
    }
    println!();
    println!("per node, leader first: entries appended / syncs during each window");
    for p in points {
        let cells: Vec<String> = p
            .deltas
            .iter()
            .map(|(syncs, entries, _)| {
                format!(
                    "{entries}/{syncs} = {:.1}",
                    *entries as f64 / (*syncs).max(1) as f64
                )
            })
            .collect();
        println!("{:>9} | {}", p.proposers, cells.join(" | "));
    }
    println!();
    println!(
        "÷probe = writes/s ÷ that probe's fsyncs/s, the group-commit factor (target: ≥ 50 at 256 proposers)"
    );
}

/// Runs every probe once in a fresh directory under the stores' parent directory.
fn probe_all(settings: &Settings) -> Vec<FsyncRate> {
    let dir = settings.temp_dir("raftnode-fsync-probe-");
    [Probe::Append, Probe::Overwrite]
        .into_iter()
        .map(|probe| probe_fsync(dir.path(), probe, settings.fsync_probe))
        .collect()
}

/// The leader's proposal timing over the whole run (warm-ups and every proposer count
/// together): the time spent in each stage, and from propose to returned.
fn print_stages(timing: &raftnode::ProposalTiming) {
    println!();
    println!("leader's proposal timing over the run, time in each stage (ms):");
    println!(
        "{:>9} | {:>9} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8}",
        "stage", "count", "mean", "p50", "p90", "p99", "max"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rows = timing.stages.iter().map(|(s, l)| (s.name(), l));
    for (name, s) in rows.chain([("total", &timing.total)]) {
        println!(
            "{:>9} | {:>9} | {:>8.3} | {:>8.3} | {:>8.3} | {:>8.3} | {:>8.3}",
            name,
            s.count,
            ms(s.sum) / s.count.max(1) as f64,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        );
    }
}

fn main() {
    let settings = Settings::from_env();
    println!();
    println!("== raftnode durable benchmark: 3 nodes on EngineLogStore, 16-64 byte commands ==");
    println!(
        "fsync probes in {} (one thread, 4 KiB write + sync_data each), before and after the cluster:",
        settings
            .dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .display()
    );
    let before = probe_all(&settings);
    print_fsync("before", &before);

    let cluster = DurableCluster::start(&settings);
    let mut pool = LocalPool::new();
    let points: Vec<Point> = settings
        .proposers
        .iter()
        .map(|&proposers| measure(&mut pool, &cluster, &settings, proposers))
        .collect();
    let applied: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.read_stale(|sm| sm.commands).unwrap_or(0))
        .collect();
    let timing = cluster.nodes[cluster.leader]
        .status()
        .expect("the leader reports its status")
        .proposal_timing;
    drop(cluster);
    print_stages(&timing);

    // The disk's speed moves with other processes' I/O: probing again after the cluster
    // shows whether it moved during the run; the factors use both passes.
    let after = probe_all(&settings);
    print_fsync("after", &after);
    let probes: Vec<FsyncRate> = before
        .into_iter()
        .zip(after)
        .map(|(b, a)| b.merge(a))
        .collect();
    print_fsync("both", &probes);
    print_table(&points, &probes, &settings);
    println!("commands applied per node: {applied:?} (followers may trail)");
}
