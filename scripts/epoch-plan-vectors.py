#!/usr/bin/env python3
"""The epoch-plan test vectors of docs/epoch-plan.md, computed independently of the Rust
code (plain Python integers, no dependencies).

    scripts/epoch-plan-vectors.py          # check training-cache/tests/plan_vectors.json
    scripts/epoch-plan-vectors.py --write  # rewrite it

The Rust test training-cache/tests/plan_vectors.rs checks the same file, so the two
implementations agree shard for shard.
"""
import json
import pathlib
import sys

FILE = pathlib.Path(__file__).resolve().parent.parent / "training-cache/tests/plan_vectors.json"
M = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z):
    z = (z + GOLDEN) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def permutation(n, seed, epoch, shuffle=True):
    order = list(range(n))
    if not shuffle:
        return order
    state = mix(seed ^ mix(epoch))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        zone = (M // bound) * bound
        while True:
            r = mix(state)
            state = (state + GOLDEN) & M
            if r < zone:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def rank_order(n, seed, epoch, world, rank, remainder, shuffle=True):
    perm = permutation(n, seed, epoch, shuffle)
    if remainder == "drop":
        length = n // world * world
    else:
        length = 0 if n == 0 else -(-n // world) * world
    glob = [perm[i % n] for i in range(length)] if n else []
    return glob[rank::world]


CASES = [
    # (shards, seed, epoch, world_size, remainder, shuffle)
    (10, 0, 0, 1, "drop", True),
    (10, 0, 1, 1, "drop", True),
    (10, 42, 0, 1, "drop", True),
    (10, 42, 0, 1, "drop", False),
    (17, 2026, 3, 4, "drop", True),
    (17, 2026, 3, 4, "pad", True),
    (3, 7, 0, 5, "pad", True),
    (1000, 1, 0, 1, "drop", True),
    (100, 18446744073709551615, 18446744073709551615, 3, "pad", True),
]


def vectors():
    out = {"splitmix64_seed_0_first_4": [], "cases": []}
    state = 0
    for _ in range(4):
        out["splitmix64_seed_0_first_4"].append(mix(state))
        state = (state + GOLDEN) & M
    for n, seed, epoch, world, rem, shuffle in CASES:
        out["cases"].append({
            "shards": n, "seed": seed, "epoch": epoch, "world_size": world,
            "remainder": rem, "shuffle": shuffle,
            "ranks": [rank_order(n, seed, epoch, world, r, rem, shuffle) for r in range(world)],
        })
    return out


def main():
    want = vectors()
    if "--write" in sys.argv:
        cases = ",\n  ".join(json.dumps(c) for c in want["cases"])
        first = json.dumps(want["splitmix64_seed_0_first_4"])
        FILE.write_text(f'{{"splitmix64_seed_0_first_4": {first},\n "cases": [\n  {cases}\n ]\n}}\n')
        print(f"wrote {FILE}")
        return
    have = json.loads(FILE.read_text())
    if have != want:
        sys.exit(f"{FILE} disagrees with the Python implementation")
    print(f"epoch-plan vectors: {len(want['cases'])} cases match")


if __name__ == "__main__":
    main()
