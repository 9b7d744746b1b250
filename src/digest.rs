//! FNV-1a, 64 bits: the one hash for digests that must come out the same in every
//! process and every run (state machine digests for the divergence check, the
//! recorder's effects, the simulator's command ids). `std`'s hasher is seeded at random
//! per process, so it cannot serve.

/// FNV-1a's starting value (its offset basis).
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` with `bytes` folded in, FNV-1a style.
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// FNV-1a of `bytes`.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    fnv1a(FNV_START, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference (Fowler, Noll, Vo): FNV-1a 64 of "" and "a".
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            fnv1a(fnv(b"foo"), b"bar"),
            fnv(b"foobar"),
            "folding continues"
        );
    }
}
