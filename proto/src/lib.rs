//! Strata's gRPC API (`strata.v1`), generated from `proto/strata/v1/cache.proto`.
//!
//! Only `server/` and `transport/` depend on this crate; the storage engine
//! (`strata-tiers`) never sees proto types.

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("strata.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}
