"""`modelspec export SPEC [--weights W] [--seed N] -o FILE.onnx [--opset N]`: the model and its
weights as an ONNX file, checked by onnx before it is written."""

from __future__ import annotations

import argparse
import sys

from . import CommandError, check_output
from ._arguments import positive_int

HELP = "export a spec with its weights (trained, or the seeded initial ones) to an ONNX file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .ms file")
    p.add_argument("--weights", "-w", metavar="FILE",
                   help="weights written by `modelspec train` (default: the initial weights drawn from --seed)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="the seed of the initial weights, as `build` draws them (default 0; not with --weights)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=positive_int, metavar="N", help="the ONNX opset (default 21)")


def run(args: argparse.Namespace) -> int:
    from .. import backends, build
    from ._runs import load_spec, load_weights

    check_output(args.output, [args.spec, args.weights], "-o")
    if args.weights and args.seed is not None:
        raise CommandError("--seed draws initial weights; with --weights the weights are that file's: give one of them")
    spec, _ = load_spec(args.spec)
    model = build(spec, backend="numpy", seed=0 if args.seed is None else args.seed)
    if args.weights:
        load_weights(model, args.weights)
    try:
        model.export(args.output, opset=args.opset)  # an ExportError is a SpecError, which the CLI renders
    except backends.BackendError as e:  # onnx is not installed
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
