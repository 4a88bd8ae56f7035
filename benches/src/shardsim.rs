//! `strata-bench shard-sim`: eviction policies for training shards, simulated.
//!
//! Jobs read one dataset for several epochs, each in its own shuffled order
//! ([`PlanSpec`], the order the real loader follows). Job `j` of `J` starts
//! `j/J` of an epoch after the first (two jobs: half an epoch apart, as in a
//! hyperparameter sweep), and all read at the same rate; their reads interleave
//! one per job per tick. A cache of 10–90% of the dataset's bytes serves the merged
//! trace under four policies:
//!
//! - **LRU**;
//! - **no-evict** (CoorDL's "MinIO": fill until full, then admit nothing);
//! - **clairvoyant**: the shipped [`Oracle`], told of each job when it starts and of
//!   its progress, evicting the shard whose next read over the registered plans is
//!   furthest (or not admitting the incoming one when it is the furthest);
//! - **offline**: Belady's rule over the realized trace, computed separately from a
//!   backward pass over the trace (it also knows the jobs that have not started).
//!
//! Reads of shards no plan covers fall back to a policy of the DRAM tier; the
//! shipped ones (LRU, S3-FIFO and the size-aware GDSF the clairvoyant policy
//! uses for unplanned shards) replay the same traces, and a Zipf-skewed random
//! trace, through their real implementations in `strata_tiers`.
//!
//! With equal sizes Belady's rule is optimal; with unequal sizes it is the
//! classic heuristic (the optimum is NP-hard), so "offline" is a reference there,
//! not a bound. Both object and byte hit rates are reported.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::ensure;
use clap::Args;
use strata_server::oracle::{JobPlan, Oracle};
use strata_tiers::Key;
use strata_tiers::dram::{EvictionKind, EvictionPolicy, Gdsf};
use strata_training_cache::plan::SplitMix64;
use strata_training_cache::{PlanSpec, Position};

/// Arguments of `strata-bench shard-sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Shards in the dataset.
    #[arg(long, default_value_t = 2000)]
    pub shards: u32,
    /// Epochs each job reads.
    #[arg(long, default_value_t = 4)]
    pub epochs: u64,
    /// Job counts to simulate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub jobs: Vec<u32>,
    /// Cache sizes, in percent of the dataset's bytes (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90"
    )]
    pub cache_pct: Vec<u32>,
    /// Seed of the jobs' plans and of the unequal sizes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The policies, in report order.
pub const POLICIES: [&str; 4] = ["LRU", "no-evict", "clairvoyant", "offline (Belady)"];

/// One access of the merged trace.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The job reading.
    pub job: u32,
    /// The job's position before this read (its cursor).
    pub at: Position,
    /// The shard read.
    pub shard: u32,
}

/// A scenario: the dataset, the jobs and the trace they produce.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Shard sizes (any unit).
    pub sizes: Vec<u64>,
    /// The jobs' plans.
    pub plans: Vec<PlanSpec>,
    /// The tick each job starts.
    pub starts: Vec<u64>,
    /// Epochs per job.
    pub epochs: u64,
    /// The merged trace.
    pub trace: Vec<Access>,
}

impl Scenario {
    /// `jobs` jobs over `sizes.len()` shards, staggered by `1/jobs` epoch.
    pub fn new(sizes: Vec<u64>, jobs: u32, epochs: u64, seed: u64) -> Self {
        let n = sizes.len() as u32;
        let plans: Vec<PlanSpec> = (0..jobs)
            .map(|j| PlanSpec::new(n, seed.wrapping_mul(1000).wrapping_add(u64::from(j)), 1))
            .collect();
        let len = u64::from(n);
        let starts: Vec<u64> = (0..u64::from(jobs))
            .map(|j| j * len / u64::from(jobs))
            .collect();
        let total = epochs * len;
        let mut orders: HashMap<(u32, u64), Vec<u32>> = HashMap::new();
        let mut trace = Vec::new();
        let end = starts.iter().max().copied().unwrap_or(0) + total;
        for tick in 0..end {
            for (j, plan) in plans.iter().enumerate() {
                let Some(k) = tick.checked_sub(starts[j]).filter(|k| *k < total) else {
                    continue;
                };
                let (epoch, step) = (k / len, k % len);
                let order = orders
                    .entry((j as u32, epoch))
                    .or_insert_with(|| plan.global_order(epoch));
                trace.push(Access {
                    job: j as u32,
                    at: Position { epoch, step },
                    shard: order[step as usize],
                });
            }
        }
        Self {
            sizes,
            plans,
            starts,
            epochs,
            trace,
        }
    }

