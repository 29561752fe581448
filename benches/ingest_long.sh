#!/usr/bin/env bash
# Ingest time against video length: `mvserve probe` (detect, demux, decode the sampled frames,
# preprocess 12 frames to 224 px, thumbnail) on generated clips of 30 s, 10 min and 29 min 50 s (just inside the default 30-minute limit), each
# with the seeking decoder (default) and with `--sequential` (every frame up to the last sampled
# one: the decoder before issue 13), same run, median of RUNS.
#
# Clips: ffmpeg's testsrc2 at 640x360, 25 fps, H.264 through libx264 (superfast, a key frame every
# 2 s, 3 B-frames), in MP4 (in-process demuxer + OpenH264), in AVI (same stream, in-process, idx1)
# and in MKV (same stream, through the ffmpeg program). Generated once into $DIR (default
# target/bench-videos; the 30-minute one takes a few minutes to encode).
#
# Usage: benches/ingest_long.sh [RUNS]     needs ffmpeg with libx264
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${DIR:-target/bench-videos}
mkdir -p "$dir"
cargo build --release -q
bin=./target/release/mvserve

for secs in 30 600 1790; do
  f="$dir/long_${secs}s.mp4"
  if [ ! -s "$f" ]; then
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=640x360:rate=25" -t "$secs" \
      -c:v libx264 -preset superfast -g 50 -keyint_min 50 -sc_threshold 0 -bf 3 \
      -pix_fmt yuv420p -crf 28 "$f.tmp.mp4"
    mv "$f.tmp.mp4" "$f"
  fi
  for ext in avi mkv; do
    g="$dir/long_${secs}s.$ext"
    [ -s "$g" ] || { ffmpeg -v error -y -i "$f" -c copy "$g.tmp.$ext" && mv "$g.tmp.$ext" "$g"; }
  done
done

# Prints "seconds frames_decoded decoder" of one probe (wall time of the whole process).
probe() {
  local start end out
  start=$(date +%s.%N)
  out=$("$bin" probe "$@" || true)
  end=$(date +%s.%N)
  # A refused video (over the 60 s wall-time limit) prints its error code in place of the frames.
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); t=float(sys.argv[3])-float(sys.argv[2]); print(t, r.get("frames_decoded"), r["info"]["decoder"], ",".join("%.3f" % x for x in r["sampled_timestamps"])) if r["ok"] else print(t, r["error"]["code"], "-", "-")' "$out" "$start" "$end"
}

echo "machine: $(nproc) cores, shared with other builds; median of $runs runs"
results=$(mktemp)
for ext in mp4 avi mkv; do
  for secs in 30 600 1790; do
    f="$dir/long_${secs}s.$ext"
    for mode in seek sequential; do
      flag=""; [ "$mode" = sequential ] && flag="--sequential"
      for _ in $(seq "$runs"); do
        echo "$ext $secs $mode $(probe "$f" $flag)" >>"$results"
      done
    done
  done
done
python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
meta, stamps = {}, {}
for line in open(sys.argv[1]):
    ext, secs, mode, t, frames, decoder, ts = line.split()
    rows[(ext, int(secs), mode)].append(float(t))
    meta[(ext, int(secs), mode)] = (frames, decoder)
    if ts != "-":  # a refused run (timed out) has no timestamps to compare
        stamps.setdefault((ext, int(secs)), set()).add(ts)
med = {k: statistics.median(v) for k, v in rows.items()}
print("| container | decoder | length | seek s | frames decoded | sequential s | frames decoded | sequential / seek | seek vs 30 s |")
print("|---|---|---|---|---|---|---|---|---|")
for ext in ("mp4", "avi", "mkv"):
    for secs in (30, 600, 1790):
        s, q = med[(ext, secs, "seek")], med[(ext, secs, "sequential")]
        base = med[(ext, 30, "seek")]
        same = "" if len(stamps.get((ext, secs), ())) <= 1 else " (TIMESTAMPS DIFFER)"
        print(f"| {ext} | {meta[(ext, secs, 'seek')][1]} | {secs // 60} min {secs % 60} s | {s:.2f} | {meta[(ext, secs, 'seek')][0]} | {q:.2f} | {meta[(ext, secs, 'sequential')][0]} | {q / s:.1f}x | {s / base:.2f}x{same} |")
PY
rm -f "$results"
