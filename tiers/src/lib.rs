//! Strata's storage engine.
//!
//! - [`Key`]: the key space (`namespace / tenant / body`, canonical encoding).
//! - [`Namespaces`]: the registered namespaces and their policies.
//! - [`Tier`]: the one trait every tier implements — [`DramTier`], [`NvmeTier`],
//!   [`LocalDirTier`] (the embedded default's origin) and the Azure Blob tier.
//! - [`TieredStore`]: composes them — top-down reads with promotion, single-flight
//!   read-through from the origin, demotion on eviction, checksummed pages,
//!   two-phase puts and pins.
//!
//! This crate knows nothing of gRPC; the server maps its [`Error`] to statuses.

pub mod blob;
pub mod dram;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod localdir;
pub mod nvme;
mod policy;
pub mod size;
mod stats;
pub mod store;
mod tier;

pub use self::blob::{BlobAuth, BlobConfig, BlobItem, BlobTier};
pub use self::dram::{DramConfig, DramTier, EvictionKind, NextUse, Planned};
pub use self::error::{Error, ErrorKind, Result};
pub use self::localdir::LocalDirTier;
pub use self::nvme::{NvmeConfig, NvmeTier};
pub use self::policy::{NamespacePolicy, Namespaces, OriginKind, TierSet, WritePolicy};
pub use self::size::ByteSize;
pub use self::stats::{Counters, CountersSnapshot, TierStats};
pub use self::store::{
    BoxFuture, Entry, Head, ListedValue, NamespaceOrigin, Origin, PAGE_READAHEAD, Receipt,
    Reservation, StoreConfig, TierReport, TieredStore,
};
pub use self::tier::{
    ByteRange, Capabilities, GetOptions, Listed, PutOptions, PutOutcome, Tier, Usage,
};
pub use strata_proto::codec;
pub use strata_proto::key::{
    KEY_VERSION, Key, KeyError, MAX_BODY_LEN, MAX_NAMESPACE_LEN, MAX_TENANT_LEN,
};
