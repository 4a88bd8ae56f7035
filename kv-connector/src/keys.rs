//! KV keys: a model fingerprint and chunk hashes chained over the prompt's tokens,
//! like vLLM's `sha256_cbor` block hashes. Spec and test vectors: `docs/kv-keys.md`.
//!
//! A chunk's key is `kv / tenant / fingerprint(32) ‖ chunk_hash(32)`. The chain
//! makes a hit on chunk *n* imply that chunks `0..n` hold the same tokens, so one
//! `MatchPrefix` over the prompt's chunk keys gives the hit length.

use sha2::{Digest, Sha256};
use strata_proto::Key;

use crate::cbor::Value;
use crate::error::{Error, Result};

/// The namespace of KV chunks.
pub const NAMESPACE: &str = "kv";

/// Default tokens per chunk.
pub const DEFAULT_CHUNK_TOKENS: usize = 256;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(CBOR(x))`, the portable hash of vLLM's `sha256_cbor`.
pub fn sha256_cbor(v: &Value) -> Hash {
    Sha256::digest(v.to_vec()).into()
}

/// The parent of the first chunk: `sha256_cbor("strata.kv.root.v1")`. Fixed, so the
/// chain never depends on a process (vLLM's `NONE_HASH` is random unless
/// `PYTHONHASHSEED` is set).
pub fn root_hash() -> Hash {
    sha256_cbor(&Value::from("strata.kv.root.v1"))
}

/// How a layer's paged KV cache is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// `(2, num_blocks, block_size, num_kv_heads, head_size)`: K and V.
    Mha,
    /// `(num_blocks, block_size, head_size)`: MLA's one latent vector per token
    /// (`num_kv_heads` is 1).
    Mla,
}

impl KvLayout {
    /// The name hashed into the fingerprint.
    pub fn as_str(self) -> &'static str {
        match self {
            KvLayout::Mha => "mha",
            KvLayout::Mla => "mla",
        }
    }
}

/// Everything that makes two engines' KV for the same tokens differ. Two
/// fingerprints share chunks only if every field is equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelFingerprint {
    /// Model id, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    pub model_id: String,
    /// Revision (commit or tag) of the weights.
    pub revision: String,
    /// KV dtype, e.g. `bf16`, `f16`, `f32`.
    pub dtype: String,
    /// Paged layout.
    pub layout: KvLayout,
    /// Attention layers whose KV is cached.
    pub num_layers: u32,
    /// KV heads on this rank (after tensor-parallel sharding).
    pub num_kv_heads: u32,
    /// Head size.
    pub head_size: u32,
    /// Tensor-parallel rank.
    pub tp_rank: u32,
    /// Tensor-parallel size.
    pub tp_size: u32,
    /// LoRA adapter, if any.
    pub lora_id: Option<String>,
    /// Tenant: also the key's tenant, so tenants never share chunks.
    pub tenant: String,
    /// vLLM's `cache_salt`: isolates a group of requests within a tenant.
    pub cache_salt: Option<String>,
}

impl ModelFingerprint {
    /// The CBOR array that is hashed (positional, so no map-ordering questions).
    pub fn to_cbor(&self) -> Value {
        let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, Value::from);
        Value::Array(vec![
            Value::from("strata.kv.fingerprint.v1"),
            Value::from(self.model_id.as_str()),
            Value::from(self.revision.as_str()),
            Value::from(self.dtype.as_str()),
            Value::from(self.layout.as_str()),
            Value::from(self.num_layers),
            Value::from(self.num_kv_heads),
            Value::from(self.head_size),
            Value::from(self.tp_rank),
            Value::from(self.tp_size),
            opt(&self.lora_id),
            Value::from(self.tenant.as_str()),
            opt(&self.cache_salt),
        ])
    }

    /// `sha256_cbor` of [`Self::to_cbor`].
    pub fn digest(&self) -> Hash {
        sha256_cbor(&self.to_cbor())
    }
}

/// Hashes chunk after chunk: `h_i = sha256_cbor([h_{i-1}, [tokens…], extra])`,
/// `h_{-1} = root_hash()`. `extra` is `null` unless extra keys are given (vLLM's
/// multimodal hashes, for example).
pub fn chain_hash(parent: &Hash, tokens: &[u32], extra: Option<&[Value]>) -> Hash {
    let v = Value::Array(vec![
        Value::Bytes(parent.to_vec()),
        Value::Array(tokens.iter().map(|&t| Value::from(t)).collect()),
        extra.map_or(Value::Null, |e| Value::Array(e.to_vec())),
    ]);
    sha256_cbor(&v)
}

/// Makes the keys of one engine's chunks.
#[derive(Debug, Clone)]
pub struct ChunkKeys {
    fingerprint: ModelFingerprint,
    digest: Hash,
    chunk_tokens: usize,
}

impl ChunkKeys {
    /// `chunk_tokens` must be a positive multiple of the engine's `block_size`.
    pub fn new(
        fingerprint: ModelFingerprint,
        chunk_tokens: usize,
        block_size: usize,
    ) -> Result<Self> {
        if block_size == 0 || chunk_tokens == 0 || !chunk_tokens.is_multiple_of(block_size) {
            return Err(Error::Config(format!(
                "chunk_tokens ({chunk_tokens}) must be a positive multiple of block_size ({block_size})"
            )));
        }
        let digest = fingerprint.digest();
        Ok(Self {
            fingerprint,
            digest,
            chunk_tokens,
        })
    }

    /// Tokens per chunk.
    pub fn chunk_tokens(&self) -> usize {
        self.chunk_tokens
    }

    /// The fingerprint.
    pub fn fingerprint(&self) -> &ModelFingerprint {
        &self.fingerprint
    }

    /// The fingerprint's digest.
    pub fn fingerprint_digest(&self) -> &Hash {
        &self.digest
    }

    /// The chained hashes of every whole chunk of `tokens` (a trailing partial
    /// chunk has none: it is never stored).
    pub fn hashes(&self, tokens: &[u32]) -> Vec<Hash> {
        let mut parent = root_hash();
        tokens
            .chunks_exact(self.chunk_tokens)
            .map(|c| {
                parent = chain_hash(&parent, c, None);
                parent
            })
            .collect()
    }

    /// The store key of a chunk.
    pub fn key(&self, hash: &Hash) -> Key {
        let mut body = [0u8; 64];
        body[..32].copy_from_slice(&self.digest);
        body[32..].copy_from_slice(hash);
        Key::new(NAMESPACE, &self.fingerprint.tenant, body).expect("valid kv key")
    }

    /// The keys of every whole chunk of `tokens`.
    pub fn keys(&self, tokens: &[u32]) -> Vec<Key> {
        self.hashes(tokens).iter().map(|h| self.key(h)).collect()
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> ModelFingerprint {
        crate::sim::llama_8b()
    }

    #[test]
    fn chain_is_prefix_closed() {
        let keys = ChunkKeys::new(llama(), 4, 2).unwrap();
        let a: Vec<u32> = (0..12).collect();
        let mut b = a.clone();
        b[9] = 99;
        let (ha, hb) = (keys.hashes(&a), keys.hashes(&b));
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // A trailing partial chunk is not hashed.
        assert_eq!(keys.hashes(&a[..11]).len(), 2);
    }

    #[test]
    fn every_field_separates() {
        let base = llama().digest();
        let mut f = llama();
        f.tp_rank = 1;
        assert_ne!(f.digest(), base);
        let mut f = llama();
        f.cache_salt = Some(String::new());
        assert_ne!(f.digest(), base);
        let mut f = llama();
        f.layout = KvLayout::Mla;
        assert_ne!(f.digest(), base);
    }

    #[test]
    fn chunk_must_be_a_multiple_of_the_block() {
        assert!(ChunkKeys::new(llama(), 256, 16).is_ok());
        let e = ChunkKeys::new(llama(), 100, 16).unwrap_err().to_string();
        assert!(e.contains("multiple of block_size"), "{e}");
    }
}
