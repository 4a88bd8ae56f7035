//! The NVMe tier's key catalog on disk: `"STRC" | version:u8 | count:u64le |
//! (key_len:u32le | key | value_len:u64le)*`, written to a temporary file and
//! renamed, so a crash leaves the previous catalog or the new one.

use std::collections::HashMap;
use std::path::Path;

use crate::Key;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"STRC";
const VERSION: u8 = 1;

/// Loads a catalog; a missing or malformed file yields an empty catalog (logged).
pub(super) fn load(path: &Path) -> HashMap<Key, u64> {
    match std::fs::read(path) {
        Ok(bytes) => match decode(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable NVMe catalog");
                HashMap::new()
            }
        },
        Err(_) => HashMap::new(),
    }
}

/// Saves a catalog atomically.
pub(super) fn save(path: &Path, catalog: &HashMap<Key, u64>) -> Result<()> {
    let mut out = Vec::with_capacity(13 + catalog.len() * 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(catalog.len() as u64).to_le_bytes());
    for (k, len) in catalog {
        out.extend_from_slice(&(k.as_bytes().len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &out).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

/// Decodes a catalog, bounds-checking every field.
pub(crate) fn decode(bytes: &[u8]) -> Result<HashMap<Key, u64>> {
    let bad = |reason: String| Error::Corrupt {
        tier: "nvme catalog",
        reason,
    };
    let mut r = crate::codec::Reader::new(bytes);
    if r.take(4).map_err(bad)? != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let v = r.u8().map_err(bad)?;
    if v != VERSION {
        return Err(bad(format!("unknown version {v}")));
    }
    let count = r.u64_le().map_err(bad)?;
    let mut map = HashMap::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let klen = r.u32_le().map_err(bad)? as usize;
        let kb = r.take(klen).map_err(bad)?;
        let key = Key::decode_any(kb)?;
        let len = r.u64_le().map_err(bad)?;
        map.insert(key, len);
    }
    if !r.is_empty() {
        return Err(bad(format!("{} trailing bytes", r.remaining())));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let k = Key::new("kv", "t", "a").unwrap();
        let mut c = HashMap::new();
        c.insert(k.clone(), 5);
        c.insert(k.page(1, 2), 7);
        save(&p, &c).unwrap();
        assert_eq!(load(&p), c);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
