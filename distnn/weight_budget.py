"""A ceiling on the weights layers may create while a model is rebuilt from a file.

Loading knows from the file's weight table how many values the saved model holds. A configuration
that implies more (a hostile or mistaken ``Dense(100000)``, ``units=10**12``) must be refused by
name *before* its weights are allocated and initialised, whatever kind of model it describes: so
the check sits where every weight is created (``Layer.add_weight``), not in model-specific code.
See docs/architecture.md, "Reliability: files and backups".
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

_budget: contextvars.ContextVar["_Budget | None"] = contextvars.ContextVar("distnn_weight_budget", default=None)


class _Budget:
    def __init__(self, total: int):
        self.total = self.remaining = total


@contextlib.contextmanager
def limit(total_values: int) -> Iterator[None]:
    """Within the block, layers may create at most ``total_values`` weight values in all."""
    token = _budget.set(_Budget(total_values))
    try:
        yield
    finally:
        _budget.reset(token)


def charge(shape: tuple, name: str) -> None:
    """Called before a weight of ``shape`` is allocated; raises ``ValueError`` past the budget."""
    budget = _budget.get()
    if budget is None:
        return
    size = math.prod(int(d) for d in shape)  # Python integers: no overflow on absurd shapes
    if size > budget.remaining:
        raise ValueError(f"the model configuration creates the weight {name} of shape {tuple(shape)} "
                         f"({size:,} values), but the file's weight table holds only {budget.total:,} values "
                         f"in all; refusing to allocate it")
    budget.remaining -= size
