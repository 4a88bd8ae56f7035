//! The records the store keeps in its cache tiers, each with its own checksum.
//!
//! ```text
//! head (under the user key):
//!   "STRH" | ver:u8=1 | flags:u8 | 0:u16 | generation:u64 | total_len:u64 | page_size:u32
//!   | created_ms:u64 | value_crc:u32 | payload_len:u32 | payload_crc:u32 | header_crc:u32 | payload
//! page (under key.page(generation, index)):
//!   "STRP" | ver:u8=1 | 0:u8 | 0:u16 | generation:u64 | index:u32 | payload_len:u32
//!   | payload_crc:u32 | header_crc:u32 | payload
//! ```
//!
//! All integers are little-endian; checksums are CRC-32C. A value no larger than a
//! page lives inline in its head; a larger one has a payload-less head and one page
//! record per page. `header_crc` covers the header bytes before it, so a flipped
//! byte anywhere is caught. Decoding checks every bound and both checksums.

use bytes::Bytes;

use crate::codec::Reader;

pub(crate) const HEAD_LEN: usize = 52;
pub(crate) const PAGE_HEADER_LEN: usize = 32;
const HEAD_MAGIC: &[u8; 4] = b"STRH";
const PAGE_MAGIC: &[u8; 4] = b"STRP";
const VERSION: u8 = 1;
const FLAG_VALUE_CRC: u8 = 1;

/// The decoded head of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Changes on every write of the key; pages carry it, so a mix of versions is detected.
    pub generation: u64,
    /// Length of the whole value.
    pub total_len: u64,
    /// Page size the value was split with.
    pub page_size: u32,
    /// Unix milliseconds when the value was written.
    pub created_ms: u64,
    /// CRC-32C of the whole value, when known (values filled from an origin page by
    /// page do not have one).
    pub value_crc: Option<u32>,
    /// The inline payload (the whole value), for single-page values.
    pub inline: Option<Bytes>,
}

impl Head {
    /// Number of pages.
    pub fn page_count(&self) -> u32 {
        if self.total_len == 0 {
            0
        } else {
            self.total_len.div_ceil(u64::from(self.page_size)) as u32
        }
    }

    /// Whether the value lives inline in its head.
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes a head header into `buf[..HEAD_LEN]`; the payload (if any) must already be
/// at `buf[HEAD_LEN..]`.
pub(crate) fn write_head(buf: &mut [u8], head: &Head) {
    let payload_len = buf.len() - HEAD_LEN;
    let payload_crc = crc32c::crc32c(&buf[HEAD_LEN..]);
    buf[0..4].copy_from_slice(HEAD_MAGIC);
    buf[4] = VERSION;
    buf[5] = if head.value_crc.is_some() {
        FLAG_VALUE_CRC
    } else {
        0
    };
    put_u16(buf, 6, 0);
    put_u64(buf, 8, head.generation);
    put_u64(buf, 16, head.total_len);
    put_u32(buf, 24, head.page_size);
    put_u64(buf, 28, head.created_ms);
    put_u32(buf, 36, head.value_crc.unwrap_or(0));
    put_u32(buf, 40, payload_len as u32);
    put_u32(buf, 44, payload_crc);
    let hcrc = crc32c::crc32c(&buf[..48]);
    put_u32(buf, 48, hcrc);
}

/// Writes a page header into `buf[..PAGE_HEADER_LEN]`, payload at `buf[PAGE_HEADER_LEN..]`.
pub(crate) fn write_page(buf: &mut [u8], generation: u64, index: u32) {
    let payload_len = buf.len() - PAGE_HEADER_LEN;
    let payload_crc = crc32c::crc32c(&buf[PAGE_HEADER_LEN..]);
    buf[0..4].copy_from_slice(PAGE_MAGIC);
    buf[4] = VERSION;
    buf[5] = 0;
    put_u16(buf, 6, 0);
    put_u64(buf, 8, generation);
    put_u32(buf, 16, index);
    put_u32(buf, 20, payload_len as u32);
    put_u32(buf, 24, payload_crc);
    let hcrc = crc32c::crc32c(&buf[..28]);
    put_u32(buf, 28, hcrc);
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Structurally wrong (bad magic, truncated, bad lengths).
    Malformed(String),
    /// A checksum did not match.
    /// (The checksum of what was found is not kept: errors never carry a digest
    /// of bytes.)
    Checksum { what: &'static str, expected: u32 },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Malformed(r) => write!(f, "malformed record: {r}"),
            RecordError::Checksum { what, expected } => {
                write!(f, "{what} checksum mismatch: expected {expected:#010x}")
            }
        }
    }
}

fn check(what: &'static str, expected: u32, bytes: &[u8]) -> Result<(), RecordError> {
    let actual = crc32c::crc32c(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(RecordError::Checksum { what, expected })
    }
}

