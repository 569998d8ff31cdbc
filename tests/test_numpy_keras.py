"""The numpy engine against real Keras 3 (TensorFlow backend): the same initial weights and
batches (no shuffling, no dropout) must give the same per-epoch history, metrics,
evaluation and predictions, for every optimizer, every loss and every layer kind."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

import keras_reference as kr  # noqa: E402

import modelspec as ms  # noqa: E402
from modelspec.backends.numpy import NumpyEngine  # noqa: E402
from modelspec.backends.numpy import kernels as K  # noqa: E402
from modelspec.initializers import initial_weights  # noqa: E402
from modelspec.model import check_y  # noqa: E402
from modelspec.training import LossConfig, MetricConfig, TrainConfig, loss_from_logits  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW",
                    "adagrad": "Adagrad", "nadam": "Nadam"}
RTOL = 1e-5


def keras_loss(loss):
    if loss.name == "huber":
        return keras.losses.Huber(delta=loss.delta if loss.delta is not None else 1.0)
    return loss.name


def train_both(text, x, y, metrics=(), epochs=3, batch_size=32, adjust=None):
    """(ours, keras's) per-epoch [loss, *metrics], plus the trained engine and Keras model.
    `adjust` may change the initial weights in place."""
    spec = ms.parse(text)
    report = ms.check(spec)
    weights = initial_weights(spec, report, 0)
    if adjust is not None:
        adjust(weights)
    model = kr.model(spec)
    model.set_weights(weights)
    hyper = spec.optimizer.config()
    model.compile(getattr(keras.optimizers, KERAS_OPTIMIZERS[spec.optimizer.name])(**hyper),
                  keras_loss(spec.loss), metrics=list(metrics))
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0).history
    theirs = np.array([history["loss"]] + [history[m] for m in metrics]).T

    engine = NumpyEngine(spec, report)
    engine.set_weights(weights)
    loss = LossConfig(spec.loss.name, loss_from_logits(spec, spec.loss.name),
                      spec.loss.delta if spec.loss.delta is not None else 1.0)
    engine.set_training(TrainConfig(spec.optimizer.name, hyper, loss, tuple(MetricConfig(m, m) for m in metrics)))
    data = engine.prepare(x, check_y(y, len(x), report.output_shape, spec.loss.name))
    ours = []
    for _ in range(epochs):
        totals = engine.train_epoch(data, np.arange(len(x)), batch_size)
        assert totals.stopped_at is None and totals.count == len(x)
        ours.append([totals.loss_sum / totals.count] + [s / totals.count for s in totals.metric_sums])
    return np.array(ours), theirs, engine, model, data


def check(text, x, y, metrics=(), batch_size=32, adjust=None):
    ours, theirs, engine, model, data = train_both(text, x, y, metrics, batch_size=batch_size, adjust=adjust)
    np.testing.assert_allclose(ours[:, 0], theirs[:, 0], rtol=RTOL)
    np.testing.assert_allclose(ours[:, 1:], theirs[:, 1:], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(engine.predict(data, 32), model.predict(x, verbose=0), rtol=RTOL, atol=RTOL)
    evaluated = engine.evaluate(data, 32)
    keras_eval = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert evaluated.loss_sum / evaluated.count == pytest.approx(keras_eval["loss"], rel=RTOL)
    for name, total in zip(metrics, evaluated.metric_sums):
        assert total / evaluated.count == pytest.approx(keras_eval[name], rel=RTOL, abs=1e-6)
    # Keras's optimizer variables (iteration, learning rate, slots), as the summary counts them
    state = engine.optimizer_state()
    assert [a.shape for a in state] == [tuple(v.shape) for v in model.optimizer.variables]
    assert [a.dtype for a in state] == [np.dtype(v.dtype) for v in model.optimizer.variables]
    np.testing.assert_allclose(state[1], model.optimizer.learning_rate.numpy())
    assert int(state[0]) == int(model.optimizer.iterations.numpy())


RNG = np.random.default_rng(1)
X = RNG.normal(size=(120, 6)).astype(np.float32)  # 3 full batches of 32 and one of 24
LABELS = RNG.integers(0, 3, 120)
ONEHOT = np.eye(3, dtype=np.float32)[LABELS]

OPTIMIZERS = ["sgd lr=0.1", "sgd lr=0.1 momentum=0.9", "sgd lr=0.1 momentum=0.9 nesterov=true weight_decay=0.05",
              "rmsprop", "rmsprop momentum=0.5 centered=true weight_decay=0.05", "adam lr=0.01",
              "adamw lr=0.01", "adagrad lr=0.1", "nadam lr=0.01"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_on_a_dense_model(optimizer):
    text = f"input 6\ndense 8 relu l2=0.01\ndense 3 softmax\noptimizer {optimizer}\nloss categorical_crossentropy"
    check(text, X, ONEHOT, metrics=("categorical_accuracy",))


MIDDLE = (0.25 + ONEHOT / 2).astype(np.float32)
LOSSES = [  # output activation, loss, labels, metrics
    ("softmax", "categorical_crossentropy", ONEHOT, ("categorical_accuracy",)),
    ("softmax", "sparse_categorical_crossentropy", LABELS, ("sparse_categorical_accuracy",)),
    ("sigmoid", "binary_crossentropy", ONEHOT, ("binary_accuracy",)),
    # Keras's TensorFlow backend takes the logits of any softmax/sigmoid output:
    ("sigmoid", "categorical_crossentropy", ONEHOT, ()),
    ("sigmoid", "sparse_categorical_crossentropy", LABELS, ()),
    ("softmax", "binary_crossentropy", ONEHOT, ("binary_accuracy",)),
    # probability paths: clipped, and renormalized for the categorical ones
    ("softplus", "categorical_crossentropy", ONEHOT, ()),
    ("softplus", "sparse_categorical_crossentropy", LABELS, ()),
    ("relu6", "binary_crossentropy", MIDDLE, ()),
    ("linear", "mse", ONEHOT, ("mae",)),
    ("tanh", "mae", ONEHOT, ("mse",)),
    ("linear", "huber", ONEHOT, ()),
    ("linear", "huber delta=0.3", ONEHOT, ()),
]


@pytest.mark.parametrize("activation, loss, y, metrics", LOSSES, ids=[f"{a}-{loss}" for a, loss, _, _ in LOSSES])
def test_every_loss(activation, loss, y, metrics):
    text = f"input 6\ndense 8 tanh l1=0.01\ndense 3 {activation}\noptimizer adam lr=0.01\nloss {loss}"
    check(text, X, y, metrics=metrics, adjust=center_relu6 if activation == "relu6" else None)


def center_relu6(weights):
    """relu6 probabilities start near 0.5. Near 0 or 1, float32 cannot hold log(p) or
    log(1 - p) to 1e-5 (a 1-ulp difference in p moves 1/(1 - p) by 1e-4 at p = 0.999), so
    a difference of rounding between TensorFlow and NumPy would show."""
    weights[-2] *= 0.1
    weights[-1][:] = 0.5


@pytest.mark.parametrize("loss, y", [("mse", LABELS.astype(np.float32)),
                                     ("binary_crossentropy", (LABELS == 1).astype(np.float32))])
def test_single_unit_output_with_flat_labels(loss, y):
    """Keras expands labels (n,) to the output's (n, 1) rather than broadcasting to (n, n)."""
    act = "sigmoid" if loss == "binary_crossentropy" else "linear"
    check(f"input 6\ndense 4 relu\ndense 1 {act}\noptimizer sgd lr=0.05\nloss {loss}", X, y,
          metrics=("binary_accuracy",) if act == "sigmoid" else ("mae",))


BATCHNORM = """input 6
dense 8 nobias
batchnorm momentum=0.9
leaky_relu
dense 8 selu
batchnorm
dense 3 softmax
"""


@pytest.mark.parametrize("optimizer", ["sgd lr=0.1 momentum=0.9", "adam lr=0.01", "nadam lr=0.01"])
def test_batchnorm_model(optimizer):
    check(BATCHNORM + f"optimizer {optimizer}\nloss categorical_crossentropy", X, ONEHOT,
          metrics=("categorical_accuracy",))


IMAGES = np.random.default_rng(2).normal(size=(64, 9, 9, 2)).astype(np.float32)
IMAGE_LABELS = np.random.default_rng(3).integers(0, 4, 64)
CONV = """input 9x9x2
conv2d 4 3x3 relu
conv2d 6 3x3 strides=2 padding=same elu l2=0.01
maxpool2d 2x2 strides=1 padding=same
conv2d 5 2x2 padding=same
avgpool2d 3x3 strides=2 padding=same
flatten
dense 4 softmax
"""
CONV2 = """input 9x9x2
conv2d 4 4x4 strides=(1,2) padding=same swish
avgpool2d 2x2 strides=1
maxpool2d 3x3 strides=2
batchnorm
globalavgpool2d
dense 4 softmax
"""


@pytest.mark.parametrize("model, optimizer", [(CONV, "sgd lr=0.1 momentum=0.9"), (CONV2, "adam lr=0.01")],
                         ids=["conv-pools", "conv-bn-global"])
def test_conv_model(model, optimizer):
    check(model + f"optimizer {optimizer}\nloss sparse_categorical_crossentropy", IMAGES, IMAGE_LABELS,
          metrics=("sparse_categorical_accuracy",), batch_size=16)


def test_conv_model_categorical():
    check(CONV + "optimizer rmsprop momentum=0.5\nloss categorical_crossentropy", IMAGES,
          np.eye(4, dtype=np.float32)[IMAGE_LABELS], metrics=("categorical_accuracy",), batch_size=16)


# ---------------------------------------------------------------------------------------
# Forward values alone


FORWARD = [
    "input 7x6x3\nconv2d 4 4x4 strides=2 padding=same\nconv2d 3 (2,3) strides=(2,1)\nflatten",
    "input 7x7x2\nmaxpool2d 3x3 strides=2 padding=same\navgpool2d 2x2 padding=same\nflatten",
    "input 8x5x2\navgpool2d (3,2) strides=(1,2) padding=same\nmaxpool2d (2,3) strides=1 padding=same\nflatten",
    "input 5x5x3\nconv2d 2 5x5 strides=3 padding=same gelu\nglobalavgpool2d",
    "input 4x3\ndense 5 leaky_relu\nleaky_relu\ndense 2 selu\nleaky_relu 0.05",
    "input 6\ndense 5 gelu\ndense 5 softplus\ndense 5 swish\ndense 5 relu6\ndense 4 elu\nsigmoid",
]


@pytest.mark.parametrize("text", FORWARD, ids=range(len(FORWARD)))
def test_predictions(text):
    spec = ms.parse(text)
    report = ms.check(spec)
    weights = [w * 3 for w in initial_weights(spec, report, 5)]  # wide enough to reach relu6's cap
    model = kr.model(spec)
    model.set_weights(weights)
    engine = NumpyEngine(spec, report)
    engine.set_weights(weights)
    x = np.random.default_rng(4).normal(size=(10, *spec.input_shape)).astype(np.float32)
    np.testing.assert_allclose(engine.predict(engine.prepare(x, None), 4), model.predict(x, verbose=0),
                               rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "swish",
                                  "softplus", "relu6", "leaky_relu", "linear"])
