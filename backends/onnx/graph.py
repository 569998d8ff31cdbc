"""A small builder of ONNX graphs over onnx.helper: unique value names, initializers for
weights and constants, and the pieces several layer kinds share (activations, the
channels-last/first switches, a batch-sized zero tensor).

Every value is float32 unless said otherwise; the model's input is `input` (float32, or
int32 ids for an `input ... int` spec, as the NumPy engine receives them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelspec.diagnostics import SpecError

# Keras's activations as the NumPy kernels compute them (backends/numpy/kernels.py)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
LEAKY_RELU_SLOPE = 0.2  # the activation string's slope (keras/src/activations/activations.py)


class ExportError(SpecError):
    """A spec (a layer kind, an activation, an opset) that cannot be exported to ONNX, with
    the spec line it is on where it has one. Raised before anything is written."""


class Unsupported(Exception):
    """Raised inside a lowering for a part it cannot export; the exporter turns it into an
    ExportError at the layer's line."""


class Graph:
    """Nodes, initializers and value names of one ONNX graph under construction."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.ids = "input"  # the model's input, which embedding's mask is read from
        self.ids_int = False  # whether it holds int32 ids (`input ... int`)
        self.shapes: dict[int, tuple] = {}  # each row's output shape by position (-1: the input)
        self._mask: str | None = None
        self._zeros: dict[int, str] = {}

    def name(self, hint: str) -> str:
        """A value name not used before: `hint`, or `hint_N`."""
        name, n = hint, 0
        while name in self._names:
            n += 1
            name = f"{hint}_{n}"
        self._names.add(name)
        return name

    def reserve(self, name: str) -> str:
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1,
           **attrs: Any) -> Any:
        """One node; its output name (or names, when `outputs` > 1)."""
        base = hint or op_type.lower()
        out = [self.name(base) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, out, name=self.name(f"node/{base}"), **attrs))
        return out[0] if outputs == 1 else out

    def param(self, name: str, value: np.ndarray) -> str:
        """An initializer holding `value` (a weight, or a weight in ONNX's layout)."""
        name = self.name(name)
        value = np.asarray(value)
        # (not np.ascontiguousarray, which makes a scalar a vector of one)
        self.initializers.append(numpy_helper.from_array(value if value.flags.c_contiguous else value.copy(), name))
        return name

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A constant as an initializer, shared between the nodes that use the same one."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.param("const", array)
        return self._constants[key]

    def ints(self, values: Any) -> str:
        return self.const(list(values), np.int64)

    # -- shared pieces ---------------------------------------------------------------------

    def zeros(self, like: str, width: int) -> str:
        """A (batch, width) float32 zero tensor, batch read from the model's input `like`."""
        if width not in self._zeros:
            batch = self.op("Shape", [like], "batch", start=0, end=1)
            shape = self.op("Concat", [batch, self.ints([width])], "zeros_shape", axis=0)
            self._zeros[width] = self.op("ConstantOfShape", [shape], "zeros",
                                         value=numpy_helper.from_array(np.zeros(1, np.float32)))
        return self._zeros[width]

    def channels_first(self, x: str, rank: int) -> str:
        """(n, ..., c) to (n, c, ...): ONNX's Conv and pools read channels first."""
        return self.op("Transpose", [x], "nchw", perm=[0, rank - 1, *range(1, rank - 1)])

    def channels_last(self, x: str, rank: int) -> str:
        return self.op("Transpose", [x], "nhwc", perm=[0, *range(2, rank), 1])

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])], "slice")

    def activation(self, name: str, x: str, **options: Any) -> str:
        """Keras's activation `name` of x, as backends/numpy/kernels.py computes it."""
        if name == "linear":
            return x
        if name in ("relu", "sigmoid", "tanh"):
            return self.op(name.capitalize(), [x], name)
        if name == "softmax":  # over the last axis (kernels.softmax)
            return self.op("Softmax", [x], name, axis=-1)
        if name == "relu6":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)], name)
        if name == "leaky_relu":
            return self.op("LeakyRelu", [x], name, alpha=float(options.get("negative_slope", LEAKY_RELU_SLOPE)))
        if name == "elu":
            return self.op("Elu", [x], name, alpha=1.0)
        if name == "selu":
            return self.op("Selu", [x], name, alpha=SELU_ALPHA, gamma=SELU_SCALE)
        if name == "gelu":  # Keras's string 'gelu' is the exact form: 0.5·x·(1 + erf(x/√2))
            e = self.op("Erf", [self.op("Mul", [x, self.const(2 ** -0.5)])])
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5)]), self.op("Add", [e, self.const(1.0)])], name)
        if name == "swish":
            return self.op("Mul", [x, self.op("Sigmoid", [x])], name)
        if name == "softplus":
            # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), which never overflows (np.logaddexp(x, 0))
            tail = self.op("Log", [self.op("Add", [self.op("Exp", [self.op("Neg", [self.op("Abs", [x])])]),
                                                   self.const(1.0)])])
            return self.op("Add", [self.op("Relu", [x]), tail], name)
        raise Unsupported(f"the {name} activation")


def value_info(name: str, shape: tuple[Any, ...], elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input or output of `shape`, its batch axis (None) the dynamic `batch`."""
    return helper.make_tensor_value_info(name, elem_type, ["batch" if d is None else d for d in shape])
