//! The `strata` CLI against a real server on 127.0.0.1:0.

use strata_server::testing;

#[tokio::test(flavor = "multi_thread")]
async fn cli_put_get_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let running = testing::start(testing::config(dir.path())).await;
    let addr = running.addr.to_string();
    let file = dir.path().join("in.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let out = strata(&addr, &["put", "obj/cli/x", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = strata(&addr, &["get", "obj/cli/x"]).await;
    assert_eq!(out.stdout, b"from a file");
    let out = strata(&addr, &["ls", "obj/cli"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("obj/cli/x"));
    let out = strata(&addr, &["stats", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tier"] == "dram")
    );
    let out = strata(&addr, &["get", "obj/cli/missing"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("strata: error:") && err.contains("not found"),
        "{err}"
    );
    let out = strata(&addr, &["put", "BAD/x", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace"));
    assert!(strata(&addr, &["rm", "obj/cli/x"]).await.status.success());
    running.shutdown().await.unwrap();
}

/// Runs `strata ARGS` against `addr` (off the runtime's threads).
async fn strata(addr: &str, args: &[&str]) -> std::process::Output {
    let addr = addr.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .env("STRATA_ADDR", addr)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_lists_the_members_and_their_shares() {
    // A single node says so.
    let dir = tempfile::tempdir().unwrap();
    let single = testing::start(testing::config(dir.path())).await;
    let out = strata(&single.addr.to_string(), &["cluster", "status"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not in a cluster"));
    single.shutdown().await.unwrap();

    // Two members of a cluster on a real etcd.
    let etcd = testing::EtcdProcess::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = Vec::new();
    for d in &dirs {
        let mut c = testing::config(d.path());
        c.cluster.etcd = vec![etcd.url.clone()];
        c.cluster.name = "cli".into();
        c.cluster.advertise = Some("127.0.0.1".into());
        nodes.push(testing::start(c).await);
    }
    let addr = nodes[0].addr.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let out = strata(&addr, &["cluster", "status", "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["members"].as_array().map_or(0, Vec::len) == 2 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(v["cluster"], "cli");
    let members = v["members"].as_array().unwrap();
    let share: f64 = members.iter().map(|m| m["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "{v}");
    for m in members {
        assert_eq!(m["state"], "active", "{v}");
        assert_eq!(m["healthy"], true, "{v}");
    }
    let out = strata(&addr, &["cluster", "status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("cluster cli, cell default: 2 members (2 active)"),
        "{text}"
    );

    // Drain the other member, asked of this one: it leaves placement, then comes
    // back when the drain is cancelled.
    let other = nodes[1].cluster.as_ref().unwrap().entry().id;
    let state_of = |v: &serde_json::Value| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == other.as_str())
            .map(|m| {
                (
                    m["state"].as_str().unwrap().to_owned(),
                    m["share"].as_f64().unwrap(),
                )
            })
            .unwrap()
    };
    for (args, want, share) in [
        (vec!["cluster", "drain", &other[..6]], "draining", 0.0),
        (
            vec!["cluster", "drain", &other[..6], "--cancel"],
            "active",
            0.5,
        ),
    ] {
        let out = strata(&addr, &args).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("member {other}: {want}")), "{text}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = strata(&addr, &["cluster", "status", "--json"]).await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let (state, s) = state_of(&v);
            if state == want {
                assert!((s - share).abs() < 0.2, "{v}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{v}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let out = strata(&addr, &["cluster", "drain", "no-such-node"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no member"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
