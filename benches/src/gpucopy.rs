//! `strata-bench gpu-copy` (feature `gpu`): the KV connector's copies between host
//! and device against the limit, a plain copy from pinned memory (`cuMemcpyHtoD` /
//! `cuMemcpyDtoH` on a page-locked buffer), in one invocation.
//!
//! - **staged:** `Gpu::upload` / `Gpu::download`, from and to ordinary host memory
//!   through the connector's two pinned staging buffers (what the GPU tier does).
//! - **registered:** `Gpu::upload_registered` / `download_registered`, from and to
//!   host memory registered once with the driver (a long-lived receive buffer).
//! - **limit:** the same bytes copied straight from and to a pinned buffer.
//!
//! Then a 4k-token KV prefix is loaded from a real Strata server over shared
//! memory into device memory, layer by layer, against one pinned copy of the same
//! bytes, and served again by the GPU tier device to device.
//!
//! Without a GPU (or without the feature) it prints why and exits cleanly.

use clap::Args;

/// Settings of `strata-bench gpu-copy`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Bytes per copy: one row of each table per size.
    #[arg(long, value_delimiter = ',', default_values_t = [256 << 10, 1 << 20, 16 << 20])]
    pub sizes: Vec<usize>,
    /// Measurements per size (the median is reported); each moves at least 256 MiB.
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// CUDA device.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Tokens of the KV prefix loaded from a Strata server into device memory, layer
    /// by layer (0 skips it).
    #[arg(long, default_value_t = 4096)]
    pub prefix_tokens: usize,
    /// Requests in flight per layer of the prefix load, each copying on its own
    /// thread (the KV connector's load lanes).
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
}

/// Runs the bench.
#[cfg(not(feature = "gpu"))]
pub fn run(_a: &GpuArgs) -> anyhow::Result<()> {
    println!(
        "gpu-copy: built without feature `gpu` (cargo build --release -p strata-benches --features gpu)"
    );
    Ok(())
}

#[cfg(feature = "gpu")]
fn cuda(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

#[cfg(feature = "gpu")]
enum Dir {
    Up,
    Down,
}

/// The limit: one `cuMemcpyHtoDAsync` / `cuMemcpyDtoHAsync` between a pinned buffer
/// and the device, then a stream synchronize; raw driver calls, with none of the
/// event bookkeeping of cudarc's safe copies.
#[cfg(feature = "gpu")]
fn raw_copy(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    pinned: &mut strata_kv_connector::gpu::PinnedHostSlice<u8>,
    dev: &mut strata_kv_connector::gpu::CudaSlice<u8>,
    dir: Dir,
) -> anyhow::Result<()> {
    use cudarc::driver::{DevicePtrMut, result};
    let len = pinned.len().min(dev.len());
    let host = pinned.as_mut_ptr().map_err(cuda)?;
    let (d, sync) = dev.device_ptr_mut(stream);
    // SAFETY: `host` is `len` pinned bytes and `d` at least `len` device bytes, both
    // alive until the synchronize below.
    unsafe {
        match dir {
            Dir::Up => result::memcpy_htod_async(
                d,
                std::slice::from_raw_parts(host, len),
                stream.cu_stream(),
            ),
            Dir::Down => result::memcpy_dtoh_async(
                std::slice::from_raw_parts_mut(host, len),
                d,
                stream.cu_stream(),
            ),
        }
    }
    .map_err(cuda)?;
    drop(sync);
    stream.synchronize().map_err(cuda)
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
        "gpu-copy: {}; median of {} measurements per size",
        gpu.describe(),
        a.rounds
    );
    let stream = gpu.stream().clone();
    println!();
    println!(
        "| direction | size | staged from pageable GB/s | registered GB/s | limit: pinned cuMemcpyAsync GB/s | staged / limit | registered / limit |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &size in &a.sizes {
        anyhow::ensure!(size > 0, "--sizes must be positive");
        // Copies per measurement: at least 256 MiB moved, so small sizes are not
        // one timer tick.
        let reps = (256usize << 20).div_ceil(size).max(1);
        let host = crate::pattern(size, size as u64);
        let mut back = vec![0u8; size];
        let mut dev = gpu.alloc(size)?;
        let mut pinned = gpu.pinned(size)?;
        pinned.as_mut_slice().map_err(cuda)?.copy_from_slice(&host);
        let mut reg_src = host.clone();
        let mut reg_dst = vec![0u8; size];
        let reg_src = gpu.register(&mut reg_src)?;
        let mut reg_dst = gpu.register(&mut reg_dst)?;
        let gbs = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            f()?; // warm-up
            let mut v = Vec::new();
            for _ in 0..a.rounds.max(1) {
                let t = Instant::now();
                for _ in 0..reps {
                    f()?;
                }
                v.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
            Ok(crate::report::median(&v))
        };
        let staged_up = gbs(&mut || Ok(gpu.upload(&host, &mut dev)?))?;
        let reg_up = gbs(&mut || Ok(gpu.upload_registered(&reg_src, 0..size, &mut dev)?))?;
        let raw_up = gbs(&mut || raw_copy(&stream, &mut pinned, &mut dev, Dir::Up))?;
        let staged_down = gbs(&mut || Ok(gpu.download(&dev, &mut back)?))?;
        anyhow::ensure!(back == host, "the bytes came back changed (staged)");
        let reg_down = gbs(&mut || Ok(gpu.download_registered(&dev, &mut reg_dst, 0)?))?;
        anyhow::ensure!(
            reg_dst.as_slice() == host,
            "the bytes came back changed (registered)"
        );
        let raw_down = gbs(&mut || raw_copy(&stream, &mut pinned, &mut dev, Dir::Down))?;
        for (dir, staged, reg, limit) in [
            ("host to device", staged_up, reg_up, raw_up),
            ("device to host", staged_down, reg_down, raw_down),
        ] {
            println!(
                "| {dir} | {} | {staged:.2} | {reg:.2} | {limit:.2} | {:.2}x | {:.2}x |",
                crate::report::size_label(size as u64),
                staged / limit,
                reg / limit
            );
        }
    }
    if a.prefix_tokens > 0 {
        prefix::run(&gpu, a)?;
    }
    Ok(())
}

