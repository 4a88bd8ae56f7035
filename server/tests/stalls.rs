//! gRPC clients that stall or pile up: a put that sends its header and then
//! nothing gives its share of the upload budget back after the stall timeout
//! (before, it held it forever and every other put answered RESOURCE_EXHAUSTED);
//! connections past `server.max_connections` wait to be accepted until one
//! closes; the server raised its file-descriptor limit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::v1 as proto;
use strata_proto::v1::cache_client::CacheClient;
use strata_server::Server;
use strata_server::config::{ByteSize, Config};
use strata_server::testing::{self, k, pattern};
use strata_tiers::Tier;
use strata_transport::{Client, ClientOptions, key_to_proto};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.dram.capacity = 64 << 20;
    c.requests.max_upload_bytes = ByteSize(4 << 20);
    c.requests.stall_timeout_ms = 600;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_stream_that_stalls_gives_its_upload_budget_back() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    let c = testing::client(&r, ClientOptions::default()).await;
    let full = r.data.ops().upload_budget_free();

    // A put of the whole budget that sends its header, then nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::PutRequest {
        msg: Some(proto::put_request::Msg::Header(proto::PutHeader {
            key: Some(key_to_proto(&k("kv/stall/held"))),
            length: 4 << 20,
            crc32c: None,
            pin: false,
        })),
    })
    .await
    .unwrap();
    let mut raw = CacheClient::new(c.channel().clone());
    let started = Instant::now();
    let stalled = tokio::spawn(async move {
        raw.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    testing::within_5s("the stalled put to hold the budget", || {
        r.data.ops().upload_budget_free() == 0
    })
    .await;

    // The stalled stream ends, and says why; the budget comes back.
    let status = stalled.await.unwrap().expect_err("a stalled put fails");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stall"), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(600));
    testing::within_5s("the budget to come back", || {
        r.data.ops().upload_budget_free() == full
    })
    .await;
    drop(tx);
    let v = pattern(1 << 20, 3);
    c.put(&k("kv/stall/next"), v.clone()).await.unwrap();
    assert_eq!(c.get(&k("kv/stall/next")).await.unwrap().unwrap(), v);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_connections = 2;
    let r = Server::start(cfg).await.unwrap();
    // Two connections that never speak hold both places.
    let a = TcpStream::connect(r.addr).await.unwrap();
    let b = TcpStream::connect(r.addr).await.unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(800),
        timeout: Duration::from_millis(800),
        attempts: 1,
        ..ClientOptions::default()
    };
    let third = Client::connect(&r.addr.to_string(), options.clone()).await;
    let served = match &third {
        Ok(c) => c.get(&k("kv/cap/x")).await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !served,
        "a third connection was served past max_connections = 2"
    );
    drop((a, b));
    let c = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(c) = Client::connect(&r.addr.to_string(), options.clone()).await
                && c.put(&k("kv/cap/x"), Bytes::from_static(b"v"))
                    .await
                    .is_ok()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("served once a place is free");
    assert_eq!(&c.get(&k("kv/cap/x")).await.unwrap().unwrap()[..], b"v");
    drop(third);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_raises_its_file_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(lim.rlim_cur, lim.rlim_max, "the soft limit is the hard one");
    r.shutdown().await.unwrap();
}

