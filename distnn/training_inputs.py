"""Between ``fit``/``evaluate``/``predict`` and ``distnn.data``: what kind of input the call got,
which data-parallel mode the ranks are in, and the plan of its steps.

The mode comes from the rank consistency check's one small exchange (lengths and sampled-row
fingerprints, ``consistency.check_ranks_agree``): identical data on every rank is split batch by
batch (exact N = 1 equivalence); data that differs on every rank is each rank's own shard, with
``batch_size`` per rank (Horovod's idiom). A model compiled with Horovod's
``DistributedOptimizer`` trains in own-shard mode in any case, because that is what its script
was written for (docs/architecture.md, "Input pipelines and data-parallel modes").
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from distnn import data
from distnn.data import adapters, steps
from distnn.distributed import consistency, overlap, timeline

_TRAIN_GROUP = ("x", "y", "sample_weight")
_announced: set = set()


def input_dtypes(model: Any, x: Any) -> list:
    """The dtype each leaf of ``x`` becomes batch by batch: the dtype the model's ``Input`` declares
    (integer inputs such as token ids stay integers), else the weights' float dtype."""
    leaves = data.leaves(x)
    declared = [t.dtype for t in getattr(model, "inputs", None) or []] if not isinstance(x, dict) else []
    declared = declared if len(declared) == len(leaves) else [None] * len(leaves)
    result = []
    for leaf, dtype in zip(leaves, declared):
        if dtype is not None and np.dtype(dtype).kind in "iu" and leaf.dtype.kind in "iu":
            result.append(None)
        else:
            target = np.dtype(dtype or model.params.dtype)
            result.append(None if leaf.dtype == target else target)
    return result


def _check_first_batch(model: Any, source: adapters.BatchSource) -> None:
    """Build the model and resolve its outputs from the first yielded batch (which needs targets)."""
    x, y, sample_weight = source.first
    if y is None:
        raise ValueError(f"{source.name}: a training or evaluation batch must be (x, y) or (x, y, sample_weight). "
                         "Received a batch without targets")
    model._check_xy(x, y, sample_weight)


def batch_converter(model: Any, class_weight: dict | None) -> Any:
    """``(x, y, sample_weight) -> (x, ys, sample_weight)`` for one yielded batch: checked (finite,
    shapes, labels) host arrays, with ``class_weight`` turned into sample weights."""
    def convert(x: Any, y: Any, sample_weight: Any) -> tuple[Any, list, Any]:
        if y is None:
            raise ValueError("A training or evaluation batch must be (x, y) or (x, y, sample_weight). Received a "
                             "batch without targets")
        x = data.as_structure(x, "x")
        model._check_input_shapes(x)
        ys = [data.as_array(t, "y") for t in model._targets(data.as_structure(y, "y"))]
        sample_weight = None if sample_weight is None else data.as_array(sample_weight, "sample_weight")
        for part in ys + data.leaves(x)[1:] + ([sample_weight] if sample_weight is not None else []):
            data.check_lengths(x=data.leaves(x)[0], y=part)
        for spec, t, shape in zip(model._outputs, ys, model._output_shapes_seen):
            if spec.loss is not None:
                spec.loss.check_targets(t, shape)
        return x, ys, model._class_sample_weights(ys, class_weight, sample_weight)
    return convert


def x_converter(model: Any) -> Any:
    """The same for ``predict``'s batches (``x`` only; any targets are ignored, as in Keras)."""
    def convert(x: Any, y: Any, sample_weight: Any) -> tuple[Any, list, Any]:
        x = data.as_structure(x, "x")
        model._check_input_shapes(x)
        return x, [], None
    return convert


@dataclasses.dataclass
class EvalInputs:
    """``evaluate``/``predict``'s data (or ``fit``'s validation data) and its mode."""

    source: Any  # ArraySource or BatchSource
    batch_size: int | None
    steps: int | None
    own: bool
    convert: Any = None
    x_dtypes: list | None = None

    def parts(self, rank: int, size: int, lengths_out: list | None = None) -> Any:
        """This rank's batches ``(x, ys, sample_weight, count)``."""
        if isinstance(self.source, adapters.ArraySource):
            return steps.array_parts(self.source, self.batch_size, rank, size, self.own)
        return steps.batch_parts(self.source, self.convert, self.x_dtypes, self.steps, rank, size, self.own,
                                 lengths_out)

    def sample_x(self) -> Any:
        """One sample's ``x``, converted (the structure of the model's outputs comes from it)."""
        if isinstance(self.source, adapters.ArraySource):
            return self.source.take(slice(0, 1))[0]
        x = self.convert(*self.source.first)[0]
        return data.take(x, slice(0, 1), self.x_dtypes)

    def done(self) -> None:
        if isinstance(self.source, adapters.BatchSource):
            self.source.end_epoch(self.steps is None)

    def num_steps(self, rank: int, size: int) -> int | None:
        if isinstance(self.source, adapters.ArraySource):
            start, stop = (0, len(self.source)) if self.own else data.shard_bounds(len(self.source), rank, size)
            return data.steps_per_epoch(stop - start, self.batch_size)
        return self.steps if self.steps is not None else self.source.num_batches


