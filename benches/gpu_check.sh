#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, the driver and the CUDA toolkit (nvcc); not part of
# CI. Builds mvserve with the `cuda` feature, then
#   1. `mvserve bench parity`: the same random full-size ViT-B/32 and a random adapter on the CPU
#      and on the GPU; every element of the L2-normalised image, text, adapted video and adapted
#      text embeddings must agree within TOLERANCE (default 1e-3). Exits 1 otherwise.
#   2. `mvserve bench backbone --compare-cpu`: vision tower images/s on the GPU at batch 12 and 96,
#      with the CPU timed in the same process for the ratio.
# Usage: benches/gpu_check.sh            (env: DEVICE=cuda:0 TOLERANCE=1e-3 BATCHES="12 96"
#                                              DTYPES="f32" ITERS=5; DTYPES="f32 f16" adds f16)
# CUDA_COMPUTE_CAP (e.g. 90 for H100) is read by candle's kernel build when nvidia-smi cannot tell.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${DEVICE:-cuda:0}
tolerance=${TOLERANCE:-1e-3}
batches=${BATCHES:-12 96}
dtypes=${DTYPES:-f32}
iters=${ITERS:-5}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit or put its bin/ on PATH" >&2; exit 2; }
nvcc --version | tail -n 2

cargo build --release --features cuda
bin=./target/release/mvserve

echo "== parity: CPU vs $device (random ViT-B/32 + random adapter, tolerance $tolerance)"
if ! "$bin" bench parity --device "$device" --tolerance "$tolerance"; then
  echo "FAIL: $device embeddings differ from the CPU's" >&2
  exit 1
fi

echo "== throughput: ViT-B/32 vision tower, random weights (best of $iters after a warm-up)"
for dtype in $dtypes; do
  for batch in $batches; do
    "$bin" bench backbone --device "$device" --batch "$batch" --dtype "$dtype" --iters "$iters" --compare-cpu
  done
done
echo "OK"
