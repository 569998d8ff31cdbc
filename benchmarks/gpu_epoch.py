"""One training epoch of the tutorial's MNIST MLP on a CUDA GPU: the torch backend against
three hand-written PyTorch loops, and the backend's loss curve on the GPU against the CPU's.

    python benchmarks/gpu_epoch.py [--rounds 20] [--curve-epochs 3]

The model is specs/mnist.ms (784-512-64-10, Keras's RMSprop(learning_rate=0.001,
momentum=0.5), categorical cross-entropy on the softmax's logits, categorical accuracy),
batch 512, on 60,000 MNIST-shaped random float32 samples, shuffled every epoch, float32
throughout (no TF32). Contenders, each timed from a synchronised start to a synchronised
end of an epoch:

- the modelspec torch backend on CUDA (the data on the device, the step captured in a CUDA
  graph, no host synchronisation until the epoch's end);
- a hand-written loop over a DataLoader (batches copied to the GPU each step);
- the same loop with the data kept on the GPU and batches gathered there;
- a hand-captured CUDA graph of the training step, replayed once per batch.

The hand-written loops read the loss and accuracy back every step, as such loops usually
do; the graph reads them back once per epoch. Needs torch with CUDA, numpy and modelspec
(`pip install -e .` from the repository root).
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
LR, RHO, MOMENTUM, EPSILON = 0.001, 0.9, 0.5, 1e-7


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((SAMPLES, FEATURES), dtype=np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, SAMPLES)]
    return x, y


def mlp(weights: list[np.ndarray], device):
    """The hand-written model, with the backend's initial weights (Keras layout -> torch)."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(FEATURES, 512), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    with torch.no_grad():
        for layer, (kernel, bias) in zip([model[0], model[1], model[3]], zip(weights[::2], weights[1::2])):
            layer.weight.copy_(torch.from_numpy(kernel.T))
            layer.bias.copy_(torch.from_numpy(bias))
    return model.to(device)


def rmsprop_step(slots) -> None:
    """Keras's RMSprop(momentum=0.5) on every parameter, in place."""
    for p, velocity, momentum in slots:
        velocity.mul_(RHO).addcmul_(p.grad, p.grad, value=1 - RHO)
        p.sub_(momentum.mul_(MOMENTUM).add_((p.grad * LR).div_((velocity + EPSILON).sqrt_())))


Epoch = Callable[[], None]


def backend(x, y, weights) -> Epoch:
    import modelspec as ms

    model = ms.build(SPEC, backend="torch", device="cuda")
    model.set_weights(weights)
    model.fit(x[:BATCH], y[:BATCH], epochs=0, verbose=0)  # resolves the training settings
    engine = model.engine
    prepared = engine.prepare(x, y)
    rng = np.random.default_rng(0)
    return lambda: engine.train_epoch(prepared, rng.permutation(len(x)), BATCH)


def dataloader_loop(x, y, weights) -> Epoch:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    model = mlp(weights, "cuda")
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()]
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=BATCH, shuffle=True)

    def epoch() -> None:
        loss_sum = correct = 0.0
        for xb, yb in loader:
            xb, yb = xb.cuda(), yb.cuda()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                rmsprop_step(slots)
            loss_sum += loss.item() * len(xb)
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()

    return epoch


def device_loop(x, y, weights) -> Epoch:
    import torch
    import torch.nn.functional as F

    model = mlp(weights, "cuda")
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()]
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def epoch() -> None:
        order = torch.randperm(len(xt), device="cuda")
        loss_sum = correct = 0.0
        for start in range(0, len(xt), BATCH):
            idx = order[start:start + BATCH]
            xb, yb = xt[idx], yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                rmsprop_step(slots)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()

    return epoch


