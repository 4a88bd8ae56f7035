//! One request layer behind both entry points: one upload budget and one batch
//! limit for gRPC and the data path, pins asked for with a put over either, and
//! the caller's deadline reaching origin reads (a read abandoned at its deadline
//! stops reading the origin).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::v1 as proto;
use strata_proto::v1::cache_client::CacheClient;
use strata_server::config::{ByteSize, Config};
use strata_server::testing::{self, k, raw_call};
use strata_server::{Running, Server};
use strata_tiers::{
    BoxFuture, ByteRange, GetOptions, Key, LocalDirTier, NamespaceOrigin, PutOptions, Tier,
    TierStats,
};
use strata_transport::Client;
use strata_transport::data::CarrierChoice;
use strata_transport::key_to_proto;
use strata_transport::wire::{
    MAX_BATCH, Op, Request, Status, request_frame, request_frame_within, response,
};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.dram.capacity = 64 << 20;
    c
}

async fn client(r: &Running, data_path: bool, carrier: CarrierChoice) -> Client {
    testing::client(r, testing::options(data_path.then_some(carrier), 2)).await
}

/// A fault injected around the real local-directory origin: every read of bytes
/// waits `delay` first. Counts the reads that started, and those dropped before
/// they ended (their caller stopped waiting).
#[derive(Debug)]
struct SlowOrigin {
    inner: LocalDirTier,
    delay: Duration,
    started: AtomicU64,
    abandoned: AtomicU64,
}

impl SlowOrigin {
    /// Makes a local directory under `dir` holding 4 KiB values `obj/<name>` for
    /// each of `names`, and installs it, `delay` slow, as `r`'s origin of `obj`.
    async fn install(
        r: &Running,
        dir: &std::path::Path,
        names: &[&str],
        delay: Duration,
    ) -> Arc<Self> {
        let inner = LocalDirTier::open(dir.join("slow-origin")).unwrap();
        for name in names {
            inner
                .put(
                    &k(&format!("obj/{name}")),
                    Bytes::from(vec![7u8; 4096]),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
        }
        let slow = Arc::new(Self {
            inner,
            delay,
            started: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        });
        r.store.set_namespace_origin("obj", slow.clone());
        slow
    }
}

/// Counts a read as abandoned unless it is disarmed first.
struct Abandon<'a>(&'a AtomicU64, bool);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl NamespaceOrigin for SlowOrigin {
    fn name(&self) -> &'static str {
        "slow-localdir"
    }

    fn stats(&self) -> &Arc<TierStats> {
        self.inner.stats()
    }

    fn size<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, strata_tiers::Result<Option<u64>>> {
        Box::pin(self.inner.size(key))
    }

    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, strata_tiers::Result<Option<Bytes>>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let mut armed = Abandon(&self.abandoned, true);
            tokio::time::sleep(self.delay).await;
            let got = self
                .inner
                .get(
                    key,
                    &GetOptions {
                        range,
                        deadline: None,
                    },
                )
                .await;
            armed.1 = false;
            got
        })
    }
}

