"""A checked spec's layers as ONNX nodes: one method per layer kind, named as the kind.

Each method takes the graph under construction, the layer's report row, the name of the
value it reads (a list for a merge) and its weights in Keras's order and layout (what
Model.get_weights returns), and returns the name of its output. Tensors stay channels-last,
as Keras's; a kind whose ONNX op reads channels first (Conv, the pools) switches around it.
The numbers are Keras's inference: backends/numpy/kernels.py's forward with training off,
operation for operation where the order of float32 operations matters.
"""

from __future__ import annotations

import numpy as np

from modelspec import ir
from modelspec.checker import LayerReport
from modelspec.shapes import pads1d, same_padding

from . import sequences
from .graph import Graph


def weight(g: Graph, row: LayerReport, w: list[np.ndarray], i: int, value: np.ndarray | None = None) -> str:
    """Weight i of the row as an initializer named by its Keras path; `value`, the weight in
    ONNX's layout, is named `<path>:onnx`."""
    path = row.weights[i].path
    return g.param(path if value is None else f"{path}:onnx", np.asarray(w[i] if value is None else value, np.float32))


def bias_add(g: Graph, row: LayerReport, w: list[np.ndarray], y: str, use_bias: bool, i: int = 1) -> str:
    return g.op("Add", [y, weight(g, row, w, i)], "bias_add") if use_bias else y


def conv(g: Graph, row: LayerReport, w: list[np.ndarray], x: str, rank: int, strides: tuple[int, ...],
         pads: list[tuple[int, int]], dilations: tuple[int, ...], use_bias: bool) -> str:
    """Keras's channels-last convolution as ONNX's channels-first Conv: the kernel
    (k..., in, out) becomes (out, in, k...), the pads explicit (before..., after...)."""
    kernel = np.transpose(w[0], (rank - 1, rank - 2, *range(rank - 2)))
    inputs = [g.channels_first(x, rank), weight(g, row, w, 0, kernel)]
    if use_bias:
        inputs.append(weight(g, row, w, 1))
    y = g.op("Conv", inputs, row.name, strides=list(strides), dilations=list(dilations),
             pads=[p[0] for p in pads] + [p[1] for p in pads], kernel_shape=list(w[0].shape[:rank - 2]))
    return g.channels_last(y, rank)


def pool(g: Graph, x: str, op: str, rank: int, size: tuple[int, ...], strides: tuple[int, ...],
         padding: str, shape: tuple[int, ...]) -> str:
    """Max or average pooling, channels last. 'same' pads as TensorFlow (the extra cell
    after); ONNX's MaxPool leaves the padded cells out as -inf does, and AveragePool with
    count_include_pad=0 leaves them out of the divisor, as Keras does."""
    pads = [same_padding(n, k, s) for n, k, s in zip(shape[1:rank - 1], size, strides)] if padding == "same" \
        else [(0, 0)] * len(size)
    options = {"count_include_pad": 0} if op == "AveragePool" else {}
    y = g.op(op, [g.channels_first(x, rank)], op.lower(), kernel_shape=list(size), strides=list(strides),
             pads=[p[0] for p in pads] + [p[1] for p in pads], **options)
    return g.channels_last(y, rank)


def expand_ranks(g: Graph, xs: list[str], shapes: list[tuple]) -> list[str]:
    """Keras's merge rule (base_merge.py): a lower-rank input gets new axes right after the batch axis."""
    rank = max(len(s) for s in shapes)
    return [x if len(s) == rank else g.op("Unsqueeze", [x, g.ints(range(1, 1 + rank - len(s)))], "expand")
            for x, s in zip(xs, shapes)]


def fold(g: Graph, op: str, xs: list[str]) -> str:
    """The inputs folded left to right, as each Keras merge function does: ((x1 op x2) op x3)."""
    y = xs[0]
    for x in xs[1:]:
        y = g.op(op, [y, x], op.lower())
    return y


