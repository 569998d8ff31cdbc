"""The Keras-exact pieces of the torch backend (keras_ops), against Keras's formulas written
out in NumPy float64 (from Keras's source), and against real Keras where a number is Keras's own."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from modelspec.backends.torch import keras_ops as K  # noqa: E402

pytestmark = pytest.mark.torch

G = np.array([[1e-3, -0.5, 2.0], [0.3, -1e-4, 0.0]])  # gradients of two steps, small ones included
W0 = np.array([0.1, -0.2, 0.3])


def run(optimizer_class, steps=G, **hyper):
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    opt = optimizer_class([w], **hyper)
    for g in steps:
        w.grad = torch.tensor(g)
        opt.step()
    return w.detach().numpy()


def test_rmsprop_puts_epsilon_inside_the_square_root():
    lr, rho, mu, eps = 0.01, 0.9, 0.5, 1e-7
    w, v, m = W0.copy(), np.zeros(3), np.zeros(3)
    for g in G:
        v = rho * v + (1 - rho) * g * g
        m = mu * m + lr * g / np.sqrt(v + eps)
        w = w - m
    np.testing.assert_allclose(run(K.RMSprop, learning_rate=lr, rho=rho, momentum=mu, epsilon=eps), w, rtol=1e-12)
    # keras/src/optimizers/rmsprop.py: a first step with g = 1e-3 moves Keras by lr·2.24 (torch's rule: lr·3.16)
    moved = W0[0] - run(K.RMSprop, steps=np.array([[1e-3, 0, 0]]), learning_rate=1.0)[0]
    assert moved == pytest.approx(1e-3 / math.sqrt(0.1 * 1e-6 + 1e-7), rel=1e-9) and round(moved, 2) == 2.24


def test_centered_rmsprop():
    lr, rho, eps = 0.01, 0.8, 1e-5
    w, v, a = W0.copy(), np.zeros(3), np.zeros(3)
    for g in G:
        v = rho * v + (1 - rho) * g * g
        a = rho * a + (1 - rho) * g
        w = w - lr * g / np.sqrt(v - a * a + eps)
    np.testing.assert_allclose(run(K.RMSprop, learning_rate=lr, rho=rho, epsilon=eps, centered=True), w, rtol=1e-12)


def test_adam_adds_epsilon_to_the_uncorrected_root():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    w, m, v = W0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(G, start=1):
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w = w - alpha * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(run(K.Adam, learning_rate=lr, epsilon=eps), w, rtol=1e-12)


def test_weight_decay_is_decoupled_on_every_optimizer():
    lr, wd = 0.01, 0.1
    plain = run(K.SGD, steps=G[:1], learning_rate=lr)
    decayed = run(K.SGD, steps=G[:1], learning_rate=lr, weight_decay=wd)
    np.testing.assert_allclose(decayed, plain - lr * wd * W0, rtol=1e-12)  # w -= lr·wd·w, then the step
    adamw = run(K.Adam, steps=G[:1], learning_rate=lr, weight_decay=wd)
    np.testing.assert_allclose(adamw, run(K.Adam, steps=G[:1], learning_rate=lr) - lr * wd * W0, rtol=1e-12)


def test_nadam_momentum_schedule():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    w, m, v, product = W0.copy(), np.zeros(3), np.zeros(3), 1.0
    for t, g in enumerate(G, start=1):
        u_t, u_next = b1 * (1 - 0.5 * 0.96 ** t), b1 * (1 - 0.5 * 0.96 ** (t + 1))
        product *= u_t
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        m_hat = u_next * m / (1 - product * u_next) + (1 - u_t) * g / (1 - product)
        w = w - lr * m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(run(K.Nadam, learning_rate=lr), w, rtol=1e-12)


def test_adagrad_starts_its_accumulator_at_0_1():
    lr, eps = 0.1, 1e-7
    w, acc = W0.copy(), np.full(3, 0.1)
    for g in G:
        acc = acc + g * g
        w = w - lr * g / np.sqrt(acc + eps)
    np.testing.assert_allclose(run(K.Adagrad, learning_rate=lr), w, rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum(nesterov):
    lr, mu = 0.1, 0.9
    w, m = W0.copy(), np.zeros(3)
    for g in G:
        m = mu * m - lr * g
        w = w + (mu * m - lr * g if nesterov else m)
    np.testing.assert_allclose(run(K.SGD, learning_rate=lr, momentum=mu, nesterov=nesterov), w, rtol=1e-12)


def test_step_accepts_a_closure_like_torch_optimizers():
    w = torch.tensor([1.0], requires_grad=True)
    opt = K.SGD([w], learning_rate=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 1.0 and w.item() == 0.0


# -- batchnorm -------------------------------------------------------------------------------


def test_batchnorm_normalises_with_and_updates_by_the_biased_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(8, 3))
    bn = K.BatchNorm(3, momentum=0.99, epsilon=1e-3).double()
    with torch.no_grad():
        bn.gamma.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.beta.copy_(torch.tensor([0.0, 1.0, -1.0]))
    y = bn.train()(torch.from_numpy(x)).detach().numpy()
    mean, var = x.mean(0), x.var(0)  # NumPy's var is the biased one
    np.testing.assert_allclose(y, [1.0, 2.0, 0.5] * (x - mean) / np.sqrt(var + 1e-3) + [0.0, 1.0, -1.0], rtol=1e-12)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.01 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.99 + 0.01 * var, rtol=1e-12)
    assert not np.allclose(bn.moving_variance.numpy(), 0.99 + 0.01 * x.var(0, ddof=1))
    inference = bn.eval()(torch.from_numpy(x)).detach().numpy()
    expected = [1.0, 2.0, 0.5] * (x - 0.01 * mean) / np.sqrt(0.99 + 0.01 * var + 1e-3) + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(inference, expected, rtol=1e-12)


def test_batchnorm_on_nchw_normalises_each_channel_over_batch_and_space():
    x = np.random.default_rng(1).normal(size=(4, 2, 3, 3))
    bn = K.BatchNorm(2, axis=1).double().train()
    y = bn(torch.from_numpy(x)).detach().numpy()
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-10)


# -- pooling and padding ---------------------------------------------------------------------


def reference_pool(x, k, s, pads, reduce):
    """NCHW pooling over the cells of each window that lie inside the image."""
    left, right, top, bottom = pads
    n, c, h, w = x.shape
    oh, ow = (h + top + bottom - k[0]) // s[0] + 1, (w + left + right - k[1]) // s[1] + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s[0] - top, j * s[1] - left
            window = x[:, :, max(r0, 0):min(r0 + k[0], h), max(c0, 0):min(c0 + k[1], w)]
            out[:, :, i, j] = reduce(window, axis=(2, 3))
    return out


@pytest.mark.parametrize("size, k, s", [(5, (3, 3), (2, 2)), (6, (4, 4), (1, 1)), (7, (2, 3), (2, 1))])
def test_same_pooling_excludes_padding(size, k, s):
    from modelspec.shapes import same_padding

    x = np.random.default_rng(2).normal(size=(2, 3, size, size))
    top, bottom = same_padding(size, k[0], s[0])
    left, right = same_padding(size, k[1], s[1])
    pads = (left, right, top, bottom)
    got = K.avg_pool2d_same(torch.from_numpy(x), k, s, pads).numpy()
    np.testing.assert_allclose(got, reference_pool(x, k, s, pads, np.mean), rtol=1e-12)
    spec = ms.parse(f"input {size}x{size}x3\nmaxpool2d {k[0]}x{k[1]} strides={s} padding=same")
    model = ms.build(spec, backend="torch", device="cpu")
    nhwc = x.transpose(0, 2, 3, 1).astype(np.float32)
    expected = reference_pool(nhwc.transpose(0, 3, 1, 2).astype(np.float64), k, s, pads, np.max)
    np.testing.assert_allclose(model.predict(nhwc), expected.transpose(0, 2, 3, 1), rtol=1e-6)


# -- losses and metrics ----------------------------------------------------------------------


def test_cross_entropy_from_logits_is_unclipped():
    """Keras 3.15.1: logits [20, 0, -5], true class 3: Keras's TF backend reports 25.0."""
    logits = torch.tensor([[20.0, 0.0, -5.0]], dtype=torch.float64)
    assert K.softmax_cross_entropy(logits, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)).item() == \
        pytest.approx(25.0, rel=1e-9)
    assert K.sparse_softmax_cross_entropy(logits, torch.tensor([2])).item() == pytest.approx(25.0, rel=1e-9)
    z, y = np.array([3.0, -40.0, 0.5]), np.array([0.0, 1.0, 1.0])
    expected = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    assert K.sigmoid_binary_crossentropy(torch.tensor(z), torch.tensor(y)).item() == pytest.approx(expected)


