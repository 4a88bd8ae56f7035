//! Shutdown while writes are in flight: the server waits for its data
//! connections to finish what they have in flight (COMMITs writing their values)
//! before it closes the tiers, so every put it acknowledged is there after a
//! restart on the same data directory, and every connection task has ended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_server::config::Config;
use strata_server::{Server, testing};
use strata_tiers::Key;
use strata_transport::data::{CarrierChoice, DataOptions};
use strata_transport::{Client, ClientOptions};

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.dram.capacity = 256 << 20;
    c.nvme = Default::default();
    c.nvme.capacity = 1 << 30;
    c.store = Default::default();
    c
}

fn value(i: usize) -> Bytes {
    Bytes::from(vec![i as u8 ^ 0x5a; (4 << 20) + i])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_a_shutdown_that_races_them() {
    let dir = tempfile::tempdir().unwrap();
    for carrier in [CarrierChoice::Tcp, CarrierChoice::Shm] {
        let running = Server::start(config(dir.path())).await.unwrap();
        let data = running.data.clone();
        let c = Arc::new(
            Client::connect(
                &running.addr.to_string(),
                ClientOptions {
                    data: DataOptions {
                        carrier,
                        connections: 4,
                        ..DataOptions::default()
                    },
                    ..ClientOptions::default()
                },
            )
            .await
            .unwrap(),
        );
        let key = move |i: usize| Key::parse_path(&format!("kv/shutdown/{carrier:?}/{i}")).unwrap();
        let puts: Vec<_> = (0..16)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.put(&key(i), value(i)).await.is_ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        running.shutdown().await.unwrap();
        assert_eq!(data.connection_tasks(), 0, "every connection task ended");
        let mut acked = Vec::new();
        for (i, p) in puts.into_iter().enumerate() {
            if p.await.unwrap() {
                acked.push(i);
            }
        }
        drop(c);
        // The same directory again: what was acknowledged was kept.
        let running = Server::start(config(dir.path())).await.unwrap();
        let c = Client::connect(&running.addr.to_string(), ClientOptions::default())
            .await
            .unwrap();
        for &i in &acked {
            let got = c.get(&key(i)).await.unwrap();
            assert!(
                got.as_ref() == Some(&value(i)),
                "{carrier:?}: put {i} was acknowledged but reads back {}",
                if got.is_none() { "absent" } else { "changed" }
            );
        }
        eprintln!(
            "{carrier:?}: {} of 16 puts acknowledged before the shutdown",
            acked.len()
        );
        running.shutdown().await.unwrap();
    }
}
