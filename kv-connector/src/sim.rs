//! A simulated engine for examples and benchmarks: paged bf16 caches shaped like a
//! real model, a block allocator, the connector's scheduler and worker, and a
//! seeded multi-turn chat trace. "Compute" writes a deterministic value per token,
//! so a load that put wrong KV in a block is caught by [`SimEngine::check_block`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use half::bf16;

use crate::error::Result;
use crate::keys::{ChunkKeys, KvLayout, ModelFingerprint};
use crate::scheduler::{ScheduledRequest, Scheduler};
use crate::store::ChunkStore;
use crate::worker::{Worker, WorkerConfig};

/// Llama-3.1-8B's KV shape: 32 layers, 8 KV heads of 128, bf16 (128 KiB per token).
pub fn llama_8b() -> ModelFingerprint {
    ModelFingerprint {
        model_id: "meta-llama/Llama-3.1-8B-Instruct".into(),
        revision: "main".into(),
        dtype: "bf16".into(),
        layout: KvLayout::Mha,
        num_layers: 32,
        num_kv_heads: 8,
        head_size: 128,
        tp_rank: 0,
        tp_size: 1,
        lora_id: None,
        tenant: String::new(),
        cache_salt: None,
    }
}

/// What one request did.
#[derive(Debug, Clone, Default)]
pub struct RequestReport {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens loaded from the store.
    pub hit_tokens: usize,
    /// Time the forward pass waited on loads.
    pub load_wait: Duration,
    /// Blocks whose load failed (recomputed).
    pub failed_blocks: usize,
}

/// A single-worker engine over the connector.
pub struct SimEngine {
    fp: ModelFingerprint,
    block_size: usize,
    caches: Vec<Tensor>,
    /// The scheduler side.
    pub scheduler: Scheduler,
    /// The worker side.
    pub worker: Worker,
    free: Vec<u32>,
    /// Finished requests whose blocks wait for their saves.
    held: Vec<(String, Vec<u32>)>,
    compute: bool,
}

