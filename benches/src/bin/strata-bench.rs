//! `strata-bench`: end-to-end load generator. Each subcommand measures Strata
//! (ours), the peer a user would pick instead, and the machine's limit for the
//! same work, in one invocation, and prints markdown rows with their ratios.
//!
//! - `grpc-vs-redis`: Strata's gRPC `Get` (the real server, in process, on its own
//!   runtime) vs Redis `GET` (a `redis-server` child) vs a raw TCP
//!   request/response, closed loop, N clients each on its own connection.
//! - `nvme-vs-odirect`: sequential reads of values from the NVMe tier (closed and
//!   reopened, page cache dropped when root) vs plain `O_DIRECT` reads of a file
//!   of the same bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use strata_benches::load::{Getter, Series, run_closed_loop};
use strata_benches::rawtcp::{RawConn, RawServer};
use strata_benches::redis::RedisServer;
use strata_benches::report::{Measure, Row, gbps, latency_histogram, median, size_label};
use strata_benches::resp::RespConn;
use strata_benches::{datapath, odirect, pagecache, pattern, runtime};
use strata_server::config::{OriginKindConfig, ServerConfig};
use strata_server::{ByteSize, Config, Server};
use strata_tiers::{GetOptions, Key, NvmeConfig, NvmeTier, PutOptions, PutOutcome, Tier};
use strata_transport::{Client, ClientOptions};

/// gRPC for values too: this bench measures the control path's Get.
fn grpc_only() -> ClientOptions {
    ClientOptions {
        data_path: false,
        ..ClientOptions::default()
    }
}

/// The same allocator as `strata-server`, for the in-process server and the clients.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "strata-bench",
    about = "Strata end-to-end benchmarks: ours vs peer vs limit"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Strata gRPC Get vs Redis GET vs raw loopback TCP, closed loop.
    GrpcVsRedis(GrpcArgs),
    /// NVMe-tier sequential reads vs plain O_DIRECT reads of the same bytes.
    NvmeVsOdirect(NvmeArgs),
    /// The binary data path (TCP, shared memory) vs Redis, raw sockets, memcpy, gRPC.
    DataPath(datapath::DataArgs),
    /// The KV connector: chat-trace replay (Strata, Redis, none) and 4k-prefix loads.
    KvConnector(strata_benches::kvconn::KvArgs),
    /// Host-device copies of the KV connector's GPU path vs pinned cuMemcpy (feature
    /// `gpu`; says so and exits without a GPU).
    GpuCopy(strata_benches::gpucopy::GpuArgs),
    /// N nodes on this machine reading one dataset at once: origin reads per page,
    /// loader throughput vs the SDK, a peer read vs a local hit vs raw TCP.
    Cluster(strata_benches::cluster::ClusterArgs),
    /// Placement at 1k-100k simulated members: lookup time, keys moved, load.
    ClusterSim(strata_benches::clustersim::ClusterSimArgs),
    /// Training-shard eviction: LRU, no-evict, clairvoyant and offline Belady, simulated.
    ShardSim(strata_benches::shardsim::SimArgs),
    /// The training loader end to end with Azurite as the origin, vs the Blob SDK.
    Training(strata_benches::training::TrainingArgs),
    /// One origin GET on Azurite by size, concurrency, and ETag pinning.
    OriginGet(strata_benches::origin::OriginArgs),
    /// Ours / limit / ratio rows from the medians of the criterion `dram` bench.
    CriterionSummary(SummaryArgs),
}

#[derive(Debug, Args)]
struct SummaryArgs {
    /// criterion's output directory (`<target dir>/criterion`).
    #[arg(long, default_value = "target/criterion")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct GrpcArgs {
    /// Value sizes, comma-separated ("256KiB,1MiB,4MiB").
    #[arg(long, default_value = "1MiB", value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Measured seconds per system per round.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured warm-up seconds before each measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds; each round runs every system once, in a rotating order. Throughput
    /// is the median over rounds; latencies come from all rounds together.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only this system (for profiling one side); prints no table.
    #[arg(long, value_enum)]
    only: Option<System>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    Strata,
    Redis,
    Raw,
}

