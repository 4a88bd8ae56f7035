//! S3-FIFO (Yang et al., SOSP'23).

use std::collections::{HashMap, HashSet, VecDeque};

use super::EvictionPolicy;
use crate::Key;

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