def captured_graph(x, y, weights) -> Epoch:
    """The step captured by hand (full batches; the last, partial batch runs eagerly)."""
    import torch
    import torch.nn.functional as F

    model = mlp(weights, "cuda")
    params = list(model.parameters())
    slots = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    full = len(xt) // BATCH
    order = torch.zeros(len(xt), dtype=torch.int64, device="cuda")
    step = torch.zeros(1, dtype=torch.int64, device="cuda")
    sums = torch.zeros(2, device="cuda")

    def train_step(idx) -> None:
        xb, yb = xt[idx], yt[idx]
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.grad = g
            rmsprop_step(slots)
            sums.add_(torch.stack([loss * len(idx), (logits.argmax(1) == yb.argmax(1)).sum()]))

    def full_step() -> None:
        train_step(order[: full * BATCH].view(full, BATCH).index_select(0, step).view(-1))
        step.add_(1)

    # warm up on a side stream (this moves the weights a little: it is a benchmark), then capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            full_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        full_step()

    def epoch() -> None:
        order.copy_(torch.randperm(len(xt), device="cuda"))
        step.zero_()
        sums.zero_()
        for _ in range(full):
            graph.replay()
        if len(xt) > full * BATCH:
            train_step(order[full * BATCH:])
        sums.tolist()

    return epoch


CONTENDERS = {
    "modelspec torch backend (CUDA graph)": backend,
    "hand-written loop, DataLoader": dataloader_loop,
    "hand-written loop, data on the GPU": device_loop,
    "hand-captured CUDA graph": captured_graph,
}


def timed(epoch: Epoch) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def curve(x, y, weights, epochs: int) -> None:
    """The backend's per-epoch history on the GPU and on the CPU, from the same weights and
    the same shuffled orders."""
    import modelspec as ms

    histories = {}
    for device in ("cuda", "cpu"):
        model = ms.build(SPEC, backend="torch", device=device)
        model.set_weights(weights)
        histories[device] = model.fit(x, y, epochs=epochs, batch_size=BATCH, validation_split=0.0, seed=0,
                                      verbose=0).history
    print(f"\nloss curve over {epochs} epochs, the same weights and batch orders:")
    for key in histories["cpu"]:
        gpu, cpu = np.array(histories["cuda"][key]), np.array(histories["cpu"][key])
        rel = np.max(np.abs(gpu - cpu) / np.maximum(np.abs(cpu), 1e-12))
        print(f"  {key:<22} cuda {np.array2string(gpu, precision=6)}  cpu {np.array2string(cpu, precision=6)}"
              f"  max relative difference {rel:.2e}")


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed epochs per contender (default 20)")
    parser.add_argument("--curve-epochs", type=int, default=3, help="epochs of the GPU/CPU curve comparison")
    parser.add_argument("--only", help="comma-separated words: run the contenders whose names contain one")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_epoch.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # float32, as the backend computes
    torch.backends.cudnn.allow_tf32 = False
    import modelspec as ms

    x, y = data()
    weights = ms.build(SPEC, backend="numpy", seed=0).get_weights()
    names = [n for n in CONTENDERS if not args.only or any(w in n for w in args.only.split(","))]
    epochs = {name: CONTENDERS[name](x, y, weights) for name in names}
    for epoch in epochs.values():  # first-call costs (capture, cuBLAS, allocator) are not an epoch's
        for _ in range(2):
            timed(epoch)
    times: dict[str, list[float]] = {name: [] for name in epochs}
    for _ in range(args.rounds):
        for name, epoch in epochs.items():
            times[name].append(timed(epoch))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.rounds} epochs each, batch {BATCH}")
    reference = statistics.median(times["hand-captured CUDA graph"]) if "hand-captured CUDA graph" in times else None
    width = max(map(len, times))
    print(f"{'contender':<{width}}  {'median epoch':>12}  {'min':>9}  {'vs hand graph':>13}")
    for name, ts in times.items():
        median = statistics.median(ts)
        ratio = f"{median / reference:13.2f}" if reference else f"{'-':>13}"
        print(f"{name:<{width}}  {median * 1000:10.1f}ms  {min(ts) * 1000:7.1f}ms  {ratio}")
    if args.curve_epochs:
        curve(x, y, weights, args.curve_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
