//! Deterministic test values, shared by the conformance suite and the store tests.

use bytes::Bytes;

/// `len` deterministic bytes that differ for every `seed` and every offset, so a
/// value that mixes two writes, or is shifted, never passes for either.
pub(crate) fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}
