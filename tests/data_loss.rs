//! Recovery after partial data loss (docs/security.md, "Data loss"): a follower whose
//! log is shorter than its leader believes tells the leader where its log ends, and the
//! leader replicates the lost entries again, without any change of leadership.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use raftnode::{ChannelNetwork, Config, EngineLogStore, Node, Refusal};

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

struct Nodes {
    network: ChannelNetwork,
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
        let node = Node::start(
            Self::config(id),
            store,
            self.states[i].clone(),
            self.network.transport(id),
            &logger(),
        )
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
    let mut c = Nodes {
        network: ChannelNetwork::new(),
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
