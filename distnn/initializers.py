"""Weight initializers with Keras names and defaults.

Each initializer is called as ``init(shape, dtype, rng)`` and returns a host (numpy) array; the
model copies it into its flat parameter buffer on the device. ``rng`` is a
``numpy.random.Generator``; an initializer built with ``seed=`` draws from a fresh generator of
that seed on every call instead (Keras 3: the same values each call), so a layer's initial
weights can be fixed independently of the global seed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from distnn import serialization


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    """Keras' fan computation: dense (in, out); conv (*kernel, in, out) -> receptive field × channels."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer:
    """Base class. Subclasses implement ``generate(shape, rng)``."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape: tuple[int, ...], dtype: Any = "float32",
                 rng: np.random.Generator | None = None) -> np.ndarray:
        # As Keras 3, a seeded initializer gives the same values on every call (for a given shape).
        rng = np.random.default_rng(self.seed) if self.seed is not None else rng or np.random.default_rng()
        return np.asarray(self.generate(tuple(shape), rng), dtype=dtype)

    def generate(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"seed": self.seed} if self.seed is not None else {}


class Zeros(Initializer):
    def generate(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    def generate(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value = float(value)

    def generate(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def generate(self, shape, rng):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        if maxval < minval:
            raise ValueError(f"RandomUniform needs minval <= maxval. Received: minval={minval}, maxval={maxval}")
        self.minval, self.maxval = float(minval), float(maxval)

    def generate(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


class VarianceScaling(Initializer):
    """Keras' VarianceScaling: the family behind glorot, he and lecun initializers."""

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal",
                 seed: int | None = None):
        super().__init__(seed)
        if scale <= 0:
            raise ValueError(f"VarianceScaling scale must be > 0. Received: scale={scale}")
        if mode not in self._MODES:
            raise ValueError(f"VarianceScaling mode must be one of {self._MODES}. Received: mode={mode!r}")
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(f"VarianceScaling distribution must be one of {self._DISTRIBUTIONS}. "
                             f"Received: distribution={distribution!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def generate(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(variance), shape)
        # Truncated at two standard deviations; 0.8796... restores the requested variance.
        stddev = math.sqrt(variance) / 0.87962566103423978
        values = rng.normal(0.0, 1.0, shape)
        outside = np.abs(values) > 2
        while outside.any():
            values[outside] = rng.normal(0.0, 1.0, int(outside.sum()))
            outside = np.abs(values) > 2
        return values * stddev

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode, "distribution": self.distribution}


def _preset(name: str, scale: float, mode: str, distribution: str) -> type[VarianceScaling]:
    def __init__(self, seed: int | None = None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return Initializer.get_config(self)

    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                           "__doc__": f"VarianceScaling({scale}, {mode!r}, {distribution!r})."})


GlorotUniform = _preset("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _preset("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeNormal = _preset("HeNormal", 2.0, "fan_in", "truncated_normal")
HeUniform = _preset("HeUniform", 2.0, "fan_in", "uniform")
LecunNormal = _preset("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _preset("LecunUniform", 1.0, "fan_in", "uniform")

_BY_NAME: dict[str, type[Initializer]] = {
    "zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal, "he_normal": HeNormal,
    "he_uniform": HeUniform, "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform,
}
_TABLE: dict[str, type[Initializer]] = {**_BY_NAME, **{cls.__name__: cls for cls in _BY_NAME.values()}}
serialization.register_builtins("distnn.initializers", _TABLE)


def get(identifier: Any) -> Initializer | None:
    """Resolve an initializer from a Keras name, a class name, a saved configuration (built-in or a
    registered custom class) or an instance; ``None`` stays ``None``."""
    if identifier is None or isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, (str, dict)):
        initializer = serialization.resolve(identifier, _TABLE, "initializer")
        if isinstance(initializer, Initializer):
            return initializer
        raise ValueError(f"{identifier!r} does not name an Initializer. Received: {initializer!r}")
    raise TypeError(f"initializer must be a string, a dict or an Initializer. Received: {identifier!r}")


def serialize(initializer: Initializer) -> dict:
    return serialization.serialize_keras_object(initializer)


def deserialize(config: str | dict, custom_objects: dict | None = None) -> Initializer:
    with serialization.custom_object_scope(custom_objects):
        return get(config)
