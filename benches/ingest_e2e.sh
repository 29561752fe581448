#!/usr/bin/env bash
# End-to-end ingest benchmark: `mvserve serve` over HTTP (1 and N concurrent clients) against the
# Python pipeline users write (PyAV + transformers), same clips, same random ViT-B/32, one run.
# Makes its own venv ($PEER_VENV, default target/ingest-peer-venv) with torch, transformers and av
# from PyPI (several GB with torch's default wheels; not a CI dependency).
# Usage: benches/ingest_e2e.sh [--rounds 3] [--clients 6] [--threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEER_VENV:-target/ingest-peer-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers, av' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers av numpy pillow safetensors
fi
cargo build --release -q
"$venv/bin/python" benches/ingest_e2e.py "$@"
