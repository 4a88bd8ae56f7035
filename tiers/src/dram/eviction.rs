//! Pluggable eviction policies for the DRAM tier.
//!
//! A policy tracks the evictable entries (pinned entries are taken out of it while
//! pinned) and names the next victim. It never sees values, only keys and sizes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::key::Key;

/// Chooses which entry leaves the tier next.
pub trait EvictionPolicy: Send + 'static {
    /// A new entry of `size` bytes became evictable.
    fn insert(&mut self, key: &Key, size: u64);
    /// An entry was read.
    fn access(&mut self, key: &Key);
    /// An entry left (deleted, replaced or pinned); forget it.
    fn remove(&mut self, key: &Key);
    /// Picks a victim and forgets it; `None` when nothing is evictable.
    fn victim(&mut self) -> Option<Key>;
    /// Whether a new entry under `key` is worth evicting for, when the tier is
    /// full (`false`: serve it without caching it; Belady's bypass).
    fn admits(&mut self, _key: &Key) -> bool {
        true
    }
    /// Number of tracked entries.
    fn len(&self) -> usize;
    /// Whether no entry is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The built-in policies, by name (config: `dram.eviction = "s3fifo" | "lru"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionKind {
    /// S3-FIFO (Yang et al., SOSP'23): scan-resistant, cheap on hits.
    #[default]
    S3fifo,
    /// Least recently used.
    Lru,
}

impl EvictionKind {
    /// A fresh policy of this kind.
    pub fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            EvictionKind::S3fifo => Box::new(S3Fifo::default()),
            EvictionKind::Lru => Box::new(Lru::default()),
        }
    }
}

/// Least recently used, with O(log n) operations.
#[derive(Default)]
pub struct Lru {
    tick: u64,
    by_key: HashMap<Key, u64>,
    by_tick: BTreeMap<u64, Key>,
}

impl EvictionPolicy for Lru {
    fn insert(&mut self, key: &Key, _size: u64) {
        self.remove(key);
        self.tick += 1;
        self.by_key.insert(key.clone(), self.tick);
        self.by_tick.insert(self.tick, key.clone());
    }

