//! Per-proposal lifecycle timing: how long each proposal spent in each stage of its
//! life, kept as histograms (docs/operations.md, "Proposal timing").
//!
//! A proposal is stamped when `Node::propose` is called, when the driver takes it off
//! the request queue, when its entry is written to the log store, when that write is
//! synced, when the leader sees it committed, when the state machine has applied it and
//! when its response is handed to the caller. Only proposals that are applied are timed
//! (a refused, dropped or unknown one is not).
//!
//! The stamps are cheap because most are shared: one per driver turn (queued), one per
//! Ready (appended, synced), one per batch of committed entries (committed). They are
//! kept once per run of entries that share them, not per entry, and the proposals of a
//! run are recorded in one weighted step. Applied and returned are stamped per entry
//! while the state machine is slow enough for it to matter (2 µs an entry or more);
//! below that, per batch, interpolated by the entry's place in it. The stamps read the
//! machine's clock ([`Tick`]); they are observations, never inputs to a decision, and a
//! host without a wall clock (the simulator) proposes without a start stamp, which
//! leaves the proposal untimed.

use std::collections::VecDeque;
use std::time::Duration;

use slog::{warn, Logger};

/// A stage of a proposal's life. Each is timed from the `propose` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The driver took the proposal off the node's request queue.
    Queued,
    /// Its entry was written to the log store (`LogStore::append` returned).
    Appended,
    /// That write was synced (`LogStore::sync` returned).
    Synced,
    /// The leader saw the entry committed (a quorum holds it).
    Committed,
    /// The state machine applied it (`StateMachine::apply` returned).
    Applied,
    /// Its response was handed to the caller's handle.
    Returned,
}

impl Stage {
    /// Every stage, in the order a proposal passes them.
    pub const ALL: [Stage; 6] = [
        Stage::Queued,
        Stage::Appended,
        Stage::Synced,
        Stage::Committed,
        Stage::Applied,
        Stage::Returned,
    ];

    /// The stage's name in logs and metric labels: `queued`, `appended`, ...
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Appended => "appended",
            Stage::Synced => "synced",
            Stage::Committed => "committed",
            Stage::Applied => "applied",
            Stage::Returned => "returned",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The distribution of one duration over the proposals this node timed since it
/// started: the time spent in one [`Stage`], or in all of them.
///
/// Percentiles come from a histogram whose buckets are a quarter of an octave wide
/// (each about 19 % wider than the one below), interpolated within the bucket: a
/// percentile is within that width of the true value; `max` and `sum` are exact to the
/// microsecond.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Proposals timed.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
    /// All of them added up (`sum / count` is the mean).
    pub sum: Duration,
}

/// Per-proposal lifecycle timing of one node ([`crate::Status::proposal_timing`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProposalTiming {
    /// The time proposals spent in each stage, from the stage before (from `propose`
    /// for [`Stage::Queued`]), in [`Stage::ALL`] order; empty until this node timed a
    /// proposal (it leads and `Config::proposal_timing` is on).
    pub stages: Vec<(Stage, Latency)>,
    /// The time from `propose` to returned.
    pub total: Latency,
    /// Proposals that took longer than `Config::slow_proposal` from `propose` to
    /// returned (0 when that is `None`).
    pub slow_proposals: u64,
}

impl ProposalTiming {
    /// The time spent in `stage`, if any proposal was timed.
    pub fn stage(&self, stage: Stage) -> Option<&Latency> {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, l)| l)
    }
}

/// Buckets below 4 µs are one microsecond wide; above, each octave `[2^e, 2^(e+1))`
/// has four. The last octave starts at 2^31 µs (about 36 minutes); anything longer
/// lands in its last bucket (and `max` keeps the true value).
const LINEAR: u64 = 4;
const TOP_OCTAVE: u32 = 31;
const BUCKETS: usize = (LINEAR + (TOP_OCTAVE as u64 - 1) * 4) as usize;

