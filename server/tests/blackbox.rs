//! The robustness suite against the `strata-server` binary as an operator runs
//! it, from the outside: each fault of issue 21 that was found by running the
//! binaries, replayed the way it was found, on a server process.
//!
//! - a shared-memory client that shrinks the arena's descriptor (the server
//!   died of SIGBUS at the next read of a cached key);
//! - a PUT to the dataset index's key, then a restart (the server never started
//!   again);
//! - a 12 MiB value on the local-directory origin read by a 10-byte range, then
//!   rewritten there (the next whole read returned 4 MiB old and 8 MiB new);
//! - a gRPC put that sends its header and then nothing (every other put then
//!   answered RESOURCE_EXHAUSTED, for ever);
//! - in-place reservations over the shared-memory socket: what the arena held
//!   before, a checksum refusal, an ABORT (items 7 and 8);
//! - pipelined GETs and MGETs nobody takes, against the read budget (item 9).
//!
//! The items that need a fault injected into a disk or an origin (a slow or
//! hung one: items 4 and 11), or a power cut (item 6), are tested in process,
//! with the fault wrapped around the real tier (`docs/guarantees.md` names each).
//!
//! (A `kill -9` under load, then a restart: `crash.rs`.) The binary is the one
//! cargo builds for the tests; `STRATA_SERVER_BIN`, an absolute path, points the
//! suite at another build: `scripts/test.sh` runs it again against the release
//! one (`cargo build --release --bin strata-server`, then
//! `STRATA_SERVER_BIN=$PWD/target/release/strata-server cargo test -p strata-server --test blackbox`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1 as proto;
use strata_proto::v1::cache_client::CacheClient;
use strata_server::testing::{ServerProcess, k, pattern};
use strata_transport::data::CarrierChoice;
use strata_transport::{Client, ClientOptions, key_to_proto};

fn bin() -> PathBuf {
    std::env::var_os("STRATA_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata-server")))
}

/// The server on `dir` with `args` (64 MiB of DRAM and 256 MiB of NVMe unless
/// they say otherwise).
fn start(dir: &Path, args: &[&str]) -> ServerProcess {
    let mut all = Vec::new();
    if !args.contains(&"--dram-capacity") {
        all.extend(["--dram-capacity", "64MiB", "--nvme-capacity", "256MiB"]);
    }
    all.extend_from_slice(args);
    ServerProcess::start(&bin(), dir, &dir.join("server.log"), &all, &[])
}

async fn client(p: &ServerProcess, carrier: Option<CarrierChoice>) -> Client {
    let options = strata_server::testing::options(carrier, 1);
    Client::connect(&p.grpc, options).await.expect("connects")
}

fn alive(p: &mut ServerProcess) -> bool {
    p.try_wait().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_memory_client_cannot_kill_the_server_through_the_arena() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path(), &[]);
    let tcp = client(&p, Some(CarrierChoice::Tcp)).await;
    let v = pattern(3 << 20, 1);
    tcp.put(&k("obj/bb/cached"), v.clone()).await.unwrap();

    let sock = dir.path().join("strata.sock");
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let fd = strata_transport::data::recv_fd(&s).await.unwrap();
    // SAFETY: a descriptor this test holds; the calls only report errors.
    let shrunk = unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
    assert_eq!(shrunk, -1, "the arena's descriptor could be shrunk");

    let shm = client(&p, Some(CarrierChoice::Shm)).await;
    assert_eq!(shm.get(&k("obj/bb/cached")).await.unwrap().unwrap(), v);
    assert_eq!(tcp.get(&k("obj/bb/cached")).await.unwrap().unwrap(), v);
    assert!(alive(&mut p), "the server died");
    drop((s, fd));
    assert!(p.terminate(Duration::from_secs(15)).success());
}

