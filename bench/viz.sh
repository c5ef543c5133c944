#!/usr/bin/env bash
# Knit's viz benchmark: metric series per proxy and scrape size (knit demo's proxies), and
# knit-control's built-in metrics store with 5,000 workloads (memory, series, CPU, query time),
# and the dashboard's render times in headless Chromium (bench/dashboard-results.md).
#   bench/viz.sh [--quick]
# Writes the viz section of bench/RESULTS.md (bench/viz.py says what is measured and how).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p knit-control -p knit
# The dashboard's render times with 5,000 workloads, on the release build (scripts/test.sh runs
# the same test on the debug build, for correctness only).
python3 tests/dashboard/test_dashboard.py --bin target/release --results bench/dashboard-results.md
exec python3 bench/viz.py "$@"
