"""Training control on the numpy engine: exact resume (get_state/set_state), the learning
rate set between steps, and (against real Keras) the optimizers adadelta, adamax and lion,
gradient clipping, learning-rate schedules, the loss options from_logits and
label_smoothing, the top-k metrics and the softmax layer."""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec import ir
from modelspec.backends.numpy import NumpyEngine
from modelspec.training import LossConfig, MetricConfig, TrainConfig

RESUMED = """
input 6
dense 8 relu
dropout 0.25
dense 8 tanh
dropout 0.1
dense 3 softmax
"""

ATTENTION = """
input 5x4
attention heads=2 key_dim=3 dropout=0.2
dropout 0.3
globalavgpool1d
dense 3 softmax
"""

OPTIMIZERS = ["sgd", "rmsprop", "adam", "adamw", "adagrad", "nadam", "adadelta", "adamax", "lion"]


def config(optimizer, loss="categorical_crossentropy", metrics=("categorical_accuracy",), **hyper):
    return TrainConfig(optimizer, ir.Optimizer(name=optimizer).config() | hyper, LossConfig(loss),
                       tuple(MetricConfig(m, m) for m in metrics))


def engine(text, seed=3):
    spec = ms.parse(text)
    return NumpyEngine(spec, ms.check(spec), seed=seed)


def epochs(engine, data, count, first=0):
    """Each epoch's loss sum, shuffled by an order that depends on the epoch only."""
    losses = []
    for epoch in range(first, first + count):
        order = np.random.default_rng(epoch).permutation(len(data))
        losses.append(engine.train_epoch(data, order, 5).loss_sum)
    return losses


def samples(shape, n=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]


@pytest.mark.parametrize("text", [RESUMED, ATTENTION],
                         ids=["dropout", "attention"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_is_bit_for_bit(text, optimizer):
    """2 epochs, the state and weights into a new engine, 1 more epoch == 3 epochs in one go."""
    hyper = {"momentum": 0.9} if optimizer in ("sgd", "rmsprop") else {}
    x, y = samples(ms.parse(text).input_shape)
    whole = engine(text)
    whole.set_training(config(optimizer, **hyper))
    data = whole.prepare(x, y)
    losses = epochs(whole, data, 3)

    first = engine(text)
    first.set_training(config(optimizer, **hyper))
    assert epochs(first, data, 2) == losses[:2]
    state, weights = first.get_state(), first.get_weights()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert any(k.startswith("rng/") for k in state)

    second = engine(text, seed=99)  # another seed: every random state must come from `state`
    second.set_training(config(optimizer, **hyper))
    second.set_weights(weights)
    second.set_state(state)
    assert epochs(second, data, 1, first=2) == losses[2:]
    for a, b in zip(second.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(second.optimizer_state(), whole.optimizer_state(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_before_any_step_leaves_the_optimizer_unbuilt():
    text = RESUMED
    fresh = engine(text)
    fresh.set_training(config("nadam"))
    state = fresh.get_state()
    assert int(state["optimizer/built"]) == 0 and not any(k.startswith("optimizer/slot") for k in state)
    other = engine(text)
    other.set_training(config("nadam"))
    other.set_state(state)
    assert other.optimizer_state() == []


def test_a_state_of_another_training_is_refused():
    text = RESUMED
    x, y = samples((6,))
    adam = engine(text)
    adam.set_training(config("adam"))
    epochs(adam, adam.prepare(x, y), 1)
    sgd = engine(text)
    sgd.set_training(config("sgd"))
    with pytest.raises(ValueError, match="does not fit .* sgd training: missing nothing, unexpected"):
        sgd.set_state(adam.get_state())


def test_a_learning_rate_set_takes_effect_at_the_next_step():
    """SGD without momentum: each step moves the weights by lr·g, lr float32 as Keras keeps it."""
    text = "input 4\ndense 2\n"
    x, y = samples((4,), n=4, classes=2)
    e = engine(text)
    e.set_training(config("sgd", loss="mse", metrics=(), learning_rate=0.1))
    data = e.prepare(x, y)
    before = e.get_weights()
    e.set_learning_rate(0.0123)
    assert e.optimizer_state() == []  # not built yet; the rate is kept for the first step
    e.train_epoch(data, np.arange(4), 4)
    kernel_grad = e.net.grads[0]
    np.testing.assert_array_equal(e.get_weights()[0], before[0] - kernel_grad * np.float32(0.0123))
    assert e.optimizer_state()[1] == np.float32(0.0123)
    assert e.get_state()["optimizer/learning_rate"] == np.float32(0.0123)


def test_a_schedule_cannot_be_set():
    e = engine("input 4\ndense 2\n")
    schedule = ir.Schedule(name="exponential_decay", initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5)
    e.set_training(config("sgd", loss="mse", metrics=(), learning_rate=schedule))
    with pytest.raises(ValueError, match="schedule"):
        e.set_learning_rate(0.01)
