//! Many Raft groups in one process: three `GroupHost`s (one per simulated node), each on
//! a fixed pool of threads, running `GROUPS` three-member groups in memory. Prints the
//! time until every group has a leader and has committed a write, the CPU the idle
//! groups use, and the memory per replica.
//!
//! ```sh
//! cargo run --release --example many_groups -- 1000 2 2
//! ```
//!
//! Arguments: groups (default 1000), threads per host (default 2), and
//! `Config::quiesce_after_timeouts` (default 2; 0 keeps every group ticking), and
//! `Config::proposal_timing` (`true`, the default, or `false`). With
//! quiescence on, the idle window starts once every replica reports `quiet`. Linux only
//! for the CPU and memory figures (read from `/proc/self`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftnode::{
    ChannelNetwork, Config, GroupHost, HostConfig, MemLogStore, Node, StateMachine,
    StateMachineError,
};

/// Counts applied commands.
#[derive(Default)]
struct Counter {
    count: u64,
    applied: u64,
}

impl StateMachine for Counter {
    type Response = u64;
    fn apply(&mut self, index: u64, _command: &[u8]) -> u64 {
        self.count += 1;
        self.applied = index;
        self.count
    }
    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::copy_from_slice(&self.count.to_le_bytes()))
    }
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let bytes: [u8; 8] = data.try_into().map_err(StateMachineError::new)?;
        self.count = u64::from_le_bytes(bytes);
        self.applied = index;
        Ok(())
    }
}

/// User + system CPU time of this process, from `/proc/self/stat` (in clock ticks of
/// 10 ms, the Linux default).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Resident memory of this process in KiB, from `/proc/self/status`.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let groups: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let quiesce: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let timing: bool = args.next().map_or(Ok(true), |a| a.parse())?;
    let logger = raftnode::discard_logger();
    let mut host_config = HostConfig::default();
    host_config.threads = threads;
    let hosts: Vec<GroupHost> = (0..3)
        .map(|_| GroupHost::start(host_config.clone(), &logger))
        .collect::<Result<_, _>>()?;

    let rss_before = rss_kib();
    let started = Instant::now();
    let mut members: Vec<Vec<Node<Counter>>> = Vec::new();
    for group in 1..=groups {
        let network = ChannelNetwork::new();
        let mut nodes = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let id = i as u64 + 1;
            let mut config = Config::new(id);
            config.initial_voters = vec![1, 2, 3];
            config.quiesce_after_timeouts = quiesce;
            config.proposal_timing = timing;
            let node = host.start_group(
                group,
                config,
                MemLogStore::new(),
                Counter::default(),
                network.transport(id),
            )?;
            nodes.push(node);
        }
        members.push(nodes);
    }
    let all_started = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut leaders = Vec::with_capacity(members.len());
    for nodes in &members {
        let leader = loop {
            if let Some(node) = nodes.iter().find(|n| n.leader() == Some(n.id())) {
                break node.clone();
            }
            if Instant::now() > deadline {
                return Err("a group elected no leader within 600 s".into());
            }
            // Poll interval; bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(5));
        };
        leaders.push(leader);
    }
    let all_elected = started.elapsed();
    // One write per group, all in flight at once. An election can still be settling,
    // so a group whose leader changed since is written again through its new one.
    let handles: Vec<_> = leaders.iter().map(|l| l.propose(b"x".to_vec())).collect();
    for (nodes, handle) in members.iter().zip(handles) {
        let mut written = handle.and_then(|h| h.wait()).map_err(|e| e.to_string());
        while let Err(why) = written {
            if Instant::now() > deadline {
                return Err(format!("a group committed no write within 600 s: {why}").into());
            }
            // Retry pause; bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(5));
            written = match nodes.iter().find(|n| n.leader() == Some(n.id())) {
                Some(leader) => leader
                    .propose(b"x".to_vec())
                    .and_then(|h| h.wait())
                    .map_err(|e| e.to_string()),
                None => Err("no leader".into()),
            };
        }
    }
    let all_committed = started.elapsed();
    let rss_after = rss_kib();

    let mut all_quiet = None;
    if quiesce > 0 {
        // Every replica quiet; `status` is a request that does not wake a group.
        for (node, group) in members.iter().flat_map(|g| g.iter().map(move |n| (n, g))) {
            loop {
                if node.status().is_ok_and(|s| s.quiet) {
                    break;
                }
                if Instant::now() > deadline {
                    let mut why = String::new();
                    for n in group {
                        let s = n.status()?;
                        why += &format!(
                            " [node {}: {:?}, quiet {}, term {}, commit {}, applied {}, last index {}]",
                            s.id, s.role, s.quiet, s.term, s.commit, s.applied, s.last_index
                        );
                    }
                    return Err(format!("a group did not go quiet within 600 s:{why}").into());
                }
                // Poll interval; bounded by the deadline above.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        all_quiet = Some(started.elapsed());
    }

    // Idle: every group has a leader and nothing to do; without quiescence they still
    // tick and heartbeat.
    let window = Duration::from_secs(5);
    let cpu_before = cpu_time();
    std::thread::sleep(window); // Measuring a time window, not waiting for an event.
    let cpu_after = cpu_time();

    let replicas = groups * 3;
    println!("groups: {groups} × 3 members = {replicas} replicas on 3 hosts × {threads} threads");
    println!("started all in {:.2} s", all_started.as_secs_f64());
    println!("all elected after {:.2} s", all_elected.as_secs_f64());
    println!(
        "all committed a write after {:.2} s",
        all_committed.as_secs_f64()
    );
    match all_quiet {
        Some(t) => println!(
            "all quiet after {:.2} s (quiesce_after_timeouts = {quiesce})",
            t.as_secs_f64()
        ),
        None => println!("quiescence off"),
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let share = (b - a).as_secs_f64() / window.as_secs_f64() * 100.0;
        println!(
            "idle CPU: {share:.1} % of one core (over {} s)",
            window.as_secs()
        );
    }
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        println!(
            "memory: {} KiB RSS for the groups, {:.1} KiB per replica",
            b.saturating_sub(a),
            b.saturating_sub(a) as f64 / replicas as f64
        );
    }
    for host in &hosts {
        host.shutdown();
    }
    Ok(())
}
