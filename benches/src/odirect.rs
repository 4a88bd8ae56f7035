//! The disk limit: a plain file read and written with `O_DIRECT` (no page cache),
//! sequentially, one aligned buffer, one request at a time. Reads can also go
//! through the page cache, to separate the cost of buffered I/O from the rest.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Instant;

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;

use crate::report::latency_histogram;

/// Alignment of `O_DIRECT` buffers, offsets and lengths (a page; enough for any
/// logical block size up to 4 KiB).
pub const ALIGN: usize = 4096;

/// A heap buffer aligned for `O_DIRECT`.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (a multiple of [`ALIGN`]).
    pub fn new(len: usize) -> anyhow::Result<Self> {
        ensure!(
            len > 0 && len.is_multiple_of(ALIGN),
            "O_DIRECT buffer of {len} bytes is not a positive multiple of {ALIGN}"
        );
        let layout = Layout::from_size_align(len, ALIGN)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .with_context(|| format!("allocating {len} aligned bytes"))?;
        Ok(Self { ptr, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN)
            .unwrap_or_else(|_| unreachable!("checked in new"));
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

fn open_direct(path: &Path, write: bool) -> anyhow::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).custom_flags(libc::O_DIRECT);
    if write {
        o.write(true).create(true).truncate(true);
    }
    o.open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))
}

/// What one pass over a file measured.
#[derive(Debug)]
pub struct Pass {
    /// Bytes moved.
    pub bytes: u64,
    /// Wall-clock seconds of the whole pass, first request to last completion (a
    /// write includes its `fdatasync`).
    pub secs: f64,
    /// Latency of each request, nanoseconds.
    pub latency: Histogram<u64>,
}

/// Writes `chunks` back to back with `O_DIRECT`, then `fdatasync`s.
pub fn write_file(path: &Path, chunks: &[AlignedBuf]) -> anyhow::Result<Pass> {
    let file = open_direct(path, true)?;
    let mut latency = latency_histogram();
    let (mut off, start) = (0u64, Instant::now());
    for c in chunks {
        let t0 = Instant::now();
        file.write_all_at(c.as_slice(), off)
            .with_context(|| format!("O_DIRECT write to {}", path.display()))?;
        latency.saturating_record(t0.elapsed().as_nanos() as u64);
        off += c.as_slice().len() as u64;
    }
    file.sync_data()?;
    Ok(Pass {
        bytes: off,
        secs: start.elapsed().as_secs_f64(),
        latency,
    })
}

/// Reads `count` chunks of `chunk` bytes sequentially into one aligned buffer,
/// with `O_DIRECT` or (`direct == false`, for comparison) through the page cache.
/// `check(i, bytes)` runs on each inside the timed pass (no idle gaps in which the
/// kernel could read ahead for free), so it must be cheap.
pub fn read_file(
    path: &Path,
    chunk: usize,
    count: usize,
    direct: bool,
    mut check: impl FnMut(usize, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Pass> {
    let file = if direct {
        open_direct(path, false)?
    } else {
        File::open(path).with_context(|| format!("opening {}", path.display()))?
    };
    let mut buf = AlignedBuf::new(chunk)?;
    let mut latency = latency_histogram();
    let start = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        file.read_exact_at(buf.as_mut_slice(), (i * chunk) as u64)
            .with_context(|| format!("reading {}", path.display()))?;
        latency.saturating_record(t0.elapsed().as_nanos() as u64);
        check(i, buf.as_slice())?;
    }
    Ok(Pass {
        bytes: (chunk * count) as u64,
        secs: start.elapsed().as_secs_f64(),
        latency,
    })
}
