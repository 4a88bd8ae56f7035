//! The connector against a real Strata server on 127.0.0.1:0: two engines share a
//! prefix through it; a corrupt chunk and a server stopped mid-load are reported
//! per block and never copied in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::{DType, Device, Tensor};
use futures::future::BoxFuture;
use strata_kv_connector::meta::ConnectorMetadata;
use strata_kv_connector::store::BatchSink;
use strata_kv_connector::{
    ChunkKeys, ChunkStore, KvLayout, ModelFingerprint, ReadUnit, ScheduledRequest, Scheduler,
    Worker, WorkerConfig,
};
use strata_proto::Key;
use strata_server::{Running, testing};
use strata_transport::Client;
use strata_transport::data::CarrierChoice;
use strata_transport::wire::KeyRange;

const LAYERS: usize = 4;
const HEADS: usize = 2;
const HEAD: usize = 8;
const BLOCK: usize = 4;
const CHUNK: usize = 16;
const BLOCKS: usize = 64;

fn fingerprint() -> ModelFingerprint {
    ModelFingerprint {
        model_id: "test/tiny".into(),
        revision: "r1".into(),
        dtype: "f32".into(),
        layout: KvLayout::Mha,
        num_layers: LAYERS as u32,
        num_kv_heads: HEADS as u32,
        head_size: HEAD as u32,
        tp_rank: 0,
        tp_size: 1,
        lora_id: None,
        tenant: "t".into(),
        cache_salt: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn server(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Running {
    let mut c = testing::config(dir);
    c.dram.capacity = 64 << 20;
    c.nvme.enabled = false;
    rt.block_on(testing::start(c))
}

fn client(rt: &tokio::runtime::Runtime, r: &Running, carrier: CarrierChoice) -> Client {
    let mut options = testing::options(Some(carrier), 2);
    options.timeout = Duration::from_secs(5);
    rt.block_on(testing::client(r, options))
}

/// The KV "the model" computes for a token at a position: any deterministic
/// function works, as long as a wrong block can be told from a right one.
fn kv_value(token: u32, pos: usize, layer: usize, kv: usize, h: usize, d: usize) -> f32 {
    (token as usize * 7919 + pos * 104_729 + layer * 1000 + kv * 100 + h * 10 + d) as f32
}

/// A simulated engine worker: paged caches, and the connector's worker over them.
struct Engine {
    caches: Vec<Tensor>,
    worker: Worker,
}

impl Engine {
    fn new(rt: &tokio::runtime::Runtime, store: Arc<dyn ChunkStore>) -> Self {
        Self::with(rt, store, ReadUnit::Layer, 2)
    }

    /// An engine whose loads read by `read_unit` on `lanes` lanes.
    fn with(
        rt: &tokio::runtime::Runtime,
        store: Arc<dyn ChunkStore>,
        read_unit: ReadUnit,
        lanes: usize,
    ) -> Self {
        let caches: Vec<Tensor> = (0..LAYERS)
            .map(|_| {
                Tensor::zeros((2, BLOCKS, BLOCK, HEADS, HEAD), DType::F32, &Device::Cpu).unwrap()
            })
            .collect();
        let keys = ChunkKeys::new(fingerprint(), CHUNK, BLOCK).unwrap();
        let mut worker = Worker::new(
            keys,
            store,
            rt.handle().clone(),
            WorkerConfig {
                load_window: 1,
                load_lanes: lanes,
                read_unit,
                ..Default::default()
            },
        );
        worker
            .register_kv_caches(
                caches
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("layers.{i}"), t.clone()))
                    .collect(),
            )
            .unwrap();
        Self { caches, worker }
    }

    /// One forward step: loads, then per layer wait, "compute" the scheduled
    /// tokens' KV, save.
    fn step(
        &mut self,
        meta: ConnectorMetadata,
        tokens: &[u32],
        blocks: &[u32],
        from: usize,
        to: usize,
    ) {
        self.worker.bind_connector_metadata(meta);
        self.worker.start_load_kv().unwrap();
        for l in 0..LAYERS {
            let name = format!("layers.{l}");
            self.worker.wait_for_layer_load(&name).unwrap();
            for pos in from..to {
                self.write_token(l, blocks[pos / BLOCK], pos % BLOCK, tokens[pos], pos);
            }
            self.worker.save_kv_layer(&name).unwrap();
        }
        self.worker.wait_for_save();
        self.worker.clear_connector_metadata();
    }

    fn write_token(&self, l: usize, block: u32, slot: usize, token: u32, pos: usize) {
        // Independent of the connector's scatter: read the block, change one
        // token's K and V, write the block back with candle's own slice_set.
        let t = &self.caches[l];
        let mut vals = t
            .narrow(1, block as usize, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for kv in 0..2 {
            for h in 0..HEADS {
                for d in 0..HEAD {
                    vals[((kv * BLOCK + slot) * HEADS + h) * HEAD + d] =
                        kv_value(token, pos, l, kv, h, d);
                }
            }
        }
        let src = Tensor::from_vec(vals, (2, 1, BLOCK, HEADS, HEAD), &Device::Cpu).unwrap();
        t.slice_set(&src, 1, block as usize).unwrap();
    }

    /// Whether block `block` of every layer holds the KV of `tokens[first..]` at
    /// positions `first..`.
    fn block_is(&self, block: u32, tokens: &[u32], first: usize) -> bool {
        (0..LAYERS).all(|l| {
            (0..2).all(|kv| {
                let got = self.caches[l]
                    .get(kv)
                    .unwrap()
                    .get(block as usize)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (0..BLOCK).all(|s| {
                    (0..HEADS).all(|h| {
                        (0..HEAD).all(|d| {
                            got[(s * HEADS + h) * HEAD + d]
                                == kv_value(tokens[first + s], first + s, l, kv, h, d)
                        })
                    })
                })
            })
        })
    }
}

fn scheduler(rt: &tokio::runtime::Runtime, store: Arc<dyn ChunkStore>) -> Scheduler {
    Scheduler::new(
        ChunkKeys::new(fingerprint(), CHUNK, BLOCK).unwrap(),
        BLOCK,
        store,
        rt.handle().clone(),
    )
}

/// Runs a request's prefill on `engine` with nothing loaded, and waits until its
/// saves are written.
fn prefill_and_save(
    sched: &mut Scheduler,
    engine: &mut Engine,
    id: &str,
    tokens: &[u32],
    blocks: &[u32],
) {
    assert_eq!(sched.get_num_new_matched_tokens(tokens, 0), 0);
    sched.update_state_after_alloc(id, tokens, blocks, 0, 0);
    let meta = sched.build_connector_meta(&[ScheduledRequest {
        req_id: id,
        token_ids: tokens,
        block_ids: blocks,
        num_computed_tokens: 0,
        num_scheduled_tokens: tokens.len(),
    }]);
    assert_eq!(meta.saves[0].chunks.len(), tokens.len() / CHUNK);
    engine.step(meta, tokens, blocks, 0, tokens.len());
    assert!(sched.request_finished(id), "saves in flight delay the free");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sent, recv) = engine.worker.get_finished(&[id.to_owned()]);
        assert!(recv.is_empty());
        if sent == [id.to_owned()] {
            break;
        }
        assert!(Instant::now() < deadline, "saves of {id} never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        engine.worker.stats().chunks_saved.load(Ordering::Relaxed),
        (tokens.len() / CHUNK) as u64
    );
}

/// Loads a request's hit into `engine`; returns the blocks reported as failed.
fn load(
    sched: &mut Scheduler,
    engine: &mut Engine,
    id: &str,
    tokens: &[u32],
    blocks: &[u32],
    hit: usize,
) -> Vec<u32> {
    sched.update_state_after_alloc(id, tokens, blocks, 0, hit);
    let meta = sched.build_connector_meta(&[ScheduledRequest {
        req_id: id,
        token_ids: tokens,
        block_ids: blocks,
        num_computed_tokens: hit,
        num_scheduled_tokens: tokens.len() - hit,
    }]);
    engine.step(meta, tokens, blocks, hit, tokens.len());
    engine
        .worker
        .get_block_ids_with_load_errors()
        .into_iter()
        .collect()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| seed * 1000 + i * 3 + 1).collect()
}

