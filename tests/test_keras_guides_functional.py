"""keras.io guide "The Functional API" (Keras 3), run on distnn with only the imports changed and
numpy data in place of downloads. Snippets that need Embedding, LSTM, Conv2DTranspose or
UpSampling2D are left out (distnn has no such layers)."""
import numpy as np
import pytest

import distnn as keras
from distnn import layers, ops


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _mnist_like(n, rng):
    x = rng.random((n, 784)).astype("float32")
    y = (x[:, :10].argmax(axis=1)).astype("int64")  # learnable: the label is where the first 10 pixels peak
    return x, y


def test_mnist_model_shapes_params_and_training():
    inputs = keras.Input(shape=(784,))
    assert inputs.shape == (None, 784)
    assert inputs.dtype == "float32"
    dense = layers.Dense(64, activation="relu")
    x = dense(inputs)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(10)(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="mnist_model")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "mnist_model" in text and "55,050" in text
    assert model.count_params() == 55050

    rng = np.random.default_rng(0)
    x_train, y_train = _mnist_like(512, rng)
    x_test, y_test = _mnist_like(128, rng)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.RMSprop(), metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=64, epochs=3, validation_split=0.2, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    test_scores = model.evaluate(x_test, y_test, verbose=0)
    assert len(test_scores) == 2 and 0.0 <= test_scores[1] <= 1.0


def test_model_is_callable_like_a_layer_and_ensembles_average():
    def get_model():
        inputs = keras.Input(shape=(128,))
        outputs = layers.Dense(1)(inputs)
        return keras.Model(inputs, outputs)

    model1, model2, model3 = get_model(), get_model(), get_model()
    inputs = keras.Input(shape=(128,))
    y1, y2, y3 = model1(inputs), model2(inputs), model3(inputs)
    outputs = layers.average([y1, y2, y3])
    ensemble_model = keras.Model(inputs=inputs, outputs=outputs)
    assert ensemble_model.count_params() == 3 * 129
    x = np.random.default_rng(1).random((4, 128)).astype("float32")
    expected = (model1.predict(x, verbose=0) + model2.predict(x, verbose=0) + model3.predict(x, verbose=0)) / 3
    np.testing.assert_allclose(ensemble_model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_multi_input_multi_output_with_loss_and_loss_weight_dicts():
    num_tags, num_departments, features = 12, 4, 20
    # The guide encodes title and body with Embedding + LSTM; distnn has neither, so they are feature vectors.
    title_input = keras.Input(shape=(features,), name="title")
    body_input = keras.Input(shape=(features,), name="body")
    tags_input = keras.Input(shape=(num_tags,), name="tags")
    title_features = layers.Dense(16, activation="relu")(title_input)
    body_features = layers.Dense(8, activation="relu")(body_input)
    x = layers.concatenate([title_features, body_features, tags_input])
    priority_pred = layers.Dense(1, name="priority")(x)
    department_pred = layers.Dense(num_departments, name="department")(x)
    model = keras.Model(inputs=[title_input, body_input, tags_input],
                        outputs={"priority": priority_pred, "department": department_pred})
    assert sorted(model.output_names) == ["department", "priority"]
    assert model.get_layer("department").output_shape == (None, num_departments)

    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss={"priority": keras.losses.BinaryCrossentropy(from_logits=True),
                        "department": keras.losses.CategoricalCrossentropy(from_logits=True)},
                  loss_weights={"priority": 1.0, "department": 0.2})
    rng = np.random.default_rng(2)
    title_data = rng.random((256, features)).astype("float32")
    body_data = rng.random((256, features)).astype("float32")
    tags_data = rng.integers(0, 2, size=(256, num_tags)).astype("float32")
    priority_targets = (title_data[:, :1] > 0.5).astype("float32")
    department_targets = keras.utils.to_categorical(body_data[:, :num_departments].argmax(axis=1), num_departments)
    history = model.fit({"title": title_data, "body": body_data, "tags": tags_data},
                        {"priority": priority_targets, "department": department_targets},
                        epochs=4, batch_size=32, verbose=0)
    logs = history.history
    assert {"loss", "priority_loss", "department_loss"} <= set(logs)
    for e in range(4):  # the total is the weighted sum of the per-output losses
        np.testing.assert_allclose(logs["loss"][e], logs["priority_loss"][e] + 0.2 * logs["department_loss"][e],
                                   rtol=1e-5)
    assert logs["loss"][-1] < logs["loss"][0]


def _toy_resnet():
    inputs = keras.Input(shape=(32, 32, 3), name="img")
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    block_1_output = layers.MaxPooling2D(3)(x)

    x = layers.Conv2D(64, 3, activation="relu", padding="same")(block_1_output)
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    block_2_output = layers.add([x, block_1_output])

    x = layers.Conv2D(64, 3, activation="relu", padding="same")(block_2_output)
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    block_3_output = layers.add([x, block_2_output])

    x = layers.Conv2D(64, 3, activation="relu")(block_3_output)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name="toy_resnet")


