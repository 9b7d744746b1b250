//! The TCP transport's wire format: the handshake, the frames, and the scan that checks a
//! protobuf-encoded raft message before `protobuf` is allowed to parse it.
//!
//! Public only so that `tests/fuzz_frames.rs` can throw bytes at the decoder; not part
//! of the supported API.
//!
//! # Layout (all integers little-endian)
//!
//! - **Handshake** (36 bytes, both ways at connection start): magic `RNTP`, version
//!   `u16` ([`VERSION`]), reserved `u16` (0), cluster id `u64`, sender node id `u64`,
//!   receiver node id `u64`, CRC-32 of the 32 bytes before it.
//! - **Frame** (9-byte header): `u32` length of what follows, `u32` CRC-32 of the whole
//!   frame but these four bytes (the length field, the kind byte and the payload), then
//!   a kind byte and its payload. The length is at most `max_frame_bytes` and is checked
//!   before anything is allocated; the checksum before anything is decoded. TCP's own
//!   16-bit checksum misses some corruptions, and appends carry the data that will be
//!   applied.
//!   - kind 1, **messages**: `u32` count, then per message a `u32` length and the
//!     protobuf encoding of an `eraftpb::Message`.
//!   - kind 2, **chunk** of one message too large for a frame (every `MsgSnapshot`
//!     travels this way): transfer id `u64`, total length `u64`, offset `u64`, then the
//!     data.
//!   - kind 3, **snapshot ack** (receiver to sender): transfer id `u64`, status `u8`
//!     (0 delivered to the node, 1 dropped).
//!   - kind 4, **ping** (sender to receiver) and kind 5, **pong** (the receiver's
//!     answer, on the same connection): a sequence number `u64`. They tell the sending
//!     side that its connection still delivers (see `TcpConfig::stall_timeout`).
//!
//! All checksums are CRC-32 (IEEE), computed with `crc32fast`.
//!
//! # Why the scan
//!
//! raft 0.7 pulls `protobuf` 2.28, whose parser recurses once per nested *group* while
//! skipping unknown fields; a few hundred kilobytes of group tags overflow the stack
//! (RUSTSEC-2024-0437, raft-rs note 19). [`scan_message`] walks the encoding against the
//! `eraftpb` schema, descending only into the nested messages the schema names (at most
//! [`MAX_DEPTH`] levels), and rejects group wire types, unknown fields, wire types that
//! do not match the field, bad varints and lengths past the end. Only bytes that pass are
//! handed to `protobuf::Message::parse_from_bytes`.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::{Message, MessageType};

use crc32fast::hash as crc32;

