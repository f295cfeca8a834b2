#!/usr/bin/env bash
# Installs what sluice needs to build and run, with apt-get, only when missing.
# Sourced by scripts/local.sh and scripts/test.sh.
set -euo pipefail

sluice_apt_install() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: $*" >&2; return 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "$@" </dev/null || { $sudo apt-get update -q </dev/null && $sudo apt-get install -y -q "$@" </dev/null; }
}

sluice_install_deps() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v redis-benchmark >/dev/null || missing+=(redis-tools)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  # etcd-client's build compiles etcd's protos, which import google/protobuf/*.proto.
  [[ -f /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
  # The broker's etcd store is tested against a real etcd (broker/tests/http).
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v python3 >/dev/null || missing+=(python3)
  # The redis-py tests build a venv: Debian ships ensurepip in python3-venv.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sluice_apt_install "${missing[@]}"
  fi
  # The tests start their own redis-server and etcd processes on free ports; packaged ones
  # running as services are not needed (and are left alone).
}
