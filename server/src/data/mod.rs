//! The server side of the data path (`docs/data-path.md`): one connection loop for
//! TCP and for the shared-memory carrier's Unix socket (and RDMA, feature `rdma`),
//! a codec over the request layer (`crate::ops`), and its counters. The frames and the
//! client are in `strata-transport`.

mod config;
mod server;
mod stats;

pub use self::config::DataConfig;
pub use self::server::{DataServer, MAX_INFLIGHT, MAX_RESERVATIONS, MIN_UPLOAD_RATE};
pub use self::stats::{DataStats, Listener};
pub use crate::ops::Leases;
