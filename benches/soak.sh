#!/usr/bin/env bash
# Soak: mixed traffic with attacks starting and ending, for SOAK_SECONDS (default 600),
# against `flowguard run` + `mitigator-sim` on loopback. Checks for leaks (RSS over time)
# and for missed or duplicated mitigation calls (every attack: exactly one policy-on and
# one policy-off). Not part of CI (it takes 10 minutes); its figures go in README.md.
#
# Usage: benches/soak.sh            (after cargo build --release --bins)
# Traffic goes only to 127.0.0.1; every loadgen run is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SECS=${SOAK_SECONDS:-600}
CYCLE=40            # seconds per cycle: 20 s with an attack, 20 s without
RATE=${SOAK_RATE:-200000}
. benches/bench-lib.sh
API=$(free_port SOCK_STREAM); NF=$(free_port SOCK_DGRAM); SF=$(free_port SOCK_DGRAM)

"$BIN/mitigator-sim" --listen 127.0.0.1:0 --username soak --password soak >"$work/sim.out" 2>&1 & pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/sim.out" && break; sleep 0.1; done
SIM=$(sed -n 's/^listening on //p' "$work/sim.out" | head -1)

cat >"$work/fg.toml" <<EOF
[api]
listen = "127.0.0.1:$API"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:$NF"
[[collector]]
protocol = "sflow"
listen = "127.0.0.1:$SF"
[networks]
protected = ["100.64.0.0/16"]
[aggregate]
max_tracked_hosts = 200000
[[hostgroup]]
name = "default"
threshold_pps = 20000
ban_time_seconds = 5
[mitigator]
url = "http://$SIM"
username = "soak"
password = "soak"
[state]
dir = "$work/state"
EOF
"$BIN/flowguard" run --config "$work/fg.toml" --log-level warn 2>"$work/fg.log" & FG=$!; pids+=($FG)
for _ in $(seq 100); do curl -sf "127.0.0.1:$API/healthz" >/dev/null && break; sleep 0.1; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$FG/status"; }
puts() { curl -s "$SIM/sim/log" | python3 -c '
import json,sys
log=json.load(sys.stdin); on=off=0
for r in log:
    if r["method"]=="PUT" and r["path"].endswith("toggle/switch"):
        v=json.loads(r["body"] or "{}").get("switch")
        on+= v==1; off+= v==0
print(on, off)'; }

formats=(v5 v9 ipfix sflow)
kinds=(syn udp)
cycles=$(( SECS / CYCLE ))
printf "%5s %6s %6s %9s %9s %9s %10s\n" cycle format attack rss_kB attacks policy_on policy_off
rss0=""
for c in $(seq 1 "$cycles"); do
  f=${formats[$(( (c-1) % 4 ))]}; k=${kinds[$(( (c-1) % 2 ))]}
  port=$NF; [ "$f" = sflow ] && port=$SF
  host="100.64.$(( c % 200 + 1 )).1"
  "$BIN/flowguard-loadgen" --format "$f" --target "127.0.0.1:$port" --rate "$RATE" --duration 20 \
      --hosts 10000 --attack-host "$host" --attack-kind "$k" --attack-share 0.3 --seed "$c" >/dev/null
  "$BIN/flowguard-loadgen" --format "$f" --target "127.0.0.1:$port" --rate "$RATE" --duration 20 \
      --hosts 10000 --seed "$c" >/dev/null
  r=$(rss); [ -n "$rss0" ] || rss0=$r
  n=$(curl -s "127.0.0.1:$API/api/v1/attacks" | python3 -c 'import json,sys; a=json.load(sys.stdin); print(len(a["active"])+len(a["recent"]))')
  read -r on off < <(puts)
  printf "%5d %6s %6s %9s %9s %9s %10s\n" "$c" "$f" "$k" "$r" "$n" "$on" "$off"
done
sleep 12   # the last attack's ban time and window
read -r on off < <(puts)
n=$(curl -s "127.0.0.1:$API/api/v1/attacks" | python3 -c 'import json,sys; a=json.load(sys.stdin); print(len(a["recent"]), len(a["active"]))')
r=$(rss)
echo "end: attacks ended/active: $n; policy on $on, off $off; RSS first cycle ${rss0} kB, end ${r} kB"
curl -s "127.0.0.1:$API/metrics" | grep -E '^flowguard_(socket_receive_drops|queue_full_drops_total|attack_events_dropped_total|host_evictions_total|tracked_hosts)' || true
ok=1
[ "$on" -eq "$cycles" ] || { echo "FAIL: $on policy-on calls for $cycles attacks"; ok=0; }
[ "$off" -eq "$cycles" ] || { echo "FAIL: $off policy-off calls for $cycles attacks"; ok=0; }
[ "$r" -le $(( rss0 * 3 / 2 + 10240 )) ] || { echo "FAIL: RSS grew from $rss0 kB to $r kB"; ok=0; }
[ $ok -eq 1 ] && echo "soak: PASS" || { echo "soak: FAIL (flowguard log: $work/fg.log)"; trap - EXIT; exit 1; }
