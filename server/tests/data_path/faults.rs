//! Lost connections and dropped calls: what is retried, what is stored.

use super::*;

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
