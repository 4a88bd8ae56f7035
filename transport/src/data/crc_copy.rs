//! A copy that checksums what it copies in the same pass: each 8-byte word is
//! loaded once, stored, and fed to CRC-32C from the register. The sum is of exactly
//! the bytes written, whatever the source does meanwhile (a leased arena that a
//! broken lease lets the server reuse), and the bytes cross memory once.
//!
//! On x86-64 with SSE 4.2 it runs three CRC streams at once (the instruction's
//! latency is three times its throughput) over blocks of three segments, joined by
//! a table that shifts a CRC state over one segment of zeros. Elsewhere it copies,
//! then sums the copy.

use std::sync::OnceLock;

/// Bytes of one stream's segment.
const SEG: usize = 4096;

/// Copies `len` bytes from `src` to `dst` and returns `crc32c_append(crc, those
/// bytes)`.
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, and the two must not
/// overlap. `src` may change concurrently (shared memory): the result still
/// describes what was written to `dst`.
pub(crate) unsafe fn copy_crc32c(crc: u32, src: *const u8, dst: *mut u8, len: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the feature is present; the pointers are the caller's promise.
        return unsafe { sse42::copy_crc32c(crc, src, dst, len) };
    }
    // SAFETY: as promised by the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    // SAFETY: `dst` now holds `len` initialised bytes, owned by the caller.
    crc32c::crc32c_append(crc, unsafe { std::slice::from_raw_parts(dst, len) })
}

#[cfg(target_arch = "x86_64")]
mod sse42 {
    use std::arch::x86_64::_mm_crc32_u64;

    use super::{OnceLock, SEG};

    /// `shift[k][v]`: the raw CRC state `v << 8k` after `SEG` zero bytes. The raw
    /// update with zero data is linear, so a state's shift is the XOR of its bytes'.
    fn shift_table() -> &'static [[u32; 256]; 4] {
        static TABLE: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut t = Box::new([[0u32; 256]; 4]);
            for (k, row) in t.iter_mut().enumerate() {
                for (v, slot) in row.iter_mut().enumerate() {
                    let mut s = u64::from((v as u32) << (8 * k));
                    for _ in 0..SEG / 8 {
                        // SAFETY: only reached when SSE 4.2 was detected.
                        s = unsafe { _mm_crc32_u64(s, 0) };
                    }
                    *slot = s as u32;
                }
            }
            t
        })
    }

    fn shift(t: &[[u32; 256]; 4], s: u64) -> u64 {
        let s = s as u32;
        u64::from(
            t[0][(s & 0xff) as usize]
                ^ t[1][((s >> 8) & 0xff) as usize]
                ^ t[2][((s >> 16) & 0xff) as usize]
                ^ t[3][(s >> 24) as usize],
        )
    }

    /// See [`super::copy_crc32c`].
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn copy_crc32c(crc: u32, src: *const u8, dst: *mut u8, len: usize) -> u32 {
        let t = shift_table();
        let mut state = u64::from(!crc);
        let mut pos = 0;
        while len - pos >= 3 * SEG {
            let (mut s0, mut s1, mut s2) = (state, 0u64, 0u64);
            let mut i = 0;
            while i < SEG {
                // SAFETY: pos + 2·SEG + i + 8 <= len: inside both buffers (the
                // caller's promise); unaligned loads and stores of plain words.
                unsafe {
                    let a = src.add(pos + i).cast::<u64>().read_unaligned();
                    let b = src.add(pos + SEG + i).cast::<u64>().read_unaligned();
                    let c = src.add(pos + 2 * SEG + i).cast::<u64>().read_unaligned();
                    dst.add(pos + i).cast::<u64>().write_unaligned(a);
                    dst.add(pos + SEG + i).cast::<u64>().write_unaligned(b);
                    dst.add(pos + 2 * SEG + i).cast::<u64>().write_unaligned(c);
                    s0 = _mm_crc32_u64(s0, a);
                    s1 = _mm_crc32_u64(s1, b);
                    s2 = _mm_crc32_u64(s2, c);
                }
                i += 8;
            }
            state = shift(t, shift(t, s0) ^ s1) ^ s2;
            pos += 3 * SEG;
        }
        while len - pos >= 8 {
            // SAFETY: pos + 8 <= len.
            unsafe {
                let a = src.add(pos).cast::<u64>().read_unaligned();
                dst.add(pos).cast::<u64>().write_unaligned(a);
                state = _mm_crc32_u64(state, a);
            }
            pos += 8;
        }
        let mut crc = !(state as u32);
        if pos < len {
            // SAFETY: the last < 8 bytes, inside both buffers.
            unsafe { std::ptr::copy_nonoverlapping(src.add(pos), dst.add(pos), len - pos) };
            // SAFETY: just written.
            crc = crc32c::crc32c_append(crc, unsafe {
                std::slice::from_raw_parts(dst.add(pos), len - pos)
            });
        }
        crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_sums_like_a_copy_then_crc32c() {
        let src: Vec<u8> = (0..5 * SEG * 3 + 29)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
            .collect();
        // Lengths around the block and word edges, from unaligned starts.
        for len in [
            0,
            1,
            7,
            8,
            9,
            3 * SEG - 1,
            3 * SEG,
            3 * SEG + 5,
            7 * SEG + 3,
            4 * 3 * SEG,
        ] {
            for off in [0, 1, 3] {
                let s = &src[off..off + len];
                let mut dst = vec![0u8; len + 1];
                // SAFETY: both buffers hold `len` bytes; distinct allocations.
                let crc =
                    unsafe { copy_crc32c(0x1234_5678, s.as_ptr(), dst[1..].as_mut_ptr(), len) };
                assert_eq!(&dst[1..], s, "len {len} off {off}");
                assert_eq!(
                    crc,
                    crc32c::crc32c_append(0x1234_5678, s),
                    "len {len} off {off}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_any_start(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(4 * 3 * SEG + 100)),
            off in 0usize..8,
            crc in proptest::prelude::any::<u32>(),
        ) {
            let s = &bytes[off.min(bytes.len())..];
            let mut dst = vec![0u8; s.len()];
            // SAFETY: both buffers hold `s.len()` bytes; distinct allocations.
            let got = unsafe { copy_crc32c(crc, s.as_ptr(), dst.as_mut_ptr(), s.len()) };
            proptest::prop_assert_eq!(&dst[..], s);
            proptest::prop_assert_eq!(got, crc32c::crc32c_append(crc, s));
        }
    }
}
