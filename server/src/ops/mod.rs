//! The request layer: one set of operations behind both entry points.
//!
//! gRPC (`crate::service`) and the data path (`crate::data`) are codecs: they
//! decode a request, call one operation here with its [`Options`], and encode what
//! comes back, its errors through the one table of `crate::status`. What a request
//! may hold and what it is refused is decided here once, for every carrier:
//!
//! - admission: one upload budget ([`Config::max_upload_bytes`]) for gRPC puts,
//!   data-path PUTs and open reservations alike, and one batch limit
//!   ([`MAX_BATCH_KEYS`]) for MGET, MATCH_PREFIX and `Contains`;
//! - the caller's deadline, which bounds the whole operation, origin reads
//!   included (a read abandoned at its deadline stops reading the origin unless
//!   another caller still waits for the same pages);
//! - leases on arena memory for zero-copy reads ([`Leases`]);
//! - pins asked for with a put, taken once the value is committed;
//! - in-flight commits and streamed reads, tracked so that shutdown waits for
//!   them before the tiers close ([`Ops::drain`]).
//!
//! Every operation runs in a `tracing` span named after it, with its carrier, and
//! is timed into `strata_request_duration_seconds{op,carrier}`.

mod keys;
mod lease;
mod read;
mod write;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_tiers::{BoxFuture, ByteRange, Error, Key, TieredStore};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::ByteSize;

pub use self::lease::Leases;
pub use self::read::Read;
pub use self::write::Upload;

/// Most keys (or ranges) in one batch request, on every carrier: the data path's
/// frame limit (`strata_transport::wire::MAX_BATCH`). Clients split longer batches.
pub const MAX_BATCH_KEYS: usize = strata_transport::wire::MAX_BATCH;

/// The upload budget counts in KiB, so that one upload's share fits a semaphore's
/// `u32` up to 4 TiB.
const BUDGET_UNIT: u64 = 1024;

/// The least an upload holds of the budget, so that tiny reservations cannot be
/// opened by the million.
const MIN_UPLOAD_CHARGE: u64 = 4096;

/// The unit of the read budget ([`Config::max_read_bytes`]).
const READ_UNIT: u64 = 64 << 10;

/// The request layer's settings (`[requests]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Bytes of uploads held at once, at most, from every client and carrier:
    /// gRPC puts, data-path PUTs and open reservations. Past it a put answers
    /// `Busy` (gRPC `RESOURCE_EXHAUSTED`), which clients retry with backoff
    /// within their deadline; a single upload over it answers `TooLarge`.
    /// Default: 1 GiB.
    pub max_upload_bytes: ByteSize,
    /// Milliseconds a gRPC stream may go without progress: a put whose next
    /// message does not come, a get whose next message the client does not take.
    /// Past it the stream ends (`DEADLINE_EXCEEDED`) and what it held (upload
    /// budget, pages) comes back. (The data path drops a stalled connection after
    /// a lease lifetime.) Also the deadline of a request that carries none (an
    /// operation, or each page of a streamed get): `DEADLINE_EXCEEDED` past it.
    /// Default: 30000.
    pub stall_timeout_ms: u64,
    /// Bytes of data-path GET answers held at once, at most, from every client:
    /// a GET is admitted by its length before it is read from NVMe or the
    /// origin, and holds its share until its answer is written (or dropped), so
    /// pipelined reads of large values cannot read more than this into memory.
    /// A read past it waits (within the caller's deadline); one larger than it
    /// is charged all of it. Default: 1 GiB.
    pub max_read_bytes: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: ByteSize(1 << 30),
            stall_timeout_ms: 30_000,
            max_read_bytes: ByteSize(1 << 30),
        }
    }
}

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Carrier {
    /// `strata.v1.Cache` over gRPC.
    #[default]
    Grpc,
    /// The data path over TCP.
    Tcp,
    /// The data path over the shared-memory carrier's Unix socket.
    Shm,
}

