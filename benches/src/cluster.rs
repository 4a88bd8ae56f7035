//! `strata-bench cluster`: N Strata nodes on this machine reading one dataset at
//! once, against the same N readers straight from Azurite with the SDK.
//!
//! For each N (`--nodes 1,2,4`): a real etcd, N servers in this process (their own
//! data directories, one cluster), one Azurite behind a counting proxy as the
//! origin they share. A dataset is added on node 0; then every node's loader reads
//! every shard, in its own order, all at once: a cold epoch, then (every node
//! done) a warm one. Reported: the aggregate loader throughput of each epoch, the
//! origin's reads per run of pages of the dataset (the unit the store reads: the
//! proxy counts them; the goal is 1.0 whatever N, where N independent caches
//! would read N), and the same dataset read by N SDK readers at once (the peer),
//! with the ratio.
//!
//! Then, with N ≥ 2: one peer read (a node asking the owner over TCP, as a fill
//! does) against a local DRAM hit (a client reading its own node) and a raw TCP
//! round trip of the same size, medians of `--rounds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use strata_server::config::{Config, OriginKindConfig};
use strata_server::testing::EtcdProcess;
use strata_server::{Running, Server};
use strata_tiers::{BlobTier, ByteRange, Key, PutOptions, Tier};
use strata_training_cache::loader::{Loader, LoaderConfig, fetch_manifest};
use strata_training_cache::{PlanSpec, Position};
use strata_transport::data::{CarrierChoice, DataClient, DataEndpoint, DataOptions};
use strata_transport::{Client, ClientOptions, proto};

use crate::report::median;
use crate::training::azurite::{self, Azurite};
use crate::training::faultproxy::FaultProxy;

/// Arguments of `strata-bench cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Cluster sizes to run, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Shards in the dataset.
    #[arg(long, default_value_t = 24)]
    pub shards: u32,
    /// Size of each shard, in MiB.
    #[arg(long, default_value_t = 8)]
    pub shard_mib: u64,
    /// Each node's DRAM tier, in MiB.
    #[arg(long, default_value_t = 256)]
    pub dram_mib: u64,
    /// Shards in flight per loader (and per SDK reader).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Rounds of the peer-read comparison.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Instead: churn. One data-parallel job (a rank per node) reads the dataset
    /// over two epochs while a tenth of the nodes restart one by one in the middle
    /// of the first; reported: the origin's reads per run of pages (goal: at most
    /// 1.01).
    #[arg(long)]
    pub churn: bool,
    /// Nodes of the churn run.
    #[arg(long, default_value_t = 10)]
    pub churn_nodes: usize,
    /// Nodes restarted in the churn run (default: a tenth of them, rounded up;
    /// 0 gives the same job without churn, for comparison).
    #[arg(long)]
    pub churn_restarts: Option<usize>,
}

/// Runs the benchmark and prints markdown tables.
pub fn run(a: &ClusterArgs) -> anyhow::Result<()> {
    crate::runtime(2, "cluster-bench")?.block_on(run_async(a))
}

const PAGE: u64 = 4 << 20;
/// The store's origin read: a run of pages (`store.origin_read_size`, default).
const RUN: u64 = 16 << 20;

struct Row {
    nodes: usize,
    cold: f64,
    warm: f64,
    sdk: f64,
    origin_reads: usize,
    runs: u64,
}

/// The config of one node of the cluster `bench<n>`.
#[expect(clippy::too_many_arguments, reason = "the bench's fixed parts, named")]
fn node_config(
    a: &ClusterArgs,
    dir: &std::path::Path,
    total: u64,
    proxy: &FaultProxy,
    az: &Azurite,
    origin: &str,
    etcd: &EtcdProcess,
    n: usize,
) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = "127.0.0.1:0".into();
    c.data.listen = "127.0.0.1:0".into();
    c.data_dir = dir.to_path_buf();
    c.dram.capacity = a.dram_mib << 20;
    c.store.page_size = PAGE as u32;
    c.nvme.block_size = PAGE + (1 << 20);
    c.nvme.capacity = 2 * total + (256 << 20);
    c.origin.kind = OriginKindConfig::Blob;
    c.origin.blob = Some(proxy.config(az, origin));
    c.cluster.etcd = vec![etcd.url.clone()];
    c.cluster.name = format!("bench{n}");
    c.cluster.advertise = Some("127.0.0.1".into());
    c
}

