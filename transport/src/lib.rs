//! Strata's client SDK.
//!
//! [`Client`] speaks the gRPC control path (`strata.v1.Cache`): put (streamed),
//! get (streamed, with a range), match_prefix, contains, delete, pin/unpin, evict,
//! list and stats. Every call has a deadline; idempotent calls are retried with
//! backoff on transient errors, others never are.
//!
//! The data-path carriers (binary TCP, same-host shared memory, RDMA) come next and
//! plug in behind the same client.

mod client;
mod convert;
mod error;

pub use self::client::{Client, ClientOptions, ValueInfo};
pub use self::convert::{key_from_proto, key_to_proto};
pub use self::error::{ClientError, Result};
pub use strata_proto::v1 as proto;
