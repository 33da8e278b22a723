#!/usr/bin/env bash
# Long run of one target (README figures): fuzz/run-one.sh TARGET [SECONDS] [RUNS]
# Grows a scratch corpus under fuzz/corpus-run/TARGET, seeded from fuzz/corpus/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
t=$1; secs=${2:-1800}; runs=${3:-10000000}
mkdir -p "corpus-run/$t" logs
cp -rn "corpus/$t/." "corpus-run/$t/"
RUSTC_BOOTSTRAP=1 exec cargo fuzz run "$t" "corpus-run/$t" -- \
    -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"logs/$t.log" 2>&1
