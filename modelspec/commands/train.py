"""`modelspec train SPEC`: fit on a dataset, report the test metrics, save weights, history and plots."""

from __future__ import annotations

import argparse
import sys

from . import _workflow as wf

HELP = "train a spec on a dataset (default: the digits), report test metrics, save weights, history and plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    wf.add_backend_arguments(p)
    wf.add_data_arguments(p)
    wf.add_training_arguments(p)
    p.add_argument("--out", metavar="DIR",
                   help="where to write weights.safetensors, history.json/.csv, loss.png, accuracy.png "
                        "and run.json (default: runs/MODEL)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    spec, report = wf.load_spec(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    wf.check_out(out)
    wf.check_backend(args.backend)
    dataset = wf.load_data(args)
    arrays = wf.prepare(dataset, spec, report, args.scale)
    model = wf.build(spec, args, args.seed)
    stream = sys.stderr if args.json else sys.stdout
    if not args.json:
        model.summary()
        sys.stdout.flush()
    data = {"name": dataset.name, "train": len(arrays.x_train), "test": len(arrays.x_test),
            "split": dataset.split, "scale": args.scale or dataset.scale}
    with wf.StopOnInterrupt() as interrupt:
        trained = wf.train_and_save(model, args.spec, arrays, args, out, interrupt, stream, data)
    if args.json:
        wf.print_json(trained.to_dict())
    else:
        _report(trained, len(arrays.x_test))
    if trained.interrupted:
        print(f"modelspec: interrupted; saved what was trained ({len(trained.history.get('loss', []))} "
              f"epoch(s)) in {out}", file=sys.stderr)
        return 130
    return 1 if trained.stopped else 0


def _report(trained: wf.Trained, samples: int) -> None:
    con = wf.console()
    con.print(wf.metrics_table(f"Test set ({samples:,} samples)", trained.test))
    acc = wf.accuracy_key(trained.test)
    if acc is not None:
        con.print(f"Test accuracy: {trained.test[acc]:.2%}")
    con.print(f"Saved in {trained.out}: {', '.join(f for f in trained.files if not f.endswith('.png'))}")
    plots = [str(trained.out / f) for f in trained.files if f.endswith(".png")]
    if plots:
        con.print(f"Plots: {', '.join(plots)}")
