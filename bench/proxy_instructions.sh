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

for tool in valgrind callgrind_control redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install valgrind redis-server redis-tools" >&2; exit 1; }
done
if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
  cargo build --release -q -p sluice-proxy
  SLUICE_BIN_DIR=target/release
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --loglevel warning \
  --logfile "$work/redis.log" & pids+=($!); disown

# count CLIENTS PIPELINE TEST REQUESTS -> instructions per request
count() {
  local port out pid total
  port=$(free_port); out="$work/callgrind.$port"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$port" --node "127.0.0.1:$rport" 2>"$work/valgrind.log" &
  pid=$!; pids+=($pid)
  for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  config="{\"epoch\":1,\"proxy\":\"127.0.0.1:$port\",\"cluster\":{\"name\":\"bench\",\"epoch\":1,\"nodes\":[{\"proxy\":\"127.0.0.1:$port\",\"node\":\"127.0.0.1:$rport\",\"slots\":[{\"start\":0,\"end\":16383}]}]}}"
  [[ "$(redis-cli -p "$port" UMCTL SETDB "$config")" == OK ]] || { echo "the proxy did not take its config" >&2; exit 1; }
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
