//! Server configuration, layered: defaults → TOML file (`--config`) →
//! `STRATA__SECTION__KEY` environment variables → command-line flags. Validated at
//! start; every error names its field.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use strata_tiers::EvictionKind;

/// A byte size: an integer, or a string like `"512MiB"`, `"4 GiB"`, `"1g"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"4GiB"`, `"512 MB"`, `"1g"`, `"1048576"` (binary units; `k`/`m`/`g`/`t`
    /// and their `iB`/`B` spellings all mean powers of 1024).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (try \"512MiB\" or \"4GiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            u => return Err(format!("unknown size unit {u:?} in {s:?}")),
        };
        if num.is_nan() || num < 0.0 {
            return Err(format!("{s:?} is negative"));
        }
        Ok(Self((num * mult as f64) as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 40 => write!(f, "{:.1} TiB", b / (1u64 << 40) as f64),
            n if n >= 1 << 30 => write!(f, "{:.1} GiB", b / (1u64 << 30) as f64),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / (1u64 << 20) as f64),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network settings.
    pub server: ServerConfig,
    /// Root of local state: NVMe files under `nvme/`, the local origin under `origin/`.
    /// Default: `./strata-data`.
    pub data_dir: PathBuf,
    /// DRAM tier.
    pub dram: DramSection,
    /// NVMe tier.
    pub nvme: NvmeSection,
    /// Store-wide settings.
    pub store: StoreSection,
    /// The origin.
    pub origin: OriginSection,
    /// The data path (binary TCP and shared memory).
    pub data: DataSection,
}

/// `[data]`: the data path. gRPC stays the control path; bulk bytes go here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// TCP address of the binary data path; empty to turn it off. Default:
    /// `127.0.0.1:7072`.
    pub listen: String,
    /// Serve same-host clients over shared memory. Default: true.
    pub shm: bool,
    /// Unix socket of the shared-memory carrier. Default: `<data_dir>/strata.sock`.
    pub shm_socket: Option<PathBuf>,
    /// Milliseconds a lease (a shared-memory read, a reserved slot) holds arena
    /// memory at most. Default: 5000.
    pub lease_ttl_ms: u64,
    /// Bytes held by leases at once, at most; past it reads are answered inline.
    /// Default: 1 GiB.
    pub max_leased_bytes: ByteSize,
    /// Largest data section of one frame (a PUT's value, an MGET's answer).
    /// Default: 1 GiB.
    pub max_frame_data: ByteSize,
    /// Microseconds a data connection with nothing in flight polls its socket
    /// before it parks; 0 parks at once. Polling takes the wake-up out of a round
    /// trip (worth most to same-host shared-memory clients) for a busy core while it
    /// lasts: set it only where the node has a core to spare. Default: 0.
    pub poll_us: u64,
    /// Data connections that may poll at once, each holding a runtime worker while
    /// it polls: keep it below the server's worker threads. Default: 1.
    pub poll_connections: usize,
    /// Bytes of data-path uploads held at once, at most (PUT data and open
    /// reservations, all connections); past it PUT and RESERVE answer `Busy`.
    /// Default: 1 GiB.
    pub max_upload_bytes: ByteSize,
    /// Data connections served at once, per listener (TCP, Unix socket); past it new
    /// ones are closed. Default: 4096.
    pub max_connections: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7072".into(),
            shm: true,
            shm_socket: None,
            lease_ttl_ms: 5000,
            max_leased_bytes: ByteSize(1 << 30),
            max_frame_data: ByteSize(1 << 30),
            poll_us: 0,
            poll_connections: 1,
            max_upload_bytes: ByteSize(1 << 30),
            max_connections: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            data_dir: PathBuf::from("strata-data"),
            dram: DramSection::default(),
            nvme: NvmeSection::default(),
            store: StoreSection::default(),
            origin: OriginSection::default(),
            data: DataSection::default(),
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
    /// Bytes of uploads in flight at once, at most; past it a put gets
    /// `RESOURCE_EXHAUSTED`. Default: 1 GiB.
    pub max_inflight_bytes: ByteSize,
    /// Size of the chunks a streamed get sends. Default: 1 MiB.
    pub get_chunk_size: ByteSize,
    /// Seconds to wait for in-flight requests at shutdown. Default: 30.
    pub shutdown_grace_secs: u64,
    /// Log lines: `text` (coloured only when written to a terminal) or `json` (one
    /// object per line, for log collectors). Default: `text`.
    pub log_format: LogFormat,
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
            max_inflight_bytes: ByteSize(1 << 30),
            get_chunk_size: ByteSize(1 << 20),
            shutdown_grace_secs: 30,
            log_format: LogFormat::Text,
        }
    }
}

