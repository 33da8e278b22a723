# Sourced by the bench scripts: `send FORMAT HOST:PORT RATE SECONDS` runs the chosen
# sender ($SENDER: loadgen = flowguard-loadgen, flowsend = ../shared/tools/flowsend.c
# built with gcc -O2 into a temp dir) pinned to $GEN_CPU, 10 000 destinations in
# 100.64.0.0/16, and prints one JSON line: records, datagrams, seconds,
# records_per_datagram. Needs $BIN, $WORK, $GEN_CPU, $SHARED; loopback targets only.
SENDER=${SENDER:-loadgen}
if [ "$SENDER" = flowsend ]; then
    FLOWSEND_SRC=${FLOWSEND_SRC:-$SHARED/tools/flowsend.c}
    [ -f "$FLOWSEND_SRC" ] || { echo "flowsend.c not found at $FLOWSEND_SRC (set SHARED or FLOWSEND_SRC)" >&2; exit 1; }
    FLOWSEND=$WORK/flowsend
    gcc -O2 -Wall -o "$FLOWSEND" "$FLOWSEND_SRC" || exit 1
fi

send() {  # FORMAT HOST:PORT RATE SECONDS
    local fmt=$1 target=$2 rate=$3 secs=$4
    if [ "$SENDER" = flowsend ]; then
        local mode
        case $fmt in v5) mode=nf5;; v9) mode=nf9;; ipfix) mode=ipfix;; sflow) mode=sflow;; *) echo "bad format $fmt" >&2; return 1;; esac
        # flowsend caps a run at 20 s. sFlow: 1-in-1 sampling, so records = packets.
        taskset -c "$GEN_CPU" "$FLOWSEND" -m "$mode" -d "${target%:*}" -p "${target##*:}" -r "$rate" \
            -t "$secs" -n 10000 -a 100.64.0.0 -s 1 |
            python3 -c '
import json, sys
kv = dict(p.split("=", 1) for p in sys.stdin.read().split())
print(json.dumps({"records": int(kv["sent_records"]), "datagrams": int(kv["sent_dgrams"]),
                  "seconds": float(kv["elapsed"]), "records_per_datagram": int(kv["recs_per_dgram"]),
                  "template_datagrams": int(kv.get("template_dgrams", 0))}))'
    else
        "$BIN/flowguard-loadgen" --format "$fmt" --target "$target" --rate "$rate" \
            --duration "$secs" --hosts 10000 --prefix 100.64.0.0/16 --cpu "$GEN_CPU"
    fi
}

# records_per_datagram of a send's JSON file.
sender_records_per_datagram() {
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['records_per_datagram'])" "$1"
}
