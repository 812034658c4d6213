"""keras.io guide "Training & evaluation with the built-in methods" (Keras 3), run on distnn with
only the imports changed and numpy data shaped like MNIST in place of the download."""
import numpy as np
import pytest

import distnn as keras
from distnn import layers, ops


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 784)).astype("float32")
    y = x[:, :10].argmax(axis=1).astype("float32")  # learnable labels in 0..9
    return x, y


def get_uncompiled_model():
    inputs = keras.Input(shape=(784,), name="digits")
    x = layers.Dense(64, activation="relu", name="dense_1")(inputs)
    x = layers.Dense(64, activation="relu", name="dense_2")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def get_compiled_model():
    model = get_uncompiled_model()
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"])
    return model


def test_api_overview_fit_evaluate_predict():
    x_train, y_train = _data(512)
    x_val, y_val = _data(64, seed=1)
    model = get_uncompiled_model()
    model.compile(optimizer=keras.optimizers.RMSprop(), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    history = model.fit(x_train, y_train, batch_size=64, epochs=2, validation_data=(x_val, y_val), verbose=0)
    assert set(history.history) == {"loss", "sparse_categorical_accuracy", "val_loss",
                                    "val_sparse_categorical_accuracy"}
    assert history.history["loss"][1] < history.history["loss"][0]
    results = model.evaluate(x_val, y_val, batch_size=128, verbose=0)
    np.testing.assert_allclose(results[0], history.history["val_loss"][-1], rtol=1e-6)
    predictions = model.predict(x_val[:3])
    assert predictions.shape == (3, 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_custom_loss_function():
    def custom_mean_squared_error(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    model = get_uncompiled_model()
    model.compile(optimizer=keras.optimizers.Adam(), loss=custom_mean_squared_error)
    x_train, y_train = _data(256)
    y_train_one_hot = keras.utils.to_categorical(y_train, num_classes=10)
    history = model.fit(x_train, y_train_one_hot, batch_size=64, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    expected = np.mean(np.mean((y_train_one_hot - model.predict(x_train, verbose=0)) ** 2, axis=-1))
    np.testing.assert_allclose(model.evaluate(x_train, y_train_one_hot, verbose=0), expected, rtol=1e-5)


class CustomMSE(keras.losses.Loss):
    def __init__(self, regularization_factor=0.1, name="custom_mse"):
        super().__init__(name=name)
        self.regularization_factor = regularization_factor

    def call(self, y_true, y_pred):
        mse = ops.mean(ops.square(y_true - y_pred), axis=-1)
        reg = ops.mean(ops.square(0.5 - y_pred), axis=-1)
        return mse + self.regularization_factor * reg


def test_loss_subclass_with_only_call():
    model = get_uncompiled_model()
    model.compile(optimizer=keras.optimizers.Adam(), loss=CustomMSE())
    x_train, y_train = _data(256)
    y_train_one_hot = keras.utils.to_categorical(y_train, num_classes=10)
    history = model.fit(x_train, y_train_one_hot, batch_size=64, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    p = model.predict(x_train, verbose=0)
    expected = np.mean(np.mean((y_train_one_hot - p) ** 2, -1) + 0.1 * np.mean((0.5 - p) ** 2, -1))
    np.testing.assert_allclose(model.evaluate(x_train, y_train_one_hot, verbose=0), expected, rtol=1e-5)


class CategoricalTruePositives(keras.metrics.Metric):
    def __init__(self, name="categorical_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(shape=(), name="ctp", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.reshape(ops.argmax(y_pred, axis=1), (-1, 1))
        values = ops.cast(y_true, "int32") == ops.cast(y_pred, "int32")
        values = ops.cast(values, "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            values = ops.multiply(values, sample_weight)
        self.true_positives.assign_add(ops.sum(values))

    def result(self):
        return self.true_positives

    def reset_state(self):
        self.true_positives.assign(0.0)


def test_custom_metric_subclass_counts_over_the_epoch():
    metric = CategoricalTruePositives()
    assert [v.name for v in metric.variables] == ["categorical_true_positives/ctp"]
    metric.update_state(np.array([[1], [2]]), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert float(ops.convert_to_numpy(metric.result())) == 1.0
    metric.reset_state()
    assert float(ops.convert_to_numpy(metric.result())) == 0.0

    model = get_uncompiled_model()
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=[CategoricalTruePositives()])
    x_train, y_train = _data(200)
    # Labels as (n, 1): the guide's (n,) labels broadcast against the metric's (n, 1) predictions and
    # count n * n pairs (its printed counts exceed the sample count, in Keras too).
    y_train = y_train.reshape(-1, 1)
    history = model.fit(x_train, y_train, batch_size=64, epochs=3, verbose=0)
    counts = history.history["categorical_true_positives"]
    assert all(float(c).is_integer() and 0 <= c <= 200 for c in counts)  # a count over all 200 samples
    evaluated = model.evaluate(x_train, y_train, batch_size=64, verbose=0, return_dict=True)
    correct = float((model.predict(x_train, verbose=0).argmax(axis=1) == y_train[:, 0]).sum())
    assert evaluated["categorical_true_positives"] == correct


def test_add_loss_in_a_layer_joins_the_training_loss():
    class ActivityRegularizationLayer(layers.Layer):
        def call(self, inputs):
            self.add_loss(ops.sum(inputs) * 0.1)
            return inputs

    inputs = keras.Input(shape=(784,), name="digits")
    x = layers.Dense(64, activation="relu", name="dense_1")(inputs)
    x = ActivityRegularizationLayer()(x)
    x = layers.Dense(64, activation="relu", name="dense_2")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train, y_train = _data(128)
    model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y_train, model.predict(x_train, verbose=0))
    hidden = np.maximum(x_train @ model.get_layer("dense_1").kernel.numpy() + model.get_layer("dense_1").bias.numpy(), 0)
    # evaluate() adds the batch-mean add_loss term (one batch here) to the data loss
    np.testing.assert_allclose(model.evaluate(x_train, y_train, batch_size=128, verbose=0),
                               float(plain) + 0.1 * hidden.sum(), rtol=1e-4)


def test_validation_split_holds_out_the_last_samples():
    model = get_compiled_model()
    x_train, y_train = _data(100)
    history = model.fit(x_train, y_train, batch_size=64, validation_split=0.2, epochs=1, verbose=0)
    val = model.evaluate(x_train[80:], y_train[80:], verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][0], val[0], rtol=1e-6)


def test_class_weight_equals_the_matching_sample_weight():
    class_weight = {i: 1.0 for i in range(10)}
    class_weight[5] = 2.0
    x_train, y_train = _data(128)
    model = get_compiled_model()
    initial = model.get_weights()
    model.fit(x_train, y_train, class_weight=class_weight, batch_size=64, epochs=1, shuffle=False, verbose=0)
    with_class_weight = model.get_weights()

    sample_weight = np.ones(shape=(len(y_train),))
    sample_weight[y_train == 5] = 2.0
    keras.utils.set_random_seed(0)
    model = get_compiled_model()
    model.set_weights(initial)
    model.fit(x_train, y_train, sample_weight=sample_weight, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(with_class_weight, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    model.set_weights(initial)  # and the weighting changes the result
    model.fit(x_train, y_train, batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(with_class_weight, model.get_weights()))


def test_early_stopping_and_a_custom_callback():
    class LossHistory(keras.callbacks.Callback):
        def on_train_begin(self, logs):
            self.per_batch_losses = []

        def on_batch_end(self, batch, logs):
            self.per_batch_losses.append(logs.get("loss"))

    loss_history = LossHistory()
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=1e9, patience=1, verbose=0),
                 loss_history]
    model = get_compiled_model()
    x_train, y_train = _data(256)
    history = model.fit(x_train, y_train, epochs=20, batch_size=64, callbacks=callbacks, validation_split=0.25,
                        verbose=0)
    # min_delta=1e9 means no epoch counts as an improvement: stop after 1 + patience epochs
    assert len(history.history["loss"]) == 2
    assert len(loss_history.per_batch_losses) == 2 * 3
    np.testing.assert_allclose(loss_history.per_batch_losses[2], history.history["loss"][0], rtol=1e-6)


def test_learning_rate_schedule():
    initial_learning_rate = 0.1
    lr_schedule = keras.optimizers.schedules.ExponentialDecay(initial_learning_rate, decay_steps=2, decay_rate=0.5,
                                                              staircase=True)
    optimizer = keras.optimizers.SGD(learning_rate=lr_schedule)
    assert float(lr_schedule(0)) == pytest.approx(0.1) and float(lr_schedule(5)) == pytest.approx(0.025)
    model = get_uncompiled_model()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x_train, y_train = _data(128)
    model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    assert int(optimizer.iterations) == 4
