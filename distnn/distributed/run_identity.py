"""What makes two training runs the same experiment, so that a backup resumes only its own run.

Every backup records the identity of the run that wrote it: the model configuration, the compile
settings (optimizer with its hyperparameters, loss, metrics), epochs, global batch size, steps per
epoch, and a fingerprint of the training data — each array's shape and dtype and a hash of a few
rows at fixed positions, so it costs the same for any data size. Layer and model names are left
out: they count how many models the process built before, which says nothing about the experiment.
See docs/architecture.md, "Reliability: files and backups".
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from distnn import saving

_SAMPLED_ROWS = 16


def data_fingerprint(array: Any) -> dict | None:
    """Shape, dtype and a hash of ``_SAMPLED_ROWS`` evenly spaced rows of ``array`` (``None`` for none)."""
    if array is None:
        return None
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):  # a file-backed array reads just these rows
        array = np.asarray(array)
    count = len(array) if array.ndim else 0
    rows = np.unique(np.linspace(0, count - 1, min(count, _SAMPLED_ROWS)).astype(np.int64))
    sample = np.ascontiguousarray(array[rows] if array.ndim else np.asarray(array))
    return {"shape": list(array.shape), "dtype": array.dtype.str,
            "rows_sha256": hashlib.sha256(sample.tobytes()).hexdigest()}


def _without_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_names(item) for key, item in value.items() if key != "name"}
    if isinstance(value, list):
        return [_without_names(item) for item in value]
    return value


def run_identity(model: Any, params: dict, data: tuple) -> dict:
    """The identity of ``fit``'s run: ``params`` as fit gives callbacks, ``data`` its ``(x, y, sample_weight)``."""
    identity = {"model": _without_names(model.get_config()), "compile": _without_names(saving.compile_config(model)),
                "epochs": _int_or_none(params.get("epochs")), "batch_size": _int_or_none(params.get("batch_size")),
                "steps_per_epoch": _int_or_none(params.get("steps")),
                "data": {name: data_fingerprint(array) for name, array in zip(("x", "y", "sample_weight"), data)}}
    return json.loads(json.dumps(identity))  # the form it takes after a round trip through run.json


def _int_or_none(value: Any) -> int | None:
    """Generators and PyDatasets have no batch size (their batches are theirs) and may have no steps."""
    return None if value is None else int(value)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(saved: Any, current: Any, limit: int = 6) -> list[str]:
    """Up to ``limit`` lines ``path: saved value in the backup, current value now``."""
    found: list[str] = []
    stack = [("", saved, current)]
    while stack and len(found) < limit:
        path, a, b = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(set(a) | set(b), reverse=True)  # popped in sorted order
            stack.extend((f"{path}.{k}" if path else k, a.get(k, "(absent)"), b.get(k, "(absent)")) for k in keys)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            stack.extend((f"{path}[{i}]", x, y) for i, x, y in reversed(list(zip(range(len(a)), a, b))))
        elif a != b:
            found.append(f"{path}: {_short(a)} in the backup, {_short(b)} now")
    return found