/// A log-linear histogram of microseconds over 124 buckets, holding counts only for the
/// span of buckets it has used (`low..low + counts.len()`): a host may run thousands of
/// timed replicas (docs/multi-raft.md), most of whose stages stay within a few buckets,
/// so a histogram is 56 bytes and a `u32` per bucket of its span (at most 496 bytes).
/// `hdrhistogram` would need about 25 KiB per histogram for this range.
#[derive(Clone, Default)]
struct Histogram {
    counts: Vec<u32>,
    /// The bucket `counts[0]` counts.
    low: usize,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let octave = (63 - us.leading_zeros()).min(TOP_OCTAVE);
    let sub = if octave == TOP_OCTAVE && us >= 1 << (TOP_OCTAVE + 1) {
        3
    } else {
        (us >> (octave - 2)) & 3
    };
    (LINEAR + u64::from(octave - 2) * 4 + sub) as usize
}

/// The bucket's lowest value and its width, in microseconds.
fn bucket_range(bucket: usize) -> (u64, u64) {
    let b = bucket as u64;
    if b < LINEAR {
        return (b, 1);
    }
    let octave = (b - LINEAR) / 4 + 2;
    let sub = (b - LINEAR) % 4;
    ((4 + sub) << (octave - 2), 1 << (octave - 2))
}

impl Histogram {
    fn record(&mut self, us: u64) {
        self.record_n(us, 1);
    }

    /// Records `n` proposals that spent the same time.
    fn record_n(&mut self, us: u64, n: u32) {
        let bucket = bucket_of(us);
        match self.counts.get_mut(bucket.wrapping_sub(self.low)) {
            Some(slot) => *slot = slot.saturating_add(n),
            None => self.widen_to(bucket, n),
        }
        self.count += u64::from(n);
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(u64::from(n)));
        self.max_us = self.max_us.max(us);
    }

    /// Counts `n` in `bucket`, outside the span so far: the span grows to hold it.
    #[cold]
    fn widen_to(&mut self, bucket: usize, n: u32) {
        debug_assert!(bucket < BUCKETS);
        if self.counts.is_empty() {
            self.low = bucket;
            self.counts.push(n);
        } else if bucket < self.low {
            let below = self.low - bucket;
            self.counts.splice(0..0, std::iter::repeat_n(0, below));
            self.low = bucket;
            self.counts[0] = n;
        } else {
            self.counts.resize(bucket - self.low + 1, 0);
            self.counts[bucket - self.low] = n;
        }
    }

    /// The value below which a fraction `q` of the recorded ones fall, interpolated
    /// within its bucket and never above the maximum.
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (bucket, &c) in (self.low..).zip(&self.counts) {
            let c = u64::from(c);
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let (low, width) = bucket_range(bucket);
                let within = (rank - seen) as f64 / c as f64;
                let value = low + (within * width as f64) as u64;
                return value.min(self.max_us);
            }
            seen += c;
        }
        self.max_us
    }

    fn summary(&self) -> Latency {
        let us = Duration::from_micros;
        Latency {
            count: self.count,
            p50: us(self.quantile(0.50)),
            p90: us(self.quantile(0.90)),
            p99: us(self.quantile(0.99)),
            max: us(self.max_us),
            sum: us(self.sum_us),
        }
    }
}

/// A raw reading of the stamps' clock: `quanta`'s, which reads the TSC where it can
/// (a few nanoseconds, against 23 for `std::time::Instant::now` on the machine of
/// docs/benchmarks.md) and the OS clock elsewhere. Only differences mean anything;
/// they are scaled to nanoseconds when recorded.
pub(crate) type Tick = u64;

static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();

fn clock() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The clock now (never 0, which the stamps use for "not yet").
pub(crate) fn tick() -> Tick {
    clock().raw().max(1)
}

/// Reads the clock once, so that the first timed proposal does not pay for its
/// calibration (about a millisecond, at most 200 ms by quanta's documentation).
pub(crate) fn warm_up() {
    let _ = clock();
}

