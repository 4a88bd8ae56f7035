//! Conversions between the storage engine's keys and the wire's.

use strata_proto::v1 as pb;
use strata_proto::{Key, KeyError};

/// A key for the wire.
pub fn key_to_proto(key: &Key) -> pb::Key {
    pb::Key {
        namespace: key.namespace().to_owned(),
        tenant: key.tenant().to_owned(),
        body: key.body().to_vec().into(),
    }
}

/// A key from the wire, validated.
pub fn key_from_proto(key: Option<&pb::Key>) -> Result<Key, KeyError> {
    let key = key.ok_or_else(|| KeyError {
        reason: "the key is missing".into(),
    })?;
    Key::new(&key.namespace, &key.tenant, &key.body)
}

/// An RDMA endpoint for the wire (gRPC `RdmaConnect`).
#[cfg(feature = "rdma")]
pub fn rdma_endpoint_to_proto(e: &crate::data::rdma::Endpoint) -> pb::RdmaEndpoint {
    pb::RdmaEndpoint {
        qpn: e.qpn,
        psn: e.psn,
        gid: bytes::Bytes::copy_from_slice(&e.gid),
        rkey: e.rkey,
        addr: e.addr,
        len: e.len,
    }
}

/// An RDMA endpoint from the wire; the error names what was wrong.
#[cfg(feature = "rdma")]
pub fn rdma_endpoint_from_proto(
    p: &pb::RdmaEndpoint,
) -> Result<crate::data::rdma::Endpoint, String> {
    let gid: [u8; 16] = p
        .gid
        .as_ref()
        .try_into()
        .map_err(|_| format!("gid is {} bytes, expected 16", p.gid.len()))?;
    Ok(crate::data::rdma::Endpoint {
        qpn: p.qpn,
        psn: p.psn,
        gid,
        rkey: p.rkey,
        addr: p.addr,
        len: p.len,
    })
}
