//! In-process DRAM benchmarks: the DRAM tier's `get`/`put` and the `TieredStore`'s
//! `get`, against `memcpy` of the same bytes, for 256 KiB, 1 MiB and 4 MiB values.
//!
//! Every case rotates over a working set of 512 MiB of values (more than this
//! machine's 260 MiB L3), and every copy writes into one of as many preallocated,
//! already-faulted destination buffers, so neither side is measured from cache.
//! The `memcpy` limit of a get copies the very bytes the tier holds (its arena)
//! into those buffers; the `memcpy` limit of a put copies the put's source buffers.
//!
//! A get returns a zero-copy `Bytes`; `*_get` measures that, `*_get_copy` adds
//! copying the value out into a preallocated buffer (what a caller that needs
//! its own copy pays). `strata-bench criterion-summary` turns the medians into
//! ours / limit / ratio rows.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use strata_benches::pattern;
use strata_benches::report::size_label;
use strata_tiers::{
    DramConfig, DramTier, GetOptions, Key, Namespaces, PutOptions, StoreConfig, Tier, TieredStore,
};

const WORKING_SET: usize = 512 << 20;
const SIZES: [usize; 3] = [256 << 10, 1 << 20, 4 << 20];

fn dram(capacity: usize) -> DramTier {
    DramTier::new(&DramConfig {
        capacity: capacity as u64,
        ..DramConfig::default()
    })
    .expect("DRAM arena")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    for size in SIZES {
        let n = WORKING_SET / size;
        let slack = 4 * size + (16 << 20);
        let keys: Vec<Key> = (0..n)
            .map(|i| Key::new("kv", "bench", format!("v{size}-{i}")).expect("key"))
            .collect();
        let srcs: Vec<Bytes> = (0..n)
            .map(|i| Bytes::from(pattern(size, i as u64)))
            .collect();
        // Destinations, touched so their pages are faulted in before measuring.
        let mut dsts: Vec<Vec<u8>> = (0..n).map(|_| vec![1u8; size]).collect();

        let get_tier = dram(WORKING_SET + slack);
        let put_tier = dram(WORKING_SET + slack);
        let store = TieredStore::new(
            &StoreConfig::default(),
            Namespaces::default(),
            dram(WORKING_SET + WORKING_SET / 8 + slack),
            None,
            None,
        )
        .expect("store");
        let opts = GetOptions::default();
        let popts = PutOptions::default();
        for (k, v) in keys.iter().zip(&srcs) {
            rt.block_on(get_tier.put(k, v.clone(), &popts))
                .expect("put");
            rt.block_on(put_tier.put(k, v.clone(), &popts))
                .expect("put");
            rt.block_on(store.put(k, v)).expect("store put");
        }
        // The bytes the tier holds, for the memcpy limit of a get.
        let stored: Vec<Bytes> = keys
            .iter()
            .map(|k| {
                rt.block_on(get_tier.get(k, &opts))
                    .expect("get")
                    .expect("present")
            })
            .collect();
        for (k, v) in keys.iter().zip(&srcs) {
            let (_, got) = rt
                .block_on(store.get(k, None))
                .expect("store get")
                .expect("present");
            assert_eq!(&got, v, "the store returned other bytes");
        }

        let mut g = c.benchmark_group(format!("dram-{}", size_label(size as u64).replace(' ', "")));
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0usize;
        let mut next = move || {
            i = (i + 1) % n;
            i
        };
        g.bench_function("memcpy_get", |b| {
            b.iter(|| {
                let j = next();
                dsts[j].copy_from_slice(&stored[j]);
                black_box(&dsts[j]);
            })
        });
        g.bench_function("tier_get", |b| {
            b.iter(|| {
                let j = next();
                black_box(rt.block_on(get_tier.get(&keys[j], &opts)).expect("get"))
            })
        });
        g.bench_function("tier_get_copy", |b| {
            b.iter(|| {
                let j = next();
                let v = rt
                    .block_on(get_tier.get(&keys[j], &opts))
                    .expect("get")
                    .expect("present");
                dsts[j].copy_from_slice(&v);
                black_box(&dsts[j]);
            })
        });
        g.bench_function("store_get", |b| {
            b.iter(|| {
                let j = next();
                black_box(rt.block_on(store.get(&keys[j], None)).expect("get"))
            })
        });
        g.bench_function("store_get_copy", |b| {
            b.iter(|| {
                let j = next();
                let (_, v) = rt
                    .block_on(store.get(&keys[j], None))
                    .expect("get")
                    .expect("present");
                dsts[j].copy_from_slice(&v);
                black_box(&dsts[j]);
            })
        });
        g.bench_function("memcpy_put", |b| {
            b.iter(|| {
                let j = next();
                dsts[j].copy_from_slice(&srcs[j]);
                black_box(&dsts[j]);
            })
        });
        g.bench_function("tier_put", |b| {
            b.iter(|| {
                let j = next();
                black_box(
                    rt.block_on(put_tier.put(&keys[j], srcs[j].clone(), &popts))
                        .expect("put"),
                )
            })
        });
        g.finish();
        drop(stored);
        rt.block_on(store.close()).expect("close");
    }
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without the undocumented
    // `pub fn` they generate.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .without_plots()
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
