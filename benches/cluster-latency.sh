#!/usr/bin/env bash
# What cluster mode costs (issue 16): the detection latency it adds over a single node,
# and the collector's CPU per record with cluster publishing against a standalone node's.
#
# One machine: a three-server NATS JetStream cluster on loopback, collectors A and B, one
# detector+controller C (defaults), mitigator-sim, and a standalone node S with the same
# thresholds.
#
# 1. Latency, TRIALS floods: each to a new victim, 30 000 pps (3 × the threshold) for 4 s,
#    NetFlow v5 datagrams built here, each sent to S and to A or B in turn (so the
#    cluster's sums are S's) from one loop at the same instants. Added latency = the time
#    of C's "cluster attack event ... start" log line minus S's "attack started" line for
#    the same victim. Both cross the threshold in the same second (same per-second
#    counts), so the difference is the merge wait plus the event's way out.
# 2. Publishing overhead: flowsend (../shared/tools/flowsend.c, gcc -O2) at RATE v5
#    records/s for 10 s to S, then to A; each pinned to CPU 0, everything else on CPU 1.
#    CPU = utime + stime of the receiver over the run; records = its
#    flowguard_flow_records_total.
#
# Usage: benches/cluster-latency.sh [TRIALS] [RATE]     (defaults 20, 300000)
# Environment: KEEP=1 keeps the work directory (configs, logs); BIN (default
#   target/release; built if missing), SHARED.
set -u
TRIALS=${1:-20}
RATE=${2:-300000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd)}
BIN=${BIN:-$ROOT/target/release}
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/fg-latency.XXXXXX)
. "$ROOT/benches/cluster-lib.sh" || exit 1
gcc -O2 -o "$WORK/flowsend" "$SHARED/tools/flowsend.c" || exit 1

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
records() { curl -s "http://$1/metrics" | awk '/^flowguard_flow_records_total/ {s+=$NF} END {printf "%d", s}'; }

start_nats 1 || exit 1
start_sim 1 || exit 1

declare -A API PID NF
start() { # NAME ROLES|standalone CPU
    API[$1]=127.0.0.1:$(free_tcp); NF[$1]=$(free_udp)
    {
        printf '[api]\nlisten = "%s"\n' "${API[$1]}"
        case "$2" in *collector*|standalone) printf '[[collector]]\nprotocol = "netflow"\nlisten = "127.0.0.1:%s"\nthreads = 1\n' "${NF[$1]}";; esac
        printf '[networks]\nprotected = ["127.16.0.0/16", "100.64.0.0/16"]\n'
        printf '[[hostgroup]]\nname = "default"\nprefixes = ["127.16.0.0/16"]\nthreshold_pps = 10000\nthreshold_mbps = 100000\nban_time_seconds = 5\n'
        printf '[[hostgroup]]\nname = "load"\nprefixes = ["100.64.0.0/16"]\nthreshold_pps = 100000000\nthreshold_mbps = 1000000\n'
        case "$2" in *controller*) printf '[mitigator]\nurl = "http://%s"\nusername = "admin"\npassword = "pw"\n' "$SIM";; esac
        printf '[state]\ndir = "%s"\n' "$WORK/$1-state"
        [ "$2" = standalone ] || printf '[cluster]\nnats_urls = %s\nnode_id = "%s"\nroles = %s\n' "$URLS" "$1" "$2"
    } > "$WORK/$1.toml"
    "$BIN/flowguard" check-config --config "$WORK/$1.toml" > "$WORK/$1.check" 2>&1 || { cat "$WORK/$1.check"; exit 1; }
    taskset -c "$3" "$BIN/flowguard" run --config "$WORK/$1.toml" >> "$WORK/$1.log" 2>&1 & PID[$1]=$!; PIDS+=($!)
}
start S standalone 0
start A '["collector"]' 0
start B '["collector"]' 1
start C '["detector", "controller"]' 1
formed=""
for _ in $(seq 300); do
    curl -s "http://${API[C]}/api/v1/cluster" | python3 -c '
