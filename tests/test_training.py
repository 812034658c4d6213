"""compile / fit / evaluate / predict: the Keras tutorial flow, exact update arithmetic, validation,
determinism, frozen layers and the errors a user gets for bad input."""
import numpy as np
import pytest

from distnn import backend, optimizers
from distnn.layers import Dense, Dropout
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype("float32")
LABELS = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
Y = to_categorical(LABELS, 3)


def small_model(optimizer="sgd", metrics=("accuracy",), seed=0, dropout=0.0):
    set_random_seed(seed)
    layers = [Dense(8, activation="tanh", input_shape=(6,))]
    if dropout:
        layers.append(Dropout(dropout))
    model = Sequential([*layers, Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=list(metrics))
    return model


def test_keras_tutorial_runs_as_written(capsys):
    from distnn.layers import Dense
    from distnn.models import Sequential
    from distnn.utils import to_categorical

    x_train = np.random.default_rng(1).random((300, 100)).astype("float32")
    y_train = to_categorical(np.random.default_rng(2).integers(10, size=(300, 1)), num_classes=10)
    model = Sequential()
    model.add(Dense(units=64, activation="relu", input_dim=100))
    model.add(Dense(units=10, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, batch_size=32)
    loss_and_metrics = model.evaluate(x_train, y_train, batch_size=128)
    classes = model.predict(x_train, batch_size=128)

    out = capsys.readouterr().out
    assert "Epoch 1/5" in out and "Epoch 5/5" in out
    assert len(loss_and_metrics) == 2
    loss, accuracy = loss_and_metrics
    assert classes.shape == (300, 10)
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, rtol=1e-5)
    expected_loss = -np.log(classes[np.arange(300), y_train.argmax(1)]).mean()
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    assert accuracy == pytest.approx((classes.argmax(1) == y_train.argmax(1)).mean())
    assert len(history.history["loss"]) == 5 and history.history["loss"][-1] < history.history["loss"][0]


def test_training_learns_a_separable_problem():
    model = small_model(optimizers.Adam(0.02))
    before = model.evaluate(X, Y, verbose=0)
    model.fit(X, Y, epochs=30, batch_size=16, verbose=0)
    loss, accuracy = model.evaluate(X, Y, verbose=0)
    assert loss < 0.5 * before[0] and accuracy > 0.9


def test_evaluate_and_predict_do_not_depend_on_batch_size():
    model = small_model()
    full = model.predict(X, batch_size=96, verbose=0)
    for batch_size in (1, 7, 32, 500):
        np.testing.assert_allclose(model.predict(X, batch_size=batch_size, verbose=0), full, rtol=1e-6, atol=1e-7)
        assert model.evaluate(X, Y, batch_size=batch_size, verbose=0) == pytest.approx(
            model.evaluate(X, Y, batch_size=96, verbose=0), rel=1e-6)
    # Predictions come back in the input order.
    np.testing.assert_allclose(model.predict(X[::-1], verbose=0), full[::-1], rtol=1e-6, atol=1e-7)


def test_one_full_batch_step_is_params_minus_lr_times_gradient():
    model = small_model(optimizers.SGD(0.5))
    before = backend.to_numpy(model.params).copy()
    loss, grads = model.compute_gradients(X, Y)
    np.testing.assert_array_equal(model.params, before)  # compute_gradients does not update
    history = model.fit(X, Y, batch_size=len(X), epochs=1, verbose=0)
    np.testing.assert_allclose(model.params, before - 0.5 * grads, rtol=1e-6, atol=1e-7)
    assert history.history["loss"][0] == pytest.approx(loss, rel=1e-6)


def test_minibatch_epoch_equals_a_hand_written_loop():
    model = small_model(optimizers.SGD(0.1, momentum=0.9))
    reference = small_model(seed=0)
    velocity = backend.xp().zeros_like(reference.params)
    for start in range(0, len(X), 20):  # shuffle=False: batches in order, the last one ragged (16)
        _, grads = reference.compute_gradients(X[start:start + 20], Y[start:start + 20])
        velocity = 0.9 * velocity - 0.1 * backend.to_device(grads)  # a host copy, as compute_gradients returns
        reference.params += velocity
    model.fit(X, Y, batch_size=20, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.params, reference.params, rtol=1e-5, atol=1e-6)


def test_sparse_integer_labels_train_like_one_hot():
    dense = small_model(optimizers.SGD(0.1))
    sparse = small_model(optimizers.SGD(0.1))
    sparse.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h1 = dense.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    h2 = sparse.fit(X, LABELS, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(dense.params, sparse.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h1.history["accuracy"], h2.history["accuracy"])


def test_validation_split_takes_the_last_samples():
    model = small_model()
    history = model.fit(X, Y, epochs=2, batch_size=16, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())
    val_loss, val_accuracy = model.evaluate(X[72:], Y[72:], verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_accuracy)
    with pytest.raises(ValueError, match="validation_split=1.5"):
        model.fit(X, Y, validation_split=1.5, verbose=0)


def test_validation_data_and_validation_freq():
    model = small_model()
    x_val, y_val = X[:10] + 0.5, Y[:10]
    history = model.fit(X, Y, epochs=4, batch_size=32, validation_data=(x_val, y_val), validation_freq=2, verbose=0)
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x_val, y_val, verbose=0)[0], rel=1e-6)


