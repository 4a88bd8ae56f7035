//! The gRPC client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_proto::Key;
use strata_proto::v1 as pb;
use strata_proto::v1::cache_client::CacheClient;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::convert::key_to_proto;
use crate::data::{Carrier, CarrierChoice, DataClient, DataEndpoint, DataOptions, ValueReader};
use crate::error::{ClientError, Result};
use crate::route::Routes;
use crate::wire;
use crate::wire::KeyRange;

/// Largest message the client accepts or sends.
const MAX_MESSAGE: usize = 64 << 20;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of each call. Default: 30 s.
    pub timeout: Duration,
    /// Connect timeout. Default: 5 s.
    pub connect_timeout: Duration,
    /// Attempts for idempotent calls (1 = no retry). Default: 3.
    pub attempts: u32,
    /// First backoff between attempts (doubled each time, with jitter). Default: 50 ms.
    pub backoff: Duration,
    /// Chunk size of streamed puts. Default: 1 MiB.
    pub chunk_size: usize,
    /// Move values over the data path (TCP or shared memory, as the server offers
    /// and [`DataOptions::carrier`] allows) instead of gRPC. Default: true. When the
    /// server offers none, calls go over gRPC.
    pub data_path: bool,
    /// Data-path settings.
    pub data: DataOptions,
    /// When the server is a cluster member, send each key to its owner (see
    /// `crate::route`, `docs/cluster.md`). Default: true.
    pub route: bool,
    /// Namespaces whose keys go to the node the client connected to, which fills
    /// them from their owner and keeps its own copy. Default: `shard` (a training
    /// job's shards, read on its own nodes).
    pub local_namespaces: Vec<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_millis(50),
            chunk_size: 1 << 20,
            data_path: true,
            data: DataOptions::default(),
            route: true,
            local_namespaces: vec!["shard".into()],
        }
    }
}

/// What a get returned besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    /// Length of the whole value.
    pub total_length: u64,
    /// Offset of the returned bytes.
    pub offset: u64,
    /// The tier that served it (gRPC only; empty over the data path).
    pub tier: String,
}

/// A Strata client. Cheap to clone; clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: CacheClient<Channel>,
    channel: Channel,
    options: ClientOptions,
    data: Option<DataClient>,
    /// Routes to the cluster's owners (`None`: everything goes to this node).
    routes: Option<Arc<Routes>>,
}

