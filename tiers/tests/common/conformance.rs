//! The conformance suite every [`Tier`] must pass (STYLE.md item 10), in the manner
//! of object_store's `integration.rs`: one generic suite, run against each tier.
//!
//! - [`conformance`]: the contract of the trait — misses are values, ranges resolve
//!   like HTTP, a put replaces (never mixes), delete and contains agree, listing.
//! - [`capacity_and_eviction`]: for bounded tiers — writing far past the capacity
//!   keeps use under it, recent keys stay readable, evicted keys are gone (never
//!   corrupt), and a dropped write is never readable.
//!
//! Both need a multi-threaded tokio runtime (they race readers against writers on
//! real threads). Keys live under a tenant unique to the run, so a tier that keeps
//! state between runs (Blob, a reused directory) does not see earlier runs' keys.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use strata_tiers::{ByteRange, Error, GetOptions, Key, PutOptions, PutOutcome, Tier};

/// Namespace of every key the suite writes.
const NS: &str = "kv";

/// A tenant name unique to this run (and `suffix`).
fn run_tenant(suffix: &str) -> String {
    format!("conf-{:012x}-{suffix}", rand::random::<u64>() >> 16)
}

fn key(tenant: &str, body: &str) -> Key {
    Key::new(NS, tenant, body).expect("valid key")
}

#[path = "pattern.rs"]
mod pattern;
pub(crate) use self::pattern::pattern;

fn ranged(offset: u64, length: Option<u64>) -> GetOptions {
    GetOptions {
        range: Some(ByteRange { offset, length }),
        deadline: None,
    }
}

/// Short description of bytes for assertion messages (never the payload itself).
fn describe(b: &Option<Bytes>) -> String {
    match b {
        None => "None".into(),
        Some(b) => format!("{} bytes, crc {:#010x}", b.len(), crc32c::crc32c(b)),
    }
}

async fn get<T: Tier>(tier: &T, k: &Key) -> Option<Bytes> {
    tier.get(k, &GetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}: get {k:?}: {e}", tier.name()))
}

