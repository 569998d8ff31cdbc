"""The static checker: every layer's output shape, parameters, bytes and FLOPs, as Keras counts them.

Pure Python integer arithmetic on the IR: nothing is allocated, no framework is imported,
so a 100-billion-parameter typo is reported in microseconds. Shape rules are Keras's
(channels-last; 'valid' is floor((n - k) / s) + 1; 'same' is ceil(n / s)); names are
Keras's auto names in a fresh session (dense, dense_1, batch_normalization, ...).
Advice (modelspec.advice) is attached as warnings; `strict=True` makes them errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import ir
from .diagnostics import Diagnostic, Span, SpecError, sort_diagnostics

Shape = tuple  # (None, d1, d2, ...): the batch axis first, as Keras prints it

BYTES_PER_PARAM = 4  # float32


@dataclass(frozen=True)
class Weight:
    path: str  # model1/dense/kernel, as Keras's variable.path
    shape: tuple[int, ...]
    trainable: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class LayerReport:
    name: str
    kind: str
    keras_class: str
    input_shape: Shape
    output_shape: Shape
    weights: list[Weight]
    flops: int
    layer: Any = field(repr=False)

    @property
    def params(self) -> int:
        return sum(w.size for w in self.weights)

    @property
    def trainable(self) -> int:
        return sum(w.size for w in self.weights if w.trainable)

    @property
    def non_trainable(self) -> int:
        return self.params - self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
            "params": self.params, "trainable": self.trainable, "non_trainable": self.non_trainable,
            "flops": self.flops,
        }


@dataclass
class Report:
    """What `modelspec check` prints: per-layer rows, totals, and warnings."""

    model: str
    input_shape: Shape
    layers: list[LayerReport]
    warnings: list[Diagnostic]
    spec: ir.Spec = field(repr=False)

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable for layer in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def bytes(self) -> int:
        return self.total_params * BYTES_PER_PARAM

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def weights(self) -> list[Weight]:
        return [w for layer in self.layers for w in layer.weights]

    def summary(self, line_length: int | None = None, flops: bool = False) -> str:
        """The table of Keras's `model.summary()`, character for character."""
        from .summary import render_summary

        return render_summary(self, line_length=line_length, flops=flops)

    def to_dict(self) -> dict[str, Any]:
        """`modelspec check --json`: exactly these keys, which scripts rely on; weights are in `.weights`."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "layers": [layer.to_dict() for layer in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "bytes": self.bytes,
            "flops": self.flops,
            "warnings": [w.to_dict() for w in self.warnings],
        }


# ---------------------------------------------------------------------------------------
# Keras's naming


def _snake(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case: BatchNormalization -> batch_normalization."""
    import re

    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


_SNAKE = {cls.keras_class: _snake(cls.keras_class) for cls in ir.LAYER_CLASSES.values()}


def layer_names(spec: ir.Spec) -> list[str]:
    """Keras's names for the spec's layers in a fresh session; auto names skip the user's."""
    taken = {layer.name for layer in spec.layers if layer.name}
    counters: dict[str, int] = {}
    names = []
    for layer in spec.layers:
        if layer.name:
            names.append(layer.name)
            continue
        base = _SNAKE[layer.keras_class]
        while True:
            n = counters.get(base, 0)
            counters[base] = n + 1
            candidate = base if n == 0 else f"{base}_{n}"
            if candidate not in taken:
                break
        names.append(candidate)
    return names


# ---------------------------------------------------------------------------------------
# Shape rules


class _ShapeError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def window_output(n: int, k: int, s: int, padding: str) -> int:
    """Keras's output length of a convolution or pooling window along one axis."""
    if padding == "same":
        return -(-n // s)
    return (n - k) // s + 1


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after): the extra pixel goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _need_image(kind: str, shape: Shape) -> None:
    if len(shape) != 4:
        received = fmt_shape(shape)
        if len(shape) == 3:
            hint = f"add a channel axis: `input {shape[1]}x{shape[2]}x1`"
        elif len(shape) == 2:
            hint = ("images are (height, width, channels): declare `input 28x28x1`, or remove the "
                    "layer that flattened them")
        else:
            hint = None
        raise _ShapeError(f"{kind} needs an input of rank 3 (height, width, channels); received {received}",
                          hint)


