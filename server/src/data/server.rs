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
//! With [`DataConfig::poll`] set, a connection with nothing in flight polls its
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

use super::stats::{DataStats, Listener, add};
use crate::ops::{self, Caller, Carrier, Leases, Ops, Options, Read};
use strata_transport::data as shm;
use strata_transport::data::write_all_vectored_within;
use strata_transport::wire::{
    Extent, FEATURE_FLAGS, FLAG_LEASE, FLAG_PIN, GetInfo, HEADER_LEN, Header, HelloInfo, Lease,
    Limits, MGetItem, Op, Request, Status, WireError, response,
};

/// Data-path server settings.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// How long a lease (and so a shared-memory read) may hold arena memory.
    pub lease_ttl: Duration,
    /// Most bytes held by leases at once; beyond it, reads are answered inline.
    pub max_leased_bytes: u64,
    /// Frame limits.
    pub limits: Limits,
    /// How long a connection with nothing in flight polls its socket for the next
    /// request before it parks (zero: park at once). Polling takes the wake-up out of
    /// a round trip, for a busy core while it lasts; [`poll_connections`] at most
    /// poll at once.
    ///
    /// [`poll_connections`]: Self::poll_connections
    pub poll: Duration,
    /// Connections that may poll at once (each holds a runtime worker while it
    /// polls). Default: 1.
    pub poll_connections: usize,
    /// Connections served at once (TCP and Unix socket each); past it a new
    /// connection is closed at once. Default: 4096.
    pub max_connections: usize,
}

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

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(5),
            max_leased_bytes: 1 << 30,
            limits: Limits::default(),
            poll: Duration::ZERO,
            poll_connections: 1,
            max_connections: 4096,
        }
    }
}

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

/// One answer, ready to write.
struct Out {
    op: Op,
    status: Status,
    /// Bytes of `data`.
    data_len: u64,
    header: [u8; HEADER_LEN],
    meta: Bytes,
    data: Vec<Bytes>,
}

impl Out {
    fn ok(op: Op, id: u64, meta: BytesMut, data: Vec<Bytes>) -> Self {
        let len = data.iter().map(|d| d.len() as u64).sum();
        Self {
            op,
            status: Status::Ok,
            data_len: len,
            header: Header::response(op, id, Status::Ok, meta.len(), len).encode(),
            meta: meta.freeze(),
            data,
        }
    }

    fn err(op: Op, id: u64, status: Status, message: String) -> Self {
        let meta = Bytes::from(message.into_bytes());
        Self {
            op,
            status,
            data_len: 0,
            header: Header::response(op, id, status, meta.len(), 0).encode(),
            meta,
            data: Vec::new(),
        }
    }

    fn u64(op: Op, id: u64, v: u64) -> Self {
        let mut m = BytesMut::with_capacity(8);
        response::encode_u64(&mut m, v);
        Self::ok(op, id, m, Vec::new())
    }
}

/// Maps an engine error to a wire status (the one table, `crate::status`).
fn status_of(e: &Error) -> Status {
    crate::status::wire_status(e)
}

fn fail(op: Op, id: u64, e: Error) -> Out {
    Out::err(op, id, status_of(&e), e.to_string())
}

/// An upload in progress (its reservation and budget, [`ops::Upload`]), and when
/// its data is due.
struct Upload {
    res: ops::Upload,
    /// When all its data must be in, however it comes (one PUT, or WRITEs): a
    /// lease lifetime plus its length at [`MIN_UPLOAD_RATE`].
    until: Instant,
}

/// A reservation waiting for its next WRITE or COMMIT.
struct Open {
    up: Upload,
    /// When it was made or last written: it is dropped a lease lifetime later.
    touched: Instant,
}

impl Open {
    /// When it is dropped: a lease lifetime untouched, or past its upload's end
    /// however often it is written (a byte now and then does not keep it).
    fn expires(&self, ttl: Duration) -> Instant {
        (self.touched + ttl).min(self.up.until)
    }
}

/// A connection's open reservations. When the connection ends, the in-place ones
/// go to quarantine (their client may still be copying into them, as after an
/// expiry); the others are dropped, and their memory and budget come back.
struct OpenReservations {
    map: HashMap<u64, Open>,
    server: Arc<DataServer>,
}

impl Drop for OpenReservations {
    fn drop(&mut self) {
        for (_, o) in self.map.drain() {
            self.server.retire(o.up);
        }
    }
}

/// Where the data section of the frame being read goes.
enum Sink {
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

impl DataServer {
    /// A data server over the request layer `ops` (whose leases live
    /// `config.lease_ttl`).
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

