//! `GroupHost`: many groups on a fixed pool of threads. Groups elect, replicate and
//! serve reads side by side; input wakes an idle group at once (no waiting for a
//! tick); groups start, stop and restart at run time; a panic stops only its group;
//! the host's shutdown stops every group.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftnode::{
    ChannelNetwork, Config, GroupHost, HostConfig, MemLogStore, Node, ReadConsistency, StartError,
    StateMachine, StateMachineError, StopReason,
};

fn host(threads: usize) -> GroupHost {
    let mut config = HostConfig::default();
    config.threads = threads;
    GroupHost::start(config, &logger()).expect("host starts")
}

/// One group of three members, one on each host (host `i` is node `i + 1`), on its
/// own network.
struct Group {
    network: ChannelNetwork,
    nodes: Vec<Node<Kv>>,
    stores: Vec<MemLogStore>,
    states: Vec<Kv>,
}

fn start_group(hosts: &[GroupHost], group: u64, configure: impl Fn(&mut Config)) -> Group {
    let network = ChannelNetwork::new();
    let voters: Vec<u64> = (1..=hosts.len() as u64).collect();
    let (mut nodes, mut stores, mut states) = (vec![], vec![], vec![]);
    for (i, host) in hosts.iter().enumerate() {
        let id = i as u64 + 1;
        let mut config = test_config(id, &voters);
        configure(&mut config);
        let (store, kv) = (MemLogStore::new(), Kv::default());
        let node = host
            .start_group(
                group,
                config,
                store.clone(),
                kv.clone(),
                network.transport(id),
            )
            .expect("group starts");
        nodes.push(node);
        stores.push(store);
        states.push(kv);
    }
    Group {
        network,
        nodes,
        stores,
        states,
    }
}

fn leader_of(nodes: &[Node<Kv>]) -> &Node<Kv> {
    let mut found = None;
    wait_until("a leader", || {
        found = nodes.iter().position(|n| n.leader() == Some(n.id()));
        found.is_some()
    });
    &nodes[found.expect("waited for")]
}

/// Proves many groups run side by side on a few threads: every group of 3 hosts × 2
/// threads elects a leader, commits a write and serves it as a linearizable read on
/// every member, and the groups are spread evenly over each host's threads.
#[test]
fn many_groups_elect_replicate_and_read_on_a_few_threads() {
    const GROUPS: u64 = 60;
    let hosts: Vec<GroupHost> = (0..3).map(|_| host(2)).collect();
    let groups: Vec<Group> = (1..=GROUPS)
        .map(|g| start_group(&hosts, g, |_| {}))
        .collect();
    for host in &hosts {
        assert_eq!(host.thread_loads(), vec![GROUPS as usize / 2; 2]);
        assert_eq!(host.groups(), (1..=GROUPS).collect::<Vec<_>>());
    }
    for (g, group) in groups.iter().enumerate() {
        let leader = leader_of(&group.nodes);
        let value = format!("v{g}");
        leader
            .propose(put("k", &value))
            .expect("queued")
            .wait()
            .expect("committed");
        for node in &group.nodes {
            let seen = node
                .read(ReadConsistency::Linearizable, DEADLINE, |kv: &Kv| {
                    kv.state.lock().map.get("k").cloned()
                })
                .expect("read");
            assert_eq!(seen.as_deref(), Some(value.as_str()), "group {}", g + 1);
        }
    }
    for group in &groups {
        for state in &group.states {
            let applies = state.state.lock().applies.clone();
            assert!(
                applies.values().all(|&n| n == 1),
                "double apply: {applies:?}"
            );
        }
    }
    for host in &hosts {
        host.shutdown();
    }
}

