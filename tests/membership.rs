//! Membership changes (Raft paper §6, joint consensus; raft-rs ConfChangeV2): growing,
//! replacing, shrinking and joint changes under load, one change at a time, clear errors
//! for bad changes, removed nodes.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raftnode::{MembershipChange, MembershipError, Node, Role};

fn small_snapshots(c: &mut raftnode::Config) {
    c.snapshot.every_applied = 300;
    c.snapshot.trailing_entries = 50;
}

/// Runs `f` on the leader of `members`, retrying while leadership moves or an earlier
/// change is still pending; panics on any other error.
fn on_leader<T>(
    c: &Cluster,
    members: &[u64],
    what: &str,
    f: impl Fn(&Node<Kv>) -> Result<T, MembershipError>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = c.wait_leader_among(members);
        match f(c.node(leader)) {
            Ok(v) => return v,
            Err(
                MembershipError::NotLeader { .. }
                | MembershipError::Rejected(_)
                | MembershipError::Busy,
                // Back off before retrying; bounded by `deadline`.
            ) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Waits until `ids` applied everything the leader of `members` has committed.
fn wait_caught_up(c: &Cluster, members: &[u64], ids: &[u64]) {
    let leader = c.wait_leader_among(members);
    let commit = c.status(leader).commit;
    c.wait_applied(ids, commit);
}

fn followers(c: &Cluster, members: &[u64]) -> Vec<u64> {
    let leader = c.wait_leader_among(members);
    members.iter().copied().filter(|id| *id != leader).collect()
}

/// Proves the cluster grows 3 → 5 (learners first, then promoted), replaces a member,
/// shrinks 5 → 3 and swaps two members in one joint change (§6), while a writer keeps
/// committing; after each step every member reports the same ConfState, new members
/// (started empty, no initial voters) catch up by log or snapshot, and every
/// acknowledged write is on every final member exactly once.
#[test]
fn grow_replace_shrink_and_joint_change_under_load() {
    let mut c = Cluster::with_config(3, small_snapshots);
    c.wait_leader();
    let load = Load::start(c.nodes.values().cloned().collect());
    load.wait_progress(50);

    // Grow 3 -> 5: learners first.
    for id in [4, 5] {
        let node = c.start_node(id, &[]);
        load.add_node(node);
        let addr = format!("node-{id}.test:7000");
        on_leader(&c, &[1, 2, 3], "add learner", |n| {
            n.add_learner(id, addr.clone().into_bytes(), DEADLINE)
        });
    }
    wait_conf(&c, &[1, 2, 3, 4, 5], &[1, 2, 3], &[4, 5]);
    wait_caught_up(&c, &[1, 2, 3], &[4, 5]);
    load.wait_progress(50);
    for id in [4, 5] {
        on_leader(&c, &[1, 2, 3], "promote", |n| n.promote(id, DEADLINE));
    }
    let mut members = vec![1, 2, 3, 4, 5];
    wait_conf(&c, &members, &members, &[]);
    load.wait_progress(50);

    // Replace a member: add 6, then remove a follower.
    let node = c.start_node(6, &[]);
    load.add_node(node);
    on_leader(&c, &members, "add learner 6", |n| {
        n.add_learner(6, b"node-6.test:7000".to_vec(), DEADLINE)
    });
    wait_caught_up(&c, &members, &[6]);
    on_leader(&c, &members, "promote 6", |n| n.promote(6, DEADLINE));
    let gone = followers(&c, &members)[0];
    on_leader(&c, &members, "remove", |n| n.remove(gone, DEADLINE));
    members = vec![1, 2, 3, 4, 5, 6];
    members.retain(|id| *id != gone);
    wait_conf(&c, &members, &members, &[]);
    load.wait_progress(50);

    // Shrink 5 -> 3, one change at a time.
    for _ in 0..2 {
        let gone = followers(&c, &members)[0];
        on_leader(&c, &members, "shrink", |n| n.remove(gone, DEADLINE));
        members.retain(|id| *id != gone);
        wait_conf(&c, &members, &members, &[]);
        load.wait_progress(20);
    }
    assert_eq!(members.len(), 3);

    // Joint change: swap a follower for node 7 in one ConfChangeV2.
    let node = c.start_node(7, &[]);
    load.add_node(node);
    on_leader(&c, &members, "add learner 7", |n| {
        n.add_learner(7, b"node-7.test:7000".to_vec(), DEADLINE)
    });
    wait_caught_up(&c, &members, &[7]);
    let out = followers(&c, &members)[0];
    let joint = on_leader(&c, &members, "joint change", |n| {
        n.change_membership(
            &[MembershipChange::AddVoter(7), MembershipChange::Remove(out)],
            Vec::new(),
            DEADLINE,
        )
    });
    assert!(
        !joint.voters_outgoing.is_empty(),
        "two changes at once go through a joint configuration: {joint:?}"
    );
    members.retain(|id| *id != out);
    members.push(7);
    members.sort_unstable();
    wait_conf(&c, &members, &members, &[]);
    load.wait_progress(50);

    let acked = load.stop();
    wait_caught_up(&c, &members, &members);
    let reference = c.map_of(members[0]);
    for key in &acked {
        assert!(reference.contains_key(key), "acknowledged write {key} lost");
    }
    for id in &members {
        assert_eq!(&c.map_of(*id), &reference, "node {id} diverged");
    }
    c.assert_no_double_apply();
}

/// Proves a member added to a young group, catching up from the log rather than a
/// snapshot, learns the initial voters (written as bootstrap entries) and so reports
/// the same ConfState as everyone else.
#[test]
fn new_member_catching_up_from_the_log_learns_the_initial_voters() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    c.propose_ok(put("a", "1"));
    c.start_node(4, &[]);
    c.node(leader)
        .add_learner(4, Vec::new(), DEADLINE)
        .expect("learner");
    wait_conf(&c, &[1, 2, 3, 4], &[1, 2, 3], &[4]);
    assert_eq!(
        c.status(4).metrics.snapshots_restored,
        0,
        "caught up by log"
    );
    c.node(leader).promote(4, DEADLINE).expect("promoted");
    wait_conf(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]);
    assert_eq!(c.map_of(4), c.map_of(leader));
}