import json, sys
j = json.load(sys.stdin)
sys.exit(0 if len(j.get("members", [])) == 3 and len(j.get("partition_owners", {})) == 64 and j.get("controller_leader") else 1)' 2>/dev/null && { formed=1; break; }
    sleep 0.2
done
[ -n "$formed" ] || { echo "cluster did not form in 60 s: $(curl -s "http://${API[C]}/api/v1/cluster" | head -c 600)"; exit 1; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
echo "flowguard $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## Added detection latency, $TRIALS floods"
taskset -c 1 python3 - "$TRIALS" "${NF[S]}" "${NF[A]}" "${NF[B]}" <<'PY'
import socket, struct, sys, time
trials, ps, pa, pb = (int(x) for x in sys.argv[1:])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
seq = 0
def dgram(victim, k):
    global seq
    up = int(time.monotonic() * 1000) & 0xFFFFFFFF
    now = time.time()
    h = struct.pack("!HHIIIIBBH", 5, 30, up, int(now), int((now % 1) * 1e9), seq, 0, 0, 0)
    seq += 30
    recs = b"".join(struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH",
        socket.inet_aton("198.51.100.%d" % (1 + (k * 30 + j) % 250)), socket.inet_aton(victim),
        b"\0" * 4, 0, 0, 20, 20 * 60, up, up, 1024 + j, 53, 0, 0, 17, 0, 0, 0, 0, 0, 0)
        for j in range(30))
    return h + recs
for t in range(trials):
    victim = "127.16.1.%d" % (10 + t)
    t0 = time.monotonic()
    for k in range(200):  # 50 datagrams/s × 30 records × 20 packets = 30 000 pps, 4 s
        due = t0 + k / 50
        while time.monotonic() < due: time.sleep(0.001)
        d = dgram(victim, k)
        s.sendto(d, ("127.0.0.1", ps))
        s.sendto(d, ("127.0.0.1", pa if k % 2 == 0 else pb))
    time.sleep(2 + (t % 7) * 0.13)  # vary the flood's phase against the second boundary
PY
sleep 3
python3 - "$WORK/S.log" "$WORK/C.log" <<'PY'
import re, sys
from datetime import datetime
def starts(path, pat):
    out = {}
    for l in open(path, errors="replace"):
        if re.search(pat, l):
            m = re.search(r"ip=(\S+)", l)
            ts = datetime.fromisoformat(l.split()[0].replace("Z", "+00:00"))
            if m and m.group(1) not in out: out[m.group(1)] = ts
    return out
s = starts(sys.argv[1], r"attack started")
c = starts(sys.argv[2], r"cluster attack event.*event=\"?start")
d = sorted((c[ip] - s[ip]).total_seconds() * 1000 for ip in s if ip in c)
print(f"victims: {len(s)} started on the single node, {len(c)} in the cluster, {len(d)} on both")
if d:
    q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
    print("added latency ms: " + ", ".join(f"{x:.0f}" for x in d))
    print(f"p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms (of {len(d)}), min {d[0]:.0f}, max {d[-1]:.0f}")
PY

echo
echo "## Collector CPU per record, $RATE v5 records/s for 10 s (flowsend, 10 000 hosts)"
echo "| receiver | records | CPU s | µs/record | records/s per core |"
echo "|---|---|---|---|---|"
for n in S A; do
    r0=$(records "${API[$n]}"); c0=$(cpu_ticks "${PID[$n]}")
    taskset -c 1 "$WORK/flowsend" -m nf5 -d 127.0.0.1 -p "${NF[$n]}" -r "$RATE" -t 10 -n 10000 -a 100.64.0.0 > /dev/null
    sleep 2
    r1=$(records "${API[$n]}"); c1=$(cpu_ticks "${PID[$n]}")
    python3 -c "
import sys
n, cpu = $r1 - $r0, ($c1 - $c0) / $HZ
print(f\"| $n ({'standalone' if '$n' == 'S' else 'cluster collector'}) | {n} | {cpu:.2f} | {cpu * 1e6 / n if n else float('nan'):.3f} | {n / cpu if cpu else float('nan'):,.0f} |\")"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
