"""Embedding and Masking: lookups, masks, the sparse row gradient (duplicates, untouched rows, no
vocabulary-sized temporary), integer inputs through models, configs and saving."""
import tracemalloc

import numpy as np
import pytest

from distnn import backend
from distnn.layers import Dense, Embedding, Flatten, Input, Masking
from distnn.layers.wrappers import deserialize, serialize
from distnn.models import Model, load_model
from distnn.ops import Tape, Tensor
from distnn.optimizers import Adam
from distnn.utils import check_layer_gradients, set_random_seed


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


def _backward(layer, ids, upstream):
    with Tape() as tape:
        y = layer(ids, training=True)
    tape.backward([(y, upstream)])
    return y


def test_lookup_shapes_and_keras_defaults():
    layer = Embedding(10, 3)
    ids = np.array([[1, 2, 2], [9, 0, 4]])
    out = layer(ids)
    np.testing.assert_array_equal(out, layer.embeddings.numpy()[ids])
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    assert layer.compute_output_shape((None, 3)) == (None, 3, 3)
    assert np.abs(layer.embeddings.numpy()).max() <= 0.05  # Keras' "uniform": U(-0.05, 0.05)
    np.testing.assert_array_equal(layer(ids.astype("float32")), out)  # float ids are cast, as in Keras
    assert layer.compute_mask(ids) is None


def test_mask_zero_and_the_weights_argument():
    table = np.arange(12.0).reshape(4, 3)
    layer = Embedding(4, 3, mask_zero=True, weights=[table])
    ids = np.array([[1, 0, 3]])
    np.testing.assert_array_equal(layer(ids), table[ids])
    np.testing.assert_array_equal(layer.compute_mask(ids), [[True, False, True]])


def test_ids_out_of_range_fail_by_value():
    layer = Embedding(5, 2)
    with pytest.raises(ValueError, match=r"\[0, 4\].*from 0 to 5"):
        layer(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="from -1"):
        layer(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="input_dim=0"):
        Embedding(0, 2)
    with pytest.raises(ValueError, match="lora_rank"):
        Embedding(3, 2, lora_rank=4)


def test_gradient_adds_duplicates_and_clears_rows_not_used(float64):
    layer = Embedding(8, 3)
    layer.build(None)
    layer.embeddings.grad[...] = 7.0  # what an optimizer step leaves in the gradient buffer
    ids = np.array([[1, 3, 1], [3, 3, 6]])
    upstream = np.random.default_rng(0).standard_normal((2, 3, 3))
    _backward(layer, ids, upstream)
    expected = np.zeros((8, 3))
    for row, g in zip(ids.ravel(), upstream.reshape(-1, 3)):
        expected[row] += g
    np.testing.assert_allclose(layer.embeddings.grad, expected, atol=1e-12)


def test_gradient_check(float64):
    # Only the table: ids are not differentiable (a perturbed float id truncates to another id).
    result = check_layer_gradients(Embedding(7, 4, name="emb"), x=np.random.default_rng(1).integers(0, 7, (3, 5)))
    assert result.errors["emb/embeddings"] < 1e-6


def test_backward_allocates_nothing_vocabulary_sized():
    vocabulary, width = 200_000, 16  # a 12.8 MB table (float32)
    layer = Embedding(vocabulary, width)
    ids = np.random.default_rng(0).integers(0, vocabulary, (32, 20))
    upstream = np.ones((32, 20, width), dtype=np.float32)
    _backward(layer, ids, upstream)  # warm up the buffers
    tracemalloc.start()
    try:
        _backward(layer, ids, upstream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    table_bytes = vocabulary * width * 4
    assert peak < table_bytes / 10, f"backward peaked at {peak} bytes against a {table_bytes}-byte table"
    touched = np.unique(ids)
    assert np.count_nonzero(layer.embeddings.grad.any(axis=1)) == len(touched)


def test_integer_inputs_train_in_a_model_and_reload(tmp_path):
    set_random_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (64, 6))
    y = (ids[:, 0] >= 10).astype("float32")[:, None]  # the label is in the first token
    inputs = Input((6,), dtype="int32")
    model = Model(inputs, Dense(1, activation="sigmoid")(Flatten()(Embedding(20, 4)(inputs))))
    model.compile(Adam(0.02), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(ids, y, epochs=40, batch_size=16, verbose=0).history
    assert history["accuracy"][-1] >= 0.95
    model.save(tmp_path / "embedding.keras")
    reloaded = load_model(tmp_path / "embedding.keras")
    np.testing.assert_array_equal(reloaded.predict(ids, verbose=0), model.predict(ids, verbose=0))
    assert reloaded.layers[1].get_config()["embeddings_initializer"]["class_name"] == "RandomUniform"


def test_config_round_trips():
    for layer in (Embedding(9, 2, mask_zero=True, embeddings_regularizer="l2"), Masking(-1.0)):
        config = serialize(layer)
        assert serialize(deserialize(config)) == config
    with pytest.warns(UserWarning, match="input_length"):
        Embedding(4, 2, input_length=3)


def test_masking_zeroes_and_masks_steps(float64):
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    x[0, 1] = -1.0
    x[1, 3, 0] = -1.0  # only one feature equal to the mask value: not masked
    layer = Masking(-1.0)
    np.testing.assert_array_equal(layer.compute_mask(x), [[True, False, True, True], [True, True, True, True]])
    expected = x.copy()
    expected[0, 1] = 0.0
    np.testing.assert_array_equal(layer(x), expected)
    with Tape() as tape:
        leaf = Tensor(backend.to_device(x), tape)
        y = layer(leaf)
    tape.backward([(y, np.ones_like(x))])
    np.testing.assert_array_equal(leaf.grad, (expected != 0) | (x != -1.0).any(-1, keepdims=True))
    clean = np.random.default_rng(1).standard_normal((2, 4, 3))  # no step masked: smooth, so checkable
    assert check_layer_gradients(Masking(-1.0), x=clean).max_error < 1e-6