fn shared_prefix_between_engines(carrier: CarrierChoice) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let r = server(&rt, dir.path());
    let store: Arc<dyn ChunkStore> = Arc::new(client(&rt, &r, carrier));
    let (mut sched_a, mut a) = (
        scheduler(&rt, store.clone()),
        Engine::new(&rt, store.clone()),
    );
    let tokens = prompt(1, 2 * CHUNK + 8);
    let blocks_a: Vec<u32> = (0..10).map(|i| (i * 5 + 3) % BLOCKS as u32).collect();
    prefill_and_save(&mut sched_a, &mut a, "a", &tokens, &blocks_a);

    // Engine B: the same 32-token prefix, another tail, other blocks.
    let (mut sched_b, mut b) = (
        scheduler(&rt, store.clone()),
        Engine::new(&rt, store.clone()),
    );
    let mut tokens_b = tokens[..2 * CHUNK].to_vec();
    tokens_b.extend([7, 7, 7, 7, 7]);
    assert_eq!(sched_b.get_num_new_matched_tokens(&tokens_b, 0), 2 * CHUNK);
    assert_eq!(
        sched_b.get_num_new_matched_tokens(&tokens_b, 8),
        2 * CHUNK - 8
    );
    // A prompt that is all hit still leaves a token to compute, in whole blocks.
    assert_eq!(
        sched_b.get_num_new_matched_tokens(&tokens[..2 * CHUNK], 0),
        2 * CHUNK - BLOCK
    );
    // Another tail from token 20 on: only the first chunk matches.
    let mut diverged = tokens.clone();
    diverged[20] = 999_999;
    assert_eq!(sched_b.get_num_new_matched_tokens(&diverged, 0), CHUNK);
    // Another fingerprint shares nothing.
    let mut fp = fingerprint();
    fp.tp_rank = 1;
    let other = Scheduler::new(
        ChunkKeys::new(fp, CHUNK, BLOCK).unwrap(),
        BLOCK,
        store.clone(),
        rt.handle().clone(),
    );
    assert_eq!(other.get_num_new_matched_tokens(&tokens, 0), 0);

    let blocks_b: Vec<u32> = (0..10).map(|i| 40 + i).collect();
    let errors = load(&mut sched_b, &mut b, "b", &tokens_b, &blocks_b, 2 * CHUNK);
    assert!(errors.is_empty(), "{errors:?}");
    for (i, &blk) in blocks_b[..2 * CHUNK / BLOCK].iter().enumerate() {
        assert!(
            b.block_is(blk, &tokens_b, i * BLOCK),
            "block {blk} (prefix block {i}) after the load"
        );
    }
    assert_eq!(b.worker.stats().chunks_loaded.load(Ordering::Relaxed), 2);
    // Nothing B loaded is saved again, and B's tail is not a whole chunk.
    assert!(!sched_b.request_finished("b"));

    // A partial load: the engine already has the first 8 tokens (2 blocks).
    let (mut sched_c, mut c) = (
        scheduler(&rt, store.clone()),
        Engine::new(&rt, store.clone()),
    );
    assert_eq!(
        sched_c.get_num_new_matched_tokens(&tokens_b, 8),
        2 * CHUNK - 8
    );
    let blocks_c: Vec<u32> = (0..10).map(|i| 20 + i).collect();
    sched_c.update_state_after_alloc("c", &tokens_b, &blocks_c, 8, 2 * CHUNK - 8);
    let meta = sched_c.build_connector_meta(&[]);
    assert_eq!(meta.loads[0].chunks[0].first_block, 2);
    assert_eq!(meta.loads[0].chunks[0].block_ids, blocks_c[2..4]);
    c.step(meta, &tokens_b, &blocks_c, 0, 0);
    assert!(c.worker.get_block_ids_with_load_errors().is_empty());
    assert!(
        !c.block_is(blocks_c[0], &tokens_b, 0),
        "blocks the engine had are not written"
    );
    for (i, &blk) in blocks_c.iter().enumerate().take(8).skip(2) {
        assert!(c.block_is(blk, &tokens_b, i * BLOCK), "block {i}");
    }
    rt.block_on(r.shutdown()).unwrap();
}

