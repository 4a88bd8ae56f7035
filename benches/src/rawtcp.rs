//! The loopback limits: a raw request/response server that answers an 8-byte
//! request with `len` bytes of a value it holds, and its client, over TCP or a Unix
//! socket. No framing, no parsing, no copies beyond the kernel's: what any protocol
//! over the same socket on this machine can approach, measured with the same runner
//! and the same number of connections as the protocols it bounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// A raw request/response server, stopped on drop.
#[derive(Debug)]
pub struct RawServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, value: Bytes) {
    let mut req = [0u8; 8];
    while sock.read_exact(&mut req).await.is_ok() {
        let n = (u64::from_le_bytes(req) as usize).min(value.len());
        if sock.write_all(&value[..n]).await.is_err() {
            return;
        }
    }
}

impl RawServer {
    /// Binds `127.0.0.1:0` and serves `value` (a request asks for a prefix of it).
    /// Must run inside a tokio runtime; the server's tasks run on it.
    pub async fn start(value: Bytes) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve(sock, value.clone()));
            }
        });
        Ok(Self { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The same server on a Unix socket.
#[derive(Debug)]
pub struct RawUnixServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl RawUnixServer {
    /// Binds `path` and serves `value`.
    pub async fn start(path: &Path, value: Bytes) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, value.clone()));
            }
        });
        Ok(Self {
            path: path.to_owned(),
            task,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RawUnixServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client connection to a [`RawServer`] or a [`RawUnixServer`].
#[derive(Debug)]
pub struct RawConn<S = TcpStream> {
    stream: S,
}

impl RawConn<TcpStream> {
    /// Connects with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }
}

impl RawConn<UnixStream> {
    /// Connects to a [`RawUnixServer`].
    pub async fn connect_unix(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            stream: UnixStream::connect(path).await?,
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    /// Asks for `len` bytes and reads them into a fresh buffer.
    pub async fn get(&mut self, len: usize) -> anyhow::Result<Bytes> {
        self.stream.write_all(&(len as u64).to_le_bytes()).await?;
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            if self.stream.read_buf(&mut buf).await? == 0 {
                bail!("raw server closed the connection");
            }
        }
        Ok(buf.freeze())
    }
}
