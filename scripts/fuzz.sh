#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo-fuzz (libFuzzer), on the stable
# toolchain with RUSTC_BOOTSTRAP=1, and prints a table: target, time, executions, corpus size,
# crashes. Seeds are in fuzz/seeds/<target> (committed); what the fuzzer finds grows
# fuzz/corpus/<target> and crashes land in fuzz/artifacts/<target> (neither committed). Not part
# of scripts/test.sh: every crash found becomes a regression test there instead.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(transport_header detect authority path policy manifest inbound trace_context prom)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd fuzz
# The policy seeds are the control plane's own answers for the seed manifests (committed;
# regenerated with KNIT_FUZZ_SEEDS=1, which costs a release build of its own).
if [ -n "${KNIT_FUZZ_SEEDS:-}" ] || [ -z "$(ls -A seeds/policy 2>/dev/null)" ]; then
    cargo run -q --release --bin seed_policy -- seeds/manifest seeds/policy
fi
mkdir -p target
printf '| target | seconds | executions | exec/s | corpus | crashes |\n|---|---:|---:|---:|---:|---:|\n' >target/fuzz-summary.md
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    echo "==> $t for ${SECS}s"
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$SECS" "${runs:-?}" "${rate:-?}" "$corpus" "$crashes" >>"target/fuzz-summary.md"
    if ((rc != 0)); then
        status=1
        echo "    $t stopped with status $rc (see fuzz/$log and fuzz/artifacts/$t)"
        grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5
    fi
done
echo
cat "target/fuzz-summary.md"
exit $status
