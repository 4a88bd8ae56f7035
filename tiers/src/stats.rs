//! Counters per tier and per namespace, with stable names (they become Prometheus
//! metrics and `strata stats` columns).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// One set of counters. `entries` and `bytes` are gauges; the rest only grow.
#[derive(Debug, Default)]
pub struct Counters {
    /// Entries resident.
    pub entries: AtomicU64,
    /// Bytes resident (values, not allocator overhead).
    pub bytes: AtomicU64,
    /// Lookups that found the value in this tier.
    pub hits: AtomicU64,
    /// Lookups that did not.
    pub misses: AtomicU64,
    /// Entries removed to make room.
    pub evictions: AtomicU64,
    /// Entries moved down to the next tier.
    pub demotions: AtomicU64,
    /// Reads that went to the origin.
    pub origin_reads: AtomicU64,
    /// Writes the tier refused or dropped (never reported as stored).
    pub dropped_writes: AtomicU64,
    /// Reads whose bytes failed their checksum (dropped, never served).
    pub checksum_failures: AtomicU64,
    /// Origin fills this tier declined (clairvoyant bypass: read later than
    /// everything it would have evicted).
    pub bypasses: AtomicU64,
}

/// A plain copy of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    /// See [`Counters::entries`].
    pub entries: u64,
    /// See [`Counters::bytes`].
    pub bytes: u64,
    /// See [`Counters::hits`].
    pub hits: u64,
    /// See [`Counters::misses`].
    pub misses: u64,
    /// See [`Counters::evictions`].
    pub evictions: u64,
    /// See [`Counters::demotions`].
    pub demotions: u64,
    /// See [`Counters::origin_reads`].
    pub origin_reads: u64,
    /// See [`Counters::dropped_writes`].
    pub dropped_writes: u64,
    /// See [`Counters::checksum_failures`].
    pub checksum_failures: u64,
    /// See [`Counters::bypasses`].
    pub bypasses: u64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> CountersSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            entries: l(&self.entries),
            bytes: l(&self.bytes),
            hits: l(&self.hits),
            misses: l(&self.misses),
            evictions: l(&self.evictions),
            demotions: l(&self.demotions),
            origin_reads: l(&self.origin_reads),
            dropped_writes: l(&self.dropped_writes),
            checksum_failures: l(&self.checksum_failures),
            bypasses: l(&self.bypasses),
        }
    }
}

impl std::ops::AddAssign for CountersSnapshot {
    fn add_assign(&mut self, o: Self) {
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.demotions += o.demotions;
        self.origin_reads += o.origin_reads;
        self.dropped_writes += o.dropped_writes;
        self.checksum_failures += o.checksum_failures;
        self.bypasses += o.bypasses;
    }
}

/// The counters of one tier, split by namespace.
#[derive(Debug, Default)]
pub struct TierStats {
    by_ns: RwLock<BTreeMap<String, Arc<Counters>>>,
}

impl TierStats {
    /// The counters of one namespace (created on first use).
    pub fn ns(&self, namespace: &str) -> Arc<Counters> {
        if let Some(c) = self.by_ns.read().get(namespace) {
            return c.clone();
        }
        self.by_ns
            .write()
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    /// Adds `bytes` to the resident gauges of a namespace (one entry).
    pub fn add_resident(&self, namespace: &str, bytes: u64) {
        let c = self.ns(namespace);
        c.entries.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Removes `bytes` (one entry) from the resident gauges of a namespace.
    pub fn sub_resident(&self, namespace: &str, bytes: u64) {
        let c = self.ns(namespace);
        c.entries.fetch_sub(1, Ordering::Relaxed);
        c.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A copy of every namespace's counters.
    pub fn snapshot(&self) -> BTreeMap<String, CountersSnapshot> {
        self.by_ns
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    /// The sum over namespaces.
    pub fn total(&self) -> CountersSnapshot {
        let mut t = CountersSnapshot::default();
        for c in self.by_ns.read().values() {
            t += c.snapshot();
        }
        t
    }
}
