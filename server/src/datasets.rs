//! The `strata.v1.Datasets` service: dataset manifests, preload, and the epoch
//! plans training jobs register (see `strata_training_cache`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataset::{Datasets, Manifest};
use crate::oracle::{JobPlan, Oracle};
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use strata_proto::v1 as pb;
use strata_proto::v1::datasets_server::Datasets as DatasetsRpc;
use strata_tiers::{Key, NextUse, Planned};
use strata_training_cache::{PlanSpec, Position, Remainder};
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// How often a preload reports progress (and always at the end).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The registered plans, per dataset version.
pub type Plans = Arc<Mutex<HashMap<(String, String), Oracle>>>;

/// The `shard` namespace's next uses, from the registered plans: what the DRAM
/// tier's clairvoyant eviction asks.
#[derive(Debug)]
pub struct ShardOracle {
    datasets: Arc<Datasets>,
    plans: Plans,
}

impl ShardOracle {
    /// An oracle over `datasets` and the plans registered in `plans`.
    pub fn new(datasets: Arc<Datasets>, plans: Plans) -> Self {
        Self { datasets, plans }
    }
}

impl ShardOracle {
    fn ask(&self, key: &Key, after_read: bool) -> Planned {
        let Some((name, version, index)) = self.datasets.locate(key) else {
            return Planned::Unplanned;
        };
        match self.plans.lock().get_mut(&(name, version)) {
            Some(o) if !o.is_empty() => {
                let t = if after_read {
                    o.next_use_after_read(index)
                } else {
                    o.next_use(index)
                };
                t.map_or(Planned::Never, Planned::In)
            }
            _ => Planned::Unplanned,
        }
    }
}

impl NextUse for ShardOracle {
    fn next_use(&self, key: &Key) -> Planned {
        self.ask(key, false)
    }

    fn next_use_after_read(&self, key: &Key) -> Planned {
        self.ask(key, true)
    }
}

/// The gRPC service over the dataset registry.
#[derive(Debug, Clone)]
pub struct DatasetService {
    datasets: Arc<Datasets>,
    plans: Plans,
}

impl DatasetService {
    /// A service over `datasets`, recording plans into `plans`.
    pub fn new(datasets: Arc<Datasets>, plans: Plans) -> Self {
        Self { datasets, plans }
    }

    async fn resolve(&self, name: &str, version: &str) -> Result<Arc<Manifest>, Status> {
        let m = if version.is_empty() {
            self.datasets.current(name).await
        } else {
            match self.datasets.manifest(name, version) {
                Some(m) => Some(m),
                // Recorded by another node of the cluster.
                None => self
                    .datasets
                    .load_version(name, version)
                    .await
                    .map_err(to_status)?,
            }
        };
        m.ok_or_else(|| {
            Status::not_found(if version.is_empty() {
                format!("no dataset {name:?} (strata dataset add {name} SOURCE)")
            } else {
                format!("no version {version} of dataset {name:?}")
            })
        })
    }

    async fn info(&self, m: &Manifest) -> pb::DatasetInfo {
        let (versions, concurrency) = self
            .datasets
            .versions_and_concurrency(&m.name)
            .await
            .unwrap_or((1, 0));
        pb::DatasetInfo {
            name: m.name.clone(),
            source: m.source.clone(),
            version: m.version.clone(),
            shards: m.shards.len() as u64,
            bytes: m.total_bytes(),
            created_ms: m.created_ms,
            versions,
            concurrency,
        }
    }
}

