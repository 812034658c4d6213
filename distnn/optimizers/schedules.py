"""Learning-rate schedules (Keras names): called with the optimizer's step count, return the rate."""
from __future__ import annotations

import math
from typing import Any

from distnn import serialization
from distnn.arguments import check_integer, check_optional_real, check_real


def _check_decay_steps(decay_steps: Any) -> int | float:
    """Keras takes any positive number of steps (``decay_steps=1e4`` is common); integral ones stay ints."""
    value = check_real("decay_steps", decay_steps, minimum=0, above_minimum=True)
    return int(value) if value.is_integer() else value


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
        self.initial_learning_rate = check_real("initial_learning_rate", initial_learning_rate, minimum=0)
        self.decay_steps = _check_decay_steps(decay_steps)
        # A negative rate would alternate the sign of the learning rate (with staircase) or give NaN.
        self.decay_rate, self.staircase = check_real("decay_rate", decay_rate, minimum=0), bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase else p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``."""

    def __init__(self, boundaries: list[int], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries. Received: "
                             f"{len(boundaries)} boundaries, {len(values)} values")
        self.boundaries = [check_integer(f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
        if self.boundaries != sorted(self.boundaries):
            raise ValueError(f"boundaries must be increasing step numbers. Received: boundaries={list(boundaries)}")
        self.values = [check_real(f"values[{i}]", v, minimum=0) for i, v in enumerate(values)]

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
        self.initial_learning_rate = check_real("initial_learning_rate", initial_learning_rate, minimum=0)
        self.decay_steps = _check_decay_steps(decay_steps)
        self.alpha = check_real("alpha", alpha, 0, 1)
        self.warmup_target = check_optional_real("warmup_target", warmup_target, minimum=0)
        self.warmup_steps = check_integer("warmup_steps", warmup_steps, 0)

    def __call__(self, step):
        if step < self.warmup_steps and self.warmup_target is not None:
            return self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) * step / self.warmup_steps
        peak = self.initial_learning_rate if self.warmup_target is None else self.warmup_target
        progress = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return peak * ((1 - self.alpha) * cosine + self.alpha)


_TABLE = {cls.__name__: cls for cls in (LearningRateSchedule, ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}
serialization.register_builtins("distnn.optimizers.schedules", _TABLE)


def serialize(schedule: LearningRateSchedule) -> dict:
    return serialization.serialize_keras_object(schedule)


def deserialize(config: dict, custom_objects: dict[str, Any] | None = None) -> LearningRateSchedule:
    """A schedule from ``serialize``'s dict: a built-in, registered or given class."""
    schedule = serialization.deserialize_keras_object(config, custom_objects, _TABLE, "learning-rate schedule")
    if not isinstance(schedule, LearningRateSchedule):
        raise ValueError(f"{config!r:.200} is not a LearningRateSchedule configuration")
    return schedule
