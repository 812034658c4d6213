"""MultiHeadAttention, Attention and AdditiveAttention: outputs and masks against independent numpy
references (weights set with set_weights), the fused attention node against the ops-written one,
float64 finite-difference checks through two-input models, configs, symbolic shapes, automatic
masks, save/load, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import distnn as keras
from distnn import backend, layers
from distnn.layers import AdditiveAttention, Attention, LayerNormalization, MultiHeadAttention
from distnn.models import load_model
from distnn.ops import Tape, Tensor
from distnn.ops.core import value_of
from distnn.utils import check_model_gradients

RNG = np.random.default_rng(0)


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def allowed(batch, q_len, v_len, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
            causal=False):
    """keep[b, t, s]: may query position t attend to value position s (every mask ANDed, as Keras)."""
    keep = np.ones((batch, q_len, v_len), dtype=bool)
    for b in range(batch):
        for t in range(q_len):
            for s in range(v_len):
                keep[b, t, s] = ((query_mask is None or query_mask[b, t]) and (value_mask is None or value_mask[b, s])
                                 and (key_mask is None or key_mask[b, s]) and (not causal or s <= t)
                                 and (attention_mask is None or attention_mask[b, t, s]))
    return keep


def reference_mha(query, value, key, weights, key_dim, keep=None):
    """Keras' MultiHeadAttention written out with einsum: projections, scaled scores, masked softmax."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    q = np.einsum("btd,dhk->bthk", query, wq) + bq
    k = np.einsum("bsd,dhk->bshk", key, wk) + bk
    v = np.einsum("bsd,dhk->bshk", value, wv) + bv
    scores = np.einsum("bthk,bshk->bhts", q / np.sqrt(key_dim), k)
    if keep is not None:
        scores = scores + (1.0 - keep[:, None]) * -1e9
    probabilities = softmax(scores)
    attended = np.einsum("bhts,bshv->bthv", probabilities, v)
    return np.einsum("bthv,hvo->bto", attended, wo) + bo, probabilities


def random_weights(layer):
    weights = [RNG.normal(size=w.shape) * 0.7 for w in layer.get_weights()]
    layer.set_weights(weights)
    return weights


# ------------------------------------------------------------------------ MultiHeadAttention
def test_mha_weight_layout_follows_keras():
    layer = MultiHeadAttention(num_heads=4, key_dim=8, value_dim=6)
    layer(np.zeros((2, 5, 16), "float32"), np.zeros((2, 7, 12), "float32"))
    assert [(w.name, w.shape) for w in layer.weights] == [
        ("query/kernel", (16, 4, 8)), ("query/bias", (4, 8)), ("key/kernel", (12, 4, 8)), ("key/bias", (4, 8)),
        ("value/kernel", (12, 4, 6)), ("value/bias", (4, 6)), ("attention_output/kernel", (4, 6, 16)),
        ("attention_output/bias", (16,))]
    no_bias = MultiHeadAttention(2, 3, use_bias=False, output_shape=5)
    assert no_bias(np.zeros((1, 4, 6), "float32"), np.zeros((1, 4, 6), "float32")).shape == (1, 4, 5)
    assert [w.shape for w in no_bias.weights] == [(6, 2, 3), (6, 2, 3), (6, 2, 3), (2, 3, 5)]
    assert layer.query_dense.kernel is layer.weights[0]
    projection = layer.output_dense  # Keras' EinsumDense "abcd,cde->abe"
    assert type(projection).from_config(projection.get_config()).get_config() == projection.get_config()