def test_toy_resnet_summary_and_one_epoch():
    model = _toy_resnet()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "toy_resnet" in text and "223,242" in text
    assert model.count_params() == 223242
    assert model.get_layer(index=3).output_shape == (None, 9, 9, 64)  # MaxPooling2D(3) of 28x28

    rng = np.random.default_rng(3)
    x_train = rng.random((48, 32, 32, 3)).astype("float32")
    y_train = keras.utils.to_categorical(rng.integers(0, 10, size=48), 10)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["acc"])
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x_train, y_train, batch_size=16, epochs=1, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert np.isfinite(history.history["loss"][0])
    # every conv and dense kernel moved, including those reached only through the residual Add
    moved = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(moved)


def test_residual_add_gradient_reaches_both_branches():
    inputs = keras.Input(shape=(3,))
    branch = layers.Dense(3, use_bias=False, kernel_initializer="ones")(inputs)
    outputs = layers.add([branch, inputs])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.array([[1.0, 2.0, 3.0]], dtype="float32")
    y = np.zeros((1, 3), dtype="float32")
    loss, grads = model.compute_gradients(x, y)
    out = x @ np.ones((3, 3)) + x
    np.testing.assert_allclose(loss, np.mean(out ** 2), rtol=1e-6)
    np.testing.assert_allclose(grads.reshape(3, 3), x.T @ (2 * out / 3), rtol=1e-5)


def test_shared_layer_is_one_set_of_weights():
    shared = layers.Dense(8, activation="relu")
    text_input_a = keras.Input(shape=(5,), dtype="float32")
    text_input_b = keras.Input(shape=(5,), dtype="float32")
    encoded_input_a = shared(text_input_a)
    encoded_input_b = shared(text_input_b)
    out = layers.Dense(1)(layers.concatenate([encoded_input_a, encoded_input_b]))
    model = keras.Model([text_input_a, text_input_b], out)
    assert model.count_params() == (5 * 8 + 8) + (16 + 1)
    a = np.random.default_rng(4).random((3, 5)).astype("float32")
    features = keras.Model([text_input_a, text_input_b], [encoded_input_a, encoded_input_b]).predict([a, a], verbose=0)
    np.testing.assert_array_equal(features[0], features[1])  # same weights on both inputs
    model.compile(optimizer="adam", loss="mse")
    history = model.fit([a, a[::-1]], np.ones((3, 1), dtype="float32"), epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_feature_extraction_from_intermediate_layers():
    inputs = keras.Input(shape=(16, 16, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="block1_conv1")(inputs)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)

    features_list = [layer.output for layer in model.layers]
    feat_extraction_model = keras.Model(inputs=model.input, outputs=features_list)
    img = np.random.default_rng(5).random((1, 16, 16, 3)).astype("float32")
    extracted_features = feat_extraction_model(img)
    assert [np.shape(f) for f in extracted_features] == [(1, 16, 16, 3), (1, 14, 14, 4), (1, 7, 7, 4),
                                                         (1, 196), (1, 5)]
    np.testing.assert_allclose(ops.convert_to_numpy(extracted_features[-1]), ops.convert_to_numpy(model(img)), rtol=1e-6)


class CustomDense(layers.Layer):
    def __init__(self, units=32):
        super().__init__()
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


def test_custom_layer_in_a_functional_model():
    inputs = keras.Input((4,))
    outputs = CustomDense(10)(inputs)
    model = keras.Model(inputs, outputs)
    assert model.output_shape == (None, 10)
    assert model.count_params() == 50
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(6)
    x = rng.random((64, 4)).astype("float32")
    y = x @ rng.random((4, 10)).astype("float32")
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_mixing_subclassed_and_functional():
    units, timesteps, input_dim = 32, 10, 5

    def get_model():
        inputs = keras.Input((None, units))
        x = layers.GlobalAveragePooling1D()(inputs)
        outputs = layers.Dense(1)(x)
        return keras.Model(inputs, outputs)

    model = get_model()

    class CustomRNN(layers.Layer):
        def __init__(self):
            super().__init__()
            self.units = units
            self.projection_1 = layers.Dense(units=units, activation="tanh")
            self.projection_2 = layers.Dense(units=units, activation="tanh")
            self.classifier = model

        def call(self, inputs):
            outputs = []
            state = np.zeros((inputs.shape[0], self.units), dtype="float32")  # Keras: ops.zeros
            for t in range(inputs.shape[1]):
                x = inputs[:, t, :]
                h = self.projection_1(x)
                y = h + self.projection_2(state)
                state = y
                outputs.append(y)
            features = ops.stack(outputs, axis=1)
            return self.classifier(features)

    rnn_model = CustomRNN()
    out = rnn_model(np.zeros((1, timesteps, input_dim), dtype="float32"))
    assert np.shape(out) == (1, 1)
    assert len(rnn_model.trainable_weights) == 6
