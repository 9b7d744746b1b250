//! Metrics export to Prometheus: a [`NodeCollector`] turns a node's [`Status`] into
//! Prometheus metric families on every scrape (docs/operations.md, "Metrics").
//!
//! raftnode keeps its counters itself (`Status::metrics`); the collector reads them when
//! the registry is gathered, so nothing is counted twice and an idle node costs nothing
//! between scrapes. The `prometheus` crate is the one raft-engine already uses, so the
//! export adds no crate to the dependency tree.

use std::collections::HashMap;

/// The `prometheus` crate this module builds on, for a `Registry` and `TextEncoder` of
/// the same version.
pub use prometheus;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
};

use crate::node::Node;
use crate::state_machine::StateMachine;
use crate::status::{Role, Status};

/// How one metric is read from a [`Status`].
enum Read {
    Counter(fn(&Status) -> u64),
    /// A counter kept in microseconds, exported in seconds.
    MicrosCounter(fn(&Status) -> u64),
    Gauge(fn(&Status) -> f64),
}

/// Every metric but the per-reason refusals: (name, help, how to read it).
const METRICS: &[(&str, &str, Read)] = &[
    (
        "raftnode_proposals_total",
        "Commands proposed on this node.",
        Read::Counter(|s| s.metrics.proposals),
    ),
    (
        "raftnode_proposal_batches_total",
        "Batches of proposed commands handed to raft.",
        Read::Counter(|s| s.metrics.proposal_batches),
    ),
    (
        "raftnode_proposals_failed_total",
        "Proposals that ended in an error.",
        Read::Counter(|s| s.metrics.proposals_failed),
    ),
    (
        "raftnode_slow_proposals_total",
        "Proposals slower than Config::slow_proposal from propose to returned.",
        Read::Counter(|s| s.proposal_timing.slow_proposals),
    ),
    (
        "raftnode_messages_dropped_total",
        "Peer messages dropped on a full queue.",
        Read::Counter(|s| s.metrics.messages_dropped),
    ),
    (
        "raftnode_elections_started_total",
        "Elections (and pre-elections) this node started.",
        Read::Counter(|s| s.metrics.elections_started),
    ),
    (
        "raftnode_elections_won_total",
        "Elections this node won.",
        Read::Counter(|s| s.metrics.elections_won),
    ),
    (
        "raftnode_elections_lost_total",
        "Elections this node started and lost.",
        Read::Counter(|s| s.metrics.elections_lost),
    ),
    (
        "raftnode_leader_changes_total",
        "Times the leader this node knows changed.",
        Read::Counter(|s| s.metrics.leader_changes),
    ),
    (
        "raftnode_snapshots_taken_total",
        "Snapshots this node took.",
        Read::Counter(|s| s.metrics.snapshots_taken),
    ),
    (
        "raftnode_snapshots_sent_total",
        "Snapshots this node sent to followers.",
        Read::Counter(|s| s.metrics.snapshots_sent),
    ),
    (
        "raftnode_snapshots_restored_total",
        "Snapshots from a leader this node restored.",
        Read::Counter(|s| s.metrics.snapshots_restored),
    ),
    (
        "raftnode_step_errors_total",
        "Peer messages refused before raft or dropped by it.",
        Read::Counter(|s| s.metrics.step_errors),
    ),
    (
        "raftnode_reads_served_total",
        "Reads served on this node.",
        Read::Counter(|s| s.metrics.reads_served),
    ),
    (
        "raftnode_followers_lost_entries_total",
        "Followers found to have lost entries they had acknowledged.",
        Read::Counter(|s| s.metrics.followers_lost_entries),
    ),
    (
        "raftnode_quiesced_total",
        "Times the group went quiet on this node.",
        Read::Counter(|s| s.metrics.quiesced),
    ),
    (
        "raftnode_checkpoints_compared_total",
        "Checkpoints at which this node compared its state machine digest with the leader's.",
        Read::Counter(|s| s.metrics.checkpoints_compared),
    ),
    (
        "raftnode_divergences_total",
        "Checkpoints at which this node's state machine digest differed from the leader's.",
        Read::Counter(|s| s.metrics.divergences),
    ),
    (
        "raftnode_checkpoints_ignored_total",
        "Empty entries with a context that is not a checkpoint marker, ignored.",
        Read::Counter(|s| s.metrics.checkpoints_ignored),
    ),
    (
        "raftnode_readies_total",
        "Readies handled.",
        Read::Counter(|s| s.metrics.readies),
    ),
    (
        "raftnode_syncs_total",
        "Log store syncs.",
        Read::Counter(|s| s.metrics.syncs),
    ),
    (
        "raftnode_entries_appended_total",
        "Log entries appended to the log store.",
        Read::Counter(|s| s.metrics.entries_appended),
    ),
    (
        "raftnode_entries_applied_total",
        "Committed entries applied to the state machine.",
        Read::Counter(|s| s.metrics.entries_applied),
    ),
    (
        "raftnode_requests_busy_total",
        "Requests refused as Busy because the request queue was full.",
        Read::Counter(|s| s.metrics.requests_busy),
    ),
    (
        "raftnode_election_backoff",
        "The factor on the randomized election timeout range: 1, more during a storm.",
        Read::Gauge(|s| s.metrics.election_backoff as f64),
    ),
    (
        "raftnode_leaderless_seconds_total",
        "Seconds this node spent knowing no leader, over the gaps that ended.",
        Read::MicrosCounter(|s| s.metrics.leaderless_us),
    ),
    (
        "raftnode_leaderless_gaps_total",
        "Gaps without a leader that ended; leaderless seconds / gaps = average election.",
        Read::Counter(|s| s.metrics.leaderless_gaps),
    ),
    (
        "raftnode_last_election_seconds",
        "How long this node's last election took (knowing no leader until it knew one).",
        Read::Gauge(|s| s.metrics.last_election_us as f64 / 1e6),
    ),
    (
        "raftnode_term",
        "Current term.",
        Read::Gauge(|s| s.term as f64),
    ),
    (
        "raftnode_commit_index",
        "Highest log index known committed.",
        Read::Gauge(|s| s.commit as f64),
    ),
    (
        "raftnode_applied_index",
        "Highest log index applied to the state machine.",
        Read::Gauge(|s| s.applied as f64),
    ),
    (
        "raftnode_last_index",
        "Last index in the log.",
        Read::Gauge(|s| s.last_index as f64),
    ),
    (
        "raftnode_first_index",
        "First index still in the log (after compaction).",
        Read::Gauge(|s| s.first_index as f64),
    ),
    (
        "raftnode_snapshot_index",
        "Index of the last snapshot.",
        Read::Gauge(|s| s.snapshot_index as f64),
    ),
    (
        "raftnode_is_leader",
        "1 while this node leads its group, else 0.",
        Read::Gauge(|s| f64::from(u8::from(s.role == Role::Leader))),
    ),
    (
        "raftnode_has_leader",
        "1 while this node knows a live leader, else 0.",
        Read::Gauge(|s| f64::from(u8::from(s.leader.is_some()))),
    ),
    (
        "raftnode_voters",
        "Voters in this node's configuration.",
        Read::Gauge(|s| s.voters.len() as f64),
    ),
    (
        "raftnode_learners",
        "Learners in this node's configuration.",
        Read::Gauge(|s| s.learners.len() as f64),
    ),
    (
        "raftnode_quiet",
        "1 while the group is quiet on this node, else 0.",
        Read::Gauge(|s| f64::from(u8::from(s.quiet))),
    ),
    (
        "raftnode_removed",
        "1 once this node was removed from its group, else 0.",
        Read::Gauge(|s| f64::from(u8::from(s.removed))),
    ),
];

