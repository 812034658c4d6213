"""Recurrent layers and sequence wrappers: Keras 3 arguments, configs, shapes, float64 gradient checks,
the fused path against the ops reference, Keras weight layouts against an independent numpy loop,
masks, states, dropout, and saving inside models."""
import warnings

import numpy as np
import pytest

from distnn import backend, initializers, ops
from distnn.layers import (GRU, LSTM, Bidirectional, Dense, Embedding, Input, Layer, Masking, Permute, RepeatVector,
                           SimpleRNN, TimeDistributed)
from distnn.layers.wrappers import deserialize, serialize
from distnn.models import Model, load_model
from distnn.ops import Tape, Tensor
from distnn.optimizers import Adam
from distnn.utils import check_layer_gradients, set_random_seed

B, T, F, U = 3, 5, 4, 6
RNNS = [(SimpleRNN, {}), (LSTM, {}), (GRU, {}), (GRU, {"reset_after": False})]


@pytest.fixture(autouse=True)
def float64():
    backend.set_floatx("float64")
    set_random_seed(0)
    yield
    backend.set_floatx("float32")


def _x(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).standard_normal(shape)


def _mask(seed=1):
    mask = np.random.default_rng(seed).random((B, T)) > 0.35
    mask[0, :2] = False  # a sample whose first steps are masked (the state stays the initial one)
    mask[1, -2:] = False  # and one padded at the end
    return mask


def _run_on_tape(layer, x, reference, states=None, **kwargs):
    """Outputs, then every gradient (weights, input, initial states) of sum(r_i * output_i)."""
    layer.seed_generator.state = [layer.seed_generator.state[0], 0]  # the same dropout masks for both paths
    with Tape() as tape:
        x_leaf = Tensor(backend.to_device(x), tape)
        state_leaves = None if states is None else [Tensor(backend.to_device(s), tape) for s in states]
        call = layer._reference_call if reference else layer
        y = call(x_leaf, initial_state=state_leaves, **kwargs)
    outputs = y if isinstance(y, list) else [y]
    for v in layer.trainable_weights:
        v.grad[...] = 0
    tape.backward([(out, backend.to_device(np.random.default_rng(10 + i).standard_normal(out.shape)))
                   for i, out in enumerate(outputs)])
    grads = [v.grad.copy() for v in layer.trainable_weights] + [x_leaf.grad]
    grads += [] if states is None else [s.grad if s.grad is not None else np.zeros_like(s.value) for s in state_leaves]
    return [backend.to_numpy(o.value) for o in outputs], grads


# ------------------------------------------------------------------------------------ fused vs reference
@pytest.mark.parametrize("cls, base", RNNS)
@pytest.mark.parametrize("options", [
    {}, {"return_sequences": True}, {"return_state": True},
    {"return_sequences": True, "return_state": True, "go_backwards": True},
    {"return_sequences": True, "zero_output_for_mask": True}, {"dropout": 0.4, "seed": 3, "return_sequences": True},
    {"activation": "relu"},
])
def test_fused_path_equals_the_ops_reference(cls, base, options):
    layer = cls(U, **base, **options)
    layer(_x())
    states = [_x(7 + k, (B, U)) for k in range(layer.state_count)]
    for kwargs in ({}, {"mask": _mask()}, {"mask": _mask(), "training": True}):
        fused = _run_on_tape(layer, _x(), False, states, **kwargs)
        reference = _run_on_tape(layer, _x(), True, states, **kwargs)
        for got, want in zip(fused[0] + fused[1], reference[0] + reference[1]):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_fused_path_trains_and_reference_covers_recurrent_dropout():
    layer = LSTM(U, recurrent_dropout=0.3, dropout=0.2, seed=5, return_sequences=True)
    x = _x()
    inference = layer(x)
    np.testing.assert_allclose(inference, layer._reference_call(backend.to_device(x)), atol=1e-12)  # no dropout outside training
    trained = layer(x, training=True)
    assert np.abs(trained - inference).max() > 1e-3  # masks are applied
    assert check_layer_gradients(layer, x=x).max_error < 1e-6  # the tape path, masks replayed


