//! The client side of the data path: a pool of multiplexed connections over TCP or
//! the shared-memory carrier's Unix socket.
//!
//! Each connection has a reader task that pairs answers with their requests by id,
//! so many requests are in flight on one connection (pipelining), and calls from
//! many tasks share the pool round-robin. A broken connection fails its pending
//! calls and is reopened by the next call that picks it.
//!
//! Along its seams: the client and its carriers here; the connection pool and one
//! request's round trip in `pool`; the operations in `ops`; arena access under
//! leases and in-place reservations, and lease releases, in `lease`; the RDMA
//! carrier's queue pair and its relinking in `rdma`.

mod lease;
mod ops;
mod pool;
#[cfg(feature = "rdma")]
mod rdma;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use parking_lot::Mutex;

use self::pool::{Conn, hello, open_tcp, open_unix};
#[cfg(feature = "rdma")]
use self::rdma::{RdmaClient, Relink};
use super::shm::{self, Mapping};
use crate::error::{ClientError, Result};
use crate::wire::{HelloInfo, Op};

/// The carrier a data client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Binary frames over TCP.
    Tcp,
    /// Same-host shared memory (frames over a Unix socket, bytes through the arena).
    Shm,
    /// Frames over TCP, bytes by one-sided RDMA READ/WRITE on the arena (feature
    /// `rdma`).
    Rdma,
}

/// Which carrier to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CarrierChoice {
    /// Shared memory when client and server share a host, TCP otherwise.
    #[default]
    Auto,
    /// TCP only.
    Tcp,
    /// Shared memory only (fails when it is not possible).
    Shm,
    /// RDMA only (fails when it is not possible, or without feature `rdma`).
    Rdma,
}

/// Where a server's data path listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataEndpoint {
    /// TCP address (`HOST:PORT`).
    pub tcp: Option<String>,
    /// Unix socket of the shared-memory carrier.
    pub unix: Option<PathBuf>,
    /// The server's host identity (from the control path), if known.
    pub host_id: Option<String>,
}

/// Data client settings.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Carrier selection. Default: auto.
    pub carrier: CarrierChoice,
    /// Connections in the pool. Default: 2.
    pub connections: usize,
    /// Deadline of each call, retries included. Default: 30 s.
    pub timeout: Duration,
    /// Attempts for idempotent calls (1 = no retry). Default: 3.
    pub attempts: u32,
    /// First backoff between attempts (doubled each time, with jitter). Default: 20 ms.
    pub backoff: Duration,
    /// RDMA: how long after its link broke (an operation timed out or failed) the
    /// client sets up a new queue pair, in the background, while its calls go over
    /// TCP; and how long it waits after a failed attempt. Default: 1 s.
    pub rdma_relink_after: Duration,
    /// This client is a cluster node reading from a peer to fill its own cache: its
    /// reads carry [`FLAG_PEER`](crate::wire::FLAG_PEER) (when the server takes it),
    /// so the peer answers them itself and never forwards them. Default: false.
    pub peer: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            carrier: CarrierChoice::Auto,
            connections: 2,
            timeout: Duration::from_secs(30),
            attempts: 3,
            backoff: Duration::from_millis(20),
            rdma_relink_after: Duration::from_secs(1),
            peer: false,
        }
    }
}

/// A data-path client (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct DataClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: DataEndpoint,
    options: DataOptions,
    carrier: Carrier,
    hello: HelloInfo,
    mapping: Option<Mapping>,
    #[cfg(feature = "rdma")]
    rdma: std::sync::OnceLock<Mutex<RdmaClient>>,
    #[cfg(feature = "rdma")]
    relink: std::sync::OnceLock<Relink>,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    /// Leases copied out and not yet released: sent in one RELEASE frame ahead of
    /// the next request (or once [`RELEASE_BATCH`] have gathered).
    releases: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for DataClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataClient")
            .field("endpoint", &self.inner.endpoint)
            .field("carrier", &self.inner.carrier)
            .finish()
    }
}

