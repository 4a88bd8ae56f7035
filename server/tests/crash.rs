//! Crash-safe restart: a real `strata-server` process is killed with SIGKILL in
//! the middle of a write load (puts of many sizes and deletes, over shared memory,
//! TCP and gRPC at once) and started again on the same data directory, 20 times.
//! Each time it must start, and every value it then serves must be byte-identical
//! to one a writer sent (acknowledged, or in flight when the process died), or
//! absent. Keys each have one writer, so the test also checks that no read is
//! older than its key's last acknowledged write (an older value, or one deleted
//! with an acknowledgement, coming back).
//!
//! Over RDMA the same load runs only in the Soft-RoCE VM (tests/rdma.rs); the
//! store underneath is the same for every carrier.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use strata_server::testing::{self, ServerProcess};
use strata_tiers::Key;
use strata_transport::data::CarrierChoice;
use strata_transport::{Client, ClientOptions};

const KILLS: usize = 20;
const WRITERS_PER_CARRIER: usize = 2;
const KEYS_PER_WRITER: usize = 6;
/// Sizes from a few bytes to three 4 MiB pages.
const SIZES: [usize; 6] = [40, 3_000, 65_536, 700_001, (4 << 20) + 123, (9 << 20) + 5];

/// The server under test, as a process (the harness's `ServerProcess`).
fn start_server(dir: &Path, log: &Path) -> ServerProcess {
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_strata-server")),
        dir,
        log,
        &["--dram-capacity", "32MiB", "--nvme-capacity", "512MiB"],
        &[],
    )
}

/// What the writers sent to one key, in order: `Some(version)` for a put,
/// `None` for a delete; and how many of them were acknowledged (a prefix, as each
/// key has one writer that waits for each answer).
#[derive(Debug, Default)]
struct History {
    ops: Vec<Option<u64>>,
    acked: usize,
}

type Histories = Arc<Mutex<HashMap<Key, History>>>;

/// The value of version `version` of the key with id `id`: a header naming both,
/// then bytes derived from them, so any value read back can be checked whole.
fn value(id: u32, version: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(24));
    v.extend_from_slice(b"CRSH");
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = (u64::from(id) << 32) ^ version ^ 0x9e37_79b9_7f4a_7c15;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len.max(24));
    v
}

/// The (id, version) a value read back claims, if its header is whole.
fn claimed(b: &[u8]) -> Option<(u32, u64, usize)> {
    if b.len() < 24 || &b[..4] != b"CRSH" {
        return None;
    }
    let id = u32::from_le_bytes(b[4..8].try_into().ok()?);
    let version = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let len = u64::from_le_bytes(b[16..24].try_into().ok()?) as usize;
    Some((id, version, len))
}

fn client_options(carrier: Option<CarrierChoice>) -> ClientOptions {
    let timeout = Duration::from_secs(20);
    let mut o = testing::options(carrier, 2);
    o.timeout = timeout;
    o.attempts = 1;
    o.data.timeout = timeout;
    o.data.attempts = 1;
    o
}

/// One writer: puts (and now and then deletes) its own keys until an operation
/// fails, which is the server dying.
async fn write_until_killed(client: Client, keys: Vec<(u32, Key)>, hist: Histories, seed: u64) {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    loop {
        let r = next();
        let (id, key) = &keys[(r % keys.len() as u64) as usize];
        let delete = (r >> 8) % 10 == 0;
        let op = if delete {
            None
        } else {
            let h = hist.lock();
            let version = h.get(key).map_or(0, |h| h.ops.len() as u64) + 1;
            Some(version)
        };
        hist.lock().entry(key.clone()).or_default().ops.push(op);
        let ok = match op {
            None => client.delete(key).await.is_ok(),
            Some(version) => {
                let len = SIZES[((r >> 16) % SIZES.len() as u64) as usize];
                client
                    .put(key, Bytes::from(value(*id, version, len)))
                    .await
                    .is_ok()
            }
        };
        if !ok {
            return;
        }
        let mut h = hist.lock();
        let h = h.get_mut(key).expect("history");
        h.acked = h.ops.len();
    }
}

#[derive(Debug, Default)]
struct Tally {
    present: usize,
    absent: usize,
    stale: usize,
    slowest: Duration,
}

/// The stacks of a process's threads, its own frames only (for a stall), when
/// gdb is installed.
fn stacks(pid: u32) -> String {
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Thread") || l.contains("strata") || l.contains("foyer"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(no stacks: gdb: {e})"),
    }
}

/// The last lines of a server's log.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("ecover"))
        .collect();
    out.extend_from_slice(&lines[lines.len().saturating_sub(60)..]);
    out.join("\n")
}

