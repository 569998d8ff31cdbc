"""Training control on the Keras engine: the exact resume of its state (get_state /
set_state), set_learning_rate, and against plain Keras (a model built by
tests/keras_reference.py with the same weights, compiled with the same Keras objects, fit
with shuffle=False) the new optimizers, clipping, schedules, loss options and top-k metrics."""

from __future__ import annotations

import ast

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends
from modelspec.training import TrainConfig, resolve_loss, resolve_metric

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402
from corpus import load_program  # noqa: E402

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
    "lion_dropout": """
        input 6
        dense 8 relu; dropout 0.3; dense 3 softmax
        optimizer lion learning_rate=0.01 weight_decay=0.01 global_clipnorm=0.5
        loss categorical_crossentropy label_smoothing=0.1
    """,
    "adamax_dropout": """
        input 6
        dense 8 relu; dropout 0.3 seed=2; dense 3
        optimizer adamax lr=polynomial_decay(0.05, decay_steps=7) clipvalue=0.1
        loss sparse_categorical_crossentropy from_logits
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


# -- against plain Keras ----------------------------------------------------------------------

PARITY = {
    "adadelta_clipnorm_smoothing_softmax_layer": """
        input 6
        dense 8 tanh; dense 4; softmax axis=1
        optimizer adadelta learning_rate=1.0 rho=0.9 clipnorm=0.5
        loss categorical_crossentropy label_smoothing=0.1
        metrics accuracy top_k_categorical_accuracy k=2
    """,
    "adamax_clipvalue_exponential_logits": """
        input 6
        dense 8 relu; dense 5
        optimizer adamax lr=exponential_decay(0.05, decay_steps=2, decay_rate=0.7, staircase=true) clipvalue=0.05
        loss sparse_categorical_crossentropy from_logits
        metrics sparse_top_k_categorical_accuracy acc
    """,
    "lion_global_clipnorm_cosine_warmup": """
        input 6
        dense 8 gelu; dense 3 sigmoid
        optimizer lion lr=cosine_decay(0.01, decay_steps=6, alpha=0.1, warmup_target=0.02, warmup_steps=3) global_clipnorm=0.2
        loss binary_crossentropy label_smoothing=0.2
        metrics binary_accuracy
    """,
    "sgd_piecewise_binary_logits": """
        input 6
        dense 8 relu; dense 2
        optimizer sgd lr=piecewise_constant_decay(boundaries=[4, 9], values=[0.3, 0.1, 0.02]) momentum=0.9
        loss binary_crossentropy from_logits label_smoothing=0.1
        metrics accuracy
    """,
    "adam_polynomial_softmax_axis_of_a_sequence": """
        input 3x4
        dense 5; softmax axis=1; flatten; dense 4 softmax
        optimizer adam lr=polynomial_decay(0.05, decay_steps=7, power=2.0, cycle=true) clipnorm=0.05
        loss categorical_crossentropy
        metrics top_k_categorical_accuracy
    """,
    "rmsprop_inverse_time": """
        input 6
        dense 8 relu; dense 4 softmax
        optimizer rmsprop lr=inverse_time_decay(0.01, decay_steps=3, decay_rate=0.5) global_clipnorm=0.3
        loss sparse_categorical_crossentropy
        metrics sparse_top_k_categorical_accuracy k=1
    """,
}
def keras_reference(spec: ms.ir.Spec, weights: list[np.ndarray]) -> keras.Model:
    """The spec as a Keras user writes it: the reference model, compiled with Keras's classes."""
    model = kr.model(spec)
    model.set_weights(weights)
    return kr.compile_as_written(model, spec)


def assert_same_history(got: dict, expected: dict, rtol: float = 1e-6) -> None:
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("name", PARITY)
def test_training_equals_plain_keras(name: str, tmp_path) -> None:
    """The engine's history (names as the spec writes them), the emitted program's and plain
    Keras's, epoch by epoch; and the weights after."""
    spec = ms.parse(PARITY[name])
    x, y = data(spec, seed=len(name))
    model = ms.build(spec, backend="keras", seed=len(name))
    initial = model.get_weights()
    history = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0).history

    reference = keras_reference(spec, initial)
    expected = reference.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0).history
    assert_same_history(history, expected)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    program = load_program(backends.get("keras").emit(spec, ms.check(spec)), tmp_path / "program.py")
    emitted = program.build_model()
    emitted.set_weights(initial)
    assert_same_history(emitted.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0).history, expected)