fn spec(r: &pb::RegisterPlanRequest, shards: usize) -> PlanSpec {
    PlanSpec {
        shards: shards as u32,
        seed: r.seed,
        shuffle: r.shuffle,
        world_size: r.world_size.max(1),
        remainder: if r.pad {
            Remainder::Pad
        } else {
            Remainder::Drop
        },
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::PreloadProgress, Status>> + Send>>;

#[tonic::async_trait]
impl DatasetsRpc for DatasetService {
    async fn add(
        &self,
        request: Request<pb::DatasetAddRequest>,
    ) -> Result<Response<pb::DatasetAddResponse>, Status> {
        let r = request.into_inner();
        let concurrency = (r.concurrency > 0).then_some(r.concurrency);
        let (m, new_version) = self
            .datasets
            .add(&r.name, &r.source, concurrency)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DatasetAddResponse {
            info: Some(self.info(&m).await),
            new_version,
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::DatasetListRequest>,
    ) -> Result<Response<pb::DatasetListResponse>, Status> {
        let datasets = self
            .datasets
            .list()
            .await
            .into_iter()
            .map(|d| pb::DatasetInfo {
                name: d.name,
                source: d.source,
                version: d.version,
                shards: d.shards,
                bytes: d.bytes,
                created_ms: d.created_ms,
                versions: d.versions,
                concurrency: d.concurrency,
            })
            .collect();
        Ok(Response::new(pb::DatasetListResponse { datasets }))
    }

    async fn show(
        &self,
        request: Request<pb::DatasetShowRequest>,
    ) -> Result<Response<pb::DatasetShowResponse>, Status> {
        let r = request.into_inner();
        let m = self.resolve(&r.name, &r.version).await?;
        let limit = if r.limit == 0 { u64::MAX } else { r.limit };
        let shards = m
            .shards
            .iter()
            .skip(usize::try_from(r.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|s| pb::ShardInfo {
                path: s.path.clone(),
                size: s.size,
                etag: s.etag.clone(),
            })
            .collect();
        Ok(Response::new(pb::DatasetShowResponse {
            info: Some(self.info(&m).await),
            shards,
        }))
    }

    type PreloadStream = ProgressStream;

    async fn preload(
        &self,
        request: Request<pb::PreloadRequest>,
    ) -> Result<Response<Self::PreloadStream>, Status> {
        let r = request.into_inner();
        let m = self.resolve(&r.name, &r.version).await?;
        let parallel = self.info(&m).await.concurrency.max(1) as usize;
        let store = self.datasets.store().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut p = pb::PreloadProgress {
                shards_total: m.shards.len() as u64,
                bytes_total: m.total_bytes(),
                ..Default::default()
            };
            let mut last = Instant::now();
            let mut done = futures::stream::iter(0..m.shards.len())
                .map(|i| {
                    let (store, key) = (store.clone(), m.shard_key(i));
                    async move { store.warm(&key).await }
                })
                .buffer_unordered(parallel);
            while let Some(r) = done.next().await {
                match r {
                    Ok(Some((len, fetched))) => {
                        p.shards_done += 1;
                        p.bytes_done += len;
                        p.bytes_cached += len - fetched.min(len);
                    }
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::not_found(
                                "a shard of the manifest is gone from the origin",
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                }
                let end = p.shards_done == p.shards_total;
                if (end || last.elapsed() >= PROGRESS_EVERY) && tx.send(Ok(p)).await.is_err() {
                    // The client went away: stop (a later preload resumes).
                    return;
                }
                if !end {
                    last = Instant::now();
                }
            }
            if p.shards_total == 0 {
                let _ = tx.send(Ok(p)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_plan(
        &self,
        request: Request<pb::RegisterPlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let r = request.into_inner();
        let m = self.resolve(&r.name, &r.version).await?;
        let plan = JobPlan {
            spec: spec(&r, m.shards.len()),
            at: Position {
                epoch: r.epoch,
                step: r.step,
            },
            end_epoch: (r.end_epoch > 0).then_some(r.end_epoch),
            rate: if r.rate > 0.0 {
                r.rate * f64::from(r.world_size.max(1))
            } else {
                1.0
            },
            lead: (u64::from(r.window) + 1) * u64::from(r.world_size.max(1)),
        };
        self.plans
            .lock()
            .entry((m.name.clone(), m.version.clone()))
            .or_default()
            .register(r.job_id, plan);
        Ok(Response::new(pb::PlanResponse { known: true }))
    }

    async fn progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let r = request.into_inner();
        let at = Position {
            epoch: r.epoch,
            step: r.step,
        };
        let rate = (r.rate > 0.0).then_some(r.rate);
        let known = self
            .plans
            .lock()
            .get_mut(&(r.name, r.version))
            .is_some_and(|o| o.advance(r.job_id, at, rate));
        Ok(Response::new(pb::PlanResponse { known }))
    }

    async fn unregister_plan(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let r = request.into_inner();
        let known = self
            .plans
            .lock()
            .get_mut(&(r.name, r.version))
            .is_some_and(|o| o.unregister(r.job_id));
        Ok(Response::new(pb::PlanResponse { known }))
    }
}
