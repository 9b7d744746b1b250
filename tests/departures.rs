//! Nodes leaving a group: a removed node learns of its removal even when it missed the
//! commit, and a cluster shut down node by node never hands leadership to a node that
//! is going (docs/membership.md, "Removal" and "Shutting a cluster down").

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use raftnode::raft_types::{Message, MessageType};
use raftnode::testing::sim::Bugs;
use raftnode::{
    ChannelNetwork, ChannelTransport, Mailbox, MemLogStore, MembershipError, Node, Transport,
    TransportError,
};

/// `test_config`'s election timeout: 20 ticks of 10 ms.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(200);

fn start(
    voters: &[u64],
    bugs: &Bugs,
    transport: impl Fn(u64) -> RecordingTransport,
) -> Vec<Node<Kv>> {
    voters
        .iter()
        .map(|&id| {
            Node::start_with_bugs(
                test_config(id, voters),
                MemLogStore::new(),
                Kv::default(),
                transport(id),
                &logger(),
                bugs,
            )
            .expect("node starts")
        })
        .collect()
}

fn leader_of(nodes: &[Node<Kv>]) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.status().is_ok_and(|s| s.role == raftnode::Role::Leader))
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        // Poll interval; bounded by `deadline`.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A [`ChannelTransport`] that notes every `MsgTimeoutNow` it sends (the message that
/// hands leadership over) with its target and the time.
struct RecordingTransport {
    inner: ChannelTransport,
    handovers: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl Transport for RecordingTransport {
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        self.inner.start(mailbox)
    }

    fn send(&mut self, messages: Vec<Message>) {
        let now = Instant::now();
        let mut handovers = self.handovers.lock();
        for m in &messages {
            if m.get_msg_type() == MessageType::MsgTimeoutNow {
                handovers.push((m.to, now));
            }
        }
        drop(handovers);
        self.inner.send(messages);
    }

    fn stop(&mut self) {
        self.inner.stop();
    }
}

/// Transports on `network` noting their hand-overs in `handovers`.
fn recording(
    network: &ChannelNetwork,
    handovers: &Arc<Mutex<Vec<(u64, Instant)>>>,
) -> impl Fn(u64) -> RecordingTransport {
    let (network, handovers) = (network.clone(), Arc::clone(handovers));
    move |id| RecordingTransport {
        inner: network.transport(id),
        handovers: Arc::clone(&handovers),
    }
}

/// One run: three voters on links that lose 5 % of messages; a follower is cut off
/// while the others remove it, so it never sees its removal committed, then the
/// partition heals (the loss stays). How long after the heal it reports `removed`, or
/// `None` when it does not within 10 election timeouts.
fn removed_node_learns(bugs: &Bugs, seed: u64) -> Option<Duration> {
    let network = ChannelNetwork::with_seed(seed);
    let voters = [1, 2, 3];
    let nodes = start(&voters, bugs, recording(&network, &Arc::default()));
    let leader = leader_of(&nodes);
    let victim = (leader + 1) % 3;
    network.set_drop_rate(0.05);
    network.isolate(nodes[victim].id());
    let victim_id = nodes[victim].id();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = leader_of(&nodes);
        match nodes[leader].remove(victim_id, Duration::from_secs(2)) {
            Ok(cs) => {
                assert!(!cs.voters.contains(&victim_id));
                break;
            }
            // Leadership moved, or the loss delayed the commit: ask the leader again
            // (a removal already applied answers `Invalid`: not a member).
            Err(MembershipError::Invalid(_)) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "removal never committed: {e}");
                // Back off before asking again; bounded by `deadline`.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    assert!(
        !nodes[victim].status().unwrap().removed,
        "the cut-off node cannot know yet"
    );
    network.heal_partitions();
    let healed = Instant::now();
    let learnt = loop {
        if nodes[victim].status().unwrap().removed {
            break Some(healed.elapsed());
        }
        if healed.elapsed() > 10 * ELECTION_TIMEOUT {
            break None;
        }
        // Poll interval; bounded by the 10 election timeouts above.
        std::thread::sleep(Duration::from_millis(5));
    };
    if learnt.is_some() {
        // It stopped campaigning: its term stays put from here.
        let term = nodes[victim].status().unwrap().term;
        let until = Instant::now() + 3 * ELECTION_TIMEOUT;
        while Instant::now() < until {
            assert_eq!(
                nodes[victim].status().unwrap().term,
                term,
                "still campaigning"
            );
            // Sampling interval over a fixed window of three election timeouts.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for n in &nodes {
        n.kill();
    }
    learnt
}

/// Proves a removed node that missed the commit of its removal (cut off while it
/// happened, then back on links losing 5 % of messages) reports `removed` within 10
/// election timeouts and stops campaigning, in every one of 20 runs
/// (`RAFTNODE_REMOVAL_RUNS`).
#[test]
fn a_removed_node_that_missed_its_removal_learns_it_from_its_peers() {
    let runs = env_u64("RAFTNODE_REMOVAL_RUNS", 20);
    let mut slowest = Duration::ZERO;
    for run in 0..runs {
        let took = removed_node_learns(&Bugs::default(), 1000 + run)
            .unwrap_or_else(|| panic!("run {run}: the removed node never reported `removed`"));
        slowest = slowest.max(took);
    }
    eprintln!("{runs} runs; slowest to report `removed`: {slowest:?}");
}

