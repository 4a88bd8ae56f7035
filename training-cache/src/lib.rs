//! Strata's training shard cache, the client side (it links no server code):
//!
//! - [`plan`]: deterministic epoch plans from `(seed, epoch)`, split by
//!   `(rank, world_size)`, resumable from `(epoch, step)`.
//! - [`manifest`]: what a dataset version is made of, and its shards' keys.
//! - [`loader`]: a rank's plan read through the cache with bounded prefetch.
//!
//! The server side (the dataset registry that lists the origin, and the oracle of
//! next uses for clairvoyant eviction) is in `strata-server`.

pub mod loader;
pub mod manifest;
pub mod plan;

pub use plan::{Item, PlanSpec, Position, RankPlan, Remainder};
