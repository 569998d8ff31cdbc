"""`modelspec import MODEL.keras|CONFIG.json [-o spec.ms]`: a Keras Sequential or functional
model as a spec.

The conversion is modelspec.keras_import's; this module is the command line around it.
"""

from __future__ import annotations

import argparse
import sys

from . import CommandError, check_output

HELP = "turn a Keras Sequential or functional model (.keras file or JSON config) into a spec"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a .keras file, or a JSON file with the model's config")
    p.add_argument("-o", "--output", metavar="FILE", help="write the spec here instead of standard output")
    p.add_argument("--layers-only", action="store_true",
                   help="import the layers only, leaving out the optimizer, loss and metrics")


def run(args: argparse.Namespace) -> int:
    from ..diagnostics import SpecError
    from ..fileio import write_atomic
    from ..keras_import import ModelFileError, UnsupportedError, convert, read_config

    if args.output:
        check_output(args.output, [args.model])
    try:
        imported = convert(read_config(args.model), training=not args.layers_only)
    except ModelFileError as e:
        raise CommandError(str(e)) from None
    except UnsupportedError as e:
        hint = "; --layers-only imports the layers without it" if str(e).startswith("compile()") else ""
        raise CommandError(f"{args.model}: {e}{hint}") from None
    except SpecError as e:  # a config Keras would reject too, e.g. a window larger than its input
        raise CommandError(f"{args.model}: the model is not valid: {e.diagnostics[0].message}") from None
    for note in imported.notes:
        print(f"modelspec: note: {note}", file=sys.stderr)
    if args.output:
        write_atomic(args.output, imported.text)
        print(f"wrote {args.output}: {len(imported.report.layers)} layers, {imported.report.total_params:,} params",
              file=sys.stderr)
    else:
        sys.stdout.write(imported.text)
    return 0
