//! The GPU path (feature `gpu`). Where there is no GPU (this repository's CI), it
//! must say so, with a reason, and not panic. Where there is one, bytes go to the
//! device and back unchanged at every staging edge, from ordinary and from
//! registered host memory, and the GPU tier keeps to its budget and serves chunks
//! device to device.
//!
//! `STRATA_REQUIRE_GPU=1` (what the device script sets) turns "no GPU here" into a
//! failure, so a run on a GPU machine cannot pass by finding none.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use strata_kv_connector::gpu::{Gpu, GpuError, GpuTier, STAGING};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 12) as u8)
        })
        .collect()
}

/// Device 0, or `None` (after saying why) where there is none and none is required.
fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => {
            eprintln!("GPU: {}", g.describe());
            Some(Arc::new(g))
        }
        Err(GpuError::Unavailable(why)) => {
            assert!(
                std::env::var_os("STRATA_REQUIRE_GPU").is_none(),
                "STRATA_REQUIRE_GPU is set, but: {why}"
            );
            eprintln!("no GPU here ({why}): the unavailable path is what runs");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Lengths at and around the staging parts' edges: one part, two (one buffer
/// each), three (the first buffer reused).
const EDGES: [usize; 9] = [
    1,
    4096,
    STAGING - 1,
    STAGING,
    STAGING + 1,
    2 * STAGING,
    2 * STAGING + 1,
    3 * STAGING + 12345,
    5 * STAGING,
];

#[test]
fn without_a_device_open_says_why_and_does_not_panic() {
    match Gpu::open(usize::MAX) {
        Err(GpuError::Unavailable(why)) => assert!(!why.is_empty()),
        other => panic!("device usize::MAX: {other:?}"),
    }
}

#[test]
fn bytes_round_trip_through_staging_at_every_edge() {
    let Some(gpu) = gpu() else { return };
    for (n, len) in EDGES.into_iter().enumerate() {
        let src = pattern(len, n as u8);
        let mut dev = gpu.alloc(len).unwrap();
        gpu.upload(&src, &mut dev).unwrap();
        let mut back = vec![0u8; len];
        gpu.download(&dev, &mut back).unwrap();
        assert!(back == src, "{len} bytes came back changed");
        // A shorter read of a longer buffer takes its first bytes.
        let mut head = vec![0u8; len / 2];
        gpu.download(&dev, &mut head).unwrap();
        assert!(
            head == src[..len / 2],
            "the first {} of {len} bytes",
            len / 2
        );
    }
    let mut small = gpu.alloc(10).unwrap();
    assert!(
        gpu.upload(&[0u8; 11], &mut small).is_err(),
        "11 bytes into 10"
    );
    assert!(
        gpu.download(&small, &mut [0u8; 11]).is_err(),
        "11 bytes out of 10"
    );
}

#[test]
fn registered_memory_is_copied_straight_and_round_trips() {
    let Some(gpu) = gpu() else { return };
    for (n, len) in EDGES.into_iter().enumerate() {
        let src = pattern(len, 100 + n as u8);
        let mut host = src.clone();
        let mut dev = gpu.alloc(len).unwrap();
        {
            let reg = gpu.register(&mut host).unwrap();
            gpu.upload_registered(&reg, 0..len, &mut dev).unwrap();
        }
        let mut out = vec![0u8; len];
        {
            let mut reg = gpu.register(&mut out).unwrap();
            gpu.download_registered(&dev, &mut reg, 0).unwrap();
        }
        assert!(out == src, "{len} bytes through registered memory");
    }
    let mut host = pattern(4096, 1);
    let reg = gpu.register(&mut host).unwrap();
    let mut dev = gpu.alloc(4096).unwrap();
    assert!(gpu.upload_registered(&reg, 4000..4097, &mut dev).is_err());
    assert!(gpu.register(&mut []).is_err(), "an empty buffer");
}

#[test]
fn the_tier_keeps_its_budget_and_serves_chunks_device_to_device() {
    let Some(gpu) = gpu() else { return };
    let mut tier = GpuTier::new(gpu.clone(), 3 << 20, 0.5).unwrap();
    assert_eq!(tier.budget(), 3 << 20);
    for i in 0..4u8 {
        assert!(tier.put(&[i], &pattern(1 << 20, i)).unwrap());
        assert!(tier.used() <= tier.budget());
    }
    assert_eq!((tier.len(), tier.used()), (3, 3 << 20));
    assert!(tier.get(&[0]).unwrap().is_none(), "the oldest went");
    assert_eq!(tier.get(&[3]).unwrap().unwrap(), pattern(1 << 20, 3));
    assert!(!tier.put(b"big", &pattern(4 << 20, 9)).unwrap());
    assert_eq!(
        tier.used(),
        3 << 20,
        "nothing dropped for a chunk over budget"
    );

    let mut dst = gpu.alloc(2 << 20).unwrap();
    assert_eq!(tier.get_on_device(&[2], &mut dst).unwrap(), Some(1 << 20));
    let mut back = vec![0u8; 1 << 20];
    gpu.download(&dst, &mut back).unwrap();
    assert!(back == pattern(1 << 20, 2), "served device to device");
    assert_eq!(tier.get_on_device(&[0], &mut dst).unwrap(), None);
    let mut tiny = gpu.alloc(16).unwrap();
    assert!(
        tier.get_on_device(&[2], &mut tiny).is_err(),
        "1 MiB into 16 bytes"
    );
    // Many replacements stay within the budget (freed device memory is reused).
    for round in 0..64u32 {
        let key = (round % 5).to_le_bytes();
        assert!(tier.put(&key, &pattern(700 << 10, round as u8)).unwrap());
        assert!(tier.used() <= tier.budget());
    }
}
