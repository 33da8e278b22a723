#!/usr/bin/env bash
# flowguard vs FastNetMon 1.2.4 on the same generated streams, one after the other on this
# machine. Prints, per daemon, format and offered rate: records/s counted, CPU-µs per
# record, datagrams lost (kernel socket drops + offered - counted), RSS; then detection
# latency (first attack datagram sent -> mitigator-sim's first PUT toggle/switch for
# flowguard, -> notify script called for FastNetMon).
#
# The daemon under test runs on CPU 0, flowguard-loadgen on CPU 1. Everything listens and
# sends on 127.0.0.1 only. Every step is bounded; the whole run stops by itself.
#
# Usage: benches/compare-fastnetmon.sh [quick|full] [--sender loadgen|flowsend]
#   quick (default): 10 s per step, 3 latency trials per format and daemon  (~6 min)
#   full: adds the 60 s sustained runs (v5 3 M/s, sFlow 1 M/s) and a flowguard
#         rate sweep per format                                              (~14 min)
#   --sender flowsend: the throughput steps use the independent C sender
#         ../shared/tools/flowsend.c (built with gcc -O2 into the run's temp dir; at most
#         20 s per step, so the 60 s sustained rows are skipped) instead of
#         flowguard-loadgen; the latency trials always use flowguard-loadgen (they need its
#         attack options).
# Environment: STEP (seconds per step), TRIALS (latency trials), FG_ONLY=1, FNM_ONLY=1,
# LATENCY_ONLY=1, FG_THREADS (collector threads, default 1: the daemon has one CPU),
# SHARED (default ../shared next to the repository), BIN (default target/release).
# Figures are only comparable on an idle machine: the load average is printed at the start
# and the end of the run.
set -u
MODE=quick
SENDER=loadgen
while [ $# -gt 0 ]; do
    case $1 in
        quick|full) MODE=$1;;
        --sender) SENDER=${2:?--sender needs loadgen or flowsend}; shift;;
        --sender=*) SENDER=${1#--sender=};;
        *) echo "usage: $0 [quick|full] [--sender loadgen|flowsend]" >&2; exit 2;;
    esac
    shift
done
case $SENDER in loadgen|flowsend) ;; *) echo "unknown sender $SENDER" >&2; exit 2;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd)}
FG_THREADS=${FG_THREADS:-1}
BIN=${BIN:-$ROOT/target/release}
STEP=${STEP:-10}
TRIALS=${TRIALS:-3}
DAEMON_CPU=0
GEN_CPU=1
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/fg-compare.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ ! -x "$BIN/flowguard" ] || [ ! -x "$BIN/flowguard-loadgen" ] || [ ! -x "$BIN/mitigator-sim" ]; then
    (cd "$ROOT" && cargo build --release --bins) || exit 1
fi
. "$ROOT/benches/sender.sh"
command -v fastnetmon >/dev/null || { echo "fastnetmon not installed" >&2; FG_ONLY=1; }

free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
free_tcp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_mb() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Kernel drops of the UDP socket bound to 127.0.0.1:PORT (last column of /proc/net/udp).
udp_drops() {
    local hex; hex=$(printf '0100007F:%04X' "$1")
    awk -v a="$hex" '$2==a {d+=$NF} END {print d+0}' /proc/net/udp
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

fg_counted() {  # records counted by flowguard
    curl -s "http://127.0.0.1:$FG_API/metrics" |
        awk '/^flowguard_flow_records_total/ {s+=$NF} END {printf "%d", s}'
}
fnm_counted() {
    curl -s "http://127.0.0.1:$FNM_PROM/metrics" |
        awk '$1=="fastnetmon_total_simple_packets_processed" {printf "%d", $2}'
}

# ---------------------------------------------------------------- daemons
THRESH_PPS=${THRESH_PPS:-20000}
start_flowguard() {  # [mitigator url]
    FG_NF=$(free_port); FG_SF=$(free_port); FG_API=$(free_tcp)
    rm -rf "$WORK/fg"; mkdir -p "$WORK/fg/state"  # fresh: no restored attacks
    cat > "$WORK/fg/flowguard.toml" <<EOF
[api]
listen = "127.0.0.1:$FG_API"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:$FG_NF"
threads = $FG_THREADS
[[collector]]
protocol = "sflow"
listen = "127.0.0.1:$FG_SF"
threads = $FG_THREADS
[networks]
protected = ["100.64.0.0/16"]
[aggregate]
window_seconds = 5
[[hostgroup]]
name = "default"
threshold_pps = $THRESH_PPS
threshold_mbps = 1000
ban_time_seconds = 30
[state]
dir = "$WORK/fg/state"
EOF
    if [ -n "${1:-}" ]; then
        cat >> "$WORK/fg/flowguard.toml" <<EOF
[mitigator]
url = "$1"
username = "admin"
password = "s3cret"
retry_base_ms = 20
EOF
    fi
    RUST_LOG=warn taskset -c $DAEMON_CPU "$BIN/flowguard" --config "$WORK/fg/flowguard.toml" run \
        > "$WORK/fg/log" 2>&1 &
    FG_PID=$!; PIDS+=("$FG_PID")
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$FG_API/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "flowguard did not start:" >&2; cat "$WORK/fg/log" >&2; return 1
}
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null; }

