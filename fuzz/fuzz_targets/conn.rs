//! Fuzzes one data connection's state machine against a real in-process server
//! (DRAM tier, the data path over TCP and the shared-memory socket): each input
//! is read as the choices of one session of `strata_server::testing::conn_fuzz`
//! (frames of every op with fields the input picks, garbage, headers whose
//! lengths lie, RESERVE / WRITE / COMMIT / ABORT in any order, several requests in
//! flight, written in pieces), then every value the session had acknowledged is
//! read back as it was sent. Any panic, on any of the server's threads, aborts
//! (libfuzzer-sys's panic hook). Every 256 sessions the upload budget and the
//! lease table must come back to empty.
//!
//! Run with `-detect_leaks=0`: the server lives for the whole run.

#![no_main]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use strata_server::testing::conn_fuzz::{Input, Source, check_session, fuzz_over};
use strata_server::testing::{self, k};
use strata_server::{Running, Server};
use strata_transport::Client;
use strata_transport::data::CarrierChoice;

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Running,
    check: Client,
    full_budget: u64,
    round: AtomicU64,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // libFuzzer's `main` is not Rust's: SIGPIPE is not ignored, and a write to
        // a connection the server closed (as it does on garbage) would kill the
        // run. Ignored, it is the EPIPE error the sessions expect.
        // SAFETY: setting a signal's disposition to ignore, before any thread of
        // ours starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut c = testing::config(dir.path());
        c.data.lease_ttl_ms = 300;
        c.nvme.enabled = false;
        let (server, check) = rt.block_on(async {
            let server = Server::start(c).await.expect("the server starts");
            let check =
                testing::client(&server, testing::options(Some(CarrierChoice::Tcp), 1)).await;
            (server, check)
        });
        let full_budget = server.data.ops().upload_budget_free();
        Fixture {
            rt,
            server,
            check,
            full_budget,
            round: AtomicU64::new(0),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let round = f.round.fetch_add(1, Ordering::Relaxed) + 1;
    f.rt.block_on(async {
        let mut input = Input::new(data);
        let shm = input.chance(50);
        let (sent, ok) = fuzz_over(&f.server, &mut input, round, shm).await;
        if let Err(e) = check_session(&f.check, sent, &ok).await {
            panic!("session {round}: {e}");
        }
        if round % 256 == 0 {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while f.server.data.ops().upload_budget_free() != f.full_budget
                || f.server.data.leases().usage() != (0, 0)
            {
                assert!(
                    std::time::Instant::now() < until,
                    "the upload budget or the lease table did not come back to empty"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let v = testing::pattern(5000, round as u8);
            f.check.put(&k("kv/fz/after"), v.clone()).await.expect("a put after");
            assert_eq!(f.check.get(&k("kv/fz/after")).await.expect("a get after"), Some(v));
        }
    });
});
