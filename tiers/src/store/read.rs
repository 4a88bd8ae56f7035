//! The read path: a value's head looked up top-down (DRAM, NVMe, the origin) and
//! promoted, its pages read the same way, every NVMe record verified before it is
//! served. Where the cluster's peer reads will go.

use super::*;

impl Inner {
    /// Whether a key's head is in DRAM or NVMe.
    pub(super) async fn cached(&self, key: &Key) -> bool {
        if self.dram.contains(key).await.unwrap_or(false) {
            return true;
        }
        match &self.nvme {
            Some(n) => n.contains(key).await.unwrap_or(false),
            None => false,
        }
    }

    /// The head of a cached value (no origin access, no promotion).
    pub(super) async fn cached_head(&self, key: &Key) -> Option<Head> {
        let opts = GetOptions::default();
        if let Ok(Some(rec)) = self.dram.get(key, &opts).await {
            return record::decode_head(&rec, Payload::Trust).ok();
        }
        let rec = self.nvme.as_ref()?.get(key, &opts).await.ok()??;
        record::decode_head(&rec, Payload::Verify).ok()
    }

    /// Whether the value `entry` was read from has since been replaced or removed
    /// from the cache tiers (its cached head is gone or of another generation).
    pub(super) async fn replaced(&self, entry: &Entry) -> bool {
        self.cached_head(&entry.key)
            .await
            .is_none_or(|h| h.generation != entry.head.generation)
    }

    /// Drops `entry`'s head (and pages) from the cache tiers if it is still the
    /// cached one.
    pub(super) async fn drop_stale_head(&self, entry: &Entry) {
        if self
            .cached_head(&entry.key)
            .await
            .is_some_and(|h| h.generation == entry.head.generation)
        {
            tracing::warn!(key = ?entry.key, "cached head no longer matches the origin; dropped");
            self.remove_cached(&entry.key).await;
        }
    }

    pub(super) fn expired(policy: &NamespacePolicy, head: &Head) -> bool {
        policy
            .ttl
            .is_some_and(|ttl| now_ms().saturating_sub(head.created_ms) > ttl.as_millis() as u64)
    }

    pub(super) async fn lookup(
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
            let seen = self.change_count(key).await;
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
                            self.promote_head(key, &rec, seen);
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

    /// [`Self::promote`] of a head read from NVMe, unless the key was written or
    /// deleted since (its change count is no longer `seen`, or moving now): it
    /// would put an older value over a newer one.
    pub(super) fn promote_head(&self, key: &Key, rec: &Bytes, seen: u64) {
        if let Ok(count) = self.changes(key).try_lock()
            && *count == seen
        {
            self.promote(key, rec);
        }
    }

    /// Copies a record into DRAM (best effort: a full DRAM just skips promotion).
    pub(super) fn promote(&self, key: &Key, rec: &Bytes) {
        if let Ok(mut buf) = self.dram.reserve(rec.len()) {
            buf.as_mut_slice().copy_from_slice(rec);
            let _ = self.dram.insert_frozen(key, buf.freeze());
        }
    }

    /// Where origin reads of `key` go, if its namespace has an origin: its own
    /// ([`TieredStore::set_namespace_origin`]), which serves it even where the
    /// policy names none (a cluster node's peers, for a cache-only namespace),
    /// else the configured origin when the policy says so.
    pub(super) fn source(&self, key: &Key, policy: &NamespacePolicy) -> Option<Source<'_>> {
        if let Some(o) = self.ns_origins.read().get(key.namespace()) {
            return Some(Source::Namespace(o.clone()));
        }
        if policy.origin != OriginKind::Origin {
            return None;
        }
        self.origin.as_ref().map(Source::Tier)
    }

    pub(super) async fn read_page(
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
    pub(super) async fn read_pages(
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
    pub(super) async fn cached_page_checked(
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
}

/// The part of a page (whose first byte is at `base`) inside `[start, end)`.
pub(super) fn clip(page: Bytes, base: u64, start: u64, end: u64) -> Bytes {
    let from = start.max(base) - base;
    let to = (base + page.len() as u64).min(end) - base;
    page.slice(from as usize..to as usize)
}

/// A pin on a head in DRAM (none if it is not there), released on drop.
pub(super) struct HeadPin<'a> {
    dram: &'a DramTier,
    key: Key,
    value: Option<Bytes>,
}

impl<'a> HeadPin<'a> {
    pub(super) fn new(dram: &'a DramTier, key: &Key) -> Self {
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
