//! The Azure Blob tier against a real Azurite, including fault injection through a
//! small HTTP proxy that answers the first requests with `503 Server Busy`.

#[path = "common/azurite.rs"]
mod azurite;
#[path = "common/faultproxy.rs"]
mod faultproxy;

use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_tiers::{BlobTier, ByteRange, Error, GetOptions, Key, PutOptions, PutOutcome, Tier};

use self::azurite::Azurite;
use self::faultproxy::FaultProxy;

fn key(body: impl AsRef<[u8]>) -> Key {
    Key::new("obj", "", body).expect("valid key")
}

fn range(offset: u64, length: Option<u64>) -> GetOptions {
    GetOptions {
        range: Some(ByteRange { offset, length }),
        ..GetOptions::default()
    }
}

async fn put(t: &BlobTier, k: &Key, v: impl Into<Bytes>) {
    assert_eq!(
        t.put(k, v.into(), &PutOptions::default())
            .await
            .expect("request"),
        PutOutcome::Stored
    );
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_size_contains_delete() {
    let az = Azurite::start();
    let t = az.tier("basics").await;
    assert_eq!(t.name(), "blob");
    let k = key("a/b/c.bin");
    assert_eq!(
        t.get(&k, &GetOptions::default()).await.expect("request"),
        None
    );
    assert_eq!(t.size(&k).await.expect("request"), None);
    assert!(!t.contains(&k).await.expect("request"));
    assert!(!t.delete(&k).await.expect("request"));

    put(&t, &k, "hello, blob").await;
    assert_eq!(
        t.get(&k, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        "hello, blob"
    );
    assert_eq!(t.size(&k).await.expect("request"), Some(11));
    assert!(t.contains(&k).await.expect("request"));

    put(&t, &k, "replaced").await;
    assert_eq!(
        t.get(&k, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        "replaced"
    );

    assert!(t.delete(&k).await.expect("request"));
    assert_eq!(
        t.get(&k, &GetOptions::default()).await.expect("request"),
        None
    );
    assert!(!t.delete(&k).await.expect("request"));

    // Awkward bodies survive the name encoding.
    for body in [
        &b"../up"[..],
        b"a//b",
        b".",
        b"sp ace%",
        b"\xff\x00bin",
        b"trailing/",
    ] {
        let k = key(body);
        put(&t, &k, Bytes::copy_from_slice(body)).await;
        assert_eq!(
            t.get(&k, &GetOptions::default())
                .await
                .expect("request")
                .expect("value present"),
            body,
            "{body:?}"
        );
    }
    t.close().await.expect("request");
    assert!(matches!(
        t.get(&k, &GetOptions::default()).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_resolve_like_http() {
    let az = Azurite::start();
    let t = az.tier("ranges").await;
    let k = key("r");
    put(&t, &k, "0123456789").await;
    let get = |o: GetOptions| {
        let (t, k) = (&t, &k);
        async move { t.get(k, &o).await }
    };
    assert_eq!(
        get(range(2, Some(3)))
            .await
            .expect("request")
            .expect("value present"),
        "234"
    );
    assert_eq!(
        get(range(7, None))
            .await
            .expect("request")
            .expect("value present"),
        "789"
    );
    assert_eq!(
        get(range(8, Some(100)))
            .await
            .expect("request")
            .expect("value present"),
        "89",
        "clipped at the end"
    );
    assert_eq!(
        get(range(10, None))
            .await
            .expect("request")
            .expect("value present"),
        "",
        "empty at the end"
    );
    assert_eq!(
        get(range(4, Some(0)))
            .await
            .expect("request")
            .expect("value present"),
        ""
    );
    match get(range(11, Some(1))).await {
        Err(Error::RangeOutOfBounds {
            offset: 11,
            size: 10,
            ..
        }) => {}
        other => panic!("expected RangeOutOfBounds, got {other:?}"),
    }
    assert!(matches!(
        get(range(11, Some(0))).await,
        Err(Error::RangeOutOfBounds { .. })
    ));
    // A range of a missing key is a miss, not an error.
    assert_eq!(
        t.get(&key("nope"), &range(5, Some(1)))
            .await
            .expect("request"),
        None
    );

    // The empty value.
    let e = key("empty");
    put(&t, &e, Bytes::new()).await;
    assert_eq!(
        t.get(&e, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        ""
    );
    assert_eq!(t.size(&e).await.expect("request"), Some(0));
    assert_eq!(
        t.get(&e, &range(0, Some(4)))
            .await
            .expect("request")
            .expect("value present"),
        ""
    );
    assert!(matches!(
        t.get(&e, &range(1, None)).await,
        Err(Error::RangeOutOfBounds { size: 0, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_with_parallel_ranged_gets() {
    let az = Azurite::start();
    let writer = az.tier("large").await;
    let value = pattern(20 << 20);
    let k = key("big/20MiB.bin");
    put(&writer, &k, value.clone()).await;

    let proxy = FaultProxy::start(az.port, 0, "").await;
    let mut config = proxy.config(&az, "large");
    config.range_chunk_size = 1 << 20;
    config.max_concurrency = 4;
    let t = BlobTier::open(config).await.expect("request");

    let got = t
        .get(&k, &GetOptions::default())
        .await
        .expect("request")
        .expect("value present");
    assert_eq!(got.len(), value.len());
    assert!(got == value, "the 20 MiB value came back different");
    assert_eq!(proxy.seen(), 20, "one GET per 1 MiB chunk");
    assert!(
        proxy.max_in_flight() >= 2,
        "the chunks were fetched one at a time"
    );

    // A range across chunk boundaries, not aligned to them.
    let (off, len) = ((1 << 20) + 12_345, 5 << 20);
    let got = t
        .get(&k, &range(off, Some(len)))
        .await
        .expect("request")
        .expect("value present");
    assert!(
        got == value.slice(off as usize..(off + len) as usize),
        "the ranged read came back different"
    );
    let got = t
        .get(&k, &range((20 << 20) - 7, None))
        .await
        .expect("request")
        .expect("value present");
    assert_eq!(got, value.slice((20 << 20) - 7..));
}

/// A pinned read of a known length asks for every chunk at once; a range past the
/// end falls back to the general read, and a changed blob is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_reads_of_a_known_length_fetch_every_chunk_at_once() {
    let az = Azurite::start();
    let writer = az.tier("pinned").await;
    let value = pattern(6 << 20);
    let k = key("big/6MiB.bin");
    put(&writer, &k, value.clone()).await;
    let name = writer.blob_name(&k).expect("blob name");
    let etag = writer
        .list_blobs("")
        .await
        .expect("request")
        .into_iter()
        .find(|b| b.name == name)
        .expect("listed")
        .etag;

    let proxy = FaultProxy::start(az.port, 0, "").await;
    let mut config = proxy.config(&az, "pinned");
    config.range_chunk_size = 1 << 20;
    config.max_concurrency = 8;
    let t = BlobTier::open(config).await.expect("request");
    let (off, len) = (12_345u64, (5 << 20) + 3);
    let got = t
        .read_pinned(
            &name,
            ByteRange {
                offset: off,
                length: Some(len),
            },
            &etag,
            None,
        )
        .await
        .expect("request")
        .expect("value present");
    assert!(
        got == value.slice(off as usize..(off + len) as usize),
        "the pinned read came back different"
    );
    assert_eq!(proxy.seen(), 6, "one GET per 1 MiB chunk");
    assert!(
        proxy.max_in_flight() >= 4,
        "the chunks were not all asked at once ({} at most)",
        proxy.max_in_flight()
    );

    // Past the end: the general read resolves it (the bytes there are, to the end).
    let got = t
        .read_pinned(
            &name,
            ByteRange {
                offset: 5 << 20,
                length: Some(4 << 20),
            },
            &etag,
            None,
        )
        .await
        .expect("request")
        .expect("value present");
    assert!(got == value.slice(5 << 20..), "a range past the end");

    // A changed blob is refused, never mixed.
    put(&writer, &k, pattern(6 << 20).slice(1..)).await;
    let err = t
        .read_pinned(
            &name,
            ByteRange {
                offset: 0,
                length: Some(3 << 20),
            },
            &etag,
            None,
        )
        .await
        .expect_err("the ETag moved");
    assert!(matches!(err, Error::Changed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_by_prefix_with_limit() {
    let az = Azurite::start();
    let t = az.tier("listing").await;
    for body in [
        "img/a.jpg",
        "img/b.jpg",
        "img/c.jpg",
        "txt/readme",
        "img.tar",
        "i m g",
    ] {
        put(&t, &key(body), body.to_owned()).await;
    }
    put(
        &t,
        &Key::new("obj", "acme", "img/other-tenant").expect("valid key"),
        "x",
    )
    .await;
    put(
        &t,
        &Key::new("kv", "", "img/other-namespace").expect("valid key"),
        "x",
    )
    .await;

    let bodies = |l: Vec<strata_tiers::Listed>| {
        l.into_iter()
            .map(|e| String::from_utf8(e.key.body().to_vec()).expect("UTF-8 body"))
            .collect::<Vec<_>>()
    };
    let all = t.list("obj", "", b"", 100).await.expect("request");
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|e| e.len == e.key.body().len() as u64));
    assert_eq!(
        bodies(t.list("obj", "", b"img/", 100).await.expect("request")),
        ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    );
    assert_eq!(
        bodies(t.list("obj", "", b"img", 100).await.expect("request")).len(),
        4
    );
    assert_eq!(
        bodies(t.list("obj", "", b"i m", 100).await.expect("request")),
        ["i m g"]
    );
    assert_eq!(
        t.list("obj", "", b"img/", 2).await.expect("request").len(),
        2
    );
    assert_eq!(
        bodies(t.list("obj", "acme", b"", 100).await.expect("request")),
        ["img/other-tenant"]
    );
    assert_eq!(
        bodies(t.list("kv", "", b"img/", 100).await.expect("request")),
        ["img/other-namespace"]
    );
    assert!(
        t.list("obj", "", b"zzz", 100)
            .await
            .expect("request")
            .is_empty()
    );
    assert!(t.list("obj", "", b"", 0).await.expect("request").is_empty());

    // Blobs that are not canonical names of keys are skipped.
    let mut raw = az.config("listing");
    raw.raw_names = true;
    let raw = BlobTier::open(raw).await.expect("request");
    put(&raw, &key("obj/@/not%2Fcanonical"), "x").await;
    put(&raw, &key("obj/@/bad%zz"), "x").await;
    assert_eq!(t.list("obj", "", b"", 100).await.expect("request").len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_names_read_an_existing_dataset() {
    let az = Azurite::start();
    let mut config = az.config("datasets");
    config.raw_names = true;
    config.prefix = Some("corpus".into());
    let t = BlobTier::open(config).await.expect("request");
    t.ensure_container().await.expect("request");
    t.ensure_container().await.expect("request");
    let k = Key::new("shard", "", "train/shard-000.tar").expect("valid key");
    assert_eq!(
        t.blob_name(&k).expect("blob name"),
        "corpus/train/shard-000.tar"
    );
    put(&t, &k, "tar bytes").await;
    // Any namespace and tenant see the same blob.
    let other = Key::new("obj", "t1", "train/shard-000.tar").expect("valid key");
    assert_eq!(
        t.get(&other, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        "tar bytes"
    );
    let listed = t.list("shard", "", b"train/", 10).await.expect("request");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, k);
    assert_eq!(listed[0].len, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_container_is_a_clear_error() {
    let az = Azurite::start();
    let t = BlobTier::open(az.config("does-not-exist"))
        .await
        .expect("request");
    let k = key("x");
    for result in [
        t.get(&k, &GetOptions::default()).await.map(|_| ()),
        t.size(&k).await.map(|_| ()),
        t.put(&k, Bytes::from_static(b"x"), &PutOptions::default())
            .await
            .map(|_| ()),
        t.delete(&k).await.map(|_| ()),
        t.list("obj", "", b"", 10).await.map(|_| ()),
    ] {
        match result {
            Err(
                e @ Error::Blob {
                    status: Some(404),
                    retryable: false,
                    ..
                },
            ) => {
                assert!(e.to_string().contains("ContainerNotFound"), "{e}");
                assert!(e.to_string().contains("ensure_container"), "{e}");
            }
            other => panic!("expected a 404 ContainerNotFound error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sas_is_denied_not_missed() {
    let az = Azurite::start();
    az.tier("denied").await;
    let mut config = az.config("denied");
    config.auth = strata_tiers::BlobAuth::Sas {
        token: az.sas().replace("sig=", "sig=AAAA"),
    };
    let t = BlobTier::open(config).await.expect("request");
    match t.get(&key("x"), &GetOptions::default()).await {
        Err(
            e @ Error::Blob {
                status: Some(403),
                retryable: false,
                ..
            },
        ) => assert!(!e.to_string().contains("sig="), "{e}"),
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_busy_is_retried_until_it_succeeds() {
    let az = Azurite::start();
    let k = key("busy");
    put(&az.tier("faults").await, &k, "survived").await;

    const FAULTS: usize = 3;
    let proxy = FaultProxy::start(az.port, FAULTS, "Retry-After: 0\r\n").await;
    let t = BlobTier::open(proxy.config(&az, "faults"))
        .await
        .expect("request");
    assert_eq!(
        t.get(&k, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        "survived"
    );
    assert_eq!(proxy.seen(), FAULTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_retry_hint_is_honoured() {
    let az = Azurite::start();
    let k = key("hint");
    put(&az.tier("faults").await, &k, "x").await;

    let proxy = FaultProxy::start(az.port, 2, "x-ms-retry-after-ms: 300\r\n").await;
    let mut config = proxy.config(&az, "faults");
    (config.retry_base_delay_ms, config.retry_max_delay_ms) = (1, 5000);
    let t = BlobTier::open(config).await.expect("request");
    let started = Instant::now();
    assert_eq!(
        t.get(&k, &GetOptions::default())
            .await
            .expect("request")
            .expect("value present"),
        "x"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.seen(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_surface_a_retryable_503() {
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port, usize::MAX, "Retry-After: 0\r\n").await;
    let mut config = proxy.config(&az, "faults");
    config.max_retries = 2;
    let t = BlobTier::open(config).await.expect("request");
    match t.get(&key("x"), &GetOptions::default()).await {
        Err(
            e @ Error::Blob {
                status: Some(503), ..
            },
        ) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("ServerBusy"), "{e}");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    assert_eq!(proxy.seen(), 3, "one try and two retries");

    // With a deadline, retries stop at the deadline.
    let mut config = proxy.config(&az, "faults");
    (config.max_retries, config.retry_base_delay_ms) = (1000, 20);
    let t = BlobTier::open(config).await.expect("request");
    let opts = GetOptions {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        ..GetOptions::default()
    };
    let started = Instant::now();
    assert!(matches!(
        t.get(&key("x"), &opts).await,
        Err(Error::DeadlineExceeded { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A store over this tier serves a blob rewritten behind its back at one
/// version: the pages it reads later carry the ETag they were read at, and one
/// of another ETag than the cached head's makes the whole value be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_never_serves_a_mix_of_two_versions_of_a_rewritten_blob() {
    let az = Azurite::start();
    let writer = az.tier("rewritten").await;
    const PAGE: usize = 64 << 10;
    let store = store_over(az.tier("rewritten").await);
    let k = key("rewritten.bin");
    let len = 12 * PAGE;
    let old = pattern(len);
    let new: Bytes = old.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>().into();
    put(&writer, &k, old.clone()).await;
    let range = ByteRange {
        offset: 0,
        length: Some(10),
    };
    let (_, first) = store
        .get(&k, Some(range))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(first[..], old[..10]);
    put(&writer, &k, new.clone()).await;
    let (_, whole) = store.get(&k, None).await.expect("get").expect("present");
    assert!(
        whole == new,
        "a mix: first run new {}, last run new {}",
        whole[..4 * PAGE] == new[..4 * PAGE],
        whole[8 * PAGE..] == new[8 * PAGE..]
    );
    store.close().await.expect("close");
}

/// A store over `tier`: 64 KiB pages, origin reads of 4 pages, 64 MiB of DRAM,
/// no NVMe.
fn store_over(tier: BlobTier) -> strata_tiers::TieredStore {
    use strata_tiers::{DramConfig, DramTier, Namespaces, Origin, StoreConfig, TieredStore};
    TieredStore::new(
        &StoreConfig {
            page_size: 64 << 10,
            origin_read_size: 256 << 10,
        },
        Namespaces::default(),
        DramTier::new(&DramConfig {
            capacity: 64 << 20,
            ..DramConfig::default()
        })
        .expect("DRAM tier"),
        None,
        Some(Origin::Blob(Box::new(tier))),
    )
    .expect("store")
}

/// A fill from a slow origin does not overwrite a write acknowledged while it
/// was under way, nor bring back a value deleted meanwhile: the read that started
/// first may answer the older value (it overlapped the write), every read after
/// the write's acknowledgement answers the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_never_overwrites_a_newer_write_or_a_delete() {
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port, 0, "").await;
    let store = store_over(
        BlobTier::open(proxy.config(&az, "slowfill"))
            .await
            .expect("request"),
    );
    let writer = az.tier("slowfill").await;
    for (i, then_delete) in [(0, false), (1, true), (2, false)] {
        // Small (one page, cached whole with its head) and multi-page values.
        let len = if i == 2 { 300 << 10 } else { 1000 };
        let k = key(format!("slow-{i}"));
        let old = pattern(len);
        let new: Bytes = old.iter().map(|b| b ^ 0xa5).collect::<Vec<u8>>().into();
        put(&writer, &k, old.clone()).await;

        proxy.hold_gets(Duration::from_millis(1500));
        let reader = {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.get(&k, None).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.hold_gets(Duration::ZERO);
        if then_delete {
            assert!(store.delete(&k).await.expect("delete"), "{i}: deleted");
        } else {
            store.put(&k, &new).await.expect("put");
        }
        let first = reader.await.expect("task").expect("the overlapping read");
        if let Some((_, v)) = &first {
            assert!(
                *v == old || *v == new,
                "{i}: the overlapping read is one version"
            );
        }
        for round in 0..3 {
            let got = store.get(&k, None).await.expect("get").map(|(_, v)| v);
            if then_delete {
                assert!(
                    got.is_none(),
                    "{i}, read {round}: a deleted value came back"
                );
            } else {
                assert!(
                    got.as_ref() == Some(&new),
                    "{i}, read {round}: an acknowledged write was overwritten by an older fill ({:?} bytes, old: {})",
                    got.as_ref().map(Bytes::len),
                    got.as_ref() == Some(&old)
                );
            }
        }
    }
    store.close().await.expect("close");
}

/// An origin that answers a byte at a time (a read timeout that restarts on
/// every byte never fires) is given up on: each ranged GET gets its grace plus
/// its length at `min_read_rate`, then it is retried and fails, instead of
/// holding its reader (and a place of `max_concurrency`) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_trickles_bytes_is_given_up_on() {
    let az = Azurite::start();
    let k = key("trickled");
    put(&az.tier("trickle").await, &k, pattern(64 << 10)).await;
    let proxy = FaultProxy::start(az.port, 0, "").await;
    let mut config = proxy.config(&az, "trickle");
    config.read_grace_ms = 300;
    config.min_read_rate = 1 << 20;
    config.max_retries = 1;
    config.retry_base_delay_ms = 10;
    let t = BlobTier::open(config).await.expect("request");
    proxy.trickle_gets(Duration::from_millis(50));
    let started = Instant::now();
    let got = t.get(&k, &GetOptions::default()).await;
    let took = started.elapsed();
    assert!(
        got.is_err(),
        "a trickled answer of 64 KiB came through: {got:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "gave up after {took:?} (two attempts of ~0.36 s each)"
    );
    let e = got.unwrap_err().to_string();
    assert!(e.contains("min_read_rate"), "{e}");
    // Untrickled, the same tier reads it.
    proxy.trickle_gets(Duration::ZERO);
    assert_eq!(
        t.get(&k, &GetOptions::default()).await.expect("request"),
        Some(pattern(64 << 10))
    );
}
