//! A data connection's state machine driven by random byte streams against the
//! real in-process server (the sessions of `strata_server::testing::conn_fuzz`,
//! which the cargo-fuzz target `fuzz/fuzz_targets/conn.rs` drives too): well-formed frames of every op with random fields
//! (PUTs with short data or the wrong checksum, RESERVE / WRITE / COMMIT /
//! ABORT of reservations made or not, leases released or not), raw garbage,
//! headers whose lengths lie, several requests in flight, written in random
//! pieces, over TCP and the shared-memory socket. After every session: the
//! server still answers, every value a PUT or COMMIT acknowledged reads back as
//! it was sent, and the upload budget and lease table come back to empty.
//!
//! Seeded and bounded: `STRATA_FUZZ_CONN_SECONDS` (default 8) of sessions from
//! `STRATA_FUZZ_CONN_SEED` (default: the time); a failure prints its seed.

use strata_server::testing::conn_fuzz::{Rng, Source, check_session, fuzz_over};

use super::*;

/// Set by the panic hook this test installs: a connection task that panics is
/// only a closed connection to its client, so the test asks the process.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_byte_streams_never_break_a_connection_state_machine() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let seed = std::env::var("STRATA_FUZZ_CONN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let seconds: u64 = std::env::var("STRATA_FUZZ_CONN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    println!("STRATA_FUZZ_CONN_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path(), 300)).await.unwrap();
    let full = r.data.ops().upload_budget_free();
    let check = client(&r, CarrierChoice::Tcp, 1).await;
    let mut rng = Rng(seed);
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut round = 0;
    let mut acknowledged = 0;
    while std::time::Instant::now() < until {
        round += 1;
        let shm = rng.chance(50);
        let (sent, ok) = fuzz_over(&r, &mut rng, round, shm).await;
        acknowledged += check_session(&check, sent, &ok)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, round {round}: {e}"));
    }
    // Everything the sessions held comes back: reservations (a lease lifetime in
    // quarantine at most), leases (expired).
    within_5s("the upload budget to come back", || {
        r.data.ops().upload_budget_free() == full
    })
    .await;
    within_5s("the leases to expire", || r.data.leases().usage() == (0, 0)).await;
    let v = pattern(5000, 7);
    check.put(&k("kv/fz/after"), v.clone()).await.unwrap();
    assert_eq!(check.get(&k("kv/fz/after")).await.unwrap().unwrap(), v);
    assert!(
        !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
        "seed {seed}: a thread panicked (see above)"
    );
    println!("{round} sessions, {acknowledged} acknowledged values read back (seed {seed})");
    r.shutdown().await.unwrap();
}
