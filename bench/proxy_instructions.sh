#!/usr/bin/env bash
# Instructions per request of sluice-proxy (user space, counted by valgrind's callgrind): unlike
# req/s, the count does not depend on what else runs on the machine, so two builds compare
# exactly. Per cell: a proxy runs under callgrind in front of one Redis node, a warm-up run
# goes first, then the counters are switched on for `redis-benchmark -n N` and dumped.
#
#   bash bench/proxy_instructions.sh                 # GET at -c 50 -P 1, -c 50 -P 16, -c 1 -P 1
#   N=5000 TESTS="get set" bash bench/proxy_instructions.sh
#   SLUICE_BIN_DIR=/other/build/release bash bench/proxy_instructions.sh   # another build
#
# Needs valgrind (apt-get install valgrind). Each cell takes ~30 s: callgrind runs the proxy
# about 50 times slower, which is why N is small.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
N1=${N1:-$((N / 4))}
CELLS=${CELLS:-"50:1 50:16 1:1"}
TESTS=${TESTS:-get}

source bench/proxy_common.sh
require "valgrind redis-server redis-tools" valgrind callgrind_control redis-server redis-benchmark redis-cli
find_proxy
start_redis

# count CLIENTS PIPELINE TEST REQUESTS -> instructions per request
count() {
  local port out pid total
  port=$(free_port); out="$work/callgrind.$port"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$port" --node "127.0.0.1:$rport" 2>"$work/valgrind.log" &
  pid=$!; pids+=($pid)
  for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  give_all_slots "$port"
  redis-benchmark -p "$port" -c "$1" -P "$2" -n 2000 -t "$3" -r 100000 -q >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null 2>&1
  redis-benchmark -p "$port" -c "$1" -P "$2" -n "$4" -t "$3" -r 100000 -q >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The explicit dump is part 1; the file without a suffix is what ran after it (shutdown).
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out.1")
  echo $((total / $4))
}

printf 'sluice-proxy, user-space instructions per request (callgrind; %s requests, %s at -c 1)\n' "$N" "$N1"
printf '%-12s %-4s %12s\n' cell test instructions
for cell in $CELLS; do
  c=${cell%%:*}; p=${cell##*:}
  n=$N; (( c == 1 )) && n=$N1
  for t in $TESTS; do
    printf '%-12s %-4s %12s\n' "-c $c -P $p" "${t^^}" "$(count "$c" "$p" "$t" "$n")"
  done
done