const REFUSED: &str = "raftnode_refused_messages_total";
const REFUSED_HELP: &str = "Peer messages refused before raft, by reason.";
const STAGES: &str = "raftnode_proposal_stage_seconds";
const STAGES_HELP: &str =
    "Time proposals spent in each stage of their life, from the stage before, by stage.";
const STAGES_MAX: &str = "raftnode_proposal_stage_max_seconds";
const STAGES_MAX_HELP: &str = "The longest time a proposal spent in each stage, by stage.";
const TOTAL: &str = "raftnode_proposal_seconds";
const TOTAL_HELP: &str = "Time from propose to the response handed over, per proposal.";
const TOTAL_MAX: &str = "raftnode_proposal_max_seconds";
const TOTAL_MAX_HELP: &str = "The longest time from propose to the response handed over.";
const FINDINGS: &str = "raftnode_findings";
const FINDINGS_HELP: &str =
    "What Node::diagnose reports now, by kind (the number of findings of that kind).";

/// A Prometheus [`Collector`] for one node: register it in a `prometheus::Registry`, and
/// every gather reads the node's [`Status`] once and reports its counters and gauges,
/// labelled `node` (the node id) plus the constant labels given.
///
/// Metric names and units are listed in docs/operations.md ("Metrics"): counters end in
/// `_total`, indexes and terms are plain numbers, flags are 0 or 1. A stopped node
/// reports nothing.
///
/// # Examples
///
/// ```
/// # fn demo<M: raftnode::StateMachine>(node: raftnode::Node<M>) -> Result<(), Box<dyn std::error::Error>> {
/// use raftnode::export::prometheus::{Encoder, Registry, TextEncoder};
///
/// let registry = Registry::new();
/// registry.register(Box::new(raftnode::export::NodeCollector::new(node, &[("group", "1")])?))?;
/// let mut text = Vec::new();
/// TextEncoder::new().encode(&registry.gather(), &mut text)?;
/// # Ok(()) }
/// ```
pub struct NodeCollector<M: StateMachine> {
    node: Node<M>,
    labels: Vec<(String, String)>,
    descs: Vec<Desc>,
}

