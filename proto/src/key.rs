//! The key space: `namespace / tenant / body`, with one canonical byte encoding.
//!
//! The encoding is what every client (Rust, Python, the CLI) hashes and sends, so it
//! is fixed and versioned; see `docs/keys.md` for the layout and test vectors.
//!
//! ```text
//! user key : 0x01 | ns_len:u8 | ns | tenant_len:u16be | tenant | body_len:u32be | body
//! page key : 0x02 | <user key encoding without its first byte> | generation:u64be | index:u32be
//! ```
//!
//! Page keys are internal (the pages of a large value); they are never accepted
//! from a client.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A malformed key: bad encoding, a bad namespace or tenant name, a body too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key: {reason}")]
pub struct KeyError {
    /// What was wrong.
    pub reason: String,
}

type Result<T> = std::result::Result<T, KeyError>;

/// Version byte of a user key's encoding.
pub const KEY_VERSION: u8 = 0x01;
/// Version byte of an internal page key.
const PAGE_KEY_VERSION: u8 = 0x02;
/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 32;
/// Longest tenant name, in bytes.
pub const MAX_TENANT_LEN: usize = 256;
/// Longest key body any namespace accepts, in bytes (a namespace may set less).
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// A cache key. Cheap to clone (the encoding is shared), hashed and compared by its
/// canonical encoding.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    enc: Bytes,
}

impl Key {
    /// Builds a user key, checking the shape rules that hold for every namespace
    /// (a namespace's own limits are checked by `strata-tiers`: its `NamespacePolicy`).
    pub fn new(namespace: &str, tenant: &str, body: impl AsRef<[u8]>) -> Result<Self> {
        let body = body.as_ref();
        validate_namespace(namespace)?;
        validate_tenant(tenant)?;
        if body.is_empty() {
            return Err(KeyError {
                reason: "the body is empty".into(),
            });
        }
        if body.len() > MAX_BODY_LEN {
            return Err(KeyError {
                reason: format!(
                    "the body is {} bytes; the limit is {MAX_BODY_LEN}",
                    body.len()
                ),
            });
        }
        let mut enc = BytesMut::with_capacity(8 + namespace.len() + tenant.len() + body.len());
        enc.put_u8(KEY_VERSION);
        enc.put_u8(namespace.len() as u8);
        enc.put_slice(namespace.as_bytes());
        enc.put_u16(tenant.len() as u16);
        enc.put_slice(tenant.as_bytes());
        enc.put_u32(body.len() as u32);
        enc.put_slice(body);
        Ok(Self { enc: enc.freeze() })
    }

    /// Parses the text form `namespace/body` or `namespace/tenant/body`… as used by the
    /// CLI: the first segment is the namespace; with three or more segments the second
    /// is the tenant and the rest (slashes included) is the body.
    ///
    /// The two-segment form uses the default (empty) tenant. A body that contains a
    /// slash therefore needs the three-segment form (`obj//a/b` has tenant "" and body
    /// `a/b`).
    pub fn parse_path(path: &str) -> Result<Self> {
        let mut parts = path.splitn(3, '/');
        let ns = parts.next().unwrap_or_default();
        match (parts.next(), parts.next()) {
            (Some(body), None) => Self::new(ns, "", body),
            (Some(tenant), Some(body)) => Self::new(ns, tenant, body),
            _ => Err(KeyError {
                reason: format!("{path:?} is not of the form NAMESPACE/[TENANT/]KEY"),
            }),
        }
    }

