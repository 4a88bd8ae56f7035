//! Strata's training shard cache, client and server sides.
//!
//! - [`plan`]: deterministic epoch plans from `(seed, epoch)`, split by
//!   `(rank, world_size)`, resumable from `(epoch, step)`.
//! - [`dataset`]: manifests of shards on the origin, versioned by ETag, and
//!   the `shard` namespace's read-through origin (server side).
//! - [`loader`]: a rank's plan read through the cache with bounded prefetch.
//! - [`oracle`]: the next use of every shard over the registered plans, for
//!   clairvoyant (Belady) eviction.

pub mod dataset;
pub mod loader;
pub mod oracle;
pub mod plan;

pub use oracle::{JobId, JobPlan, Oracle};
pub use plan::{Item, PlanSpec, Position, RankPlan, Remainder};
