"""The torch backend's layout decisions: Python names for the layers, where the tensor
switches between Keras's NHWC and torch's NCHW, the 'same' padding of each window, and
which activation is split off as the output activation. A chain is a list of steps; a
graph (a functional spec) a list of nodes, each value of its forward pass in Keras's layer
order, the layout switches among them.

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
from modelspec.shapes import pads1d, same_padding

from . import keras_ops

# Layers that run on channels-first tensors in torch (images NCHW, sequences NCT, as torch's
# convolutions and pools read them), and layers that need Keras's channels-last order. Between
# two of the first, a tensor stays channels-first: a conv1d stack permutes once, as a
# hand-written torch model does.
NCHW_KINDS = frozenset({"conv2d", "maxpool2d", "avgpool2d", "conv1d", "maxpool1d", "avgpool1d"})
# prelu: alpha is (h, w, c); layernorm: the last axis; reshape: row-major on Keras's layout
# the recurrent layers and attention: (batch, steps, channels), as Keras's
CHANNELS_LAST_KINDS = frozenset({"dense", "flatten", "prelu", "layernorm", "reshape", "lstm", "gru", "simple_rnn",
                                 "bidirectional", "attention"})
# The ranks (batch included) whose tensors have a channels-first layout: images and sequences.
SPATIAL_RANKS = (3, 4)
# The layout switches: to channels-first and back, by rank.
TO_FIRST = {4: "nchw", 3: "nct"}
TO_LAST = {4: "nhwc", 3: "ntc"}
# Names a layer attribute must not take: nn.Module's own, and the generated class's methods.
RESERVED = frozenset({"logits", "forward", "penalty", "reset_parameters", "load_keras_weights", "keras_weights",
                      "keras_layout", "keras_name", "input_shape", "training", "layers", "output_activation"})
# Names a graph's values must not take: they are local variables of the emitted forward pass,
# which calls the module's globals (torch, F, nn, math, the pieces copied from keras_ops).
GLOBALS = frozenset(name for name in vars(keras_ops) if not name.startswith("_"))
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
    input_ranks: tuple[int, ...] = ()  # a merge's: the rank of each input, batch axis included

    @property
    def reads_mask(self) -> bool:
        """It computes with embedding's mask (the model's ids that are not 0)."""
        return self.report.reads_mask

    @property
    def operands(self) -> bool:
        """Its forward expression reads several tensors (lowering's Operands): a merge's inputs,
        or a masked layer's input and the model's ids."""
        return self.layer.merges or self.reads_mask

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

    @property
    def pads1d(self) -> tuple[int, int] | None:
        """F.pad's (left, right) of a 1-D window, Keras's (keras/src/ops/operation_utils.py): 'same'
        puts the odd step after, 'causal' every zero before; None when nothing is padded."""
        layer = self.layer
        if layer.padding == "valid":
            return None
        k, dilation = (layer.kernel_size, layer.dilation_rate) if layer.kind == "conv1d" else (layer.pool_size, 1)
        strides = layer.strides if layer.kind == "conv1d" else layer.resolved_strides
        pads = pads1d(layer.padding, self.report.input_shape[1], k, strides, dilation)
        return pads if any(pads) else None  # the windows fit: 'same' is 'valid' here


def symmetric(pads: tuple[int, int, int, int]) -> bool:
    """Whether a 'same' window pads both sides alike (then torch's own padding argument does)."""
    left, right, top, bottom = pads
    return left == right and top == bottom


@dataclass(frozen=True)
class Node:
    """One value of a graph's forward pass: a layer's output (`step`), or a layout switch
    ('nchw', 'nct', 'nhwc' or 'ntc') of another value (`permute`, step None). `inputs` are
    positions in Plan.nodes, -1 the model's input; `name` is its variable name."""

    name: str
    step: Step | None
    inputs: tuple[int, ...]
    permute: str | None = None


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    output_activation: str | None  # softmax or sigmoid: the last layer's, applied after `logits`
    final_permute: bool  # the last layer leaves a channels-first tensor: back to channels-last before the output
    nodes: tuple[Node, ...] | None = None  # a graph's values in order (None: a chain, `steps` in turn)
    output_axis: int = -1  # the output softmax's axis (a Softmax layer's, channels-last as Keras's)


def _output_axis(last: Step) -> int:
    return last.layer.axis if last.layer.kind == "softmax" else -1


def layer_activation(layer: Any) -> str | None:
    """The activation a layer applies last (None: linear); a Softmax layer's is softmax."""
    act = "softmax" if layer.kind == "softmax" else getattr(layer, "activation", None)
    return None if act == "linear" else act


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
    """A chain's plan (a graph's: graph_plan). A chain whose layer reads embedding's mask is
    planned as a graph: that layer reads the model's ids besides its input."""
    if report.functional or any(row.reads_mask for row in report.layers):
        return graph_plan(report)
    taken: set[str] = set()
    steps: list[Step] = []
    nchw = False
    for layer, rep in zip(spec.layers, report.layers):
        permute = None
        rank = len(rep.input_shape)
        if layer.kind in NCHW_KINDS and not nchw:
            permute, nchw = TO_FIRST[rank], True
        elif layer.kind in CHANNELS_LAST_KINDS and nchw:
            permute, nchw = TO_LAST[rank], False
        steps.append(Step(layer, rep, identifier(rep.name, taken), nchw, permute, layer_activation(layer)))
        if len(rep.output_shape) not in SPATIAL_RANKS:  # no steps or pixels left (a global pooling): no layout
            nchw = False
    last = steps[-1]
    output_activation = None
    if last.activation in SPLIT_ACTIVATIONS:
        output_activation = last.activation
        steps[-1] = Step(last.layer, last.report, last.attr, last.nchw, last.permute, None)
    return Plan(steps, output_activation, final_permute=nchw, output_axis=_output_axis(last))


def merge_layout(step_inputs: list[tuple[bool, int]]) -> bool:
    """Whether a merge runs on channels-first tensors, given its inputs' (nchw, rank): only when
    all are images, or all sequences, and one already is channels-first (then concat's axis is
    translated); otherwise channels-last, where Keras's rank broadcasting (new axes after the
    batch axis) applies as written."""
    ranks = {rank for _, rank in step_inputs}
    return len(ranks) == 1 and ranks <= set(SPATIAL_RANKS) and any(nchw for nchw, _ in step_inputs)


def graph_plan(report: Report) -> Plan:
    """A functional model's plan: its rows in Keras's order (report.layers), each value in the
    layout its producer left it. A layer switches an input only when it needs the other layout
    (NCHW_KINDS, CHANNELS_LAST_KINDS, a merge of inputs in both); each switched value is made
    once, just before its first reader, and shared by the readers after it."""
    taken: set[str] = {"x", *GLOBALS}
    steps: list[Step] = []
    nodes: list[Node] = []
    position: dict[int, int] = {-1: -1}  # report row -> node holding its value
    nchw: dict[int, bool] = {-1: False}  # node -> whether its value is NCHW
    rank: dict[int, int] = {-1: len(report.input_shape)}
    switched: dict[tuple[int, bool], int] = {}  # (node, to NCHW) -> the node holding the switch

    def switch(node: int, to: bool) -> int:
        if rank[node] not in SPATIAL_RANKS or nchw[node] == to:
            return node
        if (node, to) not in switched:
            source = nodes[node].name if node >= 0 else "x"
            layout = (TO_FIRST if to else TO_LAST)[rank[node]]
            name = identifier(f"{source}_{layout}", taken)
            nodes.append(Node(name, None, (node,), layout))
            nchw[len(nodes) - 1], rank[len(nodes) - 1] = to, rank[node]
            switched[node, to] = len(nodes) - 1
        return switched[node, to]

    for row, rep in enumerate(report.layers):
        layer = rep.layer
        inputs = [position[s] for s in rep.sources]
        if layer.kind in NCHW_KINDS:
            want = True
        elif layer.kind in CHANNELS_LAST_KINDS:
            want = False
        elif layer.merges:
            want = merge_layout([(nchw[i], rank[i]) for i in inputs])
        else:
            want = nchw[inputs[0]] and rank[inputs[0]] in SPATIAL_RANKS
        inputs = [switch(i, want) for i in inputs]
        step = Step(layer, rep, identifier(rep.name, taken), want, None, layer_activation(layer),
                    tuple(rank[i] for i in inputs))
        steps.append(step)
        # a masked layer reads the model's ids (-1) too: its mask is the ids that are not 0
        nodes.append(Node(step.attr, step, (*inputs, -1) if step.reads_mask else tuple(inputs)))
        position[row] = len(nodes) - 1
        rank[len(nodes) - 1] = len(rep.output_shape)
        nchw[len(nodes) - 1] = want and len(rep.output_shape) in SPATIAL_RANKS
    output_activation = None
    last = steps[-1]
    if last.activation in SPLIT_ACTIVATIONS:
        output_activation = last.activation
        steps[-1] = Step(last.layer, last.report, last.attr, last.nchw, None, None, last.input_ranks)
        nodes[-1] = Node(nodes[-1].name, steps[-1], nodes[-1].inputs)
    final = nchw[len(nodes) - 1]
    if final:
        switch(len(nodes) - 1, False)
    return Plan(steps, output_activation, final_permute=final, nodes=tuple(nodes),
                output_axis=_output_axis(last))
