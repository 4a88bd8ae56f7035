//! Peer reads: a cluster node fills what it does not own from the key's owner.
//!
//! [`PeerOrigin`] is the `shard` namespace's origin on a cluster node. It wraps the
//! real one (the dataset registry's ETag-pinned Blob reads): a read of a key this
//! node owns goes to the real origin; a read of a key another member owns goes to
//! that owner over the data path (TCP), marked as a peer's
//! ([`FLAG_PEER`](strata_transport::wire::FLAG_PEER)). The owner answers it
//! from its own tiers, filling them from the real origin under its single-flight,
//! so however many nodes miss a page at once, the origin is read once for it in the
//! whole cluster. The asking node keeps what it read (its L1 copy) as its
//! namespace policy says, through the store above, which does the rest as for any
//! origin: single-flight on this node, pages, checksums, DRAM and NVMe.
//!
//! A read is forwarded at most once: a node serving a peer's request reads its own
//! origin ([`crate::ops::from_peer`]), whoever it thinks owns the key, so two nodes
//! whose views disagree for a moment cannot send a read back and forth.
//!
//! When the owner cannot answer (it is gone, cut off, or refuses), the read goes to
//! the real origin: an extra origin read, never a failed client read. Every such
//! case is counted ([`PeerStats::failed`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_tiers::{BoxFuture, ByteRange, Key, NamespaceOrigin, Result, TierStats};
use strata_transport::data::{CarrierChoice, DataClient, DataEndpoint, DataOptions};

use super::{Cluster, MemberEntry};

/// Counters of peer reads, on the asking and on the answering side.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Reads this node sent to a key's owner.
    pub asked: AtomicU64,
    /// Of those, the ones the owner answered: origin reads this node did not make.
    pub answered: AtomicU64,
    /// Of those, the ones that fell back to the origin (owner unreachable, refused,
    /// or answered something that does not fit).
    pub failed: AtomicU64,
    /// Bytes the owners answered.
    pub bytes: AtomicU64,
}

/// How long a peer read may take, connecting included, before this node reads
/// the origin itself. Long enough for the owner's own origin read of a run of
/// pages under throttling, short enough that a partitioned owner costs one
/// timeout, not a stalled epoch.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// One member's data client, for the incarnation it was made for.
struct Peer {
    incarnation: u64,
    addr: String,
    client: Arc<tokio::sync::OnceCell<DataClient>>,
}

/// The `shard` namespace's origin on a cluster node (see the module docs).
pub struct PeerOrigin {
    inner: Arc<dyn NamespaceOrigin>,
    cluster: Arc<Cluster>,
    me: String,
    peers: Mutex<HashMap<String, Peer>>,
    options: DataOptions,
}

impl std::fmt::Debug for PeerOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOrigin")
            .field("inner", &self.inner)
            .field("me", &self.me)
            .field("peers", &self.peers.lock().len())
            .finish_non_exhaustive()
    }
}

impl PeerOrigin {
    /// Wraps `inner` (the real origin) for `cluster`'s node.
    pub fn new(inner: Arc<dyn NamespaceOrigin>, cluster: Arc<Cluster>) -> Self {
        Self {
            inner,
            me: cluster.entry().id,
            cluster,
            peers: Mutex::new(HashMap::new()),
            options: DataOptions {
                carrier: CarrierChoice::Tcp,
                connections: 2,
                timeout: PEER_TIMEOUT,
                attempts: 2,
                peer: true,
                ..DataOptions::default()
            },
        }
    }

    /// The key's owner, when it is another member with a data path.
    fn owner_of(&self, key: &Key) -> Option<MemberEntry> {
        let view = self.cluster.view();
        let owner = view.placement.owner(key.as_bytes())?;
        if owner.id == self.me {
            return None;
        }
        view.members
            .get(&owner.id)
            .filter(|m| m.data.is_some())
            .cloned()
    }

    /// A data client of `member`, made on first use and again when the member
    /// restarted or moved.
    async fn client(&self, member: &MemberEntry) -> Result<DataClient, String> {
        let addr = member.data.clone().unwrap_or_default();
        let cell = {
            let mut peers = self.peers.lock();
            let p = peers.entry(member.id.clone()).or_insert_with(|| Peer {
                incarnation: member.incarnation,
                addr: addr.clone(),
                client: Arc::default(),
            });
            if p.incarnation != member.incarnation || p.addr != addr {
                *p = Peer {
                    incarnation: member.incarnation,
                    addr: addr.clone(),
                    client: Arc::default(),
                };
            }
            p.client.clone()
        };
        let client = cell
            .get_or_try_init(|| {
                DataClient::connect(
                    DataEndpoint {
                        tcp: Some(addr.clone()),
                        ..DataEndpoint::default()
                    },
                    self.options.clone(),
                )
            })
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        Ok(client.clone())
    }

    /// Reads `range` of `key` from its owner `member`: the bytes, or why not.
    async fn ask(
        &self,
        member: &MemberEntry,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<Bytes, String> {
        let client = self.client(member).await?;
        let (offset, length) = range.map_or((0, None), |r| (r.offset, r.length));
        let read = tokio::time::timeout(PEER_TIMEOUT, client.get_range(key, offset, length))
            .await
            .map_err(|_| format!("no answer within {PEER_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let Some((total, bytes)) = read else {
            return Err("it does not have the key".into());
        };
        let want = match length {
            Some(l) => l.min(total.saturating_sub(offset)),
            None => total.saturating_sub(offset),
        };
        if bytes.len() as u64 != want {
            return Err(format!(
                "it answered {} bytes, {want} were asked for",
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

impl NamespaceOrigin for PeerOrigin {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn stats(&self) -> &Arc<TierStats> {
        self.inner.stats()
    }

    fn size<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<u64>>> {
        // The manifest says: no need to ask anyone.
        self.inner.size(key)
    }

    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            if crate::ops::from_peer() {
                return self.inner.get(key, range).await;
            }
            let Some(owner) = self.owner_of(key) else {
                return self.inner.get(key, range).await;
            };
            let stats = self.cluster.peer_stats();
            stats.asked.fetch_add(1, Ordering::Relaxed);
            match self.ask(&owner, key, range).await {
                Ok(bytes) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(Some(bytes))
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key.display_path(), owner = %owner.id, error = %e, "peer read failed; reading the origin");
                    self.inner.get(key, range).await
                }
            }
        })
    }

    fn immutable(&self) -> bool {
        self.inner.immutable()
    }
}
