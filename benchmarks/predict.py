"""Prediction speed on the CPU: the onnx backend (onnxruntime) next to the torch and numpy
backends, side by side in one run, and the time to export the MNIST MLP (issue 17).

    .venv/bin/python benchmarks/predict.py [--model mlp|cnn|all] [--rounds 7] [--threads N] [--markdown]

For each model (mlp: specs/mnist.ms, 784-512-64-10; cnn: specs/cnn.ms, two conv2d 3x3 with max
pooling, 28x28x1), every backend is built with the same weights and first checked against the
numpy backend's predictions (1e-5 relative: max |error| / max |value|). Then --rounds rounds
interleave the backends, a different one first each round, each measuring through
Model.predict, as a user calls it:

- batch-1 latency: CALLS predictions of one sample each; the median call, over every round;
- batch-512 throughput: SAMPLES samples predicted with batch_size=512; the median round's
  samples per second.

Ratios are to the torch backend and to the numpy backend, of the medians. Export: the MNIST
MLP with its weights to a .onnx file in this process (model_proto, checked, serialized and
written; the median of --rounds), and `modelspec export` as a user runs it (a fresh process).
--threads N gives every framework N threads (onnxruntime's intra-op threads, torch's, and
the BLAS's that numpy uses); by default each takes its own default (one per core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"mlp": ROOT / "specs" / "mnist.ms", "cnn": ROOT / "specs" / "cnn.ms"}
BACKENDS = ("onnx", "torch", "numpy")
CALLS = 50  # batch-1 predictions per round
SAMPLES = {"mlp": 8192, "cnn": 2048}  # per round, in batches of 512
BATCH = 512
TOLERANCE = 1e-5
EXPORT_TARGET = 1.0  # seconds: issue 17's "export of the MNIST MLP in under a second"


def table(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    print(f"\n{title}\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def build(name: str, threads: int | None) -> dict:
    import numpy as np

    import modelspec as ms

    spec = ms.parse(MODELS[name])
    models = {}
    for backend in BACKENDS:
        options = {"threads": threads} if backend == "onnx" and threads else {}
        models[backend] = ms.build(spec, backend=backend, seed=0, **options)
    weights = models["numpy"].get_weights()
    for model in models.values():
        model.set_weights(weights)
    rng = np.random.default_rng(0)
    shape = models["numpy"].input_shape[1:]
    # raw pixels in [0, 255): each spec rescales its own input; a fifth of them lit, as MNIST's
    x = (rng.random((SAMPLES[name], *shape)) * 255 * (rng.random((SAMPLES[name], *shape)) < 0.2)).astype(np.float32)
    return {"models": models, "x": x}


def verify(name: str, run: dict, markdown: bool) -> bool:
    import numpy as np

    x = run["x"][:BATCH + 3]
    truth = run["models"]["numpy"].predict(x, batch_size=BATCH)
    rows, ok = [], True
    for backend, model in run["models"].items():
        got = model.predict(x, batch_size=BATCH)
        single = model.predict(x[:1], batch_size=1)
        error = max(float(np.abs(got - truth).max()), float(np.abs(single - truth[:1]).max())) / float(
            np.abs(truth).max())
        ok &= error <= TOLERANCE
        rows.append([backend, f"{error:.1e}", "agrees" if error <= TOLERANCE else "DIFFERS"])
    table(f"{name}: predictions against the numpy backend's (batch 1 and {BATCH}; tolerance {TOLERANCE:g})",
          ["backend", "max rel error", ""], rows, markdown)
    return ok


def measure(name: str, run: dict, rounds: int) -> dict[str, dict[str, list[float]]]:
    out = {b: {"latency": [], "throughput": []} for b in BACKENDS}
    x, one = run["x"], run["x"][:1]
    for backend, model in run["models"].items():  # warm-up: sessions, threads, caches
        model.predict(one, batch_size=1)
        model.predict(x[:BATCH], batch_size=BATCH)
    for r in range(rounds):
        order = BACKENDS[r % len(BACKENDS):] + BACKENDS[:r % len(BACKENDS)]
        for backend in order:
            model = run["models"][backend]
            for _ in range(CALLS):
                start = time.perf_counter()
                model.predict(one, batch_size=1)
                out[backend]["latency"].append(time.perf_counter() - start)
            start = time.perf_counter()
            model.predict(x, batch_size=BATCH)
            out[backend]["throughput"].append(len(x) / (time.perf_counter() - start))
    return out


def report(name: str, times: dict, rounds: int, markdown: bool) -> None:
    latency = {b: statistics.median(t["latency"]) * 1e3 for b, t in times.items()}
    throughput = {b: statistics.median(t["throughput"]) for b, t in times.items()}
    rows = [[b, f"{latency[b]:.3f} ms", f"{latency[b] / latency['torch']:.3f}", f"{latency[b] / latency['numpy']:.3f}",
             f"{throughput[b]:,.0f}/s", f"{throughput[b] / throughput['torch']:.3f}",
             f"{throughput[b] / throughput['numpy']:.3f}"] for b in BACKENDS]
    table(f"{name}: Model.predict on the CPU, {rounds} interleaved rounds (latency: median of {CALLS * rounds} "
          f"batch-1 calls; throughput: median round of {SAMPLES[name]:,} samples in batches of {BATCH})",
          ["backend", "batch-1 latency", "/ torch", "/ numpy", "batch-512 throughput", "/ torch", "/ numpy"],
          rows, markdown)


def export_times(rounds: int, markdown: bool) -> None:
    import modelspec as ms
    from modelspec.backends.onnx.export import export

    model = ms.build(MODELS["mlp"], backend="numpy", seed=0)
    weights = model.get_weights()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mnist.onnx"
        inside = []
        for _ in range(rounds + 1):
            start = time.perf_counter()
            export(model.spec, model.report, weights, path)
            inside.append(time.perf_counter() - start)
        inside = inside[1:]  # the first imports and warms onnx's checker
        size = path.stat().st_size
        from check_latency import compile_sources

        compile_sources()
        script = Path(sys.executable).with_name("modelspec")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "modelspec"]
        # interleaved with `modelspec check` of the same spec: the start-up both pay (Python,
        # modelspec, parsing and checking), which says how fast this machine is right now
        outside, check = [], []
        for _ in range(rounds):
            for words, times in ((["export", str(MODELS["mlp"]), "-o", str(Path(folder) / "cli.onnx")], outside),
                                 (["check", str(MODELS["mlp"])], check)):
                start = time.perf_counter()
                done = subprocess.run([*command, *words], capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    sys.exit(f"modelspec {words[0]} exited {done.returncode}:\n{done.stderr}")
    rows = [["in this process (export: build, check, write)", f"{statistics.median(inside):.3f} s",
             f"{EXPORT_TARGET:g} s", "met" if statistics.median(inside) <= EXPORT_TARGET else "MISSED"],
            ["`modelspec export specs/mnist.ms -o FILE` (a fresh process)", f"{statistics.median(outside):.3f} s",
             f"{EXPORT_TARGET:g} s", "met" if statistics.median(outside) <= EXPORT_TARGET else "MISSED"],
            ["for reference: `modelspec check specs/mnist.ms` (a fresh process)", f"{statistics.median(check):.3f} s",
             "", ""]]
    table(f"export of the MNIST MLP ({size / 1e6:.2f} MB), median of {rounds}", ["how", "seconds", "target", ""],
          rows, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, metavar="N", help="threads for every framework (default: its own)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args(argv)
    if args.threads:  # before numpy loads its BLAS
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    import onnxruntime
    import torch

    print(f"load average at start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}; onnxruntime "
          f"{onnxruntime.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs")
    ok = True
    for name in (MODELS if args.model == "all" else [args.model]):
        run = build(name, args.threads)
        ok &= verify(name, run, args.markdown)
        report(name, measure(name, run, args.rounds), args.rounds, args.markdown)
    export_times(args.rounds, args.markdown)
    print(f"\nload average at end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