/// What the driver reports while timed proposals are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Entries up to `last` were written to the log store.
    Appended { last: u64 },
    /// Everything written so far was synced.
    Synced,
    /// Committed entries `first..=last` are about to be applied.
    Applying { first: u64, last: u64 },
    /// Those entries were applied and their responses handed over.
    Applied,
}

/// Below this average time per entry (apply and hand-over), applied and returned are
/// stamped per batch rather than per entry: two clock reads would cost more than the
/// error they remove.
const PER_ENTRY_FROM_NS: u64 = 2_000;

/// One timed proposal whose entry is in the log, not yet applied: its index and its
/// `propose` stamp. The stamps it shares with the rest of its batch are in its [`Run`].
#[derive(Clone, Copy)]
struct InFlight {
    index: u64,
    proposed: Tick,
}

/// Log entries `first..=last` of one term that share their stamps: a batch the driver
/// proposed in one turn, split where a later stamp covered only part of it. Keeping
/// the shared stamps once per run rather than once per entry is what makes timing
/// cheap at hundreds of proposals a batch. [`Tick`]s; 0 is "not stamped".
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    last: u64,
    term: u64,
    queued: Tick,
    appended: Tick,
    synced: Tick,
    committed: Tick,
}

/// The batch of committed entries being applied.
struct ApplyBatch {
    first: u64,
    last: u64,
    started: u64,
    /// How many entries at the front of `in_flight` were applied in this batch and
    /// wait for its end to be stamped (the batch is stamped as a whole).
    waiting: usize,
}

/// A replica's timing: the stamps of proposals in flight and the histograms. Boxed and
/// created on the first timed proposal, so followers and untimed replicas carry a
/// pointer only.
pub(crate) struct Timing {
    clock: &'static quanta::Clock,
    /// Microseconds per 2^32 ticks of `clock`, rounded up: a tick difference becomes
    /// microseconds in one multiplication.
    us_per_2_32_ticks: u64,
    /// Start stamps of the proposals in the current batch, in the batch's order
    /// (`None` for one proposed without a start stamp).
    batch: Vec<Option<Tick>>,
    /// Timed proposals in the log, in index order.
    in_flight: VecDeque<InFlight>,
    /// The runs the entries of `in_flight` belong to, in index order, disjoint; each
    /// entry of `in_flight` is in one (a run may have none left).
    runs: VecDeque<Run>,
    /// The apply batch under way, if timed entries are in flight.
    applying: Option<ApplyBatch>,
    /// Stamp applied and returned per entry (the state machine is slow).
    per_entry: bool,
    stages: [Histogram; 6],
    total: Histogram,
    slow_after_ns: Option<u64>,
    slow: u64,
    /// When the last slow-proposal line was logged: at most one a second.
    slow_logged: Option<Tick>,
}

impl Timing {
    pub(crate) fn new(slow_after: Option<Duration>, batched: usize) -> Box<Timing> {
        Timing::with_clock(clock(), slow_after, batched)
    }

    /// As [`Timing::new`], on `clock` (the unit tests' mock clock). The stamps the
    /// handles take (`tick`) must come from the same clock.
    fn with_clock(
        clock: &'static quanta::Clock,
        slow_after: Option<Duration>,
        batched: usize,
    ) -> Box<Timing> {
        Box::new(Timing {
            clock,
            us_per_2_32_ticks: clock.delta_as_nanos(0, 1 << 32).div_ceil(1_000),
            batch: vec![None; batched],
            in_flight: VecDeque::new(),
            runs: VecDeque::new(),
            applying: None,
            per_entry: false,
            stages: Default::default(),
            total: Histogram::default(),
            slow_after_ns: slow_after.map(nanos),
            slow: 0,
            slow_logged: None,
        })
    }

    /// This timing's clock now (never 0).
    fn now(&self) -> Tick {
        self.clock.raw().max(1)
    }

    /// Nanoseconds from `start` to `end` (0 if `end` is not later).
    fn ns(&self, start: Tick, end: Tick) -> u64 {
        self.clock.delta_as_nanos(start, end)
    }

