#!/usr/bin/env bash
# kv_server (raftnode) against etcd 3.4, same machine, same client, same load.
#
# Starts three kv_server processes (EngineLogStore with real fsync) and a three-member
# etcd cluster (ports as in docs/benchmarks.md), each member with its own data directory
# under one temporary directory, then runs examples/kv_load against each leader,
# alternating systems at every point: PUT of 64-byte values on random keys from 100k at
# 1, 64 and 256 connections, then linearizable GETs at 64 connections. Prints a table.
#
#   benches/kv_vs_etcd.sh                 # 10 s per point
#   DURATION=30 benches/kv_vs_etcd.sh
#
# Needs root to install etcd when it is missing (apt-get install etcd-server etcd-client).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd..." >&2
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi

cargo build --release --features testing --example kv_server --example kv_load >&2
SERVER="$TARGET_DIR/release/examples/kv_server"
LOAD="$TARGET_DIR/release/examples/kv_load"

DATA="$(mktemp -d -t kv_vs_etcd.XXXXXX)"
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup INT TERM EXIT

# ---- raftnode: raft 127.0.0.1:4710x, HTTP 127.0.0.1:4720x
CLUSTER="1=127.0.0.1:47101,2=127.0.0.1:47102,3=127.0.0.1:47103"
PEERS_HTTP="1=127.0.0.1:47201,2=127.0.0.1:47202,3=127.0.0.1:47203"
for id in 1 2 3; do
  "$SERVER" --id "$id" --cluster "$CLUSTER" --http "127.0.0.1:4720$id" \
    --peers-http "$PEERS_HTTP" --data-dir "$DATA/kv$id" 2>"$DATA/kv$id.log" &
  PIDS+=("$!")
done

# ---- etcd: client 4237x, peer 4238x
ECL="e1=http://127.0.0.1:42380,e2=http://127.0.0.1:42381,e3=http://127.0.0.1:42382"
for i in 0 1 2; do
  n=$((i + 1))
  etcd --name "e$n" --data-dir "$DATA/e$n" \
    --listen-client-urls "http://127.0.0.1:4237$i" --advertise-client-urls "http://127.0.0.1:4237$i" \
    --listen-peer-urls "http://127.0.0.1:4238$i" --initial-advertise-peer-urls "http://127.0.0.1:4238$i" \
    --initial-cluster "$ECL" --initial-cluster-state new --log-level error 2>"$DATA/e$n.log" &
  PIDS+=("$!")
done

# ---- find the leaders (with deadlines)
KV_LEADER=""
for _ in $(seq 1 300); do
  KV_LEADER="$(curl -sf 127.0.0.1:47201/status | sed -n 's/.*"leader_http":"\([^"]*\)".*/\1/p' || true)"
  [[ -n "$KV_LEADER" ]] && break
  sleep 0.1
done
[[ -n "$KV_LEADER" ]] || { echo "kv_server elected no leader" >&2; exit 1; }

ETCD_LEADER=""
for _ in $(seq 1 300); do
  for ep in 127.0.0.1:42370 127.0.0.1:42371 127.0.0.1:42372; do
    if ETCDCTL_API=3 etcdctl --endpoints="$ep" endpoint status -w fields 2>/dev/null | awk '
        /"MemberID"/ { id = $3 } /"Leader"/ { leader = $3 }
        END { exit !(id != "" && id == leader) }'; then
      ETCD_LEADER="$ep"
    fi
  done
  [[ -n "$ETCD_LEADER" ]] && break
  sleep 0.1
done
[[ -n "$ETCD_LEADER" ]] || { echo "etcd elected no leader" >&2; exit 1; }
echo "kv_server leader: $KV_LEADER   etcd leader: $ETCD_LEADER   ($DURATION s per point)" >&2

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

run_point() { # mode connections -> prints a table row
  local mode="$1" conns="$2" kv etcd
  kv="$("$LOAD" --target raftnode --url "$KV_LEADER" --mode "$mode" --connections "$conns" --duration "$DURATION")"
  echo "  $kv" >&2
  etcd="$("$LOAD" --target etcd --url "$ETCD_LEADER" --mode "$mode" --connections "$conns" --duration "$DURATION")"
  echo "  $etcd" >&2
  local kv_ops etcd_ops
  kv_ops="$(echo "$kv" | field ops_per_s)"; etcd_ops="$(echo "$etcd" | field ops_per_s)"
  printf '| %s | %s | %s | %s / %s ms | %s / %s ms | %s / %s ms | %s | %s |\n' \
    "$mode" "$conns" \
    "$kv_ops / $etcd_ops" \
    "$(echo "$kv" | field p50_ms)" "$(echo "$etcd" | field p50_ms)" \
    "$(echo "$kv" | field p99_ms)" "$(echo "$etcd" | field p99_ms)" \
    "$(echo "$kv" | field max_ms)" "$(echo "$etcd" | field max_ms)" \
    "$(awk -v a="$kv_ops" -v b="$etcd_ops" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')" \
    "$(echo "$kv" | field errors)/$(echo "$etcd" | field errors)"
}

ROWS=()
for conns in 1 64 256; do ROWS+=("$(run_point put "$conns")"); done
ROWS+=("$(run_point get 64)")

echo
echo "| op | connections | ops/s raftnode / etcd | p50 raftnode / etcd | p99 raftnode / etcd | max raftnode / etcd | ratio | errors raftnode/etcd |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
