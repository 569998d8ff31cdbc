"""`modelspec check SPEC...`: shapes, parameters, bytes and FLOPs, as Keras's summary shows them."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check a spec: every layer's output shape and parameters, as Keras's summary() shows them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a .ms file; - reads standard input")
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
    from ..parser import MAX_SPEC_BYTES

    files = []
    for path in args.specs:
        try:
            spec = parse(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1), file="<stdin>") if path == "-" else \
                parse(_as_path(path))
            report = check(spec, strict=args.strict)
        except SpecError as e:
            if not args.json:
                print(e.render(), file=sys.stderr)
            files.append({"file": path, "ok": False, "report": None,
                          "diagnostics": [d.to_dict() for d in e.diagnostics]})
            continue
        if args.json:
            files.append({"file": path, "ok": True, "report": report.to_dict(),
                          "diagnostics": [w.to_dict() for w in report.warnings]})
            continue
        files.append({"ok": True})
        print(report.summary(line_length=args.width, flops=True), end="")
        for w in report.warnings:
            print(w.render(report.spec.source), file=sys.stderr)
    ok = all(f["ok"] for f in files)
    if args.json:  # one document, one shape, whatever the number of files and outcomes
        print(json.dumps({"ok": ok, "files": files}, indent=2))
    return 0 if ok else 1


def _as_path(path: str):
    from pathlib import Path

    return Path(path)
