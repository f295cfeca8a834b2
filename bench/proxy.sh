#!/usr/bin/env bash
# Proxy overhead: redis-benchmark against Redis directly, through sluice-proxy, and through a
# second sluice-proxy with --metrics, in the same run, interleaved, for the same cells. Prints
# req/s, the ratio proxy/direct, and the ratio with-metrics/proxy per cell.
#
#   bash bench/proxy.sh            # 300000 requests per run, 2 rounds (best of each kept)
#   N=100000 ROUNDS=1 bash bench/proxy.sh
#   PROXY_ARGS="--threads 2" bash bench/proxy.sh   # extra sluice-proxy flags
#
# The machine is shared: compare ratios measured in one run, never absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
ROUNDS=${ROUNDS:-2}
CELLS=${CELLS:-"50:1 50:16 1:1"}

for tool in redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install redis-server redis-tools" >&2; exit 1; }
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
# Two proxies in front of the same node: one as configured, one also counting and serving
# Prometheus metrics (--metrics), so their ratio is the cost of the metrics.
pport=$(free_port)
mport=$(free_port)
"$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$pport" --node "127.0.0.1:$rport" ${PROXY_ARGS:-} 2>"$work/proxy.log" & pids+=($!); disown
"$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$mport" --node "127.0.0.1:$rport" --metrics "127.0.0.1:$(free_port)" \
  ${PROXY_ARGS:-} 2>"$work/proxy-metrics.log" & pids+=($!); disown

for _ in $(seq 100); do
  redis-cli -p "$rport" ping >/dev/null 2>&1 && redis-cli -p "$pport" ping >/dev/null 2>&1 &&
    redis-cli -p "$mport" ping >/dev/null 2>&1 && break
  sleep 0.1
done
for port in $pport $mport; do
  config="{\"epoch\":1,\"proxy\":\"127.0.0.1:$port\",\"cluster\":{\"name\":\"bench\",\"epoch\":1,\"nodes\":[{\"proxy\":\"127.0.0.1:$port\",\"node\":\"127.0.0.1:$rport\",\"slots\":[{\"start\":0,\"end\":16383}]}]}}"
  [[ "$(redis-cli -p "$port" UMCTL SETDB "$config")" == OK ]] || { echo "proxy $port did not take its config" >&2; exit 1; }
done

# run PORT CLIENTS PIPELINE -> "SET_rps GET_rps"
run() {
  redis-benchmark -p "$1" -c "$2" -P "$3" -n "$N" -t set,get -r 100000 --csv 2>/dev/null |
    awk -F'","' '/^"SET"/{s=$2} /^"GET"/{g=$2} END{printf "%d %d\n", s, g}'
}

declare -A best
for round in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    c=${cell%%:*}; p=${cell##*:}
    for target in direct proxy metrics; do
      case $target in direct) port=$rport ;; proxy) port=$pport ;; metrics) port=$mport ;; esac
      read -r s g < <(run "$port" "$c" "$p")
      for t in SET GET; do
        v=$s; [[ $t == GET ]] && v=$g
        key="$cell/$t/$target"
        (( v > ${best[$key]:-0} )) && best[$key]=$v
      done
    done
  done
done

printf '\nsluice-proxy vs direct Redis (redis-benchmark -n %s, best of %s rounds, interleaved)\n' "$N" "$ROUNDS"
ratios=()
printf '%-16s %-4s %12s %12s %7s %12s %9s\n' cell test direct proxy ratio "+metrics" "vs proxy"
for cell in $CELLS; do
  c=${cell%%:*}; p=${cell##*:}
  for t in SET GET; do
    d=${best[$cell/$t/direct]}; x=${best[$cell/$t/proxy]}; m=${best[$cell/$t/metrics]}
    printf '%-16s %-4s %12s %12s %7.2f %12s %9.3f\n' "-c $c -P $p" "$t" "$d" "$x" \
      "$(awk -v x="$x" -v d="$d" 'BEGIN{print (d>0)?x/d:0}')" "$m" "$(awk -v m="$m" -v x="$x" 'BEGIN{print (x>0)?m/x:0}')"
    ratios+=("$(awk -v m="$m" -v x="$x" 'BEGIN{print (x>0)?m/x:1}')")
  done
done
# One cell of a shared machine moves by ±15% between two identical proxies; the geometric
# mean over the cells is the figure to read for the cost of --metrics.
printf '+metrics vs proxy, geometric mean over the cells: %.3f\n' \
  "$(printf '%s\n' "${ratios[@]}" | awk '{s+=log($1); n++} END{print (n>0)?exp(s/n):0}')"
