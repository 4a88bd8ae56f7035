//! One connection: frames read into a buffer (cancel-safe), requests run
//! concurrently, answers written as soon as each is ready.

use std::task::Poll;

use super::upload::{OpenReservations, Sink};
use super::*;

/// One answer, ready to write.
pub(super) struct Out {
    pub(super) op: Op,
    pub(super) status: Status,
    /// Bytes of `data`.
    pub(super) data_len: u64,
    pub(super) header: [u8; HEADER_LEN],
    pub(super) meta: Bytes,
    pub(super) data: Vec<Bytes>,
    /// The answer's share of the read budget, let go once it is written.
    pub(super) held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Out {
    pub(super) fn ok(op: Op, id: u64, meta: BytesMut, data: Vec<Bytes>) -> Self {
        let len = data.iter().map(|d| d.len() as u64).sum();
        Self {
            op,
            status: Status::Ok,
            data_len: len,
            header: Header::response(op, id, Status::Ok, meta.len(), len).encode(),
            meta: meta.freeze(),
            data,
            held: None,
        }
    }

    pub(super) fn err(op: Op, id: u64, status: Status, message: String) -> Self {
        let meta = Bytes::from(message.into_bytes());
        Self {
            op,
            status,
            data_len: 0,
            header: Header::response(op, id, status, meta.len(), 0).encode(),
            meta,
            data: Vec::new(),
            held: None,
        }
    }

    pub(super) fn u64(op: Op, id: u64, v: u64) -> Self {
        let mut m = BytesMut::with_capacity(8);
        response::encode_u64(&mut m, v);
        Self::ok(op, id, m, Vec::new())
    }
}

/// Maps an engine error to a wire status (the one table, `crate::status`).
pub(super) fn status_of(e: &Error) -> Status {
    crate::status::wire_status(e)
}

pub(super) fn fail(op: Op, id: u64, e: Error) -> Out {
    Out::err(op, id, status_of(&e), e.to_string())
}

/// Writes an answer: header, metadata and data slices in vectored writes. A peer
/// that takes no bytes for `stall` is given up on (its answer's arena bytes would
/// stay pinned for as long as it waits).
pub(super) async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &Out,
    stall: Duration,
) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + out.data.len());
    parts.push(&out.header);
    if !out.meta.is_empty() {
        parts.push(&out.meta);
    }
    parts.extend(out.data.iter().filter(|d| !d.is_empty()).map(|d| &d[..]));
    write_all_vectored_within(stream, &parts, Some(stall)).await
}

