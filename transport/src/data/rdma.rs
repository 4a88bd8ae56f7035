//! RDMA verbs (feature `rdma`, on `rdma-sys`): one device, registered memory
//! regions, and reliable-connected queue pairs for one-sided READ and WRITE.
//!
//! Kept small and blocking: a [`Link`] is one RC queue pair with its own completion
//! queue, used by one caller at a time (the client holds it under a mutex), and
//! every operation posts one signalled work request and polls for its completion
//! with a deadline. Queue-pair endpoints are exchanged over gRPC (`RdmaConnect`).
//!
//! On a machine without a verbs device `ibv_get_device_list` returns NULL (ENOSYS
//! when the kernel has no RDMA at all) or an empty list; [`Device::open`] turns both
//! into an error that says so, and the carrier is not offered.

use std::io;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use rdma_sys::*;

/// Everything a peer needs to reach a queue pair and a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Queue-pair number.
    pub qpn: u32,
    /// First packet sequence number (24 bits).
    pub psn: u32,
    /// Port GID (RoCE: an IPv4-mapped or link-local IPv6 address).
    pub gid: [u8; 16],
    /// Remote key of the region the peer may read and write.
    pub rkey: u32,
    /// Address of that region in its owner's address space.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// Local write, remote read and remote write: for regions and queue pairs alike.
fn access() -> ibv_access_flags {
    ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
        | ibv_access_flags::IBV_ACCESS_REMOTE_READ
        | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
}

fn rc(r: i32, what: &str) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::Error::from_raw_os_error(r).kind(),
            format!("{what}: {}", io::Error::from_raw_os_error(r)),
        ))
    }
}

fn null<T>(p: *mut T, what: &str) -> io::Result<NonNull<T>> {
    NonNull::new(p)
        .ok_or_else(|| io::Error::other(format!("{what}: {}", io::Error::last_os_error())))
}

/// An open verbs device with one protection domain.
pub struct Device {
    ctx: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
    gid: [u8; 16],
    gid_index: u8,
    mtu: ibv_mtu::Type,
    name: String,
}

// SAFETY: verbs contexts and protection domains are thread-safe (libibverbs
// serialises what needs it); we only hand out pointers to them.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("gid_index", &self.gid_index)
            .finish()
    }
}