    /// Whole microseconds from `start` to `end` (0 if `end` is not later), for a
    /// histogram.
    fn us(&self, start: Tick, end: Tick) -> u64 {
        let ticks = u128::from(end.saturating_sub(start));
        ((ticks * u128::from(self.us_per_2_32_ticks)) >> 32) as u64
    }

    /// A proposal joined the batch (`proposed_at` from `Node::propose`, if stamped).
    pub(crate) fn queued(&mut self, proposed_at: Option<Tick>) {
        self.batch.push(proposed_at);
    }

    /// The batch was proposed to raft as entries `first..` of `term`: the driver took
    /// them off its queue in this turn.
    pub(crate) fn proposed(&mut self, first: u64, term: u64) {
        let queued = self.now();
        let batch = std::mem::take(&mut self.batch);
        // A leader's indexes only grow: anything from `first` on was overwritten.
        self.truncate_from(first);
        let before = self.in_flight.len();
        for (index, proposed) in (first..).zip(&batch) {
            let Some(proposed) = *proposed else {
                continue;
            };
            let proposed = proposed.min(queued);
            self.stages[0].record(self.us(proposed, queued));
            self.in_flight.push_back(InFlight { index, proposed });
        }
        if self.in_flight.len() > before {
            self.runs.push_back(Run {
                first,
                last: first + batch.len() as u64 - 1,
                term,
                queued,
                appended: 0,
                synced: 0,
                committed: 0,
            });
        }
        // Keep the allocation for the next batch.
        self.batch = batch;
        self.batch.clear();
    }

    /// The batch was refused as a whole.
    pub(crate) fn batch_refused(&mut self) {
        self.batch.clear();
    }

    /// Whether the driver should report its writes: a timed proposal is in flight.
    pub(crate) fn wanted(&self) -> bool {
        !self.in_flight.is_empty() || self.applying.is_some()
    }

    pub(crate) fn stamp(&mut self, stamp: Stamp, logger: &Logger) {
        match stamp {
            Stamp::Appended { last } => {
                let at = self.now();
                // Stamps come in log order: the first run found stamped has every
                // older one stamped.
                let end = self.split_after(last);
                for r in self.runs.range_mut(..end).rev() {
                    if r.appended != 0 {
                        break;
                    }
                    r.appended = at;
                }
            }
            Stamp::Synced => {
                let at = self.now();
                for r in self.runs.iter_mut().rev() {
                    if r.appended == 0 {
                        continue;
                    }
                    if r.synced != 0 {
                        break;
                    }
                    r.synced = at;
                }
            }
            Stamp::Applying { first, last } => {
                let at = self.now();
                let from = self.runs.partition_point(|r| r.committed != 0);
                let to = self.split_after(last).max(from);
                for k in from..to {
                    self.runs[k].committed = at;
                    self.record_shared(k);
                }
                self.applying = Some(ApplyBatch {
                    first,
                    last,
                    started: at,
                    waiting: 0,
                });
            }
            Stamp::Applied => self.batch_applied(logger),
        }
    }

    /// Splits the run holding both `last` and a later entry after `last`; returns how
    /// many runs start at or before `last`.
    fn split_after(&mut self, last: u64) -> usize {
        let end = self.runs.partition_point(|r| r.first <= last);
        if let Some(k) = end.checked_sub(1) {
            let r = self.runs[k];
            if r.last > last {
                self.runs[k].last = last;
                self.runs.insert(
                    k + 1,
                    Run {
                        first: last + 1,
                        ..r
                    },
                );
            }
        }
        end
    }

    /// Records appended, synced and committed for the timed entries of the run at
    /// `k`, just committed: one weighted record for all of them.
    fn record_shared(&mut self, k: usize) {
        let r = self.runs[k];
        let from = self.in_flight.partition_point(|p| p.index < r.first);
        let to = self.in_flight.partition_point(|p| p.index <= r.last);
        let Ok(n @ 1..) = u32::try_from(to - from) else {
            return;
        };
        let spent_ns = r.shared_stages(self);
        for (h, ns) in self.stages[1..4].iter_mut().zip(spent_ns) {
            h.record_n(ns / 1_000, n);
        }
    }

