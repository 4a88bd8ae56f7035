//! Peer reads (`docs/cluster.md`): real server processes in one cluster on a real
//! etcd, sharing one origin (a real Azurite behind a counting proxy). Whichever
//! node a reader asks, a page not yet in the cluster is read from the origin once,
//! by its owner; every other node fills it from that owner.

#[path = "../../tiers/tests/common/azurite.rs"]
mod azurite;
#[path = "../../tiers/tests/common/faultproxy.rs"]
mod faultproxy;
#[path = "../../tiers/tests/common/pattern.rs"]
mod pattern;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::placement::{Member, Placement};
use strata_server::testing::{EtcdProcess, ServerProcess, sample, scrape};
use strata_tiers::{BlobTier, Key, PutOptions, Tier};
use strata_training_cache::loader::{Loader, LoaderConfig, fetch_manifest};
use strata_training_cache::{PlanSpec, Position};
use strata_transport::data::{CarrierChoice, DataClient, DataEndpoint, DataOptions};
use strata_transport::{Client, ClientOptions, proto};

use self::azurite::Azurite;
use self::faultproxy::FaultProxy;
use self::pattern::pattern;

const BIN: &str = env!("CARGO_BIN_EXE_strata-server");

/// A node's config file: a Blob origin through the proxy, 4 MiB pages read in runs
/// of 16 MiB (so a 6 MiB shard is one origin read), unless `extra` (more TOML)
/// says otherwise.
fn write_config(dir: &Path, proxy: &FaultProxy, az: &Azurite, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = proxy.config(az, "origin");
    let toml = format!(
        r#"
[dram]
capacity = "96MiB"

[nvme]
capacity = "256MiB"

[origin]
kind = "blob"

[origin.blob]
endpoint = "{endpoint}"
container = "origin"
api_version = "{api}"

[origin.blob.auth]
kind = "sas"
token = "{sas}"

{extra}
"#,
        endpoint = cfg.endpoint,
        api = cfg.api_version.clone().unwrap_or_default(),
        sas = az.sas(),
    );
    let path = dir.join("strata.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn start(dir: &Path, config: &Path, etcd: &EtcdProcess) -> ServerProcess {
    start_configured(Path::new(BIN), "127.0.0.1", dir, config, etcd)
}

/// A node of the test's cluster (a lease of 2 s), its listeners on `ip` (and
/// advertising it), started through `bin` with `config`.
fn start_configured(
    bin: &Path,
    ip: &str,
    dir: &Path,
    config: &Path,
    etcd: &EtcdProcess,
) -> ServerProcess {
    ServerProcess::start_on(
        ip,
        bin,
        dir,
        &dir.join("server.log"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--etcd",
            &etcd.url,
            "--cluster",
            "reads",
            "--advertise",
            ip,
        ],
        &[("STRATA__CLUSTER__LEASE_TTL_S", "2")],
    )
}

/// Waits (polling every 50 ms) until `check` holds, failing after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn raw_tier(az: &Azurite, container: &str) -> BlobTier {
    let mut cfg = az.config(container);
    cfg.raw_names = true;
    let t = BlobTier::open(cfg).await.unwrap();
    t.ensure_container().await.unwrap();
    t
}

/// Whether the node knows job `job`'s plan (asked as the job's lead asks, so the
/// question itself goes no further).
async fn knows(c: &Client, version: &str, job: u64) -> bool {
    let mut r = tonic::Request::new(proto::ProgressRequest {
        name: "ds".into(),
        version: version.into(),
        job_id: job,
        ..Default::default()
    });
    r.metadata_mut().insert(
        "x-strata-plan-hop",
        tonic::metadata::MetadataValue::from_static("final"),
    );
    proto::datasets_client::DatasetsClient::new(c.channel().clone())
        .progress(r)
        .await
        .unwrap()
        .into_inner()
        .known
}

async fn counter(p: &ServerProcess, name: &str) -> u64 {
    sample(&scrape(p.metrics).await, name)
}

const SHARDS: usize = 12;

