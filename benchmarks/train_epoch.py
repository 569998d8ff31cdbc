"""One training epoch of the tutorial's MNIST MLP, in each backend and by hand.

    python benchmarks/train_epoch.py [--rounds 7] [--only torch]

The model is specs/mnist.ms: 784-512-64-10, RMSprop(learning_rate=0.001, momentum=0.5),
categorical cross-entropy on the softmax's logits, categorical accuracy, batch 512, on
60,000 MNIST-shaped random float32 samples (one-hot labels), shuffled every epoch.

Each contender is one function: it sets up (outside the timing) and returns a function
that runs one epoch. Rounds interleave the contenders, so a busy machine slows them
alike; the table shows each one's median epoch time, its ratio to the hand-written
PyTorch loop, and the median of the per-round ratios ("paired": the two epochs of a round
ran under the same load, which steadies the figure on a shared machine). Add a row by
writing a function and decorating it with @contender.

The Keras rows: "keras, hand-written model.fit" calls the tutorial's model.fit for one
epoch per round, so each round also pays fit()'s once-per-call setup; --keras-fit N adds
whole N-epoch fits on both sides, setup included once, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "mnist.ms"
SAMPLES, FEATURES, CLASSES, BATCH = 60_000, 784, 10, 512
REFERENCE = "torch, hand-written loop"

Epoch = Callable[[], None]
CONTENDERS: dict[str, Callable[[np.ndarray, np.ndarray], Epoch]] = {}


def contender(name: str):
    def register(setup: Callable[[np.ndarray, np.ndarray], Epoch]):
        CONTENDERS[name] = setup
        return setup
    return register


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((SAMPLES, FEATURES), dtype=np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, SAMPLES)]
    return x, y


def modelspec_epoch(backend: str, x: np.ndarray, y: np.ndarray, **options) -> Epoch:
    """An epoch of the backend's engine, as Model.fit runs it (data prepared once, a new
    permutation each epoch), without the Model's once-per-fit input checks."""
    import modelspec as ms

    model = ms.build(SPEC, backend=backend, **options)
    model.fit(x[:BATCH], y[:BATCH], epochs=0, verbose=0)  # resolves the training settings
    engine = model.engine
    prepared = engine.prepare(x, y)
    rng = np.random.default_rng(0)
    return lambda: engine.train_epoch(prepared, rng.permutation(len(x)), BATCH)


# ---------------------------------------------------------------------------------------
# PyTorch


@contender(REFERENCE)
def torch_hand_written(x: np.ndarray, y: np.ndarray) -> Epoch:
    """What a careful engineer writes by hand for the same math: the data as tensors,
    batches gathered by index, Keras's RMSprop rule as in-place updates per parameter,
    and the epoch's loss and accuracy accumulated as Keras reports them."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(torch.get_num_threads())
    model = nn.Sequential(nn.Linear(FEATURES, 512), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()]
    rng = np.random.default_rng(0)

    def epoch() -> None:
        order = torch.from_numpy(rng.permutation(len(x)))
        loss_sum = correct = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p, velocity, momentum in slots:  # Keras's RMSprop(rho=0.9, momentum=0.5, epsilon=1e-7)
                    velocity.mul_(0.9).addcmul_(p.grad, p.grad, value=0.1)
                    p.sub_(momentum.mul_(0.5).add_((p.grad * 0.001).div_((velocity + 1e-7).sqrt_())))
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()

    return epoch


@contender("torch, modelspec backend")
def torch_backend(x: np.ndarray, y: np.ndarray) -> Epoch:
    return modelspec_epoch("torch", x, y, device="cpu")


# ---------------------------------------------------------------------------------------
# Keras

KERAS_REFERENCE = "keras, hand-written model.fit"
# rows also compared with the hand-written code of their own framework
BASELINES = {"keras, modelspec backend": KERAS_REFERENCE}


def keras_hand_written_model():
    """specs/mnist.ms as the tutorial writes it in Keras."""
    from modelspec.backends.keras.engine import keras  # keras, without TensorFlow's start-up chatter

    layers = keras.layers
    model = keras.Sequential([keras.Input(shape=(FEATURES,)), layers.Dense(512), layers.Dense(64, activation="relu"),
                              layers.Dense(CLASSES, activation="softmax")], name="mnist")
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.001, momentum=0.5),
                  loss="categorical_crossentropy", metrics=["categorical_accuracy"])
    return model


@contender(KERAS_REFERENCE)
def keras_hand_written(x: np.ndarray, y: np.ndarray) -> Epoch:
    """The tutorial's training: model.fit, one shuffled epoch per call, batch 512, silent."""
    model = keras_hand_written_model()
    return lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