/// A deadline sent with a data-path frame or a gRPC call ends the read with
/// `DeadlineExceeded` when it passes, and the origin read under it stops; a read
/// without one waits for the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_reaches_origin_reads() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    let slow = SlowOrigin::install(
        &r,
        dir.path(),
        &["a", "b", "c"],
        Duration::from_millis(1500),
    )
    .await;

    // The data path: a GET frame carrying a 150 ms budget.
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let get = |key: &str| Request::Get {
        key: k(key),
        offset: 0,
        length: None,
    };
    let t = Instant::now();
    let frame = request_frame_within(1, 0, &get("obj/a"), 0, Some(Duration::from_millis(150)));
    let (h, meta, _) = raw_call(&mut s, &frame, &[]).await;
    assert_eq!(h.status, Status::DeadlineExceeded, "{meta:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(slow.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        slow.abandoned.load(Ordering::SeqCst),
        1,
        "the origin read stopped"
    );

    // gRPC: the deadline of the call (`grpc-timeout`), set without a client-side
    // timeout, so that the answer is the server's.
    let mut raw = CacheClient::connect(format!("http://{}", r.addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(proto::GetRequest {
        key: Some(key_to_proto(&k("obj/b"))),
        offset: 0,
        length: None,
    });
    req.set_timeout(Duration::from_millis(150));
    let t = Instant::now();
    let e = match raw.get(req).await {
        Err(e) => e,
        Ok(mut stream) => stream.get_mut().message().await.unwrap_err(),
    };
    // (The request layer answers a little before the deadline; tonic, on either
    // side, ends the call at it with CANCELLED if that answer is late.)
    assert!(
        matches!(
            e.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        slow.abandoned.load(Ordering::SeqCst),
        2,
        "the origin read stopped"
    );

    // No deadline: the read waits for the origin.
    let (h, meta, _) = raw_call(&mut s, &request_frame(2, 0, &get("obj/c"), 0), &[]).await;
    assert_eq!(h.status, Status::Ok, "{meta:?}");
    assert_eq!(slow.abandoned.load(Ordering::SeqCst), 2);
    r.shutdown().await.unwrap();
}

/// gRPC puts, data-path PUTs and open reservations hold one budget: a
/// reservation on the data path leaves a gRPC put `Busy` (RESOURCE_EXHAUSTED)
/// until it is let go, and one upload over the whole budget is refused on both
/// as too large, naming the one setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_entry_points_hold_one_upload_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.requests.max_upload_bytes = ByteSize(1 << 20);
    let r = Server::start(cfg).await.unwrap();
    let grpc = client(&r, false, CarrierChoice::Auto).await;
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();

    let reserve = Request::Reserve {
        key: k("kv/b/held"),
        len: 768 << 10,
    };
    let (h, meta, _) = raw_call(&mut s, &request_frame(1, 0, &reserve, 0), &[]).await;
    assert_eq!(h.status, Status::Ok, "{meta:?}");
    assert_eq!(r.data.ops().upload_budget_free(), 256 << 10);

    let value = Bytes::from(vec![1u8; 512 << 10]);
    let e = grpc.put(&k("kv/b/grpc"), value.clone()).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("requests.max_upload_bytes"), "{msg}");
    match e {
        strata_transport::ClientError::Status { status } => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted)
        }
        e => panic!("{e}"),
    }

    let (h, _, _) = raw_call(
        &mut s,
        &request_frame(2, 0, &Request::Abort { reservation: 1 }, 0),
        &[],
    )
    .await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(r.data.ops().upload_budget_free(), 1 << 20);
    grpc.put(&k("kv/b/grpc"), value.clone()).await.unwrap();
    assert_eq!(grpc.get(&k("kv/b/grpc")).await.unwrap().unwrap(), value);

    // Over the whole budget: TooLarge on the data path, INVALID_ARGUMENT on gRPC.
    let big = vec![2u8; (1 << 20) + 1];
    let put = Request::Put {
        key: k("kv/b/big"),
        crc32c: crc32c::crc32c(&big),
    };
    let (h, meta, _) = raw_call(&mut s, &request_frame(3, 0, &put, big.len() as u64), &big).await;
    assert_eq!(h.status, Status::TooLarge);
    assert!(response::decode_error(&meta).contains("requests.max_upload_bytes"));
    let e = grpc
        .put(&k("kv/b/big"), Bytes::from(big))
        .await
        .unwrap_err();
    match e {
        strata_transport::ClientError::Status { status } => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("requests.max_upload_bytes"));
        }
        e => panic!("{e}"),
    }
    r.shutdown().await.unwrap();
}

/// One batch limit on both entry points: a gRPC batch over it is refused, naming
/// it, as the data path's frame decoder refuses one; the clients split longer
/// lists, so a caller never meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_limit_and_clients_split_longer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    let tcp = client(&r, true, CarrierChoice::Tcp).await;
    let grpc = client(&r, false, CarrierChoice::Auto).await;
    let n = MAX_BATCH + 500;
    let keys: Vec<Key> = (0..n).map(|i| k(&format!("kv/batch/{i:06}"))).collect();
    let present = MAX_BATCH + 100;
    let data = tcp.data().unwrap();
    for key in &keys[..present] {
        data.put(key, b"x").await.unwrap();
    }

    let mut raw = CacheClient::connect(format!("http://{}", r.addr))
        .await
        .unwrap();
    let e = raw
        .contains(proto::ContainsRequest {
            keys: keys[..MAX_BATCH + 1].iter().map(key_to_proto).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains(&MAX_BATCH.to_string()),
        "{}",
        e.message()
    );
    let at_limit = raw
        .contains(proto::ContainsRequest {
            keys: keys[..MAX_BATCH].iter().map(key_to_proto).collect(),
        })
        .await
        .unwrap();
    assert_eq!(at_limit.into_inner().present.len(), MAX_BATCH);

    assert_eq!(grpc.match_prefix(&keys).await.unwrap() as usize, present);
    assert_eq!(tcp.match_prefix(&keys).await.unwrap() as usize, present);
    let found = grpc.contains(&keys).await.unwrap();
    assert_eq!(found.len(), n);
    assert_eq!(found.iter().filter(|p| **p).count(), present);
    r.shutdown().await.unwrap();
}

