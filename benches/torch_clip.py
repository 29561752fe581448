#!/usr/bin/env python3
"""PyTorch eager baseline for `mvserve bench backbone`: transformers' CLIPVisionModel and
CLIPTextModel with random full-size ViT-B/32 weights, f32, 2 threads, same batch and statistic
(best of N after a warm-up). Prints JSON like `mvserve bench backbone --json`.

Not a CI dependency. Set up once:  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers
Run:  /tmp/torchenv/bin/python benches/torch_clip.py --batch 12
"""
import argparse, json, time

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

FLOPS_PER_IMAGE = 8.82e9  # ViT-B/32 at 224 px, multiply-adds x 2


def best_of(fn, iters):
    fn()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_act="quick_gelu", patch_size=32)).eval()
    text = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu")).eval()
    for m in (vision, text):
        m.config._attn_implementation = "eager"
    pixels = torch.randn(a.batch, 3, 224, 224)
    ids = torch.tensor([[49406] + [320 + i for i in range(1, 31)] + [49407]])
    with torch.inference_mode():
        t_img = best_of(lambda: vision(pixel_values=pixels), a.iters)
        t_txt = best_of(lambda: text(input_ids=ids), max(a.iters, 5))
    ips = a.batch / t_img
    print(json.dumps({"images_per_s": ips, "gflops_per_s": ips * FLOPS_PER_IMAGE / 1e9,
                      "text_ms_32": t_txt * 1e3, "torch": torch.__version__, "threads": a.threads}))


if __name__ == "__main__":
    main()
