//! Datasets, read-through, preload and the loader, against a real server whose
//! origin is a real directory or a real Azurite (behind a counting proxy).

#[path = "../../tiers/tests/common/azurite.rs"]
mod azurite;
#[path = "../../tiers/tests/common/faultproxy.rs"]
mod faultproxy;
#[path = "../../tiers/tests/common/pattern.rs"]
mod pattern;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_server::config::{Config, OriginKindConfig};
use strata_server::{Running, Server, testing};
use strata_tiers::{BlobTier, Key, PutOptions, Tier};
use strata_training_cache::loader::{FixedRecords, Loader, LoaderConfig, fetch_manifest};
use strata_training_cache::{PlanSpec, Position};
use strata_transport::{Client, ClientOptions, proto};

use self::azurite::Azurite;
use self::faultproxy::FaultProxy;
use self::pattern::pattern;

fn config(dir: &std::path::Path) -> Config {
    let mut c = testing::config(dir);
    c.dram.capacity = 64 << 20;
    c.nvme.capacity = 128 << 20;
    c.nvme.buffer_pool_size = 16 << 20;
    c
}

async fn client(r: &Running) -> Client {
    testing::client(r, ClientOptions::default()).await
}

fn rpc(c: &Client) -> proto::datasets_client::DatasetsClient<tonic::transport::Channel> {
    proto::datasets_client::DatasetsClient::new(c.channel().clone())
}