/// A put may pin its value over every carrier (the data path's PIN flag on PUT
/// and COMMIT; gRPC's header field), not over gRPC only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_pins_over_every_carrier() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    // Each carrier's puts are seen on a counter of their own (TCP: PUT, shared
    // memory: COMMIT), gRPC first, since an answer is counted once written and a
    // count may trail its client.
    for (i, (data_path, carrier, op)) in [
        (false, CarrierChoice::Auto, Op::Put),
        (true, CarrierChoice::Tcp, Op::Put),
        (true, CarrierChoice::Shm, Op::Commit),
    ]
    .into_iter()
    .enumerate()
    {
        let c = client(&r, data_path, carrier).await;
        let key = k(&format!("kv/pin/{i}"));
        let s = r.data.stats();
        let data_puts = || s.answers(op, Status::Ok);
        let before = data_puts();
        c.put_with(&key, Bytes::from(vec![3u8; 10_000]), true)
            .await
            .unwrap();
        // Over the data path when the client has one (an answer is counted once
        // it is written, so the count may trail the client a little).
        let until = Instant::now() + Duration::from_secs(5);
        while data_puts() - before != u64::from(data_path) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(data_puts() - before, u64::from(data_path), "{carrier:?}");
        assert!(r.store.unpin(&key).await.unwrap(), "{carrier:?} pinned");
        assert!(!r.store.unpin(&key).await.unwrap(), "{carrier:?}: one pin");
        let key = k(&format!("kv/nopin/{i}"));
        c.put_with(&key, Bytes::from(vec![3u8; 10_000]), false)
            .await
            .unwrap();
        assert!(
            !r.store.unpin(&key).await.unwrap(),
            "{carrier:?} not pinned"
        );
    }
    r.shutdown().await.unwrap();
}

/// A client that closes its side with a request still waiting on a hung origin
/// does not keep its connection (and the place it holds) for ever: its requests
/// get a lease lifetime more, then the connection goes and the read under it
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_clients_hung_requests_do_not_hold_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.data.lease_ttl_ms = 400;
    let r = Server::start(cfg).await.unwrap();
    let slow = SlowOrigin::install(&r, dir.path(), &["hung"], Duration::from_secs(3600)).await;
    let s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let get = request_frame(
        1,
        0,
        &Request::Get {
            key: k("obj/hung"),
            offset: 0,
            length: None,
        },
        0,
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(&get).await.unwrap();
    testing::within_5s("the origin read to start", || {
        slow.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let closed = Instant::now();
    wr.shutdown().await.unwrap();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut byte))
        .await
        .expect("the server lets the connection go")
        .unwrap_or(0);
    assert_eq!(n, 0, "an answer came from a read that cannot end");
    assert!(closed.elapsed() >= Duration::from_millis(400));
    testing::within_5s("the hung read to be dropped", || {
        slow.abandoned.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(r.data.stats().stalled_connections() >= 1);
    r.shutdown().await.unwrap();
}

/// A data connection with its 1,024 requests in flight all hung on an origin
/// that does not answer still answers a DRAM hit sent behind them (a hung fill
/// never blocks a hit); the reads past the cap that would wait are answered
/// `Busy`, for the client to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_behind_a_full_pipeline_of_hung_reads_are_answered() {
    use strata_server::data::MAX_INFLIGHT;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A hung GET holds a page of the read budget: small pages, so 1,024 of them
    // do not take it all.
    cfg.store.page_size = 64 << 10;
    cfg.data.lease_ttl_ms = 400;
    let r = Server::start(cfg).await.unwrap();
    let slow = SlowOrigin::install(&r, dir.path(), &["hung"], Duration::from_secs(3600)).await;
    let c = client(&r, true, CarrierChoice::Tcp).await;
    let hot = testing::pattern(3000, 9);
    c.put(&k("kv/t/hot"), hot.clone()).await.unwrap();
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let mut frames = Vec::new();
    for id in 1..=MAX_INFLIGHT as u64 + 8 {
        frames.extend_from_slice(&request_frame(
            id,
            0,
            &Request::Get {
                key: k("obj/hung"),
                offset: 0,
                length: None,
            },
            0,
        ));
    }
    s.write_all(&frames).await.unwrap();
    testing::within_5s("the origin read to start", || {
        slow.started.load(Ordering::SeqCst) >= 1
    })
    .await;
    let hit = request_frame(
        99_999,
        0,
        &Request::Get {
            key: k("kv/t/hot"),
            offset: 0,
            length: None,
        },
        0,
    );
    s.write_all(&hit).await.unwrap();
    // The reads past the cap that would wait are answered `Busy`; then the hit.
    let mut busy = Vec::new();
    let data = loop {
        let (h, _, data) = tokio::time::timeout(Duration::from_secs(5), testing::raw_read(&mut s))
            .await
            .expect("a DRAM hit behind 1,032 hung reads is answered");
        if h.id == 99_999 {
            assert_eq!(h.status, Status::Ok);
            break data;
        }
        assert_eq!(h.status, Status::Busy, "request {}", h.id);
        busy.push(h.id);
    };
    assert_eq!(data, hot);
    assert_eq!(
        busy,
        (MAX_INFLIGHT as u64 + 1..=MAX_INFLIGHT as u64 + 8).collect::<Vec<_>>()
    );
    drop(s);
    drop(c);
    r.shutdown().await.unwrap();
}
