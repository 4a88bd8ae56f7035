#!/usr/bin/env bash
# The Python package (python/): installs it the way the README says
# (`pip install ./python`, which builds the abi3 wheel with maturin) into a venv
# under .tools/py, then runs its pytest suites against a real strata-server
# (the debug build cargo made; STRATA_SERVER_BIN to use another).
# Called by scripts/test.sh; runs on its own too (after `cargo build --bin strata-server`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3
VENV=.tools/py
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> python: a venv in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q "pytest>=8" "numpy>=1.26"

# The wheel's build reuses its own target directory between runs.
echo "==> python: pip install ./python (maturin, abi3 wheel)"
start=$(date +%s)
CARGO_TARGET_DIR="$PWD/target/python" "$VENV/bin/pip" install -q --force-reinstall --no-deps ./python
echo "==> python: built and installed in $(( $(date +%s) - start )) s"

echo "==> python: fmt and clippy of the native module"
cargo fmt --manifest-path python/Cargo.toml -- --check
CARGO_TARGET_DIR="$PWD/target/python" PYO3_PYTHON="$PWD/$VENV/bin/python" \
  cargo clippy --manifest-path python/Cargo.toml --all-targets -- -D warnings

export STRATA_SERVER_BIN="${STRATA_SERVER_BIN:-$PWD/target/debug/strata-server}"
[ -x "$STRATA_SERVER_BIN" ] || cargo build --bin strata-server
echo "==> python: pytest python/tests"
start=$(date +%s)
# From outside python/, so `import strata` is the installed package.
(cd python/tests && "../../$VENV/bin/python" -m pytest -q -p no:cacheprovider .)
echo "==> python: tests took $(( $(date +%s) - start )) s"
