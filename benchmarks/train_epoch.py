"""One training epoch of the tutorial's MNIST MLP, a small CNN and a residual CNN, in each backend and by hand.

    .venv/bin/python benchmarks/train_epoch.py [--model mlp|cnn|resnet|tokens|lstm|all] [--rounds 7]
                                               [--only torch,numpy] [--threads N] [--keras-fit N] [--verify]
                                               [--markdown]

Models (float32 throughout, MNIST-like random images, one-hot labels that are a learnable
function of the pixels; see data()):

- mlp: specs/mnist.ms, rescale 1/255 (the samples are raw pixels, 0-255), 784-512-64-10,
  RMSprop(learning_rate=0.001, momentum=0.5),
  categorical cross-entropy on the softmax's logits, categorical accuracy, batch 512, on
  60,000 samples.
- cnn: benchmarks/cnn.ms, conv2d 16 3x3 relu, maxpool 2x2, conv2d 32 3x3 relu, maxpool 2x2,
  flatten, dense 10 softmax; Adam(learning_rate=0.001), the same loss and metric, batch
  128, on 8,000 28x28x1 samples (one epoch of every contender in well under a minute on 2
  cores).
- resnet: benchmarks/resnet.ms, a graph: conv2d 8 3x3 relu 'same', two residual blocks
  (conv2d relu, conv2d, batchnorm, add the block's input, relu), globalavgpool2d, dense 10
  softmax; Adam(learning_rate=0.001), the same loss, accuracy, batch 64, on 3,072 16x16x3
  samples whose labels global pooling can see (data()). No Keras contenders.
- tokens: benchmarks/tokens.ms, specs/digits_tokens.ms with one-hot labels: the 8x8 digits
  as 64 token ids (pixel intensities 0-16), embedding 17 4, conv1d 16 9 relu, maxpool1d 2,
  flatten, dense 10 softmax; Adam(learning_rate=0.005), categorical cross-entropy, batch 32,
  on scikit-learn's 1,797 digits twice over (3,594 samples, int32).
- lstm: benchmarks/lstm.ms, a text-sized recurrent model: 100 token ids (vocabulary 32, 0
  the padding in front), embedding 32 32, lstm 64, dense 4 softmax; Adam(learning_rate=0.005),
  categorical cross-entropy, batch 64, on 2,048 synthetic texts of 40 to 100 tokens whose
  topic shows in the words they use (data()).

Per framework there is a hand-written contender doing the same math as modelspec's backend
(Keras's optimizer rules, softmax cross-entropy from the logits, Keras's accounting of the
epoch's loss and accuracy) and the backend itself:

- numpy: a plain hand-written loop (the MLP's comes from the old tests/test_numpy_speed.py;
  the CNNs' use sliding_window_view/tensordot) against the numpy backend;
- torch: a careful loop (data as tensors, batches gathered by index, the Keras optimizer as
  in-place updates; the CNN channels-first) against the torch backend on the CPU;
- keras: the tutorial's model.fit against the Keras backend.

Each contender is one function decorated with @contender(model, name): it sets up (outside
the timing) from the shared initial weights and returns a function that runs one epoch, in
a given order or (None) in an order of its own, and returns the epoch's mean loss and
accuracy. The first epoch of every contender runs from the same weights in the same order
and is compared (the "agreement" table: the hand-written rows compute what the backends
compute); it is also the warm-up. Then rounds interleave the contenders (a different one
starts each round), so a busy machine slows them alike. The table shows each one's median
and minimum epoch time, its ratio to the hand-written row of its own framework and to the
hand-written PyTorch loop, both as a ratio of medians and as the median of the per-round
ratios ("paired": the epochs of a round ran under the same load, which steadies the figure
on a shared machine). Targets are judged on the paired ratio.

"keras, hand-written model.fit" calls model.fit for one epoch per round, so each round also
pays fit()'s once-per-call setup; --keras-fit N adds whole N-epoch fits on both sides, setup
included once, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    name: str
    spec: Path
    samples: int
    shape: tuple[int, ...]  # one sample's
    classes: int
    batch: int
    pooled_labels: bool = False  # labels from what global pooling keeps (see data())
    raw_pixels: bool = False  # the spec starts with `rescale 1/255`: samples in [0, 255) (see data())
    digits_tokens: bool = False  # scikit-learn's digits as token ids, repeated (see data())
    texts: bool = False  # synthetic texts as token ids, padded in front (see data())


MLP = Bench("mlp", ROOT / "specs" / "mnist.ms", 60_000, (784,), 10, 512, raw_pixels=True)
CNN = Bench("cnn", ROOT / "benchmarks" / "cnn.ms", 8_000, (28, 28, 1), 10, 128)
RESNET = Bench("resnet", ROOT / "benchmarks" / "resnet.ms", 3_072, (16, 16, 3), 10, 64, pooled_labels=True)
TOKENS = Bench("tokens", ROOT / "benchmarks" / "tokens.ms", 2 * 1_797, (64,), 10, 32, digits_tokens=True)
LSTM = Bench("lstm", ROOT / "benchmarks" / "lstm.ms", 2_048, (100,), 4, 64, texts=True)
BENCHES = {b.name: b for b in (MLP, CNN, RESNET, TOKENS, LSTM)}

# Rows, by framework: the hand-written one and modelspec's backend.
HAND = {"numpy": "numpy, hand-written loop", "torch": "torch, hand-written loop",
        "keras": "keras, hand-written model.fit"}
BACKEND = {fw: f"{fw}, modelspec backend" for fw in HAND}
REFERENCE = HAND["torch"]  # every row is also compared with the hand-written PyTorch loop
AGREEMENT_REFERENCE = BACKEND["numpy"]  # the project's reference numbers
# Relative, on one epoch's mean loss. Training in float32 amplifies the rounding of different
# summation orders: after the MLP's 118 steps such rows differ by up to about 2e-4 (rows that
# add in the same order agree to 1e-7), while a real difference in the math, such as torch's
# RMSprop (epsilon outside the square root), shows as 7e-2.
AGREEMENT_TOLERANCE = 1e-3

Result = tuple[float, float]  # the epoch's mean loss, accuracy
Epoch = Callable[[np.ndarray | None], Result]  # order (None: its own shuffle) -> Result
Setup = Callable[[np.ndarray, np.ndarray, list[np.ndarray]], Epoch]
CONTENDERS: dict[str, dict[str, Setup]] = {name: {} for name in BENCHES}


def contender(bench: Bench, name: str):
    def register(setup: Setup) -> Setup:
        CONTENDERS[bench.name][name] = setup
        return setup
    return register


def data(bench: Bench, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like random images: a fifth of the pixels lit with a value in [0, 1), the rest 0
    (MNIST lights about a fifth). A sample's class is the largest of ten fixed random linear
    functions of its pixels, so that the models learn within an epoch (the MLP reaches about
    60% accuracy) and the agreement epoch compares real training. With pooled_labels they
    are functions of each channel's mean and mean square (standardized) instead: the
    resnet's global average pooling keeps nothing of where a pixel is. With raw_pixels the
    values are scaled to [0, 255), MNIST's raw range, which the spec's `rescale 1/255` (and
    each hand-written contender's first step) brings back. With digits_tokens: scikit-learn's
    digits, their pixel intensities as int32 token ids, repeated to `samples`, and their
    labels one-hot. With texts: int32 token ids 1..31 drawn by Zipf's law (a word's
    frequency 1 / its rank), one in six replaced by one of the six words of the text's topic;
    40 to 100 of them, padded with 0 in front to 100 (Keras's pad_sequences' default)."""
    if bench.texts:
        rng = np.random.default_rng(seed)
        vocab, steps = 32, bench.shape[0]
        frequency = 1 / np.arange(1, vocab)
        topics = rng.integers(0, bench.classes, bench.samples)
        words = rng.permutation(np.arange(1, vocab))[:bench.classes * 6].reshape(bench.classes, 6)  # topics' own
        x = rng.choice(np.arange(1, vocab), size=(bench.samples, steps), p=frequency / frequency.sum())
        topical = rng.random((bench.samples, steps)) < 1 / 6
        x = np.where(topical, words[topics[:, None], rng.integers(0, 6, (bench.samples, steps))], x)
        lengths = rng.integers(40, steps + 1, bench.samples)
        x[np.arange(steps)[None, :] < (steps - lengths)[:, None]] = 0
        return x.astype(np.int32), np.eye(bench.classes, dtype=np.float32)[topics]
    if bench.digits_tokens:
        from sklearn.datasets import load_digits

        digits = load_digits()
        repeats = -(-bench.samples // len(digits.target))
        x = np.tile(digits.data.astype(np.int32), (repeats, 1))[:bench.samples]
        labels = np.tile(digits.target, repeats)[:bench.samples]
        return x, np.eye(bench.classes, dtype=np.float32)[labels]
    rng = np.random.default_rng(seed)
    shape = (bench.samples, *bench.shape)
    x = np.where(rng.random(shape, dtype=np.float32) < 0.2, rng.random(shape, dtype=np.float32), np.float32(0))
    flat = x.reshape(bench.samples, -1)
    if bench.pooled_labels:
        flat = np.concatenate([x.mean((1, 2)), np.square(x).mean((1, 2))], 1)
        flat = flat / flat.std(0)
    projection = rng.standard_normal((flat.shape[1], bench.classes)).astype(np.float32)
    labels = ((flat - flat.mean(0)) @ projection).argmax(1)
    if bench.raw_pixels:
        x *= 255
    return x, np.eye(bench.classes, dtype=np.float32)[labels]


def initial_weights(bench: Bench) -> list[np.ndarray]:
    """The spec's initial weights as modelspec draws them (Keras's layouts, what ms.build
    sets with seed 0): every contender starts from these, whether a backend runs the spec or not."""
    import modelspec as ms
    from modelspec.initializers import initial_weights as drawn

    spec = ms.parse(bench.spec)
    return drawn(spec, ms.check(spec), 0)


def modelspec_epoch(bench: Bench, backend: str, x: np.ndarray, y: np.ndarray, weights: list[np.ndarray],
                    **options) -> Epoch:
    """An epoch of the backend's engine, as Model.fit runs it (data prepared once, a new
    permutation each epoch), without the Model's once-per-fit input checks."""
    import modelspec as ms

    model = ms.build(bench.spec, backend=backend, **options)
    model.set_weights(weights)
    model.fit(x[:bench.batch], y[:bench.batch], epochs=0, verbose=0)  # resolves the training settings
    engine = model.engine
    prepared = engine.prepare(x, y)
    rng = np.random.default_rng(0)

    def epoch(order: np.ndarray | None) -> Result:
        totals = engine.train_epoch(prepared, rng.permutation(len(x)) if order is None else order, bench.batch)
        return totals.loss_sum / totals.count, totals.metric_sums[0] / totals.count

    return epoch


# =======================================================================================
# The MLP
# ---------------------------------------------------------------------------------------
# NumPy


def plain_mlp_epoch(x, y, weights, state, order, batch=MLP.batch, lr=1e-3, rho=0.9, momentum=0.5, eps=1e-7):
    """The epoch written the obvious way: the pixels rescaled by 1/255 (in float32, as Keras's
    Rescaling casts its scale), forward, softmax cross-entropy from the logits,
    backward (no input gradient for the first layer), Keras's RMSprop with momentum
    (epsilon inside the square root, the lr-scaled steps accumulate), in float32."""
    w1, b1, w2, b2, w3, b3 = weights
    total, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        xb, yb, n = x[idx] * np.float32(1 / 255), y[idx], len(idx)
        h1 = xb @ w1 + b1
        a2 = h1 @ w2 + b2
        h2 = np.maximum(a2, 0)
        z = h2 @ w3 + b3
        shifted = z - z.max(1, keepdims=True)
        e = np.exp(shifted)
        p = e / e.sum(1, keepdims=True)
        total += float(-(yb * (shifted - np.log(e.sum(1, keepdims=True)))).sum() / n) * n
        correct += int((p.argmax(1) == yb.argmax(1)).sum())
        dz = (p - yb) / n
        dh2 = (dz @ w3.T) * (a2 > 0)
        dh1 = dh2 @ w2.T
        grads = (xb.T @ dh1, dh1.sum(0), h1.T @ dh2, dh2.sum(0), h2.T @ dz, dz.sum(0))
        for w, g, (v, m) in zip(weights, grads, state):
            v *= rho
            v += (1 - rho) * g * g
            m *= momentum
            m += lr * g / np.sqrt(v + eps)
            w -= m
    return total / len(order), correct / len(order)


@contender(MLP, HAND["numpy"])
def numpy_mlp_hand_written(x, y, weights) -> Epoch:
    weights = [w.copy() for w in weights]
    state = [(np.zeros_like(w), np.zeros_like(w)) for w in weights]
    rng = np.random.default_rng(0)
    return lambda order: plain_mlp_epoch(x, y, weights, state, rng.permutation(len(x)) if order is None else order)


@contender(MLP, BACKEND["numpy"])
def numpy_mlp_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(MLP, "numpy", x, y, weights)


# ---------------------------------------------------------------------------------------
# PyTorch


def torch_rmsprop(slots, lr=1e-3, rho=0.9, momentum=0.5, eps=1e-7) -> None:
    """Keras's RMSprop(momentum=0.5) on every parameter, in place (torch's own puts epsilon
    outside the square root)."""
    for p, velocity, m in slots:
        velocity.mul_(rho).addcmul_(p.grad, p.grad, value=1 - rho)
        p.sub_(m.mul_(momentum).add_((p.grad * lr).div_((velocity + eps).sqrt_())))


@contender(MLP, HAND["torch"])
def torch_mlp_hand_written(x, y, weights) -> Epoch:
    """What a careful engineer writes by hand for the same math: the data as tensors,
    batches gathered by index, Keras's RMSprop rule as in-place updates per parameter,
    and the epoch's loss and accuracy accumulated as Keras reports them."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(784, 512), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():  # Keras's kernels are (in, out), torch's weights (out, in)
        for layer, kernel, bias in zip([model[0], model[1], model[3]], weights[::2], weights[1::2]):
            layer.weight.copy_(torch.from_numpy(kernel.T))
            layer.bias.copy_(torch.from_numpy(bias))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()]
    rng = np.random.default_rng(0)

    def epoch(order: np.ndarray | None) -> Result:
        order = torch.from_numpy(rng.permutation(len(x)) if order is None else order)
        loss_sum = correct = 0.0
        for start in range(0, len(order), MLP.batch):
            idx = order[start:start + MLP.batch]
            xb, yb = xt.index_select(0, idx) * (1 / 255), yt.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                torch_rmsprop(slots)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()
        return loss_sum / len(order), correct / len(order)

    return epoch


@contender(MLP, BACKEND["torch"])
def torch_mlp_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(MLP, "torch", x, y, weights, device="cpu")


# ---------------------------------------------------------------------------------------
# Keras


def keras_mlp_model():
    """specs/mnist.ms as the tutorial writes it in Keras."""
    from modelspec.backends.keras.engine import keras  # keras, without TensorFlow's start-up chatter

    layers = keras.layers
    model = keras.Sequential([keras.Input(shape=(784,)), layers.Rescaling(1 / 255), layers.Dense(512),
                              layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")],
                             name="mnist")
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.001, momentum=0.5),
                  loss="categorical_crossentropy", metrics=["categorical_accuracy"])
    return model


def keras_fit_epoch(model, x, y, batch: int) -> Epoch:
    """model.fit for one silent epoch: shuffled by Keras, or (for the agreement epoch) in the
    given order."""
    def epoch(order: np.ndarray | None) -> Result:
        if order is None:
            logs = model.fit(x, y, batch_size=batch, epochs=1, verbose=0).history
        else:
            logs = model.fit(x[order], y[order], batch_size=batch, epochs=1, shuffle=False, verbose=0).history
        return logs["loss"][0], logs["categorical_accuracy"][0]

    return epoch


@contender(MLP, HAND["keras"])
def keras_mlp_hand_written(x, y, weights) -> Epoch:
    """The tutorial's training: model.fit, one shuffled epoch per call, batch 512, silent."""
    model = keras_mlp_model()
    model.set_weights(weights)
    return keras_fit_epoch(model, x, y, MLP.batch)


@contender(MLP, BACKEND["keras"])
def keras_mlp_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(MLP, "keras", x, y, weights)


# =======================================================================================
# The CNN
# ---------------------------------------------------------------------------------------
# NumPy


def conv_forward(x, kernel, bias):
    """A valid 3x3 convolution, channels-last, as one matrix product over the im2col matrix
    (kept for the backward). kernel (kh, kw, c_in, c_out) as Keras's."""
    kh, kw, c, f = kernel.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # n, oh, ow, c, kh, kw
    cols = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))  # n, oh, ow, kh, kw, c
    out = np.tensordot(cols, kernel, axes=3) + bias
    return out, cols


