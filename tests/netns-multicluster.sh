#!/usr/bin/env bash
# Two clusters on this machine, linked through a gateway (LINKERD-WIRE.md §12.1). Each cluster is
# network namespaces behind its own bridge; a router namespace joins them:
#   east 10.233.1.0/24: ec (.1: east's knit-control, and its gateway proxy), eb (.2: books, an
#   HTTP server, and Redis, meshed with `knit-proxy init`)
#   west 10.233.2.0/24: wc (.1: west's knit-control), wa (.2: the client, meshed)
# One trust anchor, an issuer per cluster. East exports books and redis; west's Link (written by
# `knit multicluster link`) mirrors them as books-east and redis-east with ClusterIPs; the client
# calls those addresses and the requests cross west's proxy -> east's gateway -> east's books
# over mTLS at both hops; catalog, exported for remote discovery (flat mode), is reached at east's
# pod directly with west's identity. Then the gateway dies (the probe takes the mirrors' endpoints away and
# requests fail fast), comes back (traffic resumes, nothing restarted), and an unexported Service
# leaves the mirror. Needs root; only the namespaces created here carry traffic.
# The control planes serve TLS (as in a cluster: their proxies name their identity).
#
# KNIT_TEST_LINKERD_PROXY=/path/to/linkerd2-proxy runs Linkerd's proxy as west's client (web)
# instead of Knit's, or with KNIT_TEST_LINKERD_AS=gateway as east's gateway, or both
# (web,gateway): the same checks, across Knit's and Linkerd's proxies. Nothing here builds it.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/netns-lib.sh
. tests/netns-lib.sh

BIN=$(realpath "${KNIT_PROXY_BIN:-target/debug/knit-proxy}")
KNIT=$(realpath "${KNIT_BIN:-$(dirname "$BIN")/knit}")
CONTROL=$(realpath "${KNIT_CONTROL_BIN:-$(dirname "$BIN")/knit-control}")
for b in "$BIN" "$KNIT" "$CONTROL"; do
    [ -x "$b" ] || { echo "netns-multicluster: $b is missing: run cargo build first"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "netns-multicluster: needs root"; exit 1; }

LINKERD_PROXY=${KNIT_TEST_LINKERD_PROXY:-}
# Which of Knit's proxies Linkerd's replaces: web (the client), gateway (east's), or web,gateway.
LINKERD_AS=
[ -n "$LINKERD_PROXY" ] && LINKERD_AS=${KNIT_TEST_LINKERD_AS:-web}
[ -z "$LINKERD_PROXY" ] || [ -x "$LINKERD_PROXY" ] || { echo "netns-multicluster: KNIT_TEST_LINKERD_PROXY=$LINKERD_PROXY is not an executable"; exit 1; }
# The identity west's knit-control proves on its gRPC ports.
CPID=knit-control.knit.serviceaccount.identity.knit.cluster.local
R=knit-xr-$$ EC=knit-xec-$$ EB=knit-xeb-$$ WC=knit-xwc-$$ WA=knit-xwa-$$ WB=knit-xwb-$$
TMP=$(mktemp -d)
chmod 755 "$TMP"
install -m 755 "$BIN" "$TMP/knit-proxy"
PIDS=()
GATEWAY_PID=
passed=0
failed=0

