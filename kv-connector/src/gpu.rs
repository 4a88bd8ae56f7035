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
//! - **Copies** from and to ordinary host memory ([`Gpu::upload`],
//!   [`Gpu::download`]) go through two page-locked (pinned) staging buffers,
//!   allocated without write-combining so the CPU reads what came back at full speed:
//!   the CPU fills one, several threads at once, while the copy engine moves the
//!   other. Memory registered once with [`Gpu::register`] is copied straight over
//!   the bus ([`Gpu::upload_registered`], [`Gpu::download_registered`]): the path for
//!   buffers that are reused. Measured on an H200 in BENCHMARKS.md section 5.
//! - **GPU tier** ([`GpuTier`]): whole chunks by key, least recently used out first,
//!   within a byte budget that is a share of the device memory free when it is made;
//!   served to the host or device to device.
//!
//! Not here yet: accepting CUDA candle tensors. candle-core's `cuda` feature needs
//! `nvcc` at build time, and neither this machine nor CI has it (docs/kv-keys.md,
//! "GPU").

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DevicePtr, DevicePtrMut, result};

pub use cudarc::driver::{CudaSlice, PinnedHostSlice};

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

/// Bytes of one staged part: a copy through pinned memory goes in parts of this size,
/// alternating between two pinned buffers, so that the CPU fills one while the copy
/// engine moves the other.
pub const STAGING: usize = 4 << 20;

/// Two pinned staging buffers and, for each, an event recorded after the last copy
/// that used it.
struct Staging {
    bufs: [PinnedHostSlice<u8>; 2],
    done: [CudaEvent; 2],
    /// Whether each event was recorded (waiting on a fresh event is harmless, but
    /// skipping it saves a driver call).
    pending: [bool; 2],
}

impl Staging {
    /// The host address of buffer `i`, once the copy that last used it is done.
    fn ready(&mut self, i: usize) -> Result<*mut u8, GpuError> {
        if self.pending[i] {
            self.done[i].synchronize().map_err(driver)?;
            self.pending[i] = false;
        }
        // The pinned slice's own event is never recorded: copies here are issued
        // on raw pointers, ordered by `done`.
        self.bufs[i].as_mut_ptr().map_err(driver)
    }
}

/// One CUDA device, its copy stream and two pinned staging buffers.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    staging: parking_lot::Mutex<Staging>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

/// Host memory registered with the driver (page-locked in place), so that copies
/// from and to it go straight over the bus, with no staging copy: what a long-lived
/// buffer (a receive buffer, a mapped arena) gets once. Unregistered when dropped.
pub struct Registered<'a> {
    ctx: Arc<CudaContext>,
    ptr: *mut u8,
    len: usize,
    _mem: std::marker::PhantomData<&'a mut [u8]>,
}

// SAFETY: the registration is a property of the memory, usable from any thread of
// the context; the borrow it holds is exclusive.
unsafe impl Send for Registered<'_> {}

impl std::fmt::Debug for Registered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("len", &self.len)
            .finish()
    }
}