impl Client {
    /// Connects to `addr` (`HOST:PORT` or a URL).
    pub async fn connect(addr: &str, options: ClientOptions) -> Result<Self> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let connect_err = |e: &dyn std::fmt::Display| ClientError::Connect {
            addr: addr.to_owned(),
            message: e.to_string(),
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| connect_err(&e))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(64 << 20);
        let channel = endpoint.connect().await.map_err(|e| {
            connect_err(&std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()))
        })?;
        let inner = CacheClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut me = Self {
            inner,
            channel,
            options,
            data: None,
            routes: None,
        };
        if me.options.data_path {
            me.data = me.connect_data(addr).await?;
        }
        if me.options.route {
            me.routes = match me.members().await {
                Ok(answer) => Routes::new(&answer, &me.options, me.clone()),
                // A server of a release before clusters: a single node.
                Err(ClientError::Status { status, .. })
                    if status.code() == tonic::Code::Unimplemented =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
        }
        Ok(me)
    }

    /// Asks the server where its data path listens and connects the best carrier.
    /// A server without one (or an unreachable one, when the carrier is `Auto`)
    /// leaves the client on gRPC.
    async fn connect_data(&self, addr: &str) -> Result<Option<DataClient>> {
        let forced = self.options.data.carrier != CarrierChoice::Auto;
        let info: pb::DataPathResponse = match self
            .inner
            .clone()
            .data_path(self.request(pb::DataPathRequest {}))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if !forced && s.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let mut tcp = (!info.tcp.is_empty()).then_some(info.tcp);
        // A server listening on all interfaces announces 0.0.0.0: use the host the
        // control path reached instead.
        if let Some(t) = &tcp
            && let Ok(sa) = t.parse::<std::net::SocketAddr>()
            && sa.ip().is_unspecified()
        {
            let host = addr
                .trim_start_matches("http://")
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h);
            tcp = Some(format!("{host}:{}", sa.port()));
        }
        let endpoint = DataEndpoint {
            tcp,
            unix: (!info.shm_socket.is_empty()).then(|| info.shm_socket.into()),
            host_id: (!info.host_id.is_empty()).then_some(info.host_id),
        };
        if endpoint.tcp.is_none() && endpoint.unix.is_none() && !forced {
            return Ok(None);
        }
        let choice = self.options.data.carrier;
        let same_host = endpoint
            .host_id
            .as_deref()
            .is_some_and(|h| h == crate::data::host_id());
        let want_rdma = choice == CarrierChoice::Rdma
            || (choice == CarrierChoice::Auto && info.rdma && !same_host);
        if want_rdma {
            match self.connect_rdma(endpoint.clone()).await {
                Ok(d) => return Ok(Some(d)),
                Err(e) if choice == CarrierChoice::Rdma => return Err(e),
                Err(e) => tracing::info!(error = %e, "RDMA unavailable; trying the other carriers"),
            }
        }
        match DataClient::connect(endpoint, self.options.data.clone()).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if !forced => {
                tracing::warn!(error = %e, "data path unreachable; values go over gRPC");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(feature = "rdma")]
    async fn connect_rdma(&self, endpoint: DataEndpoint) -> Result<DataClient> {
        let grpc = self.inner.clone();
        let timeout = self.options.timeout;
        // Called again for each new queue pair after a link broke.
        DataClient::connect_rdma(endpoint, self.options.data.clone(), move |me| {
            let mut grpc = grpc.clone();
            async move {
                let mut req = tonic::Request::new(crate::convert::rdma_endpoint_to_proto(&me));
                req.set_timeout(timeout);
                let p = grpc.rdma_connect(req).await?.into_inner();
                crate::convert::rdma_endpoint_from_proto(&p)
                    .map_err(|e| ClientError::Protocol(format!("server RDMA endpoint: {e}")))
            }
        })
        .await
    }

    #[cfg(not(feature = "rdma"))]
    async fn connect_rdma(&self, _endpoint: DataEndpoint) -> Result<DataClient> {
        Err(ClientError::Connect {
            addr: "rdma".into(),
            message: "this client was built without the rdma feature".into(),
        })
    }

    /// The data-path client, if the values go over one.
    pub fn data(&self) -> Option<&DataClient> {
        self.data.as_ref()
    }

    /// The carrier values travel on: `None` means gRPC.
    pub fn carrier(&self) -> Option<Carrier> {
        self.data.as_ref().map(DataClient::carrier)
    }

    /// Whether calls are routed to the owners of their keys (a cluster member's
    /// client), and over how many active members.
    pub fn routed_members(&self) -> Option<usize> {
        self.routes.as_ref().map(|r| r.members())
    }

    pub(crate) fn routes(&self) -> Option<&Arc<Routes>> {
        self.routes.as_ref()
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The underlying channel (for health checks and other services).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.options.timeout);
        r
    }

    /// Runs an idempotent call with retries on transient errors.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(CacheClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        crate::error::retry(self.options.attempts, self.options.backoff, || {
            call(self.inner.clone())
        })
        .await
    }

    /// Stores a value, checksummed end to end. Not retried.
    pub async fn put(&self, key: &Key, value: Bytes) -> Result<pb::PutResponse> {
        self.put_with(key, value, false).await
    }

    /// Stores a value, optionally pinning it: over the data path when there is one,
    /// else over gRPC (streamed in chunks), as is a value larger than the data
    /// server takes in one frame. Not retried.
    pub async fn put_with(&self, key: &Key, value: Bytes, pin: bool) -> Result<pb::PutResponse> {
        self.routed(key, |c| {
            let value = value.clone();
            async move { c.put_here(key, value, pin).await }
        })
        .await
    }

    async fn put_here(&self, key: &Key, value: Bytes, pin: bool) -> Result<pb::PutResponse> {
        // (A value over the data server's frame limit streams over gRPC instead.)
        if let Some(d) = &self.data
            && value.len() as u64 <= d.server().max_data
            && (!pin || d.accepts_flags())
        {
            let length = d.put_with(key, &value, pin).await?;
            return Ok(pb::PutResponse {
                length,
                crc32c: crc32c::crc32c(&value),
            });
        }
        let header = pb::PutHeader {
            key: Some(key_to_proto(key)),
            length: value.len() as u64,
            crc32c: Some(crc32c::crc32c(&value)),
            pin,
        };
        let chunk = self.options.chunk_size.max(1);
        let mut msgs = vec![pb::PutRequest {
            msg: Some(pb::put_request::Msg::Header(header)),
        }];
        let mut off = 0;
        while off < value.len() {
            let end = (off + chunk).min(value.len());
            msgs.push(pb::PutRequest {
                msg: Some(pb::put_request::Msg::Chunk(value.slice(off..end))),
            });
            off = end;
        }
        let req = self.request(tokio_stream::iter(msgs));
        Ok(self.inner.clone().put(req).await?.into_inner())
    }

    /// Reads a whole value. `Ok(None)` if absent.
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        Ok(self.get_range(key, 0, None).await?.map(|(_, b)| b))
    }

    /// Reads `[offset, offset + length)` of a value (to its end when `length` is
    /// `None`). `Ok(None)` if absent.
    pub async fn get_range(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<(ValueInfo, Bytes)>> {
        self.routed(key, |c| async move {
            c.get_range_here(key, offset, length).await
        })
        .await
    }

    async fn get_range_here(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<(ValueInfo, Bytes)>> {
        if let Some(d) = &self.data {
            return Ok(d
                .get_range(key, offset, length)
                .await?
                .map(|(total_length, b)| {
                    (
                        ValueInfo {
                            total_length,
                            offset,
                            tier: String::new(),
                        },
                        b,
                    )
                }));
        }
        self.grpc_get_range(key, offset, length).await
    }

    /// Reads `[offset, offset + length)` of a value and hands it to `f` as a
    /// [`ValueReader`], with the value's total length; `Ok(None)` if absent. Over
    /// shared memory `f` copies straight out of the server's arena; see
    /// [`DataClient::get_range_with`] for when `f`'s work is void.
    pub async fn get_range_with<R>(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
        f: impl FnOnce(u64, &mut ValueReader<'_>) -> R,
    ) -> Result<Option<R>> {
        // `f` is taken by the attempt that reads: one that fails before leaves it
        // for the next member.
        let slot = parking_lot::Mutex::new(Some(f));
        self.routed(key, |c| {
            let slot = &slot;
            async move {
                c.get_range_with_here(key, offset, length, |total, r| {
                    let f = slot.lock().take().expect("one read calls f");
                    f(total, r)
                })
                .await
            }
        })
        .await
    }

    async fn get_range_with_here<R>(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
        f: impl FnOnce(u64, &mut ValueReader<'_>) -> R,
    ) -> Result<Option<R>> {
        if let Some(d) = &self.data {
            return d.get_range_with(key, offset, length, f).await;
        }
        Ok(self
            .grpc_get_range(key, offset, length)
            .await?
            .map(|(info, b)| f(info.total_length, &mut ValueReader::new(&b))))
    }

    /// Reads a range of each of many values and hands each present one to `f` with
    /// its index: one MGET_RANGE request on the data path (see
    /// [`DataClient::mget_range_with`]), one Get per range over gRPC. One result
    /// per range: `Some` with what `f` returned, `None` if absent, or its error.
    pub async fn mget_range_with<R>(
        &self,
        ranges: &[KeyRange],
        f: impl FnMut(usize, &mut ValueReader<'_>) -> R,
    ) -> Result<Vec<Result<Option<R>>>> {
        if self.routes().is_none() {
            return self.mget_range_with_here(ranges, f).await;
        }
        // One request per owner, all at once; `f` runs in place under each
        // answer's lease, one call at a time.
        let keys: Vec<&Key> = ranges.iter().map(|r| &r.key).collect();
        let f = parking_lot::Mutex::new(f);
        let shares = self
            .batched(&keys, |c, idx| {
                let f = &f;
                async move {
                    let part: Vec<KeyRange> = idx.iter().map(|&i| ranges[i].clone()).collect();
                    c.mget_range_with_here(&part, |j, r| (f.lock())(idx[j], r))
                        .await
                }
            })
            .await?;
        let mut out: Vec<Option<Result<Option<R>>>> = (0..ranges.len()).map(|_| None).collect();
        for (idx, got) in shares {
            for (i, r) in idx.into_iter().zip(got) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every range answered"))
            .collect())
    }

    async fn mget_range_with_here<R>(
        &self,
        ranges: &[KeyRange],
        mut f: impl FnMut(usize, &mut ValueReader<'_>) -> R,
    ) -> Result<Vec<Result<Option<R>>>> {
        if let Some(d) = &self.data {
            return d.mget_range_with(ranges, f).await;
        }
        let mut out = Vec::with_capacity(ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            out.push(
                self.grpc_get_range(&r.key, r.offset, r.length)
                    .await
                    .map(|got| got.map(|(_, b)| f(i, &mut ValueReader::new(&b)))),
            );
        }
        Ok(out)
    }

    /// Reads whole values of many keys (one request on the data path); `None` for
    /// each miss.
    pub async fn mget(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        // (The data path refuses an empty batch; gRPC would answer one: the
        // answer is the same on every carrier.)
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.routes().is_none() {
            return self.mget_here(keys).await;
        }
        // One request per owner, all at once.
        let refs: Vec<&Key> = keys.iter().collect();
        let shares = self
            .batched(&refs, |c, idx| async move {
                let part: Vec<Key> = idx.iter().map(|&i| keys[i].clone()).collect();
                c.mget_here(&part).await
            })
            .await?;
        let mut out = vec![None; keys.len()];
        for (idx, got) in shares {
            for (i, v) in idx.into_iter().zip(got) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    async fn mget_here(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        if let Some(d) = &self.data {
            return d.mget(keys).await;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.grpc_get_range(k, 0, None).await?.map(|(_, b)| b));
        }
        Ok(out)
    }

    async fn grpc_get_range(
        &self,
        key: &Key,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<(ValueInfo, Bytes)>> {
        let req = pb::GetRequest {
            key: Some(key_to_proto(key)),
            offset,
            length,
        };
        let this = self.clone();
        self.retry(move |mut c| {
            let req = this.request(req.clone());
            async move {
                let mut stream = match c.get(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
                    Err(s) => return Err(s.into()),
                };
                let mut info = None;
                let mut buf = BytesMut::new();
                let mut single: Option<Bytes> = None;
                while let Some(msg) = stream.next().await {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(s) if s.code() == tonic::Code::NotFound && info.is_none() => {
                            return Ok(None);
                        }
                        Err(s) => return Err(s.into()),
                    };
                    if let Some(i) = msg.info {
                        buf.reserve(i.length as usize);
                        info = Some(i);
                    }
                    if single.is_none() && buf.is_empty() {
                        single = Some(msg.chunk);
                    } else {
                        if let Some(s) = single.take() {
                            buf.extend_from_slice(&s);
                        }
                        buf.extend_from_slice(&msg.chunk);
                    }
                }
                let info = info
                    .ok_or_else(|| ClientError::Protocol("get stream without value info".into()))?;
                let data = match single {
                    Some(s) if buf.is_empty() => s,
                    _ => buf.freeze(),
                };
                if data.len() as u64 != info.length {
                    return Err(ClientError::Protocol(format!(
                        "get returned {} bytes, the server announced {}",
                        data.len(),
                        info.length
                    )));
                }
                Ok(Some((
                    ValueInfo {
                        total_length: info.total_length,
                        offset: info.offset,
                        tier: info.tier,
                    },
                    data,
                )))
            }
        })
        .await
    }

    /// How many leading keys are cached, in one round trip.
    /// (A list longer than the server's batch limit, [`wire::MAX_BATCH`], is asked
    /// in batches, each only while every key before it matched.)
    ///
    /// In a cluster the keys are split by owner and each owner is asked for the
    /// leading keys of its share, all at once: the prefix ends at the first key
    /// any owner misses (one round trip of wall time).
    pub async fn match_prefix(&self, keys: &[Key]) -> Result<u32> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.routes().is_none() {
            return self.match_prefix_here(keys).await;
        }
        let refs: Vec<&Key> = keys.iter().collect();
        let shares = self
            .batched(&refs, |c, idx| async move {
                let part: Vec<Key> = idx.iter().map(|&i| keys[i].clone()).collect();
                let n = c.match_prefix_here(&part).await? as usize;
                // The first key of this owner's share that it lacks, if any.
                Ok(idx.get(n).copied().unwrap_or(keys.len()))
            })
            .await?;
        Ok(shares
            .into_iter()
            .map(|(_, first)| first)
            .min()
            .unwrap_or(keys.len()) as u32)
    }

    async fn match_prefix_here(&self, keys: &[Key]) -> Result<u32> {
        if let Some(d) = &self.data {
            return Ok(d.match_prefix(keys).await? as u32);
        }
        let mut matched = 0u32;
        for batch in keys.chunks(wire::MAX_BATCH) {
            let req = pb::MatchPrefixRequest {
                keys: batch.iter().map(key_to_proto).collect(),
            };
            let n = self
                .retry(|mut c| {
                    let req = self.request(req.clone());
                    async move { Ok(c.match_prefix(req).await?.into_inner().matched) }
                })
                .await?;
            matched += n;
            if n as usize != batch.len() {
                break;
            }
        }
        Ok(matched)
    }

    /// Whether each key is cached (asked in batches of at most
    /// [`wire::MAX_BATCH`]).
    pub async fn contains(&self, keys: &[Key]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.routes().is_none() {
            return self.contains_here(keys).await;
        }
        let refs: Vec<&Key> = keys.iter().collect();
        let shares = self
            .batched(&refs, |c, idx| async move {
                let part: Vec<Key> = idx.iter().map(|&i| keys[i].clone()).collect();
                c.contains_here(&part).await
            })
            .await?;
        let mut out = vec![false; keys.len()];
        for (idx, got) in shares {
            for (i, v) in idx.into_iter().zip(got) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    async fn contains_here(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let mut present = Vec::with_capacity(keys.len());
        for batch in keys.chunks(wire::MAX_BATCH) {
            let req = pb::ContainsRequest {
                keys: batch.iter().map(key_to_proto).collect(),
            };
            present.extend(
                self.retry(|mut c| {
                    let req = self.request(req.clone());
                    async move { Ok(c.contains(req).await?.into_inner().present) }
                })
                .await?,
            );
        }
        Ok(present)
    }

    /// Deletes a value (idempotent, so retried). `true` if it existed.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        self.routed(key, |c| async move { c.delete_here(key).await })
            .await
    }

    async fn delete_here(&self, key: &Key) -> Result<bool> {
        if let Some(d) = &self.data {
            return d.delete(key).await;
        }
        let req = pb::KeyRequest {
            key: Some(key_to_proto(key)),
        };
        self.retry(|mut c| {
            let req = self.request(req.clone());
            async move { Ok(c.delete(req).await?.into_inner().deleted) }
        })
        .await
    }

    /// Pins a value in DRAM (pins nest, so never retried). `false` if absent.
    pub async fn pin(&self, key: &Key) -> Result<bool> {
        self.routed(key, |c| async move { c.pin_here(key).await })
            .await
    }

    async fn pin_here(&self, key: &Key) -> Result<bool> {
        let req = self.request(pb::KeyRequest {
            key: Some(key_to_proto(key)),
        });
        Ok(self.inner.clone().pin(req).await?.into_inner().found)
    }

    /// Releases one pin. `false` if it was not pinned.
    pub async fn unpin(&self, key: &Key) -> Result<bool> {
        self.routed(key, |c| async move { c.unpin_here(key).await })
            .await
    }

    async fn unpin_here(&self, key: &Key) -> Result<bool> {
        let req = self.request(pb::KeyRequest {
            key: Some(key_to_proto(key)),
        });
        Ok(self.inner.clone().unpin(req).await?.into_inner().found)
    }

    /// Drops a value from the cache tiers (not the origin). Idempotent.
    pub async fn evict(&self, key: &Key) -> Result<bool> {
        self.routed(key, |c| async move { c.evict_here(key).await })
            .await
    }

    async fn evict_here(&self, key: &Key) -> Result<bool> {
        let req = pb::KeyRequest {
            key: Some(key_to_proto(key)),
        };
        self.retry(|mut c| {
            let req = self.request(req.clone());
            async move { Ok(c.evict(req).await?.into_inner().evicted) }
        })
        .await
    }

    /// Lists values of a namespace/tenant by body prefix.
    pub async fn list(
        &self,
        namespace: &str,
        tenant: &str,
        prefix: &[u8],
        limit: u32,
    ) -> Result<pb::ListResponse> {
        let req = pb::ListRequest {
            namespace: namespace.into(),
            tenant: tenant.into(),
            prefix: prefix.to_vec().into(),
            limit,
        };
        self.retry(|mut c| {
            let req = self.request(req.clone());
            async move { Ok(c.list(req).await?.into_inner()) }
        })
        .await
    }

    /// The cluster the server is a member of and its cell's members, as the server
    /// sees them (an empty cluster name when it is a single node).
    pub async fn members(&self) -> Result<pb::MembersResponse> {
        self.retry(|mut c| {
            let req = self.request(pb::MembersRequest {});
            async move { Ok(c.members(req).await?.into_inner()) }
        })
        .await
    }

    /// Per-tier, per-namespace counters.
    pub async fn stats(&self) -> Result<pb::StatsResponse> {
        self.retry(|mut c| {
            let req = self.request(pb::StatsRequest {});
            async move { Ok(c.stats(req).await?.into_inner()) }
        })
        .await
    }
}
