"""Input pipelines: arrays, file-backed arrays, ``PyDataset``s and generators, per-rank sharding.

- ``arrays``: input checks, epoch orders, global batches and their split across ranks, ``take``
  (one batch's rows, cast and moved to the device), ``fingerprint``;
- ``NpyArray``: a ``.npy`` file or a directory of ``.npy`` shards read row by row, never whole;
- ``PyDataset`` (also ``distnn.utils.PyDataset`` / ``Sequence``) and its parallel loader;
- ``adapters`` and ``steps``: the sources behind ``fit``/``evaluate``/``predict`` and the steps of
  an epoch in both data-parallel modes; ``Prefetcher``: background loading.

docs/architecture.md, "Input pipelines and data-parallel modes", explains the design.
"""
from distnn.data.arrays import (as_array, as_structure, check_batch_size, check_finite, check_lengths,
                                class_weights_to_sample_weights, epoch_order, fingerprint, global_batches,
                                is_file_backed, leaves, num_samples, shard_bounds, steps_per_epoch, take)
from distnn.data.npy_files import NpyArray
from distnn.data.prefetch import Prefetcher
from distnn.data.py_dataset import PyDataset, Sequence

__all__ = ["as_array", "as_structure", "check_batch_size", "check_finite", "check_lengths",
           "class_weights_to_sample_weights", "epoch_order", "fingerprint", "global_batches", "is_file_backed",
           "leaves", "num_samples", "shard_bounds", "steps_per_epoch", "take", "NpyArray", "Prefetcher",
           "PyDataset", "Sequence"]