def conv_backward(dy, cols, kernel, x_shape, need_dx=True):
    """(d kernel, d bias, d x) of conv_forward."""
    kh, kw, c, f = kernel.shape
    dkernel = np.tensordot(cols, dy, axes=([0, 1, 2], [0, 1, 2]))  # kh, kw, c, f
    dbias = dy.sum((0, 1, 2))
    if not need_dx:
        return dkernel, dbias, None
    dcols = np.tensordot(dy, kernel, axes=([3], [3]))  # n, oh, ow, kh, kw, c
    dx = np.zeros(x_shape, dy.dtype)
    oh, ow = dy.shape[1:3]
    for i in range(kh):
        for j in range(kw):
            dx[:, i:i + oh, j:j + ow] += dcols[:, :, :, i, j]
    return dkernel, dbias, dx


def pool_forward(x):
    """2x2 max pooling, stride 2, 'valid' (an odd last row or column is dropped); the index
    of each window's first max is kept for the backward, as TensorFlow routes the gradient."""
    n, h, w, c = x.shape
    oh, ow = h // 2, w // 2
    windows = x[:, :2 * oh, :2 * ow].reshape(n, oh, 2, ow, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, oh, ow, c, 4)
    first = windows.argmax(-1)
    return np.take_along_axis(windows, first[..., None], -1)[..., 0], first


