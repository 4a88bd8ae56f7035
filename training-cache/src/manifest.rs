//! Dataset manifests: what a dataset version is made of, and the keys of its
//! shards. Shared by the server (which lists the origin and stores manifests) and
//! every client (the loader reads a manifest to know its shards).
//!
//! A manifest is the sorted listing of the blobs under a source with their sizes
//! and ETags; the listing hashes to the **version**, so an unchanged listing keeps
//! it and any change makes a new one. A shard's key is
//! `shard/<tenant>/<name>@<version>/<path>`: two versions are two key spaces and
//! never mix. Manifests are stored in the `obj` namespace under tenant
//! [`META_TENANT`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata_proto::Key;

/// A manifest or a dataset name that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Stored bytes that are not a consistent manifest.
    #[error("corrupt manifest: {0}")]
    Corrupt(String),
    /// A dataset name outside what a key may hold.
    #[error("invalid key: {0}")]
    InvalidName(String),
}

/// The tenant under which dataset metadata is stored in the `obj` namespace.
pub const META_TENANT: &str = "_strata";
/// Longest dataset name.
pub const MAX_NAME: usize = 128;
/// Largest manifest accepted from storage (a decoder limit, not a dataset limit:
/// about 5 million shards).
const MAX_MANIFEST_BYTES: usize = 1 << 30;

/// One shard of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Its path under the dataset's source (the blob name without the prefix).
    pub path: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its ETag when listed (a local file: modification time and size).
    pub etag: String,
}

/// A dataset version: the shards under a source, as listed once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dataset's name.
    pub name: String,
    /// The source as given to `add` (prefix or URL).
    pub source: String,
    /// The version: the first 16 hex digits of the SHA-256 of the listing.
    pub version: String,
    /// When it was listed (ms since the epoch).
    pub created_ms: u64,
    /// The shards, sorted by path (a shard's index in a plan is its index here).
    pub shards: Vec<Shard>,
}

impl Manifest {
    /// Builds a manifest, sorting the shards and computing the version.
    pub fn new(name: &str, source: &str, mut shards: Vec<Shard>) -> Self {
        shards.sort_by(|a, b| a.path.cmp(&b.path));
        let mut h = Sha256::new();
        for s in &shards {
            for part in [s.path.as_bytes(), &s.size.to_le_bytes(), s.etag.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        let version = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            name: name.to_owned(),
            source: source.to_owned(),
            version,
            created_ms: now_ms(),
            shards,
        }
    }

    /// The dataset's bytes.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }

    /// The key of shard `index` (panics if out of range).
    pub fn shard_key(&self, index: usize) -> Key {
        shard_key(&self.name, &self.version, &self.shards[index].path)
    }

    /// Decodes a stored manifest, refusing anything malformed or inconsistent.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let bad = ManifestError::Corrupt;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!("{} bytes is over the limit", bytes.len())));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        check_name(&m.name)?;
        let again = Manifest::new(&m.name, &m.source, m.shards.clone());
        if again.version != m.version || again.shards != m.shards {
            return Err(bad(format!(
                "manifest of {:?} says version {} but its shards hash to {} (or are unsorted)",
                m.name, m.version, again.version
            )));
        }
        Ok(m)
    }
}

/// The key of a shard of a dataset version.
pub fn shard_key(name: &str, version: &str, path: &str) -> Key {
    Key::new("shard", "", format!("{name}@{version}/{path}")).expect("a valid shard key")
}

/// `(name, version, path)` of a shard key.
pub fn parse_shard_key(key: &Key) -> Option<(&str, &str, &str)> {
    if key.namespace() != "shard" {
        return None;
    }
    let body = std::str::from_utf8(key.body()).ok()?;
    let (dataset, path) = body.split_once('/')?;
    let (name, version) = dataset.split_once('@')?;
    Some((name, version, path))
}

/// Checks a dataset name: 1–128 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::InvalidName(format!(
            "dataset name {name:?} must be 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(path: &str, size: u64, etag: &str) -> Shard {
        Shard {
            path: path.into(),
            size,
            etag: etag.into(),
        }
    }

    #[test]
    fn versions_follow_the_listing_only() {
        let a = Manifest::new("d", "p/", vec![shard("b", 2, "x"), shard("a", 1, "y")]);
        assert_eq!(a.shards[0].path, "a");
        let b = Manifest::new("d", "other/", vec![shard("a", 1, "y"), shard("b", 2, "x")]);
        assert_eq!(a.version, b.version, "order and source do not matter");
        let c = Manifest::new("d", "p/", vec![shard("a", 1, "y"), shard("b", 2, "z")]);
        assert_ne!(a.version, c.version, "an ETag change is a new version");
        assert_eq!(a.version.len(), 16);
    }

    #[test]
    fn decode_refuses_what_does_not_hash() {
        let m = Manifest::new("d", "p/", vec![shard("a", 1, "y")]);
        let good = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::decode(&good).unwrap(), m);
        let mut tampered = m.clone();
        tampered.shards[0].size = 2;
        let err = Manifest::decode(&serde_json::to_vec(&tampered).unwrap()).unwrap_err();
        assert!(err.to_string().contains("hash to"), "{err}");
        for bad in [&b""[..], b"{", b"[]", b"\xff\xfe", b"{\"name\":\"../x\"}"] {
            assert!(Manifest::decode(bad).is_err());
        }
        let mut bad_name = m;
        bad_name.name = "a/b".into();
        assert!(Manifest::decode(&serde_json::to_vec(&bad_name).unwrap()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_never_accepts_a_tampered_manifest(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flip in 0usize..4096,
        ) {
            let _ = Manifest::decode(&bytes);
            let m = Manifest::new("d", "p/", vec![shard("a", 1, "y"), shard("b/c", 9, "\"0x1\"")]);
            let mut good = serde_json::to_vec(&m).unwrap();
            let i = flip % good.len();
            good[i] ^= 0x01;
            if let Ok(d) = Manifest::decode(&good) {
                // Only a flip the JSON reading ignores (say, in a field name's case
                // that serde rejects anyway) could decode; it must decode to `m`.
                proptest::prop_assert_eq!(d.shards, m.shards);
            }
        }
    }

    #[test]
    fn shard_keys_round_trip() {
        let k = shard_key("imagenet", "0123456789abcdef", "train/shard-000.tar");
        assert_eq!(
            parse_shard_key(&k),
            Some(("imagenet", "0123456789abcdef", "train/shard-000.tar"))
        );
        assert!(parse_shard_key(&Key::new("obj", "", "a@b/c").unwrap()).is_none());
        assert!(check_name("ok.name_1-2").is_ok());
        for bad in ["", "a/b", "a@b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
