# Sourced by the cluster bench scripts: loopback helpers, a three-server NATS JetStream
# cluster and a mitigator-sim. Needs $ROOT, $BIN and $WORK. Sets PIDS (every process the
# script starts goes in it) and a trap that kills them by PID on exit and removes $WORK
# (KEEP=1 keeps it); builds the binaries if missing. `start_nats CPU` and `start_sim CPU`
# pin with taskset to CPU (any CPU when empty); they set URLS and SIM.
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM
command -v nats-server >/dev/null || { echo "nats-server not installed"; return 1; }
[ -x "$BIN/flowguard" ] && [ -x "$BIN/mitigator-sim" ] || (cd "$ROOT" && cargo build --release --bins) || return 1
free_tcp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# Run as `pinned CPU cmd... &`: the exec makes the background job's $! the command's own
# PID (a plain function call would leave the command a child of a subshell, which the
# cleanup's kill by PID would not reach).
pinned() { local cpu=$1; shift; if [ -n "$cpu" ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi; }

start_nats() {
    local cpu=${1:-} i j routes
    local -a cport rport mport
    for i in 0 1 2; do cport[$i]=$(free_tcp); rport[$i]=$(free_tcp); mport[$i]=$(free_tcp); done
    URLS=""
    for i in 0 1 2; do
        routes=""
        for j in 0 1 2; do [ $j = $i ] || routes="$routes\"nats://127.0.0.1:${rport[$j]}\","; done
        mkdir -p "$WORK/n$i"
        cat > "$WORK/n$i.conf" <<EOC
server_name: n$i
listen: 127.0.0.1:${cport[$i]}
http: 127.0.0.1:${mport[$i]}
jetstream { store_dir: "$WORK/n$i", max_memory_store: 268435456, max_file_store: 1073741824 }
cluster { name: fgbench, listen: 127.0.0.1:${rport[$i]}, routes: [${routes%,}] }
EOC
        pinned "$cpu" nats-server -c "$WORK/n$i.conf" > "$WORK/n$i.log" 2>&1 & PIDS+=($!)
        URLS="$URLS\"nats://127.0.0.1:${cport[$i]}\","
    done
    URLS="[${URLS%,}]"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${mport[0]}/jsz" | python3 -c 'import json,sys; m=json.load(sys.stdin).get("meta_cluster") or {}; sys.exit(0 if m.get("leader") and m.get("cluster_size") == 3 else 1)' 2>/dev/null && return 0
        sleep 0.2
    done
    echo "NATS cluster did not form: $(tail -2 "$WORK/n0.log")" >&2
    return 1
}

start_sim() {
    pinned "${1:-}" "$BIN/mitigator-sim" --listen 127.0.0.1:0 --username admin --password pw > "$WORK/sim.out" 2>&1 & PIDS+=($!)
    SIM=""
    for _ in $(seq 50); do SIM=$(sed -n 's/^listening on //p' "$WORK/sim.out"); [ -n "$SIM" ] && return 0; sleep 0.1; done
    echo "mitigator-sim did not start" >&2
    return 1
}
