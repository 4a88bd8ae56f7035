//! Fills: what the read path brings in from the origin (heads, runs of pages) and
//! stores into the cache tiers, within the namespace's policy and the clairvoyant
//! oracle's advice.

use super::*;

/// Fills of a large value's head tried again when a write or delete of a key of
/// the same change-count stripe landed while the head was read.
const HEAD_FILL_TRIES: usize = 4;

impl Inner {
    /// Reads a value's head from the origin and caches it: small values whole (one
    /// read), large ones as a payload-less head whose pages are fetched on demand.
    pub(super) async fn fill_head(
        self: &Arc<Self>,
        key: &Key,
        policy: &NamespacePolicy,
    ) -> Result<Option<Head>> {
        for _ in 0..HEAD_FILL_TRIES {
            if let Some(filled) = self.fill_head_once(key, policy).await? {
                return Ok(filled);
            }
        }
        Err(Error::Changed {
            target: key.display_path(),
            detail: format!(
                "written, deleted or grown while its head was read from the origin, {HEAD_FILL_TRIES} times in a row"
            ),
        })
    }

    /// One try of [`Self::fill_head`]; `None` when a write or delete (of this
    /// key, or of another of its change-count stripe) landed meanwhile and the
    /// large value's head was neither stored nor found cached, or when a small
    /// value grew past a page while it was read: try again.
    async fn fill_head_once(
        self: &Arc<Self>,
        key: &Key,
        policy: &NamespacePolicy,
    ) -> Result<Option<Option<Head>>> {
        let Some(origin) = self.source(key, policy) else {
            return Ok(Some(None));
        };
        let ostats = origin.stats().ns(key.namespace());
        // Noted before the origin is read: a write or delete of the key from now
        // on makes what is read here older than what was acknowledged.
        let seen = self.change_count(key).await;
        let Some((size, version)) = origin.stat(key).await? else {
            Counters::inc(&ostats.misses);
            return Ok(Some(None));
        };
        // The value's pages are bound to the version the head is read at: a page
        // read later at another version is refused (`read_origin_pages`), and the
        // whole value is read again, never a mix of two versions.
        let generation_of =
            |version: Option<&str>| version.map_or_else(rand::random::<u64>, Source::generation_of);
        let mut head = Head {
            generation: generation_of(version.as_deref()),
            total_len: size,
            page_size: self.page_size,
            created_ms: now_ms(),
            value_crc: None,
            inline: None,
        };
        let payload = if size <= u64::from(self.page_size) {
            Counters::inc(&ostats.origin_reads);
            // At most one byte past a page: a value that grew since its size was
            // asked is not downloaded whole to find out.
            let opts = GetOptions {
                range: Some(ByteRange {
                    offset: 0,
                    length: Some(u64::from(self.page_size) + 1),
                }),
                deadline: None,
            };
            let Some((v, version)) = origin.get_versioned(key, &opts).await? else {
                return Ok(None);
            };
            if v.len() as u64 > u64::from(self.page_size) {
                // Grew past a page since its size was asked: read as a large
                // value, from its size again (the next try).
                return Ok(None);
            }
            // (What was read is one version: the head says which.)
            head.generation = generation_of(version.as_deref());
            head.value_crc = Some(crc32c::crc32c(&v));
            head.total_len = v.len() as u64;
            Some(v)
        } else {
            None
        };
        Counters::inc(&ostats.hits);
        let rec = if payload.is_some() {
            let len = record::HEAD_LEN + payload.as_ref().map_or(0, Bytes::len);
            let Some(mut rec) = self.fill_record(key, len, policy) else {
                // Read later than everything DRAM would give up for it: served, and
                // kept on NVMe only.
                let mut rec = Record::Heap(vec![0u8; len]);
                write_head_record(&mut rec, &head, payload.as_deref());
                let count = self.changes(key).lock().await;
                if *count == seen {
                    self.bypass(key, rec, policy).await;
                }
                head.inline = payload;
                return Ok(Some(Some(head)));
            };
            write_head_record(&mut rec, &head, payload.as_deref());
            rec
        } else {
            self.encode_head(&head, None, policy)?
        };
        head.inline = payload.or_else(|| (size == 0).then(Bytes::new));
        // Stored only if no write or delete of the key was acknowledged since the
        // read began, the count's stripe held while it is stored.
        let count = self.changes(key).lock().await;
        let unchanged = *count == seen;
        if head.inline.is_some() {
            // (Changed: served to this reader, which overlapped the write, and
            // not kept.)
            if unchanged {
                let _ = self.keep_fill(key, rec, policy, Some(count)).await;
            }
        } else {
            // A payload-less head must be cached: its pages are checked against
            // it (a missing head reads as a replaced value). Failing costs only a
            // size request on retry. Written or deleted meanwhile: the reader,
            // which overlapped that, gets what is cached now (the new value, or
            // none).
            if !unchanged {
                drop(count);
                // (The stripe is shared: the change may be another key's.)
                return Ok(self.cached_head(key).await.map(Some));
            }
            let stored = self.store_record(key, rec, policy).await?;
            drop(count);
            self.fill_nvme(key, stored, policy).await;
        }
        Ok(Some(Some(head)))
    }

