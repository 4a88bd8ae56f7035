//! The committed seeds of the `chunk` fuzz target (written by `fuzz/seeds.py` from
//! `docs/kv-keys.md`, independently of the Rust encoder) decode as documented: the
//! valid chunk decodes and its layers check, each near-miss is refused for its
//! reason.

use strata_kv_connector::chunk::{ChunkShape, Header};

const SHAPE: ChunkShape = ChunkShape {
    kv: 2,
    elem_size: 2,
    tokens: 16,
    layers: 2,
    layer_bytes: 64,
};

fn seed(name: &str) -> Vec<u8> {
    let path = format!("{}/../fuzz/corpus/chunk/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn decode(name: &str) -> Result<Header, String> {
    Header::decode(&seed(name), &SHAPE, &[0x11; 32], &[0x22; 32])
}

#[test]
fn chunk_seeds_decode_as_documented() {
    let n = SHAPE.header_len();
    let valid = seed("valid");
    let h = decode("valid").unwrap();
    assert_eq!(h.encode(), &valid[..n], "the Python header is the Rust one");
    for l in 0..2 {
        let at = n + l * 64;
        h.check_layer(l, &valid[at..at + 64]).unwrap();
    }
    let flipped = seed("layer-1-flipped");
    let h = decode("layer-1-flipped").unwrap();
    h.check_layer(0, &flipped[n..n + 64]).unwrap();
    let e = h.check_layer(1, &flipped[n + 64..]).unwrap_err();
    assert!(e.contains("layer 1 checksum"), "{e}");

    for (name, why) in [
        ("bad-magic", "bad magic"),
        ("version-2", "unknown version 2"),
        ("three-layers", "header checksum"),
        ("other-fingerprint", "another model fingerprint"),
        ("other-chunk-hash", "another chunk's hash"),
        ("header-len-lies", "header length 4096"),
        ("header-crc-wrong", "header checksum"),
        ("truncated", "header truncated"),
    ] {
        let e = decode(name).unwrap_err();
        assert!(e.contains(why), "{name}: {e}");
    }
}
