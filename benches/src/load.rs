//! A closed-loop load runner: N clients, each on its own connection, each issuing
//! one request at a time for a fixed time, latencies into an HDR histogram.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Measure, latency_histogram, median};

/// One client of a closed-loop run: it owns its connection and reads the value.
pub trait Getter: Send + 'static {
    /// Reads the value once and returns how many bytes arrived.
    fn get(&mut self) -> impl Future<Output = anyhow::Result<usize>> + Send;
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Bytes received in the measured window, all clients together.
    pub bytes: u64,
    /// Requests completed in the measured window.
    pub requests: u64,
    /// From the start of the measured window to the end of the last request.
    pub elapsed: Duration,
    /// Latency of each request, nanoseconds.
    pub latency: Histogram<u64>,
}

impl LoadResult {
    /// Aggregate throughput, GB/s.
    pub fn gbps(&self) -> f64 {
        crate::report::gbps(self.bytes, self.elapsed.as_secs_f64())
    }
}

/// Runs every client in its own task: `warmup` unmeasured, then `duration`
/// measured. A request started inside the window counts even if it ends after it;
/// the window is stretched to the end of the last one.
///
/// Must run inside a multi-threaded tokio runtime.
pub async fn run_closed_loop<G: Getter>(
    clients: Vec<G>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let base = Instant::now();
    let start = base + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let (mut bytes, mut requests) = (0u64, 0u64);
            let mut last = start;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let n = client.get().await?;
                let t1 = Instant::now();
                if t0 >= start {
                    bytes += n as u64;
                    requests += 1;
                    hist.saturating_record(t1.duration_since(t0).as_nanos() as u64);
                    last = t1;
                }
            }
            anyhow::Ok((bytes, requests, last, hist))
        }));
    }
    let mut out = LoadResult {
        bytes: 0,
        requests: 0,
        elapsed: Duration::ZERO,
        latency: latency_histogram(),
    };
    for t in tasks {
        let (bytes, requests, last, hist) = t.await??;
        out.bytes += bytes;
        out.requests += requests;
        out.elapsed = out.elapsed.max(last.saturating_duration_since(start));
        out.latency.add(&hist)?;
    }
    Ok(out)
}

/// Throughput per round and latencies over all rounds, of one system.
pub struct Series {
    /// Throughput of each round, GB/s.
    pub gbps: Vec<f64>,
    /// Latencies of all rounds, ns.
    pub latency: Histogram<u64>,
}

impl Default for Series {
    fn default() -> Self {
        Self::new()
    }
}

impl Series {
    /// An empty series.
    pub fn new() -> Self {
        Self {
            gbps: Vec::new(),
            latency: latency_histogram(),
        }
    }

    /// Adds one round's result.
    pub fn add(&mut self, r: &LoadResult) -> anyhow::Result<()> {
        self.push(r.gbps(), &r.latency)
    }

    /// Adds one round's throughput and latencies.
    pub fn push(&mut self, gbps: f64, latency: &Histogram<u64>) -> anyhow::Result<()> {
        self.gbps.push(gbps);
        self.latency.add(latency)?;
        Ok(())
    }

    /// Median throughput and the percentiles of all latencies.
    pub fn measure(&self) -> Measure {
        Measure::with_latency(median(&self.gbps), &self.latency)
    }
}
