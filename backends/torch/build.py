"""The spec as a live nn.Module: one method per layer kind, each returning torch modules.

Weights keep torch's layouts (Linear (out, in), Conv2d (out, in, kh, kw)); `WeightMap`
converts to and from Keras's canonical layouts for get_weights/set_weights. Initial
values are not drawn here: the common Model sets the weights it drew in NumPy.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modelspec import ir
from modelspec.checker import Report

from . import keras_ops
from .plan import Step, plan, symmetric

# ---------------------------------------------------------------------------------------
# Activations, by Keras name. Softmax takes the channel axis (1 on NCHW tensors).


def activation(name: str | None, channel_axis: int = -1) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if name is None or name == "linear":
        return None
    if name == "softmax":
        return functools.partial(torch.softmax, dim=channel_axis)
    if name == "leaky_relu":
        return functools.partial(F.leaky_relu, negative_slope=0.2)  # the activation's slope; the layer's is 0.3
    return {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": F.elu, "selu": keras_ops.selu,
            "gelu": F.gelu, "swish": F.silu, "softplus": F.softplus, "relu6": F.relu6}[name]


# ---------------------------------------------------------------------------------------
# Modules


class Dense(nn.Linear):
    def __init__(self, in_features: int, units: int, use_bias: bool, act: Callable | None) -> None:
        super().__init__(in_features, units, bias=use_bias)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return self.act(y) if self.act else y


class Conv2D(nn.Conv2d):
    """A Conv2d on NCHW; 'same' padding with the extra pixel after (right, bottom), as Keras."""

    def __init__(self, in_channels: int, layer: ir.Conv2D, pads: tuple[int, int, int, int] | None,
                 act: Callable | None) -> None:
        pads = pads or (0, 0, 0, 0)
        same_both_sides = symmetric(pads)
        super().__init__(in_channels, layer.filters, layer.kernel_size, layer.strides,
                         padding=(pads[2], pads[0]) if same_both_sides else 0, bias=layer.use_bias)
        self.pads = None if same_both_sides else pads
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads:
            x = F.pad(x, self.pads)
        y = self._conv_forward(x, self.weight, self.bias)
        return self.act(y) if self.act else y


class Lambda(nn.Module):
    """A layer without weights: a function of its input (pooling, flatten, an activation)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], description: str) -> None:
        super().__init__()
        self.fn, self.description = fn, description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.description


