//! The stored chunk: a header with one CRC-32C per layer, then each layer's KV for
//! the chunk's tokens. One value per chunk (so `MatchPrefix` on chunk keys is
//! exact), read layer by layer with ranged GETs (so loading layer L+1 overlaps
//! compute on layer L). Spec: `docs/kv-keys.md`, "Stored chunk".

use crate::keys::Hash;

/// `b"SKV1"`.
pub const MAGIC: [u8; 4] = *b"SKV1";
/// Format version.
pub const VERSION: u16 = 1;
/// Bytes of the header before the per-layer CRCs.
const FIXED: usize = 4 + 2 + 1 + 1 + 32 + 32 + 4 + 4 + 8 + 4;

/// The shape of one chunk: fixed per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShape {
    /// 1 for MLA, 2 for K and V.
    pub kv: u8,
    /// Bytes of one element.
    pub elem_size: u8,
    /// Tokens in a chunk.
    pub tokens: u32,
    /// Layers.
    pub layers: u32,
    /// Bytes of one layer's KV for the chunk's tokens.
    pub layer_bytes: u64,
}

impl ChunkShape {
    /// Bytes of the header.
    pub fn header_len(&self) -> usize {
        FIXED + 4 * self.layers as usize + 4
    }

    /// Offset of layer `l` in the value.
    pub fn layer_offset(&self, l: usize) -> u64 {
        self.header_len() as u64 + l as u64 * self.layer_bytes
    }

    /// Bytes of the whole value.
    pub fn value_len(&self) -> u64 {
        self.layer_offset(self.layers as usize)
    }
}

/// A parsed, checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The shape it declares.
    pub shape: ChunkShape,
    /// Fingerprint digest it was written under.
    pub fingerprint: Hash,
    /// Its chunk hash.
    pub chunk_hash: Hash,
    /// CRC-32C of each layer's bytes.
    pub layer_crcs: Vec<u32>,
}

