//! The DRAM tier: values in one pre-allocated arena, byte-exact capacity, pluggable
//! eviction, pins, and an eviction stream that the store demotes to NVMe.

mod arena;
mod config;
mod eviction;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

pub use self::arena::{ALLOC_UNIT, Arena, ArenaBuf};
pub use self::config::DramConfig;
pub use self::eviction::{
    Clairvoyant, EvictionKind, EvictionPolicy, GDSF_REQUEST_BYTES, Gdsf, Lru, NextUse, Planned,
    S3Fifo,
};
use crate::Key;
use crate::error::{Error, Result};
use crate::stats::{Counters, TierStats};
use crate::tier::{
    Capabilities, GetOptions, Listed, PutOptions, PutOutcome, Tier, Usage, slice_range,
    sorted_up_to,
};

/// An entry that left DRAM to make room, handed to the demoter.
#[derive(Debug)]
pub struct Evicted {
    /// Its key.
    pub key: Key,
    /// Its value (still in the arena until this is dropped).
    pub value: Bytes,
}

struct Entry {
    value: Bytes,
    pins: u32,
}

struct Inner {
    map: HashMap<Key, Entry>,
    policy: Box<dyn EvictionPolicy>,
    /// Entries evicted and queued for demotion: still served until the demoter has
    /// written them below (see [`DramTier::demoted`]), so that a value is never
    /// invisible between leaving DRAM and reaching NVMe. Their memory is held by the
    /// queue anyway.
    demoting: Demoting,
}

/// The entries waiting for demotion, and the bytes they hold (heap copies).
#[derive(Default)]
struct Demoting {
    map: HashMap<Key, Bytes>,
    bytes: u64,
}

impl Demoting {
    fn insert(&mut self, key: Key, value: Bytes) {
        self.bytes += value.len() as u64;
        if let Some(old) = self.map.insert(key, value) {
            self.bytes -= old.len() as u64;
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Bytes> {
        let old = self.map.remove(key)?;
        self.bytes -= old.len() as u64;
        Some(old)
    }

    fn get(&self, key: &Key) -> Option<&Bytes> {
        self.map.get(key)
    }

    fn take(&mut self) -> HashMap<Key, Bytes> {
        self.bytes = 0;
        std::mem::take(&mut self.map)
    }
}

/// Whether an evicted entry needs no demotion (its namespace does not demote, or
/// the tier below holds it already): it then leaves DRAM with no copy.
pub type LeavesAsIs = dyn Fn(&Key) -> bool + Send + Sync;

/// Whether two values are the same bytes in the arena (not merely equal).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// The DRAM tier.
pub struct DramTier {
    arena: Arc<Arena>,
    inner: Mutex<Inner>,
    stats: Arc<TierStats>,
    demote_tx: Mutex<Option<(mpsc::UnboundedSender<Evicted>, Arc<LeavesAsIs>)>>,
    demotion_queue: usize,
    /// Signalled whenever an entry's demotion ends (its heap copy is let go).
    demotion_done: tokio::sync::Notify,
    closed: AtomicBool,
}

impl std::fmt::Debug for DramTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DramTier")
            .field("arena", &self.arena)
            .finish_non_exhaustive()
    }
}

