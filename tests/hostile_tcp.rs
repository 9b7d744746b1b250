//! The hostile-member fuzzer against a real 3-node cluster over TCP (issue 13 item 8):
//! while client threads write, a forger that knows the cluster id and the member ids
//! connects to each node as another member and sends frames of generated hostile
//! messages (src/testing/sim/hostile.rs). No node may stop or panic, every acknowledged
//! write must read back linearizably on every node, and the messages must reach the
//! nodes' checks: each one is accounted for by the target's metrics (refused by reason,
//! or passed to raft-rs).
//!
//! Why frames are paced, one batch per connection and each batch waited for: the
//! transport keeps one inbound connection per member, so the forger's handshake closes
//! the real member's connection, whose reconnection then closes the forger's; frames
//! still unread on a closed connection are lost. And a frame the wire decoder refuses
//! (a message not addressed to the node, not from the connection's member, of a type
//! that never travels, out of range, or whose conf change entry does not decode) closes
//! the connection with everything after it: the forger leaves those out (the wire
//! decoder's own tests and tests/fuzz_frames.rs cover them).
//! So each batch is one frame of messages the wire decoder accepts, ending in a
//! sentinel the checks refuse with a reason honest peers never cause
//! (`SnapshotRequest`); once the target counted the sentinel, every message before it
//! was stepped or dropped on a full queue (counted in `messages_dropped`).
//!
//! Size with `RAFTNODE_HOSTILE_TCP_MESSAGES` (messages to account for; default 10,000;
//! the soak is 100,000) and seed with `RAFTNODE_HOSTILE_TCP_SEED` (default 1).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tcp::TcpCluster;
use common::*;
use raftnode::raft_types::{Message, MessageType};
use raftnode::testing::sim::{Hostile, HostileTarget, Mutation};
use raftnode::testing::wire::{self, DecodeContext, Handshake};
use raftnode::{Node, ReadConsistency, Refusal, Role, TcpConfig};

const CLUSTER_ID: u64 = 0x4057_11E5_7C90;

/// Messages per frame, the sentinel included: well under the inbound queue's capacity.
const BATCH: usize = 100;

/// Added to a target's last index when aiming: the log cannot grow this much while a
/// batch is on its way, so an index "past the log" when made is still past it when
/// stepped (else a forged acknowledgement could commit what no quorum holds).
const LOG_MARGIN: u64 = 1 << 24;

/// Acknowledged writes the run needs at least, so that the hostile frames meet a
/// cluster that is busy writing.
const MIN_ACKED: usize = 1_000;

/// What the forger's batches did, by the targets' own counts.
#[derive(Default, Debug)]
struct Tally {
    /// Messages stepped by a target (refused or passed), sentinels included.
    accounted: u64,
    refused: BTreeMap<Refusal, u64>,
    passed: u64,
    /// Messages dropped by a full inbound queue while a batch was on its way.
    dropped: u64,
    /// Batches whose connection closed before the target read them.
    lost_batches: u64,
    batches: u64,
    by_mutation: BTreeMap<Mutation, u64>,
    /// Generated messages the wire decoder would refuse (and close the connection on):
    /// not sent.
    not_wire_valid: u64,
}

fn sentinel(from: u64, to: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeatResponse);
    (m.from, m.to, m.term, m.request_snapshot) = (from, to, 1, 1);
    m
}

/// Connects to node `to` as member `from` and completes the handshake.
fn connect(c: &TcpCluster, from: u64, to: u64) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(c.addr(to)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let hello = Handshake {
        cluster_id: CLUSTER_ID,
        from,
        to,
    };
    stream.write_all(&hello.encode()).ok()?;
    let mut answer = [0u8; wire::HANDSHAKE_BYTES];
    stream.read_exact(&mut answer).ok()?;
    Handshake::decode(&answer).ok()?;
    Some(stream)
}

fn aim(node: &Node<Kv>, from: u64) -> Option<HostileTarget> {
    let s = node.status().ok()?;
    Some(HostileTarget {
        id: s.id,
        term: s.term,
        leading: s.role == Role::Leader,
        leader: s.leader.unwrap_or(0),
        last_index: s.last_index + LOG_MARGIN,
        peers: vec![from],
    })
}

