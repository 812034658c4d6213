"""``model.summary()`` in Keras 3's table layout; functional models get the "Connected to" column."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from distnn.layers.base import Layer
from distnn.models import functional_config


def _human_bytes(size: float) -> str:
    """Keras' summary sizes: ``27.79 KB``, ``0.00 B``."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def _shape_text(shapes: Any) -> str:
    if isinstance(shapes, list):
        return ", ".join(str(s) for s in shapes) if len(shapes) > 1 else str(shapes[0])
    return str(shapes)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _rows(model: Any) -> list[tuple[str, str, str, str]]:
    """(layer, output shape, params, connected to) per row."""
    if not functional_config.is_functional(model):
        shapes = getattr(model, "_output_shapes", None)
        return [(f"{layer.name} ({type(layer).__name__})", str(shapes[i]) if model.built and shapes else "?",
                 f"{layer.count_params():,}" if layer.built else "0 (unbuilt)", "")
                for i, layer in enumerate(model.layers)]
    names = functional_config.node_names(model)
    rows: dict[str, list] = {}
    for node in functional_config.graph_nodes(model):
        operation = node.operation
        connected = []
        for tensor in node.input_tensors:
            producer, index = names[id(tensor.node)]
            connected.append(f"{producer}[{index}][{tensor.node.output_tensors.index(tensor)}]")
        if node.name in rows:  # a shared layer: one row, every call's inputs
            rows[node.name][3] += connected
            continue
        is_layer = isinstance(operation, Layer)
        kind = type(operation).__name__ if is_layer else _camel(operation.name)
        params = f"{operation.count_params():,}" if is_layer and operation.built else "0"
        rows[node.name] = [f"{node.name} ({kind})", _shape_text([t.shape for t in node.output_tensors]), params,
                           connected]
    return [(r[0], r[1], r[2], ", ".join(r[3]) or "-") for r in rows.values()]


def print_summary(model: Any, line_length: int | None = None, positions: Any = None,
                  print_fn: Callable[[str], Any] | None = None, expand_nested: bool = False,
                  show_trainable: bool = False, layer_range: Any = None) -> None:
    """Print ``model``'s table (rank 0 only under MPI unless ``print_fn`` is given)."""
    if expand_nested or show_trainable or layer_range is not None or positions is not None:
        raise ValueError("summary() supports line_length and print_fn; expand_nested, show_trainable, "
                         "layer_range and positions are not implemented")
    if print_fn is None:
        from distnn.distributed.world import rank  # noqa: PLC0415 - keeps MPI out of plain imports

        if rank() != 0:
            return
        print_fn = print
    rows = _rows(model)
    connected = any(r[3] for r in rows)
    line_length = line_length or (110 if connected else 80)
    fractions = (0.3, 0.25, 0.12) if connected else (0.42, 0.32)
    widths = [int(line_length * f) for f in fractions]
    widths.append(line_length - sum(widths) - 3 * len(fractions) - 1)
    if connected:  # Keras order: Layer, Output Shape, Param #, Connected to
        widths = [widths[0], widths[1], widths[2], widths[3]]

    def row(cells: tuple, bar: str = "│") -> str:
        texts = [f"{cells[0]:<{widths[0]}}", f"{cells[1]:<{widths[1]}}", f"{cells[2]:>{widths[2]}}"]
        if connected:
            texts.append(f"{cells[3]:<{widths[3]}}")
        return f"{bar} " + f" {bar} ".join(texts) + f" {bar}"

    n = len(widths) if connected else 3
    print_fn(f'Model: "{model.name}"')
    print_fn("┏" + "┳".join("━" * (w + 2) for w in widths[:n]) + "┓")
    print_fn(row(("Layer (type)", "Output Shape", "Param #", "Connected to"), bar="┃"))
    print_fn("┡" + "╇".join("━" * (w + 2) for w in widths[:n]) + "┩")
    for i, cells in enumerate(rows):
        print_fn(row(cells))
        if i < len(rows) - 1:
            print_fn("├" + "┼".join("─" * (w + 2) for w in widths[:n]) + "┤")
    print_fn("└" + "┴".join("─" * (w + 2) for w in widths[:n]) + "┘")
    if model.built:
        total = model.count_params()
        trainable = sum(v.size for v in model.trainable_weights)
        itemsize = np.dtype(model.params.dtype if model.params is not None else model.dtype).itemsize
        for label, count in (("Total", total), ("Trainable", trainable), ("Non-trainable", total - trainable)):
            print_fn(f" {label} params: {count:,} ({_human_bytes(count * itemsize)})")
