//! What `/metrics` counts of the data path.

use super::*;

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
