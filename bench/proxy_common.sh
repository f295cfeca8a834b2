# What bench/proxy.sh and bench/proxy_instructions.sh share: tools, the proxy build, free ports,
# a work directory whose processes die with the script, one Redis node, and a proxy's config
# that gives it every slot of that node. Sourced, not run.

# require "apt packages" tool… : exits with a hint when a tool is missing.
require() {
  local hint=$1; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install $hint" >&2; exit 1; }
  done
}

# find_proxy: the proxy to measure is SLUICE_BIN_DIR's, else a release build of this checkout.
find_proxy() {
  if [[ -z "${SLUICE_BIN_DIR:-}" ]]; then
    cargo build --release -q -p sluice-proxy
    SLUICE_BIN_DIR=target/release
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start_redis: a Redis node without persistence; sets rport and rpid.
start_redis() {
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --loglevel warning \
    --logfile "$work/redis.log" & rpid=$!; pids+=($rpid); disown
}

# give_all_slots PROXY_PORT: the proxy serves every slot, from the node on rport.
give_all_slots() {
  local p=$1 config
  config="{\"epoch\":1,\"proxy\":\"127.0.0.1:$p\",\"cluster\":{\"name\":\"bench\",\"epoch\":1,\"nodes\":[{\"proxy\":\"127.0.0.1:$p\",\"node\":\"127.0.0.1:$rport\",\"slots\":[{\"start\":0,\"end\":16383}]}]}}"
  [[ "$(redis-cli -p "$p" UMCTL SETDB "$config")" == OK ]] || { echo "proxy $p did not take its config" >&2; exit 1; }
}
