//! A minimal RESP2 client for the Redis peer: `PING`, `SET`, `GET`, `MGET` over one
//! `TcpStream`, no dependencies. Each `GET` returns its value as a fresh `Bytes`
//! (one allocation, no zeroing), as Strata's client does, so neither side is
//! favoured by buffer reuse.

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to a Redis server.
#[derive(Debug)]
pub struct RespConn {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl RespConn {
    /// Connects with `TCP_NODELAY`, as every Redis client library does.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
        })
    }

    /// Sends a command as a RESP array of bulk strings.
    async fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut head = format!("*{}\r\n", args.len()).into_bytes();
        let last = args.len().saturating_sub(1);
        for (i, a) in args.iter().enumerate() {
            head.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            if i == last && a.len() > 4096 {
                // A large last argument (a value) is written without copying it.
                self.stream.write_all(&head).await?;
                self.stream.write_all(a).await?;
                self.stream.write_all(b"\r\n").await?;
                return Ok(());
            }
            head.extend_from_slice(a);
            head.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&head).await?;
        Ok(())
    }

    /// Reads one `\r\n`-terminated line (without the terminator).
    async fn line(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let Some(i) = self.rbuf.windows(2).position(|w| w == b"\r\n") {
                let line = self.rbuf.split_to(i).freeze();
                self.rbuf.advance(2);
                return Ok(line);
            }
            if self.rbuf.len() > 64 << 10 {
                bail!("redis reply line longer than 64 KiB");
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(64 << 10);
        }
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            bail!("redis closed the connection");
        }
        Ok(())
    }

    /// Reads a simple-string reply and checks it is `expected`.
    async fn expect_simple(&mut self, expected: &str) -> anyhow::Result<()> {
        let line = self.line().await?;
        if line.as_ref() != format!("+{expected}").as_bytes() {
            bail!(
                "redis answered {:?}, expected +{expected}",
                String::from_utf8_lossy(&line)
            );
        }
        Ok(())
    }

    /// `PING` → `PONG`.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        self.send(&[b"PING"]).await?;
        self.expect_simple("PONG").await
    }

    /// `SET key value`.
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.send(&[b"SET", key, value]).await?;
        self.expect_simple("OK").await
    }

    /// `GET key`: the value, or `None` for a nil reply.
    pub async fn get(&mut self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        self.send(&[b"GET", key]).await?;
        self.bulk().await
    }

    /// `GETRANGE key start end` (inclusive end): `None` for an empty answer, which
    /// is what Redis gives for a missing key.
    pub async fn getrange(
        &mut self,
        key: &[u8],
        start: u64,
        end: u64,
    ) -> anyhow::Result<Option<Bytes>> {
        let (s, e) = (start.to_string(), end.to_string());
        self.send(&[b"GETRANGE", key, s.as_bytes(), e.as_bytes()])
            .await?;
        Ok(self.bulk().await?.filter(|b| !b.is_empty()))
    }

    /// `EXISTS key`.
    pub async fn exists(&mut self, key: &[u8]) -> anyhow::Result<bool> {
        self.send(&[b"EXISTS", key]).await?;
        let line = self.line().await?;
        match line.as_ref() {
            b":1" => Ok(true),
            b":0" => Ok(false),
            other => bail!(
                "redis answered {:?} to EXISTS",
                String::from_utf8_lossy(other)
            ),
        }
    }

    /// `MGET key…`: the values, `None` for each nil.
    pub async fn mget(&mut self, keys: &[&[u8]]) -> anyhow::Result<Vec<Option<Bytes>>> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        args.push(b"MGET");
        args.extend_from_slice(keys);
        self.send(&args).await?;
        let line = self.line().await?;
        let Some(rest) = line.strip_prefix(b"*") else {
            bail!(
                "redis answered {:?} to MGET",
                String::from_utf8_lossy(&line)
            );
        };
        let n: usize = std::str::from_utf8(rest)?.parse()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.bulk().await?);
        }
        Ok(out)
    }

    /// Reads one bulk-string reply into a buffer exactly its size.
    async fn bulk(&mut self) -> anyhow::Result<Option<Bytes>> {
        let line = self.line().await?;
        let Some(rest) = line.strip_prefix(b"$") else {
            bail!("redis answered {:?}", String::from_utf8_lossy(&line));
        };
        let len: i64 = std::str::from_utf8(rest)?.parse()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        // One buffer exactly the value's size (plus its \r\n), filled in place.
        let mut value = BytesMut::with_capacity(len + 2);
        let have = self.rbuf.len().min(len + 2);
        value.extend_from_slice(&self.rbuf.split_to(have));
        while value.len() < len + 2 {
            if self.stream.read_buf(&mut value).await? == 0 {
                bail!("redis closed the connection mid-value");
            }
        }
        if value.len() > len + 2 {
            // More than this reply arrived: keep the rest for the next one.
            let extra = value.split_off(len + 2);
            let mut rest = extra;
            rest.extend_from_slice(&self.rbuf);
            self.rbuf = rest;
        }
        if &value[len..] != b"\r\n" {
            bail!("redis bulk reply not terminated by CRLF");
        }
        value.truncate(len);
        Ok(Some(value.freeze()))
    }
}
