#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need on a fresh
# Debian machine: apt packages (Node.js for Azurite, redis-server for the
# benches, etcd-server for the cluster tests, iproute2 for the partition test's
# network namespace, python3-cbor2 and python3-xxhash
# for the KV-key and placement vectors), Azurite (npm azurite@3.35.0, into
# ./.tools) — the test harness starts Azurite and etcd itself on free ports.
# Then fmt, clippy and `cargo test`, the Python package (python/, built with
# maturin into a venv under .tools/py, its pytest suites against a real server:
# scripts/python-test.sh), the black-box robustness suite again against
# the release build of strata-server, then the data path's frame decoder under
# cargo-fuzz for FUZZ_SECONDS (default 60), the KV chunk header decoder for
# FUZZ_CHUNK_SECONDS (default 30), the NVMe record and catalog decoders for
# FUZZ_RECORD_SECONDS each (default 20), and one data connection of an in-process
# server for FUZZ_CONN_SECONDS (default 60), on nightly
# (cargo-fuzz is installed into ./.tools if missing), and the RDMA carrier's tests
# on this host and in the Soft-RoCE VM of scripts/rdma-vm.sh (scripts/rdma-vm-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the build has put on disk so far, and what is left (a CI machine once ran out).
disk() { echo "==> disk: target/ $(du -sh target 2>/dev/null | cut -f1), $(df -h . | awk 'NR==2 {print $4}') free"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/bin/etcd ] || command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
/usr/bin/python3 -c "import cbor2" >/dev/null 2>&1 || need_apt+=(python3-cbor2)
/usr/bin/python3 -c "import xxhash" >/dev/null 2>&1 || need_apt+=(python3-xxhash)
/usr/bin/python3 -c "import ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  echo "==> installing azurite@3.35.0 into .tools"
  npm install --prefix .tools --no-audit --no-fund --loglevel=error azurite@3.35.0
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> crate split: clients link no server code (scripts/check-split.sh)"
scripts/check-split.sh
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo clippy -p strata-kv-connector --no-default-features (the formats alone, as fuzz/ builds them)"
cargo clippy -p strata-kv-connector --no-default-features -- -D warnings
echo "==> feature gpu: clippy, and its tests (without a GPU, the path must report itself unavailable)"
cargo clippy -p strata-kv-connector -p strata-benches --all-targets --features strata-kv-connector/gpu,strata-benches/gpu -- -D warnings
echo "==> cargo test"
cargo test --workspace
cargo test -p strata-kv-connector --features gpu --lib --test gpu
echo "==> the Python package (scripts/python-test.sh)"
scripts/python-test.sh
echo "==> the robustness suite (server/tests/blackbox.rs) against the release binary"
cargo build --release --bin strata-server
STRATA_SERVER_BIN="$PWD/target/release/strata-server" cargo test -p strata-server --test blackbox
echo "==> KV key vectors, recomputed in Python with cbor2 (as vLLM's sha256_cbor)"
/usr/bin/python3 scripts/kv-keys-vectors.py
echo "==> Epoch-plan vectors, recomputed in Python"
/usr/bin/python3 scripts/epoch-plan-vectors.py
echo "==> Placement vectors, recomputed in Python"
/usr/bin/python3 scripts/placement-vectors.py

disk
echo "==> RDMA carrier: host fallback, then the Soft-RoCE VM (scripts/rdma-vm-test.sh)"
scripts/rdma-vm-test.sh

disk
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
echo "==> cargo fuzz run frame (${FUZZ_SECONDS} s)"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (rustup, minimal profile)"
  rustup toolchain install nightly --profile minimal
fi
if [ ! -x .tools/cargo-fuzz/bin/cargo-fuzz ]; then
  echo "==> installing cargo-fuzz into .tools"
  cargo install cargo-fuzz --locked --root .tools/cargo-fuzz
fi
corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
# New inputs go to scratch corpora; the committed seeds are only read.
mkdir -p "$corpus/frame" "$corpus/chunk" "$corpus/record" "$corpus/catalog" "$corpus/conn"
(cd fuzz && PATH="$PWD/../.tools/cargo-fuzz/bin:$PATH" \
  cargo +nightly fuzz run frame "$corpus/frame" corpus/frame -- -max_total_time="$FUZZ_SECONDS")
FUZZ_CHUNK_SECONDS="${FUZZ_CHUNK_SECONDS:-30}"
echo "==> cargo fuzz run chunk (${FUZZ_CHUNK_SECONDS} s)"
(cd fuzz && PATH="$PWD/../.tools/cargo-fuzz/bin:$PATH" \
  cargo +nightly fuzz run chunk "$corpus/chunk" corpus/chunk -- -max_total_time="$FUZZ_CHUNK_SECONDS")
FUZZ_RECORD_SECONDS="${FUZZ_RECORD_SECONDS:-20}"
echo "==> cargo fuzz run record (${FUZZ_RECORD_SECONDS} s): NVMe value records"
(cd fuzz && PATH="$PWD/../.tools/cargo-fuzz/bin:$PATH" \
  cargo +nightly fuzz run record "$corpus/record" corpus/record -- -max_total_time="$FUZZ_RECORD_SECONDS")
echo "==> cargo fuzz run catalog (${FUZZ_RECORD_SECONDS} s): NVMe catalog snapshot and journal"
(cd fuzz && PATH="$PWD/../.tools/cargo-fuzz/bin:$PATH" \
  cargo +nightly fuzz run catalog "$corpus/catalog" corpus/catalog -- -max_total_time="$FUZZ_RECORD_SECONDS")
FUZZ_CONN_SECONDS="${FUZZ_CONN_SECONDS:-60}"
echo "==> cargo fuzz run conn (${FUZZ_CONN_SECONDS} s): a data connection of an in-process server"
# The server lives for the whole run: no leak check.
(cd fuzz && PATH="$PWD/../.tools/cargo-fuzz/bin:$PATH" \
  cargo +nightly fuzz run conn "$corpus/conn" corpus/conn -- -max_total_time="$FUZZ_CONN_SECONDS" -detect_leaks=0)
disk
