# Sourced by the loopback bench scripts (api-under-load.sh, collector-threads.sh,
# soak.sh): a temp dir in $work, the PIDs they start in $pids (stopped by PID and the dir
# removed on exit), and helpers for flowguard's API on 127.0.0.1:$API and its NetFlow
# collector on 127.0.0.1:$NF.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A free loopback port: free_port SOCK_STREAM | SOCK_DGRAM.
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
# Records flowguard counted (`flowguard_flow_records_total`, all series).
counted() { curl -s "127.0.0.1:$API/metrics" | awk '/^flowguard_flow_records_total/ {s+=$2} END {printf "%d\n", s}'; }
# Kernel drops of the collector's sockets on $NF (last column of /proc/net/udp), summed:
# `threads` (default one per core) binds one socket per thread.
sock_drops() { awk -v p=":$(printf '%04X' "$NF")" '$2 ~ p"$" {s+=$NF} END {print s+0}' /proc/net/udp; }
