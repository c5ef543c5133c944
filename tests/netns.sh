#!/usr/bin/env bash
# Transparent interception across two network namespaces joined by a veth pair:
#   a (10.231.0.1) --veth-- b (10.231.0.2)
# `knit-proxy init` programs iptables in each namespace and a proxy runs in each as UID 2102.
# Applications call each other by IP with no proxy configuration; the proxies' metrics prove that
# every request crossed both. Needs root. Only the namespaces created here carry traffic.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/netns-lib.sh
. tests/netns-lib.sh

BIN=$(realpath "${KNIT_PROXY_BIN:-target/debug/knit-proxy}")
KNIT=$(realpath "${KNIT_BIN:-$(dirname "$BIN")/knit}")
CONTROL=$(realpath "${KNIT_CONTROL_BIN:-$(dirname "$BIN")/knit-control}")
for b in "$BIN" "$KNIT" "$CONTROL"; do
    [ -x "$b" ] || { echo "netns: $b is missing: run cargo build first"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "netns: needs root"; exit 1; }

A=knit-a-$$
B=knit-b-$$
TMP=$(mktemp -d)
chmod 755 "$TMP"
# The proxy runs as UID 2102, which may not read the checkout (e.g. under /root).
install -m 755 "$BIN" "$TMP/knit-proxy"
PIDS=()
passed=0
failed=0

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    stop_namespaces "$A" "$B"
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT


in_a() { ip netns exec "$A" "$@"; }
in_b() { ip netns exec "$B" "$@"; }

ip netns add "$A"
ip netns add "$B"
ip link add "kva$$" type veth peer name "kvb$$"
ip link set "kva$$" netns "$A"
ip link set "kvb$$" netns "$B"
in_a ip addr add 10.231.0.1/24 dev "kva$$"
in_b ip addr add 10.231.0.2/24 dev "kvb$$"
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
done
in_a ip link set "kva$$" up
in_b ip link set "kvb$$" up

nat_rules() { ip netns exec "$1" iptables-save -t nat; }

# --- interception rules -------------------------------------------------------------------
in_a "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_a "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_b "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
check "init is idempotent (one redirect and one jump per chain after two runs)" \
    test "$(nat_rules "$A" | grep -c 'knit/redirect-all-outgoing-to-proxy')" = 1 -a \
         "$(nat_rules "$A" | grep -c -- '-A OUTPUT -p tcp -j KNIT_PROXY_OUTPUT')" = 1 -a \
         "$(nat_rules "$A" | grep -c -- '-A PREROUTING -p tcp -j KNIT_PROXY_INBOUND')" = 1

# --- proxies and applications ---------------------------------------------------------------
start_proxy() { # namespace, log name, extra env...
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" env -i PATH=/usr/bin:/bin \
        KNIT_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 \
        KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 \
        KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=2s \
        "$@" \
        setpriv --reuid=2102 --regid=2102 --clear-groups "$TMP/knit-proxy" 2>"$TMP/$log.log" &
    PIDS+=($!)
    LAST_PID=$!
    for _ in $(seq 100); do
        ip netns exec "$ns" curl -fsS --max-time 1 http://127.0.0.1:4191/ready >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "proxy in $ns did not become ready"
    return 1
}


start_proxy "$A" proxy-a
start_proxy "$B" proxy-b

mkdir -p "$TMP/www"
echo hello-from-b >"$TMP/www/hello.txt"
(cd "$TMP/www" && exec ip netns exec "$B" python3 -m http.server 8080 --bind 0.0.0.0 >"$TMP/app.log" 2>&1) &
PIDS+=($!)
ip netns exec "$B" redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    in_b curl -fsS --max-time 1 http://127.0.0.1:8080/hello.txt >/dev/null 2>&1 && in_b redis-cli -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
done