fn slow_elections(c: &mut raftnode::Config) {
    // One election timeout is 1-2 s: long enough that a leader cut off from its
    // followers keeps leading while the test proposes its second change.
    c.election_ticks = 100;
}

/// Proves a conf change proposed while another is pending is refused with
/// `Rejected` (raft-rs allows one pending change), and that the first one is not lost.
#[test]
fn second_change_while_one_is_pending_is_rejected() {
    let mut c = Cluster::with_config(3, slow_elections);
    let leader = c.wait_leader();
    c.start_node(4, &[]);
    c.start_node(5, &[]);
    for id in 1..=3 {
        if id != leader {
            c.network.isolate(id);
        }
    }
    let before = c.status(leader).last_index;
    let first = {
        let node = c.node(leader).clone();
        std::thread::spawn(move || node.add_learner(4, Vec::new(), DEADLINE))
    };
    // The change is appended (pending) but cannot commit: the followers are cut off.
    wait_until("first change appended", || {
        c.status(leader).last_index > before
    });
    let second = c
        .node(leader)
        .add_learner(5, Vec::new(), Duration::from_secs(5));
    assert!(
        matches!(second, Err(MembershipError::Rejected(ref m)) if m.contains("pending")),
        "{second:?}"
    );
    let third = c.node(leader).remove(3, Duration::from_secs(5));
    assert!(
        matches!(third, Err(MembershipError::Rejected(_))),
        "{third:?}"
    );
    c.network.heal();
    let cs = first.join().unwrap().expect("first change applies");
    assert_eq!(cs.learners, vec![4]);
    wait_conf(&c, &[1, 2, 3, 4], &[1, 2, 3], &[4]);
    assert!(c.status(leader).learners.iter().all(|id| *id != 5));
}

