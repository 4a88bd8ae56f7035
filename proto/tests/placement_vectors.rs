//! The placement test vectors of `docs/cluster.md`, which
//! `scripts/placement-vectors.py` recomputes in Python: the Rust placement must
//! pick the same owners, in the same order, for every case.

use serde_json::Value;
use strata_proto::Key;
use strata_proto::placement::{Member, Placement, mix, point, probes, run_key};

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/placement_vectors.json"
    ))
    .expect("placement_vectors.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn the_hashes_match_the_reference() {
    let v = vectors();
    assert_eq!(mix(0), v["mix_0"].as_u64().unwrap());
    assert_eq!(point("node-a", 0), v["point_node_a_0"].as_u64().unwrap());
}

#[test]
fn owners_match_the_vectors() {
    let v = vectors();
    let clusters: Vec<Placement> = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            Placement::new(
                c.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| Member::new(m[0].as_str().unwrap(), m[1].as_u64().unwrap() as u32)),
            )
            .unwrap()
        })
        .collect();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 16);
    for c in cases {
        let key = hex(c["key_hex"].as_str().unwrap());
        // The encoding is the key's own (docs/keys.md).
        let parsed = Key::parse_path(c["key"].as_str().unwrap()).unwrap();
        assert_eq!(parsed.as_bytes(), &key[..], "{}", c["key"]);
        assert_eq!(probes(&key)[0], c["probe_0"].as_u64().unwrap());
        let p = &clusters[c["cluster"].as_u64().unwrap() as usize];
        let got: Vec<&str> = p.owners(&key, 3).iter().map(|m| m.id.as_str()).collect();
        let want: Vec<&str> = c["owners_3"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{} in cluster {}", c["key"], c["cluster"]);
        assert_eq!(p.owner(&key).unwrap().id, want[0]);
    }
}

#[test]
fn runs_are_placed_as_the_vectors_say() {
    let v = vectors();
    let runs = v["runs"].as_array().unwrap();
    assert!(runs.len() >= 12);
    for r in runs {
        let key = Key::parse_path(r["key"].as_str().unwrap()).unwrap();
        let place = run_key(key.as_bytes(), r["run"].as_u64().unwrap());
        assert_eq!(
            &*place,
            &hex(r["place_hex"].as_str().unwrap())[..],
            "run {} of {}",
            r["run"],
            r["key"]
        );
        let c = &v["clusters"][r["cluster"].as_u64().unwrap() as usize];
        let p = Placement::new(
            c.as_array()
                .unwrap()
                .iter()
                .map(|m| Member::new(m[0].as_str().unwrap(), m[1].as_u64().unwrap() as u32)),
        )
        .unwrap();
        assert_eq!(
            p.owner(&place).unwrap().id,
            r["owner"].as_str().unwrap(),
            "run {} in cluster {}",
            r["run"],
            r["cluster"]
        );
    }
}
