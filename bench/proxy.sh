#!/usr/bin/env bash
# Proxy overhead: redis-benchmark against Redis directly, through sluice-proxy, and through a
# second sluice-proxy with --metrics, in the same run, interleaved (every round runs every
# cell against every target in turn), for the same cells. Per cell: the median req/s of the
# rounds, the ratio proxy/direct, the CPU time per request of the proxy and of the
# redis-server (µs, utime+stime from /proc/PID/stat around each run; a direct run has no
# proxy), the ratio with-metrics/proxy; then one PASS/FAIL line per target of issue 17.
#
#   bash bench/proxy.sh            # 300000 requests per run (30000 at -c 1), 3 rounds
#   N=100000 ROUNDS=1 bash bench/proxy.sh
#   PROXY_ARGS="--threads 2" bash bench/proxy.sh   # extra sluice-proxy flags
#   METRICS=0 bash bench/proxy.sh  # without the --metrics proxy (a third less run time)
#
# The machine is shared: compare ratios measured in one run, never absolute numbers. CPU per
# request is steadier than req/s on a loaded machine (it does not count time spent waiting
# for a core), but it has the kernel tick's resolution: a run should last a second or more.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
# A single client is 5-10 times slower: fewer requests keep its runs as long as the others.
N1=${N1:-$((N / 10))}
ROUNDS=${ROUNDS:-3}
CELLS=${CELLS:-"50:1 50:16 1:1"}
METRICS=${METRICS:-1}
# Issue 17's targets: the least proxy/direct ratio per cell, for SET and GET.
declare -A TARGET=([50:1]=0.9 [50:16]=0.8 [1:1]=0.4)

source bench/proxy_common.sh
require "redis-server redis-tools" redis-server redis-benchmark redis-cli
find_proxy

targets=(direct proxy)
[[ $METRICS == 1 ]] && targets+=(metrics)

start_redis
# Two proxies in front of the same node: one as configured, one also counting and serving
# Prometheus metrics (--metrics), so their ratio is the cost of the metrics.
pport=$(free_port)
"$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$pport" --node "127.0.0.1:$rport" ${PROXY_ARGS:-} 2>"$work/proxy.log" &
ppid=$!; pids+=($ppid); disown
declare -A port=([direct]=$rport [proxy]=$pport) pid=([proxy]=$ppid)
if [[ $METRICS == 1 ]]; then
  mport=$(free_port)
  "$SLUICE_BIN_DIR/sluice-proxy" --listen "127.0.0.1:$mport" --node "127.0.0.1:$rport" --metrics "127.0.0.1:$(free_port)" \
    ${PROXY_ARGS:-} 2>"$work/proxy-metrics.log" & mpid=$!; pids+=($mpid); disown
  port[metrics]=$mport; pid[metrics]=$mpid
fi

for _ in $(seq 100); do
  ok=1
  for t in "${targets[@]}"; do redis-cli -p "${port[$t]}" ping >/dev/null 2>&1 || ok=0; done
  (( ok )) && break
  sleep 0.1
done
for t in "${targets[@]}"; do
  [[ $t == direct ]] && continue
  give_all_slots "${port[$t]}"
done

