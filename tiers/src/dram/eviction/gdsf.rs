//! GreedyDual-Size-Frequency: size-aware.

use std::collections::{BTreeMap, HashMap};

use super::EvictionPolicy;
use crate::Key;

/// What one miss costs beyond its bytes, in bytes: what the origin could have
/// sent during one request's latency (~10 ms at ~100 MB/s per Blob stream).
pub const GDSF_REQUEST_BYTES: u64 = 1 << 20;

struct GdsfMeta {
    freq: u32,
    size: u64,
    prio: f64,
    seq: u64,
}

/// GreedyDual-Size-Frequency (Cherkasova, 1998): the entry of lowest
/// `clock + freq × cost / size` leaves, and the clock rises to its priority, so
/// entries not read since age out. The cost of a miss is one request plus its
/// bytes (`overhead + size`), so per cached byte a small entry is worth more
/// than a large one read as often (a miss of it costs a whole request for few
/// bytes), and a large entry is kept by being read often (frequency), not by
/// having been read last.
pub struct Gdsf {
    overhead: f64,
    clock: f64,
    seq: u64,
    meta: HashMap<Key, GdsfMeta>,
    /// By (priority, insertion order); priorities are finite and non-negative,
    /// so their bit patterns sort as the numbers do.
    order: BTreeMap<(u64, u64), Key>,
}

impl Default for Gdsf {
    fn default() -> Self {
        Self::new(GDSF_REQUEST_BYTES)
    }
}

impl Gdsf {
    /// A policy whose misses cost `overhead` bytes beyond their own.
    pub fn new(overhead: u64) -> Self {
        Self {
            overhead: overhead as f64,
            clock: 0.0,
            seq: 0,
            meta: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn place(&mut self, key: &Key, freq: u32, size: u64) {
        let s = size.max(1) as f64;
        let prio = self.clock + f64::from(freq) * (s + self.overhead) / s;
        self.seq += 1;
        self.order.insert((prio.to_bits(), self.seq), key.clone());
        self.meta.insert(
            key.clone(),
            GdsfMeta {
                freq,
                size,
                prio,
                seq: self.seq,
            },
        );
    }

    /// The lowest-priority entry among the first `scan` that `eligible` accepts;
    /// it is forgotten and the clock rises to its priority. Entries passed over
    /// are forgotten too (the caller tracks them otherwise, e.g. shards a plan
    /// now covers, and may insert them again), so that they cannot pile up at
    /// the bottom and hide the eligible ones from every later scan.
    pub fn lowest_where(
        &mut self,
        scan: usize,
        mut eligible: impl FnMut(&Key) -> bool,
    ) -> Option<Key> {
        let mut passed = Vec::new();
        let mut found = None;
        for (&at, key) in self.order.iter().take(scan) {
            if eligible(key) {
                found = Some(key.clone());
                break;
            }
            passed.push(at);
        }
        for at in passed {
            if let Some(key) = self.order.remove(&at) {
                self.meta.remove(&key);
            }
        }
        let key = found?;
        if let Some(m) = self.meta.remove(&key) {
            self.order.remove(&(m.prio.to_bits(), m.seq));
            self.clock = self.clock.max(m.prio);
        }
        Some(key)
    }

    /// Whether `key` is tracked.
    pub fn contains(&self, key: &Key) -> bool {
        self.meta.contains_key(key)
    }
}

impl EvictionPolicy for Gdsf {
    fn insert(&mut self, key: &Key, size: u64) {
        self.remove(key);
        self.place(key, 1, size);
    }

    fn access(&mut self, key: &Key) {
        if let Some(m) = self.meta.remove(key) {
            self.order.remove(&(m.prio.to_bits(), m.seq));
            self.place(key, m.freq.saturating_add(1), m.size);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(m) = self.meta.remove(key) {
            self.order.remove(&(m.prio.to_bits(), m.seq));
        }
    }

    fn victim(&mut self) -> Option<Key> {
        self.lowest_where(usize::MAX, |_| true)
    }

    fn len(&self) -> usize {
        self.meta.len()
    }
}
