"""Adadelta, Adamax, Ftrl, Lion, Lamb and the further schedules against numpy versions of Keras 3's
formulas (per variable, as Keras writes them; distnn updates one flat buffer), state resume, saving."""
import math

import numpy as np
import pytest
from test_optimizers import SEGMENTS, SIZE, _gradients, assert_same, run_distnn, run_reference

from distnn import optimizers
from distnn.layers import Dense
from distnn.models import Sequential, load_model
from distnn.optimizers import schedules


def adadelta(lr, rho=0.95, eps=1e-7):
    def update(w, g, s, _, t):
        s.setdefault("ag", np.zeros_like(w))
        s.setdefault("ad", np.zeros_like(w))
        s["ag"] = rho * s["ag"] + (1 - rho) * g * g
        delta = -np.sqrt(s["ad"] + eps) * g / np.sqrt(s["ag"] + eps)
        s["ad"] = rho * s["ad"] + (1 - rho) * delta * delta
        w += lr * delta
    return update


def adamax(lr, b1=0.9, b2=0.999, eps=1e-7):
    def update(w, g, s, _, t):
        s.setdefault("m", np.zeros_like(w))
        s.setdefault("u", np.zeros_like(w))
        s["m"] += (g - s["m"]) * (1 - b1)
        s["u"] = np.maximum(b2 * s["u"], np.abs(g))
        w -= lr * s["m"] / ((1 - b1 ** t) * (s["u"] + eps))
    return update


def lion(lr, b1=0.9, b2=0.99):
    def update(w, g, s, _, t):
        s.setdefault("m", np.zeros_like(w))
        w -= lr * np.sign(s["m"] * b1 + g * (1 - b1))
        s["m"] = s["m"] * b2 + g * (1 - b2)
    return update


def ftrl(lr, power=-0.5, init=0.1, l1=0.0, l2=0.0, shrink=0.0, beta=0.0):
    def update(w, g, s, _, t):
        s.setdefault("acc", np.full_like(w, init))
        s.setdefault("lin", np.zeros_like(w))
        l2_reg = l2 + beta / (2.0 * lr)
        grad_to_use = g + 2 * shrink * w
        new_acc = s["acc"] + g * g
        s["lin"] += grad_to_use - (new_acc ** -power - s["acc"] ** -power) / lr * w
        quadratic = new_acc ** -power / lr + 2 * l2_reg
        w[...] = (np.clip(s["lin"], -l1, l1) - s["lin"]) / quadratic
        s["acc"] = new_acc
    return update


