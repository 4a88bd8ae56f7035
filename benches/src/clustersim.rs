//! `strata-bench cluster-sim`: the real placement code ([`strata_proto::placement`])
//! at 3 to 100k simulated members, against the cluster issue's three
//! requirements: a lookup under 1 µs per key, at most 1.1/N of the keys moved by a
//! join or a leave, and a max/mean load of at most 1.1.
//!
//! Loads are exact, not sampled: [`Placement::shares`] integrates each point's
//! share from the ring (a sample of keys would add its own noise: at 100k members
//! even 100 keys per member leave a max/mean of about 1.4 from counting alone).
//! Key movement is also checked by sampling: every key that changes owner on a
//! join must go to the joiner, and on a leave must come from the leaver.

use std::time::Instant;

use clap::Args;
use strata_proto::Key;
use strata_proto::placement::{Member, POINTS_PER_WEIGHT, PROBES, Placement};
use strata_training_cache::plan::SplitMix64;

/// Arguments of `strata-bench cluster-sim`.
#[derive(Debug, Args)]
pub struct ClusterSimArgs {
    /// Member counts to simulate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "3,10,1000,10000,100000")]
    pub members: Vec<usize>,
    /// Keys looked up per timing (page keys of a training dataset).
    #[arg(long, default_value_t = 1_000_000)]
    pub lookups: usize,
    /// Keys sampled to check that moves only touch the member that joined or left.
    #[arg(long, default_value_t = 200_000)]
    pub sampled: usize,
    /// Joins and leaves simulated per member count (the worst is reported).
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Seed of the mixed weights and of the members that leave.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One row of the report.
struct Row {
    members: usize,
    weights: &'static str,
    build_ms: f64,
    lookup_ns: f64,
    owners3_ns: f64,
    max_mean: f64,
    join_moved_n: f64,
    leave_moved_n: f64,
    sampled_ok: bool,
}

/// Runs the simulation and prints the table.
pub fn run(a: &ClusterSimArgs) -> anyhow::Result<()> {
    println!(
        "placement: multi-probe consistent hashing, {PROBES} probes, {POINTS_PER_WEIGHT} points per unit of weight"
    );
    let keys = page_keys(a.lookups.max(a.sampled));
    let mut rows = Vec::new();
    for &n in &a.members {
        for weights in ["uniform", "mixed 1-4"] {
            rows.push(simulate(a, n, weights, &keys)?);
        }
    }
    println!(
        "\n| members | weights | build ms | lookup ns/key | 3 owners ns/key | load max/mean | join: moved ÷ fair share | leave: moved ÷ fair share | moves only to/from the member (sampled) |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
            r.members,
            r.weights,
            r.build_ms,
            r.lookup_ns,
            r.owners3_ns,
            r.max_mean,
            r.join_moved_n,
            r.leave_moved_n,
            if r.sampled_ok { "yes" } else { "**no**" }
        );
    }
    println!(
        "\nThe alternatives, at the same member counts (uniform weights):\n\n| members | method | points | lookup ns/key | load max/mean |\n| ---: | --- | ---: | ---: | ---: |"
    );
    for &n in &a.members {
        for line in alternatives(n, &keys[..a.lookups.min(keys.len()).min(200_000)]) {
            println!("{line}");
        }
    }
    println!(
        "\n(load: the largest member's exact share over its fair share, weight / total weight; moved: the\n fraction of keys that changed owner over the fair share of the member that joined (weight 1) or\n left, worst of {} changes: with N equal members, keys moved × N)",
        a.changes
    );
    Ok(())
}

/// Page keys of a dataset of 16 MiB shards in 4 MiB pages, as the store forms them.
fn page_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let shard = Key::new("shard", "", format!("imagenet@3/train-{:06}.tar", i / 4))
                .expect("a valid key");
            shard.page(1, (i % 4) as u32).as_bytes().to_vec()
        })
        .collect()
}

fn members(n: usize, weights: &str, seed: u64) -> Vec<Member> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let w = if weights == "uniform" {
                1
            } else {
                1 + (rng.next_u64() % 4) as u32
            };
            Member::new(format!("node-{i:06}"), w)
        })
        .collect()
}