/// Three nodes on a real etcd sharing a real Azurite origin behind a counting
/// proxy, and a dataset of 12 shards of 6 MiB added on node 0 and known to all.
struct Fixture {
    nodes: Vec<ServerProcess>,
    clients: Vec<Client>,
    shards: Vec<Bytes>,
    m: strata_training_cache::manifest::Manifest,
    proxy: FaultProxy,
    /// More of each node's config file.
    extra: String,
    _etcd: EtcdProcess,
    _az: Azurite,
    _root: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with("", 0).await
    }

    /// [`Self::start`] with `extra` in each node's config file, and the dataset
    /// added with origin reads `concurrency` at a time (0: the default).
    async fn start_with(extra: &str, concurrency: u32) -> Self {
        let az = Azurite::start();
        let proxy = FaultProxy::start(az.port, 0, "").await;
        let etcd = EtcdProcess::start().await;
        let data = raw_tier(&az, "training").await;
        let shards: Vec<Bytes> = (0..SHARDS).map(|i| pattern(i as u64, 6 << 20)).collect();
        for (i, v) in shards.iter().enumerate() {
            let key = Key::new("shard", "", format!("ds/train/{i:02}.tar")).unwrap();
            data.put(&key, v.clone(), &PutOptions::default())
                .await
                .unwrap();
        }
        let _origin = raw_tier(&az, "origin").await;

        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<ServerProcess> = (0..3)
            .map(|i| {
                let dir = root.path().join(format!("n{i}"));
                let config = write_config(&dir, &proxy, &az, extra);
                start(&dir, &config, &etcd)
            })
            .collect();
        for n in &nodes {
            until(
                "every node's view of three",
                Duration::from_secs(10),
                || async { counter(n, "strata_cluster_members{state=\"active\"}").await == 3 },
            )
            .await;
        }
        let mut clients = Vec::new();
        for n in &nodes {
            clients.push(
                Client::connect(&n.grpc, ClientOptions::default())
                    .await
                    .unwrap(),
            );
        }

        // Added on one node; the others find the version in the shared origin.
        let source = format!(
            "http://127.0.0.1:{}/{}/training/ds/",
            proxy.port,
            azurite::ACCOUNT
        );
        proto::datasets_client::DatasetsClient::new(clients[0].channel().clone())
            .add(proto::DatasetAddRequest {
                name: "ds".into(),
                source,
                concurrency,
            })
            .await
            .unwrap();
        let m = fetch_manifest(&clients[0], "ds", "").await.unwrap();
        assert_eq!(m.shards.len(), SHARDS);
        for c in &clients[1..] {
            assert_eq!(fetch_manifest(c, "ds", &m.version).await.unwrap(), m);
        }
        Self {
            nodes,
            clients,
            shards,
            m,
            proxy,
            extra: extra.to_owned(),
            _etcd: etcd,
            _az: az,
            _root: root,
        }
    }

    /// Starts one more node sharing the origin; its index.
    fn start_node(&mut self) -> usize {
        let i = self.nodes.len();
        // A directory of its own, so a new node id, even after one was dropped.
        let dir = (0..)
            .map(|j| self._root.path().join(format!("n{i}-{j}")))
            .find(|d| !d.exists())
            .unwrap();
        let config = write_config(&dir, &self.proxy, &self._az, &self.extra);
        self.nodes.push(start(&dir, &config, &self._etcd));
        i
    }

    /// The index of the node whose member entry has gRPC address `grpc`.
    fn node_at(&self, grpc: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.grpc.rsplit(':').next() == grpc.rsplit(':').next())
            .expect("the member is one of the nodes")
    }

    /// Each node's index by member id, and the placement over the three.
    async fn placement(&self) -> (HashMap<String, usize>, Placement) {
        let view = self.clients[0].members().await.unwrap();
        let placement = Placement::new(
            view.members
                .iter()
                .filter(|x| x.state == "active")
                .map(|x| Member::new(x.id.clone(), x.weight)),
        )
        .unwrap();
        let ids = view
            .members
            .iter()
            .map(|x| (x.id.clone(), self.node_at(&x.grpc)))
            .collect();
        (ids, placement)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_reading_one_dataset_read_each_page_from_the_origin_once() {
    let f = Fixture::start().await;
    let Fixture {
        nodes,
        clients,
        shards,
        m,
        proxy,
        ..
    } = f;

    // A plan registered with one node reaches every member (through the job's
    // lead), and so does its end.
    let rpc = |c: &Client| proto::datasets_client::DatasetsClient::new(c.channel().clone());
    rpc(&clients[1])
        .register_plan(proto::RegisterPlanRequest {
            name: "ds".into(),
            version: m.version.clone(),
            job_id: 77,
            seed: 5,
            shuffle: true,
            world_size: 3,
            window: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    for c in &clients {
        until(
            "the plan on every member",
            Duration::from_secs(10),
            || async { knows(c, &m.version, 77).await },
        )
        .await;
    }
    rpc(&clients[2])
        .unregister_plan(proto::ProgressRequest {
            name: "ds".into(),
            version: m.version.clone(),
            job_id: 77,
            ..Default::default()
        })
        .await
        .unwrap();
    for c in &clients {
        until(
            "the plan gone from every member",
            Duration::from_secs(10),
            || async { !knows(c, &m.version, 77).await },
        )
        .await;
    }

    // A peer's request is answered by the node asked, never forwarded: a node
    // that does not own shard 0, asked for it as a peer asks, reads the origin.
    let view = clients[0].members().await.unwrap();
    let placement = Placement::new(
        view.members
            .iter()
            .filter(|x| x.state == "active")
            .map(|x| Member::new(x.id.clone(), x.weight)),
    )
    .unwrap();
    let key0 = m.shard_key(0);
    let owner = placement.owner(key0.as_bytes()).unwrap().id.clone();
    let other = view.members.iter().find(|x| x.id != owner).unwrap();
    let asked_node = nodes
        .iter()
        .position(|n| n.grpc.rsplit(':').next() == other.grpc.rsplit(':').next())
        .expect("the member is one of the nodes");
    let as_peer = DataClient::connect(
        DataEndpoint {
            tcp: Some(other.data.clone()),
            ..DataEndpoint::default()
        },
        DataOptions {
            carrier: CarrierChoice::Tcp,
            peer: true,
            ..DataOptions::default()
        },
    )
    .await
    .unwrap();
    let before = proxy.seen();
    assert!(as_peer.get(&key0).await.unwrap().unwrap() == shards[0]);
    assert_eq!(
        proxy.seen() - before,
        1,
        "read from the origin by the node asked"
    );
    let n = &nodes[asked_node];
    assert_eq!(
        counter(n, "strata_cluster_peer_reads_total{outcome=\"answered\"}").await,
        0
    );
    assert_eq!(
        counter(n, "strata_cluster_peer_reads_total{outcome=\"failed\"}").await,
        0
    );
    assert_eq!(
        counter(n, "strata_cluster_peer_requests_served_total").await,
        1
    );

    // Every node reads every shard, all at once, each in its own order.
    let before = proxy.seen();
    let mut readers = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for lane in 0..2 {
            let c = c.clone();
            let keys: Vec<(usize, Key)> = (0..SHARDS)
                .map(|i| (i * 5 + n * 7 + lane) % SHARDS)
                .map(|i| (i, m.shard_key(i)))
                .collect();
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for (i, key) in keys {
                    got.push((i, c.get(&key).await.unwrap().expect("a shard")));
                }
                got
            }));
        }
    }
    for r in readers {
        for (i, v) in r.await.unwrap() {
            assert!(v == shards[i], "shard {i} read intact");
        }
    }
    // Each shard (one run of pages) read from the origin once in the whole
    // cluster; shard 0 is in the cluster already (read above), and its owner may
    // get it from that node (an earlier owner, in the list without the owner).
    let origin_reads = proxy.seen() - before;
    assert!(
        origin_reads == SHARDS || origin_reads == SHARDS - 1,
        "{origin_reads} origin reads for {SHARDS} shards"
    );

    // The owners answered the rest: each node asked for the shards it does not
    // own, and what was asked was served.
    let mut asked = 0;
    let mut served = 0;
    for n in &nodes {
        // (Answers by an earlier owner left out: a node that starts asks the
        // others for what it owns before reading the origin.)
        let a = counter(n, "strata_cluster_peer_reads_total{outcome=\"answered\"}").await
            - counter(n, "strata_cluster_neighbour_reads_total").await;
        let f = counter(n, "strata_cluster_peer_reads_total{outcome=\"failed\"}").await;
        assert_eq!(f, 0, "no peer read fell back to the origin");
        assert!(
            a > 0,
            "every node owns some shards and reads the others' from them"
        );
        asked += a;
        served += counter(n, "strata_cluster_peer_requests_served_total").await;
    }
    assert!(
        served > asked,
        "every peer read asked was served (and the one above, and earlier owners' answers)"
    );
    assert_eq!(
        asked as usize,
        2 * SHARDS - 1,
        "each node asked once for each shard it does not own (one run of pages), \
         but the node that read shard 0 above"
    );

    // Read again: every node has its own copy now (the `shard` policy keeps one).
    let before = proxy.seen();
    for c in &clients {
        for (i, v) in shards.iter().enumerate() {
            assert!(c.get(&m.shard_key(i)).await.unwrap().unwrap() == *v);
        }
    }
    assert_eq!(proxy.seen(), before, "warm reads touch no origin");
    let served_after: u64 = {
        let mut s = 0;
        for n in &nodes {
            s += counter(n, "strata_cluster_peer_requests_served_total").await;
        }
        s
    };
    assert_eq!(served_after, served, "warm reads are local hits");
    drop(nodes);
}

