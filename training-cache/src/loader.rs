//! The training loader: a rank's epoch plan, read through the cache with a bounded
//! prefetch window.
//!
//! A producer walks the plan ([`RankPlan::items`]) and starts one fetch per shard
//! as long as the window has room: at most `window_items` shards and
//! `window_bytes` bytes fetched but not yet handed to the consumer (backpressure:
//! a slow consumer stops the producer, never memory). Shards larger than
//! `range_size` are read as parallel ranged GETs. Items come out in plan order
//! whatever the window and the parallelism, so the sequence is the plan's.
//!
//! With a [`SampleIndex`], the loader yields the samples of each shard (zero-copy
//! slices of the shard's bytes) instead of whole shards.
//!
//! The loader registers its plan with the server (for clairvoyant eviction) and
//! reports its position about once a second. **Stall** is the time the consumer
//! spent waiting in [`Loader::next`] for data that was not there yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use strata_transport::{Client, ClientError, proto};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::manifest::{Manifest, Shard, shard_key};
use crate::plan::{Item, PlanSpec, Position, RankPlan};

/// Unit of the byte window's permits.
const PERMIT_BYTES: u64 = 64 << 10;

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Shards fetched ahead of the consumer, at most.
    pub window_items: usize,
    /// Bytes fetched ahead of the consumer, at most (a shard larger than this is
    /// fetched alone).
    pub window_bytes: u64,
    /// Shards larger than this are read as ranges of this size, in parallel.
    pub range_size: u64,
    /// Ranges of one shard in flight.
    pub range_parallelism: usize,
    /// The job's id for plan registration (every rank of a job uses the same).
    pub job_id: u64,
    /// Register the plan with the server and report progress.
    pub register: bool,
    /// How often progress is reported.
    pub progress_every: Duration,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            window_items: 16,
            window_bytes: 1 << 30,
            range_size: 16 << 20,
            range_parallelism: 4,
            job_id: 0,
            register: true,
            progress_every: Duration::from_secs(1),
        }
    }
}

/// Where samples sit inside shards.
pub trait SampleIndex: Send + Sync + 'static {
    /// The `(offset, length)` of each sample of shard `index` (of `shard.size` bytes).
    fn samples(&self, index: u32, shard: &Shard) -> Vec<(u64, u64)>;
}

/// Fixed-size records (a trailing partial record is a shorter sample).
#[derive(Debug, Clone, Copy)]
pub struct FixedRecords(pub u64);

impl SampleIndex for FixedRecords {
    fn samples(&self, _index: u32, shard: &Shard) -> Vec<(u64, u64)> {
        let n = self.0.max(1);
        (0..shard.size)
            .step_by(usize::try_from(n).unwrap_or(usize::MAX))
            .map(|o| (o, n.min(shard.size - o)))
            .collect()
    }
}

/// One item handed to the consumer.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Where in the plan it is.
    pub at: Position,
    /// The shard's index in the manifest.
    pub shard: u32,
    /// The sample's `(offset, length)` in the shard (the whole shard without an index).
    pub range: (u64, u64),
    /// The bytes.
    pub bytes: Bytes,
}

/// Counters of a loader.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoaderStats {
    /// Shards handed out.
    pub shards: u64,
    /// Samples handed out.
    pub samples: u64,
    /// Bytes handed out.
    pub bytes: u64,
    /// Time the consumer waited for data.
    pub stall: Duration,
}

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The cache refused or failed a request.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: ClientError,
    },
    /// The server returned something that does not fit the manifest.
    #[error("{0}")]
    Mismatch(String),
}

type Fetch = JoinHandle<Result<(Item, Bytes), LoaderError>>;

