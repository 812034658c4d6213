"""Gradient buckets summed while backward runs, and the timeline (docs/architecture.md, "Gradient
buckets and overlap", "Timeline and step anatomy").

Real ``mpiexec`` jobs of the parity scripts with tiny buckets (``DISTNN_BUCKET_BYTES=64``: 16 floats,
so buckets cut through variables and many start during backward) train like one process; a timeline
written by a 2-rank run has every phase of every step on both ranks, with buckets started before
backward ends.
"""
import json
import sys

import numpy as np
import pytest

from conftest import find_mpiexec, run_command, subprocess_env
from emulated_cluster import two_nodes  # noqa: F401 - the fixture
from test_distributed_models_parity import assert_same_training as assert_same_model_training
from test_distributed_training import TOLERANCE, assert_same_training, parity_run, relative_difference

import distnn
from distnn.distributed import anatomy, overlap, timeline

PARITY = "tests/mpi_scripts/train_parity.py"
MODELS_PARITY = "tests/mpi_scripts/train_parity_models.py"
TINY_BUCKETS = {"DISTNN_BUCKET_BYTES": "64", "DISTNN_OVERLAP": "1"}


def run(script, out, *args, n=None, **env) -> dict:
    """``parity_run`` of ``script``, on ``n`` ranks with tiny buckets (and ``env``)."""
    mpi = {} if n is None else {"env": subprocess_env(**{**TINY_BUCKETS, **env})}
    return parity_run(out, *args, n=n, script=script, timeout=90, **mpi)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    directory = tmp_path_factory.mktemp("overlap_reference")
    return {"mlp": run(PARITY, directory / "mlp.npz", "--model", "mlp"),
            "cnn-bn": run(PARITY, directory / "cnn-bn.npz", "--model", "cnn-bn"),
            "resnet": run(MODELS_PARITY, directory / "resnet.npz", "--model", "resnet", "--learning-rate", "1e-3")}


@pytest.mark.mpi
@pytest.mark.parametrize("model, n", [("mlp", 1), ("mlp", 2), ("mlp", 3), ("mlp", 4), ("cnn-bn", 2), ("cnn-bn", 3)])
def test_sequential_and_batchnorm_models_with_tiny_buckets_train_like_one_process(references, tmp_path, model, n):
    result = run(PARITY, tmp_path / "out.npz", "--model", model, n=n)
    assert f"size={n} " in result["stdout"]
    assert_same_training(references[model], result, TOLERANCE)
    assert int(result["identical_checks"]) == 2  # every rank held the same weights after each epoch
    assert relative_difference(references[model]["epoch0"], result["epoch1"]) > 1e-3  # it trained


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_wide_mlp_with_polled_gemm_pieces_trains_like_one_process(tmp_path, n):
    """512-wide layers at 43-64 samples per rank: backward's GEMMs run in 2-4 pieces with a poll
    after each (layers.base.polled_matmul), and each Dense reports its weights before computing dL/dx."""
    args = ["--model", "mlp-wide", "--batch-size", "128"]
    reference = run(PARITY, tmp_path / "one.npz", *args)
    result = run(PARITY, tmp_path / "out.npz", *args, n=n, DISTNN_BUCKET_BYTES="64K")
    assert_same_training(reference, result, TOLERANCE)
    assert int(result["identical_checks"]) == 2
    assert relative_difference(reference["epoch0"], result["epoch1"]) > 1e-3


@pytest.mark.mpi
def test_wide_mlp_across_two_emulated_nodes_trains_like_one_process(two_nodes, tmp_path):
    """Ranks on two nodes: backward also reports the kernels' leading rows from inside its GEMMs,
    which run in pieces, so buckets start mid-GEMM (overlap.BucketReducer.reports_within_ops)."""
    args = ["--model", "mlp-wide", "--batch-size", "128"]
    reference = run(PARITY, tmp_path / "one.npz", *args)
    out = tmp_path / "two.npz"
    proc = two_nodes.run_mpi(1, [PARITY, str(out), *args], timeout=120, DISTNN_BUCKET_BYTES="64K", DISTNN_OVERLAP="1")
    assert "size=2 nodes=2 " in proc.stdout, proc.stdout + proc.stderr
    with np.load(out) as saved:
        result = dict(saved)
    assert_same_training(reference, result, TOLERANCE)
    assert int(result["identical_checks"]) == 2


