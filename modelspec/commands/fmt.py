"""`modelspec fmt FILE...`: rewrite specs in canonical form, keeping their comments."""

from __future__ import annotations

import argparse
import sys

HELP = "rewrite specs in canonical form (--check: only report which would change)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not canonical")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import parse
    from ..diagnostics import SpecError
    from ..fileio import write_atomic
    from ..printer import to_text

    status = 0
    for name in args.files:
        try:
            spec = parse(Path(name))
        except SpecError as e:
            print(e.render(), file=sys.stderr)
            status = 1
            continue
        canonical = to_text(spec, source=spec.source)
        if canonical == spec.source:
            continue
        if args.check:
            print(f"{name}: not in canonical form", file=sys.stderr)
            status = 1
        else:
            try:
                write_atomic(name, canonical)
            except OSError as e:  # the file is left as it was
                print(f"{name}: error: cannot write: {e.strerror or e}", file=sys.stderr)
                status = 1
                continue
            print(f"reformatted {name}", file=sys.stderr)
    return status