fn simulate(
    a: &ClusterSimArgs,
    n: usize,
    weights: &'static str,
    keys: &[Vec<u8>],
) -> anyhow::Result<Row> {
    let all = members(n, weights, a.seed);
    let t = Instant::now();
    let p = Placement::new(all.clone())?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;

    let lookups = &keys[..a.lookups.min(keys.len())];
    let t = Instant::now();
    let mut sink = 0usize;
    for k in lookups {
        sink += p.owner(k).map_or(0, |m| m.id.len());
    }
    let lookup_ns = t.elapsed().as_secs_f64() * 1e9 / lookups.len() as f64;
    let t = Instant::now();
    for k in lookups {
        sink += p.owners(k, 3).len();
    }
    let owners3_ns = t.elapsed().as_secs_f64() * 1e9 / lookups.len() as f64;
    std::hint::black_box(sink);

    // Exact load: share over fair share, the largest.
    let total_w: u64 = p.members().iter().map(|m| u64::from(m.weight)).sum();
    let shares = p.shares();
    let max_mean = p
        .members()
        .iter()
        .zip(&shares)
        .map(|(m, s)| s / (f64::from(m.weight) / total_w as f64))
        .fold(0.0, f64::max);

    // Joins: a new member of weight 1 each time; moved = its exact share.
    let mut rng = SplitMix64::new(a.seed ^ 0xC1A5);
    let sampled = &keys[..a.sampled.min(keys.len())];
    let before: Vec<&str> = sampled
        .iter()
        .map(|k| p.owner(k).map_or("", |m| m.id.as_str()))
        .collect();
    let mut join_moved: f64 = 0.0;
    let mut sampled_ok = true;
    for c in 0..a.changes {
        let id = format!("joiner-{c}");
        let mut grown = all.clone();
        grown.push(Member::new(id.clone(), 1));
        let q = Placement::new(grown)?;
        let i = q
            .members()
            .iter()
            .position(|m| m.id == id)
            .expect("the joiner is a member");
        join_moved = join_moved.max(q.shares()[i] * (total_w + 1) as f64);
        if c == 0 {
            sampled_ok &= sampled
                .iter()
                .zip(&before)
                .all(|(k, b)| q.owner(k).is_some_and(|o| o.id == *b || o.id == id));
        }
    }
    // Leaves: a member picked at random; moved = its exact share. The worst
    // possible leave is the largest share, which the load column gives.
    let mut leave_moved: f64 = 0.0;
    for c in 0..a.changes {
        let gone = (rng.next_u64() % n as u64) as usize;
        let i = p
            .members()
            .iter()
            .position(|m| m.id == all[gone].id)
            .expect("a member");
        leave_moved = leave_moved.max(shares[i] * total_w as f64 / f64::from(all[gone].weight));
        if c == 0 {
            let mut shrunk = all.clone();
            shrunk.remove(gone);
            let q = Placement::new(shrunk)?;
            let id = &all[gone].id;
            sampled_ok &= sampled.iter().zip(&before).all(|(k, b)| {
                let o = q.owner(k).map_or("", |m| m.id.as_str());
                o == *b || *b == id.as_str()
            });
        }
    }
    eprintln!(
        "{n} members ({weights}): built in {build_ms:.0} ms, lookup {lookup_ns:.0} ns, max/mean {max_mean:.3}"
    );
    Ok(Row {
        members: n,
        weights,
        build_ms,
        lookup_ns,
        owners3_ns,
        max_mean,
        join_moved_n: join_moved,
        leave_moved_n: leave_moved,
        sampled_ok,
    })
}

/// A plain ring with `v` virtual nodes per member (exact load from its arcs), and
/// rendezvous hashing (every member scored per key: balanced in expectation, O(N)
/// per lookup), measured the same way, for the choice in `docs/cluster.md`.
fn alternatives(n: usize, keys: &[Vec<u8>]) -> Vec<String> {
    use strata_proto::placement::{mix, point};
    let ids: Vec<String> = (0..n).map(|i| format!("node-{i:06}")).collect();
    let mut out = Vec::new();
    for v in [1u32, 100] {
        let mut pts: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| (0..v).map(move |j| (point(id, j), i as u32)))
            .collect();
        pts.sort_unstable();
        let mut share = vec![0f64; n];
        for i in 0..pts.len() {
            let prev = pts[(i + pts.len() - 1) % pts.len()].0;
            share[pts[i].1 as usize] += pts[i].0.wrapping_sub(prev) as f64 / 2f64.powi(64);
        }
        let max_mean = share.iter().fold(0.0f64, |m, s| m.max(*s)) * n as f64;
        let pos: Vec<u64> = pts.iter().map(|p| p.0).collect();
        let t = Instant::now();
        let mut sink = 0u64;
        for k in keys {
            let x = strata_proto::placement::probes(k)[0];
            let i = pos.partition_point(|p| *p < x) % pos.len();
            sink += u64::from(pts[i].1);
        }
        std::hint::black_box(sink);
        let ns = t.elapsed().as_secs_f64() * 1e9 / keys.len() as f64;
        out.push(format!(
            "| {n} | ring, {v} virtual node(s) per member | {} | {ns:.0} | {max_mean:.3} |",
            pts.len()
        ));
    }
    // Rendezvous: the member with the highest mix(key hash ^ member hash).
    let seeds: Vec<u64> = ids.iter().map(|id| point(id, 0)).collect();
    let few = &keys[..keys.len().min(if n >= 100_000 { 200 } else { 2000 })];
    let t = Instant::now();
    let mut sink = 0usize;
    for k in few {
        let h = strata_proto::placement::probes(k)[0];
        let best = seeds
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| mix(h ^ **s))
            .map_or(0, |(i, _)| i);
        sink += best;
    }
    std::hint::black_box(sink);
    let ns = t.elapsed().as_secs_f64() * 1e9 / few.len() as f64;
    out.push(format!(
        "| {n} | rendezvous (HRW) | 0 | {ns:.0} | 1 in expectation |"
    ));
    out
}
