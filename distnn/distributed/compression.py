"""Gradient compression for allreduce, after Horovod's ``Compression``.

A compressor decides the dtype that travels between processes (the *wire* dtype). The
communicators keep the caller's buffer in its own precision and reduce locally in that
precision; only the transferred copies are compressed.

Example:

```python
comm = create_communicator("ring", compression=Compression.fp16)
comm.allreduce(grads)  # data crosses the network as float16, grads stays float32
```
"""
from __future__ import annotations

from typing import Any

import numpy as np


class Compressor:
    """Identity compressor: the data travels in its own dtype.

    Subclasses override `wire_dtype` (and, if needed, `compress` / `decompress`).
    """

    name = "none"

    def wire_dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype in which an array of `dtype` is transferred."""
        return np.dtype(dtype)

    def compress(self, array: np.ndarray) -> tuple[np.ndarray, Any]:
        """Returns `(compressed, ctx)`; `ctx` is what `decompress` needs to undo it.

        Args:
            array: the array to send.
        """
        wire = self.wire_dtype(array.dtype)
        if wire == array.dtype:
            return array, array.dtype
        return array.astype(wire), array.dtype

    def decompress(self, array: np.ndarray, ctx: Any) -> np.ndarray:
        """Inverse of `compress`: returns `array` in the original dtype `ctx`."""
        if array.dtype == ctx:
            return array
        return array.astype(ctx)

    def __repr__(self) -> str:
        return f"Compression.{self.name}"


class FP16Compressor(Compressor):
    """Transfers floating-point data as float16 (halves the bytes on the wire).

    Values beyond float16's range (|x| > 65504) become inf, and about 3 decimal digits
    survive, which is what gradient averaging tolerates in practice.
    """

    name = "fp16"

    def wire_dtype(self, dtype: np.dtype) -> np.dtype:
        # Only float32 (gradients) travels as float16: float64 buffers carry sums that must stay
        # exact, such as the training loop's metric totals and sample counts.
        dtype = np.dtype(dtype)
        return np.dtype(np.float16) if dtype == np.float32 else dtype


class Compression:
    """Namespace of the available compressors (Horovod spelling).

    Attributes:
        none: no compression.
        fp16: float16 on the wire.
    """

    none = Compressor()
    fp16 = FP16Compressor()


_BY_NAME = {"none": Compression.none, "fp16": Compression.fp16}


def get(compression: str | Compressor | None) -> Compressor:
    """Resolves `None`, a name (`"none"`, `"fp16"`) or a `Compressor` to a `Compressor`.

    Args:
        compression: what the user passed as `compression=`.
    """
    if compression is None:
        return Compression.none
    if isinstance(compression, Compressor):
        return compression
    if isinstance(compression, type) and issubclass(compression, Compressor):
        return compression()
    if isinstance(compression, str) and compression.lower() in _BY_NAME:
        return _BY_NAME[compression.lower()]
    raise ValueError(f"`compression` must be None, one of {sorted(_BY_NAME)} or a Compressor. "
                     f"Received: compression={compression!r}")
