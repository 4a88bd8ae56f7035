//! vLLM-style KV connector for Strata.
//!
//! - [`keys`]: a model fingerprint and chunk hashes chained like vLLM's
//!   `sha256_cbor`; spec and test vectors in `docs/kv-keys.md`.
//! - [`Scheduler`]: `get_num_new_matched_tokens` in one `MatchPrefix` round trip,
//!   `update_state_after_alloc`, `build_connector_meta`, `request_finished`.
//! - [`Worker`]: `register_kv_caches` (candle tensors), `start_load_kv`,
//!   `wait_for_layer_load`, `save_kv_layer`, `wait_for_save`, `get_finished`,
//!   `get_block_ids_with_load_errors`.
//! - [`ChunkStore`]: where chunks live; Strata's [`strata_transport::Client`], or
//!   any other store behind the same four calls.
//!
//! Every stored chunk carries a header with a CRC-32C per layer; a chunk that fails
//! any check is reported per block for the engine to recompute, never handed over
//! as good.
//!
//! Feature `gpu` adds [`gpu`]: device and pinned-memory copies and a GPU tier of hot
//! chunks, with the CUDA driver loaded at run time (so it builds without CUDA and
//! reports itself unavailable without a GPU).
//!
//! Feature `engine` (default) holds the worker side and the simulated engine (candle
//! and ndarray); without it the crate is the formats, the scheduler and the store
//! trait.

#[cfg(feature = "engine")]
pub mod cache;
pub mod cbor;
pub mod chunk;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod keys;
pub mod meta;
pub mod scheduler;
#[cfg(feature = "engine")]
pub mod sim;
pub mod store;
#[cfg(feature = "engine")]
pub mod worker;

pub use self::error::{Error, Result};
pub use self::keys::{ChunkKeys, KvLayout, ModelFingerprint};
pub use self::meta::ConnectorMetadata;
pub use self::scheduler::{ScheduledRequest, Scheduler};
pub use self::store::ChunkStore;
#[cfg(feature = "engine")]
pub use self::worker::{ReadUnit, Worker, WorkerConfig, WorkerStats};
