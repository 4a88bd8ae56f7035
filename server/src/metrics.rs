//! Prometheus `/metrics`, through the `metrics` facade and
//! `metrics-exporter-prometheus`.
//!
//! Each server has its own recorder (several servers may run in one process, as
//! in tests); the `strata-server` binary also installs it as the process's global
//! recorder ([`Metrics::install_global`]), so any crate can count with the
//! `metrics` macros and be scraped here without reaching into the server.
//!
//! What the request layer does is recorded as it happens:
//! `strata_request_duration_seconds{op,carrier}` (a histogram: p50/p99 per op and
//! carrier with `histogram_quantile`), `strata_request_errors_total{op,carrier}`,
//! `strata_grpc_requests_total{method}`, `strata_bytes_in_total`,
//! `strata_bytes_out_total` (gRPC). What the store and the data path keep in their
//! own counters (they answer the `Stats` call too) is read at scrape time:
//! `strata_tier_<counter>{tier,namespace}` for every counter of `Stats`,
//! `strata_tier_capacity_bytes{tier}`, `strata_tier_used_bytes{tier}`, and the data
//! path's `strata_data_*` (the list is in `docs/data-path.md`).

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, Histogram, Key, Label, Metadata, Recorder, Unit, counter, describe_counter,
    describe_gauge, describe_histogram, gauge,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use strata_tiers::TieredStore;
use strata_transport::wire::{Op, Status};

use crate::data::{DataServer, Listener};
use crate::ops::Carrier;

/// The request layer's operations, as they are named in metrics and spans.
pub const OPS: [&str; 10] = [
    "get",
    "mget",
    "put",
    "delete",
    "contains",
    "match_prefix",
    "pin",
    "unpin",
    "evict",
    "list",
];

/// Upper bounds of the latency histogram's buckets, in seconds: 10 µs to 10 s,
/// about three per decade (a same-host hit is tens of µs, an origin read of a
/// large range a second or more).
const LATENCY_BUCKETS: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const REQUEST_DURATION: &str = "strata_request_duration_seconds";
const REQUEST_ERRORS: &str = "strata_request_errors_total";
const GRPC_REQUESTS: &str = "strata_grpc_requests_total";

