//! Uploads: PUT, and RESERVE / WRITE / COMMIT / ABORT: each one's reservation and
//! share of the upload budget (from the request layer), when its data is due,
//! and what happens to reservations left open.

use super::conn::fail;
use super::*;

/// An upload in progress (its reservation and budget, [`ops::Upload`]), and when
/// its data is due.
pub(super) struct Upload {
    pub(super) res: ops::Upload,
    /// When all its data must be in, however it comes (one PUT, or WRITEs): a
    /// lease lifetime plus its length at [`MIN_UPLOAD_RATE`].
    pub(super) until: Instant,
}

/// A reservation waiting for its next WRITE or COMMIT.
pub(super) struct Open {
    pub(super) up: Upload,
    /// When it was made or last written: it is dropped a lease lifetime later.
    pub(super) touched: Instant,
}

impl Open {
    /// When it is dropped: a lease lifetime untouched, or past its upload's end
    /// however often it is written (a byte now and then does not keep it).
    pub(super) fn expires(&self, ttl: Duration) -> Instant {
        (self.touched + ttl).min(self.up.until)
    }
}

/// A connection's open reservations. When the connection ends, the in-place ones
/// go to quarantine (their client may still be copying into them, as after an
/// expiry); the others are dropped, and their memory and budget come back.
pub(super) struct OpenReservations {
    pub(super) map: HashMap<u64, Open>,
    pub(super) server: Arc<DataServer>,
}

impl Drop for OpenReservations {
    fn drop(&mut self) {
        for (_, o) in self.map.drain() {
            self.server.retire(o.up);
        }
    }
}

/// Where the data section of the frame being read goes.
pub(super) enum Sink {
    /// Into a reservation; once full, commit it (PUT: the reservation holds the CRC
    /// to check) or keep it for more WRITEs.
    Reservation {
        op: Op,
        id: u64,
        reservation_id: u64,
        up: Upload,
        remaining: u64,
        commit: bool,
        opts: Options,
    },
    /// Discarded (the request failed before its data).
    Discard { remaining: u64 },
}

pub(super) fn unknown(op: Op, id: u64, reservation: u64) -> Out {
    Out::err(
        op,
        id,
        Status::UnknownId,
        format!(
            "no reservation {reservation} on this connection (never made, already \
             committed or aborted, or dropped after a lease lifetime untouched)"
        ),
    )
}

impl DataServer {
    /// Lets go of an upload that will not be committed: at once, or, if its client
    /// may still be copying into it in place (shm, RDMA), after one more lease
    /// lifetime in quarantine.
    pub(super) fn retire(&self, up: Upload) {
        if up.res.is_in_place() {
            self.quarantine.lock().push((Instant::now(), up));
        }
    }

    /// Ends a data section that is complete: a PUT commits, a WRITE returns its
    /// reservation to the table.
    pub(super) fn finish_sink(
        self: &Arc<Self>,
        sink: &mut Option<Sink>,
        reservations: &mut HashMap<u64, Open>,
    ) -> Option<BoxFuture<'static, Out>> {
        match sink {
            Some(Sink::Discard { remaining: 0 }) => {
                *sink = None;
                None
            }
            Some(Sink::Reservation { remaining: 0, .. }) => {
                let Some(Sink::Reservation {
                    op,
                    id,
                    reservation_id,
                    up,
                    commit,
                    opts,
                    ..
                }) = sink.take()
                else {
                    return None;
                };
                if commit {
                    let stats = self.stats.clone();
                    let me = self.clone();
                    return Some(Box::pin(async move {
                        match me.ops.commit(up.res, None, &opts).await {
                            Ok(r) => {
                                add(&stats.bytes_committed, r.len);
                                Out::u64(op, id, r.len)
                            }
                            Err(e) => fail(op, id, e),
                        }
                    }));
                }
                let written = up.res.written();
                reservations.insert(
                    reservation_id,
                    Open {
                        up,
                        touched: Instant::now(),
                    },
                );
                Some(Box::pin(std::future::ready(Out::u64(op, id, written))))
            }
            _ => None,
        }
    }

    /// Starts an upload of `len` bytes to `key` (PUT, RESERVE) through the
    /// request layer, and sets the time its data is due by. Or the answer that
    /// refuses it.
    pub(super) fn begin_upload(
        &self,
        op: Op,
        id: u64,
        key: &strata_tiers::Key,
        len: u64,
        crc32c: Option<u32>,
        opts: &Options,
    ) -> Result<Upload, Out> {
        let res = self
            .ops
            .begin_upload(key, len, crc32c, opts)
            .map_err(|e| fail(op, id, e))?;
        let at_min_rate = Duration::from_secs_f64(len as f64 / MIN_UPLOAD_RATE as f64);
        Ok(Upload {
            res,
            until: Instant::now() + self.config.lease_ttl() + at_min_rate,
        })
    }
}
