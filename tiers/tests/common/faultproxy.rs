//! An HTTP/1.1 proxy in front of Azurite that injects `503 Server Busy` and counts
//! requests: a fault wrapped around the real emulator.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the harness"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata_tiers::BlobConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::azurite::{self, Azurite};

/// An HTTP/1.1 proxy in front of Azurite: it answers the first `faults` requests
/// with `503 Server Busy` (plus `hint`, a header line) and forwards the rest. Every
/// request gets its own connections (`Connection: close`), so requests are counted
/// exactly.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    seen: Arc<AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    max_in_flight: Arc<AtomicUsize>,
    /// Milliseconds each request waits before it is forwarded.
    delay_ms: Arc<AtomicU64>,
    /// Milliseconds a GET's answer is held back, read whole from upstream first.
    hold_gets_ms: Arc<AtomicU64>,
    /// Milliseconds between the bytes of a GET's answer (0: sent at once).
    trickle_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` that fails the first `faults` requests.
    pub async fn start(upstream: u16, faults: usize, hint: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let hold_gets_ms = Arc::new(AtomicU64::new(0));
        let trickle_ms = Arc::new(AtomicU64::new(0));
        let counters = (
            seen.clone(),
            in_flight,
            max_in_flight.clone(),
            log.clone(),
            (delay_ms.clone(), hold_gets_ms.clone(), trickle_ms.clone()),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (seen, in_flight, max_in_flight, log, (delay_ms, hold_ms, trickle_ms)) =
                    counters.clone();
                tokio::spawn(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let ms =
                        |a: &AtomicU64| std::time::Duration::from_millis(a.load(Ordering::SeqCst));
                    let delays = (ms(&delay_ms), ms(&hold_ms), ms(&trickle_ms));
                    let _ = serve(client, upstream, &seen, &log, faults, hint, delays).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            seen,
            log,
            max_in_flight,
            delay_ms,
            hold_gets_ms,
            trickle_ms,
            task,
        }
    }

    /// Makes each GET from now on be answered one byte every `every` (an origin
    /// that trickles: a read timeout that restarts on every byte never fires).
    pub fn trickle_gets(&self, every: std::time::Duration) {
        self.trickle_ms
            .store(every.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes each GET from now on be answered `hold` late: forwarded at once (so
    /// it reads what the emulator holds now), its whole answer read, then held (a
    /// slow origin read that other requests overtake).
    pub fn hold_gets(&self, hold: std::time::Duration) {
        self.hold_gets_ms
            .store(hold.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes each request from now on wait `delay` before it is forwarded (a slow
    /// origin).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The emulator's tier configuration, pointed at the proxy.
    pub fn config(&self, az: &Azurite, container: &str) -> BlobConfig {
        let mut config = az.config(container);
        config.endpoint = format!("http://127.0.0.1:{}/{}", self.port, azurite::ACCOUNT);
        config
    }

    /// Requests seen (faulted or forwarded).
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Every request seen, in order: its request line and its `Range` header (or
    /// `x-ms-range`), if any.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most requests in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(
    mut client: TcpStream,
    upstream: u16,
    seen: &AtomicUsize,
    log: &std::sync::Mutex<Vec<String>>,
    faults: usize,
    hint: &str,
    (delay, hold, trickle): (
        std::time::Duration,
        std::time::Duration,
        std::time::Duration,
    ),
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while find(&buf, b"\r\n\r\n").is_none() {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    {
        let head = String::from_utf8_lossy(&buf);
        let mut lines = head.lines();
        let mut entry = lines.next().unwrap_or_default().to_owned();
        for l in lines {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("range:") || lower.starts_with("x-ms-range:") {
                entry.push(' ');
                entry.push_str(l.trim());
            }
        }
        log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }
    if seen.fetch_add(1, Ordering::SeqCst) < faults {
        let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ServerBusy</Code>\
                    <Message>Injected by the test proxy.\nRequestId:0</Message></Error>";
        let rsp = format!(
            "HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\n{hint}Content-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(rsp.as_bytes()).await?;
        return client.shutdown().await;
    }
    tokio::time::sleep(delay).await;
    let line_end = find(&buf, b"\r\n").unwrap_or(0) + 2;
    let mut out = buf[..line_end].to_vec();
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&buf[line_end..]);
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(&out).await?;
    if (!hold.is_zero() || !trickle.is_zero()) && buf.starts_with(b"GET ") {
        // (A GET has no body to upload.) Its whole answer, then the hold, then
        // the answer, at once or a byte at a time.
        let mut answer = Vec::new();
        up.read_to_end(&mut answer).await?;
        tokio::time::sleep(hold).await;
        if trickle.is_zero() {
            client.write_all(&answer).await?;
        } else {
            for b in answer {
                client.write_all(&[b]).await?;
                tokio::time::sleep(trickle).await;
            }
        }
        return client.shutdown().await;
    }
    // The exchange is over once the whole response (by its Content-Length) is
    // forwarded: the client may start its next request before it closes this
    // connection, so waiting for either side to close would count two requests
    // in flight.
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.split();
    let upload = tokio::io::copy(&mut cr, &mut uw);
    let download = async {
        let mut head = Vec::new();
        let end = loop {
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            let n = ur.read(&mut chunk).await?;
            if n == 0 {
                cw.write_all(&head).await?;
                return Ok::<(), std::io::Error>(());
            }
            head.extend_from_slice(&chunk[..n]);
        };
        let length = String::from_utf8_lossy(&head[..end]).lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<u64>().ok())?
        });
        cw.write_all(&head).await?;
        match length {
            Some(len) => {
                let rest = len.saturating_sub((head.len() - end) as u64);
                tokio::io::copy(&mut (&mut ur).take(rest), &mut cw).await?;
            }
            None => {
                tokio::io::copy(&mut ur, &mut cw).await?;
            }
        }
        cw.flush().await
    };
    tokio::pin!(upload, download);
    let mut uploading = true;
    loop {
        tokio::select! {
            r = &mut upload, if uploading => {
                r?;
                uploading = false;
            }
            r = &mut download => return r,
        }
    }
}
