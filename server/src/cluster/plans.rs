//! Plans across the cluster: a training job's epoch plan, registered with the node
//! its loader talks to, reaches every member, so each owner of the dataset's shards
//! evicts clairvoyantly for the keys it owns (`docs/cluster.md`, plans).
//!
//! A job's **lead** is the owner of the job's id (placement of `plan/<job id>`).
//! A node that gets a plan call from a loader applies it, then hands it to the lead
//! (hop `lead`), and the lead hands it to every other member (hop `final`), which
//! only apply it. Registrations and unregistrations travel at once; progress at
//! most every [`PROGRESS_EVERY`] per job and node (the oracles extrapolate between
//! reports by the job's rate). So a job of `W` ranks in a cell of `N` members costs
//! about `W + N` messages per interval, not `W × N`.
//!
//! Best effort: a member that misses a message evicts by recency for that job
//! until the next one, never serves anything wrong. Failures are logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_proto::v1 as pb;
use strata_proto::v1::datasets_client::DatasetsClient;
use tonic::transport::{Channel, Endpoint};

use super::Cluster;

/// The gRPC metadata key that marks a plan call passed on by a member.
pub const HOP_HEADER: &str = "x-strata-plan-hop";

/// Progress reports travel on at most this often, per job and node.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How long a hop may take.
const HOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a plan call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From a loader: hand it to the job's lead.
    Client,
    /// From a member, to this node as the job's lead: hand it to every member.
    Lead,
    /// From the lead: apply only.
    Final,
}

impl Hop {
    /// The hop a request carries.
    pub fn of<T>(r: &tonic::Request<T>) -> Self {
        match r.metadata().get(HOP_HEADER).and_then(|v| v.to_str().ok()) {
            Some("lead") => Self::Lead,
            Some("final") => Self::Final,
            _ => Self::Client,
        }
    }
}

/// One plan call to pass on.
#[derive(Debug, Clone)]
pub enum PlanCall {
    /// `RegisterPlan`.
    Register(pb::RegisterPlanRequest),
    /// `Progress`.
    Progress(pb::ProgressRequest),
    /// `UnregisterPlan`.
    Unregister(pb::ProgressRequest),
}

impl PlanCall {
    fn job(&self) -> u64 {
        match self {
            Self::Register(r) => r.job_id,
            Self::Progress(r) | Self::Unregister(r) => r.job_id,
        }
    }
}

/// Passes plan calls on to the other members (see the module docs).
#[derive(Debug)]
pub struct PlanFanout {
    cluster: Arc<Cluster>,
    me: String,
    clients: Mutex<HashMap<String, (u64, DatasetsClient<Channel>)>>,
    /// When each job's progress last travelled from here.
    sent: Mutex<HashMap<u64, Instant>>,
}

impl PlanFanout {
    /// Fan-out for `cluster`'s node.
    pub fn new(cluster: Arc<Cluster>) -> Arc<Self> {
        Arc::new(Self {
            me: cluster.entry().id,
            cluster,
            clients: Mutex::new(HashMap::new()),
            sent: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster this node is a member of.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Passes `call`, which reached this node by `hop` and was applied here, on
    /// to the members that should get it next, in the background.
    pub fn pass_on(self: &Arc<Self>, call: PlanCall, hop: Hop) {
        if hop == Hop::Final {
            return;
        }
        if let PlanCall::Progress(_) = call {
            let mut sent = self.sent.lock();
            let last = sent
                .entry(call.job())
                .or_insert(Instant::now() - PROGRESS_EVERY);
            if last.elapsed() < PROGRESS_EVERY {
                return;
            }
            *last = Instant::now();
        }
        if let PlanCall::Unregister(_) = call {
            self.sent.lock().remove(&call.job());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let view = me.cluster.view();
            let lead = view
                .placement
                .owner(format!("plan/{}", call.job()).as_bytes())
                .map(|m| m.id.clone());
            let (targets, next): (Vec<_>, _) = match (hop, lead) {
                (Hop::Client, Some(lead)) if lead != me.me => (vec![lead], "lead"),
                // The lead (or a node alone): to everyone else.
                _ => (
                    view.placement
                        .members()
                        .iter()
                        .map(|m| m.id.clone())
                        .filter(|id| *id != me.me)
                        .collect(),
                    "final",
                ),
            };
            let sends = targets.into_iter().filter_map(|id| {
                let m = view.members.get(&id)?;
                let client = me.client(m)?;
                let call = call.clone();
                Some(async move {
                    if let Err(e) = send(client, call, next).await {
                        tracing::debug!(member = %id, error = %e, "plan call not passed on");
                    }
                })
            });
            futures::future::join_all(sends).await;
        });
    }

    fn client(&self, m: &super::MemberEntry) -> Option<DatasetsClient<Channel>> {
        let mut clients = self.clients.lock();
        if let Some((inc, c)) = clients.get(&m.id)
            && *inc == m.incarnation
        {
            return Some(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", m.grpc))
            .ok()?
            .connect_timeout(HOP_TIMEOUT)
            .timeout(HOP_TIMEOUT);
        let c = DatasetsClient::new(endpoint.connect_lazy());
        clients.insert(m.id.clone(), (m.incarnation, c.clone()));
        Some(c)
    }
}

async fn send(
    mut c: DatasetsClient<Channel>,
    call: PlanCall,
    hop: &'static str,
) -> Result<(), tonic::Status> {
    fn req<T>(msg: T, hop: &'static str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert(HOP_HEADER, tonic::metadata::MetadataValue::from_static(hop));
        r
    }
    match call {
        PlanCall::Register(r) => c.register_plan(req(r, hop)).await.map(drop),
        PlanCall::Progress(r) => c.progress(req(r, hop)).await.map(drop),
        PlanCall::Unregister(r) => c.unregister_plan(req(r, hop)).await.map(drop),
    }
}
