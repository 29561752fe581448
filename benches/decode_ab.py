"""A/B of the decode stage alone: `mvserve probe` of the six ingest clips (ingest_e2e.py's CLIPS)
with two binaries, alternating per clip (order flipped every pass), so both see the same load.

Prints, per binary, the mean wall time of the probe process, the mean in-process load time
(`elapsed_ms`: read, demux, decode, preprocess, thumbnail) and the pictures decoded per pass.

Usage: python3 benches/decode_ab.py --a OLD_BIN --b NEW_BIN [--passes 5]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_e2e import CLIPS, ROOT  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--passes", type=int, default=5)
    a = ap.parse_args()
    bins = {"A": a.a, "B": a.b}
    wall = {"A": 0.0, "B": 0.0}
    inproc = {"A": 0.0, "B": 0.0}
    decoded = {"A": 0, "B": 0}
    for p in range(a.passes):
        for c in CLIPS:
            for k in ("A", "B") if p % 2 == 0 else ("B", "A"):
                t = time.perf_counter()
                out = subprocess.run([bins[k], "probe", str(ROOT / "tests/fixtures/videos" / c)],
                                     capture_output=True, text=True, check=True).stdout
                wall[k] += time.perf_counter() - t
                d = json.loads(out)
                inproc[k] += d["elapsed_ms"]
                decoded[k] += d["frames_decoded"]
    n = a.passes * len(CLIPS)
    for k in "AB":
        print(f"{k} {bins[k]}: process {wall[k] / n * 1e3:.0f} ms, in-process {inproc[k] / n:.0f} ms "
              f"per clip, {decoded[k] / a.passes:.0f} pictures decoded per pass")
    print(f"A/B in-process time: {inproc['A'] / inproc['B']:.2f}x; load average {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
