"""Rank consistency check: before ``fit``/``evaluate``/``predict``/``train_on_batch`` run any
collective, the ranks compare what they were asked to do.

Data-parallel training needs every rank to make the same call with the same data: ranks with a
different ``len(x)``, ``batch_size``, ``epochs`` or ``steps_per_epoch`` run different numbers of
collectives and hang; a different learning rate, data, ``shuffle`` or ``class_weight`` silently
trains each replica differently; a different ``validation_split`` or optimizer class makes
collectives of different sizes, which MPI reports only as "Message truncated".

So each public method first builds a compact record of its call on every rank — lengths, sample
shapes and dtypes of the arrays, a cheap fingerprint of their content, the settings, the
optimizer's, loss's and metrics' configuration — and the ranks compare its digest in **one**
small allgather (8 bytes per rank; no per-step cost in ``fit``). Only when the digests differ do
they gather the records themselves; every rank then finds the same disagreements and raises the
same ``RankMismatchError`` naming the fields and the ranks, so the job ends with that message
instead of hanging, and code that catches the error stays in step on all ranks
(docs/architecture.md, "Reliability: rank consistency and argument checks").
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import re
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from distnn import data as data_lib
from distnn.data.steps import RankMismatchError
from distnn.optimizers import Optimizer

_ABSENT = "(not given)"
_LONGEST_VALUE = 120  # characters of a value shown in the message


@dataclasses.dataclass(frozen=True)
class DataAgreement:
    """How the ranks' data relate, found by ``check_ranks_agree``.

    Attributes:
        own: the argument groups (by their first name, e.g. ``"x"``, ``"validation_data"``) in
            which every rank brings its own data; empty when all ranks passed identical data.
        records: every rank's record when the ranks' calls differed, else ``None``.
    """

    own: frozenset = frozenset()
    records: list | None = None

    def lengths(self, name: str) -> list[int] | None:
        """Per rank, the length of argument ``name`` (its first array for a list or dict), or ``None``
        when the records were not gathered (identical calls) or hold no length for it."""
        if self.records is None:
            return None
        found = []
        for record in self.records:
            fields = record["data"]
            key = f"len({name})" if f"len({name})" in fields else next(
                (k for k in fields if k.startswith(f"len({name}[")), None)
            if key is None:
                return None
            found.append(int(fields[key]))
        return found


def check_ranks_agree(comm: Any, method: str, data: Mapping[str, Any], settings: Mapping[str, Any],
                      own_data: tuple[tuple[str, ...], ...] = ()) -> DataAgreement:
    """Raise ``RankMismatchError`` on every rank unless all ranks made the same call.

    Args:
        comm: the communicator; one ``allgather_obj`` of a digest when it has several ranks (a
            second of the records when they differ), nothing alone.
        method: the public method called (``"fit"``), named in the message.
        data: the arrays of the call by argument name (``x``, ``y``, ``sample_weight``,
            ``validation_data``); sequences and dicts of arrays are described element by element;
            an input object with a ``consistency_fields(name)`` method describes itself.
        settings: the other arguments and the compiled parts (``Optimizer`` and ``Loss`` objects
            are compared through their configuration).
        own_data: groups of data arguments (``("x", "y", "sample_weight")``) in which ranks may each
            bring their own data (own-shard mode) instead of identical data. Within a group either
            all ranks agree or all differ: two ranks with the same data while another differs is an
            error (a rank loading the wrong shard would train on duplicates).

    Returns:
        The ``DataAgreement``: which groups hold each rank's own data.
    """
    if comm.size == 1:
        return DataAgreement()
    record = describe_call(method, data, settings)
    # The normal path gathers an 8-byte digest per rank, not the record (~600 bytes): at 256 ranks
    # every rank would otherwise unpickle and compare 256 records on every train_on_batch call.
    # Every rank sees the same digests, so all of them take the error path together.
    digest = hashlib.blake2b(repr(record).encode(), digest_size=8).digest()
    if len(set(comm.allgather_obj(digest))) == 1:
        return DataAgreement()
    records = comm.allgather_obj(record)
    different_settings = settings_disagreements(records)
    own = set()
    different_data = []
    for group in own_data:
        fields = [[(k, v) for k, v in r["data"].items() if _argument_of(k) in group] for r in records]
        signatures = [repr(f) for f in fields]
        distinct = len(set(signatures))
        if distinct == len(records):
            own.add(group[0])
        elif distinct > 1:
            groups: dict[str, list[int]] = {}
            for rank, signature in enumerate(signatures):
                groups.setdefault(signature, []).append(rank)
            shared = [_format_ranks(ranks) for ranks in groups.values() if len(ranks) > 1]
            different_data.append(f"their {'/'.join(group)} data: {' and '.join(shared)} pass identical data, "
                                  "the other ranks different data")
    grouped = {name for group in own_data for name in group}
    different_data += data_disagreements([{**r, "data": {k: v for k, v in r["data"].items()
                                                         if _argument_of(k) not in grouped}} for r in records])
    if different_settings or different_data:
        raise RankMismatchError(mismatch_message(method, different_settings, different_data,
                                                 own_allowed=bool(own_data)))
    return DataAgreement(own=frozenset(own), records=records)


def _argument_of(field: str) -> str:
    """The argument a data field describes: ``len(x[0])`` and ``x['a'] content`` belong to ``x``."""
    name = field[4:] if field.startswith("len(") else field
    return re.split(r"[\[ )]", name, maxsplit=1)[0]


def describe_call(method: str, data: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The record of one rank's call: ``{"settings": {field: value}, "data": {field: value}}``.

    Sample shapes and dtypes count as settings (they must match in any mode); lengths and content
    fingerprints are the data, compared by ``data_disagreements``. Values are plain Python objects.
    """
    record: dict[str, dict[str, Any]] = {"settings": {"method": method}, "data": {}}
    for name, value in data.items():
        _describe_data(name, value, record)
    for name, value in settings.items():
        record["settings"].update(_setting_fields(name, value))
    return record


