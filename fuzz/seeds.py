#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets, each built from its spec
independently of the Rust encoders, plus near-misses:
- `frame`: one valid frame per request op (docs/data-path.md);
- `chunk`: a stored KV chunk header with its layers (docs/kv-keys.md, "Stored
  chunk"), for the shape the target decodes against;
- `record`: a value's head (inline and paged) and a page record, and an NVMe
  entry's key and value framing (tiers/src/store/record.rs, tiers/src/nvme/mod.rs);
- `catalog`: an NVMe catalog snapshot and journal (tiers/src/nvme/catalog.rs);
- `conn`: choices for the connection target's sessions (any bytes are a session;
  these are a few of several lengths, so the first runs are long ones).
Run from the repository root: python3 fuzz/seeds.py"""
import os
import struct



def key(ns=b"kv", tenant=b"t", body=b"block-0"):
    return b"\x01" + bytes([len(ns)]) + ns + struct.pack(">H", len(tenant)) + tenant + struct.pack(">I", len(body)) + body


def kfield(k):
    return struct.pack("<I", len(k)) + k


def frame(op, meta, data=b"", flags=0, rid=1):
    return b"SD" + bytes([1, op]) + struct.pack("<HHQII", 0, flags, rid, len(meta), 0) + struct.pack("<Q", len(data)) + meta + data


seeds = {
    "hello": frame(1, struct.pack("<H", 9) + b"boot:abcd"),
    "get": frame(2, kfield(key()) + struct.pack("<QQ", 0, 2**64 - 1)),
    "get-range-lease": frame(2, kfield(key()) + struct.pack("<QQ", 4096, 100), flags=1),
    "mget": frame(3, struct.pack("<I", 2) + kfield(key(body=b"a")) + kfield(key(body=b"b"))),
    "put": frame(4, kfield(key()) + struct.pack("<I", 0xE3069283), b"123456789"),
    "reserve": frame(5, kfield(key(ns=b"obj", tenant=b"team")) + struct.pack("<Q", 1 << 20)),
    "write": frame(6, struct.pack("<Q", 5), b"abc"),
    "commit": frame(7, struct.pack("<QI", 5, 0x12345678)),
    "abort": frame(8, struct.pack("<Q", 5)),
    "delete": frame(9, kfield(key(ns=b"shard", tenant=b"", body=b"ds/0001.tar"))),
    "match-prefix": frame(10, struct.pack("<I", 3) + kfield(key(body=b"a")) + kfield(key(body=b"b")) + kfield(key(body=b"c"))),
    "release": frame(11, struct.pack("<I", 2) + struct.pack("<QQ", 1, 2)),
    "mget-range": frame(12, struct.pack("<I", 2) + kfield(key(body=b"a")) + struct.pack("<QQ", 4096, 1 << 20)
                        + kfield(key(body=b"b")) + struct.pack("<QQ", 0, 2**64 - 1), flags=1),
    "bad-magic": b"XX" + frame(2, b"")[2:],
    "truncated-key": frame(2, struct.pack("<I", 1000) + b"\x01\x02kv"),
    "huge-data": frame(4, kfield(key()) + struct.pack("<I", 0), b"")[:24] + struct.pack("<Q", 2**63),
}


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# The chunk target's shape (fuzz_targets/chunk.rs): kv 2, elem 2, 16 tokens,
# 2 layers of 64 bytes, fingerprint 0x11 x 32, chunk hash 0x22 x 32.
LAYERS = [bytes((i * 7 + l) % 256 for i in range(64)) for l in range(2)]


def chunk(kv=2, elem=2, fp=b"\x11" * 32, ch=b"\x22" * 32, tokens=16, layers=2, layer_bytes=64,
          version=1, magic=b"SKV1", crcs=None, fix_len=None):
    crcs = crcs if crcs is not None else [crc32c(x) for x in LAYERS]
    header_len = fix_len if fix_len is not None else 92 + 4 * layers + 4
    h = magic + struct.pack("<HBB", version, kv, elem) + fp + ch
    h += struct.pack("<IIQI", tokens, layers, layer_bytes, header_len)
    h += b"".join(struct.pack("<I", c) for c in crcs)
    return h + struct.pack("<I", crc32c(h)) + b"".join(LAYERS)


valid = chunk()
chunk_seeds = {
    "valid": valid,
    "bad-magic": chunk(magic=b"SKV0"),
    "version-2": chunk(version=2),
    "three-layers": chunk(layers=3, crcs=[1, 2, 3]),
    "other-fingerprint": chunk(fp=b"\x33" * 32),
    "other-chunk-hash": chunk(ch=b"\x44" * 32),
    "header-len-lies": chunk(fix_len=4096),
    "header-crc-wrong": valid[:100] + bytes([valid[100] ^ 1]) + valid[101:],
    "layer-1-flipped": valid[:104 + 64 + 5] + bytes([valid[104 + 64 + 5] ^ 0x10]) + valid[104 + 64 + 6:],
    "truncated": valid[:50],
}



def head(generation=7, total_len=9, page_size=4096, created_ms=1_700_000_000_000, value_crc=None,
         payload=b"123456789"):
    flags = 1 if value_crc is not None else 0
    h = b"STRH" + struct.pack("<BBH", 1, flags, 0) + struct.pack("<QQIQI", generation, total_len, page_size,
                                                                  created_ms, value_crc or 0)
    h += struct.pack("<II", len(payload), crc32c(payload))
    return h + struct.pack("<I", crc32c(h)) + payload


def page(generation=7, index=2, payload=bytes(range(100))):
    h = b"STRP" + struct.pack("<BBH", 1, 0, 0) + struct.pack("<QII", generation, index, len(payload))
    h += struct.pack("<I", crc32c(payload))
    return h + struct.pack("<I", crc32c(h)) + payload


record_seeds = {
    "head-inline": head(value_crc=0xE3069283),
    "head-paged": head(total_len=3 << 20, page_size=1 << 20, payload=b""),
    "head-empty": head(total_len=0, payload=b""),
    "head-too-many-pages": head(total_len=2**64 - 1, page_size=1, payload=b""),
    "page": page(),
    "page-empty": page(payload=b""),
    "nvme-key": kfield(key()),
    "nvme-value": struct.pack("<Q", 9) + b"123456789",
    "nvme-value-length-lies": struct.pack("<Q", 2**32) + b"12",
}


def catalog_entry(k, length, tag):
    return struct.pack("<I", len(k)) + k + struct.pack("<QI", length, tag)


def journal_record(op, k, entry=None):
    body = bytes([op]) + struct.pack("<I", len(k)) + k
    if entry is not None:
        body += struct.pack("<QI", *entry)
    return struct.pack("<II", len(body), crc32c(body)) + body


catalog_seeds = {
    "snapshot": b"STRC\x02" + struct.pack("<Q", 2) + catalog_entry(key(body=b"a"), 10, 1)
                + catalog_entry(key(body=b"b"), 1 << 20, 2),
    "snapshot-count-lies": b"STRC\x02" + struct.pack("<Q", 2**40) + catalog_entry(key(body=b"a"), 10, 1),
    "journal": b"STRJ\x01" + journal_record(1, key(body=b"a"), (10, 1)) + journal_record(2, key(body=b"a"))
               + journal_record(1, key(body=b"b"), (5, 3)),
    "journal-torn": (b"STRJ\x01" + journal_record(1, key(body=b"a"), (10, 1)) + journal_record(2, key(body=b"a")))[:-3],
    # The target also reads its input as a journal body behind a good header.
    "journal-body": journal_record(1, key(body=b"c"), (1, 1)) + journal_record(2, key(body=b"c")),
}

# Fixed pseudo-random choices (xorshift, as the Rust generator), 64 B to 4 KiB.
conn_seeds = {}
state = 0x9E3779B97F4A7C15
for n in (64, 256, 1024, 4096):
    out = bytearray()
    while len(out) < n:
        state ^= (state >> 12)
        state ^= (state << 25) & 0xFFFFFFFFFFFFFFFF
        state ^= (state >> 27)
        out += struct.pack("<Q", (state * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF)
    conn_seeds[f"session-{n}"] = bytes(out[:n])

for out, corpus in (("fuzz/corpus/frame", seeds), ("fuzz/corpus/chunk", chunk_seeds),
                    ("fuzz/corpus/record", record_seeds), ("fuzz/corpus/catalog", catalog_seeds),
                    ("fuzz/corpus/conn", conn_seeds)):
    os.makedirs(out, exist_ok=True)
    for name, b in corpus.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)
    print(f"{len(corpus)} seeds in {out}")
