"""Adadelta, Adamax, Ftrl, Lion and Lamb, as Keras 3 defines them, on the flat parameter buffer."""
from __future__ import annotations

from typing import Any

from distnn.arguments import check_real
from distnn.backend import get_array_module
from distnn.optimizers.optimizer import Optimizer


class Adadelta(Optimizer):
    """Adadelta: step sizes from running averages of squared gradients and squared updates.

    Args:
        learning_rate: default 0.001 (Keras 3).
        rho: decay rate of the running averages.
        epsilon: added inside the square roots.
    """

    slot_names = ("accumulated_grad", "accumulated_delta_var")

    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.95, epsilon: float = 1e-7, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_real("rho", rho, 0, 1)
        self.epsilon = check_real("epsilon", epsilon, minimum=0)

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        accumulated_grad, accumulated_delta = self.slots["accumulated_grad"], self.slots["accumulated_delta_var"]
        accumulated_grad *= self.rho
        accumulated_grad += (1 - self.rho) * grads * grads
        # delta = -sqrt(accumulated_delta + eps) / sqrt(accumulated_grad + eps) * g, in the scratch buffer.
        delta = xp.add(accumulated_delta, self.epsilon, out=self._scratch)
        delta /= accumulated_grad + self.epsilon
        xp.sqrt(delta, out=delta)
        delta *= grads
        delta *= -1
        accumulated_delta *= self.rho
        accumulated_delta += (1 - self.rho) * delta * delta
        delta *= lr
        params += delta

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Optimizer):
    """Adam with the infinity norm: ``u = max(beta_2 * u, |g|)``."""

    slot_names = ("m", "u")

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = check_real("beta_1", beta_1, 0, 1, below_maximum=True)
        self.beta_2 = check_real("beta_2", beta_2, 0, 1)
        self.epsilon = check_real("epsilon", epsilon, minimum=0)

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        m, u = self.slots["m"], self.slots["u"]
        m += (grads - m) * (1 - self.beta_1)
        u *= self.beta_2
        xp.maximum(u, xp.abs(grads), out=u)
        step = xp.add(u, self.epsilon, out=self._scratch)
        xp.divide(m, step, out=step)
        step *= lr / (1 - self.beta_1 ** (self.iterations + 1))
        params -= step

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class Lion(Optimizer):
    """EvoLved sign momentum: ``w -= lr * sign(beta_1 * m + (1 - beta_1) * g)``, then
    ``m = beta_2 * m + (1 - beta_2) * g``."""

    slot_names = ("momentum",)

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.99, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = check_real("beta_1", beta_1, 0, 1, above_minimum=True)
        self.beta_2 = check_real("beta_2", beta_2, 0, 1)

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        m = self.slots["momentum"]
        direction = xp.multiply(m, self.beta_1, out=self._scratch)
        direction += (1 - self.beta_1) * grads
        xp.sign(direction, out=direction)
        direction *= lr
        params -= direction
        m *= self.beta_2
        m += (1 - self.beta_2) * grads

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


class Ftrl(Optimizer):
    """Follow-the-regularized-leader (Keras 3's formulation, with L1, L2 and L2-shrinkage terms).

    Args:
        learning_rate_power: <= 0; -0.5 is Adagrad-like.
        initial_accumulator_value: >= 0, the accumulators' starting value.
        l1_regularization_strength, l2_regularization_strength, l2_shrinkage_regularization_strength: >= 0.
        beta: added to the L2 term as ``beta / (2 * lr)``.
    """

    slot_names = ("accumulator", "linear")

    def __init__(self, learning_rate: Any = 0.001, learning_rate_power: float = -0.5,
                 initial_accumulator_value: float = 0.1, l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, l2_shrinkage_regularization_strength: float = 0.0,
                 beta: float = 0.0, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.learning_rate_power = check_real("learning_rate_power", learning_rate_power, maximum=0)
        self.initial_accumulator_value = check_real("initial_accumulator_value", initial_accumulator_value, minimum=0)
        self.l1_regularization_strength = check_real("l1_regularization_strength", l1_regularization_strength,
                                                     minimum=0)
        self.l2_regularization_strength = check_real("l2_regularization_strength", l2_regularization_strength,
                                                     minimum=0)
        self.l2_shrinkage_regularization_strength = check_real(
            "l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength, minimum=0)
        self.beta = check_real("beta", beta, minimum=0)

    def _initial_slot(self, name, params, xp):
        return xp.full_like(params, self.initial_accumulator_value if name == "accumulator" else 0.0)

    def _update(self, params, grads, lr):
        if not lr > 0:
            raise ValueError(f"Ftrl divides by the learning rate; it must be > 0. Received: learning_rate={lr}")
        xp = get_array_module(params)
        accumulator, linear = self.slots["accumulator"], self.slots["linear"]
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        new_accumulator = accumulator + grads * grads
        power = -self.learning_rate_power
        new_power = new_accumulator ** power
        linear += grads + 2 * self.l2_shrinkage_regularization_strength * params
        linear -= (new_power - accumulator ** power) / lr * params
        quadratic = new_power / lr + 2 * l2
        l1 = self.l1_regularization_strength
        xp.divide(xp.clip(linear, -l1, l1) - linear, quadratic, out=params)
        accumulator[...] = new_accumulator

    def get_config(self):
        return {**super().get_config(), "learning_rate_power": self.learning_rate_power,
                "initial_accumulator_value": self.initial_accumulator_value,
                "l1_regularization_strength": self.l1_regularization_strength,
                "l2_regularization_strength": self.l2_regularization_strength,
                "l2_shrinkage_regularization_strength": self.l2_shrinkage_regularization_strength,
                "beta": self.beta}


class Lamb(Optimizer):
    """Adam's step scaled per variable by the trust ratio ``||w|| / ||step||`` (1 where either is 0)."""

    slot_names = ("m", "v")

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = check_real("beta_1", beta_1, 0, 1, below_maximum=True)
        self.beta_2 = check_real("beta_2", beta_2, 0, 1, below_maximum=True)
        self.epsilon = check_real("epsilon", epsilon, minimum=0)

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        step_number = self.iterations + 1
        m, v = self.slots["m"], self.slots["v"]
        m += (grads - m) * (1 - self.beta_1)
        v += (grads * grads - v) * (1 - self.beta_2)
        update = xp.multiply(v, 1 / (1 - self.beta_2 ** step_number), out=self._scratch)
        xp.sqrt(update, out=update)
        update += self.epsilon
        xp.divide(m, update, out=update)
        update *= 1 / (1 - self.beta_1 ** step_number)
        # Per-variable norms over the flat buffer: one reduceat per norm (the variables' segments).
        starts = self._segment_starts
        w_norm = xp.sqrt(xp.add.reduceat(params * params, starts))
        u_norm = xp.sqrt(xp.add.reduceat(update * update, starts))
        ratio = xp.where((w_norm > 0) & (u_norm > 0), w_norm / xp.where(u_norm > 0, u_norm, 1), 1.0)
        update *= xp.repeat(ratio.astype(params.dtype), self._segment_sizes)
        update *= lr
        params -= update

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

