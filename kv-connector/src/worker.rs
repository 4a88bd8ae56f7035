//! The worker side, with the semantics of vLLM's `KVConnectorBase_V1`:
//! `register_kv_caches`, `bind_connector_metadata`, `start_load_kv`,
//! `wait_for_layer_load`, `save_kv_layer`, `wait_for_save`, `get_finished` and
//! `get_block_ids_with_load_errors`.
//!
//! Loads run on the connector's tokio runtime: every (layer, chunk) is one ranged
//! read, issued layer-major with a bounded window on a few lanes, so layer L+1 is in
//! flight while the engine computes layer L. Each layer is copied straight into the
//! cache's blocks (over shared memory, out of the server's arena) and summed as it
//! goes; the sum is checked against the chunk header's CRC. A chunk that is
//! missing, short, corrupt or unreachable marks its destination blocks as load
//! errors and no further layer of it is read. Saves gather each layer on a saver
//! thread as the forward pass goes, and the chunk is written in one PUT after its
//! last layer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use candle_core::Tensor;
use futures::StreamExt;
use parking_lot::{Condvar, Mutex};
use strata_transport::data::ValueReader;
use strata_transport::wire::{KeyRange, MAX_BATCH};

use crate::cache::{self, CacheGeometry};
use crate::chunk::{ChunkShape, Header};
use crate::error::{Error, Result};
use crate::keys::{ChunkKeys, Hash};
use crate::meta::{ConnectorMetadata, LoadChunk, ReqId, SaveChunk};
use crate::store::{BatchSink, ChunkStore, Sink};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Ranged reads in flight during a load, over all its lanes. Default 32. With a
    /// store that batches ([`ChunkStore::batches_reads`]), one request reads a layer
    /// of every chunk, and each lane keeps this share of ranges (at least two
    /// layers, unless the window is 1) in flight.
    pub load_window: usize,
    /// Tasks that place a load's layers at once (each copies and checksums on its
    /// own runtime thread; see `docs/kv-keys.md`). Default 2.
    pub load_lanes: usize,
    /// Bytes of chunks being gathered or written at once; chunks beyond it are not
    /// saved (counted in [`WorkerStats::saves_skipped`]). Default 2 GiB.
    pub max_save_bytes: u64,
    /// How a load reads a chunk. Default [`ReadUnit::Layer`].
    pub read_unit: ReadUnit,
}

/// How a load reads a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadUnit {
    /// One ranged GET per (layer, chunk), layer-major: layer L+1 arrives while the
    /// engine computes layer L.
    #[default]
    Layer,
    /// One GET of the whole chunk: fewer requests, but the first layer waits for
    /// every byte. Kept to measure the choice.
    Chunk,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            load_window: 32,
            load_lanes: 2,
            max_save_bytes: 2 << 30,
            read_unit: ReadUnit::Layer,
        }
    }
}

/// Counters since the worker started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Chunks loaded whole.
    pub chunks_loaded: AtomicU64,
    /// Chunks that failed to load (their blocks were reported).
    pub chunks_failed: AtomicU64,
    /// Bytes of KV scattered into the caches.
    pub bytes_loaded: AtomicU64,
    /// Chunks stored.
    pub chunks_saved: AtomicU64,
    /// Chunks whose PUT failed.
    pub saves_failed: AtomicU64,
    /// Chunks not saved because `max_save_bytes` was reached.
    pub saves_skipped: AtomicU64,
}

/// Layers loaded so far in the current step: the first `prefix` are all done.
/// Lanes finish layers out of order; a waiter sees a layer once it and every layer
/// before it are done.
#[derive(Default)]
struct Progress {
    state: Mutex<ProgressState>,
    cv: Condvar,
}

#[derive(Default)]
struct ProgressState {
    prefix: usize,
    done: Vec<bool>,
}

impl Progress {
    /// Marks every layer done.
    fn all_done(&self) {
        self.state.lock().prefix = usize::MAX;
        self.cv.notify_all();
    }

