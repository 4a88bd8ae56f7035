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
use strata_proto::placement::{Member, POINTS_PER_WEIGHT, PROBES, Placement, run_key};
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
    /// Nodes of the whole cluster, for the membership and egress models.
    #[arg(long, default_value_t = 100_000)]
    pub nodes: usize,
    /// Cell sizes to model the membership traffic of (a node watches its cell;
    /// the cluster's size is one cell watching everything).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub cells: Vec<usize>,
    /// Restarts per node per day (upgrades, failures, preemptions): each is four
    /// watch events (joining, active, draining, deleted).
    #[arg(long, default_value_t = 1.0)]
    pub restarts_per_node_day: f64,
    /// Training GPUs reading the dataset at once (one job), for the egress model.
    #[arg(long, default_value_t = 400_000)]
    pub gpus: u64,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: u64,
    /// MB/s each GPU's input pipeline reads.
    #[arg(long, default_value_t = 50.0)]
    pub gpu_read_mbs: f64,
    /// Dataset sizes, TB.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub dataset_tb: Vec<f64>,
    /// One storage account's egress limit, Gbps.
    #[arg(long, default_value_t = 200.0)]
    pub account_gbps: f64,
    /// Origin bytes per dataset byte under churn (measured with `strata-bench cluster --churn`).
    #[arg(long, default_value_t = 1.01)]
    pub churn_factor: f64,
    /// Regions reading the dataset, for the federation table.
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// Epochs of the training job, for the egress table.
    #[arg(long, default_value_t = 10)]
    pub epochs: u32,
    /// Dataset size for the grouping table, in TB.
    #[arg(long, default_value_t = 10.0)]
    pub group_dataset_tb: f64,
    /// Shard sizes for the grouping table, in MiB (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    pub group_shard_mib: Vec<u64>,
    /// Distinct prompt prefixes for the KV grouping table (Zipf popularity).
    #[arg(long, default_value_t = 100_000)]
    pub kv_prompts: usize,
    /// Chunks per prompt prefix (a 4k-token prefix in chunks of 256 tokens).
    #[arg(long, default_value_t = 16)]
    pub kv_chunks: usize,
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
    grouping(a)?;
    membership(a)?;
    egress(a);
    federation(a);
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

