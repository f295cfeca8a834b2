#!/usr/bin/env bash
# Replication-mode slot migration under load, against a plain REPLICAOF of the same data, in
# the same run (issue 5). A 2-proxy cluster + 1 spare (broker, coordinator, redis-server nodes,
# release binaries); 1,000,000 keys of 100 bytes loaded straight into node A; half of A's slots
# move to the spare while redis-rs cluster clients run SET/GET on those keys.
#
#   bash bench/migration.sh                        # defaults: 1000000 keys, 4 clients, 5000 cmd/s
#   bash bench/migration.sh --rate 0               # unthrottled clients (redis-benchmark style)
#   bash bench/migration.sh --plain-under-load     # time the plain REPLICAOF under the same load
#   bash bench/migration.sh --keys 200000 --data-dir /tmp/bench   # smaller, keep logs
#   BENCH_PROXY_ARGS="--threads 2" bash bench/migration.sh        # extra sluice-proxy flags
#
# Prints seconds to switched / committed / done, the plain REPLICAOF time and the ratio, the
# longest client command during the migration, client errors, and the goals (committed <=
# 2 x plain + 1 s; longest pause <= 100 ms); the last line is the same as JSON (RESULT {...}).
# Exit code 1 if the migration did not reach done, a client saw an error, or garbage is left.
# The machine is shared: compare figures measured in one run, not across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }

if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
  cargo build --release -q --bins
  export SLUICE_BIN_DIR=target/release
fi
exec "$SLUICE_BIN_DIR/bench_migration" "$@"