#[derive(Debug, Args)]
struct NvmeArgs {
    /// Working directory (created, and removed afterwards unless --keep). Keep it
    /// on the disk under test: not tmpfs.
    #[arg(long, default_value = "./strata-bench-data")]
    dir: PathBuf,
    /// Bytes to write and read back.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    total: u64,
    /// Size of each value (and of each O_DIRECT request).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    value_size: u64,
    /// Read rounds (page cache dropped before each pass when permitted).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Use foyer's io_uring engine in the NVMe tier (default: psync, as the server).
    #[arg(long)]
    io_uring: bool,
    /// Use buffered I/O (the page cache) instead of O_DIRECT in the NVMe tier.
    #[arg(long)]
    buffered: bool,
    /// Keep the working directory.
    #[arg(long)]
    keep: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    ByteSize::parse(s).map(|b| b.0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::GrpcVsRedis(a) => grpc_vs_redis(&a),
        Cmd::NvmeVsOdirect(a) => nvme_vs_odirect(&a),
        Cmd::DataPath(a) => datapath::run(&a),
        Cmd::KvConnector(a) => strata_benches::kvconn::run(&a),
        Cmd::GpuCopy(a) => strata_benches::gpucopy::run(&a),
        Cmd::Cluster(a) => strata_benches::cluster::run(&a),
        Cmd::ClusterSim(a) => strata_benches::clustersim::run(&a),
        Cmd::ShardSim(a) => strata_benches::shardsim::run(&a),
        Cmd::Training(a) => strata_benches::training::run(&a),
        Cmd::OriginGet(a) => strata_benches::origin::run(&a),
        Cmd::CriterionSummary(a) => criterion_summary(&a),
    }
}

// ---------------------------------------------------------------- grpc-vs-redis

struct StrataGetter {
    client: Client,
    key: Key,
    len: usize,
}

impl Getter for StrataGetter {
    async fn get(&mut self) -> anyhow::Result<usize> {
        let (_, data) = self
            .client
            .get_range(&self.key, 0, None)
            .await?
            .context("strata: value missing")?;
        ensure!(
            data.len() == self.len,
            "strata returned {} bytes",
            data.len()
        );
        Ok(data.len())
    }
}

struct RedisGetter {
    conn: RespConn,
    key: Vec<u8>,
    len: usize,
}

impl Getter for RedisGetter {
    async fn get(&mut self) -> anyhow::Result<usize> {
        let data = self.conn.get(&self.key).await?.context("redis: nil")?;
        ensure!(
            data.len() == self.len,
            "redis returned {} bytes",
            data.len()
        );
        Ok(data.len())
    }
}

struct RawGetter {
    conn: RawConn,
    len: usize,
}

impl Getter for RawGetter {
    async fn get(&mut self) -> anyhow::Result<usize> {
        Ok(self.conn.get(self.len).await?.len())
    }
}