impl DramTier {
    /// Maps the arena and builds the tier.
    pub fn new(config: &DramConfig) -> Result<Self> {
        Ok(Self {
            arena: Arena::new(config.capacity)?,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                policy: config.eviction.build(),
                demoting: Demoting::default(),
            }),
            stats: Arc::default(),
            demote_tx: Mutex::new(None),
            demotion_queue: config.demotion_queue.max(1),
            demotion_done: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The keys of namespace `ns` held now, those waiting for demotion included.
    pub fn keys_of(&self, ns: &str) -> Vec<Key> {
        let inner = self.inner.lock();
        inner
            .map
            .keys()
            .chain(inner.demoting.map.keys())
            .filter(|k| k.namespace() == ns)
            .cloned()
            .collect()
    }

    /// Sends entries evicted from now on to `tx`, but for those `leaves_as_is`
    /// picks (no copy, no queue: nothing to write below). The queue has no bound of
    /// its own: what waits in it is bounded by [`Self::demotion_room`], which
    /// writes wait for.
    pub fn set_demotion(&self, tx: mpsc::UnboundedSender<Evicted>, leaves_as_is: Arc<LeavesAsIs>) {
        *self.demote_tx.lock() = Some((tx, leaves_as_is));
    }

    /// Allocates `len` bytes for a fill of `key` from the origin: without
    /// eviction while there is room; when full, only if the eviction policy
    /// admits the key (`Ok(None)`: declined; clairvoyant eviction declines a shard
    /// read later than everything it would evict, Belady's bypass).
    pub fn reserve_for(&self, key: &Key, len: usize) -> Result<Option<ArenaBuf>> {
        self.check_open()?;
        if let Some(buf) = self.arena.alloc(len) {
            return Ok(Some(buf));
        }
        if !self.inner.lock().policy.admits(key) {
            return Ok(None);
        }
        self.reserve(len).map(Some)
    }

    /// Evicts `shard` keys clairvoyantly from now on (see [`Clairvoyant`]), over
    /// the configured policy.
    pub fn set_next_use(&self, oracle: Arc<dyn NextUse>) {
        let mut inner = self.inner.lock();
        let fallback = std::mem::replace(&mut inner.policy, Box::new(Lru::default()));
        let mut policy = Clairvoyant::new(oracle, fallback);
        // Entries already tracked stay with the fallback; re-track the shards.
        let shards: Vec<(Key, u64)> = inner
            .map
            .iter()
            .filter(|(k, e)| k.namespace() == "shard" && e.pins == 0)
            .map(|(k, e)| (k.clone(), e.value.len() as u64))
            .collect();
        for (k, size) in shards {
            policy.remove(&k);
            policy.insert(&k, size);
        }
        inner.policy = Box::new(policy);
    }

    /// How many evicted entries may wait for demotion (`dram.demotion_queue`).
    pub fn demotion_queue(&self) -> usize {
        self.demotion_queue
    }

    /// The arena (for carriers that share or register it).
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Allocates `len` bytes in the arena, evicting unpinned entries as needed.
    ///
    /// An evicted entry leaves the arena at once: what goes to the demoter (and is
    /// served until it is on NVMe) is a copy on the heap, so the arena memory is
    /// free as soon as no reader holds the entry, and a write never waits for
    /// NVMe. Those copies hold at most a quarter of the DRAM capacity together
    /// ([`Self::demotion_bytes`]); past that, or with the demotion queue full, an
    /// evicted entry is dropped instead of demoted (and counted), as a cache that
    /// is full makes room.
    ///
    /// Fails with [`Error::Exhausted`] only when `len` exceeds the capacity, or
    /// when everything left is pinned or held by readers.
    pub fn reserve(&self, len: usize) -> Result<ArenaBuf> {
        self.check_open()?;
        if len as u64 > self.arena.capacity() {
            return Err(self.exhausted(format!(
                "a value of {len} bytes exceeds the DRAM capacity of {} bytes",
                self.arena.capacity()
            )));
        }
        loop {
            if let Some(buf) = self.arena.alloc(len) {
                return Ok(buf);
            }
            let (victim, value) = {
                let mut inner = self.inner.lock();
                let Some(victim) = inner.policy.victim() else {
                    return Err(self.exhausted(format!(
                        "no room for {len} bytes: {} of {} bytes in use, the rest pinned or held by readers",
                        self.arena.used(),
                        self.arena.capacity()
                    )));
                };
                let Some(entry) = inner.map.remove(&victim) else {
                    continue;
                };
                // Still served (from the arena) while it is copied out below.
                inner.demoting.insert(victim.clone(), entry.value.clone());
                (victim, entry.value)
            };
            let ns = self.stats.ns(victim.namespace());
            Counters::inc(&ns.evictions);
            self.stats
                .sub_resident(victim.namespace(), value.len() as u64);
            self.demote(victim, value);
        }
    }

    /// Bytes that evicted entries waiting for demotion may hold on the heap before
    /// writes wait for them ([`Self::demotion_room`]): a quarter of the capacity.
    pub fn demotion_bytes(&self) -> u64 {
        self.arena.capacity() / 4
    }

    /// Waits, up to `wait`, until the entries waiting for demotion hold at most
    /// [`Self::demotion_bytes`] and number at most `dram.demotion_queue`: the
    /// back-pressure that keeps a writer faster than NVMe from growing the queue
    /// without bound (every write evicts about as much as it stores). Past `wait`,
    /// [`Error::Exhausted`] with a retry hint (a `Busy` answer; clients retry it).
    pub async fn demotion_room(&self, wait: std::time::Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let done = self.demotion_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let (bytes, entries) = {
                let inner = self.inner.lock();
                (inner.demoting.bytes, inner.demoting.map.len())
            };
            if bytes <= self.demotion_bytes() && entries <= self.demotion_queue {
                return Ok(());
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return Err(Error::Exhausted {
                    what: "dram tier".into(),
                    detail: format!(
                        "demotion to NVMe is behind: {entries} evicted entries ({bytes} bytes) wait to be written"
                    ),
                    retry_after: Some(std::time::Duration::from_millis(50)),
                });
            }
        }
    }

