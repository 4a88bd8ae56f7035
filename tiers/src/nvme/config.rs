//! NVMe tier configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Configuration of the NVMe tier (foyer's block engine on a directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvmeConfig {
    /// Directory for the engine's block files. Default: `./strata-data/nvme`.
    pub dir: PathBuf,
    /// Disk capacity in bytes. Default: 8 GiB. Must be at least 8 × `block_size`.
    pub capacity: u64,
    /// Engine block size in bytes; bounds the largest entry. Default: 16 MiB.
    pub block_size: u64,
    /// Bytes of write buffers (the engine drops writes when they are full, which we
    /// count). Default: 64 MiB.
    pub buffer_pool_size: u64,
    /// Use io_uring when the kernel allows it (falls back to psync). Default: true.
    pub io_uring: bool,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("strata-data/nvme"),
            capacity: 8 << 30,
            block_size: 16 << 20,
            buffer_pool_size: 64 << 20,
            io_uring: true,
        }
    }
}
