"""Optimizers step by step against straightforward numpy versions of Keras 3's update rules.

Each reference below is written per variable from Keras 3's ``update_step`` formulas; distnn updates
one flat buffer in place. Both run on float64 so they agree to rounding.
"""
import math

import numpy as np
import pytest

from distnn import optimizers
from distnn.optimizers import schedules

SHAPES = [(3, 4), (4,), (4, 2), (2,)]  # the variables of a small two-layer model
SEGMENTS = []
_offset = 0
for _shape in SHAPES:
    SEGMENTS.append((_offset, math.prod(_shape)))
    _offset += math.prod(_shape)
SIZE = _offset
STEPS = 6


def _gradients(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SIZE) * rng.uniform(0.1, 3) for _ in range(STEPS)]


def _split(flat):
    return [flat[start:start + size].copy() for start, size in SEGMENTS]


def run_distnn(optimizer, gradients):
    params = np.random.default_rng(42).normal(size=SIZE)
    optimizer.build(params, SEGMENTS)
    history = []
    for g in gradients:
        optimizer.apply(params, g.copy())
        history.append(params.copy())
    return history


def run_reference(update, gradients, lr_at=lambda step: None, init_state=None):
    """``update(w, g, state, lr, t)`` per variable (t = 1-based step); returns flat params per step."""
    variables = _split(np.random.default_rng(42).normal(size=SIZE))
    states = [dict(init_state(v)) if init_state else {} for v in variables]
    history = []
    for t, flat_g in enumerate(gradients, start=1):
        for w, g, state in zip(variables, _split(flat_g), states):
            update(w, g, state, lr_at(t - 1), t)
        history.append(np.concatenate([v.ravel() for v in variables]))
    return history


def assert_same(distnn_history, reference_history):
    for step, (got, want) in enumerate(zip(distnn_history, reference_history)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}")


# ------------------------------------------------------------------------- Keras 3 update rules
def sgd(lr, momentum=0.0, nesterov=False):
    def update(w, g, s, _, t):
        if not momentum:
            w -= lr * g
            return
        s["m"] = momentum * s.get("m", 0) - lr * g
        w += momentum * s["m"] - lr * g if nesterov else s["m"]
    return update


def adam(lr, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, weight_decay=None):
    def update(w, g, s, _, t):
        if weight_decay:
            w -= w * weight_decay * lr
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        s["m"] = s.get("m", 0) + (g - s.get("m", 0)) * (1 - b1)
        s["v"] = s.get("v", 0) + (g * g - s.get("v", 0)) * (1 - b2)
        v = s["v"]
        if amsgrad:
            s["v_hat"] = np.maximum(s.get("v_hat", 0), v)
            v = s["v_hat"]
        w -= s["m"] * alpha / (np.sqrt(v) + eps)
    return update


def nadam(lr, b1=0.9, b2=0.999, eps=1e-7):
    u_product = {"value": 1.0, "step": 0}

    def update(w, g, s, _, t):
        if u_product["step"] != t:  # Keras updates the product once per step, before the variables
            u_product["value"] *= b1 * (1 - 0.5 * 0.96 ** t)
            u_product["step"] = t
        u_t = b1 * (1 - 0.5 * 0.96 ** t)
        u_t_1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
        u_prod = u_product["value"]
        s["m"] = s.get("m", 0) + (g - s.get("m", 0)) * (1 - b1)
        s["v"] = s.get("v", 0) + (g * g - s.get("v", 0)) * (1 - b2)
        m_hat = u_t_1 * s["m"] / (1 - u_prod * u_t_1) + (1 - u_t) * g / (1 - u_prod)
        v_hat = s["v"] / (1 - b2 ** t)
        w -= m_hat * lr / (np.sqrt(v_hat) + eps)
    return update