/// Proves invalid changes fail with a clear `Invalid` (or `NotLeader`) error and change
/// nothing: adding an existing member, removing an unknown one, removing the last voter,
/// promoting a non-learner, id 0, duplicates, an empty change, and calls on a follower.
#[test]
fn bad_membership_changes_give_clear_errors() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let n = c.node(leader);
    let t = Duration::from_secs(5);
    let invalid = |r: Result<_, MembershipError>, needle: &str| match r {
        Err(MembershipError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    };
    invalid(n.add_voter(2, Vec::new(), t), "already a voter");
    invalid(n.add_learner(2, Vec::new(), t), "is a voter");
    invalid(n.remove(9, t), "not a member");
    invalid(n.promote(2, t), "not a learner");
    invalid(n.promote(9, t), "not a learner");
    invalid(n.add_voter(0, Vec::new(), t), "reserved");
    invalid(
        n.change_membership(
            &[
                MembershipChange::AddVoter(8),
                MembershipChange::AddLearner(8),
            ],
            Vec::new(),
            t,
        ),
        "twice",
    );
    invalid(n.change_membership(&[], Vec::new(), t), "no changes");
    invalid(
        n.change_membership(
            &[
                MembershipChange::Remove(1),
                MembershipChange::Remove(2),
                MembershipChange::Remove(3),
            ],
            Vec::new(),
            t,
        ),
        "last voter",
    );
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(
        c.node(follower).add_learner(9, Vec::new(), t),
        Err(MembershipError::NotLeader {
            leader: Some(leader)
        })
    );
    wait_conf(&c, &[1, 2, 3], &[1, 2, 3], &[]);

    let single = Cluster::new(1);
    single.wait_leader();
    invalid(single.node(1).remove(1, t), "last voter");
}

/// Proves a leader can remove itself: the change applies, leadership moves to a
/// remaining voter in a higher term, the group keeps committing, and the removed node
/// reports `removed`, stops leading and never campaigns.
#[test]
fn leader_removing_itself_hands_over_leadership() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    c.propose_ok(put("before", "1"));
    let term = c.status(leader).term;
    let cs = c
        .node(leader)
        .remove(leader, DEADLINE)
        .expect("leader removes itself");
    assert!(!cs.voters.contains(&leader));
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = c.wait_leader_among(&rest);
    assert!(c.status(new_leader).term > term);
    wait_conf(&c, &rest, &rest, &[]);
    c.node(new_leader)
        .propose(put("after", "2"))
        .unwrap()
        .wait_timeout(DEADLINE)
        .expect("the smaller group commits");
    wait_until("removed node reports removed and follows", || {
        let s = c.status(leader);
        s.removed && s.role == Role::Follower
    });
    let elections = c.status(leader).metrics.elections_started;
    // Proving an absence takes time: several election timeouts pass while the rest of
    // the group commits; the removed node must not campaign in any of them.
    let until = Instant::now() + Duration::from_millis(1_500);
    let mut i = 0;
    while Instant::now() < until {
        c.node(new_leader)
            .propose(put("tick", &i.to_string()))
            .unwrap()
            .wait_timeout(DEADLINE)
            .expect("commits");
        i += 1;
    }
    let s = c.status(leader);
    assert_eq!(
        s.metrics.elections_started, elections,
        "removed node campaigned"
    );
    assert_ne!(s.role, Role::Leader);
    assert_eq!(c.status(new_leader).leader, Some(new_leader));
}

/// Proves a leader that removes itself while hundreds of writes are in flight steps
/// down cleanly: it does not stop (raft-rs 0.7 alone keeps it leading without a progress
/// entry of its own and panics on its next commit, which the simulator found), a
/// remaining voter takes over, and every acknowledged write is on every remaining member.
#[test]
fn leader_removing_itself_under_load_steps_down_without_stopping() {
    let c = Cluster::new(5);
    let leader = c.wait_leader();
    let rest: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    let node = c.node(leader).clone();
    let writer = std::thread::spawn(move || {
        let mut handles = Vec::new();
        for i in 0..3_000 {
            let key = format!("w{i}");
            match node.propose(put(&key, "v")) {
                Ok(h) => handles.push((key, h)),
                Err(_) => break, // no longer leader: stop writing here
            }
            if i % 200 == 199 {
                std::thread::yield_now();
            }
        }
        handles
    });
    let cs = c
        .node(leader)
        .remove(leader, DEADLINE)
        .expect("leader removes itself");
    assert!(!cs.voters.contains(&leader));
    let handles = writer.join().expect("writer");
    let acked: Vec<String> = handles
        .into_iter()
        .filter_map(|(key, mut h)| h.wait_timeout(DEADLINE).ok().map(|_| key))
        .collect();
    assert_eq!(
        c.node(leader).stop_reason(),
        None,
        "the removed leader stopped"
    );
    let new_leader = c.wait_leader_among(&rest);
    c.node(new_leader)
        .propose(put("after", "1"))
        .unwrap()
        .wait_timeout(DEADLINE)
        .expect("the smaller group commits");
    let commit = c.status(new_leader).commit;
    c.wait_applied(&rest, commit);
    for id in &rest {
        let map = c.map_of(*id);
        let missing: Vec<&String> = acked.iter().filter(|k| !map.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "node {id} misses acknowledged writes {missing:?}"
        );
    }
    wait_until("removed node reports removed and follows", || {
        let s = c.status(leader);
        s.removed && s.role != Role::Leader
    });
}

