//! Many groups against one, in memory: three `GroupHost`s in one process (standing for
//! three nodes), measured side by side in one run.
//!
//! - **A**: 64 three-member groups, 4 proposers each (256 in flight in all), every
//!   proposal to its group's leader; the leaders spread evenly over the three hosts.
//! - **B**: 1 three-member group with 256 proposers, on three hosts of its own, set up
//!   the same way.
//! - **C** (reference): 1 group of three `Node::start` nodes, 256 proposers.
//!
//! The client model is the one of `benches/cluster.rs`: one client thread (this one)
//! runs every proposer as an async task on a `futures` `LocalPool`; a task loops
//! "propose a 16-byte command to its group's leader, await the handle" until the round
//! ends. Rounds alternate which of A and B goes first; C runs last in each.
//!
//! Printed: per round the ops/s of each side; medians per side; the median of the
//! per-round ratios A/B; CPU time of the whole process per operation (from
//! `/proc/self/stat`, summed over the rounds) and proposals per batch on the leaders
//! (`MetricsSnapshot::proposals / proposal_batches` over the measured rounds).
//!
//! Knobs, all optional: `RAFTNODE_GROUPS_ROUNDS` (10), `RAFTNODE_GROUPS_ROUND_SECS` (1),
//! `RAFTNODE_GROUPS_THREADS` (`HostConfig::threads` of every host; default the number
//! of cores), `RAFTNODE_GROUPS_GROUPS` (64) and `RAFTNODE_GROUPS_PROPOSERS` (256 in
//! all, shared evenly by A's groups), `RAFTNODE_GROUPS_ONLY=a|b|c` (run that side
//! alone, for `perf record`).

mod common;

use common::Counter;

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::LocalPool;
use futures::stream::{FuturesUnordered, StreamExt};
use raftnode::{ChannelNetwork, Config, GroupHost, HostConfig, MemLogStore, Node};

/// Every command is these 16 bytes; cloning a static `Bytes` allocates nothing.
const COMMAND: Bytes = Bytes::from_static(b"0123456789abcdef");
/// Ticks this far apart, so elections and heartbeats do not show in the figures.
const TICK: Duration = Duration::from_millis(100);
/// Longest wait for an election or a leadership transfer.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Each side runs this long before the first measured round.
const WARM_UP: Duration = Duration::from_millis(500);

fn config(id: u64) -> Config {
    let mut config = Config::new(id);
    config.initial_voters = vec![1, 2, 3];
    config.tick_interval = TICK;
    config
}

/// One side: the groups' members (`members[g][i]` is node `i + 1` of group `g`), the
/// hosts they run on (none for `Node::start`), and how many proposers each group's
/// leader gets.
struct Side {
    name: &'static str,
    hosts: Vec<GroupHost>,
    members: Vec<Vec<Node<Counter>>>,
    leaders: Vec<Node<Counter>>,
    proposers_per_group: usize,
}

