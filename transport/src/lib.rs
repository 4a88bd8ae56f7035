//! Strata's client SDK.
//!
//! [`Client`] speaks the gRPC control path (`strata.v1.Cache`): put (streamed),
//! get (streamed, with a range), match_prefix, contains, delete, pin/unpin, evict,
//! list and stats. Every call has a deadline; idempotent calls are retried with
//! backoff on transient errors, others never are.
//!
//! The data path ([`data`], specified in `docs/data-path.md`) carries the bytes:
//! binary frames ([`wire`]) over TCP, or over a Unix socket with the values moving
//! through the server's shared DRAM arena. [`Client::connect`] asks the server where
//! its data path listens and picks the best carrier; get, get_range, mget, put,
//! delete and match_prefix then go over it.

mod client;
mod convert;
pub mod data;
mod error;
mod route;
pub mod wire;

pub use self::client::{Client, ClientOptions, ValueInfo};
pub use self::convert::{key_from_proto, key_to_proto};
#[cfg(feature = "rdma")]
pub use self::convert::{rdma_endpoint_from_proto, rdma_endpoint_to_proto};
pub use self::error::{ClientError, Result};
pub use strata_proto::v1 as proto;
pub use strata_proto::{Key, KeyError};