# --- HTTP by IP, no proxy configuration in the client ----------------------------------------
out=$(in_a curl -fsS --max-time 5 http://10.231.0.2:8080/hello.txt 2>&1)
check "curl from a reaches the app in b by IP" test "$out" = hello-from-b
check "a's proxy saw the request outbound" \
    test "$(metric "$A" request_total 'direction="outbound"' 'target_addr="10.231.0.2:8080"')" -ge 1
check "b's proxy saw the request inbound" \
    test "$(metric "$B" request_total 'direction="inbound"' 'target_addr="10.231.0.2:8080"')" -ge 1

# --- opaque TCP (Redis: server speaks... after the client, on a default opaque port) ---------
out=$(in_a redis-cli -h 10.231.0.2 -p 6379 ping 2>&1)
check "redis-cli from a reaches redis in b" test "$out" = PONG
check "a's proxy forwarded the Redis connection opaquely" \
    test "$(metric "$A" tcp_open_total 'peer="src"' 'target_addr="10.231.0.2:6379"' 'no_tls_reason="not_provided_by_service_discovery"')" -ge 1
check "b's proxy forwarded it without detection (port_skipped)" \
    test "$(metric "$B" tcp_open_total 'peer="src"' 'target_addr="10.231.0.2:6379"' 'no_tls_reason="port_skipped"')" -ge 1

# --- the meshed hop: a's proxy dials b's proxy directly with a transport header -------------
kill "${PIDS[0]}" 2>/dev/null
wait "${PIDS[0]}" 2>/dev/null
start_proxy "$A" proxy-a-meshed KNIT_PROXY_OUTBOUND_ENDPOINTS=10.231.0.2:8080=10.231.0.2:8080@4143
before=$(metric "$B" request_total 'direction="inbound"')
out=$(in_a curl -fsS --max-time 5 http://10.231.0.2:8080/hello.txt 2>&1)
check "meshed: curl from a still reaches b" test "$out" = hello-from-b
check "meshed: b's proxy received a transport header" \
    test "$(metric "$B" tcp_detect_protocol_total 'protocol="transport_header"')" -ge 1
check "meshed: b's proxy served the request inbound" \
    test "$(metric "$B" request_total 'direction="inbound"')" -gt "$before"

# --- mesh mTLS between the namespaces, certified by knit-control running in b -----------------
ID_SUFFIX=default.serviceaccount.identity.knit.cluster.local
"$KNIT" identity init --dir "$TMP/id" >/dev/null
"$KNIT" identity token --dir "$TMP/id" --identity "a.$ID_SUFFIX" >"$TMP/a.token"
"$KNIT" identity token --dir "$TMP/id" --identity "b.$ID_SUFFIX" >"$TMP/b.token"
chmod 644 "$TMP/id/trust-anchors.pem" "$TMP/a.token" "$TMP/b.token"
# The control plane's port is not intercepted in b (re-running init rewrites the chains).
in_b "$TMP/knit-proxy" init --proxy-uid 2102 --skip-inbound-ports 18080 2>>"$TMP/init.log"
ip netns exec "$B" "$CONTROL" --identity-dir "$TMP/id" --identity-addr 10.231.0.2:18080 --admin-addr 127.0.0.1:19990 2>"$TMP/control.log" &
PIDS+=($!)
kill "$LAST_PID" 2>/dev/null; wait "$LAST_PID" 2>/dev/null
kill "${PIDS[1]}" 2>/dev/null; wait "${PIDS[1]}" 2>/dev/null
identity_env() { # name
    echo KNIT_PROXY_IDENTITY_LOCAL_NAME="$1.$ID_SUFFIX" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$TMP/id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$1.token" KNIT_PROXY_IDENTITY_SVC_ADDR=10.231.0.2:18080
}
start_proxy "$B" proxy-b-mtls $(identity_env b)
start_proxy "$A" proxy-a-mtls $(identity_env a) KNIT_PROXY_OUTBOUND_ENDPOINTS="10.231.0.2:8080=10.231.0.2:8080@4143#b.$ID_SUFFIX"
out=$(in_a curl -fsS --max-time 5 http://10.231.0.2:8080/hello.txt 2>&1)
check "mTLS: curl from a reaches b through both certified proxies" test "$out" = hello-from-b
check "mTLS: a's proxy sent it over TLS to b's identity" \
    test "$(metric "$A" request_total 'direction="outbound"' 'tls="true"' "server_id=\"b.$ID_SUFFIX\"")" -ge 1
check "mTLS: b's proxy saw a's identity" \
    test "$(metric "$B" request_total 'direction="inbound"' 'tls="true"' "client_id=\"a.$ID_SUFFIX\"")" -ge 1

# --- discovery and policy from knit-control: a Service ClusterIP, endpoints, authorization ---
# a calls the Service's ClusterIP (10.96.0.10:80, routed through the veth like a cluster's
# virtual IP); a's proxy learns the Service's policy and endpoints from knit-control and reaches
# b's app over mTLS; b's proxy admits only a's identity (a Server and an AuthorizationPolicy).
mkdir -p "$TMP/manifests"
cat >"$TMP/manifests/app.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: b, namespace: default, labels: {app: hello}}
spec:
  meshTLS: {identity: b.$ID_SUFFIX, serverName: b.$ID_SUFFIX}
  workloadIPs: [{ip: 10.231.0.2}]
  ports: [{name: http, port: 8080}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: hello-http, namespace: default}
spec:
  externalWorkloadSelector: {matchLabels: {app: hello}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: a-only, namespace: default}
spec:
  identities: [a.$ID_SUFFIX]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: hello-from-a, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: hello-http}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: a-only}]
