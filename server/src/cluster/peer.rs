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
//!
//! **Namespaces without an origin** (`kv`): a [`PeerOrigin`] without a real
//! origin is their only source of fills on a cluster node. A miss asks the key's
//! other copies (replicas) and earlier owners for what they hold, never making
//! anyone fill: a value still in the cluster is found after its owner changed.
//!
//! **Replicas**: the [`Replicator`] sends each put of a namespace with more than
//! one copy (`cluster.replicas`) to the key's other owners, as a peer's put (so it
//! goes no further, and a write-through namespace's origin is written once), and
//! answers once `acks` copies committed, each two-phase at its member.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_proto::placement::{Placement, run_key};
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
    /// Copies of a put committed on another member.
    pub replicated: AtomicU64,
    /// Copies of a put that another member did not commit.
    pub replica_failed: AtomicU64,
    /// Changes of the active member list this node has seen (each moves some
    /// keys to other owners).
    pub ownership_changes: AtomicU64,
}

/// How long the owners under an earlier member list are asked for a key (a
/// rebalance window, as AIStore's get-from-neighbour).
pub const NEIGHBOUR_WINDOW: Duration = Duration::from_secs(90);

/// Most earlier member lists kept.
const HISTORY: usize = 4;

/// An earlier placement, and when it was replaced.
struct Past {
    until: std::time::Instant,
    placement: Arc<Placement>,
}

/// How long a peer read may take, connecting included, before this node reads
/// the origin itself. Long enough for the owner's own origin read of a run of
/// pages under throttling, short enough that a partitioned owner costs one
/// timeout, not a stalled epoch.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an owner asked by a peer to fill a key spends asking the key's
/// earlier owners before it reads its origin (the peer waits for the answer
/// within [`PEER_TIMEOUT`]).
const EARLIER_OWNERS_BUDGET: Duration = Duration::from_secs(5);

/// How long a member whose peer read failed is not asked again (its reads go to
/// the next holder or the origin meanwhile).
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// Why a peer call gave no value.
#[derive(Debug)]
enum PeerError {
    /// The member does not hold the key (not a failure).
    NotHeld,
    /// It could not be reached, or broke the protocol (refused, broken, timed
    /// out, an answer that does not fit): it is not asked again for
    /// [`PEER_BACKOFF`].
    Down(String),
    /// It answered with an error of the request's own (a range past the end,
    /// no room for a copy): it is up, and asked again.
    Refused(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::NotHeld => f.write_str("it does not hold the key"),
            PeerError::Down(m) | PeerError::Refused(m) => f.write_str(m),
        }
    }
}

impl From<strata_transport::ClientError> for PeerError {
    fn from(e: strata_transport::ClientError) -> Self {
        if e.is_unreachable() {
            PeerError::Down(e.to_string())
        } else {
            PeerError::Refused(e.to_string())
        }
    }
}

/// One member's data client, for the incarnation it was made for.
struct Peer {
    incarnation: u64,
    addr: String,
    client: Arc<tokio::sync::OnceCell<DataClient>>,
}