    /// Marks layer `l` done.
    fn layer_done(&self, l: usize) {
        let mut s = self.state.lock();
        if s.done.len() <= l {
            s.done.resize(l + 1, false);
        }
        s.done[l] = true;
        let before = s.prefix;
        while s.done.get(s.prefix) == Some(&true) {
            s.prefix += 1;
        }
        if s.prefix > before {
            self.cv.notify_all();
        }
    }

    fn wait_for(&self, layer: usize) {
        let mut s = self.state.lock();
        while s.prefix <= layer {
            self.cv.wait(&mut s);
        }
    }
}

struct Shared {
    store: Arc<dyn ChunkStore>,
    fingerprint: Hash,
    rt: tokio::runtime::Handle,
    stats: WorkerStats,
    errors: Mutex<BTreeSet<u32>>,
    /// Requests with saves: chunks not yet written.
    pending: Mutex<HashMap<ReqId, usize>>,
    save_bytes: AtomicU64,
    config: WorkerConfig,
}

struct Registered {
    names: HashMap<String, usize>,
    layers: Arc<Vec<Tensor>>,
    geometry: CacheGeometry,
    shape: ChunkShape,
}

/// The worker-side connector of one engine worker (one TP rank).
pub struct Worker {
    keys: ChunkKeys,
    shared: Arc<Shared>,
    reg: Option<Arc<Registered>>,
    meta: Option<ConnectorMetadata>,
    progress: Arc<Progress>,
    saver: Option<mpsc::Sender<SaveJob>>,
    saver_thread: Option<std::thread::JoinHandle<()>>,
    finishing: HashSet<ReqId>,
}

enum SaveJob {
    Step(Vec<(ReqId, SaveChunk)>),
    Layer(usize),
    Barrier(mpsc::Sender<()>),
}

