"""Speed of the numpy engine on the tutorial's MNIST MLP (784-512-64-10, RMSprop with
momentum 0.5, batch 512): an epoch must cost at most 1.1x a plain hand-written NumPy loop
doing the same math, and no more than the same model in PyTorch on CPU.

Timed as CPU time on one BLAS thread, best of three: wall-clock time on a shared machine
measures the neighbours more than the code."""

from __future__ import annotations

import time

import numpy as np
import pytest

import modelspec as ms
from modelspec.backends.base import LossConfig, MetricConfig, TrainConfig
from modelspec.backends.numpy import NumpyEngine

threadpoolctl = pytest.importorskip("threadpoolctl")

N, BATCH = 20_000, 512
HYPER = {"learning_rate": 1e-3, "rho": 0.9, "momentum": 0.5, "epsilon": 1e-7, "centered": False,
         "weight_decay": None}


@pytest.fixture(scope="module")
def mnist_like():
    rng = np.random.default_rng(0)
    x = rng.random((N, 784), dtype=np.float32)
    labels = rng.integers(0, 10, N)
    return x, labels, np.eye(10, dtype=np.float32)[labels]


def plain_epoch(x, y, weights, state, order, lr=1e-3, rho=0.9, momentum=0.5, eps=1e-7):
    """The same epoch written the obvious way: forward, softmax cross-entropy from the
    logits, backward (no input gradient for the first layer), RMSprop with momentum."""
    w1, b1, w2, b2, w3, b3 = weights
    total, correct = 0.0, 0
    for i in range(0, len(order), BATCH):
        idx = order[i:i + BATCH]
        xb, yb, n = x[idx], y[idx], len(idx)
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
    return total / len(order), correct


def best_cpu_time(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.slow
def test_mnist_epoch_costs_no_more_than_a_plain_loop_or_torch(mnist_like):
    x, labels, y = mnist_like
    spec = ms.parse("dense 512 in 784\ndense 64 relu\ndense 10 softmax")
    engine = NumpyEngine(spec, ms.check(spec), seed=0)
    engine.set_training(TrainConfig("rmsprop", HYPER, LossConfig("categorical_crossentropy", True),
                                    (MetricConfig("categorical_accuracy", "categorical_accuracy"),)))
    data = engine.prepare(x, y)
    weights = engine.get_weights()
    state = [(np.zeros_like(w), np.zeros_like(w)) for w in weights]
    order = np.arange(N)
    with threadpoolctl.threadpool_limits(1):
        # the same numbers first: the engine's first epoch is the plain loop's
        totals = engine.train_epoch(data, order, BATCH)
        loss, correct = plain_epoch(x, y, weights, state, order)
        assert totals.loss_sum / totals.count == pytest.approx(loss, rel=1e-5)
        assert totals.metric_sums[0] == correct
        ours = best_cpu_time(lambda: engine.train_epoch(data, order, BATCH))
        plain = best_cpu_time(lambda: plain_epoch(x, y, weights, state, order))
        assert ours <= 1.1 * plain, f"engine {ours:.3f}s, plain NumPy {plain:.3f}s per epoch"
        torch_time = _torch_epoch_time(x, labels, order)
    if torch_time is not None:
        assert ours <= torch_time, f"engine {ours:.3f}s, PyTorch {torch_time:.3f}s per epoch"


def _torch_epoch_time(x, labels, order):
    try:
        import torch
    except ImportError:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tx, tl = torch.from_numpy(x), torch.from_numpy(labels)
        model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.Linear(512, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 10))
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, momentum=0.5, eps=1e-7)

        def epoch():
            for i in range(0, len(order), BATCH):
                idx = torch.from_numpy(order[i:i + BATCH])
                opt.zero_grad()
                out = model(tx[idx])
                loss = torch.nn.functional.cross_entropy(out, tl[idx])
                loss.backward()
                opt.step()
                loss.item()
                (out.argmax(1) == tl[idx]).sum().item()

        return best_cpu_time(epoch)
    finally:
        torch.set_num_threads(threads)
