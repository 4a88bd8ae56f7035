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
pub async fn send_fd(stream: &UnixStream, fd: RawFd) -> io::Result<()> {
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
    /// The mapped file's device and inode: a server that restarted hands out
    /// another arena, which must never be taken for this one.
    file: (libc::dev_t, libc::ino_t),
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
            file: (st.st_dev, st.st_ino),
        })
    }

    /// Whether `fd` is the file this maps (the same server's arena).
    pub(crate) fn maps(&self, fd: &OwnedFd) -> io::Result<bool> {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: a valid descriptor and out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.st_dev, st.st_ino) == self.file)
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

    /// A reader over `extents`, in order, whose lengths must sum to `len`; each is
    /// checked against the mapping here, and so is their sum (a value's extents do
    /// not overlap, so they cannot hold more than the arena: a server that says
    /// otherwise must not make the client allocate that much).
    pub(crate) fn reader<'a>(
        &'a self,
        extents: &'a [Extent],
        len: u64,
    ) -> io::Result<ValueReader<'a>> {
        let total = self.total(extents)?;
        if total != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("extents hold {total} bytes for a length of {len}"),
            ));
        }
        Ok(ValueReader {
            parts: Parts::Mapped {
                mapping: self,
                extents,
                at: 0,
            },
            left: len,
        })
    }

    /// Checks every extent against the mapping and returns their summed length,
    /// which must not exceed the mapping either.
    fn total(&self, extents: &[Extent]) -> io::Result<u64> {
        let mut total = 0u64;
        for e in extents {
            self.check(e)?;
            total = total.saturating_add(e.len);
        }
        if total > self.len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extents hold {total} bytes, more than the {}-byte arena",
                    self.len
                ),
            ));
        }
        Ok(total)
    }

    /// Copies `data` into the bytes of `extents` (whose lengths sum to its length).
    pub(crate) fn write(&self, extents: &[Extent], data: &[u8]) -> io::Result<()> {
        let total = self.total(extents)?;
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

/// The bytes of one answer, read once and in order with no buffer in between: out
/// of the server's arena under a lease (shared memory), or out of the buffer the
/// answer arrived in (TCP, RDMA, gRPC).
///
/// The only way to read leased bytes is to copy them out ([`read_exact`]): were the
/// lease broken (it outlived its ttl), the server could be reusing that memory, so a
/// reader checks what it copied (a checksum), never the shared bytes themselves.
///
/// [`read_exact`]: ValueReader::read_exact
pub struct ValueReader<'a> {
    parts: Parts<'a>,
    left: u64,
}

enum Parts<'a> {
    Buf(&'a [u8]),
    Mapped {
        mapping: &'a Mapping,
        /// Checked against the mapping when the reader was made; `at` is the offset
        /// into the first one, whose bytes were all read once it is dropped.
        extents: &'a [Extent],
        at: u64,
    },
}