/// Sends one batch from `from` to `to` and waits until the target accounted for it.
fn send_batch(c: &TcpCluster, forger: &mut Hostile, from: u64, to: u64, tally: &mut Tally) {
    let node = &c.nodes[&to];
    let Some(target) = aim(node, from) else {
        return;
    };
    let ctx = DecodeContext {
        local_id: to,
        peer_id: from,
        max_frame_bytes: TcpConfig::new(CLUSTER_ID, "127.0.0.1:0".parse().expect("address"))
            .max_frame_bytes,
    };
    let mut encoded = Vec::with_capacity(BATCH);
    let mut kinds = Vec::with_capacity(BATCH);
    while encoded.len() < BATCH - 1 {
        let Some((kind, m)) = forger.generate(&target) else {
            continue;
        };
        let bytes = protobuf::Message::write_to_bytes(&m).expect("encode");
        if wire::decode_message(&bytes, &ctx).is_err() {
            tally.not_wire_valid += 1;
            continue;
        }
        encoded.push(bytes);
        kinds.push(kind);
    }
    encoded.push(protobuf::Message::write_to_bytes(&sentinel(from, to)).expect("encode"));
    let mut frame = Vec::new();
    wire::encode_messages_frame(&encoded, &mut frame);
    let before = node.status().expect("status").metrics;
    let Some(mut stream) = connect(c, from, to) else {
        tally.lost_batches += 1;
        return;
    };
    tally.batches += 1;
    if stream.write_all(&frame).is_err() {
        tally.lost_batches += 1;
        return;
    }
    let sentinels = |m: &raftnode::MetricsSnapshot| {
        m.refused
            .get(&Refusal::SnapshotRequest)
            .copied()
            .unwrap_or(0)
    };
    // The sentinel counted, or the frame lost with its connection: then the target
    // never counts it. Two seconds is far longer than a loaded node takes to step it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let after = loop {
        let now = node.status().expect("status").metrics;
        if sentinels(&now) > sentinels(&before) {
            break Some(now);
        }
        if Instant::now() >= deadline {
            break None;
        }
        // Poll interval; the loop is bounded by `deadline` (a batch not seen by then is
        // counted as lost, not waited for).
        std::thread::sleep(Duration::from_millis(1));
    };
    let Some(after) = after else {
        tally.lost_batches += 1;
        if std::env::var("RAFTNODE_HOSTILE_TCP_DEBUG").is_ok() {
            eprintln!("lost batch {from}->{to}: {:?}", c.handles[&to].stats());
        }
        return;
    };
    let dropped = after.messages_dropped - before.messages_dropped;
    let mut refused_here = 0;
    for (reason, n) in &after.refused {
        let delta = n - before.refused.get(reason).copied().unwrap_or(0);
        if delta > 0 {
            *tally.refused.entry(*reason).or_default() += delta;
            refused_here += delta;
        }
    }
    let stepped = (BATCH as u64).saturating_sub(dropped);
    tally.accounted += stepped;
    tally.passed += stepped.saturating_sub(refused_here);
    tally.dropped += dropped;
    for kind in kinds {
        *tally.by_mutation.entry(kind).or_default() += 1;
    }
}