/// First four bytes of every handshake.
pub const MAGIC: [u8; 4] = *b"RNTP";
/// Wire format version carried in the handshake; a peer with another version is refused.
/// Version 2 added the frame checksum and ping/pong frames.
pub const VERSION: u16 = 2;
/// Size of a handshake in bytes.
pub const HANDSHAKE_BYTES: usize = 36;
/// Size of a frame header: the `u32` length, the `u32` checksum and the kind byte.
pub const FRAME_HEADER_BYTES: usize = 9;
/// Frame kind: a batch of messages.
pub const KIND_MESSAGES: u8 = 1;
/// Frame kind: one chunk of a message sent in pieces.
pub const KIND_CHUNK: u8 = 2;
/// Frame kind: the receiver's answer to a chunked `MsgSnapshot`.
pub const KIND_SNAPSHOT_ACK: u8 = 3;
/// Frame kind: the sender asks whether the connection still delivers.
pub const KIND_PING: u8 = 4;
/// Frame kind: the receiver's answer to a ping.
pub const KIND_PONG: u8 = 5;
/// Size of a snapshot ack frame.
pub const SNAPSHOT_ACK_BYTES: usize = FRAME_HEADER_BYTES + 9;
/// Size of a ping or pong frame.
pub const PING_BYTES: usize = FRAME_HEADER_BYTES + 8;
/// Bytes of a chunk frame's payload before its data.
pub const CHUNK_HEADER_BYTES: usize = 24;
/// Deepest nesting the `eraftpb` schema allows (Message, Entry, ConfChangeV2,
/// ConfChangeSingle; or Message, Snapshot, SnapshotMetadata, ConfState), plus one.
pub const MAX_DEPTH: usize = 5;
/// Indexes and terms above this are refused: no real log gets there, and refusing them
/// keeps `index + entries` arithmetic in range.
pub const MAX_INDEX: u64 = i64::MAX as u64;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame's length field is above `max_frame_bytes`.
    #[error("frame of {len} bytes exceeds max_frame_bytes ({max})")]
    Oversized {
        /// The declared length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// The bytes end before the structure they declare.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// A group wire type (3 or 4): never in a raft message, and the trigger of
    /// RUSTSEC-2024-0437.
    #[error("group wire type {wire_type} in field {field}: raft messages never contain groups")]
    Group {
        /// The field number of the tag.
        field: u32,
        /// 3 (start group) or 4 (end group).
        wire_type: u8,
    },
    /// The bytes do not follow the frame layout or the `eraftpb` schema.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A field number the `eraftpb` schema does not have, or with the wrong wire type.
    #[error("field {field} with wire type {wire_type} is not in the eraftpb schema")]
    Schema {
        /// The field number.
        field: u32,
        /// Its wire type.
        wire_type: u8,
    },
    /// The bytes passed the scan but `protobuf` refused them.
    #[error("protobuf: {0}")]
    Protobuf(String),
    /// A checksum did not match.
    #[error("checksum mismatch in {0}")]
    Checksum(&'static str),
    /// The handshake is not ours (magic, reserved bits).
    #[error("bad handshake: {0}")]
    Handshake(&'static str),
    /// The peer speaks another version of the wire format (an older or newer raftnode).
    #[error("peer speaks wire format version {got}, this node speaks {want}: upgrade both to the same release")]
    Version {
        /// The version in the peer's handshake.
        got: u16,
        /// [`VERSION`].
        want: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster id {got} is not this cluster's ({want})")]
    WrongCluster {
        /// The cluster id the peer sent.
        got: u64,
        /// This node's cluster id.
        want: u64,
    },
    /// The peer's node id is not in the current peer set.
    #[error("node {0} is not a member of this cluster")]
    NonMember(u64),
    /// The handshake or a message is addressed to another node.
    #[error("addressed to node {to}, but this is node {local}")]
    Misaddressed {
        /// The receiver named by the peer.
        to: u64,
        /// This node's id.
        local: u64,
    },
    /// A message's `from` is not the node that opened the connection.
    #[error("message from node {from} on the connection of node {peer}")]
    SenderMismatch {
        /// The message's `from`.
        from: u64,
        /// The node id of the handshake.
        peer: u64,
    },
    /// A message type that never travels between nodes (local types, `MsgPropose`).
    #[error("{0:?} never travels between nodes")]
    ForbiddenType(MessageType),
    /// The message decodes but carries an index or term above 2^63.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// A chunk does not continue the message being reassembled, or the reassembly
    /// budget is spent.
    #[error("reassembly: {0}")]
    Reassembly(&'static str),
}

/// The connection-opening record, sent by the connecting node and answered by the
/// accepting one with `from` and `to` swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The cluster both nodes must belong to.
    pub cluster_id: u64,
    /// The node sending this handshake.
    pub from: u64,
    /// The node it means to reach.
    pub to: u64,
}

impl Handshake {
    /// Encodes the handshake (see the module docs for the layout).
    pub fn encode(&self) -> [u8; HANDSHAKE_BYTES] {
        let mut out = [0u8; HANDSHAKE_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.from.to_le_bytes());
        out[24..32].copy_from_slice(&self.to.to_le_bytes());
        let crc = crc32(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a handshake, checking magic, version, reserved bits and checksum. It does
    /// not check the ids: that is the transport's job, against its own configuration.
    ///
    /// # Errors
    ///
    /// [`WireError::Handshake`] or [`WireError::Checksum`] naming what is wrong.
    pub fn decode(bytes: &[u8; HANDSHAKE_BYTES]) -> Result<Handshake, WireError> {
        if bytes[0..4] != MAGIC {
            return Err(WireError::Handshake("wrong magic (not a raftnode peer)"));
        }
        if u16_at(bytes, 4) != VERSION {
            return Err(WireError::Version {
                got: u16_at(bytes, 4),
                want: VERSION,
            });
        }
        if u16_at(bytes, 6) != 0 {
            return Err(WireError::Handshake("reserved bits set"));
        }
        if crc32(&bytes[0..32]) != u32_at(bytes, 32) {
            return Err(WireError::Checksum("handshake"));
        }
        let handshake = Handshake {
            cluster_id: u64_at(bytes, 8),
            from: u64_at(bytes, 16),
            to: u64_at(bytes, 24),
        };
        if handshake.from == 0 || handshake.to == 0 {
            return Err(WireError::Handshake("node id 0"));
        }
        Ok(handshake)
    }
}

/// What decoding a frame needs to know about the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// This node's id: every message must be addressed to it.
    pub local_id: u64,
    /// The node id the connection's handshake named: every message must come from it.
    pub peer_id: u64,
    /// The largest frame accepted, length field included.
    pub max_frame_bytes: usize,
}

/// Reads a frame header: returns the kind and the payload length after the kind byte.
/// The checksum is checked once the whole frame is in (see [`check_frame`]).
///
/// # Errors
///
/// [`WireError::Oversized`] when the declared length is above `max_frame_bytes`,
/// [`WireError::Malformed`] when it leaves no room for the checksum and the kind.
pub fn decode_header(
    header: &[u8; FRAME_HEADER_BYTES],
    max_frame_bytes: usize,
) -> Result<(u8, usize), WireError> {
    let len = u64::from(u32_at(header, 0));
    if len + 4 > max_frame_bytes as u64 {
        return Err(WireError::Oversized {
            len: len + 4,
            max: max_frame_bytes as u64,
        });
    }
    let after_length = (FRAME_HEADER_BYTES - 4) as u64;
    if len < after_length {
        return Err(WireError::Malformed("frame length shorter than its header"));
    }
    Ok((
        header[FRAME_HEADER_BYTES - 1],
        (len - after_length) as usize,
    ))
}

/// The checksum of a whole frame: everything but the checksum field itself.
fn frame_crc(frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..4]);
    hasher.update(&frame[8..]);
    hasher.finalize()
}

/// Checks the checksum of a whole frame (header included, at least
/// [`FRAME_HEADER_BYTES`] long).
///
/// # Errors
///
/// [`WireError::Truncated`] for a frame shorter than its header,
/// [`WireError::Checksum`] when the frame is not what its sender wrote.
pub fn check_frame(frame: &[u8]) -> Result<(), WireError> {
    if frame.len() < FRAME_HEADER_BYTES {
        return Err(WireError::Truncated("frame shorter than its header"));
    }
    if frame_crc(frame) != u32_at(frame, 4) {
        return Err(WireError::Checksum("frame"));
    }
    Ok(())
}

/// Rewrites the checksum field of a frame whose other bytes were changed (length field
/// included, as they stand), so that it passes [`check_frame`]. For fuzzing the
/// decoders behind the checksum; a transport never needs it.
///
/// # Panics
///
/// If `frame` is shorter than [`FRAME_HEADER_BYTES`].
pub fn seal_frame(frame: &mut [u8]) {
    let crc = frame_crc(frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Starts a frame of `kind` at the end of `out`; returns where it starts, for
/// [`end_frame`].
fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES - 1]);
    out.push(kind);
    start
}

/// Fills in the length and checksum of the frame begun at `start`, now complete.
fn end_frame(out: &mut [u8], start: usize) {
    let frame = &mut out[start..];
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    seal_frame(frame);
}

/// Decodes a whole messages frame (length field included), scanning, parsing and
/// checking each message for this connection.
///
/// # Errors
///
/// The first [`WireError`] found; the whole frame is refused (a transport closes the
/// connection, since it cannot trust where the next frame starts).
pub fn decode_frame(frame: &[u8], ctx: &DecodeContext) -> Result<Vec<Message>, WireError> {
    let payload = frame_payload(frame, KIND_MESSAGES, ctx.max_frame_bytes)?;
    let mut r = Bytes::new(payload);
    let count = r.u32()? as usize;
    // Every message takes at least its 4-byte length: bound the count before allocating.
    if count > r.remaining() / 4 {
        return Err(WireError::Truncated("message count larger than the frame"));
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32()? as usize;
        let bytes = r.take(len)?;
        messages.push(decode_message(bytes, ctx)?);
    }
    if r.remaining() != 0 {
        return Err(WireError::Malformed("bytes after the last message"));
    }
    Ok(messages)
}

/// Scans, parses and checks one protobuf-encoded message for this connection.
///
/// # Errors
///
/// [`WireError`] from [`scan_message`], from `protobuf`, or from [`check_message`].
pub fn decode_message(bytes: &[u8], ctx: &DecodeContext) -> Result<Message, WireError> {
    scan_message(bytes)?;
    let m: Message = protobuf::Message::parse_from_bytes(bytes)
        .map_err(|e| WireError::Protobuf(e.to_string()))?;
    check_message(&m, ctx)?;
    Ok(m)
}

/// Appends a messages frame holding `encoded` (each a protobuf-encoded message).
///
/// The caller keeps the frame within `max_frame_bytes`:
/// [`messages_frame_bytes`] gives its size.
pub fn encode_messages_frame(encoded: &[Vec<u8>], out: &mut Vec<u8>) {
    let start = begin_frame(out, KIND_MESSAGES);
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    for m in encoded {
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
        out.extend_from_slice(m);
    }
    end_frame(out, start);
}

/// The size of a messages frame, length field included, holding messages of these sizes.
pub fn messages_frame_bytes(sizes: impl Iterator<Item = usize>) -> usize {
    FRAME_HEADER_BYTES + 4 + sizes.map(|s| s + 4).sum::<usize>()
}

/// Appends the chunk frames carrying `message` (one protobuf-encoded message) in pieces
/// of at most `chunk_bytes`.
///
/// # Panics
///
/// If `chunk_bytes` is 0 (the transport's config validation refuses it).
pub fn encode_chunks(transfer: u64, message: &[u8], chunk_bytes: usize, out: &mut Vec<u8>) {
    assert!(chunk_bytes > 0, "chunk_bytes must be positive");
    for (i, data) in message.chunks(chunk_bytes).enumerate() {
        let offset = (i * chunk_bytes) as u64;
        encode_chunk(transfer, message.len() as u64, offset, data, out);
    }
}

/// Appends one chunk frame: `data` sits at `offset` of a message of `total` bytes.
pub fn encode_chunk(transfer: u64, total: u64, offset: u64, data: &[u8], out: &mut Vec<u8>) {
    let start = begin_frame(out, KIND_CHUNK);
    out.extend_from_slice(&transfer.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(data);
    end_frame(out, start);
}

/// One chunk of a message sent in pieces, as read from a chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Identifies the message on its connection.
    pub transfer: u64,
    /// The length of the whole message.
    pub total: u64,
    /// Where `data` starts in the whole message.
    pub offset: u64,
    /// This chunk's bytes; the frame's checksum was verified.
    pub data: &'a [u8],
}

/// Decodes a whole chunk frame (length field included) and verifies its checksum.
///
/// # Errors
///
/// [`WireError`] when the frame is not a well-formed chunk or its checksum fails.
pub fn decode_chunk(frame: &[u8], max_frame_bytes: usize) -> Result<Chunk<'_>, WireError> {
    let payload = frame_payload(frame, KIND_CHUNK, max_frame_bytes)?;
    let mut r = Bytes::new(payload);
    let transfer = r.u64()?;
    let total = r.u64()?;
    let offset = r.u64()?;
    let data = r.rest();
    if data.is_empty() {
        return Err(WireError::Malformed("empty chunk"));
    }
    if offset
        .checked_add(data.len() as u64)
        .is_none_or(|end| end > total)
    {
        return Err(WireError::Malformed(
            "chunk extends past the message's total length",
        ));
    }
    Ok(Chunk {
        transfer,
        total,
        offset,
        data,
    })
}