    /// Hands an evicted entry (still in `demoting`, as `value`) to the demoter as a
    /// heap copy, so that its arena memory is free once no reader holds it; with no
    /// demoter (no NVMe below), the entry simply leaves.
    fn demote(&self, key: Key, value: Bytes) {
        let tx = self.demote_tx.lock().clone();
        let Some((tx, leaves_as_is)) = tx else {
            self.demoted(&key, &value);
            return;
        };
        if leaves_as_is(&key) {
            self.demoted(&key, &value);
            return;
        }
        let copy = Bytes::copy_from_slice(&value);
        {
            let mut inner = self.inner.lock();
            // Deleted, replaced or pinned back while it was copied: nothing to demote.
            if !inner.demoting.get(&key).is_some_and(|v| same(v, &value)) {
                return;
            }
            inner.demoting.insert(key.clone(), copy.clone());
        }
        if tx
            .send(Evicted {
                key: key.clone(),
                value: copy.clone(),
            })
            .is_err()
        {
            // The demoter is gone (shutting down): the entry leaves, counted.
            self.demoted(&key, &copy);
            Counters::inc(&self.stats.ns(key.namespace()).dropped_writes);
        }
    }

    /// Whether `value` is still the evicted entry of `key` awaiting demotion (not
    /// deleted, taken back or replaced since).
    pub fn is_demoting(&self, key: &Key, value: &Bytes) -> bool {
        self.inner
            .lock()
            .demoting
            .get(key)
            .is_some_and(|v| same(v, value))
    }

    /// Stops serving an evicted entry: its demotion is over (done, refused or
    /// failed). A newer value evicted since under the same key is left alone.
    pub fn demoted(&self, key: &Key, value: &Bytes) {
        {
            let mut inner = self.inner.lock();
            if inner.demoting.get(key).is_some_and(|v| same(v, value)) {
                inner.demoting.remove(key);
            }
        }
        self.demotion_done.notify_waiters();
    }

    /// Inserts a value that already lives in this tier's arena (from [`Self::reserve`]),
    /// replacing any previous value.
    pub fn insert_frozen(&self, key: &Key, value: Bytes) -> Result<()> {
        self.check_open()?;
        let size = value.len() as u64;
        let old = {
            let mut inner = self.inner.lock();
            if inner.demoting.remove(key).is_some() {
                self.demotion_done.notify_waiters();
            }
            let old = inner.map.insert(key.clone(), Entry { value, pins: 0 });
            if old.is_some() {
                inner.policy.remove(key);
            }
            inner.policy.insert(key, size);
            old
        };
        if let Some(old) = old {
            self.stats
                .sub_resident(key.namespace(), old.value.len() as u64);
        }
        self.stats.add_resident(key.namespace(), size);
        Ok(())
    }

    /// Pins an entry so eviction skips it; pins nest. `false` if absent. An entry
    /// evicted but still being demoted is taken back.
    pub fn pin(&self, key: &Key) -> bool {
        self.pin_value(key).is_some()
    }