start_fnm() {
    FNM_NF=$(free_port); FNM_SF=$(free_port); FNM_PROM=$(free_tcp)
    local d=$WORK/fnm; rm -rf "$d"; mkdir -p "$d"
    printf '#!/bin/sh\necho "$(date +%%s.%%N) $*" >> %s/notify.log\ncat >/dev/null\n' "$d" > "$d/notify.sh"
    chmod +x "$d/notify.sh"
    echo "100.64.0.0/16" > "$d/networks_list"; : > "$d/whitelist"
    sed -e "s#@DIR@#$d#g" -e "s#@NOTIFY@#$d/notify.sh#g" \
        -e "s#^netflow_port = .*#netflow_port = $FNM_NF#" -e "s#^sflow_port = .*#sflow_port = $FNM_SF#" \
        -e "s#^prometheus_port = .*#prometheus_port = $FNM_PROM#" \
        -e "s#^threshold_pps = .*#threshold_pps = $THRESH_PPS#" \
        -e "s#^logging_level = .*#logging_level = info#" \
        "$SHARED/reference/fastnetmon-test.conf" > "$d/fnm.conf" 2>/dev/null ||
        { echo "no FastNetMon reference config" >&2; return 1; }
    grep -q '^disable_usage_report = on' "$d/fnm.conf" || { echo "usage report not disabled" >&2; return 1; }
    taskset -c $DAEMON_CPU fastnetmon --configuration_file "$d/fnm.conf" --log_file "$d/fnm.log" \
        --disable_pid_logic > "$d/out" 2>&1 &
    FNM_PID=$!; PIDS+=("$FNM_PID")
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$FNM_PROM/metrics" >/dev/null && return 0
        sleep 0.1
    done
    echo "fastnetmon did not start" >&2; tail "$d/fnm.log" >&2; return 1
}