/// Membership traffic per node when each node watches only its cell: events and
/// bytes it receives, and the CPU the real view code spends on them
/// (`strata_server::cluster::apply_changes` and `View::new` over a cell of real
/// member entries), against one cell of the whole cluster.
fn membership(a: &ClusterSimArgs) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use strata_server::cluster::etcd::{Change, Entry};
    use strata_server::cluster::{MemberEntry, MemberState, View, apply_changes};

    let per_s = a.restarts_per_node_day / 86_400.0;
    println!(
        "\nMembership traffic, {} nodes, {} restarts per node per day (4 watch events each), lease 10 s kept alive 3 times per lifetime:\n",
        a.nodes, a.restarts_per_node_day
    );
    println!(
        "| cell (members a node watches) | cells | events/s per node | watch bytes/s per node | view update µs (measured) | CPU per node, % of a core | etcd watch egress, all nodes, MB/s | keep-alives/s at etcd |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &cell in &a.cells {
        let cell = cell.min(a.nodes).max(1);
        let prefix = "/strata/prod/cells/c0042/members/";
        let entry = |i: usize, state| MemberEntry {
            version: 1,
            id: format!("{:032x}", i as u128 * 0x9E37_79B9_7F4A_7C15),
            incarnation: i as u64,
            grpc: format!("10.{}.{}.{}:50051", i >> 16 & 255, i >> 8 & 255, i & 255),
            data: Some(format!(
                "10.{}.{}.{}:50052",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            )),
            rdma: true,
            cell: "c0042".into(),
            zone: "eastus-1".into(),
            weight: 1,
            dram_bytes: 1 << 40,
            nvme_bytes: 28 << 40,
            state,
        };
        let mut members: BTreeMap<String, MemberEntry> = (0..cell)
            .map(|i| {
                let m = entry(i, MemberState::Active);
                (m.id.clone(), m)
            })
            .collect();
        // One restart of member 0, as the watch delivers it: four events.
        let put = |state, rev| {
            let m = entry(0, state);
            Change::Put(Entry {
                key: format!("{prefix}{}", m.id).into_bytes(),
                value: serde_json::to_vec(&m).expect("an entry serializes"),
                lease: 1,
                mod_revision: rev,
            })
        };
        let event_bytes = match put(MemberState::Active, 1) {
            // The key and value, plus etcd's per-event framing (revision numbers,
            // lease, version: about 40 bytes of protobuf).
            Change::Put(e) => e.key.len() + e.value.len() + 40,
            Change::Delete(_) => 0,
        };
        let rounds = if cell >= 100_000 { 3 } else { 20 };
        let mut times = Vec::with_capacity(rounds * 4);
        let mut view = View::new(1, members.clone());
        for r in 0..rounds as i64 {
            let events = [
                vec![Change::Delete(
                    format!("{prefix}{}", entry(0, MemberState::Active).id).into_bytes(),
                )],
                vec![put(MemberState::Joining, 4 * r + 2)],
                vec![put(MemberState::Active, 4 * r + 3)],
                vec![put(MemberState::Draining, 4 * r + 4)],
            ];
            for ev in events {
                let t = Instant::now();
                let rev = apply_changes(&mut members, prefix, ev, view.revision);
                view = View::new(rev, members.clone());
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        std::hint::black_box(&view);
        times.sort_by(f64::total_cmp);
        let update_us = times[times.len() / 2];
        let events_per_node = cell as f64 * per_s * 4.0;
        let bytes_per_node = events_per_node * event_bytes as f64;
        let cpu = events_per_node * update_us / 1e6 * 100.0;
        println!(
            "| {cell} | {} | {:.3} | {:.0} | {:.0} | {:.3} | {:.1} | {:.0} |",
            a.nodes.div_ceil(cell),
            events_per_node,
            bytes_per_node,
            update_us,
            cpu,
            bytes_per_node * a.nodes as f64 / 1e6,
            a.nodes as f64 * 3.0 / 10.0,
        );
    }
    println!(
        "\n(events/s per node: cell × restarts/s × 4; bytes: a real member entry's JSON and key, plus ~40 B of etcd framing; view update: the median time of the real code applying one event to a cell of real entries and rebuilding its placement)"
    );
    Ok(())
}

/// Origin egress of one training job's epoch, with and without the cluster,
/// against one storage account's limit.
fn egress(a: &ClusterSimArgs) {
    let nodes = a.gpus / a.gpus_per_node.max(1);
    let demand_gbs = a.gpus as f64 * a.gpu_read_mbs / 1e3;
    let account_gbs = a.account_gbps / 8.0;
    let cell = a.cells.first().copied().unwrap_or(1000).max(1) as u64;
    let cells = nodes.div_ceil(cell);
    println!(
        "\nOrigin egress: one job of {} GPUs ({nodes} nodes, {} cells of {cell}), each GPU reading {} MB/s ({:.1} TB/s in all); one account serves {} Gbps ({account_gbs:.0} GB/s); churn factor {}:\n",
        a.gpus,
        cells,
        a.gpu_read_mbs,
        demand_gbs / 1e3,
        a.account_gbps,
        a.churn_factor
    );
    let e = a.epochs;
    println!(
        "| dataset TB | epoch at full speed, s | no cluster: origin TB per job ({e} epochs) | no cluster: accounts to keep up | a fill per cell (as built): origin TB per job | a fill per cluster (cross-cell, design): origin TB per job | per cluster ÷ no cluster | first epoch at one account's limit, h |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &tb in &a.dataset_tb {
        let bytes_gb = tb * 1e3;
        let epoch_s = bytes_gb / demand_gbs;
        let none = tb * f64::from(e);
        // A cell reads 1/cells of each reshuffled epoch; after `e` epochs it has
        // asked for a page with probability 1 - (1 - 1/cells)^e, and each cell
        // fills its own copy.
        let seen = 1.0 - (1.0 - 1.0 / cells as f64).powi(e as i32);
        let per_cell = tb * cells as f64 * seen * a.churn_factor;
        let per_cluster = tb * a.churn_factor;
        let fill_h = per_cluster * 1e3 / account_gbs / 3600.0;
        println!(
            "| {tb:.0} | {epoch_s:.1} | {none:.0} | {:.0} | {per_cell:.0} | {per_cluster:.1} | {:.3} | {fill_h:.1} |",
            (demand_gbs / account_gbs).ceil(),
            per_cluster / none,
        );
    }
    println!(
        "\n(no cluster: every node reads its share of each reshuffled epoch from the origin, as node-local caches miss under a new shuffle (CoorDL); a cell reads 1/{cells} of each epoch, so after {e} epochs it has filled {:.1}% of the dataset, and each cell fills its own; the cluster holds the dataset once its NVMe ({nodes} nodes × their disks) is larger than it)",
        (1.0 - (1.0 - 1.0 / cells as f64).powi(e as i32)) * 100.0
    );
}

/// Grouped or spread: the pages of a shard under their shard's owner or each
/// run of pages under its own (as built, `run_key`); the chunks of a KV chain under one owner
/// or each under its own (as built). Exact loads, from the real placement.
fn grouping(a: &ClusterSimArgs) -> anyhow::Result<()> {
    const RUN: u64 = 16 << 20;
    println!(
        "\nGrouping, training: a dataset of {} TB in shards, read in runs of 16 MiB (the unit of an origin read and a peer read); bytes each member owns:\n",
        a.group_dataset_tb
    );
    println!(
        "| members | shard MiB | shards | placed by | members holding some | busiest member's bytes ÷ mean (its fills and reads bound a cold epoch) |"
    );
    println!("| ---: | ---: | ---: | --- | ---: | ---: |");
    let total = (a.group_dataset_tb * 1e12) as u64;
    for &n in a.members.iter().filter(|&&n| n >= 1000) {
        let p = Placement::new(members(n, "uniform", 7))?;
        let index = member_index(&p);
        for &mib in &a.group_shard_mib {
            let shard = mib << 20;
            let shards = total.div_ceil(shard);
            let runs = shard.div_ceil(RUN);
            for grouped in [true, false] {
                let mut bytes = vec![0u64; n];
                for s in 0..shards {
                    let key = Key::new("shard", "", format!("big@1/train-{s:07}.tar"))?;
                    if grouped {
                        let o = p.owner(key.as_bytes()).expect("members");
                        bytes[index[o.id.as_str()]] += shard;
                    } else {
                        for r in 0..runs {
                            let o = p.owner(&run_key(key.as_bytes(), r)).expect("members");
                            bytes[index[o.id.as_str()]] += RUN.min(shard - r * RUN);
                        }
                    }
                }
                let holding = bytes.iter().filter(|&&b| b > 0).count();
                let max = *bytes.iter().max().unwrap_or(&0) as f64;
                let mean = bytes.iter().sum::<u64>() as f64 / n as f64;
                println!(
                    "| {n} | {mib} | {shards} | {} | {holding} | {:.2} |",
                    if grouped {
                        "shard (grouped)"
                    } else {
                        "run of pages (spread, as built)"
                    },
                    max / mean,
                );
            }
        }
    }

    // KV: prompt prefixes of Zipf(s) popularity; each load reads every chunk of
    // its prefix. Load per member: the share of chunk reads it answers.
    println!(
        "\nGrouping, KV: {} prompt prefixes of {} chunks, popularity Zipf(s); each load reads every chunk of its prefix (match_prefix, then the reads):\n",
        a.kv_prompts, a.kv_chunks
    );
    println!(
        "| members | Zipf s | placed by | owners asked per prefix (mean) | busiest member's chunk reads ÷ mean |"
    );
    println!("| ---: | ---: | --- | ---: | ---: |");
    for &n in a.members.iter().filter(|&&n| (1000..=10_000).contains(&n)) {
        let p = Placement::new(members(n, "uniform", 11))?;
        let index = member_index(&p);
        // The owner of every chunk of every prefix, once.
        let mut chunk_owner = Vec::with_capacity(a.kv_prompts * a.kv_chunks);
        let mut fanout = 0usize;
        for i in 0..a.kv_prompts {
            let mut seen = std::collections::HashSet::new();
            for c in 0..a.kv_chunks {
                let key = Key::new("kv", "m", format!("chain/{i:08}/{c:03}"))?;
                let o = index[p.owner(key.as_bytes()).expect("members").id.as_str()];
                seen.insert(o);
                chunk_owner.push(o);
            }
            fanout += seen.len();
        }
        for zipf in [0.8f64, 1.0, 1.2] {
            let weight: Vec<f64> = (0..a.kv_prompts)
                .map(|i| 1.0 / ((i + 1) as f64).powf(zipf))
                .collect();
            let sum: f64 = weight.iter().sum();
            for grouped in [true, false] {
                let mut load = vec![0f64; n];
                for (i, w) in weight.iter().enumerate() {
                    let w = w / sum;
                    if grouped {
                        // The chain's owner: that of its first chunk.
                        load[chunk_owner[i * a.kv_chunks]] += w * a.kv_chunks as f64;
                    } else {
                        for c in 0..a.kv_chunks {
                            load[chunk_owner[i * a.kv_chunks + c]] += w;
                        }
                    }
                }
                let max = load.iter().copied().fold(0.0, f64::max);
                let mean = load.iter().sum::<f64>() / n as f64;
                println!(
                    "| {n} | {zipf} | {} | {:.1} | {:.1} |",
                    if grouped {
                        "chain (grouped)"
                    } else {
                        "chunk (spread, as built)"
                    },
                    if grouped {
                        1.0
                    } else {
                        fanout as f64 / a.kv_prompts as f64
                    },
                    max / mean,
                );
            }
        }
    }
    Ok(())
}

/// Each member's position in the placement's list, by id.
fn member_index(p: &Placement) -> std::collections::HashMap<&str, usize> {
    p.members()
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect()
}

/// Federation: regions reading one dataset whose account is in one of them.
fn federation(a: &ClusterSimArgs) {
    let account_gbs = a.account_gbps / 8.0;
    println!(
        "\nFederation: {} regions each running a cluster, all reading one dataset from an account in region 1 (docs/federation.md):\n",
        a.regions
    );
    println!(
        "| dataset TB | regions | account reads, TB: each cluster from the account | account reads, TB: federated (peer in the origin's region) | bytes crossing regions, TB (both) | fill time at the account's limit, h: each from the account | federated, h |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &tb in &a.dataset_tb {
        for r in 1..=a.regions {
            let alone = tb * r as f64 * a.churn_factor;
            let fed = tb * a.churn_factor;
            println!(
                "| {tb:.0} | {r} | {alone:.1} | {fed:.1} | {:.1} | {:.1} | {:.1} |",
                tb * (r - 1) as f64 * a.churn_factor,
                alone * 1e3 / account_gbs / 3600.0,
                fed * 1e3 / account_gbs / 3600.0,
            );
        }
    }
    println!(
        "\n(federated: the account serves each page once for the federation; other regions fill from the origin region's cluster, limited by the inter-region link, not by the account)"
    );
}
