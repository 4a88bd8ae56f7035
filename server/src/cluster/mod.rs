//! Cluster membership on etcd (`docs/cluster.md`).
//!
//! A server started with `cluster.etcd` set joins the cluster `cluster.name`: it
//! registers under `/strata/<name>/cells/<cell>/members/<id>` a JSON [`MemberEntry`]
//! (its id, addresses, zone, weight, capacity, state) under a lease of
//! `cluster.lease_ttl_s`, keeps the lease alive, and watches its cell's members.
//! A node whose lease expires drops out of every view. On shutdown it first says
//! it is draining, then revokes its lease: its entry goes at once rather than a
//! lease lifetime later.
//!
//! The id is the node's own, kept in `<data_dir>/node-id` (made at the first
//! start), so a restarted node comes back as itself; each start has a new
//! `incarnation`. A node that finds its id still registered (its own earlier
//! start, restarted faster than the lease ran out) takes the entry over.
//!
//! Without `cluster.etcd` none of this runs: the single node is the default.

pub mod etcd;
pub mod peer;
pub mod plans;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use strata_proto::placement::{Member, Placement};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::etcd::{Change, Etcd, EtcdError};

/// `[cluster]`: membership. Empty `etcd` (the default) keeps the single node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints (`HOST:PORT` or `http://HOST:PORT`). Empty: no cluster.
    pub etcd: Vec<String>,
    /// The cluster's name: nodes of one name are one cache. Default: `strata`.
    pub name: String,
    /// The host other nodes and clients reach this one at. Default: the host of
    /// `server.listen` when it is a specific address, else this machine's name.
    pub advertise: Option<String>,
    /// The cell: the members a node watches. Default: `default`.
    pub cell: String,
    /// The zone (failure domain), for replicas in different zones. Default: empty.
    pub zone: String,
    /// Seconds a node stays a member without a keep-alive. Default: 10.
    pub lease_ttl_s: u64,
    /// The node's placement weight (points on the ring, 1 to 1024): its share
    /// of the keys against the others'. Default: from `weight_unit` when that
    /// is set, else 1.
    pub weight: Option<u32>,
    /// Capacity per unit of weight, one figure for the whole cluster (for
    /// example `1TiB`): a node's weight is then its capacity (NVMe when on,
    /// else DRAM) over it, rounded, 1 to 1024. Never relative to the other
    /// members (that would move keys whenever one joined). Default: none.
    pub weight_unit: Option<strata_tiers::ByteSize>,
    /// Copies kept of each namespace's values, by namespace name
    /// (`[cluster.replicas.kv] copies = 2`). A namespace not named keeps one
    /// copy, on its owner. Default: none named.
    pub replicas: BTreeMap<String, Replication>,
}

/// How many copies of a namespace's values the cluster keeps (`docs/cluster.md`,
/// replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// Copies of each value, on the key's first `copies` owners (1 to
    /// [`MAX_COPIES`]). Default: 1.
    pub copies: usize,
    /// Copies committed before a put is answered (1 to `copies`); the others
    /// are written after. Default: all of them.
    pub acks: Option<usize>,
}

/// Most copies of a value.
pub const MAX_COPIES: usize = 5;

impl Default for Replication {
    fn default() -> Self {
        Self {
            copies: 1,
            acks: None,
        }
    }
}

impl Replication {
    /// Copies committed before a put is answered.
    pub fn acks(&self) -> usize {
        self.acks.unwrap_or(self.copies)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            name: "strata".into(),
            advertise: None,
            cell: "default".into(),
            zone: String::new(),
            lease_ttl_s: 10,
            weight: None,
            weight_unit: None,
            replicas: BTreeMap::new(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// Checks the fields; the error names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !name_ok(&self.name) {
            return Err(format!(
                "cluster.name: {:?} must be 1-64 of [A-Za-z0-9._-]",
                self.name
            ));
        }
        if !name_ok(&self.cell) {
            return Err(format!(
                "cluster.cell: {:?} must be 1-64 of [A-Za-z0-9._-]",
                self.cell
            ));
        }
        if !(2..=300).contains(&self.lease_ttl_s) {
            return Err("cluster.lease_ttl_s: must be between 2 and 300 seconds".into());
        }
        if let Some(w) = self.weight
            && !(1..=strata_proto::placement::MAX_WEIGHT).contains(&w)
        {
            return Err(format!(
                "cluster.weight: {w} is not between 1 and {}",
                strata_proto::placement::MAX_WEIGHT
            ));
        }
        if self.weight_unit.is_some_and(|u| u.0 == 0) {
            return Err("cluster.weight_unit: must be more than 0 bytes".into());
        }
        for (ns, r) in &self.replicas {
            if !(1..=MAX_COPIES).contains(&r.copies) {
                return Err(format!(
                    "cluster.replicas.{ns}.copies: {} is not between 1 and {MAX_COPIES}",
                    r.copies
                ));
            }
            if !(1..=r.copies).contains(&r.acks()) {
                return Err(format!(
                    "cluster.replicas.{ns}.acks: {} is not between 1 and copies ({})",
                    r.acks(),
                    r.copies
                ));
            }
        }
        Ok(())
    }