fn grpc_vs_redis(a: &GrpcArgs) -> anyhow::Result<()> {
    ensure!(
        a.clients > 0 && a.rounds > 0,
        "--clients and --rounds must be positive"
    );
    let max = a.sizes.iter().copied().max().context("--sizes is empty")? as usize;
    // The server gets its own runtime, as it would in its own process; the clients
    // (for all three systems) share another. Both have 2 workers: this machine's cores.
    let server_rt = runtime(2, "strata-server")?;
    let client_rt = runtime(2, "bench-client")?;
    let data_dir = tempfile::tempdir()?;
    let config = Config {
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
        data_dir: data_dir.path().to_owned(),
        dram: strata_tiers::DramConfig {
            capacity: 4 * max as u64 * a.sizes.len() as u64 + (64 << 20),
            ..Default::default()
        },
        nvme: strata_tiers::NvmeConfig {
            enabled: false,
            ..Default::default()
        },
        origin: strata_server::config::OriginSection {
            kind: OriginKindConfig::None,
            ..Default::default()
        },
        ..Config::default()
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server_rt.block_on(Server::start(config))?;
    let raw = server_rt.block_on(RawServer::start(Bytes::from(pattern(max, 7))))?;
    let redis = client_rt.block_on(RedisServer::start())?;
    let strata_addr = running.addr.to_string();

    println!(
        "grpc-vs-redis: strata {} (gRPC, DRAM tier), {} on {}, raw TCP limit on {}; \
         {} clients, {} s measured + {} s warm-up per system, {} rounds",
        strata_addr,
        redis.version(),
        redis.addr(),
        raw.addr(),
        a.clients,
        a.duration,
        a.warmup,
        a.rounds
    );
    let mut rows = Vec::new();
    for &size in &a.sizes {
        let len = size as usize;
        let value = Bytes::from(pattern(len, size));
        let key = Key::new("kv", "bench", format!("value-{size}"))?;
        let rkey = format!("bench:value-{size}").into_bytes();
        client_rt.block_on(async {
            let c = Client::connect(&strata_addr, grpc_only()).await?;
            c.put(&key, value.clone()).await?;
            let (info, got) = c
                .get_range(&key, 0, None)
                .await?
                .context("strata: put value missing")?;
            ensure!(got == value, "strata returned other bytes than were put");
            ensure!(
                info.tier == "dram",
                "strata served from {}, not dram",
                info.tier
            );
            let mut r = RespConn::connect(redis.addr()).await?;
            r.set(&rkey, &value).await?;
            ensure!(
                r.get(&rkey).await?.as_ref() == Some(&value),
                "redis returned other bytes"
            );
            let mut t = RawConn::connect(raw.addr()).await?;
            ensure!(t.get(len).await?.len() == len, "raw server short read");
            anyhow::Ok(())
        })?;

        let (mut ours, mut peer, mut limit) = (Series::new(), Series::new(), Series::new());
        let warm = Duration::from_secs_f64(a.warmup);
        let dur = Duration::from_secs_f64(a.duration);
        for round in 0..a.rounds {
            for turn in 0..3 {
                let which = (round + turn) % 3;
                let system = [System::Strata, System::Redis, System::Raw][which];
                if a.only.is_some_and(|o| o != system) {
                    continue;
                }
                let r = client_rt.block_on(async {
                    match which {
                        0 => {
                            let mut cs = Vec::new();
                            for _ in 0..a.clients {
                                let client = Client::connect(&strata_addr, grpc_only()).await?;
                                cs.push(StrataGetter {
                                    client,
                                    key: key.clone(),
                                    len,
                                });
                            }
                            run_closed_loop(cs, warm, dur).await
                        }
                        1 => {
                            let mut cs = Vec::new();
                            for _ in 0..a.clients {
                                let conn = RespConn::connect(redis.addr()).await?;
                                cs.push(RedisGetter {
                                    conn,
                                    key: rkey.clone(),
                                    len,
                                });
                            }
                            run_closed_loop(cs, warm, dur).await
                        }
                        _ => {
                            let mut cs = Vec::new();
                            for _ in 0..a.clients {
                                cs.push(RawGetter {
                                    conn: RawConn::connect(raw.addr()).await?,
                                    len,
                                });
                            }
                            run_closed_loop(cs, warm, dur).await
                        }
                    }
                })?;
                let name = ["strata", "redis", "raw-tcp"][which];
                eprintln!(
                    "  round {} {:>7} {}: {:.2} GB/s, {} requests, p50 {:.0} µs",
                    round + 1,
                    name,
                    size_label(size),
                    r.gbps(),
                    r.requests,
                    r.latency.value_at_quantile(0.5) as f64 / 1e3
                );
                [&mut ours, &mut peer, &mut limit][which].add(&r)?;
            }
        }
        rows.push(Row {
            bench: "gRPC Get vs Redis GET (limit: raw TCP req/resp)".into(),
            case: format!("{}, {} clients", size_label(size), a.clients),
            ours: ours.measure(),
            peer: Some(peer.measure()),
            limit: Some(limit.measure()),
        });
    }
    if a.only.is_none() {
        println!();
        println!("{}", Row::header());
        for r in &rows {
            println!("{}", r.markdown());
        }
    }
    drop(raw);
    drop(redis);
    server_rt.block_on(running.shutdown())?;
    Ok(())
}

// ---------------------------------------------------------------- nvme-vs-odirect

/// `statfs` type of `dir`'s filesystem, and whether it is tmpfs/ramfs (no disk).
fn fs_kind(dir: &Path) -> anyhow::Result<(String, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statfs");
    }
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const OVERLAY: i64 = 0x794c_7630;
    let t = st.f_type as i64;
    let name = match t {
        TMPFS => "tmpfs",
        RAMFS => "ramfs",
        EXT4 => "ext4",
        XFS => "xfs",
        OVERLAY => "overlayfs",
        _ => "other",
    };
    Ok((format!("{name} (0x{t:x})"), t == TMPFS || t == RAMFS))
}

