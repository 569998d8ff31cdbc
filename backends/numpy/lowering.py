"""A checked spec as calls that build kernels.py layers: one method per layer kind.

The engine makes the calls; the emitter prints them as source. Both read this one
lowering, so generated code builds exactly the layers the engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelspec import ir
from modelspec.checker import LayerReport, Report
from modelspec.training import CROSSENTROPIES, LossConfig, MetricConfig

from . import kernels as K


@dataclass(frozen=True)
class Weight:
    """The model's weight number `index`, in Keras's order."""

    index: int


MODEL_SEED = object()  # stands for the model seed (the engine's seed, the generated SEED)


@dataclass(frozen=True)
class Call:
    fn: Any  # a kernels class or function
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass
class Lowered:
    groups: list[tuple[LayerReport, list[Call]]]  # each spec layer and the kernel layers it became
    penalties: list[tuple[int, float, float]]  # (position in `calls` of a kernel's layer, l1, l2)
    # A graph's wiring: for each of `calls`, the positions of the calls it reads (-1 = the
    # model's input); None for a chain, where each reads the one before.
    sources: list[tuple[int, ...]] | None = None
    outputs: list[int] | None = None  # a graph's position of each group's output (-1 = the input)

    @property
    def calls(self) -> list[Call]:
        return [call for _, calls in self.groups for call in calls]


def activation(name: str, **options: Any) -> list[Call]:
    """An activation's layer; `linear` is none at all."""
    if name == "linear":
        return []
    return [Call(K.Activation, (getattr(K, name), getattr(K, f"{name}_grad")), tuple(options.items()))]


