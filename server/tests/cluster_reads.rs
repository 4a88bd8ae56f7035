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
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::placement::{Member, Placement};
use strata_server::testing::{EtcdProcess, ServerProcess, sample, scrape};
use strata_tiers::{BlobTier, Key, PutOptions, Tier};
use strata_training_cache::loader::fetch_manifest;
use strata_transport::data::{CarrierChoice, DataClient, DataEndpoint, DataOptions};
use strata_transport::{Client, ClientOptions, proto};

use self::azurite::Azurite;
use self::faultproxy::FaultProxy;
use self::pattern::pattern;

const BIN: &str = env!("CARGO_BIN_EXE_strata-server");

/// A node's config file: a Blob origin through the proxy, 4 MiB pages read in runs
/// of 16 MiB (so a 6 MiB shard is one origin read).
fn write_config(dir: &Path, proxy: &FaultProxy, az: &Azurite) -> std::path::PathBuf {
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
            "reads",
            "--advertise",
            "127.0.0.1",
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
    _etcd: EtcdProcess,
    _az: Azurite,
    _root: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
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
                let config = write_config(&dir, &proxy, &az);
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
                concurrency: 0,
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
            _etcd: etcd,
            _az: az,
            _root: root,
        }
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
    let origin_reads = proxy.seen() - before;
    assert_eq!(
        origin_reads, SHARDS,
        "each shard (one run of pages) read from the origin once in the whole cluster"
    );

    // The owners answered the rest: each node asked for the shards it does not
    // own, and what was asked was served.
    let mut asked = 0;
    let mut served = 0;
    for n in &nodes {
        let a = counter(n, "strata_cluster_peer_reads_total{outcome=\"answered\"}").await;
        let f = counter(n, "strata_cluster_peer_reads_total{outcome=\"failed\"}").await;
        assert_eq!(f, 0, "no peer read fell back to the origin");
        assert!(
            a > 0,
            "every node owns some shards and reads the others' from them"
        );
        asked += a;
        served += counter(n, "strata_cluster_peer_requests_served_total").await;
    }
    assert_eq!(
        served,
        asked + 1,
        "every peer read asked was served by its owner (and the one above)"
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
