//! Routing to owners: a client of a cluster member sends each key to the member
//! that owns it (`docs/cluster.md`, placement), without a hop through the node it
//! connected to.
//!
//! At connect the client asks its node for the cell's members (`Members`). Outside
//! a cluster (an empty cluster name, or a server of an earlier release) nothing
//! changes. In a cluster it computes each key's owner with
//! [`strata_proto::placement`] over the active members, exactly as the servers do,
//! and calls the owner over a client of its own (made on first use: gRPC plus the
//! best data-path carrier to that member). Batches are split by owner and asked in
//! parallel. Keys of the namespaces in [`ClientOptions::local_namespaces`] (by
//! default `shard`) go to the node the client connected to, which fills them from
//! their owner and keeps its own copy for the job on that node.
//!
//! The member list is asked again at most every [`REFRESH`], in the background,
//! and at once when an owner cannot be reached (the call then goes to the
//! connected node). A client with a stale list sends a key to its previous owner
//! for at most that long: a cache miss or a copy on a node that will lose it, never
//! a wrong byte.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use strata_proto::Key;
use strata_proto::placement::{Member, Placement};

use crate::client::{Client, ClientOptions};
use crate::error::Result;

/// How old the member list may get before a call asks for it again.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// One view of the members: where each is, and who owns what.
#[derive(Debug)]
struct RouteView {
    placement: Placement,
    /// gRPC address and incarnation per member id.
    members: HashMap<String, (String, u64)>,
    at: Instant,
}

/// A client's routes (see the module docs).
#[derive(Debug)]
pub(crate) struct Routes {
    /// The id of the member the client connected to.
    home: String,
    view: RwLock<Arc<RouteView>>,
    /// Clients of the other members, by id, with the incarnation they were made for.
    clients: Mutex<HashMap<String, (u64, Client)>>,
    refreshing: std::sync::atomic::AtomicBool,
    options: ClientOptions,
}

impl Routes {
    /// The routes of a client connected to `home`'s node, from its `Members`
    /// answer; `None` outside a cluster.
    pub(crate) fn new(
        answer: &strata_proto::v1::MembersResponse,
        options: &ClientOptions,
    ) -> Option<Arc<Self>> {
        if answer.cluster.is_empty() || answer.self_id.is_empty() {
            return None;
        }
        let mut options = options.clone();
        options.route = false;
        Some(Arc::new(Self {
            home: answer.self_id.clone(),
            view: RwLock::new(Arc::new(view_of(answer))),
            clients: Mutex::new(HashMap::new()),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            options,
        }))
    }

    /// How many active members the client routes over.
    pub(crate) fn members(&self) -> usize {
        self.view.read().placement.members().len()
    }

    /// The owner of `key`: `None` when it is the home node (or nobody).
    fn owner(&self, key: &Key) -> Option<(String, String, u64)> {
        let view = self.view.read().clone();
        let owner = view.placement.owner(key.as_bytes())?;
        if owner.id == self.home {
            return None;
        }
        let (addr, inc) = view.members.get(&owner.id)?;
        Some((owner.id.clone(), addr.clone(), *inc))
    }

    fn stale(&self) -> bool {
        self.view.read().at.elapsed() > REFRESH
    }

    fn set_view(&self, answer: &strata_proto::v1::MembersResponse) {
        let view = view_of(answer);
        // Clients of members gone or restarted are dropped.
        self.clients
            .lock()
            .retain(|id, (inc, _)| view.members.get(id).is_some_and(|(_, now)| now == inc));
        *self.view.write() = Arc::new(view);
    }
}

fn view_of(answer: &strata_proto::v1::MembersResponse) -> RouteView {
    let active: Vec<_> = answer
        .members
        .iter()
        .filter(|m| m.state == "active")
        .collect();
    let placement = Placement::new(active.iter().map(|m| Member::new(m.id.clone(), m.weight)))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "member list refused by placement; routing to the connected node");
            Placement::new([]).expect("an empty list places")
        });
    RouteView {
        placement,
        members: active
            .iter()
            .map(|m| (m.id.clone(), (m.grpc.clone(), m.incarnation)))
            .collect(),
        at: Instant::now(),
    }
}

impl Client {
    /// The client that serves `key`: its owner's, or this one.
    pub(crate) async fn at(&self, key: &Key) -> Client {
        let Some(routes) = self.routes() else {
            return self.clone();
        };
        if routes.stale() {
            self.refresh_in_background();
        }
        if self.local_namespace(key) {
            return self.clone();
        }
        let Some((id, addr, inc)) = routes.owner(key) else {
            return self.clone();
        };
        if let Some((i, c)) = routes.clients.lock().get(&id)
            && *i == inc
        {
            return c.clone();
        }
        match Client::connect(&addr, routes.options.clone()).await {
            Ok(c) => {
                routes.clients.lock().insert(id, (inc, c.clone()));
                c
            }
            Err(e) => {
                tracing::warn!(owner = %id, %addr, error = %e, "owner unreachable; asking the connected node");
                self.refresh_in_background();
                self.clone()
            }
        }
    }

    /// Splits `keys` by the client that serves each: (client, indices into `keys`).
    pub(crate) async fn split(&self, keys: &[&Key]) -> Vec<(Client, Vec<usize>)> {
        if self.routes().is_none() {
            return vec![(self.clone(), (0..keys.len()).collect())];
        }
        let mut groups: Vec<(Client, Vec<usize>)> = Vec::new();
        let mut by_target: HashMap<usize, usize> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let c = self.at(k).await;
            let g = *by_target.entry(c.identity()).or_insert_with(|| {
                groups.push((c, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        groups
    }

    fn local_namespace(&self, key: &Key) -> bool {
        self.options()
            .local_namespaces
            .iter()
            .any(|n| n == key.namespace())
    }

    /// Asks the connected node for the member list again, unless a refresh is
    /// already under way.
    fn refresh_in_background(&self) {
        let Some(routes) = self.routes() else {
            return;
        };
        if routes
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.refresh_routes().await {
                tracing::warn!(error = %e, "member list not refreshed");
            }
        });
    }

    /// Asks the connected node for the member list now.
    pub async fn refresh_routes(&self) -> Result<()> {
        let Some(routes) = self.routes() else {
            return Ok(());
        };
        let r = self.members().await;
        routes
            .refreshing
            .store(false, std::sync::atomic::Ordering::Release);
        routes.set_view(&r?);
        Ok(())
    }
}