def lamb(lr, b1=0.9, b2=0.999, eps=1e-7):
    def update(w, g, s, _, t):
        s.setdefault("m", np.zeros_like(w))
        s.setdefault("v", np.zeros_like(w))
        s["m"] += (g - s["m"]) * (1 - b1)
        s["v"] += (g * g - s["v"]) * (1 - b2)
        step = (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(step)
        ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        w -= lr * ratio * step
    return update


RULES = [
    ("adadelta", lambda: optimizers.Adadelta(0.5), adadelta(0.5)),
    ("adadelta_rho", lambda: optimizers.Adadelta(1.0, rho=0.7, epsilon=1e-4), adadelta(1.0, 0.7, 1e-4)),
    ("adamax", lambda: optimizers.Adamax(0.01), adamax(0.01)),
    ("adamax_betas", lambda: optimizers.Adamax(0.02, beta_1=0.5, beta_2=0.8, epsilon=1e-3),
     adamax(0.02, 0.5, 0.8, 1e-3)),
    ("lion", lambda: optimizers.Lion(0.01), lion(0.01)),
    ("lion_betas", lambda: optimizers.Lion(0.02, beta_1=0.6, beta_2=0.9), lion(0.02, 0.6, 0.9)),
    ("ftrl", lambda: optimizers.Ftrl(0.1), ftrl(0.1)),
    ("ftrl_regularised", lambda: optimizers.Ftrl(0.2, learning_rate_power=-0.7, initial_accumulator_value=0.5,
                                                 l1_regularization_strength=0.01, l2_regularization_strength=0.1,
                                                 l2_shrinkage_regularization_strength=0.05, beta=0.3),
     ftrl(0.2, -0.7, 0.5, 0.01, 0.1, 0.05, 0.3)),
    ("lamb", lambda: optimizers.Lamb(0.01), lamb(0.01)),
    ("lamb_betas", lambda: optimizers.Lamb(0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3), lamb(0.05, 0.5, 0.9, 1e-3)),
]


@pytest.mark.parametrize("name, make, rule", RULES, ids=[r[0] for r in RULES])
def test_update_rule_matches_keras(name, make, rule):
    gradients = _gradients()
    history = run_distnn(make(), gradients)
    assert_same(history, run_reference(rule, gradients))
    assert not np.allclose(history[0], history[-1])


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
    resumed = make()
    resumed.build(params, SEGMENTS)
    resumed.set_state({k: v.copy() for k, v in state.items()})
    for g in gradients[3:]:
        resumed.apply(params, g.copy())
    np.testing.assert_array_equal(params, straight[-1])


@pytest.mark.parametrize("name, make, rule", RULES, ids=[r[0] for r in RULES])
def test_config_round_trip_and_names(name, make, rule):
    optimizer = make()
    restored = optimizers.deserialize(optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer) and restored.get_config() == optimizer.get_config()
    assert type(optimizers.get(type(optimizer).__name__.lower())) is type(optimizer)


def test_keras_defaults_and_bad_arguments():
    assert optimizers.Adadelta().get_config()["rho"] == 0.95 and optimizers.Adadelta().learning_rate == 0.001
    assert optimizers.Lion().get_config()["beta_2"] == 0.99
    assert optimizers.Ftrl().get_config()["initial_accumulator_value"] == 0.1
    with pytest.raises(ValueError, match="beta_1"):
        optimizers.Lion(beta_1=0)
    with pytest.raises(ValueError, match="learning_rate_power"):
        optimizers.Ftrl(learning_rate_power=0.5)


def test_model_trains_saves_and_resumes_with_lamb(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    model = Sequential([Dense(8, activation="tanh"), Dense(1)])
    model.compile(optimizer=optimizers.Lamb(0.02), loss="mse")
    history = model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    model.save(tmp_path / "m.distnn")
    restored = load_model(tmp_path / "m.distnn")
    assert type(restored.optimizer) is optimizers.Lamb
    for name, value in model.optimizer.get_state().items():
        np.testing.assert_array_equal(restored.optimizer.get_state()[name], value)


# -------------------------------------------------------------------------------- schedules
def test_inverse_time_decay():
    s = schedules.InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5)
    for step in (0, 3, 10, 25):
        assert s(step) == pytest.approx(0.1 / (1 + 0.5 * step / 10))
    stair = schedules.InverseTimeDecay(0.1, 10, 0.5, staircase=True)
    assert stair(19) == pytest.approx(0.1 / 1.5) and stair(20) == pytest.approx(0.1 / 2.0)


def test_polynomial_decay():
    s = schedules.PolynomialDecay(0.1, decay_steps=10, end_learning_rate=0.01, power=2.0)
    for step in (0, 4, 10, 30):
        p = min(step, 10) / 10
        assert s(step) == pytest.approx((0.1 - 0.01) * (1 - p) ** 2 + 0.01)
    cyc = schedules.PolynomialDecay(0.1, 10, 0.01, cycle=True)
    for step in (0, 5, 10, 15, 25):
        steps = 10 * (1 if step == 0 else math.ceil(step / 10))
        assert cyc(step) == pytest.approx((0.1 - 0.01) * (1 - step / steps) + 0.01)


def _restarts_reference(lr, first, t_mul, m_mul, alpha, step):
    # Keras 3's CosineDecayRestarts.__call__, written out.
    fraction = step / first
    if t_mul == 1.0:
        i = math.floor(fraction)
        fraction -= i
    else:
        i = math.floor(math.log(1.0 - fraction * (1.0 - t_mul)) / math.log(t_mul))
        fraction = (fraction - (1.0 - t_mul ** i) / (1.0 - t_mul)) / t_mul ** i
    return lr * ((1 - alpha) * 0.5 * m_mul ** i * (1 + math.cos(math.pi * fraction)) + alpha)


@pytest.mark.parametrize("t_mul, m_mul, alpha", [(2.0, 1.0, 0.0), (1.0, 0.5, 0.1), (1.5, 0.8, 0.05)])
def test_cosine_decay_restarts(t_mul, m_mul, alpha):
    s = schedules.CosineDecayRestarts(0.2, first_decay_steps=10, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    for step in range(0, 60, 3):
        assert s(step) == pytest.approx(_restarts_reference(0.2, 10, t_mul, m_mul, alpha, step), rel=1e-12)
    assert s(0) == pytest.approx(0.2)
    # A restart: the rate jumps back up at the end of the first period.
    assert s(10) > s(9)


def test_cosine_decay_warmup_matches_keras():
    s = schedules.CosineDecay(0.0, decay_steps=20, alpha=0.1, warmup_target=0.5, warmup_steps=5)
    for step in (0, 2, 5, 12, 25, 40):
        if step < 5:
            want = 0.5 * step / 5
        else:
            progress = min(step - 5, 20) / 20
            want = 0.5 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * progress)) + 0.1)
        assert s(step) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("schedule", [schedules.InverseTimeDecay(0.1, 10, 0.5, staircase=True),
                                      schedules.PolynomialDecay(0.1, 7, 0.001, 0.5, cycle=True),
                                      schedules.CosineDecayRestarts(0.1, 10, 1.5, 0.9, 0.01)],
                         ids=lambda s: type(s).__name__)
