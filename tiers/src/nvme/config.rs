//! NVMe tier configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Configuration of the NVMe tier (foyer's block engine on a directory): `[nvme]`
/// in the server's config file, as it is. Sizes take integers or size strings
/// (`"500GiB"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvmeConfig {
    /// Whether a server runs this tier ([`NvmeTier::open`](super::NvmeTier::open)
    /// does not read it). Default: true.
    pub enabled: bool,
    /// Directory for the engine's block files. Default: `nvme/` under the
    /// server's `data_dir` (`./strata-data/nvme` outside a server).
    pub dir: Option<PathBuf>,
    /// Disk capacity in bytes. Default: 4 GiB. Must be at least 8 × `block_size`.
    #[serde(with = "crate::size::bytes")]
    pub capacity: u64,
    /// Engine block size in bytes; bounds the largest entry. Default: 16 MiB.
    #[serde(with = "crate::size::bytes")]
    pub block_size: u64,
    /// Bytes of write buffers (the engine drops writes when they are full, which we
    /// count). Default: 64 MiB.
    #[serde(with = "crate::size::bytes")]
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
            enabled: true,
            dir: None,
            capacity: 4 << 30,
            block_size: 16 << 20,
            buffer_pool_size: 64 << 20,
            io_uring: false,
            direct_io: true,
        }
    }
}

impl NvmeConfig {
    /// The directory of the block files: `dir`, or `./strata-data/nvme`.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("strata-data/nvme"))
    }
}