impl Device {
    /// Opens the first verbs device, port 1, preferring a RoCE v2 IPv4-mapped GID.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain verbs calls; every pointer is checked before use and the
        // list is freed once the device is open.
        unsafe {
            let mut n = 0;
            let list = ibv_get_device_list(&mut n);
            if list.is_null() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("no RDMA devices ({})", io::Error::last_os_error()),
                ));
            }
            if n == 0 {
                ibv_free_device_list(list);
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "no RDMA devices",
                ));
            }
            let dev = *list;
            let name = std::ffi::CStr::from_ptr(ibv_get_device_name(dev))
                .to_string_lossy()
                .into_owned();
            let ctx = ibv_open_device(dev);
            ibv_free_device_list(list);
            let ctx = null(ctx, "ibv_open_device")?;
            let mut pa: ibv_port_attr = std::mem::zeroed();
            rc(
                ___ibv_query_port(ctx.as_ptr(), 1, &mut pa),
                "ibv_query_port",
            )?;
            let mut gid: ibv_gid = std::mem::zeroed();
            let mut gid_index = 1u8;
            if ibv_query_gid(ctx.as_ptr(), 1, 1, &mut gid) != 0
                || gid.raw[10] != 0xff
                || gid.raw[11] != 0xff
            {
                gid_index = 0;
                rc(ibv_query_gid(ctx.as_ptr(), 1, 0, &mut gid), "ibv_query_gid")?;
            }
            let pd = match NonNull::new(ibv_alloc_pd(ctx.as_ptr())) {
                Some(pd) => pd,
                None => {
                    ibv_close_device(ctx.as_ptr());
                    return Err(io::Error::other("ibv_alloc_pd failed"));
                }
            };
            Ok(Self {
                ctx,
                pd,
                gid: gid.raw,
                gid_index,
                mtu: pa.active_mtu.min(ibv_mtu::IBV_MTU_4096),
                name,
            })
        }
    }

    /// The device's name (`rxe0`, `mlx5_0`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers `len` bytes at `addr` for local writes and remote reads and writes.
    ///
    /// # Safety
    /// The memory must stay mapped, and not move, for as long as the returned region
    /// lives.
    pub unsafe fn register(&self, addr: *mut u8, len: usize) -> io::Result<Region> {
        let acc = access().0 as i32;
        // SAFETY: the caller guarantees the memory outlives the registration.
        let mr = unsafe { ibv_reg_mr(self.pd.as_ptr(), addr.cast(), len, acc) };
        Ok(Region {
            mr: null(mr, "ibv_reg_mr")?,
        })
    }

    /// A new queue pair with its own completion queue, not yet connected.
    pub fn link(&self) -> io::Result<Link> {
        // SAFETY: verbs calls on our live context and PD; results checked.
        unsafe {
            let cq = null(
                ibv_create_cq(self.ctx.as_ptr(), 64, ptr::null_mut(), ptr::null_mut(), 0),
                "ibv_create_cq",
            )?;
            let mut ia: ibv_qp_init_attr = std::mem::zeroed();
            ia.send_cq = cq.as_ptr();
            ia.recv_cq = cq.as_ptr();
            ia.qp_type = ibv_qp_type::IBV_QPT_RC;
            ia.sq_sig_all = 0;
            ia.cap.max_send_wr = 32;
            ia.cap.max_recv_wr = 1;
            ia.cap.max_send_sge = 1;
            ia.cap.max_recv_sge = 1;
            let qp = match NonNull::new(ibv_create_qp(self.pd.as_ptr(), &mut ia)) {
                Some(qp) => qp,
                None => {
                    ibv_destroy_cq(cq.as_ptr());
                    return Err(io::Error::other("ibv_create_qp failed"));
                }
            };
            Ok(Link {
                qp,
                cq,
                psn: rand::random::<u32>() & 0x00ff_ffff,
                gid_index: self.gid_index,
                mtu: self.mtu,
                gid: self.gid,
                broken: false,
            })
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: regions and links hold no reference to the device (callers drop
        // them first: see the field order of their owners).
        unsafe {
            ibv_dealloc_pd(self.pd.as_ptr());
            ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// A registered memory region.
pub struct Region {
    mr: NonNull<ibv_mr>,
}

// SAFETY: an ibv_mr is immutable once registered.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &self.addr())
            .field("len", &self.len())
            .finish()
    }
}

impl Region {
    /// Its address.
    pub fn addr(&self) -> u64 {
        // SAFETY: a live registration.
        unsafe { (*self.mr.as_ptr()).addr as u64 }
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        // SAFETY: a live registration.
        unsafe { (*self.mr.as_ptr()).length as u64 }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key a peer uses to reach it.
    pub fn rkey(&self) -> u32 {
        // SAFETY: a live registration.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    fn lkey(&self) -> u32 {
        // SAFETY: a live registration.
        unsafe { (*self.mr.as_ptr()).lkey }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our registration, deregistered once.
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
        }
    }
}

/// One RC queue pair and its completion queue.
pub struct Link {
    qp: NonNull<ibv_qp>,
    cq: NonNull<ibv_cq>,
    psn: u32,
    gid_index: u8,
    mtu: ibv_mtu::Type,
    gid: [u8; 16],
    /// Set once an operation timed out or failed. A timed-out work request may
    /// still complete later, and would then satisfy the next one's wait (or land in
    /// the staging buffer while it is read); a failed one leaves the queue pair in
    /// its error state. Either way the link takes no more work.
    broken: bool,
}

// SAFETY: the queue pair is used by one thread at a time (callers hold it under a
// mutex or own it); verbs objects may move between threads.
unsafe impl Send for Link {}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("qpn", &self.qpn()).finish()
    }
}

