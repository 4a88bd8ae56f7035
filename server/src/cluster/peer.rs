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
//! **Get from neighbour** (AIStore's anchor): while members join, leave or
//! restart, a key's owner changes, and its new owner starts empty. So a fill
//! asks, after the owner (or instead of itself, when this node is the owner and
//! missed), the key's owners under the member lists of the last
//! [`NEIGHBOUR_WINDOW`] that are still members: a page still somewhere in the
//! cluster is fetched from the node that holds it, not from the origin again.
//!
//! When no one can answer (owner gone, cut off, or refusing; no neighbour), the
//! read goes to the real origin: an extra origin read, never a failed client read.
//! Every such case is counted ([`PeerStats::failed`]).

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
    /// Of the answered reads, those a previous owner answered (get from
    /// neighbour).
    pub from_neighbour: AtomicU64,
    /// Asks of a previous owner that no longer held the key.
    pub not_held: AtomicU64,
}

/// How long the owners under an earlier member list are asked for a key (a
/// rebalance window, as AIStore's get-from-neighbour).
pub const NEIGHBOUR_WINDOW: Duration = Duration::from_secs(90);

/// Most earlier member lists kept.
const HISTORY: usize = 4;

/// An earlier placement, and when it was replaced.
struct Past {
    until: std::time::Instant,
    placement: Arc<strata_proto::placement::Placement>,
}

/// How long a peer read may take, connecting included, before this node reads
/// the origin itself. Long enough for the owner's own origin read of a run of
/// pages under throttling, short enough that a partitioned owner costs one
/// timeout, not a stalled epoch.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a member whose peer read failed is not asked again (its reads go to
/// the next holder or the origin meanwhile).
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// Why a member did not answer: it does not hold the key (not a failure).
const NOT_HELD: &str = "it does not hold the key";

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
    /// Members whose last peer read failed, until when they are not asked.
    down: Mutex<HashMap<String, std::time::Instant>>,
    /// Earlier placements, newest first.
    history: Arc<Mutex<std::collections::VecDeque<Past>>>,
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
        let me = cluster.entry().id;
        let history: Arc<Mutex<std::collections::VecDeque<Past>>> = Arc::default();
        // A node that (re)joins starts empty: the keys it owns were owned, before
        // it came, under the list without it.
        let view = cluster.view();
        if view.placement.members().iter().any(|m| m.id == me)
            && let Ok(before) = strata_proto::placement::Placement::new(
                view.placement
                    .members()
                    .iter()
                    .filter(|m| m.id != me)
                    .cloned(),
            )
        {
            history.lock().push_front(Past {
                until: std::time::Instant::now(),
                placement: Arc::new(before),
            });
        }
        // Remembers each placement replaced by a change of the active members.
        let mut views = cluster.subscribe();
        let h = Arc::downgrade(&history);
        tokio::spawn(async move {
            let mut current = views.borrow().placement.clone();
            while views.changed().await.is_ok() {
                let next = views.borrow().placement.clone();
                if next.members() == current.members() || current.members().is_empty() {
                    current = next;
                    continue;
                }
                let Some(h) = h.upgrade() else {
                    return;
                };
                let mut h = h.lock();
                h.push_front(Past {
                    until: std::time::Instant::now(),
                    placement: std::mem::replace(&mut current, next),
                });
                h.truncate(HISTORY);
            }
        });
        Self {
            history,
            down: Mutex::new(HashMap::new()),
            inner,
            me,
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

    /// Whom to ask for `key`, in order: its owner when that is another member,
    /// then its owners under earlier member lists (within [`NEIGHBOUR_WINDOW`])
    /// that are still members, this node left out. The bool says whether the
    /// first is the owner.
    fn holders(&self, key: &Key) -> (Vec<MemberEntry>, bool) {
        let view = self.cluster.view();
        let mut ids: Vec<String> = Vec::new();
        let owner = view.placement.owner(key.as_bytes()).map(|m| m.id.clone());
        let asks_owner = owner.as_ref().is_some_and(|o| *o != self.me);
        if let (Some(o), true) = (&owner, asks_owner) {
            ids.push(o.clone());
        }
        for past in self.history.lock().iter() {
            if past.until.elapsed() > NEIGHBOUR_WINDOW {
                break;
            }
            if let Some(m) = past.placement.owner(key.as_bytes())
                && m.id != self.me
                && Some(&m.id) != owner.as_ref()
                && !ids.contains(&m.id)
            {
                ids.push(m.id.clone());
            }
        }
        let members = ids
            .iter()
            .filter_map(|id| view.members.get(id).filter(|m| m.data.is_some()).cloned())
            .collect::<Vec<_>>();
        let first_is_owner = asks_owner && members.first().map(|m| &m.id) == owner.as_ref();
        (members, first_is_owner)
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
        cached_only: bool,
    ) -> Result<Bytes, String> {
        if let Some(until) = self.down.lock().get(&member.id)
            && std::time::Instant::now() < *until
        {
            return Err("it failed moments ago".into());
        }
        let r = tokio::time::timeout(PEER_TIMEOUT, self.ask_now(member, key, range, cached_only))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {PEER_TIMEOUT:?}, connecting included"
                ))
            });
        if r.as_ref().is_err_and(|e| e != NOT_HELD) {
            // Until it answers again, this member costs one timeout, not one per read.
            self.down
                .lock()
                .insert(member.id.clone(), std::time::Instant::now() + PEER_BACKOFF);
        }
        r
    }

    async fn ask_now(
        &self,
        member: &MemberEntry,
        key: &Key,
        range: Option<ByteRange>,
        cached_only: bool,
    ) -> Result<Bytes, String> {
        let client = self.client(member).await?;
        let (offset, length) = range.map_or((0, None), |r| (r.offset, r.length));
        let read = if cached_only {
            client.get_cached(key, offset, length).await
        } else {
            client.get_range(key, offset, length).await
        }
        .map_err(|e| e.to_string())?;
        let Some((total, bytes)) = read else {
            return Err(NOT_HELD.into());
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
            let (holders, first_is_owner) = self.holders(key);
            let stats = self.cluster.peer_stats();
            for (i, m) in holders.iter().enumerate() {
                let is_owner = i == 0 && first_is_owner;
                stats.asked.fetch_add(1, Ordering::Relaxed);
                // The owner fills what it misses; an earlier owner only answers
                // what it still holds.
                match self.ask(m, key, range, !is_owner).await {
                    Ok(bytes) => {
                        stats.answered.fetch_add(1, Ordering::Relaxed);
                        if !is_owner {
                            stats.from_neighbour.fetch_add(1, Ordering::Relaxed);
                        }
                        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        return Ok(Some(bytes));
                    }
                    Err(e) if e == NOT_HELD && !is_owner => {
                        stats.not_held.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %key.display_path(), member = %m.id, error = %e, "peer read failed; asking the next holder or the origin");
                    }
                }
            }
            self.inner.get(key, range).await
        })
    }

    fn immutable(&self) -> bool {
        self.inner.immutable()
    }
}