impl Carrier {
    /// Every carrier.
    pub const ALL: [Self; 3] = [Self::Grpc, Self::Tcp, Self::Shm];

    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
            Self::Shm => "shm",
        }
    }
}

/// Who asked: the carrier, the peer's address where there is one, and the
/// principal the caller authenticated as (none yet: tenancy comes with a later
/// release, and will key quotas and policy on it).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// How the request came.
    pub carrier: Carrier,
    /// The peer's socket address (TCP, gRPC); `None` over a Unix socket.
    pub peer: Option<SocketAddr>,
    /// The authenticated principal, once there is authentication.
    pub principal: Option<String>,
}

/// Per-operation options, set by the codec from what the request carried.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// When the caller stops waiting: the operation, origin reads included, ends
    /// with `DeadlineExceeded` then.
    pub deadline: Option<Instant>,
    /// Answer reads with a lease on arena memory where the value's bytes lie in
    /// the arena (shared-memory and RDMA carriers).
    pub lease: bool,
    /// Pin the value in DRAM once its put is committed.
    pub pin: bool,
    /// The request comes from a cluster peer filling its cache: what this node
    /// misses is read from its own origin, never asked of another peer
    /// ([`from_peer`]).
    pub from_peer: bool,
    /// Answer reads from the cache tiers alone: a miss is `NotFound`, never an
    /// origin read (a member asking whether this node still holds a key).
    pub cached_only: bool,
    /// Who asked.
    pub caller: Caller,
}

impl Options {
    /// Options of a request from `caller`, with no deadline, lease or pin.
    pub fn from(caller: Caller) -> Self {
        Self {
            caller,
            ..Self::default()
        }
    }

    /// These options with a deadline `budget` from now (none when `None`).
    pub fn within(mut self, budget: Option<Duration>) -> Self {
        self.deadline = budget.map(|b| Instant::now() + b);
        self
    }
}

/// Copies of values on other cluster members (`crate::cluster::peer::Replicator`):
/// what a put or a delete committed here also does elsewhere.
pub trait Replicate: Send + Sync + std::fmt::Debug {
    /// Whether a put or delete of `key` goes to other members: its namespace
    /// keeps copies there, or this node does not keep it ([`Self::keeps`]).
    fn replicates(&self, key: &Key) -> bool;

    /// Whether this node keeps its own copy of `key` once it is put: `false` on
    /// a node that does not own a key of a namespace forwarded to its owners.
    fn keeps(&self, key: &Key) -> bool;

    /// Whether this node, which does not keep `key`, is next in line for it: the
    /// owner once one of its owners is gone. When none of the owners can be
    /// reached, it keeps a put itself (the owner may be dead, not yet out).
    fn stands_in(&self, key: &Key) -> bool;

