//! Least recently used.

use std::collections::{BTreeMap, HashMap};

use super::EvictionPolicy;
use crate::Key;

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