@contender("keras, modelspec backend")
def keras_backend(x: np.ndarray, y: np.ndarray) -> Epoch:
    return modelspec_epoch("keras", x, y)


def keras_whole_fits(x: np.ndarray, y: np.ndarray, epochs: int, rounds: int) -> None:
    """ms Model.fit(epochs=N) against Keras's model.fit(epochs=N), end to end: what a user
    waits for, once-per-fit costs included (modelspec's input checks and data preparation,
    Keras's data pipeline and callbacks)."""
    import modelspec as ms

    model = ms.build(SPEC, backend="keras")
    native = keras_hand_written_model()
    fits = {"keras, modelspec Model.fit": lambda: model.fit(x, y, epochs=epochs, validation_split=0.0, verbose=0),
            "keras, hand-written model.fit": lambda: native.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)}
    times: dict[str, list[float]] = {name: [] for name in fits}
    model.fit(x[:BATCH], y[:BATCH], epochs=1, verbose=0)  # warm-up: tracing is not training
    native.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)
    for _ in range(rounds):
        for name, fit in fits.items():
            start = time.perf_counter()
            fit()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\nwhole fits of {epochs} epochs, median of {rounds}:")
    for name, median in medians.items():
        print(f"  {name:<30}  {median:7.2f}s")
    print(f"  ratio: {medians['keras, modelspec Model.fit'] / medians['keras, hand-written model.fit']:.3f}")


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="epochs per contender (default 7)")
    parser.add_argument("--only", help="comma-separated words: run the contenders whose names contain one")
    parser.add_argument("--keras-fit", type=int, default=0, metavar="N",
                        help="also time whole N-epoch fits: modelspec's Model.fit against Keras's model.fit")
    args = parser.parse_args(argv)
    from modelspec.backends import BackendError

    names = [n for n in CONTENDERS if not args.only or any(w in n for w in args.only.split(","))]
    x, y = data()
    epochs: dict[str, Epoch] = {}
    for name in names:
        try:
            epochs[name] = CONTENDERS[name](x, y)
        except (ImportError, BackendError) as e:  # a framework that is not installed
            print(f"skipped {name}: {e}", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in epochs}
    for name, epoch in epochs.items():  # warm-up: first-call costs are not an epoch's
        epoch()
    for _ in range(args.rounds):
        for name, epoch in epochs.items():
            start = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(times[REFERENCE]) if REFERENCE in times else None
    width = max(map(len, times), default=10)
    print(f"{'contender':<{width}}  {'median epoch':>12}  {'min':>8}  {'ratio':>6}  {'paired':>6}")
    for name, ts in times.items():
        median = statistics.median(ts)
        ratio = f"{median / reference:6.3f}" if reference else "     -"
        paired = (f"{statistics.median(t / r for t, r in zip(ts, times[REFERENCE])):6.3f}" if reference
                  else "     -")
        print(f"{name:<{width}}  {median * 1000:10.1f}ms  {min(ts) * 1000:6.1f}ms  {ratio}  {paired}")
    for name, base in BASELINES.items():
        if name in times and base in times:
            print(f"{name} / {base}: {statistics.median(times[name]) / statistics.median(times[base]):.3f}")
    if args.keras_fit:
        keras_whole_fits(x, y, args.keras_fit, max(1, args.rounds // 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