@dataclasses.dataclass
class FitInputs:
    plan: Any  # steps.ArrayTrainPlan or steps.BatchTrainPlan
    validation: EvalInputs | None
    arrays: tuple  # (x, ys, sample_weight) of array inputs, for BackupAndRestore's run identity
    own: bool


def _batch_source_arguments(method: str, name: str, y: Any, sample_weight: Any, batch_size: Any) -> None:
    for argument, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
        if value is not None:
            raise ValueError(f"{method}: {argument} must not be given when {name} is a PyDataset or a generator: "
                             f"its batches carry the targets and weights and set the batch size. "
                             f"Received: {argument}={value if argument == 'batch_size' else type(value).__name__}")


def _array_source(model: Any, x: Any, y: Any, sample_weight: Any = None) -> adapters.ArraySource:
    x, ys, sample_weight = model._check_xy(x, y, sample_weight)
    return adapters.ArraySource(x, ys, sample_weight, input_dtypes(model, x))


def _eval_inputs(model: Any, method: str, x: Any, y: Any, sample_weight: Any, batch_size: Any, steps_: Any,
                 class_weight: dict | None = None) -> EvalInputs:
    if adapters.kind_of(x) == "arrays":
        if steps_ is not None:
            raise ValueError(f"{method}: steps applies to PyDataset and generator inputs, not arrays. "
                             f"Received: steps={steps_}")
        batch_size = data.check_batch_size(32 if batch_size is None else batch_size)
        if method == "predict()":
            x = model._check_x(x)
            return EvalInputs(adapters.ArraySource(x, [], None, input_dtypes(model, x)), batch_size, None, False)
        return EvalInputs(_array_source(model, x, y, sample_weight), batch_size, None, False)
    _batch_source_arguments(method, "x", y, sample_weight, batch_size)
    source = adapters.BatchSource(x, "x")
    if method == "predict()":
        model._check_x(source.first[0])
        convert = x_converter(model)
    else:
        _check_first_batch(model, source)
        convert = batch_converter(model, class_weight)
    first_x = convert(*source.first)[0]
    return EvalInputs(source, None, steps_, False, convert, input_dtypes(model, first_x))


def _described(inputs: EvalInputs) -> dict:
    source = inputs.source
    if isinstance(source, adapters.BatchSource):
        return {"x": source}
    return {"x": source.x, "y": source.ys, "sample_weight": source.sample_weight}


def prepare_eval(model: Any, comm: Any, method: str, x: Any, y: Any, sample_weight: Any, batch_size: Any,
                 steps_: Any) -> EvalInputs:
    """``evaluate``'s or ``predict``'s inputs, checked on every rank; own shards are allowed."""
    inputs = _eval_inputs(model, method, x, y, sample_weight, batch_size, steps_)
    described = _described(inputs)
    if method == "predict()":
        described = {"x": described["x"]}
        settings = {"batch_size": batch_size, "steps": steps_}
    else:
        settings = {"batch_size": batch_size, "steps": steps_, **model._compiled_settings()}
    agreement = consistency.check_ranks_agree(comm, method[:-2], data=described, settings=settings,
                                              own_data=(_TRAIN_GROUP,))
    inputs.own = "x" in agreement.own
    return inputs