def pool_backward(dy, first, x_shape):
    n, oh, ow, c = dy.shape
    dwindows = np.zeros((n, oh, ow, c, 4), dy.dtype)
    np.put_along_axis(dwindows, first[..., None], dy[..., None], -1)
    dx = np.zeros(x_shape, dy.dtype)
    dx[:, :2 * oh, :2 * ow] = dwindows.reshape(n, oh, ow, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(
        n, 2 * oh, 2 * ow, c)
    return dx


class NumpyAdam:
    """Keras's Adam: epsilon on the uncorrected sqrt(v), the step's scalars in float32."""

    def __init__(self, params, lr=1e-3, beta_1=0.9, beta_2=0.999, eps=1e-7):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta_1, beta_2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        f = np.float32
        alpha = self.lr * np.sqrt(1 - f(self.b2) ** f(self.t)) / (1 - f(self.b1) ** f(self.t))
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (g - m) * (1 - self.b1)
            v += (g * g - v) * (1 - self.b2)
            p -= m * alpha / (np.sqrt(v) + self.eps)


def plain_cnn_epoch(x, y, weights, adam, order, batch=CNN.batch):
    k1, b1, k2, b2, w3, b3 = weights
    total, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        xb, yb, n = x[idx], y[idx], len(idx)
        a1, cols1 = conv_forward(xb, k1, b1)
        h1 = np.maximum(a1, 0)
        p1, first1 = pool_forward(h1)
        a2, cols2 = conv_forward(p1, k2, b2)
        h2 = np.maximum(a2, 0)
        p2, first2 = pool_forward(h2)
        flat = p2.reshape(n, -1)  # channels-last order, as Keras flattens
        z = flat @ w3 + b3
        shifted = z - z.max(1, keepdims=True)
        e = np.exp(shifted)
        p = e / e.sum(1, keepdims=True)
        total += float(-(yb * (shifted - np.log(e.sum(1, keepdims=True)))).sum() / n) * n
        correct += int((p.argmax(1) == yb.argmax(1)).sum())
        dz = (p - yb) / n
        dw3, db3 = flat.T @ dz, dz.sum(0)
        dp2 = (dz @ w3.T).reshape(p2.shape)
        da2 = pool_backward(dp2, first2, h2.shape) * (a2 > 0)
        dk2, db2, dp1 = conv_backward(da2, cols2, k2, p1.shape)
        da1 = pool_backward(dp1, first1, h1.shape) * (a1 > 0)
        dk1, db1, _ = conv_backward(da1, cols1, k1, xb.shape, need_dx=False)
        adam.step((dk1, db1, dk2, db2, dw3, db3))
    return total / len(order), correct / len(order)


@contender(CNN, HAND["numpy"])
def numpy_cnn_hand_written(x, y, weights) -> Epoch:
    weights = [w.copy() for w in weights]
    adam = NumpyAdam(weights)
    rng = np.random.default_rng(0)
    return lambda order: plain_cnn_epoch(x, y, weights, adam, rng.permutation(len(x)) if order is None else order)


@contender(CNN, BACKEND["numpy"])
def numpy_cnn_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(CNN, "numpy", x, y, weights)


# ---------------------------------------------------------------------------------------
# PyTorch


def torch_image_epochs(model, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """The hand-written PyTorch epoch of an image model: the data channels-first once (then
    torch_epochs)."""
    import torch

    return torch_epochs(model, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y, batch)


def torch_epochs(model, xt, y: np.ndarray, batch: int, lr: float = 1e-3, adam=None) -> Epoch:
    """The hand-written PyTorch epoch: the data as tensors, batches gathered by index_select,
    cross-entropy on the logits, Keras's Adam in place (torch_adam, or `adam`) on the
    parameters that train."""
    import torch
    import torch.nn.functional as F

    yt = torch.from_numpy(y)
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(0)
    step = 0

    def epoch(order: np.ndarray | None) -> Result:
        nonlocal step
        order = torch.from_numpy(rng.permutation(len(xt)) if order is None else order)
        loss_sum = correct = 0.0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            model.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            with torch.no_grad():
                (adam or torch_adam)(slots, step, lr)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()
        return loss_sum / len(order), correct / len(order)

    return epoch


def torch_adam(slots, t: int, lr=1e-3, beta_1=0.9, beta_2=0.999, eps=1e-7) -> None:
    """Keras's Adam on every parameter, in place: m and v move toward g and g² by lerp,
    epsilon is added to the uncorrected sqrt(v) (torch's own adds it to the corrected one)."""
    alpha = lr * (1 - beta_2 ** t) ** 0.5 / (1 - beta_1 ** t)
    for p, m, v in slots:
        m.lerp_(p.grad, 1 - beta_1)
        v.lerp_(p.grad * p.grad, 1 - beta_2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha)


@contender(CNN, HAND["torch"])
def torch_cnn_hand_written(x, y, weights) -> Epoch:
    """The CNN channels-first, as torch code is written: the dataset converted to NCHW once,
    the dense layer's rows permuted once from Keras's channels-last flatten order."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 10))
    k1, b1, k2, b2, w3, b3 = weights
    dense = w3.reshape(5, 5, 32, 10).transpose(2, 0, 1, 3).reshape(800, 10)  # rows (h, w, c) -> (c, h, w)
    with torch.no_grad():
        for param, value in zip(model.parameters(), [k1.transpose(3, 2, 0, 1), b1, k2.transpose(3, 2, 0, 1), b2,
                                                     dense.T, b3]):
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return torch_image_epochs(model, x, y, CNN.batch)


@contender(CNN, BACKEND["torch"])
def torch_cnn_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(CNN, "torch", x, y, weights, device="cpu")


# ---------------------------------------------------------------------------------------
# Keras


def keras_cnn_model():
    """benchmarks/cnn.ms as one writes it in Keras."""
    from modelspec.backends.keras.engine import keras

    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(16, 3, activation="relu", kernel_initializer="he_normal"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu", kernel_initializer="he_normal"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    ], name="bench_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="categorical_crossentropy",
                  metrics=["categorical_accuracy"])
    return model


@contender(CNN, HAND["keras"])
def keras_cnn_hand_written(x, y, weights) -> Epoch:
    model = keras_cnn_model()
    model.set_weights(weights)
    return keras_fit_epoch(model, x, y, CNN.batch)


@contender(CNN, BACKEND["keras"])
def keras_cnn_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(CNN, "keras", x, y, weights)


# =======================================================================================
# The residual CNN (a graph)
# ---------------------------------------------------------------------------------------
# NumPy


def same_conv_forward(x, kernel, bias):
    """A 'same' 3x3 convolution, stride 1: a border of one zero pixel, then conv_forward."""
    return conv_forward(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, bias)


def same_conv_backward(dy, cols, kernel, x_shape, need_dx=True):
    n, h, w, c = x_shape
    dkernel, dbias, dxp = conv_backward(dy, cols, kernel, (n, h + 2, w + 2, c), need_dx)
    return dkernel, dbias, None if dxp is None else dxp[:, 1:-1, 1:-1]


def batchnorm_forward(x, gamma, beta, eps=1e-3):
    """Training mode: the batch's mean and biased variance over every axis but channels."""
    mean = x.mean((0, 1, 2))
    variance = np.square(x - mean).mean((0, 1, 2))
    inv_std = 1 / np.sqrt(variance + eps)
    x_hat = (x - mean) * inv_std
    return x_hat * gamma + beta, (x_hat, inv_std, mean, variance)


def batchnorm_backward(dy, gamma, cache):
    x_hat, inv_std = cache[:2]
    m = dy.size // dy.shape[-1]
    dgamma, dbeta = (dy * x_hat).sum((0, 1, 2)), dy.sum((0, 1, 2))
    return dgamma, dbeta, (gamma * inv_std / m) * (m * dy - dbeta - x_hat * dgamma)


def plain_resnet_epoch(x, y, weights, adam, order, batch=None, momentum=0.99):
    """The graph written out: a stem conv, two residual blocks (conv relu, conv, batchnorm,
    add the block's input, relu), global average pooling and the dense softmax; the
    backward adds the two gradients of each block's input (its conv and its add); Keras's
    Adam, then batchnorm's moving statistics, as Keras's train step orders them."""
    batch = batch or RESNET.batch
    k0, c0 = weights[:2]
    blocks = [weights[2:10], weights[10:18]]  # conv, conv, batchnorm (gamma, beta, moving mean, variance)
    w, b = weights[18:]
    total, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        xb, yb, n = x[idx], y[idx], len(idx)
        a0, cols0 = same_conv_forward(xb, k0, c0)
        h = np.maximum(a0, 0)
        kept = []
        for ka, ca, kb, cb, gamma, beta, _, _ in blocks:
            a1, cols1 = same_conv_forward(h, ka, ca)
            r1 = np.maximum(a1, 0)
            a2, cols2 = same_conv_forward(r1, kb, cb)
            normed, cache = batchnorm_forward(a2, gamma, beta)
            s = normed + h
            kept.append((h, a1, r1, cols1, cols2, cache, s))
            h = np.maximum(s, 0)
        pooled = h.mean((1, 2))
        z = pooled @ w + b
        shifted = z - z.max(1, keepdims=True)
        e = np.exp(shifted)
        p = e / e.sum(1, keepdims=True)
        total += float(-(yb * (shifted - np.log(e.sum(1, keepdims=True)))).sum() / n) * n
        correct += int((p.argmax(1) == yb.argmax(1)).sum())
        dz = (p - yb) / n
        grads = [pooled.T @ dz, dz.sum(0)]
        dh = np.broadcast_to(((dz @ w.T) / (h.shape[1] * h.shape[2]))[:, None, None, :], h.shape)
        for (ka, ca, kb, cb, gamma, *_), (h_in, a1, r1, cols1, cols2, cache, s) in zip(blocks[::-1], kept[::-1]):
            ds = dh * (s > 0)
            dgamma, dbeta, da2 = batchnorm_backward(ds, gamma, cache)
            dkb, dcb, dr1 = same_conv_backward(da2, cols2, kb, r1.shape)
            dka, dca, dh_in = same_conv_backward(dr1 * (a1 > 0), cols1, ka, h_in.shape)
            dh = dh_in + ds  # the block's input feeds its first conv and its add
            grads = [dka, dca, dkb, dcb, dgamma, dbeta] + grads
        dk0, dc0, _ = same_conv_backward(dh * (a0 > 0), cols0, k0, xb.shape, need_dx=False)
        adam.step([dk0, dc0] + grads)
        for (*_, moving_mean, moving_variance), (*_, cache, _) in zip(blocks, kept):
            mean, variance = cache[2:]
            moving_mean[...] = moving_mean * momentum + mean * (1 - momentum)
            moving_variance[...] = moving_variance * momentum + variance * (1 - momentum)
    return total / len(order), correct / len(order)


def trainable(weights):
    """The resnet's trainable weights, without batchnorm's moving statistics (6, 7, 14, 15)."""
    return [w for i, w in enumerate(weights) if i not in (8, 9, 16, 17)]


@contender(RESNET, HAND["numpy"])
def numpy_resnet_hand_written(x, y, weights) -> Epoch:
    weights = [w.copy() for w in weights]
    adam = NumpyAdam(trainable(weights))
    rng = np.random.default_rng(0)
    return lambda order: plain_resnet_epoch(x, y, weights, adam, rng.permutation(len(x)) if order is None else order)


@contender(RESNET, BACKEND["numpy"])
def numpy_resnet_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(RESNET, "numpy", x, y, weights)


# ---------------------------------------------------------------------------------------
# PyTorch


@contender(RESNET, HAND["torch"])
def torch_resnet_hand_written(x, y, weights) -> Epoch:
    """The graph as a torch module, channels-first as torch code is written: the dataset
    converted to NCHW once, symmetric padding 1 (TensorFlow's 'same' for 3x3, stride 1),
    BatchNorm2d with Keras's epsilon and momentum (torch's momentum is 1 - Keras's; its
    moving variance is the unbiased one, which the training loss never reads)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv():
        return nn.Conv2d(8, 8, 3, padding=1)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.blocks = nn.ModuleList(nn.ModuleDict({"conv1": conv(), "conv2": conv(),
                                                       "bn": nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)})
                                        for _ in range(2))
            self.dense = nn.Linear(8, 10)

        def forward(self, x):
            h = F.relu(self.stem(x))
            for block in self.blocks:
                h = F.relu(block["bn"](block["conv2"](F.relu(block["conv1"](h)))) + h)
            return self.dense(h.mean((2, 3)))

    model = ResNet()
    kernels = {0, 2, 4, 10, 12}
    with torch.no_grad():  # parameters in Keras's trainable order; buffers for the moving statistics
        for param, (i, value) in zip(model.parameters(), [(i, w) for i, w in enumerate(weights)
                                                          if i not in (8, 9, 16, 17)]):
            value = value.transpose(3, 2, 0, 1) if i in kernels else value.T if i == 18 else value
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        for block, first in zip(model.blocks, (8, 16)):
            block["bn"].running_mean.copy_(torch.from_numpy(weights[first]))
            block["bn"].running_var.copy_(torch.from_numpy(weights[first + 1]))
    return torch_image_epochs(model, x, y, RESNET.batch)


@contender(RESNET, BACKEND["torch"])
def torch_resnet_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(RESNET, "torch", x, y, weights, device="cpu")


# =======================================================================================
# The digits as tokens: embedding, conv1d, max pooling
# ---------------------------------------------------------------------------------------
# NumPy


def plain_tokens_epoch(x, y, weights, adam, order, batch=TOKENS.batch):
    """The model written out: the embedding as a row lookup, the valid conv1d as one matrix
    product over the (step, window) im2col matrix, max pooling of pairs (the first of a tie
    takes the gradient, as TensorFlow's), flatten in (step, channel) order as Keras does;
    the embedding's gradient summed per id with bincount, and Keras's Adam on it (see
    IdsAdam: the second moment takes the sum of the squared rows per id)."""
    table, kernel, c_bias, w, b = weights
    k, d, f = kernel.shape
    vocab = table.shape[0]
    kernel2d = kernel.reshape(k * d, f)  # a view: Adam's in-place steps reach it
    total, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        ids, yb, n = x[idx], y[idx], len(idx)
        e = table[ids]  # n, T, d
        steps = ids.shape[1] - k + 1
        cols = np.lib.stride_tricks.sliding_window_view(e, k, axis=1)  # n, steps, d, k
        cols = np.ascontiguousarray(cols.transpose(0, 1, 3, 2)).reshape(n * steps, k * d)
        a = (cols @ kernel2d + c_bias).reshape(n, steps, f)
        h = np.maximum(a, 0)
        even, odd = h[:, 0:2 * (steps // 2):2], h[:, 1:2 * (steps // 2):2]
        first = even >= odd
        pooled = np.where(first, even, odd)  # n, steps // 2, f
        flat = pooled.reshape(n, -1)
        z = flat @ w + b
        shifted = z - z.max(1, keepdims=True)
        ez = np.exp(shifted)
        p = ez / ez.sum(1, keepdims=True)
        total += float(-(yb * (shifted - np.log(ez.sum(1, keepdims=True)))).sum() / n) * n
        correct += int((p.argmax(1) == yb.argmax(1)).sum())
        dz = (p - yb) / n
        dw, db = flat.T @ dz, dz.sum(0)
        dpooled = (dz @ w.T).reshape(pooled.shape)
        dh = np.zeros_like(h)
        dh[:, 0:2 * (steps // 2):2] = np.where(first, dpooled, 0)
        dh[:, 1:2 * (steps // 2):2] = np.where(first, 0, dpooled)
        da = (dh * (a > 0)).reshape(n * steps, f)
        dkernel, dc_bias = (cols.T @ da).reshape(k, d, f), da.sum(0)
        dcols = (da @ kernel2d.T).reshape(n, steps, k, d)
        de = np.zeros_like(e)
        for j in range(k):
            de[:, j:j + steps] += dcols[:, :, j]
        flat_ids, flat_de = ids.reshape(-1), de.reshape(-1, d)
        dtable = np.stack([np.bincount(flat_ids, flat_de[:, c], vocab) for c in range(d)], 1).astype(np.float32)
        squares = np.stack([np.bincount(flat_ids, flat_de[:, c] ** 2, vocab) for c in range(d)], 1).astype(np.float32)
        adam.step((dtable, dkernel, dc_bias, dw, db), {0: squares})
    return total / len(order), correct / len(order)


class IdsAdam(NumpyAdam):
    """Keras's Adam where an embedding's gradient is TensorFlow's IndexedSlices, one row per
    occurrence of an id: the first moment moves toward the rows summed per id (ops.subtract
    densifies them, keras/src/backend/tensorflow/sparse.py, elementwise_binary_union), but
    ops.square squares each row before they are summed (elementwise_unary), so the second
    moment moves toward the sum of the squared rows, not the square of their sum
    (keras/src/optimizers/adam.py, update_step). `squares` holds those sums by weight index."""

    def step(self, grads, squares=None):
        self.t += 1
        f = np.float32
        alpha = self.lr * np.sqrt(1 - f(self.b2) ** f(self.t)) / (1 - f(self.b1) ** f(self.t))
        for i, (p, g, m, v) in enumerate(zip(self.params, grads, self.m, self.v)):
            m += (g - m) * (1 - self.b1)
            v += ((g * g if i not in (squares or {}) else squares[i]) - v) * (1 - self.b2)
            p -= m * alpha / (np.sqrt(v) + self.eps)


@contender(TOKENS, HAND["numpy"])
def numpy_tokens_hand_written(x, y, weights) -> Epoch:
    weights = [w.copy() for w in weights]
    adam = IdsAdam(weights, lr=0.005)
    rng = np.random.default_rng(0)
    return lambda order: plain_tokens_epoch(x, y, weights, adam, rng.permutation(len(x)) if order is None else order)


@contender(TOKENS, BACKEND["numpy"])
def numpy_tokens_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(TOKENS, "numpy", x, y, weights)


# ---------------------------------------------------------------------------------------
# PyTorch


@contender(TOKENS, HAND["torch"])
def torch_tokens_hand_written(x, y, weights) -> Epoch:
    """The model as torch code is written: nn.Embedding, nn.Conv1d channels-first (the
    embedded batch transposed to (N, C, T)), F.max_pool1d, flatten, nn.Linear, whose rows are
    permuted once from Keras's (step, channel) flatten order to torch's (channel, step); the
    ids as int64 once."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(17, 4, sparse=True)  # its grad: one row per occurrence
            self.conv = nn.Conv1d(4, 16, 9)
            self.dense = nn.Linear(28 * 16, 10)

        def forward(self, ids):
            h = self.embedding(ids).transpose(1, 2)
            h = F.max_pool1d(F.relu(self.conv(h)), 2)
            return self.dense(h.flatten(1))

    model = Tokens()
    table, kernel, c_bias, w, b = weights
    dense = w.reshape(28, 16, 10).transpose(1, 0, 2).reshape(448, 10)  # rows (t, c) -> (c, t)
    with torch.no_grad():
        for param, value in zip(model.parameters(), [table, kernel.transpose(2, 1, 0), c_bias, dense.T, b]):
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return torch_epochs(model, torch.from_numpy(x.astype(np.int64)), y, TOKENS.batch, lr=0.005, adam=torch_ids_adam)


def torch_ids_adam(slots, t: int, lr=1e-3, beta_1=0.9, beta_2=0.999, eps=1e-7) -> None:
    """torch_adam, with Keras's rule for an embedding's gradient (see IdsAdam): the sparse
    gradient's rows summed per id for the first moment, their squares summed for the second."""
    import torch

    alpha = lr * (1 - beta_2 ** t) ** 0.5 / (1 - beta_1 ** t)
    for p, m, v in slots:
        g = p.grad
        if g.is_sparse:
            ids, rows = g._indices()[0], g._values()  # uncoalesced: one row per occurrence
            g, squares = g.to_dense(), torch.zeros_like(v).index_add_(0, ids, rows * rows)
        else:
            squares = g * g
        m.lerp_(g, 1 - beta_1)
        v.lerp_(squares, 1 - beta_2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha)


@contender(TOKENS, BACKEND["torch"])
def torch_tokens_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(TOKENS, "torch", x, y, weights, device="cpu")


# ---------------------------------------------------------------------------------------
# Keras


@contender(TOKENS, HAND["keras"])
def keras_tokens_hand_written(x, y, weights) -> Epoch:
    """benchmarks/tokens.ms as one writes it in Keras, trained with model.fit."""
    from modelspec.backends.keras.engine import keras

    layers = keras.layers
    model = keras.Sequential([keras.Input(shape=(64,), dtype="int32"), layers.Embedding(17, 4),
                              layers.Conv1D(16, 9, activation="relu"), layers.MaxPooling1D(2), layers.Flatten(),
                              layers.Dense(10, activation="softmax")], name="bench_tokens")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.005), loss="categorical_crossentropy",
                  metrics=["categorical_accuracy"])
    model.set_weights(weights)
    return keras_fit_epoch(model, x, y, TOKENS.batch)


@contender(TOKENS, BACKEND["keras"])
def keras_tokens_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(TOKENS, "keras", x, y, weights)

# =======================================================================================
# Texts: embedding, LSTM, dense
# ---------------------------------------------------------------------------------------
# NumPy


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def plain_lstm_epoch(x, y, weights, adam, order, batch=LSTM.batch):
    """The model written out: the embedding as a row lookup, the LSTM's input product for all
    steps at once, then the step loop (Keras's gates i, f, c, o; zero initial state), softmax
    cross-entropy on the last output; backpropagation through time, the recurrent kernel's
    gradient as one product over all steps; the embedding's gradient summed per id with
    bincount, and Keras's Adam (IdsAdam: the second moment takes the sum of the squared rows
    per id)."""
    table, kernel, recurrent, bias, w, b = weights
    vocab, d = table.shape
    u = recurrent.shape[0]
    total, correct = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        ids, yb, n = x[idx], y[idx], len(idx)
        steps = ids.shape[1]
        e = table[ids]  # n, T, d
        xw = (e.reshape(n * steps, d) @ kernel + bias).reshape(n, steps, 4 * u)
        gates = np.empty((n, steps, 4 * u), np.float32)  # i, f, g, o after their activations
        hs = np.zeros((n, steps + 1, u), np.float32)  # hs[:, t] is the state before step t
        cs = np.zeros((n, steps + 1, u), np.float32)
        for t in range(steps):
            z = xw[:, t] + hs[:, t] @ recurrent
            g = gates[:, t]
            g[:, :2 * u] = sigmoid(z[:, :2 * u])
            g[:, 2 * u:3 * u] = np.tanh(z[:, 2 * u:3 * u])
            g[:, 3 * u:] = sigmoid(z[:, 3 * u:])
            cs[:, t + 1] = g[:, u:2 * u] * cs[:, t] + g[:, :u] * g[:, 2 * u:3 * u]
            hs[:, t + 1] = g[:, 3 * u:] * np.tanh(cs[:, t + 1])
        h = hs[:, steps]
        logits = h @ w + b
        shifted = logits - logits.max(1, keepdims=True)
        ez = np.exp(shifted)
        p = ez / ez.sum(1, keepdims=True)
        total += float(-(yb * (shifted - np.log(ez.sum(1, keepdims=True)))).sum() / n) * n
        correct += int((p.argmax(1) == yb.argmax(1)).sum())
        dlogits = (p - yb) / n
        dw, db = h.T @ dlogits, dlogits.sum(0)
        dh = dlogits @ w.T
        dc = np.zeros((n, u), np.float32)
        dz = np.empty((n, steps, 4 * u), np.float32)
        for t in range(steps - 1, -1, -1):
            g = gates[:, t]
            i_, f_, g_, o_ = g[:, :u], g[:, u:2 * u], g[:, 2 * u:3 * u], g[:, 3 * u:]
            tanh_c = np.tanh(cs[:, t + 1])
            dc = dc + dh * o_ * (1 - tanh_c * tanh_c)
            step = dz[:, t]
            step[:, :u] = dc * g_ * i_ * (1 - i_)
            step[:, u:2 * u] = dc * cs[:, t] * f_ * (1 - f_)
            step[:, 2 * u:3 * u] = dc * i_ * (1 - g_ * g_)
            step[:, 3 * u:] = dh * tanh_c * o_ * (1 - o_)
            dc = dc * f_
            dh = step @ recurrent.T
        flat_dz = dz.reshape(n * steps, 4 * u)
        drecurrent = hs[:, :steps].reshape(n * steps, u).T @ flat_dz
        dkernel, dbias = e.reshape(n * steps, d).T @ flat_dz, flat_dz.sum(0)
        de = flat_dz @ kernel.T
        flat_ids = ids.reshape(-1)
        dtable = np.stack([np.bincount(flat_ids, de[:, c], vocab) for c in range(d)], 1).astype(np.float32)
        squares = np.stack([np.bincount(flat_ids, de[:, c] ** 2, vocab) for c in range(d)], 1).astype(np.float32)
        adam.step((dtable, dkernel, drecurrent, dbias, dw, db), {0: squares})
    return total / len(order), correct / len(order)


@contender(LSTM, HAND["numpy"])
def numpy_lstm_hand_written(x, y, weights) -> Epoch:
    weights = [w.copy() for w in weights]
    adam = IdsAdam(weights, lr=0.005)
    rng = np.random.default_rng(0)
    return lambda order: plain_lstm_epoch(x, y, weights, adam, rng.permutation(len(x)) if order is None else order)


@contender(LSTM, BACKEND["numpy"])
def numpy_lstm_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(LSTM, "numpy", x, y, weights)


# ---------------------------------------------------------------------------------------
# PyTorch


@contender(LSTM, HAND["torch"])
def torch_lstm_hand_written(x, y, weights) -> Epoch:
    """The model as torch code is written: nn.Embedding (sparse, for Keras's Adam rule on it),
    nn.LSTM(batch_first=True) and its last step's output, nn.Linear. Keras's LSTM has one bias
    where nn.LSTM has two: bias_ih takes it, bias_hh stays 0 and out of the optimizer."""
    import torch
    from torch import nn

    class Texts(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(32, 32, sparse=True)  # its grad: one row per occurrence
            self.lstm = nn.LSTM(32, 64, batch_first=True)
            self.dense = nn.Linear(64, 4)

        def forward(self, ids):
            out, _ = self.lstm(self.embedding(ids))
            return self.dense(out[:, -1])

    model = Texts()
    table, kernel, recurrent, bias, w, b = weights
    with torch.no_grad():
        model.lstm.bias_hh_l0.zero_()
        model.lstm.bias_hh_l0.requires_grad_(False)  # no gradient, no optimizer slots
        trained = [model.embedding.weight, model.lstm.weight_ih_l0, model.lstm.weight_hh_l0, model.lstm.bias_ih_l0,
                   model.dense.weight, model.dense.bias]
        for param, value in zip(trained, [table, kernel.T, recurrent.T, bias, w.T, b]):
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return torch_epochs(model, torch.from_numpy(x.astype(np.int64)), y, LSTM.batch, lr=0.005, adam=torch_ids_adam)


@contender(LSTM, BACKEND["torch"])
def torch_lstm_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(LSTM, "torch", x, y, weights, device="cpu")


# ---------------------------------------------------------------------------------------
# Keras


@contender(LSTM, HAND["keras"])
def keras_lstm_hand_written(x, y, weights) -> Epoch:
    """benchmarks/lstm.ms as one writes it in Keras, trained with model.fit."""
    from modelspec.backends.keras.engine import keras

    layers = keras.layers
    model = keras.Sequential([keras.Input(shape=(100,), dtype="int32"), layers.Embedding(32, 32), layers.LSTM(64),
                              layers.Dense(4, activation="softmax")], name="bench_lstm")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.005), loss="categorical_crossentropy",
                  metrics=["categorical_accuracy"])
    model.set_weights(weights)
    return keras_fit_epoch(model, x, y, LSTM.batch)


