"""Array backend: numpy on the CPU, cupy on a GPU.

This is the only module that imports cupy. Everything else asks for the array module with
``xp = get_array_module(x)`` (DeZero style) or ``backend.xp()``, so the same layer code runs on both.

The device is chosen once per process from ``DISTNN_DEVICE`` (``cpu`` | ``gpu`` | ``auto`` | ``strict``,
default ``cpu``). On a GPU, rank ``r`` of a multi-rank job uses device ``local_rank % device_count``.
``strict`` is the test mode that stands in for a GPU without one (distnn.testing.strict_device): its
arrays refuse implicit host conversion as cupy's do, so host/device mixing fails on any machine.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

_VALID_DEVICES = ("cpu", "gpu", "auto", "strict")
_VALID_FLOATX = ("float16", "float32", "float64")

_floatx = "float32"
_cupy: Any = None  # the device array module (cupy, or the strict stand-in) once a device is selected
_device: str | None = None


def image_data_format() -> str:
    """Keras' ``image_data_format()``: image layers default to ``"channels_last"`` (NHWC)."""
    return "channels_last"


def floatx() -> str:
    """The default float dtype name for new weights and data (``"float32"`` unless changed)."""
    return _floatx


def set_floatx(dtype: str) -> None:
    """Set the default float dtype: ``"float16"``, ``"float32"`` or ``"float64"``."""
    global _floatx
    dtype = np.dtype(dtype).name
    if dtype not in _VALID_FLOATX:
        raise ValueError(f"set_floatx expects one of {_VALID_FLOATX}. Received: dtype={dtype!r}")
    _floatx = dtype


def _load_cupy(required: bool) -> Any:
    try:
        import cupy  # noqa: PLC0415 - the one place cupy is imported

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as exc:  # ImportError, or a CUDA driver error
        if required:
            raise RuntimeError(
                "DISTNN_DEVICE=gpu but no usable cupy/CUDA was found "
                f"({type(exc).__name__}: {exc}); install the gpu extra: pip install 'distnn[gpu]'") from exc
        return None
    if required:
        raise RuntimeError("DISTNN_DEVICE=gpu but cupy sees no CUDA device")
    return None


# Local-rank variables of the common launchers (hydra, Open MPI, Slurm), read without touching MPI.
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMI_LOCAL_RANK")


def _launcher_local_rank() -> int:
    for name in _LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def set_device(device: str | None = None, local_rank: int | None = None) -> str:
    """Choose ``"cpu"`` or ``"gpu"`` for this process; returns the device actually used.

    Args:
        device: ``"cpu"``, ``"gpu"``, ``"auto"`` (GPU when one is visible) or ``"strict"`` (the
            test mode standing in for a GPU). ``None`` reads ``DISTNN_DEVICE`` (default ``"cpu"``).
        local_rank: this process's rank on its node (default: from the launcher's environment);
            picks GPU ``local_rank % n``, with ``n`` = ``DISTNN_GPUS_PER_NODE`` (set by
            ``distnn-run --gpus-per-node``) or the number of visible devices.
    """
    global _cupy, _device
    device = (device or os.environ.get("DISTNN_DEVICE", "cpu")).lower()
    if device not in _VALID_DEVICES:
        raise ValueError(f"device must be one of {_VALID_DEVICES}. Received: device={device!r}")
    if device == "strict":
        from distnn.testing import strict_device  # noqa: PLC0415 - only in the test mode

        _cupy, _device = strict_device.module, "strict"
        return _device
    _cupy = None if device == "cpu" else _load_cupy(required=device == "gpu")
    if _cupy is not None:
        per_node = os.environ.get("DISTNN_GPUS_PER_NODE", "")
        count = int(per_node) if per_node.isdigit() and int(per_node) > 0 else _cupy.cuda.runtime.getDeviceCount()
        rank = _launcher_local_rank() if local_rank is None else local_rank
        _cupy.cuda.Device(rank % count).use()
    _device = "gpu" if _cupy is not None else "cpu"
    return _device


def device() -> str:
    """The device of this process, ``"cpu"``, ``"gpu"`` or ``"strict"`` (chosen on first use)."""
    if _device is None:
        set_device()
    return _device  # type: ignore[return-value]


def xp() -> Any:
    """The array module of this process's device: numpy or cupy (or the strict stand-in)."""
    return np if device() == "cpu" else _cupy


def get_array_module(*arrays: Any) -> Any:
    """The array module (numpy or cupy) that owns ``arrays`` (numpy when none is a device array)."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def is_device_array(array: Any) -> bool:
    """Whether ``array`` lives on the device (a cupy array, or a strict-mode one)."""
    return _cupy is not None and isinstance(array, _cupy.ndarray)


def to_device(array: Any, dtype: Any = None) -> Any:
    """Move ``array`` to this process's device (a no-op for numpy on the CPU and for device arrays)."""
    return xp().asarray(array, dtype=dtype)


def to_numpy(array: Any) -> np.ndarray:
    """Bring ``array`` back to the host as a numpy array."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)
