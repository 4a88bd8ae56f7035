//! Reads: a value or a range of it, a batch of ranges, and the pages of a long
//! range for a streaming answer.

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::join_all;
use strata_tiers::{BoxFuture, ByteRange, Entry, Error, Key};
use strata_transport::wire::{Extent, Lease};

use super::{Ops, Options};

/// Heads an MGET looks up at once (each may hold a value of up to a page).
const MGET_LOOKUPS: usize = 16;

/// What a read found: the value's length, the offset of the first byte read, and
/// the bytes, as zero-copy slices of its pages, or leased (when the options asked
/// for a lease and the bytes lie in the arena).
#[derive(Debug)]
pub struct Read {
    /// The whole value's length.
    pub total: u64,
    /// Offset of the first byte read.
    pub start: u64,
    /// Bytes read.
    pub len: u64,
    /// The bytes, one slice per page; empty when they are leased.
    pub slices: Vec<Bytes>,
    /// The lease on the bytes, if they were leased.
    pub lease: Option<Lease>,
    /// The read's share of the read budget ([`Ops::admit_read`]): hold it until
    /// the answer is written.
    pub held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ops {
    /// Reads `range` of `key`. A miss is `NotFound`.
    pub async fn get(&self, key: &Key, range: ByteRange, opts: &Options) -> Result<Read, Error> {
        self.run("get", opts, async {
            if self.forwards(key, opts) {
                if let Some((total, start, slices)) =
                    self.fetch_from_owners(key, range, opts).await?
                {
                    return Ok(self.answer(total, start, slices, opts));
                }
                if !self.has_origin(key) {
                    return Err(Error::NotFound {
                        key: format!("{} (not held by its owners)", key.display_path()),
                    });
                }
                // The owners cannot be reached: read the origin here, as the
                // next owner in line would.
            }
            if opts.cached_only {
                return match self.store.get_cached(key, Some(range)).await? {
                    Some((total, start, slices)) => Ok(self.answer(total, start, slices, opts)),
                    None => Err(Error::NotFound {
                        key: format!("{} (not cached here)", key.display_path()),
                    }),
                };
            }
            // Admitted by its length before its bytes are read (from NVMe or
            // the origin, into memory). The lookup itself may read a whole
            // value of up to a page (a head holds the value that fits in one):
            // a page's worth first, then what the range needs.
            let page = u64::from(self.store.page_size());
            let mut held = self.admit_read(page).await?;
            let Some(entry) = self.store.lookup(key).await? else {
                return Err(Error::NotFound {
                    key: key.display_path(),
                });
            };
            let (start, end) = range.resolve(entry.len())?;
            self.resize_read(&mut held, end - start).await?;
            match self.store.slices_of(entry, Some(range)).await? {
                Some((entry, start, slices)) => {
                    let mut read = self.answer(entry.len(), start, slices, opts);
                    read.held = Some(held);
                    Ok(read)
                }
                None => Err(Error::NotFound {
                    key: key.display_path(),
                }),
            }
        })
        .await
    }

    /// Reads a batch of ranges, each on its own: one result per range, in order.
    /// What is answered inline stays within `max_inline` bytes: the values' heads
    /// are looked up first, and a range that would go past what is left fails
    /// `TooLarge` without being read (a later, smaller one may still fit), so a
    /// batch of many large values on NVMe or at the origin does not read them all
    /// into memory to refuse most of them.
    pub async fn mget(
        &self,
        ranges: &[(&Key, ByteRange)],
        max_inline: u64,
        opts: &Options,
    ) -> Result<Vec<Result<Read, Error>>, Error> {
        self.run("mget", opts, async {
            Self::check_batch(ranges.len())?;
            // (Keys this node answers from their owners are read there, below;
            // decided once per key, whatever the view does meanwhile.)
            let forwarded: Vec<bool> = ranges.iter().map(|(k, _)| self.forwards(k, opts)).collect();
            let mut left = max_inline;
            let too_large = |len: u64, left: u64| Error::TooLarge {
                what: "a batch answer".into(),
                len,
                limit: left,
                unit: "bytes",
                setting: "data.max_frame_data",
            };
            // Heads are looked up a few at a time, in order, each admitted or
            // refused as it comes: a head from NVMe holds its value when the value
            // fits in one page, so looking every head up at once would hold the
            // whole batch (1,000 values of 4 MiB: 4 GB) before refusing most of it.
            // What stays held is what was admitted (within `max_inline`) plus the
            // lookups under way.
            // (Boxed, and collected first: a closure mapped lazily in the stream
            // is not general enough over lifetimes for the Send future.)
            let lookups: Vec<BoxFuture<'_, Result<Option<Entry>, Error>>> = ranges
                .iter()
                .zip(&forwarded)
                .map(
                    |((k, _), &f)| -> BoxFuture<'_, Result<Option<Entry>, Error>> {
                        Box::pin(async move {
                            if f {
                                return Ok(None);
                            }
                            self.store.lookup(k).await
                        })
                    },
                )
                .collect();
            // The lookups under way may each read a value of up to a page:
            // charged to the read budget as that. Each head admitted is charged
            // as it comes, without waiting; once the budget has no room, the heads
            // kept so far are let go (a head holds its value when the value fits
            // in a page) and only lengths are kept, the whole is waited for while
            // nothing is held, and those heads are looked up again. So an MGET
            // never holds more than it is charged, whatever its size.
            let page = u64::from(self.store.page_size());
            let under_way = |i: usize| page * (ranges.len() - i).min(MGET_LOOKUPS) as u64;
            let mut held = self.admit_read(under_way(0)).await?;
            let mut charged = true;
            let mut heads = futures::stream::iter(lookups).buffered(MGET_LOOKUPS);
            // `Ok(None)`: admitted, its head let go, to be looked up again.
            let mut admitted_all: Vec<Result<Option<Entry>, Error>> =
                Vec::with_capacity(ranges.len());
            for (i, ((key, r), &forwarded)) in ranges.iter().zip(&forwarded).enumerate() {
                let head = heads.next().await.unwrap_or(Ok(None));
                let admitted = match head {
                    _ if forwarded => Err(Error::NotFound {
                        key: key.display_path(),
                    }),
                    Ok(Some(e)) => match r.resolve(e.len()) {
                        Ok((start, end)) if end - start > left => Err(too_large(end - start, left)),
                        Ok((start, end)) => {
                            left -= end - start;
                            Ok(Some(e))
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => Err(Error::NotFound {
                        key: key.display_path(),
                    }),
                    Err(e) => Err(e),
                };
                admitted_all.push(if charged {
                    admitted
                } else {
                    admitted.map(|_| None)
                });
                if charged
                    && !self.try_resize_read(&mut held, (max_inline - left) + under_way(i + 1))
                {
                    charged = false;
                    for e in admitted_all.iter_mut().flatten() {
                        *e = None;
                    }
                }
            }
            drop(heads);
            if !charged {
                let again = admitted_all
                    .iter()
                    .filter(|a| matches!(a, Ok(None)))
                    .count();
                self.resize_read(
                    &mut held,
                    (max_inline - left) + page * again.min(MGET_LOOKUPS) as u64,
                )
                .await?;
                let lookups: Vec<BoxFuture<'_, Result<Option<Entry>, Error>>> = ranges
                    .iter()
                    .zip(&admitted_all)
                    .map(
                        |((k, _), a)| -> BoxFuture<'_, Result<Option<Entry>, Error>> {
                            let again = matches!(a, Ok(None));
                            Box::pin(async move {
                                if again {
                                    self.store.lookup(k).await
                                } else {
                                    Ok(None)
                                }
                            })
                        },
                    )
                    .collect();
                let mut heads = futures::stream::iter(lookups).buffered(MGET_LOOKUPS);
                for (a, (key, _)) in admitted_all.iter_mut().zip(ranges) {
                    let head = heads.next().await.unwrap_or(Ok(None));
                    if matches!(a, Ok(None)) {
                        // (Its length is checked again when it is answered.)
                        *a = match head {
                            Ok(Some(e)) => Ok(Some(e)),
                            Ok(None) => Err(Error::NotFound {
                                key: key.display_path(),
                            }),
                            Err(e) => Err(e),
                        };
                    }
                }
            }
            let admitted_all: Vec<Result<Entry, Error>> = admitted_all
                .into_iter()
                .map(|a| a.map(|e| e.expect("every admitted head looked up")))
                .collect();
            // What was admitted is what stays charged (carried by the first
            // answer, dropped with the batch's).
            self.resize_read(&mut held, max_inline - left).await?;
            let mut held = Some(held);
            let reads = join_all(ranges.iter().zip(admitted_all).zip(&forwarded).map(
                |(((key, r), admitted), &forwarded)| {
                    async move {
                        if forwarded {
                            if let Some(read) = self.fetch_from_owners(key, *r, opts).await? {
                                return Ok(read);
                            }
                            if !self.has_origin(key) {
                                return Err(Error::NotFound {
                                    key: format!("{} (not held by its owners)", key.display_path()),
                                });
                            }
                            return match self.store.get_slices(key, Some(*r)).await? {
                                Some((e, start, slices)) => Ok((e.len(), start, slices)),
                                None => Err(Error::NotFound {
                                    key: key.display_path(),
                                }),
                            };
                        }
                        // (A value replaced since its lookup is read anew, and its
                        // length checked again below.)
                        match self.store.slices_of(admitted?, Some(*r)).await? {
                            Some((e, start, slices)) => Ok((e.len(), start, slices)),
                            None => Err(Error::NotFound {
                                key: key.display_path(),
                            }),
                        }
                    }
                },
            ))
            .await;
            let mut inline = 0u64;
            Ok(reads
                .into_iter()
                .map(|r| {
                    let (total, start, slices) = r?;
                    let mut read = self.answer(total, start, slices, opts);
                    read.held = held.take();
                    if read.lease.is_none() {
                        if inline + read.len > max_inline {
                            return Err(too_large(read.len, max_inline - inline));
                        }
                        inline += read.len;
                    }
                    Ok(read)
                })
                .collect())
        })
        .await
    }

    /// Finds a value's head (for an answer streamed page by page). `Ok(None)` is
    /// a miss. Not recorded: the codec records the whole read ([`Ops::record`]).
    pub async fn lookup(&self, key: &Key, opts: &Options) -> Result<Option<Entry>, Error> {
        self.run_step("get", opts, self.store.lookup(key)).await
    }

    /// Reads page `index` of a value found by [`Self::lookup`] (not recorded,
    /// as [`Self::lookup`]).
    pub async fn read_page(
        &self,
        entry: &Entry,
        index: u32,
        opts: &Options,
    ) -> Result<Bytes, Error> {
        self.run_step("get", opts, self.store.read_page(entry, index))
            .await
    }

    /// Waits for `f`, an operation of `opts`'s caller or a step of a read
    /// streamed to it, within its deadline (`op` names it in the error). A caller
    /// that gave no deadline gets `requests.stall_timeout_ms` for it: no wait (on
    /// a hung disk, say) lasts for ever.
    pub async fn step<T>(
        &self,
        op: &'static str,
        opts: &Options,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, Error> {
        let start = tokio::time::Instant::now();
        let at = opts.deadline.unwrap_or(start + self.stall_timeout());
        tokio::time::timeout_at(at, f)
            .await
            .map_err(|_| Error::DeadlineExceeded {
                op,
                elapsed: start.elapsed(),
            })
    }

    /// The answer to a read of `slices`: leased if the options ask for it, the
    /// bytes lie in the arena and the lease budget allows; inline otherwise.
    fn answer(&self, total: u64, start: u64, slices: Vec<Bytes>, opts: &Options) -> Read {
        let len = slices.iter().map(|s| s.len() as u64).sum();
        let lease = if opts.lease && len > 0 {
            self.lease(total, start, &slices)
        } else {
            None
        };
        let slices = if lease.is_some() { Vec::new() } else { slices };
        Read {
            total,
            start,
            len,
            slices,
            lease,
            held: None,
        }
    }

    /// Leases `slices` (one per page, from `start`, of a value of `total` bytes)
    /// if they all lie in the arena and the lease budget allows, charged the
    /// whole pages they keep in the arena.
    fn lease(&self, total: u64, start: u64, slices: &[Bytes]) -> Option<Lease> {
        let arena = self.store.dram().arena();
        let extents = slices
            .iter()
            .map(|s| {
                arena.offset_of(s).map(|offset| Extent {
                    offset,
                    len: s.len() as u64,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let ps = u64::from(self.store.page_size()).max(1);
        let mut pos = start;
        let mut pinned = 0;
        for s in slices {
            let page = pos / ps;
            pinned += ps.min(total.saturating_sub(page * ps));
            pos += s.len() as u64;
        }
        let id = self.leases.grant(slices.to_vec(), pinned)?;
        Some(Lease {
            id,
            ttl_ms: self.leases.ttl().as_millis() as u32,
            extents,
        })
    }
}
