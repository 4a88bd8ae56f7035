//! The tier conformance suite (`common/conformance.rs`) against every local tier.

#[path = "common/conformance.rs"]
pub mod conformance;

use strata_tiers::{DramConfig, DramTier, EvictionKind, LocalDirTier, NvmeConfig, NvmeTier, Tier};

use self::conformance::{capacity_and_eviction, conformance};

const MIB: u64 = 1024 * 1024;

fn dram(eviction: EvictionKind, capacity: u64) -> DramTier {
    DramTier::new(&DramConfig {
        capacity,
        eviction,
        ..DramConfig::default()
    })
    .expect("DRAM tier")
}

/// A small NVMe tier: 16 MiB of 1 MiB blocks, 4 MiB of write buffers.
async fn nvme(dir: &std::path::Path) -> NvmeTier {
    NvmeTier::open(&NvmeConfig {
        enabled: true,
        dir: Some(dir.to_path_buf()),
        capacity: 16 * MIB,
        block_size: MIB,
        buffer_pool_size: 4 * MIB,
        io_uring: true,
        direct_io: true,
    })
    .await
    .expect("NVMe tier")
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_s3fifo_conformance() {
    conformance(&dram(EvictionKind::S3fifo, 16 * MIB)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_lru_conformance() {
    conformance(&dram(EvictionKind::Lru, 16 * MIB)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_gdsf_conformance() {
    conformance(&dram(EvictionKind::Gdsf, 16 * MIB)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_gdsf_capacity_and_eviction() {
    capacity_and_eviction(&dram(EvictionKind::Gdsf, 2 * MIB), 2 * MIB).await;
}

/// A pin taken on one value never releases a pin on the value that replaced it.
#[tokio::test(flavor = "multi_thread")]
async fn dram_unpin_value_leaves_a_replacement_pinned() {
    let t = dram(EvictionKind::Lru, 2 * MIB);
    let k = strata_tiers::Key::new("kv", "", "k").expect("key");
    let opts = strata_tiers::PutOptions::default();
    t.put(&k, bytes::Bytes::from_static(b"old"), &opts)
        .await
        .expect("put");
    let old = t.pin_value(&k).expect("pinned");
    t.put(&k, bytes::Bytes::from_static(b"new"), &opts)
        .await
        .expect("put");
    assert!(t.pin(&k), "the replacement is pinned by someone else");
    assert!(!t.unpin_value(&k, &old), "the old pin releases nothing");
    assert!(t.is_pinned(&k), "the replacement's pin stands");
    let new = t.pin_value(&k).expect("pinned");
    assert!(t.unpin_value(&k, &new));
    assert!(t.unpin(&k));
    assert!(!t.is_pinned(&k));
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_s3fifo_capacity_and_eviction() {
    capacity_and_eviction(&dram(EvictionKind::S3fifo, 2 * MIB), 2 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dram_lru_capacity_and_eviction() {
    capacity_and_eviction(&dram(EvictionKind::Lru, 2 * MIB), 2 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nvme_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = nvme(dir.path()).await;
    conformance(&tier).await;
    tier.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn nvme_capacity_and_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = nvme(dir.path()).await;
    capacity_and_eviction(&tier, 16 * MIB).await;
    tier.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn localdir_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = LocalDirTier::open(dir.path().join("origin")).expect("local-dir tier");
    conformance(&tier).await;
    tier.close().await.expect("close");
}
