#!/usr/bin/env bash
# Knit's discovery benchmark, on loopback:
#  1. knit-control under endpoint churn: 1,000 Services and 10,000 ExternalWorkloads in a manifest
#     directory, 500 Destination.Get and 100 OutboundPolicies.Watch streams, 100 endpoint
#     replacements per second; update latency, memory and CPU (bench/loadgen `control`);
#  2. knit-proxy's P2C balancer (endpoints and policy from knit-control) against its static
#     round robin, with a slow endpoint and with a rate-limited one.
#   bench/discovery.sh [--quick]
# Writes the discovery section of bench/RESULTS.md (keeping the rest) and raw JSON lines to
# bench/out/discovery.jsonl. knit-control and the proxies run on CPU 1; loadgen and backends on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
CHURN=60s; DUR=15s; WARM=2s
((QUICK)) && { CHURN=15s; DUR=5s; WARM=1s; }
RATE=500; CONNS=50          # load through the proxies: 10 rps per connection, so a 20 ms answer delays no send
SLOW_MS=20                  # the slow endpoint's added delay
RL_EVERY=2; RETRY_AFTER=1   # the rate-limited endpoint refuses every 2nd request, Retry-After: 1
command -v taskset >/dev/null || { echo "bench: taskset is missing: apt-get install util-linux"; exit 1; }
command -v curl >/dev/null || { echo "bench: curl is missing: apt-get install curl"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs to pin knit apart from the load"; exit 1; }

cargo build --release -p knit-proxy -p knit-loadgen -p knit-control -p knit
L=target/release/knit-loadgen
P=target/release/knit-proxy
C=target/release/knit-control
HELP=$("$C" --help)
grep -q -- --config-dir <<<"$HELP" || { echo "bench: this knit-control has no --config-dir (no discovery yet)"; exit 1; }
POLL_FLAG=0
grep -q -- --config-poll-interval <<<"$HELP" && POLL_FLAG=1
OUT=bench/out
mkdir -p "$OUT"
RAW="$OUT/discovery.jsonl"
: >"$RAW"
source bench/lib.sh
stop() { # pid: ends one process this script started and forgets it
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

target/release/knit identity init --dir "$TMP/id" >/dev/null
start_control() { # name, manifest dir, extra flags...
    local name=$1 dir=$2; shift 2
    local dst=$(free_port) pol=$(free_port) id=$(free_port) admin=$(free_port) viz=$(free_port)
    taskset -c 1 "$C" --config-dir "$dir" --identity-dir "$TMP/id" --identity-addr 127.0.0.1:$id --admin-addr 127.0.0.1:$admin \
        --destination-addr 127.0.0.1:$dst --policy-addr 127.0.0.1:$pol --viz-addr 127.0.0.1:$viz "$@" 2>"$TMP/$name.log" &
    PIDS+=($!)
    eval "${name}_PID=$! ${name}_DST=$dst ${name}_POL=$pol"
    wait_http "http://127.0.0.1:$admin/ready" "$TMP/$name.log"
}

# --- 1. knit-control under churn -------------------------------------------------------------
churn() { # poll interval in ms, churn duration
    local poll=$1 dur=$2 flags=() json
    ((POLL_FLAG)) && flags=(--config-poll-interval "${poll}ms")
    taskset -c 0 "$L" control manifests --dir "$TMP/fleet"
    start_control CP "$TMP/fleet" "${flags[@]}"
    json=$(taskset -c 0 "$L" control churn --dir "$TMP/fleet" --destination-addr 127.0.0.1:$CP_DST \
        --policy-addr 127.0.0.1:$CP_POL --pid "$CP_PID" --duration "$dur") || { tail -n 20 "$TMP/CP.log"; exit 1; }
    stop "$CP_PID"
    echo "{\"kind\":\"churn\",\"poll_ms\":$poll,\"result\":$json}" >>"$RAW"
    echo "  churn, poll every ${poll} ms: $json"
}
echo "== knit-control under churn (100 endpoint replacements/s)"
churn 100 "$CHURN"   # the default interval: with inotify, only the fallback

# --- 2. P2C against round robin ----------------------------------------------------------------
serve() { # name, flags...: a backend on CPU 0; sets NAME=ip:port
    local name=$1; shift
    taskset -c 0 "$L" serve --port-file "$TMP/$name.port" "$@" >/dev/null &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$TMP/$name.port" ] && break; sleep 0.05; done
    eval "$name=$(cat "$TMP/$name.port")"
}
serve FAST1; serve FAST2
serve SLOW --delay-ms $SLOW_MS
serve LIMITED --status-429-every $RL_EVERY --retry-after $RETRY_AFTER

workload() { # name, app label, ip:port
    cat <<EOF
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: $1
  namespace: bench
  labels:
    app: $2
spec:
  workloadIPs:
  - ip: ${3%:*}
  ports:
  - name: http
    port: ${3##*:}
EOF
}
mkdir -p "$TMP/lb"
{
    cat <<EOF
apiVersion: v1
kind: Service
metadata:
  name: slow
  namespace: bench
spec:
  selector:
    app: slow
  ports:
  - name: http
    port: 8080
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: limited
  namespace: bench
  annotations:
    balancer.alpha.linkerd.io/penalize-failures: "true"
spec:
  selector:
    app: limited
  ports:
  - name: http
    port: 8080
    targetPort: http
EOF
    workload slow-fast1 slow "$FAST1"; workload slow-fast2 slow "$FAST2"; workload slow-slow slow "$SLOW"
    workload limited-fast1 limited "$FAST1"; workload limited-fast2 limited "$FAST2"; workload limited-limited limited "$LIMITED"
} >"$TMP/lb/services.yaml"
start_control LBC "$TMP/lb"

SLOW_HOST=slow.bench.svc.cluster.local:8080
LIMITED_HOST=limited.bench.svc.cluster.local:8080
start_knit RR KNIT_PROXY_OUTBOUND_ENDPOINTS="$SLOW_HOST=$FAST1|$FAST2|$SLOW,$LIMITED_HOST=$FAST1|$FAST2|$LIMITED"
start_knit P2C KNIT_PROXY_DESTINATION_SVC_ADDR=127.0.0.1:$LBC_DST KNIT_PROXY_POLICY_SVC_ADDR=127.0.0.1:$LBC_POL \
    KNIT_PROXY_POLICY_WORKLOAD='{"ns":"bench","pod":"loadgen"}'

balance() { # case, setup, proxy, host
    local json
    json=$(taskset -c 0 "$L" run --url "http://127.0.0.1:$3/" --host "$4" --rate $RATE --connections $CONNS --duration $DUR --warmup $WARM) \
        || { echo "bench: no request through $2 succeeded"; tail -n 20 "$TMP/$2.log"; exit 1; }
    echo "{\"kind\":\"balance\",\"case\":\"$1\",\"setup\":\"$2\",\"rate\":$RATE,\"conns\":$CONNS,\"slow_ms\":$SLOW_MS,\"rl_every\":$RL_EVERY,\"retry_after\":$RETRY_AFTER,\"result\":$json}" >>"$RAW"
    echo "  $1 $2: $json"
}
echo "== P2C against round robin, $RATE rps over $CONNS connections"
balance slow RR "$RR_OUT" "$SLOW_HOST"
balance slow P2C "$P2C_OUT" "$SLOW_HOST"
balance limited RR "$RR_OUT" "$LIMITED_HOST"
balance limited P2C "$P2C_OUT" "$LIMITED_HOST"

CMD="bench/discovery.sh${1:+ $1}"
python3 bench/report.py discovery "$RAW" --command "$CMD" --ticks "$(getconf CLK_TCK)" --results bench/RESULTS.md
echo "wrote the discovery section of bench/RESULTS.md"