impl DataServer {
    pub(super) async fn serve_conn<S>(
        self: Arc<Self>,
        mut stream: S,
        caller: Caller,
        shutdown: CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + AsFd + Unpin,
    {
        let mut buf = BytesMut::with_capacity(256 << 10);
        let mut inflight: FuturesUnordered<BoxFuture<'static, Out>> = FuturesUnordered::new();
        let mut open = OpenReservations {
            map: HashMap::new(),
            server: self.clone(),
        };
        let reservations = &mut open.map;
        let mut sink: Option<Sink> = None;
        let mut eof = false;
        // When the client stopped sending (EOF): its requests in flight get a
        // lease lifetime more to be answered, then the connection, and its place,
        // goes (a closed client's hung requests do not hold it for ever).
        let mut eof_at: Option<Instant> = None;
        // When bytes last came in or went out.
        let mut progress = Instant::now();
        // At the in-flight cap, a frame that has to wait for room (one with data,
        // or one that was not answered at once) is left in the buffer, and reading
        // stops until answers have gone out.
        let mut parked: bool;
        loop {
            parked = false;
            // Take every whole frame (and every data byte) the buffer holds.
            loop {
                if let Some(s) = sink.as_mut() {
                    if buf.is_empty() {
                        break;
                    }
                    match s {
                        Sink::Discard { remaining } => {
                            let n = (*remaining).min(buf.len() as u64);
                            buf.advance(n as usize);
                            *remaining -= n;
                        }
                        Sink::Reservation { up, remaining, .. } => {
                            let n = (*remaining).min(buf.len() as u64) as usize;
                            let chunk = buf.split_to(n);
                            if let Err(e) = up.res.write(&chunk) {
                                // Cannot happen (lengths were checked); fail loudly.
                                return Err(std::io::Error::other(e.to_string()));
                            }
                            *remaining -= n as u64;
                        }
                    }
                    if let Some(done) = self.finish_sink(&mut sink, reservations) {
                        inflight.push(done);
                    }
                    continue;
                }
                // At the in-flight cap, a read is still taken: answered if it can
                // be at once (a DRAM hit, say), `Busy` if it would wait (the client
                // retries it); so requests that hang on a slow origin or disk do
                // not hold up the hits sent behind them. Any other request is left
                // in the buffer, and reading stops, until answers have gone out.
                if buf.len() < HEADER_LEN {
                    break;
                }
                let at_cap = inflight.len() >= MAX_INFLIGHT;
                let h = match Header::decode(&buf[..HEADER_LEN], &self.config.limits())
                    .and_then(|h| h.check_request().map(|()| h))
                {
                    Ok(h) => h,
                    Err(e) => {
                        let mut id = [0u8; 8];
                        id.copy_from_slice(&buf[8..16]);
                        let op = Op::Hello;
                        let out =
                            Out::err(op, u64::from_le_bytes(id), Status::Invalid, e.to_string());
                        write_out(&mut stream, &out, self.config.lease_ttl()).await?;
                        self.sent(&out);
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                    }
                };
                if at_cap && !matches!(h.op, Op::Get | Op::MGet | Op::MGetRange | Op::MatchPrefix) {
                    parked = true;
                    break;
                }
                let need = HEADER_LEN + h.meta_len as usize;
                if buf.len() < need {
                    buf.reserve(need - buf.len());
                    break;
                }
                let frame = buf.split_to(need);
                let meta = &frame[HEADER_LEN..];
                match Request::decode(&h, meta) {
                    Err(e) => {
                        if h.data_len > 0 {
                            sink = Some(Sink::Discard {
                                remaining: h.data_len,
                            });
                        }
                        let WireError::Meta { op, reason } = e else {
                            unreachable!("Request::decode returns Meta errors")
                        };
                        inflight.push(Box::pin(std::future::ready(Out::err(
                            op,
                            h.id,
                            Status::Invalid,
                            format!("bad {op:?} request: {reason}"),
                        ))));
                    }
                    Ok(req) => {
                        let shm = caller.carrier == Carrier::Shm;
                        let opts = Options {
                            deadline: h.budget().map(|b| Deadline::now() + b),
                            lease: (shm || self.rdma_available()) && h.flags & FLAG_LEASE != 0,
                            pin: h.flags & FLAG_PIN != 0,
                            from_peer: h.flags & FLAG_PEER != 0,
                            cached_only: h.flags & FLAG_CACHED_ONLY != 0,
                            caller: caller.clone(),
                        };
                        if let Some(mut f) = self.dispatch(&h, req, opts, &mut sink, reservations) {
                            if !at_cap {
                                inflight.push(f);
                            } else {
                                // Polled once, outside the task's cooperative
                                // budget (a hit is never `Busy` for want of it).
                                let out = match futures::poll!(tokio::task::unconstrained(&mut f)) {
                                    Poll::Ready(out) => out,
                                    Poll::Pending => {
                                        drop(f);
                                        Out::err(
                                            h.op,
                                            h.id,
                                            Status::Busy,
                                            format!(
                                                "{MAX_INFLIGHT} requests are in flight on this \
                                                 connection and this one would wait: retry it"
                                            ),
                                        )
                                    }
                                };
                                write_out(&mut stream, &out, self.config.lease_ttl()).await?;
                                self.sent(&out);
                                progress = Instant::now();
                            }
                        }
                        if let Some(done) = self.finish_sink(&mut sink, reservations) {
                            inflight.push(done);
                        }
                    }
                }
            }
            if eof && inflight.is_empty() {
                return Ok(());
            }
            // Idle between requests (not inside a PUT's data): poll for the next one.
            if inflight.is_empty() && !eof && sink.is_none() {
                match self.poll_read(stream.as_fd(), &mut buf) {
                    Ok(Some(0)) => {
                        eof = true;
                        eof_at.get_or_insert_with(Instant::now);
                        continue;
                    }
                    Ok(Some(_)) => {
                        progress = Instant::now();
                        // A client that keeps the connection busy must not keep this
                        // worker from the runtime: yield once the task's budget is spent.
                        tokio::task::consume_budget().await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            let ttl = self.config.lease_ttl();
            // Timers: the oldest untouched reservation's end, and, inside a frame's
            // data, the end of the wait for more of it (a sender that stalls holds
            // its share of the upload budget).
            let stalled_at = sink.as_ref().map(|s| match s {
                Sink::Reservation { up, .. } => (progress + ttl).min(up.until),
                Sink::Discard { .. } => progress + ttl,
            });
            // At the in-flight cap, frames wait unread in the buffer (a COMMIT among
            // them, perhaps): reservations do not expire until they are read.
            let at_cap = inflight.len() >= MAX_INFLIGHT;
            // Idle: nothing in flight, none reserved, no frame begun. Such a
            // connection is closed after the idle timeout (its place comes back).
            let idle_at = (inflight.is_empty()
                && sink.is_none()
                && reservations.is_empty()
                && buf.is_empty()
                && !eof)
                .then(|| progress + self.config.idle_timeout());
            let expiry = reservations
                .values()
                .filter(|_| !at_cap)
                .map(|o| o.expires(ttl))
                .chain(stalled_at)
                .chain(idle_at)
                .chain(eof_at.map(|t| t + ttl))
                .min();
            tokio::select! {
                biased;
                Some(out) = inflight.next(), if !inflight.is_empty() => {
                    write_out(&mut stream, &out, ttl).await?;
                    self.sent(&out);
                    progress = Instant::now();
                }
                r = stream.read_buf(&mut buf), if !eof && !parked => {
                    if r? == 0 {
                        eof = true;
                        eof_at.get_or_insert_with(Instant::now);
                        if inflight.is_empty() {
                            return Ok(());
                        }
                    }
                    progress = Instant::now();
                }
                // (An async block: nothing is made for the timer when no timer is
                // due, as on every GET.)
                () = async {
                    match expiry {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                }, if expiry.is_some() => {
                    if idle_at.is_some_and(|t| Instant::now() >= t) {
                        add(&self.stats.idle_closed, 1);
                        return Ok(());
                    }
                    if eof_at.is_some_and(|t| Instant::now() >= t + ttl) {
                        // (Counted as stalled where the connection ends.)
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "the client closed its side {ttl:?} ago and {} requests are \
                                 still unanswered",
                                inflight.len()
                            ),
                        ));
                    }
                    if stalled_at.is_some_and(|t| Instant::now() >= t) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "a frame's data stopped coming for {ttl:?}, or came slower \
                                 than {MIN_UPLOAD_RATE} bytes/s"
                            ),
                        ));
                    }
                    let expired: Vec<u64> = reservations
                        .iter()
                        .filter(|(_, o)| Instant::now() >= o.expires(ttl))
                        .map(|(id, _)| *id)
                        .collect();
                    add(&self.stats.reservations_expired, expired.len() as u64);
                    for id in expired {
                        if let Some(o) = reservations.remove(&id) {
                            self.retire(o.up);
                        }
                    }
                }
                _ = shutdown.cancelled(), if inflight.is_empty() => return Ok(()),
            }
        }
    }

    /// Polls the socket `fd` for up to `config.poll` when a polling place is free:
    /// the bytes read (0 at end of stream), or `None` when nothing came (or polling
    /// is off).
    pub(super) fn poll_read(
        &self,
        fd: BorrowedFd<'_>,
        buf: &mut BytesMut,
    ) -> std::io::Result<Option<usize>> {
        let poll = self.config.poll();
        if poll.is_zero()
            || self
                .polling
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.config.poll_connections).then_some(n + 1)
                })
                .is_err()
        {
            return Ok(None);
        }
        let start = Instant::now();
        let got = loop {
            match shm::recv_now(fd, buf) {
                Ok(n) => {
                    if n > 0 {
                        add(&self.stats.poll_hits, 1);
                    }
                    break Ok(Some(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= poll {
                        break Ok(None);
                    }
                    std::hint::spin_loop();
                }
                Err(e) => break Err(e),
            }
        };
        self.polling.fetch_sub(1, Ordering::AcqRel);
        got
    }
}
