#!/usr/bin/env bash
# Collector threads, 1 vs 2 (issue 18, item 2): the most NetFlow v5 records/s one
# collector takes with no loss, with `threads = 1` and `threads = 2`.
#
# flowguard runs unpinned (it may use both cores); `flowguard-loadgen` sends from 8
# source ports (`--exporters 8`, so the kernel's SO_REUSEPORT hash spreads them over the
# sockets) pinned to CPU $GEN_CPU, 10 000 destinations of a protected /16, SECS seconds
# per step, rates RATES. Loss = sent − counted (`flowguard_flow_records_total`), after a
# pause for the socket to drain; CPU = flowguard's utime + stime over the step.
#
# Usage: BIN=target/ci benches/collector-threads.sh
#        RATES="1000000 2000000 3000000" SECS=10 THREADS="1 2" benches/collector-threads.sh
# Loopback only; every process is bounded by --duration or stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RATES=${RATES:-1000000 2000000 3000000 4000000}
SECS=${SECS:-10}
THREADS=${THREADS:-1 2}
GEN_CPU=${GEN_CPU:-1}
. benches/bench-lib.sh

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "collector threads: rates $RATES, $SECS s per step, sender on CPU $GEN_CPU (8 exporters); $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
hz=$(getconf CLK_TCK)
for t in $THREADS; do
  API=$(free_port SOCK_STREAM); NF=$(free_port SOCK_DGRAM)
  cat >"$work/fg.toml" <<EOF
[api]
listen = "127.0.0.1:$API"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:$NF"
threads = $t
[networks]
protected = ["100.64.0.0/16"]
[[hostgroup]]
name = "default"
threshold_pps = 100000000
[state]
dir = "$work/state-$t"
EOF
  "$BIN/flowguard" run --config "$work/fg.toml" --log-level warn 2>"$work/fg-$t.log" & fg=$!; pids+=($fg)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$API/healthz" >/dev/null && break; sleep 0.1; done
  for rate in $RATES; do
    c0=$(counted); k0=$(cpu_ticks "$fg"); d0=$(sock_drops)
    "$BIN/flowguard-loadgen" --format v5 --target "127.0.0.1:$NF" --rate "$rate" --duration "$SECS" \
        --hosts 10000 --prefix 100.64.0.0/16 --exporters 8 --cpu "$GEN_CPU" >"$work/gen.json"
    sleep 1.5   # let the collector drain its sockets
    c1=$(counted); k1=$(cpu_ticks "$fg"); d1=$(sock_drops)
    python3 - "$t" "$rate" "$work/gen.json" "$c0" "$c1" "$k0" "$k1" "$hz" "$d0" "$d1" <<'PY'
import json, sys
t, rate, gen, c0, c1, k0, k1, hz, d0, d1 = sys.argv[1:]
g = json.load(open(gen))
sent, got = g["records"], int(c1) - int(c0)
cpu = (int(k1) - int(k0)) / int(hz)
lost = sent - got
print(f"threads {t}  rate {int(rate):>8d}/s  sent {sent:>10d} ({sent / g['seconds']:>9.0f}/s)  counted {got:>10d}"
      f"  lost {lost:>8d} ({100 * lost / max(sent, 1):6.3f} %)  socket drops {int(d1) - int(d0):>6d}"
      f"  flowguard CPU {cpu:5.2f} s ({1e6 * cpu / max(got, 1):.3f} µs/record)")
PY
  done
  kill "$fg"; wait "$fg" 2>/dev/null || true
done
