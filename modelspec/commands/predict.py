"""`modelspec predict SPEC --weights W --input FILE`: class probabilities and the argmax per row,
or a regression model's values."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import one_line
from . import CommandError, check_output
from ._arguments import add_backend_arguments, positive_float, positive_int
from ._output import console, print_json, print_table
from ._runs import build, check_backend, load_spec, load_weights, note_guess, trained_scaling, warn_if_out_of_range, write

HELP = "predict with trained weights: each row's class probabilities and most likely class, or its values"
SHOWN = 10  # the table shows every class's probability up to this many; --json and --output always do


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--weights", "-w", required=True, metavar="FILE", help="weights written by `modelspec train`")
    p.add_argument("--input", "-i", required=True, metavar="FILE",
                   help="samples, one per row: a .npy array or a .csv file (a 'label' column is ignored)")
    p.add_argument("--scale", type=positive_float, metavar="N",
                   help="divide the samples by N (default: as training did, recorded in the weights file; "
                        "a spec with rescale or normalize takes them raw)")
    p.add_argument("--output", "-o", metavar="FILE.csv", help="also write row, class and probabilities as CSV")
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default 32)")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..data import DataError, infer_scale, load_inputs, model_input

    if args.output:
        check_output(args.output, [args.spec, args.weights, args.input], "--output")
    spec, report = load_spec(args.spec)
    check_backend(args.backend)
    try:
        raw = load_inputs(args.input, spec.input_shape)
        scale = trained_scaling(spec, args.scale, args.weights, infer_scale(raw),
                                "inferred from these samples' largest value")
        x = model_input(raw, spec, scale.scale, args.input)
    except DataError as e:
        raise CommandError(str(e)) from None
    model = build(spec, args)
    load_weights(model, args.weights)
    note_guess(scale, args.weights)
    if spec.input_dtype != "int32":  # token ids are checked against the vocabulary instead
        warn_if_out_of_range(args.weights, args.input, raw)
    try:
        out = model.predict(x, batch_size=args.batch)
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    out = out.reshape(len(out), -1)
    if _regression(spec):
        return _values(args, model, scale, out)
    # one unit (sigmoid): class 1 above 0.5; otherwise the most likely unit
    classes = (out[:, 0] > 0.5).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
    if args.output:
        header = "row,class," + ",".join(f"p{i}" for i in range(out.shape[1]))
        rows = [f"{i},{c}," + ",".join(f"{p:.6g}" for p in row) for i, (c, row) in enumerate(zip(classes, out))]
        write(Path(args.output), "\n".join([header, *rows]) + "\n")
    if args.json:
        print_json({"model": model.name, "input": args.input, **scale.to_dict(), "rows": len(out),
                    "predictions": [{"row": i, "class": int(c), "probabilities": [float(p) for p in row]}
                                    for i, (c, row) in enumerate(zip(classes, out))]})
        return 0
    _table(out, classes)
    return 0


def _regression(spec) -> bool:
    """A model whose outputs are values, not class probabilities: no softmax or sigmoid at the
    end, and a regression loss (or none)."""
    from ..training import label_kind

    last = spec.layers[-1]
    squashed = getattr(last, "activation", None) in ("softmax", "sigmoid") or last.kind in ("softmax", "sigmoid")
    return not squashed and (spec.loss is None or label_kind(spec.loss.name) == "real")


def _values(args: argparse.Namespace, model, scale, out) -> int:
    """A regression model's outputs: one row of values per sample."""
    names = ["value"] if out.shape[1] == 1 else [f"value{i}" for i in range(out.shape[1])]
    if args.output:
        rows = [f"{i}," + ",".join(f"{v:.7g}" for v in row) for i, row in enumerate(out)]
        write(Path(args.output), "\n".join([",".join(["row", *names]), *rows]) + "\n")
    if args.json:
        print_json({"model": model.name, "input": args.input, **scale.to_dict(), "rows": len(out),
                    "predictions": [{"row": i, "values": [float(v) for v in row]} for i, row in enumerate(out)]})
        return 0
    from rich.table import Table

    title = f"Predictions ({len(out):,} rows)"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("row", justify="right")
    for name in names:
        table.add_column(name, justify="right", style="bold")
    for i, row in enumerate(out):
        table.add_row(str(i), *(f"{v:.5g}" for v in row))
    print_table(console(), table)
    return 0


def _table(probs, classes) -> None:
    from rich.table import Table

    title = f"Predictions ({len(probs):,} rows)"
    table = Table(title=title, title_justify="left", min_width=len(title))
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
    print_table(console(), table)