/// Decodes and verifies a head record.
pub(crate) fn decode_head(rec: &Bytes, payload: Payload) -> Result<Head, RecordError> {
    let m = RecordError::Malformed;
    let mut r = Reader::new(rec);
    if r.take(4).map_err(m)? != HEAD_MAGIC {
        return Err(RecordError::Malformed(
            "not a head record (bad magic)".into(),
        ));
    }
    let version = r.u8().map_err(m)?;
    if version != VERSION {
        return Err(RecordError::Malformed(format!(
            "unknown head version {version}"
        )));
    }
    let flags = r.u8().map_err(m)?;
    r.take(2).map_err(m)?;
    let generation = r.u64_le().map_err(m)?;
    let total_len = r.u64_le().map_err(m)?;
    let page_size = r.u32_le().map_err(m)?;
    let created_ms = r.u64_le().map_err(m)?;
    let value_crc = r.u32_le().map_err(m)?;
    let payload_len = r.u32_le().map_err(m)? as usize;
    let payload_crc = r.u32_le().map_err(m)?;
    let header_crc = r.u32_le().map_err(m)?;
    check("head header", header_crc, &rec[..48])?;
    if page_size == 0 {
        return Err(RecordError::Malformed("page size 0".into()));
    }
    if total_len.div_ceil(u64::from(page_size)) > u64::from(u32::MAX) {
        return Err(RecordError::Malformed(format!(
            "a value of {total_len} bytes in pages of {page_size} has more than 2^32 pages"
        )));
    }
    if r.remaining() != payload_len {
        return Err(RecordError::Malformed(format!(
            "payload is {} bytes, header says {payload_len}",
            r.remaining()
        )));
    }
    let inline = if payload_len > 0 || total_len == 0 {
        if payload_len as u64 != total_len {
            return Err(RecordError::Malformed(format!(
                "inline payload of {payload_len} bytes for a value of {total_len}"
            )));
        }
        if payload == Payload::Verify {
            check("head payload", payload_crc, &rec[HEAD_LEN..])?;
        }
        Some(rec.slice(HEAD_LEN..))
    } else {
        None
    };
    Ok(Head {
        generation,
        total_len,
        page_size,
        created_ms,
        value_crc: (flags & FLAG_VALUE_CRC != 0).then_some(value_crc),
        inline,
    })
}

/// Whether a decode checks the payload's CRC-32C (headers are always checked).
///
/// Records read from NVMe or Blob are verified. Records in the DRAM arena are
/// trusted: every one was built here from bytes whose CRC was checked (a put's
/// commit, a verified NVMe read, an origin fill), and re-hashing a page on every hit
/// would cost as much as copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Check the payload CRC.
    Verify,
    /// Skip it (DRAM-resident records).
    Trust,
}

/// Decodes and verifies a page record of `generation`/`index`; returns its payload.
pub(crate) fn decode_page(
    rec: &Bytes,
    generation: u64,
    index: u32,
    payload: Payload,
) -> Result<Bytes, RecordError> {
    let m = RecordError::Malformed;
    let mut r = Reader::new(rec);
    if r.take(4).map_err(m)? != PAGE_MAGIC {
        return Err(RecordError::Malformed(
            "not a page record (bad magic)".into(),
        ));
    }
    let version = r.u8().map_err(m)?;
    if version != VERSION {
        return Err(RecordError::Malformed(format!(
            "unknown page version {version}"
        )));
    }
    r.take(3).map_err(m)?;
    let g = r.u64_le().map_err(m)?;
    let i = r.u32_le().map_err(m)?;
    let payload_len = r.u32_le().map_err(m)? as usize;
    let payload_crc = r.u32_le().map_err(m)?;
    let header_crc = r.u32_le().map_err(m)?;
    check("page header", header_crc, &rec[..28])?;
    if g != generation || i != index {
        return Err(RecordError::Malformed(format!(
            "page is generation {g} index {i}, expected {generation}/{index}"
        )));
    }
    if r.remaining() != payload_len {
        return Err(RecordError::Malformed(format!(
            "page payload is {} bytes, header says {payload_len}",
            r.remaining()
        )));
    }
    if payload == Payload::Verify {
        check("page payload", payload_crc, &rec[PAGE_HEADER_LEN..])?;
    }
    Ok(rec.slice(PAGE_HEADER_LEN..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_rec(payload: &[u8]) -> Bytes {
        let mut buf = vec![0u8; HEAD_LEN + payload.len()];
        buf[HEAD_LEN..].copy_from_slice(payload);
        let head = Head {
            generation: 9,
            total_len: payload.len() as u64,
            page_size: 4096,
            created_ms: 1,
            value_crc: Some(crc32c::crc32c(payload)),
            inline: None,
        };
        write_head(&mut buf, &head);
        Bytes::from(buf)
    }

    #[test]
    fn head_roundtrip_and_every_flip_is_caught() {
        let rec = head_rec(b"hello world");
        let h = decode_head(&rec, Payload::Verify).unwrap();
        assert_eq!(h.inline.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(h.value_crc, Some(crc32c::crc32c(b"hello world")));
        for i in 0..rec.len() {
            let mut bad = rec.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_head(&Bytes::from(bad), Payload::Verify).is_err(),
                "flip at byte {i} not caught"
            );
        }
    }

    #[test]
    fn page_roundtrip_and_every_flip_is_caught() {
        let mut buf = vec![0u8; PAGE_HEADER_LEN + 100];
        buf[PAGE_HEADER_LEN..].fill(7);
        write_page(&mut buf, 5, 2);
        let rec = Bytes::from(buf);
        assert_eq!(decode_page(&rec, 5, 2, Payload::Verify).unwrap().len(), 100);
        assert!(
            decode_page(&rec, 6, 2, Payload::Trust).is_err(),
            "wrong generation"
        );
        // Trusted (DRAM) decodes still check the header.
        let mut bad = rec.to_vec();
        bad[8] ^= 1;
        assert!(decode_page(&Bytes::from(bad), 5, 2, Payload::Trust).is_err());
        for i in 0..rec.len() {
            let mut bad = rec.to_vec();
            bad[i] ^= 1;
            assert!(
                decode_page(&Bytes::from(bad), 5, 2, Payload::Verify).is_err(),
                "flip at byte {i} not caught"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let b = Bytes::from(bytes);
            let _ = decode_head(&b, Payload::Verify);
            let _ = decode_page(&b, 0, 0, Payload::Verify);
            let _ = decode_head(&b, Payload::Trust);
            let _ = decode_page(&b, 0, 0, Payload::Trust);
        }
    }
}
