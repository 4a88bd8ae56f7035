//! The Strata daemon and the admin CLI.
//!
//! [`Server::start`] builds the tiers from a [`Config`], binds the gRPC listener
//! (`strata.v1.Cache`, `grpc.health.v1.Health`, server reflection) and the
//! Prometheus `/metrics` listener, and serves until [`Running::shutdown`] (or a
//! signal, in the binary): in-flight requests drain, the DRAM tier demotes to NVMe,
//! the tiers close.

pub mod cluster;
pub mod config;
pub mod data;
pub mod dataset;
pub mod datasets;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod oracle;
pub mod service;
mod status;
#[doc(hidden)]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::data::DataServer;
use crate::dataset::{Datasets, OriginSpec};
use anyhow::Context;
use strata_proto::v1::cache_server::CacheServer;
use strata_proto::v1::datasets_server::DatasetsServer;
use strata_tiers::{DramTier, LocalDirTier, Namespaces, NvmeConfig, NvmeTier, Origin, TieredStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::config::{ByteSize, Config, Overrides};
use self::datasets::DatasetService;
use self::metrics::Metrics;
use self::service::CacheService;

/// Largest gRPC message accepted (put chunks are far smaller).
const MAX_MESSAGE: usize = 64 << 20;

/// The server, configured but not yet started.
#[derive(Debug)]
pub struct Server;

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: SocketAddr,
    /// The bound data-path TCP address, if it is on.
    pub data_addr: Option<SocketAddr>,
    /// The shared-memory socket, if it is on.
    pub shm_socket: Option<std::path::PathBuf>,
    /// The data-path server (leases, for tests and metrics).
    pub data: Arc<DataServer>,
    /// The store (for tests and embedding).
    pub store: TieredStore,
    /// The dataset registry (for tests and embedding).
    pub datasets: Arc<Datasets>,
    /// The metrics (the binary installs them as the global recorder).
    pub metrics: Arc<Metrics>,
    /// This node's cluster membership, when it joined one (`cluster.etcd`).
    pub cluster: Option<Arc<cluster::Cluster>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Builds the tiers, binds both listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        match limits::raise_fd_limit() {
            Ok(n) => tracing::debug!(open_files = n, "file descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "the file descriptor limit could not be read"),
        }
        let store = build_store(&config).await?;
        let origin_spec = match config.origin.kind {
            config::OriginKindConfig::Localdir => OriginSpec::Dir(config.origin_dir()),
            config::OriginKindConfig::Blob => match config.origin.blob.clone() {
                Some(b) => OriginSpec::Blob(b),
                None => OriginSpec::None,
            },
            config::OriginKindConfig::None => OriginSpec::None,
        };
        let datasets = Datasets::open(store.clone(), origin_spec)
            .await
            .context("loading the dataset registry")?;
        if config.cluster.enabled() {
            for ns in config.cluster.replicas.keys() {
                let p = store
                    .namespaces()
                    .get(ns)
                    .with_context(|| format!("cluster.replicas.{ns}"))?;
                anyhow::ensure!(
                    p.write != strata_tiers::WritePolicy::ReadOnly,
                    "cluster.replicas.{ns}: the namespace is filled from its origin, never written; copies are kept of written namespaces"
                );
            }
            // Copies of values other nodes may have replaced while this one was
            // away are never served; before any listener opens (docs/cluster.md, failures).
            for (ns, n) in store.forget_writable() {
                if n > 0 {
                    tracing::info!(namespace = %ns, entries = n, "cluster node: NVMe copies of a writable namespace dropped at start");
                }
            }
        }
        let plans = datasets::Plans::default();
        store
            .dram()
            .set_next_use(Arc::new(datasets::ShardOracle::new(
                datasets.clone(),
                plans.clone(),
            )));
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let metrics_listener = TcpListener::bind(&config.server.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding server.metrics_listen {}",
                    config.server.metrics_listen
                )
            })?;
        let addr = listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        // The data path closes after the gRPC side: a cluster node that leaves
        // keeps answering its peers for a moment first (`hand_off`).
        let data_shutdown = CancellationToken::new();

        let ops = ops::Ops::new(
            store.clone(),
            config.requests.clone(),
            config.data.lease_ttl(),
            config.data.max_leased_bytes.0,
            metrics.clone(),
        );
        let data = DataServer::new(ops.clone(), config.data.clone());
        // Shared-memory and RDMA reads both hold leases; they expire whichever is on.
        tokio::spawn(data.clone().expire_leases(data_shutdown.clone()));
        let data_addr = if config.data.listen.is_empty() {
            None
        } else {
            let l = TcpListener::bind(&config.data.listen)
                .await
                .with_context(|| format!("binding data.listen {}", config.data.listen))?;
            let a = l.local_addr()?;
            tokio::spawn(data.clone().serve_tcp(l, data_shutdown.clone()));
            Some(a)
        };
        let shm_socket = if config.data.shm {
            let path = config.shm_socket();
            let l = DataServer::bind_unix(&path)
                .with_context(|| format!("binding data.shm_socket {}", path.display()))?;
            tokio::spawn(data.clone().serve_unix(l, data_shutdown.clone()));
            Some(path)
        } else {
            None
        };
        tracing::info!(
            data = ?data_addr,
            shm = ?shm_socket,
            rdma = data.rdma_available(),
            "data path listening"
        );
        let cluster = if config.cluster.enabled() {
            Some(join_cluster(&config, addr, data_addr, data.rdma_available()).await?)
        } else {
            None
        };
        if let Some(c) = &cluster {
            // Out of the cluster for longer than the lease, other nodes may have
            // replaced values of the writable namespaces: forget them before
            // coming back (as at start, above).
            let forget = store.clone();
            c.before_rejoin(Arc::new(move || {
                let store = forget.clone();
                Box::pin(async move {
                    for (ns, n) in store.forget_writable_now().await {
                        if n > 0 {
                            tracing::warn!(namespace = %ns, entries = n, "cluster node back after its lease lapsed: copies of a writable namespace dropped");
                        }
                    }
                })
            }));
            let peers = cluster::peer::Peers::new(c.clone());
            let copies = |ns: &str| c.config().replication(ns).copies;
            // What this node does not own it fills from the owner, run by run.
            store.set_namespace_origin(
                "shard",
                Arc::new(
                    cluster::peer::PeerOrigin::new(
                        Some(datasets.shard_origin()),
                        peers.clone(),
                        copies("shard"),
                    )
                    .with_runs(store.run_bytes()),
                ),
            );
            // A namespace without an origin fills from the copies and earlier
            // owners that still hold a value; the puts of a namespace clients
            // write, at a node that does not own the key, go on to the owners.
            let mut forward = Vec::new();
            for p in store.namespaces().iter() {
                if p.write != strata_tiers::WritePolicy::ReadOnly {
                    forward.push(p.name.clone());
                }
                if p.origin == strata_tiers::OriginKind::None {
                    store.set_namespace_origin(
                        &p.name,
                        Arc::new(cluster::peer::PeerOrigin::new(
                            None,
                            peers.clone(),
                            copies(&p.name),
                        )),
                    );
                }
            }
            ops.set_replicas(Arc::new(cluster::peer::Replicator::new(peers, forward)));
        }
        let svc = CacheService::new(
            ops.clone(),
            config.server.get_chunk_size.0 as usize,
            metrics.clone(),
        )
        .with_data_path(
            strata_proto::v1::DataPathResponse {
                tcp: data_addr.map(|a| a.to_string()).unwrap_or_default(),
                shm_socket: shm_socket
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                host_id: strata_transport::data::host_id(),
                rdma: data.rdma_available(),
            },
            data.clone(),
        )
        .with_cluster(cluster.clone());
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CacheServer<CacheService>>()
            .await;
        // Both reflection versions: `grpc.reflection.v1` for current tools, and
        // `v1alpha` for Python's grpcio-reflection client and older grpcurl.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(strata_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        let reflection = reflection()
            .build_v1()
            .context("building the reflection service")?;

        let metrics_task = {
            let cluster = cluster.clone();
            let store = store.clone();
            let metrics = metrics.clone();
            let data = data.clone();
            let token = shutdown.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let body = metrics.render(&store, &data, cluster.as_deref());
                    async move { ([("content-type", "text/plain; version=0.0.4")], body) }
                }),
            );
            tokio::spawn(async move {
                axum::serve(metrics_listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            })
        };

        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let token = shutdown.clone();
        let store_for_close = store.clone();
        let data_for_close = data.clone();
        let datasets_for_svc = datasets.clone();
        let plan_fanout = cluster
            .as_ref()
            .map(|c| cluster::plans::PlanFanout::new(c.clone()));
        let cluster_for_leave = cluster.clone();
        let (max_connections, max_streams) = (
            config.server.max_connections,
            config.server.max_concurrent_streams,
        );
        let task = tokio::spawn(async move {
            // However the task ends (a gRPC error included), the data path closes.
            let _data_closes = data_shutdown.clone().drop_guard();
            // `Server::tcp_nodelay` is ignored with `serve_with_incoming*`: the incoming
            // stream sets it. Connections are capped; a peer that vanished is found by
            // HTTP/2 keepalive pings and its connection closed.
            let incoming = limits::capped_incoming(listener, max_connections);
            let serve = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .initial_stream_window_size(16 << 20)
                .initial_connection_window_size(64 << 20)
                .max_concurrent_streams(max_streams)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(
                    CacheServer::new(svc)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE),
                )
                .add_service(
                    DatasetsServer::new(
                        DatasetService::new(datasets_for_svc, plans).with_fanout(plan_fanout),
                    )
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                )
                .serve_with_incoming_shutdown(incoming, {
                    let token = token.clone();
                    let data_shutdown = data_shutdown.clone();
                    let ops = data_for_close.ops().clone();
                    async move {
                        token.cancelled().await;
                        // Out of the cluster first, so that clients and peers go to
                        // the next owners while this node drains; then the next
                        // owners fetch what they ask for from here, not the origin.
                        if let Some(c) = &cluster_for_leave {
                            ops.leaving();
                            c.leave().await;
                            hand_off(&ops, HAND_OFF_MAX).await;
                        }
                        data_shutdown.cancel();
                        health_reporter
                            .set_not_serving::<CacheServer<CacheService>>()
                            .await;
                    }
                });
            let mut serve = std::pin::pin!(serve);
            tokio::select! {
                r = &mut serve => r.context("gRPC server")?,
                () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(?grace, "in-flight requests did not drain in time; closing anyway");
                }
            }
            data_shutdown.cancel();
            let _ = metrics_task.await;
            // Data connections finish what they have in flight (COMMITs writing
            // their values) before the tiers close under them.
            if !data_for_close.drain(grace).await {
                tracing::warn!(
                    ?grace,
                    connections = data_for_close.connection_tasks(),
                    "data connections did not drain in time; closing anyway"
                );
            }
            // Whatever carrier started a commit, it ends before the tiers close.
            let ops = data_for_close.ops();
            if !ops.drain(grace).await {
                tracing::warn!(
                    ?grace,
                    commits = ops.commits_in_flight(),
                    "commits did not finish in time; closing anyway"
                );
            }
            store_for_close.close().await.context("closing the tiers")?;
            tracing::info!("stopped");
            Ok(())
        });
        Ok(Running {
            addr,
            metrics_addr,
            data_addr,
            shm_socket,
            data,
            store,
            datasets,
            metrics,
            cluster,
            shutdown,
            task,
        })
    }
}

