//! The NVMe tier: foyer's block engine on a local directory, io_uring when the
//! kernel allows it.
//!
//! foyer writes asynchronously and may drop a write when its buffers are full. A
//! put therefore removes the previous value first, waits for the flush and then asks
//! the engine whether the key reached disk; a dropped write returns
//! [`PutOutcome::Dropped`] and is counted, never reported as stored, and leaves the
//! key absent (never the older value).
//!
//! foyer cannot list its keys, so the tier keeps a catalog (key → length) that is
//! saved on a clean close and loaded at open; it backs `list`, the resident gauges,
//! `size` and `contains`. An entry whose block the engine reclaimed to make room
//! leaves the engine's index; the catalog drops it when it next looks (`usage`,
//! `list`, `size`, `contains`) and counts an eviction. foyer checksums every entry
//! (xxhash64) and answers a corrupt entry as a miss; when a `get` finds the key in
//! the catalog and the engine returns nothing, the entry was lost to corruption (or
//! to a reclaim not yet noticed) — it is counted in `checksum_failures` and dropped
//! from the catalog.

mod catalog;
mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, IoEngineConfig, PsyncIoEngineConfig, RecoverMode,
};
use parking_lot::Mutex;

pub use self::config::NvmeConfig;
use crate::Key;
use crate::error::{Error, Result};
use crate::stats::{Counters, TierStats};
use crate::tier::{
    Capabilities, GetOptions, Listed, PutOptions, PutOutcome, Tier, Usage, slice_range,
    sorted_up_to,
};

const CATALOG_FILE: &str = "strata-catalog.bin";

/// Key as stored by foyer: the canonical encoding.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DiskKey(Key);

/// Value as stored by foyer.
struct DiskValue(Bytes);

fn code_err(reason: &str) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        reason.to_owned(),
    ))
}

impl Code for DiskKey {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        let b = self.0.as_bytes();
        w.write_all(&(b.len() as u32).to_le_bytes())
            .map_err(foyer::Error::io_error)?;
        w.write_all(b).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut l = [0u8; 4];
        r.read_exact(&mut l).map_err(foyer::Error::io_error)?;
        let len = u32::from_le_bytes(l) as usize;
        if len > crate::MAX_BODY_LEN + 1024 {
            return Err(code_err("key length out of bounds"));
        }
        let mut v = vec![0u8; len];
        r.read_exact(&mut v).map_err(foyer::Error::io_error)?;
        // Page keys are internal and legal here.
        Key::decode_any(&v)
            .map(DiskKey)
            .map_err(|_| code_err("malformed key"))
    }

    fn estimated_size(&self) -> usize {
        4 + self.0.as_bytes().len()
    }
}

impl Code for DiskValue {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        w.write_all(&(self.0.len() as u64).to_le_bytes())
            .map_err(foyer::Error::io_error)?;
        w.write_all(&self.0).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut l = [0u8; 8];
        r.read_exact(&mut l).map_err(foyer::Error::io_error)?;
        let len = u64::from_le_bytes(l);
        if len > 1 << 32 {
            return Err(code_err("value length out of bounds"));
        }
        let mut v = vec![0u8; len as usize];
        r.read_exact(&mut v).map_err(foyer::Error::io_error)?;
        Ok(DiskValue(Bytes::from(v)))
    }

    fn estimated_size(&self) -> usize {
        8 + self.0.len()
    }
}

/// The NVMe tier.
pub struct NvmeTier {
    cache: HybridCache<DiskKey, DiskValue>,
    config: NvmeConfig,
    catalog: Mutex<HashMap<Key, u64>>,
    stats: Arc<TierStats>,
    closed: AtomicBool,
    io_engine: &'static str,
    direct_io: bool,
}

impl std::fmt::Debug for NvmeTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeTier")
            .field("config", &self.config)
            .field("io_engine", &self.io_engine)
            .field("direct_io", &self.direct_io)
            .finish()
    }
}

