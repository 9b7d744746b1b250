//! Nodes over real TCP sockets on loopback: election, replication, failover, a chunked
//! snapshot to a new learner, and traffic from strangers or broken peers refused while
//! the cluster keeps committing.
//!
//! Env: `RAFTNODE_TCP_SNAPSHOT_MIB` sets the state size of the snapshot test (default 64
//! MiB, sent in 1 MiB chunks; about 2 s in a debug build).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use common::tcp::TcpCluster;
use common::*;
use raftnode::raft_types::{Message, MessageType};
use raftnode::wire::{self, Handshake};
use raftnode::{MemLogStore, Node, ReadConsistency, RefusalReason, TcpConfig, TcpTransport};

const CLUSTER_ID: u64 = 0xC1A5_7E12;

/// A member every transport of a `TcpCluster` knows but raft does not: raw test clients
/// speak as it, so they never displace a real peer's connection (a new connection from
/// a peer id closes the older one).
const SPARE: u64 = 9;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// Voters 1..=n on TCP; every transport also knows `SPARE` (at a dead address).
fn tcp_cluster(n: u64) -> TcpCluster {
    let transports = (1..=n)
        .map(|id| {
            let config = TcpConfig::new(CLUSTER_ID, loopback());
            (id, TcpTransport::bind(config, &logger()).expect("bind"))
        })
        .collect();
    let spare = (SPARE, "127.0.0.1:9".parse().expect("address"));
    TcpCluster::start(transports, &[spare])
}

/// Proves three nodes over TCP elect one leader and replicate every committed write to
/// every node (Raft §5.2, §5.3), with no refusals between honest peers.
#[test]
fn three_nodes_elect_and_replicate_over_tcp() {
    let c = tcp_cluster(3);
    c.wait_leader();
    for i in 0..20 {
        c.propose_ok(put(&format!("k{i}"), &i.to_string()));
    }
    let map = c.wait_same_maps();
    assert_eq!(map.len(), 20);
    for (id, handle) in &c.handles {
        let stats = handle.stats();
        assert_eq!(stats.refused_total(), 0, "node {id} refused {stats:?}");
        assert!(
            stats.messages_sent > 0 && stats.messages_received > 0,
            "{stats:?}"
        );
    }
}

/// Proves a killed leader is replaced by a new one elected over TCP (§5.2), the new
/// leader commits, and the survivors' writers keep counting failed reconnects to the
/// dead node without blocking anything.
#[test]
fn killed_leader_is_replaced_over_tcp() {
    let mut c = tcp_cluster(3);
    let old = c.wait_leader();
    c.propose_ok(put("before", "1"));
    c.nodes.remove(&old).expect("leader").kill();
    let new = c.wait_leader();
    assert_ne!(new, old);
    c.propose_ok(put("after", "2"));
    let map = c.wait_same_maps();
    assert_eq!(map.get("after").map(String::as_str), Some("2"));
    let handle = &c.handles[&new];
    wait_until("the new leader tried to reach the dead node", || {
        handle.stats().connect_failures > 0
    });
}

/// A raw client speaking the wire format by hand.
fn raw_connect(addr: SocketAddr, cluster_id: u64, from: u64, to: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let hello = Handshake {
        cluster_id,
        from,
        to,
    };
    stream.write_all(&hello.encode()).expect("handshake");
    stream
}

/// Reads the node's handshake answer; panics if the node closed instead.
fn expect_answer(stream: &mut TcpStream) {
    let mut answer = [0u8; wire::HANDSHAKE_BYTES];
    stream.read_exact(&mut answer).expect("handshake answer");
    Handshake::decode(&answer).expect("a valid answer");
}

/// Asserts the node closed the connection (EOF or reset), within the deadline.
fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {} // a handshake answer before the refusal
        }
    }
}

fn message(t: MessageType, from: u64, to: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m
}

fn frame_of(messages: &[Message]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| protobuf::Message::write_to_bytes(m).expect("encode"))
        .collect();
    let mut out = Vec::new();
    wire::encode_messages_frame(&encoded, &mut out);
    out
}

/// A messages frame whose one "message" is `payload`, raw.
fn raw_message_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_messages_frame(&[payload.to_vec()], &mut out);
    out
}