@contender(LSTM, BACKEND["keras"])
def keras_lstm_backend(x, y, weights) -> Epoch:
    return modelspec_epoch(LSTM, "keras", x, y, weights)


# =======================================================================================


def keras_whole_fits(bench: Bench, x: np.ndarray, y: np.ndarray, epochs: int, rounds: int) -> None:
    """ms Model.fit(epochs=N) against Keras's model.fit(epochs=N), end to end: what a user
    waits for, once-per-fit costs included (modelspec's input checks and data preparation,
    Keras's data pipeline and callbacks)."""
    import modelspec as ms

    if bench not in (MLP, CNN):
        print(f"\n{bench.name}: no hand-written Keras model to time whole fits against")
        return
    model = ms.build(bench.spec, backend="keras")
    native = keras_mlp_model() if bench is MLP else keras_cnn_model()
    fits = {"keras, modelspec Model.fit": lambda: model.fit(x, y, batch_size=bench.batch, epochs=epochs,
                                                            validation_split=0.0, verbose=0),
            "keras, hand-written model.fit": lambda: native.fit(x, y, batch_size=bench.batch, epochs=epochs,
                                                                verbose=0)}
    times: dict[str, list[float]] = {name: [] for name in fits}
    model.fit(x[:bench.batch], y[:bench.batch], epochs=1, validation_split=0.0, verbose=0)  # tracing is not training
    native.fit(x[:bench.batch], y[:bench.batch], batch_size=bench.batch, epochs=1, verbose=0)
    for _ in range(rounds):
        for name, fit in fits.items():
            start = time.perf_counter()
            fit()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    paired = statistics.median(a / b for a, b in zip(*times.values()))
    print(f"\n{bench.name}: whole fits of {epochs} epochs, median of {rounds}:")
    for name, median in medians.items():
        print(f"  {name:<30}  {median:7.2f}s")
    print(f"  ratio: {medians['keras, modelspec Model.fit'] / medians['keras, hand-written model.fit']:.3f}"
          f"  paired: {paired:.3f}")