def _window(kind: str, shape: Shape, size: tuple[int, int], strides: tuple[int, int], padding: str) -> tuple[int, int]:
    _need_image(kind, shape)
    out = []
    for axis, (n, k, s) in enumerate(zip(shape[1:3], size, strides)):
        o = window_output(n, k, s, padding)
        if o < 1:
            what = "height" if axis == 0 else "width"
            raise _ShapeError(
                f"{kind}'s window {size[0]}x{size[1]} is larger than its input {fmt_shape(shape)} "
                f"({what} {n} < {k}); the output would have no {'rows' if axis == 0 else 'columns'}",
                "use padding=same, a smaller window, or a larger input")
        out.append(o)
    return out[0], out[1]


def _infer(layer: Any, shape: Shape, path: str) -> tuple[Shape, list[Weight], int]:
    """(output shape, weights, forward FLOPs per sample) of one layer."""
    kind = layer.kind
    if kind == "dense":
        n_in = shape[-1]
        weights = [Weight(f"{path}/kernel", (n_in, layer.units), True)]
        if layer.use_bias:
            weights.append(Weight(f"{path}/bias", (layer.units,), True))
        rows = math.prod(shape[1:-1])
        return shape[:-1] + (layer.units,), weights, 2 * n_in * layer.units * rows
    if kind == "conv2d":
        h, w = _window(kind, shape, layer.kernel_size, layer.strides, layer.padding)
        cin = shape[3]
        weights = [Weight(f"{path}/kernel", (*layer.kernel_size, cin, layer.filters), True)]
        if layer.use_bias:
            weights.append(Weight(f"{path}/bias", (layer.filters,), True))
        flops = 2 * layer.kernel_size[0] * layer.kernel_size[1] * cin * layer.filters * h * w
        return (None, h, w, layer.filters), weights, flops
    if kind in ("maxpool2d", "avgpool2d"):
        h, w = _window(kind, shape, layer.pool_size, layer.resolved_strides, layer.padding)
        return (None, h, w, shape[3]), [], 0
    if kind == "globalavgpool2d":
        _need_image(kind, shape)
        return (None, shape[3]), [], 0
    if kind == "flatten":
        return (None, math.prod(shape[1:])), [], 0
    if kind == "batchnorm":
        c = shape[-1]
        weights = [Weight(f"{path}/gamma", (c,), True), Weight(f"{path}/beta", (c,), True),
                   Weight(f"{path}/moving_mean", (c,), False),
                   Weight(f"{path}/moving_variance", (c,), False)]
        return shape, weights, 0
    # dropout, activation, leaky_relu: shape-preserving, no weights
    return shape, [], 0


# ---------------------------------------------------------------------------------------
# Entry point


def check(spec: ir.Spec | str, *, strict: bool = False) -> Report:
    """Check a spec (IR, text or path). Raises SpecError on an invalid one."""
    if not isinstance(spec, ir.Spec):
        from .parser import parse

        spec = parse(spec)
    errors: list[Diagnostic] = []
    names = layer_names(spec)
    seen: dict[str, Span | None] = {}
    for name, layer in zip(names, spec.layers):
        if name in seen and layer.name:
            first = seen[name]
            errors.append(Diagnostic(
                "error", f"the layer name '{name}' is used twice; Keras needs unique names", layer.span,
                hint=f"first used on line {first.line}" if first else None, code="names"))
        seen.setdefault(name, layer.span)

    shape: Shape = (None, *spec.input_shape)
    layers: list[LayerReport] = []
    for name, layer in zip(names, spec.layers):
        try:
            out, weights, flops = _infer(layer, shape, f"{spec.name}/{name}")
        except _ShapeError as e:
            errors.append(Diagnostic("error", f"{name}: {e.message}", layer.span, hint=e.hint, code="shape"))
            break
        layers.append(LayerReport(name, layer.kind, layer.keras_class, shape, out, weights, flops, layer))
        shape = out

    from .advice import advise

    warnings = advise(spec, layers) if not errors else []
    if strict:
        errors += [w.as_error() for w in warnings]
        warnings = []
    if errors:
        raise SpecError(sort_diagnostics(d.with_file(spec.path) for d in errors), spec.source)
    return Report(spec.name, (None, *spec.input_shape), layers,
                  [w.with_file(spec.path) for w in sort_diagnostics(warnings)], spec)
