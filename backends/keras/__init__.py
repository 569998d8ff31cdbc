"""The Keras backend: a spec as a keras.Sequential, in Keras 3's own semantics.

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

from modelspec.backends.base import Backend, Engine


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)


# Keras runs on TensorFlow unless KERAS_BACKEND says otherwise; that framework must be there too.
_require("keras", {"torch": "torch", "jax": "jax"}.get(os.environ.get("KERAS_BACKEND", ""), "tensorflow"))

if TYPE_CHECKING:
    from modelspec import ir
    from modelspec.checker import Report

ENGINE_OPTIONS = ("seed", "device")


class KerasBackend(Backend):
    name = "keras"
    extra = "keras"
    requires = ("keras", "tensorflow")

    def engine(self, spec: "ir.Spec", report: "Report", **options: Any) -> Engine:
        unknown = sorted(set(options) - set(ENGINE_OPTIONS))
        if unknown:
            raise TypeError(f"the keras backend has no option {', '.join(repr(u) for u in unknown)}; "
                            f"expected {' or '.join(ENGINE_OPTIONS)}")
        from .engine import KerasEngine

        return KerasEngine(spec, report, seed=options.get("seed", 0), device=options.get("device", "auto"))

    def emit(self, spec: "ir.Spec", report: "Report") -> str:
        from .emit import program

        return program(spec, report)
