//! Per-proposal lifecycle timing: how long each proposal took to reach each stage of
//! its life, kept as histograms (docs/operations.md, "Proposal timing").
//!
//! A proposal is stamped when `Node::propose` is called, when the driver takes it off
//! the request queue, when its entry is written to the log store, when that write is
//! synced, when the leader sees it committed, when the state machine has applied it and
//! when its response is handed to the caller. Only proposals that are applied are timed
//! (a refused, dropped or unknown one is not). The stamps read the machine's clock
//! ([`Clock`]); they are observations, never inputs to a decision, and a host without a
//! wall clock (the simulator) proposes without a start stamp, which leaves the proposal
//! untimed.

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

/// The distribution of the time from `propose` to one [`Stage`], over the proposals
/// this node timed since it started.
///
/// Percentiles come from a histogram whose buckets are a quarter of an octave wide
/// (each about 19 % wider than the one below), interpolated within the bucket: a
/// percentile is within that width of the true value; `max` and `sum` are exact to the
/// microsecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTiming {
    /// Which stage.
    pub stage: Stage,
    /// Proposals timed.
    pub count: u64,
    /// Median time from `propose` to this stage.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
    /// All of them added up (`sum / count` is the mean).
    pub sum: Duration,
}

/// Per-proposal lifecycle timing of one node ([`crate::Status::proposal_timing`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProposalTiming {
    /// One entry per [`Stage`], in [`Stage::ALL`] order; empty until this node timed a
    /// proposal (it leads and `Config::proposal_timing` is on).
    pub stages: Vec<StageTiming>,
    /// Proposals that took longer than `Config::slow_proposal` from `propose` to
    /// returned (0 when that is `None`).
    pub slow_proposals: u64,
}

impl ProposalTiming {
    /// The timing of `stage`, if any proposal was timed.
    pub fn stage(&self, stage: Stage) -> Option<&StageTiming> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

/// Buckets below 4 µs are one microsecond wide; above, each octave `[2^e, 2^(e+1))`
/// has four. The last octave starts at 2^31 µs (about 36 minutes); anything longer
/// lands in its last bucket (and `max` keeps the true value).
const LINEAR: u64 = 4;
const TOP_OCTAVE: u32 = 31;
const BUCKETS: usize = (LINEAR + (TOP_OCTAVE as u64 - 1) * 4) as usize;

/// A log-linear histogram of microseconds: 124 `u32` counts (496 bytes), small enough
/// to keep six per timed replica (a host may run thousands; docs/multi-raft.md).
/// `hdrhistogram` would need about 25 KiB per histogram for this range.
#[derive(Clone)]
struct Histogram {
    buckets: [u32; BUCKETS],
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
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
        let slot = &mut self.buckets[bucket_of(us)];
        *slot = slot.saturating_add(1);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// The value below which a fraction `q` of the recorded ones fall, interpolated
    /// within its bucket and never above the maximum.
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (bucket, &c) in self.buckets.iter().enumerate() {
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

    fn summary(&self, stage: Stage) -> StageTiming {
        let us = Duration::from_micros;
        StageTiming {
            stage,
            count: self.count,
            p50: us(self.quantile(0.50)),
            p90: us(self.quantile(0.90)),
            p99: us(self.quantile(0.99)),
            max: us(self.max_us),
            sum: us(self.sum_us),
        }
    }
}

/// The clock of the stamps: `quanta`'s, which reads the TSC where it can (a third of
/// the cost of `std::time::Instant::now` on the machines we measured) and whose
/// `Instant` is a `u64` of nanoseconds.
pub(crate) type Clock = quanta::Instant;

/// A write the driver reports while timed proposals are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Entries up to the index were written to the log store.
    Appended,
    /// Everything written so far was synced.
    Synced,
    /// Entries up to the index are committed.
    Committed,
}

/// One timed proposal whose entry is in the log, not yet applied.
struct InFlight {
    index: u64,
    term: u64,
    proposed: Clock,
    queued: Clock,
    appended: Option<Clock>,
    synced: Option<Clock>,
    committed: Option<Clock>,
}

/// A replica's timing: the stamps of proposals in flight and the histograms. Boxed and
/// created on the first timed proposal, so followers and untimed replicas carry a
/// pointer only.
pub(crate) struct Timing {
    /// Start stamps of the proposals in the current batch, in the batch's order
    /// (`None` for one proposed without a start stamp).
    batch: Vec<Option<(Clock, Clock)>>,
    /// Timed proposals in the log, in index order.
    in_flight: VecDeque<InFlight>,
    histograms: [Histogram; 6],
    slow_after: Option<Duration>,
    slow: u64,
    /// When the last slow-proposal line was logged: at most one a second.
    slow_logged: Option<Clock>,
}

impl Timing {
    pub(crate) fn new(slow_after: Option<Duration>, batched: usize) -> Box<Timing> {
        Box::new(Timing {
            batch: vec![None; batched],
            in_flight: VecDeque::new(),
            histograms: Default::default(),
            slow_after,
            slow: 0,
            slow_logged: None,
        })
    }

