//! The `strata.v1.Datasets` service: dataset manifests, preload, and the epoch
//! plans training jobs register (see `strata_training_cache`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::plans::{Hop, PlanCall, PlanFanout};
use crate::cluster::{MemberEntry, MemberState};
use crate::dataset::{Datasets, Manifest};
use crate::oracle::{JobPlan, Oracle};
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use strata_proto::placement::run_key;
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
    /// On a cluster node: passes plan calls on to the other members.
    fanout: Option<Arc<PlanFanout>>,
}

impl DatasetService {
    /// A service over `datasets`, recording plans into `plans`.
    pub fn new(datasets: Arc<Datasets>, plans: Plans) -> Self {
        Self {
            datasets,
            plans,
            fanout: None,
        }
    }

    /// Passes the plans registered here on to the cluster's other members.
    pub fn with_fanout(mut self, fanout: Option<Arc<PlanFanout>>) -> Self {
        self.fanout = fanout;
        self
    }

    fn pass_on(&self, call: PlanCall, hop: Hop) {
        if let Some(f) = &self.fanout {
            f.pass_on(call, hop);
        }
    }

    async fn resolve(&self, name: &str, version: &str) -> Result<Arc<Manifest>, Status> {
        let m = if version.is_empty() {
            // (Added by another node of the cluster: found in the shared index.)
            self.datasets
                .current_or_reload(name)
                .await
                .map_err(to_status)?
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

/// The gRPC metadata key of a preload asked by another member: warm only the
/// shards this node owns.
pub const PRELOAD_OWNED: &str = "x-strata-preload-owned";

/// Asks `member` to warm its share of a dataset; its progress stream.
async fn preload_at(
    member: &MemberEntry,
    req: pb::PreloadRequest,
) -> Result<tonic::Streaming<pb::PreloadProgress>, Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", member.grpc))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connecting to {}: {e}", member.grpc)))?;
    let mut r = Request::new(req);
    r.metadata_mut().insert(
        PRELOAD_OWNED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    Ok(pb::datasets_client::DatasetsClient::new(channel)
        .preload(r)
        .await?
        .into_inner())
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
        let owned_only = request.metadata().get(PRELOAD_OWNED).is_some();
        let r = request.into_inner();
        let m = self.resolve(&r.name, &r.version).await?;
        let parallel = self.info(&m).await.concurrency.max(1) as usize;
        let store = self.datasets.store().clone();
        // On a cluster node each owner warms its own runs of pages (a shard's
        // runs are placed one by one, `run_key`): this node its share, and every
        // other active member its share, asked at once (a member asked so warms
        // only its share and asks nobody). Progress counts runs; the node asked
        // reports it scaled to shards.
        let run = store.run_bytes().max(1);
        let runs_of = |i: usize| m.shards[i].size.div_ceil(run).max(1);
        let (mine, others): (Vec<(usize, Vec<u64>)>, Vec<MemberEntry>) = match &self.fanout {
            None => (
                (0..m.shards.len())
                    .map(|i| (i, (0..runs_of(i)).collect()))
                    .collect(),
                Vec::new(),
            ),
            Some(f) => {
                let view = f.cluster().view();
                let me = f.cluster().entry().id;
                let mine = (0..m.shards.len())
                    .map(|i| {
                        let key = m.shard_key(i);
                        let owned = (0..runs_of(i))
                            .filter(|&r| {
                                view.placement
                                    .owner(&run_key(key.as_bytes(), r))
                                    .is_none_or(|o| o.id == me)
                            })
                            .collect::<Vec<_>>();
                        (i, owned)
                    })
                    .filter(|(_, owned)| !owned.is_empty())
                    .collect();
                let others = if owned_only {
                    Vec::new()
                } else {
                    view.members
                        .values()
                        .filter(|x| x.state == MemberState::Active && x.id != me)
                        .cloned()
                        .collect()
                };
                (mine, others)
            }
        };
        let run_len = |i: usize, r: u64| m.shards[i].size.saturating_sub(r * run).min(run);
        let all_runs: u64 = (0..m.shards.len()).map(runs_of).sum();
        // (runs, bytes) to warm.
        let total = if owned_only {
            (
                mine.iter().map(|(_, o)| o.len() as u64).sum::<u64>(),
                mine.iter()
                    .flat_map(|(i, o)| o.iter().map(|&r| run_len(*i, r)))
                    .sum::<u64>(),
            )
        } else {
            (all_runs, m.total_bytes())
        };
        let shards = m.shards.len() as u64;
        // What the caller is told: runs to a member that asked, shards otherwise.
        let told = move |runs: u64| {
            if owned_only {
                runs
            } else {
                runs.saturating_mul(shards) / all_runs.max(1)
            }
        };
        enum Event {
            Local(u64, strata_tiers::Result<Option<(u64, u64)>>),
            Remote(usize, String, Result<pb::PreloadProgress, Status>),
        }
        let local = {
            let m = m.clone();
            futures::stream::iter(mine)
                .map(move |(i, owned)| {
                    let (store, key) = (store.clone(), m.shard_key(i));
                    async move {
                        let runs = owned.len() as u64;
                        // (`owned` is sorted.)
                        let warmed = store
                            .warm_runs(&key, &|r| owned.binary_search(&r).is_ok())
                            .await;
                        (runs, warmed)
                    }
                })
                .buffer_unordered(parallel)
                .map(|(runs, warmed)| Event::Local(runs, warmed))
                .boxed()
        };
        let remotes = others.into_iter().enumerate().map(|(j, member)| {
            let req = pb::PreloadRequest {
                name: m.name.clone(),
                version: m.version.clone(),
            };
            let id = member.id.clone();
            futures::stream::once(async move { preload_at(&member, req).await })
                .flat_map(move |opened| {
                    let id = id.clone();
                    match opened {
                        Ok(s) => s.map(move |x| Event::Remote(j, id.clone(), x)).boxed(),
                        Err(e) => {
                            futures::stream::once(async move { Event::Remote(j, id, Err(e)) })
                                .boxed()
                        }
                    }
                })
                .boxed()
        });
        let mut events = futures::stream::select_all(std::iter::once(local).chain(remotes));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut here = pb::PreloadProgress::default();
            let mut there: HashMap<usize, pb::PreloadProgress> = HashMap::new();
            let mut last = Instant::now();
            let mut ended = false;
            let mut combined = pb::PreloadProgress {
                shards_total: told(total.0),
                bytes_total: total.1,
                ..Default::default()
            };
            loop {
                // A client that goes away stops the preload at once, here and
                // (their streams dropped) on the members asked.
                let ev = tokio::select! {
                    ev = events.next() => ev,
                    () = tx.closed() => return,
                };
                let Some(ev) = ev else {
                    break;
                };
                match ev {
                    Event::Local(runs, Ok(Some((len, fetched)))) => {
                        here.shards_done += runs;
                        here.bytes_done += len;
                        here.bytes_cached += len - fetched.min(len);
                    }
                    Event::Local(_, Ok(None)) => {
                        let _ = tx
                            .send(Err(Status::not_found(
                                "a shard of the manifest is gone from the origin",
                            )))
                            .await;
                        return;
                    }
                    Event::Local(_, Err(e)) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                    Event::Remote(j, _, Ok(p)) => {
                        there.insert(j, p);
                    }
                    Event::Remote(_, id, Err(s)) => {
                        let _ = tx
                            .send(Err(Status::new(
                                s.code(),
                                format!(
                                    "preload on member {id}: {} (run it again to resume)",
                                    s.message()
                                ),
                            )))
                            .await;
                        return;
                    }
                }
                let p = pb::PreloadProgress {
                    shards_total: told(total.0),
                    bytes_total: total.1,
                    shards_done: told(
                        here.shards_done + there.values().map(|p| p.shards_done).sum::<u64>(),
                    ),
                    bytes_done: here.bytes_done + there.values().map(|p| p.bytes_done).sum::<u64>(),
                    bytes_cached: here.bytes_cached
                        + there.values().map(|p| p.bytes_cached).sum::<u64>(),
                };
                combined = p;
                let end = p.shards_done == p.shards_total;
                ended = end;
                if (end || last.elapsed() >= PROGRESS_EVERY) && tx.send(Ok(p)).await.is_err() {
                    // The client went away: stop (a later preload resumes).
                    return;
                }
                if !end {
                    last = Instant::now();
                }
            }
            // Every stream ended: the last word, complete or not (members whose
            // views differed may have left shards to nobody; a rerun warms them).
            if !ended {
                let _ = tx.send(Ok(combined)).await;
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
        let hop = Hop::of(&request);
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
        self.pass_on(PlanCall::Register(r), hop);
        Ok(Response::new(pb::PlanResponse { known: true }))
    }

    async fn progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let hop = Hop::of(&request);
        let r = request.into_inner();
        self.pass_on(PlanCall::Progress(r.clone()), hop);
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
        let hop = Hop::of(&request);
        let r = request.into_inner();
        self.pass_on(PlanCall::Unregister(r.clone()), hop);
        let known = self
            .plans
            .lock()
            .get_mut(&(r.name, r.version))
            .is_some_and(|o| o.unregister(r.job_id));
        Ok(Response::new(pb::PlanResponse { known }))
    }
}
