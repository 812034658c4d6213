"""Learning-rate schedules (Keras names): called with the optimizer's step count, return the rate."""
from __future__ import annotations

import math
from typing import Any


class LearningRateSchedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_config(cls, config: dict) -> "LearningRateSchedule":
        return cls(**config)


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (floored with ``staircase``)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0. Received: decay_steps={decay_steps}")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase else p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``."""

    def __init__(self, boundaries: list[int], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries. Received: "
                             f"{len(boundaries)} boundaries, {len(values)} values")
        self.boundaries, self.values = [int(b) for b in boundaries], [float(v) for v in values]

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` to ``alpha`` × it over ``decay_steps``,
    after an optional linear warmup to ``warmup_target`` over ``warmup_steps``."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 warmup_target: float | None = None, warmup_steps: int = 0):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0. Received: decay_steps={decay_steps}")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), float(alpha)
        self.warmup_target, self.warmup_steps = warmup_target, int(warmup_steps)

    def __call__(self, step):
        if step < self.warmup_steps and self.warmup_target is not None:
            return self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) * step / self.warmup_steps
        peak = self.initial_learning_rate if self.warmup_target is None else self.warmup_target
        progress = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return peak * ((1 - self.alpha) * cosine + self.alpha)


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict, custom_objects: dict[str, Any] | None = None) -> LearningRateSchedule:
    cls = {**_CLASSES, **(custom_objects or {})}.get(config["class_name"])
    if cls is None:
        raise ValueError(f"Unknown learning-rate schedule {config['class_name']!r}: pass it in custom_objects")
    return cls.from_config(config["config"])
