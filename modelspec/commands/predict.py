"""`modelspec predict SPEC --weights W --input FILE`: class probabilities and the argmax per row."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import one_line
from . import CommandError, check_output
from ._arguments import add_backend_arguments, positive_float, positive_int
from ._output import console, print_json
from ._runs import build, check_backend, load_spec, load_weights, trained_scale, write

HELP = "predict with trained weights: each row's class probabilities and most likely class"
SHOWN = 10  # the table shows every class's probability up to this many; --json and --output always do


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--weights", "-w", required=True, metavar="FILE", help="weights written by `modelspec train`")
    p.add_argument("--input", "-i", required=True, metavar="FILE",
                   help="samples, one per row: a .npy array or a .csv file (a 'label' column is ignored)")
    p.add_argument("--scale", type=positive_float, metavar="N",
                   help="divide the samples by N (default: the scale of the training run beside the weights, "
                        "in its run.json; else 1 for values in [0, 1], 255 for 8-bit pixels)")
    p.add_argument("--output", "-o", metavar="FILE.csv", help="also write row, class and probabilities as CSV")
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default 32)")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import DataError, fit_input, infer_scale, load_inputs

    if args.output:
        check_output(args.output, [args.spec, args.weights, args.input], "--output")
    spec, report = load_spec(args.spec)
    check_backend(args.backend)
    try:
        raw = load_inputs(args.input, spec.input_shape)
        scale = args.scale or trained_scale(args.weights) or infer_scale(raw)
        x = fit_input(raw / np.float32(scale), spec.input_shape, args.input)
    except DataError as e:
        raise CommandError(str(e)) from None
    model = build(spec, args)
    load_weights(model, args.weights)
    try:
        probs = model.predict(x, batch_size=args.batch)
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    probs = probs.reshape(len(probs), -1)
    # one unit (sigmoid): class 1 above 0.5; otherwise the most likely unit
    classes = (probs[:, 0] > 0.5).astype(int) if probs.shape[1] == 1 else probs.argmax(axis=1)
    if args.output:
        header = "row,class," + ",".join(f"p{i}" for i in range(probs.shape[1]))
        rows = [f"{i},{c}," + ",".join(f"{p:.6g}" for p in row) for i, (c, row) in enumerate(zip(classes, probs))]
        write(Path(args.output), "\n".join([header, *rows]) + "\n")
    if args.json:
        print_json({"model": model.name, "input": args.input, "scale": scale, "rows": len(probs),
                       "predictions": [{"row": i, "class": int(c), "probabilities": [float(p) for p in row]}
                                       for i, (c, row) in enumerate(zip(classes, probs))]})
        return 0
    _table(probs, classes)
    return 0


def _table(probs, classes) -> None:
    from rich.table import Table

    table = Table(title=f"Predictions ({len(probs):,} rows)", title_justify="left")
    table.add_column("row", justify="right")
    table.add_column("class", justify="right", style="bold")
    table.add_column("p(class)", justify="right")
    every = probs.shape[1] <= SHOWN
    if every:
        table.add_column("probabilities, class " + ("0" if probs.shape[1] == 1 else f"0 to {probs.shape[1] - 1}"))
    for i, (c, row) in enumerate(zip(classes, probs)):
        p = row[c] if len(row) > 1 else row[0] if c == 1 else 1 - row[0]
        cells = [str(i), str(int(c)), f"{p:.4f}"]
        if every:
            cells.append(" ".join(f"{v:.2f}" for v in row))
        table.add_row(*cells)
    console().print(table)
