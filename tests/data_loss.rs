//! Recovery after partial data loss (docs/security.md, "Data loss"): a follower whose
//! log is shorter than its leader believes tells the leader where its log ends, and the
//! leader replicates the lost entries again, without any change of leadership; a log
//! whose tail was cut below its commit index starts; a state machine ahead of the log
//! is refused with the lost range.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use raftnode::raft_types::{ConfState, Entry, HardState};
use raftnode::{
    ChannelNetwork, Config, EngineLogStore, LogStore, MemLogStore, Node, Refusal, TcpConfig,
    TcpTransport,
};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// How the nodes reach each other.
enum Net {
    Channel(ChannelNetwork),
    /// Real sockets on loopback; each node listens at its address across restarts.
    Tcp(BTreeMap<u64, SocketAddr>),
}

struct Nodes {
    network: Net,
    dirs: Vec<tempfile::TempDir>,
    states: Vec<Kv>,
    nodes: Vec<Option<Node<Kv>>>,
}

impl Nodes {
    fn config(id: u64) -> Config {
        let mut config = test_config(id, &[1, 2, 3]);
        // No snapshot in this test: the lost entries must come back through the log.
        config.snapshot.every_applied = 1_000_000;
        config
    }

    fn start(&mut self, id: u64) {
        let i = id as usize - 1;
        let store = EngineLogStore::open(self.dirs[i].path(), 1).expect("open store");
        let (config, state) = (Self::config(id), self.states[i].clone());
        let node = match &self.network {
            Net::Channel(network) => {
                Node::start(config, store, state, network.transport(id), &logger())
            }
            Net::Tcp(addrs) => {
                let mut tcp = TcpConfig::new(0xDA7A, addrs[&id]);
                tcp.peers = addrs
                    .iter()
                    .filter(|(peer, _)| **peer != id)
                    .map(|(peer, addr)| (*peer, *addr))
                    .collect();
                // A restarted node binds the address its predecessor just released.
                let mut transport = None;
                wait_until("the node's raft address is free again", || {
                    transport = TcpTransport::bind(tcp.clone(), &logger()).ok();
                    transport.is_some()
                });
                Node::start(config, store, state, transport.unwrap(), &logger())
            }
        }
        .expect("node starts");
        self.nodes[i] = Some(node);
    }

    fn node(&self, id: u64) -> &Node<Kv> {
        self.nodes[id as usize - 1].as_ref().expect("running")
    }

    fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("one agreed leader", || {
            let statuses: Vec<_> = (1..=3).map(|id| self.node(id).status().unwrap()).collect();
            let leaders: Vec<u64> = statuses.iter().filter_map(|s| s.leader).collect();
            leader = leaders.first().copied().unwrap_or(0);
            leaders.len() == 3 && leaders.iter().all(|l| *l == leader)
        });
        leader
    }
}

/// Proves a follower restarted from a copy of its data (log and state machine) 1,000
/// entries older than what it had acknowledged catches up through the log, the leader
/// keeps its leadership and term throughout, and nothing is applied twice.
#[test]
fn follower_restored_from_an_old_copy_rejoins_without_a_leadership_change() {
    restored_follower_rejoins(Net::Channel(ChannelNetwork::new()));
}

/// The same over real TCP: the follower's notice ("my log ends here") crosses the wire
/// and its checks (they once refused it as a local message type).
#[test]
fn follower_restored_from_an_old_copy_rejoins_over_tcp() {
    let addrs = (1..=3)
        .map(|id| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
            (id, probe.local_addr().expect("probe address"))
        })
        .collect();
    restored_follower_rejoins(Net::Tcp(addrs));
}