    /// Sends `value`, committed here under `key`, to the key's other owners;
    /// `Ok` once as many committed as the namespace's `acks` asks.
    fn put(
        &self,
        key: &Key,
        value: bytes::Bytes,
        pin: bool,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Deletes the key's other copies (their failures are logged); whether any
    /// of them held it.
    fn delete(&self, key: &Key) -> BoxFuture<'static, bool>;

    /// Reads `range` of `key` from the members that hold it (for a key this
    /// node does not keep): the value's length and the bytes, `None` if no one
    /// holds it. `fills`: the owner fills a miss from its origin.
    fn fetch(
        &self,
        key: &Key,
        range: ByteRange,
        fills: bool,
    ) -> BoxFuture<'static, Result<Option<(u64, bytes::Bytes)>, Error>>;
}

/// The operations of one server over its store.
#[derive(Debug)]
pub struct Ops {
    store: TieredStore,
    config: Config,
    /// The budget of read answers held at once, in [`READ_UNIT`]s
    /// ([`Config::max_read_bytes`]).
    reads: Arc<Semaphore>,
    read_units: u32,
    /// The upload budget, in [`BUDGET_UNIT`]s.
    uploads: Arc<Semaphore>,
    /// Its size in units.
    budget_units: u64,
    leases: Leases,
    /// Commits in flight, whichever carrier started them, and the tasks that
    /// stream long reads ([`Ops::spawn`]).
    commits: TaskTracker,
    metrics: Arc<crate::metrics::Metrics>,
    /// Requests from cluster peers answered ([`Options::from_peer`]).
    peer_requests: std::sync::atomic::AtomicU64,
    /// Copies on other members, on a cluster node ([`Ops::set_replicas`]).
    replicas: std::sync::OnceLock<Arc<dyn Replicate>>,
    /// Set once a cluster node left its cluster ([`Ops::leaving`]): it takes
    /// no more writes.
    leaving: std::sync::atomic::AtomicBool,
}

tokio::task_local! {
    /// Set while a step of a request from a cluster peer runs.
    static FROM_PEER: ();
}

/// Whether the code running now serves a request from a cluster peer: the
/// cluster's origin for the `shard` namespace (`crate::cluster::peer`) then reads
/// the real origin instead of asking the key's owner, so a read is forwarded at
/// most once, whatever the two nodes' views of the cluster say.
pub fn from_peer() -> bool {
    FROM_PEER.try_with(|()| ()).is_ok()
}

impl Ops {
    /// The operations over `store`, with leases that live `lease_ttl` and hold at
    /// most `max_leased_bytes`, recorded into `metrics`.
    pub fn new(
        store: TieredStore,
        config: Config,
        lease_ttl: Duration,
        max_leased_bytes: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let units = (config.max_upload_bytes.0 / BUDGET_UNIT).min(Semaphore::MAX_PERMITS as u64);
        let read_units = (config.max_read_bytes.0 / READ_UNIT)
            .clamp(1, u64::from(u32::MAX).min(Semaphore::MAX_PERMITS as u64))
            as u32;
        Arc::new(Self {
            store,
            uploads: Arc::new(Semaphore::new(units as usize)),
            budget_units: units,
            reads: Arc::new(Semaphore::new(read_units as usize)),
            read_units,
            leases: Leases::new(lease_ttl, max_leased_bytes),
            commits: TaskTracker::new(),
            config,
            metrics,
            peer_requests: std::sync::atomic::AtomicU64::new(0),
            replicas: std::sync::OnceLock::new(),
            leaving: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends puts and deletes of replicated namespaces to the other copies too
    /// (a cluster node, once it joined); set once.
    pub fn set_replicas(&self, replicas: Arc<dyn Replicate>) {
        let _ = self.replicas.set(replicas);
    }

    /// The replicator of `key`'s namespace, unless the request is a peer's (a
    /// copy goes no further) or the namespace keeps one copy.
    fn replicator(&self, key: &Key, opts: &Options) -> Option<&Arc<dyn Replicate>> {
        self.replicas
            .get()
            .filter(|r| !opts.from_peer && r.replicates(key))
    }

    /// Refuses a caller's write, delete, pin or eviction of the server's own
    /// state: the tenant [`crate::dataset::META_TENANT`] (dataset manifests and
    /// their index), which the server writes to its store directly. Reading it is
    /// allowed (operators look at manifests).
    pub fn check_writable(key: &Key) -> Result<(), Error> {
        if key.tenant() == crate::dataset::META_TENANT {
            return Err(Error::InvalidKey {
                reason: format!(
                    "the tenant {:?} of {} is reserved for the server's own state \
                     (dataset manifests and their index): clients may read it, not \
                     write, delete, pin or evict it",
                    crate::dataset::META_TENANT,
                    key.display_path()
                ),
            });
        }
        Ok(())
    }

    /// This node is leaving its cluster (it still answers reads while its keys'
    /// next owners ask for them): from now on every upload, a peer's included,
    /// is refused `ShuttingDown`, so a write goes to a node that stays (a client
    /// to the next owner, a member sending one on stands in) instead of one
    /// about to close.
    pub fn leaving(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a client's reads of `key` here are answered from its owners: a
    /// key of a namespace forwarded to its owners that this node does not own
    /// (the client's member list is stale). Such a node keeps no copy, so it
    /// can never serve one older than the owner's.
    pub fn forwards(&self, key: &Key, opts: &Options) -> bool {
        !opts.from_peer && self.replicas.get().is_some_and(|r| !r.keeps(key))
    }

    /// Whether `key`'s namespace has an origin (a read this node cannot get
    /// from the owners can still go there).
    pub fn has_origin(&self, key: &Key) -> bool {
        self.store
            .policy(key)
            .is_ok_and(|p| p.origin != strata_tiers::OriginKind::None)
    }

    /// Reads `range` of `key` from the members that hold it ([`Self::forwards`]),
    /// keeping nothing here: `(value length, offset of the first byte, bytes)`,
    /// `None` if no one holds it (the owner fills from the origin first, when
    /// there is one). A copy this node kept while standing in for owners it
    /// could not reach ([`Replicate::stands_in`]) is read when they hold none.
    /// Not recorded (the caller records the read).
    pub async fn fetch_from_owners(
        &self,
        key: &Key,
        range: ByteRange,
        opts: &Options,
    ) -> Result<Option<(u64, u64, Vec<bytes::Bytes>)>, Error> {
        let Some(r) = self.replicas.get().cloned() else {
            return Ok(None);
        };
        let fills = self.has_origin(key);
        let got = self
            .run_step("get", opts, r.fetch(key, range, fills))
            .await?;
        let Some((total, bytes)) = got else {
            return self.store.get_cached(key, Some(range)).await;
        };
        let (start, end) = range.resolve(total)?;
        if bytes.len() as u64 != end - start {
            return Err(Error::Shared {
                message: format!(
                    "{} from its owner: {} bytes answered for a range of {}",
                    key.display_path(),
                    bytes.len(),
                    end - start
                ),
                kind: strata_tiers::ErrorKind::Unavailable,
            });
        }
        Ok(Some((total, start, vec![bytes])))
    }

    /// Admits a read answer of `len` bytes against [`Config::max_read_bytes`],
    /// waiting for room: the share is held until the returned permit is dropped
    /// (with the answer, once written).
    pub async fn admit_read(&self, len: u64) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let units = len.div_ceil(READ_UNIT).clamp(1, u64::from(self.read_units)) as u32;
        self.reads
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Makes `held` hold `len` bytes' worth of the read budget: lets go of what
    /// it holds past that, or, when it needs more, lets go of all of it and
    /// waits for the whole (never holding some while waiting for more: reads
    /// that each held a part would wait for each other for ever).
    pub async fn resize_read(
        &self,
        held: &mut tokio::sync::OwnedSemaphorePermit,
        len: u64,
    ) -> Result<(), Error> {
        let want = len.div_ceil(READ_UNIT).clamp(1, u64::from(self.read_units)) as usize;
        let have = held.num_permits();
        if want > have {
            drop(held.split(have));
            let all = self
                .reads
                .clone()
                .acquire_many_owned(want as u32)
                .await
                .map_err(|_| Error::ShuttingDown)?;
            held.merge(all);
        } else if want < have {
            drop(held.split(have - want));
        }
        Ok(())
    }

    /// Makes `held` hold `len` bytes' worth of the read budget if that needs no
    /// wait (less always does); `false`, `held` as it was, when there is no room.
    pub fn try_resize_read(&self, held: &mut tokio::sync::OwnedSemaphorePermit, len: u64) -> bool {
        let want = len.div_ceil(READ_UNIT).clamp(1, u64::from(self.read_units)) as usize;
        let have = held.num_permits();
        if want > have {
            match self
                .reads
                .clone()
                .try_acquire_many_owned((want - have) as u32)
            {
                Ok(more) => held.merge(more),
                Err(_) => return false,
            }
        } else if want < have {
            drop(held.split(have - want));
        }
        true
    }

    /// Bytes of the read budget free now.
    pub fn read_budget_free(&self) -> u64 {
        self.reads.available_permits() as u64 * READ_UNIT
    }

    /// How long a gRPC stream may go without progress ([`Config::stall_timeout_ms`]).
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.config.stall_timeout_ms)
    }

    /// The store (for what is not a request: the arena's descriptor, statistics).
    pub fn store(&self) -> &TieredStore {
        &self.store
    }

    /// The lease table.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Bytes of the upload budget free now.
    pub fn upload_budget_free(&self) -> u64 {
        self.uploads.available_permits() as u64 * BUDGET_UNIT
    }

    /// Commits (and streamed reads) running now.
    pub fn commits_in_flight(&self) -> usize {
        self.commits.len()
    }

    /// Runs `task`, a part of a request that outlives its handler (a read
    /// streamed page by page), tracked as commits are.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.commits.spawn(task);
    }

    /// Waits, at most `grace`, until no commit (or streamed read) is running;
    /// `false` if some still were. Shutdown calls it after the entry points
    /// stopped and before the tiers close, so that no commit writes into a closed
    /// tier.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.commits.close();
        tokio::time::timeout(grace, self.commits.wait())
            .await
            .is_ok()
    }