    /// The run holding `index`, if any.
    fn run_of(&self, index: u64) -> Option<Run> {
        let k = self.runs.partition_point(|r| r.last < index);
        self.runs.get(k).filter(|r| r.first <= index).copied()
    }

    /// Forgets entries from `index` on, and the runs holding only those.
    fn truncate_from(&mut self, index: u64) {
        while self.in_flight.back().is_some_and(|p| p.index >= index) {
            self.in_flight.pop_back();
        }
        while let Some(r) = self.runs.back_mut() {
            if r.first < index {
                r.last = r.last.min(index - 1);
                break;
            }
            self.runs.pop_back();
        }
    }

    /// Drops the runs before the oldest entry in flight.
    fn trim_runs(&mut self) {
        match self.in_flight.front() {
            None => self.runs.clear(),
            Some(p) => {
                while self.runs.front().is_some_and(|r| r.last < p.index) {
                    self.runs.pop_front();
                }
            }
        }
    }

    /// The entry at `index` of `term` was applied. `Some` asks the caller to stamp it
    /// per entry: call [`Timing::returned`] once its response is handed over.
    pub(crate) fn applied(&mut self, index: u64, term: u64) -> Option<u64> {
        let waiting = self.applying.as_ref().map_or(0, |b| b.waiting);
        while self.in_flight.get(waiting).is_some_and(|p| p.index < index) {
            // Its waiter was dropped: another entry took its place.
            self.in_flight.remove(waiting);
        }
        let p = self.in_flight.get(waiting)?;
        if p.index != index {
            return None;
        }
        // The entry's run is nearly always the oldest.
        let run_term = match self.runs.front() {
            Some(r) if r.first <= index && index <= r.last => Some(r.term),
            _ => self.run_of(index).map(|r| r.term),
        };
        if run_term != Some(term) {
            self.in_flight.remove(waiting);
            return None;
        }
        match &mut self.applying {
            Some(batch) if !self.per_entry => {
                batch.waiting += 1;
                None
            }
            _ => Some(self.now()),
        }
    }

    /// The response of the entry stamped applied at `applied` (by [`Timing::applied`])
    /// was handed over just now.
    pub(crate) fn returned(&mut self, applied: Tick, logger: &Logger) {
        let returned = self.now();
        let waiting = self.applying.as_ref().map_or(0, |b| b.waiting);
        if let Some(p) = self.in_flight.remove(waiting) {
            self.finish(p, applied, returned, logger);
        }
        self.trim_runs();
    }

    /// The apply batch ended: stamps its waiting entries by their place in it, and
    /// chooses how to stamp the next one.
    fn batch_applied(&mut self, logger: &Logger) {
        let Some(batch) = self.applying.take() else {
            return;
        };
        let ended = self.now().max(batch.started);
        let n = (batch.last + 1).saturating_sub(batch.first).max(1);
        let step = (ended - batch.started) / n;
        // Entries next to each other mostly spent the same whole microseconds applying:
        // (microseconds, entries) is recorded once per change.
        let mut same: Option<(u64, u32)> = None;
        let mut k = 0;
        for i in 0..batch.waiting {
            let p = self.in_flight[i];
            while self.runs.get(k).is_some_and(|r| r.last < p.index) {
                k += 1;
            }
            let run = self.runs.get(k).copied();
            let committed = run
                .filter(|r| r.committed != 0)
                .map_or(batch.started, |r| r.committed);
            let place = (p.index + 1).saturating_sub(batch.first).min(n);
            let at = if place == n {
                ended
            } else {
                batch.started + step * place
            };
            let us = self.us(committed, at);
            same = match same {
                Some((v, c)) if v == us && c < u32::MAX => Some((v, c + 1)),
                Some((v, c)) => {
                    self.stages[4].record_n(v, c);
                    Some((us, 1))
                }
                None => Some((us, 1)),
            };
            self.total.record(self.us(p.proposed, at));
            if self.is_slow(p.proposed, at) {
                if let Some(run) = run {
                    self.log_slow(p, run, at, at, logger);
                }
            }
        }
        if let Some((v, c)) = same {
            self.stages[4].record_n(v, c);
        }
        // In a batch stamped as a whole, applied and returned are one stamp.
        self.stages[5].record_n(0, u32::try_from(batch.waiting).unwrap_or(u32::MAX));
        self.in_flight.drain(..batch.waiting);
        self.trim_runs();
        self.per_entry = self.ns(0, step) >= PER_ENTRY_FROM_NS;
    }

