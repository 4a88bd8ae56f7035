//! The tiered store: DRAM → NVMe → origin, composed.
//!
//! - **Read path.** A value's head is looked up top-down (DRAM, NVMe, then the origin
//!   if the namespace has one) and promoted into DRAM. Pages are read the same way.
//!   Every record read from NVMe is verified (CRC-32C over header and payload); a bad
//!   one is deleted, counted in `checksum_failures`, refetched from the origin if
//!   there is one, and never served.
//! - **Single-flight.** Concurrent misses on one head or one page share one origin read.
//! - **Write path.** A put is two-phase: [`TieredStore::reserve`] returns a
//!   [`Reservation`] that buffers the pages (in the DRAM arena when it can), and
//!   [`Reservation::commit`] verifies length and checksum, writes through to the origin
//!   when the policy says so, stores the pages, and stores the head last. Readers find
//!   a value only through its head, so they never see a partial one.
//! - **Demotion.** Entries evicted from DRAM are written to NVMe by a background task
//!   when the namespace allows it; a clean [`TieredStore::close`] demotes everything.
//! - **Pins** hold a value's head and pages in DRAM.
//!
//! See `docs/storage.md` for the record formats and the decisions behind them.

mod demote;
mod fill;
mod origin;
mod read;
pub(crate) mod record;
mod reservation;
mod singleflight;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::demote::demote_loop;
use self::origin::Source;
pub use self::origin::{BoxFuture, NamespaceOrigin, Origin};
use self::read::{HeadPin, clip};
pub use self::record::Head;
use self::record::Payload;
pub use self::reservation::Reservation;
use self::singleflight::SingleFlight;
use crate::Key;
use crate::dram::{DramTier, Evicted};
use crate::error::{Error, Result};
use crate::nvme::NvmeTier;
use crate::policy::{NamespacePolicy, Namespaces, OriginKind};
use crate::stats::{Counters, CountersSnapshot};
use crate::tier::{ByteRange, GetOptions, PutOptions, PutOutcome, Tier, Usage};

/// Pages of one read in flight at once (a cold multi-page read then costs about
/// one origin round trip per this many pages, not one per page). Bounds what a
/// read holds beyond the page being sent to this many pages.
pub const PAGE_READAHEAD: usize = 4;

/// Store-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Values larger than this are split into pages of this size. Default: 4 MiB.
    #[serde(with = "crate::size::bytes_u32")]
    pub page_size: u32,
    /// Bytes read from the origin for one page that misses: the aligned run of
    /// pages holding it (rounded down to whole pages, at least one). Readers of any
    /// page of the run share the read, and every page of it is filled. Fewer,
    /// larger origin requests: Azure Blob serves 8-16 MiB GETs at a far better rate
    /// than 4 MiB ones (and Azurite hashes every range of 4 MiB or less). Costs up
    /// to this much read for a one-page read of a cold value. Default: 16 MiB.
    #[serde(with = "crate::size::bytes")]
    pub origin_read_size: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            page_size: 4 << 20,
            origin_read_size: 16 << 20,
        }
    }
}

/// A value found by [`TieredStore::lookup`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its key.
    pub key: Key,
    /// Its head (length, generation, inline bytes for small values).
    pub head: Head,
    /// The tier the head was found in ("dram", "nvme" or the origin's name).
    pub tier: &'static str,
}

impl Entry {
    /// Length of the whole value.
    pub fn len(&self) -> u64 {
        self.head.total_len
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.head.total_len == 0
    }
}

/// A stored value's receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Bytes stored.
    pub len: u64,
    /// CRC-32C of the value.
    pub crc32c: u32,
}

/// Counters and use of one tier, for `Stats`.
#[derive(Debug, Clone)]
pub struct TierReport {
    /// Tier name.
    pub tier: &'static str,
    /// Capacity and use.
    pub usage: Usage,
    /// Sum over namespaces.
    pub total: CountersSnapshot,
    /// Per namespace.
    pub namespaces: std::collections::BTreeMap<String, CountersSnapshot>,
}

/// One listed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedValue {
    /// Its key.
    pub key: Key,
    /// Length of the value.
    pub len: u64,
    /// Highest tier it was found in.
    pub tier: &'static str,
}

