//! The data path (binary TCP and shared memory) of the real server on 127.0.0.1:0,
//! driven by the real client, plus raw frames for what a well-behaved client never
//! sends: one test binary, one module per concern, on the server's shared harness
//! (`strata_server::testing`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_server::config::{ByteSize, Config};
use strata_server::data::Listener;
use strata_server::testing::{self, k, pattern, raw_call, raw_read, sample, scrape, within_5s};
use strata_server::{Running, Server};
use strata_transport::data::{Carrier, CarrierChoice, DataOptions};
use strata_transport::wire::{
    FLAG_LEASE, HEADER_LEN, Header, KeyRange, Op, Request, Status, request_frame, response,
};
use strata_transport::{Client, ClientError, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

mod carriers;
mod faults;
mod frames;
mod fuzz_conn;
mod hostile;
mod leases;
mod limits;
mod metrics;

/// The harness's server with the data path's settings: no NVMe tier (values stay
/// in the arena the carriers lease), leases of `lease_ttl_ms`.
fn config(dir: &std::path::Path, lease_ttl_ms: u64) -> Config {
    let mut c = testing::config(dir);
    c.data.lease_ttl_ms = lease_ttl_ms;
    c.nvme.enabled = false;
    c
}

async fn client(r: &Running, carrier: CarrierChoice, connections: usize) -> Client {
    testing::client(r, testing::options(Some(carrier), connections)).await
}

/// Everything the client offers, over one carrier.
async fn exercise(c: &Client) {
    let small = pattern(1000, 1);
    let big = pattern((2 << 20) + 12345, 2); // three pages
    assert_eq!(
        c.put(&k("kv/t/small"), small.clone()).await.unwrap().length,
        1000
    );
    assert_eq!(
        c.put(&k("kv/t/big"), big.clone()).await.unwrap().length,
        big.len() as u64
    );
    assert_eq!(c.get(&k("kv/t/small")).await.unwrap().unwrap(), small);
    assert_eq!(c.get(&k("kv/t/big")).await.unwrap().unwrap(), big);
    // A range across a page boundary.
    let (info, part) = c
        .get_range(&k("kv/t/big"), (1 << 20) - 7, Some(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.total_length, big.len() as u64);
    assert_eq!(part, big.slice((1 << 20) - 7..(1 << 20) + 93));
    // The same range handed to a reader (over shm: straight out of the leased
    // arena, across the page edge), in pieces and with a skip.
    let (total, piece) = c
        .get_range_with(&k("kv/t/big"), (1 << 20) - 7, Some(100), |total, r| {
            let mut out = vec![0u8; 90];
            r.read_exact(&mut out[..5]).unwrap();
            r.skip(10).unwrap();
            r.read_exact(&mut out[5..]).unwrap();
            assert_eq!(r.remaining(), 0);
            (total, out)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, big.len() as u64);
    assert_eq!(&piece[..5], &big[(1 << 20) - 7..(1 << 20) - 2]);
    assert_eq!(&piece[5..], &big[(1 << 20) + 8..(1 << 20) + 93]);
    assert!(
        c.get_range_with(&k("kv/t/none"), 0, None, |_, _| 0u8)
            .await
            .unwrap()
            .is_none()
    );
    // MGET_RANGE: a range across a page edge, a miss, a range past the end (its
    // own error), and a whole value; each present range handed to the reader.
    let ranges = [
        KeyRange {
            key: k("kv/t/big"),
            offset: (1 << 20) - 7,
            length: Some(100),
        },
        KeyRange {
            key: k("kv/t/none"),
            offset: 0,
            length: None,
        },
        KeyRange {
            key: k("kv/t/small"),
            offset: 2000,
            length: Some(1),
        },
        KeyRange {
            key: k("kv/t/small"),
            offset: 0,
            length: None,
        },
    ];
    let got = c
        .mget_range_with(&ranges, |i, r| {
            let mut v = vec![0u8; r.remaining() as usize];
            r.read_exact(&mut v).unwrap();
            (i, v)
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].as_ref().unwrap().as_ref().unwrap(),
        &(0, big[(1 << 20) - 7..(1 << 20) + 93].to_vec())
    );
    assert!(got[1].as_ref().unwrap().is_none(), "a miss");
    assert!(
        matches!(
            got[2],
            Err(ClientError::Data {
                status: Status::Range,
                ..
            })
        ),
        "{:?}",
        got[2]
    );
    assert_eq!(
        got[3].as_ref().unwrap().as_ref().unwrap(),
        &(3, small.to_vec())
    );
    // MGET: hits and a miss, in order.
    let got = c
        .mget(&[k("kv/t/big"), k("kv/t/none"), k("kv/t/small")])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(big.clone()), None, Some(small.clone())]);
    assert_eq!(
        c.match_prefix(&[
            k("kv/t/small"),
            k("kv/t/big"),
            k("kv/t/none"),
            k("kv/t/small")
        ])
        .await
        .unwrap(),
        2
    );
    // Overwrite, then delete.
    let small2 = pattern(3000, 9);
    c.put(&k("kv/t/small"), small2.clone()).await.unwrap();
    assert_eq!(c.get(&k("kv/t/small")).await.unwrap().unwrap(), small2);
    assert!(c.delete(&k("kv/t/small")).await.unwrap());
    assert!(!c.delete(&k("kv/t/small")).await.unwrap());
    assert!(c.get(&k("kv/t/small")).await.unwrap().is_none());
    // Errors are per request.
    let e = c
        .get_range(&k("kv/t/big"), big.len() as u64 + 1, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Data {
                status: Status::Range,
                ..
            }
        ),
        "{e}"
    );
    let e = c
        .put(&k("kv/t/huge"), Bytes::from(vec![0u8; 300 << 20]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Data {
                status: Status::Invalid | Status::TooLarge,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        c.get(&k("kv/t/big")).await.unwrap().unwrap(),
        big,
        "still serving"
    );
}
