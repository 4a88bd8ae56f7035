//! Two-phase puts: reserve, write, commit.

use std::sync::Arc;

use crate::Key;
use crate::error::{Error, Result};
use crate::policy::{NamespacePolicy, OriginKind, WritePolicy};

use super::record::{self, HEAD_LEN, Head, PAGE_HEADER_LEN};
use super::{Inner, Receipt, Record, now_ms};

/// How long a commit waits for the demoter to catch up before it answers
/// `Exhausted` (a `Busy` answer, which clients retry within their deadline).
const DEMOTION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A put in progress. Write exactly the reserved length, then [`Self::commit`].
/// Dropping it (a client that disconnected, a truncated stream) abandons the put:
/// nothing was made visible, and its buffers return to the arena.
pub struct Reservation {
    inner: Arc<Inner>,
    key: Key,
    policy: NamespacePolicy,
    len: u64,
    expected_crc: Option<u32>,
    generation: u64,
    page_size: u64,
    /// Sealed page records (multi-page values only).
    pages: Vec<Record>,
    /// The record being filled, and how many payload bytes it holds.
    current: Option<(Record, usize)>,
    written: u64,
    crc: u32,
    /// Records were allocated up front and filled in place.
    in_place: bool,
    /// A replica's copy: the origin is not written ([`Self::replica`]).
    replica: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("len", &self.len)
            .field("written", &self.written)
            .finish()
    }
}

impl Reservation {
    pub(super) fn new(
        inner: Arc<Inner>,
        key: Key,
        policy: NamespacePolicy,
        len: u64,
        expected_crc: Option<u32>,
    ) -> Self {
        let page_size = u64::from(inner.page_size);
        Self {
            inner,
            key,
            policy,
            len,
            expected_crc,
            generation: rand::random(),
            page_size,
            pages: Vec::new(),
            current: None,
            written: 0,
            crc: 0,
            in_place: false,
            replica: false,
        }
    }

    /// Marks this put as a replica's copy of a value another node took: stored in
    /// the cache tiers only, since that node wrote it through to the origin (a
    /// write-through namespace's origin is written once per put, not once per
    /// copy).
    pub fn replica(&mut self) {
        self.replica = true;
    }