def test_schedules_save_and_drive_an_optimizer(schedule):
    restored = schedules.deserialize(schedules.serialize(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    optimizer = optimizers.deserialize(optimizers.serialize(optimizers.Lion(schedule)))
    optimizer.iterations = 13
    assert optimizer.learning_rate == pytest.approx(schedule(13))


# ------------------------------------------------------------------------ exponential moving average
def _with_ema(rule, momentum, overwrite=None):
    """Keras 3's use_ema after each update: average = m * average + (1 - m) * w (m = 0 at the first
    step); every ``overwrite`` steps the weights take the average."""
    def update(w, g, s, lr, t):
        rule(w, g, s, lr, t)
        m = momentum if t > 1 else 0.0
        s["ema"] = m * s.get("ema", np.zeros_like(w)) + (1 - m) * w
        if overwrite and t % overwrite == 0:
            w[...] = s["ema"]
    return update


@pytest.mark.parametrize("overwrite", [None, 2])
def test_ema_matches_keras(overwrite):
    gradients = _gradients()
    optimizer = optimizers.Adamax(0.05, use_ema=True, ema_momentum=0.7, ema_overwrite_frequency=overwrite)
    history = run_distnn(optimizer, gradients)
    assert_same(history, run_reference(_with_ema(adamax(0.05), 0.7, overwrite), gradients))
    # The average itself is a saved slot, equal to the reference's.
    params, rule, slots = np.random.default_rng(42).normal(size=SIZE), _with_ema(adamax(0.05), 0.7, overwrite), {}
    for t, g in enumerate(gradients, start=1):
        rule(params, g, slots, None, t)
    np.testing.assert_allclose(optimizer.get_state()["ema"], slots["ema"], rtol=1e-12)
    assert not np.allclose(slots["ema"], history[-1]) or overwrite == 2  # step 6 overwrote the weights


def test_fit_ends_on_the_moving_average_and_configs_keep_ema():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = Sequential([Dense(1)])
    model.compile(optimizer=optimizers.SGD(0.05, use_ema=True, ema_momentum=0.5), loss="mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(model.params, model.optimizer.slots["ema"])
    config = optimizers.serialize(model.optimizer)["config"]
    assert (config["use_ema"], config["ema_momentum"], config["ema_overwrite_frequency"]) == (True, 0.5, None)
    with pytest.raises(ValueError, match="needs use_ema=True"):
        optimizers.Adam(ema_overwrite_frequency=3)
    with pytest.raises(ValueError, match="ema_momentum"):
        optimizers.Adam(use_ema=True, ema_momentum=1.5)