def test_initial_epoch():
    model = small_model()
    history = model.fit(X, Y, epochs=5, initial_epoch=3, verbose=0)
    assert history.epoch == [3, 4] and len(history.history["loss"]) == 2


def test_shuffle_false_is_deterministic_and_shuffle_changes_the_order():
    runs = []
    for _ in range(2):
        model = small_model(seed=4)
        set_random_seed(100 + len(runs))  # a different data seed: irrelevant without shuffling
        model.fit(X, Y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        runs.append(model.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    shuffled = small_model(seed=4)
    shuffled.fit(X, Y, epochs=2, batch_size=16, shuffle=True, verbose=0)
    assert not np.allclose(shuffled.params, runs[0])


def test_set_random_seed_makes_runs_identical():
    def run(seed):
        model = small_model(seed=seed, dropout=0.3)
        history = model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
        return model.params.copy(), history.history["loss"]

    params_a, loss_a = run(11)
    params_b, loss_b = run(11)
    params_c, _ = run(12)
    np.testing.assert_array_equal(params_a, params_b)
    assert loss_a == loss_b
    assert not np.allclose(params_a, params_c)


def test_frozen_layers_get_no_updates():
    model = small_model(optimizers.Adam(0.05), seed=2)
    model.layers[0].trainable = False
    model.compile(optimizer=optimizers.Adam(0.05), loss="categorical_crossentropy")  # Keras: recompile after
    frozen_before = model.layers[0].get_weights()
    head_before = model.layers[1].get_weights()
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    for before, after in zip(frozen_before, model.layers[0].get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(head_before[0], model.layers[1].get_weights()[0])
    assert model.params.size == 8 * 3 + 3


def test_on_batch_methods():
    model = small_model(optimizers.SGD(0.2))
    reference = small_model(optimizers.SGD(0.2))
    loss, accuracy = model.train_on_batch(X[:32], Y[:32])
    reference.fit(X[:32], Y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(model.params, reference.params)
    assert model.test_on_batch(X, Y) == pytest.approx(model.evaluate(X, Y, verbose=0))
    np.testing.assert_array_equal(model.predict_on_batch(X), model.predict(X, verbose=0))
    assert 0 <= accuracy <= 1 and loss > 0


def test_evaluate_without_metrics_returns_the_loss_and_dict_form():
    model = small_model(metrics=())
    loss = model.evaluate(X, Y, verbose=0)
    assert isinstance(loss, float)
    assert model.evaluate(X, Y, verbose=0, return_dict=True) == {"loss": loss}


def test_evaluate_verbose_prints_the_results(capsys):
    model = small_model()
    loss, accuracy = model.evaluate(X, Y, verbose=1)
    assert f"loss: {loss:.4f}" in capsys.readouterr().out
    model.evaluate(X, Y, verbose=0)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("x, message", [
    (np.zeros((96, 5)), r"expected shape \(None, 6\).*\(96, 5\).*expected 6 features, found 5"),
    (np.zeros((96, 6, 1)), r"expected shape \(None, 6\).*\(96, 6, 1\)"),
])
def test_wrong_feature_count_or_rank(x, message):
    model = small_model()
    with pytest.raises(ValueError, match=message):
        model.fit(x, Y, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict(x, verbose=0)


def test_length_mismatch():
    with pytest.raises(ValueError, match="x size: 96, y size: 95"):
        small_model().fit(X, Y[:95], verbose=0)
    with pytest.raises(ValueError, match="sample_weight size: 3"):
        small_model().fit(X, Y, sample_weight=np.ones(3), verbose=0)


def test_labels_that_do_not_match_the_output():
    with pytest.raises(ValueError, match=r"labels of shape \(96, 4\).*output shape \(None, 3\)"):
        small_model().fit(X, np.zeros((96, 4)), verbose=0)
    with pytest.raises(ValueError, match=r"labels of shape \(96,\)"):
        small_model().fit(X, LABELS, verbose=0)  # class ids with categorical_crossentropy


def test_sparse_labels_out_of_range():
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"integers in \[0, 3\). Received values in \[0.0, 5.0\]"):
        model.fit(X, np.where(LABELS == 2, 5, LABELS), verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.evaluate(X, LABELS - 1, verbose=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "categorical_crossentropyy", "optimizer": "sgd"}, r"Unknown loss 'categorical_crossentropyy'.*'mse'"),
    ({"loss": "mse", "optimizer": "sgdd"}, r"Unknown optimizer 'sgdd'.*'adam'.*'sgd'"),
    ({"loss": "mse", "optimizer": "sgd", "metrics": ["acuracy"]}, r"Unknown metric 'acuracy'.*'accuracy'"),
    ({"loss": None, "optimizer": "sgd"}, "Received: loss=None"),
])
def test_unknown_names_list_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sequential([Dense(2, input_shape=(3,))]).compile(**kwargs)


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"Unknown activation 'rellu'.*'relu'"):
        Dense(2, activation="rellu")


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_batch_size_must_be_positive(batch_size):
    model = small_model()
    for call in (lambda: model.fit(X, Y, batch_size=batch_size, verbose=0),
                 lambda: model.evaluate(X, Y, batch_size=batch_size, verbose=0),
                 lambda: model.predict(X, batch_size=batch_size, verbose=0)):
        with pytest.raises(ValueError, match=f"Received: batch_size={batch_size}"):
            call()


def test_empty_and_non_finite_data():
    model = small_model()
    with pytest.raises(ValueError, match=r"x is empty \(0 samples\)"):
        model.fit(X[:0], Y[:0], verbose=0)
    bad = X.copy()
    bad[3, 2] = np.nan
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="x contains 2 NaN or infinite"):
        model.fit(bad, Y, verbose=0)
    with pytest.raises(ValueError, match="x contains 2 NaN or infinite"):
        model.predict(bad, verbose=0)
    bad_y = Y.copy()
    bad_y[0, 0] = np.nan
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        model.evaluate(X, bad_y, verbose=0)
    with pytest.raises(TypeError, match="x must hold numbers"):
        model.fit(np.full((96, 6), "a"), Y, verbose=0)
    with pytest.raises(ValueError, match="x must be an array. Received: x=None"):
        model.fit(None, Y, verbose=0)


