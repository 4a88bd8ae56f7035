//! `strata-server`: the Strata daemon.

use std::path::PathBuf;

use std::io::IsTerminal;

use clap::Parser;
use strata_server::config::LogFormat;
use strata_server::{Config, Overrides, Server};
use tracing_subscriber::EnvFilter;

// glibc malloc serves the large, short-lived buffers of the data path (values of
// 256 KiB and up, gRPC frames) with mmap/munmap: a page fault per 4 KiB and a TLB
// shootdown per free. mimalloc keeps them in its heaps (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Strata cache server. Configuration layers: defaults, then --config FILE, then
/// STRATA__SECTION__KEY environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:7071].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Data directory (NVMe files, local origin) [default: ./strata-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// DRAM tier size, e.g. 2GiB [default: a quarter of available memory, at most 8 GiB].
    #[arg(long, value_name = "SIZE")]
    dram_capacity: Option<String>,
    /// NVMe tier size, e.g. 100GiB [default: 4GiB].
    #[arg(long, value_name = "SIZE")]
    nvme_capacity: Option<String>,
    /// Binary data path (TCP) listen address; "" turns it off [default: 127.0.0.1:7072].
    #[arg(long, value_name = "HOST:PORT")]
    data_listen: Option<String>,
    /// Unix socket of the shared-memory carrier [default: DATA_DIR/strata.sock].
    #[arg(long, value_name = "PATH")]
    shm_socket: Option<PathBuf>,
    /// Log format [default: text; ANSI colours only on a terminal].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Join a cluster through these etcd endpoints (comma-separated
    /// HOST:PORT or http://HOST:PORT) [default: none, a single node].
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// The cluster's name [default: strata].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// The host other nodes and clients reach this node at [default: the
    /// --listen host if it is a specific address, else this machine's name].
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// The cell (the members a node watches) [default: default].
    #[arg(long, value_name = "NAME")]
    cell: Option<String>,
    /// The zone (failure domain) [default: none].
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
}

/// Logs to standard output, filtered by RUST_LOG (default `info`).
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir,
        dram_capacity: args.dram_capacity,
        nvme_capacity: args.nvme_capacity,
        data_listen: args.data_listen,
        shm_socket: args.shm_socket,
        log_format: args.log_format,
        etcd: args.etcd,
        cluster: args.cluster,
        advertise: args.advertise,
        cell: args.cell,
        zone: args.zone,
    };
    match run(args.config, overrides).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref(), &overrides)?;
    init_logs(config.server.log_format);
    let running = Server::start(config.clone()).await?;
    // One server in this process: what any crate counts shows on its /metrics.
    running.metrics.install_global();
    // SIGTERM is caught from before the "listening" line: a supervisor (or a
    // test) that stops the server as soon as it says it listens gets a drain,
    // not the signal's default death.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("listening for SIGTERM: {e}"))?;
    println!(
        "strata-server listening: grpc {} (metrics http://{}/metrics), data path tcp {} shm {} rdma {}; \
         data dir {}, dram {}, nvme {}",
        running.addr,
        running.metrics_addr,
        running
            .data_addr
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        running
            .shm_socket
            .as_ref()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
        if running.data.rdma_available() {
            "on"
        } else {
            "off"
        },
        config.data_dir.display(),
        strata_server::ByteSize(config.dram.capacity),
        if config.nvme.enabled {
            strata_server::ByteSize(config.nvme.capacity).to_string()
        } else {
            "off".into()
        },
    );
    if let Some(c) = &running.cluster {
        let e = c.entry();
        let v = c.view();
        println!(
            "strata-server joined cluster {} as {} (cell {}, {} active members at etcd revision {})",
            config.cluster.name,
            e.id,
            e.cell,
            v.count(strata_server::cluster::MemberState::Active),
            v.revision
        );
    }
    let token = running.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: draining");
        token.cancel();
    });
    running.wait().await
}
