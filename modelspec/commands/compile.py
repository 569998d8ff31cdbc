"""`modelspec compile SPEC --backend B [-o FILE]`: standalone source code for one backend."""

from __future__ import annotations

import argparse
import sys

from . import CommandError, check_output

HELP = "emit readable, standalone source code for a spec in one backend's framework"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--backend", "-b", default="keras",
                   help="keras (default), torch or numpy (onnx emits no source: see `modelspec export`)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import backends, check, parse
    from ..diagnostics import SpecError
    from ..fileio import write_atomic

    if args.output:
        check_output(args.output, [args.spec])
    spec = parse(Path(args.spec))
    report = check(spec)
    try:
        backend = backends.get(args.backend)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None
    problems = backend.unsupported(spec) if backend.emits_source else []  # else emit says why there is nothing
    if problems:
        raise SpecError([d.with_file(spec.path) for d in problems], spec.source)
    try:
        code = backend.emit(spec, report)
    except backends.NoSource as e:
        raise CommandError(str(e)) from None
    if args.output:
        write_atomic(args.output, code)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(code)
    return 0
