"""The ``Optimizer`` base class: whole-buffer updates on the model's flat parameters.

The model hands the optimizer one 1-D parameter array, the gradient array of the same layout and
the (offset, size) segment of each variable. Every update is a handful of whole-array operations;
the optimizer's state (momenta, moments, accumulators) is flat too, so it is saved, restored and
broadcast as a few arrays (docs/architecture.md).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np

from distnn import backend
from distnn.arguments import check_integer, check_optional_real, check_real
from distnn.optimizers import schedules


class Optimizer:
    """Base class.

    Args:
        learning_rate: a float, a ``LearningRateSchedule``, a callable ``f(step) -> float`` or, as in
            Keras, a callable that takes no arguments.
        clipnorm: clip each variable's gradient to this L2 norm.
        clipvalue: clip every gradient element to ``[-clipvalue, clipvalue]``.
        global_clipnorm: clip the whole gradient to this L2 norm.
        weight_decay: decoupled weight decay (``w -= lr * weight_decay * w`` before the update).
        use_ema: keep an exponential moving average of the weights (a flat slot ``ema``, saved with
            the rest); ``fit`` ends by writing it into the weights (Keras'
            ``finalize_variable_values``).
        ema_momentum: the average's momentum (the first step takes the weights as they are).
        ema_overwrite_frequency: every this many steps, write the average into the weights.
        gradient_accumulation_steps: update every k-th ``apply`` with the mean of the k gradients
            received (Keras 3's argument): k micro-batches then train exactly like one batch k
            times larger. ``iterations`` counts updates, not micro-batches, so Adam's bias
            correction and learning-rate schedules also see the large batch's steps.
    """

    slot_names: tuple[str, ...] = ()  # names of the flat state arrays, e.g. ("momentum",)

    def __init__(self, learning_rate: Any = 0.001, clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, weight_decay: float | None = None, use_ema: bool = False,
                 ema_momentum: float = 0.99, ema_overwrite_frequency: int | None = None, name: str | None = None,
                 gradient_accumulation_steps: int | None = None):
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of clipnorm, clipvalue and global_clipnorm can be set. Received: "
                             f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        # A limit of 0 would zero every gradient: the model would silently stop learning.
        self.clipnorm = check_optional_real("clipnorm", clipnorm, minimum=0, above_minimum=True)
        self.clipvalue = check_optional_real("clipvalue", clipvalue, minimum=0, above_minimum=True)
        self.global_clipnorm = check_optional_real("global_clipnorm", global_clipnorm, minimum=0, above_minimum=True)
        self.weight_decay = check_optional_real("weight_decay", weight_decay, minimum=0)
        self.use_ema = bool(use_ema)
        self.ema_momentum = check_real("ema_momentum", ema_momentum, 0, 1)
        if ema_overwrite_frequency is not None:
            ema_overwrite_frequency = check_integer("ema_overwrite_frequency", ema_overwrite_frequency, 1)
            if not self.use_ema:
                raise ValueError("ema_overwrite_frequency needs use_ema=True. Received: "
                                 f"ema_overwrite_frequency={ema_overwrite_frequency}, use_ema={use_ema}")
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.learning_rate = learning_rate
        self.name = name or type(self).__name__.lower()
        steps = gradient_accumulation_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError("gradient_accumulation_steps must be a positive integer or None. Received: "
                             f"gradient_accumulation_steps={steps!r}")
        self.gradient_accumulation_steps = None if steps is None else int(steps)
        # Horovod's average_aggregated_gradients=False adds the k gradients instead of averaging.
        self.average_accumulated_gradients = True
        self.accumulated_steps = 0  # micro-batches in the accumulator since the last update
        self.iterations = 0
        self.slots: dict[str, Any] = {}
        self._segments: list[tuple[int, int]] = []

    # ------------------------------------------------------------------------ learning rate
    @property
    def learning_rate(self) -> float:
        """The rate of the next step (a schedule is evaluated at ``iterations``)."""
        if self._rate_of_step is not None:
            rate = float(self._rate_of_step(self.iterations))
            if not 0 <= rate < math.inf:  # also false for NaN
                raise ValueError(f"The learning-rate schedule {self._learning_rate!r} returned {rate} at step "
                                 f"{self.iterations}; a learning rate must be a finite number >= 0")
            return rate
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float | Callable) -> None:
        """A float (checked: finite, >= 0), a ``LearningRateSchedule`` or a callable."""
        if not callable(value):
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"learning_rate must be a float, a schedule or a callable. "
                                f"Received: learning_rate={value!r}")
            value = check_real("learning_rate", value, minimum=0)
        self._learning_rate = value
        # Resolved once here, not on every step's read of the rate.
        self._rate_of_step = _step_function(value) if callable(value) else None

    # --------------------------------------------------------------------------------- state
    def build(self, params: Any, segments: list[tuple[int, int]]) -> None:
        """Allocate the flat state for ``params`` (a 1-D array) with per-variable ``segments``."""
        xp = backend.get_array_module(params)
        self._segments = list(segments)
        # Per-variable index arrays for clipnorm, made once rather than on every step.
        self._segment_starts = xp.asarray([start for start, _ in segments], dtype=np.int64)
        self._segment_sizes = xp.asarray([size for _, size in segments], dtype=np.int64)
        self.slots = {name: self._initial_slot(name, params, xp) for name in self._all_slot_names()}
        self._scratch = xp.empty_like(params)

    def _initial_slot(self, name: str, params: Any, xp: Any) -> Any:
        return xp.zeros_like(params)

    def _all_slot_names(self) -> tuple[str, ...]:
        accumulating = (self.gradient_accumulation_steps or 1) > 1
        return (*self.slot_names, *(("ema",) if self.use_ema else ()),
                *(("accumulated_gradients",) if accumulating else ()))

    @property
    def built(self) -> bool:
        return len(self.slots) == len(self._all_slot_names()) and hasattr(self, "_scratch")

    def state_items(self) -> list[tuple[str, Any]]:
        """The state as ``(name, array)`` pairs, not copied: the flat slots (on the device), then
        ``iterations`` and any extra scalars. Saving streams them one at a time."""
        accumulation = [("accumulated_steps", np.array(self.accumulated_steps, dtype=np.int64))] \
            if "accumulated_gradients" in self.slots else []
        return [*self.slots.items(), ("iterations", np.array(self.iterations, dtype=np.int64)),
                *accumulation, *self._extra_state().items()]

    def get_state(self) -> dict[str, np.ndarray]:
        """Host copies of the flat state arrays plus ``iterations`` (for checkpoints)."""
        return {name: np.array(backend.to_numpy(value)) for name, value in self.state_items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for name in self._all_slot_names():
            if name not in state:
                raise ValueError(f"{type(self).__name__} state is missing {name!r}. Received keys: {sorted(state)}")
            if tuple(np.shape(state[name])) != tuple(self.slots[name].shape):
                raise ValueError(f"{type(self).__name__} state {name!r} has shape {np.shape(state[name])}, "
                                 f"expected {tuple(self.slots[name].shape)}")
            slot = self.slots[name]  # on the device of the params it was built for
            slot[...] = backend.get_array_module(slot).asarray(state[name])
        self.iterations = int(state["iterations"])
        self.accumulated_steps = int(state.get("accumulated_steps", 0))
        self._set_extra_state(state)

    def _extra_state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -------------------------------------------------------------------------------- update
    def apply(self, params: Any, grads: Any) -> None:
        """One training step: clip ``grads`` (in place), decay weights, update ``params`` in place.

        With ``gradient_accumulation_steps=k`` only every k-th call updates, with the mean of the k
        gradients (``accumulate``)."""
        if not self.built:
            raise RuntimeError(f"{type(self).__name__} is not built: compile the model first")
        if self.accumulate(grads):
            self.apply_update(params, grads)

    def accumulate(self, grads: Any) -> bool:
        """Add ``grads`` to the accumulator; when the k-th arrives, put the k gradients' mean (or sum,
        see ``average_accumulated_gradients``) into ``grads`` and return True: an update is due.
        Always True without accumulation. The data-parallel step accumulates each rank's share
        before the allreduce, so ranks communicate once per update (Horovod's
        ``backward_passes_per_step``)."""
        steps = self.gradient_accumulation_steps or 1
        if steps == 1:
            return True
        if not self.built:
            raise RuntimeError(f"{type(self).__name__} is not built: compile the model first")
        accumulated = self.slots["accumulated_gradients"]
        accumulated += grads
        self.accumulated_steps += 1
        if self.accumulated_steps < steps:
            return False
        if self.average_accumulated_gradients:
            backend.get_array_module(grads).divide(accumulated, steps, out=grads)
        else:
            grads[...] = accumulated
        accumulated[...] = 0
        self.accumulated_steps = 0
        return True

    def apply_update(self, params: Any, grads: Any) -> None:
        """The update itself, with ``grads`` final (reduced, accumulated): clip, decay, update."""
        self._clip(grads)
        lr = self.learning_rate
        if self.weight_decay:
            params *= 1.0 - lr * self.weight_decay
        self._update(params, grads, lr)
        if self.use_ema:
            self._update_moving_average(params)
        self.iterations += 1

    def _update_moving_average(self, params: Any) -> None:
        """Keras 3: ``ema = m * ema + (1 - m) * w`` with m = 0 on the first step, then every
        ``ema_overwrite_frequency`` steps the weights take the average."""
        ema = self.slots["ema"]
        momentum = self.ema_momentum if self.iterations else 0.0
        ema *= momentum
        ema += (1 - momentum) * params
        if self.ema_overwrite_frequency and (self.iterations + 1) % self.ema_overwrite_frequency == 0:
            params[...] = ema

    def finalize_variable_values(self, params: Any) -> None:
        """With ``use_ema``, write the moving average into ``params`` (``fit`` calls this at its end)."""
        if self.use_ema and self.built:
            params[...] = self.slots["ema"]

    def _update(self, params: Any, grads: Any, lr: float) -> None:
        raise NotImplementedError

    def _clip(self, grads: Any) -> None:
        xp = backend.get_array_module(grads)
        if self.clipvalue is not None:
            xp.clip(grads, -self.clipvalue, self.clipvalue, out=grads)
        elif self.global_clipnorm is not None:
            norm = float(xp.sqrt(xp.dot(grads, grads)))
            if norm > self.global_clipnorm:
                grads *= self.global_clipnorm / norm
        elif self.clipnorm is not None and self._segments:
            squares = xp.multiply(grads, grads, out=self._scratch)
            norms = xp.sqrt(xp.add.reduceat(squares, self._segment_starts))
            scale = xp.minimum(1.0, self.clipnorm / xp.maximum(norms, 1e-12)).astype(grads.dtype)
            grads *= xp.repeat(scale, self._segment_sizes)

    # -------------------------------------------------------------------------------- config
    def get_config(self) -> dict:
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            raise ValueError(f"Cannot serialize the learning-rate callable {lr!r}: use a LearningRateSchedule")
        return {"name": self.name, "learning_rate": lr, "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm, "weight_decay": self.weight_decay, "use_ema": self.use_ema,
                "ema_momentum": self.ema_momentum, "ema_overwrite_frequency": self.ema_overwrite_frequency,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Optimizer":
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"], custom_objects)
        return cls(**config)


def _step_function(fn: Callable) -> Callable[[int], float]:
    """Schedules take the step; Keras' plain learning-rate callables take nothing. Accept both."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume a schedule
        return fn
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    return fn if any(p.kind in positional for p in parameters) else (lambda step: fn())
