"""Keras 3's ``TensorBoard`` callback, written through TensorBoard's own event-file writer (the
``tensorboard`` package of the ``interop`` extra, imported when training begins).

Layout as Keras 3 writes it: ``<log_dir>/train`` and ``<log_dir>/validation``, scalars
``epoch_<name>`` once per epoch (``epoch_learning_rate`` and, when asked,
``epoch_steps_per_second`` in ``train``), ``batch_<name>`` every ``update_freq`` batches, weight
histograms under each weight's name every ``histogram_freq`` epochs. The values are the global ones
every rank already holds (docs/architecture.md, "Data-parallel training"); only rank 0 writes.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from distnn import backend
from distnn.callbacks.callback import Callback


class TensorBoard(Callback):
    """Log training to TensorBoard.

    Args:
        log_dir: where the event files go (``train/`` and ``validation/`` inside it).
        histogram_freq: every this many epochs, a histogram of every weight (0: none).
        write_graph: write the model's configuration (Keras' JSON) as a text summary named
            ``keras``; distnn has no TensorFlow graph to draw.
        write_images, embeddings_freq, embeddings_metadata, profile_batch: Keras options that need
            TensorFlow; anything but their "off" value is refused.
        write_steps_per_second: log ``epoch_steps_per_second`` (training steps per second of wall time).
        update_freq: ``"epoch"``; ``"batch"`` (every batch) or an integer N: also ``batch_<name>``
            scalars every N batches, counted across epochs as Keras does.
    """

    def __init__(self, log_dir: str = "logs", histogram_freq: int = 0, write_graph: bool = True,
                 write_images: bool = False, write_steps_per_second: bool = False, update_freq: Any = "epoch",
                 profile_batch: Any = 0, embeddings_freq: int = 0, embeddings_metadata: Any = None):
        super().__init__()
        for name, value, off in (("write_images", write_images, False), ("profile_batch", profile_batch, 0),
                                 ("embeddings_freq", embeddings_freq, 0),
                                 ("embeddings_metadata", embeddings_metadata, None)):
            if value != off:
                raise ValueError(f"TensorBoard({name}=...) needs TensorFlow, which distnn does not use; only "
                                 f"{name}={off!r} is supported. Received: {name}={value!r}")
        if not isinstance(histogram_freq, int) or isinstance(histogram_freq, bool) or histogram_freq < 0:
            raise ValueError(f"histogram_freq must be an integer >= 0. Received: histogram_freq={histogram_freq!r}")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and not (isinstance(update_freq, int) and not isinstance(update_freq, bool)
                                           and update_freq > 0):
            raise ValueError(f"update_freq must be 'epoch', 'batch' or a positive integer. "
                             f"Received: update_freq={update_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq, self.write_graph = histogram_freq, bool(write_graph)
        self.write_steps_per_second, self.update_freq = bool(write_steps_per_second), update_freq
        self._writers: dict[str, Any] = {}
        self._global_step = 0

    # ------------------------------------------------------------------------------- writing
    def _writer(self, run: str) -> Any:
        if run not in self._writers:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415

            self._writers[run] = EventFileWriter(os.path.join(self.log_dir, run))
        return self._writers[run]

    def _write(self, run: str, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415

        self._writer(run).add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                    summary=summary_pb2.Summary(value=values)))

    @staticmethod
    def _scalar(tag: str, value: float) -> Any:
        from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415

        return summary_pb2.Summary.Value(tag=tag, simple_value=float(value))

    @staticmethod
    def _histogram(tag: str, values: np.ndarray) -> Any:
        from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415

        values = np.asarray(values, dtype=np.float64).ravel()
        counts, edges = np.histogram(values, bins=30) if values.size else (np.zeros(0), np.zeros(1))
        proto = summary_pb2.HistogramProto(
            min=float(values.min()) if values.size else 0.0, max=float(values.max()) if values.size else 0.0,
            num=float(values.size), sum=float(values.sum()), sum_squares=float(np.dot(values, values)),
            bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts])
        return summary_pb2.Summary.Value(tag=tag, histo=proto)

    def _text(self, tag: str, text: str) -> Any:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: PLC0415

        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        return summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)

    # --------------------------------------------------------------------------------- hooks
    def on_train_begin(self, logs=None):
        if not self.is_root:
            return
        try:
            import tensorboard  # noqa: F401, PLC0415 - fail at the start of training, not after an epoch
        except ImportError as exc:
            raise ImportError("The TensorBoard callback needs the tensorboard package: "
                              "pip install 'distnn[interop]'") from exc
        if self.write_graph:
            self._write("train", 0, [self._text("keras", self.model.to_json())])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._epoch_steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1
        self._epoch_steps += 1
        if not self.is_root or self.update_freq == "epoch" or self._global_step % self.update_freq:
            return
        values = [self._scalar(f"batch_{k}", v) for k, v in (logs or {}).items() if np.ndim(v) == 0]
        self._write("train", self._global_step, values)

    def on_epoch_end(self, epoch, logs=None):
        if not self.is_root:
            return
        logs = logs or {}
        train = [self._scalar(f"epoch_{k}", v) for k, v in logs.items() if not k.startswith("val_")]
        if "learning_rate" not in logs:
            train.append(self._scalar("epoch_learning_rate", self.model.optimizer.learning_rate))
        if self.write_steps_per_second:
            elapsed = time.perf_counter() - self._epoch_start
            train.append(self._scalar("epoch_steps_per_second", self._epoch_steps / max(elapsed, 1e-9)))
        self._write("train", epoch, train)
        validation = [self._scalar(f"epoch_{k[4:]}", v) for k, v in logs.items() if k.startswith("val_")]
        if validation:
            self._write("validation", epoch, validation)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._write("train", epoch, [self._histogram(v.name, backend.to_numpy(v.value))
                                         for v in self.model.weights])
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