def rmsprop(lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    def update(w, g, s, _, t):
        s["v"] = rho * s.get("v", 0) + (1 - rho) * g * g
        if centered:
            s["a"] = rho * s.get("a", 0) + (1 - rho) * g
            denominator = s["v"] - s["a"] ** 2 + eps
        else:
            denominator = s["v"] + eps
        increment = lr * g / np.sqrt(denominator)
        if momentum:
            s["m"] = momentum * s.get("m", 0) + increment
            w -= s["m"]
        else:
            w -= increment
    return update


def adagrad(lr, initial=0.1, eps=1e-7):
    def update(w, g, s, _, t):
        s["acc"] = s.get("acc", initial) + g * g
        w -= lr * g / np.sqrt(s["acc"] + eps)
    return update


RULES = [
    ("sgd", lambda: optimizers.SGD(0.1), sgd(0.1)),
    ("sgd_momentum", lambda: optimizers.SGD(0.05, momentum=0.9), sgd(0.05, 0.9)),
    ("sgd_nesterov", lambda: optimizers.SGD(0.05, momentum=0.8, nesterov=True), sgd(0.05, 0.8, True)),
    ("adam", lambda: optimizers.Adam(0.01), adam(0.01)),
    ("adam_betas", lambda: optimizers.Adam(0.02, beta_1=0.5, beta_2=0.9, epsilon=1e-3), adam(0.02, 0.5, 0.9, 1e-3)),
    ("adam_amsgrad", lambda: optimizers.Adam(0.01, amsgrad=True), adam(0.01, amsgrad=True)),
    ("adamw", lambda: optimizers.AdamW(0.01, weight_decay=0.1), adam(0.01, weight_decay=0.1)),
    ("nadam", lambda: optimizers.Nadam(0.01), nadam(0.01)),
    ("rmsprop", lambda: optimizers.RMSprop(0.01), rmsprop(0.01)),
    ("rmsprop_momentum", lambda: optimizers.RMSprop(0.01, momentum=0.9), rmsprop(0.01, momentum=0.9)),
    ("rmsprop_centered", lambda: optimizers.RMSprop(0.01, rho=0.8, centered=True),
     rmsprop(0.01, rho=0.8, centered=True)),
    ("adagrad", lambda: optimizers.Adagrad(0.1), adagrad(0.1)),
    ("adagrad_initial", lambda: optimizers.Adagrad(0.1, initial_accumulator_value=1.0), adagrad(0.1, 1.0)),
]


@pytest.mark.parametrize("name, make, rule", RULES, ids=[r[0] for r in RULES])
def test_update_rule_matches_keras(name, make, rule):
    gradients = _gradients()
    history = run_distnn(make(), gradients)
    assert_same(history, run_reference(rule, gradients))
    assert not np.allclose(history[0], history[-1])  # the parameters really moved


def test_keras_default_hyperparameters():
    assert optimizers.SGD().learning_rate == 0.01
    for cls in (optimizers.Adam, optimizers.RMSprop, optimizers.Adagrad, optimizers.Nadam, optimizers.AdamW):
        assert cls().learning_rate == 0.001
    adam_config = optimizers.Adam().get_config()
    assert (adam_config["beta_1"], adam_config["beta_2"], adam_config["epsilon"]) == (0.9, 0.999, 1e-7)
    assert optimizers.AdamW().weight_decay == 0.004
    assert optimizers.RMSprop().get_config()["rho"] == 0.9


# ---------------------------------------------------------------------------------- clipping
def _clip_per_variable(g, clipnorm):
    return np.concatenate([v * clipnorm / max(np.linalg.norm(v), clipnorm) for v in _split(g)])


@pytest.mark.parametrize("kind", ["clipnorm", "clipvalue", "global_clipnorm"])
def test_gradient_clipping(kind):
    gradients = _gradients(seed=3)
    limit = {"clipnorm": 1.0, "clipvalue": 0.5, "global_clipnorm": 2.0}[kind]
    clip = {
        "clipnorm": lambda g: _clip_per_variable(g, limit),
        "clipvalue": lambda g: np.clip(g, -limit, limit),
        "global_clipnorm": lambda g: g * limit / max(np.linalg.norm(g), limit),
    }[kind]
    history = run_distnn(optimizers.SGD(0.1, **{kind: limit}), gradients)
    assert_same(history, run_reference(sgd(0.1), [clip(g) for g in gradients]))
    # Clipping changed something: without it the result differs.
    assert not np.allclose(history[-1], run_reference(sgd(0.1), gradients)[-1])


def test_small_gradients_are_not_clipped():
    gradients = [g * 1e-3 for g in _gradients()]
    assert_same(run_distnn(optimizers.SGD(0.1, clipnorm=10.0), gradients), run_reference(sgd(0.1), gradients))


def test_only_one_clipping_option():
    with pytest.raises(ValueError, match="clipnorm=1.0, clipvalue=1.0"):
        optimizers.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="clipnorm=-1"):
        optimizers.SGD(clipnorm=-1)