cleanup() {
    for pid in "${PIDS[@]}" $GATEWAY_PID; do kill "$pid" 2>/dev/null; done
    stop_namespaces "$EC" "$EB" "$WC" "$WA" "$WB" "$R"
    wait 2>/dev/null
    # KNIT_TEST_KEEP=1 keeps the logs and manifests, for a failure's post-mortem.
    if [ -n "${KNIT_TEST_KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the network: two bridges in the router, one host per veth ----------------------------------
for ns in "$R" "$EC" "$EB" "$WC" "$WA" "$WB"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
in_ns "$R" sysctl -qw net.ipv4.ip_forward=1
for side in e:1 w:2; do
    ip -n "$R" link add "br-${side%%:*}" type bridge
    ip -n "$R" addr add "10.233.${side#*:}.254/24" dev "br-${side%%:*}"
    ip -n "$R" link set "br-${side%%:*}" up
done
i=0
for spec in "$EC:e:1:1" "$EB:e:1:2" "$WC:w:2:1" "$WA:w:2:2" "$WB:w:2:3"; do
    IFS=: read -r ns br net host <<<"$spec"
    i=$((i + 1))
    ip link add "kx$i-$$" type veth peer name "kr$i-$$"
    ip link set "kx$i-$$" netns "$ns"
    ip link set "kr$i-$$" netns "$R"
    ip -n "$R" link set "kr$i-$$" master "br-$br" up
    ip -n "$ns" addr add "10.233.$net.$host/24" dev "kx$i-$$"
    ip -n "$ns" link set "kx$i-$$" up
    ip -n "$ns" route add default via "10.233.$net.254"
done
IP_EC=10.233.1.1 IP_EB=10.233.1.2 IP_WC=10.233.2.1 IP_WA=10.233.2.2 IP_WB=10.233.2.3

# --- identity: one anchor, an issuer per cluster ------------------------------------------------
SUFFIX=shop.serviceaccount.identity.knit.cluster.local
"$KNIT" identity init --dir "$TMP/east-id" >/dev/null
cp -r "$TMP/east-id" "$TMP/west-id"
"$KNIT" identity issuer --dir "$TMP/west-id" --name identity.west.cluster.local >/dev/null
for w in books gateway; do "$KNIT" identity token --dir "$TMP/east-id" --identity "$w.$SUFFIX" >"$TMP/$w.token"; done
for w in web books-w; do "$KNIT" identity token --dir "$TMP/west-id" --identity "$w.$SUFFIX" >"$TMP/$w.token"; done
chmod 644 "$TMP"/*-id/trust-anchors.pem "$TMP"/*.token
check "the clusters' issuers differ" bash -c '! cmp -s "$1/east-id/issuer/crt.pem" "$1/west-id/issuer/crt.pem"' _ "$TMP"

# --- east: books and redis exported, a gateway with a policy of its own -------------------------
mkdir -p "$TMP/east" "$TMP/west"
export_svc() { # name, clusterIP, port, labels
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: shop, labels: {%s}}\nspec:\n  clusterIP: %s\n  selector: {app: books}\n  ports: [{port: %s, targetPort: %s}]\n' "$1" "$4" "$2" "$3" "$3"
}
east_manifests() { # redis exported: true|false; books a federated member: member|no
    {
        export_svc books 10.96.1.10 8080 "mirror.linkerd.io/exported: \"true\", mirror.linkerd.io/federated: ${2:-member}"
        export_svc redis 10.96.1.11 6379 "mirror.linkerd.io/exported: \"$1\""
        export_svc catalog 10.96.1.12 8080 "mirror.linkerd.io/exported: remote-discovery"
        cat <<YAML
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: books, namespace: shop, labels: {app: books}}
spec:
  meshTLS: {identity: books.$SUFFIX, serverName: books.$SUFFIX}
  workloadIPs: [{ip: $IP_EB}]
  ports: [{port: 8080}, {port: 6379}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: gateway, namespace: shop, labels: {app: gateway}}
spec:
  meshTLS: {identity: gateway.$SUFFIX, serverName: gateway.$SUFFIX}
  workloadIPs: [{ip: $IP_EC}]
  ports: [{name: mc-gateway, port: 4143}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: gateway, namespace: shop}
spec: {externalWorkloadSelector: {matchLabels: {app: gateway}}, port: 4143}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: any-mesh-identity, namespace: shop}
spec: {identities: ["*"]}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gateway, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: gateway}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: any-mesh-identity}]
YAML
    } >"$TMP/east/.app.yaml"
    mv "$TMP/east/.app.yaml" "$TMP/east/app.yaml"
}
east_manifests true

in_ns "$EB" "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$WA" "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$WB" "$TMP/knit-proxy" init --proxy-uid 2102 2>>"$TMP/init.log"
# West's own books: a member of books-federated with east's.
{
    export_svc books 10.96.2.10 8080 "mirror.linkerd.io/federated: member"
    cat <<YAML
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: books-w, namespace: shop, labels: {app: books}}
spec:
  meshTLS: {identity: books-w.$SUFFIX, serverName: books-w.$SUFFIX}
  workloadIPs: [{ip: $IP_WB}]
  ports: [{port: 8080}]
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web, namespace: shop, labels: {app: web}, annotations: {knit.dev/proxy-admin-port: "4191"}}
spec:
  meshTLS: {identity: web.$SUFFIX, serverName: web.$SUFFIX}
  workloadIPs: [{ip: $IP_WA}]
YAML
} >"$TMP/west/app.yaml"
in_ns "$EC" "$CONTROL" --identity-dir "$TMP/east-id" --identity-addr "$IP_EC:18080" --admin-addr 127.0.0.1:19990 \
    --destination-addr "$IP_EC:18086" --policy-addr "$IP_EC:18090" --multicluster-addr "$IP_EC:18095" --serve-tls-identity "$CPID" \
    --config-dir "$TMP/east" 2>"$TMP/control-east.log" &
PIDS+=($!)
in_ns "$WC" "$CONTROL" --identity-dir "$TMP/west-id" --identity-addr "$IP_WC:18080" --admin-addr 127.0.0.1:19990 \
    --destination-addr "$IP_WC:18086" --policy-addr "$IP_WC:18090" --federated-cluster-ips 10.96.201.0/24 --viz-scrape-interval 1s \
    --serve-tls-identity "$CPID" \
    --config-dir "$TMP/west" 2>"$TMP/control-west.log" &
PIDS+=($!)

proxy() { # namespace, workload, control-plane IP, trust anchors dir, extra env...; sets LAST_PID
    local ns=$1 w=$2 cp=$3 id=$4
    shift 4
    # The control planes prove their identity.
    set -- KNIT_PROXY_IDENTITY_SVC_NAME="$CPID" KNIT_PROXY_DESTINATION_SVC_NAME="$CPID" KNIT_PROXY_POLICY_SVC_NAME="$CPID" "$@"
    # `ip netns exec` itself, not the in_ns function: $! is then the proxy's own pid (each
    # command execs the next), which the gateway's kill below needs.
    ip netns exec "$ns" env -i PATH=/usr/bin:/bin \
        KNIT_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=1s \
        KNIT_PROXY_IDENTITY_LOCAL_NAME="$w.$SUFFIX" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$w.token" KNIT_PROXY_IDENTITY_SVC_ADDR="$cp:18080" \
        KNIT_PROXY_DESTINATION_SVC_ADDR="$cp:18086" KNIT_PROXY_POLICY_SVC_ADDR="$cp:18090" \
        "KNIT_PROXY_POLICY_WORKLOAD={\"ns\":\"shop\",\"external_workload\":\"$w\"}" "$@" \
        setpriv --reuid=2102 --regid=2102 --clear-groups "$TMP/knit-proxy" 2>>"$TMP/proxy-$w.log" &
    LAST_PID=$!
}
linkerd_proxy() { # namespace, workload, control-plane IP, trust anchors dir, extra env...; sets LAST_PID
    local ns=$1 w=$2 cp=$3 id=$4
    local dir=$TMP/l5d-$w
    shift 4
    # Linkerd's proxy never makes its key: its identity directory holds a PKCS#8 key and a CSR.
    mkdir -p "$dir"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/key.pem" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$dir/key.pem" -outform DER -out "$dir/key.p8"
    openssl req -new -key "$dir/key.pem" -subj "/CN=$w.$SUFFIX" -addext "subjectAltName=DNS:$w.$SUFFIX" -outform DER -out "$dir/csr.der"
    chown -R 2102:2102 "$dir"
    ip netns exec "$ns" env -i PATH=/usr/bin:/bin \
        LINKERD2_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        LINKERD2_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 LINKERD2_PROXY_CONTROL_LISTEN_ADDR=0.0.0.0:4190 LINKERD2_PROXY_LOG="${KNIT_TEST_LINKERD_LOG:-warn,linkerd=info}" \
        LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD=1s LINKERD2_PROXY_IDENTITY_DIR="$dir" \
        LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS="$(cat "$id/trust-anchors.pem")" LINKERD2_PROXY_IDENTITY_TOKEN_FILE="$TMP/$w.token" \
        LINKERD2_PROXY_IDENTITY_LOCAL_NAME="$w.$SUFFIX" \
        LINKERD2_PROXY_IDENTITY_SVC_ADDR="$cp:18080" LINKERD2_PROXY_IDENTITY_SVC_NAME="$CPID" \
        LINKERD2_PROXY_DESTINATION_SVC_ADDR="$cp:18086" LINKERD2_PROXY_DESTINATION_SVC_NAME="$CPID" \
        LINKERD2_PROXY_POLICY_SVC_ADDR="$cp:18090" LINKERD2_PROXY_POLICY_SVC_NAME="$CPID" \
        "LINKERD2_PROXY_POLICY_WORKLOAD={\"ns\":\"shop\",\"external_workload\":\"$w\"}" \
        LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS=10.0.0.0/8 "$@" \
        setpriv --reuid=2102 --regid=2102 --clear-groups "$LINKERD_PROXY" >>"$TMP/proxy-$w.log" 2>&1 &
    LAST_PID=$!
}
ready() { # namespace, what
    for _ in $(seq 150); do
        in_ns "$1" curl -fsS --max-time 1 http://127.0.0.1:4191/ready >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$2 did not become ready"
    return 1
}
# Linkerd's inbound reads every connection's original destination, which only iptables' REDIRECT
# gives: its gateway gets `knit-proxy init`, sparing east's control plane ports (and the probe's).
[[ $LINKERD_AS == *gateway* ]] && in_ns "$EC" "$TMP/knit-proxy" init --proxy-uid 2102 --skip-inbound-ports 4191,18080-18095 2>>"$TMP/init.log"
start_gateway() {
    if [[ $LINKERD_AS == *gateway* ]]; then
        linkerd_proxy "$EC" gateway "$IP_EC" "$TMP/east-id" LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES=svc.cluster.local.
    else
        proxy "$EC" gateway "$IP_EC" "$TMP/east-id" KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES=svc.cluster.local.
    fi
    GATEWAY_PID=$LAST_PID
    ready "$EC" gateway
}
proxy "$EB" books "$IP_EC" "$TMP/east-id" KNIT_PROXY_INBOUND_PORTS=8080,6379
PIDS+=("$LAST_PID")
if [ -n "$LINKERD_PROXY" ]; then
    install -m 755 "$LINKERD_PROXY" "$TMP/linkerd2-proxy"
    LINKERD_PROXY=$TMP/linkerd2-proxy
fi
if [[ $LINKERD_AS == *web* ]]; then
    linkerd_proxy "$WA" web "$IP_WC" "$TMP/west-id"
else
    proxy "$WA" web "$IP_WC" "$TMP/west-id"
fi
PIDS+=("$LAST_PID")
proxy "$WB" books-w "$IP_WC" "$TMP/west-id" KNIT_PROXY_INBOUND_PORTS=8080
PIDS+=("$LAST_PID")
start_gateway
ready "$EB" books
ready "$WA" web
ready "$WB" books-w

# --- east's applications ------------------------------------------------------------------------
cat >"$TMP/books.py" <<'PY'
import http.server, sys
NAME = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s | %s\n" % (NAME, self.headers.get("l5d-client-id", "-"), self.headers.get("forwarded", "-"))).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
PY
in_ns "$EB" python3 "$TMP/books.py" books >"$TMP/books.out" 2>&1 &
PIDS+=($!)
in_ns "$WB" python3 "$TMP/books.py" books-w >"$TMP/books-w.out" 2>&1 &
PIDS+=($!)
in_ns "$EB" redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no >"$TMP/redis.out" 2>&1 &
PIDS+=($!)

# --- west links to east with the CLI ------------------------------------------------------------
"$KNIT" multicluster link --cluster-name east --gateway-address "$IP_EC" --gateway-identity "gateway.$SUFFIX" \
    --remote-control-plane "$IP_EC:18095" --mirror-cluster-ips 10.96.200.0/24 --probe-period 1s --namespace shop \
    >"$TMP/west/link.yaml" 2>>"$TMP/cli.log"
check "knit multicluster link wrote a Link" grep -q "kind: Link" "$TMP/west/link.yaml"

status() { in_ns "$WC" curl -fsS --max-time 2 http://127.0.0.1:19990/multicluster; }
mirror_field() { # mirror name, field -> value
    status | python3 -c 'import json, sys
name, field = sys.argv[1:]
status = json.load(sys.stdin)
for f in status["federated"]:
    if f["name"] == name: print(f[field]); sys.exit()
for link in status["links"].values():
    for m in link["mirrors"]:
        if m["name"] == name: print(m[field]); sys.exit()
print("-")' "$1" "$2"
}
gateway_alive() { status | python3 -c 'import json, sys; print(all(l["gateway"]["alive"] for l in json.load(sys.stdin)["links"].values()))'; }
wait_for() { # seconds, command...: true once the command succeeds
    local deadline=$((SECONDS + $1))
    shift
    while ((SECONDS < deadline)); do "$@" && return 0; sleep 0.2; done
    "$@"
}
wait_for 15 test "$(mirror_field books-east ready)" = True
check "west mirrors east's books, redis and catalog, with endpoints" \
    test "$(mirror_field books-east ready)" = True -a "$(mirror_field redis-east ready)" = True -a "$(mirror_field catalog-east ready)" = True
BOOKS=$(mirror_field books-east cluster_ip) REDIS=$(mirror_field redis-east cluster_ip)
check "the mirrors have ClusterIPs from the Link's range ($BOOKS, $REDIS)" bash -c '[[ $1 == 10.96.200.* && $2 == 10.96.200.* && $1 != "$2" ]]' _ "$BOOKS" "$REDIS"

# --- across: HTTP and Redis by the mirrors' ClusterIPs ------------------------------------------
ok=1 body=
for i in $(seq 10); do
    body=$(in_ns "$WA" curl -sS --max-time 5 "http://$BOOKS:8080/books/$i" 2>&1)
    [[ $body == "books gateway.$SUFFIX |"* ]] || { ok=0; echo "curl: $body"; }
done
check "curl to books-east's ClusterIP is answered by east's books, which sees the gateway's identity (10 requests)" test $ok = 1
# Knit's gateway quotes the values RFC 7239 needs quoted; Linkerd's writes them bare.
forwarded=${body#*| }
check "the request carries the gateway's forwarded element (by= the gateway, for= the client: $forwarded)" \
    bash -c '[[ ${1//\"/} == *"by=gateway.$2;for=web.$2;host=books.shop.svc.cluster.local:8080;proto=https"* ]]' _ "$forwarded" "$SUFFIX"
ok=1
for i in $(seq 10); do [ "$(in_ns "$WA" redis-cli -h "$REDIS" -p 6379 ping 2>&1)" = PONG ] || ok=0; done
check "redis-cli to redis-east's ClusterIP answers PONG (10 connections)" test $ok = 1
check "west's proxy dialled the gateway over mTLS, as the gateway's identity" \
    test "$(metric "$WA" tcp_open_total 'direction="outbound"' 'peer="dst"' 'tls="true"' "server_id=\"gateway.$SUFFIX\"")" -ge 11
check "the gateway took them over mTLS from west's client identity" \
    test "$(metric "$EC" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"web.$SUFFIX\"")" -ge 11
check "east's books saw the gateway's identity over mTLS (HTTP and Redis)" \
    test "$(metric "$EB" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"gateway.$SUFFIX\"" 'target_port="8080"')" -ge 1 -a \
         "$(metric "$EB" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"gateway.$SUFFIX\"" 'target_port="6379"')" -ge 10
check "the gateway's metrics show the requests it forwarded to books" \
    test "$(metric "$EC" response_total 'direction="outbound"' 'dst_service="books"' 'status_code="200"')" -ge 10
check "west's metrics name the cluster" test "$(metric "$WA" response_total 'direction="outbound"' 'dst_target_cluster="east"')" -ge 10
out=$(in_ns "$WC" "$KNIT" multicluster gateways --admin-addr 127.0.0.1:19990 2>&1)
check "knit multicluster gateways: east alive, 3 mirrored Services ($(echo "$out" | tail -n 1))" bash -c '[[ $(echo "$1" | tail -n 1) =~ ^east\ +True\ +[0-9]+ms\ +3$ ]]' _ "$out"
check "knit multicluster check passes" in_ns "$WC" "$KNIT" multicluster check --admin-addr 127.0.0.1:19990

# --- flat mode: catalog is exported for remote discovery -----------------------------------------
CATALOG=$(mirror_field catalog-east cluster_ip)
body=$(in_ns "$WA" curl -sS --max-time 5 "http://$CATALOG:8080/" 2>&1)
check "curl to catalog-east ($CATALOG) reaches east's pod directly, which sees west's client identity ($body)" \
    bash -c '[[ $1 == "books web.$2 | -"* ]]' _ "$body" "$SUFFIX"
check "west's proxy dialled east's pod (not the gateway) over mTLS as books' identity" \
    test "$(metric "$WA" tcp_open_total 'direction="outbound"' 'peer="dst"' 'tls="true"' "server_id=\"books.$SUFFIX\"" "target_ip=\"$IP_EB\"")" -ge 1

# --- federated: books-federated has a member in each cluster --------------------------------------
wait_for 10 test "$(mirror_field books-federated clusters)" = "['east']"
FED=$(mirror_field books-federated cluster_ip)
check "books-federated has members here and in east ($FED, local $(mirror_field books-federated local), $(mirror_field books-federated clusters))" \
    test "$(mirror_field books-federated local)" = True -a "$(mirror_field books-federated clusters)" = "['east']"
fed_round() { # requests -> "east west failed" counts
    local e=0 w=0 f=0 body
    for _ in $(seq "$1"); do
        body=$(in_ns "$WA" curl -sS --max-time 5 "http://$FED:8080/" 2>/dev/null)
        case $body in "books-w "*) w=$((w + 1)) ;; "books "*) e=$((e + 1)) ;; *) f=$((f + 1)) ;; esac
    done
    echo "$e $w $f"
}
read -r e w f < <(fed_round 40)
check "books-federated spreads over both clusters ($e east, $w west, $f failed)" test "$e" -ge 1 -a "$w" -ge 1 -a "$f" = 0
# East's member leaves mid-traffic: no request fails, and the rest all go to west.
fed_round 60 >"$TMP/fed-during.out" &
during=$!
sleep 1
east_manifests true no
wait "$during"
read -r e w f <"$TMP/fed-during.out"
check "east's member leaving mid-traffic fails no request ($e east, $w west, $f failed)" test "$f" = 0
wait_for 10 test "$(mirror_field books-federated clusters)" = "[]"
read -r e w f < <(fed_round 20)
check "without east's member, books-federated is all west ($e east, $w west, $f failed)" test "$e" = 0 -a "$w" = 20
east_manifests true member
wait_for 10 test "$(mirror_field books-federated clusters)" = "['east']"
# P2C prefers the member it knows: east's returning member starts at the default RTT estimate,
# which decays (10 s time constant) until it is chosen again. Rounds of 10 until it is.
back=$SECONDS e=0
while ((SECONDS - back < 60)); do
    read -r e w f < <(fed_round 10)
    ((e > 0)) && break
    sleep 0.5
done
check "east's member back: shared again, after $((SECONDS - back)) s ($e east, $w west, $f failed in the last round)" test "$e" -ge 1 -a "$f" = 0

# --- viz: west's knit-control scrapes web's proxy; the traffic names the clusters it reached ------
for i in $(seq 5); do in_ns "$WA" curl -s -o /dev/null --max-time 5 "http://$BOOKS:8080/$i"; done
sleep 2.5 # a scrape (every second here) after the last requests
in_ns "$WC" "$KNIT" viz stat svc -n shop -t 1m -o json >"$TMP/stat-svc.json" 2>>"$TMP/cli.log"
clusters_of() { python3 -c 'import json, sys; rows = {r["name"]: r for r in json.load(open(sys.argv[1]))}; print(",".join(rows.get(sys.argv[2], {}).get("clusters", ["?"])))' "$TMP/stat-svc.json" "$1"; }
check "knit viz stat svc: books-east went to east ($(clusters_of books-east:8080)), books-federated to both ($(clusters_of books-federated:8080))" \
    test "$(clusters_of books-east:8080)" = east -a "$(clusters_of books-federated:8080)" = ",east"
in_ns "$WC" "$KNIT" viz edges deploy -n shop -t 1m -o json >"$TMP/edges.json" 2>>"$TMP/cli.log"
edges=$(python3 -c 'import json, sys
print(" ".join(sorted("%s>%s%s@%s" % (e["src"], "svc/" if e.get("via_gateway") else "", e["dst"], e.get("dst_cluster") or "local") for e in json.load(open(sys.argv[1])))))' "$TMP/edges.json")
check "knit viz edges: web to east's Service through the gateway, to east's books pod, to west's books-w ($edges)" \
    bash -c '[[ " $1 " == *" web>svc/books@east "* && " $1 " == *" web>books@east "* && " $1 " == *" web>books-w@local "* ]]' _ "$edges"
out=$(in_ns "$WC" "$KNIT" viz edges deploy -n shop -t 1m 2>&1)
check "the edges table has a DST_CLUSTER column" bash -c '[[ $(echo "$1" | head -n 1) == *DST_CLUSTER* ]]' _ "$out"

# --- the gateway dies, then returns --------------------------------------------------------------
kill "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null
GATEWAY_PID=
# Three failed probes a second apart, and a little slack.
wait_for 8 test "$(gateway_alive)" = False
check "the probe marks the gateway down within its threshold" test "$(gateway_alive)" = False
# The first request after the endpoints went waits out the balancer's failfast timeout (3 s, as
# Linkerd's); from then on the backend is in failfast and requests are answered at once.
# (Linkerd's proxy answers that first request 504, as its balancer's queue times out.)
first=$(in_ns "$WA" curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$BOOKS:8080/")
want=503
[[ $LINKERD_AS == *web* ]] && want=504
check "the first request with the gateway down is answered $want within the failfast timeout ($first)" test "$first" = "$want"
start=$(date +%s%N)
code=$(in_ns "$WA" curl -s -o "$TMP/down.out" -w '%{http_code}' --max-time 5 "http://$BOOKS:8080/")
took=$((($(date +%s%N) - start) / 1000000))
check "the next fails fast with 503 and the reason ($code in ${took} ms: $(head -c 120 "$TMP/down.out"))" test "$code" = 503 -a "$took" -lt 2000
check "catalog-east (flat) is still reached: it needs no gateway" test "$(in_ns "$WA" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$CATALOG:8080/")" = 200
out=$(in_ns "$WC" "$KNIT" multicluster check --admin-addr 127.0.0.1:19990 2>&1)
check "knit multicluster check reports the dead gateway" bash -c '[[ $1 == *"× east: the gateway is alive"* ]]' _ "$out"
start_gateway
wait_for 10 test "$(in_ns "$WA" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$BOOKS:8080/")" = 200
check "traffic resumes when the gateway returns, nothing restarted" test "$(in_ns "$WA" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$BOOKS:8080/")" = 200

# --- unexported in east: gone from west -----------------------------------------------------------
east_manifests false
wait_for 10 test "$(mirror_field redis-east name)" = -
check "redis unexported in east leaves west's mirror" test "$(mirror_field redis-east name)" = -
check "books-east is still served" test "$(in_ns "$WA" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$BOOKS:8080/")" = 200

for ns in "$EB" "$WA" "$EC"; do in_ns "$ns" "$TMP/knit-proxy" init --remove 2>>"$TMP/init.log"; done
echo "netns-multicluster: $passed passed, $failed failed"
((failed == 0))