# ---------------------------------------------------------------- throughput step
# step NAME PID COUNTER_FN PORT FORMAT RATE SECONDS
RESULTS=$WORK/results
step() {
    local name=$1 pid=$2 counter=$3 port=$4 fmt=$5 rate=$6 secs=$7
    local c0 t0 d0 c1 t1 d1 out
    c0=$($counter); t0=$(cpu_ticks "$pid"); d0=$(udp_drops "$port")
    out=$(send "$fmt" "127.0.0.1:$port" "$rate" "$secs")
    sleep 1.5 # let the daemon drain its queue
    c1=$($counter); t1=$(cpu_ticks "$pid"); d1=$(udp_drops "$port")
    local offered odg osecs
    offered=$(echo "$out" | json '["records"]'); odg=$(echo "$out" | json '["datagrams"]')
    osecs=$(echo "$out" | json '["seconds"]')
    python3 - "$name" "$fmt" "$rate" "$offered" "$odg" "$osecs" "$c0" "$c1" "$t0" "$t1" "$d0" "$d1" "$HZ" "$(rss_mb "$pid")" "$(echo "$out" | json '["records_per_datagram"]')" <<'EOF' | tee -a "$RESULTS"
import sys
n, fmt, rate, off, odg, osecs, c0, c1, t0, t1, d0, d1, hz, rss, per = sys.argv[1:]
off, odg, osecs = int(off), int(odg), float(osecs)
counted = int(c1) - int(c0)
cpu_s = (int(t1) - int(t0)) / int(hz)
drops = int(d1) - int(d0)
lost_dg = max(0, odg - counted // int(per))
us = cpu_s * 1e6 / counted if counted else float('nan')
print(f"| {n:9} | {fmt:5} | {int(rate)/1e6:5.2f} M | {off/osecs/1e6:5.2f} M | {counted/osecs/1e6:5.2f} M | "
      f"{us:6.3f} | {drops:8d} | {lost_dg:8d} ({100*lost_dg/max(odg,1):5.2f} %) | {rss:>5} MB |")
EOF
}

header() {
    echo "| daemon    | fmt   | asked   | offered/s | counted/s | CPU µs/rec | sock drops | datagrams lost | RSS |"
    echo "|-----------|-------|---------|-----------|-----------|------------|------------|----------------|-----|"
}

throughput() {  # NAME PID COUNTER NFPORT SFPORT
    local n=$1 pid=$2 cnt=$3 nf=$4 sf=$5
    for r in 1000000 3000000; do step "$n" "$pid" "$cnt" "$nf" v5 "$r" "$STEP"; done
    step "$n" "$pid" "$cnt" "$nf" v9 1000000 "$STEP"
    step "$n" "$pid" "$cnt" "$nf" ipfix 1000000 "$STEP"
    for r in 300000 1000000 3000000; do step "$n" "$pid" "$cnt" "$sf" sflow "$r" "$STEP"; done
    for r in 3000000; do step "$n" "$pid" "$cnt" "$nf" v9 "$r" "$STEP"; done
    for r in 3000000; do step "$n" "$pid" "$cnt" "$nf" ipfix "$r" "$STEP"; done
    if [ "$MODE" = full ] && [ "$SENDER" = loadgen ]; then
        step "$n" "$pid" "$cnt" "$nf" v5 3000000 60
        step "$n" "$pid" "$cnt" "$sf" sflow 1000000 60
    fi
}

sweep() {  # flowguard only: raise the rate until loss appears
    local n=$1 pid=$2 cnt=$3 port=$4 fmt=$5; shift 5
    for r in "$@"; do step "$n" "$pid" "$cnt" "$port" "$fmt" "$r" 5; done
}

# ---------------------------------------------------------------- detection latency
# Background traffic to 10 000 hosts (NetFlow 200 k records/s, sFlow 20 k samples/s at
# 1:1000); after 3 s one host gets a SYN flood in 5 % of the datagrams (1000 packets per
# NetFlow record; 1000 packets per sFlow sample), far above threshold_pps.
LAT=$WORK/latency
latency_fg() {  # FORMAT
    local fmt=$1 port out sent got
    local simlog=$WORK/sim.out
    "$BIN/mitigator-sim" --listen 127.0.0.1:0 --username admin --password s3cret > "$simlog" 2>/dev/null &
    local sim=$!; PIDS+=("$sim")
    local addr=""
    for _ in $(seq 1 50); do addr=$(sed -n 's/^listening on //p' "$simlog"); [ -n "$addr" ] && break; sleep 0.1; done
    start_flowguard "http://$addr" || return
    if [ "$fmt" = sflow ]; then port=$FG_SF; else port=$FG_NF; fi
    out=$("$BIN/flowguard-loadgen" --format "$fmt" --target "127.0.0.1:$port" --rate "$([ "$fmt" = sflow ] && echo 20000 || echo 200000)" --duration 6 \
        --attack-host 100.64.9.9 --attack-start 3 --attack-share 0.05 --attack-packets 1000 \
        --sampling-rate "$([ "$fmt" = sflow ] && echo 1000 || echo 1)" --cpu $GEN_CPU)
    sleep 1
    sent=$(echo "$out" | json '["attack_first_sent_unix"]')
    got=$(curl -s "http://$addr/sim/log" | python3 -c '
import json,sys
for r in json.load(sys.stdin):
    b = json.loads(r.get("body") or "null") if (r.get("body") or "").startswith("{") else {}
    if r["method"]=="PUT" and r["path"].endswith("toggle/switch") and b.get("switch")==1:
        print(r["time"]/1000); break')
    echo "flowguard $fmt $sent ${got:-none}" >> "$LAT"
    stop_pid "$FG_PID"; stop_pid "$sim"
}
latency_fnm() {
    local fmt=$1 port out sent got
    start_fnm || return
    if [ "$fmt" = sflow ]; then port=$FNM_SF; else port=$FNM_NF; fi
    out=$("$BIN/flowguard-loadgen" --format "$fmt" --target "127.0.0.1:$port" --rate "$([ "$fmt" = sflow ] && echo 20000 || echo 200000)" --duration 6 \
        --attack-host 100.64.9.9 --attack-start 3 --attack-share 0.05 --attack-packets 1000 \
        --sampling-rate "$([ "$fmt" = sflow ] && echo 1000 || echo 1)" --cpu $GEN_CPU)
    sleep 1
    sent=$(echo "$out" | json '["attack_first_sent_unix"]')
    got=$(awk '/ban/ {print $1; exit}' "$WORK/fnm/notify.log" 2>/dev/null)
    echo "fastnetmon $fmt $sent ${got:-none}" >> "$LAT"
    stop_pid "$FNM_PID"
}
latency_table() {
    python3 - "$LAT" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    d, f, s, g = line.split()
    rows.setdefault((d, f), []).append(None if g == "none" or s == "None" else float(g) - float(s))
print("| daemon | fmt | trials | detected | p50 s | min s | max s |")
print("|--------|-----|--------|----------|-------|-------|-------|")
for (d, f), v in sorted(rows.items()):
    ok = [x for x in v if x is not None]
    p50 = f"{statistics.median(ok):.2f}" if ok else "-"
    mn = f"{min(ok):.2f}" if ok else "-"
    mx = f"{max(ok):.2f}" if ok else "-"
    print(f"| {d} | {f} | {len(v)} | {len(ok)} | {p50} | {mn} | {mx} |")
EOF
}

# ---------------------------------------------------------------- main
echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
echo "flowguard $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), $(fastnetmon --version 2>&1 | head -1)"
echo "daemon on CPU $DAEMON_CPU, sender ($SENDER) on CPU $GEN_CPU; $STEP s per step; 10 000 hosts in 100.64.0.0/16; flowguard collector threads: $FG_THREADS"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
: > "$RESULTS"; : > "$LAT"
header
if [ -z "${FNM_ONLY:-}" ] && [ -z "${LATENCY_ONLY:-}" ]; then
    start_flowguard && {
        throughput flowguard "$FG_PID" fg_counted "$FG_NF" "$FG_SF"
        if [ "$MODE" = full ]; then
            sweep flowguard "$FG_PID" fg_counted "$FG_NF" v5 6000000 9000000 0
            sweep flowguard "$FG_PID" fg_counted "$FG_NF" v9 3000000 0
            sweep flowguard "$FG_PID" fg_counted "$FG_NF" ipfix 3000000 0
            sweep flowguard "$FG_PID" fg_counted "$FG_SF" sflow 2000000 0
        fi
        stop_pid "$FG_PID"
    }
fi
if [ -z "${FG_ONLY:-}" ] && [ -z "${LATENCY_ONLY:-}" ]; then
    start_fnm && {
        throughput fastnetmon "$FNM_PID" fnm_counted "$FNM_NF" "$FNM_SF"
        if [ "$MODE" = full ]; then
            sweep fastnetmon "$FNM_PID" fnm_counted "$FNM_NF" v5 0
            sweep fastnetmon "$FNM_PID" fnm_counted "$FNM_SF" sflow 0
        fi
        stop_pid "$FNM_PID"
    }
fi
echo
echo "asked 0 = as fast as the sender goes"
echo
for t in $(seq 1 "$TRIALS"); do
    for f in v5 sflow; do
        [ -z "${FNM_ONLY:-}" ] && latency_fg "$f"
        [ -z "${FG_ONLY:-}" ] && latency_fnm "$f"
    done
done
echo "raw (daemon fmt first-attack-sent detected):"; cat "$LAT"; echo
latency_table
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
