//! Leases: arena memory a same-host (or RDMA) client is reading.
//!
//! A lease holds clones of the value's `Bytes`. Arena extents return to the free
//! list only when their last `Bytes` is dropped, so while a lease lives, eviction or
//! deletion of the value cannot hand its memory to another writer. A lease ends when
//! the client releases it or when its time is up; a client that died releases
//! nothing, so expiry is what guarantees that nothing leaks.
//!
//! Lease ids are random, not counted: RELEASE is accepted on any connection (a
//! client's release rides on whichever of its connections sends next), so an id
//! must not be guessable by another client, which could otherwise end a lease that a
//! reader still copies under. Each lease counts at least [`MIN_CHARGE`] against the
//! byte budget, so that many tiny leases cannot grow the table without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

/// The least a lease counts against the byte budget (its bookkeeping, and a page).
pub(crate) const MIN_CHARGE: u64 = 4096;

/// The lease table of one server.
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    max_bytes: u64,
    table: Mutex<Table>,
    granted: AtomicU64,
    expired: AtomicU64,
    /// Grants refused for the byte budget (the read was answered inline).
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    bytes: u64,
    map: HashMap<u64, Held>,
}

#[derive(Debug)]
struct Held {
    deadline: Instant,
    bytes: u64,
    _values: Vec<Bytes>,
}

impl Leases {
    /// A table whose leases live `ttl` and hold at most `max_bytes` in all.
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        Self {
            ttl,
            max_bytes,
            table: Mutex::new(Table::default()),
            granted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// How long a lease lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Grants a lease on `values`, charged `pinned` bytes: what holding them keeps
    /// from the arena (the whole records they are slices of: a 1-byte range of a
    /// page pins the page), at least their length. `None` when it would put the
    /// table over its byte budget (the caller answers inline instead). The id is
    /// random and never 0.
    pub fn grant(&self, values: Vec<Bytes>, pinned: u64) -> Option<u64> {
        let len: u64 = values.iter().map(|v| v.len() as u64).sum();
        let bytes = len.max(pinned).max(MIN_CHARGE);
        let now = Instant::now();
        let mut expired = Vec::new();
        let granted = {
            let mut t = self.table.lock();
            if t.bytes + bytes > self.max_bytes {
                expired = Self::sweep_locked(&mut t, now);
            }
            (t.bytes + bytes <= self.max_bytes).then(|| {
                let id = loop {
                    let id = rand::random::<u64>();
                    if id != 0 && !t.map.contains_key(&id) {
                        break id;
                    }
                };
                t.bytes += bytes;
                t.map.insert(
                    id,
                    Held {
                        deadline: now + self.ttl,
                        bytes,
                        _values: values,
                    },
                );
                id
            })
        };
        self.expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        if granted.is_some() {
            self.granted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        drop(expired); // outside the lock: returns extents to the arena
        granted
    }

    /// Ends a lease. `false` if it was unknown (released or expired already).
    pub fn release(&self, id: u64) -> bool {
        let held = {
            let mut t = self.table.lock();
            let Some(h) = t.map.remove(&id) else {
                return false;
            };
            t.bytes -= h.bytes;
            h
        };
        drop(held); // outside the lock: may return extents to the arena
        true
    }

    /// Drops every expired lease; returns how many.
    pub fn sweep(&self) -> usize {
        let expired = {
            let mut t = self.table.lock();
            Self::sweep_locked(&mut t, Instant::now())
        };
        self.expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        expired.len()
    }

    fn sweep_locked(t: &mut Table, now: Instant) -> Vec<Held> {
        let ids: Vec<u64> = t
            .map
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(h) = t.map.remove(&id) {
                t.bytes -= h.bytes;
                out.push(h);
            }
        }
        out
    }

    /// Leases granted, and leases that expired (their client never released them:
    /// it died, or was too slow), since the table was made.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.granted.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
        )
    }

    /// Grants refused because the byte budget was spent (those reads were
    /// answered inline).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Live leases and the bytes they count against the budget (each at least
    /// `MIN_CHARGE`).
    pub fn usage(&self) -> (usize, u64) {
        let t = self.table.lock();
        (t.map.len(), t.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_release_and_expiry() {
        let page = MIN_CHARGE as usize;
        let l = Leases::new(Duration::from_millis(30), 2 * MIN_CHARGE);
        let a = l.grant(vec![Bytes::from(vec![1; page + 1])], 0).unwrap();
        assert!(l.grant(vec![Bytes::from(vec![1; page])], 0).is_none());
        assert!(l.release(a));
        assert!(!l.release(a));
        let _b = l.grant(vec![Bytes::from(vec![1; 2 * page])], 0).unwrap();
        assert_eq!(l.usage(), (1, 2 * MIN_CHARGE));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(l.sweep(), 1);
        assert_eq!(l.usage(), (0, 0));
        assert_eq!(l.counts(), (2, 1));
    }

    /// Tiny leases count a page each, so their number is bounded by the budget.
    #[test]
    fn tiny_leases_count_a_page_each() {
        let l = Leases::new(Duration::from_secs(60), 8 * MIN_CHARGE);
        let ids: Vec<u64> = (0..8)
            .map(|_| l.grant(vec![Bytes::from_static(b"x")], 0).unwrap())
            .collect();
        assert!(l.grant(vec![Bytes::from_static(b"x")], 0).is_none());
        assert_eq!(l.usage(), (8, 8 * MIN_CHARGE));
        // Ids are random: not a count another client could walk.
        assert!(ids.iter().all(|&id| id != 0));
        assert!(ids.windows(2).any(|w| w[1] != w[0].wrapping_add(1)));
    }
}