    /// Serves TCP connections until `shutdown`.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = self.admit(Listener::Tcp) else {
                        continue;
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(%peer, error = %e, "TCP_NODELAY");
                    }
                    let me = self.clone();
                    let stop = shutdown.clone();
                    self.connections.spawn(async move {
                        let _slot = slot;
                        let caller = Caller {
                            carrier: Carrier::Tcp,
                            peer: Some(peer),
                            principal: None,
                        };
                        if let Err(e) = me.clone().serve_conn(stream, caller, stop).await {
                            me.ended(&e);
                            tracing::debug!(%peer, error = %e, "data connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "data-path accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Drops expired leases until `shutdown`, every quarter of the lease lifetime.
    /// Leases are granted by the shared-memory and RDMA carriers alike, so this runs
    /// whichever carriers are on: without it, a dead client's leases would hold
    /// arena memory until the lease budget filled up.
    pub async fn expire_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.config.lease_ttl / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.ops.leases().sweep();
                    let ttl = self.config.lease_ttl;
                    let done: Vec<_> = {
                        let mut q = self.quarantine.lock();
                        let (old, keep) = std::mem::take(&mut *q)
                            .into_iter()
                            .partition(|(at, _)| at.elapsed() >= ttl);
                        *q = keep;
                        old
                    };
                    drop(done); // outside the lock: returns memory and budget
                }
            }
        }
    }