/// The longest a cluster node that left keeps answering its peers ([`hand_off`]).
const HAND_OFF_MAX: Duration = Duration::from_secs(10);

/// After this node left its cluster, keeps the data path open while the members
/// that now own its keys ask it for them (get from neighbour), so that what it
/// held is not read from the origin again: until no member has asked for a
/// second, or `max` passed.
async fn hand_off(ops: &ops::Ops, max: Duration) {
    const QUIET: Duration = Duration::from_secs(1);
    let start = std::time::Instant::now();
    let mut last = ops.peer_requests();
    while start.elapsed() < max {
        tokio::time::sleep(QUIET).await;
        let now = ops.peer_requests();
        if now == last {
            return;
        }
        last = now;
    }
    tracing::info!(?max, "members still ask this node for keys; closing anyway");
}

/// Joins the cluster of `config.cluster`, advertising the bound addresses, and
/// marks this node active.
async fn join_cluster(
    config: &Config,
    grpc: SocketAddr,
    data: Option<SocketAddr>,
    rdma: bool,
) -> anyhow::Result<Arc<cluster::Cluster>> {
    let host = advertise_host(config, grpc);
    let id = cluster::node_id(&config.data_dir)
        .with_context(|| format!("reading or making {}/node-id", config.data_dir.display()))?;
    let entry = cluster::MemberEntry {
        version: 1,
        id,
        incarnation: rand::random(),
        grpc: format!("{host}:{}", grpc.port()),
        data: data.map(|d| format!("{host}:{}", d.port())),
        rdma,
        cell: config.cluster.cell.clone(),
        zone: config.cluster.zone.clone(),
        weight: config.cluster.weight_for(if config.nvme.enabled {
            config.nvme.capacity
        } else {
            config.dram.capacity
        }),
        dram_bytes: config.dram.capacity,
        nvme_bytes: if config.nvme.enabled {
            config.nvme.capacity
        } else {
            0
        },
        state: cluster::MemberState::Joining,
    };
    let c = cluster::Cluster::join(config.cluster.clone(), entry).await?;
    c.set_state(cluster::MemberState::Active)
        .await
        .context("marking this node active")?;
    Ok(c)
}

