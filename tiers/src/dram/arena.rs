//! One pre-allocated arena with an extent allocator.
//!
//! The arena is a single `memfd` mapping, so the same memory can later be shared
//! with same-host clients (the descriptor is passed over a Unix socket), registered
//! once as an RDMA memory region, and pinned once for CUDA. Values are [`Bytes`] that
//! borrow from the arena (`Bytes::from_owner`): an extent returns to the free list
//! only when the last `Bytes` that points into it is dropped, so an evicted value
//! that a reader still holds is never overwritten.
//!
//! Allocation is best-fit over free extents kept in two ordered maps (by offset, to
//! coalesce neighbours; by size, to find the best fit), in units of
//! [`ALLOC_UNIT`] bytes. Use is accounted to the byte in allocated units.

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Allocation granularity, in bytes.
pub const ALLOC_UNIT: u64 = 256;

/// The arena: one mapping and its free list.
pub struct Arena {
    base: NonNull<u8>,
    capacity: u64,
    fd: libc::c_int,
    free: Mutex<FreeList>,
    used: AtomicU64,
}

// SAFETY: the mapping lives as long as the Arena; disjoint extents are handed out
// to one owner each (see `ArenaBuf`), and the free list is behind a mutex.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .finish()
    }
}

#[derive(Default)]
struct FreeList {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
}

impl FreeList {
    fn insert(&mut self, off: u64, len: u64) {
        self.by_offset.insert(off, len);
        self.by_size.insert((len, off));
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.by_offset.remove(&off);
        self.by_size.remove(&(len, off));
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let &(flen, foff) = self.by_size.range((len, 0)..).next()?;
        self.remove(foff, flen);
        if flen > len {
            self.insert(foff + len, flen - len);
        }
        Some(foff)
    }

    fn free(&mut self, mut off: u64, mut len: u64) {
        if let Some((&poff, &plen)) = self.by_offset.range(..off).next_back()
            && poff + plen == off
        {
            self.remove(poff, plen);
            off = poff;
            len += plen;
        }
        if let Some(&nlen) = self.by_offset.get(&(off + len)) {
            self.remove(off + len, nlen);
            len += nlen;
        }
        self.insert(off, len);
    }
}

impl Arena {
    /// Maps an arena of `capacity` bytes (rounded up to [`ALLOC_UNIT`]). Memory is
    /// reserved, not touched: pages are backed as they are first written.
    pub fn new(capacity: u64) -> Result<Arc<Self>> {
        let capacity = capacity.div_ceil(ALLOC_UNIT).max(1) * ALLOC_UNIT;
        let name = c"strata-dram";
        // SAFETY: a valid NUL-terminated name and flags.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::io(
                "memfd_create for the DRAM arena",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh memfd we own.
        if unsafe { libc::ftruncate(fd, capacity as libc::off_t) } != 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: fd is ours and open.
            unsafe { libc::close(fd) };
            return Err(Error::io(
                format!("sizing the DRAM arena to {capacity} bytes"),
                err,
            ));
        }
        // The descriptor is handed to same-host clients: sealed at its size, so no
        // client can shrink it under the server's mapping (a touch past a file's end
        // is SIGBUS) nor grow it. The seals themselves are sealed.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fd is ours and open; F_ADD_SEALS takes an int.
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: fd is ours and open.
            unsafe { libc::close(fd) };
            return Err(Error::io("sealing the DRAM arena's size", err));
        }
        // SAFETY: mapping a file we own, for its whole length; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: fd is ours and open.
            unsafe { libc::close(fd) };
            return Err(Error::io(
                format!("mapping the DRAM arena of {capacity} bytes"),
                err,
            ));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::io("mmap returned null", std::io::Error::other("null")))?;
        let mut free = FreeList::default();
        free.insert(0, capacity);
        Ok(Arc::new(Self {
            base,
            capacity,
            fd,
            free: Mutex::new(free),
            used: AtomicU64::new(0),
        }))
    }

    /// Total bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes allocated (in [`ALLOC_UNIT`]s), including extents still held by readers.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The start of the mapping (for registering it once as an RDMA region).
    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The memfd behind the arena (for sharing with same-host clients).
    pub fn fd(&self) -> libc::c_int {
        self.fd
    }

    /// The offset in the arena of `bytes`, if they lie wholly inside it (a value
    /// or a slice of one; for the shared-memory and RDMA carriers).
    pub fn offset_of(&self, bytes: &[u8]) -> Option<u64> {
        let base = self.base.as_ptr() as usize;
        let p = bytes.as_ptr() as usize;
        let off = p.checked_sub(base)? as u64;
        (off.checked_add(bytes.len() as u64)? <= self.capacity).then_some(off)
    }

    /// Allocates `len` bytes, or `None` when no free extent is large enough.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<ArenaBuf> {
        let units = (len as u64).max(1).div_ceil(ALLOC_UNIT) * ALLOC_UNIT;
        let off = self.free.lock().alloc(units)?;
        self.used.fetch_add(units, Ordering::Relaxed);
        Some(ArenaBuf {
            extent: Extent {
                arena: self.clone(),
                off,
                units,
            },
            len,
        })
    }

    fn release(&self, off: u64, units: u64) {
        self.free.lock().free(off, units);
        self.used.fetch_sub(units, Ordering::Relaxed);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: every extent holds an Arc<Arena>, so no slice outlives this; the
        // mapping and fd are ours.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.capacity as usize);
            libc::close(self.fd);
        }
    }
}

