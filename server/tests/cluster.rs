//! Cluster membership (`docs/cluster.md`) on a real etcd, with real server
//! processes: they join, see each other, leave at once on SIGTERM, drop out a
//! lease lifetime after a SIGKILL, and come back as themselves after a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use strata_server::cluster::etcd::Etcd;
use strata_server::cluster::{MemberEntry, MemberState};
use strata_server::testing::{EtcdProcess, ServerProcess, sample, scrape};

const BIN: &str = env!("CARGO_BIN_EXE_strata-server");
/// The lease of these tests' members: a killed node is out within it.
const TTL_S: &str = "2";

async fn members(etcd: &Etcd, cluster: &str) -> Vec<MemberEntry> {
    let prefix = format!("/strata/{cluster}/cells/default/members/");
    let (_, kvs) = etcd.get_prefix(prefix.as_bytes()).await.unwrap();
    kvs.iter()
        .map(|kv| serde_json::from_slice(&kv.value).expect("a member entry"))
        .collect()
}

/// Waits (polling every 50 ms) until `check` holds, failing after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn active_seen_by(p: &ServerProcess) -> u64 {
    sample(
        &scrape(p.metrics).await,
        "strata_cluster_members{state=\"active\"}",
    )
}

fn start(dir: &Path, etcd: &EtcdProcess, cluster: &str) -> ServerProcess {
    std::fs::create_dir_all(dir).unwrap();
    ServerProcess::start(
        Path::new(BIN),
        dir,
        &dir.join("server.log"),
        &[
            "--etcd",
            &etcd.url,
            "--cluster",
            cluster,
            "--advertise",
            "127.0.0.1",
            "--dram-capacity",
            "32MiB",
            "--nvme-capacity",
            "256MiB",
        ],
        &[
            ("STRATA__CLUSTER__LEASE_TTL_S", TTL_S),
            ("STRATA__CLUSTER__WEIGHT_UNIT", "64MiB"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_see_each_other_leave_on_sigterm_and_drop_out_when_killed() {
    let etcd = EtcdProcess::start().await;
    let client = etcd.client().await;
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut nodes: Vec<Option<ServerProcess>> =
        dirs.iter().map(|d| Some(start(d, &etcd, "t1"))).collect();

    // Registered and active, each under its own id with the addresses it printed.
    until(
        "three active members in etcd",
        Duration::from_secs(10),
        || async {
            let m = members(&client, "t1").await;
            m.len() == 3 && m.iter().all(|e| e.state == MemberState::Active)
        },
    )
    .await;
    let m = members(&client, "t1").await;
    let mut grpc: Vec<&str> = m.iter().map(|e| e.grpc.as_str()).collect();
    grpc.sort_unstable();
    let mut printed: Vec<&str> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().grpc.as_str())
        .collect();
    printed.sort_unstable();
    assert_eq!(grpc, printed);
    let ids: std::collections::BTreeSet<&str> = m.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct node ids");
    assert!(
        m.iter()
            .all(|e| e.data.is_some() && e.dram_bytes == 32 << 20)
    );
    // Weights by capacity: 256 MiB of NVMe at 64 MiB per unit.
    assert!(m.iter().all(|e| e.weight == 4), "{m:?}");
    // Every node's view has all three.
    for n in nodes.iter().flatten() {
        until("a node's view of three", Duration::from_secs(5), || async {
            active_seen_by(n).await == 3
        })
        .await;
    }

    // SIGTERM: the node drains and revokes its lease: its entry is gone when it
    // exits, not a lease lifetime later.
    let status = nodes[0].take().unwrap().terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert_eq!(members(&client, "t1").await.len(), 2, "gone at once");
    for n in nodes.iter().flatten() {
        until(
            "the others' views of two",
            Duration::from_secs(5),
            || async { active_seen_by(n).await == 2 },
        )
        .await;
    }

    // SIGKILL: out once its lease runs out.
    let killed = Instant::now();
    nodes[1].take().unwrap().kill();
    until(
        "the killed node's entry to expire",
        Duration::from_secs(8),
        || async { members(&client, "t1").await.len() == 1 },
    )
    .await;
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "a killed node stays until its lease runs out"
    );
    let survivor = nodes[2].as_ref().unwrap();
    until(
        "the survivor's view of one",
        Duration::from_secs(5),
        || async { active_seen_by(survivor).await == 1 },
    )
    .await;

    // A node killed and restarted at once comes back as itself (same id, a new
    // incarnation), taking over its old entry before the lease runs out.
    let before = members(&client, "t1").await;
    let old = before[0].clone();
    nodes[2].take().unwrap().kill();
    let again = start(&dirs[2], &etcd, "t1");
    until(
        "the restarted node, active",
        Duration::from_secs(10),
        || async {
            let m = members(&client, "t1").await;
            m.len() == 1 && m[0].state == MemberState::Active && m[0].incarnation != old.incarnation
        },
    )
    .await;
    let now = members(&client, "t1").await;
    assert_eq!(now[0].id, old.id, "the same node id");
    assert_eq!(now[0].grpc, again.grpc);
    // And it stays: the old incarnation's lease ending takes nothing with it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(members(&client, "t1").await.len(), 1);
    assert_eq!(active_seen_by(&again).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_join_without_etcd_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = std::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--data-listen", "127.0.0.1:0", "--etcd", &url])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--dram-capacity", "32MiB", "--nvme-capacity", "256MiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster") && err.contains("etcd"),
        "the error names the cluster and etcd: {err}"
    );
}