/// Encodes a snapshot ack frame: `delivered` says whether the node queued the message.
pub fn encode_snapshot_ack(transfer: u64, delivered: bool) -> [u8; SNAPSHOT_ACK_BYTES] {
    let mut out = Vec::with_capacity(SNAPSHOT_ACK_BYTES);
    let start = begin_frame(&mut out, KIND_SNAPSHOT_ACK);
    out.extend_from_slice(&transfer.to_le_bytes());
    out.push(u8::from(!delivered));
    end_frame(&mut out, start);
    out.try_into().expect("an ack's size is fixed")
}

/// Decodes a snapshot ack frame: `(transfer, delivered)`.
///
/// # Errors
///
/// [`WireError::Malformed`] when the frame is not an ack, [`WireError::Checksum`] when
/// its checksum fails.
pub fn decode_snapshot_ack(frame: &[u8]) -> Result<(u64, bool), WireError> {
    let payload = frame_payload(frame, KIND_SNAPSHOT_ACK, SNAPSHOT_ACK_BYTES)?;
    let mut r = Bytes::new(payload);
    let transfer = r.u64()?;
    let status = r.take(1)?[0];
    if r.remaining() != 0 || status > 1 {
        return Err(WireError::Malformed("snapshot ack"));
    }
    Ok((transfer, status == 0))
}

