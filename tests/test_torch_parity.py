"""The torch backend against the NumPy reference backend: with the same initial weights (set
from the NumPy backend) and the same batches (no shuffling, dropout off), predictions agree
within 1e-5 relative and per-epoch histories over 3 epochs within 1e-4, for every spec in
specs/, the varied corpus, every optimizer and every loss. Weights travel both ways exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from corpus import SPEC_FILES, SPEC_IDS, VARIED  # noqa: E402
from modelspec import ir  # noqa: E402
from modelspec.crosscheck import without_dropout  # noqa: E402

pytestmark = pytest.mark.torch

PREDICT_RTOL = 1e-5
HISTORY_RTOL = 1e-4
EPOCHS = 3


def dataset(spec: ir.Spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of the spec's shape and labels of the kind its loss takes."""
    report = ms.check(spec)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    out = report.output_shape[1:]
    loss = spec.loss.name if spec.loss is not None else "categorical_crossentropy"
    if loss == "sparse_categorical_crossentropy":
        y = rng.integers(0, out[-1], n)
    elif loss == "categorical_crossentropy":
        y = np.eye(out[-1], dtype=np.float32)[rng.integers(0, out[-1], (n, *out[:-1]))]
    elif loss == "binary_crossentropy":
        y = rng.integers(0, 2, (n, *out)).astype(np.float32)
    else:
        y = rng.normal(size=(n, *out)).astype(np.float32)
    return x, y


def pair(spec: ir.Spec, seed: int = 0):
    """The spec in numpy and in torch, the torch model's weights set from the numpy one's."""
    reference = ms.build(spec, backend="numpy", seed=seed)
    model = ms.build(spec, backend="torch", seed=seed, device="cpu")
    model.set_weights(reference.get_weights())
    return reference, model


def assert_same_training(spec: ir.Spec, n: int = 40, batch_size: int = 16, **compile_args) -> None:
    """Predictions, then 3 epochs of history, evaluation, predictions, weights and optimizer
    variables: the same in both backends."""
    spec = without_dropout(spec)
    reference, model = pair(spec)
    if compile_args:
        reference.compile(**compile_args)
        model.compile(**compile_args)
    x, y = dataset(spec, n) if not compile_args else dataset(spec.model_copy(update={
        "loss": ir.Loss(name=compile_args.get("loss", "categorical_crossentropy"))}), n)
    np.testing.assert_allclose(model.predict(x), reference.predict(x), rtol=PREDICT_RTOL, atol=1e-6)
    fit = dict(epochs=EPOCHS, batch_size=batch_size, shuffle=False, verbose=0)
    expected = reference.fit(x, y, **fit).history
    got = model.fit(x, y, **fit).history
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=HISTORY_RTOL, atol=1e-6, err_msg=key)
    evaluated, reference_evaluated = model.evaluate(x, y), reference.evaluate(x, y)
    assert list(evaluated) == list(reference_evaluated)
    for key in evaluated:
        assert evaluated[key] == pytest.approx(reference_evaluated[key], rel=HISTORY_RTOL, abs=1e-6), key
    np.testing.assert_allclose(model.predict(x), reference.predict(x), rtol=HISTORY_RTOL, atol=1e-5)
    for path, ours, theirs in zip(model.weight_paths, model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=2e-5, err_msg=path)
    ours, theirs = model.engine.optimizer_state(), reference.engine.optimizer_state()
    assert [a.shape for a in ours] == [a.shape for a in theirs]
    assert [a.dtype for a in ours] == [a.dtype for a in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def training_spec(spec: ir.Spec) -> dict:
    """Training settings for a spec that has none (the tutorial's bare models)."""
    if spec.loss is not None:
        return {}
    return {"optimizer": "rmsprop", "loss": "categorical_crossentropy", "metrics": ["accuracy"]}


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPEC_FILES, ids=SPEC_IDS)
def test_weights_travel_both_ways_exactly(path):
    spec = ms.parse(path)
    reference, model = pair(spec, seed=3)
    weights = reference.get_weights()
    back = model.get_weights()
    assert len(back) == len(weights)
    for w, b in zip(weights, back):
        assert b.dtype == np.float32 and b.flags.c_contiguous
        assert b.tobytes() == w.tobytes()
    again = ms.build(spec, backend="numpy", seed=99)
    again.set_weights(back)
    assert all(a.tobytes() == w.tobytes() for a, w in zip(again.get_weights(), weights))
    back[0][...] = 7  # a copy, not a view of the model's weights
    assert model.get_weights()[0].tobytes() == weights[0].tobytes()


