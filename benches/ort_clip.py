#!/usr/bin/env python3
"""ONNX Runtime baseline for `mvserve bench backbone`: the same random full-size ViT-B/32 vision
tower as `benches/torch_clip.py` (transformers `CLIPVisionModel`, seed 0, QuickGELU), exported with
`torch.onnx.export` and run by onnxruntime's CPU execution provider (all graph optimisations,
`--threads` intra-op threads, one inter-op thread), same batch and statistic (best of N after a
warm-up). Prints JSON like `mvserve bench backbone --json`.

Not a CI dependency. Set up once:
  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers onnx onnxscript onnxruntime
Run:  /tmp/torchenv/bin/python benches/ort_clip.py --batch 12
"""
import argparse, json, os, tempfile, time

import numpy as np
import onnxruntime as ort
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

FLOPS_PER_IMAGE = 8.82e9  # ViT-B/32 at 224 px, multiply-adds x 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_act="quick_gelu", patch_size=32)).eval()
    vision.config._attn_implementation = "eager"
    pixels = torch.randn(a.batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vision.onnx")
        with torch.inference_mode():
            torch.onnx.export(vision, (pixels,), path, input_names=["pixel_values"],
                              output_names=["last_hidden_state", "pooler_output"],
                              dynamic_axes={"pixel_values": {0: "n"}}, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = pixels.numpy().astype(np.float32)
    with torch.inference_mode():
        want = vision(pixel_values=pixels).pooler_output.numpy()
    got = sess.run(["pooler_output"], {"pixel_values": x})[0]
    best = float("inf")
    for _ in range(a.iters):
        t0 = time.perf_counter()
        sess.run(None, {"pixel_values": x})
        best = min(best, time.perf_counter() - t0)
    ips = a.batch / best
    print(json.dumps({"images_per_s": ips, "gflops_per_s": ips * FLOPS_PER_IMAGE / 1e9,
                      "onnxruntime": ort.__version__, "threads": a.threads,
                      "max_abs_diff_vs_torch": float(np.abs(got - want).max())}))


if __name__ == "__main__":
    main()