fn restored_follower_rejoins(network: Net) {
    let mut c = Nodes {
        network,
        dirs: (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect(),
        states: (0..3).map(|_| Kv::default()).collect(),
        nodes: vec![None, None, None],
    };
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    propose_in_flight(c.node(leader), "a", 200, 50);
    let commit = c.node(leader).status().unwrap().commit;
    wait_until("follower applied the first writes", || {
        c.node(follower).status().unwrap().applied >= commit
    });

    // The backup: the follower's data directory and its state machine, taken together
    // while it is stopped.
    c.nodes[follower as usize - 1].take().unwrap().kill();
    let backup = tempfile::tempdir().expect("tempdir");
    copy_dir(c.dirs[follower as usize - 1].path(), backup.path());
    let backup_state = c.states[follower as usize - 1].state.lock().copy();
    let backup_applied = backup_state.applied;
    c.start(follower);

    propose_in_flight(c.node(leader), "b", 1_000, 50);
    let commit = c.node(leader).status().unwrap().commit;
    wait_until("follower acknowledged the next 1,000 writes", || {
        c.node(follower).status().unwrap().applied >= commit
    });
    let before = c.node(leader).status().unwrap();
    assert_eq!(before.role, raftnode::Role::Leader);

    // Restore the follower from the backup, 1,000 entries behind what it acknowledged.
    c.nodes[follower as usize - 1].take().unwrap().kill();
    let dir = c.dirs[follower as usize - 1].path().to_path_buf();
    std::fs::remove_dir_all(&dir).expect("remove data dir");
    copy_dir(backup.path(), &dir);
    c.states[follower as usize - 1] = Kv {
        state: Arc::new(Mutex::new(backup_state)),
    };
    let restarted = std::time::Instant::now();
    c.start(follower);
    assert!(c.node(follower).status().unwrap().applied <= backup_applied);

    wait_until("restored follower caught up", || {
        let l = c.node(leader).status().unwrap();
        assert_eq!(
            (l.role, l.term),
            (raftnode::Role::Leader, before.term),
            "leadership changed"
        );
        c.node(follower).status().unwrap().applied >= commit
    });
    println!(
        "restored follower ({} entries behind) caught up in {:.2} s",
        commit - backup_applied,
        restarted.elapsed().as_secs_f64()
    );
    let l = c.node(leader).status().unwrap();
    assert_eq!(
        (l.term, l.metrics.leader_changes),
        (before.term, before.metrics.leader_changes)
    );
    assert!(l.metrics.followers_lost_entries >= 1, "{:?}", l.metrics);
    let f = c.node(follower).status().unwrap();
    assert!(
        f.metrics
            .refused
            .get(&Refusal::CommitPastLog)
            .copied()
            .unwrap_or(0)
            >= 1,
        "{:?}",
        f.metrics.refused
    );
    let map = |id: u64| {
        c.node(id)
            .read_stale(|kv| kv.state.lock().map.clone())
            .expect("read")
    };
    assert_eq!(map(follower), map(leader));
    assert_eq!(map(follower).len(), 1_200);
    for (index, count) in &c.states[follower as usize - 1].state.lock().applies {
        assert_eq!(*count, 1, "index {index} applied {count} times");
    }
    for node in c.nodes.iter_mut().filter_map(Option::take) {
        node.kill();
    }
}

/// A one-voter store holding entries 1..=`last` of term 1, with `commit` recorded in
/// its HardState, as a raft-engine directory whose tail was cut would be.
fn store_with_cut_tail(last: u64, commit: u64) -> MemLogStore {
    let mut store = MemLogStore::new();
    let mut cs = ConfState::default();
    cs.voters = vec![1];
    store.set_conf_state(&cs).expect("conf state");
    let entries: Vec<Entry> = (1..=last)
        .map(|index| {
            let mut e = Entry::default();
            e.index = index;
            e.term = 1;
            e
        })
        .collect();
    store.append(&entries).expect("append");
    let mut hs = HardState::default();
    hs.term = 1;
    hs.vote = 1;
    hs.commit = commit;
    store.set_hard_state(&hs).expect("hard state");
    store.sync().expect("sync");
    store
}

/// Proves a HardState whose commit index is past the log's end (the tail was cut after
/// corruption) does not stop the node at start: the commit is lowered to the last index
/// and the node leads and commits again. raft-rs itself refuses such a state ("commit
/// is out of range"), so without the repair this start fails.
#[test]
fn commit_index_past_a_cut_tail_is_lowered_at_start() {
    let network = ChannelNetwork::new();
    let node = Node::start(
        test_config(1, &[1]),
        store_with_cut_tail(5, 10),
        Kv::default(),
        network.transport(1),
        &logger(),
    )
    .expect("the node starts on a log whose tail was cut");
    node.wait_for_leader(DEADLINE).expect("leads");
    node.propose(put("k", "v"))
        .expect("propose")
        .wait_timeout(DEADLINE)
        .expect("commits after the repair");
    let status = node.status().expect("status");
    assert!(
        status.commit > 5,
        "commit {} after the new entry",
        status.commit
    );
}

/// Proves a state machine that applied more than the log holds is refused at start
/// with an error that says so and names the lost entries, instead of a raft-rs panic
/// or a hint at the wrong cause.
#[test]
fn state_machine_ahead_of_the_log_is_refused_with_the_lost_range() {
    let network = ChannelNetwork::new();
    let kv = Kv::default();
    kv.state.lock().applied = 9;
    let Err(err) = Node::start(
        test_config(1, &[1]),
        store_with_cut_tail(5, 5),
        kv,
        network.transport(1),
        &logger(),
    ) else {
        panic!("a state machine ahead of the log was accepted at start");
    };
    let text = err.to_string();
    assert!(
        text.contains("the state machine is ahead of the log")
            && text.contains("applied index 9")
            && text.contains("ends at 5")
            && text.contains("entries 6..=9"),
        "{text}"
    );
}