    /// Serves the shared-memory carrier on a Unix socket until `shutdown`: each
    /// connection first receives the arena's memfd, then speaks the same frames, with
    /// leased reads and in-place writes. Leases expire by [`expire_leases`], which
    /// the caller runs beside this.
    ///
    /// [`expire_leases`]: Self::expire_leases
    pub async fn serve_unix(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    let Some(slot) = self.admit(Listener::Shm) else {
                        continue;
                    };
                    let me = self.clone();
                    let stop = shutdown.clone();
                    self.connections.spawn(async move {
                        let _slot = slot;
                        let fd = me.ops.store().dram().arena().fd();
                        if let Err(e) = shm::send_fd(&stream, fd).await {
                            tracing::debug!(error = %e, "sending the arena descriptor");
                            return;
                        }
                        let caller = Caller {
                            carrier: Carrier::Shm,
                            peer: None,
                            principal: None,
                        };
                        if let Err(e) = me.clone().serve_conn(stream, caller, stop).await {
                            me.ended(&e);
                            tracing::debug!(error = %e, "shm connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shm accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Lets go of an upload that will not be committed: at once, or, if its client
    /// may still be copying into it in place (shm, RDMA), after one more lease
    /// lifetime in quarantine.
    fn retire(&self, up: Upload) {
        if up.res.is_in_place() {
            self.quarantine.lock().push((Instant::now(), up));
        }
    }

    /// A connection slot on `l`, held while the connection is served; `None` (the
    /// connection is to be closed at once, and is counted) at `max_connections`.
    fn admit(&self, l: Listener) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots[l as usize].clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.stats.refused(l);
            tracing::warn!(
                listener = l.name(),
                max = self.config.max_connections,
                "data connection refused: at data.max_connections"
            );
        }
        slot
    }

    /// Counts how a connection ended in error.
    fn ended(&self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::TimedOut {
            add(&self.stats.stalled, 1);
        }
    }

    /// Counts an answer that went out.
    fn sent(&self, out: &Out) {
        self.stats.answered(out.op, out.status);
        add(&self.stats.bytes_inline, out.data_len);
    }

    /// Binds the shared-memory socket at `path` (replacing a stale one), owner-only.
    pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let l = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    }

    async fn serve_conn<S>(
        self: Arc<Self>,
        mut stream: S,
        caller: Caller,
        shutdown: CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + AsFd + Unpin,
    {
        let mut buf = BytesMut::with_capacity(256 << 10);
        let mut inflight: FuturesUnordered<BoxFuture<'static, Out>> = FuturesUnordered::new();
        let mut open = OpenReservations {
            map: HashMap::new(),
            server: self.clone(),
        };
        let reservations = &mut open.map;
        let mut sink: Option<Sink> = None;
        let mut eof = false;
        // When bytes last came in or went out.
        let mut progress = Instant::now();
        loop {
            // Take every whole frame (and every data byte) the buffer holds.
            loop {
                if let Some(s) = sink.as_mut() {
                    if buf.is_empty() {
                        break;
                    }
                    match s {
                        Sink::Discard { remaining } => {
                            let n = (*remaining).min(buf.len() as u64);
                            buf.advance(n as usize);
                            *remaining -= n;
                        }
                        Sink::Reservation { up, remaining, .. } => {
                            let n = (*remaining).min(buf.len() as u64) as usize;
                            let chunk = buf.split_to(n);
                            if let Err(e) = up.res.write(&chunk) {
                                // Cannot happen (lengths were checked); fail loudly.
                                return Err(std::io::Error::other(e.to_string()));
                            }
                            *remaining -= n as u64;
                        }
                    }
                    if let Some(done) = self.finish_sink(&mut sink, reservations) {
                        inflight.push(done);
                    }
                    continue;
                }
                // At the in-flight cap, leave the next frame in the buffer (reading
                // stops too) until answers have gone out.
                if buf.len() < HEADER_LEN || inflight.len() >= MAX_INFLIGHT {
                    break;
                }
                let h = match Header::decode(&buf[..HEADER_LEN], &self.config.limits)
                    .and_then(|h| h.check_request().map(|()| h))
                {
                    Ok(h) => h,
                    Err(e) => {
                        let mut id = [0u8; 8];
                        id.copy_from_slice(&buf[8..16]);
                        let op = Op::Hello;
                        let out =
                            Out::err(op, u64::from_le_bytes(id), Status::Invalid, e.to_string());
                        write_out(&mut stream, &out, self.config.lease_ttl).await?;
                        self.sent(&out);
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                    }
                };
                let need = HEADER_LEN + h.meta_len as usize;
                if buf.len() < need {
                    buf.reserve(need - buf.len());
                    break;
                }
                let frame = buf.split_to(need);
                let meta = &frame[HEADER_LEN..];
                match Request::decode(&h, meta) {
                    Err(e) => {
                        if h.data_len > 0 {
                            sink = Some(Sink::Discard {
                                remaining: h.data_len,
                            });
                        }
                        let WireError::Meta { op, reason } = e else {
                            unreachable!("Request::decode returns Meta errors")
                        };
                        inflight.push(Box::pin(std::future::ready(Out::err(
                            op,
                            h.id,
                            Status::Invalid,
                            format!("bad {op:?} request: {reason}"),
                        ))));
                    }
                    Ok(req) => {
                        let shm = caller.carrier == Carrier::Shm;
                        let opts = Options {
                            deadline: h.budget().map(|b| Deadline::now() + b),
                            lease: (shm || self.rdma_available()) && h.flags & FLAG_LEASE != 0,
                            pin: h.flags & FLAG_PIN != 0,
                            caller: caller.clone(),
                        };
                        if let Some(f) = self.dispatch(&h, req, opts, &mut sink, reservations) {
                            inflight.push(f);
                        }
                        if let Some(done) = self.finish_sink(&mut sink, reservations) {
                            inflight.push(done);
                        }
                    }
                }
            }
            if eof && inflight.is_empty() {
                return Ok(());
            }
            // Idle between requests (not inside a PUT's data): poll for the next one.
            if inflight.is_empty() && !eof && sink.is_none() {
                match self.poll_read(stream.as_fd(), &mut buf) {
                    Ok(Some(0)) => {
                        eof = true;
                        continue;
                    }
                    Ok(Some(_)) => {
                        progress = Instant::now();
                        // A client that keeps the connection busy must not keep this
                        // worker from the runtime: yield once the task's budget is spent.
                        tokio::task::consume_budget().await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            let ttl = self.config.lease_ttl;
            // Timers: the oldest untouched reservation's end, and, inside a frame's
            // data, the end of the wait for more of it (a sender that stalls holds
            // its share of the upload budget).
            let stalled_at = sink.as_ref().map(|s| match s {
                Sink::Reservation { up, .. } => (progress + ttl).min(up.until),
                Sink::Discard { .. } => progress + ttl,
            });
            // At the in-flight cap, frames wait unread in the buffer (a COMMIT among
            // them, perhaps): reservations do not expire until they are read.
            let at_cap = inflight.len() >= MAX_INFLIGHT;
            let expiry = reservations
                .values()
                .filter(|_| !at_cap)
                .map(|o| o.expires(ttl))
                .chain(stalled_at)
                .min();
            tokio::select! {
                biased;
                Some(out) = inflight.next(), if !inflight.is_empty() => {
                    write_out(&mut stream, &out, ttl).await?;
                    self.sent(&out);
                    progress = Instant::now();
                }
                r = stream.read_buf(&mut buf), if !eof && inflight.len() < MAX_INFLIGHT => {
                    if r? == 0 {
                        eof = true;
                        if inflight.is_empty() {
                            return Ok(());
                        }
                    }
                    progress = Instant::now();
                }
                // (An async block: nothing is made for the timer when no timer is
                // due, as on every GET.)
                () = async {
                    match expiry {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if expiry.is_some() => {
                    if stalled_at.is_some_and(|t| Instant::now() >= t) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "a frame's data stopped coming for {ttl:?}, or came slower \
                                 than {MIN_UPLOAD_RATE} bytes/s"
                            ),
                        ));
                    }
                    let expired: Vec<u64> = reservations
                        .iter()
                        .filter(|(_, o)| Instant::now() >= o.expires(ttl))
                        .map(|(id, _)| *id)
                        .collect();
                    add(&self.stats.reservations_expired, expired.len() as u64);
                    for id in expired {
                        if let Some(o) = reservations.remove(&id) {
                            self.retire(o.up);
                        }
                    }
                }
                _ = shutdown.cancelled(), if inflight.is_empty() => return Ok(()),
            }
        }
    }

    /// Polls the socket `fd` for up to `config.poll` when a polling place is free:
    /// the bytes read (0 at end of stream), or `None` when nothing came (or polling
    /// is off).
    fn poll_read(&self, fd: BorrowedFd<'_>, buf: &mut BytesMut) -> std::io::Result<Option<usize>> {
        let poll = self.config.poll;
        if poll.is_zero()
            || self
                .polling
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.config.poll_connections).then_some(n + 1)
                })
                .is_err()
        {
            return Ok(None);
        }
        let start = Instant::now();
        let got = loop {
            match shm::recv_now(fd, buf) {
                Ok(n) => {
                    if n > 0 {
                        add(&self.stats.poll_hits, 1);
                    }
                    break Ok(Some(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= poll {
                        break Ok(None);
                    }
                    std::hint::spin_loop();
                }
                Err(e) => break Err(e),
            }
        };
        self.polling.fetch_sub(1, Ordering::AcqRel);
        got
    }

    /// Starts a request. Requests with data set `sink`; the others return their
    /// answer's future.
    fn dispatch(
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
                        lease_ttl_ms: self.config.lease_ttl.as_millis() as u32,
                        max_data: self.config.limits.max_data,
                        ops: Op::ALL | FEATURE_FLAGS,
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
                            ttl_ms: self.config.lease_ttl.as_millis() as u32,
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
            Request::Abort { reservation } => match reservations.remove(&reservation) {
                Some(_) => ready(Out::u64(op, id, 1)),
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

    /// Ends a data section that is complete: a PUT commits, a WRITE returns its
    /// reservation to the table.
    fn finish_sink(
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
    fn begin_upload(
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
            until: Instant::now() + self.config.lease_ttl + at_min_rate,
        })
    }

    /// Counts the bytes of a read by how they leave.
    fn count(&self, read: &Read) {
        if read.lease.is_some() {
            add(&self.stats.bytes_leased, read.len);
        }
    }

    fn answer_get(&self, id: u64, read: Read) -> Out {
        self.count(&read);
        let mut m = BytesMut::with_capacity(64);
        response::encode_get(
            &mut m,
            &GetInfo {
                total_len: read.total,
                offset: read.start,
                len: read.len,
                lease: read.lease,
            },
        );
        Out::ok(Op::Get, id, m, read.slices)
    }

    /// Answers an MGET or MGET_RANGE: one item per range, leased or inline in
    /// order, the inline ones within `max_data` ([`Ops::mget`]).
    async fn mget(
        &self,
        op: Op,
        id: u64,
        ranges: &[(&strata_tiers::Key, ByteRange)],
        opts: &Options,
    ) -> Out {
        let reads = match self
            .ops
            .mget(ranges, self.config.limits.max_data, opts)
            .await
        {
            Ok(r) => r,
            Err(e) => return fail(op, id, e),
        };
        let mut items = Vec::with_capacity(reads.len());
        let mut data = Vec::new();
        for r in reads {
            items.push(match r {
                Ok(read) => {
                    self.count(&read);
                    data.extend(read.slices);
                    MGetItem {
                        status: Status::Ok,
                        len: read.len,
                        lease: read.lease,
                    }
                }
                Err(e) => MGetItem {
                    status: status_of(&e),
                    len: 0,
                    lease: None,
                },
            });
        }
        let mut m = BytesMut::with_capacity(16 + items.len() * 16);
        response::encode_mget(&mut m, &items);
        Out::ok(op, id, m, data)
    }
}

fn unknown(op: Op, id: u64, reservation: u64) -> Out {
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

/// Writes an answer: header, metadata and data slices in vectored writes. A peer
/// that takes no bytes for `stall` is given up on (its answer's arena bytes would
/// stay pinned for as long as it waits).
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &Out,
    stall: Duration,
) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + out.data.len());
    parts.push(&out.header);
    if !out.meta.is_empty() {
        parts.push(&out.meta);
    }
    parts.extend(out.data.iter().filter(|d| !d.is_empty()).map(|d| &d[..]));
    write_all_vectored_within(stream, &parts, Some(stall)).await
}
