"""Adadelta (Zeiler, 2012), as Keras 3 defines it."""
from __future__ import annotations

from typing import Any

from distnn.arguments import check_real
from distnn.backend import get_array_module
from distnn.optimizers.optimizer import Optimizer


class Adadelta(Optimizer):
    """Per-parameter steps from running averages of squared gradients and squared updates.

    ``a = rho * a + (1 - rho) * g²``; ``d = sqrt(u + eps) / sqrt(a + eps) * g``;
    ``u = rho * u + (1 - rho) * d²``; ``w -= lr * d``.

    Args:
        learning_rate: default 0.001 (Keras 3; the original paper's method corresponds to 1.0).
        rho: decay rate of both averages, in [0, 1).
        epsilon: added inside both square roots.
    """

    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.95, epsilon: float = 1e-7, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_real("rho", rho, 0, 1, below_maximum=True)
        self.epsilon = check_real("epsilon", epsilon, minimum=0)
        self.slot_names = ("accumulated_grad", "accumulated_delta")

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        average, updates, tmp = self.slots["accumulated_grad"], self.slots["accumulated_delta"], self._scratch
        average *= self.rho
        xp.multiply(grads, grads, out=tmp)
        tmp *= 1 - self.rho
        average += tmp
        xp.add(updates, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        grads *= tmp  # grads becomes the update d
        xp.add(average, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        grads /= tmp
        updates *= self.rho
        xp.multiply(grads, grads, out=tmp)
        tmp *= 1 - self.rho
        updates += tmp
        grads *= lr
        params -= grads

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}
