//! The origin: where a namespace's truth lives. A closed set, so an enum (static
//! dispatch) over the tiers that can serve as one.

use std::sync::Arc;

use bytes::Bytes;

use crate::blob::BlobTier;
use crate::error::Result;
use crate::key::Key;
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

    pub(crate) async fn get(&self, key: &Key, opts: &GetOptions) -> Result<Option<Bytes>> {
        delegate!(self, t => t.get(key, opts).await)
    }

    pub(crate) async fn size(&self, key: &Key) -> Result<Option<u64>> {
        delegate!(self, t => t.size(key).await)
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
