//! Bounds: the upload budget, in-flight answers, connections, frame sizes,
//! uploads that dribble.

use super::*;

/// What one client can make the server hold is bounded: open reservations per
/// connection, the bytes of all uploads, and how long a reservation lives
/// untouched. Refusals are per request; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_reservations_are_bounded_and_idle_ones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1500);
    cfg.requests.max_upload_bytes = ByteSize(1 << 20);
    let r = Server::start(cfg).await.unwrap();
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    assert_eq!(r.data.ops().upload_budget_free(), 1 << 20);

    // One upload larger than the whole budget: TooLarge, and its data is skipped.
    let big = pattern((1 << 20) + 1, 3);
    let put = |id: u64, key: &str, value: &[u8]| {
        request_frame(
            id,
            0,
            &Request::Put {
                key: k(key),
                crc32c: crc32c::crc32c(value),
            },
            value.len() as u64,
        )
    };
    let (h, meta, _) = raw_call(&mut s, &put(1, "kv/u/big", &big), &big).await;
    assert_eq!(h.status, Status::TooLarge, "{meta:?}");
    assert!(response::decode_error(&meta).contains("requests.max_upload_bytes"));

    // A reservation holds its share of the budget; a PUT past the rest is Busy.
    let reserve = |id: u64, len: u64| {
        request_frame(
            id,
            0,
            &Request::Reserve {
                key: k(&format!("kv/u/r{id}")),
                len,
            },
            0,
        )
    };
    let (h, _, _) = raw_call(&mut s, &reserve(2, 768 << 10), b"").await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(r.data.ops().upload_budget_free(), 256 << 10);
    let half = pattern(512 << 10, 4);
    let (h, meta, _) = raw_call(&mut s, &put(3, "kv/u/half", &half), &half).await;
    assert_eq!(h.status, Status::Busy, "{meta:?}");
    // The connection goes on: a small PUT fits.
    let small = pattern(1000, 5);
    let (h, _, _) = raw_call(&mut s, &put(4, "kv/u/small", &small), &small).await;
    assert_eq!(h.status, Status::Ok);

    // Nobody touches reservation 2: a lease lifetime (1.5 s) later it is gone,
    // and so is its budget.
    within_5s("reservation 2 to expire", || {
        r.data.stats().reservations_expired() > 0
    })
    .await;
    assert_eq!(r.data.ops().upload_budget_free(), 1 << 20);
    let commit = request_frame(
        5,
        0,
        &Request::Commit {
            reservation: 2,
            crc32c: 0,
        },
        0,
    );
    let (h, meta, _) = raw_call(&mut s, &commit, b"").await;
    assert_eq!(h.status, Status::UnknownId);
    assert!(response::decode_error(&meta).contains("lease lifetime"));

    // At most MAX_RESERVATIONS open on one connection (each holds 4 KiB of the
    // budget at least, so 256 of 1 byte take all of it; a 257th is refused by the
    // cap, which is checked first).
    let max = strata_server::data::MAX_RESERVATIONS as u64;
    let mut frames = Vec::new();
    for id in 100..100 + max + 1 {
        frames.extend_from_slice(&reserve(id, 1));
    }
    s.write_all(&frames).await.unwrap();
    let mut refused = Vec::new();
    for _ in 0..=max {
        let (h, meta, _) = raw_read(&mut s).await;
        if h.status != Status::Ok {
            refused.push((h.id, h.status, response::decode_error(&meta)));
        }
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].0, refused[0].1), (100 + max, Status::Busy));
    assert!(
        refused[0]
            .2
            .contains("reservations are open on this connection"),
        "{refused:?}"
    );
    assert_eq!(r.data.ops().upload_budget_free(), (1 << 20) - max * 4096);
    // Closing the connection drops its reservations, and gives their budget back.
    drop(s);
    within_5s("the budget to come back", || {
        r.data.ops().upload_budget_free() == 1 << 20
    })
    .await;
    r.shutdown().await.unwrap();
}

