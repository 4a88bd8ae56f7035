//! Namespaces and their policies.
//!
//! Every key belongs to a registered namespace. The policy says where its values may
//! live, how writes flow, where the truth lives (its origin) and the limits a key or
//! value must respect. A request that breaks a rule is refused with
//! [`Error::PolicyViolation`], naming the rule.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Key;
use crate::error::{Error, Result};

/// How client writes flow for a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WritePolicy {
    /// Written to the cache tiers only (the cache is the only copy).
    CacheOnly,
    /// Written to the origin and the cache tiers; the put returns once the origin has it.
    WriteThrough,
    /// Clients may not write; values are filled from the origin on a miss.
    ReadOnly,
}

/// Where a namespace's truth lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginKind {
    /// No origin: a miss is a miss.
    None,
    /// The store's configured origin (a local directory, or Azure Blob).
    Origin,
}

/// The cache tiers a namespace may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSet {
    /// Host DRAM.
    pub dram: bool,
    /// Local NVMe.
    pub nvme: bool,
}

/// The rules of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePolicy {
    /// The namespace name.
    pub name: String,
    /// The cache tiers values may live in.
    pub tiers: TierSet,
    /// How client writes flow.
    pub write: WritePolicy,
    /// Where the truth lives.
    pub origin: OriginKind,
    /// Largest value, in bytes.
    pub max_value_size: u64,
    /// Largest key body, in bytes.
    pub max_key_body: usize,
    /// Entries older than this are treated as absent; `None` keeps them until evicted.
    pub ttl: Option<Duration>,
    /// Whether entries evicted from DRAM are demoted to NVMe (when NVMe is allowed).
    pub demote: bool,
}

impl NamespacePolicy {
    /// Checks a key against this policy.
    pub fn check_key(&self, key: &Key) -> Result<()> {
        if key.body().len() > self.max_key_body {
            return Err(self.violation(format!(
                "max_key_body: the key body is {} bytes; the limit is {}",
                key.body().len(),
                self.max_key_body
            )));
        }
        Ok(())
    }

    /// Checks a client write of `len` bytes under `key` against this policy.
    pub fn check_put(&self, key: &Key, len: u64) -> Result<()> {
        self.check_key(key)?;
        if self.write == WritePolicy::ReadOnly {
            return Err(self.violation(
                "write: read-only (values are filled from the origin, never written by clients)"
                    .into(),
            ));
        }
        if len > self.max_value_size {
            return Err(self.violation(format!(
                "max_value_size: the value is {len} bytes; the limit is {}",
                self.max_value_size
            )));
        }
        Ok(())
    }

    fn violation(&self, rule: String) -> Error {
        Error::PolicyViolation {
            namespace: self.name.clone(),
            rule,
        }
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The registry of namespaces.
#[derive(Debug, Clone)]
pub struct Namespaces {
    by_name: BTreeMap<String, NamespacePolicy>,
}

impl Default for Namespaces {
    /// The four built-in namespaces of DESIGN.md:
    ///
    /// | ns | tiers | write | origin | max value |
    /// |---|---|---|---|---|
    /// | `kv` | dram, nvme | cache-only | none | 256 MiB |
    /// | `shard` | dram, nvme | read-only | origin | 64 GiB |
    /// | `kb` | dram, nvme | write-through | origin | 64 MiB |
    /// | `obj` | dram, nvme | write-through | origin | 4 GiB |
    fn default() -> Self {
        let both = TierSet {
            dram: true,
            nvme: true,
        };
        let ns = |name: &str, write, origin, max_value_size| NamespacePolicy {
            name: name.into(),
            tiers: both,
            write,
            origin,
            max_value_size,
            max_key_body: 4096,
            ttl: None,
            demote: true,
        };
        let mut me = Self {
            by_name: BTreeMap::new(),
        };
        me.register(ns(
            "kv",
            WritePolicy::CacheOnly,
            OriginKind::None,
            256 * MIB,
        ));
        me.register(ns(
            "shard",
            WritePolicy::ReadOnly,
            OriginKind::Origin,
            64 * GIB,
        ));
        me.register(ns(
            "kb",
            WritePolicy::WriteThrough,
            OriginKind::Origin,
            64 * MIB,
        ));
        me.register(ns(
            "obj",
            WritePolicy::WriteThrough,
            OriginKind::Origin,
            4 * GIB,
        ));
        me
    }
}

impl Namespaces {
    /// An empty registry.
    pub fn empty() -> Self {
        Self {
            by_name: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) a namespace.
    pub fn register(&mut self, policy: NamespacePolicy) {
        self.by_name.insert(policy.name.clone(), policy);
    }

    /// The policy of a key's namespace.
    pub fn policy_for(&self, key: &Key) -> Result<&NamespacePolicy> {
        self.get(key.namespace())
    }

    /// The policy of a namespace, by name.
    pub fn get(&self, name: &str) -> Result<&NamespacePolicy> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::UnknownNamespace {
                namespace: name.into(),
                registered: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// All registered policies, by name.
    pub fn iter(&self) -> impl Iterator<Item = &NamespacePolicy> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_name_the_rule() {
        let ns = Namespaces::default();
        let k = Key::new("shard", "", "x").unwrap();
        let err = ns
            .policy_for(&k)
            .unwrap()
            .check_put(&k, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("read-only"), "{err}");
        let k = Key::new("kv", "", "x").unwrap();
        let err = ns
            .policy_for(&k)
            .unwrap()
            .check_put(&k, 1 << 40)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_value_size"), "{err}");
        let k = Key::new("nope", "", "x").unwrap();
        let err = ns.policy_for(&k).unwrap_err().to_string();
        assert!(
            err.contains("unknown namespace") && err.contains("obj"),
            "{err}"
        );
        let k = Key::new("obj", "", vec![b'a'; 5000]).unwrap();
        let err = ns
            .policy_for(&k)
            .unwrap()
            .check_put(&k, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_key_body"), "{err}");
    }
}