/// The host to advertise: `cluster.advertise`, else the gRPC listener's address
/// when it is a specific one, else this machine's name.
fn advertise_host(config: &Config, grpc: SocketAddr) -> String {
    if let Some(h) = &config.cluster.advertise {
        return h.clone();
    }
    if !grpc.ip().is_unspecified() {
        return grpc.ip().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| grpc.ip().to_string())
}

impl Running {
    /// Stops accepting, drains in-flight requests, closes the tiers.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task")?
    }

    /// Waits until the server stops (after [`Self::shutdown_token`] is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

async fn build_store(config: &Config) -> anyhow::Result<TieredStore> {
    let dram = DramTier::new(&config.dram).context("creating the DRAM tier (dram.capacity)")?;
    let nvme = if config.nvme.enabled {
        let c = NvmeConfig {
            dir: Some(config.nvme_dir()),
            ..config.nvme.clone()
        };
        Some(
            NvmeTier::open(&c)
                .await
                .with_context(|| format!("opening the NVMe tier in {}", c.dir().display()))?,
        )
    } else {
        None
    };
    let origin = match config.origin.kind {
        config::OriginKindConfig::Localdir => {
            let dir = config.origin_dir();
            Some(Origin::LocalDir(LocalDirTier::open(&dir).with_context(
                || format!("opening the local origin {}", dir.display()),
            )?))
        }
        config::OriginKindConfig::Blob => {
            let Some(b) = config.origin.blob.clone() else {
                anyhow::bail!("origin.blob is required")
            };
            let tier = strata_tiers::BlobTier::open(b)
                .await
                .context("opening the blob origin (origin.blob)")?;
            tier.ensure_container()
                .await
                .context("checking the blob origin's container")?;
            Some(Origin::Blob(Box::new(tier)))
        }
        config::OriginKindConfig::None => None,
    };
    Ok(TieredStore::new(
        &config.store,
        Namespaces::default(),
        dram,
        nvme,
        origin,
    )?)
}
