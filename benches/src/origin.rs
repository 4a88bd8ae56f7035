//! `strata-bench origin-get`: what one origin GET costs on Azurite, by request
//! size, concurrency, and whether it is pinned by ETag (`If-Match`).
//!
//! The cold training epoch reads every page of a shard with one ranged GET
//! pinned to the manifest's ETag. This bench reads the same blobs the same way
//! and also unpinned, and whole, so that the cost of `If-Match`, of a range and of
//! the request size are each seen alone, in one run against one Azurite.

use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use strata_tiers::{BlobTier, ByteRange, GetOptions, Key, PutOptions, Tier};

use crate::training::azurite::{self, Azurite};

/// Arguments of `strata-bench origin-get`.
#[derive(Debug, Args)]
pub struct OriginArgs {
    /// Blobs uploaded (each read once per cell of the table).
    #[arg(long, default_value_t = 24)]
    pub blobs: u32,
    /// Size of each blob, in MiB.
    #[arg(long, default_value_t = 16)]
    pub blob_mib: u64,
    /// Request sizes to try, in MiB (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16")]
    pub request_mib: Vec<u64>,
    /// Requests in flight to try (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,32")]
    pub concurrency: Vec<usize>,
}

/// Runs the benchmark and prints a markdown table.
pub fn run(a: &OriginArgs) -> anyhow::Result<()> {
    crate::runtime(2, "origin-bench")?.block_on(run_async(a))
}

async fn run_async(a: &OriginArgs) -> anyhow::Result<()> {
    let blob_len = a.blob_mib << 20;
    let az = Azurite::start();
    let mut cfg = az.config("origin-bench");
    cfg.raw_names = true;
    // One HTTP request per read: no splitting by the tier, no cap below the test's.
    cfg.range_chunk_size = a
        .request_mib
        .iter()
        .max()
        .copied()
        .unwrap_or(16)
        .max(a.blob_mib)
        << 20;
    cfg.max_concurrency = a.concurrency.iter().max().copied().unwrap_or(32).max(1);
    let tier = BlobTier::open(cfg).await?;
    tier.ensure_container().await?;
    let mut etags = Vec::new();
    for i in 0..a.blobs {
        let v = Bytes::from(crate::pattern(blob_len as usize, u64::from(i)));
        tier.put(&key(i)?, v, &PutOptions::default()).await?;
    }
    for b in tier.list_blobs("blob-").await? {
        etags.push((b.name, b.etag));
    }
    etags.sort();
    anyhow::ensure!(
        etags.len() == a.blobs as usize,
        "listed {} blobs",
        etags.len()
    );
    println!(
        "{} blobs x {} MiB on Azurite {} ({}); every cell reads all of them once",
        a.blobs,
        a.blob_mib,
        azurite::AZURITE_VERSION,
        az.endpoint()
    );
    println!(
        "\n| request | in flight | pinned (If-Match) GB/s | ms/request p50 | unpinned GB/s | ms/request p50 | pinned / unpinned |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &req_mib in &a.request_mib {
        let req = (req_mib << 20).min(blob_len);
        for &conc in &a.concurrency {
            let pinned = pass(&tier, &etags, blob_len, req, conc, true).await?;
            let plain = pass(&tier, &etags, blob_len, req, conc, false).await?;
            println!(
                "| {} MiB{} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2}x |",
                req >> 20,
                if req == blob_len { " (whole)" } else { "" },
                conc,
                pinned.0,
                pinned.1,
                plain.0,
                plain.1,
                pinned.0 / plain.0
            );
        }
    }
    Ok(())
}

fn key(i: u32) -> anyhow::Result<Key> {
    Ok(Key::new("shard", "", format!("blob-{i:05}"))?)
}

/// Reads every blob in `req`-sized ranges, `conc` requests in flight; returns
/// GB/s and the median request time in ms.
async fn pass(
    tier: &BlobTier,
    etags: &[(String, String)],
    blob_len: u64,
    req: u64,
    conc: usize,
    pinned: bool,
) -> anyhow::Result<(f64, f64)> {
    let requests: Vec<(u32, u64)> = (0..etags.len() as u32)
        .flat_map(|b| (0..blob_len).step_by(req as usize).map(move |o| (b, o)))
        .collect();
    let start = Instant::now();
    let mut times: Vec<f64> = futures::stream::iter(requests)
        .map(|(b, offset)| async move {
            let range = ByteRange {
                offset,
                length: Some(req.min(blob_len - offset)),
            };
            let t = Instant::now();
            let bytes = if pinned {
                let (name, etag) = &etags[b as usize];
                tier.read_pinned(name, range, etag, None)
                    .await?
                    .context("a pinned blob changed")?
            } else {
                let opts = GetOptions {
                    range: Some(range),
                    deadline: None,
                };
                tier.get(&key(b)?, &opts)
                    .await?
                    .context("a blob vanished")?
            };
            anyhow::ensure!(
                bytes.len() as u64 == range.length.unwrap_or(0),
                "short read"
            );
            anyhow::Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .buffer_unordered(conc)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let secs = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let bytes = etags.len() as u64 * blob_len;
    Ok((bytes as f64 / secs / 1e9, times[times.len() / 2]))
}