    /// [`Self::pin`], answering the value pinned (for [`Self::unpin_value`]).
    pub fn pin_value(&self, key: &Key) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        let Inner {
            map,
            policy,
            demoting,
        } = &mut *inner;
        if !map.contains_key(key)
            && let Some(value) = demoting.get(key)
        {
            self.stats.add_resident(key.namespace(), value.len() as u64);
            map.insert(
                key.clone(),
                Entry {
                    value: value.clone(),
                    pins: 1,
                },
            );
            return Some(value.clone());
        }
        let e = map.get_mut(key)?;
        if e.pins == 0 {
            policy.remove(key);
        }
        e.pins += 1;
        Some(e.value.clone())
    }

    /// Releases one pin of `key` if it still holds `value` (a pin taken with
    /// [`Self::pin_value`] never releases one on a value that replaced it).
    pub fn unpin_value(&self, key: &Key, value: &Bytes) -> bool {
        self.release(key, Some(value))
    }

    /// Releases one pin. `false` if the entry is absent or was not pinned.
    pub fn unpin(&self, key: &Key) -> bool {
        self.release(key, None)
    }

    fn release(&self, key: &Key, only: Option<&Bytes>) -> bool {
        let mut inner = self.inner.lock();
        let Inner { map, policy, .. } = &mut *inner;
        match map.get_mut(key) {
            Some(e) if e.pins > 0 && only.is_none_or(|v| same(&e.value, v)) => {
                e.pins -= 1;
                if e.pins == 0 {
                    policy.insert(key, e.value.len() as u64);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether an entry is pinned.
    pub fn is_pinned(&self, key: &Key) -> bool {
        self.inner.lock().map.get(key).is_some_and(|e| e.pins > 0)
    }

    /// Removes every entry and returns them (for demotion at shutdown), with the
    /// evicted entries whose demotion has not finished.
    pub fn drain(&self) -> Vec<Evicted> {
        let mut inner = self.inner.lock();
        let map = std::mem::take(&mut inner.map);
        let demoting = inner.demoting.take();
        while inner.policy.victim().is_some() {}
        drop(inner);
        let resident = map.into_iter().map(|(key, e)| {
            self.stats
                .sub_resident(key.namespace(), e.value.len() as u64);
            Evicted {
                key,
                value: e.value,
            }
        });
        resident
            .chain(
                demoting
                    .into_iter()
                    .map(|(key, value)| Evicted { key, value }),
            )
            .collect()
    }

    fn lookup(&self, key: &Key) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.map.get(key) {
            let value = e.value.clone();
            inner.policy.access(key);
            return Some(value);
        }
        inner.demoting.get(key).cloned()
    }

    fn find_len(&self, key: &Key) -> Option<u64> {
        let inner = self.inner.lock();
        inner
            .map
            .get(key)
            .map(|e| &e.value)
            .or_else(|| inner.demoting.get(key))
            .map(|v| v.len() as u64)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    fn exhausted(&self, detail: String) -> Error {
        Error::Exhausted {
            what: "dram tier".into(),
            detail,
            retry_after: None,
        }
    }
}

impl Tier for DramTier {
    fn name(&self) -> &'static str {
        "dram"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bounded: true,
            persistent: false,
            listable: true,
            lossy_writes: false,
        }
    }

    fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    fn usage(&self) -> Usage {
        Usage {
            capacity: self.arena.capacity(),
            used: self.arena.used(),
        }
    }

    async fn get(&self, key: &Key, opts: &GetOptions) -> Result<Option<Bytes>> {
        match self.lookup(key) {
            Some(v) => Ok(Some(slice_range(v, opts.range.as_ref())?)),
            None => Ok(None),
        }
    }

    async fn size(&self, key: &Key) -> Result<Option<u64>> {
        Ok(self.find_len(key))
    }

    async fn put(&self, key: &Key, value: Bytes, _opts: &PutOptions) -> Result<PutOutcome> {
        let mut buf = self.reserve(value.len())?;
        buf.as_mut_slice().copy_from_slice(&value);
        self.insert_frozen(key, buf.freeze())?;
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let removed = {
            let mut inner = self.inner.lock();
            let removed = inner.map.remove(key);
            if removed.is_some() {
                inner.policy.remove(key);
            }
            (removed, inner.demoting.remove(key).is_some())
        };
        if removed.1 {
            self.demotion_done.notify_waiters();
        }
        match removed {
            (Some(e), _) => {
                self.stats
                    .sub_resident(key.namespace(), e.value.len() as u64);
                Ok(true)
            }
            (None, demoting) => Ok(demoting),
        }
    }

    async fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.find_len(key).is_some())
    }

    async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>> {
        let inner = self.inner.lock();
        let demoting = inner
            .demoting
            .map
            .iter()
            .filter(|(k, _)| !inner.map.contains_key(*k));
        let out: Vec<Listed> = inner
            .map
            .iter()
            .map(|(k, e)| (k, &e.value))
            .chain(demoting)
            .filter(|(k, _)| k.is_listed_under(namespace, tenant, prefix))
            .map(|(k, v)| Listed {
                key: k.clone(),
                len: v.len() as u64,
            })
            .collect();
        Ok(sorted_up_to(out, limit))
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        *self.demote_tx.lock() = None;
        Ok(())
    }
}
