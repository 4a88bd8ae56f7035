#!/usr/bin/env bash
# The crate split (docs/crates.md): a client links no server code. Fails if a
# client crate's build (normal and build dependencies, every feature) pulls in
# the storage engine, the server, foyer or the Azure SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=(strata-proto strata-transport strata-training-cache strata-kv-connector strata-cli)
forbidden='^(strata-tiers|strata-server|foyer[a-z-]*|azure_[a-z_]+|reqwest)$'
status=0
for c in "${clients[@]}"; do
  bad=$(cargo tree -p "$c" --all-features -e normal,build --prefix none 2>/dev/null \
    | awk '{print $1}' | sort -u | grep -E "$forbidden" || true)
  if [ -n "$bad" ]; then
    echo "check-split: $c links server-side crates: $(echo "$bad" | tr '\n' ' ')" >&2
    cargo tree -p "$c" --all-features -e normal,build -i "$(echo "$bad" | head -1)" >&2 || true
    status=1
  else
    echo "check-split: $c links no server code"
  fi
done
exit $status