/// Proves a removed follower learns of its removal (`Status::removed`) and never
/// campaigns, even though no leader talks to it any more.
#[test]
fn removed_follower_reports_removed_and_does_not_campaign() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    c.node(leader).remove(gone, DEADLINE).expect("removed");
    wait_until("removed node applied its removal", || {
        c.status(gone).removed
    });
    let before = c.status(gone).metrics.elections_started;
    let rest: Vec<u64> = (1..=3).filter(|id| *id != gone).collect();
    // Several election timeouts (20-40 ticks of 10 ms) without a leader talking to it.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        c.node(leader)
            .propose(put("k", "v"))
            .unwrap()
            .wait_timeout(DEADLINE)
            .expect("commits");
    }
    assert_eq!(c.status(gone).metrics.elections_started, before);
    assert_eq!(c.wait_leader_among(&rest), leader);
}

/// Proves two concurrent promotions of the same learner end with one success and one
/// clear error (`Invalid` "already a voter" or `Rejected` "pending"), never a panic or
/// a double change.
#[test]
fn racing_promotions_have_one_winner() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    c.start_node(4, &[]);
    c.node(leader)
        .add_learner(4, Vec::new(), DEADLINE)
        .expect("learner");
    wait_caught_up(&c, &[1, 2, 3], &[4]);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let node = c.node(leader).clone();
            std::thread::spawn(move || node.promote(4, DEADLINE))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    MembershipError::Invalid(_) | MembershipError::Rejected(_)
                ),
                "{e:?}"
            );
        }
    }
    wait_conf(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]);
}

/// Best effort on raft-rs note 9: the leader is cut off right after a joint change commits,
/// before its followers hear of the commit. A new leader must take the group out of the
/// joint configuration on its own.
#[test]
fn new_leader_leaves_a_joint_configuration_left_behind() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    for id in [4, 5] {
        c.start_node(id, &[]);
        c.node(leader)
            .add_learner(id, Vec::new(), DEADLINE)
            .expect("learner");
    }
    wait_caught_up(&c, &[1, 2, 3], &[4, 5]);
    let last = c.status(leader).last_index;
    let node = c.node(leader).clone();
    let change = std::thread::spawn(move || {
        node.change_membership(
            &[MembershipChange::AddVoter(4), MembershipChange::AddVoter(5)],
            Vec::new(),
            Duration::from_secs(5),
        )
    });
    // Once every follower holds the entering entry, cut the leader's outgoing links:
    // acknowledgements still reach it, the commit and the leave entry never leave it.
    wait_until("joint entry replicated", || {
        (1..=5)
            .filter(|id| *id != leader)
            .all(|id| c.status(id).last_index > last)
    });
    for id in 1..=5 {
        if id != leader {
            c.network.cut(leader, id);
        }
    }
    let _ = change.join().unwrap();
    let rest: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    let mut all = rest.clone();
    all.push(leader);
    all.sort_unstable();
    wait_conf(&c, &rest, &all, &[]);
    c.network.heal();
    wait_conf(&c, &all, &all, &[]);
}

/// A transport that records what membership told it, around an in-process one.
struct Recording {
    inner: raftnode::ChannelTransport,
    book: Book,
}

/// What membership told one node's transport: the contexts of the peers it added, and
/// every `remove_peer` call in order.
#[derive(Clone, Default)]
struct Book {
    peers: std::sync::Arc<parking_lot::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>>,
    removed: std::sync::Arc<parking_lot::Mutex<Vec<u64>>>,
}