def prepare_fit(model: Any, comm: Any, x: Any, y: Any, sample_weight: Any, batch_size: Any, steps_per_epoch: Any,
                shuffle: bool, validation_split: float, validation_data: Any, validation_steps: Any,
                validation_batch_size: Any, class_weight: dict | None, settings: dict,
                horovod: Any) -> FitInputs:
    """Everything ``fit`` needs to iterate: the training plan and the validation inputs.

    ``settings`` are the other ``fit`` arguments the ranks must agree on (the compiled parts are
    added here, once the data resolved the outputs); ``horovod`` is the
    Horovod ``DistributedOptimizer`` the model was compiled with, or ``None``.
    """
    kind = adapters.kind_of(x)
    if kind == "arrays":
        batch_size = data.check_batch_size(32 if batch_size is None else batch_size)
        train = _array_source(model, x, y, sample_weight)
    else:
        _batch_source_arguments("fit()", "x", y, sample_weight, batch_size)
        if validation_split:
            raise ValueError("fit(): validation_split needs array inputs (it cuts off their last rows); with a "
                             "PyDataset or generator pass validation_data. "
                             f"Received: validation_split={validation_split}")
        train = adapters.BatchSource(x, "x")
        _check_first_batch(model, train)
    validation = None
    if validation_split and kind == "arrays":
        count = len(train)
        split = int(count * (1 - validation_split))
        if split == 0 or split == count:
            raise ValueError(f"validation_split={validation_split} leaves no training or validation samples "
                             f"out of {count}")
        validation = EvalInputs(train.rows(split, count), validation_batch_size or batch_size, None, False)
        train = train.rows(0, split)
    elif validation_data is not None:
        validation = _validation_inputs(model, validation_data, validation_steps, validation_batch_size or batch_size)
    if validation_steps is not None and (validation is None or isinstance(validation.source, adapters.ArraySource)):
        raise ValueError("validation_steps applies to PyDataset and generator validation_data, not arrays. "
                         f"Received: validation_steps={validation_steps}")
    described = {"x": train} if kind != "arrays" else \
        {"x": train.x, "y": train.ys, "sample_weight": train.sample_weight}
    described["validation_data"] = None if validation is None else (
        validation.source if isinstance(validation.source, adapters.BatchSource)
        else tuple(p for p in (validation.source.x, validation.source.ys, validation.source.sample_weight)))
    agreement = consistency.check_ranks_agree(comm, "fit", data=described, settings={
        "batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "shuffle": shuffle,
        "validation_split": validation_split, "validation_steps": validation_steps,
        "validation_batch_size": validation_batch_size, "class_weight": class_weight, **settings,
        **model._compiled_settings(), **overlap.agreed_settings(model), **timeline.agreed_settings()},
        own_data=(_TRAIN_GROUP, ("validation_data",)))
    if validation is not None:
        validation.own = "validation_data" in agreement.own
    own = "x" in agreement.own or (horovod is not None and comm.size > 1)
    lengths = agreement.lengths("x") if own else None
    if own and lengths is None and (kind == "arrays" or train.num_batches is not None):
        lengths = [len(train) if kind == "arrays" else train.num_batches] * comm.size  # identical data (Horovod)
    if kind == "arrays":
        train.sample_weight = model._class_sample_weights(train.ys, class_weight, train.sample_weight)
        plan = steps.ArrayTrainPlan(train, batch_size, steps_per_epoch, shuffle, comm.rank, comm.size, lengths)
        arrays = (train.x, train.ys, train.sample_weight)
    else:
        convert = batch_converter(model, class_weight)
        plan = steps.BatchTrainPlan(train, convert, input_dtypes(model, convert(*train.first)[0]), steps_per_epoch,
                                    shuffle, comm, own, lengths)
        arrays = (None, None, None)
    if own and comm.rank == 0:
        horovod_same_data = horovod is not None and "x" not in agreement.own
        _announce(kind, lengths, batch_size, plan.num_steps, comm.size, horovod_same_data)
    return FitInputs(plan, validation, arrays, own)


def _validation_inputs(model: Any, validation_data: Any, validation_steps: Any, batch_size: int | None) -> EvalInputs:
    if adapters.kind_of(validation_data) != "arrays":
        source = adapters.BatchSource(validation_data, "validation_data")
        _check_first_batch(model, source)
        convert = batch_converter(model, None)
        return EvalInputs(source, None, validation_steps, False, convert,
                          input_dtypes(model, convert(*source.first)[0]))
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("validation_data must be (x, y) or (x, y, sample_weight), a PyDataset or a generator. "
                         f"Received: {type(validation_data).__name__}")
    return EvalInputs(_array_source(model, *validation_data), batch_size or 32, None, False)


def _announce(kind: str, lengths: list | None, batch_size: int | None, num_steps: int | None, size: int,
              horovod_same_data: bool) -> None:
    """Say once per process, on rank 0, that the ranks train in own-shard mode and what that means."""
    key = (kind, tuple(lengths or ()), batch_size, num_steps, size, horovod_same_data)
    if key in _announced:
        return
    _announced.add(key)
    what = "samples" if kind == "arrays" else "batches"
    held = "" if not lengths else f" ({', '.join(map(str, lengths))} {what})"
    why = ("the model was compiled with Horovod's DistributedOptimizer, so each rank makes its own passes over "
           "its data, as under Horovod" if horovod_same_data else f"the ranks passed different data{held}")
    batch = f"batch_size={batch_size} per rank (global batch up to {batch_size * size})" if batch_size else \
        "each rank's batches as its data yields them"
    steps_text = f"{num_steps} steps per epoch" if num_steps is not None else "steps until every rank's data ran out"
    print(f"distnn: own-shard mode on {size} ranks: {why}. Each rank trains on its own data with {batch}; "
          f"{steps_text}, ranks whose data ran out join with empty steps.", flush=True)


def gather_predictions(comm: Any, local: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Every rank's predictions in sample order (same-data mode). Array inputs give each rank one
    contiguous block, so rank order is sample order; with batch inputs each batch of ``lengths``
    was split across the ranks, so the gathered rows are put back batch by batch."""
    gathered = comm.allgather(local)
    if not lengths:
        return gathered
    sizes = [[stop - start for start, stop in (data.shard_bounds(n, r, comm.size) for n in lengths)]
             for r in range(comm.size)]
    rank_starts = np.cumsum([0] + [sum(s) for s in sizes])
    pieces = []
    for batch in range(len(lengths)):
        for r in range(comm.size):
            start = rank_starts[r] + sum(sizes[r][:batch])
            pieces.append(gathered[start:start + sizes[r][batch]])
    return np.concatenate(pieces)
