//! The operations: reads (whole, ranged, batched, handed to a closure straight out
//! of the arena), writes (over a PUT frame or in place, with retries on `Busy`),
//! deletes and prefix matches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::Key;

use super::lease::in_lease_time;
use super::pool::send;
use super::*;
use crate::data::shm::ValueReader;
use crate::wire::{
    FEATURE_FLAGS, FLAG_LEASE, FLAG_PIN, GetInfo, KeyRange, MAX_BATCH, Request, Status, response,
};

impl DataClient {
    /// Reads a whole value. `None` when it is neither cached nor in its origin.
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        Ok(self.get_range(key, 0, None).await?.map(|(_, b)| b))
    }

    /// Reads `[offset, offset + length)` of a value (to its end when `length` is
    /// `None`). Returns the value's total length with the bytes.
    pub async fn get_range(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<(u64, Bytes)>> {
        let req = Request::Get {
            key: key.clone(),
            offset,
            length,
        };
        self.retry(|| async {
            let f = match self.call(&req, self.lease_flag(), None).await {
                Err(ClientError::Data {
                    status: Status::NotFound,
                    ..
                }) => return Ok(None),
                other => other?,
            };
            let info: GetInfo = response::decode_get(&f.meta).map_err(proto)?;
            let bytes = self
                .collect(info.lease.as_ref(), info.len, f.data, f.arrived)
                .await?;
            Ok(Some((info.total_len, bytes)))
        })
        .await
    }

    /// As [`Self::get_range`], answered from the server's cache tiers alone
    /// ([`FLAG_CACHED_ONLY`](crate::wire::FLAG_CACHED_ONLY)): `None` when it does
    /// not hold the range, and never an origin read there. `None` as well from a
    /// server that does not take the flag.
    pub async fn get_cached(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<(u64, Bytes)>> {
        if self.inner.hello.ops & crate::wire::FEATURE_PEER == 0 {
            return Ok(None);
        }
        let req = Request::Get {
            key: key.clone(),
            offset,
            length,
        };
        self.retry(|| async {
            let flags = self.lease_flag() | crate::wire::FLAG_CACHED_ONLY;
            let f = match self.call(&req, flags, None).await {
                Err(ClientError::Data {
                    status: Status::NotFound,
                    ..
                }) => return Ok(None),
                other => other?,
            };
            let info: GetInfo = response::decode_get(&f.meta).map_err(proto)?;
            let bytes = self
                .collect(info.lease.as_ref(), info.len, f.data, f.arrived)
                .await?;
            Ok(Some((info.total_len, bytes)))
        })
        .await
    }

    /// Reads `[offset, offset + length)` of a value (to its end when `length` is
    /// `None`) and hands it to `f` as a [`ValueReader`], with the value's total length:
    /// over shared memory `f` copies straight out of the leased arena, with no
    /// buffer in between. `None` when the key is absent (and `f` is not called).
    ///
    /// When this returns an error after `f` ran (the lease outlived half its ttl
    /// while `f` copied, so the server may have reused the memory), what `f` copied
    /// is void. Only the request is retried, never `f`.
    pub async fn get_range_with<R>(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
        f: impl FnOnce(u64, &mut ValueReader<'_>) -> R,
    ) -> Result<Option<R>> {
        let req = Request::Get {
            key: key.clone(),
            offset,
            length,
        };
        let frame = self
            .retry(|| async {
                match self.call(&req, self.lease_flag(), None).await {
                    Err(ClientError::Data {
                        status: Status::NotFound,
                        ..
                    }) => Ok(None),
                    other => other.map(Some),
                }
            })
            .await?;
        let Some(frame) = frame else {
            return Ok(None);
        };
        let info: GetInfo = response::decode_get(&frame.meta).map_err(proto)?;
        let total = info.total_len;
        match &info.lease {
            Some(lease) => self
                .under_lease(lease, info.len, frame.arrived, |r| f(total, r))
                .await
                .map(Some),
            None => {
                check_inline(&frame.data, info.len)?;
                Ok(Some(f(total, &mut ValueReader::new(&frame.data))))
            }
        }
    }

    /// Reads whole values of many keys in one request; `None` for each miss.
    pub async fn mget(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let req = Request::MGet {
            keys: keys.to_vec(),
        };
        self.retry(|| async {
            let f = self.call(&req, self.lease_flag(), None).await?;
            let items = response::decode_mget(&f.meta).map_err(proto)?;
            if items.len() != keys.len() {
                return Err(proto(format!(
                    "MGET of {} keys answered {} items",
                    keys.len(),
                    items.len()
                )));
            }
            let mut out = Vec::with_capacity(items.len());
            let mut pos = 0usize;
            let mut err = None;
            for item in items {
                match item.status {
                    Status::Ok => {
                        let inline = if item.lease.is_some() {
                            Bytes::new()
                        } else {
                            let b = usize::try_from(item.len)
                                .ok()
                                .and_then(|n| pos.checked_add(n))
                                .and_then(|end| f.data.get(pos..end))
                                .ok_or_else(|| proto("MGET data shorter than its items"))?;
                            let end = pos + b.len();
                            pos = end;
                            f.data.slice_ref(b)
                        };
                        out.push(Some(
                            self.collect(item.lease.as_ref(), item.len, inline, f.arrived)
                                .await?,
                        ));
                    }
                    Status::NotFound => out.push(None),
                    status => {
                        err.get_or_insert(ClientError::Data {
                            op: Op::MGet,
                            status,
                            message: "one of the keys failed".into(),
                        });
                        out.push(None);
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(out),
            }
        })
        .await
    }

    /// Reads a range of each of many values in one request (MGET_RANGE) and hands
    /// each present one to `f` with its index in `ranges`, in order, as a
    /// [`ValueReader`] (over shared memory, straight out of the leased arena). One
    /// result per range: `Some` with what `f` returned, `None` when the key is
    /// absent (and `f` is not called for it), or that range's own error.
    ///
    /// As with [`get_range_with`](Self::get_range_with), when the whole call fails
    /// after `f` ran (a lease outlived half its ttl), what `f` copied is void; the
    /// request alone is retried, never `f`.
    pub async fn mget_range_with<R>(
        &self,
        ranges: &[KeyRange],
        mut f: impl FnMut(usize, &mut ValueReader<'_>) -> R,
    ) -> Result<Vec<Result<Option<R>>>> {
        let req = Request::MGetRange {
            ranges: ranges.to_vec(),
        };
        let frame = self
            .retry(|| self.call(&req, self.lease_flag(), None))
            .await?;
        let items = response::decode_mget(&frame.meta).map_err(proto)?;
        if items.len() != ranges.len() {
            for lease in items.iter().filter_map(|i| i.lease.as_ref()) {
                self.release(lease.id).await;
            }
            return Err(proto(format!(
                "MGET_RANGE of {} ranges answered {} items",
                ranges.len(),
                items.len()
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut pos = 0usize;
        let mut leases = Vec::new();
        for (i, item) in items.iter().enumerate() {
            out.push(match item.status {
                Status::NotFound => Ok(None),
                Status::Ok => match &item.lease {
                    Some(lease) => {
                        leases.push(lease);
                        self.with_extents(&lease.extents, item.len, |r| f(i, r))
                            .map(Some)
                            .map_err(ClientError::Io)
                    }
                    None => {
                        let end = pos.saturating_add(item.len as usize);
                        match frame.data.get(pos..end) {
                            Some(b) => {
                                pos = end;
                                Ok(Some(f(i, &mut ValueReader::new(b))))
                            }
                            None => Err(proto("MGET_RANGE data shorter than its items")),
                        }
                    }
                },
                status => Err(ClientError::Data {
                    op: Op::MGetRange,
                    status,
                    message: format!("range {i} of the batch failed"),
                }),
            });
        }
        let late = leases
            .iter()
            .find(|l| in_lease_time(l.ttl_ms, frame.arrived).is_none());
        let late = late.map(|l| ClientError::Timeout(Duration::from_millis(u64::from(l.ttl_ms))));
        for l in &leases {
            self.release(l.id).await;
        }
        match late {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Stores a value; the server checks it against its CRC-32C before it becomes
    /// visible. Over TCP the value travels in one PUT frame; over shared memory the
    /// client reserves room in the arena, copies into it and commits (or, when the
    /// arena has no room to place it, sends it in a PUT frame). Retried, with
    /// backoff and within the deadline, only when the server answered `Busy` (its
    /// upload budget was full: nothing was stored).
    pub async fn put(&self, key: &Key, value: &[u8]) -> Result<u64> {
        self.put_with(key, value, false).await
    }

    /// Whether the server takes the DEADLINE and PIN flags (a server of an
    /// earlier release does not: pinned puts then go over gRPC).
    pub fn accepts_flags(&self) -> bool {
        self.inner.hello.ops & FEATURE_FLAGS != 0
    }

    /// [`Self::put`], pinning the value in DRAM once it is committed when `pin`
    /// (`Unsupported` if the server does not take the PIN flag:
    /// [`Self::accepts_flags`]).
    pub async fn put_with(&self, key: &Key, value: &[u8], pin: bool) -> Result<u64> {
        if pin && !self.accepts_flags() {
            return Err(ClientError::Unsupported(Op::Put));
        }
        let o = &self.inner.options;
        let busy = |e: &ClientError| {
            matches!(
                e,
                ClientError::Data {
                    status: Status::Busy,
                    ..
                }
            )
        };
        tokio::time::timeout(
            o.timeout,
            crate::error::retry_if(o.attempts.max(8), o.backoff, busy, || {
                self.put_once(key, value, pin)
            }),
        )
        .await
        .unwrap_or(Err(ClientError::Timeout(o.timeout)))
    }

    pub(super) async fn put_once(&self, key: &Key, value: &[u8], pin: bool) -> Result<u64> {
        let crc = crc32c::crc32c(value);
        let pin = if pin { FLAG_PIN } else { 0 };
        let tcp = self.inner.carrier == Carrier::Tcp || !self.rdma_usable();
        let f = if tcp {
            let req = Request::Put {
                key: key.clone(),
                crc32c: crc,
            };
            self.call(&req, pin, Some(value)).await?
        } else {
            self.serves(Op::Reserve)?;
            let conn = self.conn().await?;
            let timeout = self.inner.options.timeout;
            let rid = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let reserve = Request::Reserve {
                key: key.clone(),
                len: value.len() as u64,
            };
            let f = send(&conn, rid, FLAG_LEASE, &reserve, None, timeout, None).await?;
            let Some(lease) = response::decode_reserve(&f.meta).map_err(proto)? else {
                // No room in the arena for the value (what is left is pinned or
                // being read): the bytes travel in a PUT frame instead.
                let cid = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let abort = Request::Abort { reservation: rid };
                let _ = send(&conn, cid, 0, &abort, None, timeout, None).await;
                let req = Request::Put {
                    key: key.clone(),
                    crc32c: crc,
                };
                let f = self.call(&req, pin, Some(value)).await?;
                return response::decode_u64(f.header.op, &f.meta).map_err(proto);
            };
            let cid = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            // The server drops a reservation left untouched for a lease lifetime
            // and reuses its memory; as with leased reads, writing must end
            // within half of it, counted from the answer's arrival.
            let late = ClientError::Timeout(Duration::from_millis(u64::from(lease.ttl_ms)));
            let written = match in_lease_time(lease.ttl_ms, f.arrived) {
                None => Err(late),
                Some(left) => match self.write_extents(&lease.extents, value, left) {
                    Err(e) => Err(e.into()),
                    Ok(()) if in_lease_time(lease.ttl_ms, f.arrived).is_none() => Err(late),
                    Ok(()) => Ok(()),
                },
            };
            if let Err(e) = written {
                let abort = Request::Abort { reservation: rid };
                let _ = send(&conn, cid, 0, &abort, None, timeout, None).await;
                return Err(e);
            }
            let commit = Request::Commit {
                reservation: rid,
                crc32c: crc,
            };
            send(&conn, cid, pin, &commit, None, timeout, None).await?
        };
        response::decode_u64(f.header.op, &f.meta).map_err(proto)
    }

    /// Deletes a key from the cache tiers (and its origin, by policy).
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let req = Request::Delete { key: key.clone() };
        self.retry(|| async {
            let f = self.call(&req, 0, None).await?;
            Ok(response::decode_u64(Op::Delete, &f.meta).map_err(proto)? != 0)
        })
        .await
    }

    /// How many leading keys of `keys` are present (asked in batches of at most
    /// [`MAX_BATCH`], each only while every key before it matched).
    pub async fn match_prefix(&self, keys: &[Key]) -> Result<usize> {
        let mut matched = 0;
        for batch in keys.chunks(MAX_BATCH) {
            let req = Request::MatchPrefix {
                keys: batch.to_vec(),
            };
            let n = self
                .retry(|| async {
                    let f = self.call(&req, 0, None).await?;
                    Ok(response::decode_u64(Op::MatchPrefix, &f.meta).map_err(proto)? as usize)
                })
                .await?;
            matched += n;
            if n != batch.len() {
                break;
            }
        }
        Ok(matched)
    }
}