impl NvmeTier {
    /// Opens (or creates) the tier in `config.dir`, recovering what a previous clean
    /// close left there. Must run inside a tokio runtime.
    pub async fn open(config: &NvmeConfig) -> Result<Self> {
        if config.capacity < 8 * config.block_size {
            return Err(Error::Config {
                field: "nvme.capacity".into(),
                reason: format!(
                    "{} bytes is less than 8 blocks of {} bytes (nvme.block_size)",
                    config.capacity, config.block_size
                ),
            });
        }
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
        let mut attempts = Vec::with_capacity(4);
        for uring in [true, false] {
            for direct in [true, false] {
                if (uring && !config.io_uring) || (direct && !config.direct_io) {
                    continue;
                }
                attempts.push((uring, direct));
            }
        }
        let mut built = None;
        for (uring, direct) in attempts {
            match Self::build(config, uring, direct).await {
                Ok(c) => {
                    built = Some((c, if uring { "io_uring" } else { "psync" }, direct));
                    break;
                }
                Err(e) if !(uring || direct) => return Err(e),
                Err(e) => tracing::warn!(
                    error = %e,
                    io_uring = uring,
                    direct_io = direct,
                    "NVMe tier engine unavailable; trying the next one"
                ),
            }
        }
        let Some((cache, io_engine, direct_io)) = built else {
            return Err(Error::Nvme {
                message: "no I/O engine could open the NVMe tier".into(),
            });
        };
        let stats = Arc::new(TierStats::default());
        let catalog = catalog::load(&config.dir.join(CATALOG_FILE));
        for (k, len) in &catalog {
            stats.add_resident(k.namespace(), *len);
        }
        tracing::info!(dir = %config.dir.display(), io_engine, direct_io, recovered = catalog.len(), "NVMe tier open");
        Ok(Self {
            cache,
            config: config.clone(),
            catalog: Mutex::new(catalog),
            stats,
            closed: AtomicBool::new(false),
            io_engine,
            direct_io,
        })
    }

    async fn build(
        config: &NvmeConfig,
        uring: bool,
        direct: bool,
    ) -> Result<HybridCache<DiskKey, DiskValue>> {
        let nvme_err = |e: foyer::Error| Error::Nvme {
            message: e.to_string(),
        };
        let device = FsDeviceBuilder::new(&config.dir)
            .with_capacity(config.capacity as usize)
            .with_direct(direct)
            .build()
            .map_err(nvme_err)?;
        let io: Box<dyn IoEngineConfig> = if uring {
            Box::new(foyer::UringIoEngineConfig::new())
        } else {
            Box::new(PsyncIoEngineConfig::new())
        };
        HybridCacheBuilder::<DiskKey, DiskValue>::new()
            .with_name("strata-nvme")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(1)
            .with_shards(1)
            .with_filter(|_, _| false)
            .storage()
            .with_io_engine_config(io)
            .with_engine_config(
                BlockEngineConfig::new(device)
                    .with_block_size(config.block_size as usize)
                    .with_buffer_pool_size(config.buffer_pool_size as usize)
                    .with_submit_queue_size_threshold(2 * config.buffer_pool_size as usize)
                    .with_tombstone_log(true),
            )
            .with_recover_mode(RecoverMode::Quiet)
            .build()
            .await
            .map_err(nvme_err)
    }

    /// Which I/O engine is in use ("io_uring" or "psync").
    pub fn io_engine(&self) -> &'static str {
        self.io_engine
    }

    /// Whether the block files are open with O_DIRECT.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// The largest value this tier can store (an engine block less its index and
    /// entry header, and half the write buffers).
    pub fn max_value_size(&self) -> u64 {
        (self.config.block_size - 8192).min(self.config.buffer_pool_size / 2) - 1024
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Drops the catalog entries whose engine entry is gone because the engine
    /// reclaimed its block to make room (counted as evictions), so that `usage`,
    /// `list`, `size` and `contains` describe what the engine still holds.
    fn prune_reclaimed(&self) {
        let storage = self.cache.storage();
        let mut gone = Vec::new();
        self.catalog.lock().retain(|k, len| {
            let present = storage.may_contains(&DiskKey(k.clone()));
            if !present {
                gone.push((k.clone(), *len));
            }
            present
        });
        for (k, len) in gone {
            self.stats.sub_resident(k.namespace(), len);
            Counters::inc(&self.stats.ns(k.namespace()).evictions);
        }
    }

    /// Whether the tier holds `key` now (no I/O: the catalog and the engine's
    /// index).
    pub fn holds(&self, key: &Key) -> bool {
        self.catalogued(key).is_some()
    }

    /// The catalogued length of `key`, if the engine still holds it.
    fn catalogued(&self, key: &Key) -> Option<u64> {
        let len = self.catalog.lock().get(key).copied()?;
        if self.cache.storage().may_contains(&DiskKey(key.clone())) {
            return Some(len);
        }
        if self.forget(key).is_some() {
            Counters::inc(&self.stats.ns(key.namespace()).evictions);
        }
        None
    }

    fn forget(&self, key: &Key) -> Option<u64> {
        let len = self.catalog.lock().remove(key)?;
        self.stats.sub_resident(key.namespace(), len);
        Some(len)
    }
}

