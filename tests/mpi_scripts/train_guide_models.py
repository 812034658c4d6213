"""Train the guides' model kinds on N ranks (or one process) and save the final weights.

    python train_guide_models.py OUT.npz

A functional model with a residual ``Add`` and two outputs (loss and loss_weights dicts), and a
subclassed model with a custom layer; rank 0 writes each one's final flat parameters.
"""
import sys

import numpy as np

import distnn as keras
from distnn import distributed, layers, ops


class Linear(layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


class MLP(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = Linear(16)
        self.out = layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.out(ops.tanh(self.hidden(inputs)))


def functional():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(8, activation="relu")(inputs)
    x = layers.add([layers.Dense(8, activation="relu")(x), x])
    a = layers.Dense(1, name="a")(x)
    b = layers.Dense(3, activation="softmax", name="b")(x)
    return keras.Model(inputs, {"a": a, "b": b})


def main():
    distributed.init()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((101, 8)).astype("float32")
    labels = x[:, :3].argmax(axis=1)
    y_b = keras.utils.to_categorical(labels, 3)
    y_a = x[:, 3:4] * 2.0
    results = {}

    keras.utils.set_random_seed(3)
    model = functional()
    model.compile(optimizer="adam", loss={"a": "mse", "b": "categorical_crossentropy"},
                  loss_weights={"a": 0.5, "b": 1.0}, metrics={"b": ["accuracy"]})
    history = model.fit(x, {"a": y_a, "b": y_b}, batch_size=16, epochs=2, verbose=0)
    results["functional"] = keras.backend.to_numpy(model.params).copy()
    results["functional_loss"] = np.array(history.history["loss"])

    keras.utils.set_random_seed(4)
    sub = MLP()
    sub.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    history = sub.fit(x, y_b, batch_size=16, epochs=2, verbose=0)
    results["subclassed"] = keras.backend.to_numpy(sub.params).copy()
    results["subclassed_loss"] = np.array(history.history["loss"])
    if distributed.rank() == 0:
        np.savez(sys.argv[1], **results)


if __name__ == "__main__":
    main()
