//! Writes the hand-made seeds the corpus grew from: valid inputs of every shape, so
//! that mutations start deep in the decoders and the validator. The committed corpus
//! (`corpus/<target>/`) is what fuzzing and `cargo fuzz cmin` made of them; rerun this
//! only to start a corpus afresh:
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --example write_seeds`.

use std::path::Path;

use protobuf::Message as _;
use raftnode::raft_types::{ConfState, Entry, EntryType, Message, MessageType};
use raftnode::testing::wire::{self, Handshake};

fn message(t: MessageType, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = 2;
    m.to = 1;
    m.term = term;
    m
}

fn entry(index: u64, term: u64, t: EntryType, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(t);
    (e.index, e.term) = (index, term);
    e.data = data.to_vec().into();
    e
}

/// Messages of every type a peer sends, plausible for a node whose log ends at index
/// 4 of term 1 (in term 1 or 2).
fn messages() -> Vec<Message> {
    let mut out = Vec::new();
    let mut append = message(MessageType::MsgAppend, 2);
    (append.index, append.log_term, append.commit) = (4, 1, 5);
    append
        .mut_entries()
        .push(entry(5, 2, EntryType::EntryNormal, b"put k v"));
    // A ConfChangeV2 adding node 4 as a learner.
    let cc = [0x12, 0x04, 0x08, 0x02, 0x10, 0x04];
    append
        .mut_entries()
        .push(entry(6, 2, EntryType::EntryConfChangeV2, &cc));
    out.push(append);
    let mut heartbeat = message(MessageType::MsgHeartbeat, 1);
    heartbeat.commit = 3;
    out.push(heartbeat);
    let mut snapshot = message(MessageType::MsgSnapshot, 2);
    let meta = snapshot.mut_snapshot().mut_metadata();
    (meta.index, meta.term) = (20, 2);
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    cs.voters_outgoing = vec![1, 2];
    cs.learners = vec![5];
    cs.learners_next = vec![];
    meta.set_conf_state(cs);
    snapshot.mut_snapshot().data = b"state".to_vec().into();
    out.push(snapshot);
    for t in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
        let mut vote = message(t, 3);
        (vote.index, vote.log_term, vote.commit) = (4, 1, 2);
        out.push(vote);
    }
    for t in [
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeatResponse,
    ] {
        let mut response = message(t, 2);
        (response.index, response.commit) = (3, 2);
        out.push(response);
    }
    let mut reject = message(MessageType::MsgAppendResponse, 2);
    (
        reject.index,
        reject.reject,
        reject.reject_hint,
        reject.log_term,
    ) = (4, true, 2, 1);
    out.push(reject);
    for t in [
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgRequestPreVoteResponse,
    ] {
        out.push(message(t, 2));
    }
    let mut read_context = 2u64.to_le_bytes().to_vec();
    read_context.extend_from_slice(&7u64.to_le_bytes());
    let mut read = message(MessageType::MsgReadIndex, 0);
    read.mut_entries()
        .push(entry(0, 0, EntryType::EntryNormal, &read_context));
    out.push(read);
    let mut own_context = 1u64.to_le_bytes().to_vec();
    own_context.extend_from_slice(&7u64.to_le_bytes());
    let mut read_resp = message(MessageType::MsgReadIndexResp, 1);
    read_resp.index = 4;
    read_resp
        .mut_entries()
        .push(entry(0, 0, EntryType::EntryNormal, &own_context));
    out.push(read_resp);
    out.push(message(MessageType::MsgTimeoutNow, 1));
    let mut transfer = message(MessageType::MsgTransferLeader, 2);
    transfer.from = 3;
    out.push(transfer);
    out
}

fn encode(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("encode")
}

fn record(m: &Message) -> Vec<u8> {
    let bytes = encode(m);
    let mut out = (bytes.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (frames, validator) = (root.join("frames"), root.join("validator"));
    std::fs::create_dir_all(&frames).expect("corpus dir");
    std::fs::create_dir_all(&validator).expect("corpus dir");
    let messages = messages();

    // Validator: every message against every role, on a log of 4 entries of term 1
    // (byte 4: commit 2 of 4), then with a snapshot below the log; snapshots framed.
    for role in 0..4u8 {
        for (i, m) in messages.iter().enumerate() {
            let state = [role | 0x40, 0, 4, 0, 0x80];
            let mut input = state.to_vec();
            input.extend(record(m));
            write(&validator, &format!("seed-{role}-{i:02}"), &input);
        }
        let mut all = vec![role | 0x48, 3, 4, 0x02, 0x81];
        for m in &messages {
            all.extend(record(m));
        }
        all.extend([0, 0]); // a tick
        write(&validator, &format!("seed-{role}-all"), &all);
    }

    // Frames: flag byte 1 (seal, 64 KiB frames and budget), the handshake, then frames.
    let mut connection = vec![1u8];
    connection.extend(
        Handshake {
            cluster_id: 1,
            from: 2,
            to: 1,
        }
        .encode(),
    );
    for (i, m) in messages.iter().enumerate() {
        let mut input = connection.clone();
        wire::encode_messages_frame(&[encode(m)], &mut input);
        write(&frames, &format!("seed-message-{i:02}"), &input);
    }
    let mut all = connection.clone();
    wire::encode_messages_frame(&messages.iter().map(encode).collect::<Vec<_>>(), &mut all);
    wire::encode_chunks(7, &encode(&messages[2]), 16, &mut all);
    all.extend(wire::encode_ping(wire::KIND_PING, 3));
    all.extend(wire::encode_ping(wire::KIND_PONG, 3));
    all.extend(wire::encode_snapshot_ack(7, true));
    write(&frames, "seed-all", &all);
    let mut chunks = connection;
    wire::encode_chunks(9, &encode(&messages[0]), 10, &mut chunks);
    write(&frames, "seed-chunks", &chunks);
}
