"""The numpy backend's optimizers: three steps against each rule written out here (from
Keras's source, keras/src/optimizers/), and against real Keras optimizers on the same gradients."""

from __future__ import annotations

import os

import numpy as np
import pytest

from modelspec import ir
from modelspec.backends.numpy import kernels as K

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own __array__ warnings

P0 = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]], np.float32)
GRADS = [np.array([[0.1, -0.2, 1e-3], [2.0, 0.0, -0.5]], np.float32),
         np.array([[-0.3, 0.1, 2e-3], [1.0, -1e-4, 0.5]], np.float32),
         np.array([[0.05, 0.3, -1e-3], [-2.0, 0.2, 0.25]], np.float32)]


def run(optimizer, steps=3):
    """Each step's parameters, float32, from the kernels optimizer."""
    p = P0.copy()
    out = []
    for g in GRADS[:steps]:
        optimizer.step([p], [g.copy()])
        assert p.dtype == np.float32
        out.append(p.copy())
    return out


def decay(w, hp):
    return w - hp["learning_rate"] * hp["weight_decay"] * w if hp.get("weight_decay") else w


def sgd(hp):
    w, m, out = P0.astype(np.float64), 0.0, []
    lr, mu = hp["learning_rate"], hp["momentum"]
    for g in GRADS:
        w = decay(w, hp)
        if mu:
            m = mu * m - lr * g
            w = w + (mu * m - lr * g if hp["nesterov"] else m)
        else:
            w = w - lr * g
        out.append(w)
    return out


def rmsprop(hp):
    w, v, a, mom, out = P0.astype(np.float64), 0.0, 0.0, 0.0, []
    lr, rho, mu, eps = hp["learning_rate"], hp["rho"], hp["momentum"], hp["epsilon"]
    for g in GRADS:
        w = decay(w, hp)
        v = rho * v + (1 - rho) * g * g
        if hp["centered"]:
            a = rho * a + (1 - rho) * g
            inc = lr * g / np.sqrt(v - a * a + eps)  # ε inside the root
        else:
            inc = lr * g / np.sqrt(v + eps)
        if mu > 0:
            mom = mu * mom + inc
            w = w - mom
        else:
            w = w - inc
        out.append(w)
    return out


F = np.float32  # Keras computes the powers β^t in float32, the weights' dtype


def adam(hp):
    w, m, v, out = P0.astype(np.float64), 0.0, 0.0, []
    lr, b1, b2, eps = hp["learning_rate"], hp["beta_1"], hp["beta_2"], hp["epsilon"]
    for t, g in enumerate(GRADS, 1):
        w = decay(w, hp)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        alpha = lr * np.sqrt(1 - F(b2) ** F(t)) / (1 - F(b1) ** F(t))
        w = w - alpha * m / (np.sqrt(v) + eps)  # ε on the uncorrected √v
        out.append(w)
    return out


def adagrad(hp):
    w, out = P0.astype(np.float64), []
    acc = np.full(P0.shape, hp["initial_accumulator_value"])
    for g in GRADS:
        w = decay(w, hp)
        acc = acc + g * g
        w = w - hp["learning_rate"] * g / np.sqrt(acc + hp["epsilon"])
        out.append(w)
    return out


def nadam(hp):
    w, m, v, product, out = P0.astype(np.float64), 0.0, 0.0, 1.0, []
    lr, b1, b2, eps = hp["learning_rate"], hp["beta_1"], hp["beta_2"], hp["epsilon"]
    for t, g in enumerate(GRADS, 1):
        w = decay(w, hp)
        u_t, u_next = b1 * (1 - 0.5 * 0.96 ** t), b1 * (1 - 0.5 * 0.96 ** (t + 1))
        product *= u_t
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        m_hat = u_next * m / (1 - product * u_next) + (1 - u_t) * g / (1 - product)
        w = w - lr * m_hat / (np.sqrt(v / (1 - F(b2) ** F(t))) + eps)
        out.append(w)
    return out


FORMULAS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam, "adamw": adam, "adagrad": adagrad, "nadam": nadam}
CLASSES = {"sgd": K.SGD, "rmsprop": K.RMSprop, "adam": K.Adam, "adamw": K.AdamW, "adagrad": K.Adagrad,
           "nadam": K.Nadam}