    /// This node's weight for a node of `capacity` bytes (NVMe when on, else
    /// DRAM): `weight` if set, else `capacity / weight_unit` rounded and kept
    /// within 1 to 1024, else 1.
    pub fn weight_for(&self, capacity: u64) -> u32 {
        if let Some(w) = self.weight {
            return w;
        }
        let Some(unit) = self.weight_unit.filter(|u| u.0 > 0) else {
            return 1;
        };
        let w = (u128::from(capacity) + u128::from(unit.0) / 2) / u128::from(unit.0);
        w.clamp(1, u128::from(strata_proto::placement::MAX_WEIGHT)) as u32
    }

    /// How many copies the cluster keeps of `namespace`'s values.
    pub fn replication(&self, namespace: &str) -> Replication {
        self.replicas.get(namespace).copied().unwrap_or_default()
    }

    /// The prefix of this node's cell's members.
    pub fn cell_prefix(&self) -> String {
        format!("/strata/{}/cells/{}/members/", self.name, self.cell)
    }
}

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Registered, not serving its share yet.
    Joining,
    /// Owns its share of the keys.
    Active,
    /// Leaving: out of placement, still serving what it holds.
    Draining,
}

impl MemberState {
    /// Every state, in order.
    pub const LIST: [MemberState; 3] = [Self::Joining, Self::Active, Self::Draining];

    /// Its name, as in the JSON entry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Active => "active",
            Self::Draining => "draining",
        }
    }
}

/// What a member registers (JSON, so that operators can read it with `etcdctl`
/// and any client can parse it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The format's version (1).
    pub version: u32,
    /// The node's id (stable across restarts).
    pub id: String,
    /// This start of the node (a new one each start).
    pub incarnation: u64,
    /// gRPC `HOST:PORT`.
    pub grpc: String,
    /// Data-path TCP `HOST:PORT`, if on.
    pub data: Option<String>,
    /// Whether the node serves the RDMA carrier.
    pub rdma: bool,
    /// The cell.
    pub cell: String,
    /// The zone.
    pub zone: String,
    /// Placement weight.
    pub weight: u32,
    /// DRAM capacity, bytes.
    pub dram_bytes: u64,
    /// NVMe capacity, bytes (0: off).
    pub nvme_bytes: u64,
    /// State.
    pub state: MemberState,
}

/// One view of the cell: the members, at an etcd revision.
#[derive(Debug, Clone)]
pub struct View {
    /// The etcd revision this view is as of.
    pub revision: i64,
    /// The members by id.
    pub members: BTreeMap<String, MemberEntry>,
    /// Placement over the active members.
    pub placement: Arc<Placement>,
}

/// Applies one batch of watch events on the cell prefix `prefix` to `members` (a
/// view's member map): a put of a valid entry adds or replaces it, a delete
/// removes its id. Returns the newest revision seen, at least `revision`.
pub fn apply_changes(
    members: &mut BTreeMap<String, MemberEntry>,
    prefix: &str,
    changes: Vec<Change>,
    mut revision: i64,
) -> i64 {
    for c in changes {
        match c {
            Change::Put(kv) => {
                revision = revision.max(kv.mod_revision);
                if let Some(m) = decode(&kv.value) {
                    members.insert(m.id.clone(), m);
                }
            }
            Change::Delete(key) => {
                let id = String::from_utf8_lossy(&key)
                    .trim_start_matches(prefix)
                    .to_owned();
                members.remove(&id);
            }
        }
    }
    revision
}