/// A client that pipelines far more requests than a connection takes in flight
/// (`MAX_INFLIGHT`) before it reads anything gets every answer: the server stops
/// reading while it is at the cap, and goes on once answers have gone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_pipeline_past_the_inflight_cap_gets_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    let value = pattern(4096, 9);
    c.put(&k("kv/p/v"), value.clone()).await.unwrap();
    let n = 3 * strata_server::data::MAX_INFLIGHT as u64 + 7;
    let mut frames = Vec::new();
    for id in 1..=n {
        let key = if id % 2 == 0 { "kv/p/v" } else { "kv/p/none" };
        frames.extend_from_slice(&request_frame(
            id,
            0,
            &Request::Get {
                key: k(key),
                offset: 0,
                length: None,
            },
            0,
        ));
    }
    let s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Written all at once, while nothing is read yet.
    let writer = tokio::spawn(async move {
        wr.write_all(&frames).await.unwrap();
        wr
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = vec![false; n as usize + 1];
    for _ in 0..n {
        let (h, _, data) = tokio::time::timeout(Duration::from_secs(20), raw_read(&mut rd))
            .await
            .expect("every answer comes");
        let want = if h.id % 2 == 0 {
            Status::Ok
        } else {
            Status::NotFound
        };
        assert_eq!(h.status, want, "request {}", h.id);
        if h.status == Status::Ok {
            assert_eq!(data, value);
        }
        assert!(!std::mem::replace(&mut seen[h.id as usize], true));
    }
    drop(writer.await.unwrap());
    r.shutdown().await.unwrap();
}

/// Past `data.max_connections`, a new connection is closed at once; one that
/// leaves makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.data.max_connections = 2;
    let r = Server::start(cfg).await.unwrap();
    let addr = r.data_addr.unwrap();
    let hello = request_frame(
        1,
        0,
        &Request::Hello {
            host_id: "test".into(),
        },
        0,
    );
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut a, &hello, b"").await.0.status, Status::Ok);
    assert_eq!(raw_call(&mut b, &hello, b"").await.0.status, Status::Ok);
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(&hello).await;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
        .await
        .expect("the third connection is closed, not left waiting")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection got an answer");
    assert_eq!(r.data.stats().refused_connections(Listener::Tcp), 1);
    drop(a);
    // The slot comes back once the server sees the first connection end.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = TcpStream::connect(addr).await.unwrap();
        let _ = d.write_all(&hello).await;
        let mut hb = [0u8; HEADER_LEN];
        match tokio::time::timeout(Duration::from_secs(2), d.read_exact(&mut hb)).await {
            Ok(Ok(_)) => break,
            _ => assert!(std::time::Instant::now() < deadline, "no room came back"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw_call(&mut b, &hello, b"").await.0.status, Status::Ok);
    r.shutdown().await.unwrap();
}

/// A connection that sits idle past `data.idle_timeout_ms` is closed and its
/// place comes back (before, idle connections held their places forever, so a
/// client that opened many and forgot them filled `max_connections`); a busy
/// one is not, and the real client reconnects after its pooled one was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_their_places_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.data.max_connections = 2;
    cfg.data.idle_timeout_ms = 400;
    let r = Server::start(cfg).await.unwrap();
    let addr = r.data_addr.unwrap();
    let hello = request_frame(
        1,
        0,
        &Request::Hello {
            host_id: "test".into(),
        },
        0,
    );
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut idle, &hello, b"").await.0.status, Status::Ok);
    let started = std::time::Instant::now();
    // The busy one asks something every 100 ms; the idle one says nothing.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(raw_call(&mut busy, &hello, b"").await.0.status, Status::Ok);
    }
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(r.data.stats().idle_closed() >= 1);
    // Its place is free again: a new connection is served.
    let mut again = TcpStream::connect(addr).await.unwrap();
    assert_eq!(raw_call(&mut again, &hello, b"").await.0.status, Status::Ok);
    drop((busy, again));
    // The real client's pooled connection is closed under it while idle: it
    // reconnects.
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    c.put(&k("kv/idle/v"), pattern(1000, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        c.get(&k("kv/idle/v")).await.unwrap().unwrap(),
        pattern(1000, 1)
    );
    r.shutdown().await.unwrap();
}

/// An MGET answers at most `data.max_frame_data` bytes, leased or inline: a range
/// that would go past what is left answers `TooLarge` (and is not read), and a
/// later one that still fits is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mget_past_the_frame_limit_refuses_only_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.data.max_frame_data = ByteSize(1 << 20);
    let r = Server::start(cfg).await.unwrap();
    let a = pattern(600 << 10, 1);
    let b = pattern(600 << 10, 2);
    let c = pattern(300 << 10, 3);
    let tcp = client(&r, CarrierChoice::Tcp, 1).await;
    for (key, v) in [("kv/l/a", &a), ("kv/l/b", &b), ("kv/l/c", &c)] {
        tcp.put(&k(key), v.clone()).await.unwrap();
    }
    let whole = |key: &str| KeyRange {
        key: k(key),
        offset: 0,
        length: None,
    };
    let ranges = [
        whole("kv/l/a"),
        whole("kv/l/b"),
        whole("kv/l/none"),
        whole("kv/l/c"),
    ];
    for carrier in [CarrierChoice::Tcp, CarrierChoice::Shm] {
        let cl = client(&r, carrier, 1).await;
        let got = cl
            .data()
            .unwrap()
            .mget_range_with(&ranges, |_, rd| {
                let mut v = vec![0u8; rd.remaining() as usize];
                rd.read_exact(&mut v).unwrap();
                v
            })
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().as_deref(), Some(&a[..]));
        assert!(
            matches!(
                got[1],
                Err(ClientError::Data {
                    status: Status::TooLarge,
                    ..
                })
            ),
            "{carrier:?}: {:?}",
            got[1]
        );
        assert!(matches!(got[2], Ok(None)), "{:?}", got[2]);
        assert_eq!(got[3].as_ref().unwrap().as_deref(), Some(&c[..]));
    }
    r.shutdown().await.unwrap();
}

