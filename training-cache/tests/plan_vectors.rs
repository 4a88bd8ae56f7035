//! The epoch-plan test vectors of `docs/epoch-plan.md`, which
//! `scripts/epoch-plan-vectors.py` recomputes in Python: the Rust plan must match
//! them shard for shard.

use serde_json::Value;
use strata_training_cache::plan::SplitMix64;
use strata_training_cache::{PlanSpec, Remainder};

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/plan_vectors.json"
    ))
    .expect("plan_vectors.json");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn splitmix64_matches_the_reference_outputs() {
    let v = vectors();
    let mut rng = SplitMix64::new(0);
    for want in v["splitmix64_seed_0_first_4"].as_array().unwrap() {
        assert_eq!(rng.next_u64(), want.as_u64().unwrap());
    }
}

#[test]
fn plans_match_the_vectors() {
    let v = vectors();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for c in cases {
        let spec = PlanSpec {
            shards: c["shards"].as_u64().unwrap() as u32,
            seed: c["seed"].as_u64().unwrap(),
            shuffle: c["shuffle"].as_bool().unwrap(),
            world_size: c["world_size"].as_u64().unwrap() as u32,
            remainder: match c["remainder"].as_str().unwrap() {
                "drop" => Remainder::Drop,
                _ => Remainder::Pad,
            },
        };
        let epoch = c["epoch"].as_u64().unwrap();
        for (rank, want) in c["ranks"].as_array().unwrap().iter().enumerate() {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                spec.rank_order(epoch, rank as u32),
                want,
                "{spec:?} epoch {epoch} rank {rank}"
            );
        }
    }
}
