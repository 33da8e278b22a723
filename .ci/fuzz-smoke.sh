#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly from its committed seed corpus; fails on any crash,
# panic, leak or timeout the fuzzer reports. Installs cargo-fuzz if it is missing.
#
# Stable toolchain only: cargo-fuzz needs -Zsanitizer, which RUSTC_BOOTSTRAP=1 lets a
# stable rustc accept. FUZZ_SECONDS (default 20) bounds each target; FUZZ_SANITIZER
# (default address; "none" builds without one, faster) is passed to cargo fuzz.
#
# Usage: .ci/fuzz-smoke.sh [target...]   (default: all targets)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -s "$sanitizer"
failed=()
for t in "${targets[@]}"; do
    # Run on a scratch copy: the committed corpus stays as it is.
    work=$(mktemp -d)
    cp -r "corpus/$t/." "$work/" 2>/dev/null || true
    echo "fuzz-smoke: $t for ${seconds}s" >&2
    if ! cargo fuzz run -s "$sanitizer" "$t" "$work" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>"$work.log"; then
        echo "fuzz-smoke: $t FAILED; last lines of its log:" >&2
        tail -n 60 "$work.log" >&2
        ls artifacts/"$t"/ 2>/dev/null | sed 's/^/  artifact: /' >&2 || true
        failed+=("$t")
    else
        grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$work.log" \
            | sed "s/^/  $t /" >&2 || true
    fi
    rm -rf "$work" "$work.log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets ran ${seconds}s without a crash" >&2
