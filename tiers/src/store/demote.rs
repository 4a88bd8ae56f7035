//! Demotion: entries that leave DRAM are written to NVMe (by the background
//! demoter, or at a clean close), under their key's lock, and what leaves the
//! cache tiers altogether (NVMe drops, removals).

use super::*;

/// Writes each entry DRAM evicted to NVMe, until the store is gone.
pub(super) async fn demote_loop(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<Evicted>,
) {
    while let Some(e) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.demote(e).await;
    }
}

impl Inner {
    /// Writes an entry that left DRAM to NVMe, if its namespace allows. `true` if
    /// stored. DRAM serves the entry until this is over.
    pub(super) async fn demote(&self, e: Evicted) -> bool {
        let (key, value) = (e.key.clone(), e.value.clone());
        let stored = self.demote_to_nvme(e, true).await;
        self.dram.demoted(&key, &value);
        stored
    }

    /// The lock of `key`'s stripe (see [`Inner::key_locks`]).
    pub(super) fn key_lock(&self, key: &Key) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        // A fixed hasher: the same key must always find the same stripe.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        &self.key_locks[(h.finish() as usize) % self.key_locks.len()]
    }

    /// The stripe of [`Inner::changes`] that counts `key`'s writes and deletes.
    pub(super) fn changes(&self, key: &Key) -> &tokio::sync::Mutex<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        &self.changes[(h.finish() as usize) % self.changes.len()]
    }

    /// `key`'s change count now: what a fill or promotion notes before it reads.
    pub(super) async fn change_count(&self, key: &Key) -> u64 {
        *self.changes(key).lock().await
    }

    /// Removes `key` from the cache tiers as a delete does: its change count moves
    /// first, so no fill under way stores what it read before. `true` if it was
    /// cached.
    pub(super) async fn remove_changed(&self, key: &Key) -> bool {
        let mut count = self.changes(key).lock().await;
        *count += 1;
        self.remove_cached(key).await
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
    pub(super) fn is_writing_through(&self, key: &Key) -> bool {
        self.writing.lock().contains_key(key)
    }

    /// Whether an entry evicted from DRAM has to be written to NVMe: its namespace
    /// demotes to NVMe, and NVMe does not hold it already (a fill from the origin
    /// goes to both tiers).
    pub(super) fn needs_demotion(&self, key: &Key) -> bool {
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
    pub(super) async fn demote_to_nvme(&self, e: Evicted, queued: bool) -> bool {
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

    pub(super) async fn remove_cached(&self, key: &Key) -> bool {
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

    pub(super) async fn remove_pages(&self, key: &Key, head: &Head) {
        for i in 0..head.page_count() {
            let pk = key.page(head.generation, i);
            while self.dram.unpin(&pk) {}
            let _ = self.dram.delete(&pk).await;
            if let Some(n) = &self.nvme {
                let _ = n.delete(&pk).await;
            }
        }
    }

    /// Drops an older record of `key` from NVMe (after a newer one went to DRAM).
    pub(super) async fn drop_from_nvme(&self, key: &Key) {
        if self.nvme.is_some() {
            let _g = self.key_lock(key).lock().await;
            self.drop_from_nvme_locked(key).await;
        }
    }

    /// [`Inner::drop_from_nvme`], the key's lock held.
    pub(super) async fn drop_from_nvme_locked(&self, key: &Key) {
        if let Some(n) = &self.nvme
            && n.contains(key).await.unwrap_or(false)
            && let Err(e) = n.delete(key).await
        {
            tracing::warn!(?key, error = %e, "dropping an older record from NVMe failed");
        }
    }
}
