"""`modelspec compare A.ms B.ms ...`: train each on the same data, split and seed; one plot, one table."""

from __future__ import annotations

import argparse
import sys

from ._arguments import add_backend_arguments, add_data_arguments, add_training_arguments
from ._output import console, console_on, finite, print_json, print_table
from ._plots import comparison_png
from ._runs import (
    RunLock, StopOnInterrupt, build, check_backend, check_out, inputs_record, load_data, load_spec, metric_key,
    prepare, scaling, train_and_save, write,
)

HELP = "train several specs on the same data, split and seed; plot their validation losses together"
DEFAULT_VALIDATION = 0.2  # for a spec without `fit validation=`: the comparison is of validation curves


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help=".ms files")
    add_backend_arguments(p)
    add_data_arguments(p)
    add_training_arguments(p)
    p.add_argument("--out", metavar="DIR",
                   help="where to write compare.png, compare.json and each model's run in DIR/MODEL/ "
                        "(default: runs/compare)")


def run(args: argparse.Namespace) -> int:
    import copy
    from pathlib import Path

    loaded = [load_spec(path) for path in args.specs]
    out = Path(args.out or Path("runs") / "compare")
    check_out(out)
    check_backend(args.backend, training=True)
    dataset = load_data(args)
    scales = [scaling(spec, args.scale, dataset.scale, dataset.scale_why) for spec, _ in loaded]
    arrays = [prepare(dataset, spec, report, scale) for (spec, report), scale in zip(loaded, scales)]
    models = [build(spec, args, args.seed) for spec, _ in loaded]
    names = _unique([m.name for m in models])
    stream = sys.stderr if args.json else sys.stdout
    data = {"name": dataset.name, "test": len(arrays[0].x_test), "split": dataset.split}
    runs = []
    with RunLock(out), StopOnInterrupt() as interrupt:
        for i, (path, model, xy, name, scale) in enumerate(zip(args.specs, models, arrays, names, scales)):
            console_on(stream).rule(f"{name} ({i + 1}/{len(models)}): {model.report.total_params:,} params")
            settings = copy.copy(args)
            settings.validation = _validation(args, model.spec)
            runs.append(train_and_save(model, path, xy, settings, out / name, interrupt, stream,
                                       {**data, "train": len(xy.x_train), **scale.to_dict()},
                                       inputs_record(scale, dataset.value_range)))
            if interrupt.requested:
                break
    doc = _save(out, names, runs, data)
    if args.json:
        print_json(doc)
    else:
        _report(doc, out)
    if interrupt.requested:
        print(f"modelspec: interrupted; saved what was trained ({len(runs)} of {len(models)} model(s)) in {out}",
              file=sys.stderr)
        return 130
    return 1 if any(r.stopped for r in runs) else 0


def _validation(args: argparse.Namespace, spec) -> float:
    if args.validation is not None:
        return args.validation
    given = spec.fit.validation_split if spec.fit is not None else None
    return given if given is not None else DEFAULT_VALIDATION


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _save(out, names: list[str], runs: list, data: dict) -> dict:
    """compare.png (one curve per model) and compare.json (the plotted series and every run)."""
    import json

    key = "val_loss" if any("val_loss" in r.history for r in runs) else "loss"
    curves = {name: r.history.get(key, []) for name, r in zip(names, runs)}
    title = "Validation loss" if key == "val_loss" else "Training loss"
    write(out / "compare.png", comparison_png(curves, title, "Loss"))
    doc = finite({
        "data": data, "plot": str(out / "compare.png"), "curves": {"key": key, "series": curves},
        "models": [{"name": name, **r.to_dict()} for name, r in zip(names, runs)],
    })
    write(out / "compare.json", json.dumps(doc, indent=2) + "\n")
    return doc


def _report(doc: dict, out) -> None:
    from rich.table import Table

    def fmt(value: float | None) -> str:  # None: NaN or infinite, or no such metric
        return "-" if value is None else f"{value:.5g}"  # five figures: the table fits 80 columns

    def last(history: dict, key: str | None) -> str:
        values = history.get(key, []) if key else []
        return fmt(values[-1] if values else None)

    table = Table(title=f"Comparison on {doc['data']['name']} ({doc['data']['test']:,} test samples)",
                  title_justify="left")
    keys = {metric_key(m["history"]) for m in doc["models"]} - {None}
    short = "acc" if all("acc" in k for k in keys) else keys.pop() if len(keys) == 1 else "metric"
    widest = max((len(m["name"]) for m in doc["models"]), default=5)
    for column in ("model", "params", "epochs", "val loss", f"val {short}", "test loss", f"test {short}"):
        if column == "model":  # a name is never cut; figures are short
            table.add_column(column, no_wrap=True, min_width=widest)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for m in doc["models"]:
        acc = metric_key(m["history"])
        table.add_row(m["name"], f"{m['params']:,}", str(m["epochs"]), last(m["history"], "val_loss"),
                      last(m["history"], f"val_{acc}" if acc else None), fmt(m["test"].get("loss")),
                      fmt(m["test"].get(acc) if acc else None))
    con = console()
    print_table(con, table)
    drawn = sum(1 for values in doc["curves"]["series"].values() if values)
    con.print(f"Plot: {doc['plot']} ({drawn} curves of {doc['curves']['key']})")
    con.print(f"Runs: {', '.join(str(out / m['name']) for m in doc['models'])}")
