//! Per-proposal lifecycle timing (`Status::proposal_timing`, docs/operations.md,
//! "Proposal timing"): every applied proposal is timed through its six stages on the
//! leader that proposed it, a slow disk shows in the `synced` stage and in the
//! slow-proposal log line, and with timing off nothing is kept.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::slow::SlowSyncStore;
use common::*;
use raftnode::{ChannelNetwork, Config, MemLogStore, Node, Role, Stage, StartError};
use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// Proves every proposal that returned `Ok` was timed once per stage on the leader,
/// that the stages add up to the whole (each proposal's six stage times sum to its
/// time from propose to returned, to the microsecond each stage is rounded to), and
/// that followers, which proposed nothing, time nothing.
#[test]
fn every_stage_is_timed_once_and_they_add_up_on_the_leader_only() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    // 200 proposals, 50 in flight at a time, so batches hold many entries.
    propose_in_flight(c.node(leader), "k", 200, 50);
    let s = c.status(leader);
    assert_eq!(s.role, Role::Leader, "the leader changed during the test");
    let timing = &s.proposal_timing;
    let stages: Vec<Stage> = timing.stages.iter().map(|(s, _)| *s).collect();
    assert_eq!(stages, Stage::ALL);
    for (stage, l) in timing
        .stages
        .iter()
        .chain([(Stage::Returned, timing.total)].iter())
    {
        assert_eq!(l.count, 200, "{stage}: every proposal timed once");
        assert!(
            l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
            "{stage}: {l:?}"
        );
        assert!(l.sum >= l.max);
    }
    let parts: Duration = timing.stages.iter().map(|(_, l)| l.sum).sum();
    let whole = timing.total.sum;
    let rounding = Duration::from_micros(6 * 200);
    assert!(
        parts <= whole + rounding && whole <= parts + rounding,
        "stages add up to {parts:?}, the proposals took {whole:?}"
    );
    assert!(timing.total.max > Duration::ZERO);
    assert_eq!(timing.slow_proposals, 0, "slow_proposal is off by default");
    for id in (1..=3).filter(|id| *id != leader) {
        assert!(
            c.status(id).proposal_timing.stages.is_empty(),
            "follower {id} timed proposals it never made"
        );
    }
}

/// Keeps the message and key-values of every warning.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Serializer for Line {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push_str(&format!(" {key}={val}"));
        Ok(())
    }
}

impl Drain for Warnings {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if record.level() <= slog::Level::Warning {
            let mut line = Line(record.msg().to_string());
            let _ = record.kv().serialize(record, &mut line);
            let _ = values.serialize(record, &mut line);
            self.0.lock().expect("not poisoned").push(line.0);
        }
        Ok(())
    }
}

/// The value of `key=` in a captured line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()
}

/// Proves a slow disk is seen where it is: with the one voter's sync taking 60 ms,
/// the time from appended to synced is at least that, every proposal counts as slow
/// (`slow_proposal` 20 ms), and the slow-proposal line names `synced` as the slow
/// stage, with the time spent there.
#[test]
fn a_slow_disk_shows_in_the_synced_stage_and_the_slow_proposal_log() {
    let delay = Arc::new(AtomicU64::new(0));
    let store = SlowSyncStore {
        inner: MemLogStore::new(),
        delay_ms: delay.clone(),
    };
    let mut config = test_config(1, &[1]);
    config.slow_proposal = Some(Duration::from_millis(20));
    let warnings = Warnings::default();
    let logger = slog::Logger::root(warnings.clone().fuse(), slog::o!());
    let network = ChannelNetwork::new();
    let node = Node::start(config, store, Kv::default(), network.transport(1), &logger)
        .expect("node starts");
    wait_until("node 1 leads", || {
        node.status().is_ok_and(|s| s.role == Role::Leader)
    });
    delay.store(60, Ordering::Relaxed);
    for i in 0..5 {
        node.propose(put(&format!("k{i}"), "v"))
            .and_then(|mut h| h.wait_timeout(DEADLINE))
            .expect("applied");
    }
    let timing = node.status().expect("status").proposal_timing;
    let in_sync = timing.stage(Stage::Synced).expect("timed").p50;
    assert!(
        in_sync >= Duration::from_millis(40),
        "appended to synced took {in_sync:?} at the median, the disk 60 ms"
    );
    assert_eq!(timing.slow_proposals, 5);
    let lines = warnings.0.lock().expect("not poisoned").clone();
    let slow: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("slow proposal"))
        .collect();
    assert!(!slow.is_empty(), "no slow-proposal line in {lines:?}");
    assert_eq!(field(slow[0], "slow_stage"), Some("synced"), "{}", slow[0]);
    let synced_ms: f64 = field(slow[0], "synced_ms")
        .expect("synced_ms")
        .parse()
        .expect("ms");
    assert!(synced_ms >= 60.0, "{}", slow[0]);
    assert!(slow.len() < 5, "at most one line a second: {slow:?}");
    node.shutdown();
}

/// Proves `proposal_timing = false` keeps no histograms and a zero `slow_proposal` is
/// refused at start.
#[test]
fn timing_off_keeps_nothing_and_a_zero_slow_proposal_is_refused() {
    let c = Cluster::with_config(1, |c| c.proposal_timing = false);
    c.wait_leader();
    for i in 0..10 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    assert!(c.status(1).proposal_timing.stages.is_empty());

    let mut config: Config = test_config(1, &[1]);
    config.slow_proposal = Some(Duration::ZERO);
    let network = ChannelNetwork::new();
    let err = Node::start(
        config,
        MemLogStore::new(),
        Kv::default(),
        network.transport(1),
        &logger(),
    )
    .expect_err("refused");
    assert!(
        matches!(&err, StartError::Config(e) if e.to_string().contains("slow_proposal")),
        "{err}"
    );
}