/// Encodes a ping (`KIND_PING`) or pong (`KIND_PONG`) frame carrying `sequence`.
///
/// # Panics
///
/// If `kind` is neither.
pub fn encode_ping(kind: u8, sequence: u64) -> [u8; PING_BYTES] {
    assert!(kind == KIND_PING || kind == KIND_PONG, "not a ping kind");
    let mut out = Vec::with_capacity(PING_BYTES);
    let start = begin_frame(&mut out, kind);
    out.extend_from_slice(&sequence.to_le_bytes());
    end_frame(&mut out, start);
    out.try_into().expect("a ping's size is fixed")
}

/// Decodes a ping or pong frame of `kind`: its sequence number.
///
/// # Errors
///
/// [`WireError::Malformed`] when the frame is not of `kind` or has the wrong size,
/// [`WireError::Checksum`] when its checksum fails.
pub fn decode_ping(frame: &[u8], kind: u8) -> Result<u64, WireError> {
    let payload = frame_payload(frame, kind, PING_BYTES)?;
    let mut r = Bytes::new(payload);
    let sequence = r.u64()?;
    if r.remaining() != 0 {
        return Err(WireError::Malformed("ping with trailing bytes"));
    }
    Ok(sequence)
}

/// Bytes all reassemblies of one transport may hold at once.
#[derive(Debug)]
pub struct ReassemblyBudget {
    used: AtomicU64,
    limit: u64,
}

