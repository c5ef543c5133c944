#!/usr/bin/env bash
# Knit's multicluster benchmark: two local-mode clusters in network namespaces, a call across
# them through east's gateway and flat (pod to pod), beside the same call inside one cluster;
# then the service mirror at scale (1,000 exported Services, 10,000 remote endpoints) and the
# time from exporting a Service in east to a client in west reaching it.
#   bench/multicluster.sh [--quick]     (root: namespaces and iptables)
# Writes its section of bench/RESULTS.md (between its <!-- multicluster --> markers) and raw JSON
# lines to bench/out/multicluster.jsonl.
#
#   c 10.235.0.1  west's client: init, knit-proxy (web), the load generator calling ClusterIPs
#   e 10.235.0.2  east's knit-control (--multicluster-addr) and east's gateway (a knit-proxy)
#   s 10.235.0.3  east's books: init, knit-proxy (books), the HTTP server
#   w 10.235.0.4  west's knit-control, linked to east
# One bridge: the clusters are their control planes and issuers (one trust anchor), not the
# wires between them, so the rows differ by the hops a request takes, not by a router.
# Setups: same-cluster (west's Service books-local, whose endpoint is books: web's proxy → mTLS →
# books' proxy, as within one cluster), flat (books-flat-east, exported for remote discovery: the
# same hop, to the endpoint east exports), gateway (books-east: web's proxy → mTLS → the gateway →
# mTLS → books' proxy). Proxies on CPU 1, everything else on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
DUR=10s WARM=2s REPS=3 SCALE_SVCS=1000 SCALE_EPS=10 EXPORTS=5
((QUICK)) && { DUR=3s; WARM=1s; REPS=1; SCALE_SVCS=200; EXPORTS=2; }
[ "$(id -u)" = 0 ] || { echo "bench/multicluster.sh: needs root (network namespaces, iptables)"; exit 1; }
for pair in taskset:util-linux setpriv:util-linux iptables:iptables ip:iproute2 curl:curl; do
    command -v "${pair%%:*}" >/dev/null || { echo "bench/multicluster.sh: ${pair%%:*} is missing: apt-get install ${pair#*:}"; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench/multicluster.sh: needs 2 CPUs to pin proxies apart from the load"; exit 1; }

cargo build --release -p knit-proxy -p knit-loadgen -p knit-control -p knit
OUT=bench/out
mkdir -p "$OUT"
RAW="$OUT/multicluster.jsonl"
: >"$RAW"
source bench/lib.sh
# shellcheck source=tests/netns-lib.sh
. tests/netns-lib.sh
chmod 755 "$TMP"
L=$TMP/knit-loadgen P=$TMP/knit-proxy
install -m 755 target/release/knit-loadgen "$L"
install -m 755 target/release/knit-proxy "$P"
CONTROL=target/release/knit-control KNIT=target/release/knit

NC=kmc-c-$$ NE=kmc-e-$$ NS=kmc-s-$$ NW=kmc-w-$$ NSW=kmc-sw-$$
trap 'rm -rf "$OUT/multicluster-logs"; mkdir -p "$OUT/multicluster-logs"; cp "$TMP"/*.log "$OUT/multicluster-logs/" 2>/dev/null; cleanup; stop_namespaces "$NC" "$NE" "$NS" "$NW" "$NSW"' EXIT
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the network -----------------------------------------------------------------------------
for ns in "$NC" "$NE" "$NS" "$NW" "$NSW"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NSW" link add br0 type bridge
ip -n "$NSW" link set br0 up
i=1
for ns in "$NC" "$NE" "$NS" "$NW"; do
    ip link add "kmh$i-$$" type veth peer name "kms$i-$$"
    ip link set "kmh$i-$$" netns "$ns"
    ip link set "kms$i-$$" netns "$NSW"
    ip -n "$NSW" link set "kms$i-$$" master br0 up
    ip -n "$ns" addr add "10.235.0.$i/24" dev "kmh$i-$$"
    ip -n "$ns" link set "kmh$i-$$" up
    ip -n "$ns" route add 10.96.0.0/16 dev "kmh$i-$$"
    i=$((i + 1))
done
IP_C=10.235.0.1 IP_E=10.235.0.2 IP_S=10.235.0.3 IP_W=10.235.0.4
LOCAL=10.96.2.10

# --- identity: one anchor, an issuer per cluster ---------------------------------------------------
ID=shop.serviceaccount.identity.knit.cluster.local
"$KNIT" identity init --dir "$TMP/east-id" >/dev/null
cp -r "$TMP/east-id" "$TMP/west-id"
"$KNIT" identity issuer --dir "$TMP/west-id" --name identity.west.cluster.local >/dev/null
for w in books gateway; do "$KNIT" identity token --dir "$TMP/east-id" --identity "$w.$ID" >"$TMP/$w.token"; done
"$KNIT" identity token --dir "$TMP/west-id" --identity "web.$ID" >"$TMP/web.token"
chmod 644 "$TMP"/*-id/trust-anchors.pem "$TMP"/*.token

# --- manifests --------------------------------------------------------------------------------------
mkdir -p "$TMP/east" "$TMP/west" "$TMP/scale-east" "$TMP/scale-west" "$TMP/scale-local"
svc() { # name, clusterIP, labels
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: shop, labels: {%s}}\nspec:\n  clusterIP: %s\n  selector: {app: books}\n  ports: [{name: http, port: 8080}]\n' "$1" "$3" "$2"
}
workload() { # name, ip, app
    printf -- '---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: %s, namespace: shop, labels: {app: %s}}\nspec:\n  meshTLS: {identity: %s.%s, serverName: %s.%s}\n  workloadIPs: [{ip: %s}]\n  ports: [{name: http, port: 8080}]\n' \
        "$1" "$3" "$1" "$ID" "$1" "$ID" "$2"
}
east_manifests() { # whether `late` is exported: true|false
    {
        svc books 10.96.1.10 'mirror.linkerd.io/exported: "true"'
        svc books-flat 10.96.1.11 'mirror.linkerd.io/exported: remote-discovery'
        svc late 10.96.1.12 "mirror.linkerd.io/exported: \"$1\""
        workload books "$IP_S" books
        workload gateway "$IP_E" gateway
        cat <<YAML
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
east_manifests false
# West: the same books pod as one of its own (the same-cluster row), and its client.
{ svc books-local "$LOCAL" 'app: books'; workload books "$IP_S" books; workload web "$IP_C" web; } >"$TMP/west/app.yaml"
chmod -R a+rX "$TMP"/east "$TMP"/west

# --- control planes, the server, the proxies -------------------------------------------------------
control() { # namespace, ip, identity dir, config dir, log, port prefix (18: :18080 identity, :18086, :18090, admin :18991), extra flags...: sets LAST_PID
    local ns=$1 ip=$2 id=$3 dir=$4 log=$5 b=$6
    shift 6
    ip netns exec "$ns" taskset -c 0 "$CONTROL" --identity-dir "$id" --identity-addr "$ip:${b}080" --admin-addr "127.0.0.1:${b}991" \
        --destination-addr "$ip:${b}086" --policy-addr "$ip:${b}090" --viz-addr "127.0.0.1:${b}994" --config-dir "$dir" "$@" 2>"$TMP/$log.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 200); do in_ns "$ns" curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:${b}991/ready" 2>/dev/null && return 0; sleep 0.05; done
    echo "bench: knit-control ($log) not ready"; tail -n 20 "$TMP/$log.log"; exit 1
}
control "$NE" "$IP_E" "$TMP/east-id" "$TMP/east" control-east 18 --multicluster-addr "$IP_E:18095"
EAST_PID=$LAST_PID
control "$NW" "$IP_W" "$TMP/west-id" "$TMP/west" control-west 18
WEST_PID=$LAST_PID
ip netns exec "$NS" taskset -c 0 "$L" serve --addr 0.0.0.0:8080 >/dev/null 2>&1 &
PIDS+=($!)

in_ns "$NC" "$P" init --proxy-uid 2102 2>>"$TMP/init.log"
in_ns "$NS" "$P" init --proxy-uid 2102 2>>"$TMP/init.log"
start_proxy() { # namespace, workload, control-plane IP, identity dir, extra env...: sets <NAME>_PID
    local ns=$1 w=$2 cp=$3 id=$4
    shift 4
    ip netns exec "$ns" env -i PATH=/usr/bin:/bin \
        KNIT_PROXY_INBOUND_LISTEN_ADDR=0.0.0.0:4143 KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:4140 \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=0.0.0.0:4191 KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=1s KNIT_PROXY_CORES=1 KNIT_PROXY_LOG=warn \
        KNIT_PROXY_IDENTITY_LOCAL_NAME="$w.$ID" KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE="$id/trust-anchors.pem" \
        KNIT_PROXY_IDENTITY_TOKEN_FILE="$TMP/$w.token" KNIT_PROXY_IDENTITY_SVC_ADDR="$cp:18080" \
        KNIT_PROXY_DESTINATION_SVC_ADDR="$cp:18086" KNIT_PROXY_POLICY_SVC_ADDR="$cp:18090" \
        "KNIT_PROXY_POLICY_WORKLOAD={\"ns\":\"shop\",\"external_workload\":\"$w\"}" "$@" \
        taskset -c 1 setpriv --reuid=2102 --regid=2102 --clear-groups "$P" 2>"$TMP/proxy-$w.log" &
    PIDS+=($!)
    eval "${w^^}_PID=$!"
    for _ in $(seq 150); do in_ns "$ns" curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:4191/ready 2>/dev/null && return 0; sleep 0.1; done
    echo "bench: proxy $w not ready"; tail -n 20 "$TMP/proxy-$w.log"; exit 1
}
start_proxy "$NS" books "$IP_E" "$TMP/east-id" KNIT_PROXY_INBOUND_PORTS=8080
start_proxy "$NE" gateway "$IP_E" "$TMP/east-id" KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES=svc.cluster.local.
start_proxy "$NC" web "$IP_W" "$TMP/west-id"

# --- west links to east --------------------------------------------------------------------------
"$KNIT" multicluster link --cluster-name east --gateway-address "$IP_E" --gateway-identity "gateway.$ID" \
    --remote-control-plane "$IP_E:18095" --mirror-cluster-ips 10.96.200.0/24 --probe-period 1s --namespace shop >"$TMP/west/link.yaml"
status() { in_ns "$NW" curl -fsS --max-time 2 http://127.0.0.1:18991/multicluster; }
mirror_ip() { # mirror name -> its ClusterIP, or nothing
    status | python3 -c 'import json, sys
for link in json.load(sys.stdin)["links"].values():
    for m in link["mirrors"]:
        if m["name"] == sys.argv[1] and m["ready"]: print(m["cluster_ip"])' "$1"
}
for _ in $(seq 150); do [ -n "$(mirror_ip books-east)" ] && [ -n "$(mirror_ip books-flat-east)" ] && break; sleep 0.1; done
GATEWAY=$(mirror_ip books-east) FLAT=$(mirror_ip books-flat-east)
[ -n "$GATEWAY" ] && [ -n "$FLAT" ] || { echo "bench: west did not mirror east's books"; status; exit 1; }

SETUPS=(same-cluster flat gateway)
declare -A URL=([same-cluster]="http://$LOCAL:8080/" [flat]="http://$FLAT:8080/" [gateway]="http://$GATEWAY:8080/")
procs() { case $1 in gateway) echo "$WEB_PID $GATEWAY_PID $BOOKS_PID" ;; *) echo "$WEB_PID $BOOKS_PID" ;; esac; }
for s in "${SETUPS[@]}"; do
    in_ns "$NC" curl -fsS -o /dev/null --max-time 5 "${URL[$s]}" || { echo "bench: web → $s failed"; tail -n 20 "$TMP/proxy-web.log"; exit 1; }
done
# The paths are the ones claimed: the gateway saw web's identity; books saw web's (flat and
# same-cluster) and the gateway's.
[ "$(metric "$NE" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"web.$ID\"")" -ge 1 ] || { echo "bench: the gateway saw no mTLS from web"; exit 1; }
[ "$(metric "$NS" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"web.$ID\"")" -ge 1 ] || { echo "bench: books saw no mTLS from web"; exit 1; }
[ "$(metric "$NS" tcp_open_total 'direction="inbound"' 'tls="true"' "client_id=\"gateway.$ID\"")" -ge 1 ] || { echo "bench: books saw no mTLS from the gateway"; exit 1; }

rss_kb() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
measure() { # kind, setup, loadgen args...
    local kind=$1 setup=$2 procs before after json
    shift 2
    procs=$(procs "$setup")
    before=$(cpu_ticks "$procs")
    json=$(in_ns "$NC" taskset -c 0 "$L" run --url "${URL[$setup]}" --host backend --duration "$DUR" --warmup "$WARM" "$@") \
        || { echo "bench: $kind $setup $*: nothing succeeded"; tail -n 20 "$TMP"/*.log; exit 1; }
    after=$(cpu_ticks "$procs")
    echo "{\"kind\":\"$kind\",\"setup\":\"$setup\",\"args\":\"$*\",\"cpu_ticks\":$((after - before)),\"cpu_window_ratio\":$(python3 -c "print(${DUR%s}/(${DUR%s}+${WARM%s}))"),\"result\":$json}" >>"$RAW"
    echo "  $kind $setup $*: $json"
}
for rep in $(seq "$REPS"); do
    echo "== round $rep of $REPS"
    for s in "${SETUPS[@]}"; do measure latency "$s" --rate 1000 --connections 10; done
    for s in "${SETUPS[@]}"; do measure max "$s" --max --connections 50; done
done

# --- from exported in east to reached from west ------------------------------------------------------
# East's manifest changes (`late` gains mirror.linkerd.io/exported=true); the clock stops at the
# client's first 200 through the mirror's ClusterIP. Then unexported: until the mirror is gone.
for n in $(seq "$EXPORTS"); do
    start=$(date +%s%N)
    east_manifests true
    deadline=$((SECONDS + 30)) ip=
    while [ -z "$ip" ] && ((SECONDS < deadline)); do ip=$(mirror_ip late-east); done
    [ -n "$ip" ] || { echo "bench: late-east was not mirrored within 30 s"; exit 1; }
    mirrored=$((($(date +%s%N) - start) / 1000000))
    until in_ns "$NC" curl -fsS -o /dev/null --max-time 1 "http://$ip:8080/" 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "bench: late-east ($ip) not reached within 30 s"; exit 1; }
        sleep 0.01
    done
    reached=$((($(date +%s%N) - start) / 1000000))
    start=$(date +%s%N)
    east_manifests false
    deadline=$((SECONDS + 30))
    while [ -n "$(mirror_ip late-east)" ]; do ((SECONDS < deadline)) || { echo "bench: late-east still mirrored after 30 s"; exit 1; }; done
    gone=$((($(date +%s%N) - start) / 1000000))
    # The first export is of a ClusterIP the client never called; later ones of one it called
    # while it was unexported, which its proxy asks about again every 5 s (NotFound).
    echo "{\"kind\":\"export\",\"setup\":\"gateway\",\"args\":\"$( ((n == 1)) && echo first || echo again)\",\"result\":{\"mirrored_ms\":$mirrored,\"reached_ms\":$reached,\"unexported_gone_ms\":$gone}}" >>"$RAW"
    echo "  export $n: mirrored in $mirrored ms, reached in $reached ms; unexported: gone in $gone ms"
done

# --- the mirror at scale ------------------------------------------------------------------------------
# East exports SCALE_SVCS Services for remote discovery, SCALE_EPS pods each: west mirrors them
# all, endpoints included. West's RSS is read before the Link and once every mirror is written,
# beside a third knit-control holding the same Services and pods as its own manifests.
scale_manifests() { # directory, labels of the Services
    python3 - "$1" "$SCALE_SVCS" "$SCALE_EPS" "$ID" "$2" <<'PY'
import sys
out, services, per, ident, labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
docs = []
for i in range(services):
    docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i:04d}, namespace: scale, labels: {{{labels}}}}}\n"
                f"spec:\n  clusterIP: 10.97.{i // 250}.{i % 250 + 1}\n  selector: {{app: app-{i:04d}}}\n  ports: [{{name: http, port: 8080}}]\n")
    for j in range(per):
        n = i * per + j
        docs.append(f"apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: pod-{n:05d}, namespace: scale, labels: {{app: app-{i:04d}}}}}\n"
                    f"spec:\n  meshTLS: {{identity: app-{i:04d}.{ident}, serverName: app-{i:04d}.{ident}}}\n  workloadIPs: [{{ip: 10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}}}]\n  ports: [{{name: http, port: 8080}}]\n")
open(f"{out}/scale.yaml", "w").write("---\n".join(docs))
PY
}
scale_manifests "$TMP/scale-east" 'mirror.linkerd.io/exported: remote-discovery'
scale_manifests "$TMP/scale-local" 'app: local'
chmod -R a+rX "$TMP"/scale-*
settle() { sleep 3; }
control "$NE" "$IP_E" "$TMP/east-id" "$TMP/scale-east" control-scale-east 28 --multicluster-addr "$IP_E:28095"
SE_PID=$LAST_PID
control "$NW" "$IP_W" "$TMP/west-id" "$TMP/scale-west" control-scale-west 28
SW_PID=$LAST_PID
control "$NW" "$IP_W" "$TMP/west-id" "$TMP/scale-local" control-scale-local 38
SL_PID=$LAST_PID
settle
west_before=$(rss_kb "$SW_PID") east_before=$(rss_kb "$SE_PID") local_rss=$(rss_kb "$SL_PID")
start=$(date +%s%N)
"$KNIT" multicluster link --cluster-name east --gateway-address "$IP_E" --gateway-identity "gateway.$ID" \
    --remote-control-plane "$IP_E:28095" --mirror-cluster-ips 10.98.0.0/16 --namespace scale >"$TMP/scale-west/link.yaml"
count() { in_ns "$NW" curl -fsS --max-time 5 http://127.0.0.1:28991/multicluster | python3 -c 'import json, sys
print(sum(sum(1 for m in l["mirrors"] if m["ready"]) for l in json.load(sys.stdin)["links"].values()))'; }
for _ in $(seq 600); do [ "$(count)" = "$SCALE_SVCS" ] && break; sleep 0.1; done
[ "$(count)" = "$SCALE_SVCS" ] || { echo "bench: west mirrored $(count) of $SCALE_SVCS Services"; exit 1; }
mirrored=$((($(date +%s%N) - start) / 1000000))
settle
west_after=$(rss_kb "$SW_PID") east_after=$(rss_kb "$SE_PID")
echo "{\"kind\":\"scale\",\"setup\":\"mirror\",\"args\":\"$SCALE_SVCS services × $SCALE_EPS endpoints\",\"result\":{\"services\":$SCALE_SVCS,\"endpoints\":$((SCALE_SVCS * SCALE_EPS)),\"mirrored_ms\":$mirrored,\"west_rss_kb_before\":$west_before,\"west_rss_kb_after\":$west_after,\"east_rss_kb_before\":$east_before,\"east_rss_kb_after\":$east_after,\"local_rss_kb\":$local_rss}}" >>"$RAW"
echo "  scale: $SCALE_SVCS Services mirrored in $mirrored ms; west RSS $west_before → $west_after kB, east $east_before → $east_after kB; the same as local manifests: $local_rss kB"

CMD="bench/multicluster.sh${1:+ $1}"
python3 bench/report.py multicluster "$RAW" --command "$CMD" --ticks "$(getconf CLK_TCK)" --results bench/RESULTS.md
echo "wrote the multicluster section of bench/RESULTS.md"
