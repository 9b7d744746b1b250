//! No frame from a peer can crash a node: forged raft messages, sent over the real TCP
//! transport by a client that knows the cluster id and claims a member's id, are refused
//! before raft-rs steps them, counted by reason, and the cluster keeps serving (issue 13).
//! Each of these frames panicked a raft-rs 0.7 node before the checks.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::tcp::TcpCluster;
use common::*;
use raftnode::raft_types::{ConfState, Message, MessageType};
use raftnode::testing::wire::{self, Handshake};
use raftnode::{ReadConsistency, Refusal};

const CLUSTER_ID: u64 = 0x4057_11E5;

/// Far past any log these tests write.
const FAR: u64 = 1 << 30;

fn tcp_cluster() -> TcpCluster {
    let c = TcpCluster::start_plain(CLUSTER_ID, 3);
    c.wait_leader();
    c.propose_ok(put("before", "1"));
    c
}

/// The leader, one follower and the other, once the cluster agrees on a leader.
fn roles(c: &TcpCluster) -> (u64, u64, u64) {
    let leader = c.wait_leader();
    let mut followers = (1..=3).filter(|&id| id != leader);
    let a = followers.next().expect("a follower");
    (leader, a, followers.next().expect("another follower"))
}

fn term(c: &TcpCluster) -> u64 {
    let leader = c.wait_leader();
    c.nodes[&leader].status().expect("status").term
}

fn message(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    (m.from, m.to, m.term) = (from, to, term);
    m
}

/// Connects to `addr` as member `from`, completes the handshake, and sends `m` the way
/// the transport does (a snapshot in chunks, anything else in a messages frame).
fn forge(addr: SocketAddr, m: &Message) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let hello = Handshake {
        cluster_id: CLUSTER_ID,
        from: m.from,
        to: m.to,
    };
    stream.write_all(&hello.encode()).expect("handshake");
    let mut answer = [0u8; wire::HANDSHAKE_BYTES];
    stream.read_exact(&mut answer).expect("handshake answer");
    Handshake::decode(&answer).expect("a valid answer");
    let encoded = protobuf::Message::write_to_bytes(m).expect("encode");
    let mut frame = Vec::new();
    if m.get_msg_type() == MessageType::MsgSnapshot {
        wire::encode_chunks(1, &encoded, 64 * 1024, &mut frame);
    } else {
        wire::encode_messages_frame(&[encoded], &mut frame);
    }
    stream.write_all(&frame).expect("frame");
    stream
}

fn refused(c: &TcpCluster, id: u64, reason: Refusal) -> u64 {
    let status = c.nodes[&id].status().expect("status");
    status.metrics.refused.get(&reason).copied().unwrap_or(0)
}

/// Sends `m` over TCP as `m.from`, waits until its receiver counted the refusal for
/// `reason` (or stopped), then checks that every node still serves: none stopped, a
/// write is acknowledged, and a linearizable read on every node sees it.
fn forge_and_check(c: &TcpCluster, m: Message, reason: Refusal) {
    let target = m.to;
    let before = refused(c, target, reason);
    let _stream = forge(c.addr(target), &m);
    wait_until("the forged frame refused (or the node stopped)", || {
        c.nodes[&target].is_stopped() || refused(c, target, reason) > before
    });
    assert_serving(c, &format!("after-{reason:?}"));
    let status = c.nodes[&target].status().expect("status");
    assert_eq!(status.metrics.refused.get(&reason), Some(&(before + 1)));
    assert!(
        status.term < FAR,
        "a refused message moved no term: {}",
        status.term
    );
}

fn assert_serving(c: &TcpCluster, key: &str) {
    for (id, node) in &c.nodes {
        assert!(
            !node.is_stopped(),
            "node {id} stopped: {:?}",
            node.stop_reason()
        );
    }
    c.propose_ok(put(key, "acknowledged"));
    for (id, node) in &c.nodes {
        let key = key.to_string();
        let value = node
            .read(ReadConsistency::Linearizable, DEADLINE, move |kv: &Kv| {
                kv.state.lock().map.get(&key).cloned()
            })
            .unwrap_or_else(|e| panic!("node {id} cannot read: {e}"));
        assert_eq!(value.as_deref(), Some("acknowledged"), "node {id}");
    }
}

fn snapshot(from: u64, to: u64, term: u64, conf_state: ConfState) -> Message {
    let mut m = message(MessageType::MsgSnapshot, from, to, term);
    let meta = m.mut_snapshot().mut_metadata();
    (meta.index, meta.term) = (FAR, term);
    meta.set_conf_state(conf_state);
    // raftnode's snapshot framing (magic, codec "stored", no member table), then a
    // state the test's `Kv` could restore.
    m.mut_snapshot().data = b"RNS\x00k\tv\n".to_vec().into();
    m
}

/// Proves the first frame — a `MsgAppend` with a huge term, an index far past
/// the log, log_term 0, commit equal to the index and no entries, claimed to come from
/// the leader — is refused (`AppendAnchor`); raft-rs would take the term past its log to
/// be 0, match it, and panic in `commit_to`.
#[test]
fn append_past_the_log_with_log_term_zero_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let mut m = message(MessageType::MsgAppend, leader, follower, 1 << 40);
    (m.index, m.log_term, m.commit) = (FAR, 0, FAR);
    forge_and_check(&c, m, Refusal::AppendAnchor);
}

