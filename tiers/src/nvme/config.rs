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
    /// Use foyer's io_uring engine when the kernel allows it (falls back to psync).
    /// Default: false. foyer 0.22 runs each io_uring shard on a thread that polls
    /// without sleeping, so it costs a whole core even when idle; on the 2-vCPU
    /// bench machine it read at 0.48× O_DIRECT against psync's 0.80×
    /// (BENCHMARKS.md). Turn it on for nodes with cores to spare.
    pub io_uring: bool,
    /// Open the block files with O_DIRECT, bypassing the page cache (falls back to
    /// buffered I/O where the filesystem refuses it, e.g. tmpfs). Default: true.
    pub direct_io: bool,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("strata-data/nvme"),
            capacity: 8 << 30,
            block_size: 16 << 20,
            buffer_pool_size: 64 << 20,
            io_uring: false,
            direct_io: true,
        }
    }
}