    pub(super) fn encode_head(
        &self,
        head: &Head,
        payload: Option<&[u8]>,
        policy: &NamespacePolicy,
    ) -> Result<Record> {
        let len = record::HEAD_LEN + payload.map_or(0, <[u8]>::len);
        let mut rec = self.alloc_record(len, policy);
        write_head_record(&mut rec, head, payload);
        Ok(rec)
    }

    /// A buffer for a record filled from the origin, allocated once: in the DRAM
    /// arena when there is room or the eviction policy admits the key, on the heap
    /// when DRAM cannot take it; `None` when DRAM declines it (Belady's bypass).
    pub(super) fn fill_record(
        &self,
        key: &Key,
        len: usize,
        policy: &NamespacePolicy,
    ) -> Option<Record> {
        if !policy.tiers.dram {
            return Some(Record::Heap(vec![0u8; len]));
        }
        match self.dram.reserve_for(key, len) {
            Ok(Some(buf)) => Some(Record::Arena(buf)),
            Ok(None) => None,
            Err(_) => Some(Record::Heap(vec![0u8; len])),
        }
    }

    /// A buffer for a record: in the DRAM arena when the namespace may live there and
    /// room can be made, on the heap otherwise.
    pub(super) fn alloc_record(&self, len: usize, policy: &NamespacePolicy) -> Record {
        if policy.tiers.dram
            && let Ok(buf) = self.dram.reserve(len)
        {
            return Record::Arena(buf);
        }
        Record::Heap(vec![0u8; len])
    }

    /// Stores a finished record in the highest tier the policy allows, and drops any
    /// older record of the key from the other tier, so that the older value is never
    /// served in place of this one (a pinned copy in a full DRAM, or a copy on NVMe
    /// that would resurface once this one leaves DRAM without being demoted).
    ///
    /// Returns the record if it went to DRAM (`None`: it went to NVMe).
    pub(super) async fn store_record(
        &self,
        key: &Key,
        rec: Record,
        policy: &NamespacePolicy,
    ) -> Result<Option<Bytes>> {
        let v = match rec {
            Record::Arena(buf) => {
                let frozen = buf.freeze();
                self.dram.insert_frozen(key, frozen.clone())?;
                self.drop_from_nvme(key).await;
                return Ok(Some(frozen));
            }
            Record::Heap(v) => Bytes::from(v),
        };
        if policy.tiers.dram
            && self
                .dram
                .put(key, v.clone(), &PutOptions::default())
                .await
                .is_ok()
        {
            self.drop_from_nvme(key).await;
            return Ok(Some(v));
        }
        // Not in DRAM: an older copy there (pinned, say) must go, whatever happens
        // below (a write-through origin already has the new value).
        while self.dram.unpin(key) {}
        self.dram.delete(key).await?;
        let Some(nvme) = self.nvme.as_ref().filter(|_| policy.tiers.nvme) else {
            return Err(Error::Exhausted {
                what: "cache tiers".into(),
                detail: format!(
                    "no tier of namespace {:?} has room for {} bytes",
                    policy.name,
                    v.len()
                ),
                retry_after: Some(Duration::from_millis(100)),
            });
        };
        let _g = self.key_lock(key).lock().await;
        match nvme.put(key, v, &PutOptions::default()).await? {
            PutOutcome::Stored => Ok(None),
            PutOutcome::Dropped => Err(Error::Exhausted {
                what: "nvme tier".into(),
                detail: "the write buffer was full; the write was dropped".into(),
                retry_after: Some(Duration::from_millis(100)),
            }),
        }
    }