/// A PUT whose data keeps coming, but slower than `MIN_UPLOAD_RATE`, is dropped
/// once a lease lifetime plus its length at that rate has passed, though it never
/// stalled for a lease lifetime; its budget comes back. So is a reservation kept
/// alive by tiny WRITEs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_dribbles_is_dropped_and_gives_its_budget_back() {
    use strata_server::data::MIN_UPLOAD_RATE;
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let value = pattern(2 << 20, 9); // due within 1 s + 2 s
    let allowed = Duration::from_millis(1000)
        + Duration::from_secs_f64(value.len() as f64 / MIN_UPLOAD_RATE as f64);
    let put = request_frame(
        1,
        0,
        &Request::Put {
            key: k("kv/d/slow"),
            crc32c: crc32c::crc32c(&value),
        },
        value.len() as u64,
    );
    let s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let started = std::time::Instant::now();
    let dribble = tokio::spawn(async move {
        wr.write_all(&put).await.unwrap();
        // 16 KiB every 200 ms: 80 KiB/s, so the whole value would take 25 s.
        for chunk in value.chunks(16 << 10) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(allowed * 2, rd.read(&mut b))
        .await
        .expect("the slow sender is let go")
        .unwrap_or(0);
    assert_eq!(n, 0, "an answer came instead");
    let took = started.elapsed();
    assert!(took >= allowed - Duration::from_millis(100), "{took:?}");
    dribble.abort();
    within_5s("the budget to come back", || {
        r.data.ops().upload_budget_free() == 1 << 30
    })
    .await;
    within_5s("the drop to be counted", || {
        r.data.stats().stalled_connections() == 1
    })
    .await;

    // The same through a reservation: a 1-byte WRITE every 300 ms touches it well
    // within each lease lifetime, but its upload (64 KiB: due in 1 s + 62.5 ms)
    // ends all the same, and a WRITE then finds it gone.
    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    let reserve = request_frame(
        1,
        0,
        &Request::Reserve {
            key: k("kv/d/res"),
            len: 64 << 10,
        },
        0,
    );
    assert_eq!(raw_call(&mut s, &reserve, b"").await.0.status, Status::Ok);
    let started = std::time::Instant::now();
    let mut id = 2;
    let gone = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let write = request_frame(id, 0, &Request::Write { reservation: 1 }, 1);
        let h = raw_call(&mut s, &write, b"x").await.0;
        if h.status != Status::Ok {
            break h.status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still open");
        id += 1;
    };
    assert_eq!(gone, Status::UnknownId);
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_eq!(r.data.ops().upload_budget_free(), 1 << 30);
    r.shutdown().await.unwrap();
}

/// GET answers are admitted by their length against `requests.max_read_bytes`
/// before they are read, and hold it until written: a client that pipelines
/// reads of a large value and takes none of the answers holds one answer's
/// worth, not every answer's (before, each of up to 1,024 GETs in flight read
/// its whole range into memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_gets_are_admitted_by_bytes_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.requests.max_read_bytes = ByteSize(8 << 20);
    let r = Server::start(cfg).await.unwrap();
    let value = pattern(6 << 20, 3);
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    c.put(&k("kv/rb/big"), value.clone()).await.unwrap();
    let full = r.data.ops().read_budget_free();
    assert_eq!(full, 8 << 20);

    let mut s = TcpStream::connect(r.data_addr.unwrap()).await.unwrap();
    for id in 1..=4u64 {
        let get = request_frame(
            id,
            0,
            &Request::Get {
                key: k("kv/rb/big"),
                offset: 0,
                length: None,
            },
            0,
        );
        s.write_all(&get).await.unwrap();
    }
    // Nothing read yet: one answer is admitted (and stuck writing), the others
    // wait for room.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.data.ops().read_budget_free(),
        full - (6 << 20),
        "more than one 6 MiB answer admitted within 8 MiB"
    );
    for _ in 1..=4 {
        let (h, _, data) = raw_read(&mut s).await;
        assert_eq!(h.status, Status::Ok);
        assert_eq!(data, value);
    }
    within_5s("the read budget to come back", || {
        r.data.ops().read_budget_free() == full
    })
    .await;
    r.shutdown().await.unwrap();
}

/// MGETs that find the read budget taken by each other let their heads go, wait
/// for the whole, look them up again, and answer every value right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgets_that_wait_for_the_read_budget_answer_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5000);
    cfg.dram.capacity = 64 << 20;
    cfg.requests.max_read_bytes = ByteSize(32 << 20);
    let r = Server::start(cfg).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 4).await;
    let keys: Vec<_> = (0..20).map(|i| k(&format!("kv/mgw/v{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        c.put(key, pattern(1 << 20, i as u8)).await.unwrap();
    }
    for _ in 0..3 {
        let got = futures::future::join_all((0..4).map(|_| c.mget(&keys))).await;
        for answers in got {
            let answers = answers.unwrap();
            for (i, v) in answers.into_iter().enumerate() {
                assert_eq!(v.expect("present"), pattern(1 << 20, i as u8), "value {i}");
            }
        }
    }
    within_5s("the read budget to come back", || {
        r.data.ops().read_budget_free() == 32 << 20
    })
    .await;
    r.shutdown().await.unwrap();
}
