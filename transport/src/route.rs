//! Routing to owners: a client of a cluster member sends each key to the member
//! that owns it (`docs/cluster.md`, placement), without a hop through the node it
//! connected to.
//!
//! At connect the client asks its node for the cell's members (`Members`). Outside
//! a cluster (an empty cluster name, or a server of an earlier release) nothing
//! changes. In a cluster it computes each key's owners with
//! [`strata_proto::placement`] over the active members, exactly as the servers do,
//! and calls the first over a client of its own (made on first use: gRPC plus the
//! best data-path carrier to that member). Batches are split by owner and asked in
//! parallel. Keys of the namespaces in [`ClientOptions::local_namespaces`] (by
//! default `shard`) go to the node the client connected to, which fills them from
//! their owner and keeps its own copy for the job on that node.
//!
//! **Failover.** A call that cannot reach its member (refused, broken, timed out,
//! `Unavailable`) goes to the key's next owner, which is where placement puts the
//! key once the unreachable member leaves the list; up to [`MAX_TARGETS`] members
//! are tried, and the connected node last. The member list is asked for again then
//! (from any member that answers), and at most every [`REFRESH`] otherwise, in the
//! background. A client with a stale list sends a key to its previous owner for
//! that long: a cache miss, or a copy on a node that will lose it, never a wrong
//! byte.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use strata_proto::Key;
use strata_proto::placement::{Member, Placement};

use crate::client::{Client, ClientOptions};
use crate::error::{ClientError, Result};

/// How old the member list may get before a call asks for it again.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// Most members one call tries (its owners in order, then the connected node).
pub(crate) const MAX_TARGETS: usize = 3;

/// One view of the members: where each is, and who owns what.
#[derive(Debug)]
struct RouteView {
    placement: Placement,
    /// gRPC address and incarnation per active member id.
    members: HashMap<String, (String, u64)>,
    at: Instant,
}

