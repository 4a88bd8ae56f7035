//! The origin: where a namespace's truth lives. A closed set, so an enum (static
//! dispatch) over the tiers that can serve as one.

use std::sync::Arc;

use bytes::Bytes;

use crate::Key;
use crate::blob::BlobTier;
use crate::error::Result;
use crate::localdir::LocalDirTier;
use crate::stats::TierStats;
use crate::tier::{GetOptions, Listed, PutOptions, PutOutcome, Tier};

/// An origin tier.
#[derive(Debug)]
#[non_exhaustive]
pub enum Origin {
    /// A local directory (the embedded default).
    LocalDir(LocalDirTier),
    /// An Azure Blob container.
    Blob(Box<BlobTier>),
}

macro_rules! delegate {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            Origin::LocalDir($t) => $e,
            Origin::Blob($t) => $e,
        }
    };
}

impl Origin {
    /// The tier's name.
    pub fn name(&self) -> &'static str {
        delegate!(self, t => t.name())
    }

    /// The tier's counters.
    pub fn stats(&self) -> &Arc<TierStats> {
        delegate!(self, t => t.stats())
    }

    /// The value's length and version (an ETag; a local file's inode, mtime and
    /// size); `None` if absent.
    pub(crate) async fn stat(&self, key: &Key) -> Result<Option<(u64, Option<String>)>> {
        delegate!(self, t => t.stat(key).await)
    }

    /// A read with the version its bytes are of.
    pub(crate) async fn get_versioned(
        &self,
        key: &Key,
        opts: &GetOptions,
    ) -> Result<Option<(Bytes, Option<String>)>> {
        delegate!(self, t => t.get_versioned(key, opts).await)
    }

    pub(crate) async fn put(&self, key: &Key, value: Bytes) -> Result<PutOutcome> {
        delegate!(self, t => t.put(key, value, &PutOptions::default()).await)
    }

    pub(crate) async fn delete(&self, key: &Key) -> Result<bool> {
        delegate!(self, t => t.delete(key).await)
    }

    pub(crate) async fn list(
        &self,
        ns: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>> {
        delegate!(self, t => t.list(ns, tenant, prefix, limit).await)
    }

    pub(crate) async fn close(&self) -> Result<()> {
        delegate!(self, t => t.close().await)
    }
}

/// A boxed future, for the object-safe [`NamespaceOrigin`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An origin for one namespace whose keys map to origin objects by a rule the
/// store does not know (the `shard` namespace: a dataset version's manifest says
/// which blob, of what size and ETag, a key stands for). Registered with
/// [`TieredStore::set_namespace_origin`](super::TieredStore::set_namespace_origin),
/// it replaces the configured origin for that namespace's reads; the store keeps
/// doing the rest (single-flight, pages, checksums, filling DRAM and NVMe).
pub trait NamespaceOrigin: Send + Sync + std::fmt::Debug + 'static {
    /// A name for logs and stats.
    fn name(&self) -> &'static str;
    /// Counters (origin reads and misses are counted here).
    fn stats(&self) -> &Arc<TierStats>;
    /// The value's length; `Ok(None)` if the key stands for nothing.
    fn size<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<u64>>>;
    /// The value's bytes in `range` (all of it without one); `Ok(None)` if absent.
    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<crate::tier::ByteRange>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Whether a key's bytes never change once its size is known (versioned keys,
    /// reads pinned to that version): its pages then need no check against a
    /// write that replaced the value while they were read.
    fn immutable(&self) -> bool {
        false
    }
}

/// Where a key's origin reads go: the configured origin or a namespace's own.
#[derive(Clone)]
pub(crate) enum Source<'a> {
    Tier(&'a Origin),
    Namespace(Arc<dyn NamespaceOrigin>),
}

impl Source<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Source::Tier(o) => o.name(),
            Source::Namespace(o) => o.name(),
        }
    }

    pub(crate) fn stats(&self) -> &Arc<TierStats> {
        match self {
            Source::Tier(o) => o.stats(),
            Source::Namespace(o) => o.stats(),
        }
    }

    /// The generation of a value filled from the origin at `version`: the same
    /// for every fill of one version (so its pages stay valid across a head's
    /// eviction), another for another version, so a page read at another version
    /// than its head's is told apart ([`Error::Changed`]). FNV-1a, 64 bits.
    pub(crate) fn generation_of(version: &str) -> u64 {
        version.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// See [`NamespaceOrigin::immutable`]; the configured origin takes writes.
    pub(crate) fn immutable(&self) -> bool {
        match self {
            Source::Tier(_) => false,
            Source::Namespace(o) => o.immutable(),
        }
    }

    /// The value's length and version; a namespace's own origin tells no version
    /// (its reads are pinned to one already, see [`NamespaceOrigin::immutable`]).
    pub(crate) async fn stat(&self, key: &Key) -> Result<Option<(u64, Option<String>)>> {
        match self {
            Source::Tier(o) => o.stat(key).await,
            Source::Namespace(o) => Ok(o.size(key).await?.map(|n| (n, None))),
        }
    }

    /// A read with the version its bytes are of (`None` from a namespace's origin).
    pub(crate) async fn get_versioned(
        &self,
        key: &Key,
        opts: &GetOptions,
    ) -> Result<Option<(Bytes, Option<String>)>> {
        match self {
            Source::Tier(o) => o.get_versioned(key, opts).await,
            Source::Namespace(o) => Ok(o.get(key, opts.range).await?.map(|v| (v, None))),
        }
    }
}
