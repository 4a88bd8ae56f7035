//! Strata's training shard loader.
//!
//! Coming with the training issue: dataset manifests (blob list with sizes and
//! ETags), deterministic epoch plans from (seed, epoch) split by (rank, world size)
//! and resumable from a step, a prefetching loader bounded in count and bytes, and
//! plan registration so the `shard` namespace can evict clairvoyantly (Belady).