def test_probabilities_are_clipped_to_1e_7():
    p = torch.tensor([[1e-9, 0.5, 0.5 - 1e-9]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert K.categorical_crossentropy(p, y).item() == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert K.binary_crossentropy(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0],
                                 dtype=torch.float64)).item() == pytest.approx(-math.log(1e-7), rel=1e-6)
    # sparse: clipped, then renormalised as TensorFlow's softmax cross-entropy of the log does
    q = np.clip([[0.2, 0.3, 1e-9]], 1e-7, 1 - 1e-7)
    assert K.sparse_categorical_crossentropy(torch.tensor(q), torch.tensor([1])).item() == \
        pytest.approx(-math.log(q[0, 1] / q.sum()), rel=1e-9)


def test_binary_accuracy_threshold_is_strictly_above_one_half():
    values = K.binary_accuracy(torch.tensor([[0.5, 0.5000001, 0.2]]), torch.tensor([[0.0, 1.0, 1.0]]))
    assert values.tolist() == pytest.approx([2 / 3])


def test_selu_takes_tensorflows_gradient_at_zero():
    """TF's SeluGrad takes the linear side at 0 (scale); torch's F.selu the exponential
    side (scale * alpha). A zeros kernel without a bias feeds selu only zeros."""
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = K.selu(x)
    y.sum().backward()
    scale, alpha = 1.0507009873554805, 1.6732632423543772
    np.testing.assert_allclose(y.detach().numpy(), torch.nn.functional.selu(x).detach().numpy(), rtol=0)
    np.testing.assert_allclose(x.grad.numpy(), [scale * alpha * math.exp(-1.0), scale, scale, scale], rtol=1e-12)


