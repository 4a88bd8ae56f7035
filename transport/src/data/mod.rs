//! The data path: the protocol of [`crate::wire`] over TCP and over the
//! shared-memory carrier (a Unix socket plus the server's DRAM arena, mapped by the
//! client). `docs/data-path.md` describes both. This is the client side and what
//! both sides share (frames, the fd handoff, RDMA verbs); the server is in
//! `strata-server`.

mod client;
mod crc_copy;
mod io;
#[cfg(feature = "rdma")]
pub mod rdma;
mod shm;

pub use self::client::{Carrier, CarrierChoice, DataClient, DataEndpoint, DataOptions};
pub use self::io::{write_all_vectored, write_all_vectored_within};
pub use self::shm::{ValueReader, host_id, recv_fd, recv_now, send_fd};
