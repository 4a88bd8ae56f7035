//! What the scheduler tells the workers each step (vLLM's `KVConnectorMetadata`).

use strata_proto::Key;

use crate::keys::Hash;

/// An engine request id.
pub type ReqId = String;

/// One stored chunk to load into the engine's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadChunk {
    /// The chunk's key.
    pub key: Key,
    /// The chunk's hash (checked against the stored header).
    pub hash: Hash,
    /// The first stored block to copy (non-zero when the engine already has the
    /// chunk's leading blocks).
    pub first_block: u32,
    /// Destination blocks, one per stored block from `first_block` on.
    pub block_ids: Vec<u32>,
}

/// One whole chunk of computed KV to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveChunk {
    /// The chunk's key.
    pub key: Key,
    /// The chunk's hash (written into the header).
    pub hash: Hash,
    /// The engine blocks holding the chunk, in token order.
    pub block_ids: Vec<u32>,
}

/// A request's loads or saves in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta<T> {
    /// The request.
    pub req_id: ReqId,
    /// Its chunks.
    pub chunks: Vec<T>,
}

/// Everything the workers do for one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorMetadata {
    /// Chunks to load before the forward pass uses them.
    pub loads: Vec<RequestMeta<LoadChunk>>,
    /// Chunks whose KV this step completes.
    pub saves: Vec<RequestMeta<SaveChunk>>,
}

impl ConnectorMetadata {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty() && self.saves.is_empty()
    }
}
