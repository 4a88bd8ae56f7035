//! The GPU side (feature `gpu`): a CUDA device opened through the driver library at
//! run time, copies between device and pinned host memory, and a GPU tier that keeps
//! hot chunks in spare device memory.
//!
//! - **No GPU, no panic.** The build needs no CUDA: `cudarc` loads `libcuda.so` when
//!   [`Gpu::open`] is called. Without the library, without a device, or with a driver
//!   that lacks a function this build uses, `open` answers
//!   [`GpuError::Unavailable`] with the reason. (cudarc loads each driver function
//!   on its first call and panics when one is missing, so `open` makes every call
//!   this module uses once, a test copy to the device and back included, inside a
//!   `catch_unwind`.) Everything else in the connector
//!   works on CPU tensors whatever `open` said.
//! - **Copies** go through page-locked (pinned) host memory, allocated without
//!   write-combining, so the CPU reads what came back at full speed.
//!   [`Gpu::upload`] and [`Gpu::download`] move bytes between ordinary host memory and
//!   the device through a pinned staging buffer, a slice at a time.
//! - **GPU tier** ([`GpuTier`]): whole chunks by key, least recently used out first,
//!   within a byte budget that is a share of the device memory free when it is made.
//!
//! Not here yet: accepting CUDA candle tensors. candle-core's `cuda` feature needs
//! `nvcc` at build time, and neither this machine nor CI has it (docs/kv-keys.md,
//! "GPU").

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PinnedHostSlice};

/// What went wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable GPU: no driver library, no such device, or an older driver. The
    /// connector goes on without the GPU path.
    #[error("GPU unavailable: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA: {0}")]
    Driver(String),
}

fn driver(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Driver(e.to_string())
}

/// Bytes staged per copy through pinned memory.
pub const STAGING: usize = 8 << 20;

/// One CUDA device, its copy stream and a pinned staging buffer.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    staging: parking_lot::Mutex<PinnedHostSlice<u8>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`, or says why it cannot (never panics).
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        // SAFETY: this only tries to load the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::Unavailable(
                "the CUDA driver library (libcuda.so) was not found".into(),
            ));
        }
        // cudarc panics when the library lacks a function it loads: catch it and
        // answer that the driver is too old.
        let opened = std::panic::catch_unwind(|| {
            let count = CudaContext::device_count().map_err(driver)?;
            if ordinal >= usize::try_from(count).unwrap_or(0) {
                return Err(GpuError::Unavailable(format!(
                    "no CUDA device {ordinal} ({count} present)"
                )));
            }
            let ctx = CudaContext::new(ordinal).map_err(driver)?;
            let stream = ctx.new_stream().map_err(driver)?;
            // SAFETY: the buffer is only read after a copy has filled it.
            let staging =
                unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGING, 0) }.map_err(driver)?;
            let gpu = Self {
                ctx,
                stream,
                staging: parking_lot::Mutex::new(staging),
            };
            // cudarc loads each driver function on its first call: make every call
            // this module uses once here, inside the catch, and check the bytes.
            gpu.ctx.name().map_err(driver)?;
            gpu.mem_info()?;
            let probe = [0x5a_u8, 0xa5, 1, 2];
            let mut dev = gpu.alloc(probe.len())?;
            gpu.upload(&probe, &mut dev)?;
            let mut back = [0u8; 4];
            gpu.download(&dev, &mut back)?;
            if back != probe {
                return Err(GpuError::Driver(
                    "a test copy to the device and back changed the bytes".into(),
                ));
            }
            Ok(gpu)
        });
        match opened {
            Ok(Ok(gpu)) => Ok(gpu),
            Ok(Err(GpuError::Driver(e))) => Err(GpuError::Unavailable(format!(
                "CUDA device {ordinal} could not be opened: {e}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(GpuError::Unavailable(
                "the CUDA driver lacks a function this build needs (too old?)".into(),
            )),
        }
    }

    /// The device's name and memory, for logs.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|e| format!("? ({e})"));
        let (free, total) = self.mem_info().unwrap_or((0, 0));
        format!("{name}, {} of {} MiB free", free >> 20, total >> 20)
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64), GpuError> {
        let (free, total) = self.ctx.mem_get_info().map_err(driver)?;
        Ok((free as u64, total as u64))
    }

    /// Device memory of `len` bytes (at least 1: CUDA refuses empty allocations),
    /// contents unset.
    pub fn alloc(&self, len: usize) -> Result<CudaSlice<u8>, GpuError> {
        // SAFETY: callers write the buffer before they read it (upload does).
        unsafe { self.stream.alloc::<u8>(len.max(1)) }.map_err(driver)
    }

    /// Pinned host memory of `len` bytes, contents unset (for callers that keep
    /// their own pinned buffers, such as a benchmark's raw copies).
    pub fn pinned(&self, len: usize) -> Result<PinnedHostSlice<u8>, GpuError> {
        // SAFETY: the buffer is handed out to be written before it is read.
        unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, 0) }.map_err(driver)
    }

    /// The copy stream (for raw copies and timing).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies `src` (ordinary host memory) into `dst` on the device, through the
    /// pinned staging buffer. Returns when the bytes are on the device.
    pub fn upload(&self, src: &[u8], dst: &mut CudaSlice<u8>) -> Result<(), GpuError> {
        if dst.len() < src.len() {
            return Err(GpuError::Driver(format!(
                "{} bytes do not fit a {}-byte device buffer",
                src.len(),
                dst.len()
            )));
        }
        let mut staging = self.staging.lock();
        for (i, part) in src.chunks(STAGING).enumerate() {
            let at = i * STAGING;
            staging.as_mut_slice().map_err(driver)?[..part.len()].copy_from_slice(part);
            let mut view = dst.slice_mut(at..at + part.len());
            let from = &staging.as_slice().map_err(driver)?[..part.len()];
            self.stream.memcpy_htod(from, &mut view).map_err(driver)?;
            self.stream.synchronize().map_err(driver)?;
        }
        Ok(())
    }

    /// Copies the first `dst.len()` bytes of `src` on the device into `dst`
    /// (ordinary host memory), through the pinned staging buffer.
    pub fn download(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<(), GpuError> {
        if src.len() < dst.len() {
            return Err(GpuError::Driver(format!(
                "a {}-byte device buffer cannot fill {} bytes",
                src.len(),
                dst.len()
            )));
        }
        let mut staging = self.staging.lock();
        for (i, part) in dst.chunks_mut(STAGING).enumerate() {
            let at = i * STAGING;
            let view = src.slice(at..at + part.len());
            let to = &mut staging.as_mut_slice().map_err(driver)?[..part.len()];
            self.stream.memcpy_dtoh(&view, to).map_err(driver)?;
            self.stream.synchronize().map_err(driver)?;
            part.copy_from_slice(&staging.as_slice().map_err(driver)?[..part.len()]);
        }
        Ok(())
    }
}

