"""Step anatomy from a timeline (``distnn-bench anatomy timeline.json``): where a step's time goes.

For each rank and training step of a ``DISTNN_TIMELINE`` file (distnn.distributed.timeline) it sums
the main track's phases, and measures the gradient allreduce: its total time (the union of the
bucket spans, or of the blocking ``allreduce`` span) and the part of it no forward or backward span
covers, the *exposed* communication that overlap is meant to remove (docs/architecture.md, "Timeline
and step anatomy").
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

PHASES = ("data", "callbacks", "forward", "backward", "allreduce", "allreduce wait", "optimizer",
          "metrics allreduce", "checkpoint")
_COMPUTE = ("forward", "backward")


def load(path: str) -> list[dict]:
    """The complete (``ph`` ``X``) events of a timeline file, with a clear error for anything else."""
    with open(path) as file:
        try:
            trace = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a timeline JSON file: {error}") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError(f"{path} is not a timeline: expected a JSON object with a 'traceEvents' list")
    return [e for e in trace["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X"]


def steps(events: list[dict]) -> dict[tuple[int, int], list[dict]]:
    """Events grouped by ``(rank, step)``, for the steps that trained (have a backward span)."""
    grouped: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for event in events:
        grouped[(int(event["pid"]), int(event.get("args", {}).get("step", -1)))].append(event)
    return {key: spans for key, spans in sorted(grouped.items())
            if key[1] >= 0 and any(e["name"] == "backward" for e in spans)}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(hi - lo for lo, hi in intervals)


def _uncovered(intervals: list[tuple[float, float]], cover: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` outside the union of ``cover``."""
    intervals, cover = _union(intervals), _union(cover)
    overlap = 0.0
    for lo, hi in intervals:
        for c_lo, c_hi in cover:
            overlap += max(0.0, min(hi, c_hi) - max(lo, c_lo))
    return _length(intervals) - overlap


def step_anatomy(spans: list[dict]) -> dict[str, float]:
    """One step on one rank, in microseconds: each phase, ``step`` (first main span's start to the
    last one's end), ``communication`` (the gradient allreduce) and ``exposed`` (of it, outside
    forward and backward)."""
    main = [e for e in spans if e.get("cat") == "main"]
    result = {phase: 0.0 for phase in PHASES}
    for event in main:
        result[event["name"]] = result.get(event["name"], 0.0) + event["dur"]
    result["step"] = max(e["ts"] + e["dur"] for e in main) - min(e["ts"] for e in main)
    communication = [(e["ts"], e["ts"] + e["dur"]) for e in spans
                     if e.get("cat") == "allreduce" or (e.get("cat") == "main" and e["name"] == "allreduce")]
    compute = [(e["ts"], e["ts"] + e["dur"]) for e in main if e["name"] in _COMPUTE]
    result["communication"] = _length(_union(communication))
    result["exposed"] = _uncovered(communication, compute)
    return result


def report(path: str, skip: int = 1) -> str:
    """The anatomy table of a timeline file: per rank, the mean per step of each phase (its share
    of the step) and the communication exposed, over the steps after the first ``skip``."""
    by_step = steps(load(path))
    if not by_step:
        raise ValueError(f"{path} holds no training step (no backward span): was it written by fit?")
    per_rank: dict[int, list[dict]] = defaultdict(list)
    for (rank, _), spans in by_step.items():
        per_rank[rank].append(step_anatomy(spans))
    lines = [f"step anatomy of {path}: mean per step in ms (share of the step), steps after the first {skip}"]
    ranks = sorted(per_rank)
    names = [p for p in PHASES if any(a[p] for r in ranks for a in per_rank[r])]
    lines.append(f"{'phase':>18} | " + " | ".join(f"{'rank ' + str(r):>16}" for r in ranks))
    means = {}
    for rank in ranks:
        kept = per_rank[rank][skip:] or per_rank[rank]
        means[rank] = {key: statistics.fmean(a[key] for a in kept) / 1e3 for key in kept[0]}
        means[rank]["steps"] = len(kept)
    for name in [*names, "step", "communication", "exposed"]:
        cells = []
        for rank in ranks:
            value, step = means[rank][name], means[rank]["step"]
            cells.append(f"{value:8.3f} ({value / step:5.1%})" if step else f"{value:8.3f}")
        label = {"communication": "gradient allreduce", "exposed": "exposed comm."}.get(name, name)
        lines.append(f"{label:>18} | " + " | ".join(f"{c:>16}" for c in cells))
    lines.append(f"{'steps':>18} | " + " | ".join(f"{means[r]['steps']:>16d}" for r in ranks))
    hidden = [1 - means[r]["exposed"] / means[r]["communication"] for r in ranks if means[r]["communication"]]
    if hidden:
        lines.append(f"overlap hides {statistics.fmean(hidden):.0%} of the gradient allreduce (mean over ranks)")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    """Registers ``distnn-bench anatomy``."""
    parser = subparsers.add_parser("anatomy", help="where a training step's time goes, from a DISTNN_TIMELINE file",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("timeline", help="the JSON file DISTNN_TIMELINE=... or the Timeline callback wrote")
    parser.add_argument("--skip", type=int, default=1, help="leave out the first SKIP steps (warm-up); default 1")
    parser.set_defaults(func=_run)


def _run(args: Any) -> int:
    if args.skip < 0:
        raise SystemExit(f"--skip must be >= 0. Received: --skip {args.skip}")
    print(report(args.timeline, args.skip))
    return 0
