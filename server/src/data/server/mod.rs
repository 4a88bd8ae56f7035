//! The server side of the data path: one connection loop for TCP and for the
//! shared-memory carrier's Unix socket.
//!
//! Each connection is one task. It reads frames into a buffer (cancel-safe), runs
//! the requests concurrently (`FuturesUnordered`, so a miss that goes to NVMe or the
//! origin does not hold up the hits behind it), and writes each answer as soon as it
//! is ready: header and metadata, then the value's `Bytes` straight from the DRAM
//! arena with vectored writes, with no staging copy. Responses may leave out of
//! order; the request id pairs them.
//!
//! With [`DataConfig::poll_us`] set, a connection with nothing in flight polls its
//! socket for a while before it parks, so a client that sends its next request soon
//! does not pay a wake-up.
//!
//! A frame whose header is broken ends the connection (the stream cannot be
//! resynchronised) after an error answer; bad metadata fails that request only.
//!
//! What a client can make the server hold is bounded: connections
//! ([`DataConfig::max_connections`]), requests in flight per connection
//! ([`MAX_INFLIGHT`]), open reservations per connection ([`MAX_RESERVATIONS`]), and,
//! through the request layer ([`crate::ops`]) that runs every operation, the bytes
//! of every upload at once and leases. A reservation that nobody writes to or
//! commits for a lease lifetime is dropped.
//!
//! This is a codec: it decodes frames into calls on [`Ops`] with their
//! [`Options`] (the deadline a request carries, lease, pin, the caller), and
//! encodes what they return.

mod conn;
mod dispatch;
mod listen;
mod read;
mod upload;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use strata_tiers::{ByteRange, Error};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::DataConfig;
use super::stats::{DataStats, Listener, add};
use crate::ops::{self, Caller, Carrier, Leases, Ops, Options, Read};
use strata_transport::data as shm;
use strata_transport::data::write_all_vectored_within;
use strata_transport::wire::{
    Extent, FEATURE_FLAGS, FEATURE_PEER, FLAG_CACHED_ONLY, FLAG_LEASE, FLAG_PEER, FLAG_PIN,
    GetInfo, HEADER_LEN, Header, HelloInfo, Lease, MGetItem, Op, Request, Status, WireError,
    response,
};

/// Requests one connection may have in flight; past it the server stops reading
/// that connection until answers have gone out.
pub const MAX_INFLIGHT: usize = 1024;

/// Reservations one connection may hold open (reserved, not committed or aborted);
/// past it RESERVE answers `Busy`.
pub const MAX_RESERVATIONS: usize = 256;

/// The slowest an upload's data may come, in bytes per second: an upload of `n`
/// bytes (one PUT, or a reservation and its WRITEs) must be in within a lease
/// lifetime plus `n` at this rate. Past it a PUT's connection is dropped, and a
/// reservation is dropped (a later WRITE or COMMIT answers `UnknownId`). Without
/// it, a sender that dribbles a byte now and then would hold its share of the
/// upload budget forever.
pub const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// The RDMA side of a server: the arena registered once, and one queue pair per
/// client. Fields drop in order: links, then the region, then the device.
#[cfg(feature = "rdma")]
struct RdmaState {
    links: parking_lot::Mutex<Vec<strata_transport::data::rdma::Link>>,
    arena: strata_transport::data::rdma::Region,
    device: strata_transport::data::rdma::Device,
}

/// The data-path server of one store.
pub struct DataServer {
    /// Before `store`: the registration must go before the arena it covers.
    #[cfg(feature = "rdma")]
    rdma: Option<RdmaState>,
    ops: Arc<Ops>,
    config: DataConfig,
    host_id: String,
    /// Connections polling now (at most `config.poll_connections`).
    polling: AtomicUsize,
    /// Counters, for metrics.
    stats: Arc<DataStats>,
    /// Connection slots of each listener (`config.max_connections` each).
    slots: [Arc<Semaphore>; 2],
    /// In-place reservations that expired, kept one more lease lifetime before
    /// their arena memory is let go: a client may still be copying into it (it
    /// stops at half a lifetime after the RESERVE answer reached it, and that
    /// answer may have waited behind others).
    quarantine: parking_lot::Mutex<Vec<(Instant, Upload)>>,
    /// Every connection task, so that shutdown can wait for them ([`Self::drain`]).
    connections: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for DataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataServer")
            .field("config", &self.config)
            .field("host_id", &self.host_id)
            .finish()
    }
}

