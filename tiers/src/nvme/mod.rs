//! The NVMe tier: foyer's block engine on a local directory, io_uring when the
//! kernel allows it.
//!
//! foyer writes asynchronously and may drop a write when its buffers are full. A
//! put therefore removes the previous value first, waits for the flush and then asks
//! the engine whether the key reached disk; a dropped write returns
//! [`PutOutcome::Dropped`] and is counted, never reported as stored, and leaves the
//! key absent (never the older value).
//!
//! foyer cannot list its keys, so the tier keeps a catalog (key → length), a
//! snapshot and a journal on disk (`catalog.rs`), and the catalog is the truth: a
//! value is served only while the catalog names it, at the catalogued length. A put
//! journals the key's removal before it writes and its new length only once the
//! engine holds the write, so a write that a crash (or a fault) cut midway, or that
//! was never acknowledged, is never read back, before or after a restart. The
//! catalog backs `list`, the resident gauges, `size` and `contains`. An entry whose
//! block the engine reclaimed to make room leaves the engine's index; the catalog
//! drops it when it next looks (`usage`, `list`, `size`, `contains`) and counts an
//! eviction. foyer checksums every entry (xxhash64) and answers a corrupt entry as a
//! miss; when a `get` finds the key in the catalog and the engine returns nothing
//! (or a value of another length), the entry was lost to corruption (or to a
//! reclaim not yet noticed) — it is counted in `checksum_failures` and dropped from
//! the catalog.

pub(crate) mod catalog;
mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

use self::catalog::{Catalog, Entry};

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
        let mut v = vec![0u8; len]; // at most a key's length
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
        // Never allocated from the length field alone past a page's worth: a
        // corrupt length costs what is there to read, not 4 GiB. (A value up to
        // that is read into exactly its length: no doubling as it grows.)
        use std::io::Read as _;
        let mut v = Vec::with_capacity(len.min(MAX_PREALLOC) as usize);
        r.take(len)
            .read_to_end(&mut v)
            .map_err(foyer::Error::io_error)?;
        if v.len() as u64 != len {
            return Err(code_err("value shorter than its length"));
        }
        Ok(DiskValue(Bytes::from(v)))
    }

    fn estimated_size(&self) -> usize {
        8 + self.0.len()
    }
}

/// The most an NVMe value's length field makes [`DiskValue::decode`] allocate
/// before bytes arrive (a page, 4 MiB by default, is well under it).
const MAX_PREALLOC: u64 = 64 << 20;

/// Decodes `bytes` as the key and as the value of an NVMe entry, as the engine
/// reads them back; what decodes must encode to the bytes it came from (the
/// fuzz target's entry point, `crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_entry(bytes: &[u8]) {
    if let Ok(k) = DiskKey::decode(&mut &bytes[..]) {
        let mut again = Vec::new();
        k.encode(&mut again).expect("encoding into a Vec");
        assert_eq!(
            again[..],
            bytes[..again.len()],
            "a key re-encodes to its bytes"
        );
    }
    if let Ok(v) = DiskValue::decode(&mut &bytes[..]) {
        let mut again = Vec::new();
        v.encode(&mut again).expect("encoding into a Vec");
        assert_eq!(
            again[..],
            bytes[..again.len()],
            "a value re-encodes to its bytes"
        );
    }
}

