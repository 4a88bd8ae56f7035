#!/usr/bin/env bash
# The GPU checks (feature `gpu`), in two halves, for a GPU machine that has no Rust
# toolchain (the device tool's machines have CUDA, nvcc and a driver, but no cargo
# and no registry):
#
#   scripts/gpu-device.sh build   # here: release builds of the GPU tests and of
#                                 # strata-bench, stripped, into .gpu-bin/
#   scripts/gpu-device.sh run     # there: what the machine has, then the tests with
#                                 # STRATA_REQUIRE_GPU=1 (no GPU is a failure), then
#                                 # strata-bench gpu-copy; logs into $OUT if set
#
# On a machine with both a GPU and cargo, `build` then `run` in one place works too.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.gpu-bin

case "${1:-}" in
build)
  mkdir -p "$bin"
  cargo build --release -p strata-benches --features gpu --bin strata-bench
  cp target/release/strata-bench "$bin/"
  exe=$(cargo test --release -p strata-kv-connector --features gpu --test gpu --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="gpu":
        print(m["executable"])' | tail -1)
  cp "$exe" "$bin/gpu-tests"
  strip "$bin/strata-bench" "$bin/gpu-tests"
  ls -la "$bin"
  ;;
run)
  out="${OUT:-$bin/out}"
  mkdir -p "$out"
  {
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv || true
    nvidia-smi | head -5 || true
    (nvcc --version || echo "nvcc: not found") | tail -2
    (ldconfig -p | grep -m2 'libcuda.so' || echo "libcuda.so: not in ldconfig")
    nproc; grep -m1 'model name' /proc/cpuinfo || true
    echo "== GPU tests (STRATA_REQUIRE_GPU=1)"
  } 2>&1 | tee "$out/machine.log"
  STRATA_REQUIRE_GPU=1 "$bin/gpu-tests" --test-threads 1 --nocapture 2>&1 | tee "$out/tests.log"
  echo "== strata-bench gpu-copy" | tee "$out/bench.log"
  "$bin/strata-bench" gpu-copy "${@:2}" 2>&1 | tee -a "$out/bench.log"
  ;;
*)
  echo "usage: $0 build | run [gpu-copy args]" >&2
  exit 2
  ;;
esac