impl Tier for NvmeTier {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bounded: true,
            persistent: true,
            listable: true,
            lossy_writes: true,
        }
    }

    fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    fn usage(&self) -> Usage {
        self.prune_reclaimed();
        let used = self
            .catalog
            .lock()
            .values()
            .map(|l| l.div_ceil(4096) * 4096)
            .sum();
        Usage {
            capacity: self.config.capacity,
            used,
        }
    }

    async fn get(&self, key: &Key, opts: &GetOptions) -> Result<Option<Bytes>> {
        self.check_open()?;
        let dk = DiskKey(key.clone());
        match self.cache.get(&dk).await {
            Ok(Some(entry)) => Ok(Some(slice_range(
                entry.value().0.clone(),
                opts.range.as_ref(),
            )?)),
            Ok(None) => {
                if self.forget(key).is_some() {
                    // The catalog had it: the engine dropped it as corrupt, or reclaimed its block.
                    Counters::inc(&self.stats.ns(key.namespace()).checksum_failures);
                }
                Ok(None)
            }
            Err(e) => {
                self.cache.remove(&dk);
                self.forget(key);
                Counters::inc(&self.stats.ns(key.namespace()).checksum_failures);
                Err(Error::Corrupt {
                    tier: "nvme",
                    reason: e.to_string(),
                })
            }
        }
    }

    async fn size(&self, key: &Key) -> Result<Option<u64>> {
        Ok(self.catalogued(key))
    }

    async fn put(&self, key: &Key, value: Bytes, _opts: &PutOptions) -> Result<PutOutcome> {
        self.check_open()?;
        let len = value.len() as u64;
        let dk = DiskKey(key.clone());
        // The previous value goes first: the engine indexes entries by hash, so if
        // this write is dropped, `may_contains` must not find the previous one and
        // report the drop as stored; and a dropped overwrite must never leave the
        // older value to be served in place of the newer.
        if self.cache.storage().may_contains(&dk) {
            self.cache.remove(&dk);
        }
        if len > self.max_value_size() {
            self.forget(key);
            Counters::inc(&self.stats.ns(key.namespace()).dropped_writes);
            return Ok(PutOutcome::Dropped);
        }
        self.cache.insert(dk.clone(), DiskValue(value));
        self.cache.storage().wait().await;
        if !self.cache.storage().may_contains(&dk) {
            self.forget(key);
            Counters::inc(&self.stats.ns(key.namespace()).dropped_writes);
            return Ok(PutOutcome::Dropped);
        }
        let old = self.catalog.lock().insert(key.clone(), len);
        if let Some(old) = old {
            self.stats.sub_resident(key.namespace(), old);
        }
        self.stats.add_resident(key.namespace(), len);
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.check_open()?;
        self.cache.remove(&DiskKey(key.clone()));
        Ok(self.forget(key).is_some())
    }

    async fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.catalogued(key).is_some())
    }

    async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>> {
        self.prune_reclaimed();
        let catalog = self.catalog.lock();
        let out: Vec<Listed> = catalog
            .iter()
            .filter(|(k, _)| k.is_listed_under(namespace, tenant, prefix))
            .map(|(k, len)| Listed {
                key: k.clone(),
                len: *len,
            })
            .collect();
        Ok(sorted_up_to(out, limit))
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.cache.close().await.map_err(|e| Error::Nvme {
            message: e.to_string(),
        })?;
        let catalog = self.catalog.lock().clone();
        catalog::save(&self.config.dir.join(CATALOG_FILE), &catalog)
    }
}