/// A client thread: writes `w{writer}-{n}` = `n` through whoever leads, and records
/// what was acknowledged.
fn writer(
    nodes: Vec<Node<Kv>>,
    writer: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Some(leader) = nodes.iter().find(|x| x.leader() == Some(x.id())) else {
                // No leader known right now: wait (bounded) until one is, then look again;
                // the loop also ends when told to stop.
                let _ = nodes[0].wait_for_leader(Duration::from_millis(100));
                continue;
            };
            let (key, value) = (format!("w{writer}-{n}"), n.to_string());
            n += 1;
            let outcome = leader
                .propose(put(&key, &value))
                .and_then(|mut h| h.wait_timeout(Duration::from_secs(5)));
            if outcome.is_ok() {
                acked.lock().expect("not poisoned").push((key, value));
            } else {
                // Pacing, not synchronization: after a failed write (its key is never
                // reused) back off briefly so a refusing leader is not hammered; nothing
                // waits on this to have happened.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

/// With `RAFTNODE_HOSTILE_TCP_DEBUG` set: prints every node's role, term, leader and
/// `removed` and the acknowledged writes once a second, to see where availability goes.
fn monitor(
    nodes: Vec<Node<Kv>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let line: Vec<String> = nodes
                .iter()
                .filter_map(|n| n.status().ok())
                .map(|s| {
                    format!(
                        "{}:{:?}/t{}/l{:?}/c{}{}",
                        s.id,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit,
                        if s.removed { "/REMOVED" } else { "" }
                    )
                })
                .collect();
            let n = acked.lock().expect("not poisoned").len();
            eprintln!(
                "{:>5.1}s acked={n} {}",
                started.elapsed().as_secs_f64(),
                line.join(" ")
            );
            // Reporting interval of a debug aid, not synchronization.
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

/// Proves that hostile members cannot crash a real TCP cluster under write load or lose
/// an acknowledged write, with every hostile message accounted for at a node's checks.
#[test]
fn hostile_members_cannot_break_a_tcp_cluster() {
    let target = env_u64("RAFTNODE_HOSTILE_TCP_MESSAGES", 10_000);
    let seed = env_u64("RAFTNODE_HOSTILE_TCP_SEED", 1);
    let c = TcpCluster::start_plain(CLUSTER_ID, 3);
    c.wait_leader();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let nodes: Vec<Node<Kv>> = c.nodes.values().cloned().collect();
    let writers: Vec<_> = (0..2)
        .map(|w| writer(nodes.clone(), w, stop.clone(), acked.clone()))
        .collect();
    let monitor = std::env::var("RAFTNODE_HOSTILE_TCP_DEBUG")
        .is_ok()
        .then(|| monitor(nodes.clone(), stop.clone(), acked.clone()));
    let mut forger = Hostile::new(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    let pairs: Vec<(u64, u64)> = (1..=3)
        .flat_map(|to| (1..=3).filter(move |&f| f != to).map(move |f| (f, to)))
        .collect();
    let mut k = 0;
    // Bounded: every batch either is accounted for or counts as lost, too many lost
    // batches fail the test, and so does write load that stops making progress.
    let deadline = Instant::now() + Duration::from_secs(300);
    let acked_writes = || acked.lock().expect("not poisoned").len();
    while tally.accounted < target || acked_writes() < MIN_ACKED {
        assert!(
            Instant::now() < deadline,
            "not done within 300 s: {} acknowledged writes, {tally:?}",
            acked_writes()
        );
        let (from, to) = pairs[k % pairs.len()];
        k += 1;
        send_batch(&c, &mut forger, from, to, &mut tally);
        for (id, node) in &c.nodes {
            assert!(
                !node.is_stopped(),
                "node {id} stopped: {:?}",
                node.stop_reason()
            );
        }
        assert!(
            tally.lost_batches <= 20 + tally.batches / 10,
            "too many batches never reached their node: {tally:?}"
        );
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers.into_iter().chain(monitor) {
        w.join().expect("writer or monitor thread");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("not poisoned"));
    assert!(
        !acked.is_empty(),
        "no write was acknowledged under hostile traffic"
    );
    // Every acknowledged write reads back, linearizably, on every node.
    for (id, node) in &c.nodes {
        assert!(
            !node.is_stopped(),
            "node {id} stopped: {:?}",
            node.stop_reason()
        );
        let map = node
            .read(ReadConsistency::Linearizable, DEADLINE, |kv: &Kv| {
                kv.state.lock().map.clone()
            })
            .unwrap_or_else(|e| panic!("node {id} cannot read: {e}"));
        for (key, value) in &acked {
            assert_eq!(
                map.get(key),
                Some(value),
                "node {id} lost acknowledged {key}"
            );
        }
    }
    println!(
        "hostile tcp: {} messages accounted for at the nodes' checks in {:.1} s ({:.0} msgs/s): \
         {} refused, {} passed to raft; {} dropped on a full queue; {} batches ({} lost with \
         their connection); {} generated messages the wire decoder refuses were not sent; \
         {} acknowledged writes read back linearizably on 3 nodes",
        tally.accounted,
        elapsed.as_secs_f64(),
        tally.accounted as f64 / elapsed.as_secs_f64().max(1e-9),
        tally.refused.values().sum::<u64>(),
        tally.passed,
        tally.dropped,
        tally.batches,
        tally.lost_batches,
        tally.not_wire_valid,
        acked.len(),
    );
    println!("refused by reason: {:?}", tally.refused);
    // The forger sends no type the wire refuses; honest notices (a follower's answer to
    // a forged heartbeat or snapshot in its leader's name) must cross the wire too.
    let forbidden = c.refused_everywhere(raftnode::RefusalReason::ForbiddenType);
    assert_eq!(forbidden, 0, "honest notices refused by the wire decoder");
    println!("sent by mutation: {:?}", tally.by_mutation);
    assert!(tally.accounted >= target);
}