/// The NVMe tier.
pub struct NvmeTier {
    cache: HybridCache<DiskKey, DiskValue>,
    config: NvmeConfig,
    catalog: Mutex<Catalog>,
    /// One journal sync at a time; a removal that finds its record synced by
    /// another's sync does not sync again (group commit).
    journal_sync: tokio::sync::Mutex<()>,
    faults: NvmeFaults,
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
        std::fs::create_dir_all(config.dir())
            .map_err(|e| Error::io(format!("creating {}", config.dir().display()), e))?;
        ensure_a_clean_block(config)?;
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
        let (catalog, recovered) = Catalog::open(&config.dir())?;
        for (k, e) in catalog.map() {
            stats.add_resident(k.namespace(), e.len);
        }
        tracing::info!(
            dir = %config.dir().display(),
            io_engine,
            direct_io,
            recovered = catalog.map().len(),
            journal_records = recovered.replayed,
            journal_torn_bytes = recovered.torn_bytes,
            "NVMe tier open"
        );
        Ok(Self {
            cache,
            config: config.clone(),
            catalog: Mutex::new(catalog),
            journal_sync: tokio::sync::Mutex::new(()),
            faults: NvmeFaults::default(),
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
        let device = FsDeviceBuilder::new(config.dir())
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
        let gone = self
            .catalog
            .lock()
            .retain(|k| storage.may_contains(&DiskKey(k.clone())));
        for (k, e) in gone {
            self.stats.sub_resident(k.namespace(), e.len);
            Counters::inc(&self.stats.ns(k.namespace()).evictions);
        }
    }

    /// Forgets every value (and page) of namespace `ns`, journaled, so that none
    /// is served again, even after a restart; returns how many entries went.
    /// For a cluster node that comes back: a namespace whose origin takes writes
    /// may have had its values replaced through another node while it was away.
    pub fn forget_namespace(&self, ns: &str) -> usize {
        let gone = self.catalog.lock().retain(|k| k.namespace() != ns);
        for (k, e) in &gone {
            self.stats.sub_resident(k.namespace(), e.len);
            self.cache.remove(&DiskKey(k.clone()));
        }
        // On disk before the node serves: a power cut must not bring them back.
        // (The handle is taken, and the lock let go, before the sync: the lock
        // is taken again to note it.)
        let handle = self.catalog.lock().sync_handle();
        let synced = handle.and_then(|h| {
            let Some((file, mark)) = h else { return Ok(()) };
            file.sync_data()
                .map_err(|e| Error::io("syncing the NVMe catalog journal", e))?;
            self.catalog.lock().synced(mark);
            Ok(())
        });
        if let Err(e) = synced {
            tracing::error!(error = %e, "NVMe catalog journal sync failed; a power cut may bring forgotten values back");
        }
        gone.len()
    }

    /// Syncs the catalog journal up to what was appended before the call (a
    /// removal's record), unless a sync since has covered it. The sync runs
    /// outside the catalog's lock, so reads go on meanwhile.
    async fn sync_journal(&self) -> Result<()> {
        let wanted = self.catalog.lock().sync_handle()?;
        let Some((_, wanted)) = wanted else {
            return Ok(());
        };
        let _one = self.journal_sync.lock().await;
        let Some((file, mark)) = self.catalog.lock().sync_handle()? else {
            return Ok(());
        };
        if !mark.covers(wanted) {
            // (A compaction came between: it synced everything.)
            return Ok(());
        }
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| Error::io("syncing the NVMe catalog journal", std::io::Error::other(e)))?
            .map_err(|e| Error::io("syncing the NVMe catalog journal", e))?;
        self.catalog.lock().synced(mark);
        Ok(())
    }

    /// How many bytes of the catalog journal (`strata-catalog.journal` in the
    /// tier's directory) are synced: what a loss of power would keep of it. For
    /// tests that play one.
    #[doc(hidden)]
    pub fn journal_durable_len(&self) -> u64 {
        self.catalog.lock().durable_len()
    }

    /// Whether the tier holds `key` now (no I/O: the catalog and the engine's
    /// index).
    pub fn holds(&self, key: &Key) -> bool {
        self.catalogued(key).is_some()
    }

    /// The catalogued length of `key`, if the engine still holds it.
    fn catalogued(&self, key: &Key) -> Option<u64> {
        let len = self.catalog.lock().get(key)?.len;
        if self.cache.storage().may_contains(&DiskKey(key.clone())) {
            return Some(len);
        }
        if self.forget(key).is_some() {
            Counters::inc(&self.stats.ns(key.namespace()).evictions);
        }
        None
    }

    /// Removes `key` from the catalog (journaled), so it is not served any more.
    fn forget(&self, key: &Key) -> Option<u64> {
        let removed = self.catalog.lock().remove(key);
        let len = match removed {
            Ok(e) => e?.len,
            Err(e) => {
                tracing::error!(?key, error = %e, "NVMe catalog journal write failed; a restart may find the key again");
                return None;
            }
        };
        self.stats.sub_resident(key.namespace(), len);
        Some(len)
    }

    /// Fault injection for tests (see [`NvmeFaults`]).
    #[doc(hidden)]
    pub fn faults(&self) -> &NvmeFaults {
        &self.faults
    }
}

/// foyer 0.22's block files: one per block, `foyer-storage-direct-fs-NNNNNNNN`.
fn block_file(dir: &std::path::Path, block: u64) -> std::path::PathBuf {
    dir.join(format!("foyer-storage-direct-fs-{block:08}"))
}

/// Bytes at the head of a block that foyer reads to find its entries (its blob
/// index, 4 KiB by default): zero, the block recovers as clean.
const BLOCK_INDEX_BYTES: usize = 4096;

