"""Gradient accumulation (Keras 3's ``gradient_accumulation_steps``) and Adadelta (Horovod's MNIST
optimizer) on one process (tests/test_data_parallel_modes.py compares accumulation with the 4x batch
on 1 and 2 ranks)."""
import numpy as np
import pytest

from distnn import layers, models, optimizers
from distnn.utils import set_random_seed

RNG = np.random.default_rng(3)
X = RNG.normal(size=(128, 5)).astype("float32")
Y = (X[:, :2].sum(axis=1) > 0).astype(np.int64)


def mlp(optimizer):
    set_random_seed(0)
    model = models.Sequential([layers.Dense(6, activation="tanh", input_shape=(5,), kernel_regularizer="l2"),
                               layers.Dense(2, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("make", [lambda **kw: optimizers.SGD(0.1, momentum=0.9, nesterov=True, **kw),
                                  lambda **kw: optimizers.Adam(0.01, **kw), lambda **kw: optimizers.RMSprop(0.01, **kw),
                                  lambda **kw: optimizers.Adadelta(1.0, **kw),
                                  lambda **kw: optimizers.Adam(optimizers.schedules.ExponentialDecay(0.01, 2, 0.5),
                                                               clipnorm=0.1, **kw)])
def test_k_micro_batches_train_like_one_batch_k_times_larger(make):
    big = mlp(make())
    big.fit(X, Y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    small = mlp(make(gradient_accumulation_steps=4))
    small.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert small.optimizer.iterations == big.optimizer.iterations == 12  # schedules see the large batch's steps
    assert np.abs(small.params - big.params).max() <= 1e-6


def test_the_accumulator_is_optimizer_state_saved_and_restored_mid_cycle():
    model = mlp(optimizers.Adam(0.01, gradient_accumulation_steps=3))
    model.fit(X, Y, batch_size=16, epochs=1, steps_per_epoch=5, shuffle=False, verbose=0)
    optimizer = model.optimizer
    assert (optimizer.iterations, optimizer.accumulated_steps) == (1, 2)
    state = optimizer.get_state()
    assert state["accumulated_steps"] == 2 and np.abs(state["accumulated_gradients"]).max() > 0
    other = mlp(optimizers.Adam(0.01, gradient_accumulation_steps=3))
    other.fit(X[:1], Y[:1], batch_size=1, epochs=1, verbose=0)  # builds its state
    other.optimizer.set_state(state)
    assert other.optimizer.accumulated_steps == 2
    np.testing.assert_array_equal(other.optimizer.slots["accumulated_gradients"],
                                  optimizer.slots["accumulated_gradients"])
    config = optimizers.Adam(gradient_accumulation_steps=3).get_config()
    assert config["gradient_accumulation_steps"] == 3
    assert optimizers.Adam.from_config(config).gradient_accumulation_steps == 3
    assert optimizers.Adam().get_config()["gradient_accumulation_steps"] is None


def test_sums_instead_of_means_for_horovods_average_aggregated_gradients_false():
    big = mlp(optimizers.SGD(0.4))  # the sum of 4 micro-batch means is 4 times the mean: 4 times the rate
    big.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    inner = optimizers.SGD(0.1)
    import distnn.distributed as hvd

    model = mlp(hvd.DistributedOptimizer(inner, backward_passes_per_step=4))
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert np.abs(model.params - big.params).max() <= 1e-6


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "4"])
def test_gradient_accumulation_steps_is_checked(value):
    with pytest.raises(ValueError, match=f"gradient_accumulation_steps must be a positive integer or None. "
                                         f"Received: gradient_accumulation_steps={value!r}"):
        optimizers.SGD(gradient_accumulation_steps=value)


def test_adadelta_follows_keras_update_rule():
    optimizer = optimizers.get("adadelta")
    assert isinstance(optimizer, optimizers.Adadelta) and optimizer.learning_rate == 0.001
    optimizer = optimizers.Adadelta(0.5, rho=0.9, epsilon=1e-6)
    params = np.array([1.0, -2.0, 0.5], dtype=np.float64)
    optimizer.build(params, [(0, 3)])
    expected, average, updates = params.copy(), np.zeros(3), np.zeros(3)
    for step in range(3):
        grads = np.array([0.3, -0.1, 2.0]) * (step + 1)
        average = 0.9 * average + 0.1 * grads ** 2
        delta = np.sqrt(updates + 1e-6) / np.sqrt(average + 1e-6) * grads
        updates = 0.9 * updates + 0.1 * delta ** 2
        expected -= 0.5 * delta
        optimizer.apply(params, grads.copy())
    np.testing.assert_allclose(params, expected, rtol=1e-12)
    assert optimizers.Adadelta.from_config(optimizer.get_config()).get_config() == optimizer.get_config()