/// Proves a `MsgSnapshot` whose ConfState lists a voter as a learner too is refused
/// (`ConfState`); raft-rs would panic with "invalid restore".
#[test]
fn snapshot_with_a_voter_also_learner_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, other) = roles(&c);
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    cs.learners = vec![other];
    forge_and_check(
        &c,
        snapshot(leader, follower, term(&c), cs),
        Refusal::ConfState,
    );
}

/// Proves a `MsgSnapshot` whose joint ConfState removes every voter is refused
/// (`ConfState`); raft-rs would panic with "removed all voters".
#[test]
fn snapshot_whose_joint_conf_state_removes_every_voter_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let mut cs = ConfState::default();
    cs.voters_outgoing = vec![1, 2, 3];
    forge_and_check(
        &c,
        snapshot(leader, follower, term(&c), cs),
        Refusal::ConfState,
    );
}

/// Proves a `MsgSnapshot` with a valid ConfState and data that is not a raftnode
/// snapshot (no checksum) is refused (`SnapshotChecksum`); it used to be stored before the state machine
/// read it, stopping the node on every restart until its data directory was wiped.
#[test]
fn snapshot_with_garbage_data_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    let mut m = snapshot(leader, follower, term(&c), cs);
    m.mut_snapshot().data = vec![0xA5; 4096].into();
    forge_and_check(&c, m, Refusal::SnapshotChecksum);
}

/// Proves a forged `MsgAppendResponse` with an index far past the leader's log, sent to
/// the leader as a follower, is refused (`PastLeaderLog`); raft-rs would then send that
/// honest follower an append anchored past its log, which panics it.
#[test]
fn append_response_past_the_leaders_log_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let mut m = message(MessageType::MsgAppendResponse, follower, leader, term(&c));
    (m.index, m.commit) = (FAR, 1);
    forge_and_check(&c, m, Refusal::PastLeaderLog);
}

/// Proves a heartbeat from the leader committing past the follower's log is refused
/// (`CommitPastLog`); raft-rs applies a heartbeat's commit without a look at the log
/// and panics ("to_commit ... is out of range").
#[test]
fn heartbeat_committing_past_the_log_is_refused() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let mut m = message(MessageType::MsgHeartbeat, leader, follower, term(&c));
    m.commit = FAR;
    forge_and_check(&c, m, Refusal::CommitPastLog);
}

/// Proves a heartbeat in the current term from a node that is not its leader is
/// refused (`NotFromLeader`): one leader per term.
#[test]
fn heartbeat_from_a_second_leader_in_the_term_is_refused() {
    let c = tcp_cluster();
    let (_, follower, other) = roles(&c);
    let m = message(MessageType::MsgHeartbeat, other, follower, term(&c));
    forge_and_check(&c, m, Refusal::NotFromLeader);
}

/// Proves a `MsgTimeoutNow` from a node that is not the leader is refused
/// (`StaleLeader`): it would make a follower campaign past every lease.
#[test]
fn timeout_now_from_a_follower_is_refused() {
    let c = tcp_cluster();
    let (_, follower, other) = roles(&c);
    let m = message(MessageType::MsgTimeoutNow, other, follower, term(&c));
    forge_and_check(&c, m, Refusal::StaleLeader);
}

/// Proves a `MsgTransferLeader` sent to a follower is refused (`NotLeader`); raft-rs
/// would forward it to the leader with its term still set and panic ("term should not
/// be set when sending").
#[test]
fn transfer_request_to_a_follower_is_refused() {
    let c = tcp_cluster();
    let (_, follower, other) = roles(&c);
    let m = message(MessageType::MsgTransferLeader, other, follower, term(&c));
    forge_and_check(&c, m, Refusal::NotLeader);
}

/// Proves a vote request from a log position no candidate has (an index past 0 with a
/// last log term of 0) is refused (`VoteLog`), and a read-index request without a context is
/// refused (`ReadContext`; raft-rs indexes its first entry).
#[test]
fn impossible_vote_and_empty_read_index_are_refused() {
    let c = tcp_cluster();
    let (leader, follower, other) = roles(&c);
    let mut vote = message(MessageType::MsgRequestVote, other, follower, term(&c) + 1);
    (vote.index, vote.log_term) = (FAR, 0);
    forge_and_check(&c, vote, Refusal::VoteLog);
    let read = message(MessageType::MsgReadIndex, follower, leader, 0);
    forge_and_check(&c, read, Refusal::ReadContext);
}

/// Proves refused frames keep the connection: a forger's connection stays open and its
/// later honest-looking traffic is judged message by message, and a burst of refusals
/// is counted in full.
#[test]
fn a_burst_of_refusals_is_counted_in_full() {
    let c = tcp_cluster();
    let (leader, follower, _) = roles(&c);
    let term = term(&c);
    let before = refused(&c, follower, Refusal::CommitPastLog);
    let mut m = message(MessageType::MsgHeartbeat, leader, follower, term);
    m.commit = FAR;
    let encoded = protobuf::Message::write_to_bytes(&m).expect("encode");
    let mut stream = forge(c.addr(follower), &m);
    let mut frame = Vec::new();
    wire::encode_messages_frame(&vec![encoded; 99], &mut frame);
    stream
        .write_all(&frame)
        .expect("a second frame on the same connection");
    wait_until("100 refusals counted", || {
        refused(&c, follower, Refusal::CommitPastLog) >= before + 100
    });
    assert_serving(&c, "after-the-burst");
}