impl Link {
    fn qpn(&self) -> u32 {
        // SAFETY: a live queue pair.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// This end's endpoint, naming `region` as the memory the peer may use.
    pub fn endpoint(&self, region: &Region) -> Endpoint {
        Endpoint {
            qpn: self.qpn(),
            psn: self.psn,
            gid: self.gid,
            rkey: region.rkey(),
            addr: region.addr(),
            len: region.len(),
        }
    }

    /// Connects to `peer`: RESET → INIT → RTR → RTS.
    pub fn connect(&mut self, peer: &Endpoint) -> io::Result<()> {
        use ibv_qp_attr_mask as M;
        let access = access().0;
        // SAFETY: attribute structs are plain data, zeroed then filled; the queue
        // pair is live.
        unsafe {
            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_INIT;
            a.pkey_index = 0;
            a.port_num = 1;
            a.qp_access_flags = access;
            let m =
                M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS;
            rc(
                ibv_modify_qp(self.qp.as_ptr(), &mut a, m.0 as i32),
                "QP to INIT",
            )?;

            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_RTR;
            a.path_mtu = self.mtu;
            a.dest_qp_num = peer.qpn;
            a.rq_psn = peer.psn;
            a.max_dest_rd_atomic = 16;
            a.min_rnr_timer = 12;
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ibv_gid { raw: peer.gid };
            a.ah_attr.grh.sgid_index = self.gid_index;
            a.ah_attr.grh.hop_limit = 64;
            a.ah_attr.port_num = 1;
            let m = M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER;
            rc(
                ibv_modify_qp(self.qp.as_ptr(), &mut a, m.0 as i32),
                "QP to RTR",
            )?;

            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_RTS;
            a.timeout = 14;
            a.retry_cnt = 7;
            a.rnr_retry = 7;
            a.sq_psn = self.psn;
            a.max_rd_atomic = 16;
            let m = M::IBV_QP_STATE
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC;
            rc(
                ibv_modify_qp(self.qp.as_ptr(), &mut a, m.0 as i32),
                "QP to RTS",
            )
        }
    }

    /// One-sided READ of `len` bytes at `remote` (with `rkey`) into `local` at
    /// `local_off`. Blocks until it completes or `deadline` passes.
    pub fn read(
        &mut self,
        local: &Region,
        local_off: u64,
        len: u32,
        remote: u64,
        rkey: u32,
        deadline: Duration,
    ) -> io::Result<()> {
        self.post(
            ibv_wr_opcode::IBV_WR_RDMA_READ,
            local,
            local_off,
            len,
            remote,
            rkey,
        )?;
        self.wait(deadline)
    }

    /// One-sided WRITE of `len` bytes of `local` at `local_off` to `remote`.
    pub fn write(
        &mut self,
        local: &Region,
        local_off: u64,
        len: u32,
        remote: u64,
        rkey: u32,
        deadline: Duration,
    ) -> io::Result<()> {
        self.post(
            ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            local,
            local_off,
            len,
            remote,
            rkey,
        )?;
        self.wait(deadline)
    }

    fn post(
        &mut self,
        op: ibv_wr_opcode::Type,
        local: &Region,
        local_off: u64,
        len: u32,
        remote: u64,
        rkey: u32,
    ) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "this RDMA link timed out or failed before and takes no more work",
            ));
        }
        if local_off + u64::from(len) > local.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {local_off} overrun the local region of {}",
                    local.len()
                ),
            ));
        }
        let mut sge = ibv_sge {
            addr: local.addr() + local_off,
            length: len,
            lkey: local.lkey(),
        };
        // SAFETY: the work request is plain data, zeroed then filled; sge lives
        // until ibv_post_send returns (the device copies it); the queue pair is live.
        unsafe {
            let mut wr: ibv_send_wr = std::mem::zeroed();
            wr.wr_id = 1;
            wr.sg_list = &mut sge;
            wr.num_sge = 1;
            wr.opcode = op;
            wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
            wr.wr.rdma.remote_addr = remote;
            wr.wr.rdma.rkey = rkey;
            let mut bad: *mut ibv_send_wr = ptr::null_mut();
            rc(
                ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad),
                "ibv_post_send",
            )
        }
    }

    /// Whether an operation timed out or failed on this link, which then takes no
    /// more work.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Takes this link out of service, as a failed or timed-out operation does.
    /// Fault injection: tests break a healthy link with it to drive the fallback.
    #[doc(hidden)]
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    fn wait(&mut self, deadline: Duration) -> io::Result<()> {
        let r = self.wait_once(deadline);
        self.broken |= r.is_err();
        r
    }

    fn wait_once(&mut self, deadline: Duration) -> io::Result<()> {
        let start = Instant::now();
        // SAFETY: polling our own completion queue into a zeroed work completion.
        unsafe {
            let mut wc: ibv_wc = std::mem::zeroed();
            loop {
                let n = ibv_poll_cq(self.cq.as_ptr(), 1, &mut wc);
                if n < 0 {
                    return Err(io::Error::other("ibv_poll_cq failed"));
                }
                if n == 1 {
                    if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                        let s = std::ffi::CStr::from_ptr(ibv_wc_status_str(wc.status));
                        return Err(io::Error::other(format!(
                            "RDMA work completion failed: {}",
                            s.to_string_lossy()
                        )));
                    }
                    return Ok(());
                }
                if start.elapsed() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "RDMA operation did not complete in time",
                    ));
                }
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SAFETY: our queue pair and completion queue, destroyed once, QP first.
        unsafe {
            ibv_destroy_qp(self.qp.as_ptr());
            ibv_destroy_cq(self.cq.as_ptr());
        }
    }
}