/// Three nodes with their own local origins (the `kv` namespace has none).
fn start_plain(dir: &Path, etcd: &EtcdProcess) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    ServerProcess::start(
        Path::new(BIN),
        dir,
        &dir.join("server.log"),
        &[
            "--etcd",
            &etcd.url,
            "--cluster",
            "routes",
            "--advertise",
            "127.0.0.1",
            "--dram-capacity",
            "64MiB",
            "--nvme-capacity",
            "128MiB",
        ],
        &[("STRATA__CLUSTER__LEASE_TTL_S", "2")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_send_each_key_to_its_owner_and_ask_owners_in_parallel() {
    const KEYS: usize = 60;
    let etcd = EtcdProcess::start().await;
    let root = tempfile::tempdir().unwrap();
    let nodes: Vec<ServerProcess> = (0..3)
        .map(|i| start_plain(&root.path().join(format!("n{i}")), &etcd))
        .collect();
    for n in &nodes {
        until(
            "every node's view of three",
            Duration::from_secs(10),
            || async { counter(n, "strata_cluster_members{state=\"active\"}").await == 3 },
        )
        .await;
    }
    let routed = Client::connect(&nodes[0].grpc, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(routed.routed_members(), Some(3));
    let direct = ClientOptions {
        route: false,
        ..ClientOptions::default()
    };
    let mut each = Vec::new();
    for n in &nodes {
        let c = Client::connect(&n.grpc, direct.clone()).await.unwrap();
        assert_eq!(c.routed_members(), None);
        each.push(c);
    }

    // Puts through node 0's client land on each key's owner, and only there.
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::new("kv", "t", format!("prompt/chunk-{i:04}")).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        routed.put(k, pattern(i as u64, 10_000 + i)).await.unwrap();
    }
    let view = each[0].members().await.unwrap();
    let placement = Placement::new(
        view.members
            .iter()
            .map(|x| Member::new(x.id.clone(), x.weight)),
    )
    .unwrap();
    let node_of = |id: &str| {
        let grpc = &view.members.iter().find(|m| m.id == id).unwrap().grpc;
        nodes
            .iter()
            .position(|n| n.grpc.rsplit(':').next() == grpc.rsplit(':').next())
            .unwrap()
    };
    let mut held = [0usize; 3];
    for (n, c) in each.iter().enumerate() {
        let present = c.contains(&keys).await.unwrap();
        for (k, p) in keys.iter().zip(present) {
            let owner = node_of(&placement.owner(k.as_bytes()).unwrap().id);
            assert_eq!(
                p,
                owner == n,
                "{} on node {n}, owned by {owner}",
                k.display_path()
            );
            held[n] += usize::from(p);
        }
    }
    assert!(
        held.iter().all(|&h| h > 0),
        "every node owns some keys: {held:?}"
    );

    // Another node's client reads them back from their owners, one by one and in
    // one batch split by owner.
    let other = Client::connect(&nodes[2].grpc, ClientOptions::default())
        .await
        .unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert!(other.get(k).await.unwrap().unwrap() == pattern(i as u64, 10_000 + i));
    }
    let got = other.mget(&keys).await.unwrap();
    for (i, v) in got.into_iter().enumerate() {
        assert!(v.unwrap() == pattern(i as u64, 10_000 + i));
    }

    // A prompt's chain: the longest prefix present on every owner, asked of all
    // of them at once.
    let mut chain = keys.clone();
    chain.push(Key::new("kv", "t", "prompt/not-stored").unwrap());
    assert_eq!(other.match_prefix(&chain).await.unwrap(), KEYS as u32);
    assert!(other.delete(&keys[30]).await.unwrap());
    assert_eq!(other.match_prefix(&chain).await.unwrap(), 30);
    let present = routed.contains(&keys).await.unwrap();
    assert_eq!(present.iter().filter(|p| !**p).count(), 1);
    assert!(!present[30]);
    drop(nodes);
}

/// Runs a preload through `c` to its end; its last progress message.
async fn preload(c: &Client) -> proto::PreloadProgress {
    let mut s = proto::datasets_client::DatasetsClient::new(c.channel().clone())
        .preload(proto::PreloadRequest {
            name: "ds".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(p) = s.message().await.unwrap() {
        last = Some(p);
    }
    last.expect("at least one progress message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preload_is_spread_over_the_owners_and_resumes() {
    let f = Fixture::start().await;
    // Node 1 finds the dataset's current version in the index node 0 wrote.
    assert_eq!(fetch_manifest(&f.clients[1], "ds", "").await.unwrap(), f.m);
    let before = f.proxy.seen();
    let p = preload(&f.clients[1]).await;
    assert_eq!(
        (p.shards_done, p.shards_total, p.bytes_done, p.bytes_total),
        (
            SHARDS as u64,
            SHARDS as u64,
            (SHARDS as u64) * (6 << 20),
            (SHARDS as u64) * (6 << 20)
        ),
    );
    assert_eq!(p.bytes_cached, 0, "nothing was cached before");
    assert_eq!(
        f.proxy.seen() - before,
        SHARDS,
        "each shard read once, by its owner"
    );

    // Each shard is on its owner, and only there: the node asked kept no copy of
    // the others'.
    let (ids, placement) = f.placement().await;
    let keys: Vec<Key> = (0..SHARDS).map(|i| f.m.shard_key(i)).collect();
    let direct = ClientOptions {
        route: false,
        ..ClientOptions::default()
    };
    for (n, node) in f.nodes.iter().enumerate() {
        let c = Client::connect(&node.grpc, direct.clone()).await.unwrap();
        for (k, present) in keys.iter().zip(c.contains(&keys).await.unwrap()) {
            let owner = ids[&placement.owner(k.as_bytes()).unwrap().id];
            assert_eq!(present, owner == n, "{} on node {n}", k.display_path());
        }
    }

    // Again: everything is cached, nothing is read.
    let p = preload(&f.clients[0]).await;
    assert_eq!(p.shards_done, SHARDS as u64);
    assert_eq!(
        p.bytes_cached, p.bytes_total,
        "a second preload finds it all cached"
    );
    assert_eq!(f.proxy.seen() - before, SHARDS);

    // And the readers then read from the owners, not the origin.
    for (i, v) in f.shards.iter().enumerate() {
        assert!(f.clients[2].get(&keys[i]).await.unwrap().unwrap() == *v);
    }
    assert_eq!(f.proxy.seen() - before, SHARDS);
}

/// Pages of 1 MiB read in runs of 1 MiB: a 6 MiB shard is six runs.
const SMALL_RUNS: &str = "[store]\npage_size = \"1MiB\"\norigin_read_size = \"1MiB\"\n";
const RUNS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_of_a_shard_are_spread_over_their_owners() {
    let f = Fixture::start_with(SMALL_RUNS, 0).await;
    let (ids, placement) = f.placement().await;
    let keys: Vec<Key> = (0..SHARDS).map(|i| f.m.shard_key(i)).collect();
    // Runs each node owns, by `run_key` (docs/cluster.md).
    let mut owned = [0u64; 3];
    for k in &keys {
        for r in 0..RUNS {
            let place = strata_proto::placement::run_key(k.as_bytes(), r);
            owned[ids[&placement.owner(&place).unwrap().id]] += 1;
        }
    }
    assert!(
        owned.iter().all(|&n| n > 0),
        "every node owns some of the 72 runs: {owned:?}"
    );
    let each = |name: &'static str| {
        let nodes = &f.nodes;
        async move {
            let mut v = Vec::new();
            for n in nodes {
                v.push(counter(n, name).await);
            }
            v
        }
    };
    let served = || each("strata_cluster_peer_requests_served_total");
    let answered = || each("strata_cluster_peer_reads_total{outcome=\"answered\"}");

    // A preload through node 1: each owner reads its own runs from the origin,
    // once, and fills none from another (the node asked does not fill the others'
    // runs). (A node that joined moments ago asks the runs' earlier owners first,
    // who hold nothing here.)
    let (before, answered0) = (f.proxy.seen(), answered().await);
    let p = preload(&f.clients[1]).await;
    assert_eq!(
        (p.shards_done, p.shards_total, p.bytes_done, p.bytes_cached),
        (SHARDS as u64, SHARDS as u64, p.bytes_total, 0),
    );
    // (Node 1 also reads the index of datasets to find the current version.)
    let reads: Vec<String> = f.proxy.requests()[before..]
        .iter()
        .filter(|r| r.contains("/training/"))
        .cloned()
        .collect();
    let distinct: std::collections::HashSet<_> = reads.iter().collect();
    assert_eq!(
        (reads.len(), distinct.len()),
        (SHARDS * RUNS as usize, SHARDS * RUNS as usize),
        "each run read once from the origin: {reads:?}"
    );
    assert_eq!(
        answered().await,
        answered0,
        "no run filled from another node"
    );

    // Every shard read through node 0 (a local namespace: its own copy): each run
    // it does not own comes from that run's owner, and the origin is not read.
    let (before, served0) = (f.proxy.seen(), served().await);
    let asked = counter(
        &f.nodes[0],
        "strata_cluster_peer_reads_total{outcome=\"answered\"}",
    )
    .await;
    for (i, v) in f.shards.iter().enumerate() {
        assert!(f.clients[0].get(&keys[i]).await.unwrap().unwrap() == *v);
    }
    assert_eq!(
        f.proxy.seen() - before,
        0,
        "{:?}",
        &f.proxy.requests()[before..]
    );
    let served1 = served().await;
    for n in 1..3 {
        assert_eq!(
            served1[n] - served0[n],
            owned[n],
            "node {n} served each run it owns"
        );
    }
    assert_eq!(
        counter(
            &f.nodes[0],
            "strata_cluster_peer_reads_total{outcome=\"answered\"}"
        )
        .await
            - asked,
        owned[1] + owned[2],
        "node 0 asked the owner of each run it does not own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preload_stopped_midway_resumes_reading_no_run_twice() {
    // Runs of 1 MiB read one at a time per node from a slow origin: a preload
    // that takes a few seconds.
    let f = Fixture::start_with(SMALL_RUNS, 1).await;
    let all = SHARDS * RUNS as usize;
    let training = || {
        f.proxy
            .requests()
            .into_iter()
            .filter(|r| r.contains("/training/"))
            .collect::<Vec<_>>()
    };
    let before = training().len();
    f.proxy.set_delay(Duration::from_millis(50));
    let stream = proto::datasets_client::DatasetsClient::new(f.clients[1].channel().clone())
        .preload(proto::PreloadRequest {
            name: "ds".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    until(
        "a sixth of the runs read",
        Duration::from_secs(30),
        || async { training().len() - before >= all / 6 },
    )
    .await;
    // Its client gone, every member stops (a read in flight may still end).
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut = training().len() - before;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(training().len() - before, cut, "the members stopped");
    assert!(
        cut < all,
        "the preload was stopped midway ({cut} of {all} runs read)"
    );

    // Run again: it warms the rest, and what was read is not read again (but a
    // read cut in flight, at most one per node).
    f.proxy.set_delay(Duration::ZERO);
    let p = preload(&f.clients[1]).await;
    assert_eq!(
        (p.shards_done, p.bytes_done),
        (SHARDS as u64, p.bytes_total)
    );
    assert!(
        p.bytes_cached > 0 && p.bytes_cached < p.bytes_total,
        "the second run found part of it cached: {p:?}"
    );
    let reads = &training()[before..];
    let distinct: std::collections::HashSet<_> = reads.iter().collect();
    assert_eq!(distinct.len(), all, "every run read");
    assert!(
        reads.len() <= all + 3,
        "{} reads of {all} runs: only a read cut in flight is read again",
        reads.len()
    );
}

/// One rank's loader over two epochs through `c`, checking every shard's bytes;
/// after `kill_after` shards, `on_the_way` runs once.
async fn two_epochs(
    c: Arc<Client>,
    m: Arc<strata_training_cache::manifest::Manifest>,
    shards: Arc<Vec<Bytes>>,
    rank: u32,
    kill_after: Option<(usize, tokio::sync::oneshot::Sender<()>)>,
) -> usize {
    let spec = PlanSpec::new(SHARDS as u32, 11, 2);
    let mut l = Loader::start(
        c,
        m,
        spec.rank(rank),
        Position::default(),
        2,
        LoaderConfig {
            window_items: 2,
            job_id: 9,
            ..LoaderConfig::default()
        },
        None,
    )
    .await
    .unwrap();
    let mut kill_after = kill_after;
    let mut n = 0;
    while let Some(s) = l.next().await {
        let s = s.expect("no failed read, whatever node dies");
        assert!(
            s.bytes == shards[s.shard as usize],
            "shard {} intact",
            s.shard
        );
        n += 1;
        if kill_after.as_ref().is_some_and(|(k, _)| n == *k) {
            let (_, tx) = kill_after.take().unwrap();
            let _ = tx.send(());
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_a_two_epoch_run_costs_only_its_own_pages() {
    // (Bound first: the fields left out stay alive in `f` to the end.)
    let f = Fixture::start().await;
    let Fixture {
        mut nodes,
        clients,
        shards,
        m,
        proxy,
        ..
    } = f;
    // Which shards the victim owns.
    let (placement, victim_id) = placement_and_id(&clients[0], &nodes[1]).await;
    let owned = (0..SHARDS)
        .filter(|&i| placement.owner(m.shard_key(i).as_bytes()).unwrap().id == victim_id)
        .count();

    // Ranks 0 and 1 on nodes 0 and 2; node 1 is SIGKILLed in the first epoch.
    let shards = Arc::new(shards);
    let before = proxy.seen();
    let m = Arc::new(m);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let r0 = tokio::spawn(two_epochs(
        Arc::new(clients[0].clone()),
        m.clone(),
        shards.clone(),
        0,
        Some((3, tx)),
    ));
    let r1 = tokio::spawn(two_epochs(
        Arc::new(clients[2].clone()),
        m.clone(),
        shards.clone(),
        1,
        None,
    ));
    rx.await.expect("a loader failed before the kill");
    nodes.remove(1).kill();
    let (n0, n1) = (r0.await.unwrap(), r1.await.unwrap());
    assert_eq!(
        n0 + n1,
        2 * SHARDS,
        "the run completes: every shard, both epochs"
    );
    let extra = proxy.seen() - before - SHARDS;
    assert!(
        extra <= 2 * owned,
        "extra origin reads ({extra}) are only of the {owned} shards the dead node owned, \
         at most once per surviving node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_call() {
    const KEYS: usize = 40;
    let etcd = EtcdProcess::start().await;
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut nodes: Vec<ServerProcess> = dirs.iter().map(|d| start_plain(d, &etcd)).collect();
    let active = |nodes: &[ServerProcess]| {
        let addrs: Vec<_> = nodes.iter().map(|n| n.metrics).collect();
        async move {
            for a in addrs {
                if sample(&scrape(a).await, "strata_cluster_members{state=\"active\"}") != 3 {
                    return false;
                }
            }
            true
        }
    };
    until("three active members", Duration::from_secs(10), || {
        active(&nodes)
    })
    .await;
    let client = Client::connect(&nodes[0].grpc, ClientOptions::default())
        .await
        .unwrap();
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::new("kv", "t", format!("roll/{i:03}")).unwrap())
        .collect();
    let value = |i: usize| pattern(1000 + i as u64, 20_000 + i);

    // Writers and readers run while each node in turn stops (SIGTERM) and comes
    // back; every call must succeed, every hit must be intact.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for lane in 0..2 {
        let (client, keys, stop) = (client.clone(), keys.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut calls, mut hits) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut i = lane;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let k = &keys[i % KEYS];
                client
                    .put(k, value(i % KEYS))
                    .await
                    .unwrap_or_else(|e| panic!("put {} failed: {e}", k.display_path()));
                let k2 = &keys[(i * 7 + 3) % KEYS];
                if let Some(v) = client
                    .get(k2)
                    .await
                    .unwrap_or_else(|e| panic!("get {} failed: {e}", k2.display_path()))
                {
                    assert!(v == value((i * 7 + 3) % KEYS), "a hit is intact");
                    hits += 1;
                }
                let _ = client.mget(&keys[..10]).await.expect("mget");
                calls += 3;
                i += 2;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (calls, hits)
        }));
    }
    for (i, dir) in dirs.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = nodes.remove(i).terminate(Duration::from_secs(15));
        assert!(status.success(), "{status:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes.insert(i, start_plain(dir, &etcd));
        until(
            "three active members again",
            Duration::from_secs(15),
            || active(&nodes),
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut hits) = (0, 0);
    for l in load {
        let (c, h) = l.await.unwrap();
        calls += c;
        hits += h;
    }
    assert!(calls > 30, "{calls} calls under the restarts");
    assert!(hits > 0, "{hits} hits");
    drop(nodes);
}

/// A node whose origin is a directory shared by every node of the test.
fn start_shared(dir: &Path, origin: &Path, etcd: &EtcdProcess) -> ServerProcess {
    start_on(Path::new(BIN), "127.0.0.1", dir, origin, etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_stale_nvme_never_serves_an_old_value() {
    let etcd = EtcdProcess::start().await;
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut nodes: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| start_shared(d, &origin, &etcd))
        .collect();
    let all_active = |nodes: &[ServerProcess], n: u64| {
        let addrs: Vec<_> = nodes.iter().map(|p| p.metrics).collect();
        async move {
            for a in addrs {
                if sample(&scrape(a).await, "strata_cluster_members{state=\"active\"}") != n {
                    return false;
                }
            }
            true
        }
    };
    until("three active", Duration::from_secs(10), || {
        all_active(&nodes, 3)
    })
    .await;
    let client = Client::connect(&nodes[0].grpc, ClientOptions::default())
        .await
        .unwrap();
    // Values owned by node 1 (node 0 stays up: the client's node).
    let keys = owned_keys(&client, &nodes[1], "doc").await;
    for (i, k) in keys.iter().enumerate() {
        client.put(k, pattern(i as u64, 300_000)).await.unwrap();
    }
    // The owner keeps them (DRAM, and NVMe when it stops).
    let status = nodes.remove(1).terminate(Duration::from_secs(15));
    assert!(status.success());
    until("two active", Duration::from_secs(10), || {
        all_active(&nodes, 2)
    })
    .await;
    client.refresh_routes().await.unwrap();
    // Rewritten while it is away: through the next owner, to the shared origin.
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, pattern(500 + i as u64, 200_000))
            .await
            .unwrap();
    }
    nodes.insert(1, start_shared(&dirs[1], &origin, &etcd));
    until("three active again", Duration::from_secs(10), || {
        all_active(&nodes, 3)
    })
    .await;
    assert_rewritten(&client, &keys, 500, 200_000, "while the owner was away").await;
    drop(nodes);
}

/// The placement over the members `client` sees, and `node`'s id among them.
async fn placement_and_id(client: &Client, node: &ServerProcess) -> (Placement, String) {
    let view = client.members().await.unwrap();
    let placement = Placement::new(
        view.members
            .iter()
            .map(|x| Member::new(x.id.clone(), x.weight)),
    )
    .unwrap();
    let id = view
        .members
        .iter()
        .find(|x| x.grpc == node.grpc)
        .unwrap_or_else(|| panic!("{} in the member list", node.grpc))
        .id
        .clone();
    (placement, id)
}

/// Eight `obj` keys named `prefix/NNN` that `node` owns.
async fn owned_keys(client: &Client, node: &ServerProcess, prefix: &str) -> Vec<Key> {
    let (placement, id) = placement_and_id(client, node).await;
    let keys: Vec<Key> = (0..300)
        .map(|i| Key::new("obj", "t", format!("{prefix}/{i:03}")).unwrap())
        .filter(|k| placement.owner(k.as_bytes()).unwrap().id == id)
        .take(8)
        .collect();
    assert_eq!(keys.len(), 8);
    keys
}

/// Every key reads as rewritten (`pattern(seed + i, len)`), never as an old copy.
async fn assert_rewritten(client: &Client, keys: &[Key], seed: u64, len: usize, when: &str) {
    client.refresh_routes().await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        let v = client.get(k).await.unwrap().expect("the value");
        assert!(
            v == pattern(seed + i as u64, len),
            "{}: the value written {when}, never an old copy",
            k.display_path()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_gets_its_new_keys_from_their_previous_owners() {
    let mut f = Fixture::start().await;
    let before = f.proxy.seen();
    for (i, v) in f.shards.iter().enumerate() {
        assert!(f.clients[0].get(&f.m.shard_key(i)).await.unwrap().unwrap() == *v);
    }
    assert_eq!(
        f.proxy.seen() - before,
        SHARDS,
        "each shard read once, by its owner"
    );

    let changes = counter(&f.nodes[0], "strata_cluster_ownership_changes_total").await;

    // A fourth node joins: it owns some shards now, and holds none. (Its id is
    // random: one that owns none of the 12, a 3% chance, is replaced by another.)
    let mut tries = 0;
    let (n, owned) = loop {
        let n = f.start_node();
        for node in &f.nodes {
            until("four active members", Duration::from_secs(10), || async {
                counter(node, "strata_cluster_members{state=\"active\"}").await == 4
            })
            .await;
        }
        let (ids, placement) = f.placement().await;
        let owned = (0..SHARDS)
            .filter(|&i| ids[&placement.owner(f.m.shard_key(i).as_bytes()).unwrap().id] == n)
            .count();
        if owned > 0 {
            break (n, owned);
        }
        tries += 1;
        assert!(tries < 5, "no joining node owns any of the 12 shards");
        f.nodes.pop().unwrap().kill();
        for node in &f.nodes {
            until("three active members", Duration::from_secs(10), || async {
                counter(node, "strata_cluster_members{state=\"active\"}").await == 3
            })
            .await;
        }
    };

    assert!(
        counter(&f.nodes[0], "strata_cluster_ownership_changes_total").await > changes,
        "node 0 counted the change of owners"
    );
    let share = scrape(f.nodes[n].metrics).await;
    assert!(
        share.contains("strata_cluster_owned_share 0.25"),
        "the fourth of four members of weight 1 owns a quarter of the keys"
    );

    // Read through the new node: its own shards come from their previous owners,
    // the others from their owners; the origin is not read again.
    let c = Client::connect(&f.nodes[n].grpc, ClientOptions::default())
        .await
        .unwrap();
    // (Its manifest is read from the origin once; the shards are what counts.)
    assert_eq!(fetch_manifest(&c, "ds", &f.m.version).await.unwrap(), f.m);
    let before = f.proxy.seen();
    for (i, v) in f.shards.iter().enumerate() {
        assert!(c.get(&f.m.shard_key(i)).await.unwrap().unwrap() == *v);
    }
    assert_eq!(
        f.proxy.seen() - before,
        0,
        "no shard read from the origin twice while the membership changed: {:?}",
        &f.proxy.requests()[before..]
    );
    let node = &f.nodes[n];
    assert_eq!(
        counter(node, "strata_cluster_neighbour_reads_total").await as usize,
        owned,
        "each shard the new node owns came from its previous owner"
    );
}

/// A node of a cluster keeping `copies` copies of each `kv` value, `acks` of
/// them committed before a put is answered.
fn start_replicated(dir: &Path, etcd: &EtcdProcess, copies: usize, acks: usize) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!("[cluster.replicas.kv]\ncopies = {copies}\nacks = {acks}\n"),
    )
    .unwrap();
    ServerProcess::start(
        Path::new(BIN),
        dir,
        &dir.join("server.log"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--etcd",
            &etcd.url,
            "--cluster",
            "replicas",
            "--advertise",
            "127.0.0.1",
            "--dram-capacity",
            "64MiB",
            "--nvme-capacity",
            "128MiB",
        ],
        &[("STRATA__CLUSTER__LEASE_TTL_S", "2")],
    )
}

/// A client per node that sends every key to that node (no routing), the
/// members as the first one sees them, and their placement.
async fn direct_clients(grpc: &[String]) -> (Vec<Client>, proto::MembersResponse, Placement) {
    let direct = ClientOptions {
        route: false,
        ..ClientOptions::default()
    };
    let mut each = Vec::new();
    for g in grpc {
        each.push(Client::connect(g, direct.clone()).await.unwrap());
    }
    let view = each[0].members().await.unwrap();
    let placement = Placement::new(
        view.members
            .iter()
            .map(|x| Member::new(x.id.clone(), x.weight)),
    )
    .unwrap();
    (each, view, placement)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_values_live_on_their_owners_and_outlive_one() {
    const KEYS: usize = 40;
    let etcd = EtcdProcess::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<ServerProcess>> = (0..3)
        .map(|i| {
            Some(start_replicated(
                &root.path().join(format!("n{i}")),
                &etcd,
                2,
                2,
            ))
        })
        .collect();
    for n in nodes.iter().flatten() {
        until(
            "every node's view of three",
            Duration::from_secs(10),
            || async { counter(n, "strata_cluster_members{state=\"active\"}").await == 3 },
        )
        .await;
    }
    let grpc: Vec<String> = nodes.iter().flatten().map(|n| n.grpc.clone()).collect();
    let routed = Client::connect(&grpc[0], ClientOptions::default())
        .await
        .unwrap();
    let (each, view, placement) = direct_clients(&grpc).await;
    let node_of = |id: &str| {
        let g = &view.members.iter().find(|m| m.id == id).unwrap().grpc;
        grpc.iter()
            .position(|n| n.rsplit(':').next() == g.rsplit(':').next())
            .unwrap()
    };
    let owners = |k: &Key| -> Vec<usize> {
        placement
            .owners(k.as_bytes(), 2)
            .iter()
            .map(|m| node_of(&m.id))
            .collect()
    };

    // Each put is committed on both owners before it is answered, and nowhere else.
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::new("kv", "t", format!("prompt/chunk-{i:04}")).unwrap())
        .collect();
    let value = |i: usize| pattern(i as u64, 50_000 + 1_000 * i);
    for (i, k) in keys.iter().enumerate() {
        routed.put(k, value(i)).await.unwrap();
    }
    for (n, c) in each.iter().enumerate() {
        let present = c.contains(&keys).await.unwrap();
        for (k, p) in keys.iter().zip(present) {
            assert_eq!(
                p,
                owners(k).contains(&n),
                "{} on node {n}",
                k.display_path()
            );
        }
    }
    let total: u64 = {
        let mut t = 0;
        for n in nodes.iter().flatten() {
            t += counter(
                n,
                "strata_cluster_replica_writes_total{outcome=\"committed\"}",
            )
            .await;
        }
        t
    };
    assert_eq!(total, KEYS as u64, "one copy sent per put");

    // A node that owns neither copy reads the value from a copy, and keeps none
    // (it would outlive the owners' next write).
    let (k, i, outsider) = keys
        .iter()
        .enumerate()
        .find_map(|(i, k)| {
            let o = owners(k);
            (0..3).find(|n| !o.contains(n)).map(|n| (k, i, n))
        })
        .unwrap();
    assert!(each[outsider].get(k).await.unwrap().unwrap() == value(i));
    assert!(
        !each[outsider]
            .contains(std::slice::from_ref(k))
            .await
            .unwrap()[0]
    );

    // A delete removes every copy.
    let gone = &keys[KEYS - 1];
    assert!(routed.delete(gone).await.unwrap());
    for (n, c) in each.iter().enumerate() {
        assert!(
            !c.contains(std::slice::from_ref(gone)).await.unwrap()[0],
            "a copy left on node {n}"
        );
    }

    // Node 1 killed: every value is still read intact, at once (from the other
    // copy, while node 1 is still a member) and once node 1 is out.
    nodes[1].take().unwrap().kill();
    for (i, k) in keys[..KEYS - 1].iter().enumerate() {
        assert!(
            routed.get(k).await.unwrap().unwrap() == value(i),
            "{}",
            k.display_path()
        );
    }
    for n in [0, 2] {
        let n = nodes[n].as_ref().unwrap();
        until("node 1 out", Duration::from_secs(10), || async {
            counter(n, "strata_cluster_members{state=\"active\"}").await == 2
        })
        .await;
    }
    routed.refresh_routes().await.unwrap();
    for (i, k) in keys[..KEYS - 1].iter().enumerate() {
        assert!(
            routed.get(k).await.unwrap().unwrap() == value(i),
            "{}",
            k.display_path()
        );
    }
    // New puts land on both of the two members left.
    let more: Vec<Key> = (0..10)
        .map(|i| Key::new("kv", "t", format!("after/chunk-{i:04}")).unwrap())
        .collect();
    for (i, k) in more.iter().enumerate() {
        routed.put(k, value(i)).await.unwrap();
    }
    for n in [0, 2] {
        assert!(each[n].contains(&more).await.unwrap().iter().all(|p| *p));
    }
    drop(nodes);
}

/// A network namespace joined to this one by a veth pair, on a /24 of its own:
/// `host` is this side's address, `inner` the namespace's. Made by the test and
/// removed when dropped; nothing leaves this machine.
struct Netns {
    name: String,
    veth: String,
    inner_veth: String,
    host: String,
    inner: String,
}

impl Netns {
    fn new() -> Self {
        let pid = std::process::id();
        let net = format!("10.213.{}", pid % 250 + 1);
        let me = Self {
            name: format!("strata-pt-{pid}"),
            veth: format!("spt{}h", pid % 100_000),
            inner_veth: format!("spt{}n", pid % 100_000),
            host: format!("{net}.1"),
            inner: format!("{net}.2"),
        };
        // Leftovers of an earlier run that had this pid.
        drop(me.clean());
        run(&["ip", "netns", "add", &me.name]);
        run(&[
            "ip",
            "link",
            "add",
            &me.veth,
            "type",
            "veth",
            "peer",
            "name",
            &me.inner_veth,
            "netns",
            &me.name,
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", me.host),
            "dev",
            &me.veth,
        ]);
        run(&["ip", "link", "set", &me.veth, "up"]);
        me.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", me.inner),
            "dev",
            &me.inner_veth,
        ]);
        me.exec(&["ip", "link", "set", &me.inner_veth, "up"]);
        me.exec(&["ip", "link", "set", "lo", "up"]);
        me
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Cuts the namespace off: its side of the pair goes down, so what it sends
    /// fails at once and what is sent to it is lost (connections time out).
    fn cut(&self) {
        self.exec(&["ip", "link", "set", &self.inner_veth, "down"]);
    }

    fn heal(&self) {
        self.exec(&["ip", "link", "set", &self.inner_veth, "up"]);
    }

    /// A script that runs `bin` inside the namespace (`exec`s, so the process
    /// the test holds is the server itself).
    fn wrapper(&self, dir: &Path, bin: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("in-netns.sh");
        std::fs::write(
            &path,
            format!("#!/bin/sh\nexec ip netns exec {} {bin} \"$@\"\n", self.name),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn clean(&self) -> std::io::Result<()> {
        let quiet = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
        };
        quiet(&["link", "del", &self.veth])?;
        quiet(&["netns", "del", &self.name])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.clean());
    }
}

fn run(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (scripts/test.sh installs iproute2)"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// A node on `ip` (its listeners and what it advertises), its origin a directory
/// shared by every node of the test, started through `bin`.
fn start_on(bin: &Path, ip: &str, dir: &Path, origin: &Path, etcd: &EtcdProcess) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[dram]\ncapacity = \"64MiB\"\n\n[nvme]\ncapacity = \"128MiB\"\n\n[origin]\nkind = \"localdir\"\ndir = \"{}\"\n",
            origin.display()
        ),
    )
    .unwrap();
    start_configured(bin, ip, dir, &config, etcd)
}

/// A scrape that may fail (a node behind a partition): `None` then.
async fn try_scrape(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(1), fetch)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_a_partition_never_serves_a_value_replaced_meanwhile() {
    let ns = Netns::new();
    let etcd = EtcdProcess::start_on(&ns.host).await;
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
    let inside = ns.wrapper(root.path(), BIN);
    // Nodes 0 and 1 on this side; node 2 inside the namespace.
    let nodes = [
        start_on(Path::new(BIN), &ns.host, &dirs[0], &origin, &etcd),
        start_on(Path::new(BIN), &ns.host, &dirs[1], &origin, &etcd),
        start_on(&inside, &ns.inner, &dirs[2], &origin, &etcd),
    ];
    let active = |which: &[usize], n: u64| {
        let addrs: Vec<_> = which.iter().map(|&i| nodes[i].metrics).collect();
        async move {
            for a in addrs {
                match try_scrape(a).await {
                    Some(m) if sample(&m, "strata_cluster_members{state=\"active\"}") == n => {}
                    _ => return false,
                }
            }
            true
        }
    };
    until("three active", Duration::from_secs(15), || {
        active(&[0, 1, 2], 3)
    })
    .await;

    let mut opts = ClientOptions {
        timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    // The namespace shares this machine's /dev/shm: TCP, which the partition cuts.
    opts.data.carrier = CarrierChoice::Tcp;
    let client = Client::connect(&nodes[0].grpc, opts).await.unwrap();
    let keys = owned_keys(&client, &nodes[2], "part").await;
    for (i, k) in keys.iter().enumerate() {
        client.put(k, pattern(i as u64, 100_000)).await.unwrap();
    }
    // Read once, so the owner holds each in DRAM.
    for (i, k) in keys.iter().enumerate() {
        assert!(client.get(k).await.unwrap().unwrap() == pattern(i as u64, 100_000));
    }

    ns.cut();
    until(
        "node 2 out, seen from this side",
        Duration::from_secs(20),
        || active(&[0, 1], 2),
    )
    .await;
    client.refresh_routes().await.unwrap();
    // Replaced while node 2 is cut off: through the next owner, to the origin.
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, pattern(700 + i as u64, 90_000))
            .await
            .unwrap_or_else(|e| panic!("put {} during the partition: {e}", k.display_path()));
        assert!(client.get(k).await.unwrap().unwrap() == pattern(700 + i as u64, 90_000));
    }

    ns.heal();
    until(
        "node 2 back, its lease renewed",
        Duration::from_secs(30),
        || {
            let m = nodes[2].metrics;
            async move {
                try_scrape(m)
                    .await
                    .is_some_and(|m| sample(&m, "strata_cluster_rejoins_total") >= 1)
            }
        },
    )
    .await;
    until("three active again", Duration::from_secs(20), || {
        active(&[0, 1, 2], 3)
    })
    .await;
    assert_rewritten(&client, &keys, 700, 90_000, "during the partition").await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_reaches_a_node_not_owning_its_key_goes_on_to_the_owner() {
    const KEYS: usize = 30;
    let etcd = EtcdProcess::start().await;
    let root = tempfile::tempdir().unwrap();
    let nodes: Vec<ServerProcess> = (0..3)
        .map(|i| start_replicated(&root.path().join(format!("n{i}")), &etcd, 1, 1))
        .collect();
    for n in &nodes {
        until(
            "every node's view of three",
            Duration::from_secs(10),
            || async { counter(n, "strata_cluster_members{state=\"active\"}").await == 3 },
        )
        .await;
    }
    let grpc: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    // Clients that send every key to the node they connected to, as a client
    // whose member list is stale does for a while.
    let (each, view, placement) = direct_clients(&grpc).await;
    let owner = |k: &Key| {
        let id = &placement.owner(k.as_bytes()).unwrap().id;
        let g = &view.members.iter().find(|m| &m.id == id).unwrap().grpc;
        grpc.iter()
            .position(|n| n.rsplit(':').next() == g.rsplit(':').next())
            .unwrap()
    };
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::new("kv", "t", format!("stale/chunk-{i:04}")).unwrap())
        .collect();
    let value = |i: usize, v: usize| pattern((i * 10 + v) as u64, 20_000 + 100 * i);

    // Each put through a node that does not own its key (and a second version
    // through the other one): the owner holds the last, the others nothing.
    for (i, k) in keys.iter().enumerate() {
        let o = owner(k);
        each[(o + 1) % 3].put(k, value(i, 1)).await.unwrap();
        each[(o + 2) % 3].put(k, value(i, 2)).await.unwrap();
    }
    for (n, c) in each.iter().enumerate() {
        for (k, present) in keys.iter().zip(c.contains(&keys).await.unwrap()) {
            assert_eq!(present, owner(k) == n, "{} on node {n}", k.display_path());
        }
    }
    let routed = Client::connect(&grpc[0], ClientOptions::default())
        .await
        .unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert!(routed.get(k).await.unwrap().unwrap() == value(i, 2));
        // A non-owner asked reads the owner's copy, and keeps none: a third
        // version put through the owner is what it reads next.
        let o = owner(k);
        assert!(each[(o + 1) % 3].get(k).await.unwrap().unwrap() == value(i, 2));
        each[o].put(k, value(i, 3)).await.unwrap();
        assert!(each[(o + 1) % 3].get(k).await.unwrap().unwrap() == value(i, 3));
    }

    // A delete through a non-owner deletes the owner's copy.
    for k in &keys {
        assert!(each[(owner(k) + 1) % 3].delete(k).await.unwrap());
    }
    for c in &each {
        assert!(c.contains(&keys).await.unwrap().iter().all(|p| !p));
    }

    // The owner of a key killed: until its lease runs out it is still a member,
    // and the next node in line keeps the puts it cannot send on.
    let k = keys.iter().find(|k| owner(k) == 2).unwrap();
    let mut nodes = nodes;
    nodes.pop().unwrap().kill();
    routed.put(k, value(0, 4)).await.unwrap();
    assert!(routed.get(k).await.unwrap().unwrap() == value(0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obj_put_through_a_node_not_owning_its_key_replaces_the_owners_copy() {
    let f = Fixture::start().await;
    let (ids, placement) = f.placement().await;
    let direct = ClientOptions {
        route: false,
        ..ClientOptions::default()
    };
    let mut each = Vec::new();
    for n in &f.nodes {
        each.push(Client::connect(&n.grpc, direct.clone()).await.unwrap());
    }
    let owner = |k: &Key| ids[&placement.owner(k.as_bytes()).unwrap().id];
    let keys: Vec<Key> = (0..12)
        .map(|i| Key::new("obj", "t", format!("docs/doc-{i:02}")).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let (v1, v2) = (
            pattern(i as u64, 3_000 + i),
            pattern(100 + i as u64, 5_000 + i),
        );
        let o = owner(k);
        each[o].put(k, v1.clone()).await.unwrap();
        assert!(each[o].get(k).await.unwrap().unwrap() == v1);
        // A client with a stale member list writes through another node: the
        // owner's cached copy is replaced, not left behind.
        each[(o + 1) % 3].put(k, v2.clone()).await.unwrap();
        assert!(
            each[o].get(k).await.unwrap().unwrap() == v2,
            "{} read old from its owner",
            k.display_path()
        );
        assert!(each[(o + 2) % 3].get(k).await.unwrap().unwrap() == v2);
    }
    // Only the owners hold a copy.
    for (n, c) in each.iter().enumerate() {
        for (k, present) in keys.iter().zip(c.contains(&keys).await.unwrap()) {
            assert_eq!(present, owner(k) == n, "{} on node {n}", k.display_path());
        }
    }
    // A delete through a non-owner: gone from the owner and the origin.
    for k in &keys {
        assert!(each[(owner(k) + 1) % 3].delete(k).await.unwrap());
        assert!(each[owner(k)].get(k).await.unwrap().is_none());
    }
}
