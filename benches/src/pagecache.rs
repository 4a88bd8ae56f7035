//! Page-cache control, so a disk benchmark can say where its reads came from:
//! dropping the cache (root only) and measuring how much of a file is resident.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;

/// Flushes dirty pages and drops the page cache (`echo 3 >
/// /proc/sys/vm/drop_caches`). `Ok(false)` when not permitted (not root, or a
/// read-only `/proc/sys`), so the caller can say its reads may be cached.
pub fn drop_caches() -> anyhow::Result<bool> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    match std::fs::write("/proc/sys/vm/drop_caches", b"3\n") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(false),
        Err(e) => Err(e).context("writing /proc/sys/vm/drop_caches"),
    }
}

/// Bytes of `path` resident in the page cache, and the file's size.
pub fn resident_bytes(path: &Path) -> anyhow::Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok((0, 0));
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    // SAFETY: a read-only shared mapping of a file we hold open, for its length;
    // nothing reads through it, it only backs mincore.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mapping {} for mincore", path.display()));
    }
    let pages = size.div_ceil(page) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: addr/size is the mapping made above; vec has one byte per page.
    let rc = unsafe { libc::mincore(addr, size as usize, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping exactly what we mapped.
    unsafe { libc::munmap(addr, size as usize) };
    if rc != 0 {
        return Err(err).with_context(|| format!("mincore on {}", path.display()));
    }
    let resident = vec.iter().filter(|b| **b & 1 == 1).count() as u64;
    Ok(((resident * page).min(size), size))
}

/// Bytes resident in the page cache over every regular file under `dir`
/// (recursively), and their total size.
pub fn resident_bytes_dir(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut resident, mut total) = (0, 0);
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let (r, t) = if ty.is_dir() {
            resident_bytes_dir(&entry.path())?
        } else if ty.is_file() {
            resident_bytes(&entry.path())?
        } else {
            continue;
        };
        resident += r;
        total += t;
    }
    Ok((resident, total))
}
