//! Fuzzes the KV connector's stored-chunk header decoder, the first thing a load
//! reads of bytes that came over the network. The input is decoded as it is, and
//! again with its header CRC made right, so mutations reach the field checks
//! behind the CRC. Nothing may panic; a header that decodes must re-encode to the
//! same bytes, and the layer check must take any bytes after it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_kv_connector::chunk::{ChunkShape, Header};

/// The shape the seeds are written for (`fuzz/seeds.py`): 2 layers of 64 bytes.
const SHAPE: ChunkShape = ChunkShape {
    kv: 2,
    elem_size: 2,
    tokens: 16,
    layers: 2,
    layer_bytes: 64,
};
const FINGERPRINT: [u8; 32] = [0x11; 32];
const CHUNK_HASH: [u8; 32] = [0x22; 32];

fn check(bytes: &[u8]) {
    if let Ok(h) = Header::decode(bytes, &SHAPE, &FINGERPRINT, &CHUNK_HASH) {
        let n = SHAPE.header_len();
        assert_eq!(h.encode(), &bytes[..n], "a decoded header re-encodes to its bytes");
        for l in 0..=SHAPE.layers as usize {
            let _ = h.check_layer(l, &bytes[n..]);
            let _ = h.check_layer_crc(l, 0);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let n = SHAPE.header_len();
    if data.len() >= n {
        let mut fixed = data.to_vec();
        let crc = crc32c(&fixed[..n - 4]);
        fixed[n - 4..n].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

/// CRC-32C (Castagnoli), bitwise: the fuzz crate stays free of the checksum crate.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}