@pytest.mark.parametrize("value_dim, with_key", [(None, False), (5, True)])
def test_mha_matches_reference(value_dim, with_key):
    query, value, key = RNG.normal(size=(3, 4, 6)), RNG.normal(size=(3, 5, 7)), RNG.normal(size=(3, 5, 2))
    layer = MultiHeadAttention(num_heads=2, key_dim=3, value_dim=value_dim, dtype="float64")
    kwargs = {"key": key} if with_key else {}
    layer(query, value, **kwargs)
    weights = random_weights(layer)
    output, scores = layer(query, value, return_attention_scores=True, **kwargs)
    expected, expected_scores = reference_mha(query, value, key if with_key else value, weights, 3)
    np.testing.assert_allclose(output, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(layer(query, value, training=True, **kwargs), expected, rtol=1e-10, atol=1e-12)


MASK_CASES = {
    "causal": dict(use_causal_mask=True),
    "value_mask": dict(value_mask=[[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]]),
    "query_and_key_masks": dict(query_mask=[[True, False, True, True], [True, True, True, False]],
                                key_mask=[[True, True, True, False, False], [False, True, True, True, True]]),
    "attention_mask_and_causal": dict(attention_mask=RNG.random((2, 4, 5)) > 0.3, use_causal_mask=True),
    "broadcast_attention_mask": dict(attention_mask=np.tril(np.ones((4, 5), bool), k=1)),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mha_masks_match_reference(case):
    kwargs = MASK_CASES[case]
    query, value = RNG.normal(size=(2, 4, 6)), RNG.normal(size=(2, 5, 6))
    layer = MultiHeadAttention(num_heads=3, key_dim=2, dtype="float64")
    layer(query, value)
    weights = random_weights(layer)
    masks = {name: (None if kwargs.get(name) is None else np.asarray(kwargs[name], bool))
             for name in ("query_mask", "value_mask", "key_mask")}
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None:
        attention_mask = np.broadcast_to(attention_mask, (2, 4, 5))
    keep = allowed(2, 4, 5, attention_mask=attention_mask, causal=kwargs.get("use_causal_mask", False), **masks)
    output, scores = layer(query, value, return_attention_scores=True, **kwargs)
    expected, expected_scores = reference_mha(query, value, value, weights, 2, keep)
    np.testing.assert_allclose(output, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-9, atol=1e-14)
    rows_with_values = keep.any(axis=-1)
    blocked = np.broadcast_to((~keep & rows_with_values[:, :, None])[:, None], scores.shape)
    assert blocked.any() and np.all(scores[blocked] == 0)


def _tape_gradients(layer, query, value, upstream, **kwargs):
    with Tape() as tape:
        q, v = Tensor(backend.to_device(query), tape), Tensor(backend.to_device(value), tape)
        output = layer(q, v, training=True, **kwargs)
        if isinstance(output, tuple):
            output = output[0]
    for w in layer.trainable_weights:
        w.grad[...] = np.nan  # every gradient must be written
    tape.backward([(output, upstream)])
    return [value_of(output).copy(), q.grad.copy(), v.grad.copy()] + [w.grad.copy() for w in layer.trainable_weights]


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_mha_fused_attention_equals_the_ops_reference(dropout):
    """return_attention_scores on the tape computes the attention with distnn.ops: same values and
    gradients as the fused node (dropout masks equal: two layers with the same seed)."""
    query, value = RNG.normal(size=(3, 5, 6)), RNG.normal(size=(3, 7, 6))
    upstream = RNG.normal(size=(3, 5, 6))
    fused, reference = (MultiHeadAttention(2, 4, dropout=dropout, seed=11, dtype="float64") for _ in range(2))
    fused(query, value)
    reference(query, value)
    reference.set_weights(random_weights(fused))
    mask = dict(use_causal_mask=True, value_mask=RNG.random((3, 7)) > 0.2)
    got = _tape_gradients(fused, query, value, upstream, **mask)
    want = _tape_gradients(reference, query, value, upstream, return_attention_scores=True, **mask)
    for a, b in zip(got, want):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    if dropout:
        assert not np.allclose(got[0], fused(query, value, use_causal_mask=True, value_mask=mask["value_mask"]))


def test_mha_gradients_through_a_two_input_model(float64):
    query_in, value_in = keras.Input(shape=(4, 5)), keras.Input(shape=(6, 3))
    attended = MultiHeadAttention(2, 3, value_dim=2, bias_initializer="random_normal")(
        query_in, value_in, use_causal_mask=True)
    outputs = layers.Dense(2)(layers.Flatten()(attended))
    model = keras.Model([query_in, value_in], outputs)
    model.compile("sgd", "mse")
    x = [RNG.normal(size=(5, 4, 5)), RNG.normal(size=(5, 6, 3))]
    result = check_model_gradients(model, x, RNG.normal(size=(5, 2)))
    assert result.max_error < 1e-6, result


def test_mha_shared_and_with_dropout_gradients(float64):
    """One layer called twice in a step (its attention nodes keep their own buffers), with dropout."""
    inputs = keras.Input(shape=(5, 4))
    attention = MultiHeadAttention(2, 3, dropout=0.3, seed=3)
    x = attention(inputs, inputs)
    x = LayerNormalization()(layers.add([inputs, x]))
    x = attention(x, x, use_causal_mask=True)
    model = keras.Model(inputs, layers.Dense(1)(layers.Flatten()(x)))
    model.compile("sgd", "mse")
    result = check_model_gradients(model, RNG.normal(size=(6, 5, 4)), RNG.normal(size=(6, 1)))
    assert result.max_error < 1e-6, result


def test_mha_symbolic_shapes_config_and_saving(tmp_path):
    query_in, value_in = keras.Input(shape=(None, 8)), keras.Input(shape=(6, 5))
    layer = MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, dropout=0.1, output_shape=7, seed=5,
                               kernel_regularizer="l2", name="mha")
    output, scores = layer(query_in, value_in, return_attention_scores=True)
    assert output.shape == (None, None, 7) and scores.shape == (None, 2, None, 6)
    config = layer.get_config()
    assert {k: config[k] for k in ("num_heads", "key_dim", "value_dim", "dropout", "output_shape", "seed")} == \
        {"num_heads": 2, "key_dim": 4, "value_dim": 3, "dropout": 0.1, "output_shape": [7], "seed": 5}
    assert MultiHeadAttention.from_config(config).get_config() == config

    model = keras.Model([query_in, value_in], [layers.Dense(1)(output), scores])
    model.compile("adam", ["mse", None])
    x = [RNG.normal(size=(8, 3, 8)).astype("float32"), RNG.normal(size=(8, 6, 5)).astype("float32")]
    model.fit(x, [RNG.normal(size=(8, 3, 1)).astype("float32"), np.zeros((8, 2, 3, 6), "float32")], epochs=1,
              batch_size=4, verbose=0)
    model.save(tmp_path / "mha.keras")
    loaded = load_model(tmp_path / "mha.keras")
    for got, want in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)[1].sum(axis=-1), 1.0, rtol=1e-5)


