#!/usr/bin/env bash
# Knit's benchmark on the path a pod runs: network namespaces on a bridge, iptables interception
# (`knit-proxy init`), Services resolved by knit-control (local mode), policy and mTLS; HAProxy
# beside it in the same run.
#   bench/netns.sh [--quick]        (root: namespaces and iptables)
#   bench/netns.sh --profile        perf profiles of the proxies at maximum HTTP/1.1 load instead
#   bench/netns.sh --ab OLD-BINARY [WHAT-IT-IS]
#                                   the one-hop path only, this build beside another knit-proxy
#                                   binary (an older one, or this one built without tap:
#                                   `cargo build --release -p knit-proxy --no-default-features`),
#                                   and this build with a trace collector configured: what a
#                                   change costs, in its own section of RESULTS.md
# REPS=N: interleaved rounds (3; noisy machines need more to tell small differences apart).
# Writes its section of bench/RESULTS.md (between its <!-- netns --> markers) and raw JSON lines
# to bench/out/netns.jsonl; --profile writes bench/out/profile-<setup>.txt (perf report).
#
#   p 10.234.0.1  the plain client: load generator for direct and haproxy, HAProxy (127.0.0.1)
#   k 10.234.0.2  the meshed client: init, knit-proxy (UID 2102), load generator calling ClusterIPs
#   s 10.234.0.3  the unmeshed backend (HTTP :8080, Redis :6379) and knit-control
#   m 10.234.0.4  the meshed backend: init, knit-proxy, the same HTTP and Redis servers
# Setups: direct (p → s), haproxy (p → HAProxy → s), knit-1hop (k → k's proxy → s, the Service
# `plain`: an endpoint without identity), knit-mtls (k → k's proxy → mTLS → m's proxy → m, the
# Service `meshed`, authorized by an AuthorizationPolicy naming k's identity). Proxies are pinned
# to CPU 1 (both knit-mtls proxies share it), everything else to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0 PROFILE=0 AB= AB_WHAT=
[ "${1:-}" = "--quick" ] && QUICK=1
[ "${1:-}" = "--profile" ] && PROFILE=1
if [ "${1:-}" = "--ab" ]; then
    AB=$(realpath "${2:?bench/netns.sh --ab OLD-BINARY}")
    [ -x "$AB" ] || { echo "bench/netns.sh: $AB is not an executable knit-proxy"; exit 1; }
    AB_WHAT=${3:-}
