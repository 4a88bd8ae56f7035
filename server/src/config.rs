//! Server configuration, layered: defaults → TOML file (`--config`) →
//! `STRATA__SECTION__KEY` environment variables → command-line flags. Validated at
//! start; every error names its field.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use strata_tiers::{DramConfig, NvmeConfig, StoreConfig};

pub use crate::data::DataConfig;
pub use strata_tiers::ByteSize;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network settings.
    pub server: ServerConfig,
    /// Root of local state: NVMe files under `nvme/`, the local origin under `origin/`.
    /// Default: `./strata-data`.
    pub data_dir: PathBuf,
    /// The DRAM tier's own configuration (`strata_tiers::DramConfig`).
    pub dram: DramConfig,
    /// The NVMe tier's own configuration (`strata_tiers::NvmeConfig`); its `dir`
    /// defaults to `<data_dir>/nvme`.
    pub nvme: NvmeConfig,
    /// The store's own configuration (`strata_tiers::StoreConfig`).
    pub store: StoreConfig,
    /// The origin.
    pub origin: OriginSection,
    /// The data path (binary TCP and shared memory).
    pub data: DataConfig,
    /// The request layer behind gRPC and the data path: the one upload budget.
    pub requests: crate::ops::Config,
    /// Cluster membership (`docs/cluster.md`); off unless `cluster.etcd` is set.
    pub cluster: crate::cluster::ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            data_dir: PathBuf::from("strata-data"),
            dram: DramConfig::default(),
            nvme: NvmeConfig::default(),
            store: StoreConfig::default(),
            origin: OriginSection::default(),
            data: DataConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            requests: crate::ops::Config::default(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC address. Default: `127.0.0.1:7070`.
    pub listen: String,
    /// Prometheus `/metrics` address. Default: `127.0.0.1:7071`.
    pub metrics_listen: String,
    /// Size of the chunks a streamed get sends. Default: 1 MiB.
    pub get_chunk_size: ByteSize,
    /// Seconds to wait for in-flight requests at shutdown. Default: 30.
    pub shutdown_grace_secs: u64,
    /// Log lines: `text` (coloured only when written to a terminal) or `json` (one
    /// object per line, for log collectors). Default: `text`.
    pub log_format: LogFormat,
    /// gRPC connections open at once, at most: past it a new connection waits to
    /// be accepted until one closes. Default: 4096.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per gRPC connection. Default: 256.
    pub max_concurrent_streams: u32,
}

/// How `strata-server` writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            metrics_listen: "127.0.0.1:7071".into(),
            get_chunk_size: ByteSize(1 << 20),
            shutdown_grace_secs: 30,
            log_format: LogFormat::Text,
            max_connections: 4096,
            max_concurrent_streams: 256,
        }
    }
}

/// Which origin serves namespaces that have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginKindConfig {
    /// A local directory (the embedded default).
    Localdir,
    /// An Azure Blob container (`[origin.blob]`).
    Blob,
    /// No origin: namespaces with an origin behave as cache-only.
    None,
}

/// `[origin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSection {
    /// `localdir`, `blob` or `none`. Default: `localdir`.
    pub kind: OriginKindConfig,
    /// The directory of a `localdir` origin. Default: `<data_dir>/origin`.
    pub dir: Option<PathBuf>,
    /// The container of a `blob` origin (endpoint, container, auth: SAS or
    /// managed/workload identity). Required when `kind = "blob"`.
    pub blob: Option<strata_tiers::BlobConfig>,
}

impl Default for OriginSection {
    fn default() -> Self {
        Self {
            kind: OriginKindConfig::Localdir,
            dir: None,
            blob: None,
        }
    }
}

