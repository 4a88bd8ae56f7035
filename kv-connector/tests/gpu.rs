//! The GPU path (feature `gpu`). Where there is no GPU (this repository's CI), it
//! must say so, with a reason, and not panic. Where there is one, bytes go to the
//! device and back unchanged, and the GPU tier keeps to its budget.
#![cfg(feature = "gpu")]

use std::sync::Arc;

use strata_kv_connector::gpu::{Gpu, GpuError, GpuTier, STAGING};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn without_a_device_open_says_why_and_does_not_panic() {
    match Gpu::open(usize::MAX) {
        Err(GpuError::Unavailable(why)) => assert!(!why.is_empty()),
        other => panic!("device usize::MAX: {other:?}"),
    }
}

#[test]
fn bytes_round_trip_through_the_device_and_the_tier_keeps_its_budget() {
    let gpu = match Gpu::open(0) {
        Ok(g) => Arc::new(g),
        Err(GpuError::Unavailable(why)) => {
            eprintln!("no GPU here ({why}): the unavailable path is what runs");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    eprintln!("GPU: {}", gpu.describe());
    for len in [1, 4096, STAGING, 2 * STAGING + 12345] {
        let src = pattern(len, 7);
        let mut dev = gpu.alloc(len).unwrap();
        gpu.upload(&src, &mut dev).unwrap();
        let mut back = vec![0u8; len];
        gpu.download(&dev, &mut back).unwrap();
        assert_eq!(back, src, "{len} bytes");
    }
    let mut tier = GpuTier::new(gpu, 3 << 20, 0.5).unwrap();
    assert_eq!(tier.budget(), 3 << 20);
    for i in 0..4u8 {
        assert!(tier.put(&[i], &pattern(1 << 20, i)).unwrap());
    }
    assert_eq!((tier.len(), tier.used()), (3, 3 << 20));
    assert!(tier.get(&[0]).unwrap().is_none(), "the oldest went");
    assert_eq!(tier.get(&[3]).unwrap().unwrap(), pattern(1 << 20, 3));
    assert!(!tier.put(b"big", &pattern(4 << 20, 9)).unwrap());
}
