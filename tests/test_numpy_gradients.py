"""The numpy backend's hand-written gradients against central finite differences, in float64.

The kernels are dtype-generic, so they run here in float64, where a central difference
with h = 1e-6 is accurate to about 1e-9: every layer kind, every activation, every loss
on both its logits and its probability path, and the L1/L2 penalties of a whole network.
"""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec.backends.numpy import NumpyEngine
from modelspec.backends.numpy import kernels as K
from modelspec.training import LossConfig, TrainConfig

H = 1e-6


def numeric_gradient(f, array: np.ndarray) -> np.ndarray:
    """d f() / d array by central differences, perturbing `array` in place."""
    grad = np.zeros_like(array)
    flat, out = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + H
        up = f()
        flat[i] = keep - H
        down = f()
        flat[i] = keep
        out[i] = (up - down) / (2 * H)
    return grad


def check_layer(layer, x, training=True, reset=lambda: None, atol=1e-7, rtol=1e-6):
    """Analytic input and weight gradients of sum(r * layer(x)) against finite differences."""
    rng = np.random.default_rng(0)
    reset()
    y = layer.forward(x, training)
    assert y.dtype == np.float64
    r = rng.standard_normal(y.shape)

    def f():
        reset()
        return float(np.sum(layer.forward(x, training) * r))

    reset()
    layer.forward(x, training)
    dx = layer.backward(r, need_dx=True)
    analytic = [np.array(dx)] + [g.copy() for g in layer.grads]
    numeric = [numeric_gradient(f, x)] + [numeric_gradient(f, p) for p in layer.params]
    assert len(layer.params) == len(layer.grads)
    for a, n in zip(analytic, numeric):
        assert a.shape == n.shape
        np.testing.assert_allclose(a, n, rtol=rtol, atol=atol)


def rand(*shape, seed=1, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# ---------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("x_shape", [(4, 5), (3, 2, 5)], ids=["rank2", "rank3"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense(x_shape, bias):
    layer = K.Dense(rand(5, 3, seed=2), rand(3, seed=3) if bias else None)
    check_layer(layer, rand(*x_shape))


CONVS = [  # kernel, strides, padding, input h x w
    ((3, 3), (1, 1), "valid", (6, 5)),
    ((3, 3), (1, 1), "same", (5, 5)),
    ((3, 3), (2, 2), "same", (6, 7)),  # TF pads (0, 1): the extra pixel after
    ((4, 4), (1, 1), "same", (5, 6)),  # (1, 2)
    ((2, 3), (2, 1), "valid", (7, 6)),
    ((5, 5), (2, 2), "same", (7, 7)),
    ((1, 1), (3, 2), "same", (7, 5)),
]


@pytest.mark.parametrize("kernel, strides, padding, hw", CONVS, ids=[str(c) for c in CONVS])
def test_conv2d(kernel, strides, padding, hw):
    layer = K.Conv2D(rand(*kernel, 2, 3, seed=2), rand(3, seed=3), strides, padding)
    check_layer(layer, rand(2, *hw, 2))


def test_conv2d_without_bias():
    check_layer(K.Conv2D(rand(3, 3, 2, 2, seed=2), None, (1, 1), "same"), rand(2, 4, 4, 2))


POOLS = [  # pool, strides, padding, input h x w
    ((2, 2), (2, 2), "valid", (6, 5)),
    ((2, 2), (2, 2), "same", (5, 5)),
    ((3, 3), (2, 2), "same", (6, 7)),
    ((3, 3), (1, 1), "same", (4, 5)),
    ((2, 3), (1, 2), "valid", (5, 7)),
]


@pytest.mark.parametrize("kind", [K.MaxPool2D, K.AvgPool2D])
@pytest.mark.parametrize("pool, strides, padding, hw", POOLS, ids=[str(p) for p in POOLS])
def test_pooling(kind, pool, strides, padding, hw):
    check_layer(kind(pool, strides, padding), rand(2, *hw, 3))


def test_global_average_pooling_and_flatten():
    check_layer(K.GlobalAvgPool2D(), rand(2, 3, 4, 5))
    check_layer(K.Flatten(), rand(2, 3, 4, 5))


@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "moving-stats"])
@pytest.mark.parametrize("x_shape", [(6, 4), (2, 3, 3, 4)], ids=["dense", "image"])
def test_batchnorm(training, x_shape):
    layer = K.BatchNorm(1 + rand(4, seed=2, scale=0.3), rand(4, seed=3), rand(4, seed=4),
                        1 + np.abs(rand(4, seed=5)), momentum=0.9, epsilon=1e-3)
    check_layer(layer, rand(*x_shape, scale=2.0), training=training)


