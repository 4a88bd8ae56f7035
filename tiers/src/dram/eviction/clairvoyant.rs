//! Clairvoyant eviction from the training plans (Belady's MIN, where plans say
//! when each shard is read next).

use std::collections::HashMap;
use std::sync::Arc;

use super::{EvictionPolicy, Gdsf};
use crate::Key;

/// When a key will next be read, as the training plans registered with the server
/// say (see `strata_training_cache::oracle`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Planned {
    /// No registered plan covers the key: the fallback policy decides.
    Unplanned,
    /// Plans cover the key and none reads it again.
    Never,
    /// The nearest registered read is this far ahead (any unit, larger is later).
    In(f64),
}

/// Answers [`Planned`] for a key (a value's key; page keys are mapped to theirs).
pub trait NextUse: Send + Sync + 'static {
    /// When `key` is next read.
    fn next_use(&self, key: &Key) -> Planned;
    /// When `key` is read again after the read of it happening now.
    fn next_use_after_read(&self, key: &Key) -> Planned {
        self.next_use(key)
    }
}

/// Keys of this namespace are candidates for clairvoyant eviction.
const PLANNED_NS: &str = "shard";
/// Candidates examined per eviction: all of them up to this many, else a sample
/// of [`SAMPLE`] (approximate Belady, as Redis approximates LRU).
const EXACT_UP_TO: usize = 1024;
const SAMPLE: usize = 128;

/// Unplanned shard entries examined, lowest priority first, for the size-aware
/// choice among them.
const UNPLANNED_SCAN: usize = 256;

/// Clairvoyant eviction over a fallback policy.
///
/// Every key is tracked by the fallback (the configured policy, S3-FIFO or LRU);
/// `shard` keys are also tracked here, by their next read and by a size-aware
/// policy ([`Gdsf`]). A victim is chosen thus:
///
/// 1. a `shard` key that registered plans will never read again goes first;
/// 2. otherwise the fallback names its victim, which decides between shards and
///    other keys (it has seen them all); if that is a `shard` key covered by
///    plans, the `shard` key read **furthest in the future** goes instead
///    (Belady's rule among shards);
/// 3. if it is a `shard` key no plan covers (a dataset read without a registered
///    plan), the unplanned shard entry GDSF ranks lowest goes instead: the
///    size-aware fallback;
/// 4. keys of other namespaces leave as the fallback says.
pub struct Clairvoyant {
    oracle: Arc<dyn NextUse>,
    fallback: Box<dyn EvictionPolicy>,
    sized: Gdsf,
    keys: Vec<Key>,
    at: HashMap<Key, (usize, u64)>,
    rng: u64,
}

fn when(oracle: &dyn NextUse, key: &Key) -> Planned {
    match key.page_owner() {
        Some(owner) => oracle.next_use(&owner),
        None => oracle.next_use(key),
    }
}

impl Clairvoyant {
    /// Wraps `fallback`, asking `oracle` about `shard` keys.
    pub fn new(oracle: Arc<dyn NextUse>, fallback: Box<dyn EvictionPolicy>) -> Self {
        Self {
            oracle,
            fallback,
            sized: Gdsf::default(),
            keys: Vec::new(),
            at: HashMap::new(),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn planned_ns(key: &Key) -> bool {
        key.namespace() == PLANNED_NS
    }

    fn when(&self, key: &Key) -> Planned {
        when(self.oracle.as_ref(), key)
    }

    fn forget(&mut self, key: &Key) -> Option<u64> {
        let (i, size) = self.at.remove(key)?;
        self.sized.remove(key);
        self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.at.get_mut(moved).expect("tracked").0 = i;
        }
        Some(size)
    }

    /// The tracked `shard` key read furthest ahead (`Never` beats everything),
    /// with its answer; `Unplanned` keys are skipped.
    fn furthest(&mut self) -> Option<(Key, Planned)> {
        let n = self.keys.len();
        let picks: Vec<usize> = if n <= EXACT_UP_TO {
            (0..n).collect()
        } else {
            (0..SAMPLE)
                .map(|_| {
                    self.rng ^= self.rng << 13;
                    self.rng ^= self.rng >> 7;
                    self.rng ^= self.rng << 17;
                    (self.rng % n as u64) as usize
                })
                .collect()
        };
        let mut best: Option<(Key, Planned, f64)> = None;
        for i in picks {
            let key = &self.keys[i];
            let (p, t) = match self.when(key) {
                Planned::Unplanned => continue,
                Planned::Never => (Planned::Never, f64::INFINITY),
                Planned::In(t) => (Planned::In(t), t),
            };
            if best.as_ref().is_none_or(|b| t > b.2) {
                best = Some((key.clone(), p, t));
            }
        }
        best.map(|(k, p, _)| (k, p))
    }

    /// Evicts `w` in place of the fallback's pick `v`, which stays tracked.
    fn instead(&mut self, v: &Key, w: Key) -> Key {
        let size = self.at.get(v).map_or(0, |x| x.1);
        self.fallback.insert(v, size);
        self.remove(&w);
        w
    }
}

impl EvictionPolicy for Clairvoyant {
    fn insert(&mut self, key: &Key, size: u64) {
        self.fallback.insert(key, size);
        if Self::planned_ns(key) {
            self.forget(key);
            self.at.insert(key.clone(), (self.keys.len(), size));
            self.keys.push(key.clone());
            self.sized.insert(key, size);
        }
    }

    fn access(&mut self, key: &Key) {
        self.fallback.access(key);
        if self.sized.contains(key) {
            self.sized.access(key);
        } else if let Some(&(_, size)) = self.at.get(key) {
            // Dropped from GDSF while a plan covered it: ranked afresh.
            self.sized.insert(key, size);
        }
    }

    fn remove(&mut self, key: &Key) {
        self.fallback.remove(key);
        self.forget(key);
    }

    fn victim(&mut self) -> Option<Key> {
        let furthest = self.furthest();
        if let Some((key, Planned::Never)) = &furthest {
            let key = key.clone();
            self.remove(&key);
            return Some(key);
        }
        let v = self.fallback.victim()?;
        if !self.at.contains_key(&v) {
            return Some(v);
        }
        if matches!(self.when(&v), Planned::Unplanned) {
            // An unplanned shard: the size-aware policy picks which one.
            let oracle = self.oracle.clone();
            let w = self.sized.lowest_where(UNPLANNED_SCAN, |k| {
                matches!(when(oracle.as_ref(), k), Planned::Unplanned)
            });
            return Some(match w {
                Some(w) if w != v => self.instead(&v, w),
                _ => {
                    self.forget(&v);
                    v
                }
            });
        }
        Some(match furthest {
            // A planned shard: the one read furthest ahead goes.
            Some((w, _)) if w != v => self.instead(&v, w),
            _ => {
                self.forget(&v);
                v
            }
        })
    }

    fn admits(&mut self, key: &Key) -> bool {
        if !Self::planned_ns(key) {
            return true;
        }
        let t = match self
            .oracle
            .next_use_after_read(key.page_owner().as_ref().unwrap_or(key))
        {
            Planned::Unplanned => return true,
            Planned::Never => return false,
            Planned::In(t) => t,
        };
        match self.furthest() {
            Some((_, Planned::In(tf))) => t < tf,
            _ => true,
        }
    }

    fn len(&self) -> usize {
        self.fallback.len()
    }
}