/// What a node keeps to talk to its peers: a data client per member, the
/// members whose last call failed, and the placements of earlier member lists.
/// One per node, shared by its [`PeerOrigin`]s and its [`Replicator`].
pub struct Peers {
    cluster: Arc<Cluster>,
    me: String,
    clients: Mutex<HashMap<String, Peer>>,
    options: DataOptions,
    /// Members whose last call failed, until when they are not asked.
    /// (By incarnation: a member that restarted is asked again at once.)
    down: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    /// Earlier placements, newest first.
    history: Arc<Mutex<std::collections::VecDeque<Past>>>,
    /// The entries of members that left the cell (within [`NEIGHBOUR_WINDOW`]),
    /// by id, and when they left: earlier owners still asked.
    gone: Arc<Mutex<HashMap<String, (MemberEntry, std::time::Instant)>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .field("clients", &self.clients.lock().len())
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// The peers of `cluster`'s node; remembers each member list it replaces from
    /// now on.
    pub fn new(cluster: Arc<Cluster>) -> Arc<Self> {
        let me = cluster.entry().id;
        let history: Arc<Mutex<std::collections::VecDeque<Past>>> = Arc::default();
        // A node that (re)joins starts empty: the keys it owns were owned, before
        // it came, under the list without it. The view is read here, before the
        // task below starts, so a change that makes this node active between the
        // two is seen as a change.
        let (without, has_me) = {
            let (a, b) = (me.clone(), me.clone());
            (
                move |p: &Placement| {
                    Placement::new(p.members().iter().filter(|m| m.id != a).cloned())
                        .ok()
                        .map(Arc::new)
                },
                move |p: &Placement| p.members().iter().any(|m| m.id == b),
            )
        };
        let mut views = cluster.subscribe();
        let first = views.borrow_and_update().clone();
        let mut current = first.placement.clone();
        let mut members = first.members.clone();
        if has_me(&current)
            && let Some(before) = without(&current)
        {
            history.lock().push_front(Past {
                until: std::time::Instant::now(),
                placement: before,
            });
        }
        // Remembers each placement replaced by a change of the active members,
        // and the entries of members that left (to reach them while they still
        // answer: a member that leaves hands off its keys, `hand_off`).
        let h = Arc::downgrade(&history);
        let gone: Arc<Mutex<HashMap<String, (MemberEntry, std::time::Instant)>>> = Arc::default();
        let g = Arc::downgrade(&gone);
        let counted = cluster.clone();
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let view = views.borrow_and_update().clone();
                let (Some(h), Some(g)) = (h.upgrade(), g.upgrade()) else {
                    return;
                };
                {
                    let mut g = g.lock();
                    let now = std::time::Instant::now();
                    for (id, e) in &members {
                        if !view.members.contains_key(id) {
                            g.insert(id.clone(), (e.clone(), now));
                        }
                    }
                    g.retain(|id, (_, at)| {
                        !view.members.contains_key(id) && at.elapsed() <= NEIGHBOUR_WINDOW
                    });
                }
                members = view.members.clone();
                let next = view.placement.clone();
                if next.members() == current.members() {
                    continue;
                }
                // Before any list was known, the list this one replaced is taken
                // to be this one without this node (which starts empty).
                let past = if current.members().is_empty() {
                    if has_me(&next) { without(&next) } else { None }
                } else {
                    Some(current.clone())
                };
                current = next;
                if let Some(placement) = past {
                    counted
                        .peer_stats()
                        .ownership_changes
                        .fetch_add(1, Ordering::Relaxed);
                    let mut h = h.lock();
                    h.push_front(Past {
                        until: std::time::Instant::now(),
                        placement,
                    });
                    h.truncate(HISTORY);
                }
            }
        });
        Arc::new(Self {
            history,
            gone,
            down: Mutex::new(HashMap::new()),
            me,
            cluster,
            clients: Mutex::new(HashMap::new()),
            options: DataOptions {
                carrier: CarrierChoice::Tcp,
                connections: 2,
                timeout: PEER_TIMEOUT,
                attempts: 2,
                peer: true,
                ..DataOptions::default()
            },
        })
    }

    /// Whom to ask for `key`, in order: its owner when that is another member,
    /// its other `copies - 1` owners (replicas), then its owners under earlier
    /// member lists (within [`NEIGHBOUR_WINDOW`]) that are still members, this
    /// node left out. `place`: the bytes placed (the key's, or one of its runs',
    /// [`Placement`]'s `run_key`). The bool says whether the first is the owner.
    fn holders(&self, place: &[u8], copies: usize) -> (Vec<MemberEntry>, bool) {
        let view = self.cluster.view();
        let owners: Vec<String> = view
            .placement
            .owners(place, copies.max(1))
            .into_iter()
            .map(|m| m.id.clone())
            .collect();
        let owner = owners.first().cloned();
        let asks_owner = owner.as_ref().is_some_and(|o| *o != self.me);
        let mut ids: Vec<String> = owners.into_iter().filter(|o| *o != self.me).collect();
        for past in self.history.lock().iter() {
            if past.until.elapsed() > NEIGHBOUR_WINDOW {
                break;
            }
            if let Some(m) = past.placement.owner(place)
                && m.id != self.me
                && !ids.contains(&m.id)
            {
                ids.push(m.id.clone());
            }
        }
        let members = {
            let gone = self.gone.lock();
            ids.iter()
                .filter_map(|id| {
                    view.members
                        .get(id)
                        .or_else(|| gone.get(id).map(|(e, _)| e))
                        .filter(|m| m.data.is_some())
                        .cloned()
                })
                .collect::<Vec<_>>()
        };
        let first_is_owner = asks_owner && members.first().map(|m| &m.id) == owner.as_ref();
        (members, first_is_owner)
    }

    /// A data client of `member`, made on first use and again when the member
    /// restarted or moved.
    async fn client(&self, member: &MemberEntry) -> Result<DataClient, PeerError> {
        let addr = member.data.clone().unwrap_or_default();
        let cell = {
            let mut clients = self.clients.lock();
            let p = clients.entry(member.id.clone()).or_insert_with(|| Peer {
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
            .map_err(|e| PeerError::Down(format!("connecting to {addr}: {e}")))?;
        Ok(client.clone())
    }

    /// Runs `call` on `member`'s client within [`PEER_TIMEOUT`] (connecting
    /// included), unless the member failed moments ago; a member that is down
    /// ([`PeerError::Down`]) is kept out of the next calls for [`PEER_BACKOFF`].
    async fn call<T, F, Fut>(&self, member: &MemberEntry, call: F) -> Result<T, PeerError>
    where
        F: FnOnce(DataClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        if let Some((incarnation, until)) = self.down.lock().get(&member.id)
            && *incarnation == member.incarnation
            && std::time::Instant::now() < *until
        {
            return Err(PeerError::Down("it failed moments ago".into()));
        }
        let r = tokio::time::timeout(PEER_TIMEOUT, async {
            let client = self.client(member).await?;
            call(client).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(PeerError::Down(format!(
                "no answer within {PEER_TIMEOUT:?}, connecting included"
            )))
        });
        if matches!(r, Err(PeerError::Down(_))) {
            // Until it answers again, this member costs one timeout, not one per call.
            self.down.lock().insert(
                member.id.clone(),
                (member.incarnation, std::time::Instant::now() + PEER_BACKOFF),
            );
        }
        r
    }

    /// Reads `range` of `key` from `member`: the value's length and the bytes,
    /// or why not.
    async fn ask(
        &self,
        member: &MemberEntry,
        key: &Key,
        range: Option<ByteRange>,
        cached_only: bool,
    ) -> Result<(u64, Bytes), PeerError> {
        let (offset, length) = range.map_or((0, None), |r| (r.offset, r.length));
        self.call(member, |client| async move {
            let read = if cached_only {
                client.get_cached(key, offset, length).await
            } else {
                client.get_range(key, offset, length).await
            }?;
            let Some((total, bytes)) = read else {
                return Err(PeerError::NotHeld);
            };
            let want = match length {
                Some(l) => l.min(total.saturating_sub(offset)),
                None => total.saturating_sub(offset),
            };
            if bytes.len() as u64 != want {
                return Err(PeerError::Down(format!(
                    "it answered {} bytes, {want} were asked for",
                    bytes.len()
                )));
            }
            Ok((total, bytes))
        })
        .await
    }

    /// Asks the holders of `key` ([`Self::holders`] of `place`) in turn for `range`; the
    /// first answer, or `None` when no one holds it. `fills`: the owner fills what
    /// it misses from its origin (the `shard` namespace); otherwise every member
    /// is asked for what it holds only.
    async fn ask_holders(
        &self,
        key: &Key,
        place: &[u8],
        range: Option<ByteRange>,
        copies: usize,
        fills: bool,
    ) -> Option<(u64, Bytes)> {
        let (holders, first_is_owner) = self.holders(place, copies);
        let stats = self.cluster.peer_stats();
        for (i, m) in holders.iter().enumerate() {
            let is_owner = i == 0 && first_is_owner;
            stats.asked.fetch_add(1, Ordering::Relaxed);
            match self.ask(m, key, range, !(is_owner && fills)).await {
                Ok((total, bytes)) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    if !is_owner {
                        stats.from_neighbour.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Some((total, bytes));
                }
                Err(PeerError::NotHeld) if !(is_owner && fills) => {
                    stats.not_held.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key.display_path(), member = %m.id, error = %e, "peer read failed; asking the next holder");
                }
            }
        }
        None
    }

    /// Asks `key`'s owners under earlier member lists (within
    /// [`NEIGHBOUR_WINDOW`]; not its owner now, not this node) for what they
    /// hold of `range`: the first answer, or `None`. What a node asked by a
    /// peer to fill a key tries before its origin (it does not forward the
    /// request, and an ask for what is held goes no further either), so that
    /// a member that just left or lost a key hands it over.
    async fn ask_earlier_owners(
        &self,
        key: &Key,
        place: &[u8],
        range: Option<ByteRange>,
    ) -> Option<(u64, Bytes)> {
        let (holders, first_is_owner) = self.holders(place, 1);
        let stats = self.cluster.peer_stats();
        for m in holders.iter().skip(usize::from(first_is_owner)) {
            stats.asked.fetch_add(1, Ordering::Relaxed);
            match self.ask(m, key, range, true).await {
                Ok((total, bytes)) => {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    stats.from_neighbour.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Some((total, bytes));
                }
                Err(PeerError::NotHeld) => {
                    stats.not_held.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key.display_path(), member = %m.id, error = %e, "asking an earlier owner failed; reading the origin");
                }
            }
        }
        None
    }
}

