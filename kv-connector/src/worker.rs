//! The worker side, with the semantics of vLLM's `KVConnectorBase_V1`:
//! `register_kv_caches`, `bind_connector_metadata`, `start_load_kv`,
//! `wait_for_layer_load`, `save_kv_layer`, `wait_for_save`, `get_finished` and
//! `get_block_ids_with_load_errors`.
//!
//! Loads run on the connector's tokio runtime: every (layer, chunk) is one ranged
//! GET, issued layer-major with a bounded window, so layer L+1 is in flight while
//! the engine computes layer L. Each layer is checked against the chunk header's
//! CRC before it is scattered; a chunk that is missing, short, corrupt or
//! unreachable marks its destination blocks as load errors and nothing else of it
//! is copied. Saves gather each layer on a saver thread as the forward pass goes,
//! and the chunk is written in one PUT after its last layer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use candle_core::Tensor;
use futures::StreamExt;
use parking_lot::{Condvar, Mutex};

use crate::cache::{self, CacheGeometry};
use crate::chunk::{ChunkShape, Header, corrupt};
use crate::error::{Error, Result};
use crate::keys::{ChunkKeys, Hash};
use crate::meta::{ConnectorMetadata, LoadChunk, ReqId, SaveChunk};
use crate::store::ChunkStore;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Ranged GETs in flight during a load. Default 32.
    pub load_window: usize,
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

/// Layers loaded so far in the current step.
#[derive(Default)]
struct Progress {
    layers_done: Mutex<usize>,
    cv: Condvar,
}

impl Progress {
    fn set(&self, n: usize) {
        let mut d = self.layers_done.lock();
        if n > *d {
            *d = n;
            self.cv.notify_all();
        }
    }

    fn wait_for(&self, layer: usize) {
        let mut d = self.layers_done.lock();
        while *d <= layer {
            self.cv.wait(&mut d);
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
        progress.set(usize::MAX);
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
            progress.set(usize::MAX);
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

/// Loads `chunks` layer-major; marks each layer done when every chunk has it.
async fn load(
    shared: Arc<Shared>,
    reg: Arc<Registered>,
    chunks: Vec<LoadChunk>,
    progress: Arc<Progress>,
) {
    if shared.config.read_unit == ReadUnit::Chunk {
        return load_whole(shared, reg, chunks, progress).await;
    }
    let shape = reg.shape;
    let layers = shape.layers as usize;
    let n = chunks.len();
    let hl = shape.header_len();
    let failed: Vec<std::sync::atomic::AtomicBool> = (0..n).map(|_| Default::default()).collect();
    let mut headers: Vec<Option<Header>> = vec![None; n];
    let jobs = (0..layers).flat_map(|l| (0..n).map(move |c| (l, c)));
    let fetch = |(l, c): (usize, usize)| {
        let (shared, chunks, failed) = (&shared, &chunks, &failed);
        async move {
            if failed[c].load(Ordering::Relaxed) {
                return (l, c, Ok(None));
            }
            let (off, len) = if l == 0 {
                (0, hl as u64 + shape.layer_bytes)
            } else {
                (shape.layer_offset(l), shape.layer_bytes)
            };
            (l, c, shared.store.get_range(&chunks[c].key, off, len).await)
        }
    };
    let mut results = futures::stream::iter(jobs)
        .map(fetch)
        .buffered(shared.config.load_window.max(1));
    while let Some((l, c, r)) = results.next().await {
        if !failed[c].load(Ordering::Relaxed) {
            let chunk = &chunks[c];
            let outcome = match r {
                Err(e) => Err(e),
                Ok(None) => Err(corrupt(&chunk.key, "absent")),
                Ok(Some(bytes)) => place(
                    &reg,
                    chunk,
                    &mut headers[c],
                    l,
                    hl,
                    &shared.fingerprint,
                    &bytes,
                ),
            };
            if outcome.is_err() {
                failed[c].store(true, Ordering::Relaxed);
                record(&shared, &reg, chunk, outcome, l);
            } else if l + 1 == layers {
                record(&shared, &reg, chunk, outcome, l);
            }
        }
        if c + 1 == n {
            progress.set(l + 1);
        }
    }
    progress.set(usize::MAX);
}

/// Loads each chunk with one GET; every layer is done when every chunk is.
async fn load_whole(
    shared: Arc<Shared>,
    reg: Arc<Registered>,
    chunks: Vec<LoadChunk>,
    progress: Arc<Progress>,
) {
    let shape = reg.shape;
    let hl = shape.header_len();
    let len = shape.value_len();
    let fetch = |i: usize| {
        let (shared, chunks) = (&shared, &chunks);
        async move { shared.store.get_range(&chunks[i].key, 0, len).await }
    };
    let mut results = futures::stream::iter(0..chunks.len())
        .map(fetch)
        .buffered(shared.config.load_window.max(1));
    let mut i = 0;
    while let Some(r) = results.next().await {
        let chunk = &chunks[i];
        i += 1;
        let outcome = match r {
            Err(e) => Err(e),
            Ok(None) => Err(corrupt(&chunk.key, "absent")),
            Ok(Some(bytes)) => {
                let mut header = None;
                (0..shape.layers as usize).try_for_each(|l| {
                    let data = if l == 0 {
                        bytes.slice(..(hl + shape.layer_bytes as usize).min(bytes.len()))
                    } else {
                        let off = shape.layer_offset(l) as usize;
                        bytes.slice(
                            off.min(bytes.len())
                                ..(off + shape.layer_bytes as usize).min(bytes.len()),
                        )
                    };
                    place(&reg, chunk, &mut header, l, hl, &shared.fingerprint, &data)
                })
            }
        };
        record(&shared, &reg, chunk, outcome, 0);
    }
    progress.set(usize::MAX);
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

/// Checks one fetched layer (and, for layer 0, the header) and scatters it.
fn place(
    reg: &Registered,
    chunk: &LoadChunk,
    header: &mut Option<Header>,
    l: usize,
    hl: usize,
    fingerprint: &Hash,
    bytes: &Bytes,
) -> Result<()> {
    let data = if l == 0 {
        let h = Header::decode(bytes, &reg.shape, fingerprint, &chunk.hash)
            .map_err(|w| corrupt(&chunk.key, w))?;
        *header = Some(h);
        &bytes[hl.min(bytes.len())..]
    } else {
        &bytes[..]
    };
    let h = header
        .as_ref()
        .ok_or_else(|| corrupt(&chunk.key, "no header"))?;
    h.check_layer(l, data).map_err(|w| corrupt(&chunk.key, w))?;
    let bpc = reg.shape.tokens as usize / reg.geometry.block_size;
    cache::scatter(
        &reg.layers[l],
        &reg.geometry,
        data,
        bpc,
        chunk.first_block as usize,
        &chunk.block_ids,
    )
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
