#!/usr/bin/env bash
# Knit's test command: installs what the tests need (only what is missing), then runs every test.
#   scripts/test.sh
# Debian packages: curl, nghttp2-client (nghttp, h2load), redis-server, redis-tools, iptables,
# iproute2, util-linux (setpriv), unzip, prometheus (prometheus, promtool), chromium, postgresql
# (server, psql, pgbench), podman and binutils (strip) for the container images; Python: grpcio,
# grpcio-tools, kubernetes-validate, jsonschema, playwright (driving Debian's chromium: never
# `playwright install`, which downloads browsers from a CDN);
# helm (scripts/install-tools.sh, into target/tools); Node.js and npm (Debian's, when missing),
# for cert-manager's schemas (tests/k8s/cert-manager).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in curl:curl nghttp:nghttp2-client h2load:nghttp2-client redis-server:redis-server redis-cli:redis-tools \
            iptables:iptables ip:iproute2 setpriv:util-linux prometheus:prometheus promtool:prometheus chromium:chromium \
            psql:postgresql-client pgbench:postgresql-client podman:podman strip:binutils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# PostgreSQL's server is not on PATH: look for its initdb and its system user.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
    echo "==> installing: ${need[*]}"
    sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
if ! python3 -c 'import grpc, grpc_tools, kubernetes_validate, jsonschema, playwright' 2>/dev/null || ! command -v kubernetes-validate >/dev/null; then
    echo "==> installing Python grpcio, grpcio-tools, kubernetes-validate, jsonschema and playwright"
    python3 -m pip install --quiet grpcio grpcio-tools kubernetes-validate jsonschema playwright
fi
scripts/install-tools.sh
# cert-manager's and trust-manager's CRD schemas (npm, pinned by package-lock.json), for the
# objects `knit install --identity-external-issuer` renders.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "==> installing: nodejs npm"
    sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if ! cmp -s tests/k8s/cert-manager/package-lock.json tests/k8s/cert-manager/node_modules/.installed-lock.json 2>/dev/null; then
    echo "==> installing cert-manager's schemas (npm ci in tests/k8s/cert-manager)"
    (cd tests/k8s/cert-manager && npm ci --silent --no-audit --no-fund && cp package-lock.json node_modules/.installed-lock.json)
fi

echo "==> formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# knit-proxy without its default `tap` feature (what bench/netns.sh --ab measures tap against).
cargo clippy -p knit-proxy --lib --locked --no-default-features -- -D warnings

echo "==> building"
cargo build --workspace --all-targets --locked

echo "==> CRD schemas"
python3 tests/k8s/validate_crds.py

echo "==> cargo test"
cargo test --workspace --locked

echo "==> dashboard in headless Chromium"
python3 tests/dashboard/test_dashboard.py --bin target/debug --results target/dashboard-results.md

echo "==> transparent interception in network namespaces"
if [ "$(id -u)" = 0 ]; then
    KNIT_PROXY_BIN=target/debug/knit-proxy tests/netns.sh
    KNIT_PROXY_BIN=target/debug/knit-proxy tests/netns-mesh.sh
    KNIT_PROXY_BIN=target/debug/knit-proxy tests/netns-multicluster.sh
else
    echo "SKIP tests/netns.sh, tests/netns-mesh.sh and tests/netns-multicluster.sh: need root (network namespaces and iptables)"
fi

echo "==> container images (release build, FROM scratch, each run chrooted in its own root filesystem)"
if [ "$(id -u)" = 0 ]; then
    scripts/images.sh --check
else
    echo "SKIP scripts/images.sh --check: needs root (podman mount, chroot, network namespaces)"
fi
echo "==> all tests passed"
