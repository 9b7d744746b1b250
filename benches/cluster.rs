//! Core benchmark: three in-process raftnode nodes on `MemLogStore` + `ChannelNetwork`,
//! next to a minimal hand-written raft-rs loop doing the same work, in one run.
//!
//! What is measured (see `docs/benchmarks.md`, section "Core: 3 in-memory nodes"):
//!
//! - `throughput/{library,raw}/{64,256}`: ops/s with N proposals in flight at all times.
//! - `round_trip/{library,raw}/1`: one proposal in flight; the time per iteration is the
//!   propose → applied-on-the-leader → caller-woken round trip.
//!
//! The client model is the same on both sides: one client thread (the benchmark thread)
//! runs N async tasks on a `futures` `LocalPool`; each task loops "propose a 16-byte
//! command to the leader, await its outcome". No OS thread per proposer.
//!
//! Both clusters are started once, before the first group, and stay warm. Each criterion
//! iteration is one operation (`SamplingMode::Flat`: every sample runs the same number of
//! operations). Knobs, all optional: `RAFTNODE_BENCH_SAMPLES` (default 10),
//! `RAFTNODE_BENCH_WARMUP_SECS` (1), `RAFTNODE_BENCH_MEASURE_SECS` (3),
//! `RAFTNODE_BENCH_LATENCY_OPS` (20000, the per-operation latency pass of the summary),
//! `RAFTNODE_BENCH_ROUNDS` (10) and `RAFTNODE_BENCH_ROUND_SECS` (0.2), the paired pass.
//! `RAFTNODE_BENCH_FIXED=P:N` runs only N proposals from P proposers on the library
//! cluster and exits: fixed work for instruction counts under
//! `valgrind --tool=callgrind` (docs/benchmarks.md).
//!
//! After the criterion groups, a plain-text summary: criterion's median ops/s per side
//! and proposer count; a paired pass that runs library and raw back to back, alternating
//! which goes first, and reports the median of the per-round ratios (the machine is
//! shared and noisy; back-to-back pairs see the same load); and 1-proposer round-trip
//! percentiles from individually timed operations.

mod common;

use common::Counter;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use futures::channel::oneshot;
use futures::executor::LocalPool;
use futures::stream::{FuturesUnordered, StreamExt};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use raftnode::{ChannelNetwork, Config, MemLogStore, Node};

/// Every command is these 16 bytes; cloning a static `Bytes` allocates nothing.
const COMMAND: Bytes = Bytes::from_static(b"0123456789abcdef");
/// Raft ticks are this far apart on both sides, so elections and heartbeats do not
/// show in the figures.
const TICK: Duration = Duration::from_millis(100);
/// Proposals in flight for the throughput group.
const PROPOSERS: [usize; 2] = [64, 256];
/// Longest wait for a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Operations run on each cluster before the first measurement.
const WARM_UP_OPS: u64 = 20_000;
/// Inputs a node drains before it handles a Ready (raftnode's `Config::max_batch`).
const MAX_BATCH: usize = 4_096;
/// Queue capacity per node (raftnode's `max_pending_messages` / `max_pending_requests`).
const QUEUE: usize = 65_536;
/// Snapshot / compaction cadence (raftnode's `SnapshotPolicy` defaults).
const COMPACT_EVERY: u64 = 10_000;
const TRAILING_ENTRIES: u64 = 1_000;

// ---------------------------------------------------------------------------------------
// The client model, shared by both sides.
// ---------------------------------------------------------------------------------------

/// A cluster the closed-loop client can propose to.
trait Proposer {
    /// Proposes `command` to the leader and resolves once it is applied there.
    fn propose(&self, command: Bytes) -> impl Future<Output = u64> + '_;
}

/// Runs `ops` proposals with `proposers` of them in flight at all times (bar the last
/// few), as `proposers` async tasks on the calling thread. Returns the elapsed time.
fn closed_loop<P: Proposer>(
    pool: &mut LocalPool,
    cluster: &P,
    proposers: usize,
    ops: u64,
) -> Duration {
    let issued = &Cell::new(0u64);
    let start = Instant::now();
    pool.run_until(async {
        let mut tasks: FuturesUnordered<_> = (0..proposers.max(1))
            .map(|_| async move {
                while issued.get() < ops {
                    issued.set(issued.get() + 1);
                    cluster.propose(COMMAND.clone()).await;
                }
            })
            .collect();
        while tasks.next().await.is_some() {}
    });
    start.elapsed()
}

