#!/usr/bin/env bash
# Runs Strata's benchmarks (ours vs peer vs limit, in one invocation each) and
# prints markdown rows with their ratios; BENCHMARKS.md records a run of this.
#
#   scripts/bench.sh                   # everything, defaults (several minutes on 2 cores)
#   GRPC_SIZES=256KiB,1MiB,4MiB DURATION=10 scripts/bench.sh
#
# Installs redis-server (apt) when missing. The NVMe benchmark works in
# ./strata-bench-data (on the disk under test, not /tmp, which may be tmpfs) and
# drops the page cache between passes when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

GRPC_SIZES="${GRPC_SIZES:-256KiB,1MiB,4MiB}"
CLIENTS="${CLIENTS:-2}"
DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
NVME_TOTAL="${NVME_TOTAL:-256MiB}"
NVME_ROUNDS="${NVME_ROUNDS:-9}"
NVME_DIR="${NVME_DIR:-./strata-bench-data}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

echo "==> machine"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpu: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
echo "kernel: $(uname -r)"
echo "redis: $(redis-server --version)"
echo "rustc: $(rustc --version)"
echo "uid: $(id -u)"
df -hT . | tail -1 | awk '{print "bench dir filesystem: " $1 " " $2 " (" $3 " total)"}'

echo "==> build (release)"
cargo build --release -p strata-benches --bins --benches --locked

TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="$TARGET_DIR/release/strata-bench"

echo "==> cargo bench --bench dram (criterion)"
cargo bench -p strata-benches --bench dram --locked
echo
"$BIN" criterion-summary --dir "$TARGET_DIR/criterion"

echo
echo "==> strata-bench grpc-vs-redis"
"$BIN" grpc-vs-redis --sizes "$GRPC_SIZES" --clients "$CLIENTS" --duration "$DURATION" --rounds "$ROUNDS"

echo
echo "==> strata-bench data-path (TCP / shm vs Redis, raw sockets, memcpy, gRPC)"
"$BIN" data-path

echo
echo "==> strata-bench kv-connector (chat trace over Strata / Redis / none; 4k-prefix loads vs raw TCP and memcpy)"
"$BIN" kv-connector --rounds "$ROUNDS"

echo
echo "==> strata-bench shard-sim (training-shard eviction: LRU, no-evict, clairvoyant, offline Belady)"
"$BIN" shard-sim

echo
echo "==> strata-bench training (the loader over Azurite, cold and warm, vs the Blob SDK)"
"$BIN" training
"$BIN" training --compute-ms 40

echo
echo "==> strata-bench nvme-vs-odirect (the tier as configured by default: psync, O_DIRECT)"
"$BIN" nvme-vs-odirect --dir "$NVME_DIR" --total "$NVME_TOTAL" --rounds "$NVME_ROUNDS"

echo
echo "==> strata-bench nvme-vs-odirect --io-uring (diagnostic: the tier on io_uring)"
"$BIN" nvme-vs-odirect --dir "$NVME_DIR" --total "$NVME_TOTAL" --rounds "$NVME_ROUNDS" --io-uring
