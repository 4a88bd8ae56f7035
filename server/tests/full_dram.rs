//! Writes beyond DRAM never fail for space: 100 values of 1 MiB into a 64 MiB DRAM
//! tier over a 1 GiB NVMe tier, one after another and from 8 writers at once, over
//! every carrier (shared memory, TCP, gRPC; RDMA in the Soft-RoCE VM's tests), are
//! all stored and read back intact. A cache that is full evicts or demotes to make
//! room; it does not refuse the write.

use std::sync::Arc;

use bytes::Bytes;
use strata_server::config::Config;
use strata_server::testing;
use strata_server::{Running, Server};
use strata_tiers::Key;
use strata_transport::Client;
use strata_transport::data::CarrierChoice;

const VALUES: usize = 100;
const MIB: usize = 1 << 20;

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.dram.capacity = 64 << 20;
    c.nvme = Default::default();
    c.nvme.capacity = 1 << 30;
    c.store = Default::default();
    c
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Shm,
    Tcp,
    Grpc,
}

async fn client(r: &Running, via: Via) -> Client {
    let carrier = match via {
        Via::Shm => Some(CarrierChoice::Shm),
        Via::Tcp => Some(CarrierChoice::Tcp),
        Via::Grpc => None,
    };
    testing::client(r, testing::options(carrier, 2)).await
}

fn value(i: usize) -> Bytes {
    let mut v = vec![0u8; MIB];
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for w in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    Bytes::from(v)
}

fn key(via: Via, writers: usize, i: usize) -> Key {
    Key::parse_path(&format!("kv/full/{via:?}-{writers}/v{i}")).unwrap()
}

/// Puts the values from `writers` tasks at once (value i by writer i % writers),
/// then reads every one back.
async fn fill_and_check(via: Via, writers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::start(config(dir.path())).await.unwrap();
    let c = Arc::new(client(&running, via).await);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (w..VALUES).step_by(writers) {
                    let stored = c.put(&key(via, writers, i), value(i)).await;
                    assert!(
                        stored.is_ok(),
                        "{via:?}, {writers} writers: put {i}: {stored:?}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..VALUES {
        let got = c.get(&key(via, writers, i)).await.unwrap();
        assert!(
            got.as_ref() == Some(&value(i)),
            "{via:?}, {writers} writers: value {i} read back {}",
            match got {
                None => "absent".to_string(),
                Some(b) => format!("changed ({} bytes)", b.len()),
            }
        );
    }
    drop(c);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_shared_memory_one_writer() {
    fill_and_check(Via::Shm, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_shared_memory_eight_writers() {
    fill_and_check(Via::Shm, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tcp_one_writer() {
    fill_and_check(Via::Tcp, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tcp_eight_writers() {
    fill_and_check(Via::Tcp, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_one_writer() {
    fill_and_check(Via::Grpc, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_eight_writers() {
    fill_and_check(Via::Grpc, 8).await;
}
