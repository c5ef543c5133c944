#!/usr/bin/env bash
# Knit's benchmark: direct, HAProxy and knit-proxy side by side, in one run, on loopback.
#   bench/run.sh [--quick]
# Writes bench/RESULTS.md (committed) and raw JSON lines to bench/out/ (not committed).
# Proxies (HAProxy, knit-proxy) are pinned to CPU 1; the load generator and the backend to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
DUR=10s; WARM=2s; REPS=3
((QUICK)) && { DUR=3s; WARM=1s; REPS=1; }
command -v haproxy >/dev/null || { echo "bench: haproxy is missing: apt-get install haproxy"; exit 1; }
command -v taskset >/dev/null || { echo "bench: taskset is missing: apt-get install util-linux"; exit 1; }
command -v curl >/dev/null || { echo "bench: curl is missing: apt-get install curl"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs to pin proxies apart from the load"; exit 1; }

cargo build --release -p knit-proxy -p knit-loadgen -p knit-control -p knit
L=target/release/knit-loadgen
P=target/release/knit-proxy
OUT=bench/out
mkdir -p "$OUT"
RAW="$OUT/results.jsonl"
: >"$RAW"
source bench/lib.sh

# --- backend --------------------------------------------------------------------------------
taskset -c 0 "$L" serve --port-file "$TMP/backend" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$TMP/backend" ] && break; sleep 0.05; done
BACKEND=$(cat "$TMP/backend")

# --- Redis, for the opaque TCP rows ----------------------------------------------------------
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || { echo "bench: redis is missing: apt-get install redis-server redis-tools"; exit 1; }
REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
REDIS=127.0.0.1:$REDIS_PORT

# --- HAProxy --------------------------------------------------------------------------------
HA_H1=$(free_port); HA_H2=$(free_port); HA_TCP=$(free_port)
sed -e "s/@H1_PORT@/$HA_H1/" -e "s/@H2_PORT@/$HA_H2/" -e "s/@BACKEND@/$BACKEND/" -e "s/@TCP_PORT@/$HA_TCP/" -e "s/@REDIS@/$REDIS/" \
    bench/haproxy.cfg.in >"$TMP/haproxy.cfg"
taskset -c 1 haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
HA_PID=$!
PIDS+=($HA_PID)
wait_http "http://127.0.0.1:$HA_H1/" "$TMP/haproxy.log"

# --- knit-proxy: one hop, and the meshed pair -------------------------------------------------
# Redis reaches a proxy through a port forward (local mode's stand-in for an iptables redirect);
# 6379 is a default opaque port, so those connections are never detected.
K1_REDIS=$(free_port); TC_REDIS=$(free_port)
start_knit K1 KNIT_PROXY_OUTBOUND_ENDPOINTS="backend.bench:8080=$BACKEND,redis.bench:6379=$REDIS" KNIT_PROXY_OUTBOUND_PORT_FORWARDS="$K1_REDIS=redis.bench:6379"
start_knit KS
start_knit KC KNIT_PROXY_OUTBOUND_ENDPOINTS="backend.bench:8080=$BACKEND@$KS_IN"
K1_IDLE_RSS=$(awk '/VmRSS/ {print $2}' /proc/$K1_PID/status)

# --- the meshed pair with mTLS, certified by knit-control -------------------------------------
ID=default.serviceaccount.identity.knit.cluster.local
target/release/knit identity init --dir "$TMP/id" >/dev/null
target/release/knit identity token --dir "$TMP/id" --identity "client.$ID" >"$TMP/client.token"
target/release/knit identity token --dir "$TMP/id" --identity "server.$ID" >"$TMP/server.token"
CP_ID=$(free_port); CP_ADMIN=$(free_port)
# Every port its own (a busy 8084, 8086 or 8090 must not stop the run).
taskset -c 0 target/release/knit-control --identity-dir "$TMP/id" --identity-addr 127.0.0.1:$CP_ID --admin-addr 127.0.0.1:$CP_ADMIN \
    --destination-addr 127.0.0.1:$(free_port) --policy-addr 127.0.0.1:$(free_port) --viz-addr 127.0.0.1:$(free_port) 2>"$TMP/control.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$CP_ADMIN/ready" "$TMP/control.log"
mtls_env() { # name
    echo KNIT_PROXY_IDENTITY_LOCAL_NAME="$1.$ID" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$TMP/id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$1.token" KNIT_PROXY_IDENTITY_SVC_ADDR=127.0.0.1:$CP_ID
}
start_knit TS $(mtls_env server)
start_knit TC $(mtls_env client) KNIT_PROXY_OUTBOUND_ENDPOINTS="backend.bench:8080=$BACKEND@$TS_IN#server.$ID,redis.bench:6379=$REDIS@$TS_IN#server.$ID" \
    KNIT_PROXY_OUTBOUND_PORT_FORWARDS="$TC_REDIS=redis.bench:6379"

# setup name -> url, extra loadgen args, pids of its proxy processes
declare -A URL=(
    [direct]="http://$BACKEND/" [haproxy]="http://127.0.0.1:$HA_H1/"
    [knit-1hop]="http://127.0.0.1:$K1_OUT/" [knit-2hop]="http://127.0.0.1:$KC_OUT/" [knit-2hop-mtls]="http://127.0.0.1:$TC_OUT/")
declare -A URL_H2=(
    [direct]="http://$BACKEND/" [haproxy]="http://127.0.0.1:$HA_H2/"
    [knit-1hop]="http://127.0.0.1:$K1_OUT/" [knit-2hop]="http://127.0.0.1:$KC_OUT/" [knit-2hop-mtls]="http://127.0.0.1:$TC_OUT/")
declare -A PROCS=([direct]="" [haproxy]="$HA_PID" [knit-1hop]="$K1_PID" [knit-2hop]="$KC_PID $KS_PID" [knit-2hop-mtls]="$TC_PID $TS_PID")
SETUPS=(direct haproxy knit-1hop knit-2hop knit-2hop-mtls)

cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
rss_kb() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }
hwm_kb() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmHWM/ {print $2}' /proc/$p/status))); done; echo $t; }