impl Header {
    /// Writes the header (its length is `shape.header_len()`).
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.shape;
        let mut b = Vec::with_capacity(s.header_len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(s.kv);
        b.push(s.elem_size);
        b.extend_from_slice(&self.fingerprint);
        b.extend_from_slice(&self.chunk_hash);
        b.extend_from_slice(&s.tokens.to_le_bytes());
        b.extend_from_slice(&s.layers.to_le_bytes());
        b.extend_from_slice(&s.layer_bytes.to_le_bytes());
        b.extend_from_slice(&(s.header_len() as u32).to_le_bytes());
        for c in &self.layer_crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the header at the start of `bytes` and checks it against what the
    /// reader expects: its own CRC, the shape, the fingerprint and the chunk hash.
    /// Every field is bounds-checked; a refusal names what was wrong.
    pub fn decode(
        bytes: &[u8],
        want: &ChunkShape,
        fingerprint: &Hash,
        chunk_hash: &Hash,
    ) -> std::result::Result<Header, String> {
        let need = want.header_len();
        if bytes.len() < need {
            return Err(format!("header truncated: {} of {need} bytes", bytes.len()));
        }
        if bytes[..4] != MAGIC {
            return Err("bad magic (not a Strata KV chunk)".into());
        }
        let stored = u32::from_le_bytes(bytes[need - 4..need].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&bytes[..need - 4]);
        if stored != actual {
            return Err(format!(
                "header checksum {stored:08x}, computed {actual:08x}"
            ));
        }
        let mut r = Reader(&bytes[4..need - 4]);
        let version = u16::from_le_bytes(r.array()?);
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let kv = r.take(1)?[0];
        let elem_size = r.take(1)?[0];
        let fp: Hash = r.array()?;
        let ch: Hash = r.array()?;
        let tokens = u32::from_le_bytes(r.array()?);
        let layers = u32::from_le_bytes(r.array()?);
        let layer_bytes = u64::from_le_bytes(r.array()?);
        let header_len = u32::from_le_bytes(r.array()?) as usize;
        let shape = ChunkShape {
            kv,
            elem_size,
            tokens,
            layers,
            layer_bytes,
        };
        if shape != *want {
            return Err(format!(
                "shape {shape:?} differs from the engine's {want:?}"
            ));
        }
        if header_len != need {
            return Err(format!("header length {header_len}, expected {need}"));
        }
        let mut layer_crcs = Vec::with_capacity(layers as usize);
        for _ in 0..layers {
            layer_crcs.push(u32::from_le_bytes(r.array()?));
        }
        if fp != *fingerprint {
            return Err("written under another model fingerprint".into());
        }
        if ch != *chunk_hash {
            return Err("holds another chunk's hash".into());
        }
        Ok(Header {
            shape,
            fingerprint: fp,
            chunk_hash: ch,
            layer_crcs,
        })
    }

    /// Checks one layer's bytes against its CRC.
    pub fn check_layer(&self, layer: usize, bytes: &[u8]) -> std::result::Result<(), String> {
        if bytes.len() as u64 != self.shape.layer_bytes {
            return Err(format!(
                "layer {layer} is {} bytes, expected {}",
                bytes.len(),
                self.shape.layer_bytes
            ));
        }
        self.check_layer_crc(layer, crc32c::crc32c(bytes))
    }

    /// Checks the CRC-32C of one layer's bytes, computed by the caller as it copied
    /// them, against the header's.
    pub fn check_layer_crc(&self, layer: usize, got: u32) -> std::result::Result<(), String> {
        let want = self
            .layer_crcs
            .get(layer)
            .ok_or_else(|| format!("no layer {layer}"))?;
        if got != *want {
            return Err(format!(
                "layer {layer} checksum {got:08x}, header says {want:08x}"
            ));
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("header truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape() -> ChunkShape {
        ChunkShape {
            kv: 2,
            elem_size: 2,
            tokens: 16,
            layers: 3,
            layer_bytes: 2 * 16 * 4 * 2,
        }
    }

    fn header() -> Header {
        Header {
            shape: shape(),
            fingerprint: [7; 32],
            chunk_hash: [9; 32],
            layer_crcs: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let h = header();
        let b = h.encode();
        assert_eq!(b.len(), shape().header_len());
        assert_eq!(Header::decode(&b, &shape(), &[7; 32], &[9; 32]).unwrap(), h);
        let e = Header::decode(&b, &shape(), &[7; 32], &[8; 32]).unwrap_err();
        assert!(e.contains("another chunk"), "{e}");
        let e = Header::decode(&b, &shape(), &[6; 32], &[9; 32]).unwrap_err();
        assert!(e.contains("fingerprint"), "{e}");
        let mut bad = b.clone();
        bad[80] ^= 1;
        let e = Header::decode(&bad, &shape(), &[7; 32], &[9; 32]).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        let e = Header::decode(&b[..10], &shape(), &[7; 32], &[9; 32]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let mut other = shape();
        other.layers = 4;
        let e = Header::decode(&b, &other, &[7; 32], &[9; 32]).unwrap_err();
        assert!(e.contains("truncated") || e.contains("shape"), "{e}");
    }

    #[test]
    fn layer_checks() {
        let data = vec![5u8; shape().layer_bytes as usize];
        let mut h = header();
        h.layer_crcs[1] = crc32c::crc32c(&data);
        assert!(h.check_layer(1, &data).is_ok());
        assert!(h.check_layer(0, &data).unwrap_err().contains("checksum"));
        assert!(
            h.check_layer(1, &data[1..])
                .unwrap_err()
                .contains("expected")
        );
        assert!(h.check_layer(7, &data).is_err());
    }

    proptest! {
        /// Arbitrary bytes, or a valid header with any one byte changed, never
        /// panic the decoder and are never accepted as another header.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), flip in 0usize..400) {
            let _ = Header::decode(&bytes, &shape(), &[7; 32], &[9; 32]);
            let mut b = header().encode();
            let i = flip % b.len();
            b[i] ^= 0x5a;
            prop_assert!(Header::decode(&b, &shape(), &[7; 32], &[9; 32]).is_err());
        }
    }
}