class Lowering:
    def dense(self, layer: ir.Dense, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Dense, (w[0], w[1] if layer.use_bias else None)), *activation(layer.activation)]

    def conv2d(self, layer: ir.Conv2D, w: list[Weight], index: int) -> list[Call]:
        conv = Call(K.Conv2D, (w[0], w[1] if layer.use_bias else None, layer.strides, layer.padding))
        return [conv, *activation(layer.activation)]

    def flatten(self, layer: ir.Flatten, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Flatten)]

    def dropout(self, layer: ir.Dropout, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Dropout, (layer.rate, Call(K.dropout_rng, (layer.seed, MODEL_SEED, index))))]

    def batchnorm(self, layer: ir.BatchNorm, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.BatchNorm, tuple(w), (("momentum", layer.momentum), ("epsilon", layer.epsilon)))]

    def maxpool2d(self, layer: ir.MaxPool2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.MaxPool2D, (layer.pool_size, layer.resolved_strides, layer.padding))]

    def avgpool2d(self, layer: ir.AvgPool2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.AvgPool2D, (layer.pool_size, layer.resolved_strides, layer.padding))]

    def globalavgpool2d(self, layer: ir.GlobalAvgPool2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.GlobalAvgPool2D)]

    def globalmaxpool2d(self, layer: ir.GlobalMaxPool2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.GlobalMaxPool2D)]

    def zeropadding2d(self, layer: ir.ZeroPadding2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.ZeroPadding2D, (layer.padding,))]

    def upsampling2d(self, layer: ir.UpSampling2D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.UpSampling2D, (layer.size,))]

    def prelu(self, layer: ir.PReLU, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.PReLU, (w[0],))]

    def rescale(self, layer: ir.Rescale, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Rescale, (layer.scale, layer.offset))]

    def normalize(self, layer: ir.Normalize, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Normalize, (w[0], w[1]))]  # w[2], Keras's `count`, is never read

    def activation(self, layer: ir.Activation, w: list[Weight], index: int) -> list[Call]:
        return activation(layer.activation)

    def softmax(self, layer: ir.Softmax, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Softmax, (layer.axis,))]

    def leaky_relu(self, layer: ir.LeakyReLU, w: list[Weight], index: int) -> list[Call]:
        return activation("leaky_relu", negative_slope=layer.negative_slope)

    def embedding(self, layer: ir.Embedding, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Embedding, (w[0],))]

    def conv1d(self, layer: ir.Conv1D, w: list[Weight], index: int) -> list[Call]:
        conv = Call(K.Conv1D, (w[0], w[1] if layer.use_bias else None, layer.strides, layer.padding,
                               layer.dilation_rate))
        return [conv, *activation(layer.activation)]

    def maxpool1d(self, layer: ir.MaxPool1D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.MaxPool1D, (layer.pool_size, layer.resolved_strides, layer.padding))]

    def avgpool1d(self, layer: ir.AvgPool1D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.AvgPool1D, (layer.pool_size, layer.resolved_strides, layer.padding))]

    def globalavgpool1d(self, layer: ir.GlobalAvgPool1D, w: list[Weight], index: int,
                        mask_in: bool = False) -> list[Call]:
        return [Call(K.GlobalAvgPool1D, (), (("masked", True),) if mask_in else ())]

    def globalmaxpool1d(self, layer: ir.GlobalMaxPool1D, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.GlobalMaxPool1D)]

    def layernorm(self, layer: ir.LayerNorm, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.LayerNorm, (w[0], w[1]), (("epsilon", layer.epsilon),))]

    def reshape(self, layer: ir.Reshape, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Reshape, (tuple(layer.target_shape),))]

    def add(self, layer: ir.Add, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Add)]

    def subtract(self, layer: ir.Subtract, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Subtract)]

    def multiply(self, layer: ir.Multiply, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Multiply)]

    def average(self, layer: ir.Average, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Average)]

    def maximum(self, layer: ir.Maximum, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Maximum)]

    def minimum(self, layer: ir.Minimum, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Minimum)]

    def concat(self, layer: ir.Concat, w: list[Weight], index: int) -> list[Call]:
        return [Call(K.Concatenate, (layer.axis,))]

    def _recurrent(self, layer: ir.LSTM | ir.GRU | ir.SimpleRNN, w: list[Weight], mask_in: bool,
                   zero_output_for_mask: bool = False) -> Call:
        """The kernels layer of a recurrent layer; options only where they differ from the
        kernel's defaults (tanh, sigmoid, reset_after, no flags), so generated code stays short."""
        options = {}
        if layer.activation != "tanh":
            options.update(activation=getattr(K, layer.activation),
                           activation_grad=getattr(K, f"{layer.activation}_grad"))
        if isinstance(layer, (ir.LSTM, ir.GRU)) and layer.recurrent_activation != "sigmoid":
            options.update(recurrent_activation=getattr(K, layer.recurrent_activation),
                           recurrent_activation_grad=getattr(K, f"{layer.recurrent_activation}_grad"))
        if isinstance(layer, ir.GRU) and not layer.reset_after:
            options["reset_after"] = False
        flags = {"return_sequences": layer.return_sequences, "go_backwards": layer.go_backwards,
                 "masked": mask_in, "zero_output_for_mask": zero_output_for_mask}
        options.update((name, True) for name, on in flags.items() if on)
        kernel = {"lstm": K.LSTM, "gru": K.GRU, "simple_rnn": K.SimpleRNN}[layer.kind]
        return Call(kernel, (w[0], w[1], w[2] if layer.use_bias else None), tuple(options.items()))

    def lstm(self, layer: ir.LSTM, w: list[Weight], index: int, mask_in: bool = False) -> list[Call]:
        return [self._recurrent(layer, w, mask_in)]

    def gru(self, layer: ir.GRU, w: list[Weight], index: int, mask_in: bool = False) -> list[Call]:
        return [self._recurrent(layer, w, mask_in)]

    def simple_rnn(self, layer: ir.SimpleRNN, w: list[Weight], index: int, mask_in: bool = False) -> list[Call]:
        return [self._recurrent(layer, w, mask_in)]

    def bidirectional(self, layer: ir.Bidirectional, w: list[Weight], index: int,
                      mask_in: bool = False) -> list[Call]:
        inner = layer.layer
        half = len(w) // 2
        # Keras's Bidirectional zeroes the masked steps' outputs of both directions when it
        # returns sequences (keras/src/layers/rnn/bidirectional.py, zero_output_for_mask)
        zeroed = inner.return_sequences
        backward = inner.model_copy(update={"go_backwards": not inner.go_backwards})
        return [Call(K.Bidirectional, (self._recurrent(inner, w[:half], mask_in, zeroed),
                                       self._recurrent(backward, w[half:], mask_in, zeroed), layer.merge_mode),
                     (("masked", True),) if mask_in else ())]

    def attention(self, layer: ir.Attention, w: list[Weight], index: int, mask_in: bool = False) -> list[Call]:
        weights = list(w) if layer.use_bias else [p for kernel in w for p in (kernel, None)]
        options = [("masked", True)] if mask_in else []
        if layer.dropout > 0:
            options[:0] = [("dropout", layer.dropout), ("rng", Call(K.dropout_rng, (layer.seed, MODEL_SEED, index)))]
        return [Call(K.Attention, tuple(weights), tuple(options))]


