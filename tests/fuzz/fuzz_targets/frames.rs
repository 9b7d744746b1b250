//! The frame decoder target: the bytes one inbound connection delivers, read as the TCP
//! transport reads them (tcp_inbound.rs): the handshake, then frames, each through
//! `decode_header`, `check_frame` and the decoder of its kind, chunks through a
//! `Reassembly` on a shared budget. The first input byte picks the limits and whether
//! the harness seals every checksum (so that mutations reach the decoders behind the
//! CRC-32, which a fuzzer cannot forge) or leaves the input's own (so that the checks of
//! the checksums run too). The handshake (bytes 1 to 36) needs cluster id 1, node 1 as
//! receiver, and node 2 or 3 as sender.
//!
//! Besides "never panics", it asserts that whatever is accepted is addressed to this
//! node from the connection's peer, not of a type that never travels, that it encodes
//! back to bytes the decoder accepts as the same message, and that every reassembly
//! gives back its budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raftnode::raft_types::{Message, MessageType};
use raftnode::testing::wire::{
    self, DecodeContext, Handshake, Reassembly, ReassemblyBudget, FRAME_HEADER_BYTES,
    HANDSHAKE_BYTES, KIND_CHUNK, KIND_MESSAGES, KIND_PING, KIND_PONG, KIND_SNAPSHOT_ACK,
};

const CLUSTER: u64 = 1;
const LOCAL: u64 = 1;
const MEMBERS: [u64; 3] = [1, 2, 3];

fuzz_target!(|data: &[u8]| connection(data));

fn connection(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let seal = flags & 1 != 0;
    let max_frame_bytes = [64 << 10, 4 << 10, 512, 64][usize::from(flags >> 1 & 3)];
    let budget_bytes = [64 << 10, 4 << 10, 256, 0][usize::from(flags >> 3 & 3)];
    let Some((handshake, mut rest)) = rest.split_first_chunk::<HANDSHAKE_BYTES>() else {
        return;
    };
    let mut handshake = *handshake;
    if seal {
        let crc = crc32fast::hash(&handshake[..32]);
        handshake[32..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(h) = Handshake::decode(&handshake) else {
        return;
    };
    // The transport's checks of the claim, against its configuration.
    if h.cluster_id != CLUSTER || h.to != LOCAL || h.from == LOCAL || !MEMBERS.contains(&h.from) {
        return;
    }
    let ctx = DecodeContext {
        local_id: LOCAL,
        peer_id: h.from,
        max_frame_bytes,
    };
    let budget = ReassemblyBudget::new(budget_bytes);
    let mut reassembly = Reassembly::new(budget.clone());
    while let Some(frame) = next_frame(&mut rest, max_frame_bytes, seal) {
        // Any refusal closes the connection: nothing after it is read.
        if wire::check_frame(&frame).is_err() {
            break;
        }
        let read = match frame[FRAME_HEADER_BYTES - 1] {
            KIND_MESSAGES if !reassembly.is_pending() => messages(&frame, &ctx),
            KIND_CHUNK => chunk(&frame, &mut reassembly, &ctx),
            KIND_PING => wire::decode_ping(&frame, KIND_PING).is_ok(),
            // What the other direction reads: a peer's answers on a connection this node
            // opened.
            KIND_PONG => wire::decode_ping(&frame, KIND_PONG).is_ok(),
            KIND_SNAPSHOT_ACK => wire::decode_snapshot_ack(&frame).is_ok(),
            _ => false,
        };
        if !read {
            break;
        }
    }
    drop(reassembly);
    assert_eq!(
        budget.used(),
        0,
        "a closed connection's reassembly kept its budget"
    );
}

/// The next whole frame, header included, as `read_frame` takes it off the socket.
fn next_frame(rest: &mut &[u8], max_frame_bytes: usize, seal: bool) -> Option<Vec<u8>> {
    let (header, _) = rest.split_first_chunk::<FRAME_HEADER_BYTES>()?;
    let (_, len) = wire::decode_header(header, max_frame_bytes).ok()?;
    let frame = rest.get(..FRAME_HEADER_BYTES + len)?;
    *rest = &rest[frame.len()..];
    let mut frame = frame.to_vec();
    if seal {
        wire::seal_frame(&mut frame);
    }
    Some(frame)
}

fn messages(frame: &[u8], ctx: &DecodeContext) -> bool {
    let Ok(messages) = wire::decode_frame(frame, ctx) else {
        return false;
    };
    for m in &messages {
        accepted(m, ctx);
    }
    true
}

fn chunk(frame: &[u8], reassembly: &mut Reassembly, ctx: &DecodeContext) -> bool {
    let Ok(chunk) = wire::decode_chunk(frame, ctx.max_frame_bytes) else {
        return false;
    };
    let total = chunk.total;
    match reassembly.push(chunk) {
        Ok(None) => true,
        Ok(Some((_, whole))) => {
            assert_eq!(
                whole.len() as u64,
                total,
                "reassembled a message of another size"
            );
            match wire::decode_message(&whole, ctx) {
                Ok(m) => {
                    accepted(&m, ctx);
                    true
                }
                Err(_) => false,
            }
        }
        Err(_) => false,
    }
}

/// The invariants of an accepted message.
fn accepted(m: &Message, ctx: &DecodeContext) {
    assert_eq!(
        (m.to, m.from),
        (ctx.local_id, ctx.peer_id),
        "accepted a misrouted message"
    );
    assert!(
        // The local types travel: raftnode's notices, which the replica checks
        // (src/notice.rs).
        m.get_msg_type() != MessageType::MsgPropose,
        "accepted a type that never travels: {:?}",
        m.get_msg_type()
    );
    let bytes = m.write_to_bytes().expect("an accepted message encodes");
    let again =
        wire::decode_message(&bytes, ctx).expect("an accepted message, re-encoded, decodes");
    assert_eq!(
        &again, m,
        "an accepted message changed through encode and decode"
    );
}
