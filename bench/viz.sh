#!/usr/bin/env bash
# Knit's viz benchmark: metric series per proxy and scrape size (knit demo's proxies), and
# knit-control's built-in metrics store with 5,000 workloads (memory, series, CPU, query time).
#   bench/viz.sh [--quick]
# Writes the viz section of bench/RESULTS.md (bench/viz.py says what is measured and how).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p knit-control -p knit
exec python3 bench/viz.py "$@"