tck=$(getconf CLK_TCK)
# CPU ticks (user + system) a process has used so far; 0 for no process.
ticks() {
  [[ -n ${1:-} ]] || { echo 0; return; }
  # Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# run PORT CLIENTS PIPELINE TEST REQUESTS PROXY_PID -> "rps proxy_ticks redis_ticks"
run() {
  local p0 r0 rps
  p0=$(ticks "$6"); r0=$(ticks "$rpid")
  rps=$(redis-benchmark -p "$1" -c "$2" -P "$3" -n "$5" -t "$4" -r 100000 --csv 2>/dev/null |
    awk -F'","' 'NR>1 && /^"/{printf "%d", $2; exit}')
  echo "${rps:-0} $(( $(ticks "$6") - p0 )) $(( $(ticks "$rpid") - r0 ))"
}

declare -A rps pcpu rcpu
for round in $(seq "$ROUNDS"); do
  for cell in $CELLS; do
    c=${cell%%:*}; p=${cell##*:}
    n=$N; (( c == 1 )) && n=$N1
    for t in set get; do
      for target in "${targets[@]}"; do
        read -r x pt rt < <(run "${port[$target]}" "$c" "$p" "$t" "$n" "${pid[$target]:-}")
        key="$cell/$t/$target"
        rps[$key]+="$x "
        # µs per request
        pcpu[$key]+="$(awk -v t="$pt" -v k="$tck" -v n="$n" 'BEGIN{printf "%.2f", t / k * 1e6 / n}') "
        rcpu[$key]+="$(awk -v t="$rt" -v k="$tck" -v n="$n" 'BEGIN{printf "%.2f", t / k * 1e6 / n}') "
      done
    done
  done
  echo "round $round of $ROUNDS done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

printf '\nsluice-proxy vs direct Redis (redis-benchmark, %s requests per run, %s at -c 1; median of %s interleaved rounds)\n' \
  "$N" "$N1" "$ROUNDS"
printf 'proxy flags: %s\n' "${PROXY_ARGS:-(none)}"
printf 'CPU: µs per request (user+system), proxy process and redis-server; direct runs have no proxy\n'
printf '%-12s %-4s %10s %10s %6s | %9s %9s %9s' cell test direct proxy ratio "node:dir" "node:prx" "proxy"
[[ $METRICS == 1 ]] && printf ' | %10s %8s %9s' "+metrics" "vs prx" "cpu:met"
printf '\n'
declare -A ratio
mratios=()
for cell in $CELLS; do
  c=${cell%%:*}; p=${cell##*:}
  for t in set get; do
    d=$(median <<<"${rps[$cell/$t/direct]}"); x=$(median <<<"${rps[$cell/$t/proxy]}")
    r=$(awk -v x="$x" -v d="$d" 'BEGIN{printf "%.2f", (d>0)?x/d:0}')
    ratio[$cell/$t]=$r
    printf '%-12s %-4s %10.0f %10.0f %6s | %9s %9s %9s' "-c $c -P $p" "${t^^}" "$d" "$x" "$r" \
      "$(median <<<"${rcpu[$cell/$t/direct]}")" "$(median <<<"${rcpu[$cell/$t/proxy]}")" \
      "$(median <<<"${pcpu[$cell/$t/proxy]}")"
    if [[ $METRICS == 1 ]]; then
      m=$(median <<<"${rps[$cell/$t/metrics]}")
      mr=$(awk -v m="$m" -v x="$x" 'BEGIN{print (x>0)?m/x:1}')
      mratios+=("$mr")
      printf ' | %10.0f %8.3f %9s' "$m" "$mr" "$(median <<<"${pcpu[$cell/$t/metrics]}")"
    fi
    printf '\n'
  done
done
if [[ $METRICS == 1 ]]; then
  # One cell of a shared machine moves by ±15% between two identical proxies; the geometric
  # mean over the cells is the figure to read for the cost of --metrics.
  printf '+metrics vs proxy, geometric mean over the cells: %.3f\n' \
    "$(printf '%s\n' "${mratios[@]}" | awk '{s+=log($1); n++} END{print (n>0)?exp(s/n):0}')"
fi
for cell in $CELLS; do
  want=${TARGET[$cell]:-}
  [[ -n $want ]] || continue
  s=${ratio[$cell/set]}; g=${ratio[$cell/get]}
  verdict=$(awk -v s="$s" -v g="$g" -v w="$want" 'BEGIN{print (s>=w && g>=w)?"PASS":"FAIL"}')
  printf '%s -c %s -P %s: proxy/direct >= %s for SET and GET (SET %s, GET %s)\n' \
    "$verdict" "${cell%%:*}" "${cell##*:}" "$want" "$s" "$g"
done