    /// Caches a record of bytes just read from the origin (an inline head or a
    /// page), in DRAM and NVMe. Best effort: the bytes are served whatever happens here, so a cache with no room left
    /// passes reads through instead of failing them (a failure would send the
    /// client back to retry, and the origin would be read twice). What could not
    /// be kept is counted in `dropped_writes`.
    /// `count`, the key's change-count stripe when the caller holds it, is let go
    /// once the record is stored (the NVMe copy checks on its own that the record
    /// is still the key's).
    pub(super) async fn keep_fill(
        &self,
        key: &Key,
        rec: Record,
        policy: &NamespacePolicy,
        count: Option<tokio::sync::MutexGuard<'_, u64>>,
    ) -> Option<Bytes> {
        let stored = self.store_record(key, rec, policy).await;
        drop(count);
        match stored {
            Ok(stored) => {
                self.fill_nvme(key, stored.clone(), policy).await;
                stored
            }
            Err(e) => {
                Counters::inc(&self.dram.stats().ns(key.namespace()).dropped_writes);
                match e {
                    Error::Exhausted { .. } => {
                        tracing::debug!(?key, error = %e, "origin fill served, not cached");
                    }
                    _ => tracing::warn!(?key, error = %e, "origin fill served, not cached"),
                }
                None
            }
        }
    }

    /// Keeps a fill that DRAM declined on NVMe only (when allowed), dropping any
    /// older copy from DRAM so it is never served in place of this one.
    pub(super) async fn bypass(&self, key: &Key, rec: Record, policy: &NamespacePolicy) {
        Counters::inc(&self.dram.stats().ns(key.namespace()).bypasses);
        let rec = match rec {
            Record::Heap(v) => Bytes::from(v),
            Record::Arena(buf) => buf.freeze(),
        };
        let Some(nvme) = self.nvme.as_ref().filter(|_| policy.tiers.nvme) else {
            return;
        };
        let _g = self.key_lock(key).lock().await;
        // A write-through of the key under way: this fill may be of the older value.
        if self.is_writing_through(key) {
            return;
        }
        if let Err(e) = nvme.put(key, rec, &PutOptions::default()).await {
            tracing::warn!(?key, error = %e, "NVMe write of a bypassed fill failed");
        }
    }

    /// Writes a record just filled from the origin (and stored in DRAM) to NVMe as
    /// well, when the namespace may live there: a fill lands in both tiers, so
    /// leaving DRAM costs no write and never a second origin read. The write runs
    /// in a task of its own, so the fill's readers do not wait for the disk (a
    /// slow or hung NVMe never slows a miss); at most [`NVME_FILLS`] at once.
    /// Best effort: a write dropped, failed or given no place leaves the DRAM
    /// copy (demotion will write it when it leaves DRAM).
    ///
    /// [`NVME_FILLS`]: super::NVME_FILLS
    pub(super) async fn fill_nvme(
        &self,
        key: &Key,
        stored: Option<Bytes>,
        policy: &NamespacePolicy,
    ) {
        let (Some(rec), Some(_)) = (stored, &self.nvme) else {
            return;
        };
        if !policy.tiers.nvme {
            return;
        }
        let Ok(slot) = self.nvme_fill_slots.clone().try_acquire_owned() else {
            tracing::debug!(?key, "NVMe copy of a fill skipped: the disk is behind");
            return;
        };
        let Some(me) = self.me.upgrade() else { return };
        let key = key.clone();
        self.nvme_fills.spawn(async move {
            let _slot = slot;
            me.fill_nvme_now(&key, rec).await;
        });
    }

