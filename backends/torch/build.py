"""The spec as a live nn.Module, made from lowering.py's units: each layer's module and
its forward pass as plain torch calls, bound once here.

Weights keep torch's layouts (Linear (out, in), Conv2d (out, in, kh, kw)); `WeightMap`
converts to and from Keras's canonical layouts for get_weights/set_weights. Initial
values are not drawn here: the common Model sets the weights it drew in NumPy.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from modelspec import ir
from modelspec.distributed import all_reduce
from modelspec.checker import Report

from . import keras_ops
from .lowering import (LAYOUTS, MODULE, SELF, Call, Layout, Operand, Unit, X, activation, graph_units, literal,
                       units)
from .plan import Plan, Step, plan

# ---------------------------------------------------------------------------------------
# Modules


class Layer(nn.Module):
    """One spec layer: the module it owns, if any, and its forward pass as functions of
    (input, module), made once from the lowering's expressions."""

    def __init__(self, module: nn.Module | None, steps: list[Callable], description: str) -> None:
        super().__init__()
        self.module, self.steps, self.description = module, steps, description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        for step in self.steps:
            x = step(x, module)
        return x

    def extra_repr(self) -> str:
        return self.description


class GlobalBatch:
    """The global batch of a data-parallel training step (modelspec.distributed), as the
    modules whose numbers depend on the whole batch see it: its size `total` and this
    worker's rows of it, set by the engine around each training forward pass (`total` is
    None outside one: the module then sees its input as the whole batch)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.total: int | None = None
        self.rows = slice(0, 0)

    @contextlib.contextmanager
    def step(self, total: int, rows: slice):
        self.total, self.rows = total, rows
        try:
            yield
        finally:
            self.total = None

    def rand(self, shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """torch.rand of this worker's rows: the whole global batch's draw, so that every
        worker's generator moves as one process's does and the rows are one process's."""
        if self.total is None:
            return torch.rand(shape, generator=generator, device=device)
        if shape[0] != self.rows.stop - self.rows.start:
            raise RuntimeError(f"a random draw of shape {tuple(shape)} in a distributed step is not over this "
                               f"worker's {self.rows.stop - self.rows.start} rows of the batch")
        return torch.rand((self.total, *shape[1:]), generator=generator, device=device)[self.rows]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ of `t` over the workers, differentiably (the gradient of a sum is the sum of
        the gradients: every worker's loss reads it)."""
        return _AllReduce.apply(t)


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        all_reduce(grad)
        return grad


class Dropout(nn.Module):
    """Keras's inverted dropout, active only in training, with masks from its own generator
    (in a data-parallel step, this worker's rows of the global batch's mask)."""

    def __init__(self, rate: float, generator: torch.Generator, batch: GlobalBatch | None = None) -> None:
        super().__init__()
        self.rate, self.generator, self.batch = rate, generator, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        if self.rate >= 1:
            return torch.zeros_like(x)
        if self.batch is None:
            draw = torch.rand(x.shape, generator=self.generator, device=x.device)
        else:
            draw = self.batch.rand(x.shape, self.generator, x.device)
        return x * (draw >= self.rate) / (1 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class GlobalBatchNorm(keras_ops.BatchNorm):
    """batchnorm in a data-parallel step: the global batch's mean, then its biased variance
    about that mean, each a sum over the workers (weighted by their rows, as one process's
    var_mean is over the whole batch); the moving statistics then move alike everywhere."""

    batch: GlobalBatch

    def statistics(self, x: torch.Tensor, others: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch.total is None:
            return super().statistics(x, others)
        count = self.batch.total * math.prod(x.shape[d] for d in others if d != 0)
        mean = self.batch.sum(x.sum(dim=others)) / count
        shape = [1 if d in others else -1 for d in range(x.dim())]
        variance = self.batch.sum((x - mean.view(shape)).square().sum(dim=others)) / count
        return variance, mean


class GlobalAttention(keras_ops.MultiHeadAttention):
    """attention whose dropout mask, in a data-parallel step, is this worker's rows of the
    global batch's."""

    batch: GlobalBatch

    def random(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        return self.batch.rand(shape, self.generator, device)


# the live module's class of a keras_ops one whose numbers read the whole batch
GLOBAL_BATCH_CLASSES = {keras_ops.BatchNorm: GlobalBatchNorm, keras_ops.MultiHeadAttention: GlobalAttention}


class SpecModule(nn.Module):
    """A spec in torch: `logits(x)` runs every layer but a final softmax or sigmoid,
    `forward(x)` the whole model. Inputs and outputs are channels-last, as in Keras; the
    inputs of `input ... int` are integer ids (int64 or int32)."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", output: Callable | None, name: str,
                 input_shape: tuple[int, ...], ids: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(layers)
        self.output_activation = output
        self.keras_name = name
        self.input_shape = input_shape
        self.dtypes = (torch.int64, torch.int32) if ids else (torch.float32,)

    def check(self, x: torch.Tensor) -> None:
        if x.shape[1:] != self.input_shape or x.dtype not in self.dtypes:
            shape = ", ".join(map(str, self.input_shape))
            what = "integer ids (int64 or int32)" if self.dtypes[0] == torch.int64 else "float32 inputs"
            raise ValueError(f"expected {what} of shape (batch, {shape}); received {x.dtype} {tuple(x.shape)}")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x)
        return self.output_activation(y) if self.output_activation else y

    def extra_repr(self) -> str:
        return f"name={self.keras_name!r}"


class Merge(nn.Module):
    """A layer of several inputs (lowering.py's Operands): a merge, or a layer that reads the
    model's ids for embedding's mask; one expression of them, maybe calling its own module."""

    def __init__(self, module: nn.Module | None, forward: Callable, description: str) -> None:
        super().__init__()
        self.module, self.function, self.description = module, forward, description

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.function(xs, self.module)

    def extra_repr(self) -> str:
        return self.description


class GraphModule(SpecModule):
    """A functional spec in torch: `layers` holds a module per value of the forward pass
    (each layer, each layout switch), run in Keras's layer order, each reading the values
    `inputs` names (-1 the model's input); a value is dropped after its last reader."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", inputs: list[tuple[int, ...]], output: Callable | None,
                 name: str, input_shape: tuple[int, ...], ids: bool = False) -> None:
        super().__init__(OrderedDict(), output, name, input_shape, ids)
        self.layers = nn.ModuleDict(layers)
        self.inputs = inputs
        last_reader = {j: i for i, sources in enumerate(inputs) for j in sources}
        self.drop = [[j for j in sources if last_reader[j] == i and j >= 0] for i, sources in enumerate(inputs)]

    def values(self, x: torch.Tensor, keep: bool = False) -> list[torch.Tensor | None]:
        """Every value of the forward pass; those no longer read are None unless `keep`."""
        out: list[torch.Tensor | None] = []
        for module, sources, drop in zip(self.layers.values(), self.inputs, self.drop):
            out.append(module(*(x if j < 0 else out[j] for j in sources)))
            if not keep:
                for j in drop:
                    out[j] = None
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.values(x)[-1]


# ---------------------------------------------------------------------------------------
# Weights in Keras's layout


def _to_torch(layout: Layout) -> Callable[[torch.Tensor], torch.Tensor]:
    """Keras's layout to torch's: the gate blocks reordered, then the axes permuted."""
    def convert(t: torch.Tensor) -> torch.Tensor:
        t = keras_ops.reorder_gates(t, layout.gates) if layout.gates else t
        return t.permute(layout.to_torch) if layout.to_torch else t
    return convert


def _to_keras(layout: Layout) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's layout to Keras's: the axes permuted, then the gate blocks put back."""
    def convert(t: torch.Tensor) -> torch.Tensor:
        t = t.permute(layout.to_keras) if layout.to_keras else t
        return keras_ops.reorder_gates(t, layout.gates_back) if layout.gates else t
    return convert


@dataclass
class WeightMap:
    """Every weight in Keras's order, with the conversions between the two layouts."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    to_keras: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    from_keras: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)

    def add(self, tensor: torch.Tensor, layout: Layout | None, trainable: bool) -> None:
        self.tensors.append(tensor)
        self.to_keras.append(_to_keras(layout) if layout else _same)
        self.from_keras.append(_to_torch(layout) if layout else _same)
        self.trainable.append(trainable)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class Built:
    module: SpecModule
    weights: WeightMap
    penalties: list[tuple[torch.Tensor, float, float]]  # (kernel, l1, l2)


# ---------------------------------------------------------------------------------------
# From the lowering's data to modules and functions


def resolve(target: str) -> Callable:
    """The torch object a Call's target names."""
    if target.startswith("."):
        return getattr(torch.Tensor, target[1:])
    namespace, _, name = target.rpartition(".")
    return getattr({"": keras_ops, "nn": nn, "F": F, "torch": torch}[namespace], name)


def function(expr: Call) -> Callable[[torch.Tensor, nn.Module | None], torch.Tensor]:
    """`expr` as a function of (x, the layer's module), its constant arguments bound now."""
    (i, inner), = [(i, a) for i, a in enumerate(expr.args) if a is X or isinstance(a, Call)]
    before, after, kwargs = expr.args[:i], expr.args[i + 1:], expr.kwargs
    if expr.target == SELF:
        if inner is X:
            return lambda x, m: m(x)
        f = function(inner)
        return lambda x, m: m(f(x, m))
    fn = resolve(expr.target)
    if inner is X and not before:
        return lambda x, m: fn(x, *after, **kwargs)
    f = function(inner) if inner is not X else (lambda x, m: x)
    return lambda x, m: fn(*before, f(x, m), *after, **kwargs)


BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def operands_function(expr: Any) -> Callable[[tuple[torch.Tensor, ...], nn.Module | None], Any]:
    """A merge's expression as a function of (its inputs, module); constants bound now."""
    if isinstance(expr, Operand):
        i = expr.i
        return lambda xs, m: xs[i]
    if isinstance(expr, tuple):
        parts = [operands_function(v) for v in expr]
        return lambda xs, m: tuple(f(xs, m) for f in parts)
    if isinstance(expr, Call) and expr.target == SELF:
        args, kwargs = [operands_function(a) for a in expr.args], expr.kwargs
        return lambda xs, m: m(*(a(xs, m) for a in args), **kwargs)
    if isinstance(expr, Call):
        fn = BINARY.get(expr.target) or resolve(expr.target)
        args, kwargs = [operands_function(a) for a in expr.args], expr.kwargs
        return lambda xs, m: fn(*(a(xs, m) for a in args), **kwargs)
    return lambda xs, m: expr


class Builder:
    """Makes each layer's Unit (lowering.py) into live modules, in the plan's order."""

    def __init__(self, spec: ir.Spec, report: Report, seed: int = 0, device: torch.device | str = "cpu",
                 batch: GlobalBatch | None = None) -> None:
        self.spec, self.report, self.seed, self.device = spec, report, seed, torch.device(device)
        self.batch = batch
        self.dropouts = 0
        self.weights = WeightMap()
        self.penalties: list[tuple[torch.Tensor, float, float]] = []

    def build(self) -> Built:
        p = plan(self.spec, self.report)
        if p.nodes is not None:
            return self.graph(p)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        taken = {s.attr for s in p.steps}
        for name, step, unit in units(p):
            layers[name if step else _free(name, taken)] = self.layer(unit, step)
        output = activation(p.output_activation, axis=p.output_axis)
        module = SpecModule(layers, None if output is X else functools.partial(function(output), m=None),
                            self.spec.name, tuple(self.spec.input_shape), self.spec.input_dtype == "int32")
        return Built(module, self.weights, self.penalties)

    def graph(self, p: Plan) -> Built:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for node, unit in graph_units(p):
            layers[node.name] = self.layer(unit, node.step)
        output = activation(p.output_activation, axis=p.output_axis)
        module = GraphModule(layers, [node.inputs for node in p.nodes],
                             None if output is X else functools.partial(function(output), m=None),
                             self.spec.name, tuple(self.spec.input_shape), self.spec.input_dtype == "int32")
        return Built(module, self.weights, self.penalties)

    def layer(self, unit: Unit, step: Step | None = None) -> nn.Module:
        module = self.module(unit.module, step) if unit.module else None
        for weight in unit.weights:
            self.weights.add(getattr(module, weight.tensor), LAYOUTS.get(weight.layout), weight.trainable)
        if unit.penalty:
            self.penalties += [(getattr(module, unit.weights[i].tensor), *unit.penalty) for i in unit.penalized]
        if unit.forward == (MODULE,):
            return module  # the layer is its module's call
        if step is not None and step.operands:  # a masked layer's second operand: the model's ids
            n = len(step.input_ranks) + step.reads_mask
            return Merge(module, operands_function(unit.forward[0]),
                         literal(unit.forward[0], x=tuple(f"x{i}" for i in range(n)), attr="module"))
        return Layer(module, [function(e) for e in unit.forward],
                     "; ".join(literal(e, attr="module") for e in unit.forward) or "x")

    def module(self, call: Call, step: Step) -> nn.Module:
        # Dropout masks cannot match another framework's; here they are reproducible from the
        # seeds, drawn from a generator per layer (nn.Dropout draws from torch's global one, and
        # so does a keras_ops module whose `generator` is None, as in emitted programs).
        if call.target == "nn.Dropout":
            return Dropout(*call.args, self.generator(step), self.batch)
        cls = resolve(call.target)
        if self.batch is not None and cls in GLOBAL_BATCH_CLASSES:
            module = GLOBAL_BATCH_CLASSES[cls](*call.args, **call.kwargs)
            module.batch = self.batch
        else:
            module = cls(*call.args, **call.kwargs)
        if getattr(module, "generator", False) is None:
            module.generator = self.generator(step)
        return module

    def generator(self, step: Step) -> torch.Generator:
        """A layer's own generator: from its seed, or else from the model's and its place."""
        self.dropouts += 1
        seed = step.layer.seed if step.layer.seed is not None else self.seed * 7919 + self.dropouts
        return torch.Generator(self.device).manual_seed(seed)


def _free(name: str, taken: set[str]) -> str:
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def build(spec: ir.Spec, report: Report, seed: int = 0, device: torch.device | str = "cpu",
          batch: GlobalBatch | None = None) -> Built:
    """The module on `device` (its dropout generators are made there; move it with the engine).
    `batch`: a data-parallel engine's global batch, which batchnorm and the dropout masks read."""
    return Builder(spec, report, seed, device, batch).build()