/// Puts a value the suite needs stored. A lossy tier may drop a write under
/// pressure; the suite's own writes are few, so a drop is retried a few times.
async fn put_stored<T: Tier>(tier: &T, k: &Key, value: &Bytes) {
    for _ in 0..20 {
        let outcome = tier
            .put(k, value.clone(), &PutOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: put {k:?}: {e}", tier.name()));
        match outcome {
            PutOutcome::Stored => return,
            PutOutcome::Dropped => {
                assert!(
                    tier.capabilities().lossy_writes,
                    "{}: dropped a write but does not declare lossy_writes",
                    tier.name()
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    panic!("{}: put {k:?} dropped 20 times in a row", tier.name());
}

/// The contract of [`Tier`], for any tier. Panics (with the tier's name) on the
/// first broken rule.
pub async fn conformance<T: Tier>(tier: &T) {
    let name = tier.name();
    let tenant = run_tenant("main");
    misses(tier, &tenant).await;
    put_get_and_ranges(tier, &tenant).await;
    empty_value(tier, &tenant).await;
    overwrite(tier, &tenant).await;
    concurrent_overwrite(tier, &tenant).await;
    delete(tier, &tenant).await;
    tenants_are_separate(tier).await;
    if tier.capabilities().listable {
        listing(tier).await;
    } else {
        let listed = tier
            .list(NS, &tenant, b"", 100)
            .await
            .unwrap_or_else(|e| panic!("{name}: list: {e}"));
        assert!(
            listed.is_empty(),
            "{name}: not listable, yet listed {listed:?}"
        );
    }
}

async fn misses<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    let k = key(tenant, "never-written");
    assert_eq!(get(tier, &k).await, None, "{name}: a miss is Ok(None)");
    assert!(
        matches!(tier.get(&k, &ranged(5, Some(5))).await, Ok(None)),
        "{name}: a ranged miss is Ok(None)"
    );
    assert_eq!(
        tier.size(&k).await.ok(),
        Some(None),
        "{name}: size of a miss"
    );
    assert_eq!(
        tier.contains(&k).await.ok(),
        Some(false),
        "{name}: contains of a miss"
    );
    assert_eq!(
        tier.delete(&k).await.ok(),
        Some(false),
        "{name}: delete of a miss"
    );
}

async fn put_get_and_ranges<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    for (body, len) in [("small", 11usize), ("medium", 300 * 1024 + 7)] {
        let k = key(tenant, body);
        let v = pattern(len as u64, len);
        put_stored(tier, &k, &v).await;
        assert_eq!(
            get(tier, &k).await,
            Some(v.clone()),
            "{name}: {body} round trip"
        );
        assert_eq!(
            tier.size(&k).await.ok(),
            Some(Some(len as u64)),
            "{name}: size"
        );
        assert_eq!(tier.contains(&k).await.ok(), Some(true), "{name}: contains");

        let size = len as u64;
        let cases: [(u64, Option<u64>, std::ops::Range<usize>); 7] = [
            (0, None, 0..len),
            (2, Some(3), 2..5),
            (5, None, 5..len),
            // Runs past the end: clipped, like HTTP.
            (size - 3, Some(100), len - 3..len),
            (0, Some(u64::MAX), 0..len),
            // Empty ranges at the end are allowed.
            (size, None, len..len),
            (size, Some(5), len..len),
        ];
        for (offset, length, want) in cases {
            let got = tier
                .get(&k, &ranged(offset, length))
                .await
                .unwrap_or_else(|e| panic!("{name}: range {offset}+{length:?}: {e}"));
            assert_eq!(
                got.as_ref(),
                Some(&v.slice(want.clone())),
                "{name}: {body} range {offset}+{length:?} should be bytes {want:?}"
            );
        }
        for (offset, length) in [(size + 1, None), (size + 1, Some(1)), (u64::MAX, Some(1))] {
            match tier.get(&k, &ranged(offset, length)).await {
                Err(Error::RangeOutOfBounds { size: s, .. }) => {
                    assert_eq!(s, size, "{name}: RangeOutOfBounds names the size");
                }
                other => panic!(
                    "{name}: range {offset}+{length:?} of {size} bytes: expected RangeOutOfBounds, got {:?}",
                    other.map(|b| describe(&b))
                ),
            }
        }
    }
}

async fn empty_value<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    let k = key(tenant, "empty");
    put_stored(tier, &k, &Bytes::new()).await;
    assert_eq!(
        get(tier, &k).await,
        Some(Bytes::new()),
        "{name}: empty value"
    );
    assert_eq!(
        tier.size(&k).await.ok(),
        Some(Some(0)),
        "{name}: empty size"
    );
    assert_eq!(
        tier.contains(&k).await.ok(),
        Some(true),
        "{name}: contains empty"
    );
    assert_eq!(
        tier.get(&k, &ranged(0, Some(4))).await.ok(),
        Some(Some(Bytes::new())),
        "{name}: empty range of an empty value"
    );
    assert!(
        matches!(
            tier.get(&k, &ranged(1, None)).await,
            Err(Error::RangeOutOfBounds { size: 0, .. })
        ),
        "{name}: a range past an empty value"
    );
}

async fn overwrite<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    let k = key(tenant, "overwrite");
    let long = pattern(10, 64 * 1024);
    let short = pattern(11, 1000);
    put_stored(tier, &k, &long).await;
    put_stored(tier, &k, &short).await;
    assert_eq!(
        get(tier, &k).await,
        Some(short.clone()),
        "{name}: a shorter second put replaces the first entirely"
    );
    assert_eq!(
        tier.size(&k).await.ok(),
        Some(Some(1000)),
        "{name}: size after overwrite"
    );
    let longer = pattern(12, 100 * 1024);
    put_stored(tier, &k, &longer).await;
    assert_eq!(
        get(tier, &k).await,
        Some(longer),
        "{name}: a longer third put replaces"
    );
}

/// One writer alternates two values under one key while readers read it: every
/// read is one of the two, whole.
async fn concurrent_overwrite<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    let k = key(tenant, "race");
    let a = pattern(20, 200 * 1024);
    let b = pattern(21, 150 * 1024 + 3);
    put_stored(tier, &k, &a).await;
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let lossy = tier.capabilities().lossy_writes;
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    handle.block_on(async {
                        while !done.load(Ordering::Acquire) {
                            let got = tier
                                .get(&k, &GetOptions::default())
                                .await
                                .unwrap_or_else(|e| panic!("{name}: get during overwrite: {e}"));
                            match &got {
                                Some(v) if *v == a || *v == b => {}
                                // A lossy tier may have dropped the latest write.
                                None if lossy => {}
                                other => panic!(
                                    "{name}: a read during overwrites returned {} (neither value)",
                                    describe(other)
                                ),
                            }
                            reads.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                    });
                });
            }
            handle.block_on(async {
                for i in 0..30 {
                    // Interleave: let the readers read between writes.
                    let patience = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while reads.load(Ordering::Relaxed) < 2 * i
                        && std::time::Instant::now() < patience
                    {
                        std::thread::yield_now();
                    }
                    let v = if i % 2 == 0 { &b } else { &a };
                    tier.put(&k, v.clone(), &PutOptions::default())
                        .await
                        .unwrap_or_else(|e| panic!("{name}: put during overwrite: {e}"));
                }
            });
            done.store(true, Ordering::Release);
        });
    });
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "{name}: the readers never ran"
    );
}