/// A rank's loader over one dataset version.
pub struct Loader {
    manifest: Arc<Manifest>,
    rx: mpsc::Receiver<(Fetch, u32)>,
    permits: Arc<Semaphore>,
    index: Option<Arc<dyn SampleIndex>>,
    pending: std::collections::VecDeque<Sample>,
    stats: LoaderStats,
    position: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Fetches a dataset version's manifest from the server (`""`: the current one).
pub async fn fetch_manifest(
    client: &Client,
    name: &str,
    version: &str,
) -> Result<Manifest, LoaderError> {
    let mut rpc = proto::datasets_client::DatasetsClient::new(client.channel().clone())
        .max_decoding_message_size(1 << 30);
    let r = rpc
        .show(proto::DatasetShowRequest {
            name: name.into(),
            version: version.into(),
            offset: 0,
            limit: 0,
        })
        .await
        .map_err(|status| LoaderError::Client {
            what: format!("fetching the manifest of {name:?}"),
            source: ClientError::Status { status },
        })?
        .into_inner();
    let info = r.info.unwrap_or_default();
    let shards = r
        .shards
        .into_iter()
        .map(|s| Shard {
            path: s.path,
            size: s.size,
            etag: s.etag,
        })
        .collect();
    let m = Manifest {
        name: info.name,
        source: info.source,
        version: info.version,
        created_ms: info.created_ms,
        shards,
    };
    // The server's manifest must be the one its version names.
    let again = Manifest::new(&m.name, &m.source, m.shards.clone());
    if again.version != m.version {
        return Err(LoaderError::Mismatch(format!(
            "the server's manifest of {name:?} hashes to {} but is labelled {}",
            again.version, m.version
        )));
    }
    Ok(m)
}

impl Loader {
    /// Starts reading `plan` (over `manifest`) from `from` up to `end_epoch`.
    pub async fn start(
        client: Arc<Client>,
        manifest: Arc<Manifest>,
        plan: RankPlan,
        from: Position,
        end_epoch: u64,
        config: LoaderConfig,
        index: Option<Arc<dyn SampleIndex>>,
    ) -> Result<Self, LoaderError> {
        if plan.spec.shards as usize != manifest.shards.len() {
            return Err(LoaderError::Mismatch(format!(
                "the plan is over {} shards; {}@{} has {}",
                plan.spec.shards,
                manifest.name,
                manifest.version,
                manifest.shards.len()
            )));
        }
        let mut tasks = Vec::new();
        let position = Arc::new(AtomicU64::new(from.step));
        if config.register {
            let mut rpc = proto::datasets_client::DatasetsClient::new(client.channel().clone());
            let spec = plan.spec;
            rpc.register_plan(register_request(&manifest, &config, spec, from, end_epoch))
                .await
                .map_err(|status| LoaderError::Client {
                    what: "registering the epoch plan".into(),
                    source: ClientError::Status { status },
                })?;
            tasks.push(tokio::spawn(report_progress(
                rpc,
                manifest.clone(),
                config.clone(),
                spec,
                from,
                end_epoch,
                position.clone(),
            )));
        }
        let window_units = config.window_bytes.div_ceil(PERMIT_BYTES).max(1);
        let permits = Arc::new(Semaphore::new(window_units as usize));
        let (tx, rx) = mpsc::channel(config.window_items.max(1));
        let reading = Reading {
            client,
            manifest: manifest.clone(),
            plan,
            from,
            end_epoch,
            config,
        };
        tasks.push(tokio::spawn(produce(
            reading,
            permits.clone(),
            window_units,
            tx,
        )));
        Ok(Self {
            manifest,
            rx,
            permits,
            index,
            pending: Default::default(),
            stats: LoaderStats::default(),
            position,
            tasks,
        })
    }

    /// The manifest being read.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The counters so far.
    pub fn stats(&self) -> LoaderStats {
        self.stats
    }

    /// The next sample (the next shard without an index), or `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Sample, LoaderError>> {
        loop {
            if let Some(s) = self.pending.pop_front() {
                self.stats.samples += 1;
                return Some(Ok(s));
            }
            let waited = Instant::now();
            let (fetch, units) = self.rx.recv().await?;
            let done = fetch.await;
            self.stats.stall += waited.elapsed();
            self.permits.add_permits(units as usize);
            let (item, bytes) = match done {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return Some(Err(e)),
                Err(e) => {
                    return Some(Err(LoaderError::Mismatch(format!(
                        "fetch task failed: {e}"
                    ))));
                }
            };
            self.position
                .store(item.at.epoch << 40 | (item.at.step + 1), Ordering::Relaxed);
            self.stats.shards += 1;
            self.stats.bytes += bytes.len() as u64;
            let shard = &self.manifest.shards[item.shard as usize];
            match &self.index {
                None => self.pending.push_back(Sample {
                    at: item.at,
                    shard: item.shard,
                    range: (0, bytes.len() as u64),
                    bytes,
                }),
                Some(ix) => {
                    for (off, len) in ix.samples(item.shard, shard) {
                        let end = off.saturating_add(len);
                        if end > bytes.len() as u64 {
                            return Some(Err(LoaderError::Mismatch(format!(
                                "sample [{off}, {end}) is outside shard {} ({} bytes)",
                                shard.path,
                                bytes.len()
                            ))));
                        }
                        self.pending.push_back(Sample {
                            at: item.at,
                            shard: item.shard,
                            range: (off, len),
                            bytes: bytes.slice(off as usize..end as usize),
                        });
                    }
                }
            }
        }
    }
}

fn register_request(
    m: &Manifest,
    config: &LoaderConfig,
    spec: PlanSpec,
    from: Position,
    end_epoch: u64,
) -> proto::RegisterPlanRequest {
    proto::RegisterPlanRequest {
        name: m.name.clone(),
        version: m.version.clone(),
        job_id: config.job_id,
        seed: spec.seed,
        shuffle: spec.shuffle,
        world_size: spec.world_size,
        pad: spec.remainder == crate::plan::Remainder::Pad,
        epoch: from.epoch,
        step: from.step,
        end_epoch,
        rate: 0.0,
        window: u32::try_from(config.window_items).unwrap_or(u32::MAX),
    }
}

