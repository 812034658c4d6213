"""Random regularization layers with Keras 3 names: ``SpatialDropout1D``, ``SpatialDropout2D``,
``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``.

Every draw goes through ``distnn.random`` with the layer's ``SeedGenerator``, so inside a training
step each sample's noise depends only on its row of the global batch and N ranks train exactly like
one process (docs/architecture.md, "Random layers and exactness"). In inference all are the identity.
The spatial dropouts reuse ``Dropout``'s fused backward; the others compute with ops on the tape.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from distnn import random
from distnn.layers.base import Layer
from distnn.layers.conv import normalize_data_format
from distnn.layers.core import Dropout
from distnn.ops.core import value_of

# SELU's constants (Klambauer et al. 2017), which AlphaDropout keeps the mean and variance of.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _check_fraction(argument: str, value: Any, upper_open: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not (0 <= value < 1 if upper_open else 0 <= value <= 1):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"Invalid value received for argument `{argument}`. Expected a float value in "
                         f"{interval}. Received: {argument}={value!r}")
    return float(value)


class _SpatialDropout(Dropout):
    """Drops whole feature maps: the mask has shape ``(batch, 1, ..., channels)``."""

    rank = 1

    def __init__(self, rate: float, seed: int | None = None, data_format: str | None = None, **kwargs: Any):
        super().__init__(rate, seed=seed, **kwargs)
        self.data_format = normalize_data_format(data_format)

    def build(self, input_shape):
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"{type(self).__name__} expects inputs of rank {self.rank + 2} (batch, "
                             f"{'spatial, ' * self.rank}channels). Received: input_shape={tuple(input_shape)}")
        self.built = True

    def call(self, x, training=False):
        ones = (1,) * self.rank
        self.noise_shape = ((None, *ones, None) if self.data_format == "channels_last" else (None, None, *ones))
        return super().call(x, training=training)

    def get_config(self):
        config = super().get_config()
        del config["noise_shape"]  # fixed by the layer, not an argument
        return config


class SpatialDropout1D(_SpatialDropout):
    """Dropout of whole channels of sequences, as ``keras.layers.SpatialDropout1D``: in training each
    channel of each sample is zeroed with probability ``rate`` (for every step), the rest scaled by
    ``1 / (1 - rate)``.

    Args:
        rate: float in [0, 1), the fraction of channels to drop.
        seed: seed of the layer's ``SeedGenerator``.

    Input shape:
        ``(batch_size, steps, channels)``; the output has the same shape.
    """

    rank = 1

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any):
        super().__init__(rate, seed=seed, **kwargs)

class SpatialDropout2D(_SpatialDropout):
    """Dropout of whole feature maps, as ``keras.layers.SpatialDropout2D``.

    Args:
        rate: float in [0, 1), the fraction of feature maps to drop.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``: where the channels are.
        seed: seed of the layer's ``SeedGenerator``.

    Input shape:
        ``(batch_size, rows, cols, channels)`` or ``(batch_size, channels, rows, cols)``; the output
        has the same shape.
    """

    rank = 2

    def __init__(self, rate: float, data_format: str | None = None, seed: int | None = None, **kwargs: Any):
        super().__init__(rate, seed=seed, data_format=data_format, **kwargs)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class _SeededNoise(Layer):
    """A mask-preserving, shape-preserving layer with its own ``SeedGenerator``."""

    def __init__(self, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = random.SeedGenerator(seed, name=f"{self.name}/seed_generator")
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class GaussianNoise(_SeededNoise):
    """Adds zero-mean normal noise in training, as ``keras.layers.GaussianNoise``.

    Args:
        stddev: float in [0, 1], the noise's standard deviation.
        seed: seed of the layer's ``SeedGenerator``.
    """

    def __init__(self, stddev: float, seed: int | None = None, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self.stddev = _check_fraction("stddev", stddev, upper_open=False)

    def call(self, x, training=False):
        if not training or self.stddev == 0:
            return x
        raw = value_of(x)
        return x + random.normal(raw.shape, stddev=self.stddev, dtype=raw.dtype, seed=self.seed_generator)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


class GaussianDropout(_SeededNoise):
    """Multiplies by normal noise of mean 1 and standard deviation ``sqrt(rate / (1 - rate))`` in
    training, as ``keras.layers.GaussianDropout``.

    Args:
        rate: float in [0, 1), the drop probability of the equivalent dropout.
        seed: seed of the layer's ``SeedGenerator``.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self.rate = _check_fraction("rate", rate)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        raw = value_of(x)
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        return x * random.normal(raw.shape, mean=1.0, stddev=stddev, dtype=raw.dtype, seed=self.seed_generator)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class AlphaDropout(_SeededNoise):
    """Dropout for self-normalizing (SELU) networks, as ``keras.layers.AlphaDropout``: dropped inputs
    are set to SELU's negative saturation ``-alpha * scale`` and the result is transformed by
    ``a * x + b`` so that the mean and variance are kept.

    Args:
        rate: float in [0, 1), the fraction of inputs to drop.
        noise_shape: shape of the keep mask, broadcast over the input (``None`` entries take the
            input's size), as in Keras.
        seed: seed of the layer's ``SeedGenerator``.
    """

    def __init__(self, rate: float, noise_shape: Any = None, seed: int | None = None, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self.rate = _check_fraction("rate", rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        raw = value_of(x)
        # dropout_mask's values are 0 or 1 / (1 - rate): the same per-sample draw as Dropout's.
        kept = random.dropout_mask(raw, self.rate, self.noise_shape, self.seed_generator) > 0
        kept = kept.astype(raw.dtype)
        alpha_p = -_SELU_ALPHA * _SELU_SCALE
        a = ((1 - self.rate) * (1 + self.rate * alpha_p ** 2)) ** -0.5
        b = -a * alpha_p * self.rate
        return (x * kept + (1 - kept) * alpha_p) * raw.dtype.type(a) + raw.dtype.type(b)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                "noise_shape": None if self.noise_shape is None else list(self.noise_shape)}