async fn delete<T: Tier>(tier: &T, tenant: &str) {
    let name = tier.name();
    let k = key(tenant, "delete-me");
    put_stored(tier, &k, &pattern(30, 4096)).await;
    assert_eq!(
        tier.delete(&k).await.ok(),
        Some(true),
        "{name}: delete of a present key"
    );
    assert_eq!(
        tier.delete(&k).await.ok(),
        Some(false),
        "{name}: second delete"
    );
    assert_eq!(get(tier, &k).await, None, "{name}: get after delete");
    assert_eq!(
        tier.size(&k).await.ok(),
        Some(None),
        "{name}: size after delete"
    );
    assert_eq!(
        tier.contains(&k).await.ok(),
        Some(false),
        "{name}: contains after delete"
    );
    // A deleted key can be written again.
    let v = pattern(31, 777);
    put_stored(tier, &k, &v).await;
    assert_eq!(get(tier, &k).await, Some(v), "{name}: put after delete");
}

async fn tenants_are_separate<T: Tier>(tier: &T) {
    let name = tier.name();
    let (t1, t2) = (run_tenant("t1"), run_tenant("t2"));
    let (k1, k2) = (key(&t1, "same/body"), key(&t2, "same/body"));
    let (v1, v2) = (pattern(40, 100), pattern(41, 200));
    put_stored(tier, &k1, &v1).await;
    assert_eq!(
        get(tier, &k2).await,
        None,
        "{name}: another tenant's key is a miss"
    );
    put_stored(tier, &k2, &v2).await;
    assert_eq!(
        get(tier, &k1).await,
        Some(v1),
        "{name}: tenant 1 keeps its value"
    );
    assert_eq!(
        get(tier, &k2).await,
        Some(v2),
        "{name}: tenant 2 has its own"
    );
}