#[test]
fn shared_prefix_over_tcp() {
    shared_prefix_between_engines(CarrierChoice::Tcp);
}

#[test]
fn shared_prefix_over_shm() {
    shared_prefix_between_engines(CarrierChoice::Shm);
}

#[test]
fn corrupt_chunks_are_reported_per_block() {
    for carrier in [CarrierChoice::Tcp, CarrierChoice::Shm] {
        corrupt_chunks(ReadUnit::Layer, carrier);
        corrupt_chunks(ReadUnit::Chunk, carrier);
    }
}

fn corrupt_chunks(read_unit: ReadUnit, carrier: CarrierChoice) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let r = server(&rt, dir.path());
    let c = Arc::new(client(&rt, &r, carrier));
    let store: Arc<dyn ChunkStore> = c.clone();
    let (mut sched, mut a) = (
        scheduler(&rt, store.clone()),
        Engine::new(&rt, store.clone()),
    );
    let tokens = prompt(2, 3 * CHUNK + 1);
    let blocks: Vec<u32> = (0..13).collect();
    prefill_and_save(&mut sched, &mut a, "a", &tokens, &blocks);
    let keys = ChunkKeys::new(fingerprint(), CHUNK, BLOCK)
        .unwrap()
        .keys(&tokens);
    let shape = a.worker.chunk_shape().unwrap();

    // Chunk 1: one bit of layer 2 flipped. Chunk 2: chunk 0's bytes under its key.
    let mut v = rt.block_on(c.get(&keys[1])).unwrap().unwrap().to_vec();
    v[shape.layer_offset(2) as usize + 17] ^= 0x10;
    rt.block_on(c.put(&keys[1], Bytes::from(v))).unwrap();
    let v0 = rt.block_on(c.get(&keys[0])).unwrap().unwrap();
    rt.block_on(c.put(&keys[2], v0)).unwrap();

    let (mut sched_b, mut b) = (
        scheduler(&rt, store.clone()),
        Engine::with(&rt, store.clone(), read_unit, 2),
    );
    assert_eq!(sched_b.get_num_new_matched_tokens(&tokens, 0), 3 * CHUNK);
    let blocks_b: Vec<u32> = (20..33).collect();
    let errors = load(&mut sched_b, &mut b, "b", &tokens, &blocks_b, 3 * CHUNK);
    assert_eq!(
        errors,
        blocks_b[4..12].to_vec(),
        "chunks 1 and 2 reported, chunk 0 not"
    );
    for (i, &blk) in blocks_b.iter().enumerate().take(4) {
        assert!(b.block_is(blk, &tokens, i * BLOCK));
    }
    // Chunk 2 (a wrong chunk with valid checksums) was refused at its header:
    // none of its bytes reached the caches.
    for &blk in &blocks_b[8..12] {
        assert!(!b.block_is(blk, &tokens, 0));
        let got = b.caches[0]
            .get(0)
            .unwrap()
            .get(blk as usize)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(got.iter().all(|&x| x == 0.0), "block {blk} untouched");
    }
    assert_eq!(b.worker.stats().chunks_failed.load(Ordering::Relaxed), 2);
    rt.block_on(r.shutdown()).unwrap();
}

