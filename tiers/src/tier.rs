//! The one seam every storage tier plugs into.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::Key;
use crate::error::{Error, Result};
use crate::stats::TierStats;

/// A byte range of a value: `length: None` means "to the end".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes, or to the end.
    pub length: Option<u64>,
}

impl ByteRange {
    /// Resolves the range against a value of `size` bytes, as `(start, end)`.
    ///
    /// A range that starts past the end is an error; one that runs past the end is
    /// clipped (like HTTP). An empty range at `offset == size` is allowed.
    pub fn resolve(&self, size: u64) -> Result<(u64, u64)> {
        if self.offset > size {
            return Err(Error::RangeOutOfBounds {
                offset: self.offset,
                length: self.length,
                size,
            });
        }
        let end = match self.length {
            Some(len) => self.offset.saturating_add(len).min(size),
            None => size,
        };
        Ok((self.offset, end))
    }
}

/// Options of one get.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Only these bytes.
    pub range: Option<ByteRange>,
    /// Give up after this instant.
    pub deadline: Option<Instant>,
}

/// Options of one put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Give up after this instant.
    pub deadline: Option<Instant>,
}

/// What a tier did with a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The value is stored and will be returned by `get`.
    Stored,
    /// The tier dropped the write (e.g. its write buffer was full). The value is
    /// not stored; the drop is counted in the tier's `dropped_writes`.
    Dropped,
}

/// What a tier can do, so generic code (and the conformance suite) knows what to
/// expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Has a byte capacity and evicts to stay under it.
    pub bounded: bool,
    /// Survives a restart.
    pub persistent: bool,
    /// Can list its keys.
    pub listable: bool,
    /// May drop writes under pressure (see [`PutOutcome::Dropped`]).
    pub lossy_writes: bool,
}

/// Capacity and use of a tier, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Capacity (`u64::MAX` when unbounded).
    pub capacity: u64,
    /// Bytes in use.
    pub used: u64,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: Key,
    /// The value's length.
    pub len: u64,
}

/// A storage tier: immutable byte values under [`Key`]s.
///
/// A miss is `Ok(None)`, never an error. A put replaces any previous value
/// atomically: a concurrent reader sees the old value or the new one, never a mix.
/// All methods are cancel-safe: dropping the future leaves the tier consistent
/// (a put that was dropped either happened or did not).
pub trait Tier: Send + Sync + 'static {
    /// Short stable name ("dram", "nvme", "blob", "localdir").
    fn name(&self) -> &'static str;

    /// What this tier can do.
    fn capabilities(&self) -> Capabilities;

    /// The tier's counters.
    fn stats(&self) -> &Arc<TierStats>;

    /// Capacity and use.
    fn usage(&self) -> Usage;

    /// Reads a value (or the range of it that `opts` asks for).
    fn get(
        &self,
        key: &Key,
        opts: &GetOptions,
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// The value's length, without reading it.
    fn size(&self, key: &Key) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Stores a value, replacing any previous one.
    fn put(
        &self,
        key: &Key,
        value: Bytes,
        opts: &PutOptions,
    ) -> impl Future<Output = Result<PutOutcome>> + Send;

    /// Removes a value; `Ok(false)` if it was absent.
    fn delete(&self, key: &Key) -> impl Future<Output = Result<bool>> + Send;

    /// Whether a value is present.
    fn contains(&self, key: &Key) -> impl Future<Output = Result<bool>> + Send {
        async move { Ok(self.size(key).await?.is_some()) }
    }

    /// Keys of `namespace`/`tenant` whose body starts with `prefix`, at most `limit`.
    /// Tiers that cannot list return an empty list.
    fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Listed>>> + Send;

    /// Flushes and releases resources. The tier refuses work afterwards.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Sorts a listing by key and keeps the first `limit` entries.
pub(crate) fn sorted_up_to(mut out: Vec<Listed>, limit: usize) -> Vec<Listed> {
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.truncate(limit);
    out
}

/// Applies a range to a whole value held in memory.
pub(crate) fn slice_range(value: Bytes, range: Option<&ByteRange>) -> Result<Bytes> {
    match range {
        None => Ok(value),
        Some(r) => {
            let (start, end) = r.resolve(value.len() as u64)?;
            Ok(value.slice(start as usize..end as usize))
        }
    }
}