impl Worker {
    /// A worker over `store`; its I/O runs on `rt`.
    pub fn new(
        keys: ChunkKeys,
        store: Arc<dyn ChunkStore>,
        rt: tokio::runtime::Handle,
        config: WorkerConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            fingerprint: *keys.fingerprint_digest(),
            rt,
            stats: WorkerStats::default(),
            errors: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(HashMap::new()),
            save_bytes: AtomicU64::new(0),
            config,
        });
        let progress = Arc::new(Progress::default());
        progress.all_done();
        Self {
            keys,
            shared,
            reg: None,
            meta: None,
            progress,
            saver: None,
            saver_thread: None,
            finishing: HashSet::new(),
        }
    }

    /// Registers the engine's per-layer caches, in layer order. Every tensor must
    /// have the fingerprint's layout, dtype, heads and head size, and the same
    /// number of blocks; there must be one per fingerprint layer.
    pub fn register_kv_caches(&mut self, caches: Vec<(String, Tensor)>) -> Result<()> {
        let fp = self.keys.fingerprint();
        if caches.len() != fp.num_layers as usize {
            return Err(Error::Layout(format!(
                "{} layers registered, the fingerprint says {}",
                caches.len(),
                fp.num_layers
            )));
        }
        let geometry = CacheGeometry::of(&caches[0].1, fp)?;
        for (name, t) in &caches[1..] {
            let g = CacheGeometry::of(t, fp)?;
            if g != geometry {
                return Err(Error::Layout(format!(
                    "layer {name}: {g:?} differs from the first layer's {geometry:?}"
                )));
            }
        }
        if !self.keys.chunk_tokens().is_multiple_of(geometry.block_size) {
            return Err(Error::Config(format!(
                "chunk_tokens {} is not a multiple of the caches' block_size {}",
                self.keys.chunk_tokens(),
                geometry.block_size
            )));
        }
        let bpc = self.keys.chunk_tokens() / geometry.block_size;
        let shape = ChunkShape {
            kv: geometry.kv as u8,
            elem_size: geometry.dtype.size_in_bytes() as u8,
            tokens: self.keys.chunk_tokens() as u32,
            layers: fp.num_layers,
            layer_bytes: (geometry.kv * bpc * geometry.row_bytes) as u64,
        };
        let names = caches
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let layers = Arc::new(caches.into_iter().map(|(_, t)| t).collect::<Vec<_>>());
        let reg = Arc::new(Registered {
            names,
            layers,
            geometry,
            shape,
        });
        let (tx, rx) = mpsc::channel();
        let (shared, r) = (self.shared.clone(), reg.clone());
        self.saver_thread = Some(
            std::thread::Builder::new()
                .name("strata-kv-saver".into())
                .spawn(move || saver(shared, r, rx))
                .map_err(|e| Error::Config(format!("saver thread: {e}")))?,
        );
        self.saver = Some(tx);
        self.reg = Some(reg);
        Ok(())
    }

    /// The stored chunk's shape (after `register_kv_caches`).
    pub fn chunk_shape(&self) -> Option<ChunkShape> {
        self.reg.as_ref().map(|r| r.shape)
    }

    /// Counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats
    }

    /// Takes the step's metadata from the scheduler.
    pub fn bind_connector_metadata(&mut self, meta: ConnectorMetadata) {
        self.meta = Some(meta);
    }

    /// Drops the step's metadata.
    pub fn clear_connector_metadata(&mut self) {
        self.meta = None;
    }

    /// Starts loading every chunk of the bound metadata, layer by layer, and hands
    /// the step's saves to the saver. Returns at once.
    pub fn start_load_kv(&mut self) -> Result<()> {
        let reg = self
            .reg
            .clone()
            .ok_or_else(|| Error::Config("start_load_kv before register_kv_caches".into()))?;
        let Some(meta) = self.meta.as_mut() else {
            return Ok(());
        };
        // Saves of this step: registered now, gathered as the layers are computed.
        let saves: Vec<(ReqId, SaveChunk)> = std::mem::take(&mut meta.saves)
            .into_iter()
            .flat_map(|r| {
                let id = r.req_id;
                r.chunks.into_iter().map(move |c| (id.clone(), c))
            })
            .collect();
        if !saves.is_empty() {
            {
                let mut p = self.shared.pending.lock();
                for (id, _) in &saves {
                    *p.entry(id.clone()).or_default() += 1;
                }
            }
            if let Some(tx) = &self.saver {
                let _ = tx.send(SaveJob::Step(saves));
            }
        }
        let chunks: Vec<LoadChunk> = std::mem::take(&mut meta.loads)
            .into_iter()
            .flat_map(|r| r.chunks)
            .collect();
        let progress = Arc::new(Progress::default());
        self.progress = progress.clone();
        if chunks.is_empty() {
            progress.all_done();
            return Ok(());
        }
        let shared = self.shared.clone();
        self.shared.rt.spawn(load(shared, reg, chunks, progress));
        Ok(())
    }

    /// Blocks until `layer_name`'s KV is loaded (or its failures are recorded).
    pub fn wait_for_layer_load(&self, layer_name: &str) -> Result<()> {
        let i = self.layer_index(layer_name)?;
        self.progress.wait_for(i);
        Ok(())
    }

    /// Saves `layer_name` of the step's chunks. Returns at once: the gather runs on
    /// the saver thread while the engine computes the next layer.
    pub fn save_kv_layer(&self, layer_name: &str) -> Result<()> {
        let i = self.layer_index(layer_name)?;
        if let Some(tx) = &self.saver {
            let _ = tx.send(SaveJob::Layer(i));
        }
        Ok(())
    }

    /// Blocks until every layer handed to `save_kv_layer` has been copied out of
    /// the caches. The PUTs go on in the background; `get_finished` reports them.
    pub fn wait_for_save(&self) {
        if let Some(tx) = &self.saver {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(SaveJob::Barrier(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Of the requests finished so far (`finished_req_ids` adds this step's), those
    /// whose saves are all written: their blocks may be freed now. The second list,
    /// asynchronous loads finished, is always empty: loads complete within a step.
    pub fn get_finished(&mut self, finished_req_ids: &[ReqId]) -> (Vec<ReqId>, Vec<ReqId>) {
        let mut pending = self.shared.pending.lock();
        for id in finished_req_ids {
            if pending.contains_key(id) {
                self.finishing.insert(id.clone());
            }
        }
        let done: Vec<ReqId> = self
            .finishing
            .iter()
            .filter(|id| pending.get(*id).is_none_or(|&n| n == 0))
            .cloned()
            .collect();
        for id in &done {
            self.finishing.remove(id);
            pending.remove(id);
        }
        (done, Vec::new())
    }

    /// Blocks whose load failed since the last call: the engine must recompute them.
    pub fn get_block_ids_with_load_errors(&self) -> BTreeSet<u32> {
        std::mem::take(&mut *self.shared.errors.lock())
    }

    fn layer_index(&self, name: &str) -> Result<usize> {
        let reg = self
            .reg
            .as_ref()
            .ok_or_else(|| Error::Config("no KV caches registered".into()))?;
        reg.names
            .get(name)
            .copied()
            .ok_or_else(|| Error::Config(format!("unknown layer {name:?}")))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.saver = None;
        if let Some(t) = self.saver_thread.take() {
            let _ = t.join();
        }
    }
}

/// One load: its chunks and how far each has come. Shared by the load's lanes.
struct LoadState {
    shared: Arc<Shared>,
    reg: Arc<Registered>,
    chunks: Vec<LoadChunk>,
    /// Each chunk's header, from its layer 0 (read first).
    headers: Vec<OnceLock<Header>>,
    /// A chunk that failed: its blocks are reported, nothing more of it is read.
    failed: Vec<AtomicBool>,
    /// Layers of each chunk not yet placed.
    layers_left: Vec<AtomicUsize>,
    /// Chunks of each layer not yet placed or given up.
    chunks_left: Vec<AtomicUsize>,
    progress: Arc<Progress>,
}

/// Loads `chunks`: every layer's copy is checked against the chunk header's CRC
/// as it is placed, and layer L is marked done once every chunk has it.
///
/// Layer 0 goes first, since it carries each chunk's header; the other layers
/// then run on [`WorkerConfig::load_lanes`] tasks at once (layer `l` on lane `l %
/// lanes`), each with its share of the window. A lane copies on whichever runtime
/// thread polls it, so lanes spread the copies over cores; two lanes never write
/// the same layer's tensor at once.
async fn load(
    shared: Arc<Shared>,
    reg: Arc<Registered>,
    chunks: Vec<LoadChunk>,
    progress: Arc<Progress>,
) {
    let n = chunks.len();
    let layers = reg.shape.layers as usize;
    let lanes = shared.config.load_lanes.clamp(1, layers.max(1));
    let window = (shared.config.load_window / lanes).max(1);
    let unit = shared.config.read_unit;
    let st = Arc::new(LoadState {
        shared,
        reg,
        headers: (0..n).map(|_| OnceLock::new()).collect(),
        failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
        layers_left: (0..n).map(|_| AtomicUsize::new(layers)).collect(),
        chunks_left: (0..layers).map(|_| AtomicUsize::new(n)).collect(),
        chunks,
        progress,
    });
    // However this ends (a lane's panic, this task dropped), no chunk is left
    // neither loaded nor reported, and no waiter is left waiting.
    let _guard = Unfinished(st.clone());
    // With a store that batches, a layer of every chunk is one request.
    let batch = unit == ReadUnit::Layer && st.shared.store.batches_reads();
    let per_layer = |l: usize| -> Vec<Job> {
        if batch {
            vec![Job::Layer(l)]
        } else {
            (0..n).map(|c| Job::One(l, c)).collect()
        }
    };
    // Batched, the window counts ranges: each lane keeps at least two layers in
    // flight (one while it places the other), unless the window is a single read.
    let lane_window = if batch {
        (window / n).max(window.min(2))
    } else {
        window
    };
    let lane_jobs: Vec<Vec<Job>> = match unit {
        ReadUnit::Layer => {
            run_lane(st.clone(), per_layer(0), lane_window).await;
            (0..lanes)
                .map(|k| {
                    (1..layers)
                        .filter(|l| l % lanes == k)
                        .flat_map(per_layer)
                        .collect()
                })
                .collect()
        }
        // A whole chunk per job (its layer is unused), chunks dealt round-robin.
        ReadUnit::Chunk => (0..lanes)
            .map(|k| (k..n).step_by(lanes).map(|c| Job::One(0, c)).collect())
            .collect(),
    };
    let tasks: Vec<_> = lane_jobs
        .into_iter()
        .filter(|jobs| !jobs.is_empty())
        .map(|jobs| tokio::spawn(run_lane(st.clone(), jobs, lane_window)))
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "kv load lane panicked");
        }
    }
    // `_guard` marks every layer done as it drops.
}

/// Reports, when dropped, every chunk of a load that is neither placed whole nor
/// reported yet (for recompute), then marks every layer done. A load that ran to
/// its end has none left.
struct Unfinished(Arc<LoadState>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let st = &self.0;
        for c in 0..st.chunks.len() {
            if !st.failed[c].load(Ordering::Acquire)
                && st.layers_left[c].load(Ordering::Acquire) > 0
            {
                let e = Error::Store("the load stopped before this chunk was placed".into());
                finish(st, 0, c, Err(e), 0);
            }
        }
        st.progress.all_done();
    }
}