async fn run_async(a: &ClusterArgs) -> anyhow::Result<()> {
    let shard_len = (a.shard_mib << 20) as usize;
    // The churn job's ranks split every epoch evenly: as many shards as a
    // multiple of its ranks, none dropped.
    let shards = if a.churn {
        a.shards.next_multiple_of(a.churn_nodes.max(2) as u32)
    } else {
        a.shards
    };
    let total = u64::from(shards) * shard_len as u64;
    let az = Azurite::start();
    let mut cfg = az.config("datasets");
    cfg.raw_names = true;
    let data = BlobTier::open(cfg).await?;
    data.ensure_container().await?;
    futures::stream::iter(0..shards)
        .map(|i| {
            let data = &data;
            async move {
                let v = Bytes::from(crate::pattern(shard_len, u64::from(i)));
                let k = Key::new("shard", "", format!("bench/shard-{i:05}.bin"))?;
                data.put(&k, v, &PutOptions::default()).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let etcd = EtcdProcess::start().await;
    if a.churn {
        return churn(a, &az, &etcd, total).await;
    }
    println!(
        "dataset: {} shards x {} MiB ({} MiB) on Azurite {}; each node: DRAM {} MiB, NVMe on, pages of {} MiB; loader window {} shards",
        a.shards,
        a.shard_mib,
        total >> 20,
        azurite::AZURITE_VERSION,
        a.dram_mib,
        PAGE >> 20,
        a.window
    );

    let mut rows = Vec::new();
    let mut peer_figures = None;
    for &n in &a.nodes {
        anyhow::ensure!(n >= 1, "a cluster has at least one node");
        let proxy = FaultProxy::start(az.port, 0, "").await;
        let origin = format!("origin{n}");
        BlobTier::open(az.config(&origin))
            .await?
            .ensure_container()
            .await?;
        let dirs: Vec<_> = (0..n)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for d in &dirs {
            let c = node_config(a, d.path(), total, &proxy, &az, &origin, &etcd, n);
            nodes.push(Server::start(c).await.context("starting a node")?);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|r| {
            r.cluster
                .as_ref()
                .is_some_and(|c| c.view().placement.members().len() == n)
        }) {
            anyhow::ensure!(Instant::now() < deadline, "the nodes never saw each other");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut clients = Vec::new();
        for r in &nodes {
            clients.push(Arc::new(
                Client::connect(&r.addr.to_string(), ClientOptions::default()).await?,
            ));
        }
        proto::datasets_client::DatasetsClient::new(clients[0].channel().clone())
            .add(proto::DatasetAddRequest {
                name: "bench".into(),
                source: format!(
                    "http://127.0.0.1:{}/{}/datasets/bench/",
                    proxy.port,
                    azurite::ACCOUNT
                ),
                concurrency: 0,
            })
            .await?;
        let m = Arc::new(fetch_manifest(&clients[0], "bench", "").await?);
        for c in &clients[1..] {
            fetch_manifest(c, "bench", &m.version).await?;
        }

        // Every node reads every shard, in its own order, all at once: the cold
        // epoch, then (all nodes done) the warm one.
        let before = proxy.seen();
        let epoch = |e: u64| {
            futures::future::try_join_all(clients.iter().enumerate().map(|(i, c)| {
                let (c, m) = (c.clone(), m.clone());
                async move {
                    let spec = PlanSpec::new(m.shards.len() as u32, 100 + i as u64, 1);
                    let mut loader = Loader::start(
                        c,
                        m.clone(),
                        spec.rank(0),
                        Position { epoch: e, step: 0 },
                        e + 1,
                        LoaderConfig {
                            window_items: a.window,
                            window_bytes: (a.window as u64 + 1) * shard_len as u64,
                            job_id: 1 + i as u64,
                            range_size: PAGE,
                            ..LoaderConfig::default()
                        },
                        None,
                    )
                    .await?;
                    let mut bytes = 0;
                    for _ in 0..spec.steps_per_epoch() {
                        bytes += loader
                            .next()
                            .await
                            .context("plan ended early")??
                            .bytes
                            .len();
                    }
                    anyhow::ensure!(bytes as u64 == total, "a loader read {bytes} bytes");
                    anyhow::Ok(())
                }
            }))
        };
        let bytes = (n as u64 * total) as f64;
        let start = Instant::now();
        epoch(0).await?;
        let cold = bytes / start.elapsed().as_secs_f64() / 1e9;
        let origin_reads = proxy.seen() - before;
        let start = Instant::now();
        epoch(1).await?;
        let warm = bytes / start.elapsed().as_secs_f64() / 1e9;
        anyhow::ensure!(
            proxy.seen() - before == origin_reads,
            "the warm epoch read the origin"
        );

        // The peer: N readers straight from Azurite, each every shard, at once.
        let start = Instant::now();
        let readers = (0..n).map(|i| {
            let (data, m) = (&data, m.clone());
            async move {
                let order =
                    PlanSpec::new(m.shards.len() as u32, 100 + i as u64, 1).rank_order(0, 0);
                let mut reads = futures::stream::iter(order)
                    .map(|s| {
                        let shard = &m.shards[s as usize];
                        async move {
                            data.read_pinned(
                                &format!("bench/{}", shard.path),
                                ByteRange::default(),
                                &shard.etag,
                                None,
                            )
                            .await
                        }
                    })
                    .buffered(a.window);
                while let Some(r) = reads.next().await {
                    r?.context("a shard vanished")?;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(readers).await?;
        let sdk = bytes / start.elapsed().as_secs_f64() / 1e9;
        rows.push(Row {
            nodes: n,
            cold,
            warm,
            sdk,
            origin_reads,
            runs: u64::from(a.shards) * (shard_len as u64).div_ceil(RUN),
        });

        if n >= 2 && peer_figures.is_none() {
            peer_figures = Some(peer_read(&nodes, a.rounds).await?);
        }
        for r in nodes {
            r.shutdown().await?;
        }
    }

    println!(
        "\n| nodes | origin reads per run of pages | cold GB/s (all nodes) | warm GB/s | SDK, same readers, GB/s | cold / SDK | warm / SDK |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} ({} reads, {} runs) | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
            r.nodes,
            r.origin_reads as f64 / r.runs as f64,
            r.origin_reads,
            r.runs,
            r.cold,
            r.warm,
            r.sdk,
            r.cold / r.sdk,
            r.warm / r.sdk
        );
    }
    if let Some((peer, local, raw)) = peer_figures {
        println!(
            "\n| {} MiB read | median µs | GB/s | vs raw TCP |\n|---|---:|---:|---:|",
            PAGE >> 20
        );
        for (name, us) in [
            ("peer read (node → owner, TCP, FLAG_PEER)", peer),
            ("local DRAM hit (client → its node, auto carrier)", local),
            ("raw TCP round trip (limit)", raw),
        ] {
            println!(
                "| {name} | {us:.0} | {:.2} | {:.2}x |",
                PAGE as f64 / us / 1e3,
                raw / us
            );
        }
    }
    Ok(())
}

/// Medians (µs) of a peer read, a local DRAM hit and a raw TCP round trip of one
/// page.
async fn peer_read(nodes: &[Running], rounds: usize) -> anyhow::Result<(f64, f64, f64)> {
    let key = Key::new("kv", "bench", "peer-read")?;
    // Its owner (a node that does not own a `kv` key sends it on, keeping none).
    let id = |r: &Running| r.cluster.as_ref().map(|c| c.entry().id);
    let owner_id = nodes[0].cluster.as_ref().and_then(|c| {
        c.view()
            .placement
            .owner(key.as_bytes())
            .map(|m| m.id.clone())
    });
    let owner = nodes
        .iter()
        .find(|r| id(r) == owner_id)
        .context("the key's owner is one of the nodes")?;
    let value = Bytes::from(crate::pattern(PAGE as usize, 9));
    let direct = ClientOptions {
        route: false,
        ..ClientOptions::default()
    };
    let at_owner = Client::connect(&owner.addr.to_string(), direct).await?;
    at_owner.put(&key, value.clone()).await?;
    let as_peer = DataClient::connect(
        DataEndpoint {
            tcp: owner.data_addr.map(|a| a.to_string()),
            ..DataEndpoint::default()
        },
        DataOptions {
            carrier: CarrierChoice::Tcp,
            peer: true,
            ..DataOptions::default()
        },
    )
    .await?;
    let raw_server = crate::rawtcp::RawServer::start(value.clone()).await?;
    let mut raw = crate::rawtcp::RawConn::connect(raw_server.addr()).await?;
    let (mut peer, mut local, mut limit) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let got = as_peer.get(&key).await?.context("the owner holds it")?;
        peer.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(got.len() == value.len());
        let t = Instant::now();
        let got = at_owner.get(&key).await?.context("the node holds it")?;
        local.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(got.len() == value.len());
        let t = Instant::now();
        let got = raw.get(value.len()).await?;
        limit.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(got.len() == value.len());
    }
    Ok((median(&peer), median(&local), median(&limit)))
}

/// Waits until every node of `nodes` places over `n` members.
async fn settled(nodes: &[Running], n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|r| {
        r.cluster
            .as_ref()
            .is_some_and(|c| c.view().placement.members().len() == n)
    }) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes never agreed on {n} members"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The churn run (`--churn`): see [`ClusterArgs::churn`].
async fn churn(
    a: &ClusterArgs,
    az: &Azurite,
    etcd: &EtcdProcess,
    total: u64,
) -> anyhow::Result<()> {
    let n = a.churn_nodes.max(2);
    let churned = a.churn_restarts.unwrap_or(n.div_ceil(10)).min(n - 1);
    let shard_len = a.shard_mib << 20;
    let proxy = FaultProxy::start(az.port, 0, "").await;
    let origin = "originchurn";
    BlobTier::open(az.config(origin))
        .await?
        .ensure_container()
        .await?;
    let dirs: Vec<_> = (0..n)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let config = |i: usize| node_config(a, dirs[i].path(), total, &proxy, az, origin, etcd, n);
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Server::start(config(i)).await.context("starting a node")?);
    }
    settled(&nodes, n).await?;
    let mut clients = Vec::new();
    for r in &nodes {
        clients.push(Arc::new(
            Client::connect(&r.addr.to_string(), ClientOptions::default()).await?,
        ));
    }
    proto::datasets_client::DatasetsClient::new(clients[0].channel().clone())
        .add(proto::DatasetAddRequest {
            name: "bench".into(),
            source: format!(
                "http://127.0.0.1:{}/{}/datasets/bench/",
                proxy.port,
                azurite::ACCOUNT
            ),
            concurrency: 0,
        })
        .await?;
    let m = Arc::new(fetch_manifest(&clients[0], "bench", "").await?);
    for c in &clients[1..] {
        fetch_manifest(c, "bench", &m.version).await?;
    }
    println!(
        "churn: {n} nodes, one job of {n} ranks (a rank per node) reading {} shards x {} MiB over 2 epochs; {churned} node(s) restarted one by one in the middle of epoch 0",
        m.shards.len(),
        a.shard_mib
    );

    // One data-parallel job: rank i on node i; the steps done so far, all ranks.
    let spec = PlanSpec::new(m.shards.len() as u32, 7, n as u32);
    let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let before = proxy.seen();
    let start = Instant::now();
    let ranks = clients.iter().enumerate().map(|(i, c)| {
        let (c, m, steps) = (c.clone(), m.clone(), steps.clone());
        async move {
            let mut loader = Loader::start(
                c,
                m.clone(),
                spec.rank(i as u32),
                Position::default(),
                2,
                LoaderConfig {
                    window_items: a.window,
                    window_bytes: (a.window as u64 + 1) * shard_len,
                    job_id: 1,
                    range_size: PAGE,
                    ..LoaderConfig::default()
                },
                None,
            )
            .await?;
            let mut bytes = 0u64;
            for _ in 0..2 * spec.steps_per_epoch() {
                bytes += loader
                    .next()
                    .await
                    .context("plan ended early")??
                    .bytes
                    .len() as u64;
                steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(bytes)
        }
    });
    let epoch_steps = spec.steps_per_epoch() * n as u64;
    let away = nodes.split_off(n - churned);
    let churner = async {
        // The middle of epoch 0: the last nodes restart one after another, each
        // away for a second (SIGTERM's path: draining, out, closed; then started
        // again on the same directory, as itself).
        while steps.load(std::sync::atomic::Ordering::Relaxed) < epoch_steps / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut back = Vec::new();
        for (j, r) in away.into_iter().enumerate() {
            r.shutdown().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            back.push(
                Server::start(config(n - churned + j))
                    .await
                    .context("restarting a node")?,
            );
        }
        anyhow::Ok(back)
    };
    let (read, back) = futures::future::join(futures::future::try_join_all(ranks), churner).await;
    nodes.extend(back?);
    let restarted = churned;
    let read: u64 = read?.into_iter().sum();
    let took = start.elapsed();
    anyhow::ensure!(
        read == 2 * total,
        "the job read {read} bytes, not {}",
        2 * total
    );
    // Reads of the dataset's blobs; the rest are the nodes' own requests to
    // their `obj` origin (a restarted node reads the shared dataset index).
    let requests = proxy.requests().split_off(before);
    let origin_reads = requests
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/datasets/"))
        .count();
    let other = requests.len() - origin_reads;
    let runs = m.shards.len() as u64 * shard_len.div_ceil(RUN);
    println!(
        "\n| nodes | restarted in epoch 0 | origin reads of the dataset | runs of pages in the dataset | origin reads per run (goal ≤ 1.01) | other origin requests (index, container) | job, s |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {n} | {restarted} | {origin_reads} | {runs} | {:.3} | {other} | {:.1} |",
        origin_reads as f64 / runs as f64,
        took.as_secs_f64()
    );
    for r in nodes {
        r.shutdown().await?;
    }
    Ok(())
}
