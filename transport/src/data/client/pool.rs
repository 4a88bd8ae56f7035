//! The connection pool and one request's round trip: opening connections, the
//! reader task that pairs answers with requests, sending with a deadline, retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;

use super::*;
use crate::data::io::write_all_vectored;
use crate::wire::{
    FEATURE_FLAGS, FEATURE_PEER, FLAG_PEER, HEADER_LEN, Header, Limits, Request, Status,
    request_frame_within, response,
};

/// An answer frame.
pub(super) struct Frame {
    pub(super) header: Header,
    pub(super) meta: Bytes,
    pub(super) data: Bytes,
    /// When its header came in: leases in it are timed from here.
    pub(super) arrived: Instant,
}

pub(super) type Pending = Mutex<HashMap<u64, oneshot::Sender<Frame>>>;

/// One multiplexed connection.
pub(super) struct Conn {
    pub(super) writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pub(super) pending: Arc<Pending>,
    pub(super) broken: Arc<AtomicBool>,
    pub(super) reader: tokio::task::JoinHandle<()>,
    /// Whether the server takes the DEADLINE flag (its HELLO said so): each
    /// request then carries the caller's time left.
    pub(super) deadlines: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Client-side limits: answers may carry up to 4 GiB of data (an MGET).
pub(super) fn client_limits() -> Limits {
    Limits {
        max_meta: 16 << 20,
        max_data: 4 << 30,
    }
}

impl DataClient {
    /// A connection of the pool (round-robin), opened or reopened as needed.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let mut slot = self.inner.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && !c.broken.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let c = Arc::new(match self.inner.carrier {
            Carrier::Tcp | Carrier::Rdma => {
                let addr = self.inner.endpoint.tcp.as_deref().unwrap_or_default();
                open_tcp(addr).await?
            }
            Carrier::Shm => {
                let path = self.inner.endpoint.unix.clone().unwrap_or_default();
                let (conn, fd) = open_unix(&path).await?;
                // A server that restarted behind the same socket has another arena:
                // writing into the old mapping would be writing into nothing it
                // reads. This client is done; a new one maps the new arena.
                if let Some(m) = &self.inner.mapping
                    && !m.maps(&fd).unwrap_or(false)
                {
                    conn.reader.abort();
                    return Err(ClientError::Connect {
                        addr: path.display().to_string(),
                        message: "the server restarted (its shared-memory arena is another \
                                  one): connect a new client"
                            .into(),
                    });
                }
                conn
            }
        });
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Whether the server serves `op` (its HELLO answer's op set). An op the server
    /// does not know would be a broken header to it, ending the connection and every
    /// call in flight on it, so such a call fails here, before anything is sent.
    pub(super) fn serves(&self, op: Op) -> Result<()> {
        if self.inner.hello.ops & op.bit() == 0 {
            return Err(ClientError::Unsupported(op));
        }
        Ok(())
    }

    /// Sends one request with `data` and waits for its answer (one attempt). Leases
    /// waiting to be released ride along in the same write.
    pub(super) async fn call(
        &self,
        req: &Request,
        flags: u16,
        data: Option<&[u8]>,
    ) -> Result<Frame> {
        self.serves(req.op())?;
        let flags = if self.inner.options.peer && self.inner.hello.ops & FEATURE_PEER != 0 {
            flags | FLAG_PEER
        } else {
            flags
        };
        let conn = self.conn().await?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = self.release_frame();
        send(
            &conn,
            id,
            flags,
            req,
            data,
            self.inner.options.timeout,
            prefix,
        )
        .await
    }

    /// Runs an idempotent call with retries on transient errors.
    pub(super) async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // The deadline bounds the whole call, retries and backoff included (each
        // attempt also has it as its own limit).
        let o = &self.inner.options;
        tokio::time::timeout(o.timeout, crate::error::retry(o.attempts, o.backoff, f))
            .await
            .unwrap_or(Err(ClientError::Timeout(o.timeout)))
    }
}

pub(super) async fn open_tcp(addr: &str) -> Result<Conn> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    Ok(start_conn(r, Box::new(w)))
}

pub(super) async fn open_unix(path: &std::path::Path) -> Result<(Conn, std::os::fd::OwnedFd)> {
    let connect_err = |e: std::io::Error| ClientError::Connect {
        addr: path.display().to_string(),
        message: e.to_string(),
    };
    let s = UnixStream::connect(path).await.map_err(connect_err)?;
    let fd = shm::recv_fd(&s).await.map_err(connect_err)?;
    let (r, w) = s.into_split();
    Ok((start_conn(r, Box::new(w)), fd))
}

pub(super) fn start_conn<R: AsyncRead + Send + Unpin + 'static>(
    r: R,
    w: Box<dyn AsyncWrite + Send + Unpin>,
) -> Conn {
    let pending: Arc<Pending> = Arc::default();
    let broken = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_loop(r, pending.clone(), broken.clone()));
    Conn {
        writer: tokio::sync::Mutex::new(w),
        pending,
        broken,
        reader,
        deadlines: AtomicBool::new(false),
    }
}