measure() { # kind, setup, url, loadgen args...
    local kind=$1 setup=$2 url=$3; shift 3
    local procs=${PROCS[$setup]} before after json rss
    before=$(cpu_ticks "$procs")
    json=$(taskset -c 0 "$L" run --url "$url" --host backend.bench:8080 --duration "$DUR" --warmup "$WARM" "$@")
    after=$(cpu_ticks "$procs")
    rss=$(rss_kb "$procs")
    # CPU ticks cover warmup + window; the report scales the window's request count to match.
    echo "{\"kind\":\"$kind\",\"setup\":\"$setup\",\"args\":\"$*\",\"cpu_ticks\":$((after - before)),\"cpu_window_ratio\":$(python3 -c "print(${DUR%s}/(${DUR%s}+${WARM%s}))"),\"rss_kb\":${rss:-0},\"result\":$json}" >>"$RAW"
    echo "  $kind $setup $*: $json"
}

# Opaque TCP: redis-benchmark (SET and GET, 50 connections, closed loop) on CPU 0, as the load
# generator is; the proxies on CPU 1.
declare -A REDIS_AT=([direct]="$REDIS_PORT" [haproxy]="$HA_TCP" [knit-1hop]="$K1_REDIS" [knit-2hop-mtls]="$TC_REDIS")
REDIS_SETUPS=(direct haproxy knit-1hop knit-2hop-mtls)
REDIS_N=200000
((QUICK)) && REDIS_N=50000
measure_redis() { # setup
    local setup=$1 procs=${PROCS[$1]} before after csv
    before=$(cpu_ticks "$procs")
    csv=$(taskset -c 0 redis-benchmark -h 127.0.0.1 -p "${REDIS_AT[$setup]}" -t set,get -n "$REDIS_N" -c 50 --csv 2>/dev/null)
    after=$(cpu_ticks "$procs")
    local json
    json=$(python3 -c 'import csv, json, sys
rows = {r["test"]: r for r in csv.DictReader(sys.stdin)}
print(json.dumps({f"{t.lower()}_{k}": float(rows[t][c]) for t in ("SET", "GET") for k, c in (("rps", "rps"), ("p50_ms", "p50_latency_ms"), ("p99_ms", "p99_latency_ms"))} | {"ops": 2 * int(sys.argv[1])}))' "$REDIS_N" <<<"$csv")
    echo "{\"kind\":\"redis\",\"setup\":\"$setup\",\"args\":\"-t set,get -c 50\",\"cpu_ticks\":$((after - before)),\"cpu_window_ratio\":1.0,\"rss_kb\":$(rss_kb "$procs"),\"result\":$json}" >>"$RAW"
    echo "  redis $setup: $json"
}

# Latency rows repeat REPS times, setups interleaved, and the report takes the median: single runs
# of sub-millisecond tails on a shared 2-core machine vary by tens of percent.
for rep in $(seq "$REPS"); do
    echo "== latency at fixed rates (HTTP/1.1), round $rep of $REPS"
    for rate in 1000 5000; do
        for conns in 10 100; do
            for s in "${SETUPS[@]}"; do measure latency "$s" "${URL[$s]}" --rate $rate --connections $conns; done
        done
    done
    echo "== HTTP/2 and gRPC at 1,000 rps, 10 connections, round $rep of $REPS"
    for s in "${SETUPS[@]}"; do measure h2 "$s" "${URL_H2[$s]}" --http2 --rate 1000 --connections 10; done
    for s in "${SETUPS[@]}"; do measure grpc "$s" "${URL_H2[$s]}" --grpc --rate 1000 --connections 10; done
    echo "== opaque TCP: redis-benchmark, round $rep of $REPS"
    for s in "${REDIS_SETUPS[@]}"; do measure_redis "$s"; done
done
echo "== maximum throughput (HTTP/1.1, 50 connections, proxies on one core)"
for s in "${SETUPS[@]}"; do measure max "$s" "${URL[$s]}" --max --connections 50; done

PEAK="{\"knit-1hop\":$(hwm_kb "$K1_PID"),\"knit-2hop\":$(hwm_kb "$KC_PID $KS_PID"),\"knit-2hop-mtls\":$(hwm_kb "$TC_PID $TS_PID"),\"haproxy\":$(hwm_kb "$HA_PID")}"
CMD="bench/run.sh${1:+ $1}"
python3 bench/report.py "$RAW" --idle-rss-kb "$K1_IDLE_RSS" --peak-rss "$PEAK" --command "$CMD" --ticks "$(getconf CLK_TCK)" >"$TMP/results.md"
# The sections other scripts write (discovery, viz, images: each between its <!-- --> markers)
# follow this one and are kept.
python3 - "$TMP/results.md" bench/RESULTS.md <<'EOF'
import os, sys
new, results = sys.argv[1:]
old = open(results).read() if os.path.exists(results) else ""
i = old.find("\n<!-- ")
open(results, "w").write(open(new).read().rstrip("\n") + "\n" + (old[i:] if i >= 0 else ""))
EOF
echo "wrote bench/RESULTS.md"
# Discovery (knit-control under churn, P2C against round robin) adds its section; KNIT_BENCH_DISCOVERY=0 skips it.
[ "${KNIT_BENCH_DISCOVERY:-1}" = 0 ] || bench/discovery.sh ${1:+"$1"}
