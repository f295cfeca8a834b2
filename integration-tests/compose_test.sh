#!/usr/bin/env bash
# End-to-end test of docker-compose.yml, for real, from the host:
#   builds the offline images if no registry has them (scripts/offline-images.sh),
#   docker compose up -d --build, waits until everything is healthy and the cluster exists,
#   writes and reads 10,000 keys with `redis-cli -c -p 6001`, migrates slots 0-2730 into the
#   spare proxy with curl and waits for `done` (the switch is a call from one proxy container
#   to another at its peer address), reads every key back, checks the broker's
#   epoch, kills the proxy container that owns slot 0 and waits until the broker lists it
#   failed, starts it again and waits until it serves, reads every key again, then
#   docker compose down -v.
# Whatever happens (failure, Ctrl-C), the trap removes the project's containers, networks
# and volumes and checks that none is left.
#
# Skips (exit 0, saying so) when no Docker engine answers. Runs as its own Compose project
# (SLUICE_COMPOSE_PROJECT, default sluice-compose-test), but the cluster's host ports are
# fixed (127.0.0.1:6001-6004 and 7799): it fails early, naming them, if they are taken.
# Needs redis-cli, curl, python3 (scripts/deps.sh installs them).
#
#   integration-tests/compose_test.sh        (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROJECT=${SLUICE_COMPOSE_PROJECT:-sluice-compose-test}
KEYS=${SLUICE_COMPOSE_KEYS:-10000}
B=http://127.0.0.1:7799/api/v1
WORK=$ROOT/target/compose-test
T0=$SECONDS

say() { printf '[compose %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }
skip() {
  echo "=== compose test SKIPPED: $* ==="
  exit 0
}

# ---- can it run here? ---------------------------------------------------------------------
command -v docker >/dev/null || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers (docker info failed)"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  fail "a Docker engine answers but neither 'docker compose' nor 'docker-compose' is installed"
fi
COMPOSE+=(-p "$PROJECT" -f "$ROOT/docker-compose.yml")
for tool in redis-cli curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/deps.sh installs it)"
done
# Every workspace member must be copied by the Dockerfile (it lists them for layer caching).
for m in $(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("Cargo.toml","rb"))["workspace"]["members"]))'); do
  grep -q "^COPY $m/Cargo.toml" Dockerfile || fail "the Dockerfile does not copy the workspace member $m: add its COPY lines (manifest and sources) and its stub"
done

mkdir -p "$WORK"
AUTH=()
[[ -z ${SLUICE_API_TOKEN:-} ]] || AUTH=(-H "Authorization: Bearer $SLUICE_API_TOKEN")

compose() { "${COMPOSE[@]}" "$@"; }
cid() { compose ps -q "$1"; }
# py EXPR: evaluates EXPR with the JSON on stdin as `d`.
py() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
get() { curl -sSf --max-time 10 "$B$1"; }

# ---- cleanup: always --------------------------------------------------------------------
leftovers() {
  local f="label=com.docker.compose.project=$PROJECT"
  {
    docker ps -aq --filter "$f" | sed 's/^/container /'
    docker network ls -q --filter "$f" | sed 's/^/network /'
    docker volume ls -q --filter "$f" | sed 's/^/volume /'
  } 2>/dev/null
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)) && [[ -n $(leftovers) ]]; then
    echo "--- docker compose ps"
    compose ps 2>&1 || true
    echo "--- last log lines of every service"
    compose logs --no-color --tail=40 2>&1 | tail -n 400 || true
  fi
  say "docker compose down -v"
  compose down -v --remove-orphans --timeout 5 >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    echo "left behind by docker compose down -v, removing:" >&2
    echo "$left" >&2
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker rm -fv >/dev/null 2>&1 || true
    docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm -f >/dev/null 2>&1 || true
    ((rc != 0)) || rc=1
  fi
  # Superseded images of the sluice build (label org.sluice.stage; nothing else is touched):
  # without this every source change would leave ~100 MB more on disk. The current build
  # stage is tagged sluice-build:cache and sluice:local is tagged, so they and all the
  # layers they share (the compiled dependencies) stay as the cache of the next run.
  docker image prune -f --filter label=org.sluice.stage >/dev/null 2>&1 || true
  if ((rc == 0)); then
    echo "=== compose test passed in $((SECONDS - T0)) s ==="
  else
    echo "=== compose test FAILED (exit $rc) after $((SECONDS - T0)) s ===" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous run that was killed with SIGKILL may have left its project behind.
if [[ -n $(leftovers) ]]; then
  say "removing what an earlier run of project $PROJECT left"
  compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
fi
for port in 6001 6002 6003 6004 7799; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is taken (another sluice cluster? 'docker compose down' or stop it): the compose cluster publishes 6001-6004 and 7799"
  fi