fn cache_note(dropped: bool, resident: (u64, u64)) -> String {
    format!(
        "page cache {}; {} of {} resident before the pass",
        if dropped {
            "dropped"
        } else {
            "NOT dropped (not root)"
        },
        size_label(resident.0),
        size_label(resident.1)
    )
}

fn nvme_vs_odirect(a: &NvmeArgs) -> anyhow::Result<()> {
    let vs = a.value_size as usize;
    ensure!(
        vs > 0 && vs.is_multiple_of(odirect::ALIGN),
        "--value-size must be a multiple of 4 KiB"
    );
    let count = (a.total / a.value_size) as usize;
    ensure!(
        count > 0 && a.rounds > 0,
        "--total must hold at least one value; --rounds > 0"
    );
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("clearing {}", a.dir.display()))?;
    }
    let tier_dir = a.dir.join("nvme");
    let plain = a.dir.join("plain.bin");
    std::fs::create_dir_all(&tier_dir)?;
    let (fs, in_memory) = fs_kind(&a.dir)?;
    let block = 16u64 << 20;
    ensure!(
        a.value_size + (64 << 10) < block,
        "--value-size must be well under 16 MiB"
    );
    let config = NvmeConfig {
        dir: Some(tier_dir.clone()),
        // Room for everything with at most 3 values per block, and then some.
        capacity: (count as u64).div_ceil(3).max(8) * block * 2,
        block_size: block,
        buffer_pool_size: 64 << 20,
        io_uring: a.io_uring,
        direct_io: !a.buffered,
        enabled: true,
    };
    let rt = runtime(2, "bench-nvme")?;
    let key = |i: usize| Ok(Key::new("kv", "bench", format!("nvme-{i:05}"))?);

    // Write: ours through the tier (+ syncfs so the bytes are on disk, as the limit's
    // are after its fdatasync), then the limit.
    // Values are generated up front so that both passes are timed wall-clock with
    // no idle gaps (in which the kernel could write back for free).
    let values: Vec<Bytes> = (0..count)
        .map(|i| Bytes::from(pattern(vs, i as u64)))
        .collect();
    let (tier_write, io_engine) = rt.block_on(async {
        let tier = NvmeTier::open(&config).await?;
        let mut hist = latency_histogram();
        let start = Instant::now();
        for (i, v) in values.iter().enumerate() {
            let t0 = Instant::now();
            let out = tier
                .put(&key(i)?, v.clone(), &PutOptions::default())
                .await?;
            hist.saturating_record(t0.elapsed().as_nanos() as u64);
            ensure!(
                out == PutOutcome::Stored,
                "the NVMe tier dropped value {i} (write buffers full)"
            );
        }
        syncfs(&tier_dir)?;
        let secs = start.elapsed().as_secs_f64();
        let engine = (tier.io_engine(), tier.direct_io());
        tier.close().await?;
        anyhow::Ok((Measure::with_latency(gbps(a.total, secs), &hist), engine))
    })?;
    let chunks = values
        .iter()
        .map(|v| {
            let mut b = odirect::AlignedBuf::new(vs)?;
            b.as_mut_slice().copy_from_slice(v);
            Ok(b)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(values);
    let plain_write = odirect::write_file(&plain, &chunks)?;
    drop(chunks);
    println!(
        "nvme-vs-odirect: {} in {} × {} values; dir {} on {}; NVMe tier: foyer block engine, \
         {} I/O engine, {}; limit: one file, \
         O_DIRECT, pread of {} at a time; both sequential, one request at a time (QD1); {} rounds",
        size_label(count as u64 * a.value_size),
        count,
        size_label(a.value_size),
        a.dir.display(),
        fs,
        io_engine.0,
        if io_engine.1 {
            "O_DIRECT"
        } else {
            "buffered (page cache)"
        },
        size_label(a.value_size),
        a.rounds
    );
    if in_memory {
        println!(
            "WARNING: {} is in memory (tmpfs/ramfs): these are not disk figures",
            a.dir.display()
        );
    }

    // Three passes per round, in a rotating order: the tier (ours), the plain file
    // with O_DIRECT (the limit) and, as a diagnostic, the plain file through the page
    // cache (what buffered I/O itself costs on this disk).
    let mut ours = Series::new();
    let mut lim = Series::new();
    let mut buffered = Series::new();
    let mut paired = Vec::new();
    let check = |i: usize, got: &[u8]| {
        ensure!(
            got == pattern(vs, i as u64).as_slice(),
            "plain file value {i} differs"
        );
        Ok(())
    };
    for round in 0..a.rounds {
        let (mut o, mut l) = (0.0, 0.0);
        for turn in 0..3 {
            let dropped = pagecache::drop_caches()?;
            match (round + turn) % 3 {
                0 => {
                    let resident = pagecache::resident_bytes_dir(&tier_dir)?;
                    let (g, hist, open_secs, after_open) =
                        rt.block_on(tier_read(&config, count, vs, &key))?;
                    eprintln!(
                        "  round {} nvme tier        : {g:.2} GB/s (open {open_secs:.2} s, untimed); {}; {} resident after open",
                        round + 1,
                        cache_note(dropped, resident),
                        size_label(after_open)
                    );
                    ours.push(g, &hist)?;
                    o = g;
                }
                1 => {
                    let resident = pagecache::resident_bytes(&plain)?;
                    let p = odirect::read_file(&plain, vs, count, true, check)?;
                    let g = gbps(p.bytes, p.secs);
                    eprintln!(
                        "  round {} plain O_DIRECT   : {g:.2} GB/s; {} (O_DIRECT bypasses it)",
                        round + 1,
                        cache_note(dropped, resident)
                    );
                    lim.push(g, &p.latency)?;
                    l = g;
                }
                _ => {
                    let resident = pagecache::resident_bytes(&plain)?;
                    let p = odirect::read_file(&plain, vs, count, false, check)?;
                    let g = gbps(p.bytes, p.secs);
                    eprintln!(
                        "  round {} plain buffered   : {g:.2} GB/s; {}",
                        round + 1,
                        cache_note(dropped, resident)
                    );
                    buffered.push(g, &p.latency)?;
                }
            }
        }
        paired.push(o / l);
    }
    println!(
        "per-round tier/O_DIRECT ratios: {} (median {:.2}×)",
        paired
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&paired)
    );
    let case = format!("{} × {}, sequential, QD1", count, size_label(a.value_size));
    let rows = [
        Row {
            bench: "NVMe tier read vs O_DIRECT read".into(),
            case: case.clone(),
            ours: ours.measure(),
            peer: None,
            limit: Some(lim.measure()),
        },
        Row {
            bench: "(diagnostic) plain buffered read vs O_DIRECT read".into(),
            case: case.clone(),
            ours: buffered.measure(),
            peer: None,
            limit: Some(lim.measure()),
        },
        Row {
            bench: "NVMe tier write+syncfs vs O_DIRECT write+fdatasync (one pass)".into(),
            case,
            ours: tier_write,
            peer: None,
            limit: Some(Measure::with_latency(
                gbps(plain_write.bytes, plain_write.secs),
                &plain_write.latency,
            )),
        },
    ];
    println!();
    println!("{}", Row::header());
    for r in &rows {
        println!("{}", r.markdown());
    }
    if !a.keep {
        std::fs::remove_dir_all(&a.dir)?;
    }
    Ok(())
}

