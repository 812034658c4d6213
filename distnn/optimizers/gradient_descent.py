"""SGD (with momentum and Nesterov), RMSprop and Adagrad, as Keras 3 defines them."""
from __future__ import annotations

from typing import Any

from distnn.arguments import check_real
from distnn.backend import get_array_module
from distnn.optimizers.optimizer import Optimizer


class SGD(Optimizer):
    """Gradient descent with optional momentum.

    Args:
        learning_rate: default 0.01.
        momentum: float >= 0; ``v = momentum * v - lr * g; w += v``.
        nesterov: use Nesterov momentum (``w += momentum * v - lr * g``).
    """

    def __init__(self, learning_rate: Any = 0.01, momentum: float = 0.0, nesterov: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum, self.nesterov = check_real("momentum", momentum, 0, 1), bool(nesterov)
        self.slot_names = ("momentum",) if momentum else ()

    def _update(self, params, grads, lr):
        if not self.momentum:
            grads *= lr
            params -= grads
            return
        v = self.slots["momentum"]
        v *= self.momentum
        grads *= lr
        v -= grads
        if self.nesterov:
            tmp = get_array_module(params).multiply(v, self.momentum, out=self._scratch)
            tmp -= grads
            params += tmp
        else:
            params += v

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """Divide the gradient by a running average of its magnitude (Keras defaults)."""

    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
                 centered: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_real("rho", rho, 0, 1, below_maximum=True)
        self.momentum = check_real("momentum", momentum, 0, 1)
        self.epsilon, self.centered = check_real("epsilon", epsilon, minimum=0), bool(centered)
        self.slot_names = ("velocity",) + (("momentum",) if momentum else ()) + (("average_gradient",) if centered else ())

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        velocity, tmp = self.slots["velocity"], self._scratch
        velocity *= self.rho
        xp.multiply(grads, 1 - self.rho, out=tmp)
        tmp *= grads
        velocity += tmp
        if self.centered:
            average = self.slots["average_gradient"]
            average *= self.rho
            average += xp.multiply(grads, 1 - self.rho, out=tmp)
            xp.multiply(average, average, out=tmp)
            xp.subtract(velocity, tmp, out=tmp)
        else:
            tmp[...] = velocity
        tmp += self.epsilon
        xp.sqrt(tmp, out=tmp)
        xp.divide(grads, tmp, out=tmp)
        tmp *= lr
        if self.momentum:
            m = self.slots["momentum"]
            m *= self.momentum
            m += tmp
            params -= m
        else:
            params -= tmp

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Per-parameter rates scaled by the accumulated squared gradients (Keras defaults)."""

    slot_names = ("accumulator",)

    def __init__(self, learning_rate: Any = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = check_real("initial_accumulator_value", initial_accumulator_value, minimum=0)
        self.epsilon = check_real("epsilon", epsilon, minimum=0)

    def _initial_slot(self, name, params, xp):
        return xp.full_like(params, self.initial_accumulator_value)

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        acc, tmp = self.slots["accumulator"], self._scratch
        acc += xp.multiply(grads, grads, out=tmp)
        xp.add(acc, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        xp.divide(grads, tmp, out=tmp)
        tmp *= lr
        params -= tmp

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}