class Dropout(nn.Module):
    """Keras's inverted dropout, active only in training, with masks from its own generator."""

    def __init__(self, rate: float, generator: torch.Generator) -> None:
        super().__init__()
        self.rate, self.generator = rate, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        if self.rate >= 1:
            return torch.zeros_like(x)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.rate
        return x * keep / (1 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class SpecModule(nn.Module):
    """A spec in torch: `logits(x)` runs every layer but a final softmax or sigmoid,
    `forward(x)` the whole model. Inputs and outputs are channels-last, as in Keras."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", output: Callable | None, name: str,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.Sequential(layers)
        self.output_activation = output
        self.keras_name = name
        self.input_shape = input_shape

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.input_shape or x.dtype != torch.float32:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"expected float32 inputs of shape (batch, {shape}); received {x.dtype} {tuple(x.shape)}")
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x)
        return self.output_activation(y) if self.output_activation else y

    def extra_repr(self) -> str:
        return f"name={self.keras_name!r}"


# ---------------------------------------------------------------------------------------
# Weights in Keras's layout


def _dense_to_keras(w: torch.Tensor) -> torch.Tensor:
    return w.t()


def _conv_to_keras(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _conv_from_keras(k: torch.Tensor) -> torch.Tensor:
    return k.permute(3, 2, 0, 1)


@dataclass
class WeightMap:
    """Every weight in Keras's order, with the conversions between the two layouts."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    to_keras: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    from_keras: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)

    def add(self, tensor: torch.Tensor, to_keras=lambda t: t, from_keras=lambda t: t, trainable=True) -> None:
        self.tensors.append(tensor)
        self.to_keras.append(to_keras)
        self.from_keras.append(from_keras)
        self.trainable.append(trainable)


@dataclass
class Built:
    module: SpecModule
    weights: WeightMap
    penalties: list[tuple[torch.Tensor, float, float]]  # (kernel, l1, l2)


# ---------------------------------------------------------------------------------------
# The builder


class Builder:
    """One method per layer kind: `dense(step)` returns the module for a dense layer."""

    def __init__(self, spec: ir.Spec, report: Report, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.spec, self.report, self.seed, self.device = spec, report, seed, torch.device(device)
        self.dropouts = 0
        self.weights = WeightMap()
        self.penalties: list[tuple[torch.Tensor, float, float]] = []

    def build(self) -> Built:
        p = plan(self.spec, self.report)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        taken = {s.attr for s in p.steps}
        for step in p.steps:
            if step.permute:
                layers[_free(f"to_{step.permute}", taken)] = self.permute(step.permute)
            layers[step.attr] = getattr(self, step.layer.kind)(step)
        if p.final_permute:
            layers[_free("to_nhwc", taken)] = self.permute("nhwc")
        module = SpecModule(layers, activation(p.output_activation), self.spec.name, tuple(self.spec.input_shape))
        return Built(module, self.weights, self.penalties)

    @staticmethod
    def permute(to: str) -> nn.Module:
        if to == "nchw":
            return Lambda(lambda x: x.permute(0, 3, 1, 2), "NHWC -> NCHW")
        return Lambda(lambda x: x.permute(0, 2, 3, 1), "NCHW -> NHWC")

    def _kernel(self, step: Step, module: nn.Module, to_keras, from_keras) -> None:
        self.weights.add(module.weight, to_keras, from_keras)
        if module.bias is not None:
            self.weights.add(module.bias)
        reg = step.layer.kernel_regularizer
        if reg is not None and (reg.l1 or reg.l2):
            self.penalties.append((module.weight, reg.l1, reg.l2))

    def dense(self, step: Step) -> nn.Module:
        layer = step.layer
        module = Dense(step.report.input_shape[-1], layer.units, layer.use_bias, activation(step.activation))
        self._kernel(step, module, _dense_to_keras, _dense_to_keras)
        return module

    def conv2d(self, step: Step) -> nn.Module:
        module = Conv2D(step.report.input_shape[-1], step.layer, step.pads, activation(step.activation, 1))
        self._kernel(step, module, _conv_to_keras, _conv_from_keras)
        return module

    def maxpool2d(self, step: Step) -> nn.Module:
        layer, pads = step.layer, step.pads
        k, s = layer.pool_size, layer.resolved_strides
        if pads is None:
            return Lambda(lambda x: F.max_pool2d(x, k, s), f"max {k} stride {s}")
        if symmetric(pads):
            return Lambda(lambda x: F.max_pool2d(x, k, s, padding=(pads[2], pads[0])), f"max {k} stride {s} same")
        return Lambda(lambda x: F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s),
                      f"max {k} stride {s} same {pads}")

    def avgpool2d(self, step: Step) -> nn.Module:
        layer, pads = step.layer, step.pads
        k, s = layer.pool_size, layer.resolved_strides
        if pads is None:
            return Lambda(lambda x: F.avg_pool2d(x, k, s), f"average {k} stride {s}")
        if symmetric(pads):  # padding cells are left out of the average, as in Keras
            return Lambda(lambda x: F.avg_pool2d(x, k, s, padding=(pads[2], pads[0]), count_include_pad=False),
                          f"average {k} stride {s} same")
        return Lambda(lambda x: keras_ops.avg_pool2d_same(x, k, s, pads), f"average {k} stride {s} same {pads}")

    def globalavgpool2d(self, step: Step) -> nn.Module:
        dims = (2, 3) if step.nchw else (1, 2)
        return Lambda(lambda x: x.mean(dim=dims), "mean over height and width")

    def flatten(self, step: Step) -> nn.Module:
        return Lambda(lambda x: x.flatten(1), "flatten")

    def dropout(self, step: Step) -> nn.Module:
        # The masks cannot match another framework's; they are reproducible from the seeds.
        self.dropouts += 1
        seed = step.layer.seed if step.layer.seed is not None else self.seed * 7919 + self.dropouts
        return Dropout(step.layer.rate, torch.Generator(self.device).manual_seed(seed))

    def batchnorm(self, step: Step) -> nn.Module:
        layer = step.layer
        module = keras_ops.BatchNorm(step.report.input_shape[-1], layer.momentum, layer.epsilon, step.channel_axis)
        self.weights.add(module.gamma)
        self.weights.add(module.beta)
        self.weights.add(module.moving_mean, trainable=False)
        self.weights.add(module.moving_variance, trainable=False)
        return module

    def activation(self, step: Step) -> nn.Module:
        fn = activation(step.activation, step.channel_axis)
        return Lambda(fn or (lambda x: x), step.activation or "linear")

    def leaky_relu(self, step: Step) -> nn.Module:
        slope = step.layer.negative_slope
        return Lambda(lambda x: F.leaky_relu(x, slope), f"negative_slope={slope}")


def _free(name: str, taken: set[str]) -> str:
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def build(spec: ir.Spec, report: Report, seed: int = 0, device: torch.device | str = "cpu") -> Built:
    """The module on `device` (its dropout generators are made there; move it with the engine)."""
    return Builder(spec, report, seed, device).build()