/// One read of a load.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Layer `.0` of chunk `.1` (or the whole chunk, when reading by chunk).
    One(usize, usize),
    /// Layer `.0` of every chunk not failed, in one batch request.
    Layer(usize),
}

/// Runs `jobs` with up to `window` of them in flight.
async fn run_lane(st: Arc<LoadState>, jobs: Vec<Job>, window: usize) {
    futures::stream::iter(jobs)
        .map(|job| {
            let st = &st;
            async move {
                match job {
                    Job::One(l, c) => load_one(st, l, c).await,
                    Job::Layer(l) => load_layer(st, l).await,
                }
            }
        })
        .buffer_unordered(window)
        .collect::<()>()
        .await;
}

/// The byte range of layer `l` in a chunk's value (layer 0 with the header).
fn layer_range(shape: &ChunkShape, l: usize) -> (u64, u64) {
    if l == 0 {
        (0, shape.header_len() as u64 + shape.layer_bytes)
    } else {
        (shape.layer_offset(l), shape.layer_bytes)
    }
}

/// Reads and places layer `l` of chunk `c` (the whole chunk when reading by
/// chunk), then counts it.
async fn load_one(st: &LoadState, l: usize, c: usize) {
    let (shared, reg, chunk) = (&st.shared, &st.reg, &st.chunks[c]);
    let whole = shared.config.read_unit == ReadUnit::Chunk;
    if !st.failed[c].load(Ordering::Acquire) {
        let shape = reg.shape;
        let (off, len) = if whole {
            (0, shape.value_len())
        } else {
            layer_range(&shape, l)
        };
        let header = &st.headers[c];
        let fp = &shared.fingerprint;
        let sink: Sink<'_> = if whole {
            Box::new(move |r| {
                (0..shape.layers as usize).try_for_each(|l| place(reg, chunk, header, l, fp, r))
            })
        } else {
            Box::new(move |r| place(reg, chunk, header, l, fp, r))
        };
        let outcome = shared.store.read_range(&chunk.key, off, len, sink).await;
        let placed = if whole { shape.layers as usize } else { 1 };
        finish(st, l, c, outcome, placed);
    }
    if !whole && st.chunks_left[l].fetch_sub(1, Ordering::AcqRel) == 1 {
        st.progress.layer_done(l);
    }
}