/// The real client, with a fault: the `n`-th read stops the real server first.
/// With `batch`, the loader reads a layer of every chunk per request.
struct StopsServer {
    inner: Client,
    calls: AtomicUsize,
    n: usize,
    server: parking_lot::Mutex<Option<Running>>,
    batch: bool,
    /// Panic at the `n`-th read instead (a bug in a store).
    panic: bool,
}

impl StopsServer {
    async fn count_call(&self) {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            assert!(!self.panic, "a store that panics mid-load");
            let r = self.server.lock().take();
            if let Some(r) = r {
                r.shutdown().await.unwrap();
            }
        }
    }
}

impl ChunkStore for StopsServer {
    fn match_prefix<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, strata_kv_connector::Result<usize>> {
        ChunkStore::match_prefix(&self.inner, keys)
    }

    fn get_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, strata_kv_connector::Result<Option<Bytes>>> {
        Box::pin(async move {
            self.count_call().await;
            ChunkStore::get_range(&self.inner, key, offset, len).await
        })
    }

    fn batches_reads(&self) -> bool {
        self.batch
    }

    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [KeyRange],
        sink: BatchSink<'a>,
    ) -> BoxFuture<'a, strata_kv_connector::Result<Vec<strata_kv_connector::Result<bool>>>> {
        Box::pin(async move {
            self.count_call().await;
            ChunkStore::read_ranges(&self.inner, ranges, sink).await
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Bytes,
    ) -> BoxFuture<'a, strata_kv_connector::Result<()>> {
        ChunkStore::put(&self.inner, key, value)
    }

    fn name(&self) -> String {
        "stops-server".into()
    }
}

