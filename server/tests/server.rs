//! The real server on 127.0.0.1:0, driven by the real client.

use std::time::Duration;

use bytes::Bytes;
use strata_server::Running;
use strata_server::config::{ByteSize, Config};
use strata_server::testing::{self, k, pattern, scrape};
use strata_tiers::Key;
use strata_transport::{Client, ClientOptions, key_to_proto, proto};
use tonic::Code;

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.requests.max_upload_bytes = ByteSize(64 << 20);
    c
}

/// These tests exercise the gRPC surface itself, so values stay on gRPC here;
/// `data_path.rs` tests the data path.
fn grpc_only() -> ClientOptions {
    testing::options(None, 2)
}

async fn start(dir: &std::path::Path) -> (Running, Client) {
    let running = testing::start(config(dir)).await;
    let client = testing::client(&running, grpc_only()).await;
    (running, client)
}

async fn still_serves(c: &Client) {
    c.put(&k("kv/alive"), Bytes::from_static(b"yes"))
        .await
        .unwrap();
    assert_eq!(
        c.get_range(&k("kv/alive"), 0, None)
            .await
            .unwrap()
            .unwrap()
            .1,
        "yes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_range_and_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = start(dir.path()).await;

    let big = pattern(5 << 20 | 123, 7);
    let r = c.put(&k("obj/t1/big.bin"), big.clone()).await.unwrap();
    assert_eq!(r.length, big.len() as u64);
    assert_eq!(r.crc32c, crc32c::crc32c(&big));
    let (info, got) = c
        .get_range(&k("obj/t1/big.bin"), 0, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.total_length, big.len() as u64);
    assert_eq!(got, big);
    let (_, part) = c
        .get_range(&k("obj/t1/big.bin"), (1 << 20) - 10, Some(2 << 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(part, big.slice((1 << 20) - 10..(3 << 20) - 10));
    let (_, tail) = c
        .get_range(&k("obj/t1/big.bin"), big.len() as u64 - 5, Some(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tail,
        big.slice(big.len() - 5..),
        "a range past the end is clipped"
    );

    let blocks: Vec<Key> = (0..8).map(|i| k(&format!("kv/m/blk{i}"))).collect();
    for b in &blocks[..5] {
        c.put(b, pattern(1000, 1)).await.unwrap();
    }
    assert_eq!(c.match_prefix(&blocks).await.unwrap(), 5);
    assert_eq!(
        c.contains(&blocks[3..7]).await.unwrap(),
        vec![true, true, false, false]
    );

    assert!(c.pin(&blocks[0]).await.unwrap());
    assert!(c.unpin(&blocks[0]).await.unwrap());
    assert!(!c.unpin(&blocks[0]).await.unwrap());
    assert!(c.evict(&blocks[0]).await.unwrap());
    assert_eq!(c.match_prefix(&blocks).await.unwrap(), 0);

    let listed = c.list("kv", "m", b"blk", 100).await.unwrap();
    assert_eq!(listed.entries.len(), 4);
    assert!(c.delete(&blocks[1]).await.unwrap());
    assert!(!c.delete(&blocks[1]).await.unwrap());

    // obj is write-through: evict keeps the origin copy, so a get refetches it.
    assert!(c.evict(&k("obj/t1/big.bin")).await.unwrap());
    let (info, got) = c
        .get_range(&k("obj/t1/big.bin"), 0, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.tier, "localdir");
    assert_eq!(got, big);

    let stats = c.stats().await.unwrap();
    let dram = stats.tiers.iter().find(|t| t.tier == "dram").unwrap();
    assert!(dram.total.as_ref().unwrap().hits > 0);
    assert!(
        stats
            .tiers
            .iter()
            .any(|t| t.tier == "localdir" && t.total.as_ref().unwrap().origin_reads > 0)
    );

    let body = scrape(running.metrics_addr).await;
    assert!(
        body.contains("strata_tier_hits_total{tier=\"dram\",namespace=\"kv\"}"),
        "{body}"
    );
    assert!(
        body.contains("strata_grpc_requests_total{method=\"put\"}"),
        "{body}"
    );

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = start(dir.path()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(c.channel().clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "strata.v1.Cache".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // Reflection answers both versions, through the stock clients generated from
    // the official reflection protos (v1alpha is what Python's grpcio-reflection
    // and older grpcurl ask).
    use tonic_reflection::pb::{v1, v1alpha};
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(c.channel().clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = r1
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1: not a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "strata.v1.Cache"),
        "v1: {names:?}"
    );
    let mut ra =
        v1alpha::server_reflection_client::ServerReflectionClient::new(c.channel().clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "strata.v1.Cache".into(),
            ),
        ),
    };
    let mut answers = ra
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: no file descriptor for strata.v1.Cache");
    };
    assert!(!f.file_descriptor_proto.is_empty());
    running.shutdown().await.unwrap();
}

/// Several servers on one host: every listener on port 0 (gRPC, metrics, data
/// TCP) and a shared-memory socket of its own; each reports what it bound, and
/// each serves its own values over every carrier.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_a_host() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, ca) = start(d1.path()).await;
    let (b, cb) = start(d2.path()).await;
    assert_ne!(a.addr, b.addr);
    assert_ne!(a.metrics_addr, b.metrics_addr);
    let (da, db) = (a.data_addr.unwrap(), b.data_addr.unwrap());
    assert_ne!(da, db);
    assert_ne!(da.port(), 0);
    assert_ne!(a.shm_socket, b.shm_socket);
    for (c, r, v) in [(&ca, &a, "a"), (&cb, &b, "b")] {
        c.put(&k("kv/host/x"), Bytes::from(v)).await.unwrap();
        let data = Client::connect(&r.addr.to_string(), ClientOptions::default())
            .await
            .unwrap();
        assert!(data.carrier().is_some(), "the data path is offered");
        assert_eq!(data.get(&k("kv/host/x")).await.unwrap().unwrap(), v);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn code(e: strata_transport::ClientError) -> (Code, String) {
    (e.code().unwrap_or(Code::Unknown), e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_statuses_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = start(dir.path()).await;
    let mut raw = proto::cache_client::CacheClient::new(c.channel().clone());

    // Malformed key and unknown namespace.
    let bad = proto::Key {
        namespace: "Not A Namespace".into(),
        tenant: "".into(),
        body: Bytes::from_static(b"x"),
    };
    let e = raw
        .contains(proto::ContainsRequest { keys: vec![bad] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("namespace"), "{}", e.message());
    let (code_, msg) = code(
        c.put(&k("nope/x"), Bytes::from_static(b"1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code_, Code::InvalidArgument);
    assert!(msg.contains("unknown namespace"), "{msg}");
    still_serves(&c).await;

    // Oversized: past the in-flight budget, and past the namespace's limit.
    let huge = proto::PutHeader {
        key: Some(key_to_proto(&k("kv/huge"))),
        length: 1 << 40,
        crc32c: None,
        pin: false,
    };
    let e = raw
        .put(futures::stream::iter(vec![proto::PutRequest {
            msg: Some(proto::put_request::Msg::Header(huge)),
        }]))
        .await
        .unwrap_err();
    // Over the whole budget: wrong whatever the load, so not retryable.
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("requests.max_upload_bytes"),
        "{}",
        e.message()
    );
    still_serves(&c).await;

    // A range past the end.
    c.put(&k("kv/small"), Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let (code_, msg) = code(c.get_range(&k("kv/small"), 11, None).await.unwrap_err());
    assert_eq!(code_, Code::OutOfRange, "{msg}");

    // A truncated upload: nothing becomes visible.
    let h = proto::PutHeader {
        key: Some(key_to_proto(&k("kv/trunc"))),
        length: 100,
        crc32c: None,
        pin: false,
    };
    let msgs = vec![
        proto::PutRequest {
            msg: Some(proto::put_request::Msg::Header(h)),
        },
        proto::PutRequest {
            msg: Some(proto::put_request::Msg::Chunk(Bytes::from(vec![1u8; 50]))),
        },
    ];
    let e = raw.put(futures::stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("truncated"), "{}", e.message());
    assert!(
        c.get_range(&k("kv/trunc"), 0, None)
            .await
            .unwrap()
            .is_none()
    );

    // A wrong checksum: refused, nothing visible.
    let h = proto::PutHeader {
        key: Some(key_to_proto(&k("kv/crc"))),
        length: 3,
        crc32c: Some(1),
        pin: false,
    };
    let msgs = vec![
        proto::PutRequest {
            msg: Some(proto::put_request::Msg::Header(h)),
        },
        proto::PutRequest {
            msg: Some(proto::put_request::Msg::Chunk(Bytes::from_static(b"abc"))),
        },
    ];
    let e = raw.put(futures::stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(c.get_range(&k("kv/crc"), 0, None).await.unwrap().is_none());

    // A stream whose first message is not a header.
    let msgs = vec![proto::PutRequest {
        msg: Some(proto::put_request::Msg::Chunk(Bytes::from_static(b"abc"))),
    }];
    assert_eq!(
        raw.put(futures::stream::iter(msgs))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // A client that disconnects mid-stream: the upload is abandoned.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let h = proto::PutHeader {
        key: Some(key_to_proto(&k("kv/gone"))),
        length: 1 << 20,
        crc32c: None,
        pin: false,
    };
    tx.send(proto::PutRequest {
        msg: Some(proto::put_request::Msg::Header(h)),
    })
    .await
    .unwrap();
    tx.send(proto::PutRequest {
        msg: Some(proto::put_request::Msg::Chunk(Bytes::from(vec![0u8; 1000]))),
    })
    .await
    .unwrap();
    let mut raw2 = raw.clone();
    let call = tokio::spawn(async move {
        raw2.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.get_range(&k("kv/gone"), 0, None).await.unwrap().is_none());
    still_serves(&c).await;

    // Read-only namespace.
    let (code_, msg) = code(
        c.put(&k("shard/ds/x"), Bytes::from_static(b"1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code_, Code::InvalidArgument);
    assert!(msg.contains("read-only"), "{msg}");

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_then_warm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = start(dir.path()).await;
    let v = pattern(300_000, 3);
    c.put(&k("kv/warm"), v.clone()).await.unwrap();
    let big = pattern(3 << 20, 4);
    c.put(&k("kv/warm-big"), big.clone()).await.unwrap();
    running.shutdown().await.unwrap();

    let (running, c) = start(dir.path()).await;
    let (info, got) = c.get_range(&k("kv/warm"), 0, None).await.unwrap().unwrap();
    assert_eq!(info.tier, "nvme");
    assert_eq!(got, v);
    assert_eq!(
        c.get_range(&k("kv/warm-big"), 0, None)
            .await
            .unwrap()
            .unwrap()
            .1,
        big
    );
    running.shutdown().await.unwrap();
}