/// A namespace's origin on a cluster node (see the module docs): for the
/// `shard` namespace it wraps the real origin, which a key's owner reads; for a
/// namespace without an origin (`kv`) the other copies and earlier owners are
/// the only source, asked for what they hold.
pub struct PeerOrigin {
    inner: Option<Arc<dyn NamespaceOrigin>>,
    peers: Arc<Peers>,
    copies: usize,
    /// Bytes per run of pages when each run is placed on its own (`shard`).
    run_bytes: Option<u64>,
    stats: Arc<TierStats>,
}

impl std::fmt::Debug for PeerOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOrigin")
            .field("inner", &self.inner)
            .field("peers", &self.peers)
            .field("copies", &self.copies)
            .field("run_bytes", &self.run_bytes)
            .finish_non_exhaustive()
    }
}

impl PeerOrigin {
    /// Wraps `inner` (the real origin, if the namespace has one) for the node of
    /// `peers`, whose namespace keeps `copies` copies of each value.
    pub fn new(inner: Option<Arc<dyn NamespaceOrigin>>, peers: Arc<Peers>, copies: usize) -> Self {
        Self {
            inner,
            peers,
            copies,
            run_bytes: None,
            stats: Arc::default(),
        }
    }

    /// Places each run of `run_bytes` of a value on its own
    /// ([`run_key`]): the owner of run `r` fills bytes `r * run_bytes ..`.
    pub fn with_runs(mut self, run_bytes: u64) -> Self {
        self.run_bytes = Some(run_bytes);
        self
    }
}

