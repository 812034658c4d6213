"""Merging layers: values against numpy, Keras 3 broadcasting and shapes, errors, masks, configs.
(Gradients, saving and training of every merging layer: tests/test_layer_test_all.py.)"""
import numpy as np
import pytest

import distnn
from distnn import backend, layers
from distnn.ops import Tape, Tensor

rng = np.random.default_rng(0)
a = rng.standard_normal((2, 3, 4)).astype("float32")
b = rng.standard_normal((2, 3, 4)).astype("float32")
c = rng.standard_normal((2, 3, 4)).astype("float32")


@pytest.mark.parametrize("layer, expected", [
    (layers.Add(), a + b + c),
    (layers.Multiply(), a * b * c),
    (layers.Average(), (a + b + c) / 3),
    (layers.Maximum(), np.maximum(np.maximum(a, b), c)),
    (layers.Minimum(), np.minimum(np.minimum(a, b), c)),
    (layers.Concatenate(), np.concatenate([a, b, c], axis=-1)),
    (layers.Concatenate(axis=1), np.concatenate([a, b, c], axis=1)),
])
def test_values_match_numpy(layer, expected):
    np.testing.assert_allclose(layer([a, b, c]), expected, rtol=1e-6)


def test_subtract():
    np.testing.assert_allclose(layers.Subtract()([a, b]), a - b)


def test_lower_rank_inputs_broadcast_after_the_batch_axis():
    v = rng.standard_normal((2, 4)).astype("float32")
    np.testing.assert_allclose(layers.Add()([a, v]), a + v[:, None, :])
    np.testing.assert_allclose(layers.Multiply()([a[:, :1], b]), a[:, :1] * b)
    assert layers.Add().compute_output_shape([(None, 3, 4), (None, 4)]) == (None, 3, 4)
    assert layers.Add().compute_output_shape([(None, 1, 4), (None, 3, 1)]) == (None, 3, 4)
    assert layers.Add().compute_output_shape([(None, 3), (None, None)]) == (None, None)


@pytest.mark.parametrize("axes, shapes, expected", [
    (-1, [(2, 4), (2, 4)], lambda x, y: np.einsum("bk,bk->b", x, y)[:, None]),
    (1, [(2, 4), (2, 4, 3)], lambda x, y: np.einsum("bk,bkj->bj", x, y)),
    ((2, 1), [(2, 3, 4), (2, 4)], lambda x, y: np.einsum("bik,bk->bi", x, y)),
    ((1, 2), [(2, 3, 4), (2, 5, 3)], lambda x, y: np.einsum("bki,bjk->bij", x, y)),
    ((2, 2), [(2, 3, 4, 5), (2, 6, 4)], lambda x, y: np.einsum("bikl,bjk->bilj", x, y)),
])
def test_dot_is_a_per_sample_tensordot(axes, shapes, expected):
    x, y = [rng.standard_normal(s) for s in shapes]
    layer = layers.Dot(axes=axes, dtype="float64")
    out = layer([x, y])
    want = expected(x, y)
    np.testing.assert_allclose(out, want, rtol=1e-10)
    assert layer.compute_output_shape([(None, *s[1:]) for s in shapes]) == (None, *want.shape[1:])


def test_dot_normalize_gives_cosine_similarity():
    x, y = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(layers.Dot(axes=1, normalize=True, dtype="float64")([x, y])[:, 0], cosine)
    # A zero vector gives 0, not NaN (its norm is clamped at Keras' epsilon).
    out = layers.Dot(axes=1, normalize=True)([np.zeros((1, 5), "float32"), np.ones((1, 5), "float32")])
    assert out.tolist() == [[0.0]]


def test_symbolic_shapes():
    x, y = distnn.Input((3, 4)), distnn.Input((4,))
    assert layers.add([x, y]).shape == (None, 3, 4)
    assert layers.concatenate([x, x], axis=1).shape == (None, 6, 4)
    assert layers.dot([x, y], axes=(2, 1)).shape == (None, 3)
    assert layers.Concatenate()([x, distnn.Input((3, 2))]).shape == (None, 3, 6)


def test_residual_add_sends_the_gradient_to_both_branches():
    layer = layers.Add()
    with Tape() as tape:
        x, y = Tensor(backend.to_device(a), tape), Tensor(backend.to_device(b), tape)
        out = layer([x, layers.Multiply()([x, y])])
    seed = np.ones_like(a)
    tape.backward([(out, seed)])
    np.testing.assert_allclose(x.grad, 1 + b)
    np.testing.assert_allclose(y.grad, a)


