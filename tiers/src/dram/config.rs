//! DRAM tier configuration.

use serde::{Deserialize, Serialize};

use super::eviction::EvictionKind;

/// Configuration of the DRAM tier (`[dram]` in the server's config file, as it
/// is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DramConfig {
    /// Arena size in bytes (or a size string, `"16GiB"`). Default: a quarter of
    /// the memory available when the config is made (`MemAvailable`), at least
    /// 64 MiB and at most 8 GiB.
    #[serde(with = "crate::size::bytes")]
    pub capacity: u64,
    /// Eviction policy: `s3fifo`, `lru` or `gdsf`. Default: `s3fifo`.
    pub eviction: EvictionKind,
    /// Evicted entries queued for demotion to NVMe before writes wait for the
    /// demoter (with a quarter of the capacity in bytes, whichever comes first).
    /// Default: 256.
    pub demotion_queue: usize,
}

impl Default for DramConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            eviction: EvictionKind::default(),
            demotion_queue: 256,
        }
    }
}

/// A quarter of `MemAvailable`, clamped to 64 MiB ..= 8 GiB (4 GiB where it
/// cannot be read).
fn default_capacity() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024);
    (avail / 4).clamp(64 << 20, 8 << 30)
}