/// One proposal in flight; returns every round trip, for percentiles.
fn round_trips<P: Proposer>(pool: &mut LocalPool, cluster: &P, ops: u64) -> Vec<Duration> {
    pool.run_until(async {
        let mut times = Vec::with_capacity(ops as usize);
        for _ in 0..ops {
            let start = Instant::now();
            cluster.propose(COMMAND.clone()).await;
            times.push(start.elapsed());
        }
        times
    })
}

// ---------------------------------------------------------------------------------------
// Side 1: the library.
// ---------------------------------------------------------------------------------------

/// Three raftnode nodes on `MemLogStore` and one `ChannelNetwork`, default config but
/// for the tick interval.
struct LibCluster {
    nodes: Vec<Node<Counter>>,
    leader: usize,
}

impl LibCluster {
    fn start() -> LibCluster {
        LibCluster::start_timed(true)
    }

    /// `timing`: `Config::proposal_timing` (on by default).
    fn start_timed(timing: bool) -> LibCluster {
        let network = ChannelNetwork::new();
        let logger = raftnode::discard_logger();
        let nodes: Vec<_> = (1..=3)
            .map(|id| {
                let mut config = Config::new(id);
                config.initial_voters = vec![1, 2, 3];
                config.tick_interval = TICK;
                config.proposal_timing = timing;
                Node::start(
                    config,
                    MemLogStore::new(),
                    Counter::default(),
                    network.transport(id),
                    &logger,
                )
                .expect("raftnode node starts")
            })
            .collect();
        nodes[0].campaign().expect("node 1 campaigns");
        let leader = nodes[0]
            .wait_for_leader(LEADER_DEADLINE)
            .expect("a leader is elected");
        LibCluster {
            leader: nodes
                .iter()
                .position(|n| n.id() == leader)
                .expect("the leader is one of the nodes"),
            nodes,
        }
    }

