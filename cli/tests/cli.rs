//! The `strata` CLI against a real server on 127.0.0.1:0.

use strata_server::testing;

#[tokio::test(flavor = "multi_thread")]
async fn cli_put_get_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let running = testing::start(testing::config(dir.path())).await;
    let addr = running.addr.to_string();
    let cli = env!("CARGO_BIN_EXE_strata");
    let file = dir.path().join("in.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let run = |args: &[&str]| {
        let addr = addr.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(cli)
                    .env("STRATA_ADDR", addr)
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run(&["put", "obj/cli/x", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "obj/cli/x"]).await;
    assert_eq!(out.stdout, b"from a file");
    let out = run(&["ls", "obj/cli"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("obj/cli/x"));
    let out = run(&["stats", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tier"] == "dram")
    );
    let out = run(&["get", "obj/cli/missing"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("strata: error:") && err.contains("not found"),
        "{err}"
    );
    let out = run(&["put", "BAD/x", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace"));
    assert!(run(&["rm", "obj/cli/x"]).await.status.success());
    running.shutdown().await.unwrap();
}