impl Registered<'_> {
    /// The registered bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is the borrowed slice, alive for `'a`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The registered bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` was registered by `Gpu::register` and not since.
            let r = unsafe { cudarc::driver::sys::cuMemHostUnregister(self.ptr.cast()) };
            if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                tracing::warn!(?r, "cuMemHostUnregister failed");
            }
        }
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
            // SAFETY: the buffers are only read after a copy has filled them.
            let buf = || unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGING, 0) }.map_err(driver);
            let event = || ctx.new_event(None).map_err(driver);
            let staging = Staging {
                bufs: [buf()?, buf()?],
                done: [event()?, event()?],
                pending: [false; 2],
            };
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
            let mut reg = [0u8; 4];
            {
                let mut r = gpu.register(&mut reg)?;
                gpu.download_registered(&dev, &mut r, 0)?;
                gpu.upload_registered(&r, 0..4, &mut dev)?;
                let mut copy = gpu.alloc(probe.len())?;
                gpu.copy_on_device(&dev, &mut copy)?;
            }
            if back != probe || reg != probe {
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

    /// Registers `mem` with the driver for as long as the answer lives, so that
    /// [`upload_registered`](Self::upload_registered) and
    /// [`download_registered`](Self::download_registered) copy it with no staging.
    /// Registration pins the pages and costs about as much as copying them once:
    /// for buffers that are reused, not per copy.
    pub fn register<'a>(&self, mem: &'a mut [u8]) -> Result<Registered<'a>, GpuError> {
        if mem.is_empty() {
            return Err(GpuError::Driver("cannot register an empty buffer".into()));
        }
        self.ctx.bind_to_thread().map_err(driver)?;
        let ptr = mem.as_mut_ptr();
        // SAFETY: `mem` is a live allocation of `mem.len()` bytes, borrowed for as
        // long as the registration lives; the driver only pins it.
        unsafe {
            cudarc::driver::sys::cuMemHostRegister_v2(ptr.cast(), mem.len(), 0)
                .result()
                .map_err(driver)?;
        }
        Ok(Registered {
            ctx: self.ctx.clone(),
            ptr,
            len: mem.len(),
            _mem: std::marker::PhantomData,
        })
    }

    /// Copies `src[range]` (registered host memory) to the start of `dst`, straight
    /// over the bus. Returns when the bytes are on the device.
    pub fn upload_registered(
        &self,
        src: &Registered<'_>,
        range: std::ops::Range<usize>,
        dst: &mut CudaSlice<u8>,
    ) -> Result<(), GpuError> {
        let part = src.as_slice().get(range.clone()).ok_or_else(|| {
            GpuError::Driver(format!(
                "range {range:?} is outside a {}-byte registered buffer",
                src.len()
            ))
        })?;
        fits(part.len(), dst.len())?;
        let (d, _sync) = dst.device_ptr_mut(&self.stream);
        // SAFETY: `d` holds at least `part.len()` bytes; `part` stays borrowed until
        // the stream is synchronized below.
        unsafe { result::memcpy_htod_async(d, part, self.stream.cu_stream()) }.map_err(driver)?;
        drop(_sync);
        self.stream.synchronize().map_err(driver)
    }

    /// Copies the first bytes of `src` on the device into `dst` (registered host
    /// memory) from `at`, as many as fit. Returns when the bytes are in `dst`.
    pub fn download_registered(
        &self,
        src: &CudaSlice<u8>,
        dst: &mut Registered<'_>,
        at: usize,
    ) -> Result<(), GpuError> {
        let len = dst.len().saturating_sub(at).min(src.len());
        let part = &mut dst.as_mut_slice()[at..at + len];
        let (s, _sync) = src.device_ptr(&self.stream);
        // SAFETY: `s` holds at least `len` bytes; `part` stays borrowed until the
        // stream is synchronized below.
        unsafe { result::memcpy_dtoh_async(part, s, self.stream.cu_stream()) }.map_err(driver)?;
        drop(_sync);
        self.stream.synchronize().map_err(driver)
    }

    /// Copies `src` into the start of `dst`, both on the device.
    pub fn copy_on_device<S: DevicePtr<u8>>(
        &self,
        src: &S,
        dst: &mut CudaSlice<u8>,
    ) -> Result<(), GpuError> {
        fits(src.len(), dst.len())?;
        let mut view = dst.slice_mut(0..src.len());
        self.stream.memcpy_dtod(src, &mut view).map_err(driver)?;
        self.stream.synchronize().map_err(driver)
    }

    /// Copies `src` (ordinary host memory) into `dst` on the device, through the
    /// two pinned staging buffers: the CPU fills one (several threads of the rayon
    /// pool at once, for parts over 512 KiB) while the copy engine moves the other.
    /// Returns when the bytes are on the device.
    pub fn upload(&self, src: &[u8], dst: &mut CudaSlice<u8>) -> Result<(), GpuError> {
        fits(src.len(), dst.len())?;
        let mut st = self.staging.lock();
        let (d, _sync) = dst.device_ptr_mut(&self.stream);
        for (i, part) in src.chunks(STAGING).enumerate() {
            let b = i % 2;
            let buf = st.ready(b)?;
            // SAFETY: `buf` is STAGING pinned bytes no copy is using (`ready` waited
            // for the last); `part` is at most STAGING bytes.
            let staged = unsafe {
                par_copy(part.as_ptr(), buf, part.len());
                std::slice::from_raw_parts(buf, part.len())
            };
            let at = (i * STAGING) as u64;
            // SAFETY: `d + at .. + part.len()` is inside `dst`; `staged` is not
            // touched again until `done[b]` says the copy finished.
            unsafe { result::memcpy_htod_async(d + at, staged, self.stream.cu_stream()) }
                .map_err(driver)?;
            st.done[b].record(&self.stream).map_err(driver)?;
            st.pending[b] = true;
        }
        drop(_sync);
        self.stream.synchronize().map_err(driver)?;
        st.pending = [false; 2];
        Ok(())
    }

    /// Copies the first `dst.len()` bytes of `src` on the device into `dst`
    /// (ordinary host memory), through the two pinned staging buffers: part `i + 1`
    /// comes over the bus while the CPU copies part `i` out.
    pub fn download(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<(), GpuError> {
        fits(dst.len(), src.len())?;
        let mut st = self.staging.lock();
        let (s, _sync) = src.device_ptr(&self.stream);
        let total = dst.len();
        let parts = total.div_ceil(STAGING);
        // Issues the copy of part `i` into buffer `i % 2`.
        let issue = |st: &mut Staging, i: usize| -> Result<(), GpuError> {
            let b = i % 2;
            let len = STAGING.min(total - i * STAGING);
            let buf = st.ready(b)?;
            // SAFETY: `buf` is STAGING pinned bytes no copy is using.
            let to = unsafe { std::slice::from_raw_parts_mut(buf, len) };
            // SAFETY: `s + i·STAGING .. + len` is inside `src`; `to` is read only
            // after `done[b]` says the copy finished.
            unsafe {
                result::memcpy_dtoh_async(to, s + (i * STAGING) as u64, self.stream.cu_stream())
            }
            .map_err(driver)?;
            st.done[b].record(&self.stream).map_err(driver)?;
            st.pending[b] = true;
            Ok(())
        };
        if parts > 0 {
            issue(&mut st, 0)?;
        }
        for i in 0..parts {
            if i + 1 < parts {
                issue(&mut st, i + 1)?;
            }
            let b = i % 2;
            let buf = st.ready(b)?;
            let part = &mut dst[i * STAGING..(i * STAGING + STAGING).min(total)];
            // SAFETY: `ready` waited for the copy into `buf`; `part.len() <= STAGING`.
            unsafe { par_copy(buf, part.as_mut_ptr(), part.len()) };
        }
        drop(_sync);
        Ok(())
    }
}

