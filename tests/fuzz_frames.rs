//! Fuzzing the TCP transport's decode-and-validate path on stable Rust: random and
//! mutated frames (bit flips, truncations, splices, length-field tampering, nested
//! group bombs) must be refused with an error or decoded into messages that pass the
//! connection's checks, never panic or overflow the stack (raft-rs note 19, 20).
//!
//! Env: `RAFTNODE_FUZZ_ITERS` (default 100 000), `RAFTNODE_FUZZ_SEED` (default fixed).
//! Soak (docs/security.md): `RAFTNODE_FUZZ_ITERS=10000000 cargo test --release --test
//! fuzz_frames -- --nocapture`. A failure prints the seed, the iteration and the input
//! in hex; rerun with that seed to replay it exactly.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use common::env_u64;
use raftnode::raft_types::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raftnode::testing::wire::{
    self, DecodeContext, Handshake, Reassembly, ReassemblyBudget, WireError,
};

const LOCAL: u64 = 1;
const PEER: u64 = 2;
const MAX_FRAME: usize = 64 << 10;

fn ctx() -> DecodeContext {
    DecodeContext {
        local_id: LOCAL,
        peer_id: PEER,
        max_frame_bytes: MAX_FRAME,
    }
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn encode(m: &Message) -> Vec<u8> {
    protobuf::Message::write_to_bytes(m).expect("encode")
}

fn message(t: MessageType) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = PEER;
    m.to = LOCAL;
    m.term = 4;
    m
}

/// Valid messages of every shape the wire carries: the seeds mutations start from.
fn corpus_messages() -> Vec<Message> {
    let mut append = message(MessageType::MsgAppend);
    append.index = 10;
    append.log_term = 3;
    append.commit = 9;
    for (i, t) in [EntryType::EntryNormal, EntryType::EntryConfChangeV2]
        .into_iter()
        .enumerate()
    {
        let mut e = Entry::default();
        e.set_entry_type(t);
        e.index = 11 + i as u64;
        e.term = 4;
        e.data = if t == EntryType::EntryNormal {
            b"put k v".to_vec().into()
        } else {
            // A ConfChangeV2 adding node 5 as a learner.
            vec![0x12, 0x04, 0x08, 0x02, 0x10, 0x05].into()
        };
        e.context = b"ctx".to_vec().into();
        append.mut_entries().push(e);
    }
    let mut snapshot = message(MessageType::MsgSnapshot);
    let mut s = Snapshot::default();
    s.data = vec![7u8; 300].into();
    s.mut_metadata().index = 20;
    s.mut_metadata().term = 3;
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    cs.learners = vec![5];
    s.mut_metadata().set_conf_state(cs);
    snapshot.set_snapshot(s);
    let mut vote = message(MessageType::MsgRequestVote);
    vote.index = 30;
    vote.log_term = 4;
    vote.priority = -3;
    let mut heartbeat = message(MessageType::MsgHeartbeat);
    heartbeat.commit = 12;
    heartbeat.context = b"read-1".to_vec().into();
    let mut response = message(MessageType::MsgAppendResponse);
    response.reject = true;
    response.reject_hint = 7;
    vec![append, snapshot, vote, heartbeat, response]
}

/// Whole frames built from the corpus: message frames, chunk frames, a handshake, an ack.
fn corpus_frames() -> Vec<Vec<u8>> {
    let messages = corpus_messages();
    let mut frames = Vec::new();
    for m in &messages {
        let mut f = Vec::new();
        wire::encode_messages_frame(&[encode(m)], &mut f);
        frames.push(f);
    }
    let mut all = Vec::new();
    wire::encode_messages_frame(&messages.iter().map(encode).collect::<Vec<_>>(), &mut all);
    frames.push(all);
    let mut chunks = Vec::new();
    wire::encode_chunks(3, &encode(&messages[1]), 100, &mut chunks);
    frames.push(chunks);
    frames.push(
        Handshake {
            cluster_id: 9,
            from: PEER,
            to: LOCAL,
        }
        .encode()
        .to_vec(),
    );
    frames.push(wire::encode_snapshot_ack(3, true).to_vec());
    frames
}

