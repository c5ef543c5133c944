# Shared by tests/netns.sh, tests/netns-mesh.sh and bench/netns.sh (sourced): the PASS/FAIL
# bookkeeping, a proxy's metrics and the namespaces' teardown. Each test script sets TMP (its
# logs are shown when a check fails), passed=0 and failed=0.

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

metric() { # namespace, metric name, label filters... -> sum of matching samples (the proxy's admin port 4191)
    local ns=$1 name=$2
    shift 2
    ip netns exec "$ns" curl -fsS --max-time 2 http://127.0.0.1:4191/metrics | grep "^$name{" | {
        local sum=0 line ok f
        while read -r line; do
            ok=1
            for f in "$@"; do [[ $line == *"$f"* ]] || ok=0; done
            ((ok)) && sum=$((sum + ${line##* }))
        done
        echo "$sum"
    }
}