/// Sizes and recency of the entries of a byte-budgeted cache: the bookkeeping of
/// [`GpuTier`], apart from the device so that it can be tested anywhere.
#[derive(Debug)]
pub struct Lru<V> {
    budget: u64,
    used: u64,
    tick: u64,
    entries: HashMap<Vec<u8>, (u64, u64, V)>,
}

impl<V> Lru<V> {
    /// An empty cache of at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size and value of `key`'s entry, now the most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<(u64, &V)> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|e| {
            e.1 = tick;
            (e.0, &e.2)
        })
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (size, _, v) = self.entries.remove(key)?;
        self.used -= size;
        Some(v)
    }

    /// Makes room for `size` bytes under `key`: drops `key`'s older entry, then the
    /// least recently used ones until `size` fits. `false`, and nothing dropped,
    /// when `size` is over the whole budget.
    ///
    /// Eviction scans the entries for the oldest: fine for the thousands of chunks a
    /// device holds, to be replaced by an ordered index if tiers grow past that.
    pub fn make_room(&mut self, key: &[u8], size: u64) -> bool {
        if size > self.budget {
            return false;
        }
        self.remove(key);
        while self.used + size > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t, _))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        true
    }

    /// Inserts `key` (replacing an older entry) once [`make_room`](Self::make_room)
    /// made room for `size`; `false` when `size` is over the whole budget, and then
    /// nothing changes (an older entry of `key` stays).
    pub fn insert(&mut self, key: &[u8], size: u64, v: V) -> bool {
        if !self.make_room(key, size) {
            return false;
        }
        self.tick += 1;
        self.used += size;
        self.entries.insert(key.to_vec(), (size, self.tick, v));
        true
    }
}

/// Hot chunks in spare device memory (see the module docs).
#[derive(Debug)]
pub struct GpuTier {
    gpu: Arc<Gpu>,
    lru: Lru<CudaSlice<u8>>,
}

impl GpuTier {
    /// A tier on `gpu` of at most `max_bytes`, and at most `share` (0..=1) of the
    /// device memory free now: what the engine leaves spare.
    pub fn new(gpu: Arc<Gpu>, max_bytes: u64, share: f64) -> Result<Self, GpuError> {
        let (free, _) = gpu.mem_info()?;
        let budget = max_bytes.min((free as f64 * share.clamp(0.0, 1.0)) as u64);
        Ok(Self {
            gpu,
            lru: Lru::new(budget),
        })
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.lru.budget()
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.lru.used()
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Keeps `bytes` under `key`, evicting the least recently used chunks as needed.
    /// `false` when the chunk is larger than the whole budget (nothing changes). A
    /// device out of memory is an error: the budget was set too close to the free
    /// memory.
    pub fn put(&mut self, key: &[u8], bytes: &[u8]) -> Result<bool, GpuError> {
        let size = bytes.len() as u64;
        // Room first: what it evicts frees device memory for the new chunk.
        if !self.lru.make_room(key, size) {
            return Ok(false);
        }
        let mut dev = self.gpu.alloc(bytes.len())?;
        self.gpu.upload(bytes, &mut dev)?;
        Ok(self.lru.insert(key, size, dev))
    }

    /// Copies `key`'s chunk into a new buffer, or `None` when it is not held.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, GpuError> {
        let Some((len, dev)) = self.lru.get(key) else {
            return Ok(None);
        };
        let mut out = vec![0u8; len as usize];
        self.gpu.download(dev, &mut out)?;
        Ok(Some(out))
    }

    /// Drops `key`'s chunk; whether it was held.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.lru.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_keeps_within_its_budget_and_drops_the_oldest_first() {
        let mut l = Lru::new(100);
        assert!(l.insert(b"a", 40, 1));
        assert!(l.insert(b"b", 40, 2));
        assert_eq!(l.get(b"a"), Some((40, &1))); // a is now the newer
        assert!(l.insert(b"c", 40, 3)); // b goes
        assert_eq!((l.len(), l.used()), (2, 80));
        assert!(l.get(b"b").is_none());
        assert!(l.insert(b"a", 10, 4)); // replaces a
        assert_eq!((l.len(), l.used()), (2, 50));
        assert!(!l.insert(b"huge", 101, 5), "larger than the budget");
        assert_eq!((l.len(), l.used()), (2, 50), "nothing dropped for it");
        assert!(!l.insert(b"a", 101, 6), "a replacement over the budget");
        assert_eq!(l.get(b"a"), Some((10, &4)), "leaves the older entry");
        assert_eq!(l.remove(b"c"), Some(3));
        assert_eq!(l.used(), 10);
    }
}