@pytest.mark.mpi
def test_empty_shard_with_batchnorm_and_tiny_buckets(tmp_path):
    """A rank without samples in the last step joins BatchNormalization's collective outside
    backward, the others inside it after some buckets have started: the buckets' own communicator
    keeps the two orders from mixing."""
    args = ["--samples", "10", "--batch-size", "4", "--model", "cnn-bn"]
    reference = run(PARITY, tmp_path / "one.npz", *args)
    result = run(PARITY, tmp_path / "three.npz", *args, n=3)  # the last step's 2 samples on 3 ranks
    assert_same_training(reference, result, TOLERANCE)
    assert int(result["identical_checks"]) == 2


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_functional_model_with_tiny_buckets_trains_like_one_process(references, tmp_path, n):
    result = run(MODELS_PARITY, tmp_path / "out.npz", "--model", "resnet", "--learning-rate", "1e-3", n=n)
    assert f"size={n} model=resnet" in result["stdout"]
    assert_same_model_training(references["resnet"], result, TOLERANCE)
    assert int(result["identical_checks"]) == 2


@pytest.mark.mpi
def test_fp16_compression_per_bucket(references, tmp_path):
    result = run(PARITY, tmp_path / "fp16.npz", "--compression", "fp16", n=2)
    assert "compression=fp16" in result["stdout"]
    assert int(result["identical_checks"]) == 2  # the wire rounding is the same on every rank
    assert_same_training(references["mlp"], result, tolerance=1e-3)  # float16 keeps ~3 digits


@pytest.mark.mpi
def test_ranks_must_agree_on_overlap(tmp_path):
    mpiexec = find_mpiexec()
    script = [sys.executable, PARITY, str(tmp_path / "out.npz")]
    proc = run_command([mpiexec, "-n", "1", "-env", "DISTNN_OVERLAP", "1", *script, ":",
                        "-n", "1", "-env", "DISTNN_OVERLAP", "0", *script], timeout=90, check=False)
    assert proc.returncode != 0
    assert ("Ranks disagree on gradient buckets (DISTNN_OVERLAP, DISTNN_BUCKET_BYTES): rank 0 has (True, 1048576), "
            "rank 1 has (False, 1048576) (in fit())") in proc.stdout + proc.stderr


@pytest.mark.mpi
def test_a_timeline_on_one_rank_only_is_refused(tmp_path):
    mpiexec = find_mpiexec()
    script = [sys.executable, PARITY, str(tmp_path / "out.npz")]
    proc = run_command([mpiexec, "-n", "1", "-env", "DISTNN_TIMELINE", str(tmp_path / "t.json"), *script, ":",
                        "-n", "1", *script], timeout=90, check=False)
    assert proc.returncode != 0
    assert ("Ranks disagree on timeline recording (DISTNN_TIMELINE): rank 0 has True, rank 1 has False "
            "(in fit())") in proc.stdout + proc.stderr


def spans_by_step(trace: dict) -> dict:
    steps: dict = {}
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            steps.setdefault((event["pid"], event["args"]["step"]), []).append(event)
    return steps


