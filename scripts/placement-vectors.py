#!/usr/bin/env python3
"""The placement test vectors of docs/cluster.md, computed independently of the Rust code
(plain Python and the xxhash package: Debian's python3-xxhash).

    scripts/placement-vectors.py          # check proto/tests/placement_vectors.json
    scripts/placement-vectors.py --write  # rewrite it

The Rust test proto/tests/placement_vectors.rs checks the same file, so a client in any
language that follows docs/cluster.md computes the owners the servers compute.
"""
import bisect
import json
import pathlib
import sys

import xxhash

FILE = pathlib.Path(__file__).resolve().parent.parent / "proto/tests/placement_vectors.json"
M = (1 << 64) - 1
PROBES = 21
POINTS_PER_WEIGHT = 4


def mix(x):
    z = (x + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def probes(key):
    h = xxhash.xxh3_64_intdigest(key, seed=0)
    return [mix((h + i) & M) for i in range(PROBES)]


def point(member_id, j):
    return mix((xxhash.xxh3_64_intdigest(member_id.encode(), seed=1) + j) & M)


def owners(members, key, n):
    """The first n owners of key (bytes) among members [(id, weight)]."""
    members = sorted(members)
    points = sorted((point(m, j), i) for i, (m, w) in enumerate(members)
                    for j in range(w * POINTS_PER_WEIGHT))
    if not points:
        return []
    pos = [p for p, _ in points]
    xs = probes(key)
    at = [bisect.bisect_left(pos, x) % len(points) for x in xs]
    out = []
    while len(out) < min(n, len(members)):
        best = None
        for i, x in enumerate(xs):
            while points[at[i]][1] in out:
                at[i] = (at[i] + 1) % len(points)
            d = (points[at[i]][0] - x) & M
            if best is None or d < best[0]:
                best = (d, at[i])
        out.append(points[best[1]][1])
    return [members[i][0] for i in out]


# Keys in their binary encoding (docs/keys.md), with their path form for reading.
KEYS = [
    ("obj/a", "01036f626a00000000000161"),
    ("obj/models/llama.bin", "01036f626a00066d6f64656c73000000096c6c616d612e62696e"),
    ("kv/prefix/chunk-0001", "01026b7600067072656669780000000a6368756e6b2d30303031"),
    ("shard/imagenet@3/train-000017.tar",
     "01057368617264000a696d6167656e6574403300000010747261696e2d3030303031372e746172"),
]

CLUSTERS = [
    [("solo", 1)],
    [("node-a", 1), ("node-b", 2), ("node-c", 1), ("node-d", 3), ("node-e", 1)],
    [(f"node-{i:03}", 1) for i in range(50)],
    [(f"10.0.{i // 256}.{i % 256}:7070", 1 + i % 4) for i in range(300)],
]


def run_key(key, run):
    """The bytes that place run `run` of a value read in runs (docs/cluster.md)."""
    return key if run == 0 else key + b"#" + run.to_bytes(8, "big")


def vectors():
    out = {
        "mix_0": mix(0),
        "xxh3_node_a_seed_1": xxhash.xxh3_64_intdigest(b"node-a", seed=1),
        "point_node_a_0": point("node-a", 0),
        "clusters": [[[m, w] for m, w in members] for members in CLUSTERS],
        "cases": [],
    }
    for c, members in enumerate(CLUSTERS):
        for path, hexkey in KEYS:
            key = bytes.fromhex(hexkey)
            out["cases"].append({
                "cluster": c,
                "key": path,
                "key_hex": hexkey,
                "probe_0": probes(key)[0],
                "owners_3": owners(members, key, 3),
            })
    # The runs of a shard (16 MiB each by default), each placed on its own.
    out["runs"] = []
    path, hexkey = KEYS[3]
    for c in (1, 2):
        for run in range(6):
            place = run_key(bytes.fromhex(hexkey), run)
            out["runs"].append({
                "cluster": c,
                "key": path,
                "run": run,
                "place_hex": place.hex(),
                "owner": owners(CLUSTERS[c], place, 1)[0],
            })
    return out


def main():
    want = vectors()
    if "--write" in sys.argv:
        head = {k: v for k, v in want.items() if k not in ("clusters", "cases", "runs")}
        clusters = ",\n  ".join(json.dumps(c) for c in want["clusters"])
        cases = ",\n  ".join(json.dumps(c) for c in want["cases"])
        runs = ",\n  ".join(json.dumps(c) for c in want["runs"])
        text = (json.dumps(head)[:-1] + f',\n "clusters": [\n  {clusters}\n ],'
                + f'\n "cases": [\n  {cases}\n ],'
                + f'\n "runs": [\n  {runs}\n ]\n}}\n')
        FILE.write_text(text)
        print(f"wrote {FILE}")
        return
    have = json.loads(FILE.read_text())
    if have != want:
        sys.exit(f"{FILE} disagrees with the Python implementation")
    print(f"placement vectors: {len(want['cases'])} cases and {len(want['runs'])} runs match")


if __name__ == "__main__":
    main()