/// How far ahead of the bytes that arrived an answer's buffer is allocated.
pub(super) const ANSWER_CHUNK: u64 = 64 << 20;

pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    r: R,
    pending: Arc<Pending>,
    broken: Arc<AtomicBool>,
) {
    let mut r = BufReader::with_capacity(64 << 10, r);
    let limits = client_limits();
    let res: std::io::Result<()> = async {
        loop {
            let mut hb = [0u8; HEADER_LEN];
            r.read_exact(&mut hb).await?;
            let arrived = Instant::now();
            let header = Header::decode(&hb, &limits)
                .and_then(|h| h.check_response().map(|()| h))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut meta = BytesMut::zeroed(header.meta_len as usize);
            r.read_exact(&mut meta).await?;
            // The buffer grows with what arrives, at most `ANSWER_CHUNK` ahead of it:
            // a header alone (from a broken or hostile server) cannot make this
            // process allocate gigabytes.
            // (`reserve_exact`: a doubling buffer could keep twice the answer.)
            let want = header.data_len;
            let mut data = Vec::<u8>::with_capacity(want.min(ANSWER_CHUNK) as usize);
            while (data.len() as u64) < want {
                let left = want - data.len() as u64;
                data.reserve_exact(left.min(ANSWER_CHUNK) as usize);
                if r.read_buf(&mut (&mut data).limit(left as usize)).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let tx = pending.lock().remove(&header.id);
            if let Some(tx) = tx {
                let _ = tx.send(Frame {
                    header,
                    meta: meta.freeze(),
                    data: Bytes::from(data),
                    arrived,
                });
            }
        }
    }
    .await;
    broken.store(true, Ordering::Release);
    // Dropping the senders fails every pending call.
    pending.lock().clear();
    if let Err(e) = res {
        tracing::debug!(error = %e, "data connection closed");
    }
}

/// Sends a request on `conn` and waits for its answer, mapping error statuses.
pub(super) async fn send(
    conn: &Conn,
    id: u64,
    flags: u16,
    req: &Request,
    data: Option<&[u8]>,
    timeout: Duration,
    prefix: Option<Bytes>,
) -> Result<Frame> {
    let data = data.unwrap_or_default();
    // The server gets the same deadline, so that it stops working for a caller
    // that has stopped waiting (origin reads included).
    let budget = conn.deadlines.load(Ordering::Relaxed).then_some(timeout);
    let frame = request_frame_within(id, flags, req, data.len() as u64, budget);
    let prefix = prefix.unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    conn.pending.lock().insert(id, tx);
    // Whoever drops this call (a caller that gives up, a deadline around a whole
    // call) leaves the connection in step: the id is forgotten, and a frame cut off
    // mid-write marks the connection broken, so that no other frame follows it.
    let guard = InFlight {
        conn,
        id,
        writing: AtomicBool::new(false),
    };
    let io = async {
        {
            let mut w = conn.writer.lock().await;
            guard.writing.store(true, Ordering::Relaxed);
            if let Err(e) = write_all_vectored(&mut *w, &[&prefix, &frame, data]).await {
                conn.broken.store(true, Ordering::Release);
                return Err(ClientError::Io(e));
            }
            guard.writing.store(false, Ordering::Relaxed);
        }
        rx.await.map_err(|_| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the data connection closed before the answer",
            ))
        })
    };
    let f = match tokio::time::timeout(timeout, io).await {
        Ok(r) => r,
        Err(_) => {
            conn.pending.lock().remove(&id);
            // The request may be half-written: this stream is no longer in step.
            conn.broken.store(true, Ordering::Release);
            Err(ClientError::Timeout(timeout))
        }
    }?;
    if f.header.status != Status::Ok {
        return Err(ClientError::Data {
            op: f.header.op,
            status: f.header.status,
            message: response::decode_error(&f.meta),
        });
    }
    Ok(f)
}

/// A request on its way: see [`send`].
pub(super) struct InFlight<'a> {
    conn: &'a Conn,
    id: u64,
    writing: AtomicBool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.writing.load(Ordering::Relaxed) {
            self.conn.broken.store(true, Ordering::Release);
        }
        // Answered calls were taken out by the reader already; this is for the rest.
        self.conn.pending.lock().remove(&self.id);
    }
}

pub(super) async fn hello(conn: &Conn, host_id: &str, timeout: Duration) -> Result<HelloInfo> {
    let req = Request::Hello {
        host_id: host_id.to_owned(),
    };
    let f = send(conn, 0, 0, &req, None, timeout, None).await?;
    let info = response::decode_hello(&f.meta).map_err(proto)?;
    conn.deadlines
        .store(info.ops & FEATURE_FLAGS != 0, Ordering::Relaxed);
    Ok(info)
}
