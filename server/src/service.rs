//! The `strata.v1.Cache` gRPC service: a codec over the request layer
//! ([`crate::ops`]), which runs every operation; the caller's deadline
//! (`grpc-timeout`) comes with each call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use strata_proto::v1 as pb;
use strata_proto::v1::cache_server::Cache;
use strata_tiers::{ByteRange, Key};
use strata_transport::{key_from_proto, key_to_proto};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::ops::{Caller, Carrier, Ops, Options};
use crate::status::to_status;

/// The service state.
#[derive(Clone)]
pub struct CacheService {
    ops: Arc<Ops>,
    chunk_size: usize,
    metrics: Arc<Metrics>,
    started: Instant,
    data_path: pb::DataPathResponse,
    data: Option<Arc<crate::data::DataServer>>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl CacheService {
    /// Sets what [`Cache::data_path`] answers, and the data server behind it (for
    /// RDMA queue-pair setup).
    pub fn with_data_path(
        mut self,
        data_path: pb::DataPathResponse,
        data: Arc<crate::data::DataServer>,
    ) -> Self {
        self.data_path = data_path;
        self.data = Some(data);
        self
    }

    /// Sets the cluster membership [`Cache::members`] answers from.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// A service over the request layer `ops`, answering reads in messages of
    /// `chunk_size` bytes.
    pub fn new(ops: Arc<Ops>, chunk_size: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            ops,
            chunk_size,
            metrics,
            started: Instant::now(),
            data_path: pb::DataPathResponse::default(),
            data: None,
            cluster: None,
        }
    }
}

fn key(k: Option<&pb::Key>) -> Result<Key, Status> {
    key_from_proto(k).map_err(|e| to_status(e.into()))
}

fn keys(ks: &[pb::Key]) -> Result<Vec<Key>, Status> {
    // (Refused before the keys are decoded.)
    Ops::check_batch(ks.len()).map_err(to_status)?;
    ks.iter().map(|k| key(Some(k))).collect()
}

