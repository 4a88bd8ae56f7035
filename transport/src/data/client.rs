//! The client side of the data path: a pool of multiplexed connections over TCP or
//! the shared-memory carrier's Unix socket.
//!
//! Each connection has a reader task that pairs answers with their requests by id,
//! so many requests are in flight on one connection (pipelining), and calls from
//! many tasks share the pool round-robin. A broken connection fails its pending
//! calls and is reopened by the next call that picks it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use strata_proto::Key;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;

use super::io::write_all_vectored;
use super::shm::{self, Mapping, ValueReader};
use crate::error::{ClientError, Result};
use crate::wire::{
    FEATURE_FLAGS, FLAG_LEASE, FLAG_PIN, GetInfo, HEADER_LEN, Header, HelloInfo, KeyRange, Lease,
    Limits, MAX_BATCH, Op, Request, Status, request_frame, request_frame_within, response,
};

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
        }
    }
}

/// An answer frame.
struct Frame {
    header: Header,
    meta: Bytes,
    data: Bytes,
    /// When its header came in: leases in it are timed from here.
    arrived: Instant,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Frame>>>;

/// One multiplexed connection.
struct Conn {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Arc<Pending>,
    broken: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    /// Whether the server takes the DEADLINE flag (its HELLO said so): each
    /// request then carries the caller's time left.
    deadlines: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
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

/// Releases gathered before they are sent on their own.
const RELEASE_BATCH: usize = 16;

impl std::fmt::Debug for DataClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataClient")
            .field("endpoint", &self.inner.endpoint)
            .field("carrier", &self.inner.carrier)
            .finish()
    }
}