# ----------------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("cls, base", RNNS)
@pytest.mark.parametrize("options", [{}, {"return_sequences": True, "go_backwards": True},
                                     {"activation": "gelu", "recurrent_activation": "hard_sigmoid"},
                                     {"use_bias": False, "dropout": 0.3, "seed": 2}])
def test_gradients_against_finite_differences(cls, base, options):
    if cls is SimpleRNN:
        options = {k: v for k, v in options.items() if k != "recurrent_activation"}
    result = check_layer_gradients(cls(U, **base, **options), x=_x())
    assert result.max_error < 1e-6, result
    assert len(result.errors) == 1 + (3 if options.get("use_bias", True) else 2)


class _WithStatesAndMask(Layer):
    """A recurrent layer fed a fixed mask and initial states computed from the input, so that finite
    differences also cover the mask and the initial states' gradient."""

    def __init__(self, rnn, mask, **kwargs):
        super().__init__(**kwargs)
        self.rnn, self.mask = rnn, mask
        self.to_state = [Dense(U, activation="tanh") for _ in range(rnn.state_count)]

    def call(self, x):
        states = [dense(x[:, 0]) for dense in self.to_state]
        out = self.rnn(x, initial_state=states, mask=self.mask)
        return ops.concatenate([o if o.ndim == 2 else ops.reshape(o, (B, -1)) for o in out], axis=-1)


@pytest.mark.parametrize("cls, base", RNNS)
def test_gradients_with_mask_and_initial_state(cls, base):
    rnn = cls(U, return_sequences=True, return_state=True, zero_output_for_mask=cls is GRU, **base)
    result = check_layer_gradients(_WithStatesAndMask(rnn, _mask()), x=_x())
    assert result.max_error < 1e-6, result
    assert any("recurrent_kernel" in name for name in result.errors)


@pytest.mark.parametrize("layer, shape", [
    (lambda: Bidirectional(LSTM(U, return_sequences=True)), (B, T, F)),
    (lambda: Bidirectional(GRU(U), merge_mode="mul"), (B, T, F)),
    (lambda: Bidirectional(SimpleRNN(U, return_sequences=True), merge_mode="ave"), (B, T, F)),
    (lambda: TimeDistributed(Dense(3, activation="tanh")), (B, T, F)),
    (lambda: TimeDistributed(LSTM(2)), (B, T, 2, F)),
    (lambda: RepeatVector(4), (B, F)),
    (lambda: Permute((2, 1)), (B, T, F)),
    (lambda: Permute((3, 1, 2)), (B, T, F, 2)),
])
def test_wrapper_gradients(layer, shape):
    result = check_layer_gradients(layer(), x=_x(shape=shape))
    assert result.max_error < 1e-6, result


