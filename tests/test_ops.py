"""``distnn.ops``: element-wise, product, shape and reduction ops against numpy and finite differences,
and the tape's behaviour (operators, shared values, custom_gradient, stop_gradient, inference)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from test_ops_gradcheck import check_gradient

from distnn import backend, ops
from distnn.ops import Tape, Tensor, TensorOperators
from distnn.ops.symbolic import KerasTensor

rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


# Away from every kink (0 for relu/abs/elu, +-3 for hard_sigmoid, 6 for relu6) by more than the FD step.
KINK_FREE = np.linspace(-4.9, 6.8, 24).reshape(4, 6) + 0.037


# ------------------------------------------------------------------------------ element-wise
UNARY = {
    "negative": (ops.negative, np.negative, KINK_FREE),
    "square": (ops.square, np.square, KINK_FREE),
    "sqrt": (ops.sqrt, np.sqrt, np.abs(KINK_FREE) + 0.1),
    "exp": (ops.exp, np.exp, KINK_FREE / 2),
    "log": (ops.log, np.log, np.abs(KINK_FREE) + 0.1),
    "log1p": (ops.log1p, np.log1p, np.abs(KINK_FREE)),
    "abs": (ops.abs, np.abs, KINK_FREE),
    "sin": (ops.sin, np.sin, KINK_FREE),
    "cos": (ops.cos, np.cos, KINK_FREE),
    "tanh": (ops.tanh, np.tanh, KINK_FREE / 2),
    "erf": (ops.erf, np.vectorize(math.erf), KINK_FREE / 2),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_forward_and_gradient(name):
    op, reference, x = UNARY[name]
    np.testing.assert_allclose(op(x), reference(x), rtol=1e-14, atol=1e-15)
    check_gradient(op, x)


def test_sign_is_a_constant():
    x = KINK_FREE
    np.testing.assert_array_equal(ops.sign(x), np.sign(x))
    _, (grad,) = ops.value_and_grad(lambda t: ops.multiply(ops.sign(t), 3.0), x)
    np.testing.assert_array_equal(grad, 0)


def test_erf_matches_math_erf_to_float64_precision():
    x = np.concatenate([np.linspace(-30, 30, 20001), np.geomspace(1e-300, 0.5, 500), [0.46875, 4.0, -4.0]])
    reference = np.array([math.erf(v) for v in x])
    error = np.abs(ops.erf(x) - reference)
    assert error.max() <= 2.3e-16  # one ulp of 1
    assert (error <= 5e-16 * np.abs(reference)).all()  # two ulps relative, down to tiny arguments
    assert ops.erf(np.float32([0.5, -2.0])).dtype == np.float32


BINARY = {
    "add": (ops.add, np.add), "subtract": (ops.subtract, np.subtract), "multiply": (ops.multiply, np.multiply),
    "divide": (ops.divide, np.divide), "true_divide": (ops.true_divide, np.true_divide),
    "power": (ops.power, np.power), "maximum": (ops.maximum, np.maximum), "minimum": (ops.minimum, np.minimum),
}
BROADCAST_SHAPES = [((3, 1, 4), (2, 4)), ((3, 4), (4,)), ((2, 3), ()), ((1, 3), (2, 1)), ((2, 3), (2, 3))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_broadcasting_forward_and_gradient(name, shapes):
    op, reference = BINARY[name]
    x1 = rng.uniform(0.5, 2.0, shapes[0])  # positive: power's base and divide's denominator
    x2 = rng.uniform(0.5, 2.0, shapes[1])
    np.testing.assert_allclose(op(x1, x2), reference(x1, x2), rtol=1e-15)
    check_gradient(op, x1, x2)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_with_python_scalars_on_either_side(name):
    op, reference = BINARY[name]
    x = rng.uniform(0.5, 2.0, (2, 3))
    np.testing.assert_allclose(op(x, 1.5), reference(x, 1.5))
    np.testing.assert_allclose(op(1.5, x), reference(1.5, x))
    check_gradient(lambda t: op(t, 1.5), x)
    check_gradient(lambda t: op(1.5, t), x)


def test_power_gradient_for_the_exponent_is_zero_where_the_base_is_not_positive():
    _, (g_base, g_exp) = ops.value_and_grad(ops.power, np.array([-2.0, 0.0, 2.0]), np.array([2.0, 2.0, 2.0]))
    np.testing.assert_allclose(g_base, [-4.0, 0.0, 4.0])
    np.testing.assert_allclose(g_exp, [0.0, 0.0, 4 * math.log(2)])


def test_maximum_ties_send_the_gradient_to_the_first_argument():
    _, (g1, g2) = ops.value_and_grad(ops.maximum, np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    np.testing.assert_array_equal(g1, [1.0, 0.0])
    np.testing.assert_array_equal(g2, [0.0, 1.0])


def test_clip_with_scalar_and_broadcast_array_bounds():
    x = randn(3, 4) * 2
    np.testing.assert_allclose(ops.clip(x, -1.0, 1.0), np.clip(x, -1, 1))
    check_gradient(lambda t: ops.clip(t, -1.0, 1.0), x)
    low, high = np.full((4,), -0.5) + randn(4) * 0.1, np.full((3, 1), 0.6) + randn(3, 1) * 0.1
    np.testing.assert_allclose(ops.clip(x, low, high), np.clip(x, low, high))
    check_gradient(ops.clip, x, low, high)


def test_where_broadcasts_and_routes_the_gradient():
    condition = rng.random((3, 1, 4)) > 0.5
    x1, x2 = randn(2, 4), randn(3, 2, 1)
    np.testing.assert_array_equal(ops.where(condition, x1, x2), np.where(condition, x1, x2))
    check_gradient(lambda a, b: ops.where(condition, a, b), x1, x2)
    np.testing.assert_array_equal(ops.where(condition)[0], np.nonzero(condition)[0])
    with pytest.raises(ValueError, match="both x1 and x2"):
        ops.where(condition, x1)


def test_cast_is_differentiable_between_floats_only():
    x = randn(2, 3)
    assert ops.cast(x, "float32").dtype == np.float32
    _, (grad,) = ops.value_and_grad(lambda t: ops.cast(ops.cast(t, "float32"), "float64"), x)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, 1.0)
    check_gradient(lambda t: ops.cast(t, "float64") * 2.0, x)
    assert ops.cast(np.array([1.7]), "int32").dtype == np.int32


# ----------------------------------------------------------------------------------- products
MATMUL_SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    x1, x2 = randn(*shapes[0]), randn(*shapes[1])
    np.testing.assert_allclose(ops.matmul(x1, x2), np.matmul(x1, x2), rtol=1e-13)
    check_gradient(ops.matmul, x1, x2)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((4,), (4,)), ((2, 3, 4), (5, 4, 2)), ((3, 4), (4,)),
                                    ((4,), (2, 4, 3)), ((), (3,)), ((2, 3), ())], ids=str)
def test_dot(shapes):
    x1, x2 = randn(*shapes[0]), randn(*shapes[1])
    np.testing.assert_allclose(ops.dot(x1, x2), np.dot(x1, x2), rtol=1e-13)
    check_gradient(ops.dot, x1, x2)


@pytest.mark.parametrize("shapes, axes", [
    (((2, 3, 4), (3, 4, 5)), 2), (((2, 3), (4,)), 0), (((2, 3, 4), (4, 5)), 1),
    (((2, 3, 4), (3, 2, 5)), ([1, 0], [0, 1])), (((3, 2, 4), (4, 5, 3)), ([0, 2], [2, 0])),
    (((2, 3, 4), (5, 4)), ([2], [1]))], ids=str)
def test_tensordot(shapes, axes):
    x1, x2 = randn(*shapes[0]), randn(*shapes[1])
    np.testing.assert_allclose(ops.tensordot(x1, x2, axes=axes), np.tensordot(x1, x2, axes=axes), rtol=1e-13)
    check_gradient(lambda a, b: ops.tensordot(a, b, axes), x1, x2)


@pytest.mark.parametrize("subscripts, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ii->i", [(4, 4)]),
    ("ii", [(3, 3)]), ("ij->", [(3, 4)]), ("i,j->ij", [(3,), (4,)]), ("ij,jk", [(3, 4), (4, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]), ("ij,ij->ij", [(1, 3), (4, 3)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]), ("iij->ij", [(3, 3, 2)]), ("ij->j", [(3, 4)]),
    ("bi...,i->b...", [(2, 3, 4, 5), (3,)]), ("ij,k->ik", [(3, 4), (2,)])], ids=str)
def test_einsum(subscripts, shapes):
    operands = [randn(*s) for s in shapes]
    np.testing.assert_allclose(ops.einsum(subscripts, *operands), np.einsum(subscripts, *operands), rtol=1e-12)
    check_gradient(lambda *xs: ops.einsum(subscripts, *xs), *operands)


# ------------------------------------------------------------------------------------- shapes
SHAPE_CASES = {
    "transpose": (lambda x: ops.transpose(x), (2, 3, 4)),
    "transpose_axes": (lambda x: ops.transpose(x, (2, 0, 1)), (2, 3, 4)),
    "transpose_negative_axes": (lambda x: ops.transpose(x, axes=(-1, 0, -2)), (2, 3, 4)),
    "reshape": (lambda x: ops.reshape(x, (4, -1)), (2, 3, 4)),
    "reshape_none": (lambda x: ops.reshape(x, (None, 6)), (2, 3, 4)),
    "expand_dims": (lambda x: ops.expand_dims(x, 1), (2, 3)),
    "expand_dims_tuple": (lambda x: ops.expand_dims(x, (0, -1)), (2, 3)),
    "squeeze": (lambda x: ops.squeeze(x), (2, 1, 3, 1)),
    "squeeze_axis": (lambda x: ops.squeeze(x, axis=-1), (2, 1, 3, 1)),
    "broadcast_to": (lambda x: ops.broadcast_to(x, (2, 3, 4)), (3, 1)),
    "flip": (lambda x: ops.flip(x), (2, 3)),
    "flip_axis": (lambda x: ops.flip(x, axis=1), (2, 3, 2)),
    "flip_axes": (lambda x: ops.flip(x, axis=(0, 2)), (2, 3, 2)),
    "tile": (lambda x: ops.tile(x, (2, 3)), (2, 3)),
    "tile_rank_up": (lambda x: ops.tile(x, (2, 1, 3)), (2, 3)),
    "tile_short_repeats": (lambda x: ops.tile(x, 2), (2, 3)),
    "repeat": (lambda x: ops.repeat(x, 2), (2, 3)),
    "repeat_axis": (lambda x: ops.repeat(x, 3, axis=1), (2, 3)),
    "repeat_array": (lambda x: ops.repeat(x, np.array([1, 0, 3]), axis=-1), (2, 3)),
    "repeat_array_flat": (lambda x: ops.repeat(x, np.array([2, 1, 1, 0]), axis=None), (2, 2)),
    "take_flat": (lambda x: ops.take(x, np.array([[0, 5], [5, -1]])), (2, 3)),
    "take_axis": (lambda x: ops.take(x, np.array([2, 0, 2]), axis=1), (2, 3, 2)),
    "take_negative_axis": (lambda x: ops.take(x, np.array([1, 1]), axis=-1), (2, 3)),
    "take_along_axis": (lambda x: ops.take_along_axis(x, np.array([[0, 2, 2], [1, 0, 0]]), axis=1), (2, 3)),
    "take_along_axis_broadcast": (lambda x: ops.take_along_axis(x, np.array([[[0], [2]], [[1], [1]]]), axis=1),
                                  (1, 3, 4)),
    "take_along_axis_flat": (lambda x: ops.take_along_axis(x, np.array([5, 0, 5]), axis=None), (2, 3)),
    "getitem_slice": (lambda x: x[:, 1:3], (2, 4)),
    "getitem_step": (lambda x: x[..., ::-2], (2, 5)),
    "getitem_int_array": (lambda x: x[np.array([0, 1, 0])], (2, 3)),
    "getitem_bool_mask": (lambda x: x[np.array([[True, False, True], [False, True, True]])], (2, 3)),
    "getitem_mixed": (lambda x: x[1, np.array([2, 2]), :], (2, 3, 2)),
    "slice": (lambda x: ops.slice(x, (1, 0, 1), (1, 2, 2)), (2, 3, 4)),
    "slice_array_arguments": (lambda x: ops.slice(x, np.array([0, 1]), np.array([2, 2])), (2, 3)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_shape_op_gradient(name):
    fn, shape = SHAPE_CASES[name]
    x = randn(*shape)
    with Tape() as tape:
        out = fn(Tensor(x, tape))
    np.testing.assert_array_equal(out.value, fn(x))  # on the tape and off it alike
    check_gradient(fn, x)


def test_shape_ops_forward_against_numpy():
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(ops.transpose(x, (2, 0, 1)), np.transpose(x, (2, 0, 1)))
    np.testing.assert_array_equal(ops.tile(x, (2, 1, 3)), np.tile(x, (2, 1, 3)))
    np.testing.assert_array_equal(ops.repeat(x, [1, 0, 2], axis=1), np.repeat(x, [1, 0, 2], axis=1))
    np.testing.assert_array_equal(ops.take(x, [[0, 2]], axis=2), np.take(x, [[0, 2]], axis=2))
    np.testing.assert_array_equal(ops.take_along_axis(x, np.zeros((2, 1, 4), int), axis=1), x[:, :1])
    np.testing.assert_array_equal(ops.slice(x, (1, 1, 0), (1, 2, 3)), x[1:2, 1:3, 0:3])
    np.testing.assert_array_equal(ops.flip(x, 1), x[:, ::-1])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_and_stack(axis):
    parts = [randn(2, 3), randn(2, 3), randn(2, 3)]
    np.testing.assert_array_equal(ops.concatenate(parts, axis=axis % 2), np.concatenate(parts, axis % 2))
    np.testing.assert_array_equal(ops.stack(parts, axis=axis), np.stack(parts, axis))
    check_gradient(lambda a, b, c: ops.concatenate([a, b, c], axis=axis % 2), *parts)
    check_gradient(lambda a, b, c: ops.stack((a, b, c), axis), *parts)


def test_concatenate_of_tensors_and_constants():
    a, b = randn(2, 3), randn(2, 2)
    check_gradient(lambda t: ops.concatenate([t, b, t], axis=-1), a)


@pytest.mark.parametrize("sections", [3, [1, 4], (2,)], ids=str)
def test_split_gives_pieces_whose_gradients_flow(sections):
    x = randn(2, 6)
    pieces = ops.split(x, sections, axis=1)
    for piece, expected in zip(pieces, np.split(x, sections, axis=1)):
        np.testing.assert_array_equal(piece, expected)
    # use only the first and last pieces: the unused columns get zero gradient
    check_gradient(lambda t: ops.concatenate([ops.split(t, sections, 1)[0] * 2.0, ops.split(t, sections, 1)[-1]],
                                             axis=1), x)
    _, (grad,) = ops.value_and_grad(lambda t: ops.split(t, sections, axis=1)[0], x)
    np.testing.assert_array_equal(grad[:, pieces[0].shape[1]:], 0)


def test_split_rejects_an_unequal_division():
    with pytest.raises(ValueError, match="indices_or_sections"):
        ops.split(np.ones((2, 5)), 2, axis=1)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric", "wrap"])
@pytest.mark.parametrize("pad_width", [((1, 2), (0, 3)), 2, ((1, 1),)], ids=str)
def test_pad(mode, pad_width):
    x = randn(3, 4)
    np.testing.assert_array_equal(ops.pad(x, pad_width, mode=mode), np.pad(x, pad_width, mode=mode))
    check_gradient(lambda t: ops.pad(t, pad_width, mode), x)


def test_pad_constant_values_and_errors():
    x = randn(2, 2)
    np.testing.assert_array_equal(ops.pad(x, 1, constant_values=7.0), np.pad(x, 1, constant_values=7.0))
    with pytest.raises(ValueError, match="constant_values"):
        ops.pad(x, 1, mode="edge", constant_values=1.0)
    np.testing.assert_array_equal(ops.pad(x, 1, mode="maximum"), np.pad(x, 1, mode="maximum"))
    with pytest.raises(NotImplementedError, match="mode='maximum'"):
        ops.value_and_grad(lambda t: ops.pad(t, 1, mode="maximum"), x)


# --------------------------------------------------------------------------------- reductions
REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod, "var": np.var,
              "std": np.std, "logsumexp": None}
AXES = [None, 0, 1, -1, (0, 2), [0, 1], (0, 1, 2)]


def _logsumexp_reference(x, axis, keepdims):
    axis = tuple(axis) if isinstance(axis, list) else axis
    return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction(name, axis, keepdims):
    op = getattr(ops, name)
    x = rng.uniform(0.5, 1.5, (2, 3, 4)) * rng.choice([-1, 1], (2, 3, 4))  # distinct values: no ties for max/min
    reference = REDUCTIONS[name] or _logsumexp_reference
    numpy_axis = tuple(axis) if isinstance(axis, list) else axis
    np.testing.assert_allclose(op(x, axis=axis, keepdims=keepdims), reference(x, axis=numpy_axis, keepdims=keepdims),
                               rtol=1e-13)
    check_gradient(lambda t: op(t, axis, keepdims), x)


def test_max_shares_the_gradient_among_ties_and_initial_can_win():
    _, (grad,) = ops.value_and_grad(lambda t: ops.max(t, axis=1), np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]))
    np.testing.assert_allclose(grad, [[0, 0.5, 0.5], [1, 0, 0]])
    _, (grad,) = ops.value_and_grad(lambda t: ops.max(t, initial=5.0), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_prod_gradient_is_exact_with_zeros():
    x = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 4.0], [1.5, 2.0, -1.0]])
    _, (grad,) = ops.value_and_grad(lambda t: ops.prod(t, axis=1), x)
    np.testing.assert_allclose(grad, [[0.0, 6.0, 0.0], [0.0, 0.0, 0.0], [-2.0, -1.5, 3.0]])
    check_gradient(lambda t: ops.prod(t, axis=0), x)


def test_logsumexp_is_stable():
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]])
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for the second row
        np.testing.assert_allclose(ops.logsumexp(x, axis=1), [1000 + math.log(2), -np.inf])


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_cumsum(axis):
    x = randn(3, 4)
    np.testing.assert_allclose(ops.cumsum(x, axis=axis), np.cumsum(x, axis=axis))
    check_gradient(lambda t: ops.cumsum(t, axis), x)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(axis, keepdims):
    x = randn(3, 4)
    for op, reference in ((ops.argmax, np.argmax), (ops.argmin, np.argmin)):
        result = op(x, axis=axis, keepdims=keepdims)
        assert result.dtype == np.int32
        np.testing.assert_array_equal(result, reference(x, axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("ord_, axis", [(None, None), (None, -1), (2, 1), (1, 0), (np.inf, -1), (-np.inf, 1),
                                        (3, -1), (0.5, 1), (0, -1), ("fro", (0, 1)), ("nuc", (1, 2)), (1, (0, 2)),
                                        (-1, (1, 2)), (np.inf, (1, 2)), (-np.inf, (0, 1)), (2, (1, 2)),
                                        (-2, (2, 1))], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_norm(ord_, axis, keepdims):
    x = randn(2, 3, 4)
    np.testing.assert_allclose(ops.norm(x, ord=ord_, axis=axis, keepdims=keepdims),
                               np.linalg.norm(x, ord=ord_, axis=axis, keepdims=keepdims), rtol=1e-12)
    check_gradient(lambda t: ops.norm(t, ord_, axis, keepdims), x)


@pytest.mark.parametrize("ord_", [None, 1, 2, "fro", "nuc", np.inf])
def test_norm_of_a_matrix_without_axis(ord_):
    x = randn(3, 4)
    np.testing.assert_allclose(ops.norm(x, ord=ord_), np.linalg.norm(x, ord=ord_), rtol=1e-12)
    check_gradient(lambda t: ops.norm(t, ord_), x)


# ----------------------------------------------------------------------------------- creation
def test_creation_ops_follow_keras_dtypes():
    assert ops.zeros((2, 3)).dtype == np.float32 and ops.zeros((2, 3)).shape == (2, 3)
    assert ops.ones((2,), dtype="int32").dtype == np.int32
    np.testing.assert_array_equal(ops.full((2, 2), 7.0), np.full((2, 2), 7.0, dtype=np.float32))
    assert ops.full((2, 2), 7.0).dtype == np.float32
    x = randn(2, 3)
    assert ops.zeros_like(x).dtype == np.float64 and not ops.zeros_like(x).any()
    np.testing.assert_array_equal(ops.ones_like(x, dtype="int32"), np.ones((2, 3), np.int32))
    np.testing.assert_array_equal(ops.arange(5), np.arange(5))
    assert ops.arange(5).dtype == np.int32 and ops.arange(0.0, 1.0, 0.25).dtype == np.float32
    np.testing.assert_array_equal(ops.arange(2, 8, 3), [2, 5])
    np.testing.assert_array_equal(ops.eye(3, 4, k=1), np.eye(3, 4, k=1))
    assert ops.eye(2).dtype == np.float32
    assert ops.shape(x) == (2, 3) and isinstance(ops.shape(x), tuple)
    assert ops.convert_to_tensor([1.0, 2.0]).dtype == np.float32
    assert ops.convert_to_tensor([1, 2]).dtype == np.int32
    assert ops.convert_to_tensor(x).dtype == np.float64
    assert ops.convert_to_tensor(x, dtype="float32").dtype == np.float32
    np.testing.assert_array_equal(ops.convert_to_numpy(x), x)
    with pytest.raises(ValueError, match="sparse=True"):
        ops.convert_to_tensor(x, sparse=True)


def test_convert_to_tensor_keeps_the_gradient_flowing():
    x = randn(2, 3)
    check_gradient(lambda t: ops.convert_to_tensor(t) * 3.0, x)
    with Tape() as tape:
        leaf = Tensor(x, tape)
        out = ops.sum(ops.convert_to_tensor(leaf, dtype="float32"))
        assert ops.shape(leaf) == (2, 3) and isinstance(ops.convert_to_numpy(leaf), np.ndarray)
    tape.backward([(out, np.float32(1.0))])
    assert leaf.grad.dtype == np.float64
    np.testing.assert_array_equal(leaf.grad, 1.0)


# ----------------------------------------------------------------------------------- the tape
def test_tensor_operators_record_on_the_tape():
    x, w, b = randn(4, 3), randn(3, 5), randn(5)

    def model(x, w, b):
        h = x @ w + b
        return (-h[:, :3]).T * 2 - h[:, 1:4].T / 3 + (1.0 - h[:, :3].T) ** 2

    check_gradient(model, x, w, b)


def test_numpy_array_on_the_left_stays_on_the_tape():
    x, m = randn(3, 3), randn(3, 3)
    with Tape() as tape:
        leaf = Tensor(x, tape)
        for out in (m @ leaf, m + leaf, m * leaf, m - leaf, m / (leaf * leaf + 1)):
            assert isinstance(out, Tensor)
    check_gradient(lambda t: m @ t + m * t - m / (t * t + 1) + 2 * t - 1 / (t * t + 2), x)


def test_comparisons_give_plain_boolean_arrays():
    with Tape() as tape:
        leaf = Tensor(np.array([1.0, 2.0]), tape)
        mask = leaf > 1.5
    assert isinstance(mask, np.ndarray) and mask.tolist() == [False, True]


def test_a_value_used_twice_gets_the_sum_of_its_gradients():
    x = randn(3)
    with Tape() as tape:
        leaf = Tensor(x, tape)
        y = ops.exp(leaf)
        out = ops.sum(y * y + ops.sin(leaf) + leaf)
    tape.backward([(out, np.ones(()))])
    np.testing.assert_allclose(leaf.grad, 2 * np.exp(2 * x) + np.cos(x) + 1)


def test_gradients_accumulate_into_leaf_grad_across_backward_calls():
    x = randn(3)
    with Tape() as tape:
        leaf = Tensor(x, tape)
        first, second = ops.sum(leaf * 2.0), ops.sum(leaf * leaf)
    tape.backward([(first, np.ones(()))])
    tape.backward([(second, np.ones(()))])
    np.testing.assert_allclose(leaf.grad, 2 + 2 * x)


def test_custom_gradient_keras_log1pexp_example():
    @ops.custom_gradient
    def log1pexp(x):
        e = ops.exp(x)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.multiply(upstream, 1.0 - 1.0 / ops.add(1, e))

        return ops.log(1 + e), grad

    x = np.array([0.0, 1.0, 100.0])
    value, (grad,) = ops.value_and_grad(log1pexp, x)
    np.testing.assert_allclose(value, np.log1p(np.exp(x)))
    np.testing.assert_allclose(grad, [0.5, 1 - 1 / (1 + math.e), 1.0])
    assert not np.isnan(grad).any()
    np.testing.assert_allclose(log1pexp(x), np.log1p(np.exp(x)))  # no tape: a plain array
    check_gradient(lambda t: log1pexp(t) * t, np.array([-1.0, 0.5, 2.0]))


def test_custom_gradient_with_a_plain_upstream_argument_and_two_inputs():
    @ops.custom_gradient
    def scaled_product(a, b):
        def grad(dy):
            return dy * b * 10.0, dy * a  # deliberately not the true gradient for a

        return a * b, grad

    _, (ga, gb) = ops.value_and_grad(scaled_product, np.array([2.0]), np.array([3.0]))
    np.testing.assert_allclose(ga, [30.0])
    np.testing.assert_allclose(gb, [2.0])


def test_custom_gradient_keeps_errors_raised_inside_grad():
    @ops.custom_gradient
    def broken(x):
        def grad(upstream):
            raise TypeError("inside grad")

        return x * 2, grad

    with pytest.raises(TypeError, match="inside grad"):
        ops.value_and_grad(broken, np.ones(2))


def test_stop_gradient_blocks():
    x = randn(3)
    _, (grad,) = ops.value_and_grad(lambda t: t * ops.stop_gradient(t) + ops.stop_gradient(t * 5.0), x)
    np.testing.assert_allclose(grad, x)


def test_inference_returns_plain_arrays_and_records_nothing():
    x, w = randn(2, 3), randn(3, 4)
    out = ops.softmax(ops.relu(ops.matmul(x, w) + 1.0))
    assert type(out) is np.ndarray
    with Tape() as tape:  # constants only: nothing to record
        out = ops.sum(ops.exp(x) * 2.0)
    assert not isinstance(out, Tensor) and tape.nodes == []


def test_a_tensor_passed_by_keyword_is_differentiated():
    x, scale = randn(4, 3), rng.uniform(0.5, 1.5, 3)
    mean, variance = x.mean(0), x.var(0)
    check_gradient(lambda t, s: ops.batch_normalization(t, mean, variance, axis=-1, scale=s, offset=s * 2.0),
                   x, scale)
    check_gradient(lambda a, b: ops.matmul(x1=a, x2=b), randn(2, 3), randn(3, 2))


def test_ops_on_symbolic_tensors_give_symbolic_outputs():
    inputs = KerasTensor((None, 8, 8, 3))
    kernel = backend.to_device(randn(3, 3, 3, 5))  # ops take device arrays (the symbolic run computes there)
    assert ops.conv(inputs, kernel, padding="same").shape == (None, 8, 8, 5)
    pieces = ops.split(inputs, 3, axis=-1)
    assert [p.shape for p in pieces] == [(None, 8, 8, 1)] * 3
    mean, variance = ops.moments(inputs, axes=[0, 1, 2])
    assert mean.shape == (3,) and variance.shape == (3,)
    assert ops.relu(inputs).shape == (None, 8, 8, 3)


def test_value_and_grad_gives_zeros_for_unused_arguments():
    value, (g1, g2) = ops.value_and_grad(lambda a, b: a * 3.0, np.ones(2), np.ones(3))
    np.testing.assert_array_equal(value, [3.0, 3.0])
    np.testing.assert_array_equal(g1, [3.0, 3.0])
    np.testing.assert_array_equal(g2, np.zeros(3))


class StandInVariable(TensorOperators):
    """What the tape needs of a layer weight: ``value``, ``trainable`` and ``grad`` (a buffer view)."""

    _is_distnn_variable = True

    def __init__(self, value, grad):
        self.value, self.grad, self.trainable = value, grad, grad is not None

    shape = property(lambda self: self.value.shape)


def test_variables_are_leaves_whose_gradients_land_in_their_buffer_views():
    x, w_value, b_value, frozen = randn(5, 4), randn(4, 3), randn(3), randn(3)
    flat = np.full(15, np.nan)  # one flat gradient buffer; stale contents must be overwritten
    w = StandInVariable(w_value, flat[:12].reshape(4, 3))
    b = StandInVariable(b_value, flat[12:])
    moving = StandInVariable(frozen, None)  # non-trainable state: a constant on the tape

    def loss(x, w, b, moving):
        h = ops.tanh(x @ w + b) * moving
        return ops.sum(h * h) + ops.sum(w * w)  # w used three times, b once

    with Tape() as tape:
        out = loss(x, w, b, moving)
    tape.backward([(out, np.ones(()))])
    _, (grad_w, grad_b) = ops.value_and_grad(lambda w_, b_: loss(x, w_, b_, frozen), w_value, b_value)
    np.testing.assert_allclose(flat[:12].reshape(4, 3), grad_w, rtol=1e-13)
    np.testing.assert_allclose(flat[12:], grad_b, rtol=1e-13)
    assert moving.grad is None and len(tape.watched) == 2