/// Client-side limits: answers may carry up to 4 GiB of data (an MGET).
fn client_limits() -> Limits {
    Limits {
        max_meta: 16 << 20,
        max_data: 4 << 30,
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

    /// Connects the RDMA carrier: frames over TCP to `endpoint.tcp`, bytes by
    /// one-sided RDMA on the server's arena. `exchange` sends this end's queue-pair
    /// endpoint to the server (gRPC `RdmaConnect`) and returns the server's; it
    /// runs again whenever a broken link is set up anew (`rdma_relink_after`).
    #[cfg(feature = "rdma")]
    pub async fn connect_rdma<F, Fut>(
        endpoint: DataEndpoint,
        options: DataOptions,
        exchange: F,
    ) -> Result<Self>
    where
        F: Fn(super::rdma::Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<super::rdma::Endpoint>> + Send + 'static,
    {
        let exchange: RdmaExchange = Arc::new(move |me| Box::pin(exchange(me)));
        let client = RdmaClient::linked(&exchange).await?;
        let addr = endpoint.tcp.clone().ok_or_else(|| ClientError::Connect {
            addr: "(none)".into(),
            message: "the server announced no TCP data endpoint".into(),
        })?;
        let conn = open_tcp(&addr).await?;
        let hello = hello(&conn, &shm::host_id(), options.timeout).await?;
        let me = Self::with(endpoint, options, Carrier::Rdma, hello, None, conn);
        if me.inner.rdma.set(Mutex::new(client)).is_err()
            || me
                .inner
                .relink
                .set(Relink {
                    exchange,
                    state: Mutex::new(RelinkState::default()),
                })
                .is_err()
        {
            return Err(proto("RDMA link set twice"));
        }
        Ok(me)
    }

    /// With the RDMA link broken: starts setting up a new one in the background,
    /// once `rdma_relink_after` has passed since the break was first seen (or
    /// since the last attempt failed) and no attempt is running. The new link
    /// replaces the broken one under its lock, so a call never sees half of each.
    #[cfg(feature = "rdma")]
    fn relink(&self) {
        let Some(relink) = self.inner.relink.get() else {
            return;
        };
        {
            let mut s = relink.state.lock();
            let now = Instant::now();
            let since = *s.since.get_or_insert(now);
            if s.running || now.duration_since(since) < self.inner.options.rdma_relink_after {
                return;
            }
            s.running = true;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Some(relink) = inner.relink.get() else {
                return;
            };
            let made = RdmaClient::linked(&relink.exchange).await;
            let ok = match made {
                Ok(client) => {
                    if let Some(r) = inner.rdma.get() {
                        *r.lock() = client;
                    }
                    tracing::info!("RDMA link rebuilt: reads and writes go by RDMA again");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RDMA link not rebuilt; calls stay on TCP");
                    false
                }
            };
            let mut s = relink.state.lock();
            s.running = false;
            s.relinked += u64::from(ok);
            s.since = (!ok).then(Instant::now);
        });
    }

    /// How many times this client rebuilt its RDMA link after it broke.
    #[cfg(feature = "rdma")]
    pub fn rdma_relinks(&self) -> u64 {
        self.inner
            .relink
            .get()
            .map_or(0, |r| r.state.lock().relinked)
    }

    /// Takes this client's RDMA link out of service, as a failed or timed-out
    /// RDMA operation does; later calls go over the TCP connection. Fault
    /// injection, for tests of that fallback. (Nothing without an RDMA link.)
    #[cfg(feature = "rdma")]
    #[doc(hidden)]
    pub fn break_rdma_link(&self) {
        if let Some(r) = self.inner.rdma.get() {
            r.lock().link.mark_broken();
        }
    }

    /// The carrier in use.
    pub fn carrier(&self) -> Carrier {
        self.inner.carrier
    }

    /// The server's HELLO answer.
    pub fn server(&self) -> &HelloInfo {
        &self.inner.hello
    }

    /// A connection of the pool (round-robin), opened or reopened as needed.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let mut slot = self.inner.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && !c.broken.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let c = Arc::new(match self.inner.carrier {
            Carrier::Tcp | Carrier::Rdma => {
                let addr = self.inner.endpoint.tcp.as_deref().unwrap_or_default();
                open_tcp(addr).await?
            }
            Carrier::Shm => {
                let path = self.inner.endpoint.unix.clone().unwrap_or_default();
                open_unix(&path).await?.0
            }
        });
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Whether the server serves `op` (its HELLO answer's op set). An op the server
    /// does not know would be a broken header to it, ending the connection and every
    /// call in flight on it, so such a call fails here, before anything is sent.
    fn serves(&self, op: Op) -> Result<()> {
        if self.inner.hello.ops & op.bit() == 0 {
            return Err(ClientError::Unsupported(op));
        }
        Ok(())
    }

    /// Sends one request with `data` and waits for its answer (one attempt). Leases
    /// waiting to be released ride along in the same write.
    async fn call(&self, req: &Request, flags: u16, data: Option<&[u8]>) -> Result<Frame> {
        self.serves(req.op())?;
        let conn = self.conn().await?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = self.release_frame();
        send(
            &conn,
            id,
            flags,
            req,
            data,
            self.inner.options.timeout,
            prefix,
        )
        .await
    }

    /// A RELEASE frame for the leases waiting, if any.
    fn release_frame(&self) -> Option<Bytes> {
        let leases = std::mem::take(&mut *self.inner.releases.lock());
        if leases.is_empty() {
            return None;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Some(request_frame(id, 0, &Request::Release { leases }, 0))
    }

    /// Runs an idempotent call with retries on transient errors.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // The deadline bounds the whole call, retries and backoff included (each
        // attempt also has it as its own limit).
        let o = &self.inner.options;
        tokio::time::timeout(o.timeout, crate::error::retry(o.attempts, o.backoff, f))
            .await
            .unwrap_or(Err(ClientError::Timeout(o.timeout)))
    }

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

    async fn put_once(&self, key: &Key, value: &[u8], pin: bool) -> Result<u64> {
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

    fn lease_flag(&self) -> u16 {
        if self.inner.carrier == Carrier::Tcp || !self.rdma_usable() {
            0
        } else {
            FLAG_LEASE
        }
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

    /// Copies `value` into reserved arena extents: through the mapping (shm) or by
    /// RDMA WRITE.
    fn write_extents(
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
    fn with_extents<R>(
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
    async fn under_lease<R>(
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
    async fn collect(
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

    async fn flush(inner: &Arc<Inner>) {
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
    async fn release(&self, lease: u64) {
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

async fn open_tcp(addr: &str) -> Result<Conn> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    Ok(start_conn(r, Box::new(w)))
}

async fn open_unix(path: &std::path::Path) -> Result<(Conn, std::os::fd::OwnedFd)> {
    let connect_err = |e: std::io::Error| ClientError::Connect {
        addr: path.display().to_string(),
        message: e.to_string(),
    };
    let s = UnixStream::connect(path).await.map_err(connect_err)?;
    let fd = shm::recv_fd(&s).await.map_err(connect_err)?;
    let (r, w) = s.into_split();
    Ok((start_conn(r, Box::new(w)), fd))
}

fn start_conn<R: AsyncRead + Send + Unpin + 'static>(
    r: R,
    w: Box<dyn AsyncWrite + Send + Unpin>,
) -> Conn {
    let pending: Arc<Pending> = Arc::default();
    let broken = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_loop(r, pending.clone(), broken.clone()));
    Conn {
        writer: tokio::sync::Mutex::new(w),
        pending,
        broken,
        reader,
        deadlines: AtomicBool::new(false),
    }
}

/// What is left of the time a client may use arena memory under a lease (or an
/// in-place reservation) of `ttl_ms`: half of it, counted from `arrived`, when its
/// answer came in (the server started the clock a little earlier: the other half
/// leaves that margin). `None` once it is spent.
fn in_lease_time(ttl_ms: u32, arrived: Instant) -> Option<Duration> {
    let half = Duration::from_millis(u64::from(ttl_ms)) / 2;
    half.checked_sub(arrived.elapsed()).filter(|d| !d.is_zero())
}

/// How far ahead of the bytes that arrived an answer's buffer is allocated.
const ANSWER_CHUNK: u64 = 64 << 20;

async fn read_loop<R: AsyncRead + Unpin>(r: R, pending: Arc<Pending>, broken: Arc<AtomicBool>) {
    let mut r = BufReader::with_capacity(64 << 10, r);
    let limits = client_limits();
    let res: std::io::Result<()> = async {
        loop {
            let mut hb = [0u8; HEADER_LEN];
            r.read_exact(&mut hb).await?;
            let arrived = Instant::now();
            let header = Header::decode(&hb, &limits)
                .and_then(|h| h.check_response().map(|()| h))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut meta = BytesMut::zeroed(header.meta_len as usize);
            r.read_exact(&mut meta).await?;
            // The buffer grows with what arrives, at most `ANSWER_CHUNK` ahead of it:
            // a header alone (from a broken or hostile server) cannot make this
            // process allocate gigabytes.
            // (`reserve_exact`: a doubling buffer could keep twice the answer.)
            let want = header.data_len;
            let mut data = Vec::<u8>::with_capacity(want.min(ANSWER_CHUNK) as usize);
            while (data.len() as u64) < want {
                let left = want - data.len() as u64;
                data.reserve_exact(left.min(ANSWER_CHUNK) as usize);
                if r.read_buf(&mut (&mut data).limit(left as usize)).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let tx = pending.lock().remove(&header.id);
            if let Some(tx) = tx {
                let _ = tx.send(Frame {
                    header,
                    meta: meta.freeze(),
                    data: Bytes::from(data),
                    arrived,
                });
            }
        }
    }
    .await;
    broken.store(true, Ordering::Release);
    // Dropping the senders fails every pending call.
    pending.lock().clear();
    if let Err(e) = res {
        tracing::debug!(error = %e, "data connection closed");
    }
}

/// Sends a request on `conn` and waits for its answer, mapping error statuses.
async fn send(
    conn: &Conn,
    id: u64,
    flags: u16,
    req: &Request,
    data: Option<&[u8]>,
    timeout: Duration,
    prefix: Option<Bytes>,
) -> Result<Frame> {
    let data = data.unwrap_or_default();
    // The server gets the same deadline, so that it stops working for a caller
    // that has stopped waiting (origin reads included).
    let budget = conn.deadlines.load(Ordering::Relaxed).then_some(timeout);
    let frame = request_frame_within(id, flags, req, data.len() as u64, budget);
    let prefix = prefix.unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    conn.pending.lock().insert(id, tx);
    // Whoever drops this call (a caller that gives up, a deadline around a whole
    // call) leaves the connection in step: the id is forgotten, and a frame cut off
    // mid-write marks the connection broken, so that no other frame follows it.
    let guard = InFlight {
        conn,
        id,
        writing: AtomicBool::new(false),
    };
    let io = async {
        {
            let mut w = conn.writer.lock().await;
            guard.writing.store(true, Ordering::Relaxed);
            if let Err(e) = write_all_vectored(&mut *w, &[&prefix, &frame, data]).await {
                conn.broken.store(true, Ordering::Release);
                return Err(ClientError::Io(e));
            }
            guard.writing.store(false, Ordering::Relaxed);
        }
        rx.await.map_err(|_| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the data connection closed before the answer",
            ))
        })
    };
    let f = match tokio::time::timeout(timeout, io).await {
        Ok(r) => r,
        Err(_) => {
            conn.pending.lock().remove(&id);
            // The request may be half-written: this stream is no longer in step.
            conn.broken.store(true, Ordering::Release);
            Err(ClientError::Timeout(timeout))
        }
    }?;
    if f.header.status != Status::Ok {
        return Err(ClientError::Data {
            op: f.header.op,
            status: f.header.status,
            message: response::decode_error(&f.meta),
        });
    }
    Ok(f)
}

/// A request on its way: see [`send`].
struct InFlight<'a> {
    conn: &'a Conn,
    id: u64,
    writing: AtomicBool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.writing.load(Ordering::Relaxed) {
            self.conn.broken.store(true, Ordering::Release);
        }
        // Answered calls were taken out by the reader already; this is for the rest.
        self.conn.pending.lock().remove(&self.id);
    }
}

async fn hello(conn: &Conn, host_id: &str, timeout: Duration) -> Result<HelloInfo> {
    let req = Request::Hello {
        host_id: host_id.to_owned(),
    };
    let f = send(conn, 0, 0, &req, None, timeout, None).await?;
    let info = response::decode_hello(&f.meta).map_err(proto)?;
    conn.deadlines
        .store(info.ops & FEATURE_FLAGS != 0, Ordering::Relaxed);
    Ok(info)
}

/// The client end of the RDMA carrier: one queue pair, a registered staging buffer
/// that READs land in and WRITEs leave from, and the server's arena region.
/// Fields drop in order: link, region, buffer, device.
#[cfg(feature = "rdma")]
struct RdmaClient {
    link: super::rdma::Link,
    staging: super::rdma::Region,
    buf: Box<[u8]>,
    server: Option<super::rdma::Endpoint>,
    _device: super::rdma::Device,
}

/// Sends this end's queue-pair endpoint to the server (gRPC `RdmaConnect`) and
/// returns the server's.
#[cfg(feature = "rdma")]
type RdmaExchange = Arc<
    dyn Fn(
            super::rdma::Endpoint,
        ) -> futures::future::BoxFuture<'static, Result<super::rdma::Endpoint>>
        + Send
        + Sync,
>;

/// How a broken RDMA link is set up again.
#[cfg(feature = "rdma")]
struct Relink {
    exchange: RdmaExchange,
    state: Mutex<RelinkState>,
}

#[cfg(feature = "rdma")]
#[derive(Default)]
struct RelinkState {
    /// When the break was first seen, or the last attempt failed.
    since: Option<Instant>,
    running: bool,
    relinked: u64,
}

#[cfg(feature = "rdma")]
impl RdmaClient {
    /// Bytes staged per RDMA operation.
    const STAGING: usize = 4 << 20;

    /// A new queue pair, connected to one the server made for it.
    async fn linked(exchange: &RdmaExchange) -> Result<Self> {
        let (mut client, me) = Self::open()?;
        let peer = exchange(me).await?;
        client.connect(peer)?;
        Ok(client)
    }

    fn open() -> Result<(Self, super::rdma::Endpoint)> {
        let device = super::rdma::Device::open()?;
        let mut buf = vec![0u8; Self::STAGING].into_boxed_slice();
        // SAFETY: `buf` is a heap allocation owned by this struct and never resized;
        // the region is dropped before it (field order).
        let staging = unsafe { device.register(buf.as_mut_ptr(), buf.len())? };
        let link = device.link()?;
        let me = link.endpoint(&staging);
        Ok((
            Self {
                link,
                staging,
                buf,
                server: None,
                _device: device,
            },
            me,
        ))
    }

    fn connect(&mut self, peer: super::rdma::Endpoint) -> Result<()> {
        self.link.connect(&peer)?;
        self.server = Some(peer);
        Ok(())
    }

    /// The server's address of `e`, checked against its region.
    fn remote(&self, e: &crate::wire::Extent) -> std::io::Result<(u64, u32)> {
        let s = self
            .server
            .ok_or_else(|| std::io::Error::other("RDMA link not connected"))?;
        if e.offset.checked_add(e.len).is_none_or(|end| end > s.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "extent {}+{} is outside the server's {}-byte region",
                    e.offset, e.len, s.len
                ),
            ));
        }
        Ok((s.addr + e.offset, s.rkey))
    }

    fn read(
        &mut self,
        extents: &[crate::wire::Extent],
        len: u64,
        deadline: Duration,
    ) -> std::io::Result<Vec<u8>> {
        // `len` comes from the server: no allocation past what its region can hold.
        let region = self.server.map_or(0, |s| s.len);
        if len > region {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a read of {len} bytes is larger than the server's {region}-byte region"),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        for e in extents {
            let (mut raddr, rkey) = self.remote(e)?;
            let mut left = e.len;
            while left > 0 {
                let n = left.min(Self::STAGING as u64) as u32;
                self.link.read(&self.staging, 0, n, raddr, rkey, deadline)?;
                out.extend_from_slice(&self.buf[..n as usize]);
                raddr += u64::from(n);
                left -= u64::from(n);
            }
        }
        if out.len() as u64 != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "extents do not sum to the length",
            ));
        }
        Ok(out)
    }

    fn write(
        &mut self,
        extents: &[crate::wire::Extent],
        value: &[u8],
        deadline: Duration,
    ) -> std::io::Result<()> {
        let total = extents
            .iter()
            .try_fold(0u64, |t, e| t.checked_add(e.len))
            .unwrap_or(u64::MAX);
        if total != value.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("extents hold {total} bytes for {} to write", value.len()),
            ));
        }
        let mut pos = 0usize;
        for e in extents {
            let (mut raddr, rkey) = self.remote(e)?;
            let mut left = e.len;
            while left > 0 {
                let n = left.min(Self::STAGING as u64) as usize;
                self.buf[..n].copy_from_slice(&value[pos..pos + n]);
                self.link
                    .write(&self.staging, 0, n as u32, raddr, rkey, deadline)?;
                pos += n;
                raddr += n as u64;
                left -= n as u64;
            }
        }
        Ok(())
    }
}