    /// Refuses a batch of `n` keys over [`MAX_BATCH_KEYS`].
    pub fn check_batch(n: usize) -> Result<(), Error> {
        if n > MAX_BATCH_KEYS {
            return Err(Error::TooLarge {
                what: "a batch".into(),
                len: n as u64,
                limit: MAX_BATCH_KEYS as u64,
                unit: "keys",
                setting: "the batch limit, MAX_BATCH",
            });
        }
        Ok(())
    }

    /// Runs `f`, operation `op` of `opts`'s caller, within its deadline, in a
    /// span, timed.
    async fn run<T>(
        &self,
        op: &'static str,
        opts: &Options,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let start = std::time::Instant::now();
        let r = self.run_step(op, opts, f).await;
        self.record(op, opts, start.elapsed(), &r);
        r
    }

    /// Records one operation `op` that took `took` and ended in `r` (a miss is an
    /// answer, not a failure).
    pub fn record<T>(
        &self,
        op: &'static str,
        opts: &Options,
        took: Duration,
        r: &Result<T, Error>,
    ) {
        self.count_peer(opts);
        let failed = r
            .as_ref()
            .is_err_and(|e| e.kind() != strata_tiers::ErrorKind::NotFound);
        self.metrics
            .request_done(op, opts.caller.carrier, took, !failed);
    }

