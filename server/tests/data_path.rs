//! The data path (binary TCP and shared memory) of the real server on 127.0.0.1:0,
//! driven by the real client, plus raw frames for what a well-behaved client never
//! sends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_server::config::{ByteSize, Config};
use strata_server::data::Listener;
use strata_server::{Running, Server};
use strata_tiers::Key;
use strata_transport::data::{Carrier, CarrierChoice, DataOptions};
use strata_transport::wire::{
    FLAG_LEASE, HEADER_LEN, Header, KeyRange, Limits, Op, Request, Status, request_frame, response,
};
use strata_transport::{Client, ClientError, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

fn config(dir: &std::path::Path, lease_ttl_ms: u64) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = "127.0.0.1:0".into();
    c.data.listen = "127.0.0.1:0".into();
    c.data.lease_ttl_ms = lease_ttl_ms;
    c.data_dir = dir.to_path_buf();
    c.dram.capacity = 32 << 20;
    c.nvme.enabled = false;
    c.store.page_size = 1 << 20;
    c
}

async fn client(r: &Running, carrier: CarrierChoice, connections: usize) -> Client {
    Client::connect(
        &r.addr.to_string(),
        ClientOptions {
            data: DataOptions {
                carrier,
                connections,
                ..DataOptions::default()
            },
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap()
}

fn k(path: &str) -> Key {
    Key::parse_path(path).unwrap()
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Everything the client offers, over one carrier.
async fn exercise(c: &Client) {
    let small = pattern(1000, 1);
    let big = pattern((2 << 20) + 12345, 2); // three pages
    assert_eq!(
        c.put(&k("kv/t/small"), small.clone()).await.unwrap().length,
        1000
    );
    assert_eq!(
        c.put(&k("kv/t/big"), big.clone()).await.unwrap().length,
        big.len() as u64
    );
    assert_eq!(c.get(&k("kv/t/small")).await.unwrap().unwrap(), small);
    assert_eq!(c.get(&k("kv/t/big")).await.unwrap().unwrap(), big);
    // A range across a page boundary.
    let (info, part) = c
        .get_range(&k("kv/t/big"), (1 << 20) - 7, Some(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.total_length, big.len() as u64);
    assert_eq!(part, big.slice((1 << 20) - 7..(1 << 20) + 93));
    // The same range handed to a reader (over shm: straight out of the leased
    // arena, across the page edge), in pieces and with a skip.
    let (total, piece) = c
        .get_range_with(&k("kv/t/big"), (1 << 20) - 7, Some(100), |total, r| {
            let mut out = vec![0u8; 90];
            r.read_exact(&mut out[..5]).unwrap();
            r.skip(10).unwrap();
            r.read_exact(&mut out[5..]).unwrap();
            assert_eq!(r.remaining(), 0);
            (total, out)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, big.len() as u64);
    assert_eq!(&piece[..5], &big[(1 << 20) - 7..(1 << 20) - 2]);
    assert_eq!(&piece[5..], &big[(1 << 20) + 8..(1 << 20) + 93]);
    assert!(
        c.get_range_with(&k("kv/t/none"), 0, None, |_, _| 0u8)
            .await
            .unwrap()
            .is_none()
    );
    // MGET_RANGE: a range across a page edge, a miss, a range past the end (its
    // own error), and a whole value; each present range handed to the reader.
    let ranges = [
        KeyRange {
            key: k("kv/t/big"),
            offset: (1 << 20) - 7,
            length: Some(100),
        },
        KeyRange {
            key: k("kv/t/none"),
            offset: 0,
            length: None,
        },
        KeyRange {
            key: k("kv/t/small"),
            offset: 2000,
            length: Some(1),
        },
        KeyRange {
            key: k("kv/t/small"),
            offset: 0,
            length: None,
        },
    ];
    let got = c
        .mget_range_with(&ranges, |i, r| {
            let mut v = vec![0u8; r.remaining() as usize];
            r.read_exact(&mut v).unwrap();
            (i, v)
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].as_ref().unwrap().as_ref().unwrap(),
        &(0, big[(1 << 20) - 7..(1 << 20) + 93].to_vec())
    );
    assert!(got[1].as_ref().unwrap().is_none(), "a miss");
    assert!(
        matches!(
            got[2],
            Err(ClientError::Data {
                status: Status::Range,
                ..
            })
        ),
        "{:?}",
        got[2]
    );
    assert_eq!(
        got[3].as_ref().unwrap().as_ref().unwrap(),
        &(3, small.to_vec())
    );
    // MGET: hits and a miss, in order.
    let got = c
        .mget(&[k("kv/t/big"), k("kv/t/none"), k("kv/t/small")])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(big.clone()), None, Some(small.clone())]);
    assert_eq!(
        c.match_prefix(&[
            k("kv/t/small"),
            k("kv/t/big"),
            k("kv/t/none"),
            k("kv/t/small")
        ])
        .await
        .unwrap(),
        2
    );
    // Overwrite, then delete.
    let small2 = pattern(3000, 9);
    c.put(&k("kv/t/small"), small2.clone()).await.unwrap();
    assert_eq!(c.get(&k("kv/t/small")).await.unwrap().unwrap(), small2);
    assert!(c.delete(&k("kv/t/small")).await.unwrap());
    assert!(!c.delete(&k("kv/t/small")).await.unwrap());
    assert!(c.get(&k("kv/t/small")).await.unwrap().is_none());
    // Errors are per request.
    let e = c
        .get_range(&k("kv/t/big"), big.len() as u64 + 1, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Data {
                status: Status::Range,
                ..
            }
        ),
        "{e}"
    );
    let e = c
        .put(&k("kv/t/huge"), Bytes::from(vec![0u8; 300 << 20]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Data {
                status: Status::Invalid | Status::TooLarge,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        c.get(&k("kv/t/big")).await.unwrap().unwrap(),
        big,
        "still serving"
    );
}

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

/// Writes a raw request and reads its answer (header, meta, data).
async fn raw_call<S>(s: &mut S, frame: &[u8], data: &[u8]) -> (Header, Bytes, Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(frame).await.unwrap();
    s.write_all(data).await.unwrap();
    raw_read(s).await
}

/// Waits (polling every 20 ms) until `done`, failing the test after 5 s.
async fn within_5s(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 5 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_read<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (Header, Bytes, Bytes) {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).await.unwrap();
    let h = Header::decode(&hb, &Limits::default()).unwrap();
    let mut meta = BytesMut::zeroed(h.meta_len as usize);
    s.read_exact(&mut meta).await.unwrap();
    let mut data = BytesMut::zeroed(h.data_len as usize);
    s.read_exact(&mut data).await.unwrap();
    (h, meta.freeze(), data.freeze())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let addr = r.data_addr.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    c.put(&k("kv/b/v"), Bytes::from_static(b"value"))
        .await
        .unwrap();

    // Bad metadata: that request fails, the connection goes on.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bad = Header::request(Op::Get, 7, 0, 5, 0).encode().to_vec();
    bad.extend_from_slice(&[0xff; 5]);
    let (h, meta, _) = raw_call(&mut s, &bad, b"").await;
    assert_eq!((h.id, h.status), (7, Status::Invalid));
    assert!(
        response::decode_error(&meta).contains("bad Get request"),
        "{meta:?}"
    );
    let get = request_frame(
        8,
        0,
        &Request::Get {
            key: k("kv/b/v"),
            offset: 0,
            length: None,
        },
        0,
    );
    let (h, _, data) = raw_call(&mut s, &get, b"").await;
    assert_eq!((h.id, h.status), (8, Status::Ok));
    assert_eq!(&data[..], b"value");

    // A PUT whose checksum is wrong is refused and never visible.
    let put = request_frame(
        9,
        0,
        &Request::Put {
            key: k("kv/b/crc"),
            crc32c: 1234,
        },
        3,
    );
    let (h, _, _) = raw_call(&mut s, &put, b"abc").await;
    assert_eq!((h.id, h.status), (9, Status::Checksum));
    assert!(c.get(&k("kv/b/crc")).await.unwrap().is_none());

    // A truncated PUT (the client goes away mid-data) leaves nothing behind.
    let put = request_frame(
        10,
        0,
        &Request::Put {
            key: k("kv/b/trunc"),
            crc32c: 0,
        },
        1000,
    );
    s.write_all(&put).await.unwrap();
    s.write_all(&[1u8; 10]).await.unwrap();
    drop(s);

    // A broken header: an error answer, then the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut junk = [0u8; HEADER_LEN];
    junk[0..2].copy_from_slice(b"XX");
    let (h, meta, _) = raw_call(&mut s, &junk, b"").await;
    assert_eq!(h.status, Status::Invalid);
    assert!(response::decode_error(&meta).contains("magic"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0, "closed");

    // An oversized frame is refused from its header alone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let huge = Header::request(Op::Put, 11, 0, 0, 1 << 40).encode();
    let (h, meta, _) = raw_call(&mut s, &huge, b"").await;
    assert_eq!(h.status, Status::Invalid);
    assert!(response::decode_error(&meta).contains("over the limit"));

    assert!(c.get(&k("kv/b/trunc")).await.unwrap().is_none());
    assert_eq!(c.get(&k("kv/b/v")).await.unwrap().unwrap(), &b"value"[..]);
    r.shutdown().await.unwrap();
}

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
        .grant(vec![bytes::Bytes::from(vec![1u8; 4096])]);
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

/// A TCP proxy in front of the real data port that, when armed, drops the next
/// connection that sends it anything (before forwarding it): the fault a client's
/// retries are for.
async fn dropping_proxy(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let armed = std::sync::Arc::new(AtomicBool::new(false));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let arm = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let arm = arm.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut b = vec![0u8; 64 << 10];
                    loop {
                        let n = cr.read(&mut b).await.unwrap_or(0);
                        if n == 0 || arm.swap(false, Ordering::AcqRel) {
                            return; // dropped: neither side hears more
                        }
                        if sw.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    (addr, armed)
}

/// GET is retried after its connection is lost, on a new connection; PUT is not
/// (the client cannot know whether the server stored it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_calls_are_retried_after_a_lost_connection() {
    use std::sync::atomic::Ordering;
    use strata_transport::data::{DataClient, DataEndpoint};
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let (proxy, armed) = dropping_proxy(r.data_addr.unwrap()).await;
    let c = DataClient::connect(
        DataEndpoint {
            tcp: Some(proxy.to_string()),
            unix: None,
            host_id: None,
        },
        DataOptions {
            carrier: CarrierChoice::Tcp,
            connections: 1,
            attempts: 3,
            backoff: Duration::from_millis(1),
            ..DataOptions::default()
        },
    )
    .await
    .unwrap();
    let value = pattern(300 << 10, 7);
    c.put(&k("kv/r/a"), &value).await.unwrap();

    // The GET's connection is dropped under it: the client reconnects and retries.
    armed.store(true, Ordering::Release);
    assert_eq!(c.get(&k("kv/r/a")).await.unwrap().unwrap(), value);
    assert!(!armed.load(Ordering::Acquire), "the fault was hit");

    // The PUT's is dropped too: it fails, and was not sent again.
    armed.store(true, Ordering::Release);
    assert!(c.put(&k("kv/r/b"), &value).await.is_err());
    assert!(!armed.load(Ordering::Acquire), "the fault was hit");
    assert_eq!(c.get(&k("kv/r/b")).await.unwrap(), None, "PUT was retried");
    r.shutdown().await.unwrap();
}

/// An in-place (shared-memory) COMMIT whose CRC does not match what is in the
/// reserved extents stores nothing: here the client never wrote the value it
/// claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_commit_with_a_wrong_checksum_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    let mut s = UnixStream::connect(r.shm_socket.as_ref().unwrap())
        .await
        .unwrap();
    let _fd = strata_transport::data::recv_fd(&s).await.unwrap();
    let value = pattern(100_000, 11);
    let reserve = request_frame(
        1,
        FLAG_LEASE,
        &Request::Reserve {
            key: k("kv/c/v"),
            len: value.len() as u64,
        },
        0,
    );
    let (h, meta, _) = raw_call(&mut s, &reserve, b"").await;
    assert_eq!(h.status, Status::Ok);
    let lease = response::decode_reserve(&meta).unwrap().unwrap();
    assert_eq!(lease.id, 0, "a reservation's extents are not a table lease");
    assert_eq!(
        lease.extents.iter().map(|e| e.len).sum::<u64>(),
        value.len() as u64
    );
    let commit = request_frame(
        2,
        0,
        &Request::Commit {
            reservation: 1,
            crc32c: crc32c::crc32c(&value),
        },
        0,
    );
    let (h, meta, _) = raw_call(&mut s, &commit, b"").await;
    assert_eq!(h.status, Status::Checksum, "{meta:?}");
    assert_eq!(c.get(&k("kv/c/v")).await.unwrap(), None);
    // The reservation is gone: it cannot be committed again.
    let (h, _, _) = raw_call(&mut s, &commit, b"").await;
    assert_eq!(h.status, Status::UnknownId);
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

/// A proxy in front of the real data port that makes the server look like an
/// older release: its HELLO answer (the first frame it sends on a connection) says
/// it does not serve `missing`.
async fn older_server_proxy(upstream: std::net::SocketAddr, missing: Op) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                };
                let down = async {
                    let (h, meta, _) = raw_read(&mut sr).await;
                    assert_eq!(h.op, Op::Hello);
                    let mut info = response::decode_hello(&meta).unwrap();
                    info.ops &= !missing.bit();
                    let mut m = BytesMut::new();
                    response::encode_hello(&mut m, &info);
                    let head = Header::response(Op::Hello, h.id, Status::Ok, m.len(), 0);
                    cw.write_all(&head.encode()).await.unwrap();
                    cw.write_all(&m).await.unwrap();
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

/// Against a server that lacks an op (an older release, in a rolling upgrade), a
/// call that needs it fails before anything is sent, naming the op, and the
/// connection serves the other calls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_the_server_lacks_fails_alone_and_the_connection_goes_on() {
    use strata_transport::data::{DataClient, DataEndpoint};
    use strata_transport::wire::KeyRange;
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let proxy = older_server_proxy(r.data_addr.unwrap(), Op::MGetRange).await;
    let c = DataClient::connect(
        DataEndpoint {
            tcp: Some(proxy.to_string()),
            unix: None,
            host_id: None,
        },
        DataOptions {
            carrier: CarrierChoice::Tcp,
            connections: 1,
            ..DataOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.server().ops & Op::MGetRange.bit(), 0);
    let value = pattern(10_000, 3);
    c.put(&k("kv/o/a"), &value).await.unwrap();
    let ranges = [KeyRange {
        key: k("kv/o/a"),
        offset: 0,
        length: Some(10),
    }];
    let e = c.mget_range_with(&ranges, |_, _| ()).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Unsupported(Op::MGetRange)),
        "{e:?}"
    );
    assert!(e.to_string().contains("MGetRange"), "{e}");
    assert_eq!(c.get(&k("kv/o/a")).await.unwrap().unwrap(), value);
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

/// A PUT given up on while its frame is half-written must not leave the rest of
/// its frame owed on the connection: the next call would be read as its data. The
/// client marks such a connection broken and opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_write_leaves_the_connection_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let c = client(&r, CarrierChoice::Tcp, 1).await;
    let small = pattern(5000, 8);
    c.put(&k("kv/m/small"), small.clone()).await.unwrap();
    let big = pattern(16 << 20, 9);
    for i in 0..5u64 {
        let cut = tokio::time::timeout(
            Duration::from_micros(200 * (i + 1)),
            c.put(&k("kv/m/big"), big.clone()),
        )
        .await;
        assert!(cut.is_err(), "a 16 MiB PUT finished in under a millisecond");
        // (Well within the server's 5 s stall timer, which would otherwise end
        // the connection, and so hide a partial frame.)
        let got = tokio::time::timeout(Duration::from_secs(2), c.get(&k("kv/m/small")))
            .await
            .expect("the next call is answered")
            .unwrap();
        assert_eq!(got.unwrap(), small);
    }
    r.shutdown().await.unwrap();
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
fn sample(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
        .parse()
        .unwrap()
}

/// `/metrics` counts what the data path served, by op and status and by how the
/// bytes left (inline on TCP, leased over shared memory), and its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_each_carrier_served() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let tcp = client(&r, CarrierChoice::Tcp, 1).await;
    let shm = client(&r, CarrierChoice::Shm, 1).await;
    let v = pattern(3000, 7);
    tcp.put(&k("kv/m/a"), v.clone()).await.unwrap(); // one PUT frame
    shm.put(&k("kv/m/b"), v.clone()).await.unwrap(); // RESERVE, copy, COMMIT
    assert_eq!(tcp.get(&k("kv/m/a")).await.unwrap().unwrap(), v);
    assert_eq!(shm.get(&k("kv/m/b")).await.unwrap().unwrap(), v);
    assert!(tcp.get(&k("kv/m/none")).await.unwrap().is_none());
    shm.data().unwrap().flush_releases().await;

    let body = scrape(r.metrics_addr).await;
    for (op, status, n) in [
        ("put", "ok", 1),
        ("reserve", "ok", 1),
        ("commit", "ok", 1),
        ("get", "ok", 2),
        ("get", "not_found", 1),
    ] {
        let name = format!("strata_data_answers_total{{op=\"{op}\",status=\"{status}\"}}");
        assert_eq!(sample(&body, &name), n, "{name}");
    }
    assert_eq!(sample(&body, "strata_data_bytes_in_total"), 6000);
    assert_eq!(
        sample(&body, "strata_data_bytes_out_total{how=\"inline\"}"),
        3000
    );
    assert_eq!(
        sample(&body, "strata_data_bytes_out_total{how=\"leased\"}"),
        3000
    );
    assert_eq!(sample(&body, "strata_data_leases_granted_total"), 1);
    assert!(sample(&body, "strata_data_connections{listener=\"tcp\"}") >= 1);
    assert_eq!(
        sample(&body, "strata_data_connections{listener=\"shm\"}"),
        1
    );
    assert_eq!(sample(&body, "strata_data_rdma_available"), 0);
    // The request layer's latency histograms, by op and carrier (a miss is not a
    // failure).
    for (op, carrier, n) in [
        ("get", "tcp", 2),
        ("get", "shm", 1),
        ("put", "tcp", 1),
        ("put", "shm", 1),
    ] {
        let name =
            format!("strata_request_duration_seconds_count{{op=\"{op}\",carrier=\"{carrier}\"}}");
        assert_eq!(sample(&body, &name), n, "{name}");
    }
    assert_eq!(
        sample(
            &body,
            "strata_request_errors_total{op=\"get\",carrier=\"tcp\"}"
        ),
        0
    );
    assert!(
        body.contains(
            "strata_request_duration_seconds_bucket{op=\"get\",carrier=\"tcp\",le=\"0.001\"}"
        ),
        "{body}"
    );

    drop((tcp, shm));
    within_5s("the connections to close", || {
        Listener::LIST.iter().all(|l| r.data.connections(*l) == 0)
    })
    .await;
    within_5s("the lease to be released", || {
        r.data.leases().usage() == (0, 0)
    })
    .await;
    let body = scrape(r.metrics_addr).await;
    assert_eq!(sample(&body, "strata_data_leases"), 0);
    assert_eq!(sample(&body, "strata_data_leases_expired_total"), 0);
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