/// A streamed get whose client stops taking it past the stall timeout ends
/// DEADLINE_EXCEEDED, not OK: a client reading on later must not take the
/// truncated value for a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_stream_left_unread_ends_with_an_error_not_a_short_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dram.capacity = 128 << 20;
    cfg.requests.max_upload_bytes = ByteSize(64 << 20);
    let r = Server::start(cfg).await.unwrap();
    let c = testing::client(&r, ClientOptions::default()).await;
    // Past the stream's HTTP/2 window (16 MiB), so the sender has to wait.
    let v = pattern(40 << 20, 6);
    c.put(&k("kv/stall/big"), v.clone()).await.unwrap();
    let mut raw = CacheClient::new(c.channel().clone());
    let mut stream = raw
        .get(proto::GetRequest {
            key: Some(key_to_proto(&k("kv/stall/big"))),
            offset: 0,
            length: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first message");
    let mut got = first.chunk.len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => got += m.chunk.len(),
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let status = end.expect_err(&format!(
        "the stream ended OK after {got} of {} bytes",
        v.len()
    ));
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(got < v.len());
    r.shutdown().await.unwrap();
}

/// `server.max_concurrent_streams` caps the requests of one gRPC connection: with
/// one allowed, a second request on a connection whose get stream is open waits
/// for it to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_cap_wait_for_one_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dram.capacity = 128 << 20;
    cfg.requests.max_upload_bytes = ByteSize(64 << 20);
    cfg.server.max_concurrent_streams = 1;
    let r = Server::start(cfg).await.unwrap();
    let c = testing::client(&r, ClientOptions::default()).await;
    c.put(&k("kv/streams/big"), pattern(40 << 20, 8))
        .await
        .unwrap();
    let mut raw = CacheClient::new(c.channel().clone());
    let mut open = raw
        .get(proto::GetRequest {
            key: Some(key_to_proto(&k("kv/streams/big"))),
            offset: 0,
            length: None,
        })
        .await
        .unwrap()
        .into_inner();
    open.message().await.unwrap().expect("a first message");
    // Past the 16 MiB window, the stream stays open while it is not read.
    let ask = |mut raw: CacheClient<tonic::transport::Channel>| async move {
        raw.contains(proto::ContainsRequest {
            keys: vec![key_to_proto(&k("kv/streams/big"))],
        })
        .await
    };
    let waited = tokio::time::timeout(Duration::from_millis(700), ask(raw.clone())).await;
    assert!(
        waited.is_err(),
        "a second stream ran beside the first: {waited:?}"
    );
    drop(open);
    let answered = tokio::time::timeout(Duration::from_secs(5), ask(raw.clone()))
        .await
        .expect("answered once the first stream ended")
        .unwrap()
        .into_inner();
    assert_eq!(answered.present, vec![true]);
    r.shutdown().await.unwrap();
}

/// A request that carries no deadline, on a disk that hangs, ends
/// DEADLINE_EXCEEDED after `requests.stall_timeout_ms` (over the data path and
/// gRPC) instead of waiting as long as the disk does; a DRAM hit meanwhile is
/// answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_deadline_does_not_wait_for_ever_on_a_hung_disk() {
    use strata_transport::wire::{Request, Status, request_frame};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dram.capacity = 16 << 20;
    let r = Server::start(cfg).await.unwrap();
    let c = testing::client(&r, ClientOptions::default()).await;
    // Forty 1 MiB values through 16 MiB of DRAM: the first ones live on NVMe.
    for i in 0..40 {
        c.put(&k(&format!("kv/hung/v{i}")), pattern(1 << 20, i as u8))
            .await
            .unwrap();
    }
    let nvme = r.store.nvme().expect("an NVMe tier");
    let cold = k("kv/hung/v0");
    let t = Instant::now();
    while r.store.dram().contains(&cold).await.unwrap() || !nvme.holds(&cold) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "v0 never left DRAM for NVMe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nvme.faults().stall_gets(Duration::from_secs(3600));
    let get = |id: u64, key: &str| {
        request_frame(
            id,
            0,
            &Request::Get {
                key: k(key),
                offset: 0,
                length: None,
            },
            0,
        )
    };
    // The data path: a GET frame without the DEADLINE flag.
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let t = Instant::now();
    let (h, meta, _) = tokio::time::timeout(
        Duration::from_secs(10),
        testing::raw_call(&mut s, &get(1, "kv/hung/v0"), &[]),
    )
    .await
    .expect("answered before the disk comes back");
    assert_eq!(
        h.status,
        Status::DeadlineExceeded,
        "{}",
        String::from_utf8_lossy(&meta)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // gRPC: no grpc-timeout.
    let mut raw = CacheClient::new(c.channel().clone());
    let t = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = raw
            .get(proto::GetRequest {
                key: Some(key_to_proto(&cold)),
                offset: 0,
                length: None,
            })
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    })
    .await
    .expect("answered before the disk comes back");
    let status = got.expect_err("a value read from a hung disk");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // A hit, meanwhile, at once.
    let t = Instant::now();
    let (h, _, data) = testing::raw_call(&mut s, &get(2, "kv/hung/v39"), &[]).await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(data, pattern(1 << 20, 39));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    nvme.faults().stall_gets(Duration::ZERO);
    drop(s);
    r.shutdown().await.unwrap();
}