/// Reads layer `l` of every chunk not failed yet in one batch request, placing
/// each as it comes, then marks the layer done.
async fn load_layer(st: &LoadState, l: usize) {
    let (shared, reg) = (&st.shared, &st.reg);
    let live: Vec<usize> = (0..st.chunks.len())
        .filter(|&c| !st.failed[c].load(Ordering::Acquire))
        .collect();
    let (offset, len) = layer_range(&reg.shape, l);
    // A batch is at most MAX_BATCH ranges; a longer load sends several.
    for live in live.chunks(MAX_BATCH) {
        let ranges: Vec<KeyRange> = live
            .iter()
            .map(|&c| KeyRange {
                key: st.chunks[c].key.clone(),
                offset,
                length: Some(len),
            })
            .collect();
        let (live_ref, fp) = (live, &shared.fingerprint);
        let sink: BatchSink<'_> = Box::new(move |i, r| {
            let c = live_ref[i];
            place(reg, &st.chunks[c], &st.headers[c], l, fp, r)
        });
        match shared.store.read_ranges(&ranges, sink).await {
            Ok(results) if results.len() == live.len() => {
                for (outcome, &c) in results.into_iter().zip(live) {
                    finish(st, l, c, outcome, 1);
                }
            }
            Ok(results) => {
                let why = format!("{} results for {} ranges", results.len(), live.len());
                for &c in live {
                    finish(st, l, c, Err(Error::Store(why.clone())), 1);
                }
            }
            Err(e) => {
                for &c in live {
                    finish(st, l, c, Err(Error::Store(e.to_string())), 1);
                }
            }
        }
    }
    let n = st.chunks.len();
    if st.chunks_left[l].fetch_sub(n, Ordering::AcqRel) == n {
        st.progress.layer_done(l);
    }
}

