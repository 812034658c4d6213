"""ONNX export checked by onnxruntime: predictions equal distnn's for batch sizes 1 and 37."""
from __future__ import annotations

import numpy as np
import pytest

from distnn import layers, models
from conftest import load_example

RNG = np.random.default_rng(1)


def _session(path):
    import onnxruntime  # noqa: PLC0415

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _fitted(model, x):
    """A few training steps, so BatchNormalization's statistics and every weight differ from their
    initial values (an exporter that dropped one would then disagree)."""
    outputs = model.outputs if hasattr(model, "_nodes") else [None]
    shape = model.output_shape if outputs[0] is None else outputs[0].shape
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, RNG.normal(size=(len(x), *shape[1:])).astype("float32"), epochs=2, batch_size=16, verbose=0)
    return model


def mlp():
    return models.Sequential([layers.Input((10,)), layers.Dense(16, activation="relu"), layers.Dropout(0.3),
                              layers.Dense(8, activation="gelu"), layers.Dense(4, activation="softmax")])


def cnn():
    return load_example("mnist_cnn").build_model()


def conv_zoo():
    inputs = layers.Input((12, 12, 3))
    x = layers.ZeroPadding2D(1)(inputs)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="swish")(x)
    x = layers.BatchNormalization()(x)
    a = layers.MaxPooling2D(2, padding="same")(x)
    b = layers.AveragePooling2D(2, padding="same")(x)
    merged = layers.Concatenate()([layers.Add()([a, b]), layers.Multiply()([a, b]), layers.Maximum()([a, b]),
                                   layers.Minimum()([a, b]), layers.Subtract()([a, b]), layers.Average()([a, b])])
    seq = layers.Reshape((16, 36))(merged)
    seq = layers.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="tanh")(seq)
    seq = layers.MaxPooling1D(2)(layers.AveragePooling1D(1)(seq))
    pooled = layers.Concatenate()([layers.GlobalAveragePooling1D()(seq), layers.GlobalMaxPooling1D()(seq),
                                   layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    outputs = layers.Activation("sigmoid")(layers.Dense(3)(layers.Flatten()(pooled)))
    return models.Model(inputs, outputs)


def residual_nested():
    block = models.Sequential([layers.Input((6,)), layers.Dense(6, activation="relu"), layers.Dense(6)], name="block")
    inputs = layers.Input((6,))
    h = layers.Add()([inputs, block(inputs)])
    h = layers.Add()([h, block(h)])  # the nested model shared: inlined twice with the same weights
    return models.Model(inputs, layers.Dense(2)(h))


def sequences():
    tokens = layers.Input((7,), dtype="int32")
    h = layers.LSTM(5, return_sequences=True)(layers.Embedding(12, 6)(tokens))
    h = layers.GRU(4, return_sequences=True, reset_after=False)(layers.GRU(4, return_sequences=True)(h))
    h = layers.SimpleRNN(3, return_sequences=True, activation="relu")(h)
    h = layers.LayerNormalization()(layers.Add()([h, layers.MultiHeadAttention(2, 4)(h, h)]))
    return models.Model(tokens, layers.Dense(2)(layers.LSTM(3, go_backwards=True)(h)))


CASES = {"mlp": (mlp, (10,)), "cnn": (cnn, (28, 28, 1)), "conv_zoo": (conv_zoo, (12, 12, 3)),
         "residual_nested": (residual_nested, (6,)), "sequences": (sequences, (7,))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_predictions_equal_distnn(tmp_path, name):
    build, shape = CASES[name]
    x = RNG.integers(0, 12, size=(37, *shape)).astype("int32") if name == "sequences" else \
        RNG.normal(size=(37, *shape)).astype("float32")
    model = _fitted(build(), x)
    path = tmp_path / f"{name}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = _session(path)
    (input_info,) = session.get_inputs()
    assert input_info.shape[0] == "batch"
    for batch in (1, 37):
        (predicted,) = session.run(None, {input_info.name: x[:batch]})
        expected = model.predict(x[:batch], verbose=0)
        assert predicted.shape == expected.shape
        np.testing.assert_allclose(predicted, expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_what_it_cannot_write(tmp_path):
    model = mlp()
    with pytest.raises(ValueError, match="format='onnx' only"):
        model.export(str(tmp_path / "m"), format="tf_saved_model")
    inputs = layers.Input((4,))
    dotted = models.Model(inputs, layers.Dot(axes=1)([inputs, inputs]))
    with pytest.raises(ValueError, match="Dot"):
        dotted.export(str(tmp_path / "dot.onnx"), verbose=False)
    steps = layers.Input((5, 3))
    backwards = models.Model(steps, layers.GRU(2, go_backwards=True, return_sequences=True)(steps))
    with pytest.raises(ValueError, match="go_backwards"):
        backwards.export(str(tmp_path / "gru.onnx"), verbose=False)
    causal = models.Model(steps, layers.MultiHeadAttention(1, 2)(steps, steps, use_causal_mask=True))
    with pytest.raises(ValueError, match="use_causal_mask"):
        causal.export(str(tmp_path / "mha.onnx"), verbose=False)
