"""A small builder of ONNX graphs over onnx.helper: unique value names, initializers for
weights and constants, and the pieces several layer kinds share (activations, the
channels-last/first switches, a batch-sized zero tensor). A recurrent layer's Loop body is
built with the same methods (modelspec/backends/onnx/sequences.py): its constants and
cached tensors live in the outer graph, which a body may read.

Every value is float32 unless said otherwise; the model's input is `input` (float32, or
int32 ids for an `input ... int` spec, as the NumPy engine receives them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelspec.diagnostics import SpecError
from modelspec.errors import ModelspecError

INPUT, OUTPUT = "input", "output"  # the graph's input and output
# Keras's activations as the NumPy kernels compute them (backends/numpy/kernels.py)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
LEAKY_RELU_SLOPE = 0.2  # the activation string's slope (keras/src/activations/activations.py)


class ExportError(SpecError):
    """A spec (a layer kind, an activation, an opset) that cannot be exported to ONNX, with
    the spec line it is on where it has one. Raised before anything is written."""


class Unsupported(ModelspecError):
    """Raised inside a lowering for a part it cannot export; the exporter turns it into an
    ExportError at the layer's line."""


class Graph:
    """Nodes, initializers and value names of one ONNX graph under construction."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self._constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.ids = INPUT  # the model's input, which embedding's mask is read from
        self.shapes: dict[int, tuple] = {}  # each row's output shape by position (-1: the input)
        self._mask: str | None = None
        self._zeros: dict[int, str] = {}
        # each softmax's and sigmoid's output: its input (where a cross-entropy reads the logits)
        self.logits_of: dict[str, str] = {}

    def name(self, hint: str) -> str:
        """A value name not used before: `hint`, or `hint_N`."""
        name, n = hint, self._counts.get(hint, 0)
        while name in self._names:
            n += 1
            name = f"{hint}_{n}"
        self._counts[hint] = n  # the next `hint` starts its search here: naming stays linear
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
            if self.opset >= 15:
                batch = self.op("Shape", [like], "batch", start=0, end=1)
            else:  # Shape's start and end come with opset 15
                batch = self.slice(self.op("Shape", [like], "shape"), 0, 0, 1)
            shape = self.op("Concat", [batch, self.ints([width])], "zeros_shape", axis=0)
            self._zeros[width] = self.op("ConstantOfShape", [shape], "zeros",
                                         value=numpy_helper.from_array(np.zeros(1, np.float32)))
        return self._zeros[width]

    def reduce(self, op: str, x: str, axes: list[int], hint: str | None = None, keepdims: int = 0) -> str:
        """ReduceMean/ReduceMax/ReduceSum over `axes`: an input from opset 18 (ReduceSum's from 13),
        an attribute before."""
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            return self.op(op, [x, self.ints(axes)], hint, keepdims=keepdims)
        return self.op(op, [x], hint, axes=list(axes), keepdims=keepdims)

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
        if name in ("relu", "tanh"):
            return self.op(name.capitalize(), [x], name)
        if name == "sigmoid":
            y = self.sigmoid(x)
            self.logits_of[y] = x
            return y
        if name == "softmax":  # over the last axis (kernels.softmax)
            return self.softmax(x, -1)
        if name == "relu6":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)], name)
        if name == "leaky_relu":
            return self.op("LeakyRelu", [x], name, alpha=float(options.get("negative_slope", LEAKY_RELU_SLOPE)))
        if name in ("elu", "selu"):
            # where(x > 0, x, expm1(min(x, 0))) as kernels.elu: ONNX's Elu and Selu take
            # exp(x) - 1, which loses every digit near 0; expm1(m) = 2t/(1 - t), t = tanh(m/2), does not
            t = self.op("Tanh", [self.op("Mul", [self.op("Min", [x, self.const(0.0)]), self.const(0.5)])])
            em1 = self.op("Div", [self.op("Mul", [t, self.const(2.0)]), self.op("Sub", [self.const(1.0), t])], "expm1")
            positive = self.op("Greater", [x, self.const(0.0)])
            if name == "elu":
                return self.op("Where", [positive, x, em1], name)
            y = self.op("Where", [positive, x, self.op("Mul", [em1, self.const(SELU_ALPHA)])])
            return self.op("Mul", [y, self.const(SELU_SCALE)], name)
        if name == "gelu":  # Keras's string 'gelu' is the exact form: 0.5·x·(1 + erf(x·2^-½))
            e = self.erf(self.op("Mul", [x, self.const(2 ** -0.5)]))
            return self.op("Mul", [self.op("Mul", [self.const(0.5), x]), self.op("Add", [self.const(1.0), e])], name)
        if name == "swish":
            return self.op("Mul", [x, self.sigmoid(x)], name)
        if name == "softplus":
            # np.logaddexp(x, 0) = max(x, 0) + log1p(e^-|x|), which never overflows
            return self.op("Add", [self.op("Relu", [x]), self.log1p(self.op("Exp", [self.op("Neg", [self.op("Abs", [x])])]))],
                           name)
        raise Unsupported(f"the {name} activation")

    def softmax(self, x: str, axis: int, hint: str = "softmax") -> str:
        y = self.op("Softmax", [x], hint, axis=axis)
        self.logits_of[y] = x
        return y

    def sigmoid(self, x: str) -> str:
        """kernels.sigmoid: max(e, x ≥ 0) / (1 + e), e = exp(-|x|), exact in relative terms in
        both tails (onnxruntime's Sigmoid is not, below -10)."""
        e = self.op("Exp", [self.op("Neg", [self.op("Abs", [x])])])
        top = self.op("Max", [e, self.op("Cast", [self.op("GreaterOrEqual", [x, self.const(0.0)])], to=TensorProto.FLOAT)])
        return self.op("Div", [top, self.op("Add", [self.const(1.0), e])], "sigmoid")

    def log1p(self, u: str) -> str:
        """log(1 + u) to a few ulps for small u too: log(w)·u/(w - 1), w = 1 + u (u where w is 1)."""
        w = self.op("Add", [self.const(1.0), u])
        d = self.op("Sub", [w, self.const(1.0)])
        ratio = self.op("Div", [u, self.op("Where", [self.op("Equal", [d, self.const(0.0)]), self.const(1.0), d])])
        return self.op("Where", [self.op("Equal", [d, self.const(0.0)]), u,
                                 self.op("Mul", [self.op("Log", [w]), ratio])], "log1p")

    def erf(self, x: str) -> str:
        """erf as TensorFlow computes it for float32 (kernels.erf: Eigen's rational
        approximation on [-4, 4]), which is Keras's gelu; ONNX's Erf is another approximation."""
        x = self.op("Clip", [x, self.const(-4.0), self.const(4.0)])
        x2 = self.op("Mul", [x, x])

        def horner(first: tuple[float, float], rest: tuple[float, ...]) -> str:
            y = self.op("Add", [self.op("Mul", [x2, self.const(first[0])]), self.const(first[1])])
            for c in rest:
                y = self.op("Add", [self.op("Mul", [y, x2]), self.const(c)])
            return y

        p = horner((-2.72614225801306e-10, 2.77068142495902e-08),
                   (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04,
                    -2.95459980854025e-03, -1.60960333262415e-02))
        q = horner((-1.45660718464996e-05, -2.13374055278905e-04),
                   (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02))
        return self.op("Div", [self.op("Mul", [x, p]), q], "erf")


def value_info(name: str, shape: tuple[Any, ...], elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input or output of `shape`, its batch axis (None) the dynamic `batch`."""
    return helper.make_tensor_value_info(name, elem_type, ["batch" if d is None else d for d in shape])