impl ReassemblyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(ReassemblyBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes reserved right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Reassembles one message from its chunks, on one connection, within a shared budget.
///
/// Chunks must arrive in order: a chunk at offset 0 starts a message (dropping any
/// unfinished one), every other chunk must continue the current one exactly.
#[derive(Debug)]
pub struct Reassembly {
    budget: Arc<ReassemblyBudget>,
    current: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    transfer: u64,
    total: u64,
    buf: Vec<u8>,
}

impl Reassembly {
    /// An empty reassembly drawing on `budget`.
    pub fn new(budget: Arc<ReassemblyBudget>) -> Self {
        Reassembly {
            budget,
            current: None,
        }
    }

    /// Whether a message is partly received.
    pub fn is_pending(&self) -> bool {
        self.current.is_some()
    }

    /// Drops the partly received message, if any, releasing its budget.
    pub fn clear(&mut self) {
        if let Some(partial) = self.current.take() {
            self.budget.release(partial.total);
        }
    }

    /// Adds a chunk; returns the transfer id and the whole message once its last chunk
    /// arrived.
    ///
    /// # Errors
    ///
    /// [`WireError::Reassembly`] when the chunk does not continue the current message or
    /// the budget cannot hold the message; the partial message is dropped.
    pub fn push(&mut self, chunk: Chunk<'_>) -> Result<Option<(u64, Vec<u8>)>, WireError> {
        if chunk.offset == 0 {
            self.clear();
            if !self.budget.try_reserve(chunk.total) {
                return Err(WireError::Reassembly(
                    "message larger than the free reassembly budget (max_reassembly_bytes)",
                ));
            }
            // The budget covers `total`, so allocating it at once is bounded.
            self.current = Some(Partial {
                transfer: chunk.transfer,
                total: chunk.total,
                buf: Vec::with_capacity(chunk.total as usize),
            });
        }
        let Some(partial) = self.current.as_mut() else {
            return Err(WireError::Reassembly("chunk without a first chunk"));
        };
        if partial.transfer != chunk.transfer
            || partial.total != chunk.total
            || partial.buf.len() as u64 != chunk.offset
        {
            self.clear();
            return Err(WireError::Reassembly(
                "chunk does not continue the message being reassembled",
            ));
        }
        partial.buf.extend_from_slice(chunk.data);
        if (partial.buf.len() as u64) < partial.total {
            return Ok(None);
        }
        let done = self.current.take().expect("checked above");
        self.budget.release(done.total);
        Ok(Some((done.transfer, done.buf)))
    }
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Checks a decoded message against the connection it came on, then its shape.
///
/// # Errors
///
/// [`WireError::Misaddressed`], [`WireError::ForbiddenType`],
/// [`WireError::SenderMismatch`] or [`WireError::Invalid`].
pub fn check_message(m: &Message, ctx: &DecodeContext) -> Result<(), WireError> {
    if m.to != ctx.local_id {
        return Err(WireError::Misaddressed {
            to: m.to,
            local: ctx.local_id,
        });
    }
    let t = m.get_msg_type();
    // The local types (MsgHup, MsgBeat, MsgUnreachable, MsgSnapStatus, MsgCheckQuorum)
    // travel as raftnode's notices (src/notice.rs), which the replica checks before
    // anything acts on them.
    if t == MessageType::MsgPropose {
        return Err(WireError::ForbiddenType(t));
    }
    if m.from != ctx.peer_id {
        return Err(WireError::SenderMismatch {
            from: m.from,
            peer: ctx.peer_id,
        });
    }
    check_ranges(m)
}

/// Refuses indexes and terms no real log reaches, so later arithmetic cannot overflow.
fn check_ranges(m: &Message) -> Result<(), WireError> {
    crate::validate::check_ranges(m).map_err(|_| WireError::Invalid("index or term above 2^63"))
}

/// Walks the protobuf encoding of an `eraftpb::Message` without parsing it.
///
/// Descends only into the nested messages the schema names (entries, snapshot and its
/// metadata and ConfState, and the ConfChange / ConfChangeV2 inside conf-change entries),
/// so recursion is bounded by the schema, never by the input.
///
/// # Errors
///
/// [`WireError::Group`] for any group wire type, [`WireError::Schema`] for unknown fields
/// or wrong wire types, [`WireError::Malformed`] / [`WireError::Truncated`] for bad
/// varints, lengths past the end, enum values out of range.
pub fn scan_message(bytes: &[u8]) -> Result<(), WireError> {
    scan(bytes, Schema::Message, 1)
}

/// The `eraftpb` messages the scan knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
    ConfChange,
    ConfChangeV2,
    ConfChangeSingle,
}

/// How a field is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Wire type 0 (integers, bools).
    Varint,
    /// Wire type 0, an enum whose largest value is given.
    Enum(u64),
    /// Wire type 2, opaque bytes.
    Bytes,
    /// Wire type 2, a nested message of the schema given.
    Nested(Schema),
    /// `repeated uint64`: wire type 0, or wire type 2 packed.
    RepeatedVarint,
    /// `Entry.data`: opaque, unless the entry is a conf change (scanned after the entry).
    EntryData,
}

