//! Framing of snapshot data: compressed with LZ4 when that saves space.
//!
//! Layout: magic `b"RNS"`, one codec byte (0 = stored, 1 = LZ4 with the original length
//! prepended as u32 little-endian), then the payload. The state machine never sees the
//! framing: it produces and receives its own bytes.

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 3] = b"RNS";
const STORED: u8 = 0;
const LZ4: u8 = 1;
/// Data below this size is stored as is: compressing it saves nothing worth the time.
const MIN_COMPRESS: usize = 4096;
/// Largest state a compressed snapshot may claim to expand to.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 4 << 30;

/// Frames `data`, compressing it when the result is at least 10% smaller.
pub(crate) fn encode(data: Bytes) -> Bytes {
    if data.len() >= MIN_COMPRESS && data.len() <= u32::MAX as usize {
        let compressed = lz4_flex::block::compress(&data);
        if compressed.len() < data.len() / 10 * 9 {
            let mut out = BytesMut::with_capacity(compressed.len() + 8);
            out.put_slice(MAGIC);
            out.put_u8(LZ4);
            out.put_u32_le(data.len() as u32);
            out.put_slice(&compressed);
            return out.freeze();
        }
    }
    let mut out = BytesMut::with_capacity(data.len() + 4);
    out.put_slice(MAGIC);
    out.put_u8(STORED);
    out.put_slice(&data);
    out.freeze()
}

/// Returns the state machine's bytes from framed snapshot data.
pub(crate) fn decode(framed: &Bytes) -> Result<Bytes, String> {
    if framed.len() < 4 || &framed[..3] != MAGIC {
        return Err("missing snapshot header (not written by raftnode?)".into());
    }
    match framed[3] {
        STORED => Ok(framed.slice(4..)),
        LZ4 => {
            if framed.len() < 8 {
                return Err("truncated LZ4 snapshot header".into());
            }
            let len = u32::from_le_bytes(framed[4..8].try_into().expect("4 bytes")) as usize;
            if len > MAX_SNAPSHOT_BYTES {
                return Err(format!(
                    "claims {len} bytes, above the {MAX_SNAPSHOT_BYTES} limit"
                ));
            }
            lz4_flex::block::decompress(&framed[8..], len)
                .map(Bytes::from)
                .map_err(|e| format!("LZ4: {e}"))
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
        }
        assert!(encode(Bytes::from(vec![7u8; 100_000])).len() < 10_000);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(&Bytes::from_static(b"xx")).is_err());
        assert!(decode(&Bytes::from_static(b"RNS\x09")).is_err());
        assert!(decode(&Bytes::from_static(b"RNS\x01\xff\xff\xff\xff")).is_err());
    }
}