impl Side {
    /// `groups` groups on three new hosts of `threads` threads each; group `g`'s
    /// leader is placed on host `g % 3`.
    fn hosted(
        name: &'static str,
        groups: u64,
        threads: usize,
        proposers_per_group: usize,
    ) -> Result<Side, Box<dyn std::error::Error>> {
        let logger = raftnode::discard_logger();
        let mut host_config = HostConfig::default();
        host_config.threads = threads;
        let hosts: Vec<GroupHost> = (0..3)
            .map(|_| GroupHost::start(host_config.clone(), &logger))
            .collect::<Result<_, _>>()?;
        let mut members = Vec::new();
        for group in 1..=groups {
            // Each group needs its own network for now (docs/multi-raft.md).
            let network = ChannelNetwork::new();
            let nodes = (1..=3u64)
                .zip(&hosts)
                .map(|(id, host)| {
                    let store = MemLogStore::new();
                    host.start_group(
                        group,
                        config(id),
                        store,
                        Counter::default(),
                        network.transport(id),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            members.push(nodes);
        }
        Side::placed(name, hosts, members, proposers_per_group)
    }

    /// One group of three `Node::start` nodes.
    fn started(name: &'static str, proposers: usize) -> Result<Side, Box<dyn std::error::Error>> {
        let logger = raftnode::discard_logger();
        let network = ChannelNetwork::new();
        let nodes = (1..=3u64)
            .map(|id| {
                let store = MemLogStore::new();
                Node::start(
                    config(id),
                    store,
                    Counter::default(),
                    network.transport(id),
                    &logger,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Side::placed(name, Vec::new(), vec![nodes], proposers)
    }

    /// Makes node `g % 3 + 1` lead group `g`: it campaigns; if another won, that one
    /// transfers leadership to it.
    fn placed(
        name: &'static str,
        hosts: Vec<GroupHost>,
        members: Vec<Vec<Node<Counter>>>,
        proposers_per_group: usize,
    ) -> Result<Side, Box<dyn std::error::Error>> {
        for (g, nodes) in members.iter().enumerate() {
            nodes[g % 3].campaign()?;
        }
        let mut leaders = Vec::with_capacity(members.len());
        for (g, nodes) in members.iter().enumerate() {
            let want = &nodes[g % 3];
            let deadline = Instant::now() + LEADER_DEADLINE;
            while want.leader() != Some(want.id()) {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name}: group {} has no leader on node {}",
                        g + 1,
                        want.id()
                    )
                    .into());
                }
                if let Some(other) = nodes.iter().find(|n| n.leader() == Some(n.id())) {
                    other.transfer_leader(want.id(), LEADER_DEADLINE)?;
                }
                // Poll interval; bounded by the deadline above.
                std::thread::sleep(Duration::from_millis(2));
            }
            leaders.push(want.clone());
        }
        Ok(Side {
            name,
            hosts,
            members,
            leaders,
            proposers_per_group,
        })
    }

    /// How many groups each of the three nodes leads now.
    fn leaders_per_node(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for nodes in &self.members {
            for (i, node) in nodes.iter().enumerate() {
                counts[i] += usize::from(node.leader() == Some(node.id()));
            }
        }
        counts
    }

    /// Runs every proposer for `length`; returns the operations done (each
    /// proposer finishes the one in flight at the end) and the time taken.
    fn closed_loop(&self, pool: &mut LocalPool, length: Duration) -> (u64, Duration) {
        let done = &Cell::new(0u64);
        let start = Instant::now();
        let end = start + length;
        pool.run_until(async {
            let mut tasks: FuturesUnordered<_> = self
                .leaders
                .iter()
                .flat_map(|leader| std::iter::repeat_n(leader, self.proposers_per_group))
                .map(|leader| async move {
                    while Instant::now() < end {
                        let handle = leader.propose(COMMAND.clone()).expect("proposal queued");
                        handle.await.expect("proposal applied");
                        done.set(done.get() + 1);
                    }
                })
                .collect();
            while tasks.next().await.is_some() {}
        });
        (done.get(), start.elapsed())
    }

    /// `(proposals, proposal_batches)` summed over the leaders.
    fn batches(&self) -> (u64, u64) {
        self.leaders.iter().fold((0, 0), |(p, b), leader| {
            let m = leader.status().expect("leader answers status").metrics;
            (p + m.proposals, b + m.proposal_batches)
        })
    }

    fn stop(self) {
        if self.hosts.is_empty() {
            for node in self.members.iter().flatten() {
                node.kill();
            }
        }
        self.hosts.iter().for_each(GroupHost::shutdown);
    }
}

/// User + system CPU time of the whole process so far (fields 14 and 15 of
/// `/proc/self/stat`, in clock ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let mut fields = after_name
        .split_whitespace()
        .skip(11)
        .map(str::parse::<u64>);
    let (user, system) = (fields.next()?.ok()?, fields.next()?.ok()?);
    Some(Duration::from_millis((user + system) * 10))
}

/// What one side measured over all rounds.
#[derive(Default)]
struct Tally {
    rates: Vec<f64>,
    ops: u64,
    cpu: Option<Duration>,
    proposals: u64,
    batches: u64,
}

impl Tally {
    fn round(&mut self, side: &Side, pool: &mut LocalPool, length: Duration) -> f64 {
        let (proposals, batches) = side.batches();
        let cpu = process_cpu();
        let (ops, elapsed) = side.closed_loop(pool, length);
        self.cpu = match (cpu, process_cpu()) {
            (Some(before), Some(after)) => Some(self.cpu.unwrap_or_default() + (after - before)),
            _ => None,
        };
        let (p, b) = side.batches();
        self.proposals += p - proposals;
        self.batches += b - batches;
        self.ops += ops;
        let rate = ops as f64 / elapsed.as_secs_f64();
        self.rates.push(rate);
        rate
    }