/// A client's routes (see the module docs).
#[derive(Debug)]
pub(crate) struct Routes {
    /// The id of the member the client connected to.
    home: String,
    view: RwLock<Arc<RouteView>>,
    /// Clients of the members, by id, with the incarnation they were made for
    /// (the connected node's first: the client's own connection). A client that
    /// could not reach its member is dropped, and made again on next use.
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
        home: Client,
    ) -> Option<Arc<Self>> {
        if answer.cluster.is_empty() || answer.self_id.is_empty() {
            return None;
        }
        let mut options = options.clone();
        options.route = false;
        let mut clients = HashMap::new();
        if let Some(m) = answer.members.iter().find(|m| m.id == answer.self_id) {
            clients.insert(m.id.clone(), (m.incarnation, home));
        }
        Some(Arc::new(Self {
            home: answer.self_id.clone(),
            view: RwLock::new(Arc::new(view_of(answer))),
            clients: Mutex::new(clients),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            options,
        }))
    }

    /// How many active members the client routes over.
    pub(crate) fn members(&self) -> usize {
        self.view.read().placement.members().len()
    }

    /// Where a call on `key` goes, in order: its owners (or the connected node
    /// first, for a local namespace), then the connected node, leaving out the
    /// members in `down`.
    fn targets(&self, key: &Key, local: bool, down: &HashSet<String>) -> Vec<String> {
        let view = self.view.read().clone();
        let mut out = Vec::with_capacity(MAX_TARGETS + 1);
        if local {
            out.push(self.home.clone());
        }
        for m in view.placement.owners(key.as_bytes(), MAX_TARGETS) {
            if !out.contains(&m.id) {
                out.push(m.id.clone());
            }
        }
        if !out.contains(&self.home) {
            out.push(self.home.clone());
        }
        out.retain(|id| !down.contains(id));
        out.truncate(MAX_TARGETS);
        out
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

    /// Every active member's gRPC address but the connected node's.
    fn others(&self) -> Vec<String> {
        let view = self.view.read().clone();
        view.members
            .iter()
            .filter(|(id, _)| **id != self.home)
            .map(|(_, (addr, _))| addr.clone())
            .collect()
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
    /// Runs `call` on the client of the member that serves `key`, and on the
    /// next ones while members cannot be reached (see the module docs).
    pub(crate) async fn routed<T, F, Fut>(&self, key: &Key, mut call: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Some(routes) = self.routes().cloned() else {
            return call(self.clone()).await;
        };
        if routes.stale() {
            self.refresh_in_background();
        }
        let local = self.local_namespace(key);
        let mut down = HashSet::new();
        let mut last = None;
        for _ in 0..MAX_TARGETS {
            let Some(id) = routes.targets(key, local, &down).into_iter().next() else {
                break;
            };
            let result = match self.member(&routes, &id).await {
                Ok(c) => call(c).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_unreachable() => {
                    tracing::debug!(member = %id, error = %e, "member unreachable; trying the key's next owner");
                    routes.clients.lock().remove(&id);
                    self.refresh_in_background();
                    down.insert(id);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            addr: "cluster".into(),
            message: "no member to send the call to".into(),
        }))
    }

    /// Splits `keys` by the member that serves each, leaving out those in `down`:
    /// (member id, its client, indices into `keys`). Fails with the member that
    /// could not be connected to, if any, and why.
    async fn split(
        &self,
        keys: &[&Key],
        down: &HashSet<String>,
    ) -> std::result::Result<Vec<(String, Client, Vec<usize>)>, (Option<String>, ClientError)> {
        let Some(routes) = self.routes().cloned() else {
            return Ok(vec![(
                String::new(),
                self.clone(),
                (0..keys.len()).collect(),
            )]);
        };
        if routes.stale() {
            self.refresh_in_background();
        }
        let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let local = self.local_namespace(k);
            let Some(id) = routes.targets(k, local, down).into_iter().next() else {
                return Err((
                    None,
                    ClientError::Connect {
                        addr: "cluster".into(),
                        message: "no member to send the call to".into(),
                    },
                ));
            };
            by_id.entry(id).or_default().push(i);
        }
        let mut groups = Vec::with_capacity(by_id.len());
        for (id, idx) in by_id {
            match self.member(&routes, &id).await {
                Ok(c) => groups.push((id, c, idx)),
                Err(e) => return Err((Some(id), e)),
            }
        }
        Ok(groups)
    }

    /// Runs a batch `call` on every member that serves some of `keys`, at once,
    /// each with the indices (into `keys`) of its share; the shares of members
    /// that could not be reached go again to their next owners. Returns each
    /// share's indices with its answer.
    pub(crate) async fn batched<T, F, Fut>(
        &self,
        keys: &[&Key],
        call: F,
    ) -> Result<Vec<(Vec<usize>, T)>>
    where
        F: Fn(Client, Vec<usize>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut done = Vec::new();
        let mut down = HashSet::new();
        loop {
            let sub: Vec<&Key> = pending.iter().map(|&i| keys[i]).collect();
            let groups = match self.split(&sub, &down).await {
                Ok(g) => g,
                Err((Some(id), e)) if e.is_unreachable() && down.len() + 1 < MAX_TARGETS => {
                    self.forget_member(&id);
                    self.refresh_in_background();
                    down.insert(id);
                    continue;
                }
                Err((_, e)) => return Err(e),
            };
            let answers = futures::future::join_all(groups.into_iter().map(|(id, c, idx)| {
                let global: Vec<usize> = idx.iter().map(|&j| pending[j]).collect();
                let call = &call;
                async move {
                    let answer = call(c, global.clone()).await;
                    (id, global, answer)
                }
            }))
            .await;
            let mut again = Vec::new();
            for (id, global, answer) in answers {
                match answer {
                    Err(e)
                        if e.is_unreachable()
                            && self.routes().is_some()
                            && down.len() + 1 < MAX_TARGETS =>
                    {
                        tracing::debug!(member = %id, error = %e, "member unreachable; its share goes to the next owners");
                        self.forget_member(&id);
                        down.insert(id);
                        again.extend(global);
                    }
                    Err(e) => return Err(e),
                    Ok(t) => done.push((global, t)),
                }
            }
            if again.is_empty() {
                return Ok(done);
            }
            self.refresh_in_background();
            again.sort_unstable();
            pending = again;
        }
    }

    /// The client of member `id` (this one's connection for a member not in the
    /// list, which the call then reaches through the connected node).
    async fn member(&self, routes: &Routes, id: &str) -> Result<Client> {
        let (addr, inc) = {
            let view = routes.view.read();
            match view.members.get(id) {
                Some(m) => m.clone(),
                None => return Ok(self.clone()),
            }
        };
        if let Some((i, c)) = routes.clients.lock().get(id)
            && *i == inc
        {
            return Ok(c.clone());
        }
        let c = Client::connect(&addr, routes.options.clone()).await?;
        routes
            .clients
            .lock()
            .insert(id.to_owned(), (inc, c.clone()));
        Ok(c)
    }

    /// Drops the client of a member that could not be reached: the next call
    /// connects again (to where the member list says it is now).
    fn forget_member(&self, id: &str) {
        if let Some(r) = self.routes() {
            r.clients.lock().remove(id);
        }
    }

    fn local_namespace(&self, key: &Key) -> bool {
        self.options()
            .local_namespaces
            .iter()
            .any(|n| n == key.namespace())
    }

    /// Asks for the member list again, unless a refresh is already under way.
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

    /// Asks for the member list now: of the connected node, or of the other
    /// members when it does not answer.
    pub async fn refresh_routes(&self) -> Result<()> {
        let Some(routes) = self.routes().cloned() else {
            return Ok(());
        };
        let mut r = self.members().await;
        if r.as_ref().is_err_and(ClientError::is_unreachable) {
            for addr in routes.others() {
                let mut options = routes.options.clone();
                options.data_path = false;
                options.attempts = 1;
                if let Ok(c) = Client::connect(&addr, options).await
                    && let Ok(answer) = c.members().await
                {
                    r = Ok(answer);
                    break;
                }
            }
        }
        routes
            .refreshing
            .store(false, std::sync::atomic::Ordering::Release);
        routes.set_view(&r?);
        Ok(())
    }
}
