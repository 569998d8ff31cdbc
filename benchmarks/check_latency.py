"""How long `modelspec check` takes, against the language's targets.

    .venv/bin/python benchmarks/check_latency.py [--runs 11] [--markdown]

1. Wall time of `modelspec check` run as a user runs it (a fresh process, its output
   discarded, the package's bytecode compiled as an installed package has it): on the tutorial's MNIST spec (target 0.25 s) and on a generated
   10,000-layer spec (target 2 s) and on a residual network of 1,000 block uses (4,002
   layers, target 1 s). The median of --runs runs, after one warm-up run, with
   the CPU time it used: on a busy machine the wall time grows, the CPU time does not.
2. How parse + check grow with the number of layers, in one process (100 to 10,000 layers):
   the time per layer should stay flat.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "specs" / "mnist.ms"
TARGETS = {"mnist": 0.25, "10,000 layers": 2.0, "1,000 block uses": 1.0}  # seconds, on the project's 2-core machine
BLOCK = ("dense 64 relu he_normal", "batchnorm", "dropout 0.1")  # repeated to make deep specs


def deep_spec(layers: int) -> str:
    lines = ["model deep", "input 64"] + [BLOCK[i % len(BLOCK)] for i in range(layers - 1)] + ["dense 10 softmax"]
    return "\n".join(lines) + "\n"


def block_spec(uses: int) -> str:
    """A residual network of `uses` uses of one block: every layer a graph node."""
    lines = ["model blocks", "input 16x16x8", "block residual(filters) {",
             "  conv2d filters 3x3 relu padding=same", "  conv2d filters 3x3 padding=same", "  add in", "  relu",
             "}"] + ["residual 8"] * uses + ["globalavgpool2d", "dense 10 softmax"]
    return "\n".join(lines) + "\n"


def command() -> list[str]:
    """The installed `modelspec` script beside this Python, else `python -m modelspec`."""
    script = Path(sys.executable).with_name("modelspec")
    if script.exists():
        return [str(script)]
    found = shutil.which("modelspec")
    return [found] if found else [sys.executable, "-m", "modelspec"]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compile_sources() -> None:
    """modelspec's bytecode, as a user's command finds it. An installed package has it compiled;
    an editable install gets it on first import, unless PYTHONDONTWRITEBYTECODE is set (as on
    some CI machines), when every start would compile modelspec's sources again (~70 ms for
    check, ~170 ms for export). Compile them once, as pip would."""
    import compileall

    for package in ("modelspec", "backends", "grammar"):
        compileall.compile_dir(ROOT / package, quiet=1)


def wall_time(args: list[str], runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `modelspec check ARGS`, output discarded. CPU time shows
    what the wall time would be on an idle machine; fails loudly on a bad exit."""
    walls, cpus = [], []
    for i in range(runs + 1):
        cpu, start = child_cpu(), time.perf_counter()
        done = subprocess.run([*command(), "check", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed, used = time.perf_counter() - start, child_cpu() - cpu
        if done.returncode != 0:
            sys.exit(f"modelspec check {' '.join(args)} exited {done.returncode}:\n{done.stderr.decode()}")
        if i:  # the first run warms the file cache and lark's grammar cache
            walls.append(elapsed)
            cpus.append(used)
    return statistics.median(walls), statistics.median(cpus)


def in_process(layers: int, runs: int) -> float:
    import modelspec as ms

    text = deep_spec(layers)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        ms.check(ms.parse(text))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(rows: list[tuple[str, ...]], markdown: bool) -> str:
    """Rows as aligned text (the first column left, the others right), or as Markdown."""
    if markdown:
        return "\n".join(["| " + " | ".join(rows[0]) + " |", "|:---" + "|---:" * (len(rows[0]) - 1) + "|"]
                         + ["| " + " | ".join(row) + " |" for row in rows[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()
                     for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs per measurement (median); default 11")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args(argv)
    runs = args.runs
    compile_sources()

    print(f"\n{'### ' if args.markdown else ''}modelspec check as a subprocess ({' '.join(command())}), median of "
          f"{runs} runs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    rows = [("spec", "wall s", "cpu s", "target s", "of target", "")]
    with tempfile.TemporaryDirectory() as tmp:
        deep = Path(tmp) / "deep.ms"
        deep.write_text(deep_spec(10_000))
        blocks = Path(tmp) / "blocks.ms"
        blocks.write_text(block_spec(1_000))
        for name, spec_args in (("mnist", [str(MNIST)]), ("10,000 layers", [str(deep)]),
                                ("1,000 block uses", [str(blocks)])):
            seconds, cpu = wall_time(spec_args, runs)
            target = TARGETS[name]
            rows.append((name, f"{seconds:.3f}", f"{cpu:.3f}", f"{target:.2f}", f"{seconds / target:.0%}",
                         "ok" if seconds <= target else "OVER"))
    print(table(rows, args.markdown))

    print(f"\nparse + check in one process, median of {max(3, runs // 2)} runs\n")
    rows = [("layers", "seconds", "us/layer", "x 100 layers")]
    in_process(100, 1)  # load the grammar and the IR classes once, outside the timings
    base = None
    for layers in (100, 1_000, 10_000):
        seconds = in_process(layers, max(3, runs // 2))
        base = base or seconds
        rows.append((f"{layers:,}", f"{seconds:.4f}", f"{seconds / layers * 1e6:.1f}", f"{seconds / base:.1f}"))
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
