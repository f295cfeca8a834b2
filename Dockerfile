# sluice in one image: sluice-broker, sluice-coordinator, sluice-proxy and the `sluice` CLI.
# docker-compose.yml runs every service from it (the command picks the program).
#
#   docker build -t sluice:local .
#   docker run --rm sluice:local sluice-proxy --help
#
# No registry reachable (an offline CI machine)? scripts/offline-images.sh builds local images
# named rust:1.95-bookworm and debian:bookworm-slim from Debian's packages and this machine's
# Rust toolchain, and vendors the crates (see "Crates" below).
#
# Works with the classic builder and with BuildKit (no RUN --mount, no heredocs), so the
# dependency layer below is cached by ordinary layer caching.

# ---- build --------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# The label marks this project's build layers: integration-tests/compose_test.sh prunes the
# superseded ones (and nothing else).
LABEL org.sluice.stage=build
# sluice-proto's build script runs protoc, and etcd-client's (the broker's etcd store) needs
# protoc's google/protobuf/*.proto too. The official rust image has neither: install them from
# Debian there; the offline stand-in image already carries both, so no network is needed.
RUN { command -v protoc && test -f /usr/include/google/protobuf/descriptor.proto; } >/dev/null \
    || { apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
         && rm -rf /var/lib/apt/lists/*; }
ENV CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_TERM_PROGRESS_WHEN=never
WORKDIR /src

# Crates. The build must not need the network: containers may not reach crates.io even where
# the host does. `cargo vendor` output (target/docker-vendor, made on the host by
# scripts/offline-images.sh from the host's cargo cache; .dockerignore lets only that part of
# target/ in) is copied when present, and used when it was made from this very Cargo.lock:
# cargo then builds from it with `[net] offline = true`. Vendoring rather than copying a cargo
# home: it is exactly the locked crates, checksummed, and needs no registry index. Without a
# matching vendor directory (a user with network who never ran the script) cargo downloads the
# crates from crates.io as usual. The glob makes the vendor directory optional for COPY.
COPY Cargo.lock target/docker-vendo[r] /cargo-vendor/
COPY Cargo.toml Cargo.lock ./
# Every workspace member's manifest (keep in step with `members` in Cargo.toml), and the
# inputs of build scripts.
COPY common/Cargo.toml common/
COPY proto/Cargo.toml proto/build.rs proto/
COPY proto/proto proto/proto/
COPY proxy/Cargo.toml proxy/
COPY coordinator/Cargo.toml coordinator/
COPY broker/Cargo.toml broker/
COPY local/Cargo.toml local/
COPY cli/Cargo.toml cli/
COPY integration-tests/Cargo.toml integration-tests/
COPY rdb/Cargo.toml rdb/
# The dependency layer: the workspace with stub sources, so that all dependencies are compiled
# in a layer that only changes when a manifest or Cargo.lock does.
RUN set -eu; \
    if [ -d /cargo-vendor/vendor ] && cmp -s /cargo-vendor/Cargo.lock.vendored Cargo.lock; then \
        echo "using the vendored crates (target/docker-vendor): no network"; \
        printf '%s\n' '[source.crates-io]' 'replace-with = "vendored-sources"' \
            '[source.vendored-sources]' 'directory = "/cargo-vendor/vendor"' \
            '[net]' 'offline = true' >> "$CARGO_HOME/config.toml"; \
    else \
        echo "no vendored crates for this Cargo.lock: fetching them from crates.io"; \
        rm -rf /cargo-vendor; \
    fi; \
    for m in common proto proxy coordinator broker local cli integration-tests rdb; do \
        mkdir -p "$m/src"; : > "$m/src/lib.rs"; echo 'fn main() {}' > "$m/src/main.rs"; \
    done; \
    cargo build --release --locked --bins \
        -p sluice-broker -p sluice-coordinator -p sluice-proxy -p sluice-cli; \
    rm -rf common/src proto/src proxy/src coordinator/src broker/src local/src cli/src integration-tests/src rdb/src

# The sources. Touched so that cargo rebuilds the workspace crates over the stubs' artifacts
# whatever times the build context carried.
COPY common common
COPY proto proto
COPY proxy proxy
COPY coordinator coordinator
COPY broker broker
COPY local local
COPY cli cli
COPY integration-tests integration-tests
COPY rdb rdb
RUN set -eu; \
    find common proto proxy coordinator broker local cli integration-tests rdb -type f -exec touch {} +; \
    cargo build --release --locked --bins \
        -p sluice-broker -p sluice-coordinator -p sluice-proxy -p sluice-cli; \
    mkdir /out; \
    cp target/release/sluice-broker target/release/sluice-coordinator \
       target/release/sluice-proxy target/release/sluice /out/

# ---- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
LABEL org.sluice.stage=runtime \
      org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="sluice-broker, sluice-coordinator, sluice-proxy and the sluice CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid so that volumes keep their owner across rebuilds. /var/lib/sluice is where
# the broker's sled data goes (a named volume in docker-compose.yml takes this directory's
# owner when it is created).
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /var/lib/sluice \
               --shell /usr/sbin/nologin sluice \
    && install -d -o sluice -g sluice /var/lib/sluice
COPY --from=build /out/ /usr/local/bin/
# The healthcheck: finds the program the container runs (PID 1, or the program docker-init
# runs with `--init`) and probes the address its --listen flag or environment names:
# sluice-proxy must answer PING (+PONG, or -NOAUTH with --requirepass), sluice-broker must
# answer GET /api/v1/epoch with 200; sluice-coordinator serves no port (running is healthy),
# nor does anything else (e.g. `sleep`). Plain bash (/dev/tcp): the slim image has no curl.
RUN printf '%s\n' \
    '#!/bin/bash' \
    '# HEALTHCHECK of the sluice image (see the Dockerfile).' \
    'set -u' \
    'mapfile -d "" -t argv </proc/1/cmdline || exit 1' \
    'case ${argv[0]##*/} in docker-init|tini)' \
    '  for i in "${!argv[@]}"; do [[ ${argv[i]} == -- ]] && { argv=("${argv[@]:i+1}"); break; }; done ;;' \
    'esac' \
    'flag() { local i; for ((i = 1; i < ${#argv[@]}; i++)); do' \
    '  case ${argv[i]} in "$1") echo "${argv[i+1]:-}"; return ;; "$1"=*) echo "${argv[i]#*=}"; return ;; esac' \
    '  done; echo "$2"; }' \
    'hostport() { local h=${1%:*}; h=${h#[}; h=${h%]}; case $h in ""|0.0.0.0|::) h=127.0.0.1 ;; esac; echo "$h ${1##*:}"; }' \
    'case ${argv[0]##*/} in' \
    '  sluice-proxy)' \
    '    read -r h p < <(hostport "$(flag --listen "${SLUICE_PROXY_LISTEN:-127.0.0.1:6001}")")' \
    '    exec 3<>"/dev/tcp/$h/$p" || exit 1' \
    '    printf "PING\r\n" >&3' \
    '    IFS= read -r -t 3 reply <&3 || exit 1' \
    '    [[ $reply == [+-]* ]] ;;' \
    '  sluice-broker)' \
    '    read -r h p < <(hostport "$(flag --listen "${SLUICE_LISTEN:-127.0.0.1:7799}")")' \
    '    exec 3<>"/dev/tcp/$h/$p" || exit 1' \
    '    printf "GET /api/v1/epoch HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$h" >&3' \
    '    IFS= read -r -t 3 status <&3 || exit 1' \
    '    [[ $status == HTTP/1.?" 200"* ]] ;;' \
    '  *) exit 0 ;;' \
    'esac' \
    > /usr/local/bin/sluice-healthcheck \
    && chmod 755 /usr/local/bin/sluice-healthcheck \
    && sluice --version && sluice-broker --version && sluice-coordinator --version && sluice-proxy --version
USER sluice
WORKDIR /var/lib/sluice
# Every program logs to stderr; RUST_LOG filters (default info).
HEALTHCHECK --interval=2s --timeout=3s --start-period=60s --retries=3 CMD ["sluice-healthcheck"]
# Programs and flags: docs/broker-api.md, docs/proxy.md, `<program> --help`. In a container,
# listen on 0.0.0.0 (the defaults are 127.0.0.1).
CMD ["sluice", "--help"]