impl SimEngine {
    /// An engine with `num_blocks` blocks of `block_size` tokens per layer. With
    /// `compute` false the forward pass writes nothing (to time loads alone).
    #[expect(
        clippy::too_many_arguments,
        reason = "a test harness's knobs, named at the call"
    )]
    pub fn new(
        fp: ModelFingerprint,
        chunk_tokens: usize,
        block_size: usize,
        num_blocks: usize,
        store: Arc<dyn ChunkStore>,
        rt: tokio::runtime::Handle,
        config: WorkerConfig,
        compute: bool,
    ) -> Result<Self> {
        let keys = ChunkKeys::new(fp.clone(), chunk_tokens, block_size)?;
        let (h, d) = (fp.num_kv_heads as usize, fp.head_size as usize);
        let caches: Vec<Tensor> = (0..fp.num_layers)
            .map(|_| Tensor::zeros((2, num_blocks, block_size, h, d), DType::BF16, &Device::Cpu))
            .collect::<candle_core::Result<_>>()?;
        let mut worker = Worker::new(keys.clone(), store.clone(), rt.clone(), config);
        worker.register_kv_caches(
            caches
                .iter()
                .enumerate()
                .map(|(i, t)| (layer_name(i), t.clone()))
                .collect(),
        )?;
        Ok(Self {
            scheduler: Scheduler::new(keys, block_size, store, rt),
            worker,
            free: (0..num_blocks as u32).rev().collect(),
            held: Vec::new(),
            caches,
            block_size,
            fp,
            compute,
        })
    }

    /// Runs one request's prefill through the connector: match, allocate, load
    /// layer by layer while "computing" the rest, save, finish.
    pub fn run(&mut self, id: &str, tokens: &[u32]) -> Result<RequestReport> {
        self.reap(&[]);
        let hit = self.scheduler.get_num_new_matched_tokens(tokens, 0);
        let need = tokens.len().div_ceil(self.block_size);
        if self.free.len() < need {
            // Wait for held blocks (their saves) to come back.
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.free.len() < need && !self.held.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                self.reap(&[]);
            }
        }
        if self.free.len() < need {
            return Err(crate::Error::Config(format!(
                "{need} blocks needed, {} free",
                self.free.len()
            )));
        }
        let blocks: Vec<u32> = (0..need)
            .map(|_| self.free.pop().expect("counted"))
            .collect();
        self.scheduler
            .update_state_after_alloc(id, tokens, &blocks, 0, hit);
        let meta = self.scheduler.build_connector_meta(&[ScheduledRequest {
            req_id: id,
            token_ids: tokens,
            block_ids: &blocks,
            num_computed_tokens: hit,
            num_scheduled_tokens: tokens.len() - hit,
        }]);
        self.worker.bind_connector_metadata(meta);
        self.worker.start_load_kv()?;
        let mut load_wait = Duration::ZERO;
        for l in 0..self.caches.len() {
            let t = Instant::now();
            self.worker.wait_for_layer_load(&layer_name(l))?;
            load_wait += t.elapsed();
            if self.compute {
                self.forward_layer(l, tokens, &blocks, hit)?;
            }
            self.worker.save_kv_layer(&layer_name(l))?;
        }
        self.worker.wait_for_save();
        self.worker.clear_connector_metadata();
        let failed = self.worker.get_block_ids_with_load_errors();
        if !failed.is_empty() && self.compute {
            // The engine recomputes what failed to load.
            for l in 0..self.caches.len() {
                self.forward_layer(l, tokens, &blocks, 0)?;
            }
        }
        if self.scheduler.request_finished(id) {
            self.held.push((id.to_owned(), blocks));
            self.reap(&[id.to_owned()]);
        } else {
            self.free.extend(blocks);
        }
        Ok(RequestReport {
            prompt_tokens: tokens.len(),
            hit_tokens: hit,
            load_wait,
            failed_blocks: failed.len(),
        })
    }

    /// Waits until every held request's saves are written.
    pub fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.held.is_empty() && Instant::now() < deadline {
            self.reap(&[]);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reap(&mut self, finished: &[String]) {
        let (done, _) = self.worker.get_finished(finished);
        for id in done {
            if let Some(i) = self.held.iter().position(|(h, _)| *h == id) {
                let (_, blocks) = self.held.swap_remove(i);
                self.free.extend(blocks);
            }
        }
    }

    /// Writes layer `l`'s KV for tokens `from..` (whole blocks at a time).
    fn forward_layer(&self, l: usize, tokens: &[u32], blocks: &[u32], from: usize) -> Result<()> {
        let bs = self.block_size;
        let (h, d) = (self.fp.num_kv_heads as usize, self.fp.head_size as usize);
        let per_token = h * d;
        let last = tokens.len().div_ceil(bs);
        for (b, &block) in blocks.iter().enumerate().take(last).skip(from / bs) {
            let mut vals = vec![bf16::ZERO; 2 * bs * per_token];
            for kv in 0..2 {
                for s in 0..bs {
                    let pos = b * bs + s;
                    if pos >= tokens.len() {
                        break;
                    }
                    let v = token_value(tokens[pos], pos, l, kv);
                    vals[(kv * bs + s) * per_token..(kv * bs + s + 1) * per_token].fill(v);
                }
            }
            let src = Tensor::from_vec(vals, (2, 1, bs, h, d), &Device::Cpu)?;
            self.caches[l].slice_set(&src, 1, block as usize)?;
        }
        Ok(())
    }

    /// Whether block `block` holds, in layers 0 and last, the KV of the tokens at
    /// `first..first + block_size`.
    pub fn check_block(&self, block: u32, tokens: &[u32], first: usize) -> Result<bool> {
        let last = self.caches.len() - 1;
        for l in [0, last] {
            for kv in 0..2 {
                let got = self.caches[l]
                    .get(kv)?
                    .get(block as usize)?
                    .flatten_all()?
                    .to_vec1::<bf16>()?;
                let per_token = got.len() / self.block_size;
                for s in 0..self.block_size.min(tokens.len().saturating_sub(first)) {
                    let want = token_value(tokens[first + s], first + s, l, kv);
                    if got[s * per_token] != want || got[(s + 1) * per_token - 1] != want {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }
}

fn token_value(token: u32, pos: usize, layer: usize, kv: usize) -> bf16 {
    let x = (token as usize).wrapping_mul(31) ^ pos.wrapping_mul(7) ^ (layer << 3) ^ kv;
    bf16::from_f32((x % 4093) as f32)
}

/// The name the simulated engine gives layer `i`.
pub fn layer_name(i: usize) -> String {
    format!("model.layers.{i}.self_attn")
}

/// A seeded multi-turn chat trace: shared system prompts, conversations that grow
/// turn by turn, interleaved round-robin as a server would see them.
#[derive(Debug, Clone)]
pub struct ChatTrace {
    /// `(request id, prompt tokens)` in arrival order.
    pub requests: Vec<(String, Vec<u32>)>,
}

/// Shape of a [`ChatTrace`].
#[derive(Debug, Clone)]
pub struct ChatShape {
    /// Seed.
    pub seed: u64,
    /// Distinct system prompts.
    pub system_prompts: usize,
    /// Tokens of each system prompt.
    pub system_tokens: usize,
    /// Conversations.
    pub conversations: usize,
    /// Turns per conversation.
    pub turns: usize,
    /// Tokens per user message (min, max).
    pub user_tokens: (usize, usize),
    /// Tokens per reply (min, max).
    pub reply_tokens: (usize, usize),
}

impl ChatTrace {
    /// Tokens of the longest prompt.
    pub fn longest(&self) -> usize {
        self.requests
            .iter()
            .map(|(_, t)| t.len())
            .max()
            .unwrap_or(0)
    }

    /// Builds the trace.
    pub fn new(s: &ChatShape) -> Self {
        let mut rng = s.seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // splitmix64
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let range = |(lo, hi): (usize, usize), next: &mut dyn FnMut() -> u64| {
            lo + (next() as usize) % (hi - lo + 1)
        };
        let systems: Vec<Vec<u32>> = (0..s.system_prompts)
            .map(|_| {
                (0..s.system_tokens)
                    .map(|_| (next() % 128_000) as u32)
                    .collect()
            })
            .collect();
        let mut history: Vec<Vec<u32>> = (0..s.conversations)
            .map(|c| systems[c % systems.len().max(1)].clone())
            .collect();
        let mut requests = Vec::new();
        for turn in 0..s.turns {
            for (c, h) in history.iter_mut().enumerate() {
                let user = range(s.user_tokens, &mut next);
                h.extend((0..user).map(|_| (next() % 128_000) as u32));
                requests.push((format!("conv{c}-turn{turn}"), h.clone()));
                let reply = range(s.reply_tokens, &mut next);
                h.extend((0..reply).map(|_| (next() % 128_000) as u32));
            }
        }
        Self { requests }
    }
}
