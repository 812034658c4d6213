"""The finite-difference gradient check the ``distnn.ops`` tests share, and tests that it can fail.

``check_gradient(fn, *arrays)`` compares the tape's gradients of ``sum(w * fn(*arrays))`` (``w`` a
fixed random weight, so every output element matters) with central differences in float64:
``max|analytic - numeric| / max(max|analytic|, max|numeric|) <= 1e-6`` for each argument.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pytest

from distnn import backend, ops
from distnn.ops.core import defop

TOLERANCE = 1e-6


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale) if scale > 0 else 0.0


def numeric_gradient(fn: Callable, arrays: list[np.ndarray], index: int, weight: np.ndarray,
                     step: float) -> np.ndarray:
    """Central differences of ``sum(weight * fn(*arrays))`` with respect to ``arrays[index]``."""
    x = arrays[index]
    grad = np.zeros_like(x)
    for position in np.ndindex(x.shape):
        original = x[position]
        x[position] = original + step
        up = float(np.sum(weight * backend.to_numpy(fn(*arrays))))
        x[position] = original - step
        down = float(np.sum(weight * backend.to_numpy(fn(*arrays))))
        x[position] = original
        grad[position] = (up - down) / (2 * step)
    return grad


def check_gradient(fn: Callable, *arrays: Any, argnums: Sequence[int] | None = None, step: float = 1e-6,
                   tolerance: float = TOLERANCE, seed: int = 0) -> list[np.ndarray]:
    """Assert that the tape's gradients of ``fn`` match finite differences; returns the analytic ones."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    output = backend.to_numpy(fn(*arrays))  # no tape: the plain forward
    assert output.dtype == np.float64, f"the op changed float64 to {output.dtype}"
    weight = np.random.default_rng(seed).standard_normal(output.shape)
    value, grads = ops.value_and_grad(fn, *arrays, output_gradient=weight)
    np.testing.assert_allclose(backend.to_numpy(value), output, rtol=1e-12, atol=1e-12)
    for i in range(len(arrays)) if argnums is None else argnums:
        assert np.shape(grads[i]) == arrays[i].shape, f"argument {i}: gradient shape {np.shape(grads[i])}"
        numeric = numeric_gradient(fn, arrays, i, weight, step)
        error = relative_error(backend.to_numpy(grads[i]).astype(np.float64), numeric)
        assert error <= tolerance, \
            f"argument {i}: relative error {error:.2e}\nanalytic:\n{grads[i]}\nnumeric:\n{numeric}"
    return grads


# ------------------------------------------------------------------- the check itself can fail
@defop
def _cube_with_wrong_vjp(x):
    return x ** 3


@_cube_with_wrong_vjp.defvjp
def _(node, g):
    return (g * 3 * node.inputs[0] ** 2 * 1.001,)  # 0.1 % off


@defop
def _broadcast_add_without_unbroadcast(x1, x2):
    return x1 + x2


@_broadcast_add_without_unbroadcast.defvjp
def _(node, g):
    return g, g  # forgets to sum over the broadcast axes


def test_check_gradient_rejects_a_slightly_wrong_vjp():
    x = np.linspace(0.5, 2.0, 6)
    with pytest.raises(AssertionError, match="relative error"):
        check_gradient(_cube_with_wrong_vjp, x)


def test_check_gradient_rejects_a_gradient_of_the_wrong_shape():
    with pytest.raises(AssertionError, match="gradient shape"):
        check_gradient(_broadcast_add_without_unbroadcast, np.ones((3, 4)), np.ones(4))


def test_check_gradient_accepts_a_correct_vjp():
    grads = check_gradient(lambda x, y: ops.multiply(ops.sin(x), y), np.linspace(-1, 1, 5), np.arange(5.0))
    assert len(grads) == 2


def test_relative_error_is_normwise():
    assert relative_error(np.array([1.0, 1e-9]), np.array([1.0, 0.0])) == pytest.approx(1e-9)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