# ---------------------------------------------------------------------------------------
# The report


def machine() -> dict[str, str]:
    """What the figures depend on: the date, CPU, cores, load and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = [f"numpy {np.__version__}"]
    try:
        import threadpoolctl

        versions += [f"numpy's BLAS {i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpoolctl.threadpool_info()
                     if i["user_api"] == "blas" and "numpy" in i.get("filepath", "")]
    except ImportError:
        pass
    for module in ("torch", "tensorflow", "keras"):
        version = getattr(sys.modules.get(module), "__version__", None)
        versions.append(f"{module} {version or 'not installed'}")
    if getattr(sys.modules.get("torch"), "__version__", None):
        versions.append(f"torch threads {sys.modules['torch'].get_num_threads()}")
    if getattr(sys.modules.get("tensorflow"), "__version__", None):
        intra = sys.modules["tensorflow"].config.threading.get_intra_op_parallelism_threads()
        versions.append(f"tensorflow intra-op threads {intra or 'default (one per core)'}")
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "cpu": f"{cpu}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "libraries": ", ".join(versions)}


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def framework(name: str) -> str:
    return name.split(",")[0]


def agreement(results: dict[str, Result], markdown: bool) -> tuple[list[str], bool]:
    """One epoch from the same weights in the same order: every row's loss against the
    numpy backend's and against its own framework's backend. (lines, whether all agree)"""
    base = results.get(AGREEMENT_REFERENCE)
    lines = []
    rows = [("contender", "epoch-1 loss", "accuracy", "vs numpy backend", "vs own backend", "")]
    worst = 0.0
    for name, (loss, acc) in results.items():
        diffs = []
        for ref in (AGREEMENT_REFERENCE, BACKEND[framework(name)]):
            if ref in results and ref != name:
                diffs.append(abs(loss - results[ref][0]) / abs(results[ref][0]))
            else:
                diffs.append(None)
        known = [d for d in diffs if d is not None]
        worst = max([worst, *known])
        verdict = "" if not known else ("agrees" if max(known) <= AGREEMENT_TOLERANCE else "DIFFERS")
        rows.append((name, f"{loss:.7f}", f"{acc:.5f}", *("-" if d is None else f"{d:.1e}" for d in diffs), verdict))
    lines += table(rows, markdown, align="lrrrrl")
    if base is not None:
        lines += ["", f"relative loss differences, tolerance {AGREEMENT_TOLERANCE:g}: largest {worst:.1e}"]
    return lines, worst <= AGREEMENT_TOLERANCE


def table(rows: list[tuple[str, ...]], markdown: bool, align: str) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |",
               "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
        return out + ["| " + " | ".join(row) + " |" for row in rows[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if a == "l" else cell.rjust(w) for cell, w, a in zip(row, widths, align)).rstrip()
            for row in rows]


def timing(times: dict[str, list[float]], cpu: dict[str, list[float]], markdown: bool) -> list[str]:
    rows = [("contender", "median", "min", "cpu", "/ own hand", "paired", "/ torch hand", "paired")]
    for name, ts in times.items():
        cells = [name, f"{statistics.median(ts) * 1000:.1f} ms", f"{min(ts) * 1000:.1f} ms",
                 f"{statistics.median(cpu[name]) * 1000:.0f} ms"]
        for base in (HAND[framework(name)], REFERENCE):
            if base in times:
                cells += [f"{ratio(times, name, base):.3f}", f"{paired(times, name, base):.3f}"]
            else:
                cells += ["-", "-"]
        rows.append(tuple(cells))
    return table(rows, markdown, align="lrrrrrrr")


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(times[name]) / statistics.median(times[base])


def paired(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(t / r for t, r in zip(times[name], times[base]))


# (row, baseline, most, issue): the targets the issues set, by model
TARGETS = {"mlp": [(BACKEND["numpy"], HAND["numpy"], 1.10, "issue 3"),
                   (BACKEND["numpy"], HAND["torch"], 1.00, "issue 3"),
                   (BACKEND["torch"], HAND["torch"], 1.05, "issue 5"),
                   (BACKEND["keras"], HAND["keras"], 1.05, "issue 6")],
           "resnet": [(BACKEND["numpy"], HAND["numpy"], 1.20, "issue 13"),
                      (BACKEND["torch"], HAND["torch"], 1.05, "issue 13")],
           "tokens": [(BACKEND["numpy"], HAND["numpy"], 1.10, "issue 14"),
                      (BACKEND["torch"], HAND["torch"], 1.05, "issue 14")],
           "lstm": [(BACKEND["numpy"], HAND["numpy"], 1.10, "issue 15"),
                    (BACKEND["torch"], HAND["torch"], 1.05, "issue 15")]}


def targets(bench: Bench, times: dict[str, list[float]], markdown: bool) -> list[str]:
    rows = [("target", "ratio", "paired", "at most", "", "")]
    for name, base, most, issue in TARGETS.get(bench.name, []):
        if name in times and base in times:
            p = paired(times, name, base)
            rows.append((f"{name} / {base}", f"{ratio(times, name, base):.3f}", f"{p:.3f}", f"{most:.2f}",
                         "met" if p <= most else f"NOT MET (+{(p / most - 1):.0%})", issue))
    return table(rows, markdown, align="lrrrll") if len(rows) > 1 else []


def run(bench: Bench, args: argparse.Namespace) -> bool:
    """The agreement epoch and the timed rounds of one model; False if a row disagrees."""
    from modelspec.backends import BackendError
    from modelspec.diagnostics import SpecError

    names = [n for n in CONTENDERS[bench.name] if not args.only or any(w in n for w in args.only.split(","))]
    x, y = data(bench)
    weights = initial_weights(bench)
    epochs: dict[str, Epoch] = {}
    for name in names:
        try:
            epochs[name] = CONTENDERS[bench.name][name](x, y, weights)
        except (ImportError, BackendError) as e:  # a framework that is not installed
            print(f"skipped {name}: {e}", file=sys.stderr)
        except SpecError as e:  # a backend without a layer kind the model uses, so far
            print(f"skipped {name}: {str(e).splitlines()[0]}", file=sys.stderr)
    heading = (f"{bench.name}: {bench.spec.relative_to(ROOT)}, {bench.samples:,} samples of "
               f"{'x'.join(map(str, bench.shape))}, batch {bench.batch}, "
               + ("the agreement epoch only" if args.verify else f"{args.rounds} round{'s' * (args.rounds != 1)}"))
    print(f"\n{'### ' if args.markdown else ''}{heading}\n")
    print(f"load average at start: {load()}\n")

    # The agreement epoch, also the warm-up: first-call costs (tracing, allocation) are not an epoch's.
    order = np.random.default_rng(1).permutation(bench.samples)
    results = {name: epoch(order) for name, epoch in epochs.items()}
    print("one epoch from the same initial weights, in the same order:\n")
    lines, agreed = agreement(results, args.markdown)
    print("\n".join(lines) + "\n")
    if args.verify:
        return agreed

    times: dict[str, list[float]] = {name: [] for name in epochs}
    cpu: dict[str, list[float]] = {name: [] for name in epochs}
    running = list(epochs)
    for r in range(args.rounds):
        for name in running[r % len(running):] + running[:r % len(running)]:  # each round, another goes first
            start, start_cpu = time.perf_counter(), time.process_time()
            epochs[name](None)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(f"epoch times, {args.rounds} interleaved round{'s' * (args.rounds != 1)} (cpu: the process's CPU time, all threads; ratios: "
          "of medians, and paired = median of per-round ratios):\n")
    print("\n".join(timing(times, cpu, args.markdown)) + "\n")
    lines = targets(bench, times, args.markdown)
    if lines:
        print("targets (judged on the paired ratio):\n")
        print("\n".join(lines) + "\n")
    print(f"load average at end: {load()}")
    if args.keras_fit:
        keras_whole_fits(bench, x, y, args.keras_fit, max(1, args.rounds // 2))
    return agreed


def limit_threads(n: int) -> None:
    """One thread count for every framework: BLAS (numpy), torch, TensorFlow."""
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(n)
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS keeps its threads", file=sys.stderr)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        from modelspec.backends.keras.engine import tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except (ImportError, RuntimeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*BENCHES, "all"], default="mlp", help="which model (default mlp)")
    parser.add_argument("--rounds", type=int, default=7, help="timed epochs per contender (default 7)")
    parser.add_argument("--only", help="comma-separated words: run the contenders whose names contain one")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="limit numpy's BLAS, torch and TensorFlow to N threads each (default: theirs)")
    parser.add_argument("--keras-fit", type=int, default=0, metavar="N",
                        help="also time whole N-epoch fits: modelspec's Model.fit against Keras's model.fit")
    parser.add_argument("--verify", action="store_true",
                        help="only the agreement epoch (same weights, same order): no timing")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads:
        limit_threads(args.threads)
    try:  # imported now, so that the header names their versions
        import torch  # noqa: F401
    except ImportError:
        pass
    try:
        from modelspec.backends.keras.engine import keras  # noqa: F401
    except ImportError:
        pass
    info = machine()
    if args.markdown:
        print("\n".join(f"- {key}: {value}" for key, value in info.items()))
    else:
        print("\n".join(f"{key:<10}{value}" for key, value in info.items()))
    agreed = [run(BENCHES[name], args) for name in (BENCHES if args.model == "all" else [args.model])]
    if not all(agreed):
        print("\nA contender's loss differs from the backends': its times compare different work.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
