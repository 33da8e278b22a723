#!/usr/bin/env bash
# Record loss with and without the hosts API called back to back (issue 15, item 3).
#
# flowguard runs with 100.0.0.0/8 protected and the default 1 M host cap; the load
# generator sends NetFlow v5 at RATE records/s (default 1 M) walking destinations over the
# /8, so the table holds ~1 M tracked hosts after the first seconds. Each trial runs WARM
# seconds to fill the table, then SECS measured seconds: "without" sends only; "with"
# also calls `GET /api/v1/hosts?top=1` back to back (one connection, for SECS). Loss =
# records the generator sent in the measured part − records flowguard counted
# (`flowguard_flow_records_total`), over sent. Socket drops are read from /proc/net/udp.
#
# Usage: benches/api-under-load.sh     (after cargo build --release --bins)
#        RATE=1000000 SECS=10 WARM=6 TRIALS=2 benches/api-under-load.sh
# Loopback only; every process is bounded by --duration or by the loop's deadline, and is
# stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RATE=${RATE:-1000000}
SECS=${SECS:-10}
WARM=${WARM:-6}
TRIALS=${TRIALS:-2}
. benches/bench-lib.sh

tracked() { curl -s "127.0.0.1:$API/metrics" | awk '/^flowguard_tracked_hosts / {print $2}'; }

trial() { # $1 = with|without
  API=$(free_port SOCK_STREAM); NF=$(free_port SOCK_DGRAM)
  cat >"$work/fg.toml" <<EOF
[api]
listen = "127.0.0.1:$API"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:$NF"
[networks]
protected = ["100.0.0.0/8"]
[[hostgroup]]
name = "default"
threshold_pps = 100000000
[state]
dir = "$work/state"
EOF
  "$BIN/flowguard" run --config "$work/fg.toml" --log-level warn 2>"$work/fg.log" & local fg=$!; pids+=($fg)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$API/healthz" >/dev/null && break; sleep 0.1; done
  # Fill the table first (its own bounded run), then measure.
  "$BIN/flowguard-loadgen" --format v5 --target "127.0.0.1:$NF" --rate "$RATE" --duration "$WARM" \
      --walk-prefix --prefix 100.0.0.0/8 --seed 1 >/dev/null
  sleep 1.5
  local t0 c0 d0 calls=0 slow=0
  t0=$(tracked); c0=$(counted); d0=$(sock_drops)
  "$BIN/flowguard-loadgen" --format v5 --target "127.0.0.1:$NF" --rate "$RATE" --duration "$SECS" \
      --walk-prefix --prefix 100.0.0.0/8 --seed 2 >"$work/gen.json" & local gen=$!; pids+=($gen)
  if [ "$1" = with ]; then
    # One curl per 50 calls, on one kept-alive connection, at nice 19: the calls are
    # back to back, but the client's own CPU (a curl loop takes ~85 % of a core here) only
    # gets what flowguard and the sender leave, as if it ran on another machine. What
    # flowguard spends answering is not niced: that is what this measures.
    local end=$(( $(date +%s) + SECS )) urls=()
    for _ in $(seq 50); do urls+=("127.0.0.1:$API/api/v1/hosts?top=1"); done
    : >"$work/times"
    while [ "$(date +%s)" -lt "$end" ]; do
      nice -n 19 curl -s --max-time 5 -w '%{stderr}%{time_total}\n' "${urls[@]}" >/dev/null 2>>"$work/times" || true
    done
    calls=$(wc -l <"$work/times")
    slow=$(sort -g "$work/times" | tail -1)
  fi
  wait "$gen"
  sleep 1.5   # let the collector drain its socket
  local c1 d1 sent
  c1=$(counted); d1=$(sock_drops)
  sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records"])' "$work/gen.json")
  kill "$fg"; wait "$fg" 2>/dev/null || true
  python3 - "$1" "$sent" "$c0" "$c1" "$t0" "$calls" "$slow" "$d0" "$d1" <<'PY'
import sys
mode, sent, c0, c1, t0, calls, slow, d0, d1 = sys.argv[1:]
sent, got = int(sent), int(c1) - int(c0)
lost = sent - got
print(f"{mode:8s} sent {sent:>10d} counted {got:>10d} lost {lost:>9d} ({100*lost/max(sent,1):6.3f} %) "
      f"tracked {t0:>8s} api calls {calls:>5s} slowest {float(slow):.3f} s sock drops {int(d1 or 0)-int(d0 or 0)}")
PY
}

echo "rate $RATE rec/s, $SECS s measured after $WARM s fill, $TRIALS trials each; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$TRIALS"); do
  trial without
  trial with
done
