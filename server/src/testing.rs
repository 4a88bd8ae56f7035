//! The test harness every crate's tests start real servers with (the server's own,
//! the CLI's, the KV connector's): one loopback configuration, clients by carrier,
//! deterministic values, raw frames for what a well-behaved client never sends,
//! and `/metrics` scrapes. Not part of the API: it may change with the tests.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_tiers::Key;
use strata_transport::data::{CarrierChoice, DataOptions};
use strata_transport::wire::{HEADER_LEN, Header, Limits};
use strata_transport::{Client, ClientOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;
use crate::{Running, Server};

/// A server for a test: every listener on 127.0.0.1 with a port of the kernel's
/// choosing, its files under `dir`, 32 MiB of DRAM, 64 MiB of NVMe in 2 MiB blocks,
/// and 1 MiB pages. Tests change what they are about.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = "127.0.0.1:0".into();
    c.data.listen = "127.0.0.1:0".into();
    c.data_dir = dir.to_path_buf();
    c.dram.capacity = 32 << 20;
    c.nvme.capacity = 64 << 20;
    c.nvme.block_size = 2 << 20;
    c.nvme.buffer_pool_size = 8 << 20;
    c.store.page_size = 1 << 20;
    c
}

/// Starts a server on `config`.
pub async fn start(config: Config) -> Running {
    Server::start(config).await.expect("the test server starts")
}

/// Client settings: values over the data path with `carrier` (`None`: over gRPC
/// only), a pool of `connections`.
pub fn options(carrier: Option<CarrierChoice>, connections: usize) -> ClientOptions {
    ClientOptions {
        data_path: carrier.is_some(),
        data: DataOptions {
            carrier: carrier.unwrap_or_default(),
            connections,
            ..DataOptions::default()
        },
        ..ClientOptions::default()
    }
}

/// A client of `r` with `options`.
pub async fn client(r: &Running, options: ClientOptions) -> Client {
    Client::connect(&r.addr.to_string(), options)
        .await
        .expect("the test client connects")
}

/// A key from its path form (`ns/a/b`).
pub fn k(path: &str) -> Key {
    Key::parse_path(path).expect("a valid key path")
}

/// `len` bytes that differ for every `seed` and every offset mod 256.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a raw request and reads its answer (header, meta, data).
pub async fn raw_call<S>(s: &mut S, frame: &[u8], data: &[u8]) -> (Header, Bytes, Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(frame).await.unwrap();
    s.write_all(data).await.unwrap();
    raw_read(s).await
}

/// Reads one answer frame (header, meta, data).
pub async fn raw_read<S: AsyncRead + Unpin>(s: &mut S) -> (Header, Bytes, Bytes) {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).await.unwrap();
    let h = Header::decode(&hb, &Limits::default()).unwrap();
    let mut meta = BytesMut::zeroed(h.meta_len as usize);
    s.read_exact(&mut meta).await.unwrap();
    let mut data = BytesMut::zeroed(h.data_len as usize);
    s.read_exact(&mut data).await.unwrap();
    (h, meta.freeze(), data.freeze())
}

/// Waits (polling every 20 ms) until `done`, failing the test after 5 s.
pub async fn within_5s(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 5 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's `/metrics` page, headers included.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
pub fn sample(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
        .parse()
        .unwrap()
}
