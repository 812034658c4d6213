"""Pictures of training: ``distnn.utils.plot_history(history, path)`` (matplotlib, the ``interop``
extra; imported only here and only when called)."""
from __future__ import annotations

import os
from typing import Any


def _series(history: Any) -> dict[str, list[float]]:
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(f"plot_history needs a History (model.fit's return value) or its non-empty dict of "
                         f"per-epoch values. Received: {history!r:.200}")
    return {str(k): [float(v) for v in values] for k, values in logs.items()}


def plot_history(history: Any, path: str, metrics: list[str] | None = None, title: str | None = None,
                 dpi: int = 100) -> str:
    """Write a PNG of the training curves: one panel per quantity (loss first, then the metrics),
    the training curve and, when present, the validation curve (``val_<name>``) in each.

    Args:
        history: ``model.fit``'s ``History`` or its ``history`` dict.
        path: the PNG file to write (its directory is created).
        metrics: the quantities to draw (default: every one logged, the learning rate excepted).
        title: a title above the panels.
        dpi: resolution.

    Returns:
        ``path``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional, slow import
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("plot_history needs matplotlib: pip install 'distnn[interop]'") from exc
    series = _series(history)
    names = metrics or [k for k in series if not k.startswith("val_") and k not in ("learning_rate", "lr")]
    unknown = [name for name in names if name not in series]
    if unknown:
        raise ValueError(f"plot_history: {unknown} were not logged; the history holds {sorted(series)}")
    names = sorted(names, key=lambda name: (name != "loss", names.index(name)))
    figure = Figure(figsize=(4.5 * len(names), 3.6), dpi=dpi)  # no pyplot: no global state, no display
    FigureCanvasAgg(figure)
    for i, name in enumerate(names, start=1):
        axes = figure.add_subplot(1, len(names), i)
        epochs = range(1, len(series[name]) + 1)
        axes.plot(epochs, series[name], marker="o", label=f"training {name}")
        if f"val_{name}" in series:
            axes.plot(range(1, len(series[f"val_{name}"]) + 1), series[f"val_{name}"], marker="s",
                      label=f"validation {name}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.grid(True, alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
    return path