# ------------------------------------------------------------------------- Keras layouts: numpy loops
def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _numpy_lstm(x, kernel, recurrent, bias, h, c):
    u = recurrent.shape[0]
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = _sigmoid(z[:, :u]), _sigmoid(z[:, u:2 * u]), np.tanh(z[:, 2 * u:3 * u]), _sigmoid(z[:, 3 * u:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, 1), h, c


def _numpy_gru(x, kernel, recurrent, bias, h, reset_after):
    u = recurrent.shape[0]
    input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after else (bias, np.zeros(3 * u))
    outputs = []
    for t in range(x.shape[1]):
        xz, xr, xh = np.split(x[:, t] @ kernel + input_bias, 3, axis=1)
        hz, hr, hh = np.split(h @ recurrent + recurrent_bias, 3, axis=1)
        z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
        candidate = np.tanh(xh + r * hh) if reset_after else np.tanh(xh + (r * h) @ recurrent[:, 2 * u:])
        h = z * h + (1 - z) * candidate
        outputs.append(h)
    return np.stack(outputs, 1), h


def _numpy_simple_rnn(x, kernel, recurrent, bias, h):
    outputs = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        outputs.append(h)
    return np.stack(outputs, 1), h


def _known(shape, seed):
    return np.random.default_rng(seed).uniform(-0.7, 0.7, shape)


def test_lstm_keras_weight_layout_gate_order_ifco():
    layer = LSTM(U, return_sequences=True, return_state=True)
    layer.build((None, T, F))
    assert [v.name.split("/")[-1] for v in layer.weights] == ["kernel", "recurrent_kernel", "bias"]
    assert [w.shape for w in layer.get_weights()] == [(F, 4 * U), (U, 4 * U), (4 * U,)]
    np.testing.assert_array_equal(layer.get_weights()[2], np.r_[np.zeros(U), np.ones(U), np.zeros(2 * U)])
    weights = [_known((F, 4 * U), 1), _known((U, 4 * U), 2), _known(4 * U, 3)]
    layer.set_weights(weights)
    h0, c0 = _known((B, U), 4), _known((B, U), 5)
    got = layer(_x(), initial_state=[h0, c0])
    for g, want in zip(got, _numpy_lstm(_x(), *weights, h0, c0)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_keras_weight_layout_gate_order_zrh(reset_after):
    layer = GRU(U, return_sequences=True, return_state=True, reset_after=reset_after)
    layer.build((None, T, F))
    bias_shape = (2, 3 * U) if reset_after else (3 * U,)
    assert [w.shape for w in layer.get_weights()] == [(F, 3 * U), (U, 3 * U), bias_shape]
    weights = [_known((F, 3 * U), 1), _known((U, 3 * U), 2), _known(bias_shape, 3)]
    layer.set_weights(weights)
    h0 = _known((B, U), 4)
    got = layer(_x(), initial_state=h0)
    for g, want in zip(got, _numpy_gru(_x(), *weights, h0, reset_after)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_simple_rnn_keras_weight_layout():
    layer = SimpleRNN(U, return_sequences=True)
    layer.build((None, T, F))
    weights = [_known((F, U), 1), _known((U, U), 2), _known(U, 3)]
    layer.set_weights(weights)
    np.testing.assert_allclose(layer(_x()), _numpy_simple_rnn(_x(), *weights, np.zeros((B, U)))[0], atol=1e-12)


def test_bidirectional_weights_are_forward_then_backward_and_outputs_follow_keras():
    layer = Bidirectional(LSTM(U, return_sequences=True, name="lstm"), merge_mode="concat")
    layer.build((None, T, F))
    assert [v.name for v in layer.weights][:3] == ["forward_lstm/kernel", "forward_lstm/recurrent_kernel",
                                                   "forward_lstm/bias"]
    assert layer.backward_layer.name == "backward_lstm" and layer.backward_layer.go_backwards
    weights = [_known(w.shape, i) for i, w in enumerate(layer.get_weights())]
    layer.set_weights(weights)
    zeros = np.zeros((B, U))
    forward = _numpy_lstm(_x(), *weights[:3], zeros, zeros)[0]
    backward = _numpy_lstm(_x()[:, ::-1], *weights[3:], zeros, zeros)[0][:, ::-1]  # flipped back to input order
    np.testing.assert_allclose(layer(_x()), np.concatenate([forward, backward], -1), atol=1e-12)


def test_orthogonal_recurrent_initializer():
    layer = GRU(U)
    layer.build((None, T, F))
    recurrent = layer.recurrent_kernel.numpy()  # (U, 3U): orthonormal rows
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(U), atol=1e-12)
    tall = initializers.get({"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": 1}})((9, 4), "float64")
    np.testing.assert_allclose(tall.T @ tall, 4 * np.eye(4), atol=1e-12)  # orthogonal columns, scaled by the gain
    assert tall.flags.c_contiguous
    assert initializers.serialize(initializers.get("orthogonal"))["class_name"] == "Orthogonal"
    assert isinstance(initializers.get("uniform"), initializers.RandomUniform)  # Keras 3's alias


# ------------------------------------------------------------------------------------ masks and states
@pytest.mark.parametrize("cls, base", RNNS)
def test_padded_steps_are_skipped(cls, base):
    """Masked (padded) steps carry the state: the result equals the unpadded sequence's."""
    ids = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 2]])
    inputs = Input((None,), dtype="int32")
    model = Model(inputs, cls(U, return_state=True, **base)(Embedding(10, F, mask_zero=True)(inputs)))
    padded = model.predict(ids, verbose=0)
    short = model.predict(ids[:1, :3], verbose=0)
    for p, s in zip(padded, short):
        np.testing.assert_allclose(p[0], s[0], atol=1e-12)