/// Counts the outcome of a read of chunk `c` that placed `placed` layers: the
/// chunk's first failure reports it, its last layer placed counts it loaded.
fn finish(st: &LoadState, l: usize, c: usize, outcome: Result<bool>, placed: usize) {
    let (shared, reg, chunk) = (&st.shared, &st.reg, &st.chunks[c]);
    let outcome = match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(corrupt(&chunk.key, "absent")),
        Err(e) => Err(e),
    };
    match outcome {
        Err(e) => {
            if !st.failed[c].swap(true, Ordering::AcqRel) {
                record(shared, reg, chunk, Err(e), l);
            }
        }
        Ok(()) => {
            if st.layers_left[c].fetch_sub(placed, Ordering::AcqRel) == placed {
                record(shared, reg, chunk, Ok(()), l);
            }
        }
    }
}

/// Turns a decode refusal into the connector's error.
fn corrupt(key: &strata_proto::Key, why: impl Into<String>) -> Error {
    Error::Corrupt {
        key: key.display_path(),
        why: why.into(),
    }
}

/// Counts a chunk's outcome; a failure reports its blocks.
fn record(shared: &Shared, reg: &Registered, chunk: &LoadChunk, outcome: Result<()>, layer: usize) {
    match outcome {
        Ok(()) => {
            shared.stats.chunks_loaded.fetch_add(1, Ordering::Relaxed);
            let g = &reg.geometry;
            let bytes = chunk.block_ids.len() * g.kv * g.row_bytes * reg.layers.len();
            shared
                .stats
                .bytes_loaded
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, layer, blocks = ?chunk.block_ids, "kv chunk load failed; blocks reported for recompute");
            shared.stats.chunks_failed.fetch_add(1, Ordering::Relaxed);
            shared.errors.lock().extend(chunk.block_ids.iter().copied());
        }
    }
}

/// Places layer `l` of a chunk from `r` (for layer 0, after the chunk header,
/// which it decodes and checks first): the bytes are copied into the cache's
/// blocks and summed as they go, and the sum is checked against the header's. On a
/// mismatch the blocks already hold the bad bytes, and the error reports them for
/// recompute.
fn place(
    reg: &Registered,
    chunk: &LoadChunk,
    header: &OnceLock<Header>,
    l: usize,
    fingerprint: &Hash,
    r: &mut ValueReader<'_>,
) -> Result<()> {
    let shape = &reg.shape;
    if l == 0 {
        let mut hb = vec![0u8; shape.header_len()];
        r.read_exact(&mut hb).map_err(|_| {
            corrupt(
                &chunk.key,
                format!("{} bytes, no whole header", r.remaining()),
            )
        })?;
        let h = Header::decode(&hb, shape, fingerprint, &chunk.hash)
            .map_err(|w| corrupt(&chunk.key, w))?;
        let _ = header.set(h);
    }
    if r.remaining() < shape.layer_bytes {
        return Err(corrupt(
            &chunk.key,
            format!(
                "layer {l}: {} bytes, expected {}",
                r.remaining(),
                shape.layer_bytes
            ),
        ));
    }
    let h = header
        .get()
        .ok_or_else(|| corrupt(&chunk.key, "no header"))?;
    let bpc = shape.tokens as usize / reg.geometry.block_size;
    let crc = cache::scatter_from(
        &reg.layers[l],
        &reg.geometry,
        r,
        bpc,
        chunk.first_block as usize,
        &chunk.block_ids,
    )?;
    h.check_layer_crc(l, crc)
        .map_err(|w| corrupt(&chunk.key, w))
}