/// Reads every key back and checks it against what was sent.
async fn verify(
    client: &Client,
    keys: &[(u32, Key)],
    hist: &Histories,
    tally: &mut Tally,
    pid: u32,
    log: &Path,
) {
    for (id, key) in keys {
        let start = Instant::now();
        let Ok(got) = tokio::time::timeout(Duration::from_secs(10), client.get(key)).await else {
            panic!(
                "get {key:?} after a restart stalled for 10 s; the server's threads:\n{}\n\
                 the end of its log:\n{}",
                stacks(pid),
                log_tail(log)
            );
        };
        let got = got.unwrap_or_else(|e| {
            panic!("get {key:?} after a restart, {:?} in: {e}", start.elapsed())
        });
        tally.slowest = tally.slowest.max(start.elapsed());
        let h = hist.lock();
        let Some(h) = h.get(key) else {
            assert!(got.is_none(), "{key:?} was never written but reads back");
            continue;
        };
        let Some(got) = got else {
            tally.absent += 1;
            continue;
        };
        let (cid, version, len) = claimed(&got)
            .unwrap_or_else(|| panic!("{key:?}: {} bytes that no writer sent", got.len()));
        assert_eq!(cid, *id, "{key:?}: serves another key's value");
        assert!(
            got.len() == len && got[..] == value(cid, version, len)[..],
            "{key:?}: version {version} torn or corrupt ({} bytes read, {len} written)",
            got.len()
        );
        let sent_at = h
            .ops
            .iter()
            .position(|&op| op == Some(version))
            .unwrap_or_else(|| panic!("{key:?}: version {version} was never sent"));
        // Everything after the last acknowledged op was in flight, or never answered.
        let last_acked = h.acked.checked_sub(1);
        if let Some(last) = last_acked
            && sent_at < last
        {
            // A value older than an acknowledged write: after an acknowledged delete
            // that is a resurrection, which must never happen.
            let deleted_after = h.ops[sent_at + 1..=last].iter().any(Option::is_none);
            assert!(
                !deleted_after,
                "{key:?}: version {version} was deleted (acknowledged) and came back; \
                 sent since: {:?}, {} acknowledged of {}",
                &h.ops[sent_at..],
                h.acked,
                h.ops.len()
            );
            tally.stale += 1;
        }
        tally.present += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_under_load_restarts_serving_only_what_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hist: Histories = Arc::default();
    let carriers = [
        ("shm", Some(CarrierChoice::Shm)),
        ("tcp", Some(CarrierChoice::Tcp)),
        ("grpc", None),
    ];
    let mut all_keys = Vec::new();
    let mut writers = Vec::new();
    let mut id = 0u32;
    for (name, carrier) in carriers {
        for w in 0..WRITERS_PER_CARRIER {
            let mut keys = Vec::new();
            for k in 0..KEYS_PER_WRITER {
                // Both a cache-only namespace and a write-through one.
                let ns = if k % 2 == 0 { "kv" } else { "obj" };
                let key = Key::new(ns, "crash", format!("{name}-{w}-{k}")).expect("key");
                keys.push((id, key));
                id += 1;
            }
            all_keys.extend(keys.iter().cloned());
            writers.push((carrier, keys));
        }
    }
    let mut tally = Tally::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..=KILLS {
        let log = dir.path().join(format!("server-{round}.log"));
        let server = start_server(dir.path(), &log);
        let reader = Client::connect(&server.grpc, client_options(None))
            .await
            .expect("connect");
        verify(&reader, &all_keys, &hist, &mut tally, server.pid(), &log).await;
        if round == KILLS {
            break;
        }
        let mut tasks = Vec::new();
        for (i, (carrier, keys)) in writers.iter().enumerate() {
            let client = Client::connect(&server.grpc, client_options(*carrier))
                .await
                .expect("connect a writer");
            let seed = (round * 100 + i) as u64 + 1;
            tasks.push(tokio::spawn(write_until_killed(
                client,
                keys.clone(),
                hist.clone(),
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let load = Duration::from_millis(300 + rng % 900);
        tokio::time::sleep(load).await;
        server.kill();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a writer outlived its server by a minute")
                .expect("writer");
        }
    }
    let sent: usize = hist.lock().values().map(|h| h.ops.len()).sum();
    let acked: usize = hist.lock().values().map(|h| h.acked).sum();
    eprintln!(
        "{KILLS} kills: {sent} operations sent, {acked} acknowledged; reads after restarts: \
         {} intact, {} absent, {} older than acknowledged; slowest read {:?}",
        tally.present, tally.absent, tally.stale, tally.slowest
    );
    assert!(tally.present > 0, "no value survived any restart");
    assert_eq!(
        tally.stale, 0,
        "values older than their key's last acknowledged write were served"
    );
}