/// The field `number` of `schema`, from `eraftpb.proto` of raft-proto 0.7.
fn field_of(schema: Schema, number: u32) -> Option<Field> {
    use Field::*;
    let field = match (schema, number) {
        (Schema::Message, 1) => Enum(18),
        (Schema::Message, 2..=6 | 8 | 10 | 11 | 13..=16) => Varint,
        (Schema::Message, 7) => Nested(Schema::Entry),
        (Schema::Message, 9) => Nested(Schema::Snapshot),
        (Schema::Message, 12) => Bytes,
        (Schema::Entry, 1) => Enum(2),
        (Schema::Entry, 2 | 3 | 5) => Varint,
        (Schema::Entry, 4) => EntryData,
        (Schema::Entry, 6) => Bytes,
        (Schema::Snapshot, 1) => Bytes,
        (Schema::Snapshot, 2) => Nested(Schema::SnapshotMetadata),
        (Schema::SnapshotMetadata, 1) => Nested(Schema::ConfState),
        (Schema::SnapshotMetadata, 2 | 3) => Varint,
        (Schema::ConfState, 1..=4) => RepeatedVarint,
        (Schema::ConfState, 5) => Varint,
        (Schema::ConfChange, 1 | 3) => Varint,
        (Schema::ConfChange, 2) => Enum(2),
        (Schema::ConfChange, 4) => Bytes,
        (Schema::ConfChangeV2, 1) => Enum(2),
        (Schema::ConfChangeV2, 2) => Nested(Schema::ConfChangeSingle),
        (Schema::ConfChangeV2, 3) => Bytes,
        (Schema::ConfChangeSingle, 1) => Enum(2),
        (Schema::ConfChangeSingle, 2) => Varint,
        _ => return None,
    };
    Some(field)
}

fn scan(bytes: &[u8], schema: Schema, depth: usize) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::Malformed(
            "nesting deeper than the eraftpb schema",
        ));
    }
    let mut r = Bytes::new(bytes);
    // Entry only: the last entry_type and data seen (protobuf keeps the last of each).
    let mut entry_type = 0;
    let mut entry_data: Option<&[u8]> = None;
    while r.remaining() > 0 {
        let tag = r.varint()?;
        let tag = u32::try_from(tag).map_err(|_| WireError::Malformed("tag above 32 bits"))?;
        let (number, wire_type) = (tag >> 3, (tag & 7) as u8);
        if wire_type == 3 || wire_type == 4 {
            return Err(WireError::Group {
                field: number,
                wire_type,
            });
        }
        if number == 0 {
            return Err(WireError::Malformed("field number 0"));
        }
        let schema_error = WireError::Schema {
            field: number,
            wire_type,
        };
        let field = field_of(schema, number).ok_or(schema_error.clone())?;
        match (field, wire_type) {
            (Field::Varint | Field::RepeatedVarint, 0) => {
                r.varint()?;
            }
            (Field::Enum(max), 0) => {
                let value = r.varint()?;
                if value > max {
                    return Err(WireError::Malformed("enum value out of range"));
                }
                if schema == Schema::Entry {
                    entry_type = value;
                }
            }
            (Field::Bytes, 2) => {
                r.length_delimited()?;
            }
            (Field::EntryData, 2) => entry_data = Some(r.length_delimited()?),
            (Field::Nested(inner), 2) => scan(r.length_delimited()?, inner, depth + 1)?,
            (Field::RepeatedVarint, 2) => {
                let mut packed = Bytes::new(r.length_delimited()?);
                while packed.remaining() > 0 {
                    packed.varint()?;
                }
            }
            _ => return Err(schema_error),
        }
    }
    match (entry_type, entry_data) {
        (1, Some(data)) => scan(data, Schema::ConfChange, depth + 1),
        (2, Some(data)) => scan(data, Schema::ConfChangeV2, depth + 1),
        _ => Ok(()),
    }
}

/// Checks the frame's length field, checksum and kind; returns the payload after the
/// kind byte. The checksum comes before the kind, so that a flipped kind bit is
/// reported as what it is.
fn frame_payload(frame: &[u8], kind: u8, max_frame_bytes: usize) -> Result<&[u8], WireError> {
    let header: &[u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated("frame shorter than its header"))?;
    let (got, len) = decode_header(header, max_frame_bytes)?;
    let payload = &frame[FRAME_HEADER_BYTES..];
    if payload.len() < len {
        return Err(WireError::Truncated("frame shorter than its length field"));
    }
    if payload.len() > len {
        return Err(WireError::Malformed("frame longer than its length field"));
    }
    check_frame(frame)?;
    if got != kind {
        return Err(WireError::Malformed("unexpected frame kind"));
    }
    Ok(payload)
}

