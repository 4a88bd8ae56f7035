//! Prometheus `/metrics`, rendered at scrape time from the store's counters.
//!
//! Stable names: `strata_tier_<counter>{tier,namespace}` for every counter of
//! `Stats` (`_total` suffix on monotonic ones), `strata_tier_capacity_bytes{tier}`,
//! `strata_tier_used_bytes{tier}`, `strata_grpc_requests_total{method}`,
//! `strata_bytes_in_total`, `strata_bytes_out_total` (gRPC), and the data path's
//! `strata_data_*` (answers by op and status, bytes inline and leased, connections,
//! leases, the upload budget, and what its bounds refused or dropped; the list is in
//! `docs/data-path.md`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Mutex;

use crate::data::{DataServer, Listener};
use strata_tiers::TieredStore;
use strata_transport::wire::{Op, Status};

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
    pub fn render(&self, store: &TieredStore, data: &DataServer) -> String {
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
        render_data(&mut out, data);
        out
    }
}

/// Writes a metric's HELP and TYPE lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
}

/// Writes a metric of one unlabelled value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    head(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// Writes a metric with one value per data-path listener.
fn by_listener(out: &mut String, name: &str, kind: &str, help: &str, v: impl Fn(Listener) -> u64) {
    head(out, name, kind, help);
    for l in Listener::LIST {
        let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", l.name(), v(l));
    }
}

/// The data path's metrics.
fn render_data(out: &mut String, data: &DataServer) {
    let s = data.stats();
    head(
        out,
        "strata_data_answers_total",
        "counter",
        "Data-path answers sent, by op and status (rows that are zero are left out)",
    );
    for op in Op::LIST {
        for st in Status::LIST {
            let n = s.answers(op, st);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "strata_data_answers_total{{op=\"{}\",status=\"{}\"}} {n}",
                    op.name(),
                    st.name()
                );
            }
        }
    }
    head(
        out,
        "strata_data_bytes_out_total",
        "counter",
        "Value bytes served: inline on the socket, or leased (read by the client from shared memory or by RDMA)",
    );
    let _ = writeln!(
        out,
        "strata_data_bytes_out_total{{how=\"inline\"}} {}\nstrata_data_bytes_out_total{{how=\"leased\"}} {}",
        s.bytes_inline(),
        s.bytes_leased()
    );
    single(
        out,
        "strata_data_bytes_in_total",
        "counter",
        "Value bytes of committed data-path PUTs",
        s.bytes_committed(),
    );
    by_listener(
        out,
        "strata_data_connections",
        "gauge",
        "Data-path connections open, by listener",
        |l| data.connections(l),
    );
    by_listener(
        out,
        "strata_data_connections_refused_total",
        "counter",
        "Connections closed at once because the listener was at data.max_connections",
        |l| s.refused_connections(l),
    );
    single(
        out,
        "strata_data_connections_stalled_total",
        "counter",
        "Connections dropped because the peer made no progress for a lease lifetime",
        s.stalled_connections(),
    );
    let (held, charged) = data.leases().usage();
    let (granted, expired) = data.leases().counts();
    single(
        out,
        "strata_data_leases",
        "gauge",
        "Leases held now",
        held as u64,
    );
    single(
        out,
        "strata_data_leased_bytes",
        "gauge",
        "Bytes leases count against data.max_leased_bytes now",
        charged,
    );
    single(
        out,
        "strata_data_leases_granted_total",
        "counter",
        "Leases granted",
        granted,
    );
    single(
        out,
        "strata_data_leases_expired_total",
        "counter",
        "Leases that expired unreleased (a client died or was too slow)",
        expired,
    );
    single(
        out,
        "strata_data_lease_fallbacks_total",
        "counter",
        "Leased reads answered inline because the lease budget was spent",
        s.lease_fallbacks(),
    );
    single(
        out,
        "strata_data_upload_budget_free_bytes",
        "gauge",
        "Bytes of data.max_upload_bytes free now",
        data.upload_budget_free(),
    );
    single(
        out,
        "strata_data_reservations_expired_total",
        "counter",
        "Reservations dropped untouched after a lease lifetime",
        s.reservations_expired(),
    );
    single(
        out,
        "strata_data_quarantined_bytes",
        "gauge",
        "Arena bytes of in-place reservations held one more lease lifetime after they expired or their connection ended",
        data.quarantined_bytes(),
    );
    single(
        out,
        "strata_data_poll_hits_total",
        "counter",
        "Polls that found the next request waiting (wake-ups saved)",
        s.poll_hits(),
    );
    single(
        out,
        "strata_data_rdma_available",
        "gauge",
        "1 when the RDMA carrier is offered (feature rdma and a verbs device)",
        u64::from(data.rdma_available()),
    );
    single(
        out,
        "strata_data_rdma_links",
        "gauge",
        "RDMA queue pairs set up",
        data.rdma_links() as u64,
    );
}