fi
DUR=10s; WARM=2s; REPS=${REPS:-3}; IDLE_N=4000
((QUICK)) && { DUR=3s; WARM=1s; REPS=1; IDLE_N=1000; }
[ "$(id -u)" = 0 ] || { echo "bench/netns.sh: needs root (network namespaces, iptables)"; exit 1; }
for pair in haproxy:haproxy redis-server:redis-server redis-benchmark:redis-tools taskset:util-linux setpriv:util-linux iptables:iptables ip:iproute2 curl:curl; do
    command -v "${pair%%:*}" >/dev/null || { echo "bench/netns.sh: ${pair%%:*} is missing: apt-get install ${pair#*:}"; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench/netns.sh: needs 2 CPUs to pin proxies apart from the load"; exit 1; }
# The idle rows hold as many connections as the descriptor limit allows (this sandbox's hard limit
# is 20,000): knit-proxy's outbound listener may use a quarter of it (half the data listeners'
# share, two descriptors per proxied connection), HAProxy two per connection.
ulimit -n "$(ulimit -Hn)"
max_idle=$((($(ulimit -n) - 1000) / 4))
((IDLE_N > max_idle)) && IDLE_N=$max_idle

cargo build --release -p knit-proxy -p knit-loadgen -p knit-control -p knit
OUT=bench/out
mkdir -p "$OUT"
RAW="$OUT/netns.jsonl"
: >"$RAW"
source bench/lib.sh
# shellcheck source=tests/netns-lib.sh
. tests/netns-lib.sh
chmod 755 "$TMP"
L=$TMP/knit-loadgen P=$TMP/knit-proxy
install -m 755 target/release/knit-loadgen "$L"
install -m 755 target/release/knit-proxy "$P"
[ -n "$AB" ] && install -m 755 "$AB" "$TMP/knit-proxy-old"
CONTROL=target/release/knit-control KNIT=target/release/knit

NP=kb-p-$$ NK=kb-k-$$ NS=kb-s-$$ NM=kb-m-$$ NSW=kb-sw-$$
# The logs are kept in bench/out/netns-logs for a run that failed.
trap 'rm -rf "$OUT/netns-logs"; mkdir -p "$OUT/netns-logs"; cp "$TMP"/*.log "$OUT/netns-logs/" 2>/dev/null; cleanup; stop_namespaces "$NP" "$NK" "$NS" "$NM" "$NSW"' EXIT
# Foreground only: a backgrounded shell function runs in a subshell, so `$!` would name the
# subshell instead of the process; background launches call `ip netns exec` (which execs).
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the network -----------------------------------------------------------------------------
for ns in "$NP" "$NK" "$NS" "$NM" "$NSW"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NSW" link add br0 type bridge
ip -n "$NSW" link set br0 up
i=1
for ns in "$NP" "$NK" "$NS" "$NM"; do
    ip link add "kbh$i-$$" type veth peer name "kbs$i-$$"
    ip link set "kbh$i-$$" netns "$ns"
    ip link set "kbs$i-$$" netns "$NSW"
    ip -n "$NSW" link set "kbs$i-$$" master br0 up
    ip -n "$ns" addr add "10.234.0.$i/24" dev "kbh$i-$$"
    ip -n "$ns" link set "kbh$i-$$" up
    ip -n "$ns" route add 10.96.0.0/16 dev "kbh$i-$$"
    i=$((i + 1))
done
IP_P=10.234.0.1 IP_K=10.234.0.2 IP_S=10.234.0.3 IP_M=10.234.0.4
PLAIN=10.96.4.10 MESHED=10.96.4.20

# --- identity and manifests --------------------------------------------------------------------
ID=default.serviceaccount.identity.knit.cluster.local
"$KNIT" identity init --dir "$TMP/id" >/dev/null
for w in k m; do "$KNIT" identity token --dir "$TMP/id" --identity "$w.$ID" >"$TMP/$w.token"; done
chmod 644 "$TMP/id/trust-anchors.pem" "$TMP"/*.token
mkdir -p "$TMP/manifests"
cat >"$TMP/manifests/bench.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  clusterIP: $PLAIN
  selector: {app: plain}
  ports: [{name: http, port: 8080, targetPort: 8080}, {name: redis, port: 6379, targetPort: 6379}]
---
apiVersion: v1
kind: Service
metadata: {name: meshed, namespace: default}
spec:
  clusterIP: $MESHED
  selector: {app: meshed}
  ports: [{name: http, port: 8080, targetPort: 8080}, {name: redis, port: 6379, targetPort: 6379}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: s, namespace: default, labels: {app: plain}}
spec:
  workloadIPs: [{ip: $IP_S}]
  ports: [{name: http, port: 8080}, {name: redis, port: 6379}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: m, namespace: default, labels: {app: meshed}}
spec:
  meshTLS: {identity: m.$ID, serverName: m.$ID}
  workloadIPs: [{ip: $IP_M}]
  ports: [{name: http, port: 8080}, {name: redis, port: 6379}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: k, namespace: default, labels: {app: client}}
spec:
  meshTLS: {identity: k.$ID, serverName: k.$ID}
  workloadIPs: [{ip: $IP_K}]
  ports: [{name: http, port: 8080}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: meshed-http, namespace: default}
spec:
  externalWorkloadSelector: {matchLabels: {app: meshed}}
  port: 8080
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: client-only, namespace: default}
spec:
  identities: [k.$ID]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: meshed-from-client, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: meshed-http}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: client-only}]
YAML
chmod -R a+rX "$TMP/manifests"

# --- backends, control plane, HAProxy -------------------------------------------------------------
for ns in "$NS" "$NM"; do
    ip netns exec "$ns" taskset -c 0 "$L" serve --addr 0.0.0.0:8080 >/dev/null 2>&1 &
    PIDS+=($!)
    ip netns exec "$ns" taskset -c 0 redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no \
        --maxclients $((IDLE_N + 1000)) >"$TMP/redis-$ns.log" 2>&1 &
    PIDS+=($!)
done
ip netns exec "$NS" taskset -c 0 "$CONTROL" --identity-dir "$TMP/id" --identity-addr "$IP_S:18080" --admin-addr 127.0.0.1:19990 \
    --destination-addr "$IP_S:18086" --policy-addr "$IP_S:18090" --viz-addr 127.0.0.1:19994 --config-dir "$TMP/manifests" 2>"$TMP/control.log" &
PIDS+=($!)
for _ in $(seq 200); do
    in_ns "$NS" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8080/ 2>/dev/null && in_ns "$NS" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:19990/ready 2>/dev/null && break
    sleep 0.05
done

HA_H1=18001 HA_H2=18002 HA_TCP=18003
sed -e "s/@H1_PORT@/$HA_H1/" -e "s/@H2_PORT@/$HA_H2/" -e "s/@BACKEND@/$IP_S:8080/" -e "s/@TCP_PORT@/$HA_TCP/" -e "s/@REDIS@/$IP_S:6379/" \
    -e "s/maxconn 4000/maxconn $((IDLE_N + 1000))/" bench/haproxy.cfg.in >"$TMP/haproxy.cfg"
start_haproxy() {
    ip netns exec "$NP" taskset -c 1 haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
    PIDS+=($!)
    HA_PID=$!
    for _ in $(seq 200); do in_ns "$NP" curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$HA_H1/" 2>/dev/null && return 0; sleep 0.05; done
    echo "bench: HAProxy not ready"; tail -n 20 "$TMP/haproxy.log"; exit 1
}

# --- the proxies --------------------------------------------------------------------------------
in_ns "$NK" "$P" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$NM" "$P" init --proxy-uid 2102 2>>"$TMP/init.log"
start_proxy() { # namespace, workload name: sets <NAME>_PID; PROXY_BIN and PROXY_ENV (an array) may change it
    local ns=$1 w=$2
    ip netns exec "$ns" env -i PATH=/usr/bin:/bin "${PROXY_ENV[@]}" \
        KNIT_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=1s KNIT_PROXY_CORES=1 KNIT_PROXY_LOG=warn \
        KNIT_PROXY_IDENTITY_LOCAL_NAME="$w.$ID" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$TMP/id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$w.token" KNIT_PROXY_IDENTITY_SVC_ADDR="$IP_S:18080" \
        KNIT_PROXY_DESTINATION_SVC_ADDR="$IP_S:18086" KNIT_PROXY_POLICY_SVC_ADDR="$IP_S:18090" \
        "KNIT_PROXY_POLICY_WORKLOAD={\"ns\":\"default\",\"external_workload\":\"$w\"}" \
        taskset -c 1 setpriv --reuid=2102 --regid=2102 --clear-groups "${PROXY_BIN:-$P}" 2>"$TMP/proxy-$w.log" &
    PIDS+=($!)
    eval "${w^^}_PID=$!"
    for _ in $(seq 150); do
        in_ns "$ns" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:4191/ready 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: proxy $w not ready"; tail -n 20 "$TMP/proxy-$w.log"; exit 1
}
# One request of each kind, so that discovery, policy and the first connections are in place
# before anything is measured; fails the run if the path does not work.
warm() {
    in_ns "$NK" curl -fsS -o /dev/null --max-time 5 "http://$PLAIN:8080/" || { echo "bench: k → plain failed"; tail -n 20 "$TMP/proxy-k.log"; exit 1; }
    in_ns "$NK" curl -fsS -o /dev/null --max-time 5 "http://$MESHED:8080/" || { echo "bench: k → meshed failed"; tail -n 20 "$TMP/proxy-k.log" "$TMP/proxy-m.log"; exit 1; }
    [ "$(in_ns "$NK" redis-cli -h "$MESHED" -p 6379 ping)" = PONG ] || { echo "bench: redis k → meshed failed"; exit 1; }
}
PROXY_ENV=()
start_haproxy
start_proxy "$NM" m
start_proxy "$NK" k
warm
# The path is the one claimed: m's proxy served k's requests over mTLS as k.
[ "$(metric "$NM" request_total 'direction="inbound"' 'tls="true"' "client_id=\"k.$ID\"")" -ge 1 ] \
    || { echo "bench: m's proxy saw no mTLS request from k"; exit 1; }

rss_kb() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
# knit-proxy lets go of its start-up code 2 s after it is ready (KNIT_PROXY_RELEASE_STARTUP_CODE):
# memory is read after that.
sleep 3
IDLE_RSS="{\"knit-1hop\":$(rss_kb "$K_PID"),\"knit-mtls\":$(rss_kb "$K_PID $M_PID"),\"haproxy\":$(rss_kb "$HA_PID")}"

SETUPS=(direct haproxy knit-1hop knit-mtls)
declare -A NSOF=([direct]=$NP [haproxy]=$NP [knit-1hop]=$NK [knit-mtls]=$NK)
declare -A URL=([direct]="http://$IP_S:8080/" [haproxy]="http://127.0.0.1:$HA_H1/" [knit-1hop]="http://$PLAIN:8080/" [knit-mtls]="http://$MESHED:8080/")
declare -A URL_H2=([direct]="http://$IP_S:8080/" [haproxy]="http://127.0.0.1:$HA_H2/" [knit-1hop]="http://$PLAIN:8080/" [knit-mtls]="http://$MESHED:8080/")
declare -A REDIS_AT=([direct]="$IP_S 6379" [haproxy]="127.0.0.1 $HA_TCP" [knit-1hop]="$PLAIN 6379" [knit-mtls]="$MESHED 6379")
procs() { case $1 in direct) echo "" ;; haproxy) echo "$HA_PID" ;; knit-1hop) echo "$K_PID" ;; knit-mtls) echo "$K_PID $M_PID" ;; esac; }

measure() { # kind, setup, url, loadgen args...
    local kind=$1 setup=$2 url=$3; shift 3
    local procs before after json sampler peak
    procs=$(procs "$setup")
    before=$(cpu_ticks "$procs")
    # RSS sampled every 0.2 s while the load runs; the row keeps the highest.
    (peak=0; while sleep 0.2; do r=$(rss_kb "$procs"); ((r > peak)) && peak=$r; echo "$peak" >"$TMP/peak.new"; mv "$TMP/peak.new" "$TMP/peak"; done) &
    sampler=$!
    json=$(in_ns "${NSOF[$setup]}" taskset -c 0 "$L" run --url "$url" --host backend --duration "$DUR" --warmup "$WARM" "$@") \
        || { echo "bench: $kind $setup $*: nothing succeeded"; tail -n 20 "$TMP"/*.log; exit 1; }
    after=$(cpu_ticks "$procs")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    peak=$(cat "$TMP/peak" 2>/dev/null || true)
    peak=${peak:-0}
    rm -f "$TMP/peak"
    echo "{\"kind\":\"$kind\",\"setup\":\"$setup\",\"args\":\"$*\",\"cpu_ticks\":$((after - before)),\"cpu_window_ratio\":$(python3 -c "print(${DUR%s}/(${DUR%s}+${WARM%s}))"),\"rss_kb\":$peak,\"result\":$json}" >>"$RAW"
    echo "  $kind $setup $*: $json"
}
REDIS_N=200000
((QUICK)) && REDIS_N=50000
measure_redis() { # setup
    local setup=$1 procs before after csv json
    procs=$(procs "$setup")
    read -r host port <<<"${REDIS_AT[$setup]}"
    before=$(cpu_ticks "$procs")
    csv=$(in_ns "${NSOF[$setup]}" taskset -c 0 redis-benchmark -h "$host" -p "$port" -t set,get -n "$REDIS_N" -c 50 --csv 2>/dev/null)
    after=$(cpu_ticks "$procs")
    json=$(python3 -c 'import csv, json, sys
rows = {r["test"]: r for r in csv.DictReader(sys.stdin)}
print(json.dumps({f"{t.lower()}_{k}": float(rows[t][c]) for t in ("SET", "GET") for k, c in (("rps", "rps"), ("p50_ms", "p50_latency_ms"), ("p99_ms", "p99_latency_ms"))} | {"ops": 2 * int(sys.argv[1])}))' "$REDIS_N" <<<"$csv")
    echo "{\"kind\":\"redis\",\"setup\":\"$setup\",\"args\":\"-t set,get -c 50\",\"cpu_ticks\":$((after - before)),\"cpu_window_ratio\":1.0,\"rss_kb\":$(rss_kb "$procs"),\"result\":$json}" >>"$RAW"
    echo "  redis $setup: $json"
}

if [ -n "$AB" ]; then
    # The one-hop path with each binary in turn, k's proxy restarted for each, three rounds
    # interleaved; HAProxy's rows are the yardstick of each round. `trace`: this build with a
    # trace collector configured (nothing listens there) and untraced requests, what every
    # request pays once tracing is on.
    ab_variant() { # label: restarts k's proxy as that variant
        kill "$K_PID"; wait "$K_PID" 2>/dev/null || true
        case $1 in
            old) PROXY_BIN=$TMP/knit-proxy-old PROXY_ENV=() ;;
            new) PROXY_BIN=$P PROXY_ENV=() ;;
            trace) PROXY_BIN=$P PROXY_ENV=(KNIT_PROXY_TRACE_COLLECTOR_SVC_ADDR="$IP_S:4317") ;;
        esac
        start_proxy "$NK" k
        warm
    }
    for v in old new trace; do NSOF[knit-1hop@$v]=$NK URL[knit-1hop@$v]=${URL[knit-1hop]}; done
    procs() { case $1 in haproxy) echo "$HA_PID" ;; knit-1hop*) echo "$K_PID" ;; esac; }
    for rep in $(seq "$REPS"); do
        echo "== A/B round $rep of $REPS"
        measure max haproxy "${URL[haproxy]}" --max --connections 50
        measure latency haproxy "${URL[haproxy]}" --rate 1000 --connections 10
        for v in old new trace; do
            ab_variant "$v"
            measure max "knit-1hop@$v" "${URL[knit-1hop]}" --max --connections 50
            measure latency "knit-1hop@$v" "${URL[knit-1hop]}" --rate 1000 --connections 10
            measure latency "knit-1hop@$v" "${URL[knit-1hop]}" --rate 1000 --connections 100
        done
    done
    python3 bench/report.py ab "$RAW" --command "bench/netns.sh --ab OLD" --old "${AB_WHAT:-$(basename "$AB")}" --ticks "$(getconf CLK_TCK)" --results bench/RESULTS.md
    echo "wrote the A/B section of bench/RESULTS.md"
    exit 0
fi

if ((PROFILE)); then
    command -v perf >/dev/null || { echo "bench/netns.sh: perf is missing: apt-get install linux-perf"; exit 1; }
    for s in haproxy knit-1hop knit-mtls; do
        # perf samples the proxies for 10 s from the third second of a 15 s closed-loop run.
        ip netns exec "${NSOF[$s]}" taskset -c 0 "$L" run --url "${URL[$s]}" --host backend --duration 14s --warmup 1s --max --connections 50 >"$TMP/profile-load.json" &
        gen=$!
        sleep 3
        # DWARF call graphs (release builds keep no frame pointers): who calls libc's memcmp and malloc.
        perf record -q -F 499 --call-graph dwarf,16384 -o "$TMP/perf-$s.data" -p "$(procs "$s" | tr ' ' ,)" -- sleep 10 2>/dev/null
        wait "$gen"
        # (head closes the pipe early: not a failure)
        report() { perf report -q -i "$TMP/perf-$s.data" --no-children --stdio "$@" 2>/dev/null | sed -E 's/ {2,}/ /g; s/ +- +- *$//' | grep -v '^ *$' || true; }
        {
            echo "# $s at maximum HTTP/1.1 load (50 connections): $(cat "$TMP/profile-load.json")"
            echo "## by binary"
            report --sort dso -g none | head -n 8
            echo "## by symbol (the top 45)"
            report --sort dso,symbol -g none | head -n 45
            echo "## callers of the symbols above 2% (user space)"
            report --sort dso,symbol -g caller,0.5,callee,function,percent --percent-limit 2 --dsos knit-proxy,libc.so.6,haproxy | head -n 250
        } >"$OUT/profile-$s.txt"
        echo "wrote $OUT/profile-$s.txt"
    done
    exit 0
fi

for rep in $(seq "$REPS"); do
    echo "== round $rep of $REPS: latency at fixed rates (HTTP/1.1)"
    for rc in "1000 10" "1000 100" "5000 100"; do
        read -r rate conns <<<"$rc"
        for s in "${SETUPS[@]}"; do measure latency "$s" "${URL[$s]}" --rate "$rate" --connections "$conns"; done
    done
    echo "== round $rep of $REPS: HTTP/2 and gRPC at 1,000 rps, 10 connections"
    for s in "${SETUPS[@]}"; do measure h2 "$s" "${URL_H2[$s]}" --http2 --rate 1000 --connections 10; done
    for s in "${SETUPS[@]}"; do measure grpc "$s" "${URL_H2[$s]}" --grpc --rate 1000 --connections 10; done
    echo "== round $rep of $REPS: maximum throughput (HTTP/1.1, 50 connections; HTTP/2, 10 connections × 10 streams)"
    for s in "${SETUPS[@]}"; do measure max "$s" "${URL[$s]}" --max --connections 50; done
    for s in "${SETUPS[@]}"; do measure max-h2 "$s" "${URL_H2[$s]}" --http2 --max --connections 10; done
    echo "== round $rep of $REPS: opaque TCP (redis-benchmark)"
    for s in "${SETUPS[@]}"; do measure_redis "$s"; done
done

# --- idle connections: each proxy restarted first, so memory freed by earlier rows is not reused ---
idle() { # setup, protocol
    local setup=$1 proto=$2 ns addr before after held
    case $setup in
        haproxy) kill "$HA_PID"; wait "$HA_PID" 2>/dev/null || true; start_haproxy
                 ns=$NP; case $proto in h1) addr=127.0.0.1:$HA_H1 ;; h2) addr=127.0.0.1:$HA_H2 ;; redis) addr=127.0.0.1:$HA_TCP ;; esac ;;
        knit-1hop) kill "$K_PID"; wait "$K_PID" 2>/dev/null || true; start_proxy "$NK" k; warm
                   ns=$NK; case $proto in redis) addr=$PLAIN:6379 ;; *) addr=$PLAIN:8080 ;; esac ;;
    esac
    # (after knit-proxy has let go of its start-up code, 2 s after it is ready)
    sleep 3
    before=$(rss_kb "$(procs "$setup")")
    rm -f "$TMP/idle-ready"
    ip netns exec "$ns" taskset -c 0 "$L" idle --addr "$addr" --protocol "$proto" --connections "$IDLE_N" --ready-file "$TMP/idle-ready" --hold 20s >"$TMP/idle.out" 2>&1 &
    local gen=$!
    for _ in $(seq 600); do [ -s "$TMP/idle-ready" ] && break; sleep 0.1; done
    held=$(cat "$TMP/idle-ready" 2>/dev/null || echo 0)
    # knit-proxy parks an idle HTTP/1 connection after 1 s and trims the heap within 2 s more.
    sleep 5
    after=$(rss_kb "$(procs "$setup")")
    kill "$gen" 2>/dev/null; wait "$gen" 2>/dev/null || true
    echo "{\"kind\":\"idle\",\"setup\":\"$setup\",\"args\":\"$proto\",\"result\":{\"connections\":$IDLE_N,\"held\":$held,\"rss_kb_before\":$before,\"rss_kb_after\":$after}}" >>"$RAW"
    echo "  idle $setup $proto: $held held, RSS $before → $after kB"
}
echo "== idle connections ($IDLE_N per row, one exchange each, then quiet)"
for proto in h1 h2 redis; do for s in haproxy knit-1hop; do idle "$s" "$proto"; done; done

CMD="bench/netns.sh${1:+ $1}"
python3 bench/report.py netns "$RAW" --command "$CMD" --ticks "$(getconf CLK_TCK)" --idle-rss "$IDLE_RSS" --results bench/RESULTS.md
echo "wrote the netns section of bench/RESULTS.md"
