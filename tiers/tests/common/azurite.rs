//! Azurite (the Azure Storage emulator) for tests: installed into `<repo>/.tools`
//! on first use, started on a free port per test, killed on drop. Never skipped:
//! if it cannot be installed or started, the test fails and says why.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the harness"
)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_tiers::blob::AccountSas;
use strata_tiers::{BlobAuth, BlobConfig, BlobTier};

/// Azurite's version, pinned.
pub const AZURITE_VERSION: &str = "3.35.0";
/// The emulator's account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known account key (public, documented by Microsoft).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The newest service version Azurite 3.35 knows.
pub const API_VERSION: &str = "2025-11-05";

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Azurite blob service.
pub struct Azurite {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Child,
    tempdir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root (`tiers/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `azurite-blob` launcher, installing Azurite with npm if it is missing.
pub fn azurite_bin() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let tools = repo_root().join(".tools");
    let bin = tools.join("node_modules/.bin/azurite-blob");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&tools).expect("creating .tools");
    // Serialise installs across test binaries too.
    let lock =
        std::fs::File::create(tools.join(".install.lock")).expect("creating .tools/.install.lock");
    lock_file(&lock);
    if !bin.exists() {
        eprintln!(
            "installing azurite@{AZURITE_VERSION} into {}",
            tools.display()
        );
        let out = Command::new("npm")
            .args(["install", "--prefix"])
            .arg(&tools)
            .args([&format!("azurite@{AZURITE_VERSION}"), "--no-audit", "--no-fund"])
            .output()
            .unwrap_or_else(|e| panic!("Azurite is not installed and `npm` could not run ({e}); install Node.js and npm"));
        assert!(
            out.status.success() && bin.exists(),
            "`npm install azurite@{AZURITE_VERSION}` failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

fn lock_file(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock on .tools/.install.lock: {}",
        std::io::Error::last_os_error()
    );
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

impl Azurite {
    /// Starts a fresh, empty Azurite blob service and waits until it accepts
    /// connections. Panics with its log if it does not within 30 s.
    pub fn start() -> Self {
        let bin = azurite_bin();
        let mut last_log = String::new();
        // A port picked free can be taken before Azurite binds it: try a few.
        for _ in 0..3 {
            let tempdir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let log_path = tempdir.path().join("azurite.log");
            let log = std::fs::File::create(&log_path).expect("creating the Azurite log");
            let child = Command::new(&bin)
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--location",
                ])
                .arg(tempdir.path().join("data"))
                .args([
                    "--silent",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--loose",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut azurite = Azurite {
                port,
                child,
                tempdir,
            };
            let started = Instant::now();
            loop {
                // Its own word, not a connect: another test's process may have
                // taken the port first (Azurite then exits).
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if std::fs::read_to_string(&log_path)
                    .is_ok_and(|l| l.contains("successfully listens"))
                    && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                {
                    return azurite;
                }
                if let Ok(Some(_)) = azurite.child.try_wait() {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                if started.elapsed() > START_TIMEOUT {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!(
                        "Azurite did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}; its log:\n{log}"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("Azurite exited before listening (3 tries); its last log:\n{last_log}");
    }

    /// The account's blob endpoint, path-style.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// An account SAS (blob service, all resource types, `rwdlac`) valid for a day,
    /// signed with the well-known key.
    pub fn sas(&self) -> String {
        AccountSas::new(ACCOUNT, Duration::from_secs(86_400))
            .sign(ACCOUNT_KEY)
            .expect("signing the SAS")
    }

    /// A tier configuration for `container` on this emulator, authenticated by SAS.
    pub fn config(&self, container: &str) -> BlobConfig {
        let mut config = BlobConfig::new(
            self.endpoint(),
            container,
            BlobAuth::Sas { token: self.sas() },
        );
        config.api_version = Some(API_VERSION.into());
        config
    }

    /// A tier on `container`, which is created if missing.
    pub async fn tier(&self, container: &str) -> BlobTier {
        let tier = BlobTier::open(self.config(container))
            .await
            .expect("opening the blob tier");
        tier.ensure_container()
            .await
            .expect("creating the container");
        tier
    }

    /// Azurite's data directory.
    pub fn dir(&self) -> &Path {
        self.tempdir.path()
    }
}
