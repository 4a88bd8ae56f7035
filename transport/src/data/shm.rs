//! Same-host pieces of the shared-memory carrier: host identity, passing the
//! arena's memfd over the Unix socket, and the client's mapping of it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::wire::Extent;

/// This host's identity: the kernel's boot id, shared by every process (and
/// container) on one running kernel. Two ends with the same id may share memory,
/// if the client can also reach the server's socket.
pub fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| format!("boot:{}", s.trim()))
        .unwrap_or_else(|_| "boot:unknown".into())
}

/// Sends `fd` with one byte over `stream` (SCM_RIGHTS).
pub(crate) async fn send_fd(stream: &UnixStream, fd: RawFd) -> io::Result<()> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || sendmsg_fd(stream.as_raw_fd(), fd)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Receives the descriptor the server sends first on a shared-memory connection
/// (the arena's memfd).
pub async fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recvmsg_fd(stream.as_raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

const CMSG_SPACE: usize = 64;

/// A message header over one byte (`iov`) and a control buffer of `controllen`
/// bytes of `cbuf`.
fn msghdr(iov: &mut libc::iovec, cbuf: &mut [u8; CMSG_SPACE], controllen: usize) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = controllen.min(CMSG_SPACE);
    msg
}

fn sendmsg_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; CMSG_SPACE];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let msg = msghdr(&mut iov, &mut cbuf, space);
    // SAFETY: msg_control points at a buffer of at least msg_controllen bytes, so
    // the first header and its data are inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: a valid socket and a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recvmsg_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u8; CMSG_SPACE];
    let mut msg = msghdr(&mut iov, &mut cbuf, CMSG_SPACE);
    // SAFETY: a valid socket and buffers that outlive the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the socket before sending its arena",
        ));
    }
    // SAFETY: the kernel filled msg_control up to msg_controllen; CMSG_FIRSTHDR
    // returns null when there is no header.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null()
            || (*c).cmsg_level != libc::SOL_SOCKET
            || (*c).cmsg_type != libc::SCM_RIGHTS
            || (*c).cmsg_len < libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server's first message carried no descriptor",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A client's mapping of the server's arena.
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through bounds-checked
// copies, and concurrent access to one extent is excluded by the lease protocol.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd`, shared and writable.
    pub(crate) fn new(fd: &OwnedFd, len: u64) -> io::Result<Self> {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: a valid descriptor and out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as u64) < len || len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the arena descriptor holds {} bytes, the server announced {len}",
                    st.st_size
                ),
            ));
        }
        // SAFETY: mapping a descriptor we hold; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            len: len as usize,
        })
    }

    fn check(&self, e: &Extent) -> io::Result<(usize, usize)> {
        let end = e.offset.checked_add(e.len);
        match end {
            Some(end) if end <= self.len as u64 => Ok((e.offset as usize, e.len as usize)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extent {}+{} is outside the {}-byte arena",
                    e.offset, e.len, self.len
                ),
            )),
        }
    }

    /// Copies the bytes of `extents`, in order, into a new buffer of `len` bytes
    /// (their sum). The buffer is not zeroed first: one pass over the bytes.
    pub(crate) fn read(&self, extents: &[Extent], len: u64) -> io::Result<Vec<u8>> {
        let total = extents
            .iter()
            .try_fold(0u64, |a, e| a.checked_add(e.len))
            .filter(|t| *t == len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "extents do not sum to the length",
                )
            })?;
        for e in extents {
            self.check(e)?;
        }
        let mut out = Vec::<u8>::with_capacity(total as usize);
        let mut pos = 0usize;
        for e in extents {
            let (off, n) = self.check(e)?;
            // SAFETY: [off, off+n) is inside the mapping (checked), which the server
            // does not reuse while our lease lives; the destination has capacity for
            // `total` bytes and [pos, pos+n) stays within it since the lengths sum to
            // `total`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.base.as_ptr().add(off),
                    out.as_mut_ptr().add(pos),
                    n,
                );
            }
            pos += n;
        }
        // SAFETY: every byte of [0, total) was written above.
        unsafe { out.set_len(total as usize) };
        Ok(out)
    }

    /// Copies `data` into the bytes of `extents` (whose lengths sum to its length).
    pub(crate) fn write(&self, extents: &[Extent], data: &[u8]) -> io::Result<()> {
        let total: u64 = extents.iter().map(|e| e.len).sum();
        if total != data.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("extents hold {total} bytes for {} to write", data.len()),
            ));
        }
        let mut pos = 0;
        for e in extents {
            let (off, len) = self.check(e)?;
            // SAFETY: inside the mapping (checked); the reservation gives these
            // extents to this client alone until it commits.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), len) };
            dst.copy_from_slice(&data[pos..pos + len]);
            pos += len;
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain data; zeroed is valid.
    unsafe { std::mem::zeroed() }
}