CASES = [
    ("sgd", {}), ("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"learning_rate": 0.1, "weight_decay": 0.05}),
    ("rmsprop", {}), ("rmsprop", {"momentum": 0.5}), ("rmsprop", {"centered": True, "rho": 0.8}),
    ("rmsprop", {"momentum": 0.9, "centered": True, "weight_decay": 0.1, "learning_rate": 0.01}),
    ("adam", {}), ("adam", {"learning_rate": 0.01, "beta_1": 0.8, "epsilon": 1e-3}),
    ("adam", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("adamw", {}), ("adamw", {"learning_rate": 0.05, "weight_decay": 0.2}),
    ("adagrad", {}), ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.0, "epsilon": 1e-3}),
    ("nadam", {}), ("nadam", {"learning_rate": 0.01, "weight_decay": 0.02}),
]


def hyper(name, written):
    return ir.Optimizer(name=name, **written).config()


@pytest.mark.parametrize("name, written", CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_three_steps_follow_the_formula(name, written):
    hp = hyper(name, written)
    for mine, expected in zip(run(CLASSES[name](**hp)), FORMULAS[name](hp)):
        np.testing.assert_allclose(mine, expected, rtol=2e-6, atol=1e-7)


def test_adamw_default_decay_is_decoupled():
    hp = hyper("adamw", {})
    assert hp["weight_decay"] == 0.004
    # decoupled: the decay shrinks w even where the gradient is zero
    opt, p = K.AdamW(**hp), np.array([2.0], np.float32)
    opt.step([p], [np.zeros(1, np.float32)])
    assert p[0] == pytest.approx(2.0 * (1 - 0.001 * 0.004), rel=1e-7)


def test_adagrad_first_step_uses_the_initial_accumulator():
    p = np.array([1.0], np.float32)
    K.Adagrad(learning_rate=0.1).step([p], [np.array([1.0], np.float32)])
    assert p[0] == pytest.approx(1 - 0.1 / np.sqrt(1.1 + 1e-7), rel=1e-6)


@pytest.mark.parametrize("name, written", CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_slots_are_keras_variables(name, written):
    """Keras's optimizer variables besides iteration and learning_rate (from each class's
    build() in keras/src/optimizers): count and shapes, for two weights."""
    hp = hyper(name, written)
    opt = CLASSES[name](**hp)
    params = [P0.copy(), np.zeros(3, np.float32)]
    opt.step(params, [GRADS[0], np.ones(3, np.float32)])
    if name == "sgd":
        per_weight = 1 if hp["momentum"] else 0
    elif name == "rmsprop":
        per_weight = 1 + (hp["momentum"] > 0) + bool(hp["centered"])
    else:
        per_weight = {"adam": 2, "adamw": 2, "adagrad": 1, "nadam": 2}[name]
    slots = opt.slots()
    extra = 1 if name == "nadam" else 0  # Nadam's u_product scalar
    assert len(slots) == per_weight * 2 + extra
    assert sum(s.size for s in slots) == per_weight * (P0.size + 3) + extra


# ---------------------------------------------------------------------------------------
# Against real Keras


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


KERAS_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                 "nadam": "Nadam"}


@pytest.mark.keras
@pytest.mark.parametrize("name, written", CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_three_steps_match_keras(keras, name, written):
    hp = hyper(name, written)
    var = keras.Variable(P0.copy())
    opt = getattr(keras.optimizers, KERAS_CLASSES[name])(**hp)
    expected = []
    for g in GRADS:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        expected.append(keras.ops.convert_to_numpy(var.value))
    ours = CLASSES[name](**hp)
    for mine, theirs in zip(run(ours), expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
    # Keras's variables: iteration (int64), learning_rate (float32), then the slots in order
    theirs = [keras.ops.convert_to_numpy(v.value) for v in opt.variables]
    assert [str(v.dtype) for v in theirs[:2]] == ["int64", "float32"]
    assert theirs[0] == ours.iterations == 3
    assert len(theirs[2:]) == len(ours.slots())
    for slot, their_slot in zip(ours.slots(), theirs[2:]):
        np.testing.assert_allclose(slot, their_slot, rtol=1e-5, atol=1e-7)
