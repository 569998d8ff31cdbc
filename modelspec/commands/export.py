"""`modelspec export SPEC [--weights W] [--seed N] -o FILE.onnx [--opset N]`: the model and its
weights as an ONNX file, checked by onnx before it is written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    from .. import backends

    check_output(args.output, [args.spec, args.weights], "-o")
    if args.weights and args.seed is not None:
        raise CommandError("--seed draws initial weights; with --weights the weights are that file's: give one of them")
    try:
        from ..backends.onnx.export import model_proto
    except ImportError as e:
        if (getattr(e, "name", None) or "").partition(".")[0] != "onnx":
            raise
        raise CommandError("exporting to ONNX needs onnx, which is not installed: pip install 'modelspec[onnx]'") \
            from None
    from .. import build
    from ._runs import load_spec, load_weights, write

    spec, report = load_spec(args.spec)
    try:
        model = build(spec, backend="numpy", seed=0 if args.seed is None else args.seed)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None
    if args.weights:
        load_weights(model, args.weights)
    proto = model_proto(spec, report, model.get_weights(), opset=args.opset)
    write(Path(args.output), proto.SerializeToString())
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
