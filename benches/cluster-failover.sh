#!/usr/bin/env bash
# Cluster failover times over KILLS kill -9 (issue 16): a three-server NATS JetStream
# cluster on loopback, one collector (A) and two detector+controller nodes (C, D) on the
# defaults (`heartbeat_interval_ms` 750, `lease_ttl_ms` 3000), and mitigator-sim.
#
# Each round kills the controller leader with SIGKILL. It is a detector too, so one kill
# times both takeovers, read from the survivor's own metrics every 50 ms:
# - detector: until `flowguard_cluster_partitions_owned` is all partitions;
# - controller: until `flowguard_cluster_controller_leader` is 1.
# Then the killed node is started again and the round waits until both nodes hold
# partitions. Loopback only; every process is this script's and is killed by its PID.
#
# Usage: benches/cluster-failover.sh [KILLS]     (default 10)
# Environment: KEEP=1 keeps the work directory (configs, logs); BIN (default
#   target/release; built if missing).
set -u
KILLS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
PARTS=64
WORK=$(mktemp -d /tmp/fg-failover.XXXXXX)
. "$ROOT/benches/cluster-lib.sh" || exit 1

now_ms() { date +%s%3N; }
metric() { curl -s --max-time 1 "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# NATS: three servers, routes between them, JetStream in the work dir.
start_nats || exit 1
start_sim || exit 1

declare -A API PID
start() { # NAME ROLES
    local api=${API[$1]:-127.0.0.1:$(free_tcp)}; API[$1]=$api
    {
        printf '[api]\nlisten = "%s"\n' "$api"
        case "$2" in *collector*) printf '[[collector]]\nprotocol = "netflow"\nlisten = "127.0.0.1:0"\n';; esac
        printf '[networks]\nprotected = ["127.16.0.0/16"]\n'
        case "$2" in *controller*) printf '[mitigator]\nurl = "http://%s"\nusername = "admin"\npassword = "pw"\n' "$SIM";; esac
        printf '[state]\ndir = "%s"\n' "$WORK/$1-state"
        printf '[cluster]\nnats_urls = %s\nnode_id = "%s"\nroles = %s\npartitions = %d\n' "$URLS" "$1" "$2" $PARTS
    } > "$WORK/$1.toml"
    "$BIN/flowguard" run --config "$WORK/$1.toml" >> "$WORK/$1.log" 2>&1 & PID[$1]=$!; PIDS+=($!)
}
balanced() { # both detectors hold partitions, one of them leads
    local c d l
    c=$(metric "${API[C]}" flowguard_cluster_partitions_owned); d=$(metric "${API[D]}" flowguard_cluster_partitions_owned)
    l=$(( $(metric "${API[C]}" flowguard_cluster_controller_leader | cut -d. -f1 || echo 0) + $(metric "${API[D]}" flowguard_cluster_controller_leader | cut -d. -f1 || echo 0) ))
    [ -n "$c" ] && [ -n "$d" ] && [ "${c%.*}" -gt 0 ] && [ "${d%.*}" -gt 0 ] && [ $(( ${c%.*} + ${d%.*} )) = $PARTS ] && [ "$l" = 1 ]
}
start A '["collector"]'
start C '["detector", "controller"]'
start D '["detector", "controller"]'

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
echo "flowguard $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); $KILLS kills; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| kill | killed | detector takeover ms | controller takeover ms |"
echo "|------|--------|----------------------|------------------------|"
DET=(); CTL=()
for k in $(seq 1 "$KILLS"); do
    for _ in $(seq 600); do balanced && break; sleep 0.1; done
    balanced || { echo "cluster not balanced before kill $k"; tail -5 "$WORK"/C.log "$WORK"/D.log; exit 1; }
    sleep 2 # a few renewals in the steady state, so the kill lands anywhere in a round
    if [ "$(metric "${API[C]}" flowguard_cluster_controller_leader)" = 1 ]; then v=C s=D; else v=D s=C; fi
    t0=$(now_ms); kill -9 "${PID[$v]}"; wait "${PID[$v]}" 2>/dev/null
    det="" ctl=""
    while [ -z "$det" ] || [ -z "$ctl" ]; do
        t=$(( $(now_ms) - t0 ))
        [ $t -gt 30000 ] && break
        [ -z "$det" ] && [ "$(metric "${API[$s]}" flowguard_cluster_partitions_owned)" = $PARTS ] && det=$t
        [ -z "$ctl" ] && [ "$(metric "${API[$s]}" flowguard_cluster_controller_leader)" = 1 ] && ctl=$t
        sleep 0.05
    done
    echo "| $k | $v | ${det:-none in 30 s} | ${ctl:-none in 30 s} |"
    DET+=("${det:-30000}"); CTL+=("${ctl:-30000}")
    start "$v" '["detector", "controller"]'
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %d, median %d, max %d ms", a[1], a[int((NR+1)/2)], a[NR]}'; }
echo
echo "detector takeover: $(stats "${DET[@]}"); controller takeover: $(stats "${CTL[@]}")"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
