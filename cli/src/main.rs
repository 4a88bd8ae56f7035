//! `strata`: the admin CLI.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use strata_transport::{Client, ClientOptions, Key, proto};

/// Strata admin CLI. Keys are written NAMESPACE/KEY or NAMESPACE/TENANT/KEY.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address.
    #[arg(
        long,
        env = "STRATA_ADDR",
        default_value = "127.0.0.1:7070",
        global = true
    )]
    addr: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Is the server up? Version, uptime and tier use.
    Status,
    /// Per-tier, per-namespace counters.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Store a value from FILE or standard input ("-", the default).
    Put {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
        /// Input file, or - for standard input.
        file: Option<PathBuf>,
        /// Pin the value in DRAM.
        #[arg(long)]
        pin: bool,
    },
    /// Read a value to standard output or a file.
    Get {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
        /// Output file.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Delete a value (from the origin too, for write-through namespaces).
    Rm {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
    },
    /// List values of a namespace (NS or NS/TENANT) by key prefix.
    Ls {
        /// NAMESPACE or NAMESPACE/TENANT
        namespace: String,
        /// Key prefix.
        prefix: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Hold a value in DRAM.
    Pin {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
    },
    /// Release a pin.
    Unpin {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
    },
    /// Drop a value from the cache tiers (the origin keeps it).
    Evict {
        /// NAMESPACE/[TENANT/]KEY
        key: String,
    },
    /// Training datasets: manifests of shards on the origin.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// The cluster the server is a member of (docs/cluster.md).
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Members of the server's cell: state, share of the keys, bytes held, and
    /// whether each answers.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Drain a member: it leaves placement (clients and peers send its keys to
    /// the next owners) and keeps serving what it holds until it stops.
    Drain {
        /// The member's id, or a prefix of it naming one member (`strata cluster
        /// status` lists them).
        node: String,
        /// Make it active again instead.
        #[arg(long)]
        cancel: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetCmd {
    /// List the blobs under SOURCE (an origin prefix, or a Blob URL of the origin's
    /// account) into a manifest; a changed listing makes a new version.
    Add {
        /// The dataset's name.
        name: String,
        /// BLOB_URL_OR_PREFIX
        source: String,
        /// Origin requests in flight for this dataset (default 32).
        #[arg(long)]
        concurrency: Option<u32>,
    },
    /// List datasets.
    Ls,
    /// Show a dataset version and its first shards.
    Show {
        /// The dataset's name.
        name: String,
        /// A version (default: the current one).
        #[arg(long, default_value = "")]
        version: String,
        /// Shards to print (0: all).
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Read every shard into the cache, skipping what is cached (rerun to resume).
    Preload {
        /// The dataset's name.
        name: String,
        /// A version (default: the current one).
        #[arg(long, default_value = "")]
        version: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn human(n: u64) -> String {
    let b = n as f64;
    match n {
        n if n >= 1 << 40 => format!("{:.1} TiB", b / (1u64 << 40) as f64),
        n if n >= 1 << 30 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        n => format!("{n} B"),
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&args.addr, ClientOptions::default()).await?;
    let key = |s: &str| Key::parse_path(s);
    match args.cmd {
        Cmd::Dataset(cmd) => dataset(&client, cmd).await?,
        Cmd::Cluster(ClusterCmd::Status { json }) => cluster_status(&client, json).await?,
        Cmd::Cluster(ClusterCmd::Drain { node, cancel }) => {
            let r = proto::cache_client::CacheClient::new(client.channel().clone())
                .drain(proto::DrainRequest { node, cancel })
                .await?
                .into_inner();
            if cancel {
                println!("member {}: {} (it owns keys again)", r.node, r.state);
            } else {
                println!(
                    "member {}: {} (its keys go to the next owners; it serves what it holds until it stops)",
                    r.node, r.state
                );
            }
        }
        Cmd::Status => {
            let s = client.stats().await?;
            println!(
                "strata {} at {}: up {}s",
                s.version, args.addr, s.uptime_secs
            );
            for t in &s.tiers {
                let total = t.total.unwrap_or_default();
                let cap = if t.capacity_bytes == u64::MAX {
                    "unbounded".into()
                } else {
                    human(t.capacity_bytes)
                };
                println!(
                    "  {:<9} {:>10} used of {:>10}, {} entries",
                    t.tier,
                    human(t.used_bytes),
                    cap,
                    total.entries
                );
            }
        }
        Cmd::Stats { json } => {
            let s = client.stats().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats_json(&s))?);
            } else {
                print_stats(&s);
            }
        }
        Cmd::Put { key: k, file, pin } => {
            let k = key(&k)?;
            let data = match file {
                Some(p) if p.as_os_str() != "-" => std::fs::read(&p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
                _ => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
            };
            let r = client.put_with(&k, Bytes::from(data), pin).await?;
            eprintln!(
                "stored {} ({} bytes, crc32c {:08x})",
                k.display_path(),
                r.length,
                r.crc32c
            );
        }
        Cmd::Get { key: k, output } => {
            let k = key(&k)?;
            let Some((_, data)) = client.get_range(&k, 0, None).await? else {
                anyhow::bail!("{} not found", k.display_path());
            };
            match output {
                Some(p) => std::fs::write(&p, &data)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?,
                None => std::io::stdout().write_all(&data)?,
            }
        }
        Cmd::Rm { key: k } => {
            let k = key(&k)?;
            if !client.delete(&k).await? {
                anyhow::bail!("{} not found", k.display_path());
            }
        }
        Cmd::Ls {
            namespace,
            prefix,
            limit,
        } => {
            let (ns, tenant) = namespace.split_once('/').unwrap_or((&namespace, ""));
            let r = client
                .list(ns, tenant, prefix.unwrap_or_default().as_bytes(), limit)
                .await?;
            for e in &r.entries {
                let k = e.key.clone().unwrap_or_default();
                let t = if k.tenant.is_empty() {
                    String::new()
                } else {
                    format!("{}/", k.tenant)
                };
                println!(
                    "{:>10}  {:<6}  {}/{t}{}",
                    e.length,
                    e.tier,
                    k.namespace,
                    String::from_utf8_lossy(&k.body)
                );
            }
            if r.truncated {
                eprintln!("(truncated at {limit}; use --limit)");
            }
        }
        Cmd::Pin { key: k } => {
            let k = key(&k)?;
            if !client.pin(&k).await? {
                anyhow::bail!("{} not found", k.display_path());
            }
        }
        Cmd::Unpin { key: k } => {
            let k = key(&k)?;
            if !client.unpin(&k).await? {
                anyhow::bail!("{} is not pinned", k.display_path());
            }
        }
        Cmd::Evict { key: k } => {
            let k = key(&k)?;
            if !client.evict(&k).await? {
                anyhow::bail!("{} is not cached", k.display_path());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What one member says about itself: bytes held in its tiers, or why it did not
/// answer.
async fn member_bytes(grpc: &str) -> Result<u64, String> {
    let options = ClientOptions {
        data_path: false,
        timeout: std::time::Duration::from_secs(2),
        connect_timeout: std::time::Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let c = Client::connect(grpc, options)
        .await
        .map_err(|e| e.to_string())?;
    let s = c.stats().await.map_err(|e| e.to_string())?;
    Ok(s.tiers.iter().map(|t| t.used_bytes).sum())
}

async fn cluster_status(client: &Client, json: bool) -> anyhow::Result<()> {
    use strata_proto::placement::{Member, Placement};
    let m = client.members().await?;
    if m.cluster.is_empty() {
        if json {
            println!("{}", serde_json::json!({ "cluster": null }));
        } else {
            println!("not in a cluster: a single node (start it with --etcd to join one)");
        }
        return Ok(());
    }
    let active: Vec<Member> = m
        .members
        .iter()
        .filter(|x| x.state == "active")
        .map(|x| Member::new(x.id.clone(), x.weight))
        .collect();
    let placement = Placement::new(active)?;
    let shares: std::collections::HashMap<&str, f64> = placement
        .members()
        .iter()
        .map(|x| x.id.as_str())
        .zip(placement.shares())
        .collect();
    let bytes = futures::future::join_all(m.members.iter().map(|x| member_bytes(&x.grpc))).await;
    if json {
        let members: Vec<_> = m
            .members
            .iter()
            .zip(&bytes)
            .map(|(x, b)| {
                serde_json::json!({
                    "id": x.id, "state": x.state, "grpc": x.grpc, "data": x.data,
                    "zone": x.zone, "weight": x.weight,
                    "share": shares.get(x.id.as_str()).copied().unwrap_or(0.0),
                    "dram_bytes": x.dram_bytes, "nvme_bytes": x.nvme_bytes,
                    "bytes_held": b.as_ref().ok(), "error": b.as_ref().err(),
                    "healthy": b.is_ok(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "cluster": m.cluster, "cell": m.cell, "revision": m.revision,
            "answered_by": m.self_id, "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "cluster {}, cell {}: {} members ({} active) at etcd revision {}, as {} sees it",
        m.cluster,
        m.cell,
        m.members.len(),
        m.members.iter().filter(|x| x.state == "active").count(),
        m.revision,
        m.self_id
    );
    println!(
        "{:<32}  {:<8}  {:>6}  {:<21}  {:<8}  {:>6}  {:>10}  {:>10}  health",
        "id", "state", "share", "grpc", "zone", "weight", "dram", "held"
    );
    for (x, b) in m.members.iter().zip(&bytes) {
        let share = shares
            .get(x.id.as_str())
            .map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0));
        let (held, health) = match b {
            Ok(n) => (human(*n), "ok".to_owned()),
            Err(e) => ("-".to_owned(), format!("down: {e}")),
        };
        println!(
            "{:<32}  {:<8}  {:>6}  {:<21}  {:<8}  {:>6}  {:>10}  {:>10}  {health}",
            x.id,
            x.state,
            share,
            x.grpc,
            if x.zone.is_empty() { "-" } else { &x.zone },
            x.weight,
            human(x.dram_bytes),
            held
        );
    }
    Ok(())
}

fn counters_json(c: &proto::Counters) -> serde_json::Value {
    serde_json::json!({
        "entries": c.entries, "bytes": c.bytes, "hits": c.hits, "misses": c.misses,
        "evictions": c.evictions, "demotions": c.demotions, "origin_reads": c.origin_reads,
        "dropped_writes": c.dropped_writes, "checksum_failures": c.checksum_failures,
        "bypasses": c.bypasses,
    })
}

fn stats_json(s: &proto::StatsResponse) -> serde_json::Value {
    let tiers: Vec<_> = s
        .tiers
        .iter()
        .map(|t| {
            let ns: serde_json::Map<_, _> = t
                .namespaces
                .iter()
                .map(|(k, v)| (k.clone(), counters_json(v)))
                .collect();
            serde_json::json!({
                "tier": t.tier,
                "capacity_bytes": (t.capacity_bytes != u64::MAX).then_some(t.capacity_bytes),
                "used_bytes": t.used_bytes,
                "total": counters_json(&t.total.unwrap_or_default()),
                "namespaces": ns,
            })
        })
        .collect();
    serde_json::json!({ "version": s.version, "uptime_secs": s.uptime_secs, "tiers": tiers })
}

fn print_stats(s: &proto::StatsResponse) {
    println!(
        "{:<9} {:<6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "TIER",
        "NS",
        "ENTRIES",
        "BYTES",
        "HITS",
        "MISSES",
        "EVICT",
        "DEMOTE",
        "ORIGIN",
        "DROPPED",
        "BADSUM",
        "BYPASS"
    );
    for t in &s.tiers {
        let mut rows: Vec<(String, proto::Counters)> =
            t.namespaces.iter().map(|(k, v)| (k.clone(), *v)).collect();
        rows.push(("*".into(), t.total.unwrap_or_default()));
        for (ns, c) in rows {
            println!(
                "{:<9} {:<6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
                t.tier,
                ns,
                c.entries,
                human(c.bytes),
                c.hits,
                c.misses,
                c.evictions,
                c.demotions,
                c.origin_reads,
                c.dropped_writes,
                c.checksum_failures,
                c.bypasses
            );
        }
    }
}

fn print_info(d: &proto::DatasetInfo) {
    println!(
        "{}  version {}  {} shards  {}  source {}  ({} version{}, {} origin requests in flight)",
        d.name,
        d.version,
        d.shards,
        human(d.bytes),
        d.source,
        d.versions,
        if d.versions == 1 { "" } else { "s" },
        d.concurrency
    );
}

async fn dataset(client: &Client, cmd: DatasetCmd) -> anyhow::Result<()> {
    let mut rpc = proto::datasets_client::DatasetsClient::new(client.channel().clone())
        .max_decoding_message_size(64 << 20);
    match cmd {
        DatasetCmd::Add {
            name,
            source,
            concurrency,
        } => {
            let r = rpc
                .add(proto::DatasetAddRequest {
                    name,
                    source,
                    concurrency: concurrency.unwrap_or(0),
                })
                .await?
                .into_inner();
            let d = r.info.unwrap_or_default();
            print_info(&d);
            eprintln!(
                "{}",
                if r.new_version {
                    "new version recorded"
                } else {
                    "unchanged: the listing matches the current version"
                }
            );
        }
        DatasetCmd::Ls => {
            let r = rpc.list(proto::DatasetListRequest {}).await?.into_inner();
            for d in &r.datasets {
                print_info(d);
            }
        }
        DatasetCmd::Show {
            name,
            version,
            limit,
        } => {
            let r = rpc
                .show(proto::DatasetShowRequest {
                    name,
                    version,
                    offset: 0,
                    limit,
                })
                .await?
                .into_inner();
            let d = r.info.unwrap_or_default();
            print_info(&d);
            for s in &r.shards {
                println!("{:>12}  {:<24}  {}", s.size, s.etag, s.path);
            }
            if (r.shards.len() as u64) < d.shards {
                eprintln!(
                    "({} of {} shards; use --limit 0 for all)",
                    r.shards.len(),
                    d.shards
                );
            }
        }
        DatasetCmd::Preload { name, version } => {
            let mut stream = rpc
                .preload(proto::PreloadRequest { name, version })
                .await?
                .into_inner();
            let start = std::time::Instant::now();
            let mut last = proto::PreloadProgress::default();
            // Drawn on standard error, and only when it is a terminal.
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "[{bar:30}] {binary_bytes} / {binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>-"),
            );
            while let Some(p) = stream.message().await? {
                bar.set_length(p.bytes_total);
                bar.set_position(p.bytes_done);
                bar.set_message(format!("({}/{} shards)", p.shards_done, p.shards_total));
                last = p;
            }
            bar.finish_and_clear();
            eprintln!(
                "preloaded {} shards, {} ({} already cached) in {:.1}s",
                last.shards_done,
                human(last.bytes_done),
                human(last.bytes_cached),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
