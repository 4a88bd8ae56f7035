//! Decoding each request into its operation on the request layer.

use super::conn::fail;
use super::upload::{Open, Sink, unknown};
use super::*;

impl DataServer {
    /// Starts a request. Requests with data set `sink`; the others return their
    /// answer's future.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        h: &Header,
        req: Request,
        opts: Options,
        sink: &mut Option<Sink>,
        reservations: &mut HashMap<u64, Open>,
    ) -> Option<BoxFuture<'static, Out>> {
        let (op, id) = (h.op, h.id);
        let me = self.clone();
        let ready =
            |o: Out| -> Option<BoxFuture<'static, Out>> { Some(Box::pin(std::future::ready(o))) };
        match req {
            Request::Hello { .. } => {
                let mut m = BytesMut::new();
                response::encode_hello(
                    &mut m,
                    &HelloInfo {
                        host_id: self.host_id.clone(),
                        arena_len: self.ops.store().dram().arena().capacity(),
                        lease_ttl_ms: self.config.lease_ttl().as_millis() as u32,
                        max_data: self.config.limits().max_data,
                        ops: Op::ALL | FEATURE_FLAGS | FEATURE_PEER,
                    },
                );
                ready(Out::ok(op, id, m, Vec::new()))
            }
            Request::Get {
                key,
                offset,
                length,
            } => Some(Box::pin(async move {
                match me.ops.get(&key, ByteRange { offset, length }, &opts).await {
                    Ok(read) => me.answer_get(id, read),
                    Err(e) => fail(op, id, e),
                }
            })),
            Request::MGet { keys } => Some(Box::pin(async move {
                let ranges: Vec<_> = keys.iter().map(|k| (k, ByteRange::default())).collect();
                me.mget(Op::MGet, id, &ranges, &opts).await
            })),
            Request::MGetRange { ranges } => Some(Box::pin(async move {
                let ranges: Vec<_> = ranges
                    .iter()
                    .map(|r| {
                        let range = ByteRange {
                            offset: r.offset,
                            length: r.length,
                        };
                        (&r.key, range)
                    })
                    .collect();
                me.mget(Op::MGetRange, id, &ranges, &opts).await
            })),
            Request::Put { key, crc32c } => {
                match self.begin_upload(op, id, &key, h.data_len, Some(crc32c), &opts) {
                    Ok(up) => {
                        *sink = Some(Sink::Reservation {
                            op,
                            id,
                            reservation_id: id,
                            up,
                            remaining: h.data_len,
                            commit: true,
                            opts,
                        });
                        None
                    }
                    Err(out) => {
                        *sink = Some(Sink::Discard {
                            remaining: h.data_len,
                        });
                        ready(out)
                    }
                }
            }
            Request::Reserve { key, len } => {
                if reservations.contains_key(&id) {
                    return ready(Out::err(
                        op,
                        id,
                        Status::Invalid,
                        format!("reservation {id} already exists on this connection"),
                    ));
                }
                if reservations.len() >= MAX_RESERVATIONS {
                    return ready(Out::err(
                        op,
                        id,
                        Status::Busy,
                        format!(
                            "{MAX_RESERVATIONS} reservations are open on this connection: \
                             commit or abort one first"
                        ),
                    ));
                }
                let mut up = match self.begin_upload(op, id, &key, len, None, &opts) {
                    Ok(up) => up,
                    Err(out) => return ready(out),
                };
                let lease = if opts.lease {
                    match up.res.prepare_in_place() {
                        // Id 0: the extents belong to the reservation (named by this
                        // request's id), not to the lease table.
                        Ok(ext) => Some(Lease {
                            id: 0,
                            ttl_ms: self.config.lease_ttl().as_millis() as u32,
                            extents: ext
                                .into_iter()
                                .map(|(offset, len)| Extent { offset, len })
                                .collect(),
                        }),
                        // Nothing left in the arena to place it (all pinned or
                        // read): no extents, and the client sends the bytes
                        // instead (they go to NVMe), rather than a refusal.
                        Err(strata_tiers::Error::Exhausted { .. }) => None,
                        Err(e) => return ready(fail(op, id, e)),
                    }
                } else {
                    None
                };
                reservations.insert(
                    id,
                    Open {
                        up,
                        touched: Instant::now(),
                    },
                );
                let mut m = BytesMut::new();
                response::encode_reserve(&mut m, lease.as_ref());
                ready(Out::ok(op, id, m, Vec::new()))
            }
            Request::Write { reservation } => match reservations.remove(&reservation) {
                Some(o) if o.up.res.written().saturating_add(h.data_len) <= o.up.res.len() => {
                    *sink = Some(Sink::Reservation {
                        op,
                        id,
                        reservation_id: reservation,
                        up: o.up,
                        remaining: h.data_len,
                        commit: false,
                        opts,
                    });
                    None
                }
                Some(o) => {
                    let msg = format!(
                        "writing {} bytes at {} overruns reservation {reservation} of {}",
                        h.data_len,
                        o.up.res.written(),
                        o.up.res.len()
                    );
                    *sink = Some(Sink::Discard {
                        remaining: h.data_len,
                    });
                    ready(Out::err(op, id, Status::Invalid, msg))
                }
                None => {
                    *sink = Some(Sink::Discard {
                        remaining: h.data_len,
                    });
                    ready(unknown(op, id, reservation))
                }
            },
            Request::Commit {
                reservation,
                crc32c,
            } => match reservations.remove(&reservation) {
                Some(Open { up, .. }) => {
                    let stats = self.stats.clone();
                    Some(Box::pin(async move {
                        match me.ops.commit(up.res, Some(crc32c), &opts).await {
                            Ok(receipt) => {
                                add(&stats.bytes_committed, receipt.len);
                                Out::u64(op, id, receipt.len)
                            }
                            Err(e) => fail(op, id, e),
                        }
                    }))
                }
                None => ready(unknown(op, id, reservation)),
            },
            // An aborted in-place reservation goes to quarantine like an expired
            // one: the client aborts after a write it gave up on (an RDMA write
            // that timed out), which may still land on the arena.
            Request::Abort { reservation } => match reservations.remove(&reservation) {
                Some(o) => {
                    self.retire(o.up);
                    ready(Out::u64(op, id, 1))
                }
                None => ready(unknown(op, id, reservation)),
            },
            Request::Delete { key } => Some(Box::pin(async move {
                match me.ops.delete(&key, &opts).await {
                    Ok(found) => Out::u64(op, id, u64::from(found)),
                    Err(e) => fail(op, id, e),
                }
            })),
            Request::MatchPrefix { keys } => Some(Box::pin(async move {
                match me.ops.match_prefix(&keys, &opts).await {
                    Ok(n) => Out::u64(op, id, n as u64),
                    Err(e) => fail(op, id, e),
                }
            })),
            Request::Release { leases } => {
                let n = leases
                    .iter()
                    .filter(|l| self.ops.leases().release(**l))
                    .count();
                ready(Out::u64(op, id, n as u64))
            }
        }
    }
}