impl Book {
    fn lock(&self) -> parking_lot::MutexGuard<'_, std::collections::BTreeMap<u64, Vec<u8>>> {
        self.peers.lock()
    }
}

impl raftnode::Transport for Recording {
    fn start(&mut self, mailbox: raftnode::Mailbox) -> Result<(), raftnode::TransportError> {
        self.inner.start(mailbox)
    }
    fn send(&mut self, messages: Vec<raftnode::raft_types::Message>) {
        self.inner.send(messages)
    }
    fn add_peer(&mut self, peer: u64, context: &[u8]) {
        self.book.peers.lock().insert(peer, context.to_vec());
        self.inner.add_peer(peer, context)
    }
    fn remove_peer(&mut self, peer: u64) {
        self.book.peers.lock().remove(&peer);
        self.book.removed.lock().push(peer);
        self.inner.remove_peer(peer)
    }
    fn stop(&mut self) {
        self.inner.stop()
    }
}

fn start_recorded(
    id: u64,
    voters: &[u64],
    network: &raftnode::ChannelNetwork,
    store: &raftnode::MemLogStore,
) -> (Node<Kv>, Book) {
    let mut config = test_config(id, voters);
    config.snapshot.every_applied = 50;
    config.snapshot.trailing_entries = 0;
    let book = Book::default();
    let transport = Recording {
        inner: network.transport(id),
        book: book.clone(),
    };
    let node = Node::start(config, store.clone(), Kv::default(), transport, &logger())
        .expect("node starts");
    (node, book)
}

type Recorded = std::collections::BTreeMap<u64, (Node<Kv>, Book)>;

/// Starts voters 1..=3 with recording transports (stores for ids up to `max_id`) and
/// returns them with their leader once one is elected.
fn recorded_group(
    max_id: usize,
) -> (
    raftnode::ChannelNetwork,
    Vec<raftnode::MemLogStore>,
    Recorded,
    Node<Kv>,
) {
    let network = raftnode::ChannelNetwork::new();
    let stores: Vec<raftnode::MemLogStore> = (0..=max_id).map(|_| Default::default()).collect();
    let nodes: Recorded = (1..=3)
        .map(|id| {
            (
                id,
                start_recorded(id, &[1, 2, 3], &network, &stores[id as usize]),
            )
        })
        .collect();
    let mut leader = None;
    wait_until("a leader", || {
        leader = nodes
            .values()
            .find(|(n, _)| n.leader() == Some(n.id()))
            .map(|(n, _)| n.clone());
        leader.is_some()
    });
    (network, stores, nodes, leader.expect("leader"))
}