/// Reports the loader's position about once a second (re-registering if the
/// server forgot the job, say after a restart).
async fn report_progress(
    mut rpc: proto::datasets_client::DatasetsClient<tonic::transport::Channel>,
    m: Arc<Manifest>,
    config: LoaderConfig,
    spec: PlanSpec,
    from: Position,
    end_epoch: u64,
    position: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(config.progress_every.max(Duration::from_millis(1)));
    let mut last = (from, Instant::now());
    loop {
        tick.tick().await;
        let p = position.load(Ordering::Relaxed);
        let at = Position {
            epoch: p >> 40,
            step: p & ((1 << 40) - 1),
        };
        if at == last.0 && at != from {
            continue;
        }
        let steps_per_epoch = spec.steps_per_epoch().max(1);
        let advanced = (at.epoch * steps_per_epoch + at.step)
            .saturating_sub(last.0.epoch * steps_per_epoch + last.0.step);
        let rate = advanced as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
        last = (at, Instant::now());
        let r = rpc
            .progress(proto::ProgressRequest {
                name: m.name.clone(),
                version: m.version.clone(),
                job_id: config.job_id,
                epoch: at.epoch,
                step: at.step,
                rate,
            })
            .await;
        if let Ok(r) = r
            && !r.into_inner().known
        {
            let _ = rpc
                .register_plan(register_request(&m, &config, spec, at, end_epoch))
                .await;
        }
    }
}

/// What the producer reads, and for whom.
struct Reading {
    client: Arc<Client>,
    manifest: Arc<Manifest>,
    plan: RankPlan,
    from: Position,
    end_epoch: u64,
    config: LoaderConfig,
}

async fn produce(
    r: Reading,
    permits: Arc<Semaphore>,
    window_units: u64,
    tx: mpsc::Sender<(Fetch, u32)>,
) {
    let Reading {
        client,
        manifest,
        plan,
        from,
        end_epoch,
        config,
    } = r;
    for item in plan.items(from, end_epoch) {
        let shard = &manifest.shards[item.shard as usize];
        let units = shard.size.div_ceil(PERMIT_BYTES).clamp(1, window_units) as u32;
        let Ok(p) = permits.clone().acquire_many_owned(units).await else {
            return;
        };
        // The consumer gives the permits back when it takes the item.
        p.forget();
        let (client, manifest, config) = (client.clone(), manifest.clone(), config.clone());
        let fetch = tokio::spawn(async move {
            let bytes = fetch_shard(&client, &manifest, item.shard, &config).await?;
            Ok((item, bytes))
        });
        if tx.send((fetch, units)).await.is_err() {
            return;
        }
    }
}

/// Reads one shard, as parallel ranges when it is large.
async fn fetch_shard(
    client: &Client,
    m: &Manifest,
    index: u32,
    config: &LoaderConfig,
) -> Result<Bytes, LoaderError> {
    use futures::StreamExt as _;
    let shard = &m.shards[index as usize];
    let key = shard_key(&m.name, &m.version, &shard.path);
    let err = |e: ClientError| LoaderError::Client {
        what: format!("reading shard {}", shard.path),
        source: e,
    };
    let missing = || {
        LoaderError::Mismatch(format!(
            "shard {} is not in the cache or its origin",
            shard.path
        ))
    };
    let range = config.range_size.max(1);
    if shard.size <= range {
        let b = client.get(&key).await.map_err(err)?.ok_or_else(missing)?;
        if b.len() as u64 != shard.size {
            return Err(LoaderError::Mismatch(format!(
                "shard {} is {} bytes; the manifest says {}",
                shard.path,
                b.len(),
                shard.size
            )));
        }
        return Ok(b);
    }
    let ranges: Vec<u64> = (0..shard.size).step_by(range as usize).collect();
    let parts: Vec<Result<Bytes, LoaderError>> = futures::stream::iter(ranges)
        .map(|off| {
            let key = &key;
            async move {
                let len = range.min(shard.size - off);
                let (_, b) = client
                    .get_range(key, off, Some(len))
                    .await
                    .map_err(err)?
                    .ok_or_else(missing)?;
                if b.len() as u64 != len {
                    return Err(LoaderError::Mismatch(format!(
                        "range at {off} of shard {} returned {} bytes, expected {len}",
                        shard.path,
                        b.len()
                    )));
                }
                Ok(b)
            }
        })
        .buffered(config.range_parallelism.max(1))
        .collect()
        .await;
    let mut out = BytesMut::with_capacity(shard.size as usize);
    for p in parts {
        out.extend_from_slice(&p?);
    }
    Ok(out.freeze())
}
