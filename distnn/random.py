"""Random numbers that keep the exactness contract (docs/architecture.md, "Random layers and exactness").

Keras 3's ``keras.random`` names: ``SeedGenerator``, ``uniform``, ``normal``, ``dropout``. Every draw
comes from a *counter-based* stream (numpy's Philox4x64) whose key is a hash of what the draw
stands for, and whose counter is the position of the value:

- Inside a training step (``training_step``, which ``fit`` and ``train_on_batch`` enter around each
  step), the key is the run's seed, the step and the draw's index in the step, and a per-sample
  draw starts at this rank's first row of the *global* batch. Rank r's shard is then exactly rows
  ``[offset, offset + count)`` of the single-process draw, so N ranks train like one process.
- Outside a step (an eager ``layer(x, training=True)``, a gradient check), each draw takes the next
  key of a ``SeedGenerator``, as in Keras.

Draws are made on the host and moved to the device, like the generator they replace.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from distnn import backend
from distnn.ops.core import value_of
from distnn.global_state import global_rng

# What a key stands for, its first field: distinct tags keep the kinds of streams apart.
_GENERATOR, _STEP, _SEEDED_STEP, _INT_SEED = 1, 2, 3, 4
_KEY_FIELDS = 8  # 64-bit fields hashed per key: fixed, so that padding never makes two keys equal
_WORDS_PER_COUNTER = 4  # Philox4x64 yields four 64-bit words per counter increment


class SeedGenerator:
    """A stateful source of keys for random draws outside a training step (Keras' ``SeedGenerator``).

    Each draw outside ``training_step`` uses the key ``(seed, counter)`` and advances the counter,
    so a layer created with ``seed=...`` gives reproducible draws. Inside a training step a seeded
    generator's draws depend on ``(seed, step, draw in step)``; an unseeded one's on the run's seed.

    Args:
        seed: a non-negative integer, or ``None`` for a seed drawn from distnn's global generator
            (``distnn.utils.set_random_seed``) at the first draw.
        name: a label for messages and checkpoints.
    """

    def __init__(self, seed: int | None = None, name: str | None = None):
        self._seed = None if seed is None else _check_seed(seed)
        self.explicit = seed is not None
        self.counter = 0
        self.name = name or "seed_generator"

    @property
    def seed(self) -> int:
        if self._seed is None:
            self._seed = int(global_rng().integers(2**63))
        return self._seed

    @property
    def state(self) -> list[int]:
        """``[seed, counter]``: restoring it replays the same draws (JSON-serialisable)."""
        return [self.seed, self.counter]

    @state.setter
    def state(self, value: Any) -> None:
        seed, counter = value
        self._seed, self.counter = _check_seed(seed), int(counter)

    def next_key(self) -> np.ndarray:
        """The Philox key of the next draw outside a training step (advances the counter)."""
        key = _key(_GENERATOR, self.seed, self.counter)
        self.counter += 1
        return key

    def __repr__(self) -> str:
        return f"<SeedGenerator {self.name} seed={self._seed} counter={self.counter}>"


_global_generator: SeedGenerator | None = None
_global_generator_source: Any = None


def global_generator() -> SeedGenerator:
    """The generator of draws with ``seed=None`` outside a training step; a new one after each
    ``set_random_seed`` (which replaces distnn's global generator, the source of its seed)."""
    global _global_generator, _global_generator_source
    if _global_generator is None or _global_generator_source is not global_rng():
        _global_generator, _global_generator_source = SeedGenerator(name="global"), global_rng()
    return _global_generator


@dataclasses.dataclass
class _Step:
    seed: int
    step: tuple[int, ...]
    offset: int
    count: int
    draws: int = 0  # draws so far in this step: an unseeded draw's identity
    generator_draws: dict[int, int] = dataclasses.field(default_factory=dict)  # id(generator) -> draws


_active_step: _Step | None = None


@contextlib.contextmanager
def training_step(seed: int, step: tuple[int, ...], offset: int, count: int) -> Iterator[None]:
    """Inside the block, draws are those of one data-parallel training step.

    Args:
        seed: the run's seed, equal on every rank (``fit`` broadcasts it from rank 0).
        step: the step's position, e.g. ``(epoch, step in epoch)``: non-negative integers.
        offset: how many samples of the global batch come before this rank's shard.
        count: how many samples this rank's shard holds. A draw whose first axis has ``count``
            entries is per sample: its rows are rows ``offset...`` of the global batch's draw.
            Any other shape is drawn identically on every rank.

    The k-th draw of the step with ``seed=None`` or an unseeded ``SeedGenerator`` uses the key
    ``(seed, step, k)``: every rank runs the same forward pass, so the same k names the same layer
    call. A seeded generator's draws use ``(its seed, step, its draws so far in the step)``.
    """
    global _active_step
    step = tuple(step)
    if not 1 <= len(step) <= _KEY_FIELDS - 4 or not all(_is_count(s) for s in step):
        raise ValueError(f"step must be 1 to {_KEY_FIELDS - 4} non-negative integers. Received: step={step}")
    if not (_is_count(offset) and _is_count(count)):
        raise ValueError(f"offset and count must be non-negative integers. Received: offset={offset}, count={count}")
    outer, _active_step = _active_step, _Step(_check_seed(seed), tuple(int(s) for s in step), int(offset), int(count))
    try:
        yield
    finally:
        _active_step = outer


# ------------------------------------------------------------------------------ the streams
def _key(*fields: int) -> np.ndarray:
    """A Philox key (two 64-bit words) hashed from up to ``_KEY_FIELDS`` non-negative integers."""
    words = np.zeros(_KEY_FIELDS, dtype=np.uint64)
    words[:len(fields)] = fields
    return np.random.SeedSequence(words.view(np.uint32)).generate_state(2, np.uint64)


def philox_words(key: np.ndarray, first: int, count: int) -> np.ndarray:
    """Words ``first .. first + count - 1`` (uint64) of the Philox4x64 stream with ``key``, in
    O(count): the counter jumps to ``first // 4`` and the words before ``first`` in that block are
    skipped."""
    bit_generator = np.random.Philox(key=key)
    bit_generator.advance(first // _WORDS_PER_COUNTER)
    if first % _WORDS_PER_COUNTER:
        bit_generator.random_raw(first % _WORDS_PER_COUNTER)
    return bit_generator.random_raw(count)


def _half_words(key: np.ndarray, first: int, count: int) -> np.ndarray:
    """Values ``first ..`` of the stream read as 32-bit halves (low half first): half the Philox work
    of one word per value, where 32 bits suffice (float32, dropout thresholds)."""
    skip = first % 2
    words = philox_words(key, first // 2, (skip + count + 1) // 2)
    return words.astype("<u8", copy=False).view("<u4")[skip:skip + count]


def _stream(shape: tuple[int, ...], seed: Any, shared_first_axis: bool = False) -> tuple[np.ndarray, int]:
    """The key of a draw of ``shape`` and the index of its first value in that key's stream.

    In a training step, a draw whose first axis has the shard's sample count (and is not declared
    shared) is per sample: it starts at this shard's first row of the global batch's draw."""
    step = _active_step
    per_sample = step is not None and not shared_first_axis and len(shape) > 0 and shape[0] == step.count
    first_row = step.offset if per_sample else 0
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        key = _key(_INT_SEED, _check_seed(seed))  # stateless, as Keras: the same seed, the same values
    elif seed is not None and not isinstance(seed, SeedGenerator):
        raise TypeError("seed must be None, a non-negative integer or a distnn.random.SeedGenerator. "
                        f"Received: seed={seed!r}")
    elif step is None:
        key = (seed or global_generator()).next_key()
    elif seed is not None and seed.explicit:
        draws = step.generator_draws.get(id(seed), 0)
        step.generator_draws[id(seed)] = draws + 1
        key = _key(_SEEDED_STEP, seed.seed, draws, len(step.step), *step.step)
    else:
        key = _key(_STEP, step.seed, step.draws, len(step.step), *step.step)
    if step is not None:
        step.draws += 1
    return key, first_row * math.prod(shape[1:])


# ----------------------------------------------------------------------------- Keras' API
def uniform(shape: Any, minval: float = 0.0, maxval: float = 1.0, dtype: Any = None, seed: Any = None) -> Any:
    """Values uniform in ``[minval, maxval)`` (24 random bits for float32, 53 for float64)."""
    shape, dtype = _check_shape(shape), _float_dtype(dtype)
    key, first = _stream(shape, seed)
    count = math.prod(shape)
    if dtype == np.float64:
        unit = (philox_words(key, first, count) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    else:
        unit = (_half_words(key, first, count) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    values = unit * (maxval - minval) + minval
    return backend.to_device(values.astype(dtype, copy=False).reshape(shape))


def normal(shape: Any, mean: float = 0.0, stddev: float = 1.0, dtype: Any = None, seed: Any = None) -> Any:
    """Normal values (Box-Muller on the two 32-bit halves of one word per value)."""
    shape, dtype = _check_shape(shape), _float_dtype(dtype)
    key, first = _stream(shape, seed)
    words = philox_words(key, first, math.prod(shape))
    radius_unit = ((words >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0**-32  # in (0, 1]: finite log
    angle_unit = (words & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    values = np.sqrt(-2.0 * np.log(radius_unit)) * np.cos(2.0 * np.pi * angle_unit)
    return backend.to_device((values * stddev + mean).astype(dtype).reshape(shape))


def dropout_mask(inputs: Any, rate: float, noise_shape: Any = None, seed: Any = None) -> Any:
    """The mask ``dropout`` multiplies ``inputs`` by: 0 with probability ``rate``, else
    ``1 / (1 - rate)``, in ``noise_shape`` (``None`` entries take the input's size; an entry of 1
    shares the mask along that axis). Layers with their own backward keep it for the gradient."""
    value = value_of(inputs)
    rate = _check_rate(rate)
    shape = _noise_shape(tuple(np.shape(value)), noise_shape)
    # The first axis is the batch axis unless noise_shape shares the mask across the batch (a 1 there,
    # which a 1-sample shard could not tell from its own size).
    key, first = _stream(shape, seed, shared_first_axis=noise_shape is not None and noise_shape[0] == 1)
    threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))  # P(bits >= threshold) = 1 - rate
    mask = (_half_words(key, first, math.prod(shape)) >= threshold).astype(value.dtype).reshape(shape)
    mask *= mask.dtype.type(1.0 / (1.0 - rate))
    return backend.get_array_module(value).asarray(mask)  # where the inputs are: uploaded for device inputs


def dropout(inputs: Any, rate: float, noise_shape: Any = None, seed: Any = None) -> Any:
    """Inverted dropout of ``inputs`` (an array or a tape tensor): Keras' ``keras.random.dropout``."""
    if _check_rate(rate) == 0:
        return inputs
    return inputs * dropout_mask(inputs, rate, noise_shape, seed)


# ------------------------------------------------------------------- generators of layers
def seed_generators(layers: list) -> dict[str, SeedGenerator]:
    """The ``SeedGenerator`` attributes of ``layers``, named ``"<layer>/<attribute>"``, and the
    global one (``"global"``): what a gradient check rewinds and a checkpoint saves."""
    found = {"global": global_generator()}
    for layer in layers:
        for attribute, value in vars(layer).items():
            if isinstance(value, SeedGenerator):
                found[f"{layer.name}/{attribute}"] = value
    return found


def generator_states(layers: list) -> dict[str, list[int]]:
    return {name: generator.state for name, generator in seed_generators(layers).items()}


def restore_generator_states(layers: list, states: dict) -> None:
    """Set every generator of ``layers`` found in ``states`` (others, e.g. from older files, are left)."""
    for name, generator in seed_generators(layers).items():
        if name in states:
            generator.state = states[name]


# ------------------------------------------------------------------------------ checking
def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64). Received: seed={seed!r}")
    return int(seed)


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not 0 <= rate < 1:
        raise ValueError(f"Invalid value for `rate`, expected a float in [0, 1). Received: rate={rate}")
    return float(rate)


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _check_shape(shape: Any) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(_is_count(d) for d in shape):
        raise ValueError(f"shape must hold non-negative integers. Received: shape={shape}")
    return tuple(int(d) for d in shape)


def _float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype or backend.floatx())
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a float type. Received: dtype={dtype.name}")
    return dtype


def _noise_shape(input_shape: tuple[int, ...], noise_shape: Any) -> tuple[int, ...]:
    if noise_shape is None:
        return input_shape
    noise_shape = tuple(noise_shape)
    resolved = tuple(size if entry is None else entry for entry, size in zip(noise_shape, input_shape))
    if len(noise_shape) != len(input_shape) or any(
            not isinstance(d, (int, np.integer)) or d not in (1, size) for d, size in zip(resolved, input_shape)):
        raise ValueError(f"noise_shape must have one entry per input axis, each None, 1 or the input's size. "
                         f"Received: noise_shape={noise_shape} for an input of shape {input_shape}")
    return tuple(int(d) for d in resolved)
