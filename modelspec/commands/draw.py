"""`modelspec draw SPEC [-o FILE.svg|FILE.png]`: the model as a diagram (modelspec.draw)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CommandError, check_output

HELP = ("draw the model as a diagram, SVG or PNG: a box per layer with its output shape and parameters, "
        "an arrow per connection, a frame per block use")
FORMATS = (".svg", ".png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file; - reads standard input")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="FILE.svg or FILE.png, replaced if it exists (default: SPEC's name with .svg, beside "
                        "it: specs/mnist.ms draws specs/mnist.svg); - writes the SVG to standard output, "
                        "the default for SPEC -")


def run(args: argparse.Namespace) -> int:
    from .. import check, parse
    from ..fileio import write_atomic
    from ..parser import MAX_SPEC_BYTES

    output = args.output or ("-" if args.spec == "-" else str(Path(args.spec).with_suffix(".svg")))
    suffix = ".svg" if output == "-" else Path(output).suffix.lower()
    if output != "-":
        check_output(output, [args.spec if args.spec != "-" else None])
        if suffix not in FORMATS:
            raise CommandError(f"-o {output}: cannot tell the image format from "
                               f"{repr(suffix) if suffix else 'a name without an extension'}; "
                               "expected a name ending in .svg or .png", code=2)
    spec = parse(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1), file="<stdin>") if args.spec == "-" else \
        parse(Path(args.spec))
    report = check(spec)

    from ..draw import layout, to_png, to_svg

    diagram = layout(report)
    if output == "-":
        sys.stdout.buffer.write(to_svg(diagram).encode())  # UTF-8 whatever the locale, as the file is
        return 0
    try:
        write_atomic(output, to_png(diagram) if suffix == ".png" else to_svg(diagram))
    except OSError as e:
        raise CommandError(f"cannot write {output}: {e.strerror or e}") from None
    print(f"wrote {output}", file=sys.stderr)
    return 0