/// A cluster node's writes of a replicated namespace: each put committed here is
/// sent to the key's other owners, and answered once enough copies committed
/// (`docs/cluster.md`, replicas). A put of a namespace clients write that
/// reaches a node that does not own the key (a client whose member list is
/// stale) is sent on to the owners the same way, and not kept here.
#[derive(Debug)]
pub struct Replicator {
    peers: Arc<Peers>,
    /// Namespaces whose puts and deletes at a node that does not own the key go
    /// on to its owners (those clients write: a copy kept elsewhere would
    /// outlive the owners' next write).
    forward: std::collections::HashSet<String>,
}

impl Replicator {
    /// Replicates through `peers`, as the cluster's `replicas` settings say, and
    /// forwards the puts of `forward`'s namespaces that reach a non-owner.
    pub fn new(peers: Arc<Peers>, forward: impl IntoIterator<Item = String>) -> Self {
        Self {
            peers,
            forward: forward.into_iter().collect(),
        }
    }

    /// Whether this node is among `key`'s first `copies + extra` owners (or there
    /// are none).
    fn among_owners(&self, key: &Key, extra: usize) -> bool {
        let copies = self
            .peers
            .cluster
            .config()
            .replication(key.namespace())
            .copies;
        let view = self.peers.cluster.view();
        let owners = view.placement.owners(key.as_bytes(), copies.max(1) + extra);
        owners.is_empty() || owners.iter().any(|m| m.id == self.peers.me)
    }

