//! Framing of snapshot data: the members' contexts, then the state machine's bytes,
//! compressed with LZ4 when that saves space.
//!
//! Layout: magic `b"RNS"`, one codec byte, then:
//!
//! - when the codec byte has [`WITH_MEMBERS`] set, the member table: a `u32` count, then
//!   per member its id (`u64`), the length of its context (`u32`) and the context (the
//!   bytes its membership change carried: its address for `TcpTransport`); all integers
//!   little-endian;
//! - the payload: codec 0 stores the state machine's bytes as they are; codec 1 is LZ4
//!   with the original length prepended as a `u32`;
//! - when the codec byte has [`WITH_CRC`] set (every frame this version writes), a
//!   CRC-32 (IEEE) of everything before it, as a little-endian `u32`.
//!
//! The checksum is computed the moment the state machine's bytes are framed, on the node
//! that took the snapshot, and checked where they are used: before a follower lets
//! raft-rs take a snapshot from a peer (docs/security.md) and again before `restore`.
//! So damage anywhere in between (the leader's disk, a transport without checksums, a
//! forged frame) is caught before the log store keeps the snapshot.
//!
//! The member table lets a node that installs the snapshot, or restarts after its log
//! was compacted past the membership changes, still tell its transport where every
//! member is. The state machine never sees the framing: it produces and receives its own
//! bytes. Frames without a table (written before it existed) read as an empty table.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 3] = b"RNS";
const STORED: u8 = 0;
const LZ4: u8 = 1;
/// Codec-byte flag: a member table follows the codec byte.
const WITH_MEMBERS: u8 = 0x80;
/// Codec-byte flag: the frame ends in a CRC-32 of everything before it.
const WITH_CRC: u8 = 0x40;
const CRC_BYTES: usize = 4;
/// Data below this size is stored as is: compressing it saves nothing worth the time.
const MIN_COMPRESS: usize = 4096;
/// Largest state a compressed snapshot may claim to expand to.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 4 << 30;
/// Most members a table may list, and the longest context it may hold.
const MAX_MEMBERS: usize = 65_536;
const MAX_CONTEXT_BYTES: usize = 64 << 10;

/// Members' contexts by node id.
pub(crate) type MemberContexts = BTreeMap<u64, Bytes>;

/// Frames `data` with no member table.
#[cfg(test)]
pub(crate) fn encode(data: Bytes) -> Bytes {
    encode_with_members(data, &MemberContexts::new())
}

/// Frames `data` after the member table, compressing the data when the result is at
/// least 10% smaller.
pub(crate) fn encode_with_members(data: Bytes, members: &MemberContexts) -> Bytes {
    let table_len: usize = members.values().map(|c| 12 + c.len()).sum::<usize>() + 4;
    let flag = WITH_CRC | if members.is_empty() { 0 } else { WITH_MEMBERS };
    let header = |out: &mut BytesMut, codec: u8| {
        out.put_slice(MAGIC);
        out.put_u8(codec | flag);
        if !members.is_empty() {
            out.put_u32_le(members.len() as u32);
            for (id, context) in members {
                out.put_u64_le(*id);
                out.put_u32_le(context.len() as u32);
                out.put_slice(context);
            }
        }
    };
    if data.len() >= MIN_COMPRESS && data.len() <= u32::MAX as usize {
        let compressed = lz4_flex::block::compress(&data);
        if compressed.len() < data.len() / 10 * 9 {
            let mut out = BytesMut::with_capacity(compressed.len() + table_len + 12);
            header(&mut out, LZ4);
            out.put_u32_le(data.len() as u32);
            out.put_slice(&compressed);
            return seal(out);
        }
    }
    let mut out = BytesMut::with_capacity(data.len() + table_len + 8);
    header(&mut out, STORED);
    out.put_slice(&data);
    seal(out)
}

/// Appends the CRC-32 of the frame so far.
fn seal(mut out: BytesMut) -> Bytes {
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    out.freeze()
}