    fn commands_applied(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.read_stale(|sm| sm.commands).unwrap_or(0))
            .collect()
    }

    fn stop(self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

impl Proposer for LibCluster {
    async fn propose(&self, command: Bytes) -> u64 {
        let handle = self.nodes[self.leader]
            .propose(command)
            .expect("library proposal queued");
        handle.await.expect("library proposal applied")
    }
}

// ---------------------------------------------------------------------------------------
// Side 2: the raw raft-rs loop.
// ---------------------------------------------------------------------------------------

/// What a raw node's thread receives, on its one input channel.
enum Input {
    Message(Message),
    Propose(Bytes, oneshot::Sender<u64>),
    Stop,
}

/// Three threads, one `RawNode<MemStorage>` each, joined by crossbeam channels.
struct RawCluster {
    inputs: Vec<Sender<Input>>,
    threads: Vec<JoinHandle<u64>>,
    leader: usize,
}

impl RawCluster {
    fn start() -> RawCluster {
        let channels: Vec<(Sender<Input>, Receiver<Input>)> =
            (0..3).map(|_| bounded(QUEUE)).collect();
        let inputs: Vec<Sender<Input>> = channels.iter().map(|(tx, _)| tx.clone()).collect();
        let leader_id = Arc::new(AtomicU64::new(0));
        let threads = channels
            .into_iter()
            .enumerate()
            .map(|(i, (_, rx))| {
                let id = i as u64 + 1;
                let peers = inputs.clone();
                let leader_id = leader_id.clone();
                std::thread::Builder::new()
                    .name(format!("raw-raft-{id}"))
                    .spawn(move || RawLoop::new(id, rx, peers, leader_id).run())
                    .expect("raw node thread spawns")
            })
            .collect();
        // Node 1 campaigns at once; wait until it leads (it holds no log, so it wins).
        let deadline = Instant::now() + LEADER_DEADLINE;
        while leader_id.load(Ordering::Acquire) == 0 {
            assert!(
                Instant::now() < deadline,
                "no raw leader after {LEADER_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        RawCluster {
            inputs,
            threads,
            leader: leader_id.load(Ordering::Acquire) as usize - 1,
        }
    }

    fn stop(self) -> Vec<u64> {
        for tx in &self.inputs {
            let _ = tx.send(Input::Stop);
        }
        self.threads
            .into_iter()
            .map(|t| t.join().expect("raw node thread exits cleanly"))
            .collect()
    }
}

impl Proposer for RawCluster {
    async fn propose(&self, command: Bytes) -> u64 {
        let (done, outcome) = oneshot::channel();
        self.inputs[self.leader]
            .send(Input::Propose(command, done))
            .expect("raw leader running");
        outcome.await.expect("raw proposal applied")
    }
}

/// One raw node: the textbook raft-rs Ready loop, plus what raftnode does that a real
/// service needs too (batching drained proposals into one `MsgPropose`, a waiter per
/// proposal, log compaction).
struct RawLoop {
    raw: RawNode<MemStorage>,
    store: MemStorage,
    rx: Receiver<Input>,
    peers: Vec<Sender<Input>>,
    leader_id: Arc<AtomicU64>,
    batch: Vec<Entry>,
    batch_waiters: Vec<oneshot::Sender<u64>>,
    waiters: VecDeque<(u64, u64, oneshot::Sender<u64>)>,
    commands: u64,
    last_compact: u64,
    next_tick: Instant,
}

impl RawLoop {
    fn new(
        id: u64,
        rx: Receiver<Input>,
        peers: Vec<Sender<Input>>,
        leader_id: Arc<AtomicU64>,
    ) -> RawLoop {
        let store = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        // raftnode's defaults, as `Config::to_raft` passes them.
        let config = raft::Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: 256 << 20,
            max_committed_size_per_ready: 16 << 20,
            ..raft::Config::default()
        };
        let logger = raftnode::discard_logger();
        let mut raw = RawNode::new(&config, store.clone(), &logger).expect("raw node starts");
        if id == 1 {
            raw.campaign().expect("raw node 1 campaigns");
        }
        RawLoop {
            raw,
            store,
            rx,
            peers,
            leader_id,
            batch: Vec::new(),
            batch_waiters: Vec::new(),
            waiters: VecDeque::new(),
            commands: 0,
            last_compact: 0,
            next_tick: Instant::now() + TICK,
        }
    }

    /// Wait for input or the tick, drain (bounded), propose the batch, tick, handle every
    /// Ready. Returns the number of commands applied.
    fn run(mut self) -> u64 {
        loop {
            let timeout = self.next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(timeout) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return self.commands,
                Ok(input) => self.on_input(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            for _ in 0..MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Input::Stop) => return self.commands,
                    Ok(input) => self.on_input(input),
                    Err(_) => break,
                }
            }
            self.flush_proposals();
            let now = Instant::now();
            if now >= self.next_tick {
                self.raw.tick();
                self.next_tick = now + TICK;
            }
            while self.raw.has_ready() {
                self.handle_ready();
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Message(m) => {
                // Routine step errors (stale peers) are not fatal; none happen here.
                let _ = self.raw.step(m);
            }
            Input::Propose(data, done) => {
                let mut entry = Entry::default();
                entry.data = data;
                self.batch.push(entry);
                self.batch_waiters.push(done);
            }
            Input::Stop => unreachable!("handled by the loop"),
        }
    }

    /// Everything drained this round goes to raft as one `MsgPropose`; each proposal
    /// waits at `(index, term)`. Off the leader, the waiters are dropped (the client
    /// sees an error).
    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.batch);
        let waiters = std::mem::take(&mut self.batch_waiters);
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let n = entries.len() as u64;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        m.set_entries(entries.into());
        if self.raw.step(m).is_ok() {
            let last = self.raw.raft.raft_log.last_index();
            let term = self.raw.raft.term;
            for (index, done) in (last + 1 - n..).zip(waiters) {
                self.waiters.push_back((index, term, done));
            }
        }
    }

    /// snapshot → append → HardState → send → apply → advance → LightReady, as
    /// raftnode's driver does (MemStorage needs no sync).
    fn handle_ready(&mut self) {
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state == StateRole::Leader {
                self.leader_id.store(self.raw.raft.id, Ordering::Release);
            }
        }
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            self.store
                .wl()
                .apply_snapshot(snapshot)
                .expect("raw snapshot applies");
        }
        if !rd.entries().is_empty() {
            self.store.wl().append(rd.entries()).expect("raw append");
        }
        if let Some(hs) = rd.hs() {
            self.store.wl().set_hardstate(hs.clone());
        }
        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        if !rd.persisted_messages().is_empty() {
            self.send(rd.take_persisted_messages());
        }
        let committed = rd.take_committed_entries();
        self.apply(committed);
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.store.wl().mut_hard_state().commit = commit;
        }
        if !light.messages().is_empty() {
            self.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(committed);
        self.raw.advance_apply();
        self.maybe_compact();
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            // A full queue drops the message, as ChannelNetwork does; raft retransmits.
            let _ = self.peers[m.to as usize - 1].try_send(Input::Message(m));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                self.commands += 1;
            }
            self.resolve(entry.index, entry.term);
        }
    }

    /// Wakes the waiter at `index` if it proposed in `term`; drops older ones.
    fn resolve(&mut self, index: u64, term: u64) {
        while self.waiters.front().is_some_and(|(i, _, _)| *i <= index) {
            let (i, t, done) = self.waiters.pop_front().expect("front exists");
            if i == index && t == term {
                let _ = done.send(index);
            }
        }
    }

    /// Keeps the log bounded like raftnode's default `SnapshotPolicy` does.
    fn maybe_compact(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        if applied >= self.last_compact + COMPACT_EVERY {
            let compact_to = applied + 1 - TRAILING_ENTRIES;
            let first = raft::Storage::first_index(&self.store).expect("MemStorage never fails");
            if compact_to > first {
                self.store.wl().compact(compact_to).expect("raw compaction");
            }
            self.last_compact = applied;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Criterion groups and the summary.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Side {
    Library,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Library => "library",
            Side::Raw => "raw",
        }
    }
}

