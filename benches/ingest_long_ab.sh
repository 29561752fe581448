#!/usr/bin/env bash
# Two `mvserve` binaries against each other on the long clips of `benches/ingest_long.sh` (run it
# once first: it generates them into $DIR): `mvserve probe` wall time (the whole process: read,
# demux, decode the sampled frames, preprocess, thumbnail) on the 30 s and 29 min 50 s clips in
# MP4, AVI and MKV, OLD and NEW alternating in the same run (the machine is shared: only same-run
# ratios mean anything), median of RUNS; checks that both sample the same timestamps.
#
# Usage: OLD=path/to/old/mvserve [NEW=target/release/mvserve] [DIR=...] benches/ingest_long_ab.sh [RUNS] [EXT...]
set -euo pipefail
cd "$(dirname "$0")/.."
new=${NEW:-target/release/mvserve}
old=${OLD:?set OLD to the baseline mvserve binary}
dir=${DIR:-target/bench-videos}
runs=${1:-3}
shift || true
exts=${*:-mp4 avi mkv}
out=$(mktemp)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$runs"); do
  for ext in $exts; do
    for secs in 30 1790; do
      for which in old new; do
        b=$old; [ "$which" = new ] && b=$new
        s=$(date +%s.%N)
        ts=$("$b" probe "$dir/long_${secs}s.$ext" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(",".join("%.3f" % x for x in r["sampled_timestamps"]) if r["ok"] else r["error"]["code"])' || true)
        e=$(date +%s.%N)
        echo "$ext $secs $which $(python3 -c "print($e - $s)") $ts" >>"$out"
      done
    done
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import statistics, sys
from collections import defaultdict
t, ts = defaultdict(list), defaultdict(set)
for line in open(sys.argv[1]):
    ext, secs, which, s, stamps = line.split()
    t[(ext, int(secs), which)].append(float(s))
    ts[(ext, int(secs))].add(stamps)
m = {k: statistics.median(v) for k, v in t.items()}
print("| container | length | old s | new s | new / old | old 30 min / 30 s | new 30 min / 30 s | same timestamps |")
print("|---|---|---|---|---|---|---|---|")
for ext in ("mp4", "avi", "mkv"):
    if (ext, 30, "old") not in m:
        continue
    for secs in (30, 1790):
        o, n = m[(ext, secs, "old")], m[(ext, secs, "new")]
        ro = m[(ext, 1790, "old")] / m[(ext, 30, "old")]
        rn = m[(ext, 1790, "new")] / m[(ext, 30, "new")]
        print(f"| {ext} | {secs // 60} min {secs % 60} s | {o:.2f} | {n:.2f} | {n / o:.2f}x | {ro:.2f}x | {rn:.2f}x | {len(ts[(ext, secs)]) == 1} |")
print("runs:", {f"{k[0]} {k[1]} {k[2]}": [round(x, 2) for x in v] for k, v in sorted(t.items())})
PY
rm -f "$out"