/// Command-line overrides (the last layer).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--dram-capacity`
    pub dram_capacity: Option<String>,
    /// `--nvme-capacity`
    pub nvme_capacity: Option<String>,
    /// `--data-listen` (empty turns the TCP data path off)
    pub data_listen: Option<String>,
    /// `--shm-socket`
    pub shm_socket: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--etcd` (comma-separated endpoints)
    pub etcd: Option<String>,
    /// `--cluster`
    pub cluster: Option<String>,
    /// `--advertise`
    pub advertise: Option<String>,
    /// `--cell`
    pub cell: Option<String>,
    /// `--zone`
    pub zone: Option<String>,
}

/// A configuration error, naming the field.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the layers and validates the result.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!(
                    "--config: {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("STRATA__").split("__"));
        let mut cfg: Config = fig.extract().map_err(|e| {
            let e = e.into_iter().next().map_or_else(
                || "invalid".to_owned(),
                |e| {
                    let path = e.path.join(".");
                    if path.is_empty() {
                        e.to_string()
                    } else {
                        format!("{path}: {}", e.kind)
                    }
                },
            );
            ConfigError(format!("invalid config: {e}"))
        })?;
        let size = |field: &str, v: &str| {
            ByteSize::parse(v).map_err(|e| ConfigError(format!("{field}: {e}")))
        };
        if let Some(v) = &overrides.listen {
            cfg.server.listen = v.clone();
        }
        if let Some(v) = &overrides.metrics_listen {
            cfg.server.metrics_listen = v.clone();
        }
        if let Some(v) = &overrides.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &overrides.dram_capacity {
            cfg.dram.capacity = size("--dram-capacity", v)?.0;
        }
        if let Some(v) = &overrides.nvme_capacity {
            cfg.nvme.capacity = size("--nvme-capacity", v)?.0;
        }
        if let Some(v) = &overrides.data_listen {
            cfg.data.listen = v.clone();
        }
        if let Some(v) = &overrides.shm_socket {
            cfg.data.shm_socket = Some(v.clone());
        }
        if let Some(v) = overrides.log_format {
            cfg.server.log_format = v;
        }
        if let Some(v) = &overrides.etcd {
            cfg.cluster.etcd = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = &overrides.cluster {
            cfg.cluster.name = v.clone();
        }
        if let Some(v) = &overrides.advertise {
            cfg.cluster.advertise = Some(v.clone());
        }
        if let Some(v) = &overrides.cell {
            cfg.cluster.cell = v.clone();
        }
        if let Some(v) = &overrides.zone {
            cfg.cluster.zone = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err =
            |field: &str, why: String| Err(ConfigError(format!("invalid config {field}: {why}")));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return err(
                "server.listen",
                format!(
                    "{:?} is not HOST:PORT (an IP address and a port)",
                    self.server.listen
                ),
            );
        }
        if self.server.metrics_listen.parse::<SocketAddr>().is_err() {
            return err(
                "server.metrics_listen",
                format!("{:?} is not HOST:PORT", self.server.metrics_listen),
            );
        }
        if !self.data.listen.is_empty() && self.data.listen.parse::<SocketAddr>().is_err() {
            return err(
                "data.listen",
                format!(
                    "{:?} is not HOST:PORT (or empty to turn it off)",
                    self.data.listen
                ),
            );
        }
        if !(10..=600_000).contains(&self.data.lease_ttl_ms) {
            return err(
                "data.lease_ttl_ms",
                "must be between 10 ms and 10 minutes".into(),
            );
        }
        self.cluster
            .validate()
            .map_err(|e| ConfigError(format!("invalid config {e}")))?;
        if self.data.poll_us > 1_000_000 {
            return err("data.poll_us", "must be at most 1 s (1000000)".into());
        }
        if self.server.max_connections == 0 || self.server.max_concurrent_streams == 0 {
            return err(
                "server.max_connections",
                "server.max_connections and server.max_concurrent_streams must be at least 1"
                    .into(),
            );
        }
        if self.requests.stall_timeout_ms == 0 {
            return err("requests.stall_timeout_ms", "must be at least 1".into());
        }
        if self.requests.max_upload_bytes.0 < 1 << 20 {
            return err("requests.max_upload_bytes", "must be at least 1 MiB".into());
        }
        if self.data.max_connections == 0 {
            return err("data.max_connections", "must be at least 1".into());
        }
        if self.data.poll_connections == 0 {
            return err(
                "data.poll_connections",
                "must be at least 1 (data.poll_us = 0 turns polling off)".into(),
            );
        }
        if self.data.max_frame_data.0 < 1 << 20 {
            return err("data.max_frame_data", "must be at least 1 MiB".into());
        }
        if !(4096..=64 << 20).contains(&self.server.get_chunk_size.0) {
            return err(
                "server.get_chunk_size",
                "must be between 4 KiB and 64 MiB".into(),
            );
        }
        if self.origin.kind == OriginKindConfig::Blob {
            match &self.origin.blob {
                None => return err("origin.blob", "required when origin.kind = \"blob\"".into()),
                Some(b) => b
                    .validate()
                    .map_err(|e| ConfigError(format!("invalid config origin.{e}")))?,
            }
        }
        if self.dram.capacity < 1 << 20 {
            let c = ByteSize(self.dram.capacity);
            return err("dram.capacity", format!("{c} is less than 1 MiB"));
        }
        let ps = u64::from(self.store.page_size);
        if !(4096..=256 << 20).contains(&ps) {
            return err(
                "store.page_size",
                "must be between 4 KiB and 256 MiB".into(),
            );
        }
        if self.nvme.enabled {
            let n = &self.nvme;
            let (block, pool, cap) = (
                ByteSize(n.block_size),
                ByteSize(n.buffer_pool_size),
                ByteSize(n.capacity),
            );
            let page = ByteSize(ps);
            if n.block_size < ps + 16384 {
                return err(
                    "nvme.block_size",
                    format!("{block} must exceed store.page_size ({page}) by 16 KiB"),
                );
            }
            if n.buffer_pool_size < 2 * (ps + 16384) {
                return err(
                    "nvme.buffer_pool_size",
                    format!("{pool} must hold two pages of {page}"),
                );
            }
            if n.capacity < 8 * n.block_size {
                return err(
                    "nvme.capacity",
                    format!("{cap} is less than 8 blocks of {block}"),
                );
            }
        }
        Ok(())
    }

    /// The NVMe directory.
    pub fn nvme_dir(&self) -> PathBuf {
        self.nvme
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("nvme"))
    }

    /// The shared-memory socket path.
    pub fn shm_socket(&self) -> PathBuf {
        self.data
            .shm_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("strata.sock"))
    }

    /// The local origin directory.
    pub fn origin_dir(&self) -> PathBuf {
        self.origin
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("origin"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_field_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:9999\"\n[dram]\ncapacity = \"64MiB\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9999");
        assert_eq!(c.dram.capacity, 64 << 20);
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::load(Some(&f), &o).unwrap().server.listen,
            "127.0.0.1:1"
        );
        let o = Overrides {
            data_listen: Some("127.0.0.1:0".into()),
            shm_socket: Some("/tmp/x.sock".into()),
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        let c = Config::load(Some(&f), &o).unwrap();
        assert_eq!(c.data.listen, "127.0.0.1:0");
        assert_eq!(c.shm_socket(), std::path::PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.server.log_format, LogFormat::Json);
        std::fs::write(&f, "[server]\nlog_format = \"json\"\n").unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.server.log_format, LogFormat::Json);
        let o = Overrides {
            listen: Some("nonsense".into()),
            ..Default::default()
        };
        assert!(
            Config::load(None, &o)
                .unwrap_err()
                .0
                .contains("server.listen")
        );
        std::fs::write(&f, "[dram]\ncapacity = \"lots\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("dram.capacity"), "{e}");
        std::fs::write(&f, "[dram]\ncapasity = 1\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("capasity"), "{e}");
        std::fs::write(&f, "[data]\npoll_us = 200\n").unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!((c.data.poll_us, c.data.poll_connections), (200, 1));
        std::fs::write(&f, "[data]\npoll_us = 5000000\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.poll_us"), "{e}");
        std::fs::write(&f, "[requests]\nmax_upload_bytes = 65536\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("requests.max_upload_bytes"), "{e}");
        // The budgets each entry point had are one now: the old keys are refused
        // by name.
        std::fs::write(&f, "[data]\nmax_upload_bytes = \"1GiB\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("max_upload_bytes"), "{e}");
        std::fs::write(&f, "[data]\nmax_connections = 0\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.max_connections"), "{e}");
        std::fs::write(&f, "[data]\npoll_connections = 0\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.poll_connections"), "{e}");
    }
}