/// Pieces a staged part is split into for [`par_copy`]: enough that one CPU thread is
/// not what bounds a copy from pageable memory (one thread moves ~11 GB/s, a PCIe 5
/// x16 link ~53 GB/s).
const COPY_PIECE: usize = 512 << 10;

/// Copies `len` bytes from `from` to `to` on the rayon pool, in pieces of
/// [`COPY_PIECE`] (a part of one piece or less is copied on this thread).
///
/// # Safety
/// `from` and `to` must be valid for `len` bytes and not overlap.
unsafe fn par_copy(from: *const u8, to: *mut u8, len: usize) {
    use rayon::prelude::*;
    if len <= COPY_PIECE {
        // SAFETY: as the caller promised.
        unsafe { std::ptr::copy_nonoverlapping(from, to, len) };
        return;
    }
    let (from, to) = (from as usize, to as usize);
    (0..len.div_ceil(COPY_PIECE)).into_par_iter().for_each(|i| {
        let at = i * COPY_PIECE;
        let n = COPY_PIECE.min(len - at);
        // SAFETY: [at, at + n) is inside both buffers, and pieces are disjoint.
        unsafe { std::ptr::copy_nonoverlapping((from + at) as *const u8, (to + at) as *mut u8, n) };
    });
}

fn fits(len: usize, room: usize) -> Result<(), GpuError> {
    if len > room {
        return Err(GpuError::Driver(format!(
            "{len} bytes do not fit a {room}-byte buffer"
        )));
    }
    Ok(())
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

    /// Copies `key`'s chunk into the start of `dst` on the device (device to
    /// device, no host copy) and returns its length, or `None` when it is not held.
    pub fn get_on_device(
        &mut self,
        key: &[u8],
        dst: &mut CudaSlice<u8>,
    ) -> Result<Option<u64>, GpuError> {
        let Some((len, dev)) = self.lru.get(key) else {
            return Ok(None);
        };
        if len > 0 {
            self.gpu.copy_on_device(&dev.slice(..len as usize), dst)?;
        }
        Ok(Some(len))
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
