"""What ``compile`` resolves per model output: loss, loss weight, metrics (docs/architecture.md, "Training").

``loss``, ``loss_weights``, ``metrics`` and ``weighted_metrics`` may each be one value, a list in
output order or a dict keyed by output name, as in Keras 3. ``sample_weight`` and ``class_weight``
weight the loss and ``weighted_metrics`` only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from distnn import losses, metrics as metrics_module


@dataclasses.dataclass
class OutputSpec:
    """One output's training configuration, resolved once the output names and shapes are known."""

    name: str
    loss: losses.Loss | None
    weight: float
    metrics: list
    weighted_metrics: list


def _per_output(value: Any, names: list[str], what: str, is_leaf: Any) -> list:
    """``value`` for each output: a leaf applies to every output (a single output takes it as is)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"compile({what}=...) names outputs {unknown} that the model does not have. "
                             f"Its outputs are {names}")
        return [value.get(name) for name in names]
    if isinstance(value, (list, tuple)) and not is_leaf(value):
        if len(value) != len(names):
            raise ValueError(f"compile({what}=...) has {len(value)} entries but the model has {len(names)} outputs "
                             f"{names}: give one entry per output, or a dict keyed by output name")
        return list(value)
    return [value] * len(names)


def _is_metric_list(value: Any) -> bool:
    """A flat list of metrics (for every output) rather than one list per output."""
    return all(not isinstance(v, (list, tuple, dict)) and v is not None for v in value)


def resolve_outputs(names: list[str], loss: Any, loss_weights: Any, metrics: Any, weighted_metrics: Any,
                    output_shapes: list[tuple], label_shapes: list[tuple]) -> list[OutputSpec]:
    """The ``OutputSpec`` of every output, validated against the model's output names."""
    single = len(names) == 1
    loss_list = _per_output(loss, names, "loss", lambda v: single)
    weights = _per_output(1.0 if loss_weights is None else loss_weights, names, "loss_weights",
                          lambda v: False)
    metric_lists = _per_output(metrics or [], names, "metrics", lambda v: single or _is_metric_list(v))
    weighted_lists = _per_output(weighted_metrics or [], names, "weighted_metrics",
                                 lambda v: single or _is_metric_list(v))
    specs = []
    for name, l, w, m, wm, shape, label_shape in zip(names, loss_list, weights, metric_lists, weighted_lists,
                                                     output_shapes, label_shapes):
        if w is None:
            w = 1.0
        if not isinstance(w, (int, float)) or w != w:
            raise ValueError(f"loss_weights for output {name!r} must be a number. Received: {w!r}")
        specs.append(OutputSpec(
            name=name, loss=None if l is None else losses.get(l), weight=float(w),
            metrics=[metrics_module.get(s, shape, label_shape) for s in _as_list(m)],
            weighted_metrics=[metrics_module.get(s, shape, label_shape) for s in _as_list(wm)]))
    if all(spec.loss is None for spec in specs):
        raise ValueError(f"compile() needs a loss for at least one output. Received: loss={loss!r}")
    if len(specs) > 1:
        for spec in specs:
            for metric in spec.metrics + spec.weighted_metrics:
                metric.name = f"{spec.name}_{metric.name}"
    return specs


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_losses(loss: Any) -> None:
    """Resolve every loss once at ``compile``, so a misspelt name or a reduction that training
    cannot honor fails there."""
    for value in loss.values() if isinstance(loss, dict) else loss if isinstance(loss, (list, tuple)) else [loss]:
        if value is None:
            continue
        resolved = losses.get(value)
        if resolved.reduction not in losses.TRAINING_REDUCTIONS:
            # A sum (or a per-weight mean) over each step's batch would make the step's size part of
            # the objective; distnn trains on the mean over the global batch, which keeps N ranks
            # equal to one process (docs/architecture.md, "Loss reductions").
            raise ValueError(f"Loss {resolved.name!r} has reduction={resolved.reduction!r}, but compile()/fit() "
                             "train on the mean over each batch (reduction='sum_over_batch_size' or 'mean'). "
                             "Use one of those (for a sum, scale the learning rate by the batch size); calling "
                             "the loss directly, loss(y_true, y_pred), honors every reduction")


def check_metric_specs(metrics: Any) -> None:
    """Fail at ``compile`` on a misspelt metric name, not at the first batch."""
    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            metrics_module.get(value)  # a built-in or a registered custom name, else a clear error

    visit(metrics)
