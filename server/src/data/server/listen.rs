//! The listeners: TCP and the shared-memory carrier's Unix socket, each with its
//! connection slots, and the lease and quarantine sweeper.

use super::*;

impl DataServer {
    /// Serves TCP connections until `shutdown`.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = self.admit(Listener::Tcp) else {
                        continue;
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(%peer, error = %e, "TCP_NODELAY");
                    }
                    let me = self.clone();
                    let stop = shutdown.clone();
                    self.connections.spawn(async move {
                        let _slot = slot;
                        let caller = Caller {
                            carrier: Carrier::Tcp,
                            peer: Some(peer),
                            principal: None,
                        };
                        if let Err(e) = me.clone().serve_conn(stream, caller, stop).await {
                            me.ended(&e);
                            tracing::debug!(%peer, error = %e, "data connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "data-path accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Drops expired leases until `shutdown`, every quarter of the lease lifetime.
    /// Leases are granted by the shared-memory and RDMA carriers alike, so this runs
    /// whichever carriers are on: without it, a dead client's leases would hold
    /// arena memory until the lease budget filled up.
    pub async fn expire_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.config.lease_ttl() / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.ops.leases().sweep();
                    let ttl = self.config.lease_ttl();
                    let done: Vec<_> = {
                        let mut q = self.quarantine.lock();
                        let (old, keep) = std::mem::take(&mut *q)
                            .into_iter()
                            .partition(|(at, _)| at.elapsed() >= ttl);
                        *q = keep;
                        old
                    };
                    drop(done); // outside the lock: returns memory and budget
                }
            }
        }
    }

    /// Serves the shared-memory carrier on a Unix socket until `shutdown`: each
    /// connection first receives the arena's memfd, then speaks the same frames, with
    /// leased reads and in-place writes. Leases expire by [`expire_leases`], which
    /// the caller runs beside this.
    ///
    /// [`expire_leases`]: Self::expire_leases
    pub async fn serve_unix(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    let Some(slot) = self.admit(Listener::Shm) else {
                        continue;
                    };
                    let me = self.clone();
                    let stop = shutdown.clone();
                    self.connections.spawn(async move {
                        let _slot = slot;
                        let fd = me.ops.store().dram().arena().fd();
                        if let Err(e) = shm::send_fd(&stream, fd).await {
                            tracing::debug!(error = %e, "sending the arena descriptor");
                            return;
                        }
                        let caller = Caller {
                            carrier: Carrier::Shm,
                            peer: None,
                            principal: None,
                        };
                        if let Err(e) = me.clone().serve_conn(stream, caller, stop).await {
                            me.ended(&e);
                            tracing::debug!(error = %e, "shm connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shm accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A connection slot on `l`, held while the connection is served; `None` (the
    /// connection is to be closed at once, and is counted) at `max_connections`.
    pub(super) fn admit(&self, l: Listener) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots[l as usize].clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.stats.refused(l);
            tracing::warn!(
                listener = l.name(),
                max = self.config.max_connections,
                "data connection refused: at data.max_connections"
            );
        }
        slot
    }

    /// Counts how a connection ended in error.
    pub(super) fn ended(&self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::TimedOut {
            add(&self.stats.stalled, 1);
        }
    }

    /// Binds the shared-memory socket at `path` (replacing a stale one), owner-only.
    pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let l = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    }
}
