//! Every operation over each carrier, pipelining, polling, cancellation and
//! the fallback from shared memory to TCP.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_carrier_serves_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 2).await;
    assert_eq!(c.carrier(), Some(Carrier::Tcp));
    exercise(&c).await;
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_carrier_serves_every_operation_and_releases_its_leases() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Auto, 2).await;
    assert_eq!(c.carrier(), Some(Carrier::Shm), "same host: auto picks shm");
    exercise(&c).await;
    // Releases ride on later requests; send the last ones now, then let them land.
    c.data().unwrap().flush_releases().await;
    for _ in 0..100 {
        if r.data.leases().usage().0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.data.leases().usage(), (0, 0), "every lease was released");
    r.shutdown().await.unwrap();
}

/// A cold read (pages filled from the origin) is served from where the fill put
/// the pages, the DRAM arena: over shared memory it is lent, not sent on the
/// socket, like a read of what was already cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_over_shared_memory_is_lent_from_the_arena() {
    use strata_tiers::{LocalDirTier, PutOptions, Tier};
    let dir = tempfile::tempdir().unwrap();
    // Into the server's own origin (a local directory), before it starts.
    let origin = LocalDirTier::open(dir.path().join("origin")).unwrap();
    let value = pattern((3 << 20) + 4321, 9); // four 1 MiB pages
    origin
        .put(&k("obj/cold"), value.clone(), &PutOptions::default())
        .await
        .unwrap();
    drop(origin);
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Shm, 1).await;
    let inline = r.data.stats().bytes_inline();
    assert_eq!(c.get(&k("obj/cold")).await.unwrap(), Some(value.clone()));
    assert_eq!(
        r.data.stats().bytes_inline(),
        inline,
        "no byte of the cold read went on the socket"
    );
    assert!(r.data.stats().bytes_leased() >= value.len() as u64);
    // And warm, the same.
    assert_eq!(c.get(&k("obj/cold")).await.unwrap(), Some(value));
    assert_eq!(r.data.stats().bytes_inline(), inline);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    for i in 0..64u8 {
        c.put(
            &k(&format!("kv/p/{i}")),
            pattern(10_000 + usize::from(i), i),
        )
        .await
        .unwrap();
    }
    let gets = (0..64u8).map(|i| {
        let c = c.clone();
        async move {
            let v = c.get(&k(&format!("kv/p/{i}"))).await.unwrap().unwrap();
            assert_eq!(
                v,
                pattern(10_000 + usize::from(i), i),
                "answer {i} paired right"
            );
        }
    });
    futures::future::join_all(gets).await;
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_server_serves_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    // Long enough that the next request of `exercise` comes within it even on a
    // loaded CI machine (300 µs missed every request there once).
    cfg.data.poll_us = 100_000;
    let r = Server::start(cfg).await.unwrap();
    for carrier in [CarrierChoice::Tcp, CarrierChoice::Shm] {
        let c = client(&r, carrier, 2).await;
        exercise(&c).await;
    }
    assert!(
        r.data.stats().poll_hits() > 0,
        "some request was read by polling, not after a wake-up"
    );
    r.shutdown().await.unwrap();
}

/// A client that goes away while the server polls its connection is let go: the
/// server closes its end then, not at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_the_server_polls_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.data.poll_us = 1_000_000; // the end arrives while the server polls
    let r = Server::start(cfg).await.unwrap();
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let hello = request_frame(
        1,
        0,
        &Request::Hello {
            host_id: "test".into(),
        },
        0,
    );
    let (h, _, _) = raw_call(&mut s, &hello, b"").await;
    assert_eq!(h.status, Status::Ok);
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server closed its end")
        .unwrap();
    assert_eq!(n, 0);
    r.shutdown().await.unwrap();
}

/// Callers on one connection may be cancelled at any await, mid-answer too: the
/// answers of the rest still arrive whole and paired right, and the connection stays
/// usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_lose_no_answers_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    for carrier in [CarrierChoice::Tcp, CarrierChoice::Shm] {
        let c = client(&r, carrier, 1).await;
        let len = |i: u8| (1 << 20) + 977 * usize::from(i);
        for i in 0..8u8 {
            c.put(&k(&format!("kv/x/{i}")), pattern(len(i), i))
                .await
                .unwrap();
        }
        for round in 0..20u64 {
            let gets = (0..16u8).map(|n| {
                let c = c.clone();
                async move {
                    let i = n % 8;
                    let key = k(&format!("kv/x/{i}"));
                    let get = c.get(&key);
                    if n % 2 == 1 {
                        // Dropped after a while, wherever it is by then.
                        let after = Duration::from_micros(50 * (round * 7 + u64::from(n)) % 900);
                        let _ = tokio::time::timeout(after, get).await;
                    } else {
                        let v = get.await.unwrap().unwrap();
                        assert_eq!(v, pattern(len(i), i), "answer {i} whole and paired right");
                    }
                }
            });
            futures::future::join_all(gets).await;
        }
        assert_eq!(
            c.get(&k("kv/x/3")).await.unwrap().unwrap(),
            pattern(len(3), 3)
        );
    }
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_tcp_without_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.data.shm = false;
    let r = Server::start(cfg).await.unwrap();
    let c = client(&r, CarrierChoice::Auto, 1).await;
    assert_eq!(c.carrier(), Some(Carrier::Tcp));
    c.put(&k("kv/f/a"), Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(c.get(&k("kv/f/a")).await.unwrap().unwrap(), &b"x"[..]);
    // Forcing shared memory where there is none is an error, not a silent fallback.
    let forced = Client::connect(
        &r.addr.to_string(),
        ClientOptions {
            data: DataOptions {
                carrier: CarrierChoice::Shm,
                ..DataOptions::default()
            },
            ..ClientOptions::default()
        },
    )
    .await;
    assert!(forced.is_err());
    r.shutdown().await.unwrap();
}
