"""A/B of two `mvserve` binaries on the ingest path, under the same machine load.

Starts both servers (same model, separate data folders) and alternates: upload clip i to A, then
to B, for every clip and round (one at a time); then, per round, the whole list from N concurrent
clients to A, then to B. A shared machine's load moves slower than one pair, so the ratio of the
pair is steadier than two runs minutes apart. Uses ingest_e2e.py's clips and helpers.

Usage: python3 benches/ingest_ab.py --a OLD_BIN --b NEW_BIN --model-dir DIR [--rounds 2] [--clients 6]
"""

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_e2e import CLIPS, ROOT, upload, stages  # noqa: E402


def start(bin_, model_dir, threads):
    data = Path(tempfile.mkdtemp(prefix="mvserve-ab-"))
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    srv = subprocess.Popen([bin_, "serve", "--model-dir", model_dir, "--data-dir", str(data),
                            "--adapters-dir", str(data / "adapters"), "--port", "0", "--no-grpc"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in srv.stdout:
        if line.startswith("listening on"):
            port = int(line.strip().rsplit(":", 1)[1])
            break
    while True:
        try:
            upload(port, ROOT / "tests/fixtures/videos" / CLIPS[0], "warmup")
            return srv, port, data
        except OSError:
            time.sleep(0.5)
        except RuntimeError:  # 503 not_ready
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    clips = [ROOT / "tests/fixtures/videos" / c for c in CLIPS]
    servers = {k: start(b, a.model_dir, a.threads) for k, b in (("A", a.a), ("B", a.b))}
    try:
        one = {"A": [], "B": []}
        for _ in range(a.rounds):
            for c in clips:
                for k in ("A", "B"):
                    s, _ = upload(servers[k][1], c, uuid.uuid4().hex[:12])
                    one[k].append(s)
        many = {"A": [], "B": []}
        for _ in range(a.rounds):
            for k in ("A", "B"):
                t = time.perf_counter()
                with cf.ThreadPoolExecutor(a.clients) as ex:
                    list(ex.map(lambda c: upload(servers[k][1], c, uuid.uuid4().hex[:12]), clips))
                many[k].append(len(clips) / (time.perf_counter() - t))
        print(f"load average {os.getloadavg()}")
        print("| binary | 1 client: videos/s | mean ms | p50 ms | "
              f"{a.clients} clients: videos/s per round |")
        print("|---|---|---|---|---|")
        for k, b in (("A", a.a), ("B", a.b)):
            print(f"| {k} {b} | {len(one[k]) / sum(one[k]):.3f} | {statistics.mean(one[k]) * 1e3:.0f} | "
                  f"{statistics.median(one[k]) * 1e3:.0f} | {', '.join(f'{x:.3f}' for x in many[k])} |")
        print(f"B/A: 1 client {sum(one['A']) / sum(one['B']):.3f}x; {a.clients} clients "
              f"{sum(many['B']) / sum(many['A']):.3f}x")
        for k in ("A", "B"):
            st = stages(servers[k][1])
            if st:
                print(f"{k}'s mean ms per upload and stage (all uploads, both modes): " + ", ".join(
                    f"{s} {v[0] / max(v[1], 1) * 1e3:.0f}" for s, v in sorted(st.items())))
    finally:
        for srv, _, data in servers.values():
            srv.terminate()
            srv.wait(60)
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
