"""`modelspec train SPEC`: fit on a dataset, report the test metrics, save weights, history and plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import CommandError
from ._arguments import add_backend_arguments, add_data_arguments, add_training_arguments
from ._launch import add_launch_arguments, check_parallel, group_from_env, launch, run_worker
from ._output import console, metrics_table, print_json
from ._runs import (
    CHECKPOINT, RunLock, StopOnInterrupt, Trained, build, check_backend, check_out, checkpoint_progress, default_out,
    inputs_record, load_data, load_spec, prepare, report_metric, scaling, train_and_save,
)

HELP = "train a spec on a dataset (default: the digits), report test metrics, save weights, history and plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    add_backend_arguments(p)
    add_data_arguments(p)
    add_training_arguments(p)
    add_launch_arguments(p)
    p.add_argument("--out", metavar="DIR",
                   help="where to write weights.safetensors, history.json/.csv, loss.png, accuracy.png, "
                        "run.json and the checkpoint/ of the last epoch (default: runs/MODEL)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (same spec, backend, data and "
                        "settings), to exactly the weights and history of an uninterrupted run")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import ir
    from ..checker import refuse_oversized
    from ..checkpoint import Checkpoint

    group = group_from_env()  # this process is one of torchrun's (or --nproc's) workers
    check_parallel(args, group)
    spec, report = load_spec(args.spec)
    refuse_oversized(report, args.batch or (spec.fit and spec.fit.batch_size) or 32,
                     spec.optimizer or ir.Optimizer(name="rmsprop"))
    out = Path(args.out) if args.out else default_out(spec.name)
    check_out(out)
    checkpoint = Checkpoint(out / CHECKPOINT)
    if args.resume and not checkpoint.exists():
        raise CommandError(f"--resume: there is no checkpoint in {checkpoint.path} (a run with --out {out} "
                           "writes one at the end of each epoch); train without --resume to start")
    check_backend(args.backend, training=True)
    if group is None and (args.nproc or 1) > 1:
        with RunLock(out):  # a busy folder is refused here, once, not by a worker
            pass
        return launch(args, getattr(args, "words", None) or sys.argv[1:], out)
    if group is not None:
        return run_worker(group, lambda: _train(args, spec, report, out, checkpoint, group))
    return _train(args, spec, report, out, checkpoint, None)


def _train(args: argparse.Namespace, spec: Any, report: Any, out: Any, checkpoint: Any, group: Any) -> int:
    """Train and save, in this process; one of several workers when `group` is given, of which
    rank 0 alone prints and writes."""
    import contextlib

    main = group is None or group.rank == 0
    dataset = load_data(args)
    scale = scaling(spec, args.scale, dataset.scale, dataset.scale_why)
    arrays = prepare(dataset, spec, report, scale)
    model = build(spec, args, args.seed, group)
    stream = sys.stderr if args.json else sys.stdout
    if not args.json:
        model.summary()
    print(f"Samples divided by {scale.scale:g} ({scale.why})" if scale.scale != 1 else
          f"Samples as given ({scale.why})", file=stream, flush=True)
    data = {"name": dataset.name, "train": len(arrays.x_train), "test": len(arrays.x_test),
            "split": dataset.split, **scale.to_dict()}
    checkpoint.about = {"data": dataset.name}
    with RunLock(out) if main else contextlib.nullcontext(), StopOnInterrupt() as interrupt:
        if args.resume:
            _say_resuming(checkpoint, args.epochs if args.epochs is not None else
                          (spec.fit and spec.fit.epochs) or 1, stream)
        trained = train_and_save(model, args.spec, arrays, args, out, interrupt, stream, data,
                                 inputs_record(scale, dataset.value_range), checkpoint, args.resume, group)
    if args.json:
        print_json(trained.to_dict(), ok=not (trained.stopped or trained.interrupted))
    else:
        _report(trained, len(arrays.x_test))
    if trained.interrupted:
        print(f"modelspec: interrupted; saved what was trained ({len(trained.history.get('loss', []))} "
              f"epoch(s)) in {out}", file=sys.stderr)
        return 130
    return 1 if trained.stopped else 0


def _say_resuming(checkpoint: Any, epochs: int, stream: Any) -> None:
    """Where the run resumes: one line, before the epochs it trains (none for a finished run)."""
    progress = checkpoint_progress(checkpoint)
    if progress is None:
        return  # fit reads it again and says what is wrong with it
    epoch, finished = progress
    what = (f"continuing from epoch {epoch + 1}" if epoch < epochs and not finished else
            "it is finished; writing its results again")
    print(f"Resuming from {checkpoint.path} ({epoch} epoch(s) done): {what}", file=stream, flush=True)


def _report(trained: Trained, samples: int) -> None:
    con = console()
    con.print(metrics_table(f"Test set ({samples:,} samples)", trained.test))
    report_metric(con, trained.test)
    con.print(f"Saved in {trained.out}: {', '.join(f for f in trained.files if not f.endswith('.png'))}")
    plots = [str(trained.out / f) for f in trained.files if f.endswith(".png")]
    if plots:
        con.print(f"Plots: {', '.join(plots)}")
