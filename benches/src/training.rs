//! `strata-bench training`: the loader end to end, with Azurite as the origin.
//!
//! One invocation uploads a dataset larger than the DRAM tier to a real Azurite,
//! starts a Strata server whose origin is that Azurite (DRAM + NVMe in a temp
//! directory), registers the dataset, and runs a rank's loader for two epochs:
//! epoch 0 is cold (every shard read from Blob once, through the cache), epoch 1
//! warm (DRAM, and NVMe for what DRAM cannot hold). In the same run the **peer**
//! reads the same shards in the same order straight from Azurite with the SDK
//! (the Blob tier's parallel ranged GETs, as BlobFuse2 or a plain SDK loader
//! would), with the same number of shards in flight. A per-shard "compute" time
//! makes stall time meaningful: the consumer's wait for data beyond it.

#[path = "../../tiers/tests/common/azurite.rs"]
pub(crate) mod azurite;
#[path = "../../tiers/tests/common/faultproxy.rs"]
pub(crate) mod faultproxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use strata_server::Server;
use strata_server::config::{Config, OriginKindConfig};
use strata_tiers::{BlobTier, ByteRange, Key, PutOptions, Tier};
use strata_training_cache::loader::{Loader, LoaderConfig, fetch_manifest};
use strata_training_cache::{PlanSpec, Position};
use strata_transport::{Client, ClientOptions, proto};

use self::azurite::Azurite;

/// Arguments of `strata-bench training`.
#[derive(Debug, Args)]
pub struct TrainingArgs {
    /// Shards in the dataset.
    #[arg(long, default_value_t = 48)]
    pub shards: u32,
    /// Size of each shard, in MiB.
    #[arg(long, default_value_t = 16)]
    pub shard_mib: u64,
    /// The DRAM tier, in MiB (keep it below the dataset).
    #[arg(long, default_value_t = 256)]
    pub dram_mib: u64,
    /// Shards in flight (the loader's window and the peer's concurrency).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// The store's page size, in MiB (a cold shard is filled one page per Blob read).
    #[arg(long, default_value_t = 4)]
    pub page_mib: u64,
    /// Bytes per origin read, in MiB (`store.origin_read_size`: a run of pages;
    /// the page size gives one page per request).
    #[arg(long, default_value_t = 16)]
    pub origin_read_mib: u64,
    /// Simulated compute per shard, in ms (0: measure pure read throughput).
    #[arg(long, default_value_t = 0)]
    pub compute_ms: u64,
}

struct EpochResult {
    secs: f64,
    bytes: u64,
    stall: Duration,
}

impl EpochResult {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }
}

/// Runs the benchmark and prints a markdown table.
pub fn run(a: &TrainingArgs) -> anyhow::Result<()> {
    crate::runtime(2, "training-bench")?.block_on(run_async(a))
}