async fn add(c: &Client, name: &str, source: &str) -> proto::DatasetAddResponse {
    rpc(c)
        .add(proto::DatasetAddRequest {
            name: name.into(),
            source: source.into(),
            concurrency: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs a preload to its end; its last progress message.
async fn preload(c: &Client, name: &str) -> proto::PreloadProgress {
    let mut s = rpc(c)
        .preload(proto::PreloadRequest {
            name: name.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(p) = s.message().await.unwrap() {
        last = Some(p);
    }
    last.expect("at least one progress message")
}

/// Writes `n` shards of `size(i)` bytes under `<origin>/<dir>/`.
fn write_dir_shards(origin: &std::path::Path, dir: &str, n: usize, size: impl Fn(usize) -> usize) {
    let d = origin.join(dir);
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for i in 0..n {
        let p = if i % 3 == 0 {
            d.join(format!("sub/shard-{i:04}.bin"))
        } else {
            d.join(format!("shard-{i:04}.bin"))
        };
        std::fs::write(p, pattern(i as u64, size(i))).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_datasets_version_by_listing_and_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::start(config(dir.path())).await.unwrap();
    let origin = dir.path().join("origin");
    write_dir_shards(&origin, "ds", 5, |i| 1000 + i);
    let c = client(&running).await;

    let r = add(&c, "ds", "ds").await;
    assert!(r.new_version);
    let v1 = r.info.unwrap();
    assert_eq!((v1.shards, v1.bytes), (5, 5010));
    // Unchanged listing: same version.
    let again = add(&c, "ds", "ds").await;
    assert!(!again.new_version);
    assert_eq!(again.info.unwrap().version, v1.version);

    let m1 = fetch_manifest(&c, "ds", "").await.unwrap();
    assert_eq!(m1.version, v1.version);
    assert!(m1.shards.iter().any(|s| s.path == "sub/shard-0000.bin"));
    let (i0, i1) = (
        m1.shards
            .iter()
            .position(|s| s.path == "shard-0001.bin")
            .unwrap(),
        m1.shards
            .iter()
            .position(|s| s.path == "shard-0002.bin")
            .unwrap(),
    );
    // Read one shard of v1 (cached now); leave another uncached.
    assert_eq!(
        c.get(&m1.shard_key(i0)).await.unwrap().unwrap(),
        pattern(1, 1001)
    );

    // Rewrite shard 2: a new version.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(origin.join("ds/shard-0002.bin"), pattern(99, 3000)).unwrap();
    let r = add(&c, "ds", "ds").await;
    assert!(r.new_version);
    let v2 = r.info.unwrap();
    assert_ne!(v2.version, v1.version);
    assert_eq!(v2.versions, 2);
    let m2 = fetch_manifest(&c, "ds", "").await.unwrap();
    assert_eq!(
        c.get(&m2.shard_key(i1)).await.unwrap().unwrap(),
        pattern(99, 3000)
    );
    // v1's uncached shard 2 no longer exists as v1 listed it: refused, never the
    // new bytes under the old version.
    let err = c.get(&m1.shard_key(i1)).await.unwrap_err().to_string();
    assert!(err.contains("changed since"), "{err}");
    // v1's cached shard still serves v1's bytes.
    assert_eq!(
        c.get(&m1.shard_key(i0)).await.unwrap().unwrap(),
        pattern(1, 1001)
    );

    // ls / show, and bad input.
    let ls = rpc(&c)
        .list(proto::DatasetListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ls.datasets.len(), 1);
    assert_eq!(ls.datasets[0].version, v2.version);
    let show = rpc(&c)
        .show(proto::DatasetShowRequest {
            name: "ds".into(),
            version: v1.version.clone(),
            offset: 1,
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(show.shards.len(), 2);
    assert_eq!(show.shards[0].path, m1.shards[1].path);
    for (name, source, what) in [
        ("ds", "../etc", "without '..'"),
        ("bad/name", "ds", "dataset name"),
        ("ds2", "missing", "not a directory"),
        ("ds3", "http://x/y", "is a URL"),
    ] {
        let e = rpc(&c)
            .add(proto::DatasetAddRequest {
                name: name.into(),
                source: source.into(),
                concurrency: 0,
            })
            .await
            .unwrap_err();
        assert!(e.message().contains(what), "{name} {source}: {e:?}");
    }
    let e = c
        .get(&Key::new("shard", "", "nope@0000/x").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("strata dataset add"), "{e}");

    // The registry survives a restart (manifests live in the origin).
    drop(c);
    running.shutdown().await.unwrap();
    let running = Server::start(config(dir.path())).await.unwrap();
    let c = client(&running).await;
    let m = fetch_manifest(&c, "ds", &v1.version).await.unwrap();
    assert_eq!(m, m1);
    assert_eq!(fetch_manifest(&c, "ds", "").await.unwrap(), m2);
    running.shutdown().await.unwrap();
}

/// The registry is the server's own state: a client cannot write, delete, pin or
/// evict it (before, `strata put obj/_strata/datasets/index.json` with one byte
/// stopped the server from ever starting again), over gRPC or the data path; and
/// an index damaged anyway is set aside at start-up, which goes on with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_cannot_be_written_by_clients_and_a_damaged_one_does_not_stop_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::start(config(dir.path())).await.unwrap();
    write_dir_shards(&dir.path().join("origin"), "ds", 3, |i| 500 + i);
    let c = client(&running).await;
    let version = add(&c, "ds", "ds").await.info.unwrap().version;
    let index = Key::new("obj", "_strata", "datasets/index.json").unwrap();
    let tcp = testing::client(
        &running,
        testing::options(Some(strata_transport::data::CarrierChoice::Tcp), 1),
    )
    .await;
    for (via, client) in [("grpc", &c), ("tcp", &tcp)] {
        let e = client
            .put(&index, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{via}: {e}");
        let e = client.delete(&index).await.unwrap_err();
        assert!(e.to_string().contains("reserved"), "{via}: {e}");
        // Reading it is allowed.
        let body = client.get(&index).await.unwrap().expect("the index");
        assert!(String::from_utf8_lossy(&body).contains(&version), "{via}");
    }
    let e = c.pin(&index).await.unwrap_err();
    assert!(e.to_string().contains("reserved"), "pin: {e}");
    let e = c.evict(&index).await.unwrap_err();
    assert!(e.to_string().contains("reserved"), "evict: {e}");

    // Damaged all the same (a disk, an older server, a hand in the origin): the
    // next start sets it aside and starts with no datasets.
    running.store.put(&index, b"x").await.unwrap();
    drop((c, tcp));
    running.shutdown().await.unwrap();
    let running = Server::start(config(dir.path()))
        .await
        .expect("a damaged dataset index does not stop a start");
    let c = client(&running).await;
    let listed = rpc(&c)
        .list(proto::DatasetListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.datasets.is_empty(), "{listed:?}");
    let aside = running
        .store
        .list("obj", "_strata", b"datasets/index.json.corrupt-", 10)
        .await
        .unwrap();
    assert_eq!(aside.len(), 1, "the damaged index is set aside: {aside:?}");
    // The same listing gets back the same version.
    let again = add(&c, "ds", "ds").await.info.unwrap();
    assert_eq!(again.version, version);
    running.shutdown().await.unwrap();
}

async fn blob_server(az: &Azurite, proxy: &FaultProxy, dir: &std::path::Path) -> Running {
    let mut c = config(dir);
    c.origin.kind = OriginKindConfig::Blob;
    c.origin.blob = Some(proxy.config(az, "origin"));
    Server::start(c).await.unwrap()
}

async fn put_blobs(tier: &BlobTier, names: &[(String, Bytes)]) {
    for (n, v) in names {
        tier.put(
            &Key::new("shard", "", n).unwrap(),
            v.clone(),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    }
}

/// A raw-names tier on `container` (blob name = key body).
async fn raw_tier(az: &Azurite, container: &str) -> BlobTier {
    let mut cfg = az.config(container);
    cfg.raw_names = true;
    let t = BlobTier::open(cfg).await.unwrap();
    t.ensure_container().await.unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_read_through_is_single_flight_pinned_limited_and_fills_both_tiers() {
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port, 3, "Retry-After: 0\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let data = raw_tier(&az, "training").await;
    let shards: Vec<(String, Bytes)> = (0..6)
        .map(|i| (format!("imagenet/train/{i:02}.tar"), pattern(i, 3 << 20)))
        .collect();
    put_blobs(&data, &shards).await;
    let _origin = raw_tier(&az, "origin").await;
    let running = blob_server(&az, &proxy, dir.path()).await;
    let c = client(&running).await;

    // A URL in the origin's account (through the proxy, as the server sees it).
    let url = format!(
        "http://127.0.0.1:{}/{}/training/imagenet/",
        proxy.port,
        azurite::ACCOUNT
    );
    let r = rpc(&c)
        .add(proto::DatasetAddRequest {
            name: "imagenet".into(),
            source: url,
            concurrency: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let info = r.info.unwrap();
    assert_eq!(
        (info.shards, info.bytes, info.concurrency),
        (6, 18 << 20, 2)
    );
    let m = fetch_manifest(&c, "imagenet", "").await.unwrap();
    assert_eq!(m.shards[0].path, "train/00.tar");

    // 16 readers miss the same cold shard at once: its 3 pages are one run of
    // pages (store.origin_read_size), read from Blob once.
    let stats = running.datasets.stats().ns("shard");
    let key = m.shard_key(0);
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { c.get(&key).await.unwrap().unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), shards[0].1);
    }
    let reads = stats
        .origin_reads
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reads, 1, "3 pages of 1 MiB, read from Blob in one request");
    // Filled into DRAM and NVMe both.
    let head = running.store.lookup(&key).await.unwrap().unwrap();
    let nvme = running.store.nvme().unwrap();
    for i in 0..3 {
        assert!(
            nvme.contains(&key.page(head.head.generation, i))
                .await
                .unwrap()
        );
    }

    // Preload the rest with the dataset's limit of 2 requests in flight.
    let before = proxy.seen();
    let last = preload(&c, "imagenet").await;
    assert_eq!((last.shards_done, last.shards_total), (6, 6));
    assert_eq!(last.bytes_done, 18 << 20);
    assert_eq!(last.bytes_cached, 3 << 20, "shard 0 was cached");
    assert_eq!(
        proxy.seen() - before,
        5,
        "5 shards, each one request for its 3 pages, nothing twice"
    );
    assert!(
        proxy.max_in_flight() <= 2,
        "max in flight {}",
        proxy.max_in_flight()
    );
    // Resumed: everything cached, nothing read.
    let before = proxy.seen();
    assert_eq!(preload(&c, "imagenet").await.bytes_cached, 18 << 20);
    assert_eq!(proxy.seen(), before);

    // A blob rewritten after the listing is refused, not mixed.
    running.store.evict(&m.shard_key(5)).await.unwrap();
    put_blobs(
        &data,
        &[("imagenet/train/05.tar".to_string(), pattern(77, 3 << 20))],
    )
    .await;
    assert!(!nvme.contains(&m.shard_key(5)).await.unwrap());
    let e = c.get(&m.shard_key(5)).await.unwrap_err().to_string();
    assert!(e.contains("changed since"), "{e}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_follows_the_plan_whatever_the_window_with_samples_and_stall() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::start(config(dir.path())).await.unwrap();
    let origin = dir.path().join("origin");
    // Unequal shards, two above the range size.
    write_dir_shards(&origin, "ld", 12, |i| {
        if i % 5 == 0 {
            5 << 20
        } else {
            40_000 + i * 1000
        }
    });
    let c = Arc::new(client(&running).await);
    add(&c, "ld", "ld").await;
    let m = Arc::new(fetch_manifest(&c, "ld", "").await.unwrap());
    let spec = PlanSpec::new(12, 7, 2);
    let want: Vec<u32> = spec
        .rank(1)
        .items(Position { epoch: 0, step: 2 }, 2)
        .map(|i| i.shard)
        .collect();
    assert_eq!(want.len(), 6 + 4);
    for (window_items, window_bytes, range_parallelism) in
        [(1, 1 << 20, 1), (4, 8 << 20, 2), (32, 1 << 30, 8)]
    {
        let cfg = LoaderConfig {
            window_items,
            window_bytes,
            range_size: 1 << 20,
            range_parallelism,
            job_id: 42,
            register: true,
            progress_every: Duration::from_secs(1),
        };
        let mut l = Loader::start(
            c.clone(),
            m.clone(),
            spec.rank(1),
            Position { epoch: 0, step: 2 },
            2,
            cfg,
            None,
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        while let Some(s) = l.next().await {
            let s = s.unwrap();
            let shard = &m.shards[s.shard as usize];
            assert_eq!(s.bytes.len() as u64, shard.size);
            let i: u64 = shard.path.trim_start_matches("sub/")[6..10]
                .parse()
                .unwrap();
            assert_eq!(s.bytes, pattern(i, shard.size as usize));
            got.push(s.shard);
        }
        assert_eq!(got, want, "window {window_items}");
        let st = l.stats();
        assert_eq!(st.shards, 10);
        assert!(st.stall > Duration::ZERO);
    }
    // The server knows the job's plan.
    let known = rpc(&c)
        .progress(proto::ProgressRequest {
            name: "ld".into(),
            version: m.version.clone(),
            job_id: 42,
            epoch: 1,
            step: 0,
            rate: 0.0,
        })
        .await
        .unwrap()
        .into_inner()
        .known;
    assert!(known);

    // With an index: fixed 10 000-byte records, zero-copy slices in order.
    let mut l = Loader::start(
        c.clone(),
        m.clone(),
        spec.rank(0),
        Position::default(),
        1,
        LoaderConfig {
            register: false,
            ..LoaderConfig::default()
        },
        Some(Arc::new(FixedRecords(10_000))),
    )
    .await
    .unwrap();
    let order: Vec<u32> = spec.rank_order(0, 0);
    let mut expect = Vec::new();
    for &s in &order {
        let size = m.shards[s as usize].size;
        for off in (0..size).step_by(10_000) {
            expect.push((s, off, 10_000.min(size - off)));
        }
    }
    let mut got = Vec::new();
    while let Some(s) = l.next().await {
        let s = s.unwrap();
        assert_eq!(s.bytes.len() as u64, s.range.1);
        got.push((s.shard, s.range.0, s.range.1));
    }
    assert_eq!(got, expect);
    assert_eq!(l.stats().samples as usize, expect.len());
    // A plan over the wrong number of shards is refused.
    let e = Loader::start(
        c.clone(),
        m.clone(),
        PlanSpec::new(11, 7, 1).rank(0),
        Position::default(),
        1,
        LoaderConfig::default(),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("11 shards"), "{e}");
    running.shutdown().await.unwrap();
}

/// One epoch-shuffled job over a dataset 1.7x the DRAM tier (no NVMe, so every
/// DRAM miss is an origin read): with its plan registered, the DRAM tier keeps
/// what the plan reads soonest, the later epochs read from the origin within two
/// reads of Belady's optimum, and far less than the same job unregistered (the
/// size-aware fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_plan_makes_dram_eviction_clairvoyant() {
    let spec = PlanSpec::new(16, 3, 1);
    let mut reads = Vec::new();
    for register in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.nvme.enabled = false;
        cfg.dram.capacity = 8 << 20;
        let running = Server::start(cfg).await.unwrap();
        write_dir_shards(&dir.path().join("origin"), "cv", 16, |_| 900_000);
        let c = Arc::new(client(&running).await);
        add(&c, "cv", "cv").await;
        let m = Arc::new(fetch_manifest(&c, "cv", "").await.unwrap());
        let mut l = Loader::start(
            c.clone(),
            m.clone(),
            spec.rank(0),
            Position::default(),
            4,
            LoaderConfig {
                window_items: 1,
                register,
                job_id: 1,
                progress_every: Duration::from_millis(2),
                ..LoaderConfig::default()
            },
            None,
        )
        .await
        .unwrap();
        let stats = running.datasets.stats().ns("shard");
        let mut n = 0;
        let mut after_epoch0 = 0;
        while let Some(s) = l.next().await {
            s.unwrap();
            n += 1;
            if n == 16 {
                after_epoch0 = stats
                    .origin_reads
                    .load(std::sync::atomic::Ordering::Relaxed);
            }
            // Let the progress report land before the next read.
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        let total = stats
            .origin_reads
            .load(std::sync::atomic::Ordering::Relaxed);
        let d = running.store.dram().stats().ns("shard").snapshot();
        eprintln!(
            "register {register}: origin reads {total} (epoch 0: {after_epoch0}), dram {d:?}"
        );
        reads.push(total - after_epoch0);
        running.shutdown().await.unwrap();
    }
    let (clairvoyant, fallback) = (reads[0], reads[1]);
    // Nine 900 kB shards fit the 8 MiB arena. Belady's rule (with bypass) over
    // the same 64 reads gives the fewest misses any policy can have.
    let order: Vec<u32> = (0..4).flat_map(|e| spec.rank_order(e, 0)).collect();
    let ideal = belady_misses(&order[16..], &order[..16], 9);
    eprintln!("epochs 1-3: clairvoyant {clairvoyant}, fallback {fallback}, Belady {ideal}");
    assert!(
        clairvoyant <= ideal + 2,
        "origin reads in epochs 1-3: clairvoyant {clairvoyant}, Belady {ideal}"
    );
    // Without a plan the size-aware fallback (GDSF) decides; under a reshuffle
    // every epoch it cannot know what comes next.
    assert!(
        clairvoyant * 3 <= fallback * 2,
        "clairvoyant {clairvoyant}, unplanned fallback {fallback}"
    );
}

/// Misses of Belady's rule (evict, or do not admit, the entry read furthest
/// ahead) over `reads`, starting from a cache that holds what `before` left in
/// it under the same rule, `cap` entries.
fn belady_misses(reads: &[u32], before: &[u32], cap: usize) -> u64 {
    let all: Vec<u32> = before.iter().chain(reads).copied().collect();
    let mut cache: Vec<u32> = Vec::new();
    let mut misses = 0;
    for (i, &s) in all.iter().enumerate() {
        if cache.contains(&s) {
            continue;
        }
        if i >= before.len() {
            misses += 1;
        }
        let next = |x: u32| {
            all[i + 1..]
                .iter()
                .position(|&y| y == x)
                .unwrap_or(usize::MAX)
        };
        if cache.len() < cap {
            cache.push(s);
            continue;
        }
        let (at, far) = cache
            .iter()
            .enumerate()
            .map(|(j, &c)| (j, next(c)))
            .max_by_key(|&(_, n)| n)
            .unwrap();
        if far > next(s) {
            cache[at] = s;
        }
    }
    misses
}
