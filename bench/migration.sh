#!/usr/bin/env bash
# Slot migrations under load, each against its yardstick measured in the same run. Both runs
# use release binaries (broker, coordinator, proxies, redis-server nodes), load 1,000,000 keys
# of 100 bytes straight into the nodes, and move half of one node's slots while redis-rs
# cluster clients run SET/GET on the keys (and create a few new ones).
#
#   replication (issue 5): a 2-proxy cluster + 1 spare; all keys on node A; half of A's slots
#     move to the empty spare by replication, against a plain REPLICAOF of node A. Prints the
#     seconds to switched / committed / done, the plain REPLICAOF time and the ratio, and the
#     goals (committed <= 2 x plain + 1 s; longest pause <= 100 ms).
#   keys (issue 6): a 2-proxy cluster, the keys spread over both nodes by slot; the lower half
#     of A's slots move to B, which holds data too, key by key. Then a native 2-node Redis
#     Cluster (redis-server --cluster-enabled yes) gets the same keys in the same slots and
#     `redis-cli --cluster reshard` moves the same slots (default pipeline), timed. Prints
#     keys/s, the seconds to switched / committed / done, the reshard time and the ratio
#     reshard / sluice (to done), goal >= 3.
#
#   filtered (issue 14): the keys mode setup (both nodes hold data), the same slots moved by
#     slot-filtered replication; in the same run a plain REPLICAOF of node A (idle), the same
#     move in keys mode (a fresh cluster) and redis-cli --cluster reshard. Prints the seconds
#     to committed of each, the ratios and the goals (filtered <= 0.5 x keys mode and <= 2 x
#     plain REPLICAOF; longest client command <= 100 ms). --keys 2000000 puts 1,000,000 on
#     each node.
#
#   bash bench/migration.sh                        # both: replication, then keys (the default)
#   bash bench/migration.sh --mode filtered --keys 2000000   # filtered vs keys vs REPLICAOF vs reshard
#   bash bench/migration.sh --mode keys            # only keys mode vs reshard
#   bash bench/migration.sh --mode replication     # only replication mode vs REPLICAOF
#   bash bench/migration.sh --rate 0               # unthrottled clients (redis-benchmark style)
#   bash bench/migration.sh --plain-under-load     # replication: plain REPLICAOF under the same load
#   bash bench/migration.sh --native-under-load    # keys: the reshard under the same load
#   bash bench/migration.sh --keys 100000 --data-dir /tmp/bench   # smaller, keep logs (DIR/<run>)
#   BENCH_PROXY_ARGS="--keys-batch 200" bash bench/migration.sh    # extra sluice-proxy flags
#
# Both print the client commands during the migration (count, percentiles, the longest) and
# the client errors; each run's last line is its figures as JSON (RESULT {...}). Exit code 1 if
# a migration did not reach done, a client saw an error, keys were lost or left behind (the
# nodes must hold exactly the loaded keys + the keys the clients created, each on the node
# serving its slot), or the reshard did not move its keys; 2 if the benchmark could not run.
# Missing a goal is reported, not fatal. The machine is shared: compare figures measured in
# one run, not across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli missing: apt-get install redis-tools" >&2; exit 1; }

if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
  cargo build --release -q --bins
  export SLUICE_BIN_DIR=target/release
fi
exec "$SLUICE_BIN_DIR/bench_migration" "$@"