/// A start-group tag for a random field, `depth` times, then as many end-group tags.
fn group_bomb(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let field = 1 + rng.below(20) as u8;
    let mut out = vec![(field << 3) | 3; depth];
    out.extend(std::iter::repeat_n((field << 3) | 4, depth));
    out
}

/// Overwrites the `u32` at `at` (a frame or message length field) with a tampered value.
fn tamper_u32(input: &mut [u8], at: usize, rng: &mut Rng) {
    if at + 4 > input.len() {
        return;
    }
    let old = u32::from_le_bytes(input[at..at + 4].try_into().expect("4 bytes"));
    let new = match rng.below(6) {
        0 => 0,
        1 => u32::MAX,
        2 => old.wrapping_add(1),
        3 => old.wrapping_sub(1),
        4 => (MAX_FRAME as u32).wrapping_add(rng.below(16) as u32),
        _ => rng.next() as u32,
    };
    input[at..at + 4].copy_from_slice(&new.to_le_bytes());
}

/// One mutated input from the corpus.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(10) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let bit = rng.below(len * 8);
                    if len > 0 {
                        input[bit / 8] ^= 1 << (bit % 8);
                    }
                }
            }
            1 => input.truncate(rng.below(len + 1)),
            2 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            3 => tamper_u32(&mut input, 0, rng),
            // The first message's length in a messages frame (after the header and count).
            4 => tamper_u32(&mut input, wire::FRAME_HEADER_BYTES + 4, rng),
            5 => {
                let at = rng.below(len + 1);
                let depth = 1 + rng.below(2000);
                let bomb = group_bomb(rng, depth);
                input.splice(at..at, bomb);
            }
            6 => {
                if len > 0 {
                    let at = rng.below(len);
                    input[at] = [0x00, 0x7f, 0x80, 0xff, 0x0b, 0x0c, 0x3a, 0x4a][rng.below(8)];
                }
            }
            7 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let junk = rng.bytes(n);
                input.splice(at..at, junk);
            }
            8 => {
                // A random but well-framed messages frame around random or mutated bytes.
                let payload = if rng.below(2) == 0 {
                    let n = rng.below(256);
                    rng.bytes(n)
                } else {
                    input
                        .get(wire::FRAME_HEADER_BYTES + 8..)
                        .unwrap_or(&[])
                        .to_vec()
                };
                input.clear();
                wire::encode_messages_frame(&[payload], &mut input);
            }
            _ => {
                let n = rng.below(512);
                input = rng.bytes(n);
            }
        }
    }
    // Mostly re-sealed, so that the decoders behind the frame checksum see the
    // mutation; the rest exercises the checksum itself.
    if input.len() >= wire::FRAME_HEADER_BYTES && rng.below(4) != 0 {
        wire::seal_frame(&mut input);
    }
    input
}