/// Where a checked frame's payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    codec: u8,
    /// Start of the payload (for LZ4, of the claimed length before it).
    at: usize,
    /// End of the payload: before the checksum, when there is one.
    end: usize,
    /// For LZ4, the length the payload claims to expand to.
    len: usize,
    /// Whether the frame carries a checksum (and it matched).
    pub checksummed: bool,
}

/// Reads the header: the codec, the member table, where the payload starts, and where
/// it ends (before the checksum, which is checked here).
fn parse_header(framed: &[u8]) -> Result<(u8, MemberContexts, usize, usize), String> {
    if framed.len() < 4 || &framed[..3] != MAGIC {
        return Err("missing snapshot header (not written by raftnode?)".into());
    }
    let codec = framed[3] & !(WITH_MEMBERS | WITH_CRC);
    let mut end = framed.len();
    if framed[3] & WITH_CRC != 0 {
        if framed.len() < 4 + CRC_BYTES {
            return Err("snapshot frame too short for its checksum".into());
        }
        end -= CRC_BYTES;
        let stored = u32::from_le_bytes(framed[end..].try_into().expect("4 bytes"));
        let actual = crc32fast::hash(&framed[..end]);
        if stored != actual {
            return Err(format!(
                "snapshot checksum mismatch (stored {stored:08x}, computed {actual:08x}): \
                 the data was damaged after the snapshot was taken"
            ));
        }
    }
    let framed = &framed[..end];
    let mut members = MemberContexts::new();
    let mut at: usize = 4;
    if framed[3] & WITH_MEMBERS != 0 {
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            let end = at
                .checked_add(n)
                .filter(|end| *end <= framed.len())
                .ok_or_else(|| format!("member table truncated in {what}"))?;
            let bytes = &framed[at..end];
            at = end;
            Ok(bytes)
        };
        let count = u32::from_le_bytes(take(4, "the count")?.try_into().expect("4 bytes")) as usize;
        if count > MAX_MEMBERS {
            return Err(format!(
                "member table lists {count} members, above {MAX_MEMBERS}"
            ));
        }
        for _ in 0..count {
            let id = u64::from_le_bytes(take(8, "an id")?.try_into().expect("8 bytes"));
            let len =
                u32::from_le_bytes(take(4, "a length")?.try_into().expect("4 bytes")) as usize;
            if len > MAX_CONTEXT_BYTES {
                return Err(format!(
                    "member {id}'s context is {len} bytes, above {MAX_CONTEXT_BYTES}"
                ));
            }
            let context = take(len, "a context")?;
            members.insert(id, Bytes::copy_from_slice(context));
        }
    }
    Ok((codec, members, at, end))
}

/// Returns the member table of framed snapshot data (empty when it has none).
pub(crate) fn decode_members(framed: &[u8]) -> Result<MemberContexts, String> {
    parse_header(framed).map(|(_, members, _, _)| members)
}

/// Returns the state machine's bytes from framed snapshot data.
pub(crate) fn decode(framed: &Bytes) -> Result<Bytes, String> {
    let layout = check(framed)?;
    match layout.codec {
        STORED => Ok(framed.slice(layout.at..layout.end)),
        _ => lz4_flex::block::decompress(&framed[layout.at + 4..layout.end], layout.len)
            .map(Bytes::from)
            .map_err(|e| format!("LZ4: {e}")),
    }
}

/// Whether the frame carries a checksum that matches (`None`: no checksum, or too short
/// to hold one).
pub(crate) fn checksum_matches(framed: &[u8]) -> Option<bool> {
    if framed.len() < 4 + CRC_BYTES || &framed[..3] != MAGIC || framed[3] & WITH_CRC == 0 {
        return None;
    }
    let end = framed.len() - CRC_BYTES;
    let stored = u32::from_le_bytes(framed[end..].try_into().expect("4 bytes"));
    Some(stored == crc32fast::hash(&framed[..end]))
}