/// An allocated extent; returns itself to the free list when dropped.
struct Extent {
    arena: Arc<Arena>,
    off: u64,
    units: u64,
}

impl Drop for Extent {
    fn drop(&mut self) {
        self.arena.release(self.off, self.units);
    }
}

/// A writable, exclusively owned buffer in the arena. Freeze it into [`Bytes`] once
/// written; drop it to give the memory back.
pub struct ArenaBuf {
    extent: Extent,
    len: usize,
}

impl ArenaBuf {
    /// The buffer, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the extent [off, off+units) is inside the mapping and owned by this
        // buffer alone until it is frozen; len <= units.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.extent
                    .arena
                    .base
                    .as_ptr()
                    .add(self.extent.off as usize),
                self.len,
            )
        }
    }

    /// The buffer, for reading back what was written.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`; the shared borrow of self excludes writers.
        unsafe {
            std::slice::from_raw_parts(
                self.extent
                    .arena
                    .base
                    .as_ptr()
                    .add(self.extent.off as usize),
                self.len,
            )
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the buffer in the arena.
    pub fn offset(&self) -> u64 {
        self.extent.off
    }

    /// Makes the buffer immutable and shareable. The memory returns to the arena when
    /// the last clone of the returned `Bytes` is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(Frozen {
            extent: self.extent,
            len: self.len,
        })
    }
}

struct Frozen {
    extent: Extent,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: frozen extents are never written again; see ArenaBuf::as_mut_slice.
        unsafe {
            std::slice::from_raw_parts(
                self.extent
                    .arena
                    .base
                    .as_ptr()
                    .add(self.extent.off as usize),
                self.len,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesces() {
        let a = Arena::new(4 * ALLOC_UNIT).unwrap();
        let b1 = a.alloc(ALLOC_UNIT as usize).unwrap();
        let b2 = a.alloc(2 * ALLOC_UNIT as usize).unwrap();
        let b3 = a.alloc(1).unwrap();
        assert_eq!(a.used(), 4 * ALLOC_UNIT);
        assert!(a.alloc(1).is_none());
        drop(b1);
        drop(b3);
        assert!(
            a.alloc(2 * ALLOC_UNIT as usize).is_none(),
            "free space is not contiguous"
        );
        drop(b2);
        assert_eq!(a.used(), 0);
        assert!(
            a.alloc(4 * ALLOC_UNIT as usize).is_some(),
            "all extents coalesced"
        );
    }

    #[test]
    fn offset_of_finds_arena_slices_only() {
        let a = Arena::new(4 * ALLOC_UNIT).unwrap();
        let _skip = a.alloc(ALLOC_UNIT as usize).unwrap();
        let mut b = a.alloc(10).unwrap();
        b.as_mut_slice().copy_from_slice(b"0123456789");
        let v = b.freeze();
        assert_eq!(a.offset_of(&v), Some(ALLOC_UNIT));
        assert_eq!(a.offset_of(&v.slice(3..5)), Some(ALLOC_UNIT + 3));
        assert_eq!(a.offset_of(b"elsewhere"), None);
    }

    #[test]
    fn frozen_bytes_hold_their_extent() {
        let a = Arena::new(ALLOC_UNIT).unwrap();
        let mut b = a.alloc(5).unwrap();
        b.as_mut_slice().copy_from_slice(b"hello");
        let bytes = b.freeze();
        let clone = bytes.slice(1..3);
        drop(bytes);
        assert!(a.alloc(1).is_none(), "a slice still holds the extent");
        assert_eq!(&clone[..], b"el");
        drop(clone);
        assert_eq!(a.used(), 0);
    }

    proptest::proptest! {
        #[test]
        fn random_alloc_free_keeps_accounting(ops in proptest::collection::vec((1usize..5000, proptest::bool::ANY), 1..200)) {
            let a = Arena::new(64 * 1024).unwrap();
            let mut held: Vec<ArenaBuf> = Vec::new();
            for (len, free) in ops {
                if free && !held.is_empty() {
                    held.swap_remove(len % held.len());
                } else if let Some(mut b) = a.alloc(len) {
                    b.as_mut_slice().fill(0xab);
                    held.push(b);
                }
                let expect: u64 = held.iter().map(|b| (b.len() as u64).div_ceil(ALLOC_UNIT) * ALLOC_UNIT).sum();
                proptest::prop_assert_eq!(a.used(), expect);
            }
            held.clear();
            proptest::prop_assert_eq!(a.used(), 0);
            proptest::prop_assert!(a.alloc(64 * 1024).is_some());
        }
    }
}