use self::conn::Out;
use self::upload::Upload;

impl DataServer {
    /// A data server over the request layer `ops` (whose leases live
    /// `config.lease_ttl()`).
    pub fn new(ops: Arc<Ops>, config: DataConfig) -> Arc<Self> {
        Arc::new(Self {
            #[cfg(feature = "rdma")]
            rdma: Self::open_rdma(ops.store()),
            ops,
            quarantine: parking_lot::Mutex::new(Vec::new()),
            connections: tokio_util::task::TaskTracker::new(),
            host_id: shm::host_id(),
            polling: AtomicUsize::new(0),
            stats: Arc::new(DataStats::default()),
            slots: std::array::from_fn(|_| Arc::new(Semaphore::new(config.max_connections))),
            config,
        })
    }

    /// The lease table.
    pub fn leases(&self) -> &Leases {
        self.ops.leases()
    }

    /// The request layer.
    pub fn ops(&self) -> &Arc<Ops> {
        &self.ops
    }

    /// The counters (answers, bytes, connections, what the bounds refused).
    pub fn stats(&self) -> &DataStats {
        &self.stats
    }

    /// Connections open now on `l`.
    pub fn connections(&self, l: Listener) -> u64 {
        let free = self.slots[l as usize].available_permits();
        self.config.max_connections.saturating_sub(free) as u64
    }

    /// Bytes of the in-place reservations held in quarantine now (expired, or left
    /// by a connection that ended).
    pub fn quarantined_bytes(&self) -> u64 {
        self.quarantine
            .lock()
            .iter()
            .map(|(_, u)| u.res.len())
            .sum()
    }

    /// RDMA queue pairs held: one per RDMA client accepted, at most 4096 (the
    /// oldest is dropped first; its client then goes on over TCP).
    pub fn rdma_links(&self) -> usize {
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            return r.links.lock().len();
        }
        0
    }

    /// Whether the RDMA carrier is offered (built with feature `rdma`, and a verbs
    /// device was found).
    pub fn rdma_available(&self) -> bool {
        #[cfg(feature = "rdma")]
        return self.rdma.is_some();
        #[cfg(not(feature = "rdma"))]
        false
    }

    #[cfg(feature = "rdma")]
    fn open_rdma(store: &strata_tiers::TieredStore) -> Option<RdmaState> {
        let device = match strata_transport::data::rdma::Device::open() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "RDMA unavailable; clients use TCP or shared memory");
                return None;
            }
        };
        let arena = store.dram().arena();
        // SAFETY: the arena's mapping lives as long as the store, which this server
        // holds in a field declared after `rdma`, so the region is dropped first.
        let region = match unsafe { device.register(arena.base_ptr(), arena.capacity() as usize) } {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "RDMA unavailable: cannot register the arena");
                return None;
            }
        };
        tracing::info!(
            device = device.name(),
            bytes = region.len(),
            "RDMA carrier ready: arena registered"
        );
        Some(RdmaState {
            links: parking_lot::Mutex::new(Vec::new()),
            arena: region,
            device,
        })
    }

    /// Accepts an RDMA client: creates a queue pair, connects it to `peer`, and
    /// returns this end (its region is the arena).
    #[cfg(feature = "rdma")]
    pub fn rdma_accept(
        &self,
        peer: &strata_transport::data::rdma::Endpoint,
    ) -> std::io::Result<strata_transport::data::rdma::Endpoint> {
        let Some(r) = &self.rdma else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this server has no RDMA device",
            ));
        };
        let mut link = r.device.link()?;
        link.connect(peer)?;
        let me = link.endpoint(&r.arena);
        let mut links = r.links.lock();
        // Bounded: a server keeps at most 4096 client queue pairs (oldest dropped).
        if links.len() >= 4096 {
            links.remove(0);
        }
        links.push(link);
        Ok(me)
    }

    /// Waits, at most `grace`, until every connection task has ended: once
    /// `shutdown` is cancelled each one finishes the requests it has in flight
    /// (a COMMIT that is writing its value included), answers them and stops. The
    /// server closes the tiers only after this, so no commit runs into a closed
    /// store. `false` if some were still running after `grace`.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.connections.close();
        tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
    }

    /// Connection tasks running now.
    pub fn connection_tasks(&self) -> usize {
        self.connections.len()
    }

    /// Counts an answer that went out.
    fn sent(&self, out: &Out) {
        self.stats.answered(out.op, out.status);
        add(&self.stats.bytes_inline, out.data_len);
    }
}
