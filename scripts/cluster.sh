#!/usr/bin/env bash
# A local three-node Strata cluster with its own etcd, to try the cluster
# (docs/cluster.md) on one machine.
#
#   scripts/cluster.sh start    # builds, then starts etcd and three nodes
#   scripts/cluster.sh status   # strata cluster status
#   scripts/cluster.sh stop     # stops them (SIGTERM: each leaves the cluster)
#
# Everything listens on 127.0.0.1: etcd on 23790, node N (1-3) on gRPC 7N70,
# metrics 7N71, data path 7N72. State and logs go under ./cluster-data.
# Needs etcd (Debian: apt install etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=cluster-data
ETCD_URL=http://127.0.0.1:23790

start() {
  local etcd
  etcd=$(command -v etcd || true)
  [ -n "$etcd" ] || { echo "cluster.sh: etcd not found (Debian: apt install etcd-server)" >&2; exit 1; }
  cargo build --release --bin strata-server --bin strata
  mkdir -p "$DIR"
  if [ ! -f "$DIR/etcd.pid" ] || ! kill -0 "$(cat "$DIR/etcd.pid")" 2>/dev/null; then
    "$etcd" --name strata-local --data-dir "$DIR/etcd" \
      --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
      --listen-peer-urls http://127.0.0.1:23800 \
      --initial-advertise-peer-urls http://127.0.0.1:23800 \
      --initial-cluster strata-local=http://127.0.0.1:23800 \
      --logger zap --log-level warn >"$DIR/etcd.log" 2>&1 &
    echo $! >"$DIR/etcd.pid"
    for _ in $(seq 50); do
      (exec 3<>/dev/tcp/127.0.0.1/23790) 2>/dev/null && break
      sleep 0.2
    done
  fi
  for n in 1 2 3; do
    if [ -f "$DIR/n$n.pid" ] && kill -0 "$(cat "$DIR/n$n.pid")" 2>/dev/null; then continue; fi
    target/release/strata-server --data-dir "$DIR/n$n" \
      --listen "127.0.0.1:7${n}70" --metrics-listen "127.0.0.1:7${n}71" \
      --data-listen "127.0.0.1:7${n}72" \
      --dram-capacity 256MiB --nvme-capacity 1GiB \
      --etcd "$ETCD_URL" --cluster local --advertise 127.0.0.1 >"$DIR/n$n.log" 2>&1 &
    echo $! >"$DIR/n$n.pid"
  done
  sleep 1
  status
  echo "nodes: 127.0.0.1:7170, :7270, :7370 (metrics :7171, :7271, :7371); logs in $DIR/"
}

status() {
  target/release/strata --addr 127.0.0.1:7170 cluster status
}

stop() {
  # The nodes first (each leaves the cluster while etcd is still there), then etcd.
  local pids=()
  for f in "$DIR"/n*.pid; do
    [ -f "$f" ] || continue
    pids+=("$(cat "$f")")
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  if [ -f "$DIR/etcd.pid" ]; then
    kill -TERM "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
    rm -f "$DIR/etcd.pid"
  fi
}

case "${1:-}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: scripts/cluster.sh start|status|stop" >&2; exit 2 ;;
esac