/// `[dram]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DramSection {
    /// Arena size. Default: a quarter of available memory, at most 8 GiB, at least 64 MiB.
    pub capacity: Option<ByteSize>,
    /// Eviction policy: `s3fifo` or `lru`. Default: `s3fifo`.
    pub eviction: EvictionKind,
}

impl Default for DramSection {
    fn default() -> Self {
        Self {
            capacity: None,
            eviction: EvictionKind::S3fifo,
        }
    }
}

/// `[nvme]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvmeSection {
    /// Whether the NVMe tier runs. Default: true.
    pub enabled: bool,
    /// Directory. Default: `<data_dir>/nvme`.
    pub dir: Option<PathBuf>,
    /// Disk capacity. Default: 4 GiB.
    pub capacity: ByteSize,
    /// Engine block size (bounds the largest record). Default: 16 MiB.
    pub block_size: ByteSize,
    /// Engine write buffers. Default: 64 MiB.
    pub buffer_pool_size: ByteSize,
    /// Use foyer's io_uring engine when available. Default: false: its engine thread
    /// polls without sleeping and costs a core even when idle (see `NvmeConfig`).
    pub io_uring: bool,
    /// Bypass the page cache with O_DIRECT where the filesystem allows it. Default: true.
    pub direct_io: bool,
}

impl Default for NvmeSection {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            capacity: ByteSize(4 << 30),
            block_size: ByteSize(16 << 20),
            buffer_pool_size: ByteSize(64 << 20),
            io_uring: false,
            direct_io: true,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Page size of large values. Default: 4 MiB.
    pub page_size: ByteSize,
    /// Bytes read from the origin per page miss (the aligned run of pages holding
    /// it, filled together). Default: 16 MiB.
    pub origin_read_size: ByteSize,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            page_size: ByteSize(4 << 20),
            origin_read_size: ByteSize(16 << 20),
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
            cfg.dram.capacity = Some(size("--dram-capacity", v)?);
        }
        if let Some(v) = &overrides.nvme_capacity {
            cfg.nvme.capacity = size("--nvme-capacity", v)?;
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
        if self.data.poll_us > 1_000_000 {
            return err("data.poll_us", "must be at most 1 s (1000000)".into());
        }
        if self.data.max_upload_bytes.0 < 1 << 20 {
            return err("data.max_upload_bytes", "must be at least 1 MiB".into());
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
        if self.server.max_inflight_bytes.0 < 1 << 20 {
            return err("server.max_inflight_bytes", "must be at least 1 MiB".into());
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
        if let Some(c) = self.dram.capacity
            && c.0 < 1 << 20
        {
            return err("dram.capacity", format!("{c} is less than 1 MiB"));
        }
        let ps = self.store.page_size.0;
        if !(4096..=256 << 20).contains(&ps) {
            return err(
                "store.page_size",
                "must be between 4 KiB and 256 MiB".into(),
            );
        }
        if self.nvme.enabled {
            if self.nvme.block_size.0 < ps + 16384 {
                return err(
                    "nvme.block_size",
                    format!(
                        "{} must exceed store.page_size ({}) by 16 KiB",
                        self.nvme.block_size, self.store.page_size
                    ),
                );
            }
            if self.nvme.buffer_pool_size.0 < 2 * (ps + 16384) {
                return err(
                    "nvme.buffer_pool_size",
                    format!(
                        "{} must hold two pages of {}",
                        self.nvme.buffer_pool_size, self.store.page_size
                    ),
                );
            }
            if self.nvme.capacity.0 < 8 * self.nvme.block_size.0 {
                return err(
                    "nvme.capacity",
                    format!(
                        "{} is less than 8 blocks of {}",
                        self.nvme.capacity, self.nvme.block_size
                    ),
                );
            }
        }
        Ok(())
    }

    /// The DRAM capacity to use: configured, or sized from available memory.
    pub fn dram_capacity(&self) -> u64 {
        self.dram
            .capacity
            .map_or_else(default_dram_capacity, |c| c.0)
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

/// A quarter of `MemAvailable`, clamped to 64 MiB ..= 8 GiB.
fn default_dram_capacity() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024);
    (avail / 4).clamp(64 << 20, 8 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ByteSize::parse("512 MB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1.5k").unwrap().0, 1536);
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("4 parsecs").is_err());
    }

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
        assert_eq!(c.dram_capacity(), 64 << 20);
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
        std::fs::write(&f, "[data]\nmax_upload_bytes = 65536\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.max_upload_bytes"), "{e}");
        std::fs::write(&f, "[data]\nmax_connections = 0\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.max_connections"), "{e}");
        std::fs::write(&f, "[data]\npoll_connections = 0\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err().0;
        assert!(e.contains("data.poll_connections"), "{e}");
    }
}
