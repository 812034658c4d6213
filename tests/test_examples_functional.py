"""The functional and subclassed examples on scikit-learn's digits reach their accuracy as a user runs them:
the residual CNN (examples/resnet_digits.py), the two-output model (examples/multi_output_digits.py)
and the subclassed residual model (examples/subclassed_digits.py).

Each trains under one BLAS thread: these models are small, and on a machine shared with other
work extra BLAS threads only wait for cores (measured: 8 epochs of the residual model took 41 s of
CPU with the default threads, 5 s with one).
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from distnn import layers

from conftest import load_example


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


# ------------------------------------------------------------------------------- residual CNN
def test_resnet_digits_reaches_097_over_seeds(capsys):
    resnet = load_example("resnet_digits")
    accuracies = [resnet.main(["--seed", str(seed)]) for seed in range(3)]
    assert min(accuracies) >= 0.97, accuracies
    assert capsys.readouterr().out.count("test_accuracy=") == 3


def test_resnet_digits_graph_has_the_skips():
    resnet = load_example("resnet_digits")
    model = resnet.build_model(filters=8, blocks=3)
    skips = [node for node in model._nodes if isinstance(node.operation, layers.Add)]
    assert len(skips) == 3
    for node in skips:  # each adds the block's input to its second BatchNormalization's output
        shortcut, branch = node.input_tensors
        assert isinstance(branch.node.operation, layers.BatchNormalization)
        assert isinstance(shortcut.node.operation, layers.Activation)
    assert model.output_shape == (None, 10)
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    probabilities = model.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


# ---------------------------------------------------------------------------------- two outputs
@pytest.fixture(scope="module")
def two_output_logs():
    with threadpool_limits(1):
        return load_example("multi_output_digits").main([])


def test_two_output_model_learns_both_heads(two_output_logs):
    logs = two_output_logs
    assert set(logs) == {"loss", "digit_loss", "large_loss", "digit_accuracy", "large_accuracy", "large_mae"}
    assert logs["digit_accuracy"] >= 0.97, logs
    assert logs["large_accuracy"] >= 0.97, logs  # resolved as binary accuracy from the 1-unit head
    assert logs["large_mae"] < 0.1, logs
    # The total is the loss_weights-weighted sum of the outputs' losses (digit 1.0, large 0.5).
    assert logs["loss"] == pytest.approx(logs["digit_loss"] + 0.5 * logs["large_loss"], rel=1e-5)


def test_two_output_model_returns_and_predicts_a_dict():
    example = load_example("multi_output_digits")
    model = example.build_model(filters=4, hidden=8)
    assert sorted(model.output_names) == ["digit", "large"]
    (x, y), _ = example.load_digits()
    predictions = model.predict(x[:7], verbose=0)
    assert set(predictions) == {"digit", "large"}
    assert predictions["digit"].shape == (7, 10) and predictions["large"].shape == (7, 1)
    assert ((predictions["large"] > 0) & (predictions["large"] < 1)).all()
    assert y["large"].shape == (len(x), 1) and set(np.unique(y["large"])) == {0.0, 1.0}


# ------------------------------------------------------------------------------------ subclassed
def test_subclassed_model_trains_and_reloads(tmp_path):
    example = load_example("subclassed_digits")
    assert example.main(["--seed", "1"]) >= 0.97

    model = example.DigitsResNet(filters=8, blocks=2)
    (x, y), (x_test, _) = example.load_digits()
    example.compile_model(model, 5e-3, steps=20)
    model.fit(x[:320], y[:320], epochs=2, batch_size=32, verbose=0)
    # Nested layers are tracked: stem, two blocks of (2 conv + 2 BN), classifier.
    assert len(model.trainable_weights) == 2 + 2 * (1 + 2 + 1 + 2) + 2
    assert len(model.non_trainable_weights) == 2 * 2 * 2  # the BN moving statistics
    # Keras' way for a subclassed model: rebuild it from its config, then load the weights.
    path = str(tmp_path / "subclassed.weights.npz")
    model.save_weights(path)
    restored = example.DigitsResNet.from_config(model.get_config())
    assert restored.num_blocks == 2 and restored.filters == 8
    restored(x[:1])  # built on its first call
    restored.load_weights(path)
    np.testing.assert_array_equal(restored.predict(x_test, verbose=0), model.predict(x_test, verbose=0))
