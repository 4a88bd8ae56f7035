//! What a shared-memory client that does not follow the protocol can do to the
//! arena it is given: not shrink it under the server (a touch past a file's end is
//! SIGBUS), not read what the arena held before through a reservation or a
//! refusal, not have memory it may still write reused by an ABORT.

use std::os::fd::{AsRawFd, OwnedFd};

use strata_server::testing::{ArenaMap, fd_len};

use super::*;

/// A raw shared-memory connection and the arena's descriptor it was handed.
async fn raw_shm(r: &Running) -> (UnixStream, OwnedFd) {
    let s = UnixStream::connect(r.shm_socket.as_ref().unwrap())
        .await
        .unwrap();
    let fd = strata_transport::data::recv_fd(&s).await.unwrap();
    (s, fd)
}

fn reserve(id: u64, key: &str, len: u64) -> Bytes {
    request_frame(id, FLAG_LEASE, &Request::Reserve { key: k(key), len }, 0)
}

/// Whatever a client does to the descriptor (shrink it, grow it, punch holes in
/// it), the server keeps serving: before the arena was sealed, `ftruncate(fd, 0)`
/// made the server's next touch of a cached value fault and the process die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_make_the_server_fault_through_the_arena_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let tcp = client(&r, CarrierChoice::Tcp, 1).await;
    let value = pattern(3 << 20, 9);
    tcp.put(&k("kv/h/v"), value.clone()).await.unwrap();

    let (_s, fd) = raw_shm(&r).await;
    let len = fd_len(&fd);
    let raw = fd.as_raw_fd();
    // SAFETY: a descriptor we hold; the calls only report errors.
    let shrink = unsafe { libc::ftruncate(raw, 0) };
    let shrink_err = std::io::Error::last_os_error();
    // SAFETY: as above.
    let grow = unsafe { libc::ftruncate(raw, (len * 2) as libc::off_t) };
    assert_eq!(shrink, -1, "the arena could be shrunk");
    assert_eq!(shrink_err.raw_os_error(), Some(libc::EPERM), "{shrink_err}");
    assert_eq!(grow, -1, "the arena could be grown");
    // SAFETY: as above.
    let seal = unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
    assert_eq!(
        seal, -1,
        "a client could seal the arena against the server's writes"
    );
    assert_eq!(fd_len(&fd), len);
    // Punching a hole zeroes pages (what a writable mapping allows anyway, until
    // mappings are per tenant): it does not shrink the file, so nothing faults.
    // SAFETY: as above.
    unsafe {
        libc::fallocate(
            raw,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };

    // The server touches the arena for every carrier: it is still there.
    let shm = client(&r, CarrierChoice::Shm, 1).await;
    let _ = shm.get(&k("kv/h/v")).await;
    let _ = tcp.get(&k("kv/h/v")).await;
    let again = pattern(2 << 20, 10);
    for c in [&shm, &tcp] {
        c.put(&k("kv/h/after"), again.clone()).await.unwrap();
        assert_eq!(c.get(&k("kv/h/after")).await.unwrap().unwrap(), again);
    }
    r.shutdown().await.unwrap();
}

/// An in-place reservation shows zeros, not the bytes of the value that last
/// used that memory; and a COMMIT with the wrong checksum does not tell the
/// checksum of what is there (it would be a digest of someone else's bytes when
/// the client wrote nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_shows_nothing_the_arena_held_before() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let tcp = client(&r, CarrierChoice::Tcp, 1).await;
    let (mut s, fd) = raw_shm(&r).await;
    let mut map = ArenaMap::new(&fd);
    let len = 1u64 << 20;
    for round in 0..4u8 {
        // A value fills arena memory, then goes away: its memory is free again.
        let secret = pattern(len as usize, 100 + round);
        tcp.put(&k("kv/h/secret"), secret).await.unwrap();
        assert!(tcp.delete(&k("kv/h/secret")).await.unwrap());

        let id = 10 + u64::from(round);
        let (h, meta, _) = raw_call(&mut s, &reserve(id, "kv/h/mine", len), b"").await;
        assert_eq!(h.status, Status::Ok);
        let lease = response::decode_reserve(&meta)
            .unwrap()
            .expect("placed in place");
        let mut crc = 0;
        for e in &lease.extents {
            let bytes = map.slice(e);
            assert!(
                bytes.iter().all(|&b| b == 0),
                "round {round}: a reservation shows earlier bytes"
            );
            crc = crc32c::crc32c_append(crc, bytes);
        }
        let commit = request_frame(
            100 + u64::from(round),
            0,
            &Request::Commit {
                reservation: id,
                crc32c: crc ^ 1,
            },
            0,
        );
        let (h, meta, _) = raw_call(&mut s, &commit, b"").await;
        assert_eq!(h.status, Status::Checksum);
        let told = String::from_utf8_lossy(&meta).into_owned();
        assert!(
            !told.contains(&format!("{crc:08x}")),
            "the refusal tells the checksum of the arena's bytes: {told}"
        );
    }
    r.shutdown().await.unwrap();
}

