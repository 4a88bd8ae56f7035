//! Strata's wire contract, shared by every client and the server:
//!
//! - [`key`]: the key space (`namespace/tenant/body`) and its binary encoding;
//! - [`codec`]: the bounds-checked reader every decoder of bytes uses;
//! - [`placement`]: which cluster members own a key (`docs/cluster.md`);
//! - [`v1`]: the gRPC API (`strata.v1`), generated from `proto/strata/v1/cache.proto`.
//!
//! It builds with no server code: the storage engine (`strata-tiers`) uses the
//! key space from here, and never sees the generated gRPC types.

pub mod codec;
pub mod key;
pub mod placement;

pub use self::key::{KEY_VERSION, Key, KeyError, MAX_BODY_LEN, MAX_NAMESPACE_LEN, MAX_TENANT_LEN};

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("strata.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}
