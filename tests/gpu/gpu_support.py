"""tests/gpu: run only where a CUDA GPU (cupy) is usable; skipped otherwise (``pytestmark = MARKS``).

``DISTNN_GPU_TESTS_DEVICE=strict`` runs them against the strict stand-in instead (how the tests
themselves were checked on a machine without a GPU); the default device under test is ``gpu``.
"""
from __future__ import annotations

import os

import pytest

DEVICE = os.environ.get("DISTNN_GPU_TESTS_DEVICE", "gpu")


def gpu_available() -> bool:
    if DEVICE == "strict":
        return True
    try:
        import cupy  # noqa: PLC0415

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU"
        return False


MARKS = [pytest.mark.gpu,
         pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with cupy (benchmarks/gpu.sh runs these)")]
