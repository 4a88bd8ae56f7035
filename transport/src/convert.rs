//! Conversions between the storage engine's keys and the wire's.

use strata_proto::v1 as pb;
use strata_tiers::Key;

/// A key for the wire.
pub fn key_to_proto(key: &Key) -> pb::Key {
    pb::Key {
        namespace: key.namespace().to_owned(),
        tenant: key.tenant().to_owned(),
        body: key.body().to_vec().into(),
    }
}

/// A key from the wire, validated.
pub fn key_from_proto(key: Option<&pb::Key>) -> strata_tiers::Result<Key> {
    let key = key.ok_or_else(|| strata_tiers::Error::InvalidKey {
        reason: "the key is missing".into(),
    })?;
    Key::new(&key.namespace, &key.tenant, &key.body)
}
