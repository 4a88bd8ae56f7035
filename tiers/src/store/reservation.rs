//! Two-phase puts: reserve, write, commit.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::policy::{NamespacePolicy, OriginKind, WritePolicy};

use super::record::{self, HEAD_LEN, Head, PAGE_HEADER_LEN};
use super::{Inner, Receipt, Record, now_ms};

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
        }
    }

    /// The declared length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the declared length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// Verifies length and checksum, writes through to the origin if the policy says
    /// so, stores the pages, then the head. Returns the value's receipt.
    pub async fn commit(mut self) -> Result<Receipt> {
        if self.written != self.len {
            return Err(Error::Incomplete {
                expected: self.len,
                actual: self.written,
            });
        }
        if let Some(expected) = self.expected_crc
            && expected != self.crc
        {
            return Err(Error::ChecksumMismatch {
                what: self.key.display_path(),
                expected,
                actual: self.crc,
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
            && self.policy.origin == OriginKind::Origin
            && let Some(origin) = &inner.origin
        {
            origin.put(&self.key, self.payload(&head_rec)).await?;
        }
        for (i, rec) in std::mem::take(&mut self.pages).into_iter().enumerate() {
            inner
                .store_record(&self.key.page(self.generation, i as u32), rec, &self.policy)
                .await?;
        }
        inner
            .store_record(&self.key, head_rec, &self.policy)
            .await?;
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