@pytest.mark.mpi
@pytest.mark.host_only("the bucketed overlap reduces host gradients; device gradients take one allreduce")
def test_two_rank_timeline_has_every_phase_and_buckets_start_during_backward(tmp_path):
    path = tmp_path / "timeline.json"
    run(PARITY, tmp_path / "out.npz", "--epochs", "1", n=2, DISTNN_TIMELINE=str(path))
    trace = json.loads(path.read_text())
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert names == {(0, 0): "main", (0, 1): "allreduce", (1, 0): "main", (1, 1): "allreduce"}
    trained = {key: spans for key, spans in spans_by_step(trace).items()
               if any(e["name"] == "backward" for e in spans)}
    assert sorted({step for _, step in trained}) == list(range(7))  # 203 samples / 32: 7 steps
    for (rank, step), spans in trained.items():
        phases = {e["name"] for e in spans}
        assert {"data", "forward", "backward", "allreduce wait", "optimizer"} <= phases, (rank, step, phases)
        buckets = [e for e in spans if e["cat"] == "allreduce"]
        assert len(buckets) == 13  # 195 parameters in buckets of 16 floats
        backward = next(e for e in spans if e["name"] == "backward")
        assert min(e["ts"] for e in buckets) < backward["ts"] + backward["dur"], (rank, step)
        assert all(e["tid"] == 1 and e["dur"] >= 0 for e in buckets)
    report = run_command([sys.executable, "-m", "distnn.bench", "anatomy", str(path)], timeout=60).stdout
    assert "exposed comm." in report and "rank 1" in report and "overlap hides" in report


@pytest.mark.mpi
def test_blocking_timeline_has_the_allreduce_on_the_main_track(tmp_path):
    path = tmp_path / "timeline.json"
    run(PARITY, tmp_path / "out.npz", "--epochs", "1", n=2, DISTNN_TIMELINE=str(path), DISTNN_OVERLAP="0")
    steps = anatomy.steps(anatomy.load(str(path)))
    assert {rank for rank, _ in steps} == {0, 1}
    for spans in steps.values():
        assert not [e for e in spans if e["cat"] == "allreduce"]
        parts = anatomy.step_anatomy(spans)
        assert parts["allreduce"] > 0
        assert parts["exposed"] == pytest.approx(parts["communication"])  # nothing overlaps it


def test_timeline_callback_in_one_process_and_the_anatomy_report(tmp_path):
    from distnn.layers import Dense
    from distnn.models import Sequential

    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.default_rng(0).random((40, 3)), np.random.default_rng(1).random((40, 2))
    path = tmp_path / "one.json"
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[distnn.distributed.Timeline(str(path))])
    assert timeline.recorder() is None  # the callback stopped recording
    steps = anatomy.steps(anatomy.load(str(path)))
    assert sorted(steps) == [(0, step) for step in range(10)]
    for spans in steps.values():
        assert {"forward", "backward", "optimizer", "data", "callbacks"} <= {e["name"] for e in spans}
    text = anatomy.report(str(path))
    assert "forward" in text and "rank 0" in text and "steps" in text


def test_bad_settings_are_refused(tmp_path, monkeypatch):
    from distnn.distributed import DistributedOptimizer
    from distnn.optimizers import SGD

    with pytest.raises(ValueError, match="Received: overlap='yes'"):
        DistributedOptimizer(SGD(), overlap="yes")
    with pytest.raises(ValueError, match="Received: bucket_bytes=0"):
        DistributedOptimizer(SGD(), bucket_bytes=0)
    assert DistributedOptimizer(SGD(), bucket_bytes="2M").bucket_bytes == 2 << 20
    monkeypatch.setenv("DISTNN_OVERLAP", "maybe")
    with pytest.raises(ValueError, match="DISTNN_OVERLAP='maybe'"):
        overlap.overlap_from_env()
    monkeypatch.setenv("DISTNN_BUCKET_BYTES", "0")
    with pytest.raises(ValueError, match="DISTNN_BUCKET_BYTES=0"):
        overlap.bucket_bytes_from_env()
    with pytest.raises(ValueError, match="Timeline needs a non-empty file path"):
        distnn.distributed.Timeline("")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="traceEvents"):
        anatomy.report(str(tmp_path / "bad.json"))