done

# ---- images and start ---------------------------------------------------------------------
say "offline images and vendored crates (scripts/offline-images.sh)"
t=$SECONDS
bash scripts/offline-images.sh
say "images ready in $((SECONDS - t)) s"

# The build stage, tagged: an untagged build stage is a dangling image, which a prune (ours
# below, or anyone's `docker image prune`) would delete with the compiled dependencies. The
# build after it is the same and finds every layer cached.
say "docker build --target build -t sluice-build:cache . (log: $WORK/build.log)"
t=$SECONDS
if ! docker build --target build -t sluice-build:cache . >"$WORK/build.log" 2>&1; then
  tail -n 60 "$WORK/build.log" >&2
  fail "docker build of the build stage"
fi
say "build stage ready in $((SECONDS - t)) s"

say "docker compose up -d --build (log: $WORK/up.log)"
t=$SECONDS
if ! compose up -d --build >"$WORK/up.log" 2>&1; then
  tail -n 60 "$WORK/up.log" >&2
  fail "docker compose up"
fi
say "built and started in $((SECONDS - t)) s"

# wait_healthy: every long-running service healthy, init exited 0.
wait_healthy() {
  local deadline=$((SECONDS + 180)) s id state bad
  while :; do
    bad=""
    for s in broker coordinator redis1 redis2 redis3 redis4 proxy1 proxy2 proxy3 proxy4; do
      id=$(cid "$s")
      state=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null || echo missing)
      [[ $state == running/healthy || $state == running/none ]] || bad+=" $s=$state"
    done
    id=$(cid init)
    state=$(docker inspect -f '{{.State.Status}}/{{.State.ExitCode}}' "$id" 2>/dev/null || echo missing)
    [[ $state == exited/0 ]] || bad+=" init=$state"
    [[ $state == exited/[1-9]* ]] && { compose logs --no-color init >&2; fail "init exited with an error"; }
    [[ -z $bad ]] && return 0
    ((SECONDS < deadline)) || fail "not healthy after 180 s:$bad"
    sleep 1
  done
}
wait_healthy
say "all services healthy, init done: $(compose logs --no-color init | grep -o 'init: .*' | cut -c1-120)"

broker_epoch() { get /epoch | py 'd["epoch"]'; }
# wait_epochs: every proxy holds the broker's epoch (the coordinator pushed the configs).
wait_epochs() {
  local deadline=$((SECONDS + 60)) e p got
  while :; do
    e=$(broker_epoch)
    got=""
    for p in 6001 6002 6003 6004; do got+=" $(redis-cli -p "$p" UMCTL GETEPOCH 2>&1 || true)"; done
    [[ $got == " $e $e $e $e" ]] && { echo "$e"; return 0; }
    ((SECONDS < deadline)) || fail "the proxies hold epochs$got, the broker $e"
    sleep 0.5
  done
}
E0=$(wait_epochs)
say "every proxy holds the broker's epoch $E0"
get /clusters/local | py '"cluster: " + ", ".join(n["proxy"] + " " + ",".join("%d-%d" % (r["start"], r["end"]) for r in n["slots"]) for n in d["nodes"])' | sed 's/^/    /'
# Each proxy is its own container: the others reach it at its service name (--peer-announce),
# which the cluster view carries as the node's `peer`, while clients get 127.0.0.1:600N.
peers=$(get /clusters/local | py '" ".join(n["proxy"] + "=" + n.get("peer", "-") for n in d["nodes"])')
[[ $peers == "127.0.0.1:6001=proxy1:6001 127.0.0.1:6002=proxy2:6002 127.0.0.1:6003=proxy3:6003" ]] ||
  fail "the cluster view does not carry the proxies' peer addresses: $peers"