# ------------------------------------------------------------------------- learning-rate schedules
def test_exponential_decay():
    s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    for step in (0, 1, 5, 10, 25):
        assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-12)
    stair = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert [stair(k) for k in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_piecewise_constant_decay():
    s = schedules.PiecewiseConstantDecay(boundaries=[3, 7], values=[1.0, 0.5, 0.1])
    assert [s(k) for k in range(10)] == [1.0] * 4 + [0.5] * 4 + [0.1] * 2  # step <= boundary keeps the value
    with pytest.raises(ValueError, match="one more"):
        schedules.PiecewiseConstantDecay([3], [1.0])


def test_cosine_decay_with_and_without_warmup():
    s = schedules.CosineDecay(1.0, decay_steps=10, alpha=0.1)
    for step in (0, 3, 10, 15):
        fraction = min(step, 10) / 10
        assert s(step) == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * fraction)) + 0.1, rel=1e-12)
    warm = schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=4)
    assert [warm(k) for k in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert warm(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert warm(100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("learning_rate", [
    schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5),
    schedules.PiecewiseConstantDecay([2], [0.1, 0.01]),
    lambda step: 0.1 / (1 + step),  # a callable of the step
])
def test_schedule_drives_the_step_size(learning_rate):
    gradients = _gradients()
    rate = learning_rate  # evaluated at the optimizer's iteration count before each step (Keras)

    def update(w, g, s, lr, t):
        w -= lr * g

    history = run_distnn(optimizers.SGD(learning_rate), gradients)
    assert_same(history, run_reference(update, gradients, lr_at=rate))


def test_keras_style_zero_argument_callable():
    value = {"lr": 0.1}
    opt = optimizers.SGD(lambda: value["lr"])
    gradients = _gradients()
    params = np.zeros(SIZE)
    opt.build(params, SEGMENTS)
    opt.apply(params, gradients[0].copy())
    np.testing.assert_allclose(params, -0.1 * gradients[0])
    value["lr"] = 0.01
    assert opt.learning_rate == 0.01


def test_learning_rate_is_settable_and_validated():
    opt = optimizers.Adam()
    opt.learning_rate = 0.5
    assert opt.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate=-1"):
        optimizers.SGD(-1)
    with pytest.raises(TypeError, match="learning_rate"):
        optimizers.SGD("fast")
    with pytest.raises(ValueError, match="beta_1=1.5"):
        optimizers.Adam(beta_1=1.5)
    with pytest.raises(ValueError, match="momentum=-0.1"):
        optimizers.SGD(momentum=-0.1)


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.SGD(float("nan")), "learning_rate must be a finite number >= 0. Received: learning_rate=nan"),
    (lambda: optimizers.Adam(float("inf")), "Received: learning_rate=inf"),
    (lambda: optimizers.Adam(np.float32(-0.5)), "Received: learning_rate=-0.5"),
    (lambda: optimizers.SGD(momentum=float("nan")), "momentum must be a finite number >= 0 and <= 1. Received: momentum=nan"),
    (lambda: optimizers.RMSprop(rho=1.0), "rho must be a finite number >= 0 and < 1. Received: rho=1.0"),
    (lambda: optimizers.RMSprop(momentum=2.0), "Received: momentum=2.0"),
    (lambda: optimizers.RMSprop(epsilon=-1e-7), "epsilon must be a finite number >= 0. Received: epsilon=-1e-07"),
    (lambda: optimizers.Adam(beta_2=float("nan")), "Received: beta_2=nan"),
    (lambda: optimizers.Adam(epsilon=float("nan")), "Received: epsilon=nan"),
    (lambda: optimizers.Adagrad(initial_accumulator_value=-1), "Received: initial_accumulator_value=-1"),
    (lambda: optimizers.AdamW(weight_decay=float("nan")), "weight_decay must be a finite number >= 0. Received: weight_decay=nan"),
    (lambda: optimizers.SGD(clipnorm=0), "clipnorm must be a finite number > 0. Received: clipnorm=0"),
    (lambda: optimizers.SGD(clipvalue=float("nan")), "Received: clipvalue=nan"),
    (lambda: optimizers.SGD(global_clipnorm=float("inf")), "Received: global_clipnorm=inf"),
    (lambda: schedules.ExponentialDecay(float("nan"), 10, 0.5), "Received: initial_learning_rate=nan"),
    (lambda: schedules.ExponentialDecay(0.1, 0, 0.5), "decay_steps must be a finite number > 0. Received: decay_steps=0"),
    (lambda: schedules.ExponentialDecay(0.1, 10, -0.5), "Received: decay_rate=-0.5"),
    (lambda: schedules.PiecewiseConstantDecay([10, 5], [0.1, 0.2, 0.3]), r"boundaries must be increasing"),
    (lambda: schedules.PiecewiseConstantDecay([10], [0.1, float("nan")]), r"Received: values\[1\]=nan"),
    (lambda: schedules.CosineDecay(0.1, 10, alpha=1.5), "alpha must be a finite number >= 0 and <= 1. Received: alpha=1.5"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_target=float("nan"), warmup_steps=2), "Received: warmup_target=nan"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=-1), "Received: warmup_steps=-1"),
])
def test_non_finite_or_out_of_range_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_learning_rate_set_later_or_returned_by_a_schedule_is_checked():
    opt = optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="Received: learning_rate=nan"):
        opt.learning_rate = float("nan")
    assert opt.learning_rate == 0.1  # unchanged by the refused value
    assert schedules.ExponentialDecay(0.1, decay_steps=1e4, decay_rate=0.5).decay_steps == 10000  # Keras' float form
    params, grads = np.ones(3, "float32"), np.ones(3, "float32")
    opt = optimizers.SGD(lambda step: 0.1 if step < 1 else float("nan"))
    opt.build(params, [(0, 3)])
    opt.apply(params, grads.copy())
    with pytest.raises(ValueError, match="returned nan at step 1; a learning rate must be a finite number >= 0"):
        opt.apply(params, grads.copy())
    np.testing.assert_allclose(params, 0.9)  # the bad step changed nothing