    /// A proposal joined the batch (`proposed_at` from `Node::propose`, if stamped).
    pub(crate) fn queued(&mut self, proposed_at: Option<Clock>) {
        self.batch
            .push(proposed_at.map(|proposed| (proposed, Clock::now())));
    }

    /// The batch was proposed to raft as entries `first..` of `term`.
    pub(crate) fn proposed(&mut self, first: u64, term: u64) {
        for (index, stamps) in (first..).zip(self.batch.drain(..)) {
            if let Some((proposed, queued)) = stamps {
                self.in_flight.push_back(InFlight {
                    index,
                    term,
                    proposed,
                    queued,
                    appended: None,
                    synced: None,
                    committed: None,
                });
            }
        }
    }

    /// The batch was refused as a whole.
    pub(crate) fn batch_refused(&mut self) {
        self.batch.clear();
    }

    /// Whether the driver should stamp its writes: a timed proposal is in flight.
    pub(crate) fn wanted(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The driver wrote (`Appended`), synced (`Synced`, `up_to` unused) or saw
    /// committed (`Committed`) the entries up to `up_to`, at `at`.
    pub(crate) fn stamp(&mut self, stamp: Stamp, up_to: u64, at: Clock) {
        let end = match stamp {
            Stamp::Synced => self.in_flight.len(),
            _ => self.in_flight.partition_point(|p| p.index <= up_to),
        };
        // Newest first: stamps are taken in log order, so the first entry found
        // stamped has every older one stamped too.
        for p in self.in_flight.range_mut(..end).rev() {
            let (slot, due) = match stamp {
                Stamp::Appended => (&mut p.appended, true),
                Stamp::Synced => (&mut p.synced, p.appended.is_some()),
                Stamp::Committed => (&mut p.committed, true),
            };
            if !due {
                continue;
            }
            if slot.is_some() {
                break;
            }
            *slot = Some(at);
        }
    }

    /// Whether the entry at `index` of `term` is a timed proposal; drops the stamps of
    /// entries before it (their waiters were dropped).
    pub(crate) fn is_timed(&mut self, index: u64, term: u64) -> bool {
        while self.in_flight.front().is_some_and(|p| p.index < index) {
            self.in_flight.pop_front();
        }
        match self.in_flight.front() {
            Some(p) if p.index == index && p.term == term => true,
            Some(p) if p.index == index => {
                self.in_flight.pop_front();
                false
            }
            _ => false,
        }
    }

    /// The timed entry at `index` (checked with [`Timing::is_timed`]) was applied at
    /// `applied` and its response handed over at `returned`: records it.
    pub(crate) fn finished(
        &mut self,
        index: u64,
        applied: Clock,
        returned: Clock,
        logger: &Logger,
    ) {
        let Some(p) = self.in_flight.pop_front() else {
            return;
        };
        debug_assert_eq!(p.index, index);
        // A stamp the driver did not take (none should be missing) counts as the next.
        let committed = p.committed.unwrap_or(applied);
        let synced = p.synced.unwrap_or(committed);
        let appended = p.appended.unwrap_or(synced);
        let at = [p.queued, appended, synced, committed, applied, returned];
        for (h, t) in self.histograms.iter_mut().zip(at) {
            h.record(micros(t.saturating_duration_since(p.proposed)));
        }
        let total = returned.saturating_duration_since(p.proposed);
        if self.slow_after.is_none_or(|limit| total <= limit) {
            return;
        }
        self.slow += 1;
        if self
            .slow_logged
            .is_none_or(|last| returned.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            self.slow_logged = Some(returned);
            let mut from = p.proposed;
            let spent: Vec<(Stage, Duration)> = Stage::ALL
                .iter()
                .zip(at)
                .map(|(s, t)| {
                    let d = t.saturating_duration_since(from);
                    from = from.max(t);
                    (*s, d)
                })
                .collect();
            let (slowest, _) = spent
                .iter()
                .copied()
                .max_by_key(|(_, d)| *d)
                .expect("six stages");
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            warn!(logger, "slow proposal"; "index" => index, "total_ms" => ms(total),
                "slow_stage" => slowest.name(),
                "queued_ms" => ms(spent[0].1), "appended_ms" => ms(spent[1].1),
                "synced_ms" => ms(spent[2].1), "committed_ms" => ms(spent[3].1),
                "applied_ms" => ms(spent[4].1), "returned_ms" => ms(spent[5].1),
                "slow_so_far" => self.slow);
        }
    }

    /// Every proposal in flight ended without being applied (leadership lost).
    pub(crate) fn forget_all(&mut self) {
        self.in_flight.clear();
    }

    /// Proposals at or below `index` ended unknown (a snapshot covered them).
    pub(crate) fn forget_up_to(&mut self, index: u64) {
        while self.in_flight.front().is_some_and(|p| p.index <= index) {
            self.in_flight.pop_front();
        }
    }

    pub(crate) fn summary(&self) -> ProposalTiming {
        ProposalTiming {
            stages: Stage::ALL
                .iter()
                .zip(&self.histograms)
                .map(|(s, h)| h.summary(*s))
                .collect(),
            slow_proposals: self.slow,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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
    fn a_proposal_is_timed_through_every_stage_and_a_slow_one_is_counted() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut t = Timing::new(Some(Duration::from_millis(1)), 0);
        let start = Clock::now();
        t.queued(Some(start));
        t.queued(None);
        t.proposed(7, 2);
        assert!(t.wanted());
        let at = |ms| start + Duration::from_millis(ms);
        t.stamp(Stamp::Appended, 8, at(2));
        t.stamp(Stamp::Synced, 0, at(5));
        t.stamp(Stamp::Committed, 8, at(6));
        assert!(t.is_timed(7, 2));
        t.finished(7, at(7), at(8), &logger);
        assert!(!t.wanted(), "the untimed proposal at 8 has no stamps");
        let s = t.summary();
        assert_eq!(s.slow_proposals, 1);
        let synced = s.stage(Stage::Synced).expect("timed");
        assert_eq!((synced.count, synced.max), (1, Duration::from_millis(5)));
        assert_eq!(
            s.stage(Stage::Returned).unwrap().max,
            Duration::from_millis(8)
        );
    }

    #[test]
    fn an_entry_replaced_by_another_term_is_not_timed() {
        let mut t = Timing::new(None, 0);
        t.queued(Some(Clock::now()));
        t.queued(Some(Clock::now()));
        t.proposed(3, 1);
        assert!(!t.is_timed(3, 2), "another leader's entry took index 3");
        assert!(!t.is_timed(5, 2), "and 4");
        assert!(!t.wanted());
    }
}
