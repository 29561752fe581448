#!/usr/bin/env bash
# Runs mvserve's backbone benchmark, the machine's sgemm reference (numpy's OpenBLAS), the PyTorch
# eager baseline and ONNX Runtime on the same random ViT-B/32, back to back on this machine, and
# prints the ratios. mvserve's own JSON also carries an in-process 2048^3 sgemm through the kernel
# the backbone uses, timed before and after the backbone.
#
# AVX2_ONLY=1 measures, on a CPU that has AVX-512, what an AVX2-only CPU runs: mvserve built
# without its `avx512` feature (gemm's AVX2+FMA kernels, the crate's AVX2 loops), numpy's OpenBLAS
# held to its Haswell kernel, PyTorch to AVX2 (ATen and oneDNN). ONNX Runtime has no such switch
# (MLAS picks AVX-512 itself), so it is left out of that mode.
# Usage: [AVX2_ONLY=1] benches/backbone_vs_torch.sh [PYTHON] [BATCH] [EXTRA mvserve bench FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/tmp/torchenv/bin/python}
batch=${2:-12}
shift $(( $# > 2 ? 2 : $# ))
if [ "${AVX2_ONLY:-0}" = 1 ]; then
  cargo build --release -q --no-default-features
  export OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2
else
  cargo build --release -q
fi
ours=$(./target/release/mvserve bench backbone --batch "$batch" --iters 5 --json "$@")
if [ "${AVX2_ONLY:-0}" = 1 ]; then
  sgemm=$(OPENBLAS_NUM_THREADS=2 "$py" benches/sgemm_numpy.py --threads 2)
else
  # OpenBLAS picks its own kernel for this CPU; a core named in the environment (some machines set
  # OPENBLAS_CORETYPE=Haswell for every process) would hold it below the machine's rate.
  sgemm=$(env -u OPENBLAS_CORETYPE OPENBLAS_NUM_THREADS=2 "$py" benches/sgemm_numpy.py --threads 2)
fi
torch=$("$py" benches/torch_clip.py --batch "$batch" --iters 5)
if [ "${AVX2_ONLY:-0}" = 1 ]; then
  onnx=null
else
  onnx=$("$py" benches/ort_clip.py --batch "$batch" --iters 5 2>/dev/null)
fi
echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') (family $(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $(nproc) CPUs)"
echo "mvserve: $ours"
echo "numpy sgemm: $sgemm"
echo "pytorch: $torch"
echo "onnxruntime: $onnx"
python3 - "$ours" "$torch" "$onnx" "$sgemm" <<'PY'
import json, sys
o, t, x, s = (json.loads(a) for a in sys.argv[1:5])
print(f"images/s ratio mvserve/pytorch: {o['images_per_s'] / t['images_per_s']:.2f}x")
if x:
    print(f"images/s ratio mvserve/onnxruntime: {o['images_per_s'] / x['images_per_s']:.2f}x")
print(f"text latency ratio pytorch/mvserve: {t['text_ms_32'] / o['text_ms_32']:.2f}x")
peak = max(s["gflops_per_s"], o.get("sgemm_gflops_per_s", 0.0))
print(f"machine sgemm reference: {peak:.1f} GFLOP/s (numpy/OpenBLAS {s['gflops_per_s']:.1f}"
      f" on its {'/'.join(s['openblas_core'] or []) or s.get('openblas_coretype') or 'own'} kernel, "
      f"in-process gemm {o.get('gemm_kernel')} {o.get('sgemm_gflops_per_s', 0.0):.1f})")
ort = f"onnxruntime {x['gflops_per_s'] / peak:.2f}, " if x else ""
print(f"backbone GFLOP/s / sgemm reference: mvserve {o['gflops_per_s'] / peak:.2f}, "
      f"{ort}pytorch {t['gflops_per_s'] / peak:.2f}")
PY