/// With peers' "not a member" notices ignored (0.1's behaviour), the same removed node
/// never learns: the test above can fail.
#[test]
fn without_the_notice_a_removed_node_never_learns() {
    let bugs = Bugs {
        removal_notice_ignored: true,
        ..Bugs::default()
    };
    assert_eq!(removed_node_learns(&bugs, 7), None);
}

/// Shuts five voters down one by one, in id order, with node 3 leading, so two nodes
/// have already stopped when the leader hands over. Returns every hand-over sent to a
/// node after its shutdown began, and the slowest shutdown.
fn shut_down_one_by_one(bugs: &Bugs) -> (Vec<(u64, Duration)>, Duration) {
    let network = ChannelNetwork::new();
    let voters = [1, 2, 3, 4, 5];
    let handovers: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let nodes = start(&voters, bugs, recording(&network, &handovers));
    let first = leader_of(&nodes);
    if nodes[first].id() != 3 {
        nodes[first]
            .transfer_leader(3, DEADLINE)
            .expect("leadership moves to node 3");
    }
    assert_eq!(nodes[leader_of(&nodes)].id(), 3);
    // Every voter heard from lately, so only "stopping" keeps a stopped one out.
    wait_until("node 3 hears from every voter", || {
        let s = nodes[2].status().unwrap();
        s.progress.len() == 5 && s.progress.iter().all(|p| p.recent_active)
    });
    handovers.lock().clear();
    let mut began = Vec::new();
    let mut slowest = Duration::ZERO;
    for (i, node) in nodes.iter().enumerate() {
        if i == 2 && !bugs.transfer_to_any_voter {
            // Asked directly, the leader refuses a node that is going.
            match node.transfer_leader(1, Duration::from_secs(1)) {
                Err(MembershipError::Invalid(why)) => {
                    assert!(why.contains("shutting down"), "{why}")
                }
                other => panic!("transfer to a stopped node: {other:?}"),
            }
        }
        let start = Instant::now();
        began.push((node.id(), start));
        node.shutdown();
        slowest = slowest.max(start.elapsed());
    }
    let bad = handovers
        .lock()
        .iter()
        .filter_map(|(to, at)| {
            let (_, stopped) = began.iter().find(|(id, _)| id == to)?;
            (at >= stopped).then(|| (*to, at.duration_since(*stopped)))
        })
        .collect();
    (bad, slowest)
}

/// Proves a 5-node cluster shut down node by node never hands leadership to a node
/// that is stopping: the leader skips the two that announced their shutdown, and a
/// direct transfer to one is refused.
#[test]
fn a_cluster_shut_down_node_by_node_never_hands_leadership_to_a_stopping_node() {
    let (bad, slowest) = shut_down_one_by_one(&Bugs::default());
    assert!(
        bad.is_empty(),
        "leadership handed to stopping nodes: {bad:?}"
    );
    eprintln!("slowest shutdown: {slowest:?}");
}

/// With hand-overs to any voter (0.1's behaviour) the leader picks a stopped node: the
/// test above can fail.
#[test]
fn without_the_check_leadership_goes_to_a_stopped_node() {
    let bugs = Bugs {
        transfer_to_any_voter: true,
        ..Bugs::default()
    };
    let (bad, _) = shut_down_one_by_one(&bugs);
    assert!(!bad.is_empty(), "expected a hand-over to a stopped node");
}

/// Proves a transfer to a voter that went silent (killed: no notice) is refused: the
/// transport reports it unreachable, or an election timeout passes without a word.
#[test]
fn a_transfer_to_a_silent_voter_is_refused() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    let silent = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(silent);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match c
            .node(leader)
            .transfer_leader(silent, Duration::from_millis(300))
        {
            Err(MembershipError::Invalid(why)) => {
                assert!(
                    why.contains("unreachable") || why.contains("not been heard from"),
                    "{why}"
                );
                break;
            }
            // Accepted before the silence was long enough; raft then times out.
            Err(MembershipError::Timeout) if Instant::now() < deadline => {}
            other => panic!("transfer to a killed node: {other:?}"),
        }
    }
}