pub(crate) struct Inner {
    namespaces: Namespaces,
    dram: DramTier,
    nvme: Option<NvmeTier>,
    origin: Option<Origin>,
    /// Namespaces whose origin reads go elsewhere (`shard`: the dataset registry).
    ns_origins: parking_lot::RwLock<HashMap<String, Arc<dyn NamespaceOrigin>>>,
    page_size: u32,
    /// Pages per origin read (a run of pages, see [`StoreConfig::origin_read_size`]).
    run_pages: u32,
    head_flights: SingleFlight<Key, Option<Head>>,
    /// Origin reads of page runs, by the key of a run's first page.
    run_flights: SingleFlight<Key, Arc<[Bytes]>>,
    /// Striped per-key locks, held only around a key's NVMe writes and drops (never
    /// while waiting for DRAM room), so that a demotion or fill of an older record
    /// cannot land on NVMe after a newer write dropped it from there.
    key_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Striped counts of writes and deletes, each bumped, its stripe locked, as
    /// a put stores its head or a delete removes one. A fill from the origin (or
    /// a promotion from NVMe) notes its key's count before it reads, and stores
    /// what it read only if the count has not moved, the stripe locked while it
    /// stores: what it read may be older than a write acknowledged meanwhile.
    changes: Box<[tokio::sync::Mutex<u64>]>,
    /// Keys whose write-through to the origin is under way (with how many): their
    /// older records are not demoted to NVMe meanwhile (see [`Inner::writing_through`]).
    writing: parking_lot::Mutex<HashMap<Key, u32>>,
    /// The NVMe copies of fills, written after the fill's readers are answered
    /// ([`Inner::fill_nvme`]); `close` waits for them.
    nvme_fills: tokio_util::task::TaskTracker,
    /// Their places: with none free (a slow or hung disk), a fill keeps only its
    /// DRAM copy, which demotion writes later.
    nvme_fill_slots: Arc<tokio::sync::Semaphore>,
    /// This store, for the tasks it spawns.
    me: std::sync::Weak<Inner>,
}

/// NVMe copies of fills written at once ([`Inner::nvme_fill_slots`]).
const NVME_FILLS: usize = 64;

/// Stripes of [`Inner::key_locks`].
const KEY_LOCKS: usize = 1024;

/// Stripes of [`Inner::changes`] (more than the key locks: a false sharing
/// there costs a fill its caching, or a retry).
const CHANGE_STRIPES: usize = 4096;

/// A write-through's mark on its key ([`Inner::writing_through`]), ended when
/// dropped (the value stored, failed or cancelled).
pub(crate) struct WritingThrough<'a> {
    inner: &'a Inner,
    key: Key,
}

impl Drop for WritingThrough<'_> {
    fn drop(&mut self) {
        let mut w = self.inner.writing.lock();
        if let Some(n) = w.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.key);
            }
        }
    }
}