def test_fit_before_compile():
    model = Sequential([Dense(3, input_shape=(6,))])
    for call in (lambda: model.fit(X, Y, verbose=0), lambda: model.evaluate(X, Y, verbose=0),
                 lambda: model.train_on_batch(X, Y)):
        with pytest.raises(ValueError, match="You must call `compile\\(\\)` before"):
            call()


def test_epochs_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="Received: epochs=-1"):
        small_model().fit(X, Y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="Received: epochs=True"):
        small_model().fit(X, Y, epochs=True, verbose=0)


# --------------------------------------------------------- arguments that trained silently wrong
@pytest.mark.parametrize("kwargs, message", [
    ({"steps_per_epoch": -1}, "steps_per_epoch must be a positive integer. Received: steps_per_epoch=-1"),
    ({"steps_per_epoch": 0}, "steps_per_epoch must be a positive integer. Received: steps_per_epoch=0"),
    ({"steps_per_epoch": 2.5}, "steps_per_epoch must be a positive integer. Received: steps_per_epoch=2.5"),
    ({"steps_per_epoch": True}, "steps_per_epoch must be a positive integer. Received: steps_per_epoch=True"),
    ({"validation_freq": 0}, "validation_freq must be a positive integer .* Received: validation_freq=0"),
    ({"validation_freq": -2}, "Received: validation_freq=-2"),
    ({"validation_freq": 1.5}, "Received: validation_freq=1.5"),
    ({"validation_freq": []}, r"Received: validation_freq=\[\]"),
    ({"validation_freq": [1, 0]}, r"Received: validation_freq=\[1, 0\]"),
    ({"validation_freq": "2"}, "Received: validation_freq='2'"),
    ({"validation_split": float("nan")}, "validation_split must be a finite number >= 0 and < 1. "
                                         "Received: validation_split=nan"),
    ({"validation_split": -0.1}, "Received: validation_split=-0.1"),
    ({"validation_split": "0.2"}, "Received: validation_split='0.2'"),
    ({"validation_batch_size": 0}, "validation_batch_size must be a positive integer. Received: validation_batch_size=0"),
    ({"initial_epoch": -1}, "initial_epoch must be an integer >= 0. Received: initial_epoch=-1"),
    ({"initial_epoch": 5, "epochs": 3}, "initial_epoch must not exceed epochs .* Received: initial_epoch=5, epochs=3"),
    ({"shuffle": "yes"}, "shuffle must be True or False. Received: shuffle='yes'"),
    ({"verbose": 3}, "verbose must be 'auto', 0, 1 or 2. Received: verbose=3"),
    ({"class_weight": {0: float("nan")}}, r"class_weight\[0\] must be a finite number >= 0. Received: class_weight\[0\]=nan"),
    ({"class_weight": {1: -2.0}}, r"class_weight\[1\] must be a finite number >= 0. Received: class_weight\[1\]=-2.0"),
    ({"class_weight": {0: float("inf")}}, r"Received: class_weight\[0\]=inf"),
    ({"class_weight": {"0": 1.0}}, r"class_weight has keys \['0'\] that are not class ids 0..2"),
    ({"class_weight": {3: 1.0}}, r"class_weight has keys \[3\] that are not class ids 0..2"),
    ({"class_weight": [1.0, 2.0, 1.0]}, r"class_weight must be a dict \{class id: weight\}"),
])
def test_fit_rejects_arguments_that_would_train_wrong(kwargs, message):
    model = small_model()
    before = model.params.copy()
    with pytest.raises(ValueError, match=message):
        model.fit(X, Y, **{"epochs": 2, "verbose": 0, **kwargs})
    np.testing.assert_array_equal(model.params, before)  # refused before any step


