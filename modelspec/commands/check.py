"""`modelspec check SPEC...`: shapes, parameters, bytes and FLOPs, as Keras's summary shows them."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check a spec: every layer's output shape and parameters, as Keras's summary() shows them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a .ms file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--width", type=_width, default=None, metavar="N",
                   help="summary width (default: Keras's, min(88, terminal columns - 4))")


MIN_WIDTH = 16  # Keras refuses narrower summaries: each of the three columns needs 4 characters


def _width(text: str) -> int:
    try:
        width = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of columns; received {text!r}") from None
    if width < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_WIDTH} columns; received {width}")
    return width


def run(args: argparse.Namespace) -> int:
    from .. import check, parse
    from ..diagnostics import SpecError

    failed = False
    reports = []
    for path in args.specs:
        try:
            report = check(parse(_as_path(path)), strict=args.strict)
        except SpecError as e:
            print(e.render(), file=sys.stderr)
            failed = True
            continue
        if args.json:
            reports.append(report.to_dict())
            continue
        print(report.summary(line_length=args.width, flops=True), end="")
        for w in report.warnings:
            print(w.render(report.spec.source), file=sys.stderr)
    if args.json and reports:
        print(json.dumps(reports[0] if len(args.specs) == 1 else reports, indent=2))
    return 1 if failed else 0


def _as_path(path: str):
    from pathlib import Path

    return Path(path)
