"""Every benchmark in one go, as `make bench` runs it.

    .venv/bin/python benchmarks/run_all.py [--quick] [--markdown] [--threads N]

1. train_epoch.py --model all: an epoch of the tutorial's MNIST MLP and of the small CNN
   (benchmarks/cnn.ms) in each backend, next to hand-written NumPy, PyTorch and Keras code
   doing the same math, with ratios and the issues' targets;
2. check_latency.py: `modelspec check` latency (targets 0.25 s and 2 s) and how parse and
   check time grow with the number of layers;
3. predict.py: prediction latency and throughput of the onnx, torch and numpy backends, and
   the export of the MNIST MLP to ONNX (target 1 s);
4. distributed.py: an epoch of the MNIST MLP in one process and in 2 gloo workers, and the
   all-reduce per step.

Each runs in its own process with this Python, one after the other, so that one's threads
never compete with the other's. --quick: fewer rounds and runs (a smoke run, not figures to
publish). --markdown prints the tables as Markdown for benchmarks/README.md. Exits non-zero
if a benchmark fails (for train_epoch.py, also when a hand-written contender's numbers do
not agree with the backends').
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and runs: 3 instead of 7, 5 check runs instead of 11, 2 distributed rounds "
                             "instead of 5")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--threads", type=int, metavar="N", help="passed to train_epoch.py and predict.py")
    args = parser.parse_args(argv)

    epoch_args = ["--model", "all", "--rounds", "3" if args.quick else "7"]
    check_args = ["--runs", "5" if args.quick else "11"]
    predict_args = ["--rounds", "3" if args.quick else "7"]
    distributed_args = ["--rounds", "2" if args.quick else "5"]
    if args.threads:
        epoch_args += ["--threads", str(args.threads)]
        predict_args += ["--threads", str(args.threads)]
    runs = [("train_epoch.py", epoch_args), ("check_latency.py", check_args), ("predict.py", predict_args),
            ("distributed.py", distributed_args)]
    if args.markdown:
        for _, extra in runs:
            extra.append("--markdown")
    failed = []
    for script, extra in runs:
        command = [sys.executable, str(HERE / script), *extra]
        print(f"\n{'## ' if args.markdown else '==> '}{script} {' '.join(extra)}\n", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command)
        print(f"\n({script}: {time.perf_counter() - start:.0f} s, exit status {done.returncode})", flush=True)
        if done.returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
