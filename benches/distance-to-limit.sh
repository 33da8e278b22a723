#!/usr/bin/env bash
# Distance to the kernel's limit: flowguard's CPU per record as a multiple of a
# receive-only sink's (examples/recv_sink.rs: the collectors' own recvmmsg loop, same
# buffers and coalescing, nothing decoded) on the same stream, per format.
#
# Per format: the sink on CPU 0 and the sender on CPU 1 for STEP s, then flowguard
# (one collector thread) on CPU 0 with the same sender, rate and duration. CPU = utime +
# stime delta of the receiver (/proc/PID/stat) over the step; records = what the
# receiver got (the sink: datagrams received × records per datagram; flowguard:
# flowguard_flow_records_total). Loopback only, every step bounded.
#
# Usage: benches/distance-to-limit.sh [RATE]        (default 1000000 records/s)
# Environment: STEP (seconds, default 10), FORMATS (default "v5 v9 ipfix sflow"),
#   SENDER=loadgen|flowsend (flowsend: ../shared/tools/flowsend.c built with gcc -O2).
#   BIN (default target/release).
set -u
RATE=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd)}
BIN=${BIN:-$ROOT/target/release}
STEP=${STEP:-10}
FORMATS=${FORMATS:-v5 v9 ipfix sflow}
SENDER=${SENDER:-loadgen}
DAEMON_CPU=0
GEN_CPU=1
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/fg-distance.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ -x "$BIN/flowguard" ] && [ -x "$BIN/flowguard-loadgen" ] || (cd "$ROOT" && cargo build --release --bins) || exit 1
[ -x "$BIN/examples/recv_sink" ] || (cd "$ROOT" && cargo build --release --example recv_sink) || exit 1
. "$ROOT/benches/sender.sh"

free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
free_tcp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
echo "flowguard $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); sender $SENDER; $RATE records/s, $STEP s per step"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| fmt | receiver | records got | CPU s | CPU µs/record | flowguard ÷ sink |"
echo "|-----|----------|-------------|-------|---------------|------------------|"
for fmt in $FORMATS; do
    # --- the sink
    out=$WORK/sink.out
    taskset -c $DAEMON_CPU "$BIN/examples/recv_sink" 127.0.0.1:0 $((STEP + 8)) > "$out" &
    sp=$!; PIDS+=("$sp")
    addr=""
    for _ in $(seq 1 50); do addr=$(sed -n 's/^listening on //p' "$out"); [ -n "$addr" ] && break; sleep 0.1; done
    t0=$(cpu_ticks "$sp")
    send "$fmt" "$addr" "$RATE" "$STEP" > "$WORK/send.json"
    sleep 1
    t1=$(cpu_ticks "$sp")
    wait "$sp"
    per=$(sender_records_per_datagram "$WORK/send.json")
    sink=$(python3 - "$out" "$t0" "$t1" "$HZ" "$per" <<'PY'
import json, sys
f, t0, t1, hz, per = sys.argv[1:]
j = json.loads(open(f).read().splitlines()[-1])
recs = j["datagrams"] * float(per)
cpu = (int(t1) - int(t0)) / int(hz)
print(f"{recs:.0f} {cpu:.2f} {cpu * 1e6 / recs if recs else float('nan'):.4f}")
PY
)
    read -r srecs scpu sus <<< "$sink"
    echo "| $fmt | sink | $srecs | $scpu | $sus | |"
    # --- flowguard, one collector thread (netflow or sflow)
    port=$(free_port); api=$(free_tcp)
    proto=netflow; [ "$fmt" = sflow ] && proto=sflow
    cat > "$WORK/fg.toml" <<EOT
[api]
listen = "127.0.0.1:$api"
[[collector]]
protocol = "$proto"
listen = "127.0.0.1:$port"
threads = 1
[networks]
protected = ["100.64.0.0/16"]
[aggregate]
window_seconds = 5
[[hostgroup]]
name = "default"
threshold_pps = 100000000
threshold_mbps = 1000000
[state]
dir = "$WORK/state"
EOT
    rm -rf "$WORK/state"; mkdir -p "$WORK/state"
    RUST_LOG=warn taskset -c $DAEMON_CPU "$BIN/flowguard" --config "$WORK/fg.toml" run > "$WORK/fg.log" 2>&1 &
    fp=$!; PIDS+=("$fp")
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break; sleep 0.1; done
    count() { curl -s "http://127.0.0.1:$api/metrics" | awk '/^flowguard_flow_records_total/ {s+=$NF} END {printf "%d", s}'; }
    c0=$(count); t0=$(cpu_ticks "$fp")
    send "$fmt" "127.0.0.1:$port" "$RATE" "$STEP" > "$WORK/send.json"
    sleep 1.5
    c1=$(count); t1=$(cpu_ticks "$fp")
    stop_pid "$fp"
    python3 - "$c0" "$c1" "$t0" "$t1" "$HZ" "$sus" "$fmt" <<'PY'
import sys
c0, c1, t0, t1, hz, sus, fmt = sys.argv[1:]
n = int(c1) - int(c0)
cpu = (int(t1) - int(t0)) / int(hz)
us = cpu * 1e6 / n if n else float('nan')
print(f"| {fmt} | flowguard | {n} | {cpu:.2f} | {us:.4f} | **{us / float(sus):.2f}×** |")
PY
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