/// A state machine that takes a millisecond per command: a driver with a backlog. Its
/// first command waits at `gate` (after saying so on `entered`), and `progress` counts
/// the commands applied.
struct Slow {
    applied: u64,
    progress: Arc<AtomicU64>,
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl raftnode::StateMachine for Slow {
    type Response = ();

    fn apply(&mut self, index: u64, _: &[u8]) {
        if let Some((entered, gate)) = self.gate.take() {
            let _ = entered.send(());
            let _ = gate.recv();
        }
        // The work a real command costs; not a synchronization.
        std::thread::sleep(Duration::from_millis(1));
        self.applied = index;
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<raftnode::bytes::Bytes, raftnode::StateMachineError> {
        Ok(raftnode::bytes::Bytes::from(
            self.applied.to_le_bytes().to_vec(),
        ))
    }

    fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), raftnode::StateMachineError> {
        self.applied = index;
        Ok(())
    }
}

/// Proves `kill()` stops the driver at once, also in the middle of applying a Ready:
/// with 2,999 commands committed in one Ready (3 s of applying), it returns within
/// 500 ms, reports `StopReason::Killed`, and the commands not yet applied fail with
/// `Stopped`.
#[test]
fn kill_does_not_wait_behind_queued_requests() {
    let (entered_tx, entered) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let sm = Slow {
        applied: 0,
        progress: Arc::clone(&progress),
        gate: Some((entered_tx, gate)),
    };
    let node = Node::start(
        test_config(1, &[1]),
        MemLogStore::new(),
        sm,
        ChannelNetwork::new().transport(1),
        &logger(),
    )
    .expect("node starts");
    node.wait_for_leader(DEADLINE)
        .expect("a one-node group elects itself");
    let first = node.propose(vec![0]).expect("queued");
    entered
        .recv_timeout(DEADLINE)
        .expect("the first command reaches the state machine");
    // The driver is held inside the first command's Ready: everything queued now is
    // drained in the next turn and committed in one Ready.
    let mut handles: Vec<_> = (1..3_000u32)
        .map(|i| node.propose(i.to_le_bytes().to_vec()).expect("queued"))
        .collect();
    handles.push(first);
    open.send(()).expect("the driver waits at the gate");
    wait_until("the big Ready is being applied", || {
        progress.load(Ordering::Relaxed) >= 10
    });
    let started = Instant::now();
    assert_eq!(node.kill(), raftnode::StopReason::Killed);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "kill waited {took:?}");
    let applied = progress.load(Ordering::Relaxed);
    let stopped = handles
        .into_iter()
        .filter(|h| h.try_take() == Some(Err(raftnode::ProposeError::Stopped)))
        .count();
    assert!(
        stopped > 2_000,
        "only {stopped} of 3,000 commands were cut off ({applied} applied)"
    );
    eprintln!("kill took {took:?}; {applied} applied, {stopped} cut off");
}

/// Talks every node of a 3-node group into believing it was removed (forged "not a
/// member" notices, in both peers' names, while the nodes are cut off from each other),
/// heals the network, and returns how long the group took to elect a leader again, or
/// `None` when it did not within 20 election timeouts.
fn elects_again_after_forged_removal(bugs: &Bugs) -> Option<Duration> {
    let network = ChannelNetwork::new();
    let voters = [1, 2, 3];
    let nodes = start(&voters, bugs, recording(&network, &Arc::default()));
    leader_of(&nodes);
    for id in voters {
        network.isolate(id);
    }
    // The notices count only on a node leaderless for 3 election timeouts that
    // campaigned since: forge them until every node reports `removed`.
    wait_until("every node believes it was removed", || {
        for n in &nodes {
            let s = n.status().unwrap();
            for from in voters.iter().filter(|&&v| v != s.id) {
                let notice =
                    raftnode::testing::not_a_member_notice(*from, s.id, s.term, u64::MAX / 2);
                let _ = n.mailbox().deliver(notice);
            }
        }
        // Poll interval between rounds of forged notices (the condition is then looked
        // at); bounded by `wait_until`'s deadline.
        std::thread::sleep(Duration::from_millis(20));
        nodes.iter().all(|n| n.status().unwrap().removed)
    });
    network.heal_partitions();
    let healed = Instant::now();
    let elected = loop {
        if nodes
            .iter()
            .any(|n| n.status().is_ok_and(|s| s.role == raftnode::Role::Leader))
        {
            break Some(healed.elapsed());
        }
        if healed.elapsed() > 20 * ELECTION_TIMEOUT {
            break None;
        }
        // Poll interval; bounded by the 20 election timeouts above.
        std::thread::sleep(Duration::from_millis(5));
    };
    if elected.is_some() {
        wait_until("the leader ends every node's belief", || {
            nodes.iter().all(|n| !n.status().unwrap().removed)
        });
    }
    for n in &nodes {
        n.kill();
    }
    elected
}

/// Proves forged removal notices cannot stop a group for good: a group whose every node
/// was talked into believing it was removed elects a leader again on its own once the
/// forging stops (each node campaigns again after 10 election timeouts to hear its
/// voters anew), and the leader ends every node's belief.
#[test]
fn a_group_talked_into_removal_by_forged_notices_elects_again() {
    let took = elects_again_after_forged_removal(&Bugs::default())
        .expect("no leader within 20 election timeouts of the heal");
    eprintln!("leader again {took:?} after the heal");
}

/// With the belief kept for good (bug switch `removal_belief_final`), the same group
/// never elects again: the test above can fail.
#[test]
fn with_a_final_belief_forged_notices_stop_the_group() {
    let bugs = Bugs {
        removal_belief_final: true,
        ..Bugs::default()
    };
    assert_eq!(elects_again_after_forged_removal(&bugs), None);
}