/// Opens the tier (untimed), reads every value once in order (timed wall-clock,
/// and per get), checks them all afterwards (untimed), closes it. Returns GB/s, latencies, the open time and the
/// bytes of the tier's files in the page cache once open (recovery reads some).
async fn tier_read(
    config: &NvmeConfig,
    count: usize,
    vs: usize,
    key: &impl Fn(usize) -> strata_tiers::Result<Key>,
) -> anyhow::Result<(f64, Histogram<u64>, f64, u64)> {
    let t0 = Instant::now();
    let tier = NvmeTier::open(config).await?;
    let open_secs = t0.elapsed().as_secs_f64();
    let (after_open, _) = pagecache::resident_bytes_dir(&config.dir())?;
    let mut hist = latency_histogram();
    let opts = GetOptions::default();
    let mut got = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        let v = tier.get(&key(i)?, &opts).await?;
        hist.saturating_record(t0.elapsed().as_nanos() as u64);
        got.push(v);
    }
    let secs = start.elapsed().as_secs_f64();
    for (i, v) in got.into_iter().enumerate() {
        let Some(v) = v else {
            bail!("the NVMe tier lost value {i} across close/reopen");
        };
        ensure!(v == pattern(vs, i as u64), "NVMe tier value {i} differs");
    }
    tier.close().await?;
    Ok((gbps((count * vs) as u64, secs), hist, open_secs, after_open))
}

