"""Whole training runs, on every backend: several epochs of Model.fit (several batches, a
short last one, shuffled or not, with or without a validation split), then evaluate and
predict, against the same run on the NumPy reference backend, or on a Keras model the tests
build from the IR (layer_test.run_fit_test says what is compared, and how closely).

These cases were the per-backend parity files (test_torch_parity.py, test_keras_parity.py,
test_torch_keras.py): the same checks, now asked of every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelspec as ms
from corpus import VARIED
from layer_test import run_fit_test
from modelspec import backends
from modelspec.crosscheck import without_dropout
from modelspec.diagnostics import SpecError

SPECS = Path(__file__).parents[2] / "specs"
BARE = {"optimizer": "rmsprop", "loss": "categorical_crossentropy", "metrics": ["accuracy"]}
RUNS: dict[str, Any] = {}  # the reference runs, shared by the backends' tests in one process


def needs_training(backend: str) -> None:
    """Skip, saying why, on a backend that runs inference only (its `trains` is False)."""
    if not backends.get(backend).trains:
        pytest.skip(f"the {backend} backend runs inference only: fit refuses it (layer_test.check_inference_only)")


@dataclass(frozen=True)
class Run:
    text: str
    n: int
    batch_size: int
    validation_split: float = 0.0
    shuffle: bool = False
    compile: dict | None = field(default=None, hash=False)
    reference: str = "numpy"
    epochs: int = 3

    def spec(self) -> ms.Spec:
        return without_dropout(ms.parse(self.text))


# Specs whose training is chaotic in float32 after a few steps: near-ties in a max pool go the
# way rounding favours, so float32 itself leaves float64 (`modelspec crosscheck` says when). A
# tolerance fixed in advance can judge only the steps before: these train on one batch per
# epoch (three steps), and tests/test_crosscheck.py judges longer runs against float64.
CHAOTIC = {"digits_resnet"}  # float32 itself moves 7.3e-2 from float64 in 20 steps (crosscheck)


def spec_file_run(path: Path) -> Any:
    """A tutorial spec, dropout off, with its own settings (a bare one: RMSprop on categorical
    cross-entropy), shuffled, with the validation split its fit statement asks for."""
    spec = ms.parse(path)
    fit = spec.fit or ms.ir.Fit()
    compile = BARE if spec.loss is None else None
    n = 20 if spec.name in CHAOTIC else 24 if spec.name == "cnn" else 48
    run = Run(path.read_text(encoding="utf-8"), n=n,
              batch_size=min(fit.batch_size or 32, 16), validation_split=fit.validation_split or 0.0, shuffle=True,
              compile=compile)
    return pytest.param(run, id=path.stem)


# Every optimizer, with and without its options, on a model with every weighted layer kind
# (conv2d and dense with penalties, batchnorm on images and on vectors), each with one of
# the losses (and the output layer it expects) in turn; shuffled, with a validation split.
OPTIMIZERS = ["sgd learning_rate=0.05", "sgd learning_rate=0.05 momentum=0.9",
              "sgd learning_rate=0.05 momentum=0.8 nesterov=true weight_decay=0.01", "rmsprop",
              "rmsprop rho=0.8 momentum=0.5 centered=true epsilon=1e-5 weight_decay=0.02",
              "adam learning_rate=0.01", "adam learning_rate=0.01 beta_1=0.8 beta_2=0.99 epsilon=1e-4 weight_decay=0.01",
              "adamw learning_rate=0.01",
              "adagrad learning_rate=0.05 initial_accumulator_value=0.2 epsilon=1e-5", "nadam learning_rate=0.01",
              "nadam learning_rate=0.01 beta_1=0.7 weight_decay=0.05",
              "adadelta learning_rate=1.0", "adadelta learning_rate=0.5 rho=0.8 epsilon=1e-5 weight_decay=0.01",
              "adamax learning_rate=0.01", "adamax learning_rate=0.01 beta_1=0.8 beta_2=0.99 epsilon=1e-4",
              "lion learning_rate=0.001", "lion learning_rate=0.002 beta_1=0.8 beta_2=0.95 weight_decay=0.05",
              # gradient clipping, each rule, on optimizers that keep state and one that does not
              "sgd learning_rate=0.05 momentum=0.9 clipnorm=0.1", "adam learning_rate=0.01 clipvalue=0.01",
              "rmsprop global_clipnorm=0.2", "sgd learning_rate=0.1 global_clipnorm=0.05",
              # learning-rate schedules: the n-th update takes the rate of step n - 1
              "sgd learning_rate=exponential_decay(0.1, decay_steps=2, decay_rate=0.5, staircase=true) momentum=0.9",
              "adam lr=cosine_decay(0.001, decay_steps=6, alpha=0.1, warmup_target=0.02, warmup_steps=3)",
              "sgd lr=piecewise_constant_decay(boundaries=[2, 5], values=[0.1, 0.05, 0.01]) weight_decay=0.01",
              "rmsprop lr=inverse_time_decay(0.01, decay_steps=3, decay_rate=0.5)",
              "adagrad lr=polynomial_decay(0.1, decay_steps=4, end_learning_rate=0.01, power=2.0, cycle=true)"]
HEADS = [("dense 4 softmax", "categorical_crossentropy", "accuracy"),
         ("dense 4\nsoftmax", "sparse_categorical_crossentropy", "accuracy"),
         ("dense 1 sigmoid", "binary_crossentropy", "binary_accuracy"),
         ("dense 2", "mse", "mae"), ("dense 2 tanh", "mae", "mse"), ("dense 2", "huber delta=0.5", "mse")]
MODEL = ("input 5x4x2\nconv2d 3 2x2 relu he_normal l2=0.01\nbatchnorm\nflatten\ndense 8 relu he_normal l2=0.01\n"
         "batchnorm momentum=0.9\ndense 6 elu l1=0.001\ndense 5 tanh l1=0.005 l2=0.002")


def optimizer_run(i: int, optimizer: str) -> Any:
    head, loss, metrics = HEADS[i % len(HEADS)]
    text = f"{MODEL}\n{head}\noptimizer {optimizer}\nloss {loss}\nmetrics {metrics}"
    return pytest.param(Run(text, n=40, batch_size=12, validation_split=0.25, shuffle=True),
                        id=f"{optimizer}-{loss}".replace(" ", "-"))


# Every loss after the outputs it meets: after a softmax or a sigmoid every cross-entropy
# reads the values before it (Keras on TensorFlow); otherwise probabilities, renormalised
# (categorical) and clipped to [1e-7, 1 - 1e-7]
LOSSES = [
    ("dense 4 softmax", "categorical_crossentropy", "accuracy"),
    ("dense 4\nsoftmax", "categorical_crossentropy", "acc"),
    ("dense 4 sigmoid", "categorical_crossentropy", "categorical_accuracy"),
    ("dense 4 softmax", "sparse_categorical_crossentropy", "accuracy"),
    ("dense 4 sigmoid", "sparse_categorical_crossentropy", "sparse_categorical_accuracy"),
    ("dense 4 sigmoid", "binary_crossentropy", "accuracy"),
    ("dense 4 softmax", "binary_crossentropy", "binary_accuracy"),
    ("dense 1 sigmoid", "binary_crossentropy", "accuracy"),
    ("dense 4 softplus", "categorical_crossentropy", "accuracy"),
    ("dense 4 softplus", "sparse_categorical_crossentropy", "accuracy"),
    ("dense 4 sigmoid\nleaky_relu 0.0", "binary_crossentropy", "binary_accuracy"),
    ("dense 4", "mse", "mae mse"),
    ("dense 4 tanh", "mae", "mse"),
    ("dense 4", "huber delta=0.5", "mae"),
    ("dense 4 relu", "huber", "mse"),
    # the output itself as the logits (from_logits), and smoothed labels
    ("dense 4", "categorical_crossentropy from_logits", "accuracy top_k_categorical_accuracy k=2"),
    ("dense 4", "sparse_categorical_crossentropy from_logits", "accuracy sparse_top_k_categorical_accuracy k=3"),
    ("dense 4", "binary_crossentropy from_logits", "binary_accuracy"),
    ("dense 4 softmax", "categorical_crossentropy label_smoothing=0.2", "top_k_categorical_accuracy"),
    ("dense 4", "categorical_crossentropy from_logits label_smoothing=0.1", "accuracy"),
    ("dense 4 sigmoid", "binary_crossentropy label_smoothing=0.3", "binary_accuracy"),
    ("dense 4\nsoftmax axis=-1", "sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy k=2"),
]


def loss_run(output: str, loss: str, metrics: str) -> Any:
    text = f"input 5\ndense 6 relu\n{output}\noptimizer adam learning_rate=0.02\nloss {loss}\nmetrics {metrics}"
    return pytest.param(Run(text, n=36, batch_size=10), id=f"{output}-{loss}".replace("\n", "-").replace(" ", "-"))


# Callbacks, decided from the same numbers on every backend: early stopping (with the best
# weights restored), a learning rate reduced on a plateau, both at once
CALLBACKS = [
    ("early_stopping monitor=loss patience=1 min_delta=0.05 restore_best_weights", 0.0),
    ("early_stopping patience=0 start_from_epoch=2", 0.25),
    ("reduce_lr_on_plateau monitor=loss factor=0.5 patience=1 min_delta=0.02 cooldown=1", 0.0),
    ("reduce_lr_on_plateau factor=0.2 patience=0 min_lr=0.001\nearly_stopping patience=2", 0.25),
]


def callback_run(callbacks: str, validation: float) -> Any:
    fit = f"\nfit validation={validation}" if validation else ""
    text = (f"input 5\ndense 6 relu\ndense 3 softmax\noptimizer sgd learning_rate=0.5\n"
            f"loss categorical_crossentropy\nmetrics accuracy{fit}\n{callbacks}")
    return pytest.param(Run(text, n=30, batch_size=10, validation_split=validation, epochs=8),
                        id=callbacks.replace("\n", "-").replace(" ", "-"))


SPACES = pytest.mark.notimpl(["keras"], reason="TensorFlow's name scopes refuse spaces: the Keras backend refuses "
                             "such a model or layer name", raises=SpecError)
RUNS_CASES = (
    [spec_file_run(p) for p in sorted(SPECS.glob("*.ms"))]
    + [pytest.param(Run(text, n=24, batch_size=8), id=f"varied-{name}",
                    marks=SPACES if name == "training_variants" else ())
       for name, text in sorted(VARIED.items())]
    + [optimizer_run(i, o) for i, o in enumerate(OPTIMIZERS)]
    + [loss_run(*case) for case in LOSSES]
    + [callback_run(*case) for case in CALLBACKS]
    # against Keras itself, three tutorial specs with their own settings and a validation split.
    # The CNN runs one epoch: its fifth step sits on a kink (relu, max pooling's choice), where
    # float32 and float64 gradients differ by 3% at the same weights; past it, two float32 convolutions
    # that sum in different orders (oneDNN's, TensorFlow's, NumPy's) need not take the same branch.
    + [pytest.param(Run((SPECS / f"{name}.ms").read_text(encoding="utf-8"), n=n, batch_size=16,
                        validation_split=0.25, reference="keras", epochs=epochs), id=f"keras-{name}")
       for name, n, epochs in (("mnist", 96, 3), ("digits_c", 80, 3), ("digits_cnn", 64, 1))]
)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("run", RUNS_CASES)
def test_fit(backend, run):
    if run.reference == "keras" and backend == "keras":
        pytest.skip("the Keras backend against Keras itself, to 2e-6: tests/test_keras_engine.py")
    run_fit_test(backend, run.spec(), n=run.n, batch_size=run.batch_size, epochs=run.epochs,
                 validation_split=run.validation_split, shuffle=run.shuffle, compile=run.compile, reference=run.reference, cache=RUNS)


# ---------------------------------------------------------------------------------------
# Optimizer variables and a non-finite step, through Model.fit on every backend (these were
# the same test in each engine's file)


@pytest.mark.parametrize("optimizer, extra", [
    ("sgd", lambda t: 2), ("sgd momentum=0.9", lambda t: t + 2), ("rmsprop", lambda t: t + 2),
    ("rmsprop momentum=0.5 centered=true", lambda t: 3 * t + 2), ("adam", lambda t: 2 * t + 2),
    ("adamw", lambda t: 2 * t + 2), ("adagrad", lambda t: t + 2), ("nadam", lambda t: 2 * t + 3),
    ("adadelta", lambda t: 2 * t + 2), ("adamax", lambda t: 2 * t + 2), ("lion", lambda t: t + 2)])
def test_optimizer_variables_count_as_keras_counts_them(backend, optimizer, extra):
    """Keras's optimizer variables (keras/src/optimizers/base_optimizer.py): the iteration count and the learning rate,
    then Adam's m and v per trainable weight (2·T + 2), SGD without momentum nothing more,
    RMSprop T + 2 (3·T + 2 with momentum, centered), Nadam one more scalar (its momentum
    schedule's product), Adadelta and Adamax 2·T + 2, Lion T + 2; none before the first
    training step. T counts trainable values
    only (batchnorm's moving statistics are not)."""
    needs_training(backend)
    model = ms.build(f"input 4\ndense 3 relu\nbatchnorm\ndense 2\noptimizer {optimizer}\nloss mse", backend=backend)
    x, y = np.ones((2, 4), np.float32), np.zeros((2, 2), np.float32)
    model.fit(x, y, epochs=0, verbose=0)
    assert model.engine.optimizer_state() == []
    model.fit(x, y, epochs=1, verbose=0)  # one step
    state = model.engine.optimizer_state()
    trainable = 4 * 3 + 3 + 3 + 3 + 3 * 2 + 2
    assert sum(a.size for a in state) == extra(trainable)
    assert state[0].dtype == np.int64 and state[0] == 1
    assert state[1] == pytest.approx(model.spec.optimizer.config()["learning_rate"])


STOP = "input 4\ndense 6 relu\nbatchnorm\ndense 2\noptimizer adam\nloss mse\nmetrics mae"


def test_a_non_finite_step_stops_before_its_update(backend):
    """A label of 1e30, whose squared error overflows, in the third batch: fit
    warns and stops there, with the weights (moving statistics included) and optimizer
    variables of a run over the first two batches, bit for bit; the failed batch counts in
    the epoch's mean, as in Keras's history (the metrics then agree with NumPy's)."""
    needs_training(backend)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(40, 2)).astype(np.float32)
    y[21] = 1e30
    clean = ms.build(STOP, backend=backend, seed=1)
    clean.fit(x[:20], y[:20], batch_size=10, epochs=1, shuffle=False, verbose=0)
    model = ms.build(STOP, backend=backend, seed=1)
    with pytest.warns(ms.model.TrainingStopped, match="epoch 1, step 3; .* the weights of the last good step"):
        history = model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    assert history.stopped and history.history["loss"] == [float("inf")] and len(history.history["loss"]) == 1
    for path, ours, reference in zip(model.weight_paths, model.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(ours, reference, err_msg=path)
    state, expected = model.engine.optimizer_state(), clean.engine.optimizer_state()
    assert int(state[0]) == 2 and len(state) == len(expected)
    for a, b in zip(state, expected):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(ms.model.TrainingStopped):
        reference = ms.build(STOP, backend="numpy", seed=1).fit(x, y, batch_size=10, epochs=2, shuffle=False,
                                                                 verbose=0)
    np.testing.assert_allclose(history.history["mae"], reference.history["mae"], rtol=1e-5)


def test_a_non_finite_gradient_stops_too(backend):
    """Huge inputs to a zero kernel: the loss (of the bias alone) is finite, but the kernel's
    gradient Σ x·dy overflows float32: the step is not applied."""
    needs_training(backend)
    model = ms.build("input 2\ndense 1\noptimizer sgd\nloss mse", backend=backend)
    model.set_weights([np.zeros((2, 1), np.float32), np.ones(1, np.float32)])
    x, y = np.full((2, 2), 3e38, np.float32), np.zeros((2, 1), np.float32)
    with pytest.warns(ms.model.TrainingStopped, match="epoch 1, step 1; .* the weights it started from were kept"):
        history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"] == [1.0]
    np.testing.assert_array_equal(model.get_weights()[0], np.zeros((2, 1), np.float32))
    np.testing.assert_array_equal(model.get_weights()[1], [1.0])


def test_dropout_is_active_only_in_training_and_reproducible(backend):
    """Dropout is the identity in inference; in training its masks come from the model's
    seed: the same seed gives the same history, another seed or no dropout another one."""
    text = "input 30\ndense 30 relu\ndropout 0.5\ndense 2\noptimizer sgd\nloss mse"
    x = np.random.default_rng(0).normal(size=(16, 30)).astype(np.float32)
    y = np.zeros((16, 2), np.float32)
    a, b, c = (ms.build(text, backend=backend, seed=s) for s in (1, 1, 2))
    off = ms.build(text.replace("dropout 0.5", "dropout 0.0"), backend=backend, seed=1)
    np.testing.assert_array_equal(a.predict(x), off.predict(x))  # inference: the identity
    needs_training(backend)
    fit = dict(epochs=2, batch_size=4, verbose=0, shuffle=False)
    ha, hb, hc, hoff = (m.fit(x, y, **fit).history["loss"] for m in (a, b, c, off))
    assert ha == hb and ha != hc and ha != hoff