async fn run_async(a: &TrainingArgs) -> anyhow::Result<()> {
    let shard_len = (a.shard_mib << 20) as usize;
    let total = u64::from(a.shards) * shard_len as u64;
    anyhow::ensure!(
        total > a.dram_mib << 20,
        "the dataset ({} MiB) must be larger than the DRAM tier ({} MiB)",
        total >> 20,
        a.dram_mib
    );
    let az = Azurite::start();
    let mut cfg = az.config("datasets");
    cfg.raw_names = true;
    let data = BlobTier::open(cfg).await?;
    data.ensure_container().await?;
    let upload = Instant::now();
    futures::stream::iter(0..a.shards)
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
    println!(
        "uploaded {} shards x {} MiB ({} MiB) to Azurite {} in {:.1}s",
        a.shards,
        a.shard_mib,
        total >> 20,
        azurite::AZURITE_VERSION,
        upload.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = "127.0.0.1:0".into();
    c.data.listen = "127.0.0.1:0".into();
    c.data_dir = dir.path().to_path_buf();
    c.dram.capacity = a.dram_mib << 20;
    c.store.page_size = u32::try_from(a.page_mib << 20)?;
    c.store.origin_read_size = a.origin_read_mib << 20;
    c.nvme.block_size = (a.page_mib << 20).max(c.nvme.block_size) + (1 << 20);
    c.nvme.capacity = total + (total / 2) + (256 << 20);
    c.origin.kind = OriginKindConfig::Blob;
    let mut origin = az.config("origin");
    origin.raw_names = false;
    c.origin.blob = Some(origin);
    let running = Server::start(c).await.context("starting the server")?;
    let client =
        Arc::new(Client::connect(&running.addr.to_string(), ClientOptions::default()).await?);
    let mut rpc = proto::datasets_client::DatasetsClient::new(client.channel().clone());
    rpc.add(proto::DatasetAddRequest {
        name: "bench".into(),
        source: format!("{}/datasets/bench/", az.endpoint()),
        concurrency: 0,
    })
    .await?;
    let m = Arc::new(fetch_manifest(&client, "bench", "").await?);
    let spec = PlanSpec::new(a.shards, 7, 1);
    let compute = Duration::from_millis(a.compute_ms);
    println!(
        "server: DRAM {} MiB, NVMe on, page {} MiB, origin reads of {} MiB, carrier {:?}; window {} shards; compute {} ms/shard",
        a.dram_mib,
        a.page_mib,
        a.origin_read_mib,
        client.carrier(),
        a.window,
        a.compute_ms
    );

    // Ours: both epochs in one loader (the plan goes on across epochs).
    let mut loader = Loader::start(
        client.clone(),
        m.clone(),
        spec.rank(0),
        Position::default(),
        2,
        LoaderConfig {
            window_items: a.window,
            window_bytes: (a.window as u64 + 1) * shard_len as u64,
            job_id: 1,
            // One range per cache page: a cold shard's pages are filled in parallel.
            range_size: u64::from(running.store.page_size()),
            ..LoaderConfig::default()
        },
        None,
    )
    .await?;
    let mut ours = Vec::new();
    for _epoch in 0..2 {
        let (start, stall0) = (Instant::now(), loader.stats().stall);
        let mut bytes = 0;
        for _ in 0..spec.steps_per_epoch() {
            let s = loader.next().await.context("plan ended early")??;
            bytes += s.bytes.len() as u64;
            if !compute.is_zero() {
                tokio::time::sleep(compute).await;
            }
        }
        ours.push(EpochResult {
            secs: start.elapsed().as_secs_f64(),
            bytes,
            stall: loader.stats().stall - stall0,
        });
    }
    drop(loader);
    let origin_reads = running
        .datasets
        .stats()
        .ns("shard")
        .origin_reads
        .load(std::sync::atomic::Ordering::Relaxed);

    // Peer: the same order straight from Azurite, `window` shards in flight.
    let mut peer = Vec::new();
    for epoch in 0..2 {
        let order = spec.rank_order(epoch, 0);
        let start = Instant::now();
        let mut stall = Duration::ZERO;
        let mut bytes = 0;
        let mut reads = futures::stream::iter(order)
            .map(|i| {
                let (data, shard) = (&data, &m.shards[i as usize]);
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
        loop {
            let w = Instant::now();
            let Some(r) = reads.next().await else { break };
            stall += w.elapsed();
            bytes += r?.context("a shard vanished")?.len() as u64;
            if !compute.is_zero() {
                tokio::time::sleep(compute).await;
            }
        }
        peer.push(EpochResult {
            secs: start.elapsed().as_secs_f64(),
            bytes,
            stall,
        });
    }

    println!(
        "\n| epoch | Strata loader GB/s | stall s (of total s) | Azurite via SDK GB/s | stall s (of total s) | Strata / SDK |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (e, (o, p)) in ours.iter().zip(&peer).enumerate() {
        println!(
            "| {} ({}) | {:.2} | {:.2} ({:.2}) | {:.2} | {:.2} ({:.2}) | {:.2}x |",
            e,
            if e == 0 { "cold" } else { "warm" },
            o.gbps(),
            o.stall.as_secs_f64(),
            o.secs,
            p.gbps(),
            p.stall.as_secs_f64(),
            p.secs,
            o.gbps() / p.gbps()
        );
    }
    let pages = total.div_ceil(running.store.page_size() as u64);
    println!(
        "\norigin (Blob) reads by the cache over both epochs: {origin_reads} for {pages} pages of the dataset ({} shards)",
        a.shards
    );
    running.shutdown().await?;
    Ok(())
}