    /// The members other than this node that keep a copy of `key`, and how many
    /// of them must commit it before a put is answered (at least one when this
    /// node keeps none).
    fn targets(&self, key: &Key) -> (Vec<MemberEntry>, usize) {
        let r = self.peers.cluster.config().replication(key.namespace());
        if !crate::ops::Replicate::replicates(self, key) {
            return (Vec::new(), 0);
        }
        let view = self.peers.cluster.view();
        let owners = view.placement.owners(key.as_bytes(), r.copies.max(1));
        // Fewer members than copies: every member keeps one.
        let acks = r.acks().min(owners.len());
        let here = owners.iter().any(|m| m.id == self.peers.me);
        let others: Vec<MemberEntry> = owners
            .iter()
            .filter(|m| m.id != self.peers.me)
            .filter_map(|m| {
                view.members
                    .get(&m.id)
                    .filter(|e| e.data.is_some())
                    .cloned()
            })
            .collect();
        let need = if here {
            acks.saturating_sub(1)
        } else {
            acks.max(1)
        };
        (others, need)
    }
}

impl crate::ops::Replicate for Replicator {
    fn replicates(&self, key: &Key) -> bool {
        self.peers
            .cluster
            .config()
            .replication(key.namespace())
            .copies
            > 1
            || !self.keeps(key)
    }

    fn keeps(&self, key: &Key) -> bool {
        !self.forward.contains(key.namespace()) || self.among_owners(key, 0)
    }

    fn stands_in(&self, key: &Key) -> bool {
        self.among_owners(key, 1)
    }

