#!/usr/bin/env bash
# Builds the RDMA carrier's tests (feature `rdma`) and runs them for real: once on
# this host (no verbs device: the fallback) and once inside the Soft-RoCE VM of
# scripts/rdma-vm.sh (device rxe0: one-sided READ/WRITE), with --include-ignored.
# Installs the build dependencies of rdma-sys (libibverbs-dev also brings the rxe
# verbs provider the VM uses from this host) and builds the VM's cache if missing
# (needs root for both).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
for p in libibverbs-dev librdmacm-dev libclang-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The cache path as scripts/rdma-vm.sh computes it, passed on explicitly (sudo may
# change HOME).
export STRATA_RDMA_VM_CACHE=${STRATA_RDMA_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strata-rdma-vm}
if [ ! -f "$STRATA_RDMA_VM_CACHE/kernel" ] || [ ! -f "$STRATA_RDMA_VM_CACHE/initrd.img" ]; then
  echo "==> building the Soft-RoCE VM (once per machine)"
  $SUDO env STRATA_RDMA_VM_CACHE="$STRATA_RDMA_VM_CACHE" scripts/rdma-vm.sh build
fi

echo "==> cargo clippy --features rdma"
cargo clippy -p strata-server -p strata-transport --all-targets --features rdma -- -D warnings
echo "==> cargo test -p strata-server --features rdma --test rdma (build)"
BIN=$(cargo test -p strata-server --features rdma --test rdma --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "rdma":
        print(m["executable"])')
echo "==> host (no RDMA device): $BIN"
"$BIN" --test-threads 1
echo "==> Soft-RoCE VM (rxe0): $BIN --include-ignored"
RUST_BACKTRACE=1 STRATA_RDMA_VM_TIMEOUT=${STRATA_RDMA_VM_TIMEOUT:-600} \
  scripts/rdma-vm.sh run --share "$PWD" --env RUST_BACKTRACE -- "$BIN" --include-ignored --test-threads 1