#[test]
fn a_server_stopped_mid_load_fails_the_unloaded_blocks() {
    server_stopped_mid_load(false, false);
    server_stopped_mid_load(true, false);
}

#[test]
fn a_store_that_panics_mid_load_fails_the_unloaded_blocks_without_hanging() {
    server_stopped_mid_load(false, true);
}

fn server_stopped_mid_load(batch: bool, panic: bool) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let r = server(&rt, dir.path());
    let faulty = Arc::new(StopsServer {
        inner: client(&rt, &r, CarrierChoice::Tcp),
        calls: AtomicUsize::new(0),
        // Layer-major with a window of 1: reads 1..=2 are layer 0 of both chunks,
        // the 3rd (layer 1 of chunk 0) finds the server gone. Batched: read 1 is
        // layer 0 of both chunks, the 2nd (layer 1 of both) finds it gone.
        n: if batch { 2 } else { 3 },
        server: parking_lot::Mutex::new(Some(r)),
        batch,
        panic,
    });
    let store: Arc<dyn ChunkStore> = faulty.clone();
    let (mut sched, mut a) = (
        scheduler(&rt, store.clone()),
        Engine::new(&rt, store.clone()),
    );
    let tokens = prompt(3, 2 * CHUNK + 1);
    let blocks: Vec<u32> = (0..9).collect();
    prefill_and_save(&mut sched, &mut a, "a", &tokens, &blocks);

    // One lane, so the reads come in a known order.
    let (mut sched_b, mut b) = (
        scheduler(&rt, store.clone()),
        Engine::with(&rt, store.clone(), ReadUnit::Layer, 1),
    );
    assert_eq!(sched_b.get_num_new_matched_tokens(&tokens, 0), 2 * CHUNK);
    let blocks_b: Vec<u32> = (30..39).collect();
    let started = Instant::now();
    let errors = load(&mut sched_b, &mut b, "b", &tokens, &blocks_b, 2 * CHUNK);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "every layer wait returned"
    );
    assert_eq!(
        errors,
        blocks_b[..8].to_vec(),
        "both chunks failed after layer 0"
    );
    assert_eq!(b.worker.stats().chunks_loaded.load(Ordering::Relaxed), 0);
    if panic {
        // The lane died at its first read; the load's guard reported both chunks.
        assert_eq!(faulty.calls.load(Ordering::SeqCst), 3);
        return;
    }
    // Layer 1 of each chunk fails once; layers 2 and 3 are never asked for.
    assert_eq!(
        faulty.calls.load(Ordering::SeqCst),
        if batch { 2 } else { 4 },
        "a failed chunk is not read further"
    );
    // With the server gone, the scheduler sees a miss, not an error.
    assert_eq!(sched_b.get_num_new_matched_tokens(&tokens, 0), 0);
}
