//! Arena access under leases (reads) and in-place reservations (writes), through
//! the shared mapping or by RDMA, and the releases of leases, which gather and ride
//! ahead of the next request.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::data::io::write_all_vectored;
use crate::data::shm::ValueReader;
use crate::wire::{FLAG_LEASE, Lease, Request, request_frame};

/// Releases gathered before they are sent on their own.
pub(super) const RELEASE_BATCH: usize = 16;

impl DataClient {
    /// A RELEASE frame for the leases waiting, if any.
    pub(super) fn release_frame(&self) -> Option<Bytes> {
        let leases = std::mem::take(&mut *self.inner.releases.lock());
        if leases.is_empty() {
            return None;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Some(request_frame(id, 0, &Request::Release { leases }, 0))
    }

    pub(super) fn lease_flag(&self) -> u16 {
        if self.inner.carrier == Carrier::Tcp || !self.rdma_usable() {
            0
        } else {
            FLAG_LEASE
        }
    }

    /// Copies `value` into reserved arena extents: through the mapping (shm) or by
    /// RDMA WRITE.
    pub(super) fn write_extents(
        &self,
        extents: &[crate::wire::Extent],
        value: &[u8],
        deadline: Duration,
    ) -> std::io::Result<()> {
        #[cfg(feature = "rdma")]
        if let Some(r) = self.inner.rdma.get() {
            return r.lock().write(extents, value, deadline);
        }
        let _ = deadline; // a copy into the mapping has no deadline to keep
        match &self.inner.mapping {
            Some(m) => m.write(extents, value),
            None => Err(std::io::Error::other("no shared memory and no RDMA link")),
        }
    }

    /// Runs `f` over leased extents: a reader of the mapping (shm), or of the bytes
    /// an RDMA READ brought.
    pub(super) fn with_extents<R>(
        &self,
        extents: &[crate::wire::Extent],
        len: u64,
        f: impl FnOnce(&mut ValueReader<'_>) -> R,
    ) -> std::io::Result<R> {
        #[cfg(feature = "rdma")]
        if let Some(r) = self.inner.rdma.get() {
            let buf = r.lock().read(extents, len, self.inner.options.timeout)?;
            return Ok(f(&mut ValueReader::new(&buf)));
        }
        match &self.inner.mapping {
            Some(m) => Ok(f(&mut m.reader(extents, len)?)),
            None => Err(std::io::Error::other("no shared memory and no RDMA link")),
        }
    }

    /// Runs `f` over a lease's extents, then queues the lease's release. What `f`
    /// made is only good if the lease outlived it: past its ttl the server may have
    /// reused the memory, so past half of it the call fails with a timeout. The
    /// lease is timed from `arrived`, when its answer came in (the server started it
    /// a little earlier: half the ttl leaves that margin).
    pub(super) async fn under_lease<R>(
        &self,
        lease: &Lease,
        len: u64,
        arrived: Instant,
        f: impl FnOnce(&mut ValueReader<'_>) -> R,
    ) -> Result<R> {
        let out = self.with_extents(&lease.extents, len, f);
        let in_time = in_lease_time(lease.ttl_ms, arrived).is_some();
        self.release(lease.id).await;
        let out = out?;
        if !in_time {
            return Err(ClientError::Timeout(Duration::from_millis(u64::from(
                lease.ttl_ms,
            ))));
        }
        Ok(out)
    }

    /// The bytes of an answer: inline data, or a copy out of leased extents (checked
    /// against the lease's lifetime, then released).
    pub(super) async fn collect(
        &self,
        lease: Option<&Lease>,
        len: u64,
        inline: Bytes,
        arrived: Instant,
    ) -> Result<Bytes> {
        match lease {
            Some(lease) => Ok(Bytes::from(
                self.under_lease(lease, len, arrived, |r| r.read_to_vec())
                    .await??,
            )),
            None => check_inline(&inline, len).map(|()| inline),
        }
    }

    /// Sends the releases that are waiting now (a client that goes idle has them sent
    /// by a background tick every quarter of the lease lifetime anyway).
    pub async fn flush_releases(&self) {
        Self::flush(&self.inner).await;
    }

    pub(super) async fn flush(inner: &Arc<Inner>) {
        let me = DataClient {
            inner: inner.clone(),
        };
        if let Some(frame) = me.release_frame()
            && let Ok(conn) = me.conn().await
        {
            let mut w = conn.writer.lock().await;
            if write_all_vectored(&mut *w, &[&frame]).await.is_err() {
                conn.broken.store(true, Ordering::Release);
            }
        }
    }

    /// Releases a lease. Releases gather and travel ahead of the next request, or
    /// on their own once [`RELEASE_BATCH`] have gathered: a GET costs no extra write
    /// and no extra wake-up of the server. Their answers are dropped by the reader.
    /// A lost release costs nothing but the lease's lifetime.
    pub(super) async fn release(&self, lease: u64) {
        let full = {
            let mut r = self.inner.releases.lock();
            r.push(lease);
            r.len() >= RELEASE_BATCH
        };
        if full {
            Self::flush(&self.inner).await;
        }
    }
}

/// What is left of the time a client may use arena memory under a lease (or an
/// in-place reservation) of `ttl_ms`: half of it, counted from `arrived`, when its
/// answer came in (the server started the clock a little earlier: the other half
/// leaves that margin). `None` once it is spent.
pub(super) fn in_lease_time(ttl_ms: u32, arrived: Instant) -> Option<Duration> {
    let half = Duration::from_millis(u64::from(ttl_ms)) / 2;
    half.checked_sub(arrived.elapsed()).filter(|d| !d.is_zero())
}
