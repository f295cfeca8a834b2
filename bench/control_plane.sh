#!/usr/bin/env bash
# Control plane at scale (issue 16): with N simulated proxies (default 1000, gRPC control
# services in one process, clusters of 10), the time from a broker change to every proxy
# holding the new epoch (p50/p99/max), with 1, 2 and 4 coordinators, and the broker's and the
# coordinators' CPU and the broker's request rate at rest. Goals: p99 <= 1 s, broker at rest
# under 5% of a core. Prints each run and a RESULT {...} JSON line.
#
#   bash bench/control_plane.sh
#   bash bench/control_plane.sh --proxies 500 --coordinators 1,2 --changes 10 --rest 5
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
  cargo build --release -q --bins
  export SLUICE_BIN_DIR=target/release
fi
exec "$SLUICE_BIN_DIR/bench_control_plane" "$@"