    /// [`Inner::fill_nvme`]'s write.
    async fn fill_nvme_now(&self, key: &Key, rec: Bytes) {
        let Some(nvme) = &self.nvme else { return };
        let _g = self.key_lock(key).lock().await;
        // Replaced in DRAM since the fill (a write-through of the key stored a newer
        // value, or is under way): the filled record is the older value's.
        // (A page belongs to one generation and is never replaced.)
        let current = || async {
            matches!(self.dram.get(key, &GetOptions::default()).await,
                Ok(Some(r)) if r.as_ptr() == rec.as_ptr() && r.len() == rec.len())
        };
        if !key.is_page() && (self.is_writing_through(key) || !current().await) {
            return;
        }
        match nvme.put(key, rec, &PutOptions::default()).await {
            Ok(PutOutcome::Stored) => {}
            Ok(PutOutcome::Dropped) => tracing::debug!(?key, "NVMe fill dropped (buffer full)"),
            Err(e) => tracing::warn!(?key, error = %e, "NVMe fill failed"),
        }
    }

    /// The pages `first..=last` of a value, each from the cache if there, the
    /// others read from the origin in one request (from the first missing page to
    /// the last) and filled into the cache.
    pub(super) async fn fill_run(
        &self,
        entry: &Entry,
        first: u32,
        last: u32,
        policy: &NamespacePolicy,
    ) -> Result<Arc<[Bytes]>> {
        let head = &entry.head;
        let mut pages: Vec<Option<Bytes>> = Vec::with_capacity((last - first + 1) as usize);
        for i in first..=last {
            // A flight that ended between a reader's miss and this one filled some.
            pages.push(
                self.cached_page_checked(entry, i, policy)
                    .await
                    .ok()
                    .flatten(),
            );
        }
        let missing = |p: &Option<Bytes>| p.is_none();
        let (Some(lo), Some(hi)) = (
            pages.iter().position(missing),
            pages.iter().rposition(missing),
        ) else {
            return Ok(pages.into_iter().flatten().collect());
        };
        let (lo, hi) = (first + lo as u32, first + hi as u32);
        let data = self.read_origin_pages(entry, lo, hi, policy).await?;
        let ps = u64::from(head.page_size);
        for i in lo..=hi {
            let at = (u64::from(i - lo) * ps) as usize;
            let page = data.slice(at..(at + ps as usize).min(data.len()));
            let slot = &mut pages[(i - first) as usize];
            if slot.is_none() {
                // Served from where it was stored when that is DRAM: the arena, so
                // a reader over shared memory or RDMA is lent it instead of sent it.
                let stored = self.fill_page(entry, i, &page, policy).await;
                *slot = Some(stored.unwrap_or(page));
            }
        }
        Ok(pages.into_iter().flatten().collect())
    }

