//! DRAM tier configuration.

use serde::{Deserialize, Serialize};

use super::eviction::EvictionKind;

/// Configuration of the DRAM tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DramConfig {
    /// Arena size in bytes. Default: 1 GiB here; the server sizes it from available
    /// memory (a quarter of `MemAvailable`, at most 8 GiB).
    pub capacity: u64,
    /// Eviction policy. Default: `s3fifo`.
    pub eviction: EvictionKind,
    /// Evicted entries queued for demotion to NVMe before writes wait for the
    /// demoter (with a quarter of the capacity in bytes, whichever comes first).
    /// Default: 256.
    pub demotion_queue: usize,
}

impl Default for DramConfig {
    fn default() -> Self {
        Self {
            capacity: 1 << 30,
            eviction: EvictionKind::default(),
            demotion_queue: 256,
        }
    }
}