/// Checks everything [`decode`] checks before it decompresses: the checksum (when the
/// frame has one: frames written before checksums existed have none), the header, the
/// member table, the codec and (for LZ4) the claimed length.
pub(crate) fn check(framed: &[u8]) -> Result<Layout, String> {
    let checksummed = framed.len() >= 4 && framed[3] & WITH_CRC != 0;
    let (codec, _, at, end) = parse_header(framed)?;
    match codec {
        STORED => Ok(Layout {
            codec,
            at,
            end,
            len: 0,
            checksummed,
        }),
        LZ4 => {
            if end < at + 4 {
                return Err("truncated LZ4 snapshot header".into());
            }
            let len = u32::from_le_bytes(framed[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len > MAX_SNAPSHOT_BYTES {
                return Err(format!(
                    "claims {len} bytes, above the {MAX_SNAPSHOT_BYTES} limit"
                ));
            }
            Ok(Layout {
                codec,
                at,
                end,
                len,
                checksummed,
            })
        }
        other => Err(format!("unknown snapshot codec {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_small_and_compressible() {
        for data in [
            Bytes::new(),
            Bytes::from_static(b"abc"),
            Bytes::from(vec![7u8; 100_000]),
        ] {
            let framed = encode(data.clone());
            assert_eq!(decode(&framed).unwrap(), data);
            assert!(decode_members(&framed).unwrap().is_empty());
        }
        assert!(encode(Bytes::from(vec![7u8; 100_000])).len() < 10_000);
    }

    #[test]
    fn member_table_roundtrips_with_both_codecs() {
        let mut members = MemberContexts::new();
        members.insert(4, Bytes::from_static(b"10.0.0.4:7000"));
        members.insert(9, Bytes::new());
        for data in [Bytes::from_static(b"abc"), Bytes::from(vec![7u8; 100_000])] {
            let framed = encode_with_members(data.clone(), &members);
            assert_eq!(decode(&framed).unwrap(), data);
            assert_eq!(decode_members(&framed).unwrap(), members);
        }
    }

    #[test]
    fn every_damaged_byte_is_caught_by_the_checksum() {
        let mut members = MemberContexts::new();
        members.insert(2, Bytes::from_static(b"10.0.0.2:7000"));
        for data in [
            Bytes::from_static(b"abcdef"),
            Bytes::from(vec![7u8; 100_000]),
        ] {
            let framed = encode_with_members(data, &members);
            assert!(check(&framed).unwrap().checksummed);
            for at in (0..framed.len()).step_by(framed.len() / 97 + 1) {
                let mut bad = framed.to_vec();
                bad[at] ^= 0x10;
                assert!(
                    decode(&Bytes::from(bad)).is_err(),
                    "flip at {at} went unseen"
                );
            }
        }
    }

    #[test]
    fn frames_without_a_checksum_still_read() {
        // What 0.1 wrote: no checksum flag, nothing after the payload.
        let framed = Bytes::from_static(b"RNS\x00abc");
        assert_eq!(decode(&framed).unwrap(), Bytes::from_static(b"abc"));
        assert!(!check(&framed).unwrap().checksummed);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(&Bytes::from_static(b"xx")).is_err());
        assert!(decode(&Bytes::from_static(b"RNS\x09")).is_err());
        assert!(decode(&Bytes::from_static(b"RNS\x01\xff\xff\xff\xff")).is_err());
        // A member table that claims more than the frame holds.
        assert!(decode(&Bytes::from_static(b"RNS\x80\x01\x00\x00\x00\x04")).is_err());
        assert!(decode_members(b"RNS\x80\xff\xff\xff\xff").is_err());
        let mut long = b"RNS\x80\x01\x00\x00\x00".to_vec();
        long.extend_from_slice(&4u64.to_le_bytes());
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_members(&long).is_err());
    }
}