impl View {
    /// The view of `members` as of etcd revision `revision`: placement over the
    /// active ones.
    pub fn new(revision: i64, members: BTreeMap<String, MemberEntry>) -> Self {
        let active = members
            .values()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| Member::new(m.id.clone(), m.weight));
        // Entries were checked by `decode`, so this does not fail; if it did, the
        // node would place on nobody rather than stop.
        let placement = Placement::new(active).unwrap_or_else(|e| {
            tracing::error!(error = %e, "member list refused by placement; placing on nobody");
            Placement::new([]).expect("an empty list places")
        });
        Self {
            revision,
            members,
            placement: Arc::new(placement),
        }
    }

    /// How many members are in `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.members.values().filter(|m| m.state == state).count()
    }
}

/// This node's membership: its entry, its lease, and the view of its cell.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    etcd: Etcd,
    key: String,
    entry: parking_lot::Mutex<MemberEntry>,
    lease: parking_lot::Mutex<i64>,
    view: watch::Receiver<Arc<View>>,
    stop: CancellationToken,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    rejoins: std::sync::atomic::AtomicU64,
    peer_stats: peer::PeerStats,
    before_rejoin: parking_lot::Mutex<Option<HookSlot>>,
}

/// A [`RejoinHook`], shown by its presence in `Debug`.
#[derive(Clone)]
struct HookSlot(RejoinHook);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejoinHook")
    }
}

