#!/usr/bin/env bash
# Rebuilds the committed seed corpora under fuzz/corpus/<target>/ from the shared test
# vectors (real exporter captures), the FastNetMon reference reports and the bundled
# configuration. Needs tshark and python3. Usage: fuzz/seed-corpus.sh [VECTORS_DIR] [REF_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
vectors=${1:-$root/../shared/vectors}
ref=${2:-$root/../shared/reference}
# `../shared` sits next to the repository; no machine's absolute path is assumed.
for d in "$vectors" "$ref"; do
    [ -d "$d" ] || { echo "seed-corpus: $d not found (pass VECTORS_DIR REF_DIR)" >&2; exit 2; }
done
corpus=$here/corpus
rm -rf "$corpus"
mkdir -p "$corpus"/{netflow,sflow,fastnetmon_report,config}

payloads() { tshark -r "$1" -T fields -e udp.payload 2>/dev/null | grep -v '^$'; }

for v in 5 9 10; do
    payloads "$vectors/v-softflowd-nf$v.pcap" >"$corpus/.nf$v.hex"
done
payloads "$vectors/v-pmacctd-sflow.pcap" >"$corpus/.sflow.hex"

python3 - "$corpus" <<'PY'
import os, sys, struct
corpus = sys.argv[1]
def frame(sel, p):
    # The netflow target's framing: [exporter selector][u16 BE length][payload].
    return bytes([sel]) + struct.pack(">H", len(p)) + p
for v in (5, 9, 10):
    dgs = [bytes.fromhex(l.strip()) for l in open(f"{corpus}/.nf{v}.hex")]
    # The first datagram of a softflowd capture carries the templates (v9/IPFIX).
    first = dgs[0]
    step = max(1, len(dgs) // 40)
    for n, i in enumerate(range(0, len(dgs), step)):
        chunk = dgs[i:i + 3]
        seed = frame(0, first) + b"".join(frame(0, d) for d in chunk)
        open(f"{corpus}/netflow/nf{v}-{n:03}", "wb").write(seed)
    # Data without its template, from another exporter.
    open(f"{corpus}/netflow/nf{v}-orphan", "wb").write(frame(1, dgs[-1]))
dgs = [bytes.fromhex(l.strip()) for l in open(f"{corpus}/.sflow.hex")]
step = max(1, len(dgs) // 60)
for n, i in enumerate(range(0, len(dgs), step)):
    open(f"{corpus}/sflow/sflow-{n:03}", "wb").write(b"\x00" + dgs[i])
PY
rm -f "$corpus"/.*.hex

# FastNetMon reports: each notify call's stdin from the captured 1.2.4 runs, and the
# whole files.
python3 - "$corpus/fastnetmon_report" "$ref"/fastnetmon-1.2.4-notify-*.txt <<'PY'
import sys
out, files = sys.argv[1], sys.argv[2:]
n = 0
for f in files:
    text = open(f).read()
    open(f"{out}/whole-{n:03}", "w").write(text); n += 1
    block = None
    for line in text.splitlines(keepends=True):
        if line.startswith("=== ") and "ARGS" in line:
            block = []
        elif line.startswith("=== END"):
            if block:
                open(f"{out}/report-{n:03}", "w").write("".join(block)); n += 1
            block = None
        elif block is not None:
            block.append(line)
PY

# Configs: the bundled layout, one file each and all merged, plus a mitigator section.
i=0
for f in "$root"/collectors/*.toml "$root"/thresholds/*.toml; do
    cp "$f" "$corpus/config/layout-$i.toml"; i=$((i + 1))
done
cat "$root"/collectors/*.toml "$root"/thresholds/*.toml >"$corpus/config/merged.toml"
cat >"$corpus/config/mitigator.toml" <<'TOML'
[api]
listen = "127.0.0.1:9909"
token = "t0ken"
max_body_bytes = 65536

[[collector]]
protocol = "netflow"
listen = "127.0.0.1:2055"
allowed_exporters = ["192.0.2.0/24", "2001:db8::/32"]
exporter_sampling_rate = { "192.0.2.1" = 100 }

[networks]
protected = ["203.0.113.0/24"]

[[hostgroup]]
name = "default"
threshold_pps = 1000
threshold_mbps = 100

[mitigator]
url = "https://127.0.0.1:8443"
username = "admin"
password = "hunter2-secret"
default_policy = 3
policy_by_prefix = { "203.0.113.0/25" = 5 }
countermeasures = { udp_flood = ["sorb", "acl"] }
TOML
for t in netflow sflow fastnetmon_report config; do
    echo "$t: $(ls "$corpus/$t" | wc -l) files, $(du -sk "$corpus/$t" | cut -f1) KiB"
done