/// A cursor over bytes that never reads past the end.
struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Bytes { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated("length past the end of the buffer"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64_at(self.take(8)?, 0))
    }

    /// A base-128 varint of at most 10 bytes whose value fits 64 bits.
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or(WireError::Truncated("varint runs past the end"))?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(WireError::Malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed("varint longer than 10 bytes"))
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated("length too large"))?;
        self.take(len)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeV2, Entry, EntryType};

    fn ctx() -> DecodeContext {
        DecodeContext {
            local_id: 1,
            peer_id: 2,
            max_frame_bytes: 1 << 20,
        }
    }

    fn append() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 2;
        m.to = 1;
        m.term = 3;
        m.log_term = 3;
        m.index = 10;
        m.commit = 10;
        let mut e = Entry::default();
        e.term = 3;
        e.index = 11;
        e.data = b"put a 1".to_vec().into();
        m.mut_entries().push(e);
        m
    }

    fn encode(m: &Message) -> Vec<u8> {
        protobuf::Message::write_to_bytes(m).expect("encodes")
    }

    fn frame_of(messages: &[Message]) -> Vec<u8> {
        let encoded: Vec<Vec<u8>> = messages.iter().map(encode).collect();
        let mut out = Vec::new();
        encode_messages_frame(&encoded, &mut out);
        out
    }

    #[test]
    fn messages_frame_round_trips() {
        let frame = frame_of(&[append(), append()]);
        assert_eq!(
            frame.len(),
            messages_frame_bytes([0, 0].into_iter()) + 2 * encode(&append()).len()
        );
        assert_eq!(decode_frame(&frame, &ctx()), Ok(vec![append(), append()]));
    }

    #[test]
    fn handshake_round_trips_and_checks_itself() {
        let h = Handshake {
            cluster_id: 7,
            from: 2,
            to: 1,
        };
        let mut bytes = h.encode();
        assert_eq!(Handshake::decode(&bytes), Ok(h));
        bytes[20] ^= 1;
        assert_eq!(
            Handshake::decode(&bytes),
            Err(WireError::Checksum("handshake"))
        );
        bytes[0] = b'X';
        assert!(matches!(
            Handshake::decode(&bytes),
            Err(WireError::Handshake(_))
        ));
    }

    /// Proves a group tag is refused at every level the scan descends into.
    #[test]
    fn groups_are_refused_at_every_level() {
        assert!(matches!(
            scan_message(&[0x0b]),
            Err(WireError::Group {
                field: 1,
                wire_type: 3
            })
        ));
        // entries (field 7) holding a start-group tag.
        assert!(matches!(
            scan_message(&[0x3a, 1, 0x0b]),
            Err(WireError::Group { .. })
        ));
        // snapshot (9) -> metadata (2) -> conf_state (1) -> group.
        let bytes = [0x4a, 5, 0x12, 3, 0x0a, 1, 0x0c];
        assert!(matches!(
            scan_message(&bytes),
            Err(WireError::Group { wire_type: 4, .. })
        ));
    }

    /// Proves conf-change entry data is scanned too: the driver parses it on apply.
    #[test]
    fn conf_change_entry_data_is_scanned() {
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(ConfChangeSingle::default());
        let mut m = append();
        m.mut_entries()[0].set_entry_type(EntryType::EntryConfChangeV2);
        m.mut_entries()[0].data = encode_cc(&cc).into();
        assert!(scan_message(&encode(&m)).is_ok());
        m.mut_entries()[0].data = vec![0x12, 1, 0x0b].into();
        assert!(matches!(
            scan_message(&encode(&m)),
            Err(WireError::Group { .. })
        ));
        // Normal entries carry user bytes: not scanned.
        m.mut_entries()[0].set_entry_type(EntryType::EntryNormal);
        assert!(scan_message(&encode(&m)).is_ok());
    }

    fn encode_cc(cc: &ConfChangeV2) -> Vec<u8> {
        protobuf::Message::write_to_bytes(cc).expect("encodes")
    }

    #[test]
    fn unknown_fields_wrong_wire_types_and_bad_varints_are_refused() {
        assert!(matches!(
            scan_message(&[0xf8, 0x01, 0]),
            Err(WireError::Schema { field: 31, .. })
        ));
        assert!(matches!(
            scan_message(&[0x12, 0]),
            Err(WireError::Schema { field: 2, .. })
        ));
        assert!(matches!(
            scan_message(&[0x10]),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            scan_message(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            scan_message(&[0x62, 5, 1]),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            scan_message(&[0x08, 19]),
            Err(WireError::Malformed(_))
        ));
        // A tag above 32 bits that protobuf would truncate to a group tag.
        assert!(matches!(
            scan_message(&[0x8b, 0x80, 0x80, 0x80, 0x10]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn connection_checks_come_before_shape() {
        let mut m = append();
        m.to = 3;
        assert!(matches!(
            decode_frame(&frame_of(&[m]), &ctx()),
            Err(WireError::Misaddressed { to: 3, local: 1 })
        ));
        let mut m = append();
        m.from = 3;
        assert!(matches!(
            decode_frame(&frame_of(&[m]), &ctx()),
            Err(WireError::SenderMismatch { .. })
        ));
        let mut m = append();
        m.set_msg_type(MessageType::MsgPropose);
        assert!(matches!(
            decode_frame(&frame_of(&[m]), &ctx()),
            Err(WireError::ForbiddenType(_))
        ));
        let mut m = append();
        m.index = u64::MAX;
        assert!(matches!(
            decode_frame(&frame_of(&[m]), &ctx()),
            Err(WireError::Invalid(_))
        ));
        // Notices travel: a follower's "my log ends here" and "snapshot refused" reach
        // the leader's replica, which checks them (the hostile TCP fuzzer found them
        // refused here, closing the follower's connection each time).
        for kind in [MessageType::MsgUnreachable, MessageType::MsgSnapStatus] {
            let mut m = append();
            m.set_msg_type(kind);
            assert!(decode_frame(&frame_of(&[m]), &ctx()).is_ok(), "{kind:?}");
        }
    }

    #[test]
    fn oversized_and_misframed_frames_are_refused() {
        let mut frame = frame_of(&[append()]);
        let small = DecodeContext {
            max_frame_bytes: 16,
            ..ctx()
        };
        assert!(matches!(
            decode_frame(&frame, &small),
            Err(WireError::Oversized { .. })
        ));
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame, &ctx()),
            Err(WireError::Malformed(_))
        ));
        frame.truncate(frame.len() - 3);
        assert!(matches!(
            decode_frame(&frame, &ctx()),
            Err(WireError::Truncated(_))
        ));
    }

    /// Proves chunks reassemble in order, refuse gaps and bad checksums, and keep the
    /// shared budget exact.
    #[test]
    fn chunks_reassemble_within_budget() {
        let message: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut frames = Vec::new();
        encode_chunks(9, &message, 300, &mut frames);
        let budget = ReassemblyBudget::new(1000);
        let mut r = Reassembly::new(budget.clone());
        let mut rest = &frames[..];
        let mut done = None;
        while !rest.is_empty() {
            let len = u32_at(rest, 0) as usize + 4;
            let chunk = decode_chunk(&rest[..len], 1 << 20).expect("chunk");
            done = r.push(chunk).expect("continues");
            assert_eq!(budget.used(), if done.is_some() { 0 } else { 1000 });
            rest = &rest[len..];
        }
        assert_eq!(done, Some((9, message.clone())));

        let mut other = Reassembly::new(budget.clone());
        let mut big = Vec::new();
        encode_chunks(1, &[0u8; 1001], 2000, &mut big);
        assert!(other
            .push(decode_chunk(&big, 1 << 20).expect("chunk"))
            .is_err());
        let mut frames = Vec::new();
        encode_chunks(2, &message, 300, &mut frames);
        let first = u32_at(&frames, 0) as usize + 4;
        other
            .push(decode_chunk(&frames[..first], 1 << 20).expect("first"))
            .expect("first");
        assert_eq!(budget.used(), 1000);
        let second_len = u32_at(&frames[first..], 0) as usize + 4;
        let mut second = frames[first..first + second_len].to_vec();
        *second.last_mut().expect("data") ^= 1;
        assert_eq!(
            decode_chunk(&second, 1 << 20),
            Err(WireError::Checksum("frame"))
        );
        drop(other);
        assert_eq!(budget.used(), 0);
    }

    /// Proves every frame kind carries a checksum over all its bytes: any single
    /// flipped bit (length, checksum, kind or payload) is refused, never decoded.
    #[test]
    fn every_flipped_bit_of_every_frame_kind_is_refused() {
        let frames: Vec<Vec<u8>> = vec![
            frame_of(&[append()]),
            {
                let mut out = Vec::new();
                encode_chunk(1, 10, 0, b"0123456789", &mut out);
                out
            },
            encode_snapshot_ack(4, true).to_vec(),
            encode_ping(KIND_PING, 7).to_vec(),
            encode_ping(KIND_PONG, 7).to_vec(),
        ];
        for frame in &frames {
            check_frame(frame).expect("a sealed frame passes");
            for bit in 0..frame.len() * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let decoded = match frame[FRAME_HEADER_BYTES - 1] {
                    KIND_MESSAGES => decode_frame(&bad, &ctx()).map(drop),
                    KIND_CHUNK => decode_chunk(&bad, 1 << 20).map(drop),
                    KIND_SNAPSHOT_ACK => decode_snapshot_ack(&bad).map(drop),
                    kind => decode_ping(&bad, kind).map(drop),
                };
                assert!(
                    decoded.is_err(),
                    "bit {bit} of {frame:?} flipped, still decoded"
                );
                if bit >= 32 {
                    // The length field intact: the checksum is what catches it.
                    assert_eq!(check_frame(&bad), Err(WireError::Checksum("frame")));
                }
            }
        }
        assert_eq!(decode_ping(&encode_ping(KIND_PONG, 9), KIND_PONG), Ok(9));
        assert_eq!(
            decode_snapshot_ack(&encode_snapshot_ack(4, false)),
            Ok((4, false))
        );
    }

    /// Proves a handshake of another wire format version is refused naming both
    /// versions, so an old and a new node tell the operator why they cannot talk.
    #[test]
    fn other_wire_versions_are_refused_by_name() {
        let h = Handshake {
            cluster_id: 5,
            from: 1,
            to: 2,
        };
        let mut old = h.encode();
        old[4..6].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32(&old[0..32]);
        old[32..36].copy_from_slice(&crc.to_le_bytes());
        let refused = Handshake::decode(&old).expect_err("version 1 is refused");
        assert_eq!(
            refused,
            WireError::Version {
                got: 1,
                want: VERSION
            }
        );
        assert!(refused.to_string().contains("version 1"), "{refused}");
    }
}
