#!/usr/bin/env bash
# Builds the RDMA carrier's tests (feature `rdma`) and runs them for real: once on
# this host (no verbs device: the fallback) and once inside the Soft-RoCE VM of
# ../shared/rdma-vm/ (device rxe0: one-sided READ/WRITE), with --include-ignored.
# Installs the build dependencies of rdma-sys and builds the VM cache if missing
# (needs root for both).
set -euo pipefail
cd "$(dirname "$0")/.."

VM=../shared/rdma-vm/rxe-vm.sh
if [ ! -f "$VM" ]; then
  echo "rdma-vm-test: $VM not found (the shared/ folder beside the checkout)" >&2
  exit 1
fi
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

CACHE=${RXE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rxe-vm}
if [ ! -f "$CACHE/rootfs/.done" ] || [ ! -f "$CACHE/initrd.img" ]; then
  echo "==> building the Soft-RoCE VM (once per machine)"
  $SUDO bash "$VM" build
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
RUST_BACKTRACE=1 RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-600} \
  bash "$VM" run --share "$PWD" --env RUST_BACKTRACE -- "$BIN" --include-ignored --test-threads 1
