"""`modelspec evaluate SPEC --weights W`: the test-set loss and metrics of trained weights."""

from __future__ import annotations

import argparse

from . import _workflow as wf

HELP = "evaluate trained weights on a dataset's test set (the same split train uses)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--weights", "-w", required=True, metavar="FILE", help="weights written by `modelspec train`")
    wf.add_backend_arguments(p)
    wf.add_data_arguments(p)
    p.add_argument("--batch", type=wf.positive_int, metavar="N", help="batch size (default 32)")


def run(args: argparse.Namespace) -> int:
    spec, report = wf.load_spec(args.spec)
    wf.check_backend(args.backend)
    dataset = wf.load_data(args)
    arrays = wf.prepare(dataset, spec, report, args.scale or wf.trained_scale(args.weights))
    model = wf.build(spec, args)
    wf.load_weights(model, args.weights)
    try:
        metrics = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
    except ValueError as e:
        raise wf.CommandError(wf.one_line(e)) from None
    if args.json:
        wf.print_json({"model": model.name, "weights": args.weights, "backend": model.backend.name,
                       "data": dataset.name, "samples": len(arrays.x_test), "metrics": metrics})
        return 0
    con = wf.console()
    con.print(f"{model.name} with {args.weights}, on the {dataset.name} test set ({dataset.split})")
    con.print(wf.metrics_table(f"Test set ({len(arrays.x_test):,} samples)", metrics))
    acc = wf.accuracy_key(metrics)
    if acc is not None:
        con.print(f"Test accuracy: {metrics[acc]:.2%}")
    return 0