# -- against real Keras ----------------------------------------------------------------------


@pytest.mark.keras
def test_keras_agrees_on_the_probability_paths_and_leaky_relu():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    p = np.array([[0.2, 0.3, 0.1], [0.05, 0.9, 0.3]], np.float32)
    labels = np.array([1, 2])
    onehot = np.eye(3, dtype=np.float32)[labels]
    theirs = {
        "sparse": keras.losses.SparseCategoricalCrossentropy()(labels, p),
        "categorical": keras.losses.CategoricalCrossentropy()(onehot, p),
        "binary": keras.losses.BinaryCrossentropy()(onehot, p),
    }
    ours = {
        "sparse": K.sparse_categorical_crossentropy(torch.from_numpy(p), torch.from_numpy(labels)),
        "categorical": K.categorical_crossentropy(torch.from_numpy(p), torch.from_numpy(onehot)),
        "binary": K.binary_crossentropy(torch.from_numpy(p), torch.from_numpy(onehot)),
    }
    for key in theirs:
        assert ours[key].item() == pytest.approx(float(theirs[key]), rel=1e-6), key
    x = np.array([[-1.0, 2.0]], np.float32)
    model = ms.build("input 2\nleaky_relu\nleaky_relu 0.1\ndense 2 leaky_relu", backend="torch", device="cpu")
    model.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    layers = keras.Sequential([keras.Input((2,)), keras.layers.LeakyReLU(), keras.layers.LeakyReLU(0.1),
                               keras.layers.Dense(2, "leaky_relu", kernel_initializer="identity")])
    ours = model.predict(x)
    np.testing.assert_allclose(ours, layers.predict(x, verbose=0), rtol=1e-6)
    assert ours[0, 0] == pytest.approx(-1.0 * 0.3 * 0.1 * 0.2)  # the layer's 0.3, then the activation's 0.2
