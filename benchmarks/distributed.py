"""Data-parallel training on the CPU: epochs per second of the tutorial's MNIST MLP with 1 and
2 gloo workers, and the time of the all-reduce each step adds, side by side in one run.

    .venv/bin/python benchmarks/distributed.py [--rounds 5] [--samples 60000] [--markdown]

Model and data as train_epoch.py's mlp: specs/mnist.ms (784-512-64-10, RMSprop with momentum,
batch 512, the spec's 20% validation), on 60,000 MNIST-like random images (train_epoch.data:
no download), trained with the torch backend through the library, as `modelspec train` does.

Rows, each in fresh processes started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; `ms.build(..., distributed=True)`):

- 1 process, torch's own thread count (what `modelspec train` runs);
- 1 process, OMP_NUM_THREADS=cores/2: a worker's share of the machine;
- 2 workers, OMP_NUM_THREADS=cores/2 each (as `--nproc 2` and torchrun set it).

Each row times a warm-up epoch, then --rounds epochs (Model.fit(epochs=1) each, the workers
starting it together after a barrier), and reports the median: epochs per second, its ratio to
the first row, the steps per epoch. The 2-worker row then times the all-reduce alone, on a
flat float32 tensor of the model's parameter count (what the engine's one all-reduce per step
carries, gradients plus the loss and metric sums: a few floats more), and how much of an
epoch those steps' all-reduces take. The rows run one after the other, twice, in the order
1, 1/2, 2, 2, 1/2, 1 (a machine whose load drifts shifts them alike), and each row's figure is
the median of its two runs' medians.

What a 2-core machine shows: the all-reduce's cost, and that the N-worker path is correct and
how much it costs in the same threads. It cannot show a speed-up: two workers on two cores
split the cores that one process's threads use already, so the best they can do is break even.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def worker(rounds: int, samples: int) -> None:
    """One process of a row: prints (rank 0) a JSON line of its epoch times, and for a world of
    several the all-reduce times."""
    import dataclasses

    import torch

    import modelspec as ms
    from train_epoch import MLP, data

    bench = dataclasses.replace(MLP, samples=samples)
    x, y = data(bench)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = ms.build(bench.spec, backend="torch", distributed=True if world > 1 else None)
    if world > 1:
        import torch.distributed as dist

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    model.fit(x, y, epochs=1, verbose=0)  # warm-up
    times = []
    for _ in range(rounds):
        barrier()
        start = time.perf_counter()
        model.fit(x, y, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    result = {"epoch": times, "threads": torch.get_num_threads(),
              "steps": -(-int(len(x) * 0.8) // 512), "params": model.report.total_params}
    if world > 1:
        flat = torch.zeros(model.report.total_params, dtype=torch.float32)
        for _ in range(5):
            dist.all_reduce(flat)
        reduce_times = []
        for _ in range(50):
            barrier()
            start = time.perf_counter()
            dist.all_reduce(flat)
            reduce_times.append(time.perf_counter() - start)
        result["all_reduce"] = reduce_times
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def row(world: int, threads: int | None, rounds: int, samples: int) -> dict:
    """A row's processes, started as torchrun starts them; rank 0's result."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK")}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--rounds", str(rounds),
                                       "--samples", str(samples)], env=env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker of the {world}-process row failed")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rounds, args.samples)
        return
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    rows = {"1 process": (1, None), f"1 process, {half} thread(s)": (1, half),
            f"2 workers, {half} thread(s) each": (2, half)}
    names = list(rows)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for name in names + names[::-1]:
        world, threads = rows[name]
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        results[name].append(row(world, threads, args.rounds, args.samples))
    print(f"# Data-parallel training, MNIST MLP ({args.samples:,} samples, batch 512), torch backend, gloo")
    print(f"# {datetime.date.today()}, {platform.machine()}, {cores} cores, Python {platform.python_version()}, "
          f"torch {__import__('torch').__version__}")
    base = statistics.median(statistics.median(r["epoch"]) for r in results[names[0]])
    table = []
    for name in names:
        epoch = statistics.median(statistics.median(r["epoch"]) for r in results[name])
        table.append((name, str(results[name][0]["threads"]), f"{epoch:.3f}", f"{1 / epoch:.3f}",
                      f"{base / epoch:.2f}x"))
    header = ("row", "threads per process", "epoch (s, median)", "epochs/s", "speed vs 1 process")
    _print(header, table, args.markdown)
    two = results[names[2]]
    reduce = statistics.median(statistics.median(r["all_reduce"]) for r in two)
    steps, params = two[0]["steps"], two[0]["params"]
    epoch = statistics.median(statistics.median(r["epoch"]) for r in two)
    print()
    _print(("all-reduce", "floats", "time per step (ms, median)", "steps per epoch", "share of a 2-worker epoch"),
           [("gradients, 2 gloo workers", f"{params:,}", f"{reduce * 1e3:.2f}", str(steps),
             f"{reduce * steps / epoch:.1%}")], args.markdown)


def _print(header: tuple, rows: list[tuple], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
