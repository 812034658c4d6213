"""Test utilities for layers, public so that users check their own layers as distnn checks its own:
``from distnn.testing import run_layer_test``.

The names load on first use, so that ``distnn.testing.strict_device`` (imported by the backend in the
strict device mode) does not pull in the layers while the backend itself is still loading.
"""
from typing import Any

__all__ = ["LayerTestModel", "LayerTestReport", "run_layer_test"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from distnn.testing import layer_test  # noqa: PLC0415

        return getattr(layer_test, name)
    raise AttributeError(f"module 'distnn.testing' has no attribute {name!r}")