impl<M: StateMachine> NodeCollector<M> {
    /// A collector for `node`, with `labels` (name, value) on every metric besides
    /// `node`.
    ///
    /// # Errors
    ///
    /// A label name Prometheus refuses (or `node` given again).
    pub fn new(node: Node<M>, labels: &[(&str, &str)]) -> Result<Self, prometheus::Error> {
        let mut all: Vec<(String, String)> = vec![("node".into(), node.id().to_string())];
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let constant: HashMap<String, String> = all.iter().cloned().collect();
        if constant.len() != all.len() {
            return Err(prometheus::Error::Msg("a label name is given twice".into()));
        }
        let mut descs = Vec::with_capacity(METRICS.len() + 2);
        for (name, help, _) in METRICS {
            descs.push(Desc::new(
                name.to_string(),
                help.to_string(),
                Vec::new(),
                constant.clone(),
            )?);
        }
        descs.push(Desc::new(
            REFUSED.into(),
            REFUSED_HELP.into(),
            vec!["reason".into()],
            constant.clone(),
        )?);
        for (name, help, labels) in [
            (STAGES, STAGES_HELP, vec!["stage".into()]),
            (STAGES_MAX, STAGES_MAX_HELP, vec!["stage".into()]),
            (TOTAL, TOTAL_HELP, Vec::new()),
            (TOTAL_MAX, TOTAL_MAX_HELP, Vec::new()),
        ] {
            descs.push(Desc::new(
                name.into(),
                help.into(),
                labels,
                constant.clone(),
            )?);
        }
        descs.push(Desc::new(
            FINDINGS.into(),
            FINDINGS_HELP.into(),
            vec!["kind".into()],
            constant,
        )?);
        Ok(NodeCollector {
            node,
            labels: all,
            descs,
        })
    }

    fn metric(&self, extra: Option<(&str, String)>) -> Metric {
        let mut m = Metric::default();
        let pairs = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(extra);
        for (name, value) in pairs {
            let mut label = LabelPair::default();
            label.set_name(name.to_string());
            label.set_value(value);
            m.mut_label().push(label);
        }
        m
    }
}

