# Shared by bench/run.sh and bench/discovery.sh (sourced): temporary files, the processes a
# script starts (killed on exit), free ports and readiness checks.
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [log]
    for _ in $(seq 200); do curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "bench: $1 not ready"
    [ -n "${2:-}" ] && tail -n 20 "$2"
    exit 1
}

start_knit() { # name, extra env...: a knit-proxy on CPU 1 ($P); sets NAME_PID, NAME_IN, NAME_OUT, NAME_ADMIN
    local name=$1; shift
    local in=$(free_port) out=$(free_port) admin=$(free_port)
    env KNIT_PROXY_INBOUND_LISTEN_ADDR=127.0.0.1:$in KNIT_PROXY_OUTBOUND_LISTEN_ADDR=127.0.0.1:$out \
        KNIT_PROXY_ADMIN_LISTEN_ADDR=127.0.0.1:$admin KNIT_PROXY_CORES=1 KNIT_PROXY_LOG=warn \
        KNIT_PROXY_SHUTDOWN_GRACE_PERIOD=1s "$@" \
        taskset -c 1 "$P" 2>"$TMP/$name.log" &
    PIDS+=($!)
    eval "${name}_PID=$! ${name}_IN=$in ${name}_OUT=$out ${name}_ADMIN=$admin"
    wait_http "http://127.0.0.1:$admin/ready" "$TMP/$name.log"
}
