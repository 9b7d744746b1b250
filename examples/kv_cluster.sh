#!/usr/bin/env bash
# Starts a local 3-node kv_server cluster on loopback, in a temporary data directory.
# Ctrl-C stops all three and removes the directory. docs/kv-example.md explains the API;
# http://127.0.0.1:8001/ is the cluster status page.
#
#   examples/kv_cluster.sh            # raft ports 7001-7003, HTTP ports 8001-8003
#   KEEP_DATA=1 examples/kv_cluster.sh  # keep the data directory on exit
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --example kv_server
BIN="$TARGET_DIR/release/examples/kv_server"

DATA="$(mktemp -d -t kv_cluster.XXXXXX)"
CLUSTER="1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
PEERS_HTTP="1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003"
PIDS=()

cleanup() {
  trap - INT TERM EXIT
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -z "${KEEP_DATA:-}" ]]; then rm -rf "$DATA"; else echo "data kept in $DATA"; fi
  echo "stopped"
}
trap cleanup INT TERM EXIT

for id in 1 2 3; do
  "$BIN" --id "$id" --cluster "$CLUSTER" --http "127.0.0.1:800$id" \
    --peers-http "$PEERS_HTTP" --data-dir "$DATA/n$id" &
  PIDS+=("$!")
done

echo "data in $DATA; waiting for a leader..."
for _ in $(seq 1 100); do
  if curl -sf 127.0.0.1:8001/status | grep -q '"leader":[0-9]'; then break; fi
  sleep 0.1
done
curl -s 127.0.0.1:8001/status || true

cat <<'TRY'

Open http://127.0.0.1:8001/ in a browser: the cluster status page.
Try (-L follows a follower's 307 redirect to the leader):
  curl -L -X PUT -d hello 127.0.0.1:8001/kv/greeting
  curl 127.0.0.1:8002/kv/greeting                        # linearizable, on a follower
  curl '127.0.0.1:8003/kv/greeting?consistency=stale'
  curl -L '127.0.0.1:8003/kv/greeting?consistency=lease'
  curl -L -X DELETE 127.0.0.1:8001/kv/greeting
  curl 127.0.0.1:8001/status
  curl 127.0.0.1:8001/cluster                            # every node's /status, gathered by node 1
  curl -L -X POST -d to=2 127.0.0.1:8001/leader          # move leadership to node 2
Add a fourth node (in another shell), then tell the leader:
  <target>/release/examples/kv_server --id 4 --join \
    --cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004 \
    --http 127.0.0.1:8004 --peers-http 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 \
    --data-dir /tmp/kv4
  curl -L -X POST -d 'id=4&addr=127.0.0.1:7004&role=voter&http=127.0.0.1:8004' 127.0.0.1:8001/members
  curl -L -X DELETE 127.0.0.1:8001/members/4
Ctrl-C stops the cluster.
TRY
wait