static METADATA: Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The metrics of one server.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// By op (index in [`OPS`]) and carrier.
    durations: Vec<[Histogram; Carrier::ALL.len()]>,
    errors: Vec<[Counter; Carrier::ALL.len()]>,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder of its own, with every metric described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &LATENCY_BUCKETS)
            .expect("the latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        metrics::with_local_recorder(&*recorder, describe);
        let labelled = |name: &'static str, op: &'static str, c: Carrier| {
            Key::from_parts(
                name,
                vec![Label::new("op", op), Label::new("carrier", c.name())],
            )
        };
        let durations = OPS
            .iter()
            .map(|op| {
                Carrier::ALL.map(|c| {
                    recorder.register_histogram(&labelled(REQUEST_DURATION, op, c), &METADATA)
                })
            })
            .collect();
        let errors = OPS
            .iter()
            .map(|op| {
                Carrier::ALL
                    .map(|c| recorder.register_counter(&labelled(REQUEST_ERRORS, op, c), &METADATA))
            })
            .collect();
        let bytes_in =
            recorder.register_counter(&Key::from_static_name("strata_bytes_in_total"), &METADATA);
        let bytes_out =
            recorder.register_counter(&Key::from_static_name("strata_bytes_out_total"), &METADATA);
        Self {
            recorder,
            handle,
            durations,
            errors,
            bytes_in,
            bytes_out,
        }
    }

    /// Makes this server's recorder the process's global one (the binary does, so
    /// that what other crates count with the `metrics` macros shows on this
    /// server's `/metrics`). `false` if a global recorder was set already.
    pub fn install_global(&self) -> bool {
        metrics::set_global_recorder(self.recorder.clone()).is_ok()
    }

    /// Records one operation of the request layer: how long it took, and whether
    /// it failed.
    pub fn request_done(&self, op: &'static str, carrier: Carrier, took: Duration, ok: bool) {
        let Some(i) = OPS.iter().position(|o| *o == op) else {
            debug_assert!(false, "{op} is not in OPS");
            return;
        };
        let c = Carrier::ALL.iter().position(|x| *x == carrier).unwrap_or(0);
        self.durations[i][c].record(took.as_secs_f64());
        if !ok {
            self.errors[i][c].increment(1);
        }
    }

    /// Counts one gRPC request of `method`.
    pub fn request(&self, method: &'static str) {
        let key = Key::from_parts(GRPC_REQUESTS, vec![Label::new("method", method)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// Counts value bytes a gRPC put received.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.increment(n);
    }

    /// Counts value bytes a gRPC get sent.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.increment(n);
    }

    /// The Prometheus text exposition: what was recorded, and the store's and the
    /// data path's counters as they are now.
    pub fn render(
        &self,
        store: &TieredStore,
        data: &DataServer,
        cluster: Option<&crate::cluster::Cluster>,
    ) -> String {
        metrics::with_local_recorder(&*self.recorder, || {
            record_tiers(store);
            record_data(data);
            if let Some(c) = cluster {
                record_cluster(c);
                counter!("strata_cluster_peer_requests_served_total")
                    .absolute(data.ops().peer_requests());
            }
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Reads one counter out of a snapshot.
type Getter = fn(&strata_tiers::CountersSnapshot) -> u64;

/// The store's counters: name, help, whether monotonic, and how to read it.
const TIER_COUNTERS: [(&str, &str, bool, Getter); 10] = [
    ("strata_tier_entries", "Entries resident", false, |c| {
        c.entries
    }),
    ("strata_tier_bytes", "Bytes resident", false, |c| c.bytes),
    ("strata_tier_hits_total", "Lookups that hit", true, |c| {
        c.hits
    }),
    (
        "strata_tier_misses_total",
        "Lookups that missed",
        true,
        |c| c.misses,
    ),
    (
        "strata_tier_evictions_total",
        "Entries evicted",
        true,
        |c| c.evictions,
    ),
    (
        "strata_tier_demotions_total",
        "Entries demoted to the next tier",
        true,
        |c| c.demotions,
    ),
    (
        "strata_tier_origin_reads_total",
        "Reads that went to the origin",
        true,
        |c| c.origin_reads,
    ),
    (
        "strata_tier_dropped_writes_total",
        "Writes the tier dropped",
        true,
        |c| c.dropped_writes,
    ),
    (
        "strata_tier_checksum_failures_total",
        "Records that failed verification (never served)",
        true,
        |c| c.checksum_failures,
    ),
    (
        "strata_tier_bypasses_total",
        "Origin fills declined by the clairvoyant policy (served, not cached here)",
        true,
        |c| c.bypasses,
    ),
];

/// Gauges of the data path, one value each: name, help.
const DATA_GAUGES: [(&str, &str); 6] = [
    ("strata_data_leases", "Leases held now"),
    (
        "strata_data_leased_bytes",
        "Bytes leases count against data.max_leased_bytes now",
    ),
    (
        "strata_data_upload_budget_free_bytes",
        "Bytes of requests.max_upload_bytes free now",
    ),
    (
        "strata_data_quarantined_bytes",
        "Arena bytes of in-place reservations held one more lease lifetime after they expired or their connection ended",
    ),
    (
        "strata_data_rdma_available",
        "1 when the RDMA carrier is offered (feature rdma and a verbs device)",
    ),
    ("strata_data_rdma_links", "RDMA queue pairs set up"),
];

/// Counters of the data path, one value each: name, help.
const DATA_COUNTERS: [(&str, &str); 9] = [
    (
        "strata_data_bytes_in_total",
        "Value bytes of committed data-path PUTs",
    ),
    (
        "strata_data_connections_stalled_total",
        "Connections dropped because the peer made no progress for a lease lifetime",
    ),
    ("strata_data_leases_granted_total", "Leases granted"),
    (
        "strata_data_leases_expired_total",
        "Leases that expired unreleased (a client died or was too slow)",
    ),
    (
        "strata_data_lease_fallbacks_total",
        "Leased reads answered inline because the lease budget was spent",
    ),
    (
        "strata_data_reservations_expired_total",
        "Reservations dropped untouched after a lease lifetime",
    ),
    (
        "strata_data_poll_hits_total",
        "Polls that found the next request waiting (wake-ups saved)",
    ),
    (
        "strata_data_connections_idle_closed_total",
        "Connections closed after data.idle_timeout_ms with nothing to do",
    ),
    (
        "strata_request_commits_in_flight",
        "Commits running now from any carrier, with gRPC reads being streamed",
    ),
];

/// Describes every metric (HELP lines), into the recorder in scope.
fn describe() {
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time the request layer took for an operation, by op and carrier"
    );
    describe_counter!(
        REQUEST_ERRORS,
        "Operations of the request layer that failed, by op and carrier"
    );
    describe_counter!(GRPC_REQUESTS, "gRPC requests by method");
    describe_counter!(
        "strata_bytes_in_total",
        Unit::Bytes,
        "Value bytes received by gRPC puts"
    );
    describe_counter!(
        "strata_bytes_out_total",
        Unit::Bytes,
        "Value bytes sent by gRPC gets"
    );
    for (name, help, monotonic, _) in TIER_COUNTERS {
        if monotonic {
            describe_counter!(name, help);
        } else {
            describe_gauge!(name, help);
        }
    }
    describe_gauge!(
        "strata_cluster_members",
        "Members of this node's cell in its current view, by state (cluster nodes only)"
    );
    describe_gauge!(
        "strata_cluster_view_revision",
        "The etcd revision of this node's view of its cell"
    );
    describe_counter!(
        "strata_cluster_rejoins_total",
        "Times this node registered again after its membership lease ran out"
    );
    describe_counter!(
        "strata_cluster_peer_reads_total",
        "Fills of keys another member owns, asked of that owner, by outcome: answered (an origin read this node did not make) or failed (read from the origin instead)"
    );
    describe_counter!(
        "strata_cluster_peer_read_bytes_total",
        Unit::Bytes,
        "Bytes the owners answered to this node's peer reads"
    );
    describe_counter!(
        "strata_cluster_origin_reads_avoided_total",
        "Origin reads this node did not make because the key's owner answered (peer reads answered)"
    );
    describe_counter!(
        "strata_cluster_neighbour_reads_total",
        "Peer reads answered by a key's owner under an earlier member list (get from neighbour)"
    );
    describe_counter!(
        "strata_cluster_peer_asks_total",
        "Peer reads this node sent (to a key's owner, its copies, or its earlier owners)"
    );
    describe_counter!(
        "strata_cluster_replica_writes_total",
        "Copies of puts (or puts sent on to a key's owners) sent to other members, by outcome: committed or failed"
    );
    describe_counter!(
        "strata_cluster_ownership_changes_total",
        "Changes of the cell's active member list seen by this node (each moves some keys to other owners)"
    );
    describe_gauge!(
        "strata_cluster_owned_share",
        "This node's share of the key space in its current view: its weight over the active members' (0 when it is not active)"
    );
    describe_counter!(
        "strata_cluster_peer_requests_served_total",
        "Requests from other members filling their caches, answered by this node"
    );
    describe_gauge!("strata_tier_capacity_bytes", Unit::Bytes, "Tier capacity");
    describe_gauge!("strata_tier_used_bytes", Unit::Bytes, "Tier bytes in use");
    describe_counter!(
        "strata_data_answers_total",
        "Data-path answers sent, by op and status (rows that are zero are left out)"
    );
    describe_counter!(
        "strata_data_bytes_out_total",
        Unit::Bytes,
        "Value bytes served: inline on the socket, or leased (read by the client from shared memory or by RDMA)"
    );
    describe_gauge!(
        "strata_data_connections",
        "Data-path connections open, by listener"
    );
    describe_counter!(
        "strata_data_connections_refused_total",
        "Connections closed at once because the listener was at data.max_connections"
    );
    for (name, help) in DATA_GAUGES {
        describe_gauge!(name, help);
    }
    for (name, help) in DATA_COUNTERS {
        if name.ends_with("_total") {
            describe_counter!(name, help);
        } else {
            describe_gauge!(name, help);
        }
    }
}

/// Sets the store's counters, into the recorder in scope.
fn record_tiers(store: &TieredStore) {
    let reports = store.stats();
    for (name, _, monotonic, get) in TIER_COUNTERS {
        for r in &reports {
            for (ns, c) in &r.namespaces {
                let labels = [("tier", r.tier.to_owned()), ("namespace", ns.clone())];
                if monotonic {
                    counter!(name, &labels).absolute(get(c));
                } else {
                    gauge!(name, &labels).set(get(c) as f64);
                }
            }
        }
    }
    for r in &reports {
        if r.usage.capacity != u64::MAX {
            gauge!("strata_tier_capacity_bytes", "tier" => r.tier).set(r.usage.capacity as f64);
        }
        gauge!("strata_tier_used_bytes", "tier" => r.tier).set(r.usage.used as f64);
    }
}

/// Sets the data path's counters, into the recorder in scope.
fn record_cluster(c: &crate::cluster::Cluster) {
    use crate::cluster::MemberState;
    let view = c.view();
    for state in MemberState::LIST {
        gauge!("strata_cluster_members", "state" => state.as_str()).set(view.count(state) as f64);
    }
    gauge!("strata_cluster_view_revision").set(view.revision as f64);
    counter!("strata_cluster_rejoins_total").absolute(c.rejoins());
    let me = c.entry().id;
    let members = view.placement.members();
    let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let mine: u64 = members
        .iter()
        .filter(|m| m.id == me)
        .map(|m| u64::from(m.weight))
        .sum();
    gauge!("strata_cluster_owned_share").set(if total == 0 {
        0.0
    } else {
        mine as f64 / total as f64
    });
    let p = c.peer_stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    counter!("strata_cluster_peer_reads_total", "outcome" => "answered")
        .absolute(load(&p.answered));
    counter!("strata_cluster_peer_reads_total", "outcome" => "failed").absolute(load(&p.failed));
    counter!("strata_cluster_peer_read_bytes_total").absolute(load(&p.bytes));
    counter!("strata_cluster_origin_reads_avoided_total").absolute(load(&p.answered));
    counter!("strata_cluster_neighbour_reads_total").absolute(load(&p.from_neighbour));
    counter!("strata_cluster_peer_asks_total").absolute(load(&p.asked));
    counter!("strata_cluster_ownership_changes_total").absolute(load(&p.ownership_changes));
    counter!("strata_cluster_replica_writes_total", "outcome" => "committed")
        .absolute(load(&p.replicated));
    counter!("strata_cluster_replica_writes_total", "outcome" => "failed")
        .absolute(load(&p.replica_failed));
}

fn record_data(data: &DataServer) {
    let s = data.stats();
    for op in Op::LIST {
        for st in Status::LIST {
            let n = s.answers(op, st);
            if n > 0 {
                counter!("strata_data_answers_total", "op" => op.name(), "status" => st.name())
                    .absolute(n);
            }
        }
    }
    counter!("strata_data_bytes_out_total", "how" => "inline").absolute(s.bytes_inline());
    counter!("strata_data_bytes_out_total", "how" => "leased").absolute(s.bytes_leased());
    for l in Listener::LIST {
        gauge!("strata_data_connections", "listener" => l.name()).set(data.connections(l) as f64);
        counter!("strata_data_connections_refused_total", "listener" => l.name())
            .absolute(s.refused_connections(l));
    }
    let leases = data.leases();
    let (held, charged) = leases.usage();
    let (granted, expired) = leases.counts();
    let ops = data.ops();
    let gauges = [
        held as u64,
        charged,
        ops.upload_budget_free(),
        data.quarantined_bytes(),
        u64::from(data.rdma_available()),
        data.rdma_links() as u64,
    ];
    for ((name, _), v) in DATA_GAUGES.iter().zip(gauges) {
        gauge!(*name).set(v as f64);
    }
    let counters = [
        s.bytes_committed(),
        s.stalled_connections(),
        granted,
        expired,
        leases.refused(),
        s.reservations_expired(),
        s.poll_hits(),
        s.idle_closed(),
        ops.commits_in_flight() as u64,
    ];
    for ((name, _), v) in DATA_COUNTERS.iter().zip(counters) {
        if name.ends_with("_total") {
            counter!(*name).absolute(v);
        } else {
            gauge!(*name).set(v as f64);
        }
    }
}
