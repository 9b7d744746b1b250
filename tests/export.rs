//! Metrics export: `export::NodeCollector` in a Prometheus registry, its text output
//! parsed back and checked against each node's `Status` (docs/operations.md, "Metrics").

mod common;

use common::*;
use raftnode::export::prometheus::{Encoder, Registry, TextEncoder};
use raftnode::export::NodeCollector;
use raftnode::Role;

/// Scrapes `registry` as Prometheus text and parses it back.
fn scrape(registry: &Registry) -> prometheus_parse::Scrape {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .expect("encodes");
    let text = String::from_utf8(text).expect("utf-8");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of `metric` for node `id` (and `reason`, if given).
fn value(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    id: u64,
    reason: Option<&str>,
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("node") == Some(id.to_string().as_str())
                && s.labels.get("group") == Some("7")
                && s.labels.get("reason") == reason
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{metric}: not a counter or gauge: {other:?}"),
        })
}

/// Proves every node's collector reports its own status under its `node` label: the
/// counters, the indexes, who leads, and a refusal counted by reason; the text is valid
/// Prometheus exposition format.
#[test]
fn collectors_report_each_nodes_status_in_prometheus_text() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    for i in 0..10 {
        c.propose_ok(put(&format!("k{i}"), "v"));
    }
    // A heartbeat whose commit is past a follower's log is refused (`CommitPastLog`).
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let hb = heartbeat_past_log(leader, follower, c.status(leader).term);
    c.node(follower).mailbox().deliver(hb).expect("delivered");
    wait_until("the refusal is counted", || {
        c.status(follower).metrics.refused.values().sum::<u64>() >= 1
    });
    c.wait_applied(&[1, 2, 3], c.status(leader).commit);

    let registry = Registry::new();
    for id in 1..=3 {
        let collector = NodeCollector::new(c.node(id).clone(), &[("group", "7")]).expect("labels");
        registry.register(Box::new(collector)).expect("registers");
    }
    // The scrape and the statuses are read at different moments: compare until one
    // scrape matches the statuses read right after it (a heartbeat may land between).
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let scrape = scrape(&registry);
        let mismatch = (1..=3).find_map(|id| {
            let s = c.status(id);
            let is_leader = if s.role == Role::Leader { 1.0 } else { 0.0 };
            let want = [
                ("raftnode_is_leader", is_leader),
                ("raftnode_term", s.term as f64),
                ("raftnode_commit_index", s.commit as f64),
                ("raftnode_applied_index", s.applied as f64),
                ("raftnode_voters", 3.0),
                (
                    "raftnode_entries_applied_total",
                    s.metrics.entries_applied as f64,
                ),
            ];
            want.iter()
                .find(|(m, v)| value(&scrape, m, id, None) != Some(*v))
                .map(|(m, v)| {
                    format!(
                        "node {id}: {m} = {:?}, status says {v}",
                        value(&scrape, m, id, None)
                    )
                })
        });
        let Some(mismatch) = mismatch else {
            break;
        };
        assert!(std::time::Instant::now() < deadline, "{mismatch}");
        // Poll interval; bounded by `deadline`.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let scrape = scrape(&registry);
    assert!(value(&scrape, "raftnode_proposals_total", leader, None).unwrap() >= 10.0);
    assert!(
        value(
            &scrape,
            "raftnode_refused_messages_total",
            follower,
            Some("CommitPastLog")
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        scrape.docs.get("raftnode_term").map(String::as_str),
        Some("Current term.")
    );
    // The leader's proposal timing: a summary per stage (three quantiles, count, sum)
    // and a max gauge, the same for the whole; the followers proposed nothing and
    // export none.
    let timing = c.status(leader).proposal_timing;
    let rows = timing
        .stages
        .iter()
        .map(|(s, l)| (Some(s.name()), *l))
        .chain([(None, timing.total)]);
    for (stage, want) in rows {
        let (name, max_name) = match stage {
            Some(_) => (
                "raftnode_proposal_stage_seconds",
                "raftnode_proposal_stage_max_seconds",
            ),
            None => ("raftnode_proposal_seconds", "raftnode_proposal_max_seconds"),
        };
        let find = |metric: &str| {
            scrape.samples.iter().find(|s| {
                s.metric == metric
                    && s.labels.get("node") == Some(leader.to_string().as_str())
                    && s.labels.get("stage") == stage
            })
        };
        let summary = find(name).unwrap_or_else(|| panic!("no {name} for {stage:?}"));
        match &summary.value {
            prometheus_parse::Value::Summary(quantiles) => {
                let qs: Vec<f64> = quantiles.iter().map(|q| q.quantile).collect();
                assert_eq!(qs, [0.5, 0.9, 0.99], "{stage:?}");
                let p99 = quantiles[2].count;
                assert!(
                    (p99 - want.p99.as_secs_f64()).abs() < 1e-9,
                    "{stage:?}: p99 {p99}"
                );
            }
            other => panic!("{stage:?}: not a summary: {other:?}"),
        }
        let max = find(max_name).map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("not a gauge: {other:?}"),
        });
        assert_eq!(max, Some(want.max.as_secs_f64()), "{stage:?}");
    }
    assert!(!scrape.samples.iter().any(|s| {
        (s.metric.starts_with("raftnode_proposal_stage")
            || s.metric.starts_with("raftnode_proposal_seconds")
            || s.metric == "raftnode_proposal_max_seconds")
            && s.labels.get("node") == Some(follower.to_string().as_str())
    }));
    // A second collector for the same node and labels is refused by the registry.
    let again = NodeCollector::new(c.node(1).clone(), &[("group", "7")]).expect("labels");
    assert!(registry.register(Box::new(again)).is_err());
    assert!(NodeCollector::new(c.node(1).clone(), &[("node", "9")]).is_err());
}

/// Proves findings are exported as `raftnode_findings{kind}` while they hold and are
/// gone once healed: the survivor of a cluster that lost two of three voters.
#[test]
fn findings_are_exported_by_kind_while_they_hold() {
    let mut c = Cluster::new(3);
    c.wait_leader();
    let registry = Registry::new();
    registry
        .register(Box::new(
            NodeCollector::new(c.node(1).clone(), &[("group", "7")]).expect("collector"),
        ))
        .expect("registers");
    let no_quorum = |scrape: &prometheus_parse::Scrape| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "raftnode_findings" && s.labels.get("kind") == Some("no_quorum"))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("not a gauge: {other:?}"),
            })
    };
    c.kill(2);
    c.kill(3);
    wait_until("node 1 exports no_quorum", || {
        no_quorum(&scrape(&registry)) == Some(1.0)
    });
    c.start_node(2, &[1, 2, 3]);
    c.start_node(3, &[1, 2, 3]);
    c.wait_leader();
    wait_until("node 1 exports no finding", || {
        !scrape(&registry)
            .samples
            .iter()
            .any(|s| s.metric == "raftnode_findings")
    });
}
