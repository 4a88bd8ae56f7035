//! The RDMA carrier (feature `rdma`). `scripts/rdma-vm-test.sh` builds this test
//! binary and runs it twice: on the host, which has no verbs device (the fallback),
//! and inside the project's Soft-RoCE VM (`scripts/rdma-vm.sh`) with `--include-ignored`,
//! where one-sided READs and WRITEs go through a real verbs device (`rxe0`).
#![cfg(feature = "rdma")]

use bytes::Bytes;
use strata_server::config::Config;
use strata_server::testing::{self, k, pattern};
use strata_server::{Running, Server};
use strata_transport::data::rdma::Device;
use strata_transport::data::{Carrier, CarrierChoice, DataOptions};
use strata_transport::{Client, ClientOptions};

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.data.shm = false;
    // The NVMe tier's own defaults (tests that turn it on size only its
    // capacity: the harness's 2 MiB blocks would be 512 files for 1 GiB).
    c.nvme = Default::default();
    c.nvme.enabled = false;
    c
}

async fn client(
    r: &Running,
    carrier: CarrierChoice,
) -> Result<Client, strata_transport::ClientError> {
    client_with(r, carrier, DataOptions::default()).await
}

async fn client_with(
    r: &Running,
    carrier: CarrierChoice,
    data: DataOptions,
) -> Result<Client, strata_transport::ClientError> {
    Client::connect(
        &r.addr.to_string(),
        ClientOptions {
            data: DataOptions {
                carrier,
                connections: 1,
                ..data
            },
            ..ClientOptions::default()
        },
    )
    .await
}