    /// A timer of operation `op` for `opts`'s caller, for a codec that runs an
    /// operation in steps: recorded when dropped, as failed unless
    /// [`Timer::succeed`] was called.
    pub fn timer(self: &Arc<Self>, op: &'static str, opts: &Options) -> Timer {
        self.count_peer(opts);
        Timer {
            ops: self.clone(),
            op,
            carrier: opts.caller.carrier,
            start: std::time::Instant::now(),
            ok: false,
        }
    }

    /// Requests from cluster peers answered so far.
    pub fn peer_requests(&self) -> u64 {
        self.peer_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_peer(&self, opts: &Options) {
        if opts.from_peer {
            self.peer_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Runs `f` within `opts`'s deadline and in a span, like [`Self::run`], but
    /// unrecorded: a step of an operation that its codec times as a whole.
    async fn run_step<T>(
        &self,
        op: &'static str,
        opts: &Options,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        use tracing::Instrument;
        let span = tracing::debug_span!("op", op, carrier = opts.caller.carrier.name());
        let step = self.step(op, opts, f).instrument(span);
        if opts.from_peer {
            FROM_PEER.scope((), step).await.and_then(|r| r)
        } else {
            step.await.and_then(|r| r)
        }
    }
}

/// Times one operation run in steps ([`Ops::timer`]).
#[derive(Debug)]
pub struct Timer {
    ops: Arc<Ops>,
    op: &'static str,
    carrier: Carrier,
    start: std::time::Instant,
    ok: bool,
}

impl Timer {
    /// Marks the operation as answered (a miss included).
    pub fn succeed(&mut self) {
        self.ok = true;
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.ops
            .metrics
            .request_done(self.op, self.carrier, self.start.elapsed(), self.ok);
    }
}