/// The tiered store. Cheap to clone.
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
    demoter: Arc<parking_lot::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("page_size", &self.inner.page_size)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl TieredStore {
    /// Composes the tiers and starts the demoter. Must run inside a tokio runtime.
    pub fn new(
        config: &StoreConfig,
        namespaces: Namespaces,
        dram: DramTier,
        nvme: Option<NvmeTier>,
        origin: Option<Origin>,
    ) -> Result<Self> {
        if config.page_size < 4096 {
            return Err(Error::Config {
                field: "store.page_size".into(),
                reason: "must be at least 4096".into(),
            });
        }
        if let Some(n) = &nvme
            && u64::from(config.page_size) + 64 > n.max_value_size()
        {
            return Err(Error::Config {
                field: "store.page_size".into(),
                reason: format!(
                    "a page of {} bytes does not fit the NVMe tier's largest entry ({} bytes); raise nvme.block_size",
                    config.page_size,
                    n.max_value_size()
                ),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let has_nvme = nvme.is_some();
        let inner = Arc::new_cyclic(|me| Inner {
            namespaces,
            dram,
            nvme,
            origin,
            ns_origins: parking_lot::RwLock::default(),
            page_size: config.page_size,
            run_pages: (config.origin_read_size / u64::from(config.page_size)).clamp(1, 1024)
                as u32,
            head_flights: SingleFlight::default(),
            run_flights: SingleFlight::default(),
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            changes: (0..CHANGE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(0))
                .collect(),
            writing: parking_lot::Mutex::default(),
            nvme_fills: tokio_util::task::TaskTracker::new(),
            nvme_fill_slots: Arc::new(tokio::sync::Semaphore::new(NVME_FILLS)),
            me: me.clone(),
        });
        // Without NVMe an evicted entry has nowhere to go: its memory returns as
        // soon as its readers are done, not after a pass through the demoter. An
        // entry NVMe already holds (filled from the origin into both tiers), or of
        // a namespace that does not demote, leaves with no copy either.
        if has_nvme {
            let weak = Arc::downgrade(&inner);
            inner.dram.set_demotion(
                tx,
                Arc::new(move |k: &Key| weak.upgrade().is_none_or(|i| !i.needs_demotion(k))),
            );
        }
        let demoter = tokio::spawn(demote_loop(Arc::downgrade(&inner), rx));
        Ok(Self {
            inner,
            demoter: Arc::new(parking_lot::Mutex::new(Some(demoter))),
        })
    }

    /// Sends the origin reads of namespace `ns` to `origin` from now on: instead of
    /// the configured origin where its policy has one, and as its only source of
    /// fills where the policy has none (a cluster node asking its peers for a
    /// cache-only namespace's values; writes still never go to it).
    pub fn set_namespace_origin(&self, ns: &str, origin: Arc<dyn NamespaceOrigin>) {
        self.inner.ns_origins.write().insert(ns.to_owned(), origin);
    }

    /// Forgets, on NVMe, every value of the namespaces whose origin takes writes
    /// (the configured origin, not a namespace's own read-only one such as the
    /// `shard` namespace's ETag-pinned datasets): for a cluster node that starts
    /// again, whose copies may have been replaced through other nodes while it
    /// was away. Returns how many entries went, per namespace.
    pub fn forget_writable(&self) -> Vec<(String, usize)> {
        let Some(nvme) = &self.inner.nvme else {
            return Vec::new();
        };
        self.writable_names()
            .into_iter()
            .map(|ns| {
                let n = nvme.forget_namespace(&ns);
                (ns, n)
            })
            .collect()
    }

    /// As [`Self::forget_writable`], on a store that is serving: the DRAM copies
    /// go too (pins included, as [`Self::evict`]). For a cluster node whose
    /// membership lapsed (cut off for longer than its lease) and that is about to
    /// register again. Returns how many entries went, per namespace.
    pub async fn forget_writable_now(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for ns in self.writable_names() {
            let mut n = 0;
            for k in self.inner.dram.keys_of(&ns) {
                if self.inner.remove_cached(&k).await {
                    n += 1;
                }
            }
            if let Some(nvme) = &self.inner.nvme {
                n += nvme.forget_namespace(&ns);
            }
            out.push((ns, n));
        }
        out
    }

    /// The namespaces whose origin takes writes (see [`Self::forget_writable`]).
    fn writable_names(&self) -> Vec<String> {
        let own = self.inner.ns_origins.read();
        self.inner
            .namespaces
            .iter()
            .filter(|p| p.origin == OriginKind::Origin && !own.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect()
    }

    /// The namespace registry.
    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    /// The DRAM tier (for carriers that share its arena).
    pub fn dram(&self) -> &DramTier {
        &self.inner.dram
    }

    /// The NVMe tier, if configured.
    pub fn nvme(&self) -> Option<&NvmeTier> {
        self.inner.nvme.as_ref()
    }

    /// The origin, if configured.
    pub fn origin(&self) -> Option<&Origin> {
        self.inner.origin.as_ref()
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// Checks a key against its namespace and returns the namespace's policy.
    pub fn policy(&self, key: &Key) -> Result<&NamespacePolicy> {
        let p = self.inner.namespaces.policy_for(key)?;
        p.check_key(key)?;
        Ok(p)
    }

    /// Finds a value's head: DRAM, then NVMe (promoting), then the origin
    /// (single-flight). `Ok(None)` is a miss.
    pub async fn lookup(&self, key: &Key) -> Result<Option<Entry>> {
        let policy = self.policy(key)?.clone();
        self.inner.lookup(key, &policy, true).await
    }

    /// Reads page `index` of a value found by [`Self::lookup`].
    pub async fn read_page(&self, entry: &Entry, index: u32) -> Result<Bytes> {
        let policy = self.policy(&entry.key)?.clone();
        self.inner.read_page(entry, index, &policy).await
    }

    /// Makes a value fully cached, reading from the origin only the pages that no
    /// cache tier holds (a preload, resumable: what is cached is skipped). Returns
    /// `(value length, bytes read from the origin)`, or `None` if there is no value.
    pub async fn warm(&self, key: &Key) -> Result<Option<(u64, u64)>> {
        self.warm_runs(key, &|_| true).await
    }

    /// Bytes per run of pages: the unit of an origin read, and of placement for a
    /// cluster's `shard` pages (run `r` holds bytes `r * run_bytes ..`).
    pub fn run_bytes(&self) -> u64 {
        u64::from(self.inner.run_pages) * u64::from(self.inner.page_size)
    }

    /// [`Self::warm`] for the runs of pages ([`Self::run_bytes`]) that `keep`
    /// selects by number: `(bytes of those runs, bytes read from the origin)`.
    pub async fn warm_runs(
        &self,
        key: &Key,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Option<(u64, u64)>> {
        let policy = self.policy(key)?.clone();
        let was_cached = self.inner.cached_head(key).await.is_some();
        let Some(entry) = self.inner.lookup(key, &policy, false).await? else {
            return Ok(None);
        };
        let head = &entry.head;
        if head.inline.is_some() {
            if !keep(0) {
                return Ok(Some((0, 0)));
            }
            let fetched = if was_cached { 0 } else { head.total_len };
            return Ok(Some((head.total_len, fetched)));
        }
        let ps = u64::from(head.page_size);
        let run_of = |index: u32| u64::from(index) * ps / self.run_bytes().max(1);
        let kept: Vec<u32> = (0..head.page_count())
            .filter(|&i| keep(run_of(i)))
            .collect();
        let len = kept
            .iter()
            .map(|&i| (head.total_len - u64::from(i) * ps).min(ps))
            .sum();
        // Presence only: reading the bytes back from NVMe to skip them would double
        // a resumed preload's I/O. Checked before any read: reading one missing
        // page fills the rest of its run, which were fetched all the same.
        let mut missing = Vec::new();
        for index in kept {
            if !self.inner.cached(&key.page(head.generation, index)).await {
                missing.push(index);
            }
        }
        let mut fetched = 0;
        for index in missing {
            fetched += self.inner.read_page(&entry, index, &policy).await?.len() as u64;
        }
        Ok(Some((len, fetched)))
    }

    /// Reads `range` of a value (all of it by default). Small reads are zero-copy
    /// slices of the stored page; reads across pages are assembled.
    ///
    /// A value replaced while it is read (its pages go with its old head) is looked
    /// up again, a few times at most: the caller gets the old value or the new one,
    /// whole, or the error of the last attempt.
    pub async fn get(&self, key: &Key, range: Option<ByteRange>) -> Result<Option<(Entry, Bytes)>> {
        let Some((entry, _, slices)) = self.get_slices(key, range).await? else {
            return Ok(None);
        };
        let bytes = match slices.len() {
            0 => Bytes::new(),
            1 => slices.into_iter().next().unwrap_or_default(),
            _ => {
                let len = slices.iter().map(Bytes::len).sum();
                let mut out = BytesMut::with_capacity(len);
                for s in &slices {
                    out.extend_from_slice(s);
                }
                out.freeze()
            }
        };
        Ok(Some((entry, bytes)))
    }

    /// As [`Self::get`], but the bytes stay where they are stored: one zero-copy
    /// slice per page (from the DRAM arena when the pages are there), in order, for
    /// writers that send them as they are (vectored socket writes, shared-memory
    /// and RDMA leases). Also returns the offset of the first byte.
    pub async fn get_slices(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<Option<(Entry, u64, Vec<Bytes>)>> {
        let Some(entry) = self.lookup(key).await? else {
            return Ok(None);
        };
        self.slices_of(entry, range).await
    }

    /// Reads `range` of `key` from the cache tiers alone, never the origin:
    /// `Ok(None)` unless the value's head and every page of the range are cached.
    /// What a cluster node answers a member that asks whether it still holds a key
    /// (get from neighbour): a miss here must not become an origin read here.
    /// Returns the value's length, the offset of the first byte, and the slices.
    pub async fn get_cached(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<Option<(u64, u64, Vec<Bytes>)>> {
        let policy = self.policy(key)?.clone();
        let Some(head) = self.inner.cached_head(key).await else {
            return Ok(None);
        };
        if Inner::expired(&policy, &head) {
            return Ok(None);
        }
        let entry = Entry {
            key: key.clone(),
            head,
            tier: "cache",
        };
        let total = entry.len();
        let (start, end) = range.unwrap_or_default().resolve(total)?;
        if let Some(inline) = &entry.head.inline {
            return Ok(Some((
                total,
                start,
                vec![inline.slice(start as usize..end as usize)],
            )));
        }
        let mut out = Vec::new();
        if start < end {
            let ps = u64::from(entry.head.page_size);
            for index in (start / ps)..=((end - 1) / ps) {
                let Some(page) = self
                    .inner
                    .cached_page_checked(&entry, index as u32, &policy)
                    .await?
                else {
                    return Ok(None);
                };
                out.push(clip(page, index * ps, start, end));
            }
        }
        Ok(Some((total, start, out)))
    }

    /// [`Self::get_slices`] of a value whose head [`Self::lookup`] found already
    /// (its hit or miss counted there). If the value was replaced meanwhile, the
    /// new one is looked up and read; `Ok(None)` if it is gone.
    pub async fn slices_of(
        &self,
        mut entry: Entry,
        range: Option<ByteRange>,
    ) -> Result<Option<(Entry, u64, Vec<Bytes>)>> {
        let mut attempt = 0;
        loop {
            match self.read_slices(&entry, range).await {
                Ok((start, slices)) => return Ok(Some((entry, start, slices))),
                Err(e) => {
                    attempt += 1;
                    if attempt >= 8 {
                        return Err(e);
                    }
                    if e.kind() == crate::ErrorKind::Changed {
                        // The origin holds another value than this head describes
                        // (written there after the head was cached, e.g. by a
                        // write-through a crash cut short): the head goes, and the
                        // origin's value is read afresh.
                        self.inner.drop_stale_head(&entry).await;
                    } else if !self.inner.replaced(&entry).await {
                        return Err(e);
                    }
                }
            }
            let Some(again) = self.lookup(&entry.key).await? else {
                return Ok(None);
            };
            entry = again;
        }
    }

    /// Reads `range` of a found value as page slices; returns the offset of the
    /// first byte with them.
    async fn read_slices(
        &self,
        entry: &Entry,
        range: Option<ByteRange>,
    ) -> Result<(u64, Vec<Bytes>)> {
        let (start, end) = range.unwrap_or_default().resolve(entry.len())?;
        if start == end {
            return Ok((start, Vec::new()));
        }
        let ps = u64::from(entry.head.page_size);
        let out = if start / ps == (end - 1) / ps {
            let index = (start / ps) as u32;
            let page = self.read_page(entry, index).await?;
            vec![clip(page, u64::from(index) * ps, start, end)]
        } else {
            self.range_pages(entry, start, end).try_collect().await?
        };
        Ok((start, out))
    }

    /// The bytes `[start, end)` of a found value (a resolved range), as one slice
    /// of each page it spans, in order. Pages missing from the cache are read from
    /// the origin a run at a time (one request per run), up to [`PAGE_READAHEAD`]
    /// pages or two runs ahead while earlier slices are taken, so what a read
    /// holds stays bounded by the read-ahead.
    pub fn range_pages<'a>(
        &'a self,
        entry: &'a Entry,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = Result<Bytes>> + Send + 'a {
        let ps = u64::from(entry.head.page_size);
        let pages = if start < end {
            (start / ps) as u32..((end - 1) / ps) as u32 + 1
        } else {
            0..0
        };
        // One item per run of pages (a missed run is one origin read, whatever
        // the cache keeps of it), flattened back into one slice per page.
        let run = self.inner.run_pages;
        let first = pages.start;
        let runs = pages.filter(move |i| *i == first || i % run == 0);
        let ahead = (PAGE_READAHEAD / run as usize).max(2);
        futures::stream::iter(runs)
            .map(move |lo| async move {
                let last = ((end - 1) / ps) as u32;
                let hi = (lo - lo % run + run - 1).min(last);
                let policy = self.policy(&entry.key)?.clone();
                let got = self.inner.read_pages(entry, lo, hi, &policy).await?;
                Ok::<_, Error>(futures::stream::iter(
                    got.into_iter()
                        .zip(lo..)
                        .map(move |(page, i)| Ok(clip(page, u64::from(i) * ps, start, end))),
                ))
            })
            .buffered(ahead)
            .try_flatten()
    }

    /// Starts a two-phase put of `len` bytes under `key`. Nothing is visible until
    /// [`Reservation::commit`]; dropping the reservation abandons it.
    pub fn reserve(&self, key: &Key, len: u64, expected_crc: Option<u32>) -> Result<Reservation> {
        let policy = self.policy(key)?.clone();
        policy.check_put(key, len)?;
        Ok(Reservation::new(
            self.inner.clone(),
            key.clone(),
            policy,
            len,
            expected_crc,
        ))
    }

    /// Stores a whole value (reserve, write, commit).
    pub async fn put(&self, key: &Key, value: &[u8]) -> Result<Receipt> {
        let mut r = self.reserve(key, value.len() as u64, None)?;
        r.write(value)?;
        r.commit().await
    }

    /// Whether each key is cached (DRAM or NVMe), without touching the origin.
    pub async fn contains(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            self.policy(k)?;
            out.push(self.inner.cached(k).await);
        }
        Ok(out)
    }

    /// How many leading keys are cached: the answer to "how much of this prefix can
    /// I load instead of recompute". Stops at the first absent key.
    pub async fn match_prefix(&self, keys: &[Key]) -> Result<usize> {
        for k in keys {
            self.policy(k)?;
        }
        for (i, k) in keys.iter().enumerate() {
            if !self.inner.cached(k).await {
                return Ok(i);
            }
        }
        Ok(keys.len())
    }

    /// Deletes a value from the cache tiers and, for namespaces whose writes reach
    /// the origin, from the origin too. `true` if it existed anywhere.
    /// A fill from the origin under way stores nothing it read (it may be the
    /// deleted value): the key's change count moves before each of the two
    /// evictions, one before the origin's delete and one after (a fill that read
    /// the origin between them).
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let policy = self.policy(key)?.clone();
        let mut found = self.inner.remove_changed(key).await;
        if policy.origin == OriginKind::Origin
            && policy.write != crate::WritePolicy::ReadOnly
            && let Some(o) = &self.inner.origin
        {
            // (The second eviction whatever the origin answered: a delete that
            // took effect and then failed, e.g. at its sync, must not leave a
            // fill of the deleted value cached.)
            let deleted = o.delete(key).await;
            found |= self.inner.remove_changed(key).await;
            found |= deleted?;
        }
        Ok(found)
    }

    /// Drops a value from the cache tiers only (pins included). `true` if it was cached.
    pub async fn evict(&self, key: &Key) -> Result<bool> {
        self.policy(key)?;
        Ok(self.inner.remove_cached(key).await)
    }

    /// Holds a value in DRAM until unpinned (pins nest). Loads it into DRAM first.
    /// `false` if the value does not exist.
    pub async fn pin(&self, key: &Key) -> Result<bool> {
        let Some(entry) = self.lookup(key).await? else {
            return Ok(false);
        };
        for i in 0..entry.head.page_count() {
            if !entry.head.is_inline() {
                self.read_page(&entry, i).await?;
                self.inner.dram.pin(&key.page(entry.head.generation, i));
            }
        }
        Ok(self.inner.dram.pin(key))
    }

    /// Releases one pin. `false` if the value was not pinned.
    pub async fn unpin(&self, key: &Key) -> Result<bool> {
        self.policy(key)?;
        let Some(rec) = self.inner.dram.get(key, &GetOptions::default()).await? else {
            return Ok(false);
        };
        if let Ok(head) = record::decode_head(&rec, Payload::Trust)
            && !head.is_inline()
        {
            for i in 0..head.page_count() {
                self.inner.dram.unpin(&key.page(head.generation, i));
            }
        }
        Ok(self.inner.dram.unpin(key))
    }

    /// Values of `namespace`/`tenant` whose body starts with `prefix`, from every tier
    /// (highest tier wins), sorted by key, at most `limit`.
    pub async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<ListedValue>> {
        self.inner.namespaces.get(namespace)?;
        let mut seen = std::collections::BTreeMap::<Key, ListedValue>::new();
        let cached = self
            .inner
            .dram
            .list(namespace, tenant, prefix, limit)
            .await?
            .into_iter()
            .map(|l| (l, "dram"));
        let nvme = match &self.inner.nvme {
            Some(n) => n.list(namespace, tenant, prefix, limit).await?,
            None => Vec::new(),
        };
        for (l, tier) in cached.chain(nvme.into_iter().map(|l| (l, "nvme"))) {
            if seen.contains_key(&l.key) {
                continue;
            }
            if let Some(head) = self.inner.cached_head(&l.key).await {
                seen.insert(
                    l.key.clone(),
                    ListedValue {
                        key: l.key,
                        len: head.total_len,
                        tier,
                    },
                );
            }
        }
        if let Some(o) = &self.inner.origin {
            for l in o.list(namespace, tenant, prefix, limit).await? {
                seen.entry(l.key.clone()).or_insert(ListedValue {
                    key: l.key,
                    len: l.len,
                    tier: o.name(),
                });
            }
        }
        Ok(seen.into_values().take(limit).collect())
    }

    /// Counters and use of every tier.
    pub fn stats(&self) -> Vec<TierReport> {
        let mut out = Vec::new();
        let mut add = |tier: &'static str, usage: Usage, stats: &crate::stats::TierStats| {
            out.push(TierReport {
                tier,
                usage,
                total: stats.total(),
                namespaces: stats.snapshot(),
            });
        };
        add("dram", self.inner.dram.usage(), self.inner.dram.stats());
        if let Some(n) = &self.inner.nvme {
            add("nvme", n.usage(), n.stats());
        }
        if let Some(o) = &self.inner.origin {
            add(
                o.name(),
                Usage {
                    capacity: u64::MAX,
                    used: 0,
                },
                o.stats(),
            );
        }
        out
    }

    /// Shuts down: stops the demoter, demotes what DRAM holds to NVMe (as policies
    /// allow), and closes the tiers, flushing NVMe so a restart finds the demoted
    /// values (warm restart).
    pub async fn close(&self) -> Result<()> {
        // The NVMe copies of fills under way land (or give up) first.
        self.inner.nvme_fills.close();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.inner.nvme_fills.wait()).await;
        self.inner.dram.close().await?;
        let demoter = self.demoter.lock().take();
        if let Some(d) = demoter {
            // The channel closed with the DRAM tier; the demoter drains and exits.
            let _ = tokio::time::timeout(Duration::from_secs(30), d).await;
        }
        let drained = self.inner.dram.drain();
        let mut demoted = 0usize;
        for e in drained {
            if self.inner.demote_to_nvme(e, false).await {
                demoted += 1;
            }
        }
        tracing::info!(demoted, "DRAM demoted to NVMe at shutdown");
        if let Some(n) = &self.inner.nvme {
            n.close().await?;
        }
        if let Some(o) = &self.inner.origin {
            o.close().await?;
        }
        Ok(())
    }
}

/// A record being built: in the DRAM arena or on the heap.
pub(crate) enum Record {
    Arena(crate::dram::ArenaBuf),
    Heap(Vec<u8>),
}