/// The options of a call: its caller, and its deadline from `grpc-timeout`.
///
/// tonic also ends a call at that deadline, answering `CANCELLED`, and the
/// client's channel does the same on its side. The request layer's deadline is
/// set a little earlier (a twentieth of the time, at most 50 ms), so that the
/// answer is its `DEADLINE_EXCEEDED`, naming the operation, where it can be.
fn options<T>(request: &Request<T>) -> Options {
    let budget = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map(|b| b - (b / 20).min(Duration::from_millis(50)));
    Options::from(Caller {
        carrier: Carrier::Grpc,
        peer: request.remote_addr(),
        principal: None,
    })
    .within(budget)
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`).
fn grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn counters(c: &strata_tiers::CountersSnapshot) -> pb::Counters {
    pb::Counters {
        entries: c.entries,
        bytes: c.bytes,
        hits: c.hits,
        misses: c.misses,
        evictions: c.evictions,
        demotions: c.demotions,
        origin_reads: c.origin_reads,
        dropped_writes: c.dropped_writes,
        checksum_failures: c.checksum_failures,
        bypasses: c.bypasses,
    }
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn put(
        &self,
        request: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.metrics.request("put");
        let mut opts = options(&request);
        let mut stream = request.into_inner();
        // Each message within the stall timeout: a client that sends its header
        // and then nothing must not hold its share of the upload budget forever.
        let stall = self.ops.stall_timeout();
        let stalled = || {
            Status::deadline_exceeded(format!(
                "the put stream stalled: no message for {} ms (requests.stall_timeout_ms)",
                stall.as_millis()
            ))
        };
        let header = match tokio::time::timeout(stall, stream.message())
            .await
            .map_err(|_| stalled())??
        {
            Some(pb::PutRequest {
                msg: Some(pb::put_request::Msg::Header(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a put must be its header",
                ));
            }
            None => return Err(Status::invalid_argument("empty put stream")),
        };
        let key = key(header.key.as_ref())?;
        opts.pin = header.pin;
        let mut reservation = self
            .ops
            .begin_upload(&key, header.length, header.crc32c, &opts)
            .map_err(to_status)?;
        while let Some(msg) = tokio::time::timeout(stall, stream.message())
            .await
            .map_err(|_| stalled())??
        {
            match msg.msg {
                Some(pb::put_request::Msg::Chunk(c)) => reservation.write(&c).map_err(to_status)?,
                _ => {
                    return Err(Status::invalid_argument(
                        "a put stream carries one header, then chunks",
                    ));
                }
            }
        }
        if reservation.written() != header.length {
            return Err(Status::invalid_argument(format!(
                "truncated upload: the header declared {} bytes, the stream carried {}",
                header.length,
                reservation.written()
            )));
        }
        let receipt = self
            .ops
            .commit(reservation, None, &opts)
            .await
            .map_err(to_status)?;
        self.metrics.bytes_in(receipt.len);
        Ok(Response::new(pb::PutResponse {
            length: receipt.len,
            crc32c: receipt.crc32c,
        }))
    }

    type GetStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::GetResponse, Status>> + Send + 'static>,
    >;

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        self.metrics.request("get");
        let opts = options(&request);
        // One read, recorded once, when it ends (a streamed one when its last
        // page is sent).
        let mut timer = self.ops.timer("get", &opts);
        let req = request.into_inner();
        let key = key(req.key.as_ref())?;
        let range = ByteRange {
            offset: req.offset,
            length: req.length,
        };
        let fetched = if self.ops.forwards(&key, &opts) {
            // A key this node does not keep: the owner's bytes, in one piece.
            let got = self
                .ops
                .fetch_from_owners(&key, range, &opts)
                .await
                .map_err(to_status)?;
            if got.is_none() && !self.ops.has_origin(&key) {
                timer.succeed();
                return Err(Status::not_found(format!(
                    "{} is not held by its owners",
                    key.display_path()
                )));
            }
            // (None with an origin: the owners cannot be reached; read below.)
            got
        } else {
            None
        };
        if let Some((total, start, slices)) = fetched {
            let end = start + slices.iter().map(|s| s.len() as u64).sum::<u64>();
            let mut info = Some(pb::ValueInfo {
                total_length: total,
                offset: start,
                length: end - start,
                tier: "peer".to_owned(),
            });
            let (mut msgs, mut at) = (Vec::new(), start);
            for s in &slices {
                let next = at + s.len() as u64;
                msgs.extend(page_chunks(
                    s,
                    at,
                    at,
                    next,
                    self.chunk_size as u64,
                    &mut info,
                ));
                at = next;
            }
            if let Some(info) = info {
                msgs.push(pb::GetResponse {
                    info: Some(info),
                    chunk: Bytes::new(),
                });
            }
            self.metrics.bytes_out(end - start);
            timer.succeed();
            return Ok(Response::new(Box::pin(tokio_stream::iter(
                msgs.into_iter().map(Ok),
            ))));
        }
        let Some(entry) = self.ops.lookup(&key, &opts).await.map_err(to_status)? else {
            timer.succeed(); // a miss is an answer
            return Err(Status::not_found(format!(
                "{} is not cached and not in its origin",
                key.display_path()
            )));
        };
        let (start, end) = range.resolve(entry.len()).map_err(to_status)?;
        let info = pb::ValueInfo {
            total_length: entry.len(),
            offset: start,
            length: end - start,
            tier: entry.tier.to_owned(),
        };
        let chunk = self.chunk_size as u64;
        let ps = u64::from(entry.head.page_size);
        if start == end {
            let only = pb::GetResponse {
                info: Some(info),
                chunk: Bytes::new(),
            };
            timer.succeed();
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(only)))));
        }
        // A range within one page (every value up to the page size) is answered
        // from that page here: no task, no channel.
        if start / ps == (end - 1) / ps {
            let index = (start / ps) as u32;
            let page = self
                .ops
                .read_page(&entry, index, &opts)
                .await
                .map_err(to_status)?;
            let mut info = Some(info);
            let msgs = page_chunks(&page, u64::from(index) * ps, start, end, chunk, &mut info)
                .into_iter()
                .map(Ok)
                .collect::<Vec<_>>();
            self.metrics.bytes_out(end - start);
            timer.succeed();
            return Ok(Response::new(Box::pin(tokio_stream::iter(msgs))));
        }
        let (tx, rx) = mpsc::channel(4);
        let ops = self.ops.clone();
        // A client that stops taking the stream lets go of its pages after the
        // stall timeout; the stream then ends DEADLINE_EXCEEDED, never OK (a
        // truncated value must not pass for a whole one).
        let stall = self.ops.stall_timeout();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled_tail = stalled.clone();
        let bytes_out = self.metrics.clone();
        self.ops.clone().spawn(async move {
            let mut info = Some(info);
            let mut pos = start;
            // Pages missing from the cache are read from the origin a few at a
            // time while earlier ones are sent, within the caller's deadline.
            let pages = ops.store().range_pages(&entry, start, end);
            let mut pages = std::pin::pin!(pages);
            loop {
                let slice = match ops.step("get", &opts, pages.next()).await {
                    Ok(None) => break,
                    Ok(Some(s)) => s,
                    Err(e) => Err(e),
                };
                let slice = match slice {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let page_end = pos + slice.len() as u64;
                if page_end == end {
                    timer.succeed();
                }
                for msg in page_chunks(&slice, pos, pos, page_end, chunk, &mut info) {
                    bytes_out.bytes_out(msg.chunk.len() as u64);
                    match tx.send_timeout(Ok(msg), stall).await {
                        Ok(()) => {}
                        Err(mpsc::error::SendTimeoutError::Closed(_)) => return, // gone
                        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                            tracing::debug!(key = ?entry.key, "get stream stalled; ended");
                            stalled.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                    }
                }
                pos = page_end;
            }
        });
        // (Polled once the channel has ended, so after the task set the flag.)
        let tail = futures::stream::once(async move {
            stalled_tail
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| {
                    Status::deadline_exceeded(format!(
                        "the get stream stalled: its next message was not taken for {} ms \
                         (requests.stall_timeout_ms)",
                        stall.as_millis()
                    ))
                })
        })
        .filter_map(|e| async move { e.map(Err) });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).chain(tail))))
    }

    async fn match_prefix(
        &self,
        request: Request<pb::MatchPrefixRequest>,
    ) -> Result<Response<pb::MatchPrefixResponse>, Status> {
        self.metrics.request("match_prefix");
        let opts = options(&request);
        let ks = keys(&request.into_inner().keys)?;
        let n = self.ops.match_prefix(&ks, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::MatchPrefixResponse { matched: n as u32 }))
    }

    async fn contains(
        &self,
        request: Request<pb::ContainsRequest>,
    ) -> Result<Response<pb::ContainsResponse>, Status> {
        self.metrics.request("contains");
        let opts = options(&request);
        let ks = keys(&request.into_inner().keys)?;
        let present = self.ops.contains(&ks, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::ContainsResponse { present }))
    }

    async fn delete(
        &self,
        request: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.metrics.request("delete");
        let opts = options(&request);
        let k = key(request.into_inner().key.as_ref())?;
        let deleted = self.ops.delete(&k, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn pin(
        &self,
        request: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        self.metrics.request("pin");
        let opts = options(&request);
        let k = key(request.into_inner().key.as_ref())?;
        let found = self.ops.pin(&k, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::PinResponse { found }))
    }

    async fn unpin(
        &self,
        request: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        self.metrics.request("unpin");
        let opts = options(&request);
        let k = key(request.into_inner().key.as_ref())?;
        let found = self.ops.unpin(&k, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::PinResponse { found }))
    }

    async fn evict(
        &self,
        request: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::EvictResponse>, Status> {
        self.metrics.request("evict");
        let opts = options(&request);
        let k = key(request.into_inner().key.as_ref())?;
        let evicted = self.ops.evict(&k, &opts).await.map_err(to_status)?;
        Ok(Response::new(pb::EvictResponse { evicted }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.metrics.request("list");
        let opts = options(&request);
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit.min(100_000)
        } as usize;
        let mut listed = self
            .ops
            .list(&req.namespace, &req.tenant, &req.prefix, limit + 1, &opts)
            .await
            .map_err(to_status)?;
        let truncated = listed.len() > limit;
        listed.truncate(limit);
        let entries = listed
            .into_iter()
            .map(|l| pb::ListEntry {
                key: Some(key_to_proto(&l.key)),
                length: l.len,
                tier: l.tier.to_owned(),
            })
            .collect();
        Ok(Response::new(pb::ListResponse { entries, truncated }))
    }

    async fn data_path(
        &self,
        _request: Request<pb::DataPathRequest>,
    ) -> Result<Response<pb::DataPathResponse>, Status> {
        self.metrics.request("data_path");
        Ok(Response::new(self.data_path.clone()))
    }

    async fn members(
        &self,
        _request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        self.metrics.request("members");
        let Some(c) = &self.cluster else {
            return Ok(Response::new(pb::MembersResponse::default()));
        };
        let view = c.view();
        let me = c.entry();
        Ok(Response::new(pb::MembersResponse {
            cluster: c.name().to_owned(),
            cell: me.cell.clone(),
            revision: view.revision,
            self_id: me.id.clone(),
            members: view
                .members
                .values()
                .map(|m| pb::ClusterMember {
                    id: m.id.clone(),
                    grpc: m.grpc.clone(),
                    data: m.data.clone().unwrap_or_default(),
                    rdma: m.rdma,
                    zone: m.zone.clone(),
                    weight: m.weight,
                    state: m.state.as_str().into(),
                    dram_bytes: m.dram_bytes,
                    nvme_bytes: m.nvme_bytes,
                    incarnation: m.incarnation,
                })
                .collect(),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        use crate::cluster::MemberState;
        self.metrics.request("drain");
        let Some(c) = &self.cluster else {
            return Err(Status::failed_precondition(
                "this server is not in a cluster (start it with --etcd)",
            ));
        };
        let r = request.into_inner();
        let me = c.entry().id;
        let view = c.view();
        let target = if r.node.is_empty() {
            me.clone()
        } else {
            let found: Vec<_> = view
                .members
                .keys()
                .filter(|id| id.starts_with(&r.node))
                .collect();
            match found.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(Status::not_found(format!(
                        "no member {:?} in this node's view of cell {}",
                        r.node,
                        c.entry().cell
                    )));
                }
                many => {
                    return Err(Status::invalid_argument(format!(
                        "{:?} names {} members; give more of the id",
                        r.node,
                        many.len()
                    )));
                }
            }
        };
        if target != me {
            let m = &view.members[&target];
            let unreachable = |e: &dyn std::fmt::Display| {
                Status::unavailable(format!("member {target} at {}: {e}", m.grpc))
            };
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc))
                .map_err(|e| unreachable(&e))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| unreachable(&e))?;
            let mut peer = pb::cache_client::CacheClient::new(channel);
            let fwd = pb::DrainRequest {
                node: target,
                cancel: r.cancel,
            };
            return peer.drain(fwd).await;
        }
        let now = c.entry().state;
        let state = if r.cancel {
            if now != MemberState::Draining {
                return Err(Status::failed_precondition(format!(
                    "member {me} is {}, not draining",
                    now.as_str()
                )));
            }
            MemberState::Active
        } else {
            MemberState::Draining
        };
        c.set_state(state).await.map_err(|e| {
            Status::unavailable(format!("writing this member's state to etcd: {e}"))
        })?;
        tracing::info!(state = state.as_str(), "member state set by request");
        Ok(Response::new(pb::DrainResponse {
            node: me,
            state: state.as_str().into(),
        }))
    }

    async fn rdma_connect(
        &self,
        request: Request<pb::RdmaEndpoint>,
    ) -> Result<Response<pb::RdmaEndpoint>, Status> {
        self.metrics.request("rdma_connect");
        #[cfg(feature = "rdma")]
        {
            let peer = strata_transport::rdma_endpoint_from_proto(request.get_ref())
                .map_err(Status::invalid_argument)?;
            let Some(data) = &self.data else {
                return Err(Status::failed_precondition("no data path on this server"));
            };
            let data = data.clone();
            let me = tokio::task::spawn_blocking(move || data.rdma_accept(&peer))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::failed_precondition(format!("RDMA: {e}")))?;
            Ok(Response::new(strata_transport::rdma_endpoint_to_proto(&me)))
        }
        #[cfg(not(feature = "rdma"))]
        {
            let _ = request;
            Err(Status::failed_precondition(
                "RDMA unavailable: this server was built without the rdma feature",
            ))
        }
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.metrics.request("stats");
        let tiers = self
            .ops
            .store()
            .stats()
            .into_iter()
            .map(|t| pb::TierStats {
                tier: t.tier.to_owned(),
                capacity_bytes: t.usage.capacity,
                used_bytes: t.usage.used,
                total: Some(counters(&t.total)),
                namespaces: t
                    .namespaces
                    .iter()
                    .map(|(k, v)| (k.clone(), counters(v)))
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::StatsResponse {
            tiers,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
        }))
    }
}

/// The messages carrying `[pos, end)` of a value out of `page` (which starts at
/// value offset `base`), `chunk` bytes each; the first one still waiting for the
/// value's info takes it.
fn page_chunks(
    page: &Bytes,
    base: u64,
    mut pos: u64,
    end: u64,
    chunk: u64,
    info: &mut Option<pb::ValueInfo>,
) -> Vec<pb::GetResponse> {
    let mut msgs = Vec::with_capacity((end - pos).div_ceil(chunk.max(1)) as usize);
    while pos < end {
        let n = chunk.min(end - pos);
        msgs.push(pb::GetResponse {
            info: info.take(),
            chunk: page.slice((pos - base) as usize..(pos - base + n) as usize),
        });
        pos += n;
    }
    msgs
}