/// Leaves at least one block that foyer recovers as clean (holding no entry).
///
/// foyer 0.22 wedges when it recovers a device whose every block holds entries:
/// its block manager starts with no clean block, and only taking a clean block
/// (or finishing a write or a reclaim) starts a reclaim, so the first flush waits
/// for a clean block forever, and every put with it. A server killed while its
/// NVMe tier was full (or nearly) restarts in that state. So, before foyer opens
/// the device: if every block file begins with an index, the one written least
/// recently (what FIFO reclaim would take next) has its index zeroed, and its
/// entries are given up (the catalog forgets them when it finds them gone).
fn ensure_a_clean_block(config: &NvmeConfig) -> Result<()> {
    use std::io::{Read, Seek, Write};
    let blocks = config.capacity / config.block_size;
    let mut oldest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    for b in 0..blocks {
        let path = block_file(&config.dir(), b);
        let Ok(mut f) = std::fs::File::open(&path) else {
            // foyer creates it empty: a clean block.
            return Ok(());
        };
        let mut head = vec![0u8; BLOCK_INDEX_BYTES];
        if f.read_exact(&mut head).is_err() || head.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let modified = f
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if oldest.as_ref().is_none_or(|(t, _)| modified < *t) {
            oldest = Some((modified, path));
        }
    }
    let Some((_, path)) = oldest else {
        return Ok(());
    };
    tracing::warn!(
        block = %path.display(),
        "every NVMe block holds entries (the server stopped with its NVMe tier full); \
         giving up the least recently written block so the engine starts with a clean one"
    );
    let io = |e| Error::io(format!("clearing {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io)?;
    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&[0u8; BLOCK_INDEX_BYTES]).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Faults a test can inject into the NVMe tier, around the real engine.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct NvmeFaults {
    tear_every: AtomicU64,
    puts: AtomicU64,
    torn: AtomicU64,
    /// Milliseconds every put waits before it writes (a disk that hangs).
    stall_ms: AtomicU64,
    /// Milliseconds every get waits before it reads.
    stall_get_ms: AtomicU64,
}

impl NvmeFaults {
    /// Makes every put from now on wait `d` before it writes, as on a disk that
    /// hangs (zero: none).
    pub fn stall_puts(&self, d: std::time::Duration) {
        self.stall_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes every get from now on wait `d` before it reads (zero: none).
    pub fn stall_gets(&self, d: std::time::Duration) {
        self.stall_get_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    async fn stall(&self) {
        Self::sleep(&self.stall_ms).await;
    }

    async fn stall_get(&self) {
        Self::sleep(&self.stall_get_ms).await;
    }

    async fn sleep(ms: &AtomicU64) {
        let ms = ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    /// Tears every `n`th put from now on (0: none): the engine receives the value
    /// with its second half zeroed, as a write that died midway leaves it, and the
    /// put fails with an I/O error.
    pub fn tear_every(&self, n: u64) {
        self.puts.store(0, Ordering::Relaxed);
        self.tear_every.store(n, Ordering::Relaxed);
    }

    /// How many puts were torn.
    pub fn torn(&self) -> u64 {
        self.torn.load(Ordering::Relaxed)
    }

    fn tears_next(&self) -> bool {
        let n = self.tear_every.load(Ordering::Relaxed);
        if n == 0 {
            return false;
        }
        let tear = (self.puts.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n);
        if tear {
            self.torn.fetch_add(1, Ordering::Relaxed);
        }
        tear
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
            .map()
            .values()
            .map(|e| e.len.div_ceil(4096) * 4096)
            .sum();
        Usage {
            capacity: self.config.capacity,
            used,
        }
    }

    async fn get(&self, key: &Key, opts: &GetOptions) -> Result<Option<Bytes>> {
        self.check_open()?;
        // The catalog is the truth: what it does not name (never written, a write
        // not finished, or one a crash cut) is absent, whatever the engine holds.
        let Some(catalogued) = self.catalog.lock().get(key) else {
            return Ok(None);
        };
        self.faults.stall_get().await;
        let dk = DiskKey(key.clone());
        match self.cache.get(&dk).await {
            Ok(Some(entry)) => {
                let value = entry.value().0.clone();
                drop(entry);
                let found = Entry::of(&value);
                // Looked at again: a put of the key may have begun (or ended)
                // meanwhile. (Bound first: the guard must not live through the match.)
                let now = self.catalog.lock().get(key);
                match now {
                    Some(e) if e == found => {}
                    Some(e) if e != catalogued => return Ok(None),
                    None => return Ok(None),
                    Some(_) => {
                        // Not the catalogued value: torn, or an older one the
                        // engine still finds. Never served.
                        self.cache.remove(&dk);
                        if self.forget(key).is_some() {
                            Counters::inc(&self.stats.ns(key.namespace()).checksum_failures);
                        }
                        tracing::error!(
                            ?key,
                            len = found.len,
                            catalogued = catalogued.len,
                            "NVMe entry is not the catalogued value; dropped"
                        );
                        return Ok(None);
                    }
                }
                Ok(Some(slice_range(value, opts.range.as_ref())?))
            }
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
        let entry = Entry::of(&value);
        let dk = DiskKey(key.clone());
        // The previous value goes first, from the catalog (journaled, so neither
        // this process nor a restart serves it in place of this write) and from the
        // engine, which indexes entries by hash: if this write is dropped,
        // `may_contains` must not find the previous one and report the drop as
        // stored. A previous head's removal is synced, as a delete's is.
        let replaced = self.forget(key).is_some();
        if self.cache.storage().may_contains(&dk) {
            self.cache.remove(&dk);
        }
        if replaced && !key.is_page() {
            self.sync_journal().await?;
        }
        if len > self.max_value_size() {
            Counters::inc(&self.stats.ns(key.namespace()).dropped_writes);
            return Ok(PutOutcome::Dropped);
        }
        self.faults.stall().await;
        if self.faults.tears_next() {
            let mut torn = value.to_vec();
            let half = torn.len() / 2;
            torn[half..].fill(0);
            self.cache.insert(dk, DiskValue(Bytes::from(torn)));
            self.cache.storage().wait().await;
            return Err(Error::io(
                "writing to the NVMe tier",
                std::io::Error::other("injected fault: the write was torn midway"),
            ));
        }
        self.cache.insert(dk.clone(), DiskValue(value));
        self.cache.storage().wait().await;
        if !self.cache.storage().may_contains(&dk) {
            Counters::inc(&self.stats.ns(key.namespace()).dropped_writes);
            return Ok(PutOutcome::Dropped);
        }
        // On disk: now the catalog may name it.
        let old = self.catalog.lock().insert(key, entry)?;
        if let Some(old) = old {
            self.stats.sub_resident(key.namespace(), old.len);
        }
        self.stats.add_resident(key.namespace(), len);
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.check_open()?;
        // The catalog first: once it forgets the key, nothing serves it, whenever
        // the engine gets to its removal.
        let found = self.forget(key).is_some();
        self.cache.remove(&DiskKey(key.clone()));
        // A value's head leaves for good before the delete (or the overwrite that
        // made it) is answered: a removal lost to a power cut would serve an older
        // or deleted value after it. (Pages need no sync: no head names them.)
        if found && !key.is_page() {
            self.sync_journal().await?;
        }
        Ok(found)
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
            .map()
            .iter()
            .filter(|(k, _)| k.is_listed_under(namespace, tenant, prefix))
            .map(|(k, e)| Listed {
                key: k.clone(),
                len: e.len,
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
        self.catalog.lock().compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_with_no_clean_block_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = NvmeConfig {
            enabled: true,
            dir: Some(dir.path().to_path_buf()),
            capacity: 8 << 20,
            block_size: 1 << 20,
            ..NvmeConfig::default()
        };
        let full = vec![0xa5u8; 1 << 20];
        for b in 0..8 {
            std::fs::write(block_file(&config.dir(), b), &full).unwrap();
            // Block 3 was written first.
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(if b == 3 { 10 } else { 1000 + b });
            let f = std::fs::File::options()
                .write(true)
                .open(block_file(&config.dir(), b))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        let clean = |config: &NvmeConfig| -> Vec<u64> {
            (0..8)
                .filter(|&b| {
                    std::fs::read(block_file(&config.dir(), b))
                        .is_ok_and(|d| d[..BLOCK_INDEX_BYTES].iter().all(|&x| x == 0))
                })
                .collect()
        };
        ensure_a_clean_block(&config).unwrap();
        assert_eq!(
            clean(&config),
            vec![3],
            "the least recently written block is cleared"
        );
        // One clean block is enough: nothing more is given up.
        ensure_a_clean_block(&config).unwrap();
        assert_eq!(clean(&config), vec![3]);
        // A missing block file is a clean block too.
        std::fs::write(block_file(&config.dir(), 3), &full).unwrap();
        std::fs::remove_file(block_file(&config.dir(), 5)).unwrap();
        ensure_a_clean_block(&config).unwrap();
        assert!(clean(&config).is_empty());
    }
}
