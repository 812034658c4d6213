#!/usr/bin/env bash
# The GPU check of issue 16, one script for a machine lent a CUDA GPU (< 8 minutes):
#   1. installs cupy-cuda12x and torch from the package index into the active venv (or .venv);
#   2. runs tests/gpu (op and layer parity, GPU = CPU training, 2 ranks on one GPU, NCCL on one rank);
#   3. prints distnn vs PyTorch samples/s on this GPU (MLP, MNIST CNN, LSTM, Transformer block);
#   4. prints the 64 MiB allreduce time on each device path (host staging, CUDA-aware MPI, NCCL).
# Usage: bash benchmarks/gpu.sh [--seconds 6]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${2:-6}"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    [[ -d .venv ]] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "=== installing (cupy-cuda12x, torch, distnn[mpich,test])"
time pip install -q -e ".[mpich,test]" cupy-cuda12x torch
python - <<'PY'
import cupy, torch
print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount(), "| torch", torch.__version__,
      "cuda", torch.cuda.is_available())
PY

echo "=== tests/gpu"
time python -m pytest -q -p no:cacheprovider tests/gpu -rs || status=$?

echo "=== training throughput, distnn vs PyTorch on this GPU (samples/s)"
time DISTNN_DEVICE=gpu python benchmarks/gpu_vs_torch.py --seconds "$seconds"

echo "=== allreduce, 64 MiB float32 device array, 2 ranks"
time DISTNN_DEVICE=gpu mpiexec -n 2 python benchmarks/gpu_allreduce.py
exit "${status:-0}"