@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_dropout(rate):
    layer = K.Dropout(rate, np.random.default_rng(0))

    def reset():  # the same mask for every evaluation of the finite difference
        layer.rng = np.random.default_rng(0)

    check_layer(layer, rand(5, 6), reset=reset)
    check_layer(layer, rand(5, 6), training=False)


# ---------------------------------------------------------------------------------------
# Activations


ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "swish",
               "softplus", "relu6", "leaky_relu"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation(name):
    layer = K.Activation(getattr(K, name), getattr(K, f"{name}_grad"))
    # gelu's erf is a float32-accurate rational approximation (TensorFlow's kind); its
    # derivative differs from the exact Gaussian density by up to ~3e-6.
    atol = 1e-5 if name == "gelu" else 1e-7
    check_layer(layer, rand(4, 7, scale=4.0), atol=atol)


@pytest.mark.parametrize("slope", [0.3, 0.01])
def test_leaky_relu_slope(slope):
    check_layer(K.Activation(K.leaky_relu, K.leaky_relu_grad, negative_slope=slope), rand(4, 7))


# ---------------------------------------------------------------------------------------
# Losses: the returned gradient is d(batch loss)/d(prediction).


def check_loss(loss, y, z, atol=1e-7, **options):
    value, grad = loss(y, z, **options)
    assert np.ndim(value) == 0
    numeric = numeric_gradient(lambda: float(loss(y, z, **options)[0]), z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=atol)


def probabilities(*shape, seed=1):
    e = np.exp(rand(*shape, seed=seed))
    return e / e.sum(axis=-1, keepdims=True)


def onehot(labels, n):
    return np.eye(n)[labels]


LABELS = np.array([0, 2, 1, 2, 3])


@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_crossentropy(from_logits):
    y = onehot(LABELS, 4)
    z = rand(5, 4) if from_logits else probabilities(5, 4) * 1.7  # renormalized by Keras
    check_loss(K.categorical_crossentropy, y, z, from_logits=from_logits)


def test_categorical_crossentropy_soft_labels_and_rank3():
    y = probabilities(2, 3, 4, seed=5)  # soft labels summing to 1: TF's softmax - y is exact
    check_loss(K.categorical_crossentropy, y, rand(2, 3, 4), from_logits=True)
    check_loss(K.categorical_crossentropy, y, probabilities(2, 3, 4), from_logits=False)


def test_categorical_crossentropy_clipped_entries_get_no_gradient():
    y = onehot(np.array([0, 1]), 3)
    z = np.array([[1e-9, 0.5, 0.5], [0.2, 0.3, 0.5]])
    value, grad = K.categorical_crossentropy(y, z)
    # -log(1e-7) caps the first sample's loss: Keras 3.15.1 gives 8.2374 for p_true = 1e-9
    # with probabilities that sum to 1.
    assert value == pytest.approx((-np.log(1e-7) - np.log(0.3)) / 2, rel=1e-6)
    assert grad[0, 0] == 0


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_categorical_crossentropy(from_logits):
    z = rand(5, 4) if from_logits else probabilities(5, 4) * 0.8
    check_loss(K.sparse_categorical_crossentropy, LABELS, z, from_logits=from_logits)


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_crossentropy(from_logits):
    y = (rand(5, 3, seed=4) > 0).astype(float)
    z = rand(5, 3) if from_logits else 1 / (1 + np.exp(-rand(5, 3)))
    check_loss(K.binary_crossentropy, y, z, from_logits=from_logits)


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_regression_losses(name):
    check_loss(getattr(K, name), rand(5, 3, seed=4), rand(5, 3))