fn syncfs(dir: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

// ---------------------------------------------------------------- criterion-summary

/// One criterion result: bytes per iteration and the median time per iteration.
fn criterion_median(dir: &Path, group: &str, function: &str) -> anyhow::Result<Option<(u64, f64)>> {
    let base = dir.join(group).join(function).join("new");
    if !base.exists() {
        return Ok(None);
    }
    let read = |f: &str| -> anyhow::Result<serde_json::Value> {
        let p = base.join(f);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let bench = read("benchmark.json")?;
    let est = read("estimates.json")?;
    let bytes = bench["throughput"]["Bytes"]
        .as_u64()
        .with_context(|| format!("{group}/{function}: no byte throughput"))?;
    let ns = est["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{group}/{function}: no median"))?;
    Ok(Some((bytes, ns)))
}

fn criterion_summary(a: &SummaryArgs) -> anyhow::Result<()> {
    let mut groups: Vec<(u64, String)> = Vec::new();
    for e in std::fs::read_dir(&a.dir).with_context(|| format!("listing {}", a.dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("dram-")
            && let Some((bytes, _)) = criterion_median(&a.dir, &name, "memcpy_get")?
        {
            groups.push((bytes, name));
        }
    }
    ensure!(
        !groups.is_empty(),
        "no dram-* results under {} (run `cargo bench -p strata-benches --bench dram` first)",
        a.dir.display()
    );
    groups.sort();
    let cases = [
        (
            "DRAM tier get (zero-copy `Bytes`) vs memcpy",
            "tier_get",
            "memcpy_get",
        ),
        (
            "DRAM tier get + copy out vs memcpy",
            "tier_get_copy",
            "memcpy_get",
        ),
        (
            "TieredStore get (zero-copy) vs memcpy",
            "store_get",
            "memcpy_get",
        ),
        (
            "TieredStore get + copy out vs memcpy",
            "store_get_copy",
            "memcpy_get",
        ),
        ("DRAM tier put vs memcpy", "tier_put", "memcpy_put"),
    ];
    let measure = |bytes: u64, ns: f64| Measure {
        gbps: bytes as f64 / ns,
        p50_us: Some(ns / 1e3),
        p99_us: None,
    };
    println!("criterion medians (time column: median µs per operation)");
    println!();
    println!("{}", Row::header());
    for (bench, ours, limit) in cases {
        for (_, group) in &groups {
            let (Some((bytes, o)), Some((_, l))) = (
                criterion_median(&a.dir, group, ours)?,
                criterion_median(&a.dir, group, limit)?,
            ) else {
                continue;
            };
            let row = Row {
                bench: bench.into(),
                case: size_label(bytes),
                ours: measure(bytes, o),
                peer: None,
                limit: Some(measure(bytes, l)),
            };
            println!("{}", row.markdown());
        }
    }
    Ok(())
}
