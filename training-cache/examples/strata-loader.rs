//! `strata-loader`: reads a dataset through a Strata server for N epochs, as one
//! rank of a training job would, and prints throughput and stall time per epoch.
//!
//! ```text
//! strata dataset add imagenet imagenet/train/        # once
//! cargo run --release -p strata-training-cache --example strata-loader -- \
//!     --dataset imagenet --epochs 2 --rank 0 --world-size 1 --compute-ms 5
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use strata_training_cache::loader::{
    FixedRecords, Loader, LoaderConfig, SampleIndex, fetch_manifest,
};
use strata_training_cache::{PlanSpec, Position, Remainder};
use strata_transport::{Client, ClientOptions};

/// Read a dataset through Strata for N epochs; print throughput and stall.
#[derive(Debug, Parser)]
struct Args {
    /// Server address.
    #[arg(long, env = "STRATA_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
    /// The dataset (registered with `strata dataset add`).
    #[arg(long)]
    dataset: String,
    /// A version (default: the current one).
    #[arg(long, default_value = "")]
    version: String,
    /// Epochs to read.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Resume from this epoch.
    #[arg(long, default_value_t = 0)]
    start_epoch: u64,
    /// Resume from this step of the start epoch.
    #[arg(long, default_value_t = 0)]
    start_step: u64,
    /// The job's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// This rank.
    #[arg(long, default_value_t = 0)]
    rank: u32,
    /// Ranks in the job.
    #[arg(long, default_value_t = 1)]
    world_size: u32,
    /// Pad the remainder instead of dropping it.
    #[arg(long)]
    pad: bool,
    /// Read shards in manifest order.
    #[arg(long)]
    no_shuffle: bool,
    /// Shards prefetched ahead.
    #[arg(long, default_value_t = 16)]
    window_items: usize,
    /// Bytes prefetched ahead, in MiB.
    #[arg(long, default_value_t = 1024)]
    window_mib: u64,
    /// Shards larger than this (MiB) are read as parallel ranges.
    #[arg(long, default_value_t = 16)]
    range_mib: u64,
    /// Yield fixed-size records of this many bytes instead of whole shards.
    #[arg(long)]
    record_bytes: Option<u64>,
    /// Simulated compute per item, in ms (stall is the wait beyond it).
    #[arg(long, default_value_t = 0)]
    compute_ms: u64,
    /// The job's id (the same on every rank).
    #[arg(long, default_value_t = 1)]
    job_id: u64,
    /// Do not register the plan with the server.
    #[arg(long)]
    no_register: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let client = Arc::new(Client::connect(&a.addr, ClientOptions::default()).await?);
    let manifest = Arc::new(fetch_manifest(&client, &a.dataset, &a.version).await?);
    let spec = PlanSpec {
        shards: u32::try_from(manifest.shards.len())?,
        seed: a.seed,
        shuffle: !a.no_shuffle,
        world_size: a.world_size.max(1),
        remainder: if a.pad {
            Remainder::Pad
        } else {
            Remainder::Drop
        },
    };
    anyhow::ensure!(
        a.rank < spec.world_size,
        "--rank must be below --world-size"
    );
    let index: Option<Arc<dyn SampleIndex>> = a
        .record_bytes
        .map(|n| Arc::new(FixedRecords(n)) as Arc<dyn SampleIndex>);
    let from = Position {
        epoch: a.start_epoch,
        step: a.start_step,
    };
    let end = a.start_epoch + a.epochs;
    let mut loader = Loader::start(
        client.clone(),
        manifest.clone(),
        spec.rank(a.rank),
        from,
        end,
        LoaderConfig {
            window_items: a.window_items,
            window_bytes: a.window_mib << 20,
            range_size: a.range_mib << 20,
            job_id: a.job_id,
            register: !a.no_register,
            ..LoaderConfig::default()
        },
        index,
    )
    .await?;
    println!(
        "{}@{}: {} shards, {:.2} GiB; rank {}/{}, {} steps per epoch, carrier {:?}",
        manifest.name,
        manifest.version,
        manifest.shards.len(),
        manifest.total_bytes() as f64 / (1u64 << 30) as f64,
        a.rank,
        spec.world_size,
        spec.steps_per_epoch(),
        client.carrier()
    );
    let compute = Duration::from_millis(a.compute_ms);
    let mut epoch = from.epoch;
    let (mut start, mut before) = (Instant::now(), loader.stats());
    let report = |epoch: u64,
                  secs: f64,
                  before: &strata_training_cache::loader::LoaderStats,
                  now: &strata_training_cache::loader::LoaderStats| {
        let bytes = now.bytes - before.bytes;
        let stall = (now.stall - before.stall).as_secs_f64();
        println!(
            "epoch {epoch}: {} shards, {} items, {:.2} GiB in {secs:.2}s = {:.3} GB/s; stall {stall:.2}s ({:.0}%)",
            now.shards - before.shards,
            now.samples - before.samples,
            bytes as f64 / (1u64 << 30) as f64,
            bytes as f64 / secs / 1e9,
            100.0 * stall / secs
        );
    };
    // Stats and time as of the end of the previous item, so that an epoch's line
    // does not count the first item of the next one.
    let (mut last, mut last_at) = (before, Instant::now());
    while let Some(item) = loader.next().await {
        let item = item?;
        if item.at.epoch != epoch {
            report(epoch, (last_at - start).as_secs_f64(), &before, &last);
            (epoch, start, before) = (item.at.epoch, last_at, last);
        }
        if !compute.is_zero() {
            tokio::time::sleep(compute).await;
        }
        (last, last_at) = (loader.stats(), Instant::now());
    }
    report(epoch, (last_at - start).as_secs_f64(), &before, &last);
    Ok(())
}
