"""The torch backend's layout decisions: Python names for the layers, where the tensor
switches between Keras's NHWC and torch's NCHW, the 'same' padding of each window, and
which activation is split off as the output activation.

lowering.py turns each `Step` into a `Unit`, which the live builder and the code emitter
both read, so the module built in memory and the module written to a file cannot
disagree about layout or names.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any

from modelspec import ir
from modelspec.checker import LayerReport, Report
from modelspec.shapes import same_padding

# Layers that run on NCHW tensors in torch, and layers that need Keras's channels-last order.
NCHW_KINDS = frozenset({"conv2d", "maxpool2d", "avgpool2d"})
CHANNELS_LAST_KINDS = frozenset({"dense", "flatten", "prelu"})  # prelu: alpha is (h, w, c)
# Names a layer attribute must not take: nn.Module's own, and the generated class's methods.
RESERVED = frozenset({"logits", "forward", "penalty", "reset_parameters", "load_keras_weights", "keras_weights",
                      "keras_layout", "keras_name", "input_shape", "training", "layers", "output_activation"})
# A softmax or sigmoid on the last layer is split off: Keras's TensorFlow backend computes
# the matching cross-entropy from the values before it.
SPLIT_ACTIVATIONS = frozenset({"softmax", "sigmoid"})


@dataclass(frozen=True)
class Step:
    """One layer as the torch lowering sees it."""

    layer: Any  # the ir layer
    report: LayerReport
    attr: str  # its Python attribute name: the Keras name, made an identifier
    nchw: bool  # it runs on an NCHW tensor
    permute: str | None  # 'nchw' or 'nhwc': convert the tensor before this layer
    activation: str | None  # the activation it applies (None: linear, or split off as the output's)

    @property
    def channel_axis(self) -> int:
        return 1 if self.nchw else -1

    @property
    def pads(self) -> tuple[int, int, int, int] | None:
        """F.pad's (left, right, top, bottom) for a 'same' window; None for 'valid'."""
        layer = self.layer
        if getattr(layer, "padding", "valid") != "same":
            return None
        size = layer.kernel_size if layer.kind == "conv2d" else layer.pool_size
        strides = layer.strides if layer.kind == "conv2d" else layer.resolved_strides
        _, h, w, _ = self.report.input_shape
        top, bottom = same_padding(h, size[0], strides[0])
        left, right = same_padding(w, size[1], strides[1])
        return left, right, top, bottom


def symmetric(pads: tuple[int, int, int, int]) -> bool:
    """Whether a 'same' window pads both sides alike (then torch's own padding argument does)."""
    left, right, top, bottom = pads
    return left == right and top == bottom


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    output_activation: str | None  # softmax or sigmoid: the last layer's, applied after `logits`
    final_permute: bool  # the last layer leaves an NCHW tensor: back to NHWC before the output


def identifier(name: str, taken: set[str], reserved: frozenset[str] = RESERVED) -> str:
    """`name` as a Python identifier that is not in `taken` (which it is added to)."""
    from torch import nn

    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if ident[0].isdigit() or ident[0] == "_":
        ident = f"layer_{ident}"
    if keyword.iskeyword(ident) or ident in reserved or hasattr(nn.Module, ident):
        ident = f"{ident}_layer"
    base, n = ident, 2
    while ident in taken:
        ident, n = f"{base}_{n}", n + 1
    taken.add(ident)
    return ident


def class_name(model_name: str, taken: set[str] = frozenset()) -> str:
    """The model's name as a CamelCase class name: mnist -> Mnist, digits_cnn -> DigitsCnn."""
    words = re.findall(r"[A-Za-z0-9]+", model_name)
    name = "".join(w[0].upper() + w[1:] for w in words) or "Model"
    if name[0].isdigit():
        name = f"Model{name}"
    if keyword.iskeyword(name) or name in taken:
        name = f"{name}Model"
    return name


def plan(spec: ir.Spec, report: Report) -> Plan:
    taken: set[str] = set()
    steps: list[Step] = []
    nchw = False
    for layer, rep in zip(spec.layers, report.layers):
        permute = None
        if layer.kind in NCHW_KINDS and not nchw:
            permute, nchw = "nchw", True
        elif layer.kind in CHANNELS_LAST_KINDS and nchw:
            permute, nchw = "nhwc", False
        act = getattr(layer, "activation", None)
        steps.append(Step(layer, rep, identifier(rep.name, taken), nchw, permute,
                          None if act == "linear" else act))
        if len(rep.output_shape) < 4:  # no height and width left (a global pooling): no layout
            nchw = False
    last = steps[-1]
    output_activation = None
    if last.activation in SPLIT_ACTIVATIONS:
        output_activation = last.activation
        steps[-1] = Step(last.layer, last.report, last.attr, last.nchw, last.permute, None)
    return Plan(steps, output_activation, final_permute=nchw)
