"""The Keras backend: a spec as a keras.Sequential (a chain) or a functional keras.Model (a
graph), in Keras 3's own semantics.

    model = ms.build(spec, backend="keras")    # model.native is the keras.Model
    modelspec compile spec.ms --backend keras  # the Keras program a tutorial would write

Keras is imported only when a model is built: `modelspec compile` writes Keras code
without paying for TensorFlow's start-up. Whether the framework is installed is still
checked here, so that the registry can say which extra to install.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from modelspec.backends.base import Backend, Engine, kinds_implemented

from .lowering import Lowering
from .scopes import unscoped_names


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)


# Keras runs on TensorFlow unless KERAS_BACKEND says otherwise; that framework must be there too.
_require("keras", {"torch": "torch", "jax": "jax"}.get(os.environ.get("KERAS_BACKEND", ""), "tensorflow"))

if TYPE_CHECKING:
    from modelspec import ir
    from modelspec.checker import Report
    from modelspec.diagnostics import Diagnostic

ENGINE_OPTIONS = ("seed", "device")


class KerasBackend(Backend):
    name = "keras"
    layer_kinds = kinds_implemented(Lowering)

    def unsupported(self, spec: "ir.Spec") -> list["Diagnostic"]:
        return super().unsupported(spec) + onednn_miscomputed(spec)

    def engine(self, spec: "ir.Spec", report: "Report", **options: Any) -> Engine:
        """Options: seed (dropout masks without a seed of their own), device ('auto', 'cpu',
        'cuda'). A name TensorFlow's name scopes reject is a SpecError: Keras builds such a
        model, but cannot run it (the emitted program, which can, says so in a comment)."""
        unknown = sorted(set(options) - set(ENGINE_OPTIONS))
        if unknown:
            raise TypeError(f"the keras backend has no option {', '.join(repr(u) for u in unknown)}; "
                            f"expected {' or '.join(ENGINE_OPTIONS)}")
        problems = unscoped_names(spec)
        if problems:
            from modelspec.diagnostics import SpecError

            raise SpecError([d.with_file(spec.path) for d in problems], spec.source)
        from .engine import KerasEngine

        return KerasEngine(spec, report, seed=options.get("seed", 0), device=options.get("device", "auto"))

    def emit(self, spec: "ir.Spec", report: "Report") -> str:
        from .emit import program

        return program(spec, report)


def onednn_miscomputed(spec: "ir.Spec") -> list["Diagnostic"]:
    """conv2d layers that TensorFlow's oneDNN kernels (on by default on x86 CPUs) compute
    wrongly: one input channel, strides (1, 2 or more), one output column. Found by the
    differential fuzzing; TensorFlow reads uninitialised memory there, a new wrong answer on
    every call (tf.nn.conv2d of a (2, 4, 3, 1) input, a (1, 2, 1, 1) kernel, strides
    (1, 1, 2, 1)). Refused rather than run, unless oneDNN is off."""
    from modelspec.checker import check
    from modelspec.diagnostics import Diagnostic

    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return []
    out = []
    for rep in check(spec).layers:
        if rep.kind != "conv2d":
            continue
        (sh, sw), channels, columns = rep.layer.strides, rep.input_shape[-1], rep.output_shape[2]
        if channels == 1 and sh == 1 and sw >= 2 and columns == 1:
            out.append(Diagnostic(
                "error", f"{rep.name}: TensorFlow's oneDNN convolution computes this layer wrongly on the CPU "
                         f"(one input channel, strides {rep.layer.strides}, one output column)", rep.layer.span,
                hint="run Keras with TF_ENABLE_ONEDNN_OPTS=0, or use the numpy or torch backend", code="backend"))
    return out