/// A KV prefix loaded from a real Strata server (shared-memory carrier) into device
/// memory, layer by layer, against a pinned copy of the same bytes; and the same
/// chunks served by the GPU tier, device to device.
#[cfg(feature = "gpu")]
mod prefix {
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::Context;
    use bytes::Bytes;
    use strata_kv_connector::gpu::{Gpu, GpuTier};
    use strata_server::Server;
    use strata_server::config::{Config, DataConfig, ServerConfig};
    use strata_tiers::Key;
    use strata_transport::data::{CarrierChoice, DataOptions};
    use strata_transport::wire::KeyRange;
    use strata_transport::{Client, ClientOptions};

    use super::{GpuArgs, cuda};
    use crate::report::median;

    /// Llama-3.1-8B's KV: 32 layers, K and V of 8 heads of 128, bf16.
    const LAYERS: usize = 32;
    const PER_TOKEN_LAYER: usize = 2 * 8 * 128 * 2;
    const CHUNK_TOKENS: usize = 256;

    pub(super) fn run(gpu: &Gpu, a: &GpuArgs) -> anyhow::Result<()> {
        let chunks = (a.prefix_tokens / CHUNK_TOKENS).max(1);
        let layer_chunk = CHUNK_TOKENS * PER_TOKEN_LAYER; // one layer of one chunk
        let layer = chunks * layer_chunk; // one layer of the prefix
        let total = LAYERS * layer;
        let server_rt = crate::runtime(2, "strata-server")?;
        let rt = crate::runtime(a.lanes.max(2), "gpu-prefix")?;
        let dir = tempfile::tempdir()?;
        let config = Config {
            server: ServerConfig {
                listen: "127.0.0.1:0".into(),
                metrics_listen: "127.0.0.1:0".into(),
                ..ServerConfig::default()
            },
            data: DataConfig {
                listen: "127.0.0.1:0".into(),
                shm_socket: Some(dir.path().join("strata.sock")),
                ..DataConfig::default()
            },
            data_dir: dir.path().to_owned(),
            dram: strata_tiers::DramConfig {
                capacity: 2 * total as u64 + (256 << 20),
                ..strata_tiers::DramConfig::default()
            },
            nvme: strata_tiers::NvmeConfig {
                enabled: false,
                ..strata_tiers::NvmeConfig::default()
            },
            ..Config::default()
        };
        let running = server_rt.block_on(Server::start(config))?;
        let options = ClientOptions {
            data: DataOptions {
                carrier: CarrierChoice::Shm,
                ..DataOptions::default()
            },
            ..ClientOptions::default()
        };
        let client = rt.block_on(Client::connect(&running.addr.to_string(), options))?;
        // Each chunk stored layer-major, as the connector stores it: (layer, kv,
        // blocks, row), here without the chunk header (the copies are measured).
        let values: Vec<Vec<u8>> = (0..chunks)
            .map(|c| crate::pattern(LAYERS * layer_chunk, 1000 + c as u64))
            .collect();
        let keys: Vec<Key> = (0..chunks)
            .map(|c| Key::new("kv", "bench", format!("gpu-prefix/{c}")))
            .collect::<Result<_, _>>()?;
        for (k, v) in keys.iter().zip(&values) {
            rt.block_on(client.put(k, Bytes::from(v.clone())))?;
        }
        let mut dev = gpu.alloc(total)?;
        // Two pinned layer buffers: layer L+1 is read out of the arena while layer L
        // crosses the bus.
        let mut stage = [gpu.pinned(layer)?, gpu.pinned(layer)?];
        let stream = gpu.stream().clone();
        let client = Arc::new(client);
        let keys = Arc::new(keys);
        let lanes = a.lanes.clamp(1, chunks);
        // One layer: `lanes` MGET_RANGE requests at once, each on its own runtime
        // thread, each copying its chunks' slices out of the leased arena into
        // their places in the pinned layer buffer.
        let read_layer = |l: usize, buf: &mut [u8]| -> anyhow::Result<()> {
            let base = buf.as_mut_ptr() as usize;
            let per_lane = chunks.div_ceil(lanes);
            rt.block_on(async {
                let mut tasks = Vec::new();
                for lane in 0..lanes {
                    let (client, keys) = (client.clone(), keys.clone());
                    let first = lane * per_lane;
                    let last = (first + per_lane).min(chunks);
                    tasks.push(tokio::spawn(async move {
                        let ranges: Vec<KeyRange> = (first..last)
                            .map(|c| KeyRange {
                                key: keys[c].clone(),
                                offset: (l * layer_chunk) as u64,
                                length: Some(layer_chunk as u64),
                            })
                            .collect();
                        let got = client
                            .mget_range_with(&ranges, |i, r| {
                                let at = (first + i) * layer_chunk;
                                // SAFETY: each chunk's place in the layer buffer is
                                // written by one lane only; the buffer outlives
                                // the block_on.
                                let to = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        (base + at) as *mut u8,
                                        layer_chunk,
                                    )
                                };
                                r.read_exact(to)
                            })
                            .await?;
                        for g in got {
                            g?.context("a chunk is missing")??;
                        }
                        anyhow::Ok(())
                    }));
                }
                for t in tasks {
                    t.await??;
                }
                anyhow::Ok(())
            })
        };
        let load = |dev: &mut strata_kv_connector::gpu::CudaSlice<u8>,
                    stage: &mut [strata_kv_connector::gpu::PinnedHostSlice<u8>; 2]|
         -> anyhow::Result<()> {
            for l in 0..LAYERS {
                // Waits for the copy that last used this buffer (layer l - 2).
                read_layer(l, stage[l % 2].as_mut_slice().map_err(cuda)?)?;
                let mut view = dev.slice_mut(l * layer..(l + 1) * layer);
                stream.memcpy_htod(&stage[l % 2], &mut view).map_err(cuda)?;
            }
            stream.synchronize().map_err(cuda)
        };
        let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            f()?;
            let mut v = Vec::new();
            for _ in 0..a.rounds.max(1) {
                let t = Instant::now();
                f()?;
                v.push(t.elapsed().as_secs_f64());
            }
            Ok(median(&v))
        };
        let strata = time(&mut || load(&mut dev, &mut stage))?;
        // Check what landed: layer l of chunk c sits at l·layer + c·layer_chunk.
        let mut back = vec![0u8; total];
        gpu.download(&dev, &mut back)?;
        for (c, v) in values.iter().enumerate() {
            for l in 0..LAYERS {
                let at = l * layer + c * layer_chunk;
                anyhow::ensure!(
                    back[at..at + layer_chunk] == v[l * layer_chunk..(l + 1) * layer_chunk],
                    "layer {l} of chunk {c} landed changed"
                );
            }
        }
        let mut whole = gpu.pinned(total)?;
        whole.as_mut_slice().map_err(cuda)?.copy_from_slice(&back);
        let limit = time(&mut || super::raw_copy(&stream, &mut whole, &mut dev, super::Dir::Up))?;
        // The same chunks held hot by the GPU tier, served device to device.
        let gpu = Arc::new(Gpu::open(a.device)?);
        let mut tier = GpuTier::new(gpu.clone(), 2 * total as u64, 0.5)?;
        for (k, v) in keys.iter().zip(&values) {
            anyhow::ensure!(tier.put(k.body(), v)?, "the tier refused a chunk");
        }
        let mut dst = gpu.alloc(LAYERS * layer_chunk)?;
        let tier_secs = time(&mut || {
            for k in keys.iter() {
                tier.get_on_device(k.body(), &mut dst)?
                    .context("not held")?;
            }
            Ok(())
        })?;
        let gb = total as f64 / 1e9;
        println!(
            "\n### {}-token prefix ({} chunks, {:.0} MiB of KV, Llama-3.1-8B geometry) into device memory, medians of {}\n",
            chunks * CHUNK_TOKENS,
            chunks,
            total as f64 / (1 << 20) as f64,
            a.rounds
        );
        println!("| path | time | GB/s | / pinned limit |");
        println!("| --- | ---: | ---: | ---: |");
        for (name, secs) in [
            (
                &*format!("Strata shm → pinned staging ({lanes} lanes) → device, layer by layer"),
                strata,
            ),
            ("limit: one pinned cuMemcpyHtoD of the same bytes", limit),
            ("GPU tier → device (device to device, per chunk)", tier_secs),
        ] {
            println!(
                "| {name} | {:.1} ms | {:.2} | {:.2}x |",
                secs * 1e3,
                gb / secs,
                limit / secs
            );
        }
        drop(client);
        server_rt
            .block_on(running.shutdown())
            .context("server shutdown")?;
        Ok(())
    }
}
