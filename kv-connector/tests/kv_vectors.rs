//! The test vectors of `docs/kv-keys.md`, written by `scripts/kv-keys-vectors.py`
//! with Python's cbor2 and hashlib: the Rust keys must give the same bytes.

use serde_json::Value as Json;
use strata_kv_connector::cbor::Value;
use strata_kv_connector::keys::{
    ChunkKeys, KvLayout, ModelFingerprint, chain_hash, hex, root_hash,
};

fn vectors() -> Json {
    serde_json::from_str(include_str!("kv_vectors.json")).unwrap()
}

fn fingerprint(f: &Json) -> ModelFingerprint {
    let s = |k: &str| f[k].as_str().unwrap().to_owned();
    let n = |k: &str| f[k].as_u64().unwrap() as u32;
    let o = |k: &str| f[k].as_str().map(str::to_owned);
    ModelFingerprint {
        model_id: s("model_id"),
        revision: s("revision"),
        dtype: s("dtype"),
        layout: match f["layout"].as_str().unwrap() {
            "mha" => KvLayout::Mha,
            _ => KvLayout::Mla,
        },
        num_layers: n("num_layers"),
        num_kv_heads: n("num_kv_heads"),
        head_size: n("head_size"),
        tp_rank: n("tp_rank"),
        tp_size: n("tp_size"),
        lora_id: o("lora_id"),
        tenant: s("tenant"),
        cache_salt: o("cache_salt"),
    }
}

#[test]
fn root_and_fingerprints() {
    let v = vectors();
    assert_eq!(hex(&root_hash()), v["root"].as_str().unwrap());
    for f in v["fingerprints"].as_array().unwrap() {
        assert_eq!(hex(&fingerprint(f).digest()), f["digest"].as_str().unwrap());
    }
}

#[test]
fn chains() {
    for c in vectors()["chains"].as_array().unwrap() {
        let tokens: Vec<u32> = c["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let n = c["chunk_tokens"].as_u64().unwrap() as usize;
        let extra: Option<Vec<Value>> = c["extra"].as_array().map(|e| {
            e.iter()
                .map(|x| match x {
                    Json::String(s) => Value::Text(s.clone()),
                    x => Value::Int(x.as_i64().unwrap()),
                })
                .collect()
        });
        let mut parent = root_hash();
        let got: Vec<String> = tokens
            .chunks_exact(n)
            .map(|chunk| {
                parent = chain_hash(&parent, chunk, extra.as_deref());
                hex(&parent)
            })
            .collect();
        let want: Vec<&str> = c["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "tokens {tokens:?}");
    }
}

#[test]
fn keys() {
    let v = vectors();
    for k in v["keys"].as_array().unwrap() {
        let f = fingerprint(&v["fingerprints"][k["fingerprint"].as_u64().unwrap() as usize]);
        let keys = ChunkKeys::new(f, 4, 4).unwrap();
        let hash: [u8; 32] = (0..32)
            .map(|i| {
                u8::from_str_radix(&k["chunk_hash"].as_str().unwrap()[2 * i..2 * i + 2], 16)
                    .unwrap()
            })
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        assert_eq!(hex(keys.key(&hash).as_bytes()), k["key"].as_str().unwrap());
        // The first chain's first chunk is tokens 0..4: the same hash from ChunkKeys.
        assert_eq!(keys.hashes(&[0, 1, 2, 3])[0], hash);
    }
}