/// Proves a request and a peer message each get their group a turn at once: with
/// one-minute ticks nothing would happen for a minute if the host waited for the next
/// tick. A campaign elects a leader (vote requests and answers wake the members) and a
/// write commits (appends and their answers), all well within the deadline.
#[test]
fn input_wakes_an_idle_group_without_waiting_for_a_tick() {
    let hosts: Vec<GroupHost> = (0..3).map(|_| host(1)).collect();
    let group = start_group(&hosts, 7, |c| {
        c.tick_interval = Duration::from_secs(60);
        c.election_ticks = 10;
        c.heartbeat_ticks = 2;
    });
    // raft-rs refuses to campaign while the bootstrap's configuration entries are not
    // applied yet (the first turn of each member applies them).
    for node in &group.nodes {
        wait_until("bootstrap applied", || {
            node.status().is_ok_and(|s| s.applied >= 3)
        });
    }
    let started = Instant::now();
    group.nodes[0].campaign().expect("campaign queued");
    let leader = group.nodes[0]
        .wait_for_leader(Duration::from_secs(10))
        .expect("elected without a tick");
    assert_eq!(leader, 1);
    group.nodes[0]
        .propose(put("a", "1"))
        .expect("queued")
        .wait_timeout(Duration::from_secs(10))
        .expect("committed without a tick");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    eprintln!("campaign + commit with 60 s ticks: {waited:?}");
    // Dropping the hosts kills the groups (a graceful shutdown's transfer deadline is
    // checked on ticks, a minute apart here).
    drop(hosts);
    assert!(group.nodes.iter().all(|n| n.is_stopped()));
}

/// Proves groups start, stop and restart at run time: a stopped group leaves the host
/// (its id can start again, on the same stores, with its data), the others keep
/// serving, and a second group with a running id is refused.
#[test]
fn groups_start_stop_and_restart_at_run_time() {
    let hosts: Vec<GroupHost> = (0..3).map(|_| host(2)).collect();
    let a = start_group(&hosts, 1, |_| {});
    let b = start_group(&hosts, 2, |_| {});
    leader_of(&b.nodes)
        .propose(put("b", "before"))
        .expect("queued")
        .wait()
        .expect("committed");

    let again = hosts[0].start_group(
        1,
        test_config(1, &[1, 2, 3]),
        MemLogStore::new(),
        Kv::default(),
        ChannelNetwork::new().transport(1),
    );
    assert!(
        matches!(again, Err(StartError::GroupExists(1))),
        "{again:?}"
    );

    for host in &hosts {
        assert_eq!(host.stop_group(2), Some(StopReason::Shutdown));
        assert_eq!(host.groups(), vec![1]);
        assert!(host.node::<Kv>(2).is_none());
    }
    assert!(b.nodes.iter().all(|n| n.is_stopped()));
    // The other group did not notice.
    leader_of(&a.nodes)
        .propose(put("a", "1"))
        .expect("queued")
        .wait()
        .expect("group 1 still commits");

    // Group 2 again, on the stores it had: its write is still there.
    let network = b.network.clone();
    let restarted: Vec<Node<Kv>> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let id = i as u64 + 1;
            host.start_group(
                2,
                test_config(id, &[1, 2, 3]),
                b.stores[i].clone(),
                b.states[i].clone(),
                network.transport(id),
            )
            .expect("restarts")
        })
        .collect();
    let leader = leader_of(&restarted);
    let seen = leader
        .read(ReadConsistency::Linearizable, DEADLINE, |kv: &Kv| {
            kv.state.lock().map.get("b").cloned()
        })
        .expect("read");
    assert_eq!(seen.as_deref(), Some("before"));
    for host in &hosts {
        host.shutdown();
    }
}

/// Commands: anything; `boom` panics (a state machine with a bug).
#[derive(Default)]
struct Fragile {
    applied: u64,
}

impl StateMachine for Fragile {
    type Response = ();
    fn apply(&mut self, index: u64, command: &[u8]) {
        assert!(command != b"boom", "boom applied at {index}");
        self.applied = index;
    }
    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        Ok(bytes::Bytes::new())
    }
    fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
        self.applied = index;
        Ok(())
    }
}

/// Proves a panic in one group's state machine stops that group only (its callers see
/// `Stopped` and the panic as the reason), while a group on the same thread keeps
/// committing.
#[test]
fn a_panic_stops_only_its_group() {
    let host = host(1);
    let start = |group| {
        let mut config = test_config(1, &[1]);
        config.id = 1;
        host.start_group(
            group,
            config,
            MemLogStore::new(),
            Fragile::default(),
            ChannelNetwork::new().transport(1),
        )
        .expect("starts")
    };
    let (doomed, healthy) = (start(1), start(2));
    for node in [&doomed, &healthy] {
        node.wait_for_leader(DEADLINE).expect("leader");
    }
    let outcome = doomed.propose(b"boom".to_vec()).expect("queued").wait();
    assert!(outcome.is_err(), "{outcome:?}");
    let reason = doomed.wait_stopped(DEADLINE).expect("stopped");
    assert!(
        matches!(&reason, StopReason::Panic(text) if text.contains("boom")),
        "{reason:?}"
    );
    healthy
        .propose(b"fine".to_vec())
        .expect("queued")
        .wait()
        .expect("the other group still commits");
    assert_eq!(host.thread_loads(), vec![1]);
    host.shutdown();
}