@pytest.mark.parametrize("delta", [1.0, 0.5, 2.5])
def test_huber(delta):
    check_loss(K.huber, rand(6, 3, seed=4), rand(6, 3, scale=2.0), delta=delta)


def test_loss_values_against_formulas():
    """Keras's reductions (keras/src/losses/loss.py, sum_over_batch_size), written out."""
    y, z = np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([[0.5, 0.2], [2.0, 1.0]])
    assert K.mse(y, z)[0] == pytest.approx(((0.25 + 0.64) / 2 + (1 + 0) / 2) / 2)
    assert K.mae(y, z)[0] == pytest.approx(((0.5 + 0.8) / 2 + 1 / 2) / 2)
    e = z - y  # huber delta=1: 0.5e² inside, |e| - 0.5 outside
    per = np.where(np.abs(e) <= 1, 0.5 * e ** 2, np.abs(e) - 0.5).mean(axis=1)
    assert K.huber(y, z)[0] == pytest.approx(per.mean())
    # from logits: logsumexp - z_y; 25.0 is Keras 3.15.1's figure for [20, 0, -5], class 3
    assert K.sparse_categorical_crossentropy(np.array([2]), np.array([[20.0, 0.0, -5.0]]), from_logits=True)[0] \
        == pytest.approx(25.0, rel=1e-9)


# ---------------------------------------------------------------------------------------
# A whole network in float64: composition, the from-logits split and both penalties.

NETWORK = """
input 6x6x2
conv2d 3 3x3 padding=same tanh l1=0.01 l2=0.02
maxpool2d 2x2
batchnorm
conv2d 4 2x2 strides=2 padding=same swish l2=0.05
flatten
dense 5 elu l1=0.03
dense 3 softmax l1=0.01 l2=0.01
"""


@pytest.mark.parametrize("loss, from_logits", [("categorical_crossentropy", True),
                                               ("categorical_crossentropy", False), ("mse", False)])
def test_network_gradients_with_penalties(loss, from_logits):
    spec = ms.parse(NETWORK)
    engine = NumpyEngine(spec, ms.check(spec), seed=3, dtype=np.float64)
    engine.set_training(TrainConfig("sgd", {"learning_rate": 0.1}, LossConfig(loss, from_logits), ()))
    data = engine.prepare(rand(4, 6, 6, 2), onehot(np.array([0, 2, 1, 1]), 3))
    engine.get_weights()  # draws them
    total, _ = engine.gradients(data.x, data.y)
    analytic = [g.copy() for g in engine.net.grads]
    penalties = engine.net.penalty()
    assert penalties > 0
    f = lambda: float(engine.net.evaluate(data.x, data.y, training=True)[0])  # noqa: E731
    assert f() == pytest.approx(float(total))
    for param, grad in zip(engine.net.params, analytic):
        np.testing.assert_allclose(grad, numeric_gradient(f, param), rtol=1e-5, atol=1e-7)


def test_penalty_is_l1_plus_l2_unscaled():
    spec = ms.parse("input 3\ndense 2 l1=0.1 l2=0.2\ndense 1 l2=0.5")
    engine = NumpyEngine(spec, ms.check(spec), dtype=np.float64)
    engine.set_weights([np.array([[1.0, -2.0], [0.5, 0.0], [3.0, -1.0]]), np.zeros(2), np.array([[2.0], [-1.0]]),
                        np.zeros(1)])
    expected = 0.1 * 7.5 + 0.2 * 15.25 + 0.5 * 5.0  # l1·Σ|w| + l2·Σw², no ½
    assert engine.net.penalty() == pytest.approx(expected)