    /// `reads` random reads of `sizes.len()` shards, shard `i` (in a shuffled
    /// order) drawn with weight `1 / (i + 1)^alpha`; no plan describes them.
    pub fn zipf(sizes: Vec<u64>, reads: usize, alpha: f64, seed: u64) -> Self {
        let n = sizes.len();
        let rank = PlanSpec::new(n as u32, seed ^ 0x21FF, 1).global_order(0);
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 0..n {
            sum += 1.0 / ((i + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        let mut rng = SplitMix64::new(seed ^ 0x2199);
        let trace = (0..reads)
            .map(|k| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * sum;
                let i = cdf.partition_point(|&c| c < u).min(n - 1);
                Access {
                    job: 0,
                    at: Position {
                        epoch: 0,
                        step: k as u64,
                    },
                    shard: rank[i],
                }
            })
            .collect();
        Self {
            sizes,
            plans: Vec::new(),
            starts: Vec::new(),
            epochs: 1,
            trace,
        }
    }

    /// The dataset's bytes.
    pub fn total_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

/// Hit rates of one policy over one trace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Hits per access.
    pub object: f64,
    /// Bytes hit per byte read.
    pub byte: f64,
}

#[derive(Default)]
struct Tally {
    hits: u64,
    accesses: u64,
    hit_bytes: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, hit: bool, size: u64) {
        self.accesses += 1;
        self.bytes += size;
        if hit {
            self.hits += 1;
            self.hit_bytes += size;
        }
    }

    fn rates(&self) -> Rates {
        Rates {
            object: self.hits as f64 / self.accesses.max(1) as f64,
            byte: self.hit_bytes as f64 / self.bytes.max(1) as f64,
        }
    }
}

/// LRU with byte capacity.
pub fn lru(s: &Scenario, cap: u64) -> Rates {
    let mut tick = 0u64;
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut order: BTreeSet<(u64, u32)> = BTreeSet::new();
    let (mut used, mut t) = (0u64, Tally::default());
    for a in &s.trace {
        let size = s.sizes[a.shard as usize];
        tick += 1;
        if let Some(old) = last.insert(a.shard, tick) {
            order.remove(&(old, a.shard));
            order.insert((tick, a.shard));
            t.add(true, size);
            continue;
        }
        t.add(false, size);
        if size > cap {
            last.remove(&a.shard);
            continue;
        }
        while used + size > cap {
            let (_, v) = order.pop_first().expect("used > 0");
            last.remove(&v);
            used -= s.sizes[v as usize];
        }
        order.insert((tick, a.shard));
        used += size;
    }
    t.rates()
}

/// No eviction: admit while there is room.
pub fn no_evict(s: &Scenario, cap: u64) -> Rates {
    let mut cached = HashSet::new();
    let (mut used, mut t) = (0u64, Tally::default());
    for a in &s.trace {
        let size = s.sizes[a.shard as usize];
        let hit = cached.contains(&a.shard);
        t.add(hit, size);
        if !hit && used + size <= cap {
            cached.insert(a.shard);
            used += size;
        }
    }
    t.rates()
}

/// The shipped oracle, told of each job as it starts and of every read.
pub fn clairvoyant(s: &Scenario, cap: u64) -> Rates {
    let mut oracle = Oracle::default();
    let mut started = vec![false; s.plans.len()];
    let mut cached: Vec<u32> = Vec::new();
    let mut is_cached = vec![false; s.sizes.len()];
    let (mut used, mut t) = (0u64, Tally::default());
    for a in &s.trace {
        let j = a.job as usize;
        let next = Position {
            epoch: a.at.epoch,
            step: a.at.step + 1,
        };
        if !started[j] {
            started[j] = true;
            oracle.register(
                u64::from(a.job),
                JobPlan {
                    spec: s.plans[j],
                    at: next,
                    end_epoch: Some(s.epochs),
                    rate: 1.0,
                    lead: 0,
                },
            );
        } else {
            oracle.advance(u64::from(a.job), next, None);
        }
        let size = s.sizes[a.shard as usize];
        let hit = is_cached[a.shard as usize];
        t.add(hit, size);
        if hit || size > cap {
            continue;
        }
        let incoming = oracle.next_use(a.shard).unwrap_or(f64::INFINITY);
        let mut admit = true;
        while used + size > cap {
            let victim = oracle.furthest(cached.iter().copied()).expect("used > 0");
            let vt = oracle.next_use(victim).unwrap_or(f64::INFINITY);
            if vt <= incoming {
                admit = false;
                break;
            }
            let i = cached.iter().position(|&c| c == victim).expect("cached");
            cached.swap_remove(i);
            is_cached[victim as usize] = false;
            used -= s.sizes[victim as usize];
        }
        if admit {
            cached.push(a.shard);
            is_cached[a.shard as usize] = true;
            used += size;
        }
    }
    t.rates()
}

/// Belady's rule over the realized trace (next uses from a backward pass).
pub fn offline(s: &Scenario, cap: u64) -> Rates {
    let n = s.trace.len();
    let mut next = vec![usize::MAX; n];
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for i in (0..n).rev() {
        let sh = s.trace[i].shard;
        if let Some(&j) = seen.get(&sh) {
            next[i] = j;
        }
        seen.insert(sh, i);
    }
    // Cached shards by their next use, furthest first.
    let mut by_next: BTreeSet<(Reverse<usize>, u32)> = BTreeSet::new();
    let mut cached_next: HashMap<u32, usize> = HashMap::new();
    let (mut used, mut t) = (0u64, Tally::default());
    for (i, a) in s.trace.iter().enumerate() {
        let size = s.sizes[a.shard as usize];
        if let Some(old) = cached_next.get_mut(&a.shard) {
            by_next.remove(&(Reverse(*old), a.shard));
            *old = next[i];
            by_next.insert((Reverse(next[i]), a.shard));
            t.add(true, size);
            continue;
        }
        t.add(false, size);
        if size > cap {
            continue;
        }
        let mut admit = true;
        while used + size > cap {
            let &(Reverse(vn), v) = by_next.first().expect("used > 0");
            if vn <= next[i] {
                admit = false;
                break;
            }
            by_next.pop_first();
            cached_next.remove(&v);
            used -= s.sizes[v as usize];
        }
        if admit {
            by_next.insert((Reverse(next[i]), a.shard));
            cached_next.insert(a.shard, next[i]);
            used += size;
        }
    }
    t.rates()
}

/// One of the DRAM tier's own policies, replayed: reads are `access`es, misses
/// `insert`s after `victim`s make room.
pub fn replay(s: &Scenario, cap: u64, mut policy: Box<dyn EvictionPolicy>) -> Rates {
    let keys: Vec<Key> = (0..s.sizes.len() as u32)
        .map(|i| Key::new("shard", "", i.to_be_bytes()).expect("a valid key"))
        .collect();
    let index: HashMap<&Key, u32> = keys.iter().zip(0..).collect();
    let mut cached = vec![false; s.sizes.len()];
    let (mut used, mut t) = (0u64, Tally::default());
    for a in &s.trace {
        let (i, size) = (a.shard as usize, s.sizes[a.shard as usize]);
        t.add(cached[i], size);
        if cached[i] {
            policy.access(&keys[i]);
            continue;
        }
        if size > cap {
            continue;
        }
        while used + size > cap {
            let v = index[&policy.victim().expect("used > 0")] as usize;
            cached[v] = false;
            used -= s.sizes[v];
        }
        policy.insert(&keys[i], size);
        cached[i] = true;
        used += size;
    }
    t.rates()
}

/// The fallback policies for reads without a plan, in report order: the
/// simulated size unit is taken as 1 MiB, so GDSF's request cost is one unit.
pub fn fallbacks() -> [(&'static str, Box<dyn EvictionPolicy>); 3] {
    [
        ("LRU", EvictionKind::Lru.build()),
        ("S3-FIFO", EvictionKind::S3fifo.build()),
        (
            "GDSF (size-aware)",
            Box::new(Gdsf::new(strata_tiers::dram::GDSF_REQUEST_BYTES >> 20)),
        ),
    ]
}

/// All four policies at `cap`, in [`POLICIES`] order.
pub fn all(s: &Scenario, cap: u64) -> [Rates; 4] {
    [
        lru(s, cap),
        no_evict(s, cap),
        clairvoyant(s, cap),
        offline(s, cap),
    ]
}

/// Unequal sizes: 1–16 units, log-uniform (many small shards, a few big ones).
pub fn unequal_sizes(n: u32, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (16f64.powf(u)).round().max(1.0) as u64
        })
        .collect()
}

