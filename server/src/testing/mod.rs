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

pub mod conn_fuzz;
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

/// A `strata-server` process (the binary under test, `bin`), started with its
/// listeners on 127.0.0.1 port 0 and its data under `dir`, its log (standard
/// output and error) appended to `log`. `args` and `env` add to those. Killed
/// when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: std::process::Child,
    /// The gRPC address it printed.
    pub grpc: String,
    /// The `/metrics` address it printed.
    pub metrics: std::net::SocketAddr,
    /// The data path's TCP address it printed, if that is on.
    pub data: Option<String>,
}

impl ServerProcess {
    /// Starts it and waits for its "listening" line.
    pub fn start(bin: &Path, dir: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", bin, dir, log, args, env)
    }

    /// As [`Self::start`], its listeners on `ip` (an address of this machine).
    pub fn start_on(
        ip: &str,
        bin: &Path,
        dir: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let listen = format!("{ip}:0");
        let mut child = std::process::Command::new(bin)
            .args(["--listen", &listen, "--metrics-listen", &listen])
            .args(["--data-listen", &listen])
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("STRATA_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("log file"),
            )
            .spawn()
            .expect("spawn strata-server");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (grpc, metrics, data) = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                other => {
                    let _ = child.kill();
                    panic!(
                        "strata-server exited before listening: {other:?}, {:?}; log {}:\n{}",
                        child.wait(),
                        log.display(),
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("strata-server listening: grpc ") {
                let grpc = rest.split_whitespace().next().expect("address").to_owned();
                let metrics = rest
                    .split("http://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse().ok())
                    .expect("metrics address");
                let data = rest
                    .split("data path tcp ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|a| *a != "off")
                    .map(str::to_owned);
                break (grpc, metrics, data);
            }
        };
        // Its later output goes on to the log file.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("log file");
        std::thread::spawn(move || {
            use std::io::Write;
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
            }
        });
        Self {
            child,
            grpc,
            metrics,
            data,
        }
    }

    /// Its exit status, if it has exited (it has not been waited for yet).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits for it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM (a graceful stop), and waits up to `within` for it to exit.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "strata-server did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd (Debian's `etcd-server`, which `scripts/test.sh` installs) on
/// 127.0.0.1 ports of the kernel's choosing, its data in a temporary directory.
/// Killed and removed when dropped.
#[derive(Debug)]
pub struct EtcdProcess {
    child: std::process::Child,
    /// Its client URL (`http://127.0.0.1:PORT`, or the address it was started on).
    pub url: String,
    _dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// Starts it and waits until it answers (30 s at most: a loaded machine
    /// starting several at once).
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// As [`Self::start`], listening on `ip` (an address of this machine, such as
    /// one end of a test's veth pair).
    pub async fn start_on(ip: &str) -> Self {
        let free = || {
            std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let (client, peer) = (free(), free());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("etcd");
        let child = std::process::Command::new(bin)
            .args(["--name", "strata-test"])
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("strata-test={peer_url}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting etcd ({bin}: {e}); scripts/test.sh installs Debian's etcd-server")
            });
        let me = Self {
            child,
            url,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if crate::cluster::etcd::Etcd::connect(
                std::slice::from_ref(&me.url),
                Duration::from_millis(500),
            )
            .await
            .is_ok()
            {
                return me;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not answer at {} within 30 s",
                me.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of it.
    pub async fn client(&self) -> crate::cluster::etcd::Etcd {
        crate::cluster::etcd::Etcd::connect(std::slice::from_ref(&self.url), Duration::from_secs(5))
            .await
            .expect("etcd answers")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The length of the file behind `fd` (the arena a shared-memory client is given).
pub fn fd_len(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: plain data, then a valid descriptor and out-pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_size as u64
}

/// A client's own shared, writable mapping of the arena (as the real client maps
/// it), unmapped on drop.
#[derive(Debug)]
pub struct ArenaMap {
    p: *mut u8,
    len: usize,
}

impl ArenaMap {
    /// Maps the whole file behind `fd`.
    pub fn new(fd: &std::os::fd::OwnedFd) -> Self {
        use std::os::fd::AsRawFd;
        let len = fd_len(fd) as usize;
        // SAFETY: mapping a descriptor we hold, for its length; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mapping the arena");
        Self { p: p.cast(), len }
    }

    /// The bytes of extent `e`.
    pub fn slice(&mut self, e: &strata_transport::wire::Extent) -> &mut [u8] {
        assert!(e.offset + e.len <= self.len as u64);
        // SAFETY: inside the mapping; the test is its only user in this process.
        unsafe { std::slice::from_raw_parts_mut(self.p.add(e.offset as usize), e.len as usize) }
    }
}

impl Drop for ArenaMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.p.cast(), self.len) };
    }
}
