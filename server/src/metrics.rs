//! Prometheus `/metrics`, rendered at scrape time from the store's counters.
//!
//! Stable names: `strata_tier_<counter>{tier,namespace}` for every counter of
//! `Stats` (`_total` suffix on monotonic ones), `strata_tier_capacity_bytes{tier}`,
//! `strata_tier_used_bytes{tier}`, `strata_grpc_requests_total{method}`,
//! `strata_bytes_in_total`, `strata_bytes_out_total`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Mutex;

use strata_tiers::TieredStore;

/// Reads one counter out of a snapshot.
type Getter = fn(&strata_tiers::CountersSnapshot) -> u64;

/// Server-level counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Value bytes received by puts.
    pub bytes_in: AtomicU64,
    /// Value bytes sent by gets.
    pub bytes_out: AtomicU64,
}

impl Metrics {
    /// Counts one request of `method`.
    pub fn request(&self, method: &'static str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(method).or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &TieredStore) -> String {
        let mut out = String::with_capacity(4096);
        let reports = store.stats();
        let counters: [(&str, &str, bool, Getter); 10] = [
            ("entries", "Entries resident", false, |c| c.entries),
            ("bytes", "Bytes resident", false, |c| c.bytes),
            ("hits_total", "Lookups that hit", true, |c| c.hits),
            ("misses_total", "Lookups that missed", true, |c| c.misses),
            ("evictions_total", "Entries evicted", true, |c| c.evictions),
            (
                "demotions_total",
                "Entries demoted to the next tier",
                true,
                |c| c.demotions,
            ),
            (
                "origin_reads_total",
                "Reads that went to the origin",
                true,
                |c| c.origin_reads,
            ),
            (
                "dropped_writes_total",
                "Writes the tier dropped",
                true,
                |c| c.dropped_writes,
            ),
            (
                "checksum_failures_total",
                "Records that failed verification (never served)",
                true,
                |c| c.checksum_failures,
            ),
            (
                "bypasses_total",
                "Origin fills declined by the clairvoyant policy (served, not cached here)",
                true,
                |c| c.bypasses,
            ),
        ];
        for (name, help, monotonic, get) in counters {
            let kind = if monotonic { "counter" } else { "gauge" };
            let _ = writeln!(
                out,
                "# HELP strata_tier_{name} {help}.\n# TYPE strata_tier_{name} {kind}"
            );
            for r in &reports {
                for (ns, c) in &r.namespaces {
                    let _ = writeln!(
                        out,
                        "strata_tier_{name}{{tier=\"{}\",namespace=\"{ns}\"}} {}",
                        r.tier,
                        get(c)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP strata_tier_capacity_bytes Tier capacity.\n# TYPE strata_tier_capacity_bytes gauge"
        );
        for r in &reports {
            if r.usage.capacity != u64::MAX {
                let _ = writeln!(
                    out,
                    "strata_tier_capacity_bytes{{tier=\"{}\"}} {}",
                    r.tier, r.usage.capacity
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP strata_tier_used_bytes Tier bytes in use.\n# TYPE strata_tier_used_bytes gauge"
        );
        for r in &reports {
            let _ = writeln!(
                out,
                "strata_tier_used_bytes{{tier=\"{}\"}} {}",
                r.tier, r.usage.used
            );
        }
        let _ = writeln!(
            out,
            "# HELP strata_grpc_requests_total gRPC requests by method.\n# TYPE strata_grpc_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (method, n) in m.iter() {
                let _ = writeln!(out, "strata_grpc_requests_total{{method=\"{method}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP strata_bytes_in_total Value bytes received.\n# TYPE strata_bytes_in_total counter"
        );
        let _ = writeln!(
            out,
            "strata_bytes_in_total {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP strata_bytes_out_total Value bytes sent.\n# TYPE strata_bytes_out_total counter"
        );
        let _ = writeln!(
            out,
            "strata_bytes_out_total {}",
            self.bytes_out.load(Ordering::Relaxed)
        );
        out
    }
}
