//! The RDMA carrier's client end: frames over TCP, bytes by one-sided READ/WRITE on
//! the server's arena through one queue pair and a registered staging buffer; a
//! broken link is set up again in the background while calls go over TCP.

use std::time::Instant;

use super::*;
use crate::data::rdma as verbs;

impl DataClient {
    /// Connects the RDMA carrier: frames over TCP to `endpoint.tcp`, bytes by
    /// one-sided RDMA on the server's arena. `exchange` sends this end's queue-pair
    /// endpoint to the server (gRPC `RdmaConnect`) and returns the server's; it
    /// runs again whenever a broken link is set up anew (`rdma_relink_after`).
    pub async fn connect_rdma<F, Fut>(
        endpoint: DataEndpoint,
        options: DataOptions,
        exchange: F,
    ) -> Result<Self>
    where
        F: Fn(verbs::Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<verbs::Endpoint>> + Send + 'static,
    {
        let exchange: RdmaExchange = Arc::new(move |me| Box::pin(exchange(me)));
        let client = RdmaClient::linked(&exchange).await?;
        let addr = endpoint.tcp.clone().ok_or_else(|| ClientError::Connect {
            addr: "(none)".into(),
            message: "the server announced no TCP data endpoint".into(),
        })?;
        let conn = open_tcp(&addr).await?;
        let hello = hello(&conn, &shm::host_id(), options.timeout).await?;
        let me = Self::with(endpoint, options, Carrier::Rdma, hello, None, conn);
        if me.inner.rdma.set(Mutex::new(client)).is_err()
            || me
                .inner
                .relink
                .set(Relink {
                    exchange,
                    state: Mutex::new(RelinkState::default()),
                })
                .is_err()
        {
            return Err(proto("RDMA link set twice"));
        }
        Ok(me)
    }

    /// With the RDMA link broken: starts setting up a new one in the background,
    /// once `rdma_relink_after` has passed since the break was first seen (or
    /// since the last attempt failed) and no attempt is running. The new link
    /// replaces the broken one under its lock, so a call never sees half of each.
    pub(super) fn relink(&self) {
        let Some(relink) = self.inner.relink.get() else {
            return;
        };
        {
            let mut s = relink.state.lock();
            let now = Instant::now();
            let since = *s.since.get_or_insert(now);
            if s.running || now.duration_since(since) < self.inner.options.rdma_relink_after {
                return;
            }
            s.running = true;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Some(relink) = inner.relink.get() else {
                return;
            };
            let made = RdmaClient::linked(&relink.exchange).await;
            let ok = match made {
                Ok(client) => {
                    if let Some(r) = inner.rdma.get() {
                        *r.lock() = client;
                    }
                    tracing::info!("RDMA link rebuilt: reads and writes go by RDMA again");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RDMA link not rebuilt; calls stay on TCP");
                    false
                }
            };
            let mut s = relink.state.lock();
            s.running = false;
            s.relinked += u64::from(ok);
            s.since = (!ok).then(Instant::now);
        });
    }

    /// How many times this client rebuilt its RDMA link after it broke.
    pub fn rdma_relinks(&self) -> u64 {
        self.inner
            .relink
            .get()
            .map_or(0, |r| r.state.lock().relinked)
    }

    /// Takes this client's RDMA link out of service, as a failed or timed-out
    /// RDMA operation does; later calls go over the TCP connection. Fault
    /// injection, for tests of that fallback. (Nothing without an RDMA link.)
    #[doc(hidden)]
    pub fn break_rdma_link(&self) {
        if let Some(r) = self.inner.rdma.get() {
            r.lock().link.mark_broken();
        }
    }
}

/// The client end of the RDMA carrier: one queue pair, a registered staging buffer
/// that READs land in and WRITEs leave from, and the server's arena region.
/// Fields drop in order: link, region, buffer, device.
pub(super) struct RdmaClient {
    pub(super) link: verbs::Link,
    pub(super) staging: verbs::Region,
    pub(super) buf: Box<[u8]>,
    pub(super) server: Option<verbs::Endpoint>,
    pub(super) _device: verbs::Device,
}