async fn listing<T: Tier>(tier: &T) {
    let name = tier.name();
    let tenant = run_tenant("list");
    let other = run_tenant("list-other");
    for (body, len) in [
        ("list/a", 1usize),
        ("list/b", 2),
        ("list/c", 3),
        ("lisx", 4),
    ] {
        put_stored(tier, &key(&tenant, body), &pattern(len as u64, len)).await;
    }
    put_stored(tier, &key(&other, "list/a"), &pattern(9, 9)).await;
    let list = |prefix: &'static [u8], limit: usize, tenant: String| async move {
        tier.list(NS, &tenant, prefix, limit)
            .await
            .unwrap_or_else(|e| panic!("{name}: list: {e}"))
            .into_iter()
            .map(|l| (String::from_utf8_lossy(l.key.body()).into_owned(), l.len))
            .collect::<Vec<_>>()
    };
    let owned = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(b, l)| ((*b).to_owned(), *l))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(b"list/", 100, tenant.clone()).await,
        owned(&[("list/a", 1), ("list/b", 2), ("list/c", 3)]),
        "{name}: list by prefix, sorted, with lengths"
    );
    assert_eq!(
        list(b"list/", 2, tenant.clone()).await,
        owned(&[("list/a", 1), ("list/b", 2)]),
        "{name}: list honours the limit (first keys in order)"
    );
    assert_eq!(
        list(b"", 100, tenant.clone()).await.len(),
        4,
        "{name}: an empty prefix lists the tenant's keys"
    );
    assert!(
        list(b"nope", 100, tenant.clone()).await.is_empty(),
        "{name}: no match"
    );
    assert_eq!(
        list(b"list/", 100, other.clone()).await,
        owned(&[("list/a", 9)]),
        "{name}: listing is per tenant"
    );
    assert!(
        tier.delete(&key(&tenant, "list/b")).await.unwrap_or(false),
        "{name}: delete list/b"
    );
    assert_eq!(
        list(b"list/", 100, tenant).await,
        owned(&[("list/a", 1), ("list/c", 3)]),
        "{name}: a deleted key is not listed"
    );
}

