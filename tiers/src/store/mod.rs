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

mod origin;
mod record;
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

use self::origin::Source;
pub use self::origin::{BoxFuture, NamespaceOrigin, Origin};
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
    pub page_size: u32,
    /// Bytes read from the origin for one page that misses: the aligned run of
    /// pages holding it (rounded down to whole pages, at least one). Readers of any
    /// page of the run share the read, and every page of it is filled. Fewer,
    /// larger origin requests: Azure Blob serves 8-16 MiB GETs at a far better rate
    /// than 4 MiB ones (and Azurite hashes every range of 4 MiB or less). Costs up
    /// to this much read for a one-page read of a cold value. Default: 16 MiB.
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
    /// Keys whose write-through to the origin is under way (with how many): their
    /// older records are not demoted to NVMe meanwhile (see [`Inner::writing_through`]).
    writing: parking_lot::Mutex<HashMap<Key, u32>>,
}

/// Stripes of [`Inner::key_locks`].
const KEY_LOCKS: usize = 1024;

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
        let inner = Arc::new(Inner {
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
            writing: parking_lot::Mutex::default(),
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

    /// Sends the origin reads of namespace `ns` (whose policy has an origin) to
    /// `origin` instead of the configured origin, from now on.
    pub fn set_namespace_origin(&self, ns: &str, origin: Arc<dyn NamespaceOrigin>) {
        self.inner.ns_origins.write().insert(ns.to_owned(), origin);
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
        let policy = self.policy(key)?.clone();
        let was_cached = self.inner.cached_head(key).await.is_some();
        let Some(entry) = self.inner.lookup(key, &policy, false).await? else {
            return Ok(None);
        };
        let head = &entry.head;
        if head.inline.is_some() {
            let fetched = if was_cached { 0 } else { head.total_len };
            return Ok(Some((head.total_len, fetched)));
        }
        // Presence only: reading the bytes back from NVMe to skip them would double
        // a resumed preload's I/O. Checked before any read: reading one missing
        // page fills the rest of its run, which were fetched all the same.
        let mut missing = Vec::new();
        for index in 0..head.page_count() {
            if !self.inner.cached(&key.page(head.generation, index)).await {
                missing.push(index);
            }
        }
        let mut fetched = 0;
        for index in missing {
            fetched += self.inner.read_page(&entry, index, &policy).await?.len() as u64;
        }
        Ok(Some((head.total_len, fetched)))
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
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let policy = self.policy(key)?.clone();
        let mut found = self.evict(key).await?;
        if policy.origin == OriginKind::Origin
            && policy.write != crate::WritePolicy::ReadOnly
            && let Some(o) = &self.inner.origin
        {
            found |= o.delete(key).await?;
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

async fn demote_loop(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Evicted>) {
    while let Some(e) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.demote(e).await;
    }
}

impl Inner {
    /// Writes an entry that left DRAM to NVMe, if its namespace allows. `true` if
    /// stored. DRAM serves the entry until this is over.
    async fn demote(&self, e: Evicted) -> bool {
        let (key, value) = (e.key.clone(), e.value.clone());
        let stored = self.demote_to_nvme(e, true).await;
        self.dram.demoted(&key, &value);
        stored
    }

    /// The lock of `key`'s stripe (see [`Inner::key_locks`]).
    fn key_lock(&self, key: &Key) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        // A fixed hasher: the same key must always find the same stripe.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        &self.key_locks[(h.finish() as usize) % self.key_locks.len()]
    }

    /// Marks `key` as being written through to the origin, before the origin
    /// changes: its older head leaves NVMe (journaled), and while the mark stays no
    /// older record of it is demoted there. A server killed while the origin
    /// changes then restarts with no cached head of the older value to serve in
    /// place of the origin's newer one. DRAM keeps serving the older value until
    /// the new one is stored. The mark lasts as long as the returned guard.
    pub(crate) async fn writing_through<'a>(&'a self, key: &Key) -> WritingThrough<'a> {
        let _g = self.key_lock(key).lock().await;
        *self.writing.lock().entry(key.clone()).or_default() += 1;
        self.drop_from_nvme_locked(key).await;
        WritingThrough {
            inner: self,
            key: key.clone(),
        }
    }

    /// Whether a write-through of `key` is under way (see [`Inner::writing_through`]).
    fn is_writing_through(&self, key: &Key) -> bool {
        self.writing.lock().contains_key(key)
    }

    /// Whether an entry evicted from DRAM has to be written to NVMe: its namespace
    /// demotes to NVMe, and NVMe does not hold it already (a fill from the origin
    /// goes to both tiers).
    fn needs_demotion(&self, key: &Key) -> bool {
        let Some(nvme) = &self.nvme else { return false };
        let Ok(policy) = self.namespaces.policy_for(key) else {
            return false;
        };
        policy.tiers.nvme
            && policy.demote
            && !(policy.origin == OriginKind::Origin && nvme.holds(key))
    }

    /// Writes an evicted entry to NVMe. With `queued`, only if DRAM still holds it
    /// as the key's evicted value (not deleted or replaced by a newer one while it
    /// waited: writing it would bring the older value back).
    async fn demote_to_nvme(&self, e: Evicted, queued: bool) -> bool {
        let Some(nvme) = &self.nvme else { return false };
        let Ok(policy) = self.namespaces.policy_for(&e.key) else {
            return false;
        };
        if !(policy.tiers.nvme && policy.demote) {
            return false;
        }
        let _g = self.key_lock(&e.key).lock().await;
        if (queued && !self.dram.is_demoting(&e.key, &e.value)) || self.is_writing_through(&e.key) {
            return false;
        }
        // Filled from the origin into both tiers: already there.
        if policy.origin == OriginKind::Origin && nvme.contains(&e.key).await.unwrap_or(false) {
            return true;
        }
        match nvme.put(&e.key, e.value, &PutOptions::default()).await {
            Ok(PutOutcome::Stored) => {
                Counters::inc(&self.dram.stats().ns(e.key.namespace()).demotions);
                true
            }
            Ok(PutOutcome::Dropped) => false,
            Err(err) => {
                tracing::warn!(key = ?e.key, error = %err, "demotion to NVMe failed");
                false
            }
        }
    }

    /// Whether a key's head is in DRAM or NVMe.
    async fn cached(&self, key: &Key) -> bool {
        if self.dram.contains(key).await.unwrap_or(false) {
            return true;
        }
        match &self.nvme {
            Some(n) => n.contains(key).await.unwrap_or(false),
            None => false,
        }
    }

    /// The head of a cached value (no origin access, no promotion).
    async fn cached_head(&self, key: &Key) -> Option<Head> {
        let opts = GetOptions::default();
        if let Ok(Some(rec)) = self.dram.get(key, &opts).await {
            return record::decode_head(&rec, Payload::Trust).ok();
        }
        let rec = self.nvme.as_ref()?.get(key, &opts).await.ok()??;
        record::decode_head(&rec, Payload::Verify).ok()
    }

    /// Whether the value `entry` was read from has since been replaced or removed
    /// from the cache tiers (its cached head is gone or of another generation).
    async fn replaced(&self, entry: &Entry) -> bool {
        self.cached_head(&entry.key)
            .await
            .is_none_or(|h| h.generation != entry.head.generation)
    }

    async fn remove_cached(&self, key: &Key) -> bool {
        let head = self.cached_head(key).await;
        while self.dram.unpin(key) {}
        let mut found = self.dram.delete(key).await.unwrap_or(false);
        if let Some(n) = &self.nvme {
            let _g = self.key_lock(key).lock().await;
            found |= n.delete(key).await.unwrap_or(false);
        }
        if let Some(h) = head
            && !h.is_inline()
        {
            self.remove_pages(key, &h).await;
        }
        found
    }

    /// Drops `entry`'s head (and pages) from the cache tiers if it is still the
    /// cached one.
    async fn drop_stale_head(&self, entry: &Entry) {
        if self
            .cached_head(&entry.key)
            .await
            .is_some_and(|h| h.generation == entry.head.generation)
        {
            tracing::warn!(key = ?entry.key, "cached head no longer matches the origin; dropped");
            self.remove_cached(&entry.key).await;
        }
    }

    async fn remove_pages(&self, key: &Key, head: &Head) {
        for i in 0..head.page_count() {
            let pk = key.page(head.generation, i);
            while self.dram.unpin(&pk) {}
            let _ = self.dram.delete(&pk).await;
            if let Some(n) = &self.nvme {
                let _ = n.delete(&pk).await;
            }
        }
    }

    fn expired(policy: &NamespacePolicy, head: &Head) -> bool {
        policy
            .ttl
            .is_some_and(|ttl| now_ms().saturating_sub(head.created_ms) > ttl.as_millis() as u64)
    }

    async fn lookup(
        self: &Arc<Self>,
        key: &Key,
        policy: &NamespacePolicy,
        count: bool,
    ) -> Result<Option<Entry>> {
        let opts = GetOptions::default();
        let dram_ns = self.dram.stats().ns(key.namespace());
        if let Some(rec) = self.dram.get(key, &opts).await? {
            match record::decode_head(&rec, Payload::Trust) {
                Ok(head) if Self::expired(policy, &head) => {
                    self.remove_cached(key).await;
                }
                Ok(head) => {
                    if count {
                        Counters::inc(&dram_ns.hits);
                    }
                    return Ok(Some(Entry {
                        key: key.clone(),
                        head,
                        tier: "dram",
                    }));
                }
                Err(e) => {
                    tracing::error!(?key, error = %e, "corrupt head in DRAM; dropped");
                    Counters::inc(&dram_ns.checksum_failures);
                    self.dram.delete(key).await?;
                }
            }
        }
        if count {
            Counters::inc(&dram_ns.misses);
        }
        if let Some(nvme) = &self.nvme {
            let ns = nvme.stats().ns(key.namespace());
            match nvme.get(key, &opts).await {
                Ok(Some(rec)) => match record::decode_head(&rec, Payload::Verify) {
                    Ok(head) if Self::expired(policy, &head) => {
                        self.remove_cached(key).await;
                    }
                    Ok(head) => {
                        if count {
                            Counters::inc(&ns.hits);
                        }
                        if policy.tiers.dram {
                            self.promote(key, &rec);
                        }
                        return Ok(Some(Entry {
                            key: key.clone(),
                            head,
                            tier: "nvme",
                        }));
                    }
                    Err(e) => {
                        tracing::error!(?key, error = %e, "corrupt head on NVMe; dropped, never served");
                        Counters::inc(&ns.checksum_failures);
                        nvme.delete(key).await?;
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::error!(?key, error = %e, "NVMe read failed; treated as a miss"),
            }
            if count {
                Counters::inc(&ns.misses);
            }
        }
        let Some(source) = self.source(key, policy) else {
            return Ok(None);
        };
        let me = self.clone();
        let (k, p) = (key.clone(), policy.clone());
        let head = self
            .head_flights
            .run(key.clone(), async move {
                // A flight that ended between our miss and this one has filled it.
                if let Some(head) = me.cached_head(&k).await
                    && !Self::expired(&p, &head)
                {
                    return Ok(Some(head));
                }
                me.fill_head(&k, &p).await
            })
            .await?;
        let tier = source.name();
        Ok(head.map(|head| Entry {
            key: key.clone(),
            head,
            tier,
        }))
    }

    /// Copies a record into DRAM (best effort: a full DRAM just skips promotion).
    fn promote(&self, key: &Key, rec: &Bytes) {
        if let Ok(mut buf) = self.dram.reserve(rec.len()) {
            buf.as_mut_slice().copy_from_slice(rec);
            let _ = self.dram.insert_frozen(key, buf.freeze());
        }
    }

    /// Reads a value's head from the origin and caches it: small values whole (one
    /// read), large ones as a payload-less head whose pages are fetched on demand.
    async fn fill_head(
        self: &Arc<Self>,
        key: &Key,
        policy: &NamespacePolicy,
    ) -> Result<Option<Head>> {
        let Some(origin) = self.source(key, policy) else {
            return Ok(None);
        };
        let ostats = origin.stats().ns(key.namespace());
        let Some(size) = origin.size(key).await? else {
            Counters::inc(&ostats.misses);
            return Ok(None);
        };
        let generation = rand::random::<u64>();
        let mut head = Head {
            generation,
            total_len: size,
            page_size: self.page_size,
            created_ms: now_ms(),
            value_crc: None,
            inline: None,
        };
        let payload = if size <= u64::from(self.page_size) {
            Counters::inc(&ostats.origin_reads);
            let Some(v) = origin.get(key, &GetOptions::default()).await? else {
                return Ok(None);
            };
            if v.len() as u64 != size {
                return Err(Error::Corrupt {
                    tier: origin.name(),
                    reason: format!(
                        "origin value changed size while read ({size} then {})",
                        v.len()
                    ),
                });
            }
            head.value_crc = Some(crc32c::crc32c(&v));
            head.total_len = v.len() as u64;
            Some(v)
        } else {
            None
        };
        Counters::inc(&ostats.hits);
        let rec = if payload.is_some() {
            let len = record::HEAD_LEN + payload.as_ref().map_or(0, Bytes::len);
            let Some(mut rec) = self.fill_record(key, len, policy) else {
                // Read later than everything DRAM would give up for it: served, and
                // kept on NVMe only.
                let mut rec = Record::Heap(vec![0u8; len]);
                write_head_record(&mut rec, &head, payload.as_deref());
                self.bypass(key, rec, policy).await;
                head.inline = payload;
                return Ok(Some(head));
            };
            write_head_record(&mut rec, &head, payload.as_deref());
            rec
        } else {
            self.encode_head(&head, None, policy)?
        };
        head.inline = payload.or_else(|| (size == 0).then(Bytes::new));
        if head.inline.is_some() {
            self.keep_fill(key, rec, policy).await;
        } else {
            // A payload-less head must be cached: its pages are checked against
            // it (a missing head reads as a replaced value). Failing costs only a
            // size request on retry.
            let stored = self.store_record(key, rec, policy).await?;
            self.fill_nvme(key, stored, policy).await;
        }
        Ok(Some(head))
    }

    fn encode_head(
        &self,
        head: &Head,
        payload: Option<&[u8]>,
        policy: &NamespacePolicy,
    ) -> Result<Record> {
        let len = record::HEAD_LEN + payload.map_or(0, <[u8]>::len);
        let mut rec = self.alloc_record(len, policy);
        write_head_record(&mut rec, head, payload);
        Ok(rec)
    }

    /// A buffer for a record filled from the origin, allocated once: in the DRAM
    /// arena when there is room or the eviction policy admits the key, on the heap
    /// when DRAM cannot take it; `None` when DRAM declines it (Belady's bypass).
    fn fill_record(&self, key: &Key, len: usize, policy: &NamespacePolicy) -> Option<Record> {
        if !policy.tiers.dram {
            return Some(Record::Heap(vec![0u8; len]));
        }
        match self.dram.reserve_for(key, len) {
            Ok(Some(buf)) => Some(Record::Arena(buf)),
            Ok(None) => None,
            Err(_) => Some(Record::Heap(vec![0u8; len])),
        }
    }

    /// A buffer for a record: in the DRAM arena when the namespace may live there and
    /// room can be made, on the heap otherwise.
    fn alloc_record(&self, len: usize, policy: &NamespacePolicy) -> Record {
        if policy.tiers.dram
            && let Ok(buf) = self.dram.reserve(len)
        {
            return Record::Arena(buf);
        }
        Record::Heap(vec![0u8; len])
    }

    /// Stores a finished record in the highest tier the policy allows, and drops any
    /// older record of the key from the other tier, so that the older value is never
    /// served in place of this one (a pinned copy in a full DRAM, or a copy on NVMe
    /// that would resurface once this one leaves DRAM without being demoted).
    ///
    /// Returns the record if it went to DRAM (`None`: it went to NVMe).
    async fn store_record(
        &self,
        key: &Key,
        rec: Record,
        policy: &NamespacePolicy,
    ) -> Result<Option<Bytes>> {
        let v = match rec {
            Record::Arena(buf) => {
                let frozen = buf.freeze();
                self.dram.insert_frozen(key, frozen.clone())?;
                self.drop_from_nvme(key).await;
                return Ok(Some(frozen));
            }
            Record::Heap(v) => Bytes::from(v),
        };
        if policy.tiers.dram
            && self
                .dram
                .put(key, v.clone(), &PutOptions::default())
                .await
                .is_ok()
        {
            self.drop_from_nvme(key).await;
            return Ok(Some(v));
        }
        // Not in DRAM: an older copy there (pinned, say) must go, whatever happens
        // below (a write-through origin already has the new value).
        while self.dram.unpin(key) {}
        self.dram.delete(key).await?;
        let Some(nvme) = self.nvme.as_ref().filter(|_| policy.tiers.nvme) else {
            return Err(Error::Exhausted {
                what: "cache tiers".into(),
                detail: format!(
                    "no tier of namespace {:?} has room for {} bytes",
                    policy.name,
                    v.len()
                ),
                retry_after: Some(Duration::from_millis(100)),
            });
        };
        let _g = self.key_lock(key).lock().await;
        match nvme.put(key, v, &PutOptions::default()).await? {
            PutOutcome::Stored => Ok(None),
            PutOutcome::Dropped => Err(Error::Exhausted {
                what: "nvme tier".into(),
                detail: "the write buffer was full; the write was dropped".into(),
                retry_after: Some(Duration::from_millis(100)),
            }),
        }
    }

    /// Caches a record of bytes just read from the origin (an inline head or a
    /// page), in DRAM and NVMe. Best effort: the bytes are served whatever happens here, so a cache with no room left
    /// passes reads through instead of failing them (a failure would send the
    /// client back to retry, and the origin would be read twice). What could not
    /// be kept is counted in `dropped_writes`.
    async fn keep_fill(&self, key: &Key, rec: Record, policy: &NamespacePolicy) {
        match self.store_record(key, rec, policy).await {
            Ok(stored) => self.fill_nvme(key, stored, policy).await,
            Err(e) => {
                Counters::inc(&self.dram.stats().ns(key.namespace()).dropped_writes);
                match e {
                    Error::Exhausted { .. } => {
                        tracing::debug!(?key, error = %e, "origin fill served, not cached");
                    }
                    _ => tracing::warn!(?key, error = %e, "origin fill served, not cached"),
                }
            }
        }
    }

    /// Keeps a fill that DRAM declined on NVMe only (when allowed), dropping any
    /// older copy from DRAM so it is never served in place of this one.
    async fn bypass(&self, key: &Key, rec: Record, policy: &NamespacePolicy) {
        Counters::inc(&self.dram.stats().ns(key.namespace()).bypasses);
        let rec = match rec {
            Record::Heap(v) => Bytes::from(v),
            Record::Arena(buf) => buf.freeze(),
        };
        let Some(nvme) = self.nvme.as_ref().filter(|_| policy.tiers.nvme) else {
            return;
        };
        let _g = self.key_lock(key).lock().await;
        // A write-through of the key under way: this fill may be of the older value.
        if self.is_writing_through(key) {
            return;
        }
        if let Err(e) = nvme.put(key, rec, &PutOptions::default()).await {
            tracing::warn!(?key, error = %e, "NVMe write of a bypassed fill failed");
        }
    }

    /// Writes a record just filled from the origin (and stored in DRAM) to NVMe as
    /// well, when the namespace may live there: a fill lands in both tiers, so
    /// leaving DRAM costs no write and never a second origin read. Best effort: a
    /// dropped or failed write leaves the DRAM copy (demotion will try again).
    async fn fill_nvme(&self, key: &Key, stored: Option<Bytes>, policy: &NamespacePolicy) {
        let (Some(rec), Some(nvme)) = (stored, &self.nvme) else {
            return;
        };
        if !policy.tiers.nvme {
            return;
        }
        let _g = self.key_lock(key).lock().await;
        // Replaced in DRAM since the fill (a write-through of the key stored a newer
        // value, or is under way): the filled record is the older value's.
        // (A page belongs to one generation and is never replaced.)
        let current = || async {
            matches!(self.dram.get(key, &GetOptions::default()).await,
                Ok(Some(r)) if r.as_ptr() == rec.as_ptr() && r.len() == rec.len())
        };
        if !key.is_page() && (self.is_writing_through(key) || !current().await) {
            return;
        }
        match nvme.put(key, rec, &PutOptions::default()).await {
            Ok(PutOutcome::Stored) => {}
            Ok(PutOutcome::Dropped) => tracing::debug!(?key, "NVMe fill dropped (buffer full)"),
            Err(e) => tracing::warn!(?key, error = %e, "NVMe fill failed"),
        }
    }

    /// Where origin reads of `key` go, if its namespace has an origin.
    fn source(&self, key: &Key, policy: &NamespacePolicy) -> Option<Source<'_>> {
        if policy.origin != OriginKind::Origin {
            return None;
        }
        if let Some(o) = self.ns_origins.read().get(key.namespace()) {
            return Some(Source::Namespace(o.clone()));
        }
        self.origin.as_ref().map(Source::Tier)
    }

    /// Drops an older record of `key` from NVMe (after a newer one went to DRAM).
    async fn drop_from_nvme(&self, key: &Key) {
        if self.nvme.is_some() {
            let _g = self.key_lock(key).lock().await;
            self.drop_from_nvme_locked(key).await;
        }
    }

    /// [`Inner::drop_from_nvme`], the key's lock held.
    async fn drop_from_nvme_locked(&self, key: &Key) {
        if let Some(n) = &self.nvme
            && n.contains(key).await.unwrap_or(false)
            && let Err(e) = n.delete(key).await
        {
            tracing::warn!(?key, error = %e, "dropping an older record from NVMe failed");
        }
    }

    async fn read_page(
        self: &Arc<Self>,
        entry: &Entry,
        index: u32,
        policy: &NamespacePolicy,
    ) -> Result<Bytes> {
        let mut pages = self.read_pages(entry, index, index, policy).await?;
        Ok(pages.pop().unwrap_or_default())
    }

    /// Pages `lo..=hi` of a value, which lie in one run: each from the cache if
    /// there, and all the missing ones from one shared read of their run.
    async fn read_pages(
        self: &Arc<Self>,
        entry: &Entry,
        lo: u32,
        hi: u32,
        policy: &NamespacePolicy,
    ) -> Result<Vec<Bytes>> {
        let head = &entry.head;
        if hi >= head.page_count().max(1) {
            return Err(Error::RangeOutOfBounds {
                offset: u64::from(hi) * u64::from(head.page_size),
                length: None,
                size: head.total_len,
            });
        }
        if let Some(inline) = &head.inline {
            return Ok(vec![inline.clone()]);
        }
        debug_assert_eq!(lo / self.run_pages, hi / self.run_pages);
        let mut pages = Vec::with_capacity((hi - lo + 1) as usize);
        for index in lo..=hi {
            pages.push(self.cached_page_checked(entry, index, policy).await?);
        }
        let Some(missing) = pages.iter().position(Option::is_none) else {
            return Ok(pages.into_iter().flatten().collect());
        };
        if self.source(&entry.key, policy).is_some() {
            // One origin read fills the aligned run of pages holding these; readers
            // of any page of the run share it.
            let first = lo - lo % self.run_pages;
            let last = (first + self.run_pages).min(head.page_count()) - 1;
            let me = self.clone();
            let (e, p) = (entry.clone(), policy.clone());
            let run = self
                .run_flights
                .run(entry.key.page(head.generation, first), async move {
                    me.fill_run(&e, first, last, &p).await
                })
                .await?;
            return Ok(pages
                .into_iter()
                .zip(lo..=hi)
                .map(|(p, i)| p.unwrap_or_else(|| run[(i - first) as usize].clone()))
                .collect());
        }
        // A page of a cache-only value is gone. If the value was replaced meanwhile
        // (its old pages go with its old head), the caller looks it up again;
        // otherwise the value is incomplete: drop it.
        if !self.replaced(entry).await {
            self.remove_cached(&entry.key).await;
        }
        Err(Error::NotFound {
            key: format!(
                "{} (page {} was evicted)",
                entry.key.display_path(),
                lo + missing as u32
            ),
        })
    }

    /// Page `index` of a value if a cache tier holds it intact. A corrupt copy is
    /// dropped (and counted), never served; a page found on NVMe is promoted.
    async fn cached_page_checked(
        &self,
        entry: &Entry,
        index: u32,
        policy: &NamespacePolicy,
    ) -> Result<Option<Bytes>> {
        let head = &entry.head;
        let pk = entry.key.page(head.generation, index);
        let opts = GetOptions::default();
        if let Some(rec) = self.dram.get(&pk, &opts).await? {
            match record::decode_page(&rec, head.generation, index, Payload::Trust) {
                Ok(p) => return Ok(Some(p)),
                Err(e) => {
                    tracing::error!(key = ?pk, error = %e, "corrupt page in DRAM; dropped");
                    Counters::inc(&self.dram.stats().ns(pk.namespace()).checksum_failures);
                    self.dram.delete(&pk).await?;
                }
            }
        }
        if let Some(nvme) = &self.nvme {
            match nvme.get(&pk, &opts).await {
                Ok(Some(rec)) => {
                    match record::decode_page(&rec, head.generation, index, Payload::Verify) {
                        Ok(p) => {
                            if policy.tiers.dram {
                                self.promote(&pk, &rec);
                            }
                            return Ok(Some(p));
                        }
                        Err(e) => {
                            tracing::error!(key = ?pk, error = %e, "corrupt page on NVMe; dropped, never served");
                            Counters::inc(&nvme.stats().ns(pk.namespace()).checksum_failures);
                            nvme.delete(&pk).await?;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(key = ?pk, error = %e, "NVMe page read failed"),
            }
        }
        Ok(None)
    }

    /// The pages `first..=last` of a value, each from the cache if there, the
    /// others read from the origin in one request (from the first missing page to
    /// the last) and filled into the cache.
    async fn fill_run(
        &self,
        entry: &Entry,
        first: u32,
        last: u32,
        policy: &NamespacePolicy,
    ) -> Result<Arc<[Bytes]>> {
        let head = &entry.head;
        let mut pages: Vec<Option<Bytes>> = Vec::with_capacity((last - first + 1) as usize);
        for i in first..=last {
            // A flight that ended between a reader's miss and this one filled some.
            pages.push(
                self.cached_page_checked(entry, i, policy)
                    .await
                    .ok()
                    .flatten(),
            );
        }
        let missing = |p: &Option<Bytes>| p.is_none();
        let (Some(lo), Some(hi)) = (
            pages.iter().position(missing),
            pages.iter().rposition(missing),
        ) else {
            return Ok(pages.into_iter().flatten().collect());
        };
        let (lo, hi) = (first + lo as u32, first + hi as u32);
        let data = self.read_origin_pages(entry, lo, hi, policy).await?;
        let ps = u64::from(head.page_size);
        for i in lo..=hi {
            let at = (u64::from(i - lo) * ps) as usize;
            let page = data.slice(at..(at + ps as usize).min(data.len()));
            let slot = &mut pages[(i - first) as usize];
            if slot.is_none() {
                self.fill_page(entry, i, &page, policy).await;
            }
            *slot = Some(page);
        }
        Ok(pages.into_iter().flatten().collect())
    }

    /// The bytes of pages `lo..=hi` of a value, in one origin read.
    async fn read_origin_pages(
        &self,
        entry: &Entry,
        lo: u32,
        hi: u32,
        policy: &NamespacePolicy,
    ) -> Result<Bytes> {
        let Some(origin) = self.source(&entry.key, policy) else {
            return Err(Error::NotFound {
                key: entry.key.display_path(),
            });
        };
        let head = &entry.head;
        let ps = u64::from(head.page_size);
        let offset = u64::from(lo) * ps;
        let len = (u64::from(hi) + 1) * ps;
        let len = len.min(head.total_len) - offset;
        Counters::inc(&origin.stats().ns(entry.key.namespace()).origin_reads);
        let range = ByteRange {
            offset,
            length: Some(len),
        };
        // The head is what tells a replaced value (below): hold it in DRAM while
        // the pages are read and stored, so that making room for them cannot
        // evict it.
        let _head = (!origin.immutable()).then(|| HeadPin::new(&self.dram, &entry.key));
        let data = origin
            .get(
                &entry.key,
                &GetOptions {
                    range: Some(range),
                    deadline: None,
                },
            )
            .await?
            .ok_or_else(|| Error::NotFound {
                key: entry.key.display_path(),
            })?;
        if data.len() as u64 != len {
            if !origin.immutable() {
                return Err(Error::Changed {
                    target: entry.key.display_path(),
                    detail: format!(
                        "the origin returned {} bytes for pages {lo}..={hi} of a cached head of {} bytes, expected {len}",
                        data.len(),
                        head.total_len
                    ),
                });
            }
            return Err(Error::Corrupt {
                tier: origin.name(),
                reason: format!(
                    "origin returned {} bytes for pages {lo}..={hi}, expected {len}",
                    data.len()
                ),
            });
        }
        // A write-through put writes the origin, then the new pages and head, then
        // drops the old pages. If the head changed, these bytes may be the new
        // value's: never serve (or cache) them as pages of the old one.
        if !origin.immutable() && self.replaced(entry).await {
            return Err(Error::NotFound {
                key: format!(
                    "{} (replaced while pages {lo}..={hi} were read)",
                    entry.key.display_path()
                ),
            });
        }
        Ok(data)
    }

    /// Caches page `index` of a value, just read from the origin.
    async fn fill_page(&self, entry: &Entry, index: u32, data: &[u8], policy: &NamespacePolicy) {
        let pk = entry.key.page(entry.head.generation, index);
        let len = record::PAGE_HEADER_LEN + data.len();
        let fill = self.fill_record(&pk, len, policy);
        let declined = fill.is_none();
        let mut rec = fill.unwrap_or_else(|| Record::Heap(vec![0u8; len]));
        let buf = rec.as_mut_slice();
        buf[record::PAGE_HEADER_LEN..].copy_from_slice(data);
        record::write_page(buf, entry.head.generation, index);
        if declined {
            self.bypass(&pk, rec, policy).await;
        } else {
            self.keep_fill(&pk, rec, policy).await;
        }
    }
}

/// The part of a page (whose first byte is at `base`) inside `[start, end)`.
fn clip(page: Bytes, base: u64, start: u64, end: u64) -> Bytes {
    let from = start.max(base) - base;
    let to = (base + page.len() as u64).min(end) - base;
    page.slice(from as usize..to as usize)
}

/// A pin on a head in DRAM (none if it is not there), released on drop.
struct HeadPin<'a> {
    dram: &'a DramTier,
    key: Key,
    value: Option<Bytes>,
}

impl<'a> HeadPin<'a> {
    fn new(dram: &'a DramTier, key: &Key) -> Self {
        let value = dram.pin_value(key);
        Self {
            dram,
            key: key.clone(),
            value,
        }
    }
}

impl Drop for HeadPin<'_> {
    fn drop(&mut self) {
        if let Some(value) = &self.value {
            self.dram.unpin_value(&self.key, value);
        }
    }
}

/// Writes a head record (header, then `payload`) into `rec`, sized for both.
fn write_head_record(rec: &mut Record, head: &Head, payload: Option<&[u8]>) {
    let buf = rec.as_mut_slice();
    buf[record::HEAD_LEN..].copy_from_slice(payload.unwrap_or_default());
    record::write_head(buf, head);
}

/// A record being built: in the DRAM arena or on the heap.
pub(crate) enum Record {
    Arena(crate::dram::ArenaBuf),
    Heap(Vec<u8>),
}

impl Record {
    fn as_slice(&self) -> &[u8] {
        match self {
            Record::Arena(b) => b.as_slice(),
            Record::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Record::Arena(b) => b.as_mut_slice(),
            Record::Heap(v) => v,
        }
    }
}