/// Sends this end's queue-pair endpoint to the server (gRPC `RdmaConnect`) and
/// returns the server's.
pub(super) type RdmaExchange = Arc<
    dyn Fn(verbs::Endpoint) -> futures::future::BoxFuture<'static, Result<verbs::Endpoint>>
        + Send
        + Sync,
>;

/// How a broken RDMA link is set up again.
pub(super) struct Relink {
    pub(super) exchange: RdmaExchange,
    pub(super) state: Mutex<RelinkState>,
}

#[derive(Default)]
pub(super) struct RelinkState {
    /// When the break was first seen, or the last attempt failed.
    pub(super) since: Option<Instant>,
    pub(super) running: bool,
    pub(super) relinked: u64,
}

impl RdmaClient {
    /// Bytes staged per RDMA operation.
    pub(super) const STAGING: usize = 4 << 20;

    /// A new queue pair, connected to one the server made for it.
    pub(super) async fn linked(exchange: &RdmaExchange) -> Result<Self> {
        let (mut client, me) = Self::open()?;
        let peer = exchange(me).await?;
        client.connect(peer)?;
        Ok(client)
    }

    pub(super) fn open() -> Result<(Self, verbs::Endpoint)> {
        let device = verbs::Device::open()?;
        let mut buf = vec![0u8; Self::STAGING].into_boxed_slice();
        // SAFETY: `buf` is a heap allocation owned by this struct and never resized;
        // the region is dropped before it (field order).
        let staging = unsafe { device.register(buf.as_mut_ptr(), buf.len())? };
        let link = device.link()?;
        let me = link.endpoint(&staging);
        Ok((
            Self {
                link,
                staging,
                buf,
                server: None,
                _device: device,
            },
            me,
        ))
    }

    pub(super) fn connect(&mut self, peer: verbs::Endpoint) -> Result<()> {
        self.link.connect(&peer)?;
        self.server = Some(peer);
        Ok(())
    }

    /// The server's address of `e`, checked against its region.
    pub(super) fn remote(&self, e: &crate::wire::Extent) -> std::io::Result<(u64, u32)> {
        let s = self
            .server
            .ok_or_else(|| std::io::Error::other("RDMA link not connected"))?;
        if e.offset.checked_add(e.len).is_none_or(|end| end > s.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "extent {}+{} is outside the server's {}-byte region",
                    e.offset, e.len, s.len
                ),
            ));
        }
        Ok((s.addr + e.offset, s.rkey))
    }

    pub(super) fn read(
        &mut self,
        extents: &[crate::wire::Extent],
        len: u64,
        deadline: Duration,
    ) -> std::io::Result<Vec<u8>> {
        // `len` comes from the server: no allocation past what its region can hold.
        let region = self.server.map_or(0, |s| s.len);
        if len > region {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a read of {len} bytes is larger than the server's {region}-byte region"),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        for e in extents {
            let (mut raddr, rkey) = self.remote(e)?;
            let mut left = e.len;
            while left > 0 {
                let n = left.min(Self::STAGING as u64) as u32;
                self.link.read(&self.staging, 0, n, raddr, rkey, deadline)?;
                out.extend_from_slice(&self.buf[..n as usize]);
                raddr += u64::from(n);
                left -= u64::from(n);
            }
        }
        if out.len() as u64 != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "extents do not sum to the length",
            ));
        }
        Ok(out)
    }

    pub(super) fn write(
        &mut self,
        extents: &[crate::wire::Extent],
        value: &[u8],
        deadline: Duration,
    ) -> std::io::Result<()> {
        let total = extents
            .iter()
            .try_fold(0u64, |t, e| t.checked_add(e.len))
            .unwrap_or(u64::MAX);
        if total != value.len() as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("extents hold {total} bytes for {} to write", value.len()),
            ));
        }
        let mut pos = 0usize;
        for e in extents {
            let (mut raddr, rkey) = self.remote(e)?;
            let mut left = e.len;
            while left > 0 {
                let n = left.min(Self::STAGING as u64) as usize;
                self.buf[..n].copy_from_slice(&value[pos..pos + n]);
                self.link
                    .write(&self.staging, 0, n as u32, raddr, rkey, deadline)?;
                pos += n;
                raddr += n as u64;
                left -= n as u64;
            }
        }
        Ok(())
    }
}