@pytest.mark.parametrize("path", SPEC_FILES, ids=SPEC_IDS)
def test_every_tutorial_spec_trains_as_in_numpy(path):
    spec = ms.parse(path)
    n = 24 if spec.name == "cnn" else 40  # the 28x28 CNN is slow in NumPy
    assert_same_training(spec, n=n, **training_spec(spec))


@pytest.mark.parametrize("name", sorted(VARIED))
def test_every_layer_and_option_trains_as_in_numpy(name):
    spec = ms.parse(VARIED[name])
    extra = {}
    if spec.loss.name == "sparse_categorical_crossentropy" and len(ms.check(spec).output_shape) > 2:
        extra = {"loss": "categorical_crossentropy", "metrics": ["accuracy"]}  # class ids must be (N,)
    assert_same_training(spec, n=24, batch_size=8, **extra)


MLP = """model mlp
input 6
dense 8 relu he_normal l2=0.01
batchnorm momentum=0.9
dense 5 tanh l1=0.005 l2=0.002
dense 3 softmax
loss categorical_crossentropy
metrics accuracy
"""


@pytest.mark.parametrize("optimizer", [
    "sgd learning_rate=0.05",
    "sgd learning_rate=0.05 momentum=0.9",
    "sgd learning_rate=0.05 momentum=0.8 nesterov=true weight_decay=0.01",
    "rmsprop",
    "rmsprop rho=0.8 momentum=0.5 centered=true epsilon=1e-5 weight_decay=0.02",
    "adam learning_rate=0.01",
    "adam learning_rate=0.01 beta_1=0.8 beta_2=0.99 epsilon=1e-4 weight_decay=0.01",
    "adamw learning_rate=0.01",
    "adagrad learning_rate=0.05 initial_accumulator_value=0.2 epsilon=1e-5",
    "nadam learning_rate=0.01",
    "nadam learning_rate=0.01 beta_1=0.7 weight_decay=0.05",
])
def test_every_optimizer_trains_as_in_numpy(optimizer):
    assert_same_training(ms.parse(MLP + f"optimizer {optimizer}\n"), n=40, batch_size=12)


@pytest.mark.parametrize("output, loss, metrics", [
    # after a softmax or a sigmoid, every cross-entropy reads the values before it (Keras TF)
    ("dense 4 softmax", "categorical_crossentropy", "accuracy"),
    ("dense 4\nsoftmax", "categorical_crossentropy", "acc"),
    ("dense 4 sigmoid", "categorical_crossentropy", "categorical_accuracy"),
    ("dense 4 softmax", "sparse_categorical_crossentropy", "accuracy"),
    ("dense 4 sigmoid", "sparse_categorical_crossentropy", "sparse_categorical_accuracy"),
    ("dense 4 sigmoid", "binary_crossentropy", "accuracy"),
    ("dense 4 softmax", "binary_crossentropy", "binary_accuracy"),
    ("dense 1 sigmoid", "binary_crossentropy", "accuracy"),
    # otherwise they read probabilities: renormalised (categorical) and clipped to [1e-7, 1 - 1e-7]
    ("dense 4 softplus", "categorical_crossentropy", "accuracy"),
    ("dense 4 softplus", "sparse_categorical_crossentropy", "accuracy"),
    ("dense 4 sigmoid\nleaky_relu 0.0", "binary_crossentropy", "binary_accuracy"),
    ("dense 4", "mse", "mae mse"),
    ("dense 4 tanh", "mae", "mse"),
    ("dense 4", "huber delta=0.5", "mae"),
    ("dense 4 relu", "huber", "mse"),
])
def test_every_loss_trains_as_in_numpy(output, loss, metrics):
    spec = ms.parse(f"input 5\ndense 6 relu\n{output}\noptimizer adam learning_rate=0.02\nloss {loss}\n"
                    f"metrics {metrics}")
    assert_same_training(spec, n=36, batch_size=10)


def test_images_keep_keras_channel_order():
    """Conv kernels are permuted and the tensor flattened channels-last: a model whose every
    weight is distinct gives NumPy's numbers only if each index lands where Keras puts it."""
    spec = ms.parse("input 5x4x3\nconv2d 2 (3, 2) padding=same strides=(2, 1)\nflatten\ndense 3")
    reference, model = pair(spec)
    weights = [np.arange(w.size, dtype=np.float32).reshape(w.shape) / w.size - 0.5 for w in reference.get_weights()]
    reference.set_weights(weights)
    model.set_weights(weights)
    x, _ = dataset(spec, 6)
    np.testing.assert_allclose(model.predict(x), reference.predict(x), rtol=PREDICT_RTOL, atol=1e-6)
