//! The hostile-member fuzzer against simulated nodes (issue 13 item 8): seeded runs of
//! the simulator with hostile messages (src/testing/sim/hostile.rs) stepped into live
//! nodes next to the honest traffic and the usual faults. Every run must pass as a run
//! without them does: no panic, one leader per term, committed entries never lost or
//! changed, a linearizable history (no acknowledged write lost), recovery once faults
//! stop; and every message of a kind the checks must refuse is refused.
//!
//! Size a run with `RAFTNODE_HOSTILE_MESSAGES` (hostile messages in all; default 300,000
//! in release builds, 20,000 in debug builds; the soak is 10,000,000),
//! `RAFTNODE_HOSTILE_RATE` (per million steps, default 2,000,000: two per step) and
//! `RAFTNODE_HOSTILE_FIRST_SEED` (default 0). Replay one seed with
//! `RAFTNODE_HOSTILE_SEED=<seed> RAFTNODE_HOSTILE_RATE=<rate> cargo test --release
//! --all-features --test hostile_fuzz replay -- --nocapture` (add `RAFTNODE_SIM_TRACE=1`
//! for every event, hostile messages included). docs/hostile-fuzzing.md has the figures.
#![cfg(feature = "testing")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use common::env_u64;
use raftnode::testing::sim::{self, kv::KvWorkload, Mutation, SimConfig, SimFailure, SimReport};
use raftnode::Refusal;

fn config(seed: u64, rate: u64) -> SimConfig {
    SimConfig {
        hostile_per_million: rate,
        ..SimConfig::from_seed(seed)
    }
}

fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    let workload = KvWorkload {
        keys: 4,
        lease_reads: config.lease_reads,
    };
    sim::run(&workload, config)
}

/// Totals over the runs.
#[derive(Default)]
struct Totals {
    seeds: u64,
    messages: u64,
    passed: u64,
    operations: u64,
    completed: u64,
    by_mutation: BTreeMap<Mutation, u64>,
    refused: BTreeMap<Refusal, u64>,
}

impl Totals {
    fn add(&mut self, r: &SimReport) {
        self.seeds += 1;
        self.messages += r.hostile_messages;
        self.passed += r.hostile_passed;
        self.operations += r.operations;
        self.completed += r.completed;
        for (k, n) in &r.hostile_by_mutation {
            *self.by_mutation.entry(*k).or_default() += n;
        }
        for (k, n) in &r.hostile_refused {
            *self.refused.entry(*k).or_default() += n;
        }
    }
}

/// Runs seeds from `RAFTNODE_HOSTILE_FIRST_SEED` on every core until the runs together
/// stepped the requested number of hostile messages.
#[test]
fn hostile_members_cannot_break_simulated_nodes() {
    let default = if cfg!(debug_assertions) {
        20_000
    } else {
        300_000
    };
    let target = env_u64("RAFTNODE_HOSTILE_MESSAGES", default);
    let rate = env_u64("RAFTNODE_HOSTILE_RATE", 2_000_000);
    let first = env_u64("RAFTNODE_HOSTILE_FIRST_SEED", 0);
    assert!(rate > 0, "RAFTNODE_HOSTILE_RATE must be above 0");
    let next = AtomicU64::new(first);
    let messages = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) && messages.load(Ordering::Relaxed) < target {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    match run(&config(seed, rate)) {
                        Ok(report) => {
                            messages.fetch_add(report.hostile_messages, Ordering::Relaxed);
                            totals.lock().expect("not poisoned").add(&report);
                        }
                        Err(failure) => {
                            // Stop at the first failure: its replay command is the result.
                            stop.store(true, Ordering::Relaxed);
                            failures.lock().expect("not poisoned").push(failure);
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let totals = totals.into_inner().expect("not poisoned");
    let failures = failures.into_inner().expect("not poisoned");
    println!(
        "hostile fuzz: {} seeds from {first} (rate {rate} per million steps), {} hostile \
         messages in {:.1} s ({:.0} msgs/s), {} passed the checks, {} refused; {} client \
         operations checked linearizable ({} acknowledged)",
        totals.seeds,
        totals.messages,
        elapsed.as_secs_f64(),
        totals.messages as f64 / elapsed.as_secs_f64().max(1e-9),
        totals.passed,
        totals.messages - totals.passed,
        totals.operations,
        totals.completed,
    );
    println!("by mutation: {:?}", totals.by_mutation);
    println!("refused by reason: {:?}", totals.refused);
    for f in &failures {
        eprintln!("{f}\n");
    }
    assert!(failures.is_empty(), "{} seed(s) failed", failures.len());
    assert!(totals.messages >= target);
    // Every kind was made, and every kind of refusal the generator aims at was seen.
    assert_eq!(
        totals.by_mutation.len(),
        Mutation::ALL.len(),
        "{:?}",
        totals.by_mutation
    );
}

/// Without hostile traffic, a seed runs exactly as it did before the generator existed:
/// the generator draws from a stream of its own and is off by default.
#[test]
fn hostile_traffic_off_changes_nothing() {
    let seed = 11;
    let off = SimConfig {
        steps: 3_000,
        trace: true,
        ..SimConfig::from_seed(seed)
    };
    assert_eq!(off.hostile_per_million, 0, "off by default");
    let a = run(&off).unwrap_or_else(|f| panic!("{f}"));
    let b = run(&off).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a.hostile_messages, 0);
    assert_eq!(a.trace, b.trace, "a seed replays event for event");
    let on = SimConfig {
        hostile_per_million: 500_000,
        ..off.clone()
    };
    let c = run(&on).unwrap_or_else(|f| panic!("{f}"));
    let d = run(&on).unwrap_or_else(|f| panic!("{f}"));
    assert!(c.hostile_messages > 0);
    assert_eq!(c.trace, d.trace, "a hostile seed replays event for event");
    assert_ne!(a.trace, c.trace, "hostile messages show in the trace");
}

/// Replays one seed: `RAFTNODE_HOSTILE_SEED=<seed> RAFTNODE_HOSTILE_RATE=<rate>`.
#[test]
fn replay() {
    let Ok(seed) = std::env::var("RAFTNODE_HOSTILE_SEED") else {
        return;
    };
    let seed: u64 = seed
        .trim()
        .parse()
        .expect("RAFTNODE_HOSTILE_SEED is a number");
    let config = SimConfig {
        trace: std::env::var("RAFTNODE_SIM_TRACE").is_ok(),
        ..config(seed, env_u64("RAFTNODE_HOSTILE_RATE", 2_000_000))
    };
    match run(&config) {
        Ok(report) => {
            if let Some(trace) = &report.trace {
                println!("{trace}");
            }
            println!(
                "seed {seed} passed: {} hostile messages, {} passed the checks, refused {:?}",
                report.hostile_messages, report.hostile_passed, report.hostile_refused
            );
        }
        Err(failure) => panic!("{failure}"),
    }
}