/// Proves each kind of bad traffic (wrong cluster, non-member, misaddressed handshake
/// or message, spoofed sender, forbidden type, oversized frame, group wire types,
/// garbage, a half-written frame) is refused with its own counter and the connection
/// closed, and that the cluster still commits after each (ERRATA 19, 20).
#[test]
fn refused_traffic_is_counted_and_the_cluster_keeps_serving() {
    let c = tcp_cluster(3);
    let leader = c.wait_leader();
    // Valid handshakes come as the spare member; misrouted traffic names a real one.
    let spare = SPARE;
    let other = *c
        .nodes
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    let addr = c.addr(leader);
    let handle = c.handles[&leader].clone();
    let bomb: Vec<u8> = std::iter::repeat_n(0x0bu8, 100_000).collect(); // start-group tags

    type Attack = Box<dyn Fn() -> TcpStream>;
    let cases: Vec<(RefusalReason, Attack)> = vec![
        (
            RefusalReason::WrongCluster,
            Box::new(move || raw_connect(addr, CLUSTER_ID + 1, spare, leader)),
        ),
        (
            RefusalReason::NonMember,
            Box::new(move || raw_connect(addr, CLUSTER_ID, 99, leader)),
        ),
        (
            RefusalReason::Misaddressed,
            Box::new(move || raw_connect(addr, CLUSTER_ID, spare, other)),
        ),
        (
            RefusalReason::BadHandshake,
            Box::new(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789")
                    .expect("garbage");
                s
            }),
        ),
        (
            RefusalReason::Misaddressed,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                let m = message(MessageType::MsgHeartbeatResponse, spare, other);
                s.write_all(&frame_of(&[m])).expect("frame");
                s
            }),
        ),
        (
            RefusalReason::SenderMismatch,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                let m = message(MessageType::MsgHeartbeatResponse, other, leader);
                s.write_all(&frame_of(&[m])).expect("frame");
                s
            }),
        ),
        (
            RefusalReason::ForbiddenType,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                let m = message(MessageType::MsgPropose, spare, leader);
                s.write_all(&frame_of(&[m])).expect("frame");
                s
            }),
        ),
        (
            RefusalReason::Oversized,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                let mut header = (17u32 << 20).to_le_bytes().to_vec();
                header.push(wire::KIND_MESSAGES);
                s.write_all(&header).expect("header");
                s
            }),
        ),
        (
            RefusalReason::Group,
            Box::new({
                let bomb = bomb.clone();
                move || {
                    let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                    expect_answer(&mut s);
                    s.write_all(&raw_message_frame(&bomb)).expect("frame");
                    s
                }
            }),
        ),
        (
            RefusalReason::Malformed,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                s.write_all(&raw_message_frame(&[0xff; 64])).expect("frame");
                s
            }),
        ),
        (
            RefusalReason::Truncated,
            Box::new(move || {
                let mut s = raw_connect(addr, CLUSTER_ID, spare, leader);
                expect_answer(&mut s);
                let m = message(MessageType::MsgHeartbeatResponse, spare, leader);
                let frame = frame_of(&[m]);
                s.write_all(&frame[..frame.len() - 2])
                    .expect("half a frame");
                s.shutdown(std::net::Shutdown::Write).expect("close");
                s
            }),
        ),
    ];

    for (i, (reason, attack)) in cases.iter().enumerate() {
        let before = handle.stats().refused(*reason);
        let mut stream = attack();
        wait_until(&format!("case {i}: {reason} refused"), || {
            handle.stats().refused(*reason) > before
        });
        expect_closed(&mut stream);
        c.propose_ok(put("after", &i.to_string()));
    }
    let map = c.wait_same_maps();
    assert_eq!(
        map.get("after").map(String::as_str),
        Some((cases.len() - 1).to_string().as_str())
    );
    let stats = handle.stats();
    assert_eq!(stats.refused(RefusalReason::Misaddressed), 2, "{stats:?}");
    assert!(stats.refused_total() >= cases.len() as u64, "{stats:?}");
}

/// Proves a snapshot several chunks long crosses TCP to a learner added by a
/// membership change whose context carries its `host:port`, is reassembled and
/// restored intact, and is reported `Finish` to the leader only after the learner
/// acknowledged it (ERRATA 13).
#[test]
fn large_snapshot_crosses_tcp_in_chunks_to_a_new_learner() {
    let size = blob_bytes("RAFTNODE_TCP_SNAPSHOT_MIB", 64);
    // The leader knows no peer: it learns the learner's address from the membership
    // change's context.
    let leader_transport =
        TcpTransport::bind(TcpConfig::new(CLUSTER_ID, loopback()), &logger()).expect("bind");
    let mut learner_config = TcpConfig::new(CLUSTER_ID, loopback());
    learner_config
        .peers
        .insert(1, leader_transport.local_addr());
    let learner_transport = TcpTransport::bind(learner_config, &logger()).expect("bind");
    let learner_addr = learner_transport.local_addr();
    let (leader_handle, learner_handle) = (leader_transport.handle(), learner_transport.handle());

    let leader = Node::start(
        blob_config(1, &[1]),
        MemLogStore::new(),
        Blob::default(),
        leader_transport,
        &logger(),
    )
    .expect("leader starts");
    leader.wait_for_leader(DEADLINE).expect("leader elected");
    leader
        .propose(format!("fill 7 {size}").into_bytes())
        .expect("queued")
        .wait_timeout(DEADLINE)
        .expect("filled");
    let want = leader
        .read(ReadConsistency::Linearizable, DEADLINE, |b| {
            fingerprint(&b.data)
        })
        .expect("read");
    let index = leader.snapshot_now().expect("snapshot").expect("taken");

    let started = Instant::now();
    let learner = Node::start(
        blob_config(2, &[]),
        MemLogStore::new(),
        Blob::default(),
        learner_transport,
        &logger(),
    )
    .expect("learner starts");
    leader
        .add_learner(2, learner_addr.to_string(), DEADLINE)
        .expect("learner added");
    wait_until("learner restored the snapshot", || {
        learner
            .status()
            .map(|s| s.applied >= index)
            .unwrap_or(false)
    });
    let elapsed = started.elapsed();
    assert_eq!(
        learner.read_stale(|b| fingerprint(&b.data)).expect("read"),
        want
    );
    wait_until("leader saw the snapshot acknowledged", || {
        leader_handle.stats().snapshots_sent >= 1
    });
    let received = learner_handle.stats();
    assert!(received.snapshots_received >= 1, "{received:?}");
    assert_eq!(received.refused_total(), 0, "{received:?}");
    eprintln!(
        "tcp snapshot: {} MiB in {} chunks, transfer + restore {elapsed:?}",
        size >> 20,
        size.div_ceil(1 << 20)
    );
    learner.kill();
    leader.kill();
}
