#!/usr/bin/env bash
# Makes `docker compose build && docker compose up -d` work on a machine where no image
# registry answers (this project's CI machine: Docker Engine, but no registry).
#
# 1. Images. The Dockerfile and docker-compose.yml name public images: the official `rust`
#    and `debian` images, and the official `redis` image. For each of them that is missing
#    locally and that `docker pull` cannot fetch, this builds a local stand-in carrying
#    exactly that name:tag, from Debian's packages (debootstrap + docker import):
#      debian:bookworm-slim   a minbase bookworm rootfs, trimmed like the official slim image
#                             (no docs, man pages or locales; apt lists removed).
#      rust:<X.Y>-bookworm    a bookworm rootfs with the build tools of the official image's
#                             base (build-essential, git, curl, pkg-config, libssl-dev) plus
#                             protobuf-compiler and libprotobuf-dev (etcd-client's protos import
#                             google/protobuf/*.proto), and this machine's own Rust toolchain (the
#                             rustup toolchain whose rustc is <X.Y>.*, without its HTML docs)
#                             laid out as in the official image (RUSTUP_HOME=/usr/local/rustup,
#                             CARGO_HOME=/usr/local/cargo, rustup and its proxies on PATH). No
#                             toolchain can be downloaded here, so copying the one rustup
#                             installed is the only way to get exactly this rustc; protoc is
#                             added because sluice-proto's build script needs it and the build
#                             stage must not need apt (the Dockerfile installs it with apt only
#                             where it is missing, i.e. from the official image).
#      redis:<X.Y.Z>-bookworm Debian's redis-server package (bookworm ships 7.0.15, the version
#                             the proxy's command table was generated from), run as user redis
#                             in /data, like the official image; the tag's version must match
#                             the package's.
#    Images that exist are left alone (whether pulled or built before): delete one to have it
#    built again. Stand-ins carry the label org.sluice.offline-image.
# 2. Crates. `cargo vendor` into target/docker-vendor/vendor (with a copy of the Cargo.lock it
#    was made from), which .dockerignore lets into the build context: the Dockerfile's build
#    stage then compiles with no network at all. Redone only when Cargo.lock changed.
#
#   scripts/offline-images.sh [--images-only | --vendor-only]
#
# Env: DEBIAN_MIRROR (default: this machine's apt mirror, else http://deb.debian.org/debian),
#      SLUICE_OFFLINE_CACHE (default target/offline-images: debootstrap's .deb cache, kept
#      between runs to save downloads; never trusted for anything but .debs, which apt checks).
# Needs root (debootstrap, chroot); installs debootstrap with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

do_images=1 do_vendor=1
case "${1:-}" in
  "") ;;
  --images-only) do_vendor=0 ;;
  --vendor-only) do_images=0 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

log() { echo "offline-images: $*" >&2; }
die() { echo "offline-images: error: $*" >&2; exit 1; }

CACHE=${SLUICE_OFFLINE_CACHE:-$ROOT/target/offline-images}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
# One run at a time (CI and a developer on the same machine).
exec 9>"$CACHE/.lock"
flock 9

# --- crates --------------------------------------------------------------------------------
vendor_crates() {
  local dir=$ROOT/target/docker-vendor
  if [[ -d $dir/vendor && -f $dir/Cargo.lock.vendored ]] && cmp -s Cargo.lock "$dir/Cargo.lock.vendored"; then
    log "vendored crates match Cargo.lock ($dir)"
    return
  fi
  log "cargo vendor into $dir (Cargo.lock changed or no vendored crates yet)"
  local tmp=$dir.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp Cargo.lock "$tmp/Cargo.lock.vendored"
  # --locked: never rewrite Cargo.lock; the crates come from ~/.cargo/registry when present.
  if ! cargo vendor --locked --versioned-dirs "$tmp/vendor" >"$CACHE/vendor.log" 2>&1; then
    tail -n 20 "$CACHE/vendor.log" >&2
    die "cargo vendor failed (full log: $CACHE/vendor.log)"
  fi
  cmp -s Cargo.lock "$tmp/Cargo.lock.vendored" || die "Cargo.lock changed while vendoring; run again"
  trim_vendor "$tmp/vendor"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# Crates no build for this platform compiles (Windows, wasm, dev-dependencies: about half of
# the bytes) keep only their Cargo.toml, an empty src/lib.rs and a checksum file listing no
# files: cargo still reads every locked package's manifest and checks its package checksum,
# but verifies only the files the checksum file lists. A smaller build context for every
# `docker build` (the classic builder sends it whole each time).
trim_vendor() {
  local vendor=$1 triple needed d n kept=0 stubbed=0 sum
  triple=$(rustc -vV | awk '/^host:/ {print $2}')
  needed=$(cargo tree --locked --workspace -e normal,build --target "$triple" --prefix none --format '{p}' |
    awk '{print $1 "-" substr($2, 2)}' | sort -u)
  [[ -n $needed ]] || die "cargo tree listed no packages"
  for d in "$vendor"/*/; do
    d=${d%/}
    n=$(basename "$d")
    if grep -qxF "$n" <<<"$needed"; then
      kept=$((kept + 1))
      continue
    fi
    sum=$(grep -o '"package":"[0-9a-f]*"' "$d/.cargo-checksum.json") || die "$n: no package checksum"
    find "$d" -mindepth 1 -maxdepth 1 ! -name Cargo.toml -exec rm -rf {} +
    mkdir "$d/src"
    : >"$d/src/lib.rs"
    printf '{"files":{},%s}\n' "$sum" >"$d/.cargo-checksum.json"
    stubbed=$((stubbed + 1))
  done
  log "vendored $kept crates, $stubbed not built for $triple reduced to their manifest ($(du -sh "$vendor" | cut -f1))"
}

# --- images --------------------------------------------------------------------------------
# The public images the Dockerfile and the compose file use (not ours, not stage names).
wanted_images() {
  {
    awk 'toupper($1) == "FROM" { print $2; if (toupper($3) == "AS") print "stage:" $4 }' Dockerfile
    sed -n 's/^[[:space:]]*image:[[:space:]]*["'\'']\{0,1\}\([^"'\''[:space:]]*\).*/\1/p' docker-compose.yml
  } | awk '/^stage:/ { stages[substr($0, 7)] = 1; next } { names[++n] = $0 }
           END { for (i = 1; i <= n; i++) if (!(names[i] in stages) && names[i] !~ /^sluice/ && !seen[names[i]]++) print names[i] }'
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" </dev/null >/dev/null || { apt-get update -q </dev/null >/dev/null && apt-get install -y -q "$@" </dev/null >/dev/null; }
}

debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ') || true
  echo "${m:-http://deb.debian.org/debian}"
}

# rootfs DIR VARIANT PACKAGES...: a Debian bookworm tree in DIR.
rootfs() {
  local dir=$1 variant=$2
  shift 2
  local include
  include=$(IFS=,; echo "$*")
  mkdir -p "$CACHE/debs"
  log "debootstrap --variant=$variant bookworm${include:+ (+ $include)} from $(debian_mirror)"
  if ! debootstrap --variant="$variant" ${include:+--include="$include"} --components=main \
    --cache-dir="$CACHE/debs" bookworm "$dir" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  # As in the official images: services never start inside the image, apt keeps no lists.
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 755 "$dir/usr/sbin/policy-rc.d"
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/log/*.log \
    "$dir"/var/log/apt/* "$dir"/tmp/* "$dir"/root/.bash_history
  printf 'bookworm-offline\n' >"$dir/etc/hostname"
  : >"$dir/etc/resolv.conf"
}

# Like the official slim images: no docs (but copyrights), man pages, info, locales.
slim() {
  local dir=$1
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/groff/* "$dir"/usr/share/info/* \
    "$dir"/usr/share/lintian/* "$dir"/usr/share/linda/* "$dir"/usr/share/locale/*
}

# import DIR NAME:TAG [--change …]…
import() {
  local dir=$1 name=$2
  shift 2
  log "docker import $name"
  tar --numeric-owner --xattrs -C "$dir" -c . |
    docker import --change "LABEL org.sluice.offline-image=\"debootstrap bookworm, $(date -u +%F)\"" "$@" - "$name" >/dev/null
}

PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

build_debian_slim() {
  local name=$1 dir=$2
  rootfs "$dir" minbase
  slim "$dir"
  import "$dir" "$name" --change "$PATH_ENV" --change 'CMD ["bash"]'
}

build_rust() {
  local name=$1 dir=$2 want=${1#rust:}
  want=${want%%-*} # 1.95 (or 1.95.0)
  [[ $name == *-bookworm ]] || die "$name: only bookworm rust images can be built here"
  # This machine's toolchain with that rustc version.
  local rustup_home=${RUSTUP_HOME:-$HOME/.rustup} tc="" t v
  for t in "$rustup_home"/toolchains/*/; do
    t=${t%/}
    v=$("$t/bin/rustc" --version 2>/dev/null | awk '{print $2}') || continue
    if [[ $v == "$want" || $v == "$want".* ]]; then
      tc=$t
      [[ $(basename "$t") == "$v"-* ]] && break # prefer the toolchain named by its version
    fi
  done
  [[ -n $tc ]] || die "$name: no rustup toolchain with rustc $want.* under $rustup_home/toolchains"
  local version triple
  version=$("$tc/bin/rustc" --version | awk '{print $2}')
  triple=$("$tc/bin/rustc" -vV | awk '/^host:/ {print $2}')
  local rustup_bin
  rustup_bin=$(command -v rustup || echo "${CARGO_HOME:-$HOME/.cargo}/bin/rustup")
  rustup_bin=$(readlink -f "$rustup_bin")
  [[ -x $rustup_bin ]] || die "$name: rustup not found"
  log "$name from toolchain $(basename "$tc") (rustc $version)"

  rootfs "$dir" buildd ca-certificates curl wget git pkg-config libssl-dev xz-utils protobuf-compiler libprotobuf-dev
  local rh=$dir/usr/local/rustup ch=$dir/usr/local/cargo
  mkdir -p "$rh/toolchains/$version-$triple" "$ch/bin"
  # The toolchain without its HTML docs (rust-docs, ~700 MB), as in the official image.
  tar -C "$tc" --exclude=./share/doc -c . | tar -C "$rh/toolchains/$version-$triple" -x
  local comp=$rh/toolchains/$version-$triple/lib/rustlib/components
  if [[ -f $comp ]]; then
    grep -v '^rust-docs' "$comp" >"$comp.new" || true
    mv "$comp.new" "$comp"
    rm -f "$rh/toolchains/$version-$triple/lib/rustlib/manifest-rust-docs-"*
  fi
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n\n[overrides]\n' "$version-$triple" >"$rh/settings.toml"
  install -m 755 "$rustup_bin" "$ch/bin/rustup"
  local p
  for p in cargo cargo-clippy cargo-fmt clippy-driver rust-gdb rust-gdbgui rust-lldb rustc rustdoc rustfmt; do
    ln -s rustup "$ch/bin/$p"
  done
  chmod -R a+w "$rh" "$ch"
  import "$dir" "$name" \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$version" --change 'CMD ["bash"]'
  # The image must be the toolchain it is named after.
  local got
  got=$(docker run --rm --network none "$name" rustc --version) || die "$name: rustc does not run in the image"
  [[ $got == "rustc $want"* ]] || die "$name: the image has $got"
  docker run --rm --network none "$name" sh -c 'cargo --version && protoc --version && cc --version | head -n1' >&2
}

