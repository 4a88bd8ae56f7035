//! The data path: the protocol of [`crate::wire`] over TCP and over the
//! shared-memory carrier (a Unix socket plus the server's DRAM arena, mapped by the
//! client). `docs/data-path.md` describes both.

mod client;
mod crc_copy;
mod lease;
#[cfg(feature = "rdma")]
pub mod rdma;
mod server;
mod shm;
mod stats;

pub use self::client::{Carrier, CarrierChoice, DataClient, DataEndpoint, DataOptions};
pub use self::lease::Leases;
pub use self::server::{DataConfig, DataServer, MAX_INFLIGHT, MAX_RESERVATIONS, MIN_UPLOAD_RATE};
pub use self::shm::{ValueReader, host_id, recv_fd};
pub use self::stats::{DataStats, Listener};