    /// The bytes of pages `lo..=hi` of a value, in one origin read.
    pub(super) async fn read_origin_pages(
        &self,
        entry: &Entry,
        lo: u32,
        hi: u32,
        policy: &NamespacePolicy,
    ) -> Result<Bytes> {
        let Some(origin) = self.source(&entry.key, policy) else {
            return Err(Error::NotFound {
                key: entry.key.display_path(),
            });
        };
        let head = &entry.head;
        let ps = u64::from(head.page_size);
        let offset = u64::from(lo) * ps;
        let len = (u64::from(hi) + 1) * ps;
        let len = len.min(head.total_len) - offset;
        Counters::inc(&origin.stats().ns(entry.key.namespace()).origin_reads);
        let range = ByteRange {
            offset,
            length: Some(len),
        };
        // The head is what tells a replaced value (below): hold it in DRAM while
        // the pages are read and stored, so that making room for them cannot
        // evict it.
        let _head = (!origin.immutable()).then(|| HeadPin::new(&self.dram, &entry.key));
        let (data, version) = origin
            .get_versioned(
                &entry.key,
                &GetOptions {
                    range: Some(range),
                    deadline: None,
                },
            )
            .await?
            .ok_or_else(|| Error::NotFound {
                key: entry.key.display_path(),
            })?;
        // Bytes of another version than the head's, for a head filled from the
        // origin (its generation is the version's hash; a put's head, which has
        // a checksum of the whole value, is bound to no origin version): the
        // origin's value was rewritten since the head was read. Never served as
        // its pages: the caller drops the head and reads the value afresh.
        if head.value_crc.is_none()
            && let Some(v) = version
            && Source::generation_of(&v) != head.generation
        {
            self.drop_stale_head(entry).await;
            return Err(Error::Changed {
                target: entry.key.display_path(),
                detail: format!(
                    "pages {lo}..={hi} are at another version of the origin's value than its cached head"
                ),
            });
        }
        if data.len() as u64 != len {
            if !origin.immutable() {
                // Every reader of the head, not only the one that retries, must
                // stop using it.
                self.drop_stale_head(entry).await;
                return Err(Error::Changed {
                    target: entry.key.display_path(),
                    detail: format!(
                        "the origin returned {} bytes for pages {lo}..={hi} of a cached head of {} bytes, expected {len}",
                        data.len(),
                        head.total_len
                    ),
                });
            }
            return Err(Error::Corrupt {
                tier: origin.name(),
                reason: format!(
                    "origin returned {} bytes for pages {lo}..={hi}, expected {len}",
                    data.len()
                ),
            });
        }
        // A write-through put writes the origin, then the new pages and head, then
        // drops the old pages. If the head changed, these bytes may be the new
        // value's: never serve (or cache) them as pages of the old one.
        if !origin.immutable() && self.replaced(entry).await {
            return Err(Error::NotFound {
                key: format!(
                    "{} (replaced while pages {lo}..={hi} were read)",
                    entry.key.display_path()
                ),
            });
        }
        Ok(data)
    }

    /// Caches page `index` of a value, just read from the origin. Returns the
    /// page's bytes where they were stored in DRAM (`None` when they were not).
    pub(super) async fn fill_page(
        &self,
        entry: &Entry,
        index: u32,
        data: &[u8],
        policy: &NamespacePolicy,
    ) -> Option<Bytes> {
        let pk = entry.key.page(entry.head.generation, index);
        let len = record::PAGE_HEADER_LEN + data.len();
        let fill = self.fill_record(&pk, len, policy);
        let declined = fill.is_none();
        let mut rec = fill.unwrap_or_else(|| Record::Heap(vec![0u8; len]));
        let buf = rec.as_mut_slice();
        buf[record::PAGE_HEADER_LEN..].copy_from_slice(data);
        record::write_page(buf, entry.head.generation, index);
        if declined {
            self.bypass(&pk, rec, policy).await;
            None
        } else {
            let stored = self.keep_fill(&pk, rec, policy, None).await?;
            Some(stored.slice(record::PAGE_HEADER_LEN..))
        }
    }
}

/// Writes a head record (header, then `payload`) into `rec`, sized for both.
pub(super) fn write_head_record(rec: &mut Record, head: &Head, payload: Option<&[u8]>) {
    let buf = rec.as_mut_slice();
    buf[record::HEAD_LEN..].copy_from_slice(payload.unwrap_or_default());
    record::write_head(buf, head);
}

impl Record {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Record::Arena(b) => b.as_slice(),
            Record::Heap(v) => v,
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Record::Arena(b) => b.as_mut_slice(),
            Record::Heap(v) => v,
        }
    }
}
