//! Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`, off in every
//! build but theirs): the decoders of bytes the store reads back from NVMe (and
//! from a Blob cache tier), each with the properties the targets assert. Not part
//! of the API.
//!
//! Each entry point decodes its input as it is, and again with its checksums made
//! right, so mutations reach the field checks behind the CRCs. Nothing may panic
//! or allocate from a length field alone; what decodes must encode back to what it
//! decoded from.

use std::collections::HashMap;

use bytes::Bytes;

use crate::Key;
use crate::nvme::catalog::{self, Entry};
use crate::store::record::{self, HEAD_LEN, PAGE_HEADER_LEN, Payload};

/// The value records: a head and a page (`store/record.rs`), and the framing of
/// an NVMe entry's key and value.
pub fn records(bytes: &[u8]) {
    records_once(bytes);
    let mut fixed = bytes.to_vec();
    if fixed.len() >= HEAD_LEN {
        let p = crc32c::crc32c(&fixed[HEAD_LEN..]);
        fixed[44..48].copy_from_slice(&p.to_le_bytes());
        let h = crc32c::crc32c(&fixed[..48]);
        fixed[48..52].copy_from_slice(&h.to_le_bytes());
        records_once(&fixed);
    }
    let mut fixed = bytes.to_vec();
    if fixed.len() >= PAGE_HEADER_LEN {
        let p = crc32c::crc32c(&fixed[PAGE_HEADER_LEN..]);
        fixed[24..28].copy_from_slice(&p.to_le_bytes());
        let h = crc32c::crc32c(&fixed[..28]);
        fixed[28..32].copy_from_slice(&h.to_le_bytes());
        records_once(&fixed);
    }
    crate::nvme::fuzz_entry(bytes);
}

fn records_once(bytes: &[u8]) {
    let b = Bytes::copy_from_slice(bytes);
    for payload in [Payload::Verify, Payload::Trust] {
        if let Ok(h) = record::decode_head(&b, payload) {
            // A value's pages can be counted and addressed (u32 indexes).
            assert!(h.total_len.div_ceil(u64::from(h.page_size)) <= u64::from(u32::MAX));
            let mut again = vec![0u8; HEAD_LEN];
            if let Some(inline) = &h.inline {
                assert_eq!(inline.len() as u64, h.total_len, "an inline value is whole");
                again.extend_from_slice(inline);
            }
            record::write_head(&mut again, &h);
            let back = record::decode_head(&Bytes::from(again), Payload::Verify)
                .expect("a head written from a decoded one decodes");
            assert_eq!(back, h, "a head survives a re-encoding");
        }
        // The generation and index the page says it is, so the decoder goes on.
        let (generation, index) = if bytes.len() >= 20 {
            (
                u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
                u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
            )
        } else {
            (0, 0)
        };
        if let Ok(p) = record::decode_page(&b, generation, index, payload) {
            let mut again = vec![0u8; PAGE_HEADER_LEN];
            again.extend_from_slice(&p);
            record::write_page(&mut again, generation, index);
            let back = record::decode_page(&Bytes::from(again), generation, index, Payload::Verify)
                .expect("a page written from a decoded one decodes");
            assert_eq!(back, p, "a page survives a re-encoding");
        }
    }
}

/// The NVMe catalog: a snapshot, and a journal replayed over it.
pub fn catalog(bytes: &[u8]) {
    if let Ok(map) = catalog::decode(bytes) {
        let again = catalog::encode(&map);
        assert_eq!(
            catalog::decode(&again).expect("an encoded snapshot decodes"),
            map,
            "a snapshot survives a re-encoding"
        );
    }
    journal(bytes);
    // As a journal body behind a good header, with every record's CRC made right.
    let mut fixed = b"STRJ\x01".to_vec();
    let body_at = fixed.len();
    fixed.extend_from_slice(bytes);
    let mut at = body_at;
    while fixed.len() - at >= 8 {
        let len = u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e <= fixed.len()) else {
            break;
        };
        let crc = crc32c::crc32c(&fixed[at + 8..end]);
        fixed[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    journal(&fixed);
}

fn journal(bytes: &[u8]) {
    let mut map: HashMap<Key, Entry> = HashMap::new();
    let (applied, good) = catalog::replay(bytes, &mut map);
    assert!(
        good <= bytes.len(),
        "the good prefix lies within the journal"
    );
    assert!(
        applied == 0 || good > 5,
        "records applied from a header alone"
    );
    // The good prefix alone replays to the same catalog, and replaying it again
    // over the result changes nothing (records are idempotent).
    let mut prefix = HashMap::new();
    assert_eq!(
        catalog::replay(&bytes[..good], &mut prefix),
        (applied, good)
    );
    assert_eq!(prefix, map, "the good prefix replays to the same catalog");
    let mut twice = map.clone();
    catalog::replay(&bytes[..good], &mut twice);
    assert_eq!(twice, map, "a journal replayed twice changes nothing");
}