    /// Decodes and validates a canonical user-key encoding (bytes from a client).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (ns, tenant, body, rest) = split_user(bytes, KEY_VERSION)?;
        if !rest.is_empty() {
            return Err(KeyError {
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        let ns = std::str::from_utf8(ns).map_err(|_| KeyError {
            reason: "namespace is not UTF-8".into(),
        })?;
        let tenant = std::str::from_utf8(tenant).map_err(|_| KeyError {
            reason: "tenant is not UTF-8".into(),
        })?;
        Self::new(ns, tenant, body)
    }

    /// Decodes a user key or an internal page key (bytes read back from our own
    /// disk or tiers, never from a client).
    pub fn decode_any(bytes: &[u8]) -> Result<Self> {
        if bytes.first() != Some(&PAGE_KEY_VERSION) {
            return Self::decode(bytes);
        }
        let (ns, tenant, body, rest) = split_user(bytes, PAGE_KEY_VERSION)?;
        if rest.len() != 12 {
            return Err(KeyError {
                reason: "page key suffix is not 12 bytes".into(),
            });
        }
        let ns = std::str::from_utf8(ns).map_err(|_| KeyError {
            reason: "namespace is not UTF-8".into(),
        })?;
        let tenant = std::str::from_utf8(tenant).map_err(|_| KeyError {
            reason: "tenant is not UTF-8".into(),
        })?;
        let generation = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
        let index = u32::from_be_bytes(rest[8..].try_into().unwrap_or_default());
        Ok(Self::new(ns, tenant, body)?.page(generation, index))
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.enc
    }

    /// The canonical encoding, shared.
    pub fn to_bytes(&self) -> Bytes {
        self.enc.clone()
    }

    /// The namespace name.
    pub fn namespace(&self) -> &str {
        let (ns, ..) = self.parts();
        // Validated as ASCII at construction.
        std::str::from_utf8(ns).unwrap_or_default()
    }

    /// The tenant name (empty for the default tenant).
    pub fn tenant(&self) -> &str {
        let (_, tenant, ..) = self.parts();
        std::str::from_utf8(tenant).unwrap_or_default()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.parts().2
    }

    /// Whether this is an internal page key.
    pub fn is_page(&self) -> bool {
        self.enc.first() == Some(&PAGE_KEY_VERSION)
    }

    /// The value a page key belongs to (`None` for a value's own key).
    pub fn page_owner(&self) -> Option<Key> {
        if !self.is_page() || self.enc.len() < 13 {
            return None;
        }
        let mut enc = BytesMut::with_capacity(self.enc.len() - 12);
        enc.put_u8(KEY_VERSION);
        enc.put_slice(&self.enc[1..self.enc.len() - 12]);
        Some(Self { enc: enc.freeze() })
    }

    /// Whether a listing of `namespace`/`tenant` by body `prefix` includes this key
    /// (page keys are never listed).
    pub fn is_listed_under(&self, namespace: &str, tenant: &str, prefix: &[u8]) -> bool {
        !self.is_page()
            && self.namespace() == namespace
            && self.tenant() == tenant
            && self.body().starts_with(prefix)
    }

    /// The key of page `index` of generation `generation` of this value.
    pub fn page(&self, generation: u64, index: u32) -> Self {
        let mut enc = BytesMut::with_capacity(self.enc.len() + 12);
        enc.put_u8(PAGE_KEY_VERSION);
        enc.put_slice(&self.enc[1..]);
        enc.put_u64(generation);
        enc.put_u32(index);
        Self { enc: enc.freeze() }
    }

    /// The text form `namespace/tenant/body` (body lossily as UTF-8), for humans.
    pub fn display_path(&self) -> String {
        format!(
            "{}/{}/{}",
            self.namespace(),
            self.tenant(),
            String::from_utf8_lossy(self.body())
        )
    }

    fn parts(&self) -> (&[u8], &[u8], &[u8]) {
        let version = self.enc[0];
        // A Key is only ever built from a validated encoding, so this cannot fail.
        match split_user(&self.enc, version) {
            Ok((ns, tenant, body, _)) => (ns, tenant, body),
            Err(_) => (&[], &[], &[]),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}/{}/", self.namespace(), self.tenant())?;
        for b in self.body().iter().take(64) {
            if b.is_ascii_graphic() {
                write!(f, "{}", *b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.is_page() {
            write!(f, "#page")?;
        }
        write!(f, ")")
    }
}

/// namespace, tenant, body, and what follows the body.
type UserParts<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn split_user(bytes: &[u8], version: u8) -> Result<UserParts<'_>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8]> {
        if buf.len() < n {
            return Err(KeyError {
                reason: format!("truncated {what}: need {n} bytes, have {}", buf.len()),
            });
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Ok(head)
    }
    let mut buf = bytes;
    let v = take(&mut buf, 1, "version")?[0];
    if v != version {
        return Err(KeyError {
            reason: format!("unknown key encoding version {v:#04x}"),
        });
    }
    let ns_len = take(&mut buf, 1, "namespace length")?[0] as usize;
    let ns = take(&mut buf, ns_len, "namespace")?;
    let t = take(&mut buf, 2, "tenant length")?;
    let tenant_len = u16::from_be_bytes([t[0], t[1]]) as usize;
    let tenant = take(&mut buf, tenant_len, "tenant")?;
    let b = take(&mut buf, 4, "body length")?;
    let body_len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let body = take(&mut buf, body_len, "body")?;
    Ok((ns, tenant, body, buf))
}

fn validate_namespace(ns: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN || !ns.chars().all(ok_char) {
        return Err(KeyError {
            reason: format!(
                "namespace {ns:?} must be 1..={MAX_NAMESPACE_LEN} characters of [a-z0-9_-]"
            ),
        });
    }
    Ok(())
}

fn validate_tenant(tenant: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_graphic() && c != '/';
    if tenant.len() > MAX_TENANT_LEN || !tenant.chars().all(ok_char) {
        return Err(KeyError {
            reason: format!(
                "tenant {tenant:?} must be at most {MAX_TENANT_LEN} printable ASCII characters without '/'"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The vectors of docs/keys.md: change both together, never one.
    #[test]
    fn test_vectors() {
        let k = Key::new("obj", "", "a").unwrap();
        assert_eq!(hex(k.as_bytes()), "01036f626a00000000000161");
        let k = Key::new("kv", "acme", [0xde, 0xad]).unwrap();
        assert_eq!(hex(k.as_bytes()), "01026b76000461636d6500000002dead");
        let k = Key::new("shard", "t1", "ds/v1/part-0001.tar").unwrap();
        assert_eq!(
            hex(k.as_bytes()),
            "01057368617264000274310000001364732f76312f706172742d303030312e746172"
        );
    }

    #[test]
    fn roundtrip_and_accessors() {
        let k = Key::new("kv", "acme", b"xyz").unwrap();
        assert_eq!(k.namespace(), "kv");
        assert_eq!(k.tenant(), "acme");
        assert_eq!(k.body(), b"xyz");
        assert_eq!(Key::decode(k.as_bytes()).unwrap(), k);
        let p = k.page(7, 3);
        assert!(p.is_page());
        assert_eq!(p.namespace(), "kv");
        assert_ne!(p, k);
        assert!(
            Key::decode(p.as_bytes()).is_err(),
            "page keys are never accepted from clients"
        );
    }

    #[test]
    fn parse_path_forms() {
        assert_eq!(
            Key::parse_path("obj/a").unwrap(),
            Key::new("obj", "", "a").unwrap()
        );
        assert_eq!(
            Key::parse_path("obj/t/a/b").unwrap(),
            Key::new("obj", "t", "a/b").unwrap()
        );
        assert_eq!(
            Key::parse_path("obj//a/b").unwrap(),
            Key::new("obj", "", "a/b").unwrap()
        );
        assert!(Key::parse_path("obj").is_err());
        assert!(Key::parse_path("OBJ/a").is_err());
    }

    #[test]
    fn rejects_malformed() {
        assert!(Key::decode(&[]).is_err());
        assert!(Key::decode(&[0x01, 5, b'a']).is_err());
        assert!(Key::decode(&[0x09]).is_err());
        let mut ok = Key::new("obj", "", "a").unwrap().as_bytes().to_vec();
        ok.push(0);
        assert!(Key::decode(&ok).is_err(), "trailing bytes");
        assert!(Key::new("obj", "a/b", "x").is_err());
        assert!(Key::new("obj", "", "").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Key::decode(&bytes);
        }
    }
}