# ---- 10,000 keys from the host ------------------------------------------------------------
for ((i = 0; i < KEYS; i++)); do echo "SET key:$i value:$i"; done >"$WORK/set.txt"
for ((i = 0; i < KEYS; i++)); do echo "GET key:$i"; done >"$WORK/get.txt"
for ((i = 0; i < KEYS; i++)); do echo "value:$i"; done >"$WORK/values.txt"
# read_all LABEL: GET every key through redis-cli -c (following MOVED) and compare.
read_all() {
  local t=$SECONDS
  # redis-cli -c reports every redirection it follows on stdout: drop those lines.
  redis-cli -c -p 6001 <"$WORK/get.txt" 2>&1 | grep -v '^-> Redirected to slot' >"$WORK/got.txt" || true
  if ! cmp -s "$WORK/got.txt" "$WORK/values.txt"; then
    diff "$WORK/values.txt" "$WORK/got.txt" >"$WORK/diff.txt" || true
    head -n 10 "$WORK/diff.txt" >&2
    fail "$1: $(grep -c '^<' "$WORK/diff.txt") of $KEYS values differ (full diff: $WORK/diff.txt)"
  fi
  say "$1: all $KEYS keys read back with redis-cli -c in $((SECONDS - t)) s"
}
t=$SECONDS
redis-cli -c -p 6001 <"$WORK/set.txt" >"$WORK/set.out" 2>&1 || true
ok=$(grep -cx OK "$WORK/set.out" || true)
((ok == KEYS)) || { grep -v -e '^OK$' -e '^-> Redirected' "$WORK/set.out" >"$WORK/set.err" || true; head -n 5 "$WORK/set.err" >&2; fail "SET: $ok of $KEYS answered OK"; }
say "wrote $KEYS keys with redis-cli -c -p 6001 in $((SECONDS - t)) s"
read_all "before the migration"
dbsizes() { for n in 1 2 3 4; do docker exec "$(cid "redis$n")" redis-cli DBSIZE; done | tr '\n' ' '; }
say "keys per node (redis1-4): $(dbsizes)"

# ---- migration into the spare -------------------------------------------------------------
say "migration: slots 0-2730 from 127.0.0.1:6001 into the spare 127.0.0.1:6004 (replication)"
answer=$(curl -sS --max-time 10 "${AUTH[@]}" -w '\n%{http_code}' \
  -d '{"src":"127.0.0.1:6001","dst":"127.0.0.1:6004","slots":[[0,2730]],"mode":"replication"}' \
  "$B/clusters/local/migrations")
[[ $(tail -n1 <<<"$answer") == 202 ]] || fail "POST migrations: $answer"
MIG=$(head -n -1 <<<"$answer" | py 'd["id"]')
t=$SECONDS
deadline=$((SECONDS + 180))
last=""
while :; do
  rec=$(get "/clusters/local/migrations/$MIG")
  phase=$(py 'd["phase"]' <<<"$rec")
  [[ $phase == "$last" ]] || say "    $MIG: $phase"
  last=$phase
  case $phase in
    done) break ;;
    failed | aborted) fail "migration $phase: $rec" ;;
  esac
  ((SECONDS < deadline)) || fail "migration not done after 180 s: $rec"
  sleep 0.5
done
say "migration $MIG done in $((SECONDS - t)) s; phases: $(py '" ".join(d["timestamps"])' <<<"$rec")"
read_all "after the migration"
say "keys per node (redis1-4): $(dbsizes)"

# ---- the broker's epoch -------------------------------------------------------------------
# docs/broker-api.md: creating the migration, `switching` (replication mode: it allows the
# switch in the configs), its commit and its `done` each bump the epoch by one, nothing else
# in between does.
E1=$(wait_epochs)
((E1 == E0 + 4)) || fail "broker epoch $E1 after the migration, expected $E0 + 4"
committed=$(py 'd.get("committed_epoch")' <<<"$rec")
((committed == E0 + 3)) || fail "committed_epoch $committed, expected $((E0 + 3))"
say "broker epoch $E0 -> $E1 (create, switching, commit at $committed, done), held by every proxy"

# ---- the proxy owning slot 0 fails and comes back -----------------------------------------
owner=$(get /clusters/local | py '[n["proxy"] for n in d["nodes"] if any(r["start"] == 0 for r in n["slots"])][0]')
[[ $owner == 127.0.0.1:6004 ]] || fail "slot 0 belongs to $owner after the migration, not 127.0.0.1:6004"
# "3560" hashes to slot 0.
moved=$(redis-cli -p 6001 GET 3560 2>&1 || true)
say "slot 0 belongs to $owner (a client at 6001 gets: $moved)"
svc=proxy$((${owner##*:} - 6000))
proxy_state() { get "/proxies/$owner" | py 'd["state"]'; }

say "docker kill $svc"
docker kill "$(cid "$svc")" >/dev/null
t=$SECONDS
deadline=$((SECONDS + 60))
until [[ $(proxy_state) == failed ]]; do
  ((SECONDS < deadline)) || fail "$owner not marked failed 60 s after the kill: $(get "/proxies/$owner")"
  sleep 0.2
done
say "the broker lists $owner as failed after $((SECONDS - t)) s: $(get "/proxies/$owner" | py 'd.get("failure", "")')"

say "docker compose start $svc"
compose start "$svc" >/dev/null 2>&1
t=$SECONDS
deadline=$((SECONDS + 60))
until [[ $(proxy_state) == serving ]]; do
  ((SECONDS < deadline)) || fail "$owner not serving 60 s after the restart: $(get "/proxies/$owner")"
  sleep 0.2
done
E2=$(wait_epochs)
say "$owner serving again after $((SECONDS - t)) s, at epoch $E2"
read_all "after the restart"
