"""Adam, AdamW and Nadam, as Keras 3 defines them."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from distnn.arguments import check_real
from distnn.backend import get_array_module
from distnn.optimizers.optimizer import Optimizer


class Adam(Optimizer):
    """Adaptive moment estimation.

    Args:
        learning_rate: default 0.001.
        beta_1, beta_2: decay rates of the first and second moment estimates.
        epsilon: added to the denominator (Keras' 1e-7).
        amsgrad: use the maximum of past second moments.
    """

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = check_real("beta_1", beta_1, 0, 1, below_maximum=True)
        self.beta_2 = check_real("beta_2", beta_2, 0, 1, below_maximum=True)
        self.epsilon, self.amsgrad = check_real("epsilon", epsilon, minimum=0), bool(amsgrad)
        self.slot_names = ("m", "v") + (("v_hat",) if amsgrad else ())

    def _moments(self, grads: Any) -> tuple[Any, Any]:
        """Update the moment estimates in place: m += (g - m)(1 - b1), v += (g² - v)(1 - b2)."""
        m, v, tmp = self.slots["m"], self.slots["v"], self._scratch
        get_array_module(grads).subtract(grads, m, out=tmp)
        tmp *= 1 - self.beta_1
        m += tmp
        get_array_module(grads).multiply(grads, grads, out=tmp)
        tmp -= v
        tmp *= 1 - self.beta_2
        v += tmp
        return m, v

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        step = self.iterations + 1
        alpha = lr * math.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        m, v = self._moments(grads)
        if self.amsgrad:
            xp.maximum(self.slots["v_hat"], v, out=self.slots["v_hat"])
            v = self.slots["v_hat"]
        tmp = self._scratch
        xp.sqrt(v, out=tmp)
        tmp += self.epsilon
        xp.divide(m, tmp, out=tmp)
        tmp *= alpha
        params -= tmp

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras default ``weight_decay=0.004``)."""

    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


class Nadam(Adam):
    """Adam with Nesterov momentum (Keras 3's formulation with its momentum schedule)."""

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 **kwargs: Any):
        if "amsgrad" in kwargs:  # Adam's option would reach Adam.__init__ and then do nothing here
            raise ValueError(f"Nadam has no amsgrad option (neither has Keras 3's Nadam): use Adam(amsgrad=True). "
                             f"Received: amsgrad={kwargs['amsgrad']!r}")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs)
        self.u_product = 1.0

    def _update(self, params, grads, lr):
        xp = get_array_module(params)
        step = self.iterations + 1
        # Keras 3's momentum schedule: 0.96 ** step (Keras 2 used 0.96 ** (0.004 * step)).
        u_t = self.beta_1 * (1 - 0.5 * 0.96 ** step)
        u_t_1 = self.beta_1 * (1 - 0.5 * 0.96 ** (step + 1))
        u_product_t = self.u_product * u_t
        u_product_t_1 = u_product_t * u_t_1
        m, v = self._moments(grads)
        # m_hat in the scratch buffer, the denominator in grads (free once m_hat has used it):
        # no allocation per step.
        m_hat = xp.multiply(m, u_t_1 / (1 - u_product_t_1), out=self._scratch)
        grads *= (1 - u_t) / (1 - u_product_t)
        m_hat += grads
        denominator = xp.multiply(v, 1 / (1 - self.beta_2 ** step), out=grads)
        xp.sqrt(denominator, out=denominator)
        denominator += self.epsilon
        m_hat /= denominator
        m_hat *= lr
        params -= m_hat
        self.u_product = u_product_t

    def _extra_state(self):
        return {"u_product": np.array(self.u_product)}

    def _set_extra_state(self, state):
        self.u_product = float(state.get("u_product", 1.0))

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad")
        return config