impl DataClient {
    /// Connects to `endpoint`, choosing the carrier as `options.carrier` says.
    pub async fn connect(endpoint: DataEndpoint, options: DataOptions) -> Result<Self> {
        let local = shm::host_id();
        let same_host = endpoint.host_id.as_deref().is_none_or(|h| h == local);
        let try_shm = match options.carrier {
            CarrierChoice::Tcp | CarrierChoice::Rdma => false,
            CarrierChoice::Shm => true,
            CarrierChoice::Auto => endpoint.unix.is_some() && same_host,
        };
        if try_shm {
            match Self::connect_shm(&endpoint, &options, &local).await {
                Ok(c) => return Ok(c),
                Err(e) if options.carrier == CarrierChoice::Shm => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "shared memory unavailable; using TCP");
                }
            }
        }
        let addr = endpoint.tcp.clone().ok_or_else(|| ClientError::Connect {
            addr: "(none)".into(),
            message: "the server announced no TCP data endpoint".into(),
        })?;
        let conn = open_tcp(&addr).await?;
        let hello = hello(&conn, &local, options.timeout).await?;
        Ok(Self::with(
            endpoint,
            options,
            Carrier::Tcp,
            hello,
            None,
            conn,
        ))
    }

    async fn connect_shm(
        endpoint: &DataEndpoint,
        options: &DataOptions,
        local: &str,
    ) -> Result<Self> {
        let path = endpoint.unix.clone().ok_or_else(|| ClientError::Connect {
            addr: "(none)".into(),
            message: "the server announced no shared-memory socket".into(),
        })?;
        let (conn, fd) = open_unix(&path).await?;
        let hello = hello(&conn, local, options.timeout).await?;
        if hello.host_id != local {
            return Err(ClientError::Connect {
                addr: path.display().to_string(),
                message: format!(
                    "the server is on host {}, this client on {local}",
                    hello.host_id
                ),
            });
        }
        let mapping = Mapping::new(&fd, hello.arena_len)?;
        Ok(Self::with(
            endpoint.clone(),
            options.clone(),
            Carrier::Shm,
            hello,
            Some(mapping),
            conn,
        ))
    }

    fn with(
        endpoint: DataEndpoint,
        options: DataOptions,
        carrier: Carrier,
        hello: HelloInfo,
        mapping: Option<Mapping>,
        first: Conn,
    ) -> Self {
        let n = options.connections.max(1);
        let mut slots = Vec::with_capacity(n);
        slots.push(tokio::sync::Mutex::new(Some(Arc::new(first))));
        for _ in 1..n {
            slots.push(tokio::sync::Mutex::new(None));
        }
        let me = Self {
            inner: Arc::new(Inner {
                endpoint,
                options,
                carrier,
                hello,
                mapping,
                #[cfg(feature = "rdma")]
                rdma: std::sync::OnceLock::new(),
                #[cfg(feature = "rdma")]
                relink: std::sync::OnceLock::new(),
                slots,
                next_slot: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                releases: Mutex::new(Vec::new()),
            }),
        };
        if carrier != Carrier::Tcp {
            // Releases of an idle client: sent every quarter of the lease lifetime.
            let weak = Arc::downgrade(&me.inner);
            let period = Duration::from_millis(u64::from(me.inner.hello.lease_ttl_ms) / 4)
                .max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    Self::flush(&inner).await;
                }
            });
        }
        me
    }

    /// The carrier in use.
    pub fn carrier(&self) -> Carrier {
        self.inner.carrier
    }

    /// The server's HELLO answer.
    pub fn server(&self) -> &HelloInfo {
        &self.inner.hello
    }

    /// False once this client's RDMA link timed out or failed: its reads are then
    /// answered inline and its PUTs sent whole, over the TCP connection that carries
    /// the frames anyway. (True for the other carriers.)
    fn rdma_usable(&self) -> bool {
        #[cfg(feature = "rdma")]
        if let Some(r) = self.inner.rdma.get() {
            let up = !r.lock().link.is_broken();
            if !up {
                self.relink();
            }
            return up;
        }
        true
    }
}

fn proto(e: impl ToString) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Inline data must be exactly the answer's length.
fn check_inline(data: &[u8], len: u64) -> Result<()> {
    if data.len() as u64 != len {
        return Err(proto(format!(
            "{} bytes of data for a length of {len}",
            data.len()
        )));
    }
    Ok(())
}
