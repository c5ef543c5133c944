#!/usr/bin/env bash
# Opaque TCP through Services, as a cluster runs it: three network namespaces on a bridge (a
# fourth holds the bridge), `knit-proxy init` in each, a proxy in each as UID 2102 with identity
# and discovery from knit-control in local mode, and applications that call ClusterIPs:
#   a (10.232.0.1): the clients (redis-cli, psql, pgbench, an SMTP-like client)
#   b (10.232.0.2), c (10.232.0.3): Redis, PostgreSQL and a server that greets first, each
#   meshed; knit-control runs in b.
# Every connection must be resolved by knit-control before its protocol is chosen: it crosses
# mTLS to a chosen endpoint's proxy (server-side tls="true" with a's client_id), is spread over
# both endpoints, and follows a TCPRoute's 50/50 split. Needs root; only the namespaces created
# here carry traffic.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/netns-lib.sh
. tests/netns-lib.sh

BIN=$(realpath "${KNIT_PROXY_BIN:-target/debug/knit-proxy}")
KNIT=$(realpath "${KNIT_BIN:-$(dirname "$BIN")/knit}")
CONTROL=$(realpath "${KNIT_CONTROL_BIN:-$(dirname "$BIN")/knit-control}")
for b in "$BIN" "$KNIT" "$CONTROL"; do
    [ -x "$b" ] || { echo "netns-mesh: $b is missing: run cargo build first"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "netns-mesh: needs root"; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PGBIN/initdb" ] && id postgres >/dev/null 2>&1 || { echo "netns-mesh: PostgreSQL's server is missing (apt-get install postgresql)"; exit 1; }

A=knit-ma-$$ B=knit-mb-$$ C=knit-mc-$$ SW=knit-msw-$$
TMP=$(mktemp -d)
chmod 755 "$TMP"
install -m 755 "$BIN" "$TMP/knit-proxy"
PIDS=()
passed=0
failed=0

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    stop_namespaces "$A" "$B" "$C" "$SW"
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT


in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the network: a bridge in SW, one veth to each host -------------------------------------
for ns in "$A" "$B" "$C" "$SW"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
i=1
for ns in "$A" "$B" "$C"; do
    ip link add "kh$i-$$" type veth peer name "ks$i-$$"
    ip link set "kh$i-$$" netns "$ns"
    ip link set "ks$i-$$" netns "$SW"
    ip -n "$SW" link set "ks$i-$$" master br0 up
    ip -n "$ns" addr add "10.232.0.$i/24" dev "kh$i-$$"
    ip -n "$ns" link set "kh$i-$$" up
    # ClusterIPs leave through the bridge, like a cluster's virtual IPs (iptables rewrites them first).
    ip -n "$ns" route add 10.96.0.0/16 dev "kh$i-$$"
    i=$((i + 1))
done
IP_A=10.232.0.1 IP_B=10.232.0.2 IP_C=10.232.0.3

# --- identity and manifests ------------------------------------------------------------------
ID_SUFFIX=default.serviceaccount.identity.knit.cluster.local
"$KNIT" identity init --dir "$TMP/id" >/dev/null
for w in a b c; do "$KNIT" identity token --dir "$TMP/id" --identity "$w.$ID_SUFFIX" >"$TMP/$w.token"; done
chmod 644 "$TMP/id/trust-anchors.pem" "$TMP"/*.token
mkdir -p "$TMP/manifests"
service() { # name, clusterIP, port, selector
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: default}\nspec:\n  clusterIP: %s\n  selector: {%s}\n  ports: [{port: %s, targetPort: %s}]\n' "$1" "$2" "$4" "$3" "$3"
}
workload() { # name, ip, labels
    printf -- '---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: %s, namespace: default, labels: {%s}}\nspec:\n  meshTLS: {identity: %s.%s, serverName: %s.%s}\n  workloadIPs: [{ip: %s}]\n  ports: [{port: 6379}, {port: 5432}, {port: 2525}]\n' \
        "$1" "$3" "$1" "$ID_SUFFIX" "$1" "$ID_SUFFIX" "$2"
}
{
    service redis 10.96.1.10 6379 "tier: data"
    service pg 10.96.1.11 5432 "tier: data"
    service smtp 10.96.1.12 2525 "tier: data"
    service redis-split 10.96.1.13 6379 "tier: data"
    service redis-b 10.96.1.14 6379 "host: b"
    service redis-c 10.96.1.15 6379 "host: c"
    workload b "$IP_B" "tier: data, host: b"
    workload c "$IP_C" "tier: data, host: c"
    cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: redis-half, namespace: default}
spec:
  parentRefs: [{kind: Service, name: redis-split, port: 6379}]
  rules: [{backendRefs: [{name: redis-b, port: 6379, weight: 50}, {name: redis-c, port: 6379, weight: 50}]}]
YAML
} >"$TMP/manifests/app.yaml"
chmod -R a+rX "$TMP/manifests"

# --- interception, control plane, proxies ----------------------------------------------------
in_ns "$A" "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$B" "$TMP/knit-proxy" init --proxy-uid 2102 --skip-inbound-ports 18080,18086,18090 2>>"$TMP/init.log"
in_ns "$C" "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$B" "$CONTROL" --identity-dir "$TMP/id" --identity-addr "$IP_B:18080" --admin-addr 127.0.0.1:19990 \
    --destination-addr "$IP_B:18086" --policy-addr "$IP_B:18090" --config-dir "$TMP/manifests" 2>"$TMP/control.log" &
PIDS+=($!)

start_proxy() { # namespace, name
    local ns=$1 w=$2
    in_ns "$ns" env -i PATH=/usr/bin:/bin \
        KNIT_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=2s \
        KNIT_PROXY_IDENTITY_LOCAL_NAME="$w.$ID_SUFFIX" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$TMP/id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$w.token" KNIT_PROXY_IDENTITY_SVC_ADDR="$IP_B:18080" \
        KNIT_PROXY_DESTINATION_SVC_ADDR="$IP_B:18086" KNIT_PROXY_POLICY_SVC_ADDR="$IP_B:18090" \
        "KNIT_PROXY_POLICY_WORKLOAD={\"ns\":\"default\",\"external_workload\":\"$w\"}" \
        setpriv --reuid=2102 --regid=2102 --clear-groups "$TMP/knit-proxy" 2>"$TMP/proxy-$w.log" &
    PIDS+=($!)
    for _ in $(seq 150); do
        in_ns "$ns" curl -fsS --max-time 1 http://127.0.0.1:4191/ready >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "proxy $w did not become ready"
    return 1
}
for pair in "$A:a" "$B:b" "$C:c"; do start_proxy "${pair%%:*}" "${pair#*:}"; done

# --- the applications in b and c ---------------------------------------------------------------
cat >"$TMP/greeter.py" <<'PY'
import socket, sys, threading
name = sys.argv[1]
srv = socket.create_server(("0.0.0.0", 2525))
def serve(c):
    with c:
        c.sendall(f"220 {name} ready\r\n".encode())
        f = c.makefile("rb")
        for line in f:
            c.sendall(f"250 {name} {line.decode().strip()}\r\n".encode())
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
for pair in "$B:b" "$C:c"; do
    ns=${pair%%:*} w=${pair#*:}
    in_ns "$ns" redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no >"$TMP/redis-$w.out" 2>&1 &
    PIDS+=($!)
    in_ns "$ns" python3 "$TMP/greeter.py" "$w" >"$TMP/greeter-$w.out" 2>&1 &
    PIDS+=($!)
    # PostgreSQL refuses to run as root; its package's system user runs it.
    mkdir -p "$TMP/pg-$w"
    chown postgres:postgres "$TMP/pg-$w"
    in_ns "$ns" setpriv --reuid=postgres --regid=postgres --clear-groups "$PGBIN/initdb" -D "$TMP/pg-$w" -U knit --auth=trust >"$TMP/initdb-$w.out" 2>&1
    # The proxy connects to the application from the pod's own address, as Linkerd's does.
    echo "host all all 0.0.0.0/0 trust" >>"$TMP/pg-$w/pg_hba.conf"
    in_ns "$ns" setpriv --reuid=postgres --regid=postgres --clear-groups "$PGBIN/postgres" -D "$TMP/pg-$w" -c listen_addresses='*' \
        -c unix_socket_directories="$TMP/pg-$w" -c port=5432 >"$TMP/postgres-$w.out" 2>&1 &
    PIDS+=($!)
done
for pair in "$B:b" "$C:c"; do
    ns=${pair%%:*} w=${pair#*:}
    for _ in $(seq 100); do
        in_ns "$ns" redis-cli -p 6379 ping >/dev/null 2>&1 && in_ns "$ns" pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break
        sleep 0.1
    done
    # pgbench's tables in each database, so that any endpoint can serve the benchmark.
    in_ns "$ns" pgbench -q -i -s 1 -h 127.0.0.1 -U knit postgres >"$TMP/pgbench-init-$w.out" 2>&1
done

client_id="client_id=\"a.$ID_SUFFIX\""
meshed_in() { # namespace, port: inbound connections from a over mTLS to the app's port
    metric "$1" tcp_open_total 'direction="inbound"' 'peer="src"' 'tls="true"' "$client_id" "target_port=\"$2\""
}

# --- Redis through its ClusterIP ---------------------------------------------------------------
ok=1
for i in $(seq 20); do
    [ "$(in_ns "$A" redis-cli -h 10.96.1.10 -p 6379 ping 2>&1)" = PONG ] || ok=0
done
check "redis-cli to the ClusterIP answers (20 connections)" test $ok = 1
check "Redis crossed mTLS to both endpoints with a's identity" \
    test "$(meshed_in "$B" 6379)" -ge 1 -a "$(meshed_in "$C" 6379)" -ge 1 -a $(($(meshed_in "$B" 6379) + $(meshed_in "$C" 6379))) -ge 20
check "a's proxy chose the endpoints over mTLS (no plaintext to the ClusterIP)" \
    test "$(metric "$A" tcp_open_total 'direction="outbound"' 'peer="dst"' 'tls="true"' 'target_port="6379"')" -ge 20 -a \
         "$(metric "$A" tcp_open_total 'direction="outbound"' 'no_tls_reason="not_provided_by_service_discovery"')" = 0
check "a's proxy counted the Service's opaque route" \
    test "$(metric "$A" outbound_tcp_route_open_total 'parent_name="redis"')" -ge 20

# --- PostgreSQL: psql and pgbench ---------------------------------------------------------------
ok=1
for i in $(seq 10); do
    out=$(in_ns "$A" psql -h 10.96.1.11 -U knit -d postgres -tAc 'select 41 + 1' 2>&1)
    [ "$out" = 42 ] || { ok=0; echo "psql: $out"; }
done
check "psql to the ClusterIP answers (10 connections)" test $ok = 1
out=$(in_ns "$A" pgbench -S -c 4 -t 50 -h 10.96.1.11 -U knit postgres 2>&1)
check "pgbench -S through the mesh: 200 transactions, none failed" \
    bash -c '[[ "$1" == *"number of transactions actually processed: 200/200"* ]] && [[ "$1" != *"number of failed transactions: "[1-9]* ]]' _ "$out"
check "PostgreSQL crossed mTLS to both endpoints" test "$(meshed_in "$B" 5432)" -ge 1 -a "$(meshed_in "$C" 5432)" -ge 1

# --- a server that speaks first, on a port that is detected ------------------------------------
greet='import socket, sys, time
t = time.monotonic(); s = socket.create_connection(("10.96.1.12", 2525), timeout=5)
g = s.makefile("rb").readline().decode().strip(); print(g.split()[1] if g.startswith("220 ") else "none", round(time.monotonic() - t, 3))'
ok=1 slow=0 seen=""
for i in $(seq 10); do
    read -r who took < <(in_ns "$A" python3 -c "$greet" 2>/dev/null)
    [ "$who" = b ] || [ "$who" = c ] || ok=0
    seen+=" $who"
    awk -v t="${took:-9}" 'BEGIN { exit !(t > 1.0) }' && slow=1
done
check "the greeting arrives through the ClusterIP, from both endpoints ($seen)" \
    bash -c '[ "$1" = 1 ] && [[ "$2" == *b* ]] && [[ "$2" == *c* ]]' _ "$ok" "$seen"
check "the greeting is not held back by detection (every one under 1 s)" test $slow = 0
check "the greeter crossed mTLS" test "$(meshed_in "$B" 2525)" -ge 1 -a "$(meshed_in "$C" 2525)" -ge 1

# --- a TCPRoute splitting 50/50 -------------------------------------------------------------------
before_b=$(meshed_in "$B" 6379) before_c=$(meshed_in "$C" 6379)
for i in $(seq 40); do in_ns "$A" redis-cli -h 10.96.1.13 -p 6379 ping >/dev/null 2>&1; done
got_b=$(($(meshed_in "$B" 6379) - before_b)) got_c=$(($(meshed_in "$C" 6379) - before_c))
# Binomial(40, 1/2): fewer than 8 on one side has a chance below 1 in 10^4.
check "the TCPRoute split 40 connections between its backends ($got_b to b, $got_c to c)" test "$got_b" -ge 8 -a "$got_c" -ge 8 -a $((got_b + got_c)) = 40
check "a's proxy counted the TCPRoute" test "$(metric "$A" outbound_tcp_route_open_total 'route_kind="TCPRoute"' 'route_name="redis-half"')" = 40

# --- a packet for another host, sent to b's link address ----------------------------------------
# a routes c's address through b, as any neighbour on b's link can: b's kernel must drop it (init
# redirects only what is addressed to b), never hand it to b's proxy to dial c on a's behalf.
as_proxy_in_a() { in_ns "$A" setpriv --reuid=2102 --regid=2102 --clear-groups "$@"; }
direct=$(as_proxy_in_a timeout 3 redis-cli -h "$IP_C" -p 6379 ping 2>/dev/null)
in_ns "$A" ip route add "$IP_C/32" via "$IP_B"
relayed=$(as_proxy_in_a timeout 3 redis-cli -h "$IP_C" -p 6379 ping 2>/dev/null)
in_ns "$A" ip route del "$IP_C/32" via "$IP_B"
check "c answers a directly ($direct)" test "$direct" = PONG
check "b does not relay a connection addressed to c (${relayed:-no answer})" test "$relayed" != PONG

# --- the admin port, from another host -----------------------------------------------------------
# As a scraper would reach it: as the proxy's UID, so a's own proxy does not intercept, and to
# 4191, which init leaves alone inbound.
remote() { as_proxy_in_a curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
check "b's /metrics answers a remote scraper" test "$(remote "http://$IP_B:4191/metrics")" = 200
check "b's /config_dump is for loopback only (403 from a)" test "$(remote "http://$IP_B:4191/config_dump")" = 403
check "b's /shutdown is not for a remote client" test "$(remote -X POST "http://$IP_B:4191/shutdown")" != 200
check "b's proxy is still ready" in_ns "$B" curl -fsS --max-time 1 -o /dev/null http://127.0.0.1:4191/ready

for ns in "$A" "$B" "$C"; do in_ns "$ns" "$TMP/knit-proxy" init --remove 2>>"$TMP/init.log"; done
echo "netns-mesh: $passed passed, $failed failed"
((failed == 0))