    fn access(&mut self, key: &Key) {
        if let Some(t) = self.by_key.get_mut(key) {
            self.by_tick.remove(t);
            self.tick += 1;
            *t = self.tick;
            self.by_tick.insert(self.tick, key.clone());
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(t) = self.by_key.remove(key) {
            self.by_tick.remove(&t);
        }
    }

    fn victim(&mut self) -> Option<Key> {
        let (_, key) = self.by_tick.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Meta {
    queue: Queue,
    freq: u8,
    size: u64,
    seq: u64,
}

/// S3-FIFO: a small FIFO (10% of bytes) that filters one-hit wonders, a main FIFO
/// with 2-bit frequency reinsertion, and a ghost FIFO of recently evicted keys that
/// sends returning keys straight to main.
#[derive(Default)]
pub struct S3Fifo {
    seq: u64,
    meta: HashMap<Key, Meta>,
    small: VecDeque<(Key, u64)>,
    main: VecDeque<(Key, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<Key>,
    ghost_set: HashSet<Key>,
}

impl S3Fifo {
    fn push(&mut self, key: &Key, queue: Queue, freq: u8, size: u64) {
        self.seq += 1;
        let seq = self.seq;
        match queue {
            Queue::Small => {
                self.small.push_back((key.clone(), seq));
                self.small_bytes += size;
            }
            Queue::Main => {
                self.main.push_back((key.clone(), seq));
                self.main_bytes += size;
            }
        }
        self.meta.insert(
            key.clone(),
            Meta {
                queue,
                freq,
                size,
                seq,
            },
        );
    }

    /// Pops the live head of a queue (skipping entries removed since they were queued).
    fn pop(&mut self, queue: Queue) -> Option<(Key, Meta)> {
        loop {
            let (key, seq) = match queue {
                Queue::Small => self.small.pop_front()?,
                Queue::Main => self.main.pop_front()?,
            };
            if self
                .meta
                .get(&key)
                .is_some_and(|m| m.seq == seq && m.queue == queue)
            {
                let meta = self.meta.remove(&key)?;
                match queue {
                    Queue::Small => self.small_bytes -= meta.size,
                    Queue::Main => self.main_bytes -= meta.size,
                }
                return Some((key, meta));
            }
        }
    }

    fn remember_ghost(&mut self, key: Key) {
        let limit = self.meta.len().max(64);
        while self.ghost.len() >= limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
        if self.ghost_set.insert(key.clone()) {
            self.ghost.push_back(key);
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn insert(&mut self, key: &Key, size: u64) {
        self.remove(key);
        let queue = if self.ghost_set.remove(key) {
            Queue::Main
        } else {
            Queue::Small
        };
        self.push(key, queue, 0, size);
    }

    fn access(&mut self, key: &Key) {
        if let Some(m) = self.meta.get_mut(key) {
            m.freq = (m.freq + 1).min(3);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(m) = self.meta.remove(key) {
            match m.queue {
                Queue::Small => self.small_bytes -= m.size,
                Queue::Main => self.main_bytes -= m.size,
            }
        }
    }

    fn victim(&mut self) -> Option<Key> {
        loop {
            let total = self.small_bytes + self.main_bytes;
            let from_small =
                self.small_bytes > 0 && (self.small_bytes * 10 >= total || self.main_bytes == 0);
            if from_small {
                let (key, m) = self.pop(Queue::Small)?;
                if m.freq > 0 {
                    self.push(&key, Queue::Main, 0, m.size);
                } else {
                    self.remember_ghost(key.clone());
                    return Some(key);
                }
            } else {
                let (key, m) = self.pop(Queue::Main)?;
                if m.freq > 0 {
                    self.push(&key, Queue::Main, m.freq - 1, m.size);
                } else {
                    return Some(key);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.meta.len()
    }
}

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

/// Clairvoyant eviction over a fallback policy.
///
/// Every key is tracked by the fallback (S3-FIFO or LRU); `shard` keys are also
/// tracked here. A victim is chosen thus:
///
/// 1. a `shard` key that registered plans will never read again goes first;
/// 2. otherwise the fallback names its victim; if that is a `shard` key covered
///    by plans, the `shard` key read **furthest in the future** goes instead
///    (Belady's rule among shards; the fallback only decides between shards and
///    other keys);
/// 3. unplanned keys (other namespaces, datasets without a plan) leave as the
///    fallback says.
pub struct Clairvoyant {
    oracle: Arc<dyn NextUse>,
    fallback: Box<dyn EvictionPolicy>,
    keys: Vec<Key>,
    at: HashMap<Key, (usize, u64)>,
    rng: u64,
}

impl Clairvoyant {
    /// Wraps `fallback`, asking `oracle` about `shard` keys.
    pub fn new(oracle: Arc<dyn NextUse>, fallback: Box<dyn EvictionPolicy>) -> Self {
        Self {
            oracle,
            fallback,
            keys: Vec::new(),
            at: HashMap::new(),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn planned_ns(key: &Key) -> bool {
        key.namespace() == PLANNED_NS
    }

    fn when(&self, key: &Key) -> Planned {
        match key.page_owner() {
            Some(owner) => self.oracle.next_use(&owner),
            None => self.oracle.next_use(key),
        }
    }

    fn forget(&mut self, key: &Key) -> Option<u64> {
        let (i, size) = self.at.remove(key)?;
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
}

impl EvictionPolicy for Clairvoyant {
    fn insert(&mut self, key: &Key, size: u64) {
        self.fallback.insert(key, size);
        if Self::planned_ns(key) {
            self.forget(key);
            self.at.insert(key.clone(), (self.keys.len(), size));
            self.keys.push(key.clone());
        }
    }

    fn access(&mut self, key: &Key) {
        self.fallback.access(key);
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
        let v_planned = self.at.contains_key(&v) && !matches!(self.when(&v), Planned::Unplanned);
        match furthest {
            Some((w, _)) if v_planned && w != v => {
                // The fallback picked a shard; the shard read furthest ahead goes
                // instead, and the fallback's pick stays.
                let size = self.at.get(&v).map_or(0, |x| x.1);
                self.fallback.insert(&v, size);
                self.remove(&w);
                Some(w)
            }
            _ => {
                self.forget(&v);
                Some(v)
            }
        }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn k(i: u32) -> Key {
        Key::new("obj", "", i.to_be_bytes()).unwrap()
    }

    #[test]
    fn lru_evicts_least_recent() {
        let mut p = Lru::default();
        for i in 0..3 {
            p.insert(&k(i), 1);
        }
        p.access(&k(0));
        assert_eq!(p.victim(), Some(k(1)));
        assert_eq!(p.victim(), Some(k(2)));
        assert_eq!(p.victim(), Some(k(0)));
        assert_eq!(p.victim(), None);
    }

    #[test]
    fn s3fifo_keeps_hot_entries_over_a_scan() {
        let mut p = S3Fifo::default();
        for i in 0..5 {
            p.insert(&k(i), 1);
            p.access(&k(i));
        }
        // One-hit wonders stream through while the hot set keeps being read: every
        // victim is a scan key.
        for i in 100..300 {
            p.insert(&k(i), 1);
            for h in 0..5 {
                p.access(&k(h));
            }
            let v = p.victim().unwrap();
            assert!(v >= k(100), "hot key {v:?} evicted by a scan");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Access(u8),
        Remove(u8),
        Victim,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Insert),
            any::<u8>().prop_map(Op::Access),
            any::<u8>().prop_map(Op::Remove),
            Just(Op::Victim),
        ]
    }

    fn check(mut p: Box<dyn EvictionPolicy>, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut live = HashSet::new();
        for op in ops {
            match op {
                Op::Insert(i) => {
                    p.insert(&k(i.into()), u64::from(i) + 1);
                    live.insert(k(i.into()));
                }
                Op::Access(i) => p.access(&k(i.into())),
                Op::Remove(i) => {
                    p.remove(&k(i.into()));
                    live.remove(&k(i.into()));
                }
                Op::Victim => match p.victim() {
                    Some(v) => prop_assert!(live.remove(&v), "victim {v:?} was not live"),
                    None => prop_assert!(live.is_empty()),
                },
            }
            prop_assert_eq!(p.len(), live.len());
        }
        // Draining returns every live key exactly once.
        while let Some(v) = p.victim() {
            prop_assert!(live.remove(&v));
        }
        prop_assert!(live.is_empty());
        Ok(())
    }

    proptest! {
        #[test]
        fn lru_invariants(ops in proptest::collection::vec(op(), 0..300)) {
            check(EvictionKind::Lru.build(), ops)?;
        }

        #[test]
        fn s3fifo_invariants(ops in proptest::collection::vec(op(), 0..300)) {
            check(EvictionKind::S3fifo.build(), ops)?;
        }
    }

    struct Table(HashMap<Key, Planned>);

    impl NextUse for Table {
        fn next_use(&self, key: &Key) -> Planned {
            self.0.get(key).copied().unwrap_or(Planned::Unplanned)
        }
    }

    #[test]
    fn clairvoyant_evicts_the_shard_read_furthest_ahead() {
        let shard = |s: &str| Key::new("shard", "", s).unwrap();
        let table: HashMap<Key, Planned> = [
            (shard("a"), Planned::In(5.0)),
            (shard("b"), Planned::In(50.0)),
            (shard("c"), Planned::In(1.0)),
            (shard("gone"), Planned::Never),
        ]
        .into_iter()
        .collect();
        let mut p = Clairvoyant::new(Arc::new(Table(table)), Box::new(Lru::default()));
        let kv = Key::new("kv", "", "x").unwrap();
        for k in [
            shard("a"),
            shard("b"),
            kv.clone(),
            shard("c"),
            shard("gone"),
            shard("free"),
        ] {
            p.insert(&k, 1);
        }
        // A page of "b" is b's.
        let page = shard("b").page(7, 0);
        p.insert(&page, 1);
        assert_eq!(p.len(), 7);
        assert_eq!(p.victim(), Some(shard("gone")), "never read again: first");
        let mut order = Vec::new();
        while let Some(v) = p.victim() {
            order.push(v);
        }
        assert_eq!(order.len(), 6);
        let pos = |k: &Key| order.iter().position(|x| x == k).unwrap();
        // LRU alone would evict "a" first; among planned shards the order is by
        // next read, furthest first (b and its page, then a, then c).
        assert!(
            pos(&shard("b")).max(pos(&page)) < pos(&shard("a")),
            "{order:?}"
        );
        assert!(pos(&shard("a")) < pos(&shard("c")), "{order:?}");
        // Unplanned keys leave in the fallback's (LRU) order.
        assert!(pos(&kv) < pos(&shard("free")), "{order:?}");
        assert!(p.is_empty());
    }
}