/// What a node does before it registers again after its lease lapsed (see
/// [`Cluster::before_rejoin`]).
pub type RejoinHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// The node's id, from `<data_dir>/node-id`, made on the first start.
pub fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// A member entry read from etcd, if it is one this node can place on: a known
/// version, an id, a weight placement takes. Anything else is left out of the
/// view (logged), so that one bad entry cannot empty the placement.
fn decode(value: &[u8]) -> Option<MemberEntry> {
    match serde_json::from_slice::<MemberEntry>(value) {
        Ok(m)
            if m.version == 1
                && !m.id.is_empty()
                && (1..=strata_proto::placement::MAX_WEIGHT).contains(&m.weight) =>
        {
            Some(m)
        }
        Ok(m) => {
            tracing::warn!(id = %m.id, "member entry of an unknown version or invalid; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "member entry that does not parse; ignored");
            None
        }
    }
}

/// The members among the entries of a cell's prefix, by id.
fn members_of(kvs: &[etcd::Entry]) -> BTreeMap<String, MemberEntry> {
    kvs.iter()
        .filter_map(|kv| decode(&kv.value))
        .map(|m| (m.id.clone(), m))
        .collect()
}

impl Cluster {
    /// Registers `entry` (state `joining`), starts the keep-alive and the watch of
    /// the cell, and returns once the first view is read.
    pub async fn join(config: ClusterConfig, mut entry: MemberEntry) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let ttl = Duration::from_secs(config.lease_ttl_s);
        let etcd = Etcd::connect(&config.etcd, Duration::from_secs(5))
            .await
            .with_context(|| format!("joining cluster {:?} (cluster.etcd)", config.name))?;
        let key = format!("{}{}", config.cell_prefix(), entry.id);
        entry.state = MemberState::Joining;
        let lease = register(&etcd, &key, &entry, ttl).await?;
        let (revision, kvs) = etcd.get_prefix(config.cell_prefix().as_bytes()).await?;
        let (tx, view) = watch::channel(Arc::new(View::new(revision, members_of(&kvs))));
        let me = Arc::new(Self {
            config,
            etcd,
            key,
            entry: parking_lot::Mutex::new(entry),
            lease: parking_lot::Mutex::new(lease),
            view,
            stop: CancellationToken::new(),
            tasks: parking_lot::Mutex::new(Vec::new()),
            rejoins: std::sync::atomic::AtomicU64::new(0),
            peer_stats: peer::PeerStats::default(),
            before_rejoin: parking_lot::Mutex::new(None),
        });
        let keep = tokio::spawn(me.clone().keep_alive_loop());
        let watch = tokio::spawn(me.clone().watch_loop(tx, revision));
        me.tasks.lock().extend([keep, watch]);
        Ok(me)
    }

    /// Runs `hook` each time this node's lease has lapsed (it was out of the
    /// cluster: cut off, or stalled, for longer than the lease), before it
    /// registers again, so before any other member sends it a request again: the
    /// server forgets there the copies other nodes may have replaced meanwhile.
    pub fn before_rejoin(&self, hook: RejoinHook) {
        *self.before_rejoin.lock() = Some(HookSlot(hook));
    }

    /// The current view of the cell.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver of every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This node's entry.
    pub fn entry(&self) -> MemberEntry {
        self.entry.lock().clone()
    }

    /// The cluster's settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// This node's peer reads ([`peer::PeerOrigin`]).
    pub fn peer_stats(&self) -> &peer::PeerStats {
        &self.peer_stats
    }

    /// Times this node registered again after losing its lease.
    pub fn rejoins(&self) -> u64 {
        self.rejoins.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets this node's state (written to its entry at once).
    pub async fn set_state(&self, state: MemberState) -> Result<(), EtcdError> {
        let (value, lease) = {
            let mut e = self.entry.lock();
            e.state = state;
            (
                serde_json::to_vec(&*e).expect("a member entry serializes"),
                *self.lease.lock(),
            )
        };
        self.etcd.put(self.key.as_bytes(), &value, lease).await
    }

    /// Leaves: draining first, then the lease revoked (the entry goes at once),
    /// then the background tasks stopped.
    pub async fn leave(&self) {
        if let Err(e) = self.set_state(MemberState::Draining).await {
            tracing::warn!(error = %e, "could not mark this node draining");
        }
        self.stop.cancel();
        let lease = *self.lease.lock();
        if let Err(e) = self.etcd.revoke(lease).await {
            tracing::warn!(error = %e, "could not revoke the membership lease; it expires by itself");
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        tracing::info!(cluster = %self.config.name, "left the cluster");
    }

    /// Keeps the lease alive (three keep-alives per lifetime); when etcd says the
    /// lease is gone (this node was out for longer than its lifetime), registers
    /// again under a new one.
    async fn keep_alive_loop(self: Arc<Self>) {
        let ttl = Duration::from_secs(self.config.lease_ttl_s);
        let mut backoff = Duration::from_millis(200);
        loop {
            let lease = *self.lease.lock();
            let lost = match self.etcd.keep_alive(lease, ttl / 3).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    loop {
                        tokio::select! {
                            () = self.stop.cancelled() => return,
                            a = stream.next() => match a {
                                Some(Ok(true)) => backoff = Duration::from_millis(200),
                                Some(Ok(false)) => break true,
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "membership keep-alive failed; retrying");
                                    break false;
                                }
                                None => break false,
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "membership keep-alive failed; retrying");
                    false
                }
            };
            if lost {
                tracing::warn!("membership lease expired; registering again");
                let hook = self.before_rejoin.lock().clone();
                if let Some(HookSlot(hook)) = hook {
                    hook().await;
                }
                let entry = self.entry();
                match register(&self.etcd, &self.key, &entry, ttl).await {
                    Ok(l) => {
                        *self.lease.lock() = l;
                        self.rejoins
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "registering again failed; retrying"),
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(ttl / 3);
        }
    }

    /// Follows the cell's members from `revision`; after an error, reads them again
    /// and goes on from there.
    async fn watch_loop(self: Arc<Self>, tx: watch::Sender<Arc<View>>, mut revision: i64) {
        let prefix = self.config.cell_prefix();
        let mut members = tx.borrow().members.clone();
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.etcd.watch_prefix(prefix.as_bytes(), revision).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    loop {
                        let changes = tokio::select! {
                            () = self.stop.cancelled() => return,
                            c = stream.next() => c,
                        };
                        match changes {
                            Some(Ok(changes)) => {
                                revision = apply_changes(&mut members, &prefix, changes, revision);
                                backoff = Duration::from_millis(200);
                                tx.send_replace(Arc::new(View::new(revision, members.clone())));
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "member watch broke; reading the members again");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "member watch failed; retrying"),
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match self.etcd.get_prefix(prefix.as_bytes()).await {
                Ok((rev, kvs)) => {
                    revision = rev;
                    members = members_of(&kvs);
                    tx.send_replace(Arc::new(View::new(revision, members.clone())));
                }
                Err(e) => tracing::warn!(error = %e, "reading the members failed; retrying"),
            }
        }
    }
}

/// Registers `entry` at `key` under a new lease: created if absent, else taken
/// over. The id lives in the node's data dir, which one process uses at a time,
/// so an entry with this id is this node's own earlier start, whose lease has
/// not run out yet (a restart, or a crash, faster than the lease).
async fn register(
    etcd: &Etcd,
    key: &str,
    entry: &MemberEntry,
    ttl: Duration,
) -> anyhow::Result<i64> {
    let value = serde_json::to_vec(entry).expect("a member entry serializes");
    for _ in 0..3 {
        let lease = etcd.grant(ttl).await?;
        let Some(existing) = etcd.put_if_absent(key.as_bytes(), &value, lease).await? else {
            return Ok(lease);
        };
        let old = decode(&existing.value);
        tracing::warn!(
            id = %entry.id,
            old_grpc = old.as_ref().map(|o| o.grpc.as_str()),
            old_incarnation = old.as_ref().map(|o| o.incarnation),
            "this node's id is registered by an earlier start; taking it over"
        );
        // End its lease (its entry goes with it, and it cannot delete ours later),
        // and ours, then create the entry anew.
        if existing.lease != 0 {
            let _ = etcd.revoke(existing.lease).await;
        } else {
            let _ = etcd.delete(key.as_bytes()).await;
        }
        let _ = etcd.revoke(lease).await;
    }
    anyhow::bail!("could not register {key}: it was taken over and over")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_its_id_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(node_id(dir.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(node_id(other.path()).unwrap(), a);
    }

    #[test]
    fn weights_follow_capacity_by_a_fixed_unit() {
        const TIB: u64 = 1 << 40;
        let by_tib = ClusterConfig {
            weight_unit: Some(strata_tiers::ByteSize(TIB)),
            ..ClusterConfig::default()
        };
        assert_eq!(ClusterConfig::default().weight_for(8 * TIB), 1);
        assert_eq!(by_tib.weight_for(8 * TIB), 8);
        assert_eq!(by_tib.weight_for(3 * TIB + TIB / 2), 4, "rounded");
        assert_eq!(by_tib.weight_for(TIB / 4), 1, "at least 1");
        assert_eq!(by_tib.weight_for(u64::MAX), 1024, "at most 1024");
        let fixed = ClusterConfig {
            weight: Some(3),
            ..by_tib
        };
        assert_eq!(fixed.weight_for(8 * TIB), 3, "an explicit weight wins");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let ok = ClusterConfig::default();
        assert!(ok.validate().is_ok());
        assert!(!ok.enabled());
        let bad = ClusterConfig {
            name: "a/b".into(),
            ..ClusterConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("cluster.name"));
        let bad = ClusterConfig {
            lease_ttl_s: 1,
            ..ClusterConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("cluster.lease_ttl_s")
        );
        let bad = ClusterConfig {
            weight: Some(0),
            ..ClusterConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("cluster.weight"));
        let bad = ClusterConfig {
            weight_unit: Some(strata_tiers::ByteSize(0)),
            ..ClusterConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("cluster.weight_unit")
        );
        for (copies, acks, field) in [
            (0, None, "copies"),
            (9, None, "copies"),
            (2, Some(3), "acks"),
            (2, Some(0), "acks"),
        ] {
            let bad = ClusterConfig {
                replicas: [("kv".to_owned(), Replication { copies, acks })].into(),
                ..ClusterConfig::default()
            };
            assert!(
                bad.validate()
                    .unwrap_err()
                    .starts_with(&format!("cluster.replicas.kv.{field}")),
                "{copies} {acks:?}"
            );
        }
        let ok = ClusterConfig {
            replicas: [(
                "kv".to_owned(),
                Replication {
                    copies: 3,
                    acks: Some(2),
                },
            )]
            .into(),
            ..ClusterConfig::default()
        };
        ok.validate().unwrap();
        assert_eq!(ok.replication("kv").acks(), 2);
        assert_eq!(ok.replication("obj"), Replication::default());
    }

    #[test]
    fn a_view_places_on_its_active_members_only() {
        let entry = |id: &str, state| MemberEntry {
            version: 1,
            id: id.into(),
            incarnation: 1,
            grpc: "127.0.0.1:1".into(),
            data: None,
            rdma: false,
            cell: "default".into(),
            zone: String::new(),
            weight: 1,
            dram_bytes: 0,
            nvme_bytes: 0,
            state,
        };
        let members = [
            entry("a", MemberState::Active),
            entry("b", MemberState::Draining),
            entry("c", MemberState::Joining),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let v = View::new(7, members);
        assert_eq!(v.count(MemberState::Active), 1);
        assert_eq!(v.placement.members().len(), 1);
        assert_eq!(v.placement.owner(b"anything").unwrap().id, "a");
        assert!(decode(b"{not json").is_none());
        let mut bad = entry("x", MemberState::Active);
        bad.version = 2;
        assert!(decode(&serde_json::to_vec(&bad).unwrap()).is_none());
        let mut heavy = entry("y", MemberState::Active);
        heavy.weight = strata_proto::placement::MAX_WEIGHT + 1;
        assert!(decode(&serde_json::to_vec(&heavy).unwrap()).is_none());
        for st in MemberState::LIST {
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                serde_json::json!(st.as_str())
            );
        }
    }
}
