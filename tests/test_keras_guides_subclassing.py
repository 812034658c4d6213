"""keras.io guide "Making new layers and models via subclassing" (Keras 3), run on distnn.

The guide's code with only the imports changed (``import distnn as keras``, ``from distnn import
ops``); data comes from numpy. Each snippet asserts what the guide prints.
"""
import numpy as np
import pytest

import distnn as keras
from distnn import layers, ops


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


class LinearInInit(keras.layers.Layer):
    def __init__(self, units=32, input_dim=32):
        super().__init__()
        self.w = self.add_weight(shape=(input_dim, units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(units,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


class Linear(keras.layers.Layer):
    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


def test_linear_with_weights_created_in_init():
    x = np.ones((2, 2), dtype="float32")  # Keras: ops.ones((2, 2))
    linear_layer = LinearInInit(4, 2)
    y = linear_layer(x)
    assert y.shape == (2, 4)
    assert linear_layer.weights == [linear_layer.w, linear_layer.b]
    np.testing.assert_allclose(ops.convert_to_numpy(y), np.ones((2, 2)) @ linear_layer.w.numpy(), rtol=1e-6)


def test_compute_sum_non_trainable_weight():
    class ComputeSum(keras.layers.Layer):
        def __init__(self, input_dim):
            super().__init__()
            self.total = self.add_weight(initializer="zeros", shape=(input_dim,), trainable=False)

        def call(self, inputs):
            self.total.assign_add(ops.sum(inputs, axis=0))
            return self.total

    x = np.ones((2, 2), dtype="float32")
    my_sum = ComputeSum(2)
    y = my_sum(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(y), [2.0, 2.0])
    y = my_sum(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(y), [4.0, 4.0])
    assert len(my_sum.weights) == 1
    assert len(my_sum.non_trainable_weights) == 1
    assert my_sum.trainable_weights == []


def test_linear_built_lazily():
    x = np.ones((2, 2), dtype="float32")
    linear_layer = Linear(32)
    assert not linear_layer.built and linear_layer.weights == []
    y = linear_layer(x)
    assert linear_layer.built
    assert y.shape == (2, 32)
    assert linear_layer.w.shape == (2, 32) and linear_layer.b.shape == (32,)


def test_mlp_block_tracks_nested_weights():
    class MLPBlock(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.linear_1 = Linear(32)
            self.linear_2 = Linear(32)
            self.linear_3 = Linear(1)

        def call(self, inputs):
            x = self.linear_1(inputs)
            x = keras.activations.relu(x)
            x = self.linear_2(x)
            x = keras.activations.relu(x)
            return self.linear_3(x)

    mlp = MLPBlock()
    y = mlp(np.ones(shape=(3, 64), dtype="float32"))
    assert y.shape == (3, 1)
    assert len(mlp.weights) == 6
    assert len(mlp.trainable_weights) == 6
    assert mlp.count_params() == 64 * 32 + 32 + 32 * 32 + 32 + 32 + 1


class ActivityRegularizationLayer(keras.layers.Layer):
    def __init__(self, rate=1e-2):
        super().__init__()
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.mean(inputs))
        return inputs


def test_add_loss_and_losses_reset_per_call():
    class OuterLayer(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.activity_reg = ActivityRegularizationLayer(1e-2)

        def call(self, inputs):
            return self.activity_reg(inputs)

    layer = OuterLayer()
    assert len(layer.losses) == 0
    _ = layer(np.zeros((1, 1), dtype="float32"))
    assert len(layer.losses) == 1
    _ = layer(np.full((1, 1), 3.0, dtype="float32"))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(ops.convert_to_numpy(layer.losses[0])), 0.03, rtol=1e-6)


def test_add_loss_is_added_to_the_fit_loss():
    inputs = keras.Input(shape=(3,))
    outputs = ActivityRegularizationLayer()(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = np.random.random((2, 3)).astype("float32")
    y = np.random.random((2, 3)).astype("float32")
    history = model.fit(x, y, verbose=0)
    mse = float(np.mean((x - y) ** 2))
    np.testing.assert_allclose(history.history["loss"][0], mse + 1e-2 * float(np.mean(x)), rtol=1e-5)


def test_get_config_round_trip():
    layer = Linear(64)
    config = layer.get_config()
    assert config["units"] == 64
    new_layer = Linear.from_config(config)
    assert new_layer.units == 64 and new_layer.name == layer.name


def test_custom_dropout_sees_the_training_flag():
    class CustomDropout(keras.layers.Layer):
        def __init__(self, rate, **kwargs):
            super().__init__(**kwargs)
            self.rate = rate
            self.seen = []

        def call(self, inputs, training=False):
            self.seen.append(training)
            if training:
                return inputs * 0.0
            return inputs

    inputs = keras.Input(shape=(4,))
    dropout = CustomDropout(0.5)
    model = keras.Model(inputs, layers.Dense(1)(dropout(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 4), dtype="float32")
    model.fit(x, np.ones((8, 1), dtype="float32"), batch_size=8, verbose=0)
    assert True in dropout.seen
    np.testing.assert_array_equal(dropout(x), x)  # inference by default


# ---------------------------------------------------------------- the end-to-end example (a VAE)
class Sampling(layers.Layer):
    """z = z_mean + exp(0.5 * z_log_var) * epsilon; epsilon from a seeded numpy generator (the guide
    draws it with keras.random.normal)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rng = np.random.default_rng(1)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = self.rng.standard_normal(np.shape(z_mean.value if hasattr(z_mean, "value") else z_mean))
        return z_mean + ops.exp(0.5 * z_log_var) * ops.convert_to_tensor(epsilon.astype("float32"))  # to the device


class Encoder(layers.Layer):
    def __init__(self, latent_dim=32, intermediate_dim=64, name="encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dense_proj = layers.Dense(intermediate_dim, activation="relu")
        self.dense_mean = layers.Dense(latent_dim)
        self.dense_log_var = layers.Dense(latent_dim)
        self.sampling = Sampling()

    def call(self, inputs):
        x = self.dense_proj(inputs)
        z_mean = self.dense_mean(x)
        z_log_var = self.dense_log_var(x)
        z = self.sampling((z_mean, z_log_var))
        return z_mean, z_log_var, z


class Decoder(layers.Layer):
    def __init__(self, original_dim, intermediate_dim=64, name="decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dense_proj = layers.Dense(intermediate_dim, activation="relu")
        self.dense_output = layers.Dense(original_dim, activation="sigmoid")

    def call(self, inputs):
        x = self.dense_proj(inputs)
        return self.dense_output(x)


class VariationalAutoEncoder(keras.Model):
    def __init__(self, original_dim, intermediate_dim=64, latent_dim=32, name="autoencoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.original_dim = original_dim
        self.encoder = Encoder(latent_dim=latent_dim, intermediate_dim=intermediate_dim)
        self.decoder = Decoder(original_dim, intermediate_dim=intermediate_dim)

    def call(self, inputs):
        z_mean, z_log_var, z = self.encoder(inputs)
        reconstructed = self.decoder(z)
        kl_loss = -0.5 * ops.mean(z_log_var - ops.square(z_mean) - ops.exp(z_log_var) + 1)
        self.add_loss(kl_loss)
        return reconstructed


def test_end_to_end_vae_trains_with_fit():
    original_dim = 784 // 16
    vae = VariationalAutoEncoder(original_dim, 16, 8)
    x_train = np.random.default_rng(0).random((256, original_dim)).astype("float32")
    x_train = (x_train > 0.7).astype("float32")
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    vae.compile(optimizer, loss=keras.losses.MeanSquaredError())
    history = vae.fit(x_train, x_train, epochs=3, batch_size=64, verbose=0)
    loss = history.history["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    assert len(vae.losses) == 1  # the KL term of the last call
    assert [type(layer).__name__ for layer in vae.layers] == ["Encoder", "Decoder"]
    assert vae.count_params() == (original_dim * 16 + 16) + 2 * (16 * 8 + 8) + (8 * 16 + 16) + (16 * original_dim
                                                                                                + original_dim)