/// Proves the address a membership change carried reaches the transport of a node that
/// never applied that change: one restarted after the log was compacted past it (from
/// the snapshot's member table), one restarted with the change still in its log, and a
/// member added later that caught up through a snapshot; and that a removed member's
/// address is forgotten.
#[test]
fn member_addresses_survive_restart_compaction_and_snapshot_install() {
    let (network, stores, mut nodes, leader) = recorded_group(6);
    nodes.insert(4, start_recorded(4, &[], &network, &stores[4]));
    leader
        .add_learner(4, b"node-4.test:7000".to_vec(), DEADLINE)
        .expect("learner 4 added");
    let expect4 = |book: &Book| book.lock().get(&4).cloned() == Some(b"node-4.test:7000".to_vec());
    for id in 1..=3 {
        let book = nodes[&id].1.clone();
        wait_until("every member's transport learned node 4", || expect4(&book));
    }

    // Restart a follower with the change still in its log.
    let follower = (1..=3).find(|id| *id != leader.id()).expect("a follower");
    nodes.remove(&follower).expect("running").0.kill();
    let (node, book) = start_recorded(follower, &[], &network, &stores[follower as usize]);
    assert!(expect4(&book), "restart from the log: {:?}", book.lock());
    nodes.insert(follower, (node, book));

    // Compact every log past the change, then restart the same follower.
    for i in 0..300 {
        leader
            .propose(put(&format!("k{i}"), "v"))
            .expect("queued")
            .wait_timeout(DEADLINE)
            .expect("committed");
    }
    let commit = leader.status().unwrap().commit;
    wait_until("follower compacted past the change", || {
        nodes[&follower]
            .0
            .status()
            .is_ok_and(|s| s.applied >= commit && s.first_index > 10)
    });
    nodes.remove(&follower).expect("running").0.kill();
    let (node, book) = start_recorded(follower, &[], &network, &stores[follower as usize]);
    assert!(node.status().unwrap().first_index > 10, "log was compacted");
    assert!(
        expect4(&book),
        "restart from the snapshot: {:?}",
        book.lock()
    );
    nodes.insert(follower, (node, book));

    // A member added now catches up through a snapshot and learns node 4 from it.
    nodes.insert(5, start_recorded(5, &[], &network, &stores[5]));
    leader
        .add_learner(5, b"node-5.test:7000".to_vec(), DEADLINE)
        .expect("learner 5 added");
    let book5 = nodes[&5].1.clone();
    wait_until("node 5 learned node 4 from the snapshot", || {
        expect4(&book5)
    });
    assert!(nodes[&5].0.status().unwrap().metrics.snapshots_restored >= 1);

    // Removing node 4 makes every member forget its address, restarted ones included.
    leader.remove(4, DEADLINE).expect("node 4 removed");
    for i in 300..400 {
        leader
            .propose(put(&format!("k{i}"), "v"))
            .expect("queued")
            .wait_timeout(DEADLINE)
            .expect("committed");
    }
    let commit = leader.status().unwrap().commit;
    wait_until("followers caught up", || {
        nodes[&follower]
            .0
            .status()
            .is_ok_and(|s| s.applied >= commit)
    });
    nodes.remove(&follower).expect("running").0.kill();
    let (_node, book) = start_recorded(follower, &[], &network, &stores[follower as usize]);
    assert!(!book.lock().contains_key(&4), "{:?}", book.lock());
    assert_eq!(
        book.lock().get(&5).cloned(),
        Some(b"node-5.test:7000".to_vec())
    );
}

/// Proves a node removed through a joint change leaves the remaining members'
/// transports (`remove_peer`) when the leave-joint entry applies: that entry carries no
/// changes of its own, so the removal shows only in the configuration before and after
/// it (the simulator found that it was missed, and a removed id then looked free).
#[test]
fn joint_removal_reaches_the_remaining_members_transports() {
    let (network, stores, mut nodes, leader) = recorded_group(4);
    let gone = (1..=3).find(|id| *id != leader.id()).expect("a follower");
    nodes.insert(4, start_recorded(4, &[], &network, &stores[4]));
    leader
        .add_learner(4, b"node-4.test:7000".to_vec(), DEADLINE)
        .expect("learner 4 added");
    let cs = leader
        .change_membership(
            &[
                MembershipChange::AddVoter(4),
                MembershipChange::Remove(gone),
            ],
            bytes::Bytes::new(),
            DEADLINE,
        )
        .expect("joint change");
    assert_eq!(cs.voters_outgoing.len(), 3, "entered a joint configuration");
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != gone).collect();
    for id in &remaining {
        let (node, book) = &nodes[id];
        wait_until(&format!("node {id} left the joint configuration"), || {
            node.status()
                .is_ok_and(|s| s.voters_outgoing.is_empty() && !s.voters.contains(&gone))
        });
        wait_until(&format!("node {id}'s transport forgot node {gone}"), || {
            book.removed.lock().contains(&gone)
        });
        assert!(!book.removed.lock().contains(id), "a node removed itself");
    }
}

/// Proves `Status` lists members in id order (raft-rs keeps them in hash order).
#[test]
fn status_lists_members_in_id_order() {
    let c = Cluster::new(5);
    let leader = c.wait_leader();
    c.node(leader)
        .add_learner(9, "", DEADLINE)
        .expect("learner 9");
    c.node(leader)
        .add_learner(7, "", DEADLINE)
        .expect("learner 7");
    for id in 1..=5 {
        wait_until("node applies both learners", || {
            c.status(id).learners.len() == 2
        });
        let s = c.status(id);
        assert_eq!(s.voters, vec![1, 2, 3, 4, 5], "node {id}");
        assert_eq!(s.learners, vec![7, 9], "node {id}");
    }
}
