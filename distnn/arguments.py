"""Checks of user arguments: each error names the argument, what it accepts and what it received.

Used by ``fit``/``evaluate``/``predict`` and by the optimizers and schedules, so that a value that
would train silently wrong (``steps_per_epoch=2.5``, a NaN learning rate or class weight,
``validation_freq=0``) fails at the call instead (docs/architecture.md, "Reliability").
"""
from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, but not a bool (``True`` is an int to Python, not to a user)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    """``value`` as the user wrote it: ``0.5``, not numpy 2's ``np.float32(0.5)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, which must be ``>= minimum``."""
    if not is_integer(value) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}. Received: {name}={_shown(value)}")
    return int(value)


def check_real(name: str, value: Any, minimum: float = -math.inf, maximum: float = math.inf,
               above_minimum: bool = False, below_maximum: bool = False) -> float:
    """``value`` as a finite float in ``[minimum, maximum]`` (an open end with ``above_minimum`` or
    ``below_maximum``). NaN fails every comparison, so it is caught here rather than training on."""
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    in_range = is_number and math.isfinite(value) and (value > minimum if above_minimum else value >= minimum) and (
        value < maximum if below_maximum else value <= maximum)
    if not in_range:
        low = f"{'>' if above_minimum else '>='} {minimum}" if minimum > -math.inf else ""
        high = f"{'<' if below_maximum else '<='} {maximum}" if maximum < math.inf else ""
        bounds = " and ".join(filter(None, (low, high)))
        raise ValueError(f"{name} must be a finite number{' ' + bounds if bounds else ''}. "
                         f"Received: {name}={_shown(value)}")
    return float(value)


def check_optional_real(name: str, value: Any, **bounds: Any) -> float | None:
    """``None``, or ``value`` checked as ``check_real``."""
    return None if value is None else check_real(name, value, **bounds)


def check_verbose(verbose: Any) -> int:
    """Keras' ``verbose``: ``"auto"`` (1 here), 0 (silent), 1 (progress bar) or 2 (one line per epoch);
    ``False``/``True`` mean 0/1, as they do to Keras."""
    if isinstance(verbose, str) and verbose == "auto":
        return 1
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    if not is_integer(verbose) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2. Received: verbose={_shown(verbose)}")
    return int(verbose)


def check_shuffle(shuffle: Any) -> bool:
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(f"shuffle must be True or False. Received: shuffle={_shown(shuffle)}")
    return bool(shuffle)


def check_validation_freq(validation_freq: Any) -> int | frozenset[int]:
    """A positive epoch interval, or (as Keras 2) a collection of 1-based epoch numbers to validate after."""
    if is_integer(validation_freq) and validation_freq >= 1:
        return int(validation_freq)
    if isinstance(validation_freq, Collection) and not isinstance(validation_freq, (str, bytes, dict)):
        epochs = list(validation_freq)
        if epochs and all(is_integer(e) and e >= 1 for e in epochs):
            return frozenset(int(e) for e in epochs)
    raise ValueError("validation_freq must be a positive integer or a non-empty list of epoch numbers >= 1. "
                     f"Received: validation_freq={_shown(validation_freq)}")


def validates_after(epoch: int, validation_freq: int | frozenset[int]) -> bool:
    """Whether to validate at the end of the 0-based ``epoch`` (``validation_freq`` from ``check_validation_freq``)."""
    if isinstance(validation_freq, frozenset):
        return epoch + 1 in validation_freq
    return (epoch + 1) % validation_freq == 0


def check_fit_arguments(epochs: Any, validation_split: Any, steps_per_epoch: Any, validation_freq: Any,
                        validation_batch_size: Any, initial_epoch: Any, shuffle: Any,
                        ) -> tuple[int | None, int | frozenset[int]]:
    """Check ``fit``'s scalar arguments (``batch_size``, the data and ``class_weight`` are checked with
    the data); returns ``steps_per_epoch`` and ``validation_freq`` in the forms the loop uses."""
    epochs = check_integer("epochs", epochs, 0)
    check_real("validation_split", validation_split, 0, 1, below_maximum=True)
    steps = None if steps_per_epoch is None else check_integer("steps_per_epoch", steps_per_epoch, 1)
    if validation_batch_size is not None:
        check_integer("validation_batch_size", validation_batch_size, 1)
    initial_epoch = check_integer("initial_epoch", initial_epoch, 0)
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch must not exceed epochs (the epoch to stop at). "
                         f"Received: initial_epoch={initial_epoch}, epochs={epochs}")
    check_shuffle(shuffle)
    return steps, check_validation_freq(validation_freq)