def test_class_weight_is_checked_in_train_on_batch_too():
    with pytest.raises(ValueError, match=r"Received: class_weight\[2\]=nan"):
        small_model().train_on_batch(X, Y, class_weight={2: float("nan")})


def test_steps_per_epoch_none_and_valid_values_train():
    model = small_model()
    history = model.fit(X, Y, batch_size=16, epochs=1, steps_per_epoch=np.int64(2), verbose=0)
    assert model.optimizer.iterations == 2 and len(history.history["loss"]) == 1
    model.fit(X, Y, batch_size=16, epochs=1, steps_per_epoch=None, verbose=0)
    assert model.optimizer.iterations == 2 + 6


def test_validation_freq_as_a_list_of_epochs():
    model = small_model()
    seen = []
    from distnn.callbacks import LambdaCallback

    record = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, "val_loss" in logs)))
    history = model.fit(X, Y, epochs=5, batch_size=32, validation_data=(X[:10], Y[:10]), validation_freq=[1, 4, 9],
                        callbacks=[record], verbose=0)
    assert seen == [(0, True), (1, False), (2, False), (3, True), (4, False)]
    assert len(history.history["val_loss"]) == 2


def test_initial_epoch_equal_to_epochs_trains_nothing():
    model = small_model()
    before = model.params.copy()
    history = model.fit(X, Y, epochs=3, initial_epoch=3, verbose=0)
    assert history.epoch == [] and model.optimizer.iterations == 0
    np.testing.assert_array_equal(model.params, before)


@pytest.mark.parametrize("verbose", [-1, "loud", 1.0])
def test_evaluate_and_predict_check_verbose(verbose):
    model = small_model()
    with pytest.raises(ValueError, match="verbose must be 'auto', 0, 1 or 2"):
        model.evaluate(X, Y, verbose=verbose)
    with pytest.raises(ValueError, match="verbose must be 'auto', 0, 1 or 2"):
        model.predict(X, verbose=verbose)