# ----------------------------------------------------------------------------------- state
@pytest.mark.parametrize("name, make, rule", RULES, ids=[r[0] for r in RULES])
def test_state_get_set_resumes_exactly(name, make, rule):
    gradients = _gradients(seed=5)
    straight = run_distnn(make(), gradients)

    first = make()
    params = np.random.default_rng(42).normal(size=SIZE)
    first.build(params, SEGMENTS)
    for g in gradients[:3]:
        first.apply(params, g.copy())
    state = first.get_state()
    assert int(state["iterations"]) == 3
    resumed = make()
    resumed.build(params, SEGMENTS)
    resumed.set_state({k: v.copy() for k, v in state.items()})
    for g in gradients[3:]:
        resumed.apply(params, g.copy())
    np.testing.assert_array_equal(params, straight[-1])


def test_set_state_checks_names_and_shapes():
    opt = optimizers.Adam()
    opt.build(np.zeros(SIZE), SEGMENTS)
    with pytest.raises(ValueError, match="missing 'v'"):
        opt.set_state({"m": np.zeros(SIZE), "iterations": np.array(0)})
    with pytest.raises(ValueError, match="shape"):
        opt.set_state({"m": np.zeros(3), "v": np.zeros(SIZE), "iterations": np.array(0)})


def test_lookup_and_config_round_trip():
    for name, cls in [("sgd", optimizers.SGD), ("adam", optimizers.Adam), ("adamw", optimizers.AdamW),
                      ("rmsprop", optimizers.RMSprop), ("adagrad", optimizers.Adagrad), ("nadam", optimizers.Nadam),
                      ("Adam", optimizers.Adam)]:
        assert type(optimizers.get(name)) is cls
    with pytest.raises(ValueError) as info:
        optimizers.get("adamm")
    assert "'adamm'" in str(info.value) and "adam" in str(info.value) and "sgd" in str(info.value)
    with pytest.raises(TypeError, match="optimizer"):
        optimizers.get(3)
    original = optimizers.SGD(schedules.CosineDecay(0.1, 100), momentum=0.9, nesterov=True, clipnorm=1.0)
    restored = optimizers.get(optimizers.serialize(original))
    assert restored.get_config() == original.get_config()
    assert restored.learning_rate == original.learning_rate
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        optimizers.SGD(lambda step: 0.1).get_config()


def test_nadam_refuses_amsgrad_as_keras_3():
    for value in (True, False):
        with pytest.raises(ValueError, match=f"Nadam has no amsgrad.*amsgrad={value}"):
            optimizers.Nadam(amsgrad=value)
    assert "amsgrad" not in optimizers.Nadam().get_config()
    assert optimizers.Adam(amsgrad=True).get_config()["amsgrad"] is True
