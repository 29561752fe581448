"""End-to-end ingest: `mvserve serve` over HTTP against the Python pipeline a user would write.

Both sides embed the same clips with the same random full-size ViT-B/32 (transformers'
`CLIPModel(CLIPConfig())`, seed 0, saved as safetensors and served by mvserve with --model-dir):

* peer: PyAV decode with frame threading, 1 fps candidates then 12 uniform frames (the same rule as
  mvserve), transformers `CLIPImageProcessor`, `CLIPModel.get_image_features` (eager, f32,
  torch.set_num_threads(THREADS)), meanP of the L2-normalised frame embeddings. One video at a time.
* mvserve: the release binary, `POST /index?task=clip` multipart uploads from one client, then from
  N concurrent clients (threads), each upload a new id.

Prints videos/s, frames/s, p50/p99 upload latency and the ratios, as a Markdown table.
Run through benches/ingest_e2e.sh, which makes the venv (torch, transformers, av) and builds.
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ["video7020.mp4", "video7021.mp4", "video7024.mp4", "video7025.mp4",
         "jPBxl9gFqNY_110_117.avi", "video740.mp4"]


def make_model(out: Path):
    """A random ViT-B/32 CLIP saved as config.json + model.safetensors + tokenizer.json."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    if (out / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(ROOT / "tests/fixtures/clip-tokenizer/tokenizer.json", out / "tokenizer.json")


def sample(times, frames=12, fps=1.0):
    """mvserve's rule: per whole second the first frame at or after it, then linspace to F."""
    out, target = [], 0.0
    for i, t in enumerate(times):
        if t + 1e-6 >= target:
            out.append(i)
            target = (int((t + 1e-6) * fps) + 1) / fps
    if len(out) <= frames:
        return out
    step = (len(out) - 1) / (frames - 1)
    return [out[len(out) - 1 if j == frames - 1 else int(j * step)] for j in range(frames)]


class Peer:
    def __init__(self, model_dir: Path, threads: int):
        import torch
        from transformers import CLIPImageProcessor, CLIPModel
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = CLIPModel.from_pretrained(model_dir, attn_implementation="eager").eval()
        self.proc = CLIPImageProcessor()  # OpenAI CLIP's defaults: bicubic 224, crop, mean/std
        self.threads = threads

    def embed(self, path: Path):
        import av
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            s.thread_count = self.threads
            frames = [(f.time, f) for f in c.decode(s)]
        frames.sort(key=lambda x: x[0])
        t0 = frames[0][0]
        keep = sample([t - t0 for t, _ in frames])
        images = [frames[i][1].to_image() for i in keep]
        pixels = self.proc(images=images, return_tensors="pt")["pixel_values"]
        with self.torch.no_grad():
            e = self.model.get_image_features(pixel_values=pixels)
            e = getattr(e, "pooler_output", e)
            e = e / e.norm(dim=-1, keepdim=True)
            v = e.mean(0)
        return v / v.norm(), len(keep)


def multipart(path: Path, vid: str):
    b = uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n{vid}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def upload(port: int, path: Path, vid: str):
    body, ctype = multipart(path, vid)
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/index?task=clip", body=body, headers={"Content-Type": ctype})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"upload {path.name}: {r.status} {data[:300]!r}")
    return time.perf_counter() - t, json.loads(data)


def stages(port: int):
    """(sum, count) per stage of mvserve_ingest_stage_seconds (absent before the metric existed)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        for part, i in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("mvserve_ingest_stage_seconds" + part):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                out.setdefault(stage, [0.0, 0.0])[i] = float(line.rsplit(" ", 1)[1])
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]


def row(name, n, frames, wall, lat):
    return {"name": name, "videos_per_s": n / wall, "frames_per_s": frames / wall,
            "p50_ms": pct(lat, 0.5) * 1e3 if lat else float("nan"),
            "p99_ms": pct(lat, 0.99) * 1e3 if lat else float("nan"), "wall_s": wall, "n": n}


def cpu_name():
    """The CPU's model name and family (the ratios move between CPUs: the peer's PyTorch and our
    kernels gain differently from wider vector units)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return "unknown"
    avx512 = "avx512f" in info.get("flags", "").split()
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}, {'AVX-512' if avx512 else 'no AVX-512'}), "
            f"{os.cpu_count()} logical CPUs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/mvserve"))
    ap.add_argument("--model-dir", default=str(ROOT / "target/ingest-e2e-model"))
    ap.add_argument("--rounds", type=int, default=3, help="passes over the six clips per measurement")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `mvserve serve` flags")
    a = ap.parse_args()
    model_dir = Path(a.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    make_model(model_dir)
    clips = [ROOT / "tests/fixtures/videos" / c for c in CLIPS]
    jobs = [c for _ in range(a.rounds) for c in clips]
    rows = []

    # The peer, one video at a time (after one warm-up video).
    peer = Peer(model_dir, a.threads)
    peer.embed(clips[0])
    lat, frames = [], 0
    t = time.perf_counter()
    for c in jobs:
        s = time.perf_counter()
        _, k = peer.embed(c)
        lat.append(time.perf_counter() - s)
        frames += k
    rows.append(row("python peer (PyAV + transformers), 1 at a time", len(jobs), frames, time.perf_counter() - t, lat))
    del peer

    # mvserve over HTTP.
    data = Path(tempfile.mkdtemp(prefix="mvserve-e2e-"))
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    srv = subprocess.Popen([a.bin, "serve", "--model-dir", str(model_dir), "--data-dir", str(data),
                            "--adapters-dir", str(data / "adapters"), "--port", "0", "--no-grpc",
                            *a.serve_arg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        port = None
        for line in srv.stdout:
            if line.startswith("listening on"):
                port = int(line.strip().rsplit(":", 1)[1])
                break
        assert port, "server did not start"
        for _ in range(600):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                c.close()
            time.sleep(0.5)
        upload(port, clips[0], "warmup")
        breakdown = []
        for clients in (1, a.clients):
            before = stages(port)
            lat, frames = [], 0
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(clients) as ex:
                futs = [ex.submit(upload, port, c, f"{clients}-{i}-{uuid.uuid4().hex[:8]}") for i, c in enumerate(jobs)]
                for f in futs:
                    s, r = f.result()
                    lat.append(s)
                    frames += sum(v["frames"] for v in r["indexed"])
            rows.append(row(f"mvserve serve over HTTP, {clients} client(s)", len(jobs), frames, time.perf_counter() - t, lat))
            after = stages(port)
            mean = {k: (v[0] - before.get(k, [0, 0])[0]) / max(v[1] - before.get(k, [0, 0])[1], 1)
                    for k, v in after.items()}
            breakdown.append((clients, mean))
    finally:
        srv.terminate()
        srv.wait(60)
        shutil.rmtree(data, ignore_errors=True)

    base = rows[0]["videos_per_s"]
    print(f"clips: {', '.join(CLIPS)} x {a.rounds} rounds; {a.threads} threads each side; machine shared")
    print(f"cpu: {cpu_name()}")
    print("| pipeline | videos/s | frames/s | p50 ms | p99 ms | vs peer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['videos_per_s']:.2f} | {r['frames_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['videos_per_s'] / base:.2f}x |")
    if any(m for _, m in breakdown):
        names = ["receive", "decode", "encode", "files", "store"]
        print("\nmean ms per upload in each stage (mvserve_ingest_stage_seconds; files overlaps encode)")
        print("| clients | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for clients, m in breakdown:
            print(f"| {clients} | " + " | ".join(f"{m.get(n, float('nan')) * 1e3:.0f}" for n in names) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
