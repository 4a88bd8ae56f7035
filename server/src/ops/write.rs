//! Writes: an upload holds its share of the one upload budget from its start to
//! its commit (or its drop), whichever carrier brings its bytes.

use std::sync::Arc;

use strata_tiers::{Error, Key, Receipt, Reservation};
use tokio::sync::OwnedSemaphorePermit;

use super::{BUDGET_UNIT, MIN_UPLOAD_CHARGE, Ops, Options};

/// An upload in progress: its reservation, and the share of the upload budget it
/// holds until it is committed or dropped. Dropping it abandons the value.
#[derive(Debug)]
pub struct Upload {
    res: Box<Reservation>,
    key: Key,
    pin: bool,
    _budget: OwnedSemaphorePermit,
}

impl std::ops::Deref for Upload {
    type Target = Reservation;

    fn deref(&self) -> &Reservation {
        &self.res
    }
}

impl std::ops::DerefMut for Upload {
    fn deref_mut(&mut self) -> &mut Reservation {
        &mut self.res
    }
}

impl Ops {
    /// Starts an upload of `len` bytes to `key`, with `crc32c` to check at commit
    /// if it is known now: its share of the upload budget, then its reservation.
    /// `TooLarge` for one upload over the whole budget, `Exhausted` (Busy) when
    /// others hold the budget now.
    pub fn begin_upload(
        &self,
        key: &Key,
        len: u64,
        crc32c: Option<u32>,
        opts: &Options,
    ) -> Result<Upload, Error> {
        let r = self.admit_upload(key, len, crc32c, opts);
        if r.is_err() {
            // (A refused put is recorded as one; an admitted one, at its commit.)
            self.record("put", opts, std::time::Duration::ZERO, &r);
        }
        r
    }

    fn admit_upload(
        &self,
        key: &Key,
        len: u64,
        crc32c: Option<u32>,
        opts: &Options,
    ) -> Result<Upload, Error> {
        Self::check_writable(key)?;
        if self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let max = self.config.max_upload_bytes.0;
        if len > max {
            return Err(Error::TooLarge {
                what: "an upload".into(),
                len,
                limit: max,
                unit: "bytes",
                setting: "requests.max_upload_bytes",
            });
        }
        let charge = len.max(MIN_UPLOAD_CHARGE).div_ceil(BUDGET_UNIT);
        if charge > self.budget_units {
            // (A budget that is not a whole number of units cannot hold an upload
            // just under it: refused, not left to wait for room that never comes.)
            return Err(Error::TooLarge {
                what: "an upload".into(),
                len,
                limit: self.budget_units * BUDGET_UNIT,
                unit: "bytes",
                setting: "requests.max_upload_bytes",
            });
        }
        let n = u32::try_from(charge).unwrap_or(u32::MAX);
        let budget = self
            .uploads
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Error::Exhausted {
                what: "the upload budget".into(),
                detail: format!(
                    "{max} bytes of uploads are in flight (requests.max_upload_bytes): retry"
                ),
                retry_after: Some(std::time::Duration::from_millis(100)),
            })?;
        let mut res = self.store.reserve(key, len, crc32c)?;
        if opts.from_peer {
            // A copy of a put another member took (and wrote through).
            res.replica();
        }
        Ok(Upload {
            res: Box::new(res),
            key: key.clone(),
            pin: opts.pin,
            _budget: budget,
        })
    }

    /// Commits an upload whose bytes are all in, checking them against `crc32c`
    /// when given (and against the one given at its start), then pins it if the
    /// options of its start or of this commit asked.
    ///
    /// A commit that has started runs to its end: cut off midway, it could leave
    /// a write-through's origin ahead of the cache, or old pages behind. So it runs
    /// as a task of its own, tracked for shutdown ([`Ops::drain`]), and the
    /// caller's deadline bounds only the wait for it (past it the caller gets
    /// `DeadlineExceeded` and the value may or may not be stored, as with any
    /// write that times out). A commit whose deadline passed before it started
    /// does not start; nor does one after shutdown began. The budget is held
    /// until the commit is done.
    pub async fn commit(
        self: &Arc<Self>,
        up: Upload,
        crc32c: Option<u32>,
        opts: &Options,
    ) -> Result<Receipt, Error> {
        let start = std::time::Instant::now();
        let r = self.commit_task(up, crc32c, opts).await;
        self.record("put", opts, start.elapsed(), &r);
        r
    }

    async fn commit_task(
        self: &Arc<Self>,
        up: Upload,
        crc32c: Option<u32>,
        opts: &Options,
    ) -> Result<Receipt, Error> {
        let start = std::time::Instant::now();
        let late = || Error::DeadlineExceeded {
            op: "put",
            elapsed: start.elapsed(),
        };
        if opts
            .deadline
            .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            return Err(late());
        }
        if self.commits.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let me = self.clone();
        let pin = up.pin || opts.pin;
        let replicas = self.replicator(&up.key, opts).cloned();
        let task = self.commits.spawn(async move {
            let Upload {
                mut res,
                key,
                _budget,
                ..
            } = up;
            let receipt = match crc32c {
                Some(crc) if res.is_in_place() => res.commit_filled(crc).await?,
                Some(crc) => {
                    res.expect_crc(crc);
                    res.commit().await?
                }
                None => res.commit().await?,
            };
            if let Some(r) = replicas {
                // The other copies, from the committed value: answered once
                // enough of them committed too.
                let Some((_, value)) = me.store.get(&key, None).await? else {
                    return Err(Error::Changed {
                        target: key.display_path(),
                        detail: "deleted or evicted before its copies were sent".into(),
                    });
                };
                let sent = r.put(&key, value, pin).await;
                if !r.keeps(&key) {
                    match sent {
                        // Sent on to its owners (the client's member list is
                        // stale): a copy here would outlive their next write.
                        Ok(()) => {
                            me.store.evict(&key).await?;
                            return Ok(receipt);
                        }
                        // No owner answers, and this node is next in line: it
                        // keeps the value, as the owner it is about to become.
                        Err(e)
                            if e.kind() == strata_tiers::ErrorKind::Unavailable
                                && r.stands_in(&key) =>
                        {
                            tracing::warn!(key = %key.display_path(), error = %e, "the key's owners cannot be reached: kept here, next in line");
                        }
                        Err(e) => {
                            me.store.evict(&key).await?;
                            return Err(e);
                        }
                    }
                } else {
                    sent?;
                }
            }
            if pin {
                me.store.pin(&key).await?;
            }
            Ok(receipt)
        });
        self.step("put", opts, task)
            .await?
            .map_err(|e| Error::Shared {
                message: format!("the commit task failed: {e}"),
                kind: strata_tiers::ErrorKind::Internal,
            })?
    }
}
