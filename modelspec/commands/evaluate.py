"""`modelspec evaluate SPEC --weights W`: the test-set loss and metrics of trained weights."""

from __future__ import annotations

import argparse

from ..errors import one_line
from . import CommandError
from ._arguments import add_backend_arguments, add_data_arguments, positive_int
from ._output import console, metrics_table, print_json
from ._runs import (
    build, check_backend, load_data, load_spec, load_weights, prepare, note_guess, report_metric, trained_scaling,
    warn_if_out_of_range,
)

HELP = "evaluate trained weights on a dataset's test set (the same split train uses)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--weights", "-w", required=True, metavar="FILE", help="weights written by `modelspec train`")
    add_backend_arguments(p)
    add_data_arguments(p)
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default 32)")


def run(args: argparse.Namespace) -> int:
    spec, report = load_spec(args.spec)
    check_backend(args.backend)
    dataset = load_data(args)
    scale = trained_scaling(spec, args.scale, args.weights, dataset.scale, dataset.scale_why)
    arrays = prepare(dataset, spec, report, scale)
    model = build(spec, args)
    load_weights(model, args.weights)
    note_guess(scale, args.weights)
    if spec.input_dtype != "int32":  # token ids are checked against the vocabulary instead
        warn_if_out_of_range(args.weights, f"the {dataset.name} test set", dataset.x_test)
    try:
        metrics = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    if args.json:
        print_json({"model": model.name, "weights": args.weights, "backend": model.backend.name,
                    "data": dataset.name, "samples": len(arrays.x_test), **scale.to_dict(), "metrics": metrics})
        return 0
    con = console()
    con.print(f"{model.name} with {args.weights}, on the {dataset.name} test set ({dataset.split})")
    con.print(metrics_table(f"Test set ({len(arrays.x_test):,} samples)", metrics))
    report_metric(con, metrics)
    return 0