def settings_disagreements(records: list[dict]) -> list[str]:
    """``"field: rank 0 has A, rank 1 has B"`` for every setting on which the ranks differ."""
    return _disagreements([r["settings"] for r in records])


def data_disagreements(records: list[dict]) -> list[str]:
    """The same for the data (lengths and content fingerprints) of arguments that must be identical
    on every rank (those outside ``check_ranks_agree``'s ``own_data`` groups)."""
    return _disagreements([r["data"] for r in records])


def mismatch_message(method: str, different_settings: list[str], different_data: list[str],
                     own_allowed: bool = False) -> str:
    """The first disagreement on the first line (what a traceback shows), the others below, then the fix."""
    problems = different_settings + different_data
    lines = [f"Ranks disagree on {problems[0]} (in {method}())"]
    lines += [f"Ranks also disagree on {problem}" for problem in problems[1:]]
    if different_settings:
        lines.append(f"Every rank must call {method}() with the same arguments, after the same compile().")
    if different_data and not own_allowed:
        lines.append(f"Ranks must pass identical data to {method}(): distnn splits each global batch across the "
                     "ranks itself.")
    elif different_data:
        lines.append(f"Either every rank passes the same data to {method}() (distnn splits each global batch across "
                     "the ranks) or each rank its own shard (own-shard mode). Ranks holding identical data next to "
                     "ranks with other data would train on duplicates: check how each rank picks its shard.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ describing
def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and len(getattr(value, "shape", ())) >= 1


def _describe_data(name: str, value: Any, record: dict[str, dict[str, Any]]) -> None:
    if hasattr(value, "consistency_fields"):  # a PyDataset or generator input (distnn.data.adapters)
        settings, data = value.consistency_fields(name)
        record["settings"].update(settings)
        record["data"].update(data)
    elif value is None:
        record["settings"][name] = None
    elif isinstance(value, tuple) or (isinstance(value, list) and any(_is_array(v) or v is None for v in value)):
        for i, item in enumerate(value):  # validation_data=(x, y), or a model's several inputs
            _describe_data(f"{name}[{i}]", item, record)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _describe_data(f"{name}[{key!r}]", item, record)
    else:
        try:
            array = value if _is_array(value) else np.asarray(value)  # a nested list of numbers
        except ValueError:  # a ragged list: compared by its type only
            array = np.empty(())
        if array.ndim == 0 or array.dtype == object:
            record["settings"][name] = f"<{type(value).__name__}>"
            return
        record["settings"][f"{name}.shape[1:]"] = tuple(int(d) for d in array.shape[1:])
        record["settings"][f"{name}.dtype"] = _dtype_name(array.dtype)
        record["data"][f"len({name})"] = len(array)
        record["data"][f"{name} content"] = f"sampled-rows hash {data_lib.fingerprint(array)}"


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name  # numpy builds the name anew each time (~10 us)


def _setting_fields(name: str, value: Any) -> dict[str, Any]:
    """``{name: value}`` for a plain setting; an optimizer or loss as its class and one field per
    configuration entry, so that the message names the hyperparameter that differs."""
    if isinstance(value, Optimizer):
        return {name: type(value).__name__, **{f"{name}.{k}": _plain(v) for k, v in _optimizer_config(value).items()}}
    if hasattr(value, "get_config") and not isinstance(value, type):
        config = {k: v for k, v in value.get_config().items() if k != "name"}
        return {name: type(value).__name__, **{f"{name}.{k}": _plain(v) for k, v in config.items()}}
    return {name: _plain(value)}


def _optimizer_config(optimizer: Optimizer) -> dict:
    """The optimizer's configuration without its name; a plain callable learning rate, which has
    no configuration, is compared through its current value."""
    try:
        config = optimizer.get_config()
    except ValueError:
        with_rate = copy.copy(optimizer)  # shallow: shares the state, rebinds only the rate
        with_rate.learning_rate = optimizer.learning_rate
        config = with_rate.get_config()
    config.pop("name", None)
    return config


def _plain(value: Any) -> Any:
    """``value`` as builtins that compare and print alike on every rank."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        items = sorted(((_plain(k), _plain(v)) for k, v in value.items()), key=lambda kv: repr(kv[0]))
        return dict(items)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted((_plain(v) for v in value), key=repr))
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "get_config") and not isinstance(value, type):
        return (type(value).__name__, _plain({k: v for k, v in value.get_config().items() if k != "name"}))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


# ----------------------------------------------------------------------------- comparing
def _disagreements(fields_per_rank: list[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(name for fields in fields_per_rank for name in fields))
    problems = []
    for name in names:
        # Compared as text: equal values give equal text (NaN included, unlike ==).
        texts = [_text(fields.get(name, _ABSENT)) for fields in fields_per_rank]
        if len(set(texts)) > 1:
            groups: dict[str, list[int]] = {}
            for rank, text in enumerate(texts):
                groups.setdefault(text, []).append(rank)
            problems.append(f"{name}: " + ", ".join(
                f"{_format_ranks(ranks)} {'has' if len(ranks) == 1 else 'have'} {_shortened(text)}"
                for text, ranks in groups.items()))
    return problems


def _text(value: Any) -> str:
    return value if value is _ABSENT else repr(value)


def _shortened(text: str) -> str:
    return text if len(text) <= _LONGEST_VALUE else text[:_LONGEST_VALUE - 3] + "..."


def _format_ranks(ranks: list[int]) -> str:
    """``rank 3`` or ``ranks 0-2, 5`` (consecutive runs joined), shortened for large jobs."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    if len(parts) > 8:
        parts = parts[:8] + [f"... ({len(ranks)} ranks)"]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(parts)