/// Runs the simulation and prints markdown tables and the verdicts at 50%.
pub fn run(a: &SimArgs) -> anyhow::Result<()> {
    ensure!(
        a.shards > 1 && a.epochs > 0,
        "--shards > 1 and --epochs > 0"
    );
    println!(
        "shard-sim: {} shards, {} epochs per job, jobs staggered by 1/J epoch, seed {}",
        a.shards, a.epochs, a.seed
    );
    let mut verdicts = Vec::new();
    for (label, sizes) in [
        ("equal sizes", vec![1u64; a.shards as usize]),
        (
            "unequal sizes (1–16 units, log-uniform)",
            unequal_sizes(a.shards, a.seed),
        ),
    ] {
        for &jobs in &a.jobs {
            let s = Scenario::new(sizes.clone(), jobs.max(1), a.epochs, a.seed);
            println!(
                "\n### {jobs} job(s), {label}: {} reads\n\n| cache | {} |\n|---|{}",
                s.trace.len(),
                POLICIES
                    .iter()
                    .map(|p| format!("{p} obj / byte"))
                    .collect::<Vec<_>>()
                    .join(" | "),
                "---|".repeat(POLICIES.len())
            );
            for &pct in &a.cache_pct {
                let cap = s.total_bytes() * u64::from(pct) / 100;
                let r = all(&s, cap);
                let cells: Vec<String> = r
                    .iter()
                    .map(|x| format!("{:.1}% / {:.1}%", x.object * 100.0, x.byte * 100.0))
                    .collect();
                println!("| {pct}% | {} |", cells.join(" | "));
                if pct == 50 && label == "equal sizes" {
                    verdicts.push((jobs, r));
                }
            }
        }
    }
    fallback_tables(a);
    println!("\n### Verdicts at a 50% cache (equal sizes, object hit rate)\n");
    println!(
        "| jobs | clairvoyant / offline | clairvoyant / LRU | clairvoyant / no-evict | offline / no-evict | offline / LRU | targets |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (jobs, r) in verdicts {
        let [l, ne, c, o] = r.map(|x| x.object);
        let (target, met) = if jobs == 1 {
            (
                "= offline, ≥ 1.5× LRU",
                (c - o).abs() < 1e-9 && c >= 1.5 * l,
            )
        } else {
            (
                "≥ 0.95× offline, ≥ 1.3× no-evict",
                c >= 0.95 * o && c >= 1.3 * ne,
            )
        };
        println!(
            "| {jobs} | {:.3} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {target}: **{}** |",
            c / o,
            c / l,
            c / ne,
            o / ne,
            o / l,
            if met { "met" } else { "missed" }
        );
    }
    Ok(())
}