/// ABORT of an in-place reservation does not free its memory at once: its client
/// aborts after a write it gave up on (an RDMA write that timed out), which may
/// still land, so the memory waits a lease lifetime in quarantine, as after an
/// expiry or a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_in_place_reservation_waits_in_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 1000)).await.unwrap();
    let full = r.data.ops().upload_budget_free();
    let (mut s, _fd) = raw_shm(&r).await;
    let (h, meta, _) = raw_call(&mut s, &reserve(1, "kv/h/aborted", 1 << 20), b"").await;
    assert_eq!(h.status, Status::Ok);
    let first = response::decode_reserve(&meta).unwrap().expect("in place");
    let abort = request_frame(2, 0, &Request::Abort { reservation: 1 }, 0);
    let (h, meta, _) = raw_call(&mut s, &abort, b"").await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(response::decode_u64(Op::Abort, &meta).unwrap(), 1);
    let started = std::time::Instant::now();

    // The next reservation is placed elsewhere.
    let (h, meta, _) = raw_call(&mut s, &reserve(3, "kv/h/next", 1 << 20), b"").await;
    assert_eq!(h.status, Status::Ok);
    let next = response::decode_reserve(&meta).unwrap().expect("in place");
    for a in &first.extents {
        for b in &next.extents {
            assert!(
                a.offset + a.len <= b.offset || b.offset + b.len <= a.offset,
                "an aborted reservation's memory was handed out again at once"
            );
        }
    }
    let abort = request_frame(4, 0, &Request::Abort { reservation: 3 }, 0);
    raw_call(&mut s, &abort, b"").await;
    assert_eq!(
        r.data.ops().upload_budget_free(),
        full - (2 << 20),
        "let go before a lease lifetime"
    );
    within_5s("the quarantine to let go", || {
        r.data.ops().upload_budget_free() == full
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    r.shutdown().await.unwrap();
}

/// A lease is charged what it keeps from the arena: a 1-byte leased read of a
/// page pins the whole page (before, it was charged 4 KiB, so the lease budget
/// let a client pin up to 1,000 times more arena than it says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_charged_the_pages_it_pins() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 5000)).await.unwrap();
    let tcp = client(&r, CarrierChoice::Tcp, 1).await;
    let page = 1u64 << 20; // the harness's page size
    tcp.put(&k("kv/h/paged"), pattern(3 * page as usize, 4))
        .await
        .unwrap();
    let (mut s, _fd) = raw_shm(&r).await;
    let ranged = |id: u64, offset: u64, length: u64| {
        request_frame(
            id,
            FLAG_LEASE,
            &Request::Get {
                key: k("kv/h/paged"),
                offset,
                length: Some(length),
            },
            0,
        )
    };
    // One byte of the first page.
    let (h, _, data) = raw_call(&mut s, &ranged(1, 5, 1), b"").await;
    assert_eq!(h.status, Status::Ok);
    assert!(data.is_empty(), "answered by lease");
    assert_eq!(r.data.leases().usage(), (1, page));
    // Two bytes across the first two pages' boundary.
    let (h, _, _) = raw_call(&mut s, &ranged(2, page - 1, 2), b"").await;
    assert_eq!(h.status, Status::Ok);
    assert_eq!(r.data.leases().usage(), (2, 3 * page));
    r.shutdown().await.unwrap();
}