def test_masked_outputs_repeat_the_state_or_are_zero():
    x, mask = _x(), _mask()
    layer = LSTM(U, return_sequences=True)
    y = layer(x, mask=mask)
    for b, t in zip(*np.nonzero(~mask)):
        np.testing.assert_array_equal(y[b, t], y[b, t - 1] if t else np.zeros(U))
    zero = LSTM(U, return_sequences=True, zero_output_for_mask=True)
    zero.build((None, T, F))
    zero.set_weights(layer.get_weights())
    np.testing.assert_array_equal(zero(x, mask=mask), backend.to_numpy(y) * mask[:, :, None])


def test_masking_layer_feeds_the_recurrent_layer():
    x = _x()
    x[1, 3:] = 0.0
    inputs = Input((None, F))
    model = Model(inputs, GRU(U)(Masking(0.0)(inputs)))
    np.testing.assert_allclose(model.predict(x, verbose=0)[1], model.predict(x[1:2, :3], verbose=0)[0], atol=1e-12)


def test_states_continue_a_sequence():
    x = _x()
    layer = LSTM(U, return_sequences=True, return_state=True)
    whole, h, c = layer(x)
    first, h1, c1 = layer(x[:, :2])
    second, h2, c2 = layer(x[:, 2:], initial_state=[h1, c1])
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-12)
    np.testing.assert_allclose(h2, h, atol=1e-12)
    np.testing.assert_allclose(c2, c, atol=1e-12)
    np.testing.assert_array_equal(whole[:, -1], h)
    positional, *_ = layer(x[:, 2:], [h1, c1])  # Keras: layer(sequences, initial_state)
    np.testing.assert_array_equal(positional, second)


def test_encoder_decoder_states_in_a_functional_model_train_and_reload(tmp_path):
    encoder_in, decoder_in = Input((T, F)), Input((3, 2))
    _, h, c = LSTM(U, return_state=True)(encoder_in)
    decoded = LSTM(U, return_sequences=True)(decoder_in, initial_state=[h, c])
    out = TimeDistributed(Dense(1))(decoded)
    model = Model([encoder_in, decoder_in], out)
    assert model.output_shape == (None, 3, 1)
    model.compile(Adam(0.03), "mse")
    x1, x2, y = _x(), _x(3, (B, 3, 2)), _x(4, (B, 3, 1))
    losses = model.fit([x1, x2], y, epochs=40, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    model.save(tmp_path / "seq2seq.keras")
    reloaded = load_model(tmp_path / "seq2seq.keras")
    # float32 rounding: under --device=strict the reloaded copy differs by up to 2e-7 relative
    np.testing.assert_allclose(reloaded.predict([x1, x2], verbose=0), model.predict([x1, x2], verbose=0),
                               rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------ shapes and configs
@pytest.mark.parametrize("cls, base", RNNS)
@pytest.mark.parametrize("sequences, state", [(False, False), (True, False), (False, True), (True, True)])
def test_output_shapes_eager_and_symbolic(cls, base, sequences, state):
    layer = cls(U, return_sequences=sequences, return_state=state, **base)
    eager = layer(_x())
    symbolic = layer(Input((T, F)))
    out_shape = (B, T, U) if sequences else (B, U)
    want = [out_shape] + [(B, U)] * layer.state_count if state else out_shape
    got = [np.shape(e) for e in eager] if state else np.shape(eager)
    assert got == want
    assert ([s.shape for s in symbolic] if state else symbolic.shape) == \
        ([(None, *w[1:]) for w in want] if state else (None, *want[1:]))


@pytest.mark.parametrize("layer", [
    lambda: LSTM(4, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False, unit_forget_bias=False,
                 kernel_regularizer="l2", dropout=0.1, recurrent_dropout=0.2, seed=3, return_sequences=True,
                 return_state=True, go_backwards=True),
    lambda: GRU(4, reset_after=False, recurrent_initializer="glorot_uniform", bias_regularizer="l1"),
    lambda: SimpleRNN(4, activation="sigmoid", zero_output_for_mask=True),
    lambda: Bidirectional(GRU(3, return_sequences=True), merge_mode=None),
    lambda: Bidirectional(LSTM(3), backward_layer=LSTM(3, go_backwards=True, name="back")),
    lambda: TimeDistributed(Dense(2, activation="relu")),
    lambda: RepeatVector(3),
    lambda: Permute((2, 1)),
])
def test_config_round_trip(layer):
    original = layer()
    config = serialize(original)
    rebuilt = deserialize(config)
    assert type(rebuilt) is type(original)
    assert serialize(rebuilt) == config


def test_wrapped_layers_save_and_load_in_a_model(tmp_path):
    inputs = Input((T,), dtype="int32")
    h = Embedding(12, F, mask_zero=True)(inputs)
    h = Bidirectional(LSTM(U, return_sequences=True), merge_mode="sum")(h)
    h = TimeDistributed(Dense(3))(h)
    h = Bidirectional(GRU(2))(h)
    model = Model(inputs, Dense(1)(RepeatVector(2)(h)))
    ids = np.random.default_rng(0).integers(0, 12, (B, T))
    model.save(tmp_path / "m.keras")
    reloaded = load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(ids, verbose=0), model.predict(ids, verbose=0), atol=1e-12)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]