    fn put(&self, key: &Key, value: Bytes, pin: bool) -> BoxFuture<'static, Result<()>> {
        let (targets, need) = self.targets(key);
        let peers = self.peers.clone();
        let key = key.clone();
        Box::pin(async move {
            let stats = peers.cluster.peer_stats();
            let mut calls: futures::stream::FuturesUnordered<_> = targets
                .into_iter()
                .map(|m| {
                    let (peers, key, value) = (peers.clone(), key.clone(), value.clone());
                    async move {
                        let r = peers
                            .call(&m, |c| async move {
                                c.put_with(&key, &value, pin).await.map_err(PeerError::from)
                            })
                            .await;
                        (m.id, r)
                    }
                })
                .collect();
            let (mut ok, mut errors, mut refused) = (0, Vec::new(), false);
            while ok < need {
                let Some((id, r)) = futures::StreamExt::next(&mut calls).await else {
                    break;
                };
                match r {
                    Ok(_) => {
                        ok += 1;
                        stats.replicated.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.replica_failed.fetch_add(1, Ordering::Relaxed);
                        refused |= matches!(e, PeerError::Refused(_));
                        errors.push(format!("{id}: {e}"));
                    }
                }
            }
            if !calls.is_empty() {
                // The copies past the acknowledged ones are written after the answer.
                let stats_peers = peers.clone();
                tokio::spawn(async move {
                    let stats = stats_peers.cluster.peer_stats();
                    while let Some((id, r)) = futures::StreamExt::next(&mut calls).await {
                        match r {
                            Ok(_) => stats.replicated.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(member = %id, error = %e, "a copy written after the answer failed");
                                stats.replica_failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                });
            }
            if ok < need {
                return Err(strata_tiers::Error::Shared {
                    message: format!(
                        "{ok} of the {need} other copies of {} committed: {}",
                        key.display_path(),
                        errors.join("; ")
                    ),
                    // Unavailable only when no member that failed could be
                    // reached (the node next in line may then stand in); an
                    // owner that refused the copy (no room) asks for a retry.
                    kind: if refused {
                        strata_tiers::ErrorKind::Exhausted
                    } else {
                        strata_tiers::ErrorKind::Unavailable
                    },
                });
            }
            Ok(())
        })
    }

    fn fetch(
        &self,
        key: &Key,
        range: ByteRange,
        fills: bool,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>>> {
        let peers = self.peers.clone();
        let key = key.clone();
        let copies = peers.cluster.config().replication(key.namespace()).copies;
        Box::pin(async move {
            Ok(peers
                .ask_holders(&key, key.as_bytes(), Some(range), copies, fills)
                .await)
        })
    }

    fn delete(&self, key: &Key) -> BoxFuture<'static, bool> {
        let (targets, _) = self.targets(key);
        let peers = self.peers.clone();
        let key = key.clone();
        Box::pin(async move {
            let calls = targets.into_iter().map(|m| {
                let (peers, key) = (peers.clone(), key.clone());
                async move {
                    let r = peers
                        .call(&m, |c| async move {
                            c.delete(&key).await.map_err(PeerError::from)
                        })
                        .await;
                    r.unwrap_or_else(|e| {
                        tracing::warn!(member = %m.id, error = %e, "deleting a copy failed");
                        false
                    })
                }
            });
            futures::future::join_all(calls)
                .await
                .into_iter()
                .any(|found| found)
        })
    }
}

impl NamespaceOrigin for PeerOrigin {
    fn name(&self) -> &'static str {
        self.inner.as_ref().map_or("peers", |o| o.name())
    }

    fn stats(&self) -> &Arc<TierStats> {
        self.inner.as_ref().map_or(&self.stats, |o| o.stats())
    }

    fn size<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            match &self.inner {
                // The manifest says: no need to ask anyone.
                Some(o) => o.size(key).await,
                None if crate::ops::from_peer() => Ok(None),
                None => {
                    let nothing = Some(ByteRange {
                        offset: 0,
                        length: Some(0),
                    });
                    Ok(self
                        .peers
                        .ask_holders(key, key.as_bytes(), nothing, self.copies, false)
                        .await
                        .map(|(total, _)| total))
                }
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            let fills = self.inner.is_some();
            // A run of a value with an origin is placed on its own (the store
            // asks for one aligned run at a time); anything else by its key.
            let place = match (self.run_bytes, range) {
                (Some(run), Some(r)) if fills => run_key(key.as_bytes(), r.offset / run.max(1)),
                _ => std::borrow::Cow::Borrowed(key.as_bytes()),
            };
            if crate::ops::from_peer() {
                let Some(o) = &self.inner else {
                    return Ok(None);
                };
                // Asked by a peer to fill: what an earlier owner still holds,
                // else the origin (never another forward).
                // (Within a short budget: the peer that asked waits for this.)
                if let Ok(Some((_, bytes))) = tokio::time::timeout(
                    EARLIER_OWNERS_BUDGET,
                    self.peers.ask_earlier_owners(key, &place, range),
                )
                .await
                {
                    return Ok(Some(bytes));
                }
                return o.get(key, range).await;
            }
            if let Some((_, bytes)) = self
                .peers
                .ask_holders(key, &place, range, self.copies, fills)
                .await
            {
                return Ok(Some(bytes));
            }
            match &self.inner {
                Some(o) => o.get(key, range).await,
                None => Ok(None),
            }
        })
    }

    fn immutable(&self) -> bool {
        // A namespace without an origin takes puts: a value filled from a peer is
        // checked against one put here meanwhile, as any origin's that takes writes.
        self.inner.as_ref().is_some_and(|o| o.immutable())
    }
}