/// Every sample criterion took, `(operations, elapsed)`, per side and proposer count;
/// warm-up calls included (the summary keeps the last `samples`).
type Samples = BTreeMap<(Side, usize), Vec<(u64, Duration)>>;

struct Settings {
    samples: usize,
    warm_up: Duration,
    measure: Duration,
    latency_ops: u64,
    rounds: usize,
    round_secs: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            samples: env_or("RAFTNODE_BENCH_SAMPLES", 10usize).max(10),
            warm_up: Duration::from_secs_f64(env_or("RAFTNODE_BENCH_WARMUP_SECS", 1.0)),
            measure: Duration::from_secs_f64(env_or("RAFTNODE_BENCH_MEASURE_SECS", 3.0)),
            latency_ops: env_or("RAFTNODE_BENCH_LATENCY_OPS", 20_000u64).max(1),
            rounds: env_or("RAFTNODE_BENCH_ROUNDS", 10usize),
            round_secs: env_or("RAFTNODE_BENCH_ROUND_SECS", 0.2),
        }
    }
}

/// Benchmarks `proposers` in flight on both sides, library first, then raw.
fn bench_pair(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &RefCell<LocalPool>,
    lib: &LibCluster,
    raw: &RawCluster,
    proposers: usize,
    samples: &RefCell<Samples>,
) {
    let mut run = |side: Side, cluster: &dyn Fn(&mut LocalPool, u64) -> Duration| {
        group.bench_function(BenchmarkId::new(side.name(), proposers), |b| {
            b.iter_custom(|ops| {
                let elapsed = cluster(&mut pool.borrow_mut(), ops);
                samples
                    .borrow_mut()
                    .entry((side, proposers))
                    .or_default()
                    .push((ops, elapsed));
                elapsed
            })
        });
    };
    run(Side::Library, &|pool, ops| {
        closed_loop(pool, lib, proposers, ops)
    });
    run(Side::Raw, &|pool, ops| {
        closed_loop(pool, raw, proposers, ops)
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Median ops/s over the last `keep` samples (the measured ones).
fn median_rate(samples: &Samples, side: Side, proposers: usize, keep: usize) -> f64 {
    let all = samples
        .get(&(side, proposers))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let measured = &all[all.len().saturating_sub(keep)..];
    median(
        measured
            .iter()
            .map(|(ops, elapsed)| *ops as f64 / elapsed.as_secs_f64())
            .collect(),
    )
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Two clusters' rates measured back to back (library and raw, or the library with
/// and without proposal timing), `rounds` times, alternating which goes first, so both
/// see the same background load; per round, `ops` operations each.
struct Paired {
    proposers: usize,
    library: Vec<f64>,
    raw: Vec<f64>,
}

impl Paired {
    fn run<A: Proposer, B: Proposer>(
        pool: &mut LocalPool,
        lib: &A,
        raw: &B,
        proposers: usize,
        rounds: usize,
        ops: u64,
    ) -> Paired {
        let rate = |elapsed: Duration| ops as f64 / elapsed.as_secs_f64();
        let mut paired = Paired {
            proposers,
            library: Vec::with_capacity(rounds),
            raw: Vec::with_capacity(rounds),
        };
        for round in 0..rounds {
            if round % 2 == 0 {
                paired
                    .library
                    .push(rate(closed_loop(pool, lib, proposers, ops)));
                paired
                    .raw
                    .push(rate(closed_loop(pool, raw, proposers, ops)));
            } else {
                paired
                    .raw
                    .push(rate(closed_loop(pool, raw, proposers, ops)));
                paired
                    .library
                    .push(rate(closed_loop(pool, lib, proposers, ops)));
            }
        }
        paired
    }

    /// Median over rounds of library / raw (first / second).
    fn ratio(&self) -> f64 {
        median(
            self.library
                .iter()
                .zip(&self.raw)
                .map(|(lib, raw)| lib / raw)
                .collect(),
        )
    }
}

fn print_summary(
    settings: &Settings,
    samples: &Samples,
    paired: &[Paired],
    latencies: &[(Side, Vec<Duration>)],
) {
    println!();
    println!("== raftnode core benchmark: 3 in-memory nodes, 16-byte commands ==");
    println!(
        "criterion: median ops/s of the last {} samples; paired: {} rounds of library and raw back to back",
        settings.samples, settings.rounds
    );
    println!(
        "{:>9} | {:>13} | {:>13} | {:>9} | {:>13} | {:>13} | {:>12}",
        "proposers",
        "library ops/s",
        "raw ops/s",
        "lib/raw",
        "paired lib",
        "paired raw",
        "paired ratio"
    );
    for proposers in std::iter::once(1).chain(PROPOSERS) {
        let lib = median_rate(samples, Side::Library, proposers, settings.samples);
        let raw = median_rate(samples, Side::Raw, proposers, settings.samples);
        let (plib, praw, pratio) = paired
            .iter()
            .find(|p| p.proposers == proposers)
            .map(|p| (median(p.library.clone()), median(p.raw.clone()), p.ratio()))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        println!(
            "{proposers:>9} | {lib:>13.0} | {raw:>13.0} | {:>9.2} | {plib:>13.0} | {praw:>13.0} | {pratio:>12.2}",
            lib / raw
        );
    }
    println!();
    println!(
        "1-proposer round trip (µs), {} timed operations per side:",
        settings.latency_ops
    );
    println!(
        "{:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>16}",
        "side", "mean", "p50", "p90", "p99", "criterion median"
    );
    for (side, times) in latencies {
        let mut sorted = times.clone();
        sorted.sort();
        let mean =
            sorted.iter().map(Duration::as_secs_f64).sum::<f64>() / sorted.len() as f64 * 1e6;
        let criterion_us = 1e6 / median_rate(samples, *side, 1, settings.samples);
        println!(
            "{:>9} | {mean:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {criterion_us:>16.1}",
            side.name(),
            percentile_us(&sorted, 0.5),
            percentile_us(&sorted, 0.9),
            percentile_us(&sorted, 0.99),
        );
    }
}

/// Proposal timing's cost: one library cluster, with `Node::set_proposal_timing` on
/// and off in alternate rounds (which goes first alternates too), so both sides run on
/// the same threads and the same leader; `ops` per round. Two clusters side by side
/// differ by more than timing costs (an A/A run of two untimed clusters measured
/// 0.67 / 1.89 / 0.96), which is why it is one cluster.
fn timing_cost(pool: &mut LocalPool, settings: &Settings, ops: u64) {
    let lib = LibCluster::start();
    let leader = lib.nodes[lib.leader].clone();
    closed_loop(pool, &lib, 64, WARM_UP_OPS);
    // `RAFTNODE_BENCH_TIMING_AA=1`: both sides untimed, to see the pairing's own noise.
    let aa = std::env::var_os("RAFTNODE_BENCH_TIMING_AA").is_some();
    println!();
    println!(
        "proposal timing on against off{}: {} alternating rounds of {ops} operations, median ops/s",
        if aa { " (A/A: both off)" } else { "" },
        settings.rounds
    );
    println!(
        "{:>9} | {:>13} | {:>13} | {:>8}",
        "proposers", "timing on", "timing off", "on/off"
    );
    for proposers in std::iter::once(1).chain(PROPOSERS) {
        // A round of one proposer runs a tenth of the operations (it is slower).
        let n = if proposers == 1 { ops / 10 } else { ops }.max(1);
        let rate = |pool: &mut LocalPool, on: bool| {
            leader.set_proposal_timing(on && !aa);
            n as f64 / closed_loop(pool, &lib, proposers, n).as_secs_f64()
        };
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..settings.rounds.max(1) {
            if round % 2 == 0 {
                on.push(rate(pool, true));
                off.push(rate(pool, false));
            } else {
                off.push(rate(pool, false));
                on.push(rate(pool, true));
            }
        }
        let ratio = median(on.iter().zip(&off).map(|(a, b)| a / b).collect());
        println!(
            "{proposers:>9} | {:>13.0} | {:>13.0} | {ratio:>8.3}",
            median(on),
            median(off)
        );
    }
    leader.set_proposal_timing(true);
    lib.stop();
}

fn main() {
    // Fixed work for instruction counts (valgrind --tool=callgrind): `P:N` runs N
    // proposals from P proposers on the library cluster and exits.
    if let Ok(spec) = std::env::var("RAFTNODE_BENCH_FIXED") {
        let (p, n) = spec.split_once(':').expect("RAFTNODE_BENCH_FIXED=P:N");
        let (p, n): (usize, u64) = (p.parse().expect("P"), n.parse().expect("N"));
        // `RAFTNODE_BENCH_TIMING=off`: with `Config::proposal_timing` off.
        let timing = std::env::var("RAFTNODE_BENCH_TIMING").map_or(true, |v| v != "off");
        let lib = LibCluster::start_timed(timing);
        closed_loop(&mut LocalPool::new(), &lib, p, n);
        lib.stop();
        return;
    }
    let settings = Settings::from_env();
    // `RAFTNODE_BENCH_TIMING_ONLY=<ops per round>`: only the timing-cost pairs.
    if let Ok(ops) = std::env::var("RAFTNODE_BENCH_TIMING_ONLY") {
        let ops = ops
            .parse()
            .expect("RAFTNODE_BENCH_TIMING_ONLY=<ops per round>");
        timing_cost(&mut LocalPool::new(), &settings, ops);
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(settings.samples)
        .warm_up_time(settings.warm_up)
        .measurement_time(settings.measure)
        .configure_from_args();

    let lib = LibCluster::start();
    let raw = RawCluster::start();
    let pool = RefCell::new(LocalPool::new());
    closed_loop(&mut pool.borrow_mut(), &lib, 64, WARM_UP_OPS);
    closed_loop(&mut pool.borrow_mut(), &raw, 64, WARM_UP_OPS);
    let samples = RefCell::new(Samples::new());

    {
        let mut group = criterion.benchmark_group("round_trip");
        group
            .sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(1));
        bench_pair(&mut group, &pool, &lib, &raw, 1, &samples);
        group.finish();
    }
    {
        let mut group = criterion.benchmark_group("throughput");
        group
            .sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(1));
        for proposers in PROPOSERS {
            bench_pair(&mut group, &pool, &lib, &raw, proposers, &samples);
        }
        group.finish();
    }

    let pool = &mut pool.borrow_mut();
    let samples = samples.into_inner();
    let paired: Vec<Paired> = std::iter::once(1)
        .chain(PROPOSERS)
        .map(|proposers| {
            // Size rounds from criterion's estimate; a filtered run has none.
            let rate = median_rate(&samples, Side::Raw, proposers, settings.samples).max(
                median_rate(&samples, Side::Library, proposers, settings.samples),
            );
            let ops = if rate.is_finite() {
                (rate * settings.round_secs) as u64
            } else {
                20_000
            };
            Paired::run(pool, &lib, &raw, proposers, settings.rounds, ops.max(1))
        })
        .collect();
    let lib_times = round_trips(pool, &lib, settings.latency_ops);
    let raw_times = round_trips(pool, &raw, settings.latency_ops);
    let latencies = [(Side::Library, lib_times), (Side::Raw, raw_times)];
    print_summary(&settings, &samples, &paired, &latencies);

    let lib_applied = lib.commands_applied();
    lib.stop();
    let raw_applied = raw.stop();
    timing_cost(pool, &settings, 50_000);
    println!();
    println!("commands applied per node: library {lib_applied:?} (followers may trail), raw {raw_applied:?}");
    criterion.final_summary();
}