# ------------------------------------------------------------------------------------- arguments
def test_invalid_arguments_fail_by_name():
    with pytest.raises(ValueError, match="units=0"):
        LSTM(0)
    with pytest.raises(ValueError, match="dropout=1.5"):
        GRU(3, dropout=1.5)
    with pytest.raises(ValueError, match="splits every global batch across the ranks"):
        LSTM(3, stateful=True)
    with pytest.raises(ValueError, match="use_cudnn"):
        GRU(3, use_cudnn=True)
    with pytest.raises(ValueError, match="initial_state must hold 2"):
        LSTM(3)(_x(), initial_state=[np.zeros((B, 3))])
    with pytest.raises(ValueError, match="merge_mode='max'"):
        Bidirectional(LSTM(3), merge_mode="max")
    with pytest.raises(ValueError, match="go_backwards"):
        Bidirectional(LSTM(3), backward_layer=LSTM(3))
    with pytest.raises(ValueError, match="return_sequences"):
        Bidirectional(LSTM(3), backward_layer=LSTM(3, go_backwards=True, return_sequences=True))
    with pytest.raises(ValueError, match="dims="):
        Permute((1, 3))
    with pytest.raises(ValueError, match="n=0"):
        RepeatVector(0)
    with pytest.raises(ValueError, match="timesteps"):
        SimpleRNN(3)(np.zeros((2, 3)))
    with pytest.warns(UserWarning, match=r"unroll=True\) has no effect"):
        LSTM(3, unroll=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LSTM(3, unroll=False)


def test_a_view_of_a_shared_gradient_is_not_overwritten_by_a_fused_layer():
    """``add`` hands one gradient to both inputs; ``reshape``'s VJP returns a view of it, which a fused
    layer must not take as its own to overwrite (TimeDistributed relies on this)."""
    x = _x(shape=(4, 6))
    first, second = Dense(3, activation="tanh"), Dense(3, activation="tanh")
    first(x), second(x)
    grads = []
    for reshaped in (False, True):
        with Tape() as tape:
            leaf = Tensor(backend.to_device(x), tape)
            other = second(leaf)
            total = first(leaf) + (ops.reshape(other, (4, 3)) if reshaped else other)
        tape.backward([(total, np.ones((4, 3)))])
        grads.append([first.kernel.grad.copy(), second.kernel.grad.copy(), leaf.grad])
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_time_distributed_recurrent_layer_gets_each_steps_mask():
    """A 3-D mask (batch, outer steps, inner steps) reaches the wrapped layer one outer step at a time."""
    x = _x(shape=(2, 3, 4, F))
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[0, 1, 2:] = False
    inner = GRU(U)
    wrapped = TimeDistributed(inner)
    got = wrapped(x, mask=mask)
    np.testing.assert_allclose(got[0, 1], inner(x[0:1, 1, :2])[0], atol=1e-12)  # the padded steps are skipped
    assert wrapped.compute_mask(x, mask) is mask
