"""The strict device mode itself: it refuses what cupy refuses, counts transfers, catches a planted
host conversion in a layer, and the host-staged device collectives train N ranks like one process."""
from __future__ import annotations

import numpy as np
import pytest

import distnn
from conftest import run_mpi, run_python, subprocess_env
from distnn import backend, layers
from distnn.testing import strict_device
from test_distributed_training import PARITY, assert_same_training


def parity_run(out, *args, n: int | None = None, device: str = "strict", collectives: str = "host") -> dict:
    """train_parity.py alone (``n=None``) or on ``n`` ranks on ``device``; what rank 0 saved."""
    env = subprocess_env(DISTNN_DEVICE=device, DISTNN_DEVICE_COLLECTIVES=collectives)
    argv = [PARITY, str(out), *args]
    (run_python(argv, timeout=120, env=env) if n is None else run_mpi(n, argv, timeout=120, env=env))
    with np.load(out) as saved:
        return dict(saved)


@pytest.fixture
def strict():
    """This process on the strict device for one test, then back on the device it had."""
    previous = backend.device()
    backend.set_device("strict")
    strict_device.reset_transfer_counts()
    yield strict_device.module
    backend.set_device(previous)


def test_implicit_conversions_and_mixing_are_refused(strict):
    device = backend.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    host = np.ones((2, 3), np.float32)
    refused = {
        "np.asarray": lambda: np.asarray(device),
        "np.array": lambda: np.array([device, device]),
        "operator with host": lambda: device + host,
        "reflected operator": lambda: host * device,
        "numpy ufunc": lambda: np.maximum(device, host),
        "numpy function": lambda: np.concatenate([device, host]),
        "device module function": lambda: strict.where(device > 1, device, host),
    }
    for name, attempt in refused.items():
        with pytest.raises(TypeError, match="strict device mode"):
            attempt()
            pytest.fail(f"{name} was accepted")
    # What cupy allows works, and stays on the device: scalars, numpy functions on device arrays.
    result = np.exp(device * 2.0 + np.float32(1)).sum(axis=0)
    assert type(result) is strict_device.StrictArray and result.shape == (3,)
    assert type(device.sum()) is strict_device.StrictArray  # a 0-d array, not a host scalar


def test_transfers_are_counted(strict):
    host = np.ones((4, 5), np.float64)
    device = backend.to_device(host)
    assert backend.to_device(device) is device  # already there: no copy
    assert strict_device.transfer_counts()["host_to_device"] == 1
    assert strict_device.transfer_counts()["host_to_device_bytes"] == host.nbytes
    back = backend.to_numpy(device * 3)
    assert type(back) is np.ndarray and np.array_equal(back, host * 3)
    assert float(device.sum()) == 20.0  # a synchronising read: allowed as in cupy, and counted
    counts = strict_device.transfer_counts()
    assert (counts["device_to_host"], counts["device_to_host_bytes"]) == (2, host.nbytes + 8)
    device[0] = np.zeros(5)  # cupy uploads a host value written into a device array
    assert strict_device.transfer_counts()["host_to_device"] == 2


class LeakyDense(layers.Dense):
    """A Dense layer with a planted host conversion, as a careless custom layer would have."""

    def call(self, inputs):
        return super().call(inputs) + np.asarray(self.bias.value)  # numpy-only: fails on a GPU


def _small_fit(layer: layers.Layer) -> distnn.Model:
    x = np.random.default_rng(0).random((32, 4), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    model = distnn.Sequential([layers.Input((4,)), layer, layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    return model


def test_planted_host_conversion_in_a_layer_fails_fit(strict):
    with pytest.raises(TypeError, match="implicit conversion of a device array to a numpy array"):
        _small_fit(LeakyDense(8))


def test_planted_host_conversion_passes_on_cpu():
    if backend.device() != "cpu":
        pytest.skip("the suite runs on another device")
    model = _small_fit(LeakyDense(8))  # numpy forgives it: the bug is invisible without the strict mode
    assert np.isfinite(model.params).all()


def test_a_training_step_downloads_only_its_metric_scalars(strict):
    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    model = distnn.Sequential([layers.Input((8,)), layers.Dense(16, activation="relu"),
                               layers.BatchNormalization(), layers.Dropout(0.2),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    per_step = []

    class CountSteps(distnn.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.before = strict_device.transfer_counts()

        def on_train_batch_end(self, batch, logs=None):
            after = strict_device.transfer_counts()
            per_step.append({key: after[key] - self.before[key] for key in after})

    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[CountSteps()])
    assert len(per_step) == 8
    for counts in per_step:
        # the loss sum and the accuracy's correct count: one float32 scalar each, nothing else
        assert (counts["device_to_host"], counts["device_to_host_bytes"]) == (2, 8), counts
    assert type(model.predict(x, verbose=0)) is np.ndarray  # predict returns host arrays, as Keras


def test_strict_mode_computes_exactly_what_numpy_computes(tmp_path):
    """The strict arrays are numpy underneath: a whole training run gives bit-identical weights."""
    cpu = parity_run(tmp_path / "cpu.npz", "--model", "cnn-bn", device="cpu")
    strict = parity_run(tmp_path / "strict.npz", "--model", "cnn-bn")
    assert_same_training(cpu, strict, tolerance=0.0)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_host_staged_device_collectives_train_n_ranks_like_one(tmp_path, n):
    """BatchNormalization's synchronised sums, the gradients, the metric sums and the initial broadcast
    all cross ranks as strict device arrays through the host-staged path."""
    reference = parity_run(tmp_path / "one.npz", "--model", "cnn-bn")
    result = parity_run(tmp_path / f"n{n}.npz", "--model", "cnn-bn", n=n)
    assert_same_training(reference, result)


@pytest.mark.mpi
def test_device_collectives_on_three_ranks(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES_SCRIPT)
    proc = run_mpi(3, [str(script)], timeout=60, env=subprocess_env(DISTNN_DEVICE="strict"))
    assert proc.stdout.count("collectives ok") == 3, proc.stdout + proc.stderr


COLLECTIVES_SCRIPT = """
import numpy as np
from distnn import backend, distributed
from distnn.testing import strict_device

comm = distributed.get_communicator()
r = comm.rank
values = backend.to_device(np.arange(5, dtype=np.float32) * (r + 1))
assert comm.allreduce(values, op="sum") is values
assert np.array_equal(backend.to_numpy(values), np.arange(5, dtype=np.float32) * 6)
average = comm.allreduce(backend.to_device(np.full(3, float(r))), op="average")
assert type(average) is strict_device.StrictArray and np.array_equal(backend.to_numpy(average), np.ones(3))
root = comm.bcast(backend.to_device(np.full((2, 2), r, np.float64)), root=2)
assert np.array_equal(backend.to_numpy(root), np.full((2, 2), 2.0))
gathered = comm.allgather(backend.to_device(np.full((r + 1, 2), r, np.float32)))
assert type(gathered) is strict_device.StrictArray and gathered.shape == (6, 2)
assert np.array_equal(backend.to_numpy(gathered)[:, 0], [0, 1, 1, 2, 2, 2])
try:
    comm.allreduce(backend.to_device(np.zeros(2, np.int64)))
except TypeError as exc:
    assert "float32 or float64" in str(exc)
else:
    raise AssertionError("an int64 device array was accepted")
print("collectives ok", strict_device.transfer_counts(), flush=True)
"""
