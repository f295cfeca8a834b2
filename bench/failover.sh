#!/usr/bin/env bash
# Failover time (issue 13): seconds from SIGKILL of a master's redis-server to every slot of
# its shard served again, as a fresh redis-rs cluster client sees it (polled every 20 ms).
#   sluice: 3 shards x 1 replica, the coordinator's default --failover-after-ms 5000
#   native: a Redis Cluster of 3 masters + 3 replicas, cluster-node-timeout 5000
# Each side --runs times (default 5) on a fresh cluster, in the same run; prints each run, the
# medians, the ratio sluice / native, and a RESULT {...} JSON line.
#
#   bash bench/failover.sh
#   bash bench/failover.sh --runs 3
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }

if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
  cargo build --release -q --bins
  export SLUICE_BIN_DIR=target/release
fi
exec "$SLUICE_BIN_DIR/bench_failover" "$@"
