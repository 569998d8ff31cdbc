"""The layer and model names Keras on TensorFlow builds but cannot run: TensorFlow's name
scopes reject them. The backend refuses them; the emitted program, which can run them
(model(x) opens no scope), says so in a comment."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from modelspec.diagnostics import Diagnostic

if TYPE_CHECKING:
    from modelspec import ir

# TensorFlow's name scopes (tensorflow/python/framework/ops.py): Keras opens one per layer,
# and Keras's fit() and predict() one for the model, at the root.
ROOT_SCOPE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")
SCOPE = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")


def rejected_names(spec: "ir.Spec") -> list[tuple[str, Any]]:
    """(name, the layer or None for the model) for each name TensorFlow's name scopes reject."""
    out: list[tuple[str, Any]] = [(spec.name, None)] if not ROOT_SCOPE.match(spec.name) else []
    return out + [(layer.name, layer) for layer in spec.layers if layer.name is not None and not SCOPE.match(layer.name)]


def unscoped_names(spec: "ir.Spec") -> list[Diagnostic]:
    """Diagnostics for the names Keras on TensorFlow builds but cannot run (fit, evaluate,
    predict, and this engine all trace the model in name scopes)."""
    allowed = "TensorFlow's name scopes take letters, digits and . _ - > only"
    out = []
    for name, layer in rejected_names(spec):
        if layer is None:
            span = spec.statement_spans.get("model")
            out.append(Diagnostic(
                "error", f"Keras on TensorFlow cannot run a model named {name!r}: {allowed}, starting with a "
                "letter, a digit or '.'", span, code="backend",
                hint=None if span else "the name comes from the file's name; give one with `model NAME`"))
        else:
            out.append(Diagnostic("error", f"Keras on TensorFlow cannot run a layer named {name!r}: {allowed}",
                                  layer.span, code="backend"))
    return out