class Lowering:
    def dense(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.Dense = row.layer
        y = bias_add(g, row, w, g.op("MatMul", [x, weight(g, row, w, 0)], row.name), layer.use_bias)
        return g.activation(layer.activation, y)

    def conv2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.Conv2D = row.layer
        k = layer.kernel_size
        pads = [same_padding(n, kk, s) for n, kk, s in zip(row.input_shape[1:3], k, layer.strides)] \
            if layer.padding == "same" else [(0, 0), (0, 0)]
        y = conv(g, row, w, x, 4, layer.strides, pads, (1, 1), layer.use_bias)
        return g.activation(layer.activation, y)

    def conv1d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.Conv1D = row.layer
        pads = [pads1d(layer.padding, row.input_shape[1], layer.kernel_size, layer.strides, layer.dilation_rate)]
        y = conv(g, row, w, x, 3, (layer.strides,), pads, (layer.dilation_rate,), layer.use_bias)
        return g.activation(layer.activation, y)

    def flatten(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.op("Flatten", [x], row.name, axis=1)  # row-major: channels last, as Keras flattens

    def reshape(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        # 0 keeps the batch axis; the checker has resolved a -1
        return g.op("Reshape", [x, g.ints([0, *row.output_shape[1:]])], row.name)

    def dropout(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return x  # the identity at inference

    def batchnorm(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        """(x - moving_mean)·inv_std·gamma + beta, inv_std = 1/sqrt(moving_variance + epsilon)
        computed here in float32 as the NumPy kernel computes it."""
        layer: ir.BatchNorm = row.layer
        inv_std = 1 / np.sqrt(np.asarray(w[3], np.float32) + np.float32(layer.epsilon))
        y = g.op("Mul", [g.op("Sub", [x, weight(g, row, w, 2)]), g.param(f"{row.name}/inv_std", inv_std)])
        y = g.op("Mul", [y, weight(g, row, w, 0)])
        return g.op("Add", [y, weight(g, row, w, 1)], row.name)

    def layernorm(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        """x·inv + (beta - mean·inv), inv = gamma/sqrt(variance + epsilon), the biased
        variance of each position's last axis (the NumPy kernel's order of operations)."""
        layer: ir.LayerNorm = row.layer
        mean = g.reduce("ReduceMean", x, [-1], "mean", keepdims=1)
        centred = g.op("Sub", [x, mean])
        variance = g.reduce("ReduceMean", g.op("Mul", [centred, centred]), [-1], "variance", keepdims=1)
        inv_std = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [variance, g.const(layer.epsilon)])])])
        inv = g.op("Mul", [inv_std, weight(g, row, w, 0)])
        shift = g.op("Sub", [weight(g, row, w, 1), g.op("Mul", [mean, inv])])
        return g.op("Add", [g.op("Mul", [x, inv]), shift], row.name)

    def maxpool2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.MaxPool2D = row.layer
        return pool(g, x, "MaxPool", 4, layer.pool_size, layer.resolved_strides, layer.padding, row.input_shape)

    def avgpool2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.AvgPool2D = row.layer
        return pool(g, x, "AveragePool", 4, layer.pool_size, layer.resolved_strides, layer.padding, row.input_shape)

    def maxpool1d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.MaxPool1D = row.layer
        return pool(g, x, "MaxPool", 3, (layer.pool_size,), (layer.resolved_strides,), layer.padding, row.input_shape)

    def avgpool1d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.AvgPool1D = row.layer
        return pool(g, x, "AveragePool", 3, (layer.pool_size,), (layer.resolved_strides,), layer.padding,
                    row.input_shape)

    def globalavgpool2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.reduce("ReduceMean", x, [1, 2], row.name, keepdims=0)

    def globalmaxpool2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.reduce("ReduceMax", x, [1, 2], row.name, keepdims=0)

    def globalavgpool1d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        if not row.reads_mask:
            return g.reduce("ReduceMean", x, [1], row.name, keepdims=0)
        # the mean of the steps whose id is not 0: Σ where(mask, x, 0) / Σ mask (a sample with
        # every step masked gives NaN, as in Keras)
        mask = g.op("Unsqueeze", [sequences.mask(g), g.ints([2])], "mask")
        total = g.reduce("ReduceSum", g.op("Where", [mask, x, g.const(0.0)]), [1], keepdims=0)
        count = g.reduce("ReduceSum", g.op("Cast", [mask], to=1), [1], keepdims=0)
        return g.op("Div", [total, count], row.name)

    def globalmaxpool1d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.reduce("ReduceMax", x, [1], row.name, keepdims=0)

    def zeropadding2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        (top, bottom), (left, right) = row.layer.padding
        return g.op("Pad", [x, g.ints([0, top, left, 0, 0, bottom, right, 0]), g.const(0.0)], row.name,
                    mode="constant")

    def upsampling2d(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        """Each pixel repeated: (n, h, w, c) → (n, h, 1, w, 1, c) broadcast to (n, h, sh, w, sw, c)."""
        sh, sw = row.layer.size
        _, h, wd, c = row.input_shape
        y = g.op("Reshape", [x, g.ints([0, h, 1, wd, 1, c])])
        y = g.op("Expand", [y, g.ints([1, 1, sh, 1, sw, 1])])
        return g.op("Reshape", [y, g.ints([0, h * sh, wd * sw, c])], row.name)

    def prelu(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        # x where x ≥ 0, else alpha·x: relu(x) - alpha·relu(-x), value for value
        return g.op("PRelu", [x, weight(g, row, w, 0)], row.name)

    def rescale(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        layer: ir.Rescale = row.layer
        return g.op("Add", [g.op("Mul", [x, g.const(layer.scale)]), g.const(layer.offset)], row.name)

    def normalize(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        """(x - mean) / max(sqrt(variance), 1e-7) (keras.backend.epsilon()); Keras's `count` is never read."""
        scale = np.maximum(np.sqrt(np.asarray(w[1], np.float32)), np.float32(1e-7))
        return g.op("Div", [g.op("Sub", [x, weight(g, row, w, 0)]), g.param(f"{row.name}/scale", scale)], row.name)

    def activation(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.activation(row.layer.activation, x)

    def softmax(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.softmax(x, row.layer.axis, row.name)

    def leaky_relu(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return g.activation("leaky_relu", x, negative_slope=row.layer.negative_slope)

    def embedding(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        # x is the model's int32 ids (the checker lets only an `input ... int` reach an
        # embedding); Gather reads negative ids from the end, as TensorFlow's gather does on the CPU
        return g.op("Gather", [weight(g, row, w, 0), x], row.name, axis=0)

    def lstm(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return sequences.recurrent(g, row, row.layer, x, w, row.weights)

    def gru(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return sequences.recurrent(g, row, row.layer, x, w, row.weights)

    def simple_rnn(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return sequences.recurrent(g, row, row.layer, x, w, row.weights)

    def bidirectional(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return sequences.bidirectional(g, row, x, w)

    def attention(self, g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
        return sequences.attention(g, row, x, w)

    # -- merges: `x` is the list of the inputs, `row.sources` in order ------------------------

    def _shapes(self, row: LayerReport, g: Graph) -> list[tuple]:
        return [g.shapes[s] for s in row.sources]

    def add(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Identity", [fold(g, "Add", expand_ranks(g, x, self._shapes(row, g)))], row.name)

    def subtract(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Sub", expand_ranks(g, x, self._shapes(row, g)), row.name)

    def multiply(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Identity", [fold(g, "Mul", expand_ranks(g, x, self._shapes(row, g)))], row.name)

    def average(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        total = fold(g, "Add", expand_ranks(g, x, self._shapes(row, g)))
        return g.op("Div", [total, g.const(float(len(x)))], row.name)  # a division, as Keras writes it

    def maximum(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Identity", [fold(g, "Max", expand_ranks(g, x, self._shapes(row, g)))], row.name)

    def minimum(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Identity", [fold(g, "Min", expand_ranks(g, x, self._shapes(row, g)))], row.name)

    def concat(self, g: Graph, row: LayerReport, x: list[str], w: list[np.ndarray]) -> str:
        return g.op("Concat", x, row.name, axis=row.layer.axis)
