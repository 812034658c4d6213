"""A strict stand-in for a GPU: a device-like array type, numpy underneath, that refuses implicit host
conversion as cupy does, and counts every explicit host<->device transfer.

Selected with ``DISTNN_DEVICE=strict`` (``pytest --device=strict`` sets it for the test suite and the
processes it starts). ``backend.xp()`` is then :data:`module`, a cupy-like module whose functions take
and return :class:`StrictArray`, so the whole library runs as on a GPU and every host/device mix that
a GPU would reject fails here without hardware (docs/architecture.md, "Devices").

What is refused (``TypeError``), as cupy refuses it:

- ``np.asarray(x)`` / ``np.array(x)`` / ``x.__array__()``: implicit conversion to numpy;
- a strict array mixed with a numpy ``ndarray`` in an operator, a numpy function or ufunc, or a
  function of :data:`module` (Python and numpy *scalars* are fine, as in cupy).

What is allowed but counted as a device->host transfer, because cupy allows it with a synchronising
copy: ``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``, ``x.tolist()``, and the explicit ones,
``x.get()`` / ``module.asnumpy(x)`` / ``backend.to_numpy(x)``. Counting them rather than refusing them
keeps the library's legitimate host reads (a metric's scalar result) working while a test still
proves a training step makes none beyond those (:func:`transfer_counts`).

Host->device transfers counted: ``module.asarray``/``array``/... of host data (so
``backend.to_device``), and numpy arrays written into or used to index a strict array (cupy accepts
those with an implicit upload).
"""
from __future__ import annotations

import threading
import types
from typing import Any, Callable

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_HINT = "use distnn.backend.to_numpy(x) (cupy: x.get()) for a host copy, backend.to_device(a) for a device one"
_lock = threading.Lock()
_counts = {"host_to_device": 0, "device_to_host": 0, "host_to_device_bytes": 0, "device_to_host_bytes": 0}


def transfer_counts() -> dict[str, int]:
    """A copy of the transfer counters since the last :func:`reset_transfer_counts`."""
    with _lock:
        return dict(_counts)


def reset_transfer_counts() -> None:
    with _lock:
        for key in _counts:
            _counts[key] = 0


def _count(direction: str, nbytes: int) -> None:
    with _lock:
        _counts[direction] += 1
        _counts[direction + "_bytes"] += int(nbytes)


def _refuse_mix(what: str) -> TypeError:
    return TypeError(f"strict device mode: {what} mixes a device array with a host numpy.ndarray, which cupy "
                     f"refuses (Unsupported type <class 'numpy.ndarray'>); {_HINT}")


def _unwrap(value: Any, what: str) -> Any:
    """``value`` with every StrictArray replaced by its numpy array; a host ndarray raises."""
    if type(value) is StrictArray:
        return value._array
    if isinstance(value, np.ndarray):
        raise _refuse_mix(what)
    if type(value) in (list, tuple):
        return type(value)(_unwrap(v, what) for v in value)
    return value