/// Proves dropping every handle leaves a hosted group running (the host keeps it and
/// hands out a handle again), and that the host's shutdown stops every group and
/// refuses new ones.
#[test]
fn the_host_keeps_its_groups_until_it_shuts_down() {
    let host = host(2);
    let mut config = test_config(1, &[1]);
    config.id = 1;
    let kv = Kv::default();
    let node = host
        .start_group(
            9,
            config.clone(),
            MemLogStore::new(),
            kv.clone(),
            ChannelNetwork::new().transport(1),
        )
        .expect("starts");
    node.wait_for_leader(DEADLINE).expect("leader");
    drop(node);
    let again: Node<Kv> = host.node(9).expect("still hosted");
    again
        .propose(put("x", "1"))
        .expect("queued")
        .wait()
        .expect("commits after every first handle went");
    assert!(
        host.node::<Fragile>(9).is_none(),
        "wrong state machine type"
    );

    host.shutdown();
    assert_eq!(again.wait_stopped(DEADLINE), Some(StopReason::Shutdown));
    assert!(again.propose(put("x", "2")).is_err());
    assert!(host.groups().is_empty());
    let late = host.start_group(
        10,
        config,
        MemLogStore::new(),
        Kv::default(),
        ChannelNetwork::new().transport(1),
    );
    assert!(matches!(late, Err(StartError::HostStopped)), "{late:?}");
    assert_eq!(kv.state.lock().map.get("x").map(String::as_str), Some("1"));
}

/// Proves quiescence works on hosts: 20 idle groups go quiet on every member; then the
/// host leading the most groups shuts down, and every group writes again through its
/// two surviving members (the write wakes them; where the leader was on the host that
/// went, they elect a new one).
#[test]
fn quiet_groups_on_a_host_wake_on_a_write_and_survive_a_dead_host() {
    const GROUPS: u64 = 20;
    let hosts: Vec<GroupHost> = (0..3).map(|_| host(2)).collect();
    let groups: Vec<Group> = (1..=GROUPS)
        .map(|g| start_group(&hosts, g, |c| c.quiesce_after_timeouts = 1))
        .collect();
    for g in &groups {
        let leader = leader_of(&g.nodes);
        leader
            .propose(put("k", "1"))
            .expect("queued")
            .wait_timeout(DEADLINE)
            .expect("applied");
    }
    wait_until("every member of every group is quiet", || {
        groups
            .iter()
            .flat_map(|g| &g.nodes)
            .all(|n| n.status().is_ok_and(|s| s.quiet))
    });
    // Whichever host leads most groups goes down; each group then writes through its
    // two survivors, which wakes them and elects a new leader where needed.
    let mut led = [0usize; 3];
    for g in &groups {
        led[(leader_of(&g.nodes).id() - 1) as usize] += 1;
    }
    let down = (0..3).max_by_key(|&i| led[i]).expect("three hosts");
    for g in &groups {
        g.network.isolate(down as u64 + 1);
    }
    hosts[down].shutdown();
    for g in &groups {
        let survivors: Vec<&Node<Kv>> = g
            .nodes
            .iter()
            .filter(|n| n.id() != down as u64 + 1)
            .collect();
        let deadline = Instant::now() + DEADLINE;
        'write: loop {
            for n in &survivors {
                let outcome = n
                    .propose(put("k", "2"))
                    .and_then(|mut h| h.wait_timeout(Duration::from_secs(1)));
                if outcome.is_ok() {
                    break 'write;
                }
            }
            assert!(Instant::now() < deadline, "a group never wrote again");
            // Back off between rounds of tries (a refused proposal returns at once);
            // bounded by `deadline`.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!("{led:?} groups led per host; host {} went down", down + 1);
    for (i, h) in hosts.iter().enumerate() {
        if i != down {
            h.shutdown();
        }
    }
}
