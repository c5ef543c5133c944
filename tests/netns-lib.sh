# Shared by tests/netns.sh and tests/netns-mesh.sh (sourced): the PASS/FAIL bookkeeping. Each
# script sets TMP (its logs are shown when a check fails), passed=0 and failed=0.

check() { # name, then a command that must succeed
    local name=$1
    shift
    if "$@"; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
        for log in "$TMP"/*.log; do
            [ -s "$log" ] && { echo "--- $log"; tail -n 30 "$log"; }
        done
    fi
}

stop_namespaces() { # every process in the named namespaces (children of `ip netns exec` too), then the namespaces
    local ns pids
    for ns in "$@"; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    for _ in $(seq 30); do
        pids=$(for ns in "$@"; do ip netns pids "$ns" 2>/dev/null; done)
        [ -z "$pids" ] && break
        sleep 0.1
    done
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    for ns in "$@"; do ip netns del "$ns" 2>/dev/null; done
}