    fn finish(&mut self, p: InFlight, applied: Tick, returned: Tick, logger: &Logger) {
        let run = self.run_of(p.index);
        let committed = match run {
            Some(r) if r.committed != 0 => r.committed,
            _ => applied,
        };
        self.stages[4].record(self.us(committed, applied));
        self.stages[5].record(self.us(applied, returned));
        self.total.record(self.us(p.proposed, returned));
        if self.is_slow(p.proposed, returned) {
            if let Some(run) = run {
                self.log_slow(p, run, applied, returned, logger);
            }
        }
    }

    fn is_slow(&mut self, proposed: Tick, returned: Tick) -> bool {
        let slow = self
            .slow_after_ns
            .is_some_and(|limit| self.ns(proposed, returned) > limit);
        self.slow += u64::from(slow);
        slow
    }

    /// Logs a slow proposal, at most once a second.
    fn log_slow(&mut self, p: InFlight, run: Run, applied: Tick, returned: Tick, logger: &Logger) {
        if self
            .slow_logged
            .is_some_and(|last| self.ns(last, returned) < 1_000_000_000)
        {
            return;
        }
        self.slow_logged = Some(returned);
        let [appended, synced, committed_in] = run.shared_stages(self);
        let committed = if run.committed == 0 {
            applied
        } else {
            run.committed
        };
        let spent = [
            self.ns(p.proposed, run.queued),
            appended,
            synced,
            committed_in,
            self.ns(committed, applied),
            self.ns(applied, returned),
        ];
        let slowest = Stage::ALL
            .iter()
            .zip(spent)
            .max_by_key(|(_, ns)| *ns)
            .map(|(s, _)| *s)
            .expect("six stages");
        let ms = |ns: u64| (ns / 1_000) as f64 / 1e3;
        warn!(logger, "slow proposal"; "index" => p.index,
            "total_ms" => ms(self.ns(p.proposed, returned)),
            "slow_stage" => slowest.name(),
            "queued_ms" => ms(spent[0]), "appended_ms" => ms(spent[1]),
            "synced_ms" => ms(spent[2]), "committed_ms" => ms(spent[3]),
            "applied_ms" => ms(spent[4]), "returned_ms" => ms(spent[5]),
            "slow_so_far" => self.slow);
    }

    /// Every proposal in flight ended without being applied (leadership lost).
    pub(crate) fn forget_all(&mut self) {
        self.in_flight.clear();
        self.runs.clear();
        self.applying = None;
    }

    /// Proposals at or below `index` ended unknown (a snapshot covered them).
    pub(crate) fn forget_up_to(&mut self, index: u64) {
        while self.in_flight.front().is_some_and(|p| p.index <= index) {
            self.in_flight.pop_front();
        }
        self.trim_runs();
    }

    pub(crate) fn summary(&self) -> ProposalTiming {
        ProposalTiming {
            stages: Stage::ALL
                .iter()
                .zip(&self.stages)
                .map(|(s, h)| (*s, h.summary()))
                .collect(),
            total: self.total.summary(),
            slow_proposals: self.slow,
        }
    }
}

impl Run {
    /// Nanoseconds spent reaching appended, synced and committed, each from the stage
    /// before; a stamp the driver did not take (none should be missing) counts as the
    /// next one's.
    fn shared_stages(&self, t: &Timing) -> [u64; 3] {
        let committed = if self.committed == 0 {
            self.queued
        } else {
            self.committed
        };
        let synced = if self.synced == 0 {
            committed
        } else {
            self.synced
        };
        let appended = if self.appended == 0 {
            synced
        } else {
            self.appended
        };
        [
            t.ns(self.queued, appended),
            t.ns(appended, synced),
            t.ns(synced, committed),
        ]
    }
}