/// Items 7 and 8 from the outside, over the binary's shared-memory socket with
/// raw frames: an in-place reservation shows zeros, not the bytes of a value
/// that used that memory before; a COMMIT with the wrong checksum does not tell
/// the checksum of what is there; an aborted reservation's memory is not handed
/// out again at once (a late write to it, as an RDMA write that timed out, must
/// not land in someone else's value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_show_nothing_old_and_aborted_ones_are_not_reused_at_once() {
    use strata_server::testing::{ArenaMap, raw_call};
    use strata_transport::wire::{FLAG_LEASE, Request, Status, request_frame, response};
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path(), &[]);
    let tcp = client(&p, Some(CarrierChoice::Tcp)).await;
    let mut s = tokio::net::UnixStream::connect(dir.path().join("strata.sock"))
        .await
        .unwrap();
    let fd = strata_transport::data::recv_fd(&s).await.unwrap();
    let mut map = ArenaMap::new(&fd);
    let reserve = |id: u64, key: &str| {
        request_frame(
            id,
            FLAG_LEASE,
            &Request::Reserve {
                key: k(key),
                len: 1 << 20,
            },
            0,
        )
    };
    for round in 0..3u64 {
        tcp.put(&k("kv/bb/secret"), pattern(1 << 20, 50 + round as u8))
            .await
            .unwrap();
        assert!(tcp.delete(&k("kv/bb/secret")).await.unwrap());
        let (h, meta, _) = raw_call(&mut s, &reserve(10 + round, "kv/bb/mine"), b"").await;
        assert_eq!(h.status, Status::Ok);
        let lease = response::decode_reserve(&meta).unwrap().expect("in place");
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
            20 + round,
            0,
            &Request::Commit {
                reservation: 10 + round,
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
    let (h, meta, _) = raw_call(&mut s, &reserve(30, "kv/bb/aborted"), b"").await;
    assert_eq!(h.status, Status::Ok);
    let aborted = response::decode_reserve(&meta).unwrap().expect("in place");
    let abort = request_frame(31, 0, &Request::Abort { reservation: 30 }, 0);
    assert_eq!(raw_call(&mut s, &abort, b"").await.0.status, Status::Ok);
    for id in 32..36 {
        let (h, meta, _) = raw_call(&mut s, &reserve(id, "kv/bb/next"), b"").await;
        assert_eq!(h.status, Status::Ok);
        let next = response::decode_reserve(&meta).unwrap().expect("in place");
        for a in &aborted.extents {
            for b in &next.extents {
                assert!(
                    a.offset + a.len <= b.offset || b.offset + b.len <= a.offset,
                    "an aborted reservation's memory was handed out again at once"
                );
            }
        }
    }
    assert!(alive(&mut p));
    drop((s, map, fd));
    assert!(p.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_to_the_servers_own_keys_is_refused_and_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[]);
    let c = client(&p, None).await;
    let e = c
        .put(
            &k("obj/_strata/datasets/index.json"),
            Bytes::from_static(b"x\n"),
        )
        .await
        .expect_err("the registry's key is the server's");
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(p.terminate(Duration::from_secs(15)).success());
    // Damaged on disk all the same (through the origin directory): it starts.
    let index = dir.path().join("origin/obj/@_strata/datasets/index.json");
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    std::fs::write(&index, b"x\n").unwrap();
    let p = start(dir.path(), &[]);
    let c = client(&p, None).await;
    c.put(&k("obj/bb/after"), Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert!(p.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_rewritten_on_the_origin_is_served_at_one_version() {
    let dir = tempfile::tempdir().unwrap();
    // One page per origin read, as when the fault was found: the ranged read
    // fills the first page only.
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        "[store]\npage_size = \"4MiB\"\norigin_read_size = \"4MiB\"\n",
    )
    .unwrap();
    let p = start(dir.path(), &["--config", config.to_str().unwrap()]);
    let c = client(&p, Some(CarrierChoice::Tcp)).await;
    let file = dir.path().join("origin/obj/@bb/twelve.bin");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (old, new) = (pattern(12 << 20, 1), pattern(12 << 20, 2));
    std::fs::write(&file, &old).unwrap();
    let (_, first) = c
        .get_range(&k("obj/bb/twelve.bin"), 0, Some(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first[..], old[..10]);
    std::fs::write(&file, &new).unwrap();
    let whole = c.get(&k("obj/bb/twelve.bin")).await.unwrap().unwrap();
    assert!(
        whole == new,
        "a mix: first 4 MiB new {}, last 8 MiB new {}",
        whole[..4 << 20] == new[..4 << 20],
        whole[4 << 20..] == new[4 << 20..]
    );
    assert!(p.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_stalls_after_its_header_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        "[requests]\nmax_upload_bytes = \"4MiB\"\nstall_timeout_ms = 800\n",
    )
    .unwrap();
    let p = start(dir.path(), &["--config", config.to_str().unwrap()]);
    let c = client(&p, None).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::PutRequest {
        msg: Some(proto::put_request::Msg::Header(proto::PutHeader {
            key: Some(key_to_proto(&k("kv/bb/held"))),
            length: 4 << 20,
            crc32c: None,
            pin: false,
        })),
    })
    .await
    .unwrap();
    let mut raw = CacheClient::new(c.channel().clone());
    let stalled = tokio::spawn(async move {
        raw.put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // A put from another client, with the default retries (Busy is retried
    // within its deadline), gets through once the stalled one is dropped.
    let other = Client::connect(
        &p.grpc,
        ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let v = pattern(1 << 20, 5);
    // (Busy until the stalled put is dropped, after the stall timeout.)
    let t0 = std::time::Instant::now();
    while let Err(e) = other.put(&k("kv/bb/next"), v.clone()).await {
        assert!(t0.elapsed() < Duration::from_secs(10), "still refused: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(other.get(&k("kv/bb/next")).await.unwrap().unwrap(), v);
    let status = stalled.await.unwrap().expect_err("the stalled put ends");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    drop(tx);
    assert!(p.terminate(Duration::from_secs(15)).success());
}

/// The server's resident memory, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// A server with `requests.max_read_bytes = budget`, 32 MiB of DRAM and 1 GiB of
/// NVMe, holding `n` values of `len` bytes under `kv/<prefix>/v<i>` (most on
/// NVMe), and its resident memory once they are in.
async fn with_values_on_nvme(
    dir: &Path,
    budget: &str,
    prefix: &str,
    n: usize,
    len: usize,
) -> (ServerProcess, u64) {
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!("[requests]\nmax_read_bytes = \"{budget}\"\n"),
    )
    .unwrap();
    let p = start(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--dram-capacity",
            "32MiB",
            "--nvme-capacity",
            "1GiB",
        ],
    );
    let c = client(&p, Some(CarrierChoice::Tcp)).await;
    for i in 0..n {
        c.put(&k(&format!("kv/{prefix}/v{i}")), pattern(len, i as u8))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss(p.pid());
    (p, base)
}

/// How far `p`'s resident memory rose above `base`, sampled every 100 ms for
/// `ticks` samples; the server must still be alive after.
async fn peak_growth(p: &mut ServerProcess, base: u64, ticks: u32) -> u64 {
    let mut peak = base;
    for _ in 0..ticks {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss(p.pid()));
    }
    assert!(alive(p));
    println!("RSS {} MiB -> peak {} MiB", base >> 20, peak >> 20);
    peak.saturating_sub(base)
}

/// Pipelined GETs of values on NVMe that nobody takes stay within the read
/// budget: the server's resident memory grows by about `requests.max_read_bytes`
/// (64 MiB here), not by what the requests in flight ask for (100 GETs of as many
/// 4 MiB values: 400 MiB, which the server used to read into memory before
/// answering; with a budget of 4 GiB the same load grows it by ~300 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_nobody_takes_stay_within_the_read_budget() {
    use strata_transport::wire::{Request, request_frame};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    const VALUES: usize = 100;
    let (mut p, base) = with_values_on_nvme(dir.path(), "64MiB", "rss", VALUES, 4 << 20).await;
    let addr = p.data.clone().expect("the data path is on");
    let mut conns = Vec::new();
    for n in 0..4u64 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        for j in 0..25u64 {
            let frame = request_frame(
                n * 100 + j + 1,
                0,
                &Request::Get {
                    key: k(&format!("kv/rss/v{}", (n * 25 + j) as usize % VALUES)),
                    offset: 0,
                    length: None,
                },
                0,
            );
            s.write_all(&frame).await.unwrap();
        }
        conns.push(s);
    }
    let grew = peak_growth(&mut p, base, 20).await;
    assert!(
        grew < (64 + 96) << 20,
        "resident memory grew by {} MiB with 100 unread 4 MiB GETs (read budget 64 MiB)",
        grew >> 20
    );
    drop(conns);
    assert!(p.terminate(Duration::from_secs(15)).success());
}

/// MGETs of many small values on NVMe that nobody takes hold no more than the
/// read budget lets them, plus one answer (an answer larger than the budget is
/// charged all of it): +~195 MiB here; before, each MGET looked up and kept
/// every head (each holding its value) before it waited for the budget: +~370 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgets_waiting_for_the_read_budget_hold_no_values() {
    use strata_transport::wire::{Request, request_frame};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    const VALUES: usize = 160;
    let (mut p, base) = with_values_on_nvme(dir.path(), "128MiB", "mg", VALUES, 1 << 20).await;
    let addr = p.data.clone().expect("the data path is on");
    let keys: Vec<_> = (0..VALUES).map(|i| k(&format!("kv/mg/v{i}"))).collect();
    let mut conns = Vec::new();
    for n in 0..4u64 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let frame = request_frame(n + 1, 0, &Request::MGet { keys: keys.clone() }, 0);
        s.write_all(&frame).await.unwrap();
        conns.push(s);
    }
    let grew = peak_growth(&mut p, base, 30).await;
    assert!(
        grew < (128 + 160) << 20,
        "resident memory grew by {} MiB with four unread MGETs of 160 MiB (read budget 128 MiB)",
        grew >> 20
    );
    drop(conns);
    assert!(p.terminate(Duration::from_secs(15)).success());
}