/// For a bounded tier of `capacity` bytes: writing four times the capacity keeps
/// `usage().used <= usage().capacity`; the latest keys stay readable; an evicted key
/// is gone, never corrupt; a dropped write is never readable; and a burst of
/// concurrent overwrites never leaves a key reading as its older value.
pub async fn capacity_and_eviction<T: Tier>(tier: &T, capacity: u64) {
    let name = tier.name();
    assert!(tier.capabilities().bounded, "{name}: not a bounded tier");
    let tenant = run_tenant("cap");
    oversized_overwrite(tier, &tenant, capacity).await;
    let value_len = (capacity / 32) as usize;
    let count = 4 * 32;
    let mut outcomes = Vec::with_capacity(count);
    for i in 0..count {
        let k = key(&tenant, &format!("k{i:04}"));
        let outcome = tier
            .put(&k, pattern(i as u64, value_len), &PutOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: put {i} of {count}: {e}"));
        if outcome == PutOutcome::Dropped {
            assert!(
                tier.capabilities().lossy_writes,
                "{name}: dropped a write but does not declare lossy_writes"
            );
        }
        outcomes.push(outcome);
        let u = tier.usage();
        assert!(
            u.used <= u.capacity,
            "{name}: after put {i} of {value_len} bytes, {} bytes used of {}",
            u.used,
            u.capacity
        );
    }
    let mut readable_bytes = 0u64;
    let mut readable = 0usize;
    let mut present = Vec::new();
    let mut last_stored_readable = None;
    for (i, outcome) in outcomes.iter().enumerate() {
        let k = key(&tenant, &format!("k{i:04}"));
        let got = get(tier, &k).await;
        match &got {
            None => {
                assert_eq!(
                    tier.contains(&k).await.ok(),
                    Some(false),
                    "{name}: k{i} gone, yet contained"
                );
                assert_eq!(
                    tier.size(&k).await.ok(),
                    Some(None),
                    "{name}: k{i} gone, yet sized"
                );
            }
            Some(v) => {
                assert_eq!(
                    *outcome,
                    PutOutcome::Stored,
                    "{name}: k{i} was dropped, yet readable"
                );
                assert!(
                    *v == pattern(i as u64, value_len),
                    "{name}: k{i} is corrupt: {}",
                    describe(&got)
                );
                assert_eq!(
                    tier.size(&k).await.ok(),
                    Some(Some(value_len as u64)),
                    "{name}: size of k{i}"
                );
                readable += 1;
                readable_bytes += v.len() as u64;
                present.push(i as u64);
            }
        }
        if *outcome == PutOutcome::Stored {
            last_stored_readable = Some(got.is_some());
        }
    }
    assert_eq!(
        last_stored_readable,
        Some(true),
        "{name}: the last stored key is not readable"
    );
    assert!(
        readable_bytes <= capacity,
        "{name}: {readable} keys ({readable_bytes} bytes) readable from a tier of {capacity} bytes"
    );
    let u = tier.usage();
    assert!(
        u.used <= u.capacity,
        "{name}: {} bytes used of {}",
        u.used,
        u.capacity
    );

    overwrite_burst(tier, &present, value_len, &tenant).await;
}

/// A value larger than the whole tier cannot be stored: the put fails (and the old
/// value may stay) or is dropped (and then the key is not readable: a dropped
/// overwrite must not leave the older value to be served in its place).
async fn oversized_overwrite<T: Tier>(tier: &T, tenant: &str, capacity: u64) {
    let name = tier.name();
    let k = key(tenant, "oversized");
    let old = pattern(50, 1000);
    put_stored(tier, &k, &old).await;
    let huge = pattern(51, capacity as usize + 1);
    match tier.put(&k, huge, &PutOptions::default()).await {
        Err(_) => {
            let got = get(tier, &k).await;
            assert!(
                got.is_none() || got == Some(old),
                "{name}: after a failed put: {}",
                describe(&got)
            );
        }
        Ok(PutOutcome::Dropped) => {
            assert_eq!(
                get(tier, &k).await,
                None,
                "{name}: a dropped overwrite left the older value readable"
            );
            assert_eq!(
                tier.contains(&k).await.ok(),
                Some(false),
                "{name}: contains after a dropped overwrite"
            );
        }
        Ok(PutOutcome::Stored) => panic!("{name}: stored a value larger than its capacity"),
    }
    let _ = tier.delete(&k).await;
}

/// Eight threads overwrite the keys still present, each thread its own keys, for
/// several rounds, as fast as the tier takes them. A key whose last write was stored
/// reads as that write or is gone; a key whose last write was dropped is gone. Never
/// an older value.
async fn overwrite_burst<T: Tier>(tier: &T, present: &[u64], value_len: usize, tenant: &str) {
    let name = tier.name();
    const THREADS: usize = 8;
    const ROUNDS: u64 = 4;
    let seed = |round: u64, i: u64| (round + 1) * 100_000 + i;
    let handle = tokio::runtime::Handle::current();
    // Per key: (index, outcome of its last write, round of its last write).
    let results: Vec<(u64, PutOutcome, u64)> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let handle = &handle;
                    let mine: Vec<u64> = present.iter().copied().skip(t).step_by(THREADS).collect();
                    s.spawn(move || {
                        handle.block_on(async move {
                            let mut last = Vec::new();
                            for round in 0..ROUNDS {
                                last.clear();
                                for &i in &mine {
                                    let k = key(tenant, &format!("k{i:04}"));
                                    let outcome = tier
                                        .put(
                                            &k,
                                            pattern(seed(round, i), value_len),
                                            &PutOptions::default(),
                                        )
                                        .await
                                        .unwrap_or_else(|e| panic!("{name}: burst put k{i}: {e}"));
                                    last.push((i, outcome, round));
                                }
                            }
                            last
                        })
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("burst thread"))
                .collect()
        })
    });
    let dropped = results
        .iter()
        .filter(|(_, o, _)| *o == PutOutcome::Dropped)
        .count();
    eprintln!(
        "{name}: overwrite burst over {} keys: {dropped} of the last writes dropped",
        present.len()
    );
    for (i, outcome, round) in results {
        let k = key(tenant, &format!("k{i:04}"));
        let got = get(tier, &k).await;
        let Some(v) = &got else { continue };
        if outcome == PutOutcome::Stored && *v == pattern(seed(round, i), value_len) {
            continue;
        }
        let older = (0..round)
            .map(|r| pattern(seed(r, i), value_len))
            .chain([pattern(i, value_len)])
            .any(|old| old == *v);
        panic!(
            "{name}: k{i}, last written in round {round} ({outcome:?}), reads as {} ({})",
            describe(&got),
            if older {
                "an older value"
            } else {
                "no value ever written"
            }
        );
    }
}