@pytest.mark.parametrize("call, message", [
    (lambda: layers.Add()([a]), r"A merge layer should be called on a list of at least 2 inputs\. Received: "
                                r"input_shape=\[\(None, 3, 4\)\]"),
    (lambda: layers.Add()(a), "A merge layer should be called on a list of at least 2 inputs"),
    (lambda: layers.Average()([]), "at least 2 inputs"),
    (lambda: layers.Subtract()([a, b, c]), r"A `Subtract` layer should be called on exactly 2 inputs"),
    (lambda: layers.Dot(axes=1)([a, b, c]), r"A `Dot` layer should be called on exactly 2 inputs"),
    (lambda: layers.Add()([a, a[:, :, :3]]), r"incompatible shapes\. Received: input_shape=\[\(None, 3, 4\), "
                                             r"\(None, 3, 3\)\]"),
    (lambda: layers.Add()([a, a[:1]]), "Cannot merge tensors with different batch sizes"),
    (lambda: layers.Concatenate()([a, a[:, :2, :]]), "matching shapes except for the concatenation axis"),
    (lambda: layers.Concatenate(axis=3)([a, b]), "axis 3 is out of range"),
    (lambda: layers.Dot(axes=0)([a, b]), "must name a non-batch axis"),
    (lambda: layers.Dot(axes=-1)([a[:, 0, 0], b[:, 0, 0]]), "at least 2 axes"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_dot_axes_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"axis values 4 \(at axis 2\) != 3 \(at axis 1\)"):
        layers.Dot(axes=(2, 1))([a, b])


def test_a_built_merge_layer_rejects_a_single_input_later():
    layer = layers.Add()
    layer([a, b])
    with pytest.raises(ValueError, match="at least 2 inputs. Received: inputs=<ndarray shape=\\(2, 3, 4\\)>"):
        layer(a)


@pytest.mark.parametrize("make, message", [
    (lambda: layers.Concatenate(axis=1.0), "axis must be an integer. Received: axis=1.0"),
    (lambda: layers.Dot(axes=[1, 2, 3]), "it should contain two elements. Received: axes=\\[1, 2, 3\\]"),
    (lambda: layers.Dot(axes=[1, "a"]), "list elements should be integers"),
    (lambda: layers.Dot(axes="1"), "it should be a list or an int. Received: axes=1"),
    (lambda: layers.Dot(axes=1, normalize="yes"), "normalize must be a bool"),
    (lambda: layers.Dot(), "axes"),
])
def test_bad_arguments(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_configs_hold_keras_arguments():
    assert layers.Concatenate(axis=1).get_config()["axis"] == 1
    config = layers.Dot(axes=[1, 2], normalize=True, name="d").get_config()
    assert (config["axes"], config["normalize"], config["name"]) == ([1, 2], True, "d")
    assert layers.Dot.from_config(config).axes == [1, 2]
    assert set(layers.Add(name="x").get_config()) == {"name", "trainable", "dtype"}


def test_functional_aliases_pass_their_arguments():
    x, y = distnn.Input((3, 4)), distnn.Input((3, 4))
    out = layers.concatenate([x, y], axis=1, name="joined")
    assert out.node.operation.name == "joined" and out.shape == (None, 6, 4)
    out = layers.dot([x, y], axes=2, normalize=True)
    assert out.node.operation.normalize and out.shape == (None, 3, 3)
    out = layers.average([x, y])
    model = distnn.Model([x, y], out)
    np.testing.assert_allclose(model([a, b]), (a + b) / 2, rtol=1e-6)


# ----------------------------------------------------------------------------------- masks
ma = np.array([[True, False, True], [True, True, False]])
mb = np.array([[False, False, True], [True, False, False]])


def test_elementwise_merges_or_the_masks():
    assert (layers.Add().compute_mask([a, b], [ma, mb]) == (ma | mb)).all()
    assert layers.Maximum().compute_mask([a, b], [ma, None]) is None
    assert layers.Add().compute_mask([a, b], None) is None
    assert layers.Dot(axes=2).compute_mask([a, b], [ma, mb]) is None


def test_concatenate_joins_the_masks():
    joined = layers.Concatenate(axis=1).compute_mask([a, b], [ma, None])
    assert (joined == np.concatenate([ma, np.ones_like(mb)], axis=1)).all()
    # Along the features, a timestep stays valid if any input's is (Keras 3).
    assert (layers.Concatenate().compute_mask([a, b], [ma, mb]) == (ma | mb)).all()


def test_bad_masks():
    with pytest.raises(ValueError, match="`mask` should be a list"):
        layers.Add().compute_mask([a, b], ma)
    with pytest.raises(ValueError, match="should have the same length"):
        layers.Add().compute_mask([a, b], [ma])