/// Runs everywhere: without a device the server says RDMA is unavailable and
/// clients fall back to TCP (a forced RDMA carrier is an error); with one (in the
/// VM) the server offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_offers_rdma_only_with_a_device_and_clients_fall_back() {
    let has_device = Device::open().is_ok();
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    assert_eq!(r.data.rdma_available(), has_device);
    let auto = client(&r, CarrierChoice::Auto).await.unwrap();
    // Auto picks RDMA only across hosts (on one host shared memory beats it; it is
    // off here), so it lands on TCP either way.
    assert_eq!(auto.carrier(), Some(Carrier::Tcp));
    if has_device {
        let forced = client(&r, CarrierChoice::Rdma).await.unwrap();
        assert_eq!(forced.carrier(), Some(Carrier::Rdma));
    } else {
        let e = client(&r, CarrierChoice::Rdma).await.unwrap_err();
        assert!(
            e.to_string().contains("RDMA") || e.to_string().contains("rdma"),
            "{e}"
        );
    }
    auto.put(&k("kv/r/a"), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(
        auto.get(&k("kv/r/a")).await.unwrap().unwrap(),
        &b"hello"[..]
    );
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device: scripts/rdma-vm-test.sh runs it in the Soft-RoCE VM"]
async fn rdma_carrier_reads_and_writes_the_arena() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    assert!(
        r.data.rdma_available(),
        "no RDMA device: run this in the VM"
    );
    let c = client(&r, CarrierChoice::Rdma).await.unwrap();
    assert_eq!(c.carrier(), Some(Carrier::Rdma));

    // PUT: RESERVE extents, RDMA WRITE into the arena, COMMIT checks the CRC.
    let small = pattern(1000, 1);
    let big = pattern((2 << 20) + 4321, 2); // three pages
    assert_eq!(
        c.put(&k("kv/r/small"), small.clone()).await.unwrap().length,
        1000
    );
    assert_eq!(
        c.put(&k("kv/r/big"), big.clone()).await.unwrap().length,
        big.len() as u64
    );

    // GET: leased extents, RDMA READ out of the arena.
    assert_eq!(c.get(&k("kv/r/small")).await.unwrap().unwrap(), small);
    assert_eq!(c.get(&k("kv/r/big")).await.unwrap().unwrap(), big);
    let (_, part) = c
        .get_range(&k("kv/r/big"), (1 << 20) - 3, Some(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(part, big.slice((1 << 20) - 3..(1 << 20) + 7));
    let got = c
        .mget(&[k("kv/r/big"), k("kv/r/none"), k("kv/r/small")])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(big.clone()), None, Some(small.clone())]);

    // The same bytes through TCP, for a second opinion.
    let tcp = client(&r, CarrierChoice::Tcp).await.unwrap();
    assert_eq!(tcp.get(&k("kv/r/big")).await.unwrap().unwrap(), big);

    // Every lease was released (the last ones flushed now; releases are not awaited).
    c.data().unwrap().flush_releases().await;
    for _ in 0..100 {
        if r.data.leases().usage().0 == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(r.data.leases().usage(), (0, 0));
    assert!(c.delete(&k("kv/r/big")).await.unwrap());
    assert!(c.get(&k("kv/r/big")).await.unwrap().is_none());
    r.shutdown().await.unwrap();
}

/// A client whose RDMA link failed (injected here; a timeout or a failed
/// completion does the same) goes on over its TCP connection: reads answered
/// inline, PUTs sent whole, no lease taken. Values written by RDMA before read
/// back the same. (No new link is set up here: `rdma_relink_after` is an hour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device: scripts/rdma-vm-test.sh runs it in the Soft-RoCE VM"]
async fn a_client_whose_rdma_link_broke_goes_on_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    assert!(
        r.data.rdma_available(),
        "no RDMA device: run this in the VM"
    );
    let never = DataOptions {
        rdma_relink_after: std::time::Duration::from_secs(3600),
        ..DataOptions::default()
    };
    let c = client_with(&r, CarrierChoice::Rdma, never).await.unwrap();
    assert_eq!(c.carrier(), Some(Carrier::Rdma));
    assert_eq!(r.data.rdma_links(), 1);
    let before = pattern((1 << 20) + 77, 3);
    c.put(&k("kv/f/before"), before.clone()).await.unwrap();
    assert_eq!(c.get(&k("kv/f/before")).await.unwrap().unwrap(), before);
    let leased = r.data.stats().bytes_leased();
    assert_eq!(leased, before.len() as u64, "the first read went by RDMA");
    let (granted, _) = r.data.leases().counts();

    c.data().unwrap().break_rdma_link();
    assert_eq!(c.get(&k("kv/f/before")).await.unwrap().unwrap(), before);
    let after = pattern((2 << 20) + 5, 4);
    assert_eq!(
        c.put(&k("kv/f/after"), after.clone()).await.unwrap().length,
        after.len() as u64
    );
    assert_eq!(c.get(&k("kv/f/after")).await.unwrap().unwrap(), after);
    let (_, part) = c
        .get_range(&k("kv/f/after"), (1 << 20) - 3, Some(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(part, after.slice((1 << 20) - 3..(1 << 20) + 7));
    assert_eq!(
        c.mget(&[k("kv/f/after"), k("kv/f/none"), k("kv/f/before")])
            .await
            .unwrap(),
        vec![Some(after.clone()), None, Some(before.clone())]
    );
    // None of that took a lease or an RDMA transfer.
    assert_eq!(r.data.leases().counts().0, granted);
    assert_eq!(r.data.stats().bytes_leased(), leased);
    assert_eq!(c.data().unwrap().rdma_relinks(), 0);
    assert_eq!(r.data.rdma_links(), 1);
    // A TCP client reads what went in after the break.
    let tcp = client(&r, CarrierChoice::Tcp).await.unwrap();
    assert_eq!(tcp.get(&k("kv/f/after")).await.unwrap().unwrap(), after);
    r.shutdown().await.unwrap();
}

/// A broken RDMA link is set up anew in the background (a new queue pair over
/// gRPC) while calls go over TCP; then reads and writes go by RDMA again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device: scripts/rdma-vm-test.sh runs it in the Soft-RoCE VM"]
async fn a_broken_rdma_link_is_set_up_again() {
    use strata_transport::wire::{Op, Status};
    let dir = tempfile::tempdir().unwrap();
    let r = Server::start(config(dir.path())).await.unwrap();
    assert!(
        r.data.rdma_available(),
        "no RDMA device: run this in the VM"
    );
    let at_once = DataOptions {
        rdma_relink_after: std::time::Duration::ZERO,
        ..DataOptions::default()
    };
    let c = client_with(&r, CarrierChoice::Rdma, at_once).await.unwrap();
    let v = pattern(300_000, 5);
    c.put(&k("kv/g/v"), v.clone()).await.unwrap();
    c.data().unwrap().break_rdma_link();
    // This call goes over TCP, and starts the new link.
    assert_eq!(c.get(&k("kv/g/v")).await.unwrap().unwrap(), v);
    let t = std::time::Instant::now();
    while c.data().unwrap().rdma_relinks() == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "no new link"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(r.data.rdma_links(), 2);
    // By RDMA again: a leased read, and a reserved (in-place) write.
    let leased = r.data.stats().bytes_leased();
    let reserved = r.data.stats().answers(Op::Reserve, Status::Ok);
    assert_eq!(c.get(&k("kv/g/v")).await.unwrap().unwrap(), v);
    assert_eq!(r.data.stats().bytes_leased(), leased + v.len() as u64);
    let w = pattern(1 << 20, 6);
    c.put(&k("kv/g/w"), w.clone()).await.unwrap();
    assert_eq!(
        r.data.stats().answers(Op::Reserve, Status::Ok),
        reserved + 1
    );
    let tcp = client(&r, CarrierChoice::Tcp).await.unwrap();
    assert_eq!(tcp.get(&k("kv/g/w")).await.unwrap().unwrap(), w);
    r.shutdown().await.unwrap();
}

/// Writes beyond DRAM never fail for space over RDMA either: 100 values of 1 MiB
/// into a 64 MiB DRAM tier over NVMe, from one writer and from eight at once, are
/// all stored (RDMA WRITEs into reserved arena extents) and read back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs an RDMA device: scripts/rdma-vm-test.sh runs it in the Soft-RoCE VM"]
async fn writes_past_a_full_dram_are_all_stored_over_rdma() {
    for writers in [1usize, 8] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.dram.capacity = 64 << 20;
        config.nvme.enabled = true;
        config.nvme.capacity = 1 << 30;
        let r = Server::start(config).await.unwrap();
        let c = std::sync::Arc::new(client(&r, CarrierChoice::Rdma).await.unwrap());
        assert_eq!(c.carrier(), Some(Carrier::Rdma));
        let key = move |i: usize| k(&format!("kv/full/{writers}/v{i}"));
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let c = c.clone();
                tokio::spawn(async move {
                    for i in (w..100).step_by(writers) {
                        let put = c.put(&key(i), pattern(1 << 20, i as u8)).await;
                        assert!(put.is_ok(), "{writers} writers: put {i}: {put:?}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..100 {
            let got = c.get(&key(i)).await.unwrap();
            assert!(
                got == Some(pattern(1 << 20, i as u8)),
                "{writers} writers: value {i} read back wrong or absent"
            );
        }
        drop(c);
        r.shutdown().await.unwrap();
    }
}
