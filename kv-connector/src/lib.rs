//! vLLM-style KV connector for Strata.
//!
//! Coming with the KV-connector issue: a model fingerprint and chunk hashes chained
//! like vLLM's `sha256_cbor`, the scheduler side (`get_num_new_matched_tokens` in one
//! `MatchPrefix` round trip) and the worker side (`start_load_kv`,
//! `wait_for_layer_load`, `save_kv_layer`, `wait_for_save`, `get_finished`,
//! `get_block_ids_with_load_errors`) over candle-core tensors of layout
//! `(2, num_blocks, block_size, num_kv_heads, head_size)`.
//!
//! It will use `strata-transport`'s client for both control and data.
