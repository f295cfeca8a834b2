#!/usr/bin/env bash
# Runs a local sluice cluster: installs what is missing, builds, starts `sluice local`.
#   ./scripts/local.sh [--proxies 3] [--base-port 6001]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
sluice_install_deps
cargo build --release --bins
exec target/release/sluice local "$@"
