#!/usr/bin/env python3
"""Writes the seed corpus of the `frame` fuzz target: one valid frame per request
op, built from docs/data-path.md independently of the Rust encoder, plus a few
near-misses. Run from the repository root: python3 fuzz/seeds.py"""
import os
import struct

OUT = "fuzz/corpus/frame"


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
    "bad-magic": b"XX" + frame(2, b"")[2:],
    "truncated-key": frame(2, struct.pack("<I", 1000) + b"\x01\x02kv"),
    "huge-data": frame(4, kfield(key()) + struct.pack("<I", 0), b"")[:24] + struct.pack("<Q", 2**63),
}
os.makedirs(OUT, exist_ok=True)
for name, b in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(b)
print(f"{len(seeds)} seeds in {OUT}")
