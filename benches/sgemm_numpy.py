#!/usr/bin/env python3
"""The machine's sgemm reference for `benches/backbone_vs_torch.sh`: an n x n x n float32 matrix
product through numpy's OpenBLAS (the scipy-openblas wheel, DYNAMIC_ARCH: it picks its kernel for
this CPU at run time, or the one `OPENBLAS_CORETYPE` names), on `--threads` threads, best of
`--iters` after a warm-up. Prints JSON with the GFLOP/s, the OpenBLAS core it chose (when
threadpoolctl is installed) and the core it was held to.

Run:  OPENBLAS_NUM_THREADS=2 /tmp/torchenv/bin/python benches/sgemm_numpy.py
"""
import argparse, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2048)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
import numpy as np  # noqa: E402  (the thread count must be set before OpenBLAS loads)

core = None
try:
    from threadpoolctl import threadpool_info

    core = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
except ImportError:
    pass
rng = np.random.default_rng(0)
x = rng.standard_normal((a.n, a.n), dtype=np.float32)
y = rng.standard_normal((a.n, a.n), dtype=np.float32)
x @ y
best = float("inf")
for _ in range(a.iters):
    t0 = time.perf_counter()
    x @ y
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"sgemm_n": a.n, "gflops_per_s": 2 * a.n**3 / best / 1e9,
                  "numpy": np.__version__, "openblas_core": core,
                  "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "threads": a.threads}))
