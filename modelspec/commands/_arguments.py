"""The options train, evaluate, predict and compare share, and the argument types that check them."""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", "-b", default="numpy",
                   help="numpy (default), torch, keras or onnx (onnxruntime: predict and evaluate only)")
    p.add_argument("--device", default="auto", metavar="DEVICE", type=device,
                   help="auto (default: the backend's choice), cpu or cuda")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on standard output (progress goes to standard error)")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits (default: scikit-learn's 8x8 digits), diabetes (scikit-learn's regression set), "
                        "mnist (local files), FILE.npz or FILE.csv")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where to look for MNIST first (then $MODELSPEC_DATA, then ~/.keras/datasets)")
    p.add_argument("--label-column", metavar="NAME|INDEX",
                   help="a .csv file's label column (default: the one named 'label', else the last)")
    p.add_argument("--scale", type=positive_float, metavar="N",
                   help="divide samples by N, for a spec without rescale or normalize (default: 16 for the "
                        "digits, 255 for MNIST, a file's largest value, 1 for values in [0, 1] or signed; "
                        "evaluate: as training did, recorded in the weights file)")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=natural, metavar="N", help="default: the spec's `fit epochs=`")
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default: the spec's, else 32)")
    p.add_argument("--validation", type=fraction, metavar="F",
                   help="validation fraction, the last samples of the training set (default: the spec's)")
    p.add_argument("--seed", type=seed, metavar="N",
                   help="seed of the initial weights and the shuffling (default: 0 and the spec's fit seed)")


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def natural(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer, 0 or more")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a positive number")


def device(text: str) -> str:
    import re

    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N; received '{text}'")


def seed(text: str) -> int:
    # as a spec's seeds: Keras keeps seeds in an int64
    return _number(text, int, lambda v: 0 <= v < 2**63, "a whole number from 0 to 2**63 - 1")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _number(text: str, kind: type, ok: Any, expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; received '{text}'")
    return value
