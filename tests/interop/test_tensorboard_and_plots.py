"""TensorBoard event files read back with TensorBoard's own reader, and PNGs of training curves."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from distnn.callbacks import TensorBoard
from distnn.utils import plot_history
from conftest import run_mpi, run_python


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415

    accumulator = EventAccumulator(path, size_guidance={"histograms": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.mpi
def test_two_rank_fit_writes_scalars_and_histograms_from_rank_0_only(tmp_path):
    run_mpi(2, ["tests/interop/mpi_tensorboard.py", str(tmp_path)], timeout=180)
    history = json.loads((tmp_path / "history.json").read_text())
    assert not (tmp_path / "rank1").exists()
    train = _accumulator(str(tmp_path / "rank0" / "train"))
    validation = _accumulator(str(tmp_path / "rank0" / "validation"))
    scalars = train.Tags()["scalars"]
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_steps_per_second",
            "batch_loss"} <= set(scalars)
    for name in ("loss", "accuracy"):
        events = train.Scalars(f"epoch_{name}")
        assert [e.step for e in events] == [0, 1, 2]
        np.testing.assert_allclose([e.value for e in events], history[name], rtol=1e-6)
        val_events = validation.Scalars(f"epoch_{name}")
        np.testing.assert_allclose([e.value for e in val_events], history[f"val_{name}"], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in train.Scalars("epoch_learning_rate")], [1e-3] * 3, rtol=1e-6)
    assert [e.step for e in train.Scalars("batch_loss")] == [2, 4, 6, 8, 10, 12]  # 4 steps an epoch, every 2nd
    histograms = train.Tags()["histograms"]
    assert {"dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"} <= set(histograms)
    kernel = train.Histograms("dense/kernel")
    assert [h.step for h in kernel] == [0, 1, 2] and kernel[0].histogram_value.num == 6 * 8
    assert "keras" in train.Tags()["tensors"]  # write_graph: the model's configuration as text


def test_histograms_only_when_asked(tmp_path):
    from distnn import layers, models  # noqa: PLC0415

    model = models.Sequential([layers.Input((3,)), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 3), "float32")
    model.fit(x, np.zeros((8, 2), "float32"), epochs=2, verbose=0, callbacks=[TensorBoard(str(tmp_path))])
    train = _accumulator(str(tmp_path / "train"))
    assert train.Tags()["histograms"] == [] and len(train.Scalars("epoch_loss")) == 2
    assert not (tmp_path / "validation").exists()


@pytest.mark.parametrize("option", [{"write_images": True}, {"profile_batch": 2}, {"embeddings_freq": 1},
                                    {"update_freq": 0}, {"update_freq": "step"}, {"histogram_freq": -1}])
def test_options_that_do_not_apply_are_refused(tmp_path, option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        TensorBoard(str(tmp_path), **option)


def _png_pixels(path):
    from matplotlib import image  # noqa: PLC0415

    return image.imread(path)


def test_plot_history_draws_every_curve(tmp_path):
    history = {"loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8], "val_loss": [1.1, 0.8, 0.7],
               "val_accuracy": [0.4, 0.6, 0.7], "learning_rate": [0.1, 0.1, 0.1]}
    path = plot_history(history, str(tmp_path / "curves.png"))
    pixels = _png_pixels(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 800  # two panels side by side
    assert pixels[..., :3].std() > 0.05  # not blank
    with pytest.raises(ValueError, match="precision"):
        plot_history(history, str(tmp_path / "x.png"), metrics=["precision"])


def test_train_mnist_writes_a_png_beside_its_csv_log(tmp_path):
    csv_path = tmp_path / "logs" / "mnist.csv"
    run_python(["launch/train_mnist.py", "--limit", "256", "--epochs", "2", "--csv-log", str(csv_path),
                "--verbose", "0"], timeout=240)
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 3
    png = csv_path.with_suffix(".png")
    assert png.stat().st_size > 10_000
    pixels = _png_pixels(str(png))
    assert pixels.shape[1] > pixels.shape[0] > 200
    assert pixels[..., :3].std() > 0.05