/// The proposal timing: per stage a summary (quantiles, count, sum) and a max gauge,
/// and the same for the whole time from propose to returned; nothing until the node
/// timed a proposal.
fn stage_families<M: StateMachine>(c: &NodeCollector<M>, status: &Status) -> Vec<MetricFamily> {
    let timing = &status.proposal_timing;
    if timing.stages.is_empty() {
        return Vec::new();
    }
    let mut families = vec![
        family(STAGES, STAGES_HELP, MetricType::SUMMARY),
        family(STAGES_MAX, STAGES_MAX_HELP, MetricType::GAUGE),
        family(TOTAL, TOTAL_HELP, MetricType::SUMMARY),
        family(TOTAL_MAX, TOTAL_MAX_HELP, MetricType::GAUGE),
    ];
    let rows = timing
        .stages
        .iter()
        .map(|(s, l)| (Some(s.name()), l))
        .chain(std::iter::once((None, &timing.total)));
    for (stage, l) in rows {
        let label = || stage.map(|s| ("stage", s.to_string()));
        let mut m = c.metric(label());
        let mut sum = Summary::default();
        sum.set_sample_count(l.count);
        sum.set_sample_sum(l.sum.as_secs_f64());
        for (q, value) in [(0.5, l.p50), (0.9, l.p90), (0.99, l.p99)] {
            let mut quantile = Quantile::default();
            quantile.set_quantile(q);
            quantile.set_value(value.as_secs_f64());
            sum.mut_quantile().push(quantile);
        }
        m.set_summary(sum);
        let mut max = c.metric(label());
        let mut g = Gauge::default();
        g.set_value(l.max.as_secs_f64());
        max.set_gauge(g);
        let at = if stage.is_some() { 0 } else { 2 };
        families[at].mut_metric().push(m);
        families[at + 1].mut_metric().push(max);
    }
    families
}

fn counter(value: f64) -> Counter {
    let mut c = Counter::default();
    c.set_value(value);
    c
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

impl<M: StateMachine> Collector for NodeCollector<M> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(status) = self.node.status() else {
            return Vec::new();
        };
        let mut families = Vec::with_capacity(METRICS.len() + 2);
        for (name, help, read) in METRICS {
            let mut m = self.metric(None);
            let mut f = match read {
                Read::Counter(get) => {
                    m.set_counter(counter(get(&status) as f64));
                    family(name, help, MetricType::COUNTER)
                }
                Read::MicrosCounter(get) => {
                    m.set_counter(counter(get(&status) as f64 / 1e6));
                    family(name, help, MetricType::COUNTER)
                }
                Read::Gauge(get) => {
                    let mut g = Gauge::default();
                    g.set_value(get(&status));
                    m.set_gauge(g);
                    family(name, help, MetricType::GAUGE)
                }
            };
            f.mut_metric().push(m);
            families.push(f);
        }
        let mut refused = family(REFUSED, REFUSED_HELP, MetricType::COUNTER);
        for (reason, n) in &status.metrics.refused {
            let mut m = self.metric(Some(("reason", format!("{reason:?}"))));
            m.set_counter(counter(*n as f64));
            refused.mut_metric().push(m);
        }
        if !refused.get_metric().is_empty() {
            families.push(refused);
        }
        families.extend(stage_families(self, &status));
        let mut kinds: std::collections::BTreeMap<&'static str, u32> = Default::default();
        for f in &status.findings {
            *kinds.entry(f.kind.name()).or_default() += 1;
        }
        if !kinds.is_empty() {
            let mut findings = family(FINDINGS, FINDINGS_HELP, MetricType::GAUGE);
            for (kind, n) in kinds {
                let mut m = self.metric(Some(("kind", kind.to_string())));
                let mut g = Gauge::default();
                g.set_value(f64::from(n));
                m.set_gauge(g);
                findings.mut_metric().push(m);
            }
            families.push(findings);
        }
        families
    }
}

impl<M: StateMachine> std::fmt::Debug for NodeCollector<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}