    /// The declared length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the declared length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets (or replaces) the CRC-32C the commit must match: for protocols that send
    /// the checksum with the commit rather than with the reservation.
    pub fn expect_crc(&mut self, crc32c: u32) {
        self.expected_crc = Some(crc32c);
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn single(&self) -> bool {
        self.len <= self.page_size
    }

    fn header_len(&self) -> usize {
        if self.single() {
            HEAD_LEN
        } else {
            PAGE_HEADER_LEN
        }
    }

    /// Appends bytes. Refuses to write past the reserved length.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if self.written + data.len() as u64 > self.len {
            return Err(Error::Incomplete {
                expected: self.len,
                actual: self.written + data.len() as u64,
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        while !data.is_empty() {
            let hl = self.header_len();
            if self.current.is_none() {
                let page_len = (self.len - self.written).min(self.page_size) as usize;
                self.current = Some((self.inner.alloc_record(hl + page_len, &self.policy), 0));
            }
            let Some((rec, filled)) = self.current.as_mut() else {
                break;
            };
            let buf = rec.as_mut_slice();
            let room = buf.len() - hl - *filled;
            let n = room.min(data.len());
            buf[hl + *filled..hl + *filled + n].copy_from_slice(&data[..n]);
            *filled += n;
            self.written += n as u64;
            data = &data[n..];
            if *filled == buf.len() - hl && !self.single() {
                let (mut rec, _) = self.current.take().unwrap_or_else(|| unreachable!());
                let index = self.pages.len() as u32;
                record::write_page(rec.as_mut_slice(), self.generation, index);
                self.pages.push(rec);
            }
        }
        Ok(())
    }

    /// Allocates every record of the value in the DRAM arena up front, for a writer
    /// that fills them in place: a shared-memory or RDMA client writing through its
    /// mapping, or a socket read straight into the arena. Returns the arena extents
    /// (offset, length) of the payloads, in value order. Then fill them and call
    /// [`Self::commit_filled`]. Fails when the arena has no room for the value (the
    /// caller falls back to [`Self::write`]) or when bytes were already written.
    pub fn prepare_in_place(&mut self) -> Result<Vec<(u64, u64)>> {
        if self.written != 0 || self.current.is_some() || !self.pages.is_empty() {
            return Err(Error::Config {
                field: "reservation".into(),
                reason: "prepare_in_place after write on the same reservation".into(),
            });
        }
        let hl = self.header_len();
        let mut extents = Vec::new();
        let mut left = self.len;
        loop {
            let page_len = left.min(self.page_size);
            let buf = self
                .inner
                .dram
                .reserve(hl + page_len as usize)
                .map_err(|_| Error::Exhausted {
                    what: "the DRAM arena".into(),
                    detail: format!("no room to place {} bytes in shared memory", self.len),
                    retry_after: None,
                })?;
            // The writer can read what it is given (through its mapping, or a
            // commit's outcome): never what the arena held before.
            let mut buf = buf;
            buf.as_mut_slice()[hl..].fill(0);
            extents.push((buf.offset() + hl as u64, page_len));
            self.pages.push(Record::Arena(buf));
            left -= page_len;
            if left == 0 {
                break;
            }
        }
        self.written = self.len;
        self.in_place = true;
        Ok(extents)
    }

    /// Whether [`Self::prepare_in_place`] placed this reservation.
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }

    /// The payloads prepared by [`Self::prepare_in_place`], for writing in place.
    pub fn in_place_slices(&mut self) -> Vec<&mut [u8]> {
        let hl = self.header_len();
        if !self.in_place {
            return Vec::new();
        }
        self.pages
            .iter_mut()
            .map(|r| &mut r.as_mut_slice()[hl..])
            .collect()
    }

    /// Commits a reservation filled in place: computes the CRC-32C of what is in
    /// the arena now, checks it against `crc32c` (a mismatch abandons the put), seals
    /// the page records and commits as [`Self::commit`] does.
    pub async fn commit_filled(mut self, crc32c: u32) -> Result<Receipt> {
        if !self.in_place {
            return Err(Error::Config {
                field: "reservation".into(),
                reason: "commit_filled without prepare_in_place".into(),
            });
        }
        let hl = self.header_len();
        let mut crc = 0;
        for r in &self.pages {
            crc = crc32c::crc32c_append(crc, &r.as_slice()[hl..]);
        }
        self.crc = crc;
        self.expected_crc = Some(crc32c);
        if self.single() {
            // One page: the record is the head record, sealed by commit.
            if let Some(rec) = self.pages.pop() {
                self.current = Some((rec, self.len as usize));
            }
        } else {
            for (i, rec) in self.pages.iter_mut().enumerate() {
                record::write_page(rec.as_mut_slice(), self.generation, i as u32);
            }
        }
        self.commit().await
    }

    /// Verifies length and checksum, writes through to the origin if the policy says
    /// so, stores the pages, then the head. Returns the value's receipt.
    pub async fn commit(mut self) -> Result<Receipt> {
        if self.written != self.len {
            return Err(Error::Incomplete {
                expected: self.len,
                actual: self.written,
            });
        }
        // What this write evicted waits for the demoter like everything else:
        // a writer faster than NVMe waits here, instead of growing the queue.
        self.inner.dram.demotion_room(DEMOTION_WAIT).await?;
        if let Some(expected) = self.expected_crc
            && expected != self.crc
        {
            return Err(Error::ChecksumMismatch {
                what: self.key.display_path(),
                expected,
            });
        }
        let head = Head {
            generation: self.generation,
            total_len: self.len,
            page_size: self.page_size as u32,
            created_ms: now_ms(),
            value_crc: Some(self.crc),
            inline: None,
        };
        let inner = self.inner.clone();
        let old = inner.cached_head(&self.key).await;
        let head_rec = if self.single() {
            let mut rec = match self.current.take() {
                Some((rec, _)) => rec,
                None => inner.alloc_record(HEAD_LEN, &self.policy),
            };
            record::write_head(rec.as_mut_slice(), &head);
            rec
        } else {
            inner.encode_head(&head, None, &self.policy)?
        };
        if self.policy.write == WritePolicy::WriteThrough
            && !self.replica
            && self.policy.origin == OriginKind::Origin
            && let Some(origin) = &inner.origin
        {
            // Marked until the new head is stored (or this fails): no older head
            // stays on, or reaches, NVMe while the origin changes under it.
            let _mark = inner.writing_through(&self.key).await;
            origin.put(&self.key, self.payload(&head_rec)).await?;
            self.store_records(&inner, head_rec).await?;
        } else {
            self.store_records(&inner, head_rec).await?;
        }
        if let Some(old) = old
            && !old.is_inline()
            && old.generation != self.generation
        {
            inner.remove_pages(&self.key, &old).await;
        }
        Ok(Receipt {
            len: self.len,
            crc32c: self.crc,
        })
    }

    /// Stores the pages, then the head.
    async fn store_records(&mut self, inner: &Inner, head_rec: Record) -> Result<()> {
        for (i, rec) in std::mem::take(&mut self.pages).into_iter().enumerate() {
            inner
                .store_record(&self.key.page(self.generation, i as u32), rec, &self.policy)
                .await?;
        }
        // The head makes the value visible: the key's change count moves with it,
        // so a fill from the origin under way does not store an older value over it.
        let mut count = inner.changes(&self.key).lock().await;
        *count += 1;
        inner
            .store_record(&self.key, head_rec, &self.policy)
            .await?;
        Ok(())
    }

    /// The whole value, for the origin: a copy of the payloads.
    fn payload(&self, head_rec: &Record) -> bytes::Bytes {
        let mut out = Vec::with_capacity(self.len as usize);
        if self.single() {
            out.extend_from_slice(&head_rec.as_slice()[HEAD_LEN..]);
        } else {
            for p in &self.pages {
                out.extend_from_slice(&p.as_slice()[PAGE_HEADER_LEN..]);
            }
        }
        bytes::Bytes::from(out)
    }
}
