"""Training control on the Keras engine: the exact resume of its state (get_state /
set_state), set_learning_rate, and against plain Keras (a model built by
tests/keras_reference.py with the same weights, compiled with the same Keras objects, fit
with shuffle=False) the new optimizers, clipping, schedules, loss options and top-k metrics."""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec.training import TrainConfig, resolve_loss, resolve_metric

pytest.importorskip("keras")


pytestmark = pytest.mark.keras

N, BATCH = 40, 8


def config(model: ms.Model, y: np.ndarray) -> TrainConfig:
    spec = model.spec
    return TrainConfig(optimizer=spec.optimizer.name, hyper=spec.optimizer.config(),
                       loss=resolve_loss(spec, spec.loss),
                       metrics=tuple(resolve_metric(m, y.shape, model.output_shape, spec.k) for m in spec.metrics))


def data(spec: ms.ir.Spec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, *spec.input_shape)).astype(np.float32)
    classes = ms.check(spec).output_shape[-1]
    if spec.loss.name == "sparse_categorical_crossentropy":
        return x, rng.integers(0, classes, N)
    if spec.loss.name == "binary_crossentropy":
        return x, rng.integers(0, 2, (N, classes)).astype(np.float32)
    return x, np.eye(classes, dtype=np.float32)[rng.integers(0, classes, N)]


def epochs(model: ms.Model, x: np.ndarray, y: np.ndarray, count: int) -> list[float]:
    """`count` epochs on the engine, batches in order: each epoch's mean loss."""
    engine = model.engine
    prepared = engine.prepare(x, y)
    out = []
    for _ in range(count):
        totals = engine.train_epoch(prepared, np.arange(N), BATCH)
        out.append(totals.loss_sum / totals.count)
    return out


# -- resume: get_state / set_state ----------------------------------------------------------

RESUMED = {
    "adam_dropout": """
        input 6
        dense 8 relu; dropout 0.4; dense 3 softmax
        optimizer adam learning_rate=0.05
        loss categorical_crossentropy
    """,
    "sgd_momentum_schedule_attention": """
        input 5x4
        attention heads=2 key_dim=3 dropout=0.3
        globalavgpool1d; dropout 0.2 seed=7; dense 3 softmax
        optimizer sgd lr=exponential_decay(0.2, decay_steps=3, decay_rate=0.5) momentum=0.9
        loss sparse_categorical_crossentropy
    """,
    "rmsprop_centered_clipnorm": """
        input 6
        dense 8 tanh; dropout 0.5; dense 2 sigmoid
        optimizer rmsprop learning_rate=0.02 momentum=0.5 centered=true clipnorm=0.5
        loss binary_crossentropy
    """,
}


@pytest.mark.parametrize("name", RESUMED)
def test_resume_continues_as_if_uninterrupted(name: str) -> None:
    spec = ms.parse(RESUMED[name])
    x, y = data(spec)
    whole = ms.build(spec, backend="keras", seed=3)
    whole.engine.set_training(config(whole, y))
    uninterrupted = epochs(whole, x, y, 3)

    first = ms.build(spec, backend="keras", seed=3)
    first.engine.set_training(config(first, y))
    assert epochs(first, x, y, 2) == pytest.approx(uninterrupted[:2], rel=1e-6)
    state, weights = first.engine.get_state(), first.get_weights()
    assert all(isinstance(v, np.ndarray) for v in state.values())

    def resumed(restore: bool) -> tuple[list[float], list[np.ndarray]]:
        second = ms.build(spec, backend="keras", seed=3)
        second.engine.set_training(config(second, y))
        second.set_weights(weights)
        if restore:
            second.engine.set_state(state)
        return epochs(second, x, y, 1), second.get_weights()

    loss, after = resumed(True)
    assert loss == pytest.approx(uninterrupted[2:], rel=1e-6)
    for a, b in zip(after, whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the state matters: without it (a fresh optimizer, fresh dropout masks) the epoch differs
    loss, _ = resumed(False)
    assert loss != pytest.approx(uninterrupted[2:], rel=1e-4)


def test_state_names_the_optimizer_and_the_random_generators() -> None:
    spec = ms.parse(RESUMED["adam_dropout"])
    x, y = data(spec)
    model = ms.build(spec, backend="keras")
    model.engine.set_training(config(model, y))
    state = model.engine.get_state()  # before any step: the optimizer is built for it
    optimizer = [k for k in state if k.startswith("optimizer.")]
    assert len(optimizer) == 2 + 2 * 4  # iteration, learning rate; Adam's two slots per weight
    assert int(state[optimizer[0]]) == 0 and state[optimizer[1]] == np.float32(0.05)
    assert len([k for k in state if k.startswith("rng.")]) == 1  # the dropout's SeedGenerator
    epochs(model, x, y, 1)
    assert int(model.engine.get_state()[optimizer[0]]) == N // BATCH

    other = ms.build(RESUMED["rmsprop_centered_clipnorm"], backend="keras")
    other.engine.set_training(config(other, y))
    with pytest.raises(ValueError, match="does not fit this model"):
        other.engine.set_state(state)
    wrong = dict(state)
    wrong[optimizer[2]] = wrong[optimizer[2]][:1]
    with pytest.raises(ValueError, match=f"{optimizer[2]} is float32"):
        model.engine.set_state(wrong)


def test_set_learning_rate_takes_effect_from_the_next_step() -> None:
    spec = ms.parse("input 4\ndense 2\noptimizer sgd learning_rate=0.1\nloss mse")
    model = ms.build(spec, backend="keras")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    model.engine.set_training(config(model, y))
    model.engine.set_learning_rate(0.0)
    before = model.get_weights()
    model.engine.train_epoch(model.engine.prepare(x, y), np.arange(8), 8)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    model.engine.set_learning_rate(1 / 3)
    lr = [v for k, v in model.engine.get_state().items() if k.endswith("learning_rate")]
    assert lr == [np.float32(1 / 3)]

    scheduled = ms.build("input 4\ndense 2\noptimizer sgd lr=cosine_decay(0.1, decay_steps=5)\nloss mse",
                         backend="keras")
    scheduled.engine.set_training(config(scheduled, y))
    with pytest.raises(ValueError, match="schedule"):
        scheduled.engine.set_learning_rate(0.01)