def test_activation_values(name):
    x = np.linspace(-12, 12, 4802, dtype=np.float32)
    if name == "softmax":
        x = x.reshape(-1, 7)
    expected = keras.ops.convert_to_numpy(getattr(keras.activations, name)(x))
    ours = getattr(K, name)(x)
    assert ours.dtype == np.float32
    # gelu: two float32 erf approximations (TensorFlow's and ours) differ by up to 5e-7
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-6 if name == "gelu" else 1e-7)


def test_leaky_relu_slopes():
    """The LeakyReLU layer's default is 0.3, the activation string's 0.2 (keras/src/layers/activations/leaky_relu.py, keras/src/activations/activations.py)."""
    spec = ms.parse("input 2\nleaky_relu\ndense 2 leaky_relu")
    report = ms.check(spec)
    engine = NumpyEngine(spec, report)
    engine.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    out = engine.predict(engine.prepare(np.array([[-1.0, 2.0]], np.float32), None), 1)
    np.testing.assert_allclose(out, [[-0.3 * 0.2, 2.0]], rtol=1e-6)


def test_rank3_outputs():
    """Dense on the last axis of (n, 4, 3) inputs; losses and metrics average over (n, 4)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 5, (64, 4))
    check("input 4x3\ndense 6 relu\nbatchnorm\ndense 5 softmax\noptimizer adam lr=0.01\n"
          "loss sparse_categorical_crossentropy", x, labels, metrics=("sparse_categorical_accuracy",))