build_redis() {
  local name=$1 dir=$2 want=${1#redis:}
  want=${want%%-*} # 7.0.15
  [[ $name == *-bookworm ]] || die "$name: only bookworm redis images can be built here"
  rootfs "$dir" minbase redis-server
  slim "$dir"
  local got
  got=$(chroot "$dir" redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
  [[ $got == "$want" ]] || die "$name: Debian bookworm's redis-server is $got, not $want: change the tag in docker-compose.yml"
  # The official image's interface: an entrypoint that, started as root for redis-server,
  # gives /data (its working directory, whatever is mounted there) to the redis user and
  # drops to it (setpriv from util-linux instead of gosu); port 6379; CMD redis-server.
  mkdir -p "$dir/data"
  chroot "$dir" chown redis:redis /data
  cat >"$dir/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
set -e
# Stand-in for the official redis image's entrypoint (sluice's scripts/offline-images.sh).
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
ENTRYPOINT
  chmod 755 "$dir/usr/local/bin/docker-entrypoint.sh"
  import "$dir" "$name" --change "$PATH_ENV" --change 'WORKDIR /data' --change 'VOLUME /data' \
    --change 'EXPOSE 6379' --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["redis-server"]'
  [[ $(docker run --rm --network none --tmpfs /data "$name" redis-server --version) == *"v=$want "* ]] ||
    die "$name: redis-server does not run in the image"
}

build_image() {
  local name=$1
  local dir=$CACHE/rootfs-${name//[:\/]/-}
  rm -rf "$dir"
  case $name in
    debian:bookworm-slim) build_debian_slim "$name" "$dir" ;;
    rust:*) build_rust "$name" "$dir" ;;
    redis:*) build_redis "$name" "$dir" ;;
    *) die "$name is missing, cannot be pulled, and this script has no recipe for it" ;;
  esac
  rm -rf "$dir"
  log "built $name ($(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# A rust stand-in built before the broker's etcd store lacks libprotobuf-dev, which the build
# now needs: it is built again (only stand-ins, never a pulled image).
stale_rust_standin() {
  [[ $1 == rust:* ]] || return 1
  [[ -n $(docker image inspect -f '{{index .Config.Labels "org.sluice.offline-image"}}' "$1" 2>/dev/null) ]] || return 1
  ! docker run --rm --entrypoint test "$1" -f /usr/include/google/protobuf/descriptor.proto >/dev/null 2>&1
}

ensure_images() {
  command -v docker >/dev/null || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"
  local name missing=()
  while read -r name; do
    if have_image "$name" && stale_rust_standin "$name"; then
      log "$name: a stand-in without libprotobuf-dev, building it again"
      docker rmi "$name" >/dev/null
      missing+=("$name")
    elif have_image "$name"; then
      log "$name: present"
    elif timeout 120 docker pull -q "$name" >/dev/null 2>&1; then
      log "$name: pulled"
    else
      missing+=("$name")
    fi
  done < <(wanted_images)
  ((${#missing[@]})) || return 0
  log "no registry has ${missing[*]}: building local stand-ins"
  [[ $(id -u) -eq 0 ]] || die "building images needs root (debootstrap, chroot)"
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_install debootstrap; }
  for name in "${missing[@]}"; do
    build_image "$name"
  done
}

((do_images)) && ensure_images
((do_vendor)) && vendor_crates
exit 0