class ZeroMasking(layers.Layer):
    """Marks positions whose first feature is 0 as padding (as Keras' Masking does)."""

    def call(self, x):
        return x

    def compute_mask(self, inputs, mask=None):
        return value_of(inputs)[..., 0] != 0


def test_masks_carried_by_the_inputs_are_used():
    query, value = RNG.normal(size=(2, 4, 6)), RNG.normal(size=(2, 5, 6))
    query[0, 1, 0] = value[1, 3, 0] = value[0, 0, 0] = 0.0
    layer = MultiHeadAttention(2, 3)
    explicit = layer(query, value, query_mask=query[..., 0] != 0, value_mask=value[..., 0] != 0)
    assert not np.allclose(explicit, layer(query, value), atol=1e-3)

    class Probe(layers.Layer):
        def call(self, x, mask=None):
            self.seen = mask
            return x

    q_in, v_in = keras.Input(shape=(4, 6)), keras.Input(shape=(5, 6))
    attention = Attention()
    probe = Probe()
    out = probe(layer(ZeroMasking()(q_in), ZeroMasking()(v_in)))
    dot = attention([ZeroMasking()(q_in), ZeroMasking()(v_in)])
    model = keras.Model([q_in, v_in], [out, dot])
    got_mha, got_dot = model.predict([query, value], verbose=0)
    np.testing.assert_allclose(got_mha, explicit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_dot, attention([query, value], mask=[query[..., 0] != 0, value[..., 0] != 0]),
                               rtol=1e-5, atol=1e-6)
    assert np.all(got_dot[0, 1] == 0)  # a masked query position outputs zeros
    np.testing.assert_array_equal(probe.seen, query[..., 0] != 0)  # the output carries the query's mask

    key = RNG.normal(size=(2, 5, 6))
    key[0, 2, 0] = 0.0
    k_in = keras.Input(shape=(5, 6))
    keyed = keras.Model([q_in, v_in, k_in], layer(q_in, v_in, key=ZeroMasking()(k_in)))
    np.testing.assert_allclose(keyed.predict([query, value, key], verbose=0),
                               layer(query, value, key=key, key_mask=key[..., 0] != 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer(query, value, key=key), layer(query, value, key=key, key_mask=key[..., 0] != 0))


@pytest.mark.parametrize("make, call, match", [
    (lambda: MultiHeadAttention(0, 4), None, "num_heads=0"),
    (lambda: MultiHeadAttention(2, 4, value_dim=-1), None, "value_dim=-1"),
    (lambda: MultiHeadAttention(2, 4, dropout=1.0), None, "dropout=1.0"),
    (lambda: MultiHeadAttention(2, 4, attention_axes=(1, 2)), None, "attention_axes"),
    (lambda: MultiHeadAttention(2, 4, attention_axes=-1), None, "attention_axes"),
    (lambda: MultiHeadAttention(2, 4), lambda layer: layer(np.ones((2, 6)), np.ones((2, 6))), "3-D"),
    (lambda: MultiHeadAttention(2, 4), lambda layer: layer(np.ones((2, 3, 6)), np.ones((2, 4, 6)),
                                                          key=np.ones((2, 5, 6))), "same length"),
    (lambda: MultiHeadAttention(2, 4), lambda layer: layer(np.ones((2, 3, 6)), np.ones((2, 4, 6)),
                                                          attention_mask=np.ones((2, 4, 3))), "attention_mask"),
    (lambda: MultiHeadAttention(2, 4), lambda layer: layer(np.ones((2, 3, 6)), np.ones((2, 4, 6)),
                                                          value_mask=np.ones((2, 3))), "value_mask"),
    (lambda: Attention(score_mode="add"), None, "score_mode"),
    (lambda: AdditiveAttention(score_mode="dot"), None, "score_mode"),
    (lambda: Attention(), lambda layer: layer(np.ones((2, 3, 4))), "list of inputs"),
    (lambda: Attention(), lambda layer: layer([np.ones((2, 3, 4))] * 4), "length 2 or 3"),
    (lambda: Attention(), lambda layer: layer([np.ones((2, 3, 4))] * 2, mask=np.ones((2, 3))), "mask must be a list"),
])
def test_bad_arguments_fail_clearly(make, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layer = make()
        call(layer)


def test_mha_default_attention_axes_accepted():
    for axes in (None, 1, (1,), [-2]):
        layer = MultiHeadAttention(2, 2, attention_axes=axes)
        assert layer(np.ones((1, 3, 4), "float32"), np.ones((1, 3, 4), "float32")).shape == (1, 3, 4)


# ---------------------------------------------------------------- Attention, AdditiveAttention
def reference_attention(query, value, key, mode, scale=None, concat_weight=None, query_mask=None,
                        value_mask=None, causal=False):
    if mode == "dot":
        scores = np.einsum("btd,bsd->bts", query, key) * (1.0 if scale is None else scale)
    elif mode == "concat":
        pairs = query[:, :, None, :] + key[:, None, :, :]
        scores = concat_weight * np.tanh((1.0 if scale is None else scale) * pairs).sum(axis=-1)
    else:  # additive
        scores = ((1.0 if scale is None else scale) * np.tanh(query[:, :, None, :] + key[:, None, :, :])).sum(-1)
    keep = allowed(len(query), query.shape[1], value.shape[1], value_mask=value_mask, causal=causal)
    weights = softmax(scores - 1e9 * (1.0 - keep))
    output = weights @ value
    if query_mask is not None:
        output = output * query_mask[:, :, None]
    return output, weights


@pytest.mark.parametrize("make, mode", [
    (lambda: Attention(dtype="float64"), "dot"), (lambda: Attention(use_scale=True, dtype="float64"), "dot"),
    (lambda: Attention(score_mode="concat", dtype="float64"), "concat"),
    (lambda: Attention(use_scale=True, score_mode="concat", dtype="float64"), "concat"),
    (lambda: AdditiveAttention(dtype="float64"), "additive"),
    (lambda: AdditiveAttention(use_scale=False, dtype="float64"), "additive")])
@pytest.mark.parametrize("with_key, masked, causal", [(False, False, False), (True, True, False), (False, True, True)])
def test_attention_layers_match_reference(make, mode, with_key, masked, causal):
    query, value, key = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 5, 4)), RNG.normal(size=(2, 5, 4))
    layer = make()
    inputs = [query, value, key] if with_key else [query, value]
    layer(inputs)
    weights = random_weights(layer)
    scale = weights[0] if layer.use_scale else None
    concat_weight = weights[-1] if mode == "concat" else None
    q_mask = np.array([[True, False, True], [True, True, True]]) if masked else None
    v_mask = np.array([[True, True, False, True, False], [False, True, True, True, True]]) if masked else None
    output, scores = layer(inputs, mask=[q_mask, v_mask] if masked else None, return_attention_scores=True,
                           use_causal_mask=causal)
    expected, expected_scores = reference_attention(query, value, key if with_key else value, mode, scale,
                                                    concat_weight, q_mask, v_mask, causal)
    np.testing.assert_allclose(output, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("make", [lambda: Attention(use_scale=True), lambda: Attention(score_mode="concat"),
                                  lambda: AdditiveAttention()])
def test_attention_gradients_through_a_two_input_model(make, float64):
    query_in, value_in = keras.Input(shape=(3, 4)), keras.Input(shape=(5, 4))
    attended = make()([layers.Dense(4)(query_in), value_in], use_causal_mask=True)
    model = keras.Model([query_in, value_in], layers.Dense(2)(layers.Flatten()(attended)))
    model.compile("sgd", "mse")
    result = check_model_gradients(model, [RNG.normal(size=(4, 3, 4)), RNG.normal(size=(4, 5, 4))],
                                   RNG.normal(size=(4, 2)))
    assert result.max_error < 1e-6, result


def test_attention_dropout_and_config():
    layer = Attention(use_scale=True, score_mode="concat", dropout=0.5, seed=2)
    query, value = RNG.normal(size=(4, 6, 3)).astype("float32"), RNG.normal(size=(4, 8, 3)).astype("float32")
    inference = layer([query, value])
    np.testing.assert_array_equal(inference, layer([query, value]))
    _, dropped = layer([query, value], training=True, return_attention_scores=True)
    assert np.any(dropped == 0) and np.any(dropped > 1.0 / 8)  # Keras returns the weights after dropout
    config = layer.get_config()
    assert {k: config[k] for k in ("use_scale", "score_mode", "dropout", "seed")} == \
        {"use_scale": True, "score_mode": "concat", "dropout": 0.5, "seed": 2}
    assert Attention.from_config(config).get_config() == config
    additive = AdditiveAttention(dropout=0.2).get_config()
    assert "score_mode" not in additive and AdditiveAttention.from_config(additive).get_config() == additive
    q_in, v_in = keras.Input(shape=(6, 3)), keras.Input(shape=(8, 3))
    out, scores = AdditiveAttention()([q_in, v_in], return_attention_scores=True)
    assert out.shape == (None, 6, 3) and scores.shape == (None, 6, 8)


def test_attention_layers_save_and_load_in_a_model(tmp_path):
    q_in, v_in = keras.Input(shape=(6, 4)), keras.Input(shape=(8, 4))
    dot = Attention(use_scale=True, score_mode="concat")([q_in, v_in], use_causal_mask=True)
    additive = AdditiveAttention(dropout=0.1, seed=1)([q_in, v_in, layers.Dense(4)(v_in)])
    model = keras.Model([q_in, v_in], layers.Dense(2)(layers.concatenate([dot, additive])))
    model.compile("adam", "mse")
    x = [RNG.normal(size=(10, 6, 4)).astype("float32"), RNG.normal(size=(10, 8, 4)).astype("float32")]
    model.fit(x, RNG.normal(size=(10, 6, 2)).astype("float32"), epochs=2, batch_size=5, verbose=0)
    model.save(tmp_path / "attention.keras")
    loaded = load_model(tmp_path / "attention.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    names = [w.name for w in model.weights if "attention" in w.name]
    assert len(names) == 3 and [w.name for w in loaded.weights if "attention" in w.name] == names


def test_mha_takes_its_inputs_as_a_list_too_and_applies_constraints():
    query, value, key = (RNG.normal(size=(2, n, 4)).astype("float32") for n in (3, 5, 5))
    layer = MultiHeadAttention(2, 3)
    np.testing.assert_array_equal(layer([query, value, key]), layer(query, value, key=key))
    np.testing.assert_array_equal(layer([query, value]), layer(query, value))
    with pytest.raises(ValueError, match="needs a value"):
        layer(query)
    with pytest.raises(ValueError, match="one list"):
        layer([query, value], value)

    constrained = MultiHeadAttention(2, 3, kernel_constraint="non_neg", bias_constraint="non_neg")
    inputs = keras.Input(shape=(3, 4))
    model = keras.Model(inputs, constrained(inputs, inputs))
    model.compile("sgd", "mse")
    model.fit(query, RNG.normal(size=(2, 3, 4)).astype("float32") * 10, epochs=3, batch_size=2, verbose=0)
    assert all(np.all(w >= 0) for w in constrained.get_weights())
    assert constrained.get_config()["kernel_constraint"]["class_name"] == "NonNeg"