def test_the_tape_reports_each_gradient_once_it_is_final():
    """A shared layer (called twice: final only after its first call's backward), a weight used by
    plain ops (written from its leaf), a recurrent layer (a fused node with a VJP of its own), and
    one the loss does not reach (zeroed): each variable is reported once, holding exactly its final
    gradient."""
    from distnn import layers, ops
    from distnn.models import Model
    from distnn.ops.core import Tape

    class Scale(layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return ops.multiply(x, self.w)

    inputs = layers.Input((8,))
    shared = layers.Dense(8, activation="tanh")
    unused = layers.Dense(3)
    hidden = Scale()(shared(shared(inputs)))
    recurrent = layers.LSTM(3)(layers.Reshape((2, 4))(hidden))
    model = Model(inputs, [layers.Dense(2)(recurrent), unused(inputs)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((5, 8)).astype("float32")
    seen: dict = {}

    def on_final(variables):
        for v in variables:
            assert id(v) not in seen, v.name
            seen[id(v)] = v.grad.copy()

    model.grads[...] = np.nan  # a stale buffer: every reported gradient must be written by then
    with Tape() as tape:
        first, _ = model(x, training=True)
    tape.backward([(first, np.ones((5, 2), "float32"))], on_final=on_final, variables=model._bound_variables)
    assert len(seen) == len(model._bound_variables) == 10
    for v in model._bound_variables:
        np.testing.assert_array_equal(seen[id(v)], v.grad)
    assert not np.isnan(model.grads).any()
    assert not np.any(unused.kernel.grad) and np.any(shared.kernel.grad)


def test_dense_and_conv_layers_report_their_weights_before_computing_input_gradients():
    """A fused layer that makes its weights final reports them from inside its VJP (its dL/dx still to
    come), the model's first layer too; a shared layer only after its node, once the gradients of
    both calls are added."""
    from distnn import layers
    from distnn.models import Model
    from distnn.ops.core import Tape

    inputs = layers.Input((6, 6, 1))
    conv = layers.Conv2D(2, 3, activation="relu")
    shared = layers.Dense(4, activation="tanh")
    hidden = shared(shared(layers.Dense(4)(layers.Flatten()(conv(inputs)))))
    model = Model(inputs, layers.Dense(2)(hidden))
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((3, 6, 6, 1)).astype("float32")
    owner = {id(v): layer for layer in model.layers for v in layer.trainable_weights}
    inside_vjp: dict = {}

    def on_final(variables):
        for v in variables:  # the layer's backward is running while its _backward_tape is set
            inside_vjp[v.name] = owner[id(v)]._backward_tape is not None

    with Tape() as tape:
        output = model(x, training=True)
    tape.backward([(output, np.ones((3, 2), "float32"))], on_final=on_final, variables=model._bound_variables)
    for layer in model.layers:
        for v in layer.trainable_weights:
            assert inside_vjp[v.name] is (layer is not shared), v.name
    assert tape.report_written is None and tape.poll_transfers is None


def test_polled_matmul_runs_large_products_in_pieces_with_the_same_bits():
    from types import SimpleNamespace

    from distnn.layers import Dense
    from distnn.layers.kernel_layer import POLL_MAX_PIECES, POLL_PIECE_MACS, polled_matmul

    rng = np.random.default_rng(0)
    layer = Dense(4)
    a, b = rng.random((784, 128), dtype="float32"), rng.random((128, 512), dtype="float32")
    expected = a @ b
    pieces = min(POLL_MAX_PIECES, 784 * 128 * 512 // POLL_PIECE_MACS)
    assert pieces > 1
    for axis in (0, 1):
        layer._backward_tape = None  # outside a distributed backward: one product
        out = np.full_like(expected, np.nan)
        np.testing.assert_array_equal(polled_matmul(layer, a, b, out, axis=axis), expected)
        polls = []
        layer._backward_tape = SimpleNamespace(poll_transfers=lambda: polls.append(1), report_prefix=None)
        out = np.full_like(expected, np.nan)
        np.testing.assert_array_equal(polled_matmul(layer, a, b, out, axis=axis), expected)
        assert len(polls) == pieces
    polls.clear()
    small = rng.random((16, 16), dtype="float32")
    polled_matmul(layer, small, small, np.empty_like(small))
    assert polls == []  # too small to split
    tall, wide = rng.random((64, 8192), dtype="float32"), rng.random((8192, 64), dtype="float32")
    out = np.empty((64, 64), "float32")
    np.testing.assert_array_equal(polled_matmul(layer, tall, wide, out), tall @ wide)
    assert polls == []  # each row piece would read all 2 MiB of ``wide`` again
    with pytest.raises(ValueError, match="axis=1"):  # column pieces write no leading rows to report
        polled_matmul(layer, a, b, np.empty_like(expected), axis=1, variable=layer)


def test_a_large_kernel_gradient_is_reported_in_row_blocks_as_its_gemm_writes_them():
    """Through the tape: the 784x512 kernel of a model's first Dense (which computes no dL/dx) is
    reported in growing prefixes, each already holding its final rows, before the whole kernel."""
    from distnn import layers
    from distnn.models import Sequential
    from distnn.ops.core import Tape

    model = Sequential([layers.Dense(512, activation="relu", input_shape=(784,)), layers.Dense(10)])
    model.compile(optimizer="sgd", loss="mse")
    first = model.layers[0].kernel
    x = np.random.default_rng(0).random((128, 784)).astype("float32")
    events = []

    def on_final(variables):
        events.extend(("whole", v, None) for v in variables)

    def on_final_prefix(variable, elements):
        events.append(("prefix", variable, elements))
        rows = elements // variable.shape[1]
        events.append(("rows", variable, variable.grad[:rows].copy()))

    with Tape() as tape:
        output = model(x, training=True)
    tape.backward([(output, np.ones((128, 10), "float32"))], on_final=on_final, variables=model._bound_variables,
                  on_final_prefix=on_final_prefix)
    prefixes = [elements for kind, v, elements in events if kind == "prefix" and v is first]
    assert len(prefixes) > 1 and prefixes == sorted(prefixes) and prefixes[-1] == first.size
    for kind, v, rows in events:
        if kind == "rows":
            np.testing.assert_array_equal(rows, first.grad[:len(rows)])  # final when reported
    whole = [i for i, (kind, v, _) in enumerate(events) if kind == "whole" and v is first]
    assert len(whole) == 1 and whole[0] > max(i for i, (kind, v, _) in enumerate(events) if kind == "prefix")
    assert all(v is not model.layers[1].kernel for kind, v, _ in events if kind == "prefix")  # too small to split


@pytest.mark.mpi
def test_bucket_reducer_starts_a_bucket_when_its_last_element_is_final():
    proc = run_command([find_mpiexec(), "-n", "2", sys.executable, "tests/mpi_scripts/bucket_reports.py"],
                       timeout=60)
    assert proc.stdout.count("OK 14") == 2, proc.stdout


def test_anatomy_counts_only_communication_outside_forward_and_backward(tmp_path):
    def span(name, ts, dur, cat="main"):
        return {"name": name, "cat": cat, "ph": "X", "pid": 0, "tid": int(cat != "main"), "ts": ts, "dur": dur,
                "args": {"step": 0}}

    spans = [span("forward", 0, 10), span("backward", 10, 20), span("bucket 0", 20, 15, "allreduce"),
             span("bucket 1", 25, 20, "allreduce"), span("allreduce wait", 30, 15), span("optimizer", 45, 5)]
    parts = anatomy.step_anatomy(spans)
    assert parts["communication"] == 25  # the union of [20, 35] and [25, 45]
    assert parts["exposed"] == 15  # [30, 45]: after backward
    assert parts["step"] == 50 and parts["backward"] == 20 and parts["allreduce wait"] == 15
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": spans + [span("backward", 60, 5) | {"args": {"step": 1}}]}))
    assert sorted(anatomy.steps(anatomy.load(str(path)))) == [(0, 0), (0, 1)]
    assert "overlap hides 40% of the gradient allreduce" in anatomy.report(str(path), skip=0)
