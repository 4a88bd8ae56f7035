//! The data path's configuration: `[data]` in the server's config file, and what
//! the data server runs on.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_tiers::ByteSize;
use strata_transport::wire::Limits;

/// `[data]`: the data path's server, its one config (the server's `Config` embeds
/// it as it is). gRPC stays the control path; bulk bytes go here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// TCP address of the binary data path; empty to turn it off. Default:
    /// `127.0.0.1:7072`.
    pub listen: String,
    /// Serve same-host clients over shared memory. Default: true.
    pub shm: bool,
    /// Unix socket of the shared-memory carrier. Default: `<data_dir>/strata.sock`.
    pub shm_socket: Option<PathBuf>,
    /// Milliseconds a lease (a shared-memory read, a reserved slot) holds arena
    /// memory at most. Default: 5000.
    pub lease_ttl_ms: u64,
    /// Bytes held by leases at once, at most; past it reads are answered inline.
    /// Default: 1 GiB.
    pub max_leased_bytes: ByteSize,
    /// Largest data section of one frame (a PUT's value, an MGET's answer).
    /// Default: 1 GiB.
    pub max_frame_data: ByteSize,
    /// Microseconds a data connection with nothing in flight polls its socket
    /// before it parks; 0 parks at once. Polling takes the wake-up out of a round
    /// trip (worth most to same-host shared-memory clients) for a busy core while it
    /// lasts: set it only where the node has a core to spare. Default: 0.
    pub poll_us: u64,
    /// Data connections that may poll at once, each holding a runtime worker while
    /// it polls: keep it below the server's worker threads. Default: 1.
    pub poll_connections: usize,
    /// Data connections served at once, per listener (TCP, Unix socket); past it new
    /// ones are closed. Default: 4096.
    pub max_connections: usize,
    /// Milliseconds a data connection may sit idle (nothing in flight, no open
    /// reservation, no partial frame) before the server closes it and its place
    /// comes back; clients reconnect when they next need one. Default: 300000.
    pub idle_timeout_ms: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7072".into(),
            shm: true,
            shm_socket: None,
            lease_ttl_ms: 5000,
            max_leased_bytes: ByteSize(1 << 30),
            max_frame_data: ByteSize(1 << 30),
            poll_us: 0,
            poll_connections: 1,
            max_connections: 4096,
            idle_timeout_ms: 300_000,
        }
    }
}

impl DataConfig {
    /// How long a lease (and so a shared-memory read, or a reserved slot) may hold
    /// arena memory.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// How long an idle connection is kept ([`Self::idle_timeout_ms`]).
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }

    /// The frame limits requests are decoded with.
    pub fn limits(&self) -> Limits {
        Limits {
            max_data: self.max_frame_data.0,
            ..Limits::default()
        }
    }

    /// How long a connection with nothing in flight polls its socket for the next
    /// request before it parks (zero: park at once).
    pub fn poll(&self) -> Duration {
        Duration::from_micros(self.poll_us)
    }
}