YAML
chmod -R a+rX "$TMP/manifests"
in_b "$TMP/knit-proxy" init --proxy-uid 2102 --skip-inbound-ports 18080,18086,18090 2>>"$TMP/init.log"
kill "$LAST_PID" 2>/dev/null; wait "$LAST_PID" 2>/dev/null
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
wait 2>/dev/null
PIDS=()
(cd "$TMP/www" && exec ip netns exec "$B" python3 -m http.server 8080 --bind 0.0.0.0 >"$TMP/app2.log" 2>&1) &
PIDS+=($!)
ip netns exec "$B" "$CONTROL" --identity-dir "$TMP/id" --identity-addr 10.231.0.2:18080 --admin-addr 127.0.0.1:19990 \
    --destination-addr 10.231.0.2:18086 --policy-addr 10.231.0.2:18090 --config-dir "$TMP/manifests" 2>"$TMP/control2.log" &
PIDS+=($!)
ip -n "$A" route add 10.96.0.0/16 dev "kva$$"
discovery_env() { # name, workload
    # Quoted: unquoted, the braces and comma would be brace-expanded into two words.
    echo KNIT_PROXY_DESTINATION_SVC_ADDR=10.231.0.2:18086 KNIT_PROXY_POLICY_SVC_ADDR=10.231.0.2:18090 \
        "KNIT_PROXY_POLICY_WORKLOAD={\"ns\":\"default\",\"external_workload\":\"$2\"}"
}
start_proxy "$B" proxy-b-discovery $(identity_env b) $(discovery_env b b) KNIT_PROXY_INBOUND_PORTS=8080
start_proxy "$A" proxy-a-discovery $(identity_env a) $(discovery_env a a)
out=$(in_a curl -fsS --max-time 10 http://10.96.0.10/hello.txt 2>&1)
check "discovery: curl from a to the Service's ClusterIP reaches b" test "$out" = hello-from-b
check "discovery: a's proxy routed it by the Service's policy" \
    test "$(metric "$A" outbound_http_route_request_statuses_total 'parent_name="hello"' 'http_status="200"')" -ge 1
check "discovery: over mTLS to the endpoint knit-control named" \
    test "$(metric "$A" request_total 'direction="outbound"' 'target_addr="10.231.0.2:8080"' "server_id=\"b.$ID_SUFFIX\"")" -ge 1
check "policy: b's proxy authorized a's identity" \
    test "$(metric "$B" inbound_http_authz_allow_total 'srv_name="hello-http"' 'authz_name="hello-from-a"')" -ge 1
# The proxy's own UID is not intercepted: a plaintext request from a to b carries no identity.
code=$(in_a setpriv --reuid=2102 --regid=2102 --clear-groups curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://10.231.0.2:8080/hello.txt)
check "policy: a request without a's identity is refused with 403" test "$code" = 403

# --- graceful exit and rule removal ----------------------------------------------------------
kill -TERM "$LAST_PID" 2>/dev/null
wait "$LAST_PID"
check "a's proxy exits 0 on SIGTERM" test $? = 0
in_a "$TMP/knit-proxy" init --remove 2>>"$TMP/init.log"
in_b "$TMP/knit-proxy" init --remove 2>>"$TMP/init.log"
check "init --remove leaves no Knit chain" \
    test "$( (nat_rules "$A"; nat_rules "$B") | grep -c KNIT_PROXY)" = 0

echo "netns: $passed passed, $failed failed"
((failed == 0))