def test_a_rate_changes_the_steps_it_should() -> None:
    """The schedule's rate of each step, seen through SGD without momentum on a linear model:
    the n-th update moves the bias by -lr(n-1)·gradient (modelspec.schedules)."""
    from modelspec.schedules import learning_rates

    spec = ms.parse("input 2\ndense 1 zeros\n"
                    "optimizer sgd lr=piecewise_constant_decay(boundaries=[1, 2], values=[0.5, 0.25, 0.125])\n"
                    "loss mae")
    model = ms.build(spec, backend="keras")
    x, y = np.zeros((1, 2), np.float32), np.full((1, 1), 10.0, np.float32)
    model.fit(x, y, batch_size=1, epochs=4, shuffle=False, verbose=0)  # mae's gradient for the bias: -1
    assert model.get_weights()[1][0] == pytest.approx(sum(learning_rates(spec.optimizer.schedule, range(4))))
    # Keras's boundaries are inclusive: steps 0 and 1 take the first value
    assert model.get_weights()[1][0] == pytest.approx(0.5 + 0.5 + 0.25 + 0.125)


CALLBACKS = """
    input 6
    dense 8 relu; dense 3 softmax
    optimizer adam learning_rate=0.05
    loss sparse_categorical_crossentropy
    metrics accuracy
    fit epochs=8 batch_size=8 shuffle=false
    early_stopping monitor=loss min_delta=0.05 patience=1 restore_best_weights
    reduce_lr_on_plateau monitor=loss factor=0.5 patience=0 min_delta=0.2 min_lr=0.01
"""


def test_the_emitted_program_fits_with_the_spec_callbacks(tmp_path) -> None:
    spec = ms.parse(CALLBACKS)
    code = backends.get("keras").emit(spec, ms.check(spec))
    calls = {ast.unparse(node.func): {k.arg: ast.literal_eval(k.value) for k in node.keywords}
             for node in ast.walk(ast.parse(code))
             if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("keras.callbacks.")}
    # the options the spec sets, no default written out
    assert calls["keras.callbacks.EarlyStopping"] == dict(monitor="loss", min_delta=0.05, patience=1,
                                                          restore_best_weights=True)
    assert calls["keras.callbacks.ReduceLROnPlateau"] == dict(monitor="loss", factor=0.5, patience=0, min_delta=0.2,
                                                              min_lr=0.01)
    x, y = data(spec, seed=5)
    initial = ms.build(spec, backend="keras", seed=5).get_weights()
    program = load_program(code, tmp_path / "program.py")
    emitted = program.build_model()
    emitted.set_weights(initial)
    got = program.train(emitted, x, y).history

    reference = keras_reference(spec, initial)
    callbacks = [keras.callbacks.EarlyStopping(monitor="loss", min_delta=0.05, patience=1, restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=0.2, min_lr=0.01)]
    expected = reference.fit(x, y, batch_size=8, epochs=8, shuffle=False, verbose=0, callbacks=callbacks).history
    assert 1 < len(expected["loss"]) < 8  # the stop and the plateaus happen
    assert len(set(expected["learning_rate"])) > 1
    assert_same_history(got, expected)
    for a, b in zip(emitted.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_callbacks_without_a_fit_statement_still_get_a_train_function(tmp_path) -> None:
    spec = ms.parse("input 6\ndense 3 softmax\nloss sparse_categorical_crossentropy\n"
                    "early_stopping monitor=loss patience=2")
    program = load_program(backends.get("keras").emit(spec, ms.check(spec)), tmp_path / "program.py")
    x, y = data(spec)
    history = program.train(program.build_model(), x, y).history
    assert list(history) == ["loss"] and len(history["loss"]) == 1  # fit's own defaults: one epoch