/// One chunk being gathered.
struct Staged {
    req_id: ReqId,
    chunk: SaveChunk,
    buf: Vec<u8>,
    crcs: Vec<u32>,
    layers_done: usize,
    failed: bool,
}

/// One of a request's chunks is written, skipped or abandoned.
fn one_saved(shared: &Shared, req_id: &ReqId) {
    if let Some(n) = shared.pending.lock().get_mut(req_id) {
        *n = n.saturating_sub(1);
    }
}

/// The saver thread: gathers each layer of the step's chunks as the engine hands
/// it over, then writes each chunk in one PUT.
fn saver(shared: Arc<Shared>, reg: Arc<Registered>, rx: mpsc::Receiver<SaveJob>) {
    let shape = reg.shape;
    let hl = shape.header_len();
    let lb = shape.layer_bytes as usize;
    let total = shape.value_len();
    let mut step: Vec<Staged> = Vec::new();
    while let Ok(job) = rx.recv() {
        match job {
            SaveJob::Step(chunks) => {
                for s in step.drain(..) {
                    tracing::warn!(
                        layers = s.layers_done,
                        "kv chunk save abandoned: not every layer was saved"
                    );
                    shared.save_bytes.fetch_sub(total, Ordering::Relaxed);
                    one_saved(&shared, &s.req_id);
                }
                for (req_id, chunk) in chunks {
                    let used = shared.save_bytes.fetch_add(total, Ordering::Relaxed);
                    if used + total > shared.config.max_save_bytes {
                        shared.save_bytes.fetch_sub(total, Ordering::Relaxed);
                        shared.stats.saves_skipped.fetch_add(1, Ordering::Relaxed);
                        one_saved(&shared, &req_id);
                        continue;
                    }
                    step.push(Staged {
                        req_id,
                        chunk,
                        buf: vec![0; total as usize],
                        crcs: vec![0; shape.layers as usize],
                        layers_done: 0,
                        failed: false,
                    });
                }
            }
            SaveJob::Layer(l) => {
                for s in &mut step {
                    let out = &mut s.buf[hl + l * lb..hl + (l + 1) * lb];
                    match cache::gather(&reg.layers[l], &reg.geometry, &s.chunk.block_ids, out) {
                        Ok(()) => s.crcs[l] = crc32c::crc32c(out),
                        Err(e) => {
                            tracing::warn!(error = %e, "kv gather failed; chunk not saved");
                            s.failed = true;
                        }
                    }
                    s.layers_done += 1;
                }
                let (ready, rest): (Vec<Staged>, Vec<Staged>) = step
                    .drain(..)
                    .partition(|s| s.layers_done == shape.layers as usize || s.failed);
                step = rest;
                for mut s in ready {
                    if s.failed {
                        shared.stats.saves_failed.fetch_add(1, Ordering::Relaxed);
                        shared.save_bytes.fetch_sub(total, Ordering::Relaxed);
                        one_saved(&shared, &s.req_id);
                        continue;
                    }
                    let header = Header {
                        shape,
                        fingerprint: shared.fingerprint,
                        chunk_hash: s.chunk.hash,
                        layer_crcs: std::mem::take(&mut s.crcs),
                    };
                    s.buf[..hl].copy_from_slice(&header.encode());
                    let sh = shared.clone();
                    shared.rt.spawn(async move {
                        match sh.store.put(&s.chunk.key, Bytes::from(s.buf)).await {
                            Ok(()) => sh.stats.chunks_saved.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(error = %e, "kv chunk put failed");
                                sh.stats.saves_failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        sh.save_bytes.fetch_sub(total, Ordering::Relaxed);
                        one_saved(&sh, &s.req_id);
                    });
                }
            }
            SaveJob::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_done_once_it_and_every_layer_before_it_are() {
        let p = Arc::new(Progress::default());
        p.layer_done(2);
        p.layer_done(0);
        assert_eq!(p.state.lock().prefix, 1, "layer 1 is missing");
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait_for(2))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "layer 2 waits for layer 1");
        p.layer_done(1);
        waiter.join().unwrap();
        assert_eq!(p.state.lock().prefix, 3);
        p.all_done();
        p.wait_for(1000);
    }
}