/// Whole nanoseconds of `d` (saturating), without `as_nanos`'s 128-bit arithmetic.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            1 << 20,
            1 << 31,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "bucket of {us} went down");
            let (low, width) = bucket_range(b);
            assert!(
                low <= us && us < low + width,
                "{us} not in [{low}, {})",
                low + width
            );
            last = b;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of((1 << 32) - 1), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_a_bucket_width() {
        let mut h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (q, exact) in [(0.5, 5_000f64), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact < 0.19,
                "p{q}: {got} against {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.max_us, 10_000);
        assert_eq!(h.count, 10_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn a_histogram_holds_only_the_span_it_used_and_widens_either_way() {
        let mut h = Histogram::default();
        assert!(h.counts.is_empty());
        h.record_n(1_000, 3);
        assert_eq!(h.counts.len(), 1, "one bucket used");
        h.record(5);
        h.record(100_000);
        assert_eq!(h.low, bucket_of(5));
        assert_eq!(h.counts.len(), bucket_of(100_000) - bucket_of(5) + 1);
        assert_eq!(h.count, 5);
        let p20 = h.quantile(0.2);
        assert!(
            (5..=6).contains(&p20),
            "p20 {p20}: the lowest, below the first span"
        );
        let p60 = h.quantile(0.6);
        assert!((896..=1_024).contains(&p60), "p60 {p60} in 1,000's bucket");
        assert_eq!(h.quantile(1.0), 100_000);
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A timing on a mock clock (its raw readings are nanoseconds), and the clock's
    /// handle to move time on: no test sleeps.
    fn mocked(slow_after: Option<Duration>) -> (Box<Timing>, std::sync::Arc<quanta::Mock>) {
        let (clock, mock) = quanta::Clock::mock();
        mock.increment(1_000_000);
        (
            Timing::with_clock(Box::leak(Box::new(clock)), slow_after, 0),
            mock,
        )
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_proposal_is_timed_through_every_stage_and_a_slow_one_is_counted() {
        let (mut t, clock) = mocked(Some(Duration::from_millis(1)));
        t.queued(Some(t.now()));
        t.queued(None);
        t.proposed(7, 2);
        assert!(t.wanted());
        t.stamp(Stamp::Appended { last: 8 }, &logger());
        clock.increment(3 * MS); // the disk
        t.stamp(Stamp::Synced, &logger());
        clock.increment(2 * MS); // the followers
        t.stamp(Stamp::Applying { first: 7, last: 8 }, &logger());
        t.per_entry = true;
        let applied = t.applied(7, 2).expect("stamped per entry");
        t.returned(applied, &logger());
        assert!(t.applied(8, 2).is_none(), "8 is not timed");
        t.stamp(Stamp::Applied, &logger());
        assert!(!t.wanted());
        let s = t.summary();
        assert_eq!(s.slow_proposals, 1);
        let synced = s.stage(Stage::Synced).expect("timed");
        assert_eq!((synced.count, synced.max), (1, Duration::from_millis(3)));
        assert_eq!(
            s.stage(Stage::Committed).unwrap().max,
            Duration::from_millis(2)
        );
        assert_eq!(s.total.max, Duration::from_millis(5));
        assert_eq!(s.total.count, 1);
    }

    #[test]
    fn entries_of_a_fast_batch_are_stamped_by_their_place_in_it() {
        let (mut t, clock) = mocked(None);
        for _ in 0..4 {
            t.queued(Some(t.now()));
        }
        t.proposed(1, 1);
        t.stamp(Stamp::Appended { last: 4 }, &logger());
        t.stamp(Stamp::Synced, &logger());
        t.stamp(Stamp::Applying { first: 1, last: 4 }, &logger());
        for i in 1..=4 {
            assert!(t.applied(i, 1).is_none(), "stamped with the batch");
        }
        clock.increment(8 * MS); // the batch's apply: 2 ms an entry
        t.stamp(Stamp::Applied, &logger());
        let s = t.summary();
        let applied = s.stage(Stage::Applied).unwrap();
        assert_eq!(applied.count, 4);
        assert_eq!(
            applied.max,
            Duration::from_millis(8),
            "the last entry ends the batch"
        );
        assert_eq!(
            applied.sum,
            Duration::from_millis(2 + 4 + 6 + 8),
            "each at its place"
        );
        assert_eq!(s.stage(Stage::Returned).unwrap().max, Duration::ZERO);
        assert!(
            t.per_entry,
            "2 ms an entry: the next batch is stamped per entry"
        );
    }

    #[test]
    fn a_batch_written_and_committed_in_parts_gets_each_part_its_own_stamps() {
        let (mut t, clock) = mocked(None);
        for _ in 0..4 {
            t.queued(Some(t.now()));
        }
        t.proposed(1, 1);
        t.stamp(Stamp::Appended { last: 2 }, &logger());
        clock.increment(MS);
        t.stamp(Stamp::Appended { last: 4 }, &logger());
        t.stamp(Stamp::Synced, &logger());
        clock.increment(MS);
        t.stamp(Stamp::Applying { first: 1, last: 2 }, &logger());
        for i in 1..=2 {
            assert!(t.applied(i, 1).is_none(), "stamped with the batch");
        }
        t.stamp(Stamp::Applied, &logger());
        assert!(t.wanted(), "3 and 4 are still in flight");
        clock.increment(2 * MS);
        t.stamp(Stamp::Applying { first: 3, last: 4 }, &logger());
        for i in 3..=4 {
            assert!(t.applied(i, 1).is_none(), "stamped with the batch");
        }
        t.stamp(Stamp::Applied, &logger());
        assert!(!t.wanted());
        let s = t.summary();
        let sum = |stage| {
            let l = s.stage(stage).copied().expect("timed");
            assert_eq!(l.count, 4, "{stage}");
            l.sum
        };
        let ms = Duration::from_millis;
        assert_eq!(
            sum(Stage::Appended),
            ms(1 + 1),
            "3 and 4 written 1 ms later"
        );
        assert_eq!(sum(Stage::Synced), ms(1 + 1), "1 and 2 waited for the sync");
        assert_eq!(sum(Stage::Committed), ms(1 + 1 + 3 + 3));
        assert_eq!(s.total.sum, ms(2 + 2 + 4 + 4));
        assert_eq!(s.total.max, ms(4));
    }

    #[test]
    fn a_batch_proposed_again_at_the_same_index_replaces_the_old_one() {
        // Entries 5 and 6 of term 1 were overwritten before this replica saw its
        // leadership end; it leads again in term 2 and proposes at 5.
        let (mut t, _clock) = mocked(None);
        t.queued(Some(t.now()));
        t.queued(Some(t.now()));
        t.proposed(5, 1);
        t.queued(Some(t.now()));
        t.proposed(5, 2);
        t.stamp(Stamp::Appended { last: 5 }, &logger());
        t.stamp(Stamp::Synced, &logger());
        t.stamp(Stamp::Applying { first: 5, last: 5 }, &logger());
        assert!(t.applied(5, 2).is_none(), "stamped with the batch");
        t.stamp(Stamp::Applied, &logger());
        assert_eq!(t.summary().total.count, 1, "term 2's entry 5 is timed");
        assert!(!t.wanted(), "term 1's entry 6 is gone with it");
    }

    #[test]
    fn an_entry_replaced_by_another_term_is_not_timed() {
        let (mut t, _clock) = mocked(None);
        t.queued(Some(t.now()));
        t.queued(Some(t.now()));
        t.proposed(3, 1);
        t.per_entry = true;
        assert!(
            t.applied(3, 2).is_none(),
            "another leader's entry took index 3"
        );
        assert!(t.applied(5, 2).is_none(), "and 4");
        assert!(!t.wanted());
        assert_eq!(t.summary().total.count, 0);
    }
}
