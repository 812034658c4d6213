"""Process-wide state: distnn's random generator and the counters behind automatic layer names.

Kept in this leaf module (it imports nothing from distnn) so that layers, training and the public
``distnn.utils`` can all reach it without an import cycle (docs/architecture.md, "Modules and
dependencies").
"""
from __future__ import annotations

import collections
import random

import numpy as np

_global_rng = np.random.default_rng()
_name_counters: collections.Counter = collections.Counter()


def set_random_seed(seed: int) -> None:
    """Make a run reproducible with one call: seeds Python, numpy and distnn's own generator.

    Under MPI every rank calls this with the same seed; weights still come from rank 0's broadcast,
    and so do the data order and the random layers' masks (from rank 0's data seed:
    docs/architecture.md, "Random layers and exactness").
    """
    global _global_rng
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    _global_rng = np.random.default_rng(int(seed))


def global_rng() -> np.random.Generator:
    """distnn's process-wide generator (initial weights, the run's data seed, unseeded ``SeedGenerator``s)."""
    return _global_rng


def unique_name(base: str) -> str:
    """``base`` the first time, then ``base_1``, ``base_2``... (Keras' automatic layer names)."""
    count = _name_counters[base]
    _name_counters[base] += 1
    return base if count == 0 else f"{base}_{count}"


def clear_session() -> None:
    """Reset automatic layer names (``dense``, ``dense_1``, ...), as Keras' ``clear_session``."""
    _name_counters.clear()