impl<'a> ValueReader<'a> {
    /// A reader over bytes in hand.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            left: buf.len() as u64,
            parts: Parts::Buf(buf),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// Copies the next `dst.len()` bytes into `dst`; `UnexpectedEof` (and nothing
    /// read) if fewer remain.
    pub fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let to = dst.as_mut_ptr();
        self.advance(dst.len() as u64, |from, pos, n| {
            // SAFETY: `advance` hands out `n` readable bytes at `from` and
            // [pos, pos + n) within the `dst.len()` bytes asked for.
            unsafe { std::ptr::copy_nonoverlapping(from, to.add(pos), n) }
        })
    }

    /// As [`read_exact`](Self::read_exact), and returns `crc32c_append(crc, the
    /// bytes)`, summed in the same pass as the copy out of the registers the copy
    /// moves through: the sum is of what was written to `dst`.
    pub fn read_exact_crc32c(&mut self, dst: &mut [u8], crc: u32) -> io::Result<u32> {
        let (to, mut crc) = (dst.as_mut_ptr(), crc);
        self.advance(dst.len() as u64, |from, pos, n| {
            // SAFETY: as in `read_exact`.
            crc = unsafe { super::crc_copy::copy_crc32c(crc, from, to.add(pos), n) }
        })?;
        Ok(crc)
    }

    /// Copies every byte left into a new buffer, not zeroed first: one pass.
    pub fn read_to_vec(&mut self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.left).map_err(io::Error::other)?;
        let mut out = Vec::<u8>::with_capacity(len);
        let to = out.as_mut_ptr();
        self.advance(len as u64, |from, pos, n| {
            // SAFETY: as in `read_exact`, into the buffer's `len` bytes of capacity.
            unsafe { std::ptr::copy_nonoverlapping(from, to.add(pos), n) }
        })?;
        // SAFETY: `advance` handed out pieces covering [0, len), all copied above.
        unsafe { out.set_len(len) };
        Ok(out)
    }

    /// Passes over the next `n` bytes; `UnexpectedEof` if fewer remain.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        self.advance(n, |_, _, _| {})
    }

    /// Moves past the next `n` bytes, handing each contiguous piece of them to
    /// `each` as (its first byte, its offset among the `n`, its length); the
    /// pieces cover `[0, n)` in order. `UnexpectedEof`, and nothing handed out, if
    /// fewer than `n` remain.
    fn advance(&mut self, n: u64, mut each: impl FnMut(*const u8, usize, usize)) -> io::Result<()> {
        if n > self.left {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{n} bytes wanted, {} left in the value", self.left),
            ));
        }
        self.left -= n;
        // At most what is left, which lies in memory: it fits a usize.
        let n = n as usize;
        match &mut self.parts {
            Parts::Buf(b) => {
                each(b.as_ptr(), 0, n);
                *b = &b[n..];
            }
            Parts::Mapped {
                mapping,
                extents,
                at,
            } => {
                let mut pos = 0;
                while pos < n {
                    let e = extents[0];
                    let step = ((e.len - *at) as usize).min(n - pos);
                    // SAFETY: the extent lies inside the mapping (checked when the
                    // reader was made), and so does [offset + at, + step).
                    let from = unsafe { mapping.base.as_ptr().add((e.offset + *at) as usize) };
                    each(from.cast_const(), pos, step);
                    pos += step;
                    *at += step as u64;
                    if *at == e.len {
                        *extents = &extents[1..];
                        *at = 0;
                    }
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ValueReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let carrier = match self.parts {
            Parts::Buf(_) => "buffer",
            Parts::Mapped { .. } => "leased arena",
        };
        f.debug_struct("ValueReader")
            .field("from", &carrier)
            .field("remaining", &self.left)
            .finish()
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

/// Reads what a socket holds now into `buf`'s spare room, without waiting:
/// `WouldBlock` when it holds nothing, 0 at its end.
///
/// This asks the socket itself. Tokio's `try_read` answers `WouldBlock` from its
/// cached readiness until the runtime's I/O driver has seen the socket's event,
/// which a thread that polls in a loop holds up. Reading around the runtime is
/// safe: a readiness left set by this read costs the next `readable()` one
/// spurious wake-up.
pub fn recv_now(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    if buf.capacity() == buf.len() {
        buf.reserve(64 << 10);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`;
    // `recv` writes at most that many and reports how many.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `recv` initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping of a fresh memfd of `len` bytes holding `i % 251` at offset `i`.
    fn mapping(len: usize) -> Mapping {
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"strata-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: a descriptor just created and owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        Mapping::new(&fd, len as u64).unwrap()
    }

    fn expect(extents: &[Extent]) -> Vec<u8> {
        extents
            .iter()
            .flat_map(|e| (e.offset..e.offset + e.len).map(|i| (i % 251) as u8))
            .collect()
    }

    #[test]
    fn a_reader_copies_extents_in_order_across_their_edges() {
        let m = mapping(4096);
        let extents = [
            Extent { offset: 10, len: 5 },
            Extent {
                offset: 100,
                len: 0,
            },
            Extent {
                offset: 3000,
                len: 20,
            },
            Extent { offset: 0, len: 7 },
        ];
        let want = expect(&extents);
        let mut r = m.reader(&extents, 32).unwrap();
        let mut got = [0u8; 32];
        // Pieces that start and end inside extents, and a skip across one edge.
        r.read_exact(&mut got[..3]).unwrap();
        r.read_exact(&mut got[3..9]).unwrap();
        r.skip(8).unwrap();
        assert_eq!(r.remaining(), 15);
        r.read_exact(&mut got[17..32]).unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(&got[..9], &want[..9]);
        assert_eq!(&got[17..], &want[17..]);
        let e = r.read_exact(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        // Summed as it copies, across extent edges.
        let mut r = m.reader(&extents, 32).unwrap();
        let mut all = [0u8; 32];
        let crc = r.read_exact_crc32c(&mut all[..20], 7).unwrap();
        let crc = r.read_exact_crc32c(&mut all[20..], crc).unwrap();
        assert_eq!(&all[..], &want[..]);
        assert_eq!(crc, crc32c::crc32c_append(7, &want));

        // The same through a buffer reader.
        let mut b = ValueReader::new(&want);
        let mut again = [0u8; 32];
        b.read_exact(&mut again[..9]).unwrap();
        b.skip(8).unwrap();
        b.read_exact(&mut again[17..]).unwrap();
        assert_eq!(&again[..9], &want[..9]);
        assert!(b.skip(1).is_err());
    }

    #[test]
    fn a_reader_refuses_extents_outside_the_mapping_or_of_the_wrong_length() {
        let m = mapping(4096);
        let e = m
            .reader(
                &[Extent {
                    offset: 4090,
                    len: 7,
                }],
                7,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the 4096-byte arena"), "{e}");
        let e = m
            .reader(
                &[Extent {
                    offset: u64::MAX,
                    len: 2,
                }],
                2,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        let e = m
            .reader(&[Extent { offset: 0, len: 7 }], 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 bytes for a length of 8"), "{e}");
        // Extents that each fit but sum past the arena (a lying server's way to make
        // the client allocate without bound) are refused before any allocation.
        let whole = vec![
            Extent {
                offset: 0,
                len: 4096
            };
            65_536
        ];
        let e = m.reader(&whole, 4096 * 65_536).unwrap_err().to_string();
        assert!(e.contains("more than the 4096-byte arena"), "{e}");
        let e = m.write(&whole[..2], &[0; 8192]).unwrap_err().to_string();
        assert!(e.contains("more than the 4096-byte arena"), "{e}");
        // A read past the end copies nothing.
        let mut r = m.reader(&[Extent { offset: 0, len: 4 }], 4).unwrap();
        let mut dst = [9u8; 5];
        assert!(r.read_exact(&mut dst).is_err());
        assert_eq!(dst, [9; 5]);
        assert_eq!(r.remaining(), 4);
    }
}