    fn report(&self, side: &Side) {
        let cpu_per_op = self.cpu.map_or("n/a".to_string(), |cpu| {
            format!("{:.2} µs", cpu.as_secs_f64() * 1e6 / self.ops as f64)
        });
        println!(
            "{:>4} | {:>6} | {:>9} | {:>12.0} | {:>11} | {:>17.1}",
            side.name,
            side.leaders.len(),
            side.leaders.len() * side.proposers_per_group,
            median(&self.rates),
            cpu_per_op,
            self.proposals as f64 / self.batches.max(1) as f64
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} does not parse"))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = env_or("RAFTNODE_GROUPS_ROUNDS", 10);
    let length = Duration::from_secs_f64(env_or("RAFTNODE_GROUPS_ROUND_SECS", 1.0));
    let threads: usize = env_or("RAFTNODE_GROUPS_THREADS", HostConfig::default().threads);
    let groups: u64 = env_or("RAFTNODE_GROUPS_GROUPS", 64);
    let proposers: usize = env_or("RAFTNODE_GROUPS_PROPOSERS", 256);
    let only = std::env::var("RAFTNODE_GROUPS_ONLY").ok();
    let per_group = (proposers / groups as usize).max(1);

    let sides = [
        Side::hosted("A", groups, threads, per_group)?,
        Side::hosted("B", 1, threads, proposers)?,
        Side::started("C", proposers)?,
    ];
    let run: Vec<&Side> = sides
        .iter()
        .filter(|s| {
            only.as_deref()
                .is_none_or(|o| o.eq_ignore_ascii_case(s.name))
        })
        .collect();
    println!("== many groups against one, in memory: 3 hosts × {threads} threads per hosted side, 16-byte commands ==");
    for side in &sides {
        let spread = side.leaders_per_node();
        println!(
            "{}: {} group(s), leaders on nodes 1/2/3: {}/{}/{}; host thread loads: {:?}",
            side.name,
            side.members.len(),
            spread[0],
            spread[1],
            spread[2],
            side.hosts
                .iter()
                .map(GroupHost::thread_loads)
                .collect::<Vec<_>>()
        );
    }

    let pool = &mut LocalPool::new();
    for side in &run {
        side.closed_loop(pool, WARM_UP);
    }
    let mut tallies: Vec<Tally> = run.iter().map(|_| Tally::default()).collect();
    let mut ratios = Vec::new();
    println!(
        "{rounds} rounds of {:.1} s per side; ops/s per round:",
        length.as_secs_f64()
    );
    for round in 0..rounds {
        // A and B swap order every round; C, the reference, runs last.
        let mut order: Vec<usize> = (0..run.len()).collect();
        if round % 2 == 1 && run.len() == 3 {
            order.swap(0, 1);
        }
        let mut line = format!("round {:>2}:", round + 1);
        let mut rates = [f64::NAN; 3];
        for i in order {
            rates[i] = tallies[i].round(run[i], pool, length);
        }
        for (side, rate) in run.iter().zip(rates) {
            line += &format!(" {} {rate:>9.0}", side.name);
        }
        if run.len() == 3 {
            ratios.push(rates[0] / rates[1]);
            line += &format!("  A/B {:.3}", rates[0] / rates[1]);
        }
        println!("{line}");
    }
    println!();
    println!(
        "{:>4} | {:>6} | {:>9} | {:>12} | {:>11} | {:>17}",
        "side", "groups", "proposers", "median ops/s", "CPU per op", "proposals / batch"
    );
    for (side, tally) in run.iter().zip(&tallies) {
        tally.report(side);
    }
    if !ratios.is_empty() {
        println!("median of per-round A/B: {:.3}", median(&ratios));
    }
    let spread: Vec<[usize; 3]> = sides.iter().map(Side::leaders_per_node).collect();
    println!("leaders on nodes 1/2/3 at the end: {spread:?} (A, B, C)");
    for side in sides {
        side.stop();
    }
    Ok(())
}
