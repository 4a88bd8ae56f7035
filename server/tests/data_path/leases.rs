//! Leases and in-place reservations: their lifetimes, what holding one blocks,
//! clients that stall or leave.

use super::*;

/// RDMA reads hold leases too, on servers that may have shared memory off: leases
/// must expire whichever carriers are on (they once expired only beside the Unix
/// socket's accept loop, so with `data.shm = false` nothing swept them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_with_shared_memory_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 100);
    cfg.data.shm = false;
    let r = Server::start(cfg).await.unwrap();
    let id = r
        .data
        .leases()
        .grant(vec![bytes::Bytes::from(vec![1u8; 4096])], 0);
    assert!(id.is_some());
    assert_eq!(r.data.leases().usage(), (1, 4096));
    within_5s("a 100 ms lease to expire", || {
        r.data.leases().usage() == (0, 0)
    })
    .await;
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_blocks_reuse_and_expiry_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 300)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    let value = pattern(1 << 20, 5);
    c.put(&k("kv/l/v"), value.clone()).await.unwrap();

    // A raw shared-memory client takes a lease and then never releases it (as if it
    // died holding it).
    let mut s = UnixStream::connect(r.shm_socket.as_ref().unwrap())
        .await
        .unwrap();
    let _fd = strata_transport::data::recv_fd(&s).await.unwrap();
    let get = request_frame(
        1,
        FLAG_LEASE,
        &Request::Get {
            key: k("kv/l/v"),
            offset: 0,
            length: None,
        },
        0,
    );
    let (h, meta, data) = raw_call(&mut s, &get, b"").await;
    assert_eq!(h.status, Status::Ok);
    assert!(data.is_empty(), "answered by lease, not inline");
    let info = response::decode_get(&meta).unwrap();
    let lease = info.lease.unwrap();
    assert_eq!(r.data.leases().usage(), (1, 1 << 20));

    // The value goes away; its memory must not.
    assert!(c.delete(&k("kv/l/v")).await.unwrap());
    let arena = r.store.dram().arena().clone();
    let overlaps = |off: u64, len: u64| {
        lease
            .extents
            .iter()
            .any(|e| off < e.offset + e.len && e.offset < off + len)
    };
    let mut held = Vec::new();
    while let Some(b) = arena.alloc(64 << 10) {
        assert!(
            !overlaps(b.offset(), 64 << 10),
            "the arena handed out leased memory at {}",
            b.offset()
        );
        held.push(b);
    }
    let used_while_leased = arena.used();
    drop(held);

    // Expiry (300 ms) releases it: the memory is allocatable again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(r.data.leases().usage(), (0, 0), "the lease expired");
    let mut reused = false;
    let mut held = Vec::new();
    while let Some(b) = arena.alloc(64 << 10) {
        reused |= overlaps(b.offset(), 64 << 10);
        held.push(b);
    }
    assert!(reused, "expiry gave the leased memory back");
    assert!(arena.used() > used_while_leased);
    drop(held);

    // A RELEASE of the expired lease is answered, and says it was not held.
    let rel = request_frame(
        2,
        0,
        &Request::Release {
            leases: vec![lease.id],
        },
        0,
    );
    let (h, meta, _) = raw_call(&mut s, &rel, b"").await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(response::decode_u64(Op::Release, &meta).unwrap(), 0);
    r.shutdown().await.unwrap();
}

/// A client that stops taking an answer, or stops sending a PUT's data, is given
/// up on after a lease lifetime: what it pins (the answer's arena bytes, its share
/// of the upload budget) comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_is_dropped_after_a_lease_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let addr = r.data_addr.unwrap();

    // Half a PUT's data, then nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let value = pattern(1 << 20, 1);
    let put = request_frame(
        1,
        0,
        &Request::Put {
            key: k("kv/s/put"),
            crc32c: crc32c::crc32c(&value),
        },
        value.len() as u64,
    );
    s.write_all(&put).await.unwrap();
    s.write_all(&value[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        r.data.ops().upload_budget_free() < 1 << 30,
        "the PUT holds budget"
    );
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("the stalled sender is let go")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(r.data.ops().upload_budget_free(), 1 << 30);
    // (Counted just after the connection closes.)
    within_5s("the stall to be counted", || {
        r.data.stats().stalled_connections() == 1
    })
    .await;

    // Answers that nobody reads: more than the socket buffers hold.
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    let big = pattern(4 << 20, 2);
    c.put(&k("kv/s/big"), big.clone()).await.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut frames = Vec::new();
    for id in 1..=32u64 {
        frames.extend_from_slice(&request_frame(
            id,
            0,
            &Request::Get {
                key: k("kv/s/big"),
                offset: 0,
                length: None,
            },
            0,
        ));
    }
    s.write_all(&frames).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The connection was dropped with most answers unsent.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection was not dropped"),
        }
    }
    assert!(
        got < 32 * (4 << 20),
        "all {got} bytes came: nothing stalled"
    );
    // (Counted just after the connection closes.)
    within_5s("the stall to be counted", || {
        r.data.stats().stalled_connections() == 2
    })
    .await;
    // The server serves on.
    assert_eq!(c.get(&k("kv/s/big")).await.unwrap().unwrap(), big);
    r.shutdown().await.unwrap();
}

/// An in-place reservation whose connection ends is not let go at once: its
/// client may still be copying into the arena. Its memory (and budget) come back a
/// lease lifetime later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_reservations_outlive_their_connection_by_a_lease_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let full = r.data.ops().upload_budget_free();
    let mut s = UnixStream::connect(r.shm_socket.as_ref().unwrap())
        .await
        .unwrap();
    let _fd = strata_transport::data::recv_fd(&s).await.unwrap();
    let reserve = request_frame(
        1,
        FLAG_LEASE,
        &Request::Reserve {
            key: k("kv/q/v"),
            len: 1 << 20,
        },
        0,
    );
    let (h, _, _) = raw_call(&mut s, &reserve, b"").await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(r.data.ops().upload_budget_free(), full - (1 << 20));
    let started = std::time::Instant::now();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.data.ops().upload_budget_free(),
        full - (1 << 20),
        "let go before its lease lifetime"
    );
    within_5s("the quarantine to let go", || {
        r.data.ops().upload_budget_free() == full
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    r.shutdown().await.unwrap();
}
