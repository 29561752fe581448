#!/usr/bin/env bash
# Runs mvserve's backbone benchmark and the PyTorch eager baseline back to back on this machine and
# prints the ratio. Usage: benches/backbone_vs_torch.sh [PYTHON] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/tmp/torchenv/bin/python}
batch=${2:-12}
cargo build --release -q
ours=$(./target/release/mvserve bench backbone --batch "$batch" --iters 5 --json)
torch=$("$py" benches/torch_clip.py --batch "$batch" --iters 5)
echo "mvserve: $ours"
echo "pytorch: $torch"
python3 - "$ours" "$torch" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"images/s ratio mvserve/pytorch: {o['images_per_s'] / t['images_per_s']:.2f}x")
print(f"text latency ratio pytorch/mvserve: {t['text_ms_32'] / o['text_ms_32']:.2f}x")
PY
