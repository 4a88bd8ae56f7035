//! The scheduler side, with the semantics of vLLM's `KVConnectorBase_V1`:
//! `get_num_new_matched_tokens` (one `MatchPrefix` round trip, no side effects),
//! `update_state_after_alloc`, `build_connector_meta` and `request_finished`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::keys::{ChunkKeys, Hash, chain_hash, root_hash};
use crate::meta::{ConnectorMetadata, LoadChunk, ReqId, RequestMeta, SaveChunk};
use crate::store::ChunkStore;

/// One request in a step's schedule (the part of vLLM's `SchedulerOutput` the
/// connector reads).
#[derive(Debug, Clone)]
pub struct ScheduledRequest<'a> {
    /// The request.
    pub req_id: &'a str,
    /// Every token id known so far (prompt, then output).
    pub token_ids: &'a [u32],
    /// Every block the request holds, in token order.
    pub block_ids: &'a [u32],
    /// Tokens whose KV existed before this step.
    pub num_computed_tokens: usize,
    /// Tokens whose KV this step computes.
    pub num_scheduled_tokens: usize,
}

#[derive(Debug, Default)]
struct RequestState {
    /// Chunk hashes computed so far (the chain is extended, never recomputed).
    hashes: Vec<Hash>,
    /// Whole chunks known to be stored, or already scheduled for saving.
    chunks_done: usize,
    /// Whether any save was scheduled: then `request_finished` delays the free.
    saving: bool,
}

/// The scheduler-side connector.
pub struct Scheduler {
    keys: ChunkKeys,
    block_size: usize,
    store: Arc<dyn ChunkStore>,
    rt: tokio::runtime::Handle,
    requests: HashMap<ReqId, RequestState>,
    loads: Vec<RequestMeta<LoadChunk>>,
}

impl Scheduler {
    /// A scheduler over `store`, whose calls run on `rt`.
    pub fn new(
        keys: ChunkKeys,
        block_size: usize,
        store: Arc<dyn ChunkStore>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Self {
            keys,
            block_size,
            store,
            rt,
            requests: HashMap::new(),
            loads: Vec::new(),
        }
    }

    /// How many tokens beyond `num_computed_tokens` can be loaded from the store:
    /// the prompt is hashed into chunks and one `MatchPrefix` asks how many lead.
    /// At least one token is always left to compute, as vLLM needs a last token to
    /// sample from; the hit is a whole number of blocks. No state changes, here or
    /// in the store. A store that cannot be reached is a miss (logged), never an
    /// error for the engine.
    pub fn get_num_new_matched_tokens(
        &self,
        token_ids: &[u32],
        num_computed_tokens: usize,
    ) -> usize {
        let keys = self.keys.keys(token_ids);
        if keys.is_empty() {
            return 0;
        }
        let matched = match self.block_on(self.store.match_prefix(&keys)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "kv match_prefix failed; treating as a miss");
                return 0;
            }
        };
        let hit = (matched * self.keys.chunk_tokens()).min(token_ids.len().saturating_sub(1));
        let hit = hit / self.block_size * self.block_size;
        hit.saturating_sub(num_computed_tokens)
    }

    /// Records what the engine allocated for a request that will load
    /// `num_external_tokens` tokens after its `num_computed_tokens` ones.
    pub fn update_state_after_alloc(
        &mut self,
        req_id: &str,
        token_ids: &[u32],
        block_ids: &[u32],
        num_computed_tokens: usize,
        num_external_tokens: usize,
    ) {
        let ct = self.keys.chunk_tokens();
        let bs = self.block_size;
        let bpc = ct / bs;
        let state = self.requests.entry(req_id.to_owned()).or_default();
        if num_external_tokens == 0 {
            return;
        }
        let end = num_computed_tokens + num_external_tokens;
        extend_chain(&self.keys, &mut state.hashes, token_ids, end.div_ceil(ct));
        let mut chunks = Vec::new();
        let (first_block, end_block) = (num_computed_tokens / bs, end / bs);
        for c in first_block / bpc..end_block.div_ceil(bpc) {
            let lo = first_block.max(c * bpc);
            let hi = end_block.min((c + 1) * bpc);
            let Some(ids) = block_ids.get(lo..hi) else {
                tracing::warn!(req_id, "fewer blocks than tokens to load; load skipped");
                return;
            };
            chunks.push(LoadChunk {
                key: self.keys.key(&state.hashes[c]),
                hash: state.hashes[c],
                first_block: (lo - c * bpc) as u32,
                block_ids: ids.to_vec(),
            });
        }
        // Chunks wholly inside the hit are stored already: never saved again.
        state.chunks_done = state.chunks_done.max(end / ct);
        self.loads.push(RequestMeta {
            req_id: req_id.to_owned(),
            chunks,
        });
    }

    /// The step's metadata: the loads recorded since the last call, and a save for
    /// every chunk this step completes that is not stored yet.
    pub fn build_connector_meta(
        &mut self,
        scheduled: &[ScheduledRequest<'_>],
    ) -> ConnectorMetadata {
        let ct = self.keys.chunk_tokens();
        let bpc = ct / self.block_size;
        let mut saves = Vec::new();
        for r in scheduled {
            let state = self.requests.entry(r.req_id.to_owned()).or_default();
            let computed = (r.num_computed_tokens + r.num_scheduled_tokens).min(r.token_ids.len());
            let whole = computed / ct;
            if whole <= state.chunks_done {
                continue;
            }
            extend_chain(&self.keys, &mut state.hashes, r.token_ids, whole);
            let mut chunks = Vec::new();
            for c in state.chunks_done..whole {
                let Some(ids) = r.block_ids.get(c * bpc..(c + 1) * bpc) else {
                    break;
                };
                chunks.push(SaveChunk {
                    key: self.keys.key(&state.hashes[c]),
                    hash: state.hashes[c],
                    block_ids: ids.to_vec(),
                });
            }
            state.chunks_done = whole;
            if !chunks.is_empty() {
                state.saving = true;
                saves.push(RequestMeta {
                    req_id: r.req_id.to_owned(),
                    chunks,
                });
            }
        }
        ConnectorMetadata {
            loads: std::mem::take(&mut self.loads),
            saves,
        }
    }

    /// The request is done. `true`: the engine must keep its blocks until a
    /// worker's `get_finished` lists it as finished sending (its saves read them).
    pub fn request_finished(&mut self, req_id: &str) -> bool {
        self.requests.remove(req_id).is_some_and(|s| s.saving)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        // The engine's scheduler is synchronous; never call this from inside `rt`.
        self.rt.block_on(f)
    }
}

/// Extends `hashes` to cover the first `chunks` whole chunks of `tokens`.
fn extend_chain(keys: &ChunkKeys, hashes: &mut Vec<Hash>, tokens: &[u32], chunks: usize) {
    let ct = keys.chunk_tokens();
    let chunks = chunks.min(tokens.len() / ct);
    while hashes.len() < chunks {
        let c = hashes.len();
        let parent = hashes.last().copied().unwrap_or_else(root_hash);
        hashes.push(chain_hash(&parent, &tokens[c * ct..(c + 1) * ct], None));
    }
}
