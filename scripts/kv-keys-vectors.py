#!/usr/bin/env python3
"""The KV-key test vectors of docs/kv-keys.md, computed independently of the Rust code
with cbor2 (the library vLLM's sha256_cbor uses) and hashlib.

    scripts/kv-keys-vectors.py          # check kv-connector/tests/kv_vectors.json
    scripts/kv-keys-vectors.py --write  # rewrite it

The Rust test kv-connector/tests/kv_vectors.rs checks the same file, so the two
implementations agree byte for byte.
"""
import hashlib
import json
import pathlib
import struct
import sys

import cbor2

FILE = pathlib.Path(__file__).resolve().parent.parent / "kv-connector/tests/kv_vectors.json"


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


ROOT = sha256_cbor("strata.kv.root.v1")


def fingerprint_digest(f):
    return sha256_cbor([
        "strata.kv.fingerprint.v1", f["model_id"], f["revision"], f["dtype"], f["layout"],
        f["num_layers"], f["num_kv_heads"], f["head_size"], f["tp_rank"], f["tp_size"],
        f["lora_id"], f["tenant"], f["cache_salt"],
    ])


def chain(tokens, chunk_tokens, extra):
    parent, out = ROOT, []
    for i in range(0, len(tokens) - chunk_tokens + 1, chunk_tokens):
        # vLLM hashes (parent, tuple(tokens), extra_keys); cbor2 writes tuples as arrays.
        parent = sha256_cbor((parent, tuple(tokens[i:i + chunk_tokens]), None if extra is None else tuple(extra)))
        out.append(parent)
    return out


def key(tenant, body):
    ns = b"kv"
    t = tenant.encode()
    return bytes([1, len(ns)]) + ns + struct.pack(">H", len(t)) + t + struct.pack(">I", len(body)) + body


def vectors():
    llama = dict(model_id="meta-llama/Llama-3.1-8B-Instruct", revision="main", dtype="bf16", layout="mha",
                 num_layers=32, num_kv_heads=8, head_size=128, tp_rank=0, tp_size=1, lora_id=None,
                 tenant="", cache_salt=None)
    mla = dict(model_id="deepseek-ai/DeepSeek-V2-Lite", revision="604d5664", dtype="f16", layout="mla",
               num_layers=27, num_kv_heads=1, head_size=576, tp_rank=1, tp_size=2, lora_id="sql-adapter",
               tenant="acme", cache_salt="s3cret")
    fps = [dict(f, digest=fingerprint_digest(f).hex()) for f in (llama, mla)]
    chains = []
    for tokens, n, extra in (
        (list(range(12)), 4, None),
        ([128000, 70000, 23, 24, 255, 256, 65535, 65536], 4, None),
        ([1, 2, 3, 4], 4, ["lora-a", 7, -1]),
        ([5] * 10, 4, None),
    ):
        chains.append(dict(chunk_tokens=n, tokens=tokens, extra=extra, hashes=[h.hex() for h in chain(tokens, n, extra)]))
    keys = []
    for i, f in enumerate(fps):
        h = bytes.fromhex(chains[0]["hashes"][0])
        keys.append(dict(fingerprint=i, chunk_hash=h.hex(),
                         key=key(f["tenant"], bytes.fromhex(f["digest"]) + h).hex()))
    return dict(root=ROOT.hex(), fingerprints=fps, chains=chains, keys=keys)


def main():
    text = json.dumps(vectors(), indent=1) + "\n"
    if "--write" in sys.argv:
        FILE.write_text(text)
        print(f"wrote {FILE}")
    elif FILE.read_text() != text:
        sys.exit(f"{FILE} differs from what cbor2 + hashlib compute; run {sys.argv[0]} --write and compare")
    else:
        print("kv key vectors: cbor2 + hashlib agree with", FILE.name)


if __name__ == "__main__":
    main()