def _wrap(value: Any) -> Any:
    """Results back onto the 'device': arrays and numpy scalars become StrictArrays (cupy returns 0-d
    arrays where numpy returns scalars)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return StrictArray(np.asarray(value))
    if type(value) in (list, tuple):
        return type(value)(_wrap(v) for v in value)
    return value


def _upload_index(key: Any) -> Any:
    """An index: strict arrays unwrapped, host arrays accepted with a counted upload (as cupy does)."""
    if type(key) is StrictArray:
        return key._array
    if isinstance(key, np.ndarray):
        _count("host_to_device", key.nbytes)
        return key
    if type(key) is tuple:
        return tuple(_upload_index(k) for k in key)
    return key


class StrictArray(NDArrayOperatorsMixin):
    """A 'device' array: a numpy array that converts to host only explicitly (see the module doc).

    Its ``__name__`` is ``ndarray``, as cupy's is, so messages that name an argument's type read the same.
    """

    __slots__ = ("_array",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    # --- implicit host conversion: refused
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("strict device mode: implicit conversion of a device array to a numpy array is not "
                        f"allowed (cupy: 'Implicit conversion to a NumPy array is not allowed'); {_HINT}")

    # --- numpy protocols: run on the underlying arrays unless a host ndarray is mixed in
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        what = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        out = kwargs.get("out")
        args = _unwrap(inputs, what)
        if out is not None:
            kwargs["out"] = _unwrap(out, what)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Callable, types_: Any, args: tuple, kwargs: dict) -> Any:
        what = f"numpy.{func.__name__}"
        out = kwargs.get("out")
        result = func(*_unwrap(args, what), **{k: _unwrap(v, what) for k, v in kwargs.items()})
        return out if out is not None else _wrap(result)

    # --- synchronising reads: allowed, counted
    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        """The explicit download, as cupy's ``ndarray.get(out=None)``."""
        _count("device_to_host", self._array.nbytes)
        if out is None:
            return self._array.copy()
        np.copyto(out, self._array)
        return out

    def set(self, host: np.ndarray) -> None:
        """The explicit upload into this array, as cupy's ``ndarray.set(arr)``."""
        if not isinstance(host, np.ndarray) or host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"set() expects a numpy.ndarray of shape {self.shape} and dtype {self.dtype}. "
                             f"Received: {type(host).__name__} {getattr(host, 'shape', '')} "
                             f"{getattr(host, 'dtype', '')}")
        _count("host_to_device", host.nbytes)
        np.copyto(self._array, host)

    def _scalar(self) -> Any:
        _count("device_to_host", self._array.nbytes)
        return self._array

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __index__(self) -> int:
        return self._scalar().__index__()

    def __bool__(self) -> bool:
        return bool(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def item(self, *args: Any) -> Any:
        return self._scalar().item(*args)

    def tolist(self) -> Any:
        return self._scalar().tolist()

    def __reduce__(self) -> tuple:  # pickling (deepcopy of a model holding arrays) goes through the host
        return (_rebuild, (self.get(),))

    def __deepcopy__(self, memo: dict) -> "StrictArray":
        return StrictArray(self._array.copy())

    def __copy__(self) -> "StrictArray":
        return StrictArray(self._array.copy())

    # --- container protocol
    def __len__(self) -> int:
        return len(self._array)

    def __iter__(self) -> Any:
        return (StrictArray(np.asarray(row)) for row in self._array)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._array[_upload_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, np.ndarray):
            _count("host_to_device", value.nbytes)
        elif type(value) is StrictArray:
            value = value._array
        self._array[_upload_index(key)] = value

    def __repr__(self) -> str:
        return f"StrictArray({self._array!r})"

    # --- everything else: ndarray's attributes and methods, with results kept on the 'device'
    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)
    nbytes = property(lambda self: self._array.nbytes)
    itemsize = property(lambda self: self._array.itemsize)
    strides = property(lambda self: self._array.strides)
    flags = property(lambda self: self._array.flags)
    T = property(lambda self: StrictArray(self._array.T))
    base = property(lambda self: None if self._array.base is None else _wrap(self._array.base))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__ / __array_struct__: numpy must not see the data
            raise AttributeError(name)
        attribute = getattr(self._array, name)
        if callable(attribute):
            return _StrictCallable(attribute, f"ndarray.{name}")
        return _wrap(attribute)


StrictArray.__name__ = "ndarray"


def _rebuild(host: np.ndarray) -> StrictArray:
    _count("host_to_device", host.nbytes)
    return StrictArray(host)


class _StrictCallable:
    """A numpy function, ufunc or method behind the strict rules: host ndarrays refused, results wrapped."""

    __slots__ = ("_function", "_what")

    def __init__(self, function: Callable, what: str) -> None:
        self._function, self._what = function, what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        result = self._function(*_unwrap(args, self._what), **{k: _unwrap(v, self._what) for k, v in kwargs.items()})
        return out if out is not None else _wrap(result)

    def __getattr__(self, name: str) -> Any:  # a ufunc's reduce / at / outer ...
        attribute = getattr(self._function, name)
        return _StrictCallable(attribute, f"{self._what}.{name}") if callable(attribute) else attribute


def _upload(data: Any, dtype: Any = None, copy: bool = False, **kwargs: Any) -> StrictArray:
    """``asarray`` / ``array``: host data is uploaded (counted); a strict array stays on the device."""
    if type(data) is StrictArray:
        array = np.array(data._array, dtype=dtype, copy=copy or None, **kwargs)
        return data if array is data._array else StrictArray(array)
    host = np.array(_unwrap_nested_strict(data), dtype=dtype, copy=True, **kwargs)
    _count("host_to_device", host.nbytes)
    return StrictArray(host)


def _unwrap_nested_strict(data: Any) -> Any:
    """A list mixing strict arrays (cupy.array of a list of cupy arrays stacks them) made plain."""
    if type(data) in (list, tuple):
        return type(data)(_unwrap_nested_strict(v) for v in data)
    return data._array if type(data) is StrictArray else data


def _asnumpy(array: Any) -> np.ndarray:
    if type(array) is StrictArray:
        return array.get()
    return np.asarray(array)


class _StrictModule(types.ModuleType):
    """numpy's namespace (or a submodule of it) behind the strict rules, as ``cupy`` mirrors numpy's."""

    def __init__(self, wrapped: types.ModuleType, name: str) -> None:
        super().__init__(name)
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attribute = getattr(self._wrapped, name)
        if isinstance(attribute, types.ModuleType):
            attribute = _StrictModule(attribute, f"{self.__name__}.{name}")
        elif callable(attribute) and not isinstance(attribute, type):
            attribute = _StrictCallable(attribute, f"{self.__name__}.{name}")
        setattr(self, name, attribute)  # looked up once
        return attribute


module = _StrictModule(np, "strict")
"""The cupy-like array module of the strict mode."""
module.ndarray = StrictArray
module.asarray = module.array = module.asanyarray = _upload
module.ascontiguousarray = lambda data, dtype=None: _upload(data, dtype=dtype, order="C")
module.asnumpy = _asnumpy


def _get_array_module(*arrays: Any) -> Any:
    return module if any(type(a) is StrictArray for a in arrays) else np


module.get_array_module = _get_array_module
