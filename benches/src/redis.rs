//! The Redis peer: a `redis-server` child process on a free loopback port, with
//! persistence off, killed when the guard drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::resp::RespConn;

/// A running `redis-server`, stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    addr: String,
    version: String,
}

/// A free loopback port (bound, read, released: another process could take it in
/// between, which on a bench machine does not happen in practice).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) on a free port, `--save '' --appendonly
    /// no`, and waits until it answers `PING`.
    pub async fn start() -> anyhow::Result<Self> {
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .map_err(|e| {
                anyhow::anyhow!(
                    "redis-server is not installed or not on PATH ({e}); \
                     install it with `apt-get install -y redis-server` (scripts/bench.sh does)"
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning redis-server")?;
        let mut me = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            version,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!("redis-server exited at start ({status})");
            }
            if let Ok(mut c) = RespConn::connect(&me.addr).await
                && c.ping().await.is_ok()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                me.stop();
                bail!(
                    "redis-server did not answer PING on {} within 10 s",
                    me.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What `redis-server --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