/// Runs every decoder on `input`; panics (caught by the caller) on a broken invariant.
fn exercise(input: &[u8], budget: &std::sync::Arc<ReassemblyBudget>) {
    let ctx = ctx();
    if let Ok(messages) = wire::decode_frame(input, &ctx) {
        for m in &messages {
            assert_eq!(
                (m.to, m.from),
                (LOCAL, PEER),
                "accepted a misrouted message"
            );
            assert!(
                m.get_msg_type() != MessageType::MsgPropose,
                "accepted a forbidden type"
            );
        }
    }
    let _ = wire::scan_message(input);
    if let Ok(chunk) = wire::decode_chunk(input, MAX_FRAME) {
        let mut reassembly = Reassembly::new(budget.clone());
        if let Ok(Some((_, whole))) = reassembly.push(chunk) {
            let _ = wire::decode_message(&whole, &ctx);
        }
    }
    if let Some(h) = input.get(..wire::HANDSHAKE_BYTES) {
        let _ = Handshake::decode(h.try_into().expect("36 bytes"));
    }
    let _ = wire::decode_snapshot_ack(input);
    if let Some(header) = input.get(..wire::FRAME_HEADER_BYTES) {
        let _ = wire::decode_header(header.try_into().expect("a header"), MAX_FRAME);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Proves the seeds are valid, so mutations start from inputs that reach deep into the
/// decoder rather than being refused at the first byte.
#[test]
fn corpus_frames_decode() {
    let ctx = ctx();
    let frames = corpus_frames();
    for frame in &frames[..6] {
        let messages = wire::decode_frame(frame, &ctx).expect("corpus frame decodes");
        assert!(!messages.is_empty());
    }
    let chunks = &frames[6];
    let mut reassembly = Reassembly::new(ReassemblyBudget::new(1 << 20));
    let mut rest = &chunks[..];
    let mut whole = None;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("len")) as usize + 4;
        whole = reassembly
            .push(wire::decode_chunk(&rest[..len], MAX_FRAME).expect("chunk"))
            .expect("reassembles");
        rest = &rest[len..];
    }
    let (_, whole) = whole.expect("complete");
    assert_eq!(
        wire::decode_message(&whole, &ctx).expect("snapshot decodes"),
        corpus_messages()[1]
    );
}

/// Proves random and mutated frames never panic the decode-and-validate path, and that
/// whatever it accepts is addressed to this node from the connection's peer.
#[test]
fn mutated_frames_never_panic() {
    let iterations = env_u64("RAFTNODE_FUZZ_ITERS", 100_000);
    let seed = env_u64("RAFTNODE_FUZZ_SEED", 0x0F_0221_E5EE_D000);
    let corpus = corpus_frames();
    let budget = ReassemblyBudget::new(1 << 20);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut accepted = 0u64;
    let mut bytes = 0u64;
    for i in 0..iterations {
        let input = mutate(&mut rng, &corpus);
        bytes += input.len() as u64;
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&input, &budget)));
        if outcome.is_err() {
            panic!(
                "decoder panicked: seed {seed:#x} iteration {i} input ({} bytes) {}",
                input.len(),
                hex(&input)
            );
        }
        if wire::decode_frame(&input, &ctx()).is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(budget.used(), 0, "a reassembly leaked budget");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz_frames: seed {seed:#x}: {iterations} frames ({} MiB) in {secs:.2}s = {:.0} frames/s, {accepted} accepted",
        bytes >> 20,
        iterations as f64 / secs
    );
}

/// Regression (RUSTSEC-2024-0437): a message of 100 000 nested groups, bare, inside a
/// messages frame, and inside an entry, is refused by the scan before protobuf recurses.
#[test]
fn deep_group_bomb_is_refused_without_stack_overflow() {
    let depth = 100_000;
    let mut bomb = vec![0x0bu8; depth]; // field 1, start group
    bomb.extend(std::iter::repeat_n(0x0cu8, depth)); // field 1, end group
    assert!(matches!(
        wire::scan_message(&bomb),
        Err(WireError::Group {
            field: 1,
            wire_type: 3
        })
    ));

    let mut frame = Vec::new();
    wire::encode_messages_frame(std::slice::from_ref(&bomb), &mut frame);
    let big = DecodeContext {
        max_frame_bytes: 1 << 20,
        ..ctx()
    };
    assert!(matches!(
        wire::decode_frame(&frame, &big),
        Err(WireError::Group { .. })
    ));

    // The same bomb behind valid fields, inside `entries` (field 7).
    let mut m = encode(&message(MessageType::MsgHeartbeat));
    m.push(0x3a);
    let mut len = bomb.len();
    while len >= 0x80 {
        m.push((len as u8) | 0x80);
        len >>= 7;
    }
    m.push(len as u8);
    m.extend_from_slice(&bomb);
    assert!(matches!(
        wire::scan_message(&m),
        Err(WireError::Group { field: 1, .. })
    ));
}