OPTIMIZERS = {"sgd": K.SGD, "rmsprop": K.RMSprop, "adam": K.Adam, "adamw": K.AdamW,
              "adagrad": K.Adagrad, "nadam": K.Nadam, "adadelta": K.Adadelta, "adamax": K.Adamax, "lion": K.Lion}
METRICS = {"categorical_accuracy": K.categorical_accuracy,
           "sparse_categorical_accuracy": K.sparse_categorical_accuracy,
           "binary_accuracy": K.binary_accuracy, "mse": K.mse_metric, "mae": K.mae_metric,
           "top_k_categorical_accuracy": K.top_k_categorical_accuracy,
           "sparse_top_k_categorical_accuracy": K.sparse_top_k_categorical_accuracy}


def metric_function(metric: MetricConfig) -> tuple[Any, dict[str, Any]]:
    """The kernels metric function and its keyword arguments (the top-k metrics' k)."""
    return METRICS[metric.kind], ({"k": metric.k} if metric.k is not None else {})


def loss_function(loss: LossConfig) -> tuple[Any, dict[str, Any]]:
    """The kernels loss function and its keyword arguments, only those that differ from the
    function's defaults (generated code stays short)."""
    if loss.name in CROSSENTROPIES:
        options: dict[str, Any] = {"from_logits": loss.from_logits}
        if loss.label_smoothing:
            options["label_smoothing"] = loss.label_smoothing
        return getattr(K, loss.name), options
    if loss.name == "huber":
        return K.huber, {"delta": loss.delta}
    return getattr(K, loss.name), {}


def reads_before_output(loss: LossConfig) -> bool:
    """Whether the loss reads the values before the output layer's softmax or sigmoid (its
    logits; modelspec.training.LossConfig), rather than the output itself."""
    return loss.from_logits and not loss.output_logits


def lower(report: Report) -> Lowered:
    lowering, groups, penalties = Lowering(), [], []
    position = count = 0
    sources: list[tuple[int, ...]] = []
    outputs: list[int] = []
    for index, layer_report in enumerate(report.layers):
        weights = [Weight(count + i) for i in range(len(layer_report.weights))]
        count += len(weights)
        method = getattr(lowering, layer_report.kind)
        if layer_report.reads_mask:
            calls = method(layer_report.layer, weights, index, mask_in=True)
        else:
            calls = method(layer_report.layer, weights, index)
        # the layer's first call holds the regularized weight: a kernel, or the embeddings
        penalized = layer_report.layer.layer if layer_report.kind == "bidirectional" else layer_report.layer
        reg = getattr(penalized, "kernel_regularizer", None) or getattr(penalized, "embeddings_regularizer", None)
        if reg is not None and (reg.l1 or reg.l2):
            penalties.append((position, reg.l1, reg.l2))
        groups.append((layer_report, calls))
        # A group's first call reads the outputs of its row's sources, each other call the
        # one before; a group of no calls (`linear`) passes its one input on.
        reads = tuple(outputs[s] if s >= 0 else -1 for s in layer_report.sources)
        sources += [reads] + [(position + k,) for k in range(len(calls) - 1)] if calls else []
        outputs.append(position + len(calls) - 1 if calls else reads[0])
        position += len(calls)
    if not report.functional:
        return Lowered(groups, penalties)
    return Lowered(groups, penalties, sources, outputs)


def make(value: Any, weights: list[Any], seed: int | None) -> Any:
    """The object a lowered value stands for, with the given weights and model seed."""
    if isinstance(value, Call):
        return value.fn(*(make(a, weights, seed) for a in value.args),
                        **{k: make(v, weights, seed) for k, v in value.kwargs})
    if isinstance(value, Weight):
        return weights[value.index]
    if value is MODEL_SEED:
        return seed
    return value
