//! `strata-bench gpu-copy` (feature `gpu`): the KV connector's copies between host
//! and device against the limit, a plain copy from pinned memory (`cuMemcpyHtoD` /
//! `cuMemcpyDtoH` on a page-locked buffer), in one invocation.
//!
//! - **ours:** `Gpu::upload` / `Gpu::download`, from and to ordinary host memory
//!   through the connector's pinned staging buffer (what the GPU tier does).
//! - **limit:** the same bytes copied straight from and to a pinned buffer.
//!
//! Without a GPU (or without the feature) it prints why and exits cleanly.

use clap::Args;

/// Settings of `strata-bench gpu-copy`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Bytes per copy.
    #[arg(long, default_value_t = 256 << 20)]
    pub bytes: usize,
    /// Copies per measurement (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// CUDA device.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Runs the bench.
#[cfg(not(feature = "gpu"))]
pub fn run(_a: &GpuArgs) -> anyhow::Result<()> {
    println!(
        "gpu-copy: built without feature `gpu` (cargo build --release -p strata-benches --features gpu)"
    );
    Ok(())
}

/// Runs the bench.
#[cfg(feature = "gpu")]
pub fn run(a: &GpuArgs) -> anyhow::Result<()> {
    use std::time::Instant;
    use strata_kv_connector::gpu::{Gpu, GpuError};

    let gpu = match Gpu::open(a.device) {
        Ok(g) => g,
        Err(GpuError::Unavailable(why)) => {
            println!("gpu-copy: {why}; nothing measured");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "gpu-copy: {}; {} MiB per copy, median of {} rounds",
        gpu.describe(),
        a.bytes >> 20,
        a.rounds
    );
    let host: Vec<u8> = (0..a.bytes).map(|i| (i as u8).wrapping_mul(31)).collect();
    let mut back = vec![0u8; a.bytes];
    let mut dev = gpu.alloc(a.bytes)?;
    let mut pinned = gpu.pinned(a.bytes)?;
    pinned
        .as_mut_slice()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .copy_from_slice(&host);
    let stream = gpu.stream().clone();
    let gbs = |secs: &mut Vec<f64>| {
        secs.sort_by(f64::total_cmp);
        a.bytes as f64 / secs[secs.len() / 2] / 1e9
    };
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<Vec<f64>> {
        f()?; // warm-up
        (0..a.rounds.max(1))
            .map(|_| {
                let t = Instant::now();
                f()?;
                Ok(t.elapsed().as_secs_f64())
            })
            .collect()
    };
    let mut ours_up = time(&mut || Ok(gpu.upload(&host, &mut dev)?))?;
    let mut raw_up = time(&mut || {
        stream
            .memcpy_htod(&pinned, &mut dev)
            .and_then(|()| stream.synchronize())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let mut ours_down = time(&mut || Ok(gpu.download(&dev, &mut back)?))?;
    anyhow::ensure!(back == host, "the bytes came back changed");
    let mut raw_down = time(&mut || {
        stream
            .memcpy_dtoh(&dev, &mut pinned)
            .and_then(|()| stream.synchronize())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let rows = [
        ("host to device", gbs(&mut ours_up), gbs(&mut raw_up)),
        ("device to host", gbs(&mut ours_down), gbs(&mut raw_down)),
    ];
    println!();
    println!(
        "| direction | ours GB/s (staged from pageable) | limit GB/s (pinned cuMemcpy) | ours / limit |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (dir, ours, limit) in rows {
        println!("| {dir} | {ours:.2} | {limit:.2} | {:.2}× |", ours / limit);
    }
    Ok(())
}