/// The policies reads without a plan fall back to, on the training traces (no
/// job registered) and on a Zipf-skewed random trace, at a 50% cache.
fn fallback_tables(a: &SimArgs) {
    let sizes = unequal_sizes(a.shards, a.seed);
    let mut traces: Vec<(String, Scenario)> = a
        .jobs
        .iter()
        .map(|&j| {
            (
                format!("{j} job(s), no plan registered"),
                Scenario::new(sizes.clone(), j.max(1), a.epochs, a.seed),
            )
        })
        .collect();
    let reads = a.shards as usize * a.epochs as usize * 2;
    for alpha in [0.8, 1.0] {
        traces.push((
            format!("random reads, Zipf {alpha}"),
            Scenario::zipf(sizes.clone(), reads, alpha, a.seed),
        ));
    }
    let names: Vec<&str> = fallbacks().iter().map(|(n, _)| *n).collect();
    println!(
        "\n### Without a plan: the fallback policies, unequal sizes, 50% cache\n\n| trace | {} |\n|---|{}",
        names
            .iter()
            .map(|p| format!("{p} obj / byte"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(names.len())
    );
    for (label, s) in &traces {
        let cap = s.total_bytes() / 2;
        let cells: Vec<String> = fallbacks()
            .into_iter()
            .map(|(_, p)| {
                let r = replay(s, cap, p);
                format!("{:.1}% / {:.1}%", r.object * 100.0, r.byte * 100.0)
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_job_clairvoyant_is_optimal_and_matches_no_evict() {
        let s = Scenario::new(vec![1; 200], 1, 3, 9);
        assert_eq!(s.trace.len(), 600);
        for cap in [20, 100, 180] {
            let [l, ne, c, o] = all(&s, cap);
            assert_eq!(c, o, "cap {cap}");
            assert!(
                (c.object - ne.object).abs() < 1e-9,
                "cap {cap}: {c:?} vs {ne:?}"
            );
            assert!(c.object >= l.object);
        }
    }

    #[test]
    fn offline_bounds_everyone_with_equal_sizes() {
        let s = Scenario::new(vec![1; 150], 2, 3, 4);
        for cap in [15, 75, 135] {
            let [l, ne, c, o] = all(&s, cap);
            for x in [l, ne, c] {
                assert!(x.object <= o.object + 1e-9, "cap {cap}: {x:?} > {o:?}");
            }
        }
    }

    #[test]
    fn unequal_sizes_are_accounted_in_bytes() {
        let sizes = unequal_sizes(100, 3);
        assert!(sizes.iter().all(|&x| (1..=16).contains(&x)));
        let s = Scenario::new(sizes, 2, 2, 3);
        let cap = s.total_bytes() / 2;
        for r in all(&s, cap) {
            assert!(r.object > 0.0 && r.object < 1.0 && r.byte > 0.0 && r.byte < 1.0);
        }
    }

    #[test]
    fn replayed_lru_matches_the_simulated_one() {
        let s = Scenario::new(unequal_sizes(120, 5), 2, 2, 5);
        let cap = s.total_bytes() / 3;
        assert_eq!(replay(&s, cap, EvictionKind::Lru.build()), lru(&s, cap));
    }

    #[test]
    fn size_aware_fallback_wins_object_hits_on_skewed_unequal_reads() {
        let s = Scenario::zipf(unequal_sizes(300, 2), 6000, 1.0, 2);
        let cap = s.total_bytes() / 4;
        let [(_, l), _, (_, g)] = fallbacks();
        let (l, g) = (replay(&s, cap, l), replay(&s, cap, g));
        assert!(g.object > l.object, "GDSF {g:?} vs LRU {l:?}");
    }
}
