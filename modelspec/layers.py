"""Layer kinds: one class each, owning everything about its meaning.

A class declares its keyword (its `kind`), Keras's class name, its options with Keras's
defaults and how each is written in a spec (an `Arg` in the field's metadata, which the
parser reads and the printer writes generically), its shape rule, its weights and its
FLOPs, as Keras's `Layer.compute_output_shape` and `build` do. The parser, the checker,
the printer and the summary walk `LAYER_CLASSES`; nothing else lists the kinds.
Backends implement one method per kind, named after it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union

from pydantic import Field

from .nodes import (
    ACTIVATIONS, GLOROT_UNIFORM, INITIALIZERS, ZEROS, ActivationName, Initializer, LayerName, Node,
    Padding, Padding1D, Pair, PositiveInt, Regularizer, Seed,
)
from .shapes import Shape, ShapeError, fmt_shape, need_image, need_sequence, window, window1d

ONES = Initializer.model_construct(name="ones")
ORTHOGONAL = Initializer.model_construct(name="orthogonal")
UNIFORM = Initializer.model_construct(name="random_uniform")  # Keras's 'uniform': U(-0.05, 0.05)


@dataclass(frozen=True)
class Arg:
    """How one layer option is written in a spec.

    `read` names how a value is read and printed (modelspec.parser reads, modelspec.printer
    prints; both dispatch on it): int, float, fraction (a float also written as 1/255),
    seed, pair, padding2d, choice, activation, initializer, flag, regularizer, keyword.
    """

    read: str
    what: str = ""  # the value's name in messages: "the number of units"
    keys: tuple[str, ...] = ()  # `key=value` spellings; the first is canonical
    positional: bool = False  # also the next bare value after the keyword
    needs: str | None = None  # when a positional is required: "a number of units"
    example: str = ""  # shown in the hint when a required positional is missing
    words: tuple[str, ...] = ()  # bare words that set the option
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    minimum: int = 1  # for int and pair
    once: bool = False  # a second value is an error, not an override
    printed: str = "option"  # positional (always), positional? (unless default), option, always (an option
    # printed even at its default), word, keyword
    word_value: Any = False  # what a flag's bare word sets it to: `nobias` False, `mask_zero` True
    choices: tuple[str, ...] = ()  # a choice's values when they are not also bare words
    print_key: str | None = None  # the key printed, when not keys[0]


class WeightDecl(NamedTuple):
    """One weight a layer creates: Keras's variable name, shape and initializer."""

    name: str
    shape: tuple[int, ...]
    initializer: Initializer
    trainable: bool = True
    dtype: str = "float32"  # Keras's variable's: all float32 but Normalization's count
    # (fan_in, fan_out) where Keras does not take them from the shape: EinsumDense passes its
    # einsum's input and output axes to the initializer (keras/src/layers/core/einsum_dense.py)
    fans: tuple[int, int] | None = None
    # LSTM's unit_forget_bias: the initializer draws [i | c, o] and the forget block is ones
    # (keras/src/layers/rnn/lstm.py, LSTMCell.build); the number of units
    forget_units: int | None = None


# ---------------------------------------------------------------------------------------
# Options shared by several kinds

ActivationOpt = Annotated[ActivationName, Arg(
    "activation", "activation", keys=("activation",), words=ACTIVATIONS, once=True, printed="word")]
KernelInitOpt = Annotated[Initializer, Arg(
    "initializer", "kernel_initializer", keys=("kernel_initializer", "kernel_init", "init"),
    words=INITIALIZERS, once=True, printed="word")]
UseBiasOpt = Annotated[bool, Arg("flag", "use_bias", keys=("use_bias",), words=("nobias",), printed="word")]
RegularizerOpt = Annotated[Regularizer | None, Arg(
    "regularizer", keys=("l1", "l2"), words=("l1", "l2"))]
BiasInitOpt = Annotated[Initializer, Arg(
    "initializer", "bias_initializer", keys=("bias_initializer", "bias_init"), print_key="bias_init")]
StridesOpt = Annotated[Pair | None, Arg("pair", "the stride", keys=("stride", "strides"))]
PaddingOpt = Annotated[Padding, Arg("choice", "padding", keys=("padding",), words=("valid", "same"))]
PoolSizeOpt = Annotated[Pair, Arg("pair", "the pool size", positional=True, printed="positional")]


class LayerBase(Node):
    """What every layer kind has: a name, and the rules the checker asks of it."""

    keras_class: ClassVar[str]
    # the layer brings raw samples to the model's scale itself (Rescaling, Normalization): the
    # CLI then passes the data as it is, and refuses a --scale that would scale it twice
    scales_input: ClassVar[bool] = False
    # the layer's weights are statistics of the data that reaches it (Normalization): `adapt`
    # computes them, and fit adapts such a layer once before training (modelspec.model)
    adapts: ClassVar[bool] = False
    # the layer reads several tensors (a merge): the checker calls `merge_shape` with their shapes
    merges: ClassVar[bool] = False
    # the layer reads integer ids (embedding): the only kind that may read an `input ... int`
    reads_ids: ClassVar[bool] = False
    # what it does with the mask of `embedding ... mask_zero` (Keras's supports_masking and
    # compute_mask): "keep" passes it on, "consume" reads it (its output has none), "use" reads
    # it and passes it on, "drop" loses it (Keras warns), "refuse" is a kind whose masked numbers
    # no backend implements yet; "make" is embedding's with mask_zero
    mask: ClassVar[str] = "drop"
    # Keras's `call` takes `mask=`, so a functional model's summary lists the mask as one of its
    # inputs (keras/src/layers/layer.py, __call__ fills it from the input's mask)
    mask_argument: ClassVar[bool] = False
    # how many times it reads its one input: self-attention's query and value (summary's "Connected to")
    reads_input_times: ClassVar[int] = 1
    # the Keras classes of the layers its constructor makes, each taking an auto name
    inner_layers: ClassVar[tuple[str, ...]] = ()
    # Keras's `call` deletes the masks of the tensors it reads (attention): layers that read them
    # later see none at run time (modelspec.checker._masks_at_run_time)
    clears_input_masks: ClassVar[bool] = False
    name: LayerName | None = None

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        """The statement keywords that make this kind."""
        return (cls.model_fields["kind"].default,)

    def output_shape(self, shape: Shape) -> Shape:
        """The output shape for an input of `shape` (batch axis first); ShapeError if it can't take it."""
        return shape

    def weights(self, shape: Shape) -> list[WeightDecl]:
        """The weights it creates for an input of `shape`, in Keras's order."""
        return []

    def flops(self, shape: Shape, out: Shape) -> int:
        """Forward FLOPs per sample (2 per multiply-accumulate)."""
        return 0


def _check_bias(init: Initializer) -> None:
    if init.name == "orthogonal":
        raise ValueError("orthogonal needs a weight of rank 2 or more; a bias is a vector")


def _kernel_and_bias(layer: Any, kernel_shape: tuple[int, ...], units: int) -> list[WeightDecl]:
    out = [WeightDecl("kernel", kernel_shape, layer.kernel_initializer)]
    if layer.use_bias:
        out.append(WeightDecl("bias", (units,), layer.bias_initializer))
    return out


# ---------------------------------------------------------------------------------------
# Weighted layers


class Dense(LayerBase):
    keras_class: ClassVar[str] = "Dense"
    mask: ClassVar[str] = "keep"
    kind: Literal["dense"] = "dense"
    units: Annotated[PositiveInt, Arg("int", "the number of units", keys=("units",), positional=True,
                                      needs="a number of units", example="dense 64 relu",
                                      printed="positional")]
    activation: ActivationOpt = "linear"
    kernel_initializer: KernelInitOpt = GLOROT_UNIFORM
    use_bias: UseBiasOpt = True
    kernel_regularizer: RegularizerOpt = None
    bias_initializer: BiasInitOpt = ZEROS

    def check(self) -> None:
        _check_bias(self.bias_initializer)

    def output_shape(self, shape: Shape) -> Shape:
        return shape[:-1] + (self.units,)

    def weights(self, shape: Shape) -> list[WeightDecl]:
        return _kernel_and_bias(self, (shape[-1], self.units), self.units)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[-1] * self.units * math.prod(shape[1:-1])


class Conv2D(LayerBase):
    keras_class: ClassVar[str] = "Conv2D"
    kind: Literal["conv2d"] = "conv2d"
    filters: Annotated[PositiveInt, Arg("int", "the number of filters", keys=("filters",), positional=True,
                                        needs="a number of filters and a kernel size",
                                        example="conv2d 32 3x3 relu", printed="positional")]
    kernel_size: Annotated[Pair, Arg("pair", "the kernel size", keys=("kernel_size",), positional=True,
                                     needs="a kernel size",
                                     example="conv2d 32 3x3 relu", printed="positional")]
    strides: Annotated[Pair, Arg("pair", "the stride", keys=("stride", "strides"))] = (1, 1)
    padding: PaddingOpt = "valid"
    activation: ActivationOpt = "linear"
    kernel_initializer: KernelInitOpt = GLOROT_UNIFORM
    use_bias: UseBiasOpt = True
    kernel_regularizer: RegularizerOpt = None
    bias_initializer: BiasInitOpt = ZEROS

    def check(self) -> None:
        _check_bias(self.bias_initializer)

    def output_shape(self, shape: Shape) -> Shape:
        h, w = window(self.kind, shape, self.kernel_size, self.strides, self.padding)
        return (None, h, w, self.filters)

    def weights(self, shape: Shape) -> list[WeightDecl]:
        return _kernel_and_bias(self, (*self.kernel_size, shape[3], self.filters), self.filters)

    def flops(self, shape: Shape, out: Shape) -> int:
        kh, kw = self.kernel_size
        return 2 * kh * kw * shape[3] * self.filters * out[1] * out[2]


class PReLU(LayerBase):
    """Keras's PReLU: max(x, 0) + alpha * min(x, 0), one alpha per input unit (shared_axes=None),
    initialised to zeros (keras/src/layers/activations/prelu.py)."""

    keras_class: ClassVar[str] = "PReLU"
    mask: ClassVar[str] = "keep"
    kind: Literal["prelu"] = "prelu"

    def weights(self, shape: Shape) -> list[WeightDecl]:
        return [WeightDecl("alpha", tuple(shape[1:]), ZEROS)]


class BatchNorm(LayerBase):
    keras_class: ClassVar[str] = "BatchNormalization"
    mask: ClassVar[str] = "refuse"  # Keras computes its statistics over the unmasked steps
    kind: Literal["batchnorm"] = "batchnorm"
    momentum: Annotated[float, Field(ge=0.0, le=1.0),
                        Arg("float", "momentum", keys=("momentum",), low=0.0, high=1.0)] = 0.99
    epsilon: Annotated[float, Field(gt=0.0),
                       Arg("float", "epsilon", keys=("epsilon", "eps"), low=0.0, low_open=True)] = 1e-3

    def weights(self, shape: Shape) -> list[WeightDecl]:
        c = (shape[-1],)
        return [WeightDecl("gamma", c, ONES), WeightDecl("beta", c, ZEROS),
                WeightDecl("moving_mean", c, ZEROS, trainable=False),
                WeightDecl("moving_variance", c, ONES, trainable=False)]


# ---------------------------------------------------------------------------------------
# Layers without weights


class Rescale(LayerBase):
    """Keras's Rescaling: x * scale + offset, with scale and offset cast to the input's
    float32 first (keras/src/layers/preprocessing/rescaling.py, `call`)."""

    keras_class: ClassVar[str] = "Rescaling"
    mask: ClassVar[str] = "keep"
    scales_input: ClassVar[bool] = True
    kind: Literal["rescale"] = "rescale"
    scale: Annotated[float, Field(allow_inf_nan=False),
                     Arg("fraction", "the scale", keys=("scale",), positional=True, needs="a scale",
                         example="rescale 1/255", printed="positional")]
    offset: Annotated[float, Field(allow_inf_nan=False), Arg("fraction", "the offset", keys=("offset",))] = 0.0


class Normalize(LayerBase):
    """Keras's Normalization(axis=-1): (x - mean) / max(sqrt(variance), epsilon()), one mean
    and variance per last-axis index. Its weights, as Keras 3's `build` makes them when no
    mean and variance are passed (keras/src/layers/preprocessing/normalization.py): mean
    (zeros), variance (ones) and an int scalar `count` kept "for backwards compatibility",
    none trainable; `adapt` sets mean and variance from data (modelspec.model.Model.adapt)."""

    keras_class: ClassVar[str] = "Normalization"
    mask: ClassVar[str] = "keep"
    scales_input: ClassVar[bool] = True
    adapts: ClassVar[bool] = True
    kind: Literal["normalize"] = "normalize"

    def weights(self, shape: Shape) -> list[WeightDecl]:
        c = (shape[-1],)
        return [WeightDecl("mean", c, ZEROS, trainable=False), WeightDecl("variance", c, ONES, trainable=False),
                WeightDecl("count", (), ZEROS, trainable=False, dtype="int64")]  # "int" is int64

    def adapt(self, z: Any, weights: list[Any]) -> list[Any]:
        """The weights adapted to `z`, the data reaching the layer, as Keras's adapt does with a
        NumPy array: np.mean and np.var (the population variance) over every axis but the
        last; Keras's `count` stays as it is."""
        import numpy as np

        axes = tuple(range(z.ndim - 1))
        return [np.mean(z, axis=axes), np.var(z, axis=axes), weights[2]]


class Flatten(LayerBase):
    keras_class: ClassVar[str] = "Flatten"
    kind: Literal["flatten"] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (None, math.prod(shape[1:]))


class Dropout(LayerBase):
    keras_class: ClassVar[str] = "Dropout"
    mask: ClassVar[str] = "keep"
    kind: Literal["dropout"] = "dropout"
    rate: Annotated[float, Field(ge=0.0, le=1.0),
                    Arg("float", "the dropout rate", keys=("rate",), positional=True,
                        needs="a rate between 0 and 1", example="dropout 0.5", low=0.0, high=1.0,
                        printed="positional")]
    seed: Annotated[Seed | None, Arg("seed", "seed", keys=("seed",))] = None


class _Pool2D(LayerBase):
    pool_size: PoolSizeOpt = (2, 2)
    strides: StridesOpt = None  # None: the pool size, as in Keras
    padding: PaddingOpt = "valid"

    @property
    def resolved_strides(self) -> tuple[int, int]:
        return self.strides or self.pool_size

    def output_shape(self, shape: Shape) -> Shape:
        h, w = window(self.kind, shape, self.pool_size, self.resolved_strides, self.padding)
        return (None, h, w, shape[3])


class MaxPool2D(_Pool2D):
    keras_class: ClassVar[str] = "MaxPooling2D"
    kind: Literal["maxpool2d"] = "maxpool2d"


class AvgPool2D(_Pool2D):
    keras_class: ClassVar[str] = "AveragePooling2D"
    kind: Literal["avgpool2d"] = "avgpool2d"


class _GlobalPool2D(LayerBase):
    def output_shape(self, shape: Shape) -> Shape:
        need_image(self.kind, shape)
        return (None, shape[3])


class GlobalAvgPool2D(_GlobalPool2D):
    keras_class: ClassVar[str] = "GlobalAveragePooling2D"
    kind: Literal["globalavgpool2d"] = "globalavgpool2d"


class GlobalMaxPool2D(_GlobalPool2D):
    keras_class: ClassVar[str] = "GlobalMaxPooling2D"
    kind: Literal["globalmaxpool2d"] = "globalmaxpool2d"


NonNegative = Annotated[int, Field(ge=0)]


class ZeroPadding2D(LayerBase):
    """Keras's ZeroPadding2D: zero rows above and below, zero columns left and right."""

    keras_class: ClassVar[str] = "ZeroPadding2D"
    kind: Literal["zeropadding2d"] = "zeropadding2d"
    padding: Annotated[tuple[tuple[NonNegative, NonNegative], tuple[NonNegative, NonNegative]],
                       Arg("padding2d", "the padding", keys=("padding",), positional=True,
                           printed="positional?")] = ((1, 1), (1, 1))

    def output_shape(self, shape: Shape) -> Shape:
        need_image(self.kind, shape)
        (top, bottom), (left, right) = self.padding
        return (None, shape[1] + top + bottom, shape[2] + left + right, shape[3])


class UpSampling2D(LayerBase):
    """Keras's UpSampling2D with interpolation='nearest': each pixel repeated size[0] x size[1] times."""

    keras_class: ClassVar[str] = "UpSampling2D"
    kind: Literal["upsampling2d"] = "upsampling2d"
    size: Annotated[Pair, Arg("pair", "the size", keys=("size",), positional=True,
                              printed="positional?")] = (2, 2)

    def output_shape(self, shape: Shape) -> Shape:
        need_image(self.kind, shape)
        return (None, shape[1] * self.size[0], shape[2] * self.size[1], shape[3])


class Activation(LayerBase):
    """`relu`, `softmax`, ... as a layer of its own (Keras's `Activation`)."""

    keras_class: ClassVar[str] = "Activation"
    mask: ClassVar[str] = "keep"
    kind: Literal["activation"] = "activation"
    activation: Annotated[ActivationName, Arg("keyword", printed="keyword")]

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        return tuple(a for a in ACTIVATIONS if a != "leaky_relu")

    def check(self) -> None:
        if self.activation == "leaky_relu":
            raise ValueError("a leaky_relu layer is LeakyReLU, kind 'leaky_relu'")


class Softmax(LayerBase):
    """`softmax axis=N`: Keras's Softmax layer, over any axis but the batch's. A bare `softmax`
    is the Activation layer (keras.layers.Activation("softmax")), over the last axis."""

    keras_class: ClassVar[str] = "Softmax"
    # Keras adds -1e9 where the mask is 0 (keras/src/layers/activations/softmax.py), a mask of
    # the input's own shape, which an embedding's (one per step) is not
    mask: ClassVar[str] = "refuse"
    kind: Literal["softmax"] = "softmax"
    axis: Annotated[int, Arg("int", "the axis", keys=("axis",), minimum=-(2**31), printed="always")] = -1

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        return ()  # `softmax` with `axis=` (LAYER_VARIANTS)

    def output_shape(self, shape: Shape) -> Shape:
        rank = len(shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ShapeError(f"axis={self.axis} is not an axis of its input {fmt_shape(shape)}: expected "
                             f"{'1' if rank == 2 else f'1 to {rank - 1}'} (or {-(rank - 1)} to -1 from the end); "
                             "axis 0 is the batch")
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return 0


class LeakyReLU(LayerBase):
    """Keras's LeakyReLU layer, whose default slope is 0.3 (the activation string's is 0.2)."""

    keras_class: ClassVar[str] = "LeakyReLU"
    mask: ClassVar[str] = "keep"
    kind: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: Annotated[float, Field(ge=0.0),
                              Arg("float", "the negative slope", keys=("negative_slope", "alpha", "slope"),
                                  positional=True, example="leaky_relu 0.3", low=0.0,
                                  printed="positional?")] = 0.3


# ---------------------------------------------------------------------------------------
# Sequences: (batch, steps, features), token ids


class Embedding(LayerBase):
    """Keras's Embedding: each integer id's row of `embeddings` (keras/src/layers/core/embedding.py).
    With mask_zero the ids that are 0 are masked for the layers after it; row 0 is an ordinary,
    trainable row."""

    keras_class: ClassVar[str] = "Embedding"
    kind: Literal["embedding"] = "embedding"
    reads_ids: ClassVar[bool] = True
    input_dim: Annotated[PositiveInt, Arg("int", "the vocabulary size", keys=("input_dim", "vocab"), positional=True,
                                          needs="a vocabulary size and a dimension",
                                          example="embedding 1000 16", printed="positional")]
    output_dim: Annotated[PositiveInt, Arg("int", "the embedding dimension", keys=("output_dim", "dim"),
                                           positional=True, needs="an embedding dimension",
                                           example="embedding 1000 16", printed="positional")]
    mask_zero: Annotated[bool, Arg("flag", "mask_zero", keys=("mask_zero",), words=("mask_zero",),
                                   word_value=True, printed="word")] = False
    embeddings_initializer: Annotated[Initializer, Arg(
        "initializer", "embeddings_initializer", keys=("embeddings_initializer", "init"),
        words=INITIALIZERS, once=True, printed="word")] = UNIFORM
    embeddings_regularizer: RegularizerOpt = None

    @property
    def mask(self) -> str:  # type: ignore[override]
        return "make" if self.mask_zero else "drop"

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape, self.output_dim)

    def weights(self, shape: Shape) -> list[WeightDecl]:
        return [WeightDecl("embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer)]


class Conv1D(LayerBase):
    """Keras's Conv1D, channels last: kernel (K, in, filters) (keras/src/layers/convolutional/base_conv.py)."""

    keras_class: ClassVar[str] = "Conv1D"
    kind: Literal["conv1d"] = "conv1d"
    filters: Annotated[PositiveInt, Arg("int", "the number of filters", keys=("filters",), positional=True,
                                        needs="a number of filters and a kernel size",
                                        example="conv1d 32 3 relu", printed="positional")]
    kernel_size: Annotated[PositiveInt, Arg("int", "the kernel size", keys=("kernel_size",), positional=True,
                                            needs="a kernel size",
                                            example="conv1d 32 3 relu", printed="positional")]
    strides: Annotated[PositiveInt, Arg("int", "the stride", keys=("stride", "strides"))] = 1
    padding: Annotated[Padding1D, Arg("choice", "padding", keys=("padding",), words=("valid", "same", "causal"))] = "valid"
    dilation_rate: Annotated[PositiveInt, Arg("int", "the dilation rate",
                                              keys=("dilation", "dilation_rate"))] = 1
    activation: ActivationOpt = "linear"
    kernel_initializer: KernelInitOpt = GLOROT_UNIFORM
    use_bias: UseBiasOpt = True
    kernel_regularizer: RegularizerOpt = None
    bias_initializer: BiasInitOpt = ZEROS

    def check(self) -> None:
        _check_bias(self.bias_initializer)
        if self.strides > 1 and self.dilation_rate > 1:  # keras/src/layers/convolutional/base_conv.py
            raise ValueError(f"a stride above 1 cannot go with a dilation above 1, as in Keras; received "
                             f"stride={self.strides} and dilation={self.dilation_rate}")

    def output_shape(self, shape: Shape) -> Shape:
        return (None, window1d(self.kind, shape, self.kernel_size, self.strides, self.padding,
                               self.dilation_rate), self.filters)

    def weights(self, shape: Shape) -> list[WeightDecl]:
        return _kernel_and_bias(self, (self.kernel_size, shape[2], self.filters), self.filters)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * self.kernel_size * shape[2] * self.filters * out[1]


class _Pool1D(LayerBase):
    pool_size: Annotated[PositiveInt, Arg("int", "the pool size", keys=("pool_size",), positional=True,
                                          printed="positional")] = 2
    strides: Annotated[PositiveInt | None, Arg("int", "the stride", keys=("stride", "strides"))] = None
    padding: PaddingOpt = "valid"

    @property
    def resolved_strides(self) -> int:
        return self.strides or self.pool_size

    def output_shape(self, shape: Shape) -> Shape:
        return (None, window1d(self.kind, shape, self.pool_size, self.resolved_strides, self.padding), shape[2])


class MaxPool1D(_Pool1D):
    keras_class: ClassVar[str] = "MaxPooling1D"
    kind: Literal["maxpool1d"] = "maxpool1d"


class AvgPool1D(_Pool1D):
    keras_class: ClassVar[str] = "AveragePooling1D"
    kind: Literal["avgpool1d"] = "avgpool1d"


class _GlobalPool1D(LayerBase):
    def output_shape(self, shape: Shape) -> Shape:
        need_sequence(self.kind, shape)
        return (None, shape[2])


class GlobalAvgPool1D(_GlobalPool1D):
    """With a mask, the mean of the unmasked steps (keras/src/layers/pooling/global_average_pooling1d.py)."""

    keras_class: ClassVar[str] = "GlobalAveragePooling1D"
    kind: Literal["globalavgpool1d"] = "globalavgpool1d"
    mask: ClassVar[str] = "consume"
    mask_argument: ClassVar[bool] = True


class GlobalMaxPool1D(_GlobalPool1D):
    keras_class: ClassVar[str] = "GlobalMaxPooling1D"
    kind: Literal["globalmaxpool1d"] = "globalmaxpool1d"


class LayerNorm(LayerBase):
    """Keras's LayerNormalization over the last axis, gamma then beta (keras/src/layers/normalization/
    layer_normalization.py): per sample and position, the biased variance."""

    keras_class: ClassVar[str] = "LayerNormalization"
    kind: Literal["layernorm"] = "layernorm"
    mask: ClassVar[str] = "keep"
    epsilon: Annotated[float, Field(gt=0.0),
                       Arg("float", "epsilon", keys=("epsilon", "eps"), low=0.0, low_open=True)] = 1e-3

    def weights(self, shape: Shape) -> list[WeightDecl]:
        c = (shape[-1],)
        return [WeightDecl("gamma", c, ONES), WeightDecl("beta", c, ZEROS)]


class Reshape(LayerBase):
    """Keras's Reshape: the same values in row-major order; one dimension may be -1, the one
    that makes the sizes agree (keras/src/layers/reshaping/reshape.py)."""

    keras_class: ClassVar[str] = "Reshape"
    kind: Literal["reshape"] = "reshape"
    target_shape: Annotated[tuple[int, ...], Arg("target_shape", "the target shape", keys=("target_shape",),
                                                 positional=True, needs="a target shape",
                                                 example="reshape 28x28x1", printed="positional")]

    def check(self) -> None:
        if not self.target_shape or any(d == 0 or d < -1 for d in self.target_shape):
            raise ValueError(f"every dimension of the target shape must be at least 1, or -1; received "
                             f"{self.target_shape}")
        if self.target_shape.count(-1) > 1:
            raise ValueError(f"only one dimension of the target shape may be -1; received {self.target_shape}")

    def output_shape(self, shape: Shape) -> Shape:
        size = math.prod(shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        target = "x".join(map(str, self.target_shape))
        if -1 in self.target_shape:
            if size % known:
                raise ShapeError(f"its input {fmt_shape(shape)} has {size:,} values, which {target} cannot hold: "
                                 f"{size:,} is not a multiple of {known:,}",
                                 hint="choose dimensions whose product divides the input's size")
            return (None, *(size // known if d == -1 else d for d in self.target_shape))
        if size != known:
            raise ShapeError(f"its input {fmt_shape(shape)} has {size:,} values, but the target shape {target} has "
                             f"{known:,}", hint="the product of the dimensions must stay the same; -1 in one "
                             "dimension makes it fit")
        return (None, *self.target_shape)


# ---------------------------------------------------------------------------------------
# Recurrent layers and attention: (batch, steps, features) in


RecurrentInitOpt = Annotated[Initializer, Arg(
    "initializer", "recurrent_initializer", keys=("recurrent_initializer", "recurrent_init"),
    print_key="recurrent_init")]
RecurrentActivationOpt = Annotated[ActivationName, Arg(
    "activation", "recurrent_activation", keys=("recurrent_activation",))]


class _Recurrent(LayerBase):
    """Keras's RNN layers over a cell (keras/src/layers/rnn/rnn.py): the cell runs over the steps
    from a zero state; the output is the last step's, or every step's with return_sequences
    (in the order processed: go_backwards leaves it reversed). With embedding's mask a masked
    step keeps the state and repeats the previous output."""

    gates: ClassVar[int] = 1  # blocks of `units` columns in the kernels
    mask_argument: ClassVar[bool] = True
    units: Annotated[PositiveInt, Arg("int", "the number of units", keys=("units",), positional=True,
                                      needs="a number of units", example="lstm 32", printed="positional")]
    return_sequences: Annotated[bool, Arg("flag", "return_sequences", keys=("return_sequences",),
                                          words=("return_sequences",), word_value=True, printed="word")] = False
    go_backwards: Annotated[bool, Arg("flag", "go_backwards", keys=("go_backwards",), words=("go_backwards",),
                                      word_value=True, printed="word")] = False
    activation: ActivationOpt = "tanh"
    kernel_initializer: KernelInitOpt = GLOROT_UNIFORM
    recurrent_initializer: RecurrentInitOpt = ORTHOGONAL
    use_bias: UseBiasOpt = True
    kernel_regularizer: RegularizerOpt = None
    bias_initializer: BiasInitOpt = ZEROS

    @classmethod
    def keywords(cls) -> tuple[str, ...]:
        return (cls.model_fields["kind"].default,)

    @property
    def mask(self) -> str:  # type: ignore[override]
        return "use" if self.return_sequences else "consume"

    def check(self) -> None:
        _check_bias(self.bias_initializer)

    def output_shape(self, shape: Shape) -> Shape:
        need_sequence(self.kind, shape)
        return (None, shape[1], self.units) if self.return_sequences else (None, self.units)

    def bias_shape(self) -> tuple[int, ...]:
        return (self.gates * self.units,)

    def bias(self) -> WeightDecl:
        return WeightDecl("bias", self.bias_shape(), self.bias_initializer)

    def weights(self, shape: Shape) -> list[WeightDecl]:
        cell = f"{snake_case(self.keras_class)}_cell"
        width = self.gates * self.units
        out = [WeightDecl(f"{cell}/kernel", (shape[2], width), self.kernel_initializer),
               WeightDecl(f"{cell}/recurrent_kernel", (self.units, width), self.recurrent_initializer)]
        if self.use_bias:
            out.append(self.bias()._replace(name=f"{cell}/bias"))
        return out

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[1] * (shape[2] + self.units) * self.gates * self.units


class LSTM(_Recurrent):
    """Keras's LSTM: gate blocks i, f, c, o in the kernels' columns (keras/src/layers/rnn/lstm.py)."""

    keras_class: ClassVar[str] = "LSTM"
    gates: ClassVar[int] = 4
    kind: Literal["lstm"] = "lstm"
    recurrent_activation: RecurrentActivationOpt = "sigmoid"
    unit_forget_bias: Annotated[bool, Arg("flag", "unit_forget_bias", keys=("unit_forget_bias",))] = True

    def bias(self) -> WeightDecl:
        return WeightDecl("bias", self.bias_shape(), self.bias_initializer,
                          forget_units=self.units if self.unit_forget_bias else None)


class GRU(_Recurrent):
    """Keras's GRU: gate blocks z, r, h (update, reset, candidate) (keras/src/layers/rnn/gru.py);
    with reset_after (the default) the input and recurrent parts keep a bias each, (2, 3·units)."""

    keras_class: ClassVar[str] = "GRU"
    gates: ClassVar[int] = 3
    kind: Literal["gru"] = "gru"
    recurrent_activation: RecurrentActivationOpt = "sigmoid"
    reset_after: Annotated[bool, Arg("flag", "reset_after", keys=("reset_after",))] = True

    def bias_shape(self) -> tuple[int, ...]:
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)


class SimpleRNN(_Recurrent):
    """Keras's SimpleRNN: h' = activation(x·kernel + bias + h·recurrent_kernel)."""

    keras_class: ClassVar[str] = "SimpleRNN"
    kind: Literal["simple_rnn"] = "simple_rnn"


RECURRENT_TYPES = (LSTM, GRU, SimpleRNN)
RecurrentLayer = Annotated[Union[RECURRENT_TYPES], Field(discriminator="kind")]


class Bidirectional(LayerBase):
    """Keras's Bidirectional (keras/src/layers/rnn/bidirectional.py): `layer` as written runs
    forward, a copy with go_backwards runs backward; with return_sequences the backward
    outputs are flipped back into time order, and masked steps output 0 in both
    (zero_output_for_mask). The weights are the forward layer's, then the backward one's."""

    keras_class: ClassVar[str] = "Bidirectional"
    mask_argument: ClassVar[bool] = True
    kind: Literal["bidirectional"] = "bidirectional"
    layer: Annotated[RecurrentLayer, Arg("layer", "the recurrent layer", positional=True,
                                         needs="a recurrent layer: lstm, gru or simple_rnn",
                                         example="bidirectional lstm 32", printed="positional")]
    merge_mode: Annotated[Literal["concat", "sum", "mul", "ave"], Arg(
        "choice", "merge mode", keys=("merge", "merge_mode"), choices=("concat", "sum", "mul", "ave"))] = "concat"

    @property
    def mask(self) -> str:  # type: ignore[override]
        return self.layer.mask

    def check(self) -> None:
        # Keras makes the backward copy with go_backwards=True and then refuses two directions
        # that go the same way (bidirectional.py, `_verify_layer_config`)
        if self.layer.go_backwards:
            raise ValueError("the wrapped layer runs forward (bidirectional adds the backward copy); received "
                             f"{self.layer.kind} with go_backwards")

    def output_shape(self, shape: Shape) -> Shape:
        out = self.layer.output_shape(shape)
        return (*out[:-1], 2 * out[-1]) if self.merge_mode == "concat" else out

    def weights(self, shape: Shape, inner: str | None = None) -> list[WeightDecl]:
        """`inner`: the wrapped layer's name (Keras names it as if it stood alone)."""
        inner = inner or snake_case(self.layer.keras_class)
        return [w._replace(name=f"{direction}_{inner}/{w.name}")
                for direction in ("forward", "backward") for w in self.layer.weights(shape)]

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * self.layer.flops(shape, out)


class Attention(LayerBase):
    """Keras's MultiHeadAttention as self-attention, `mha(x, x)` (keras/src/layers/attention/
    multi_head_attention.py): query, key and value projections of the input (D, heads, dim),
    softmax(q·kᵀ/√key_dim) over the key steps, the output projection back to D. With
    embedding's mask, a step attends only to unmasked steps (a masked query row attends
    uniformly to every step) and the output keeps the mask."""

    keras_class: ClassVar[str] = "MultiHeadAttention"
    mask: ClassVar[str] = "use"
    # its probabilities' Softmax and Dropout layers, made when it is first called
    # (multi_head_attention.py, _build_attention): a spec's next dropout is dropout_1
    inner_layers: ClassVar[tuple[str, ...]] = ("Softmax", "Dropout")
    clears_input_masks: ClassVar[bool] = True
    reads_input_times: ClassVar[int] = 2
    kind: Literal["attention"] = "attention"
    num_heads: Annotated[PositiveInt, Arg("int", "the number of heads", keys=("heads", "num_heads"),
                                          needs="heads=H, the number of heads", example="attention heads=4 key_dim=16")]
    key_dim: Annotated[PositiveInt, Arg("int", "key_dim", keys=("key_dim",), needs="key_dim=D, each head's query and key size",
                                        example="attention heads=4 key_dim=16")]
    value_dim: Annotated[PositiveInt | None, Arg("int", "value_dim", keys=("value_dim",))] = None
    dropout: Annotated[float, Field(ge=0.0, le=1.0),
                       Arg("float", "the dropout rate", keys=("dropout",), low=0.0, high=1.0)] = 0.0
    use_bias: UseBiasOpt = True
    kernel_initializer: KernelInitOpt = GLOROT_UNIFORM
    bias_initializer: BiasInitOpt = ZEROS
    seed: Annotated[Seed | None, Arg("seed", "seed", keys=("seed",))] = None

    def check(self) -> None:
        _check_bias(self.bias_initializer)

    @property
    def resolved_value_dim(self) -> int:
        return self.value_dim or self.key_dim

    def output_shape(self, shape: Shape) -> Shape:
        need_sequence(self.kind, shape)
        return shape

    def weights(self, shape: Shape) -> list[WeightDecl]:
        d, h, k, v = shape[-1], self.num_heads, self.key_dim, self.resolved_value_dim
        out = []
        for name, kernel, bias, fans in (("query", (d, h, k), (h, k), (d, h * k)), ("key", (d, h, k), (h, k), (d, h * k)),
                                         ("value", (d, h, v), (h, v), (d, h * v)),
                                         ("attention_output", (h, v, d), (d,), (h * v, d))):
            out.append(WeightDecl(f"{name}/kernel", kernel, self.kernel_initializer, fans=fans))
            if self.use_bias:
                out.append(WeightDecl(f"{name}/bias", bias, self.bias_initializer))
        return out

    def flops(self, shape: Shape, out: Shape) -> int:
        t, d, h, k, v = shape[1], shape[2], self.num_heads, self.key_dim, self.resolved_value_dim
        return 2 * t * (d * h * (2 * k + v) + t * h * (k + v) + h * v * d)


# ---------------------------------------------------------------------------------------
# Merges: layers of several inputs (keras/src/layers/merging/)


class _Merge(LayerBase):
    """A layer that reads several tensors. Which ones is the spec's wiring (`add h`, `concat a b`),
    not an option: `merge_shape` takes their shapes in order."""

    merges: ClassVar[bool] = True
    mask: ClassVar[str] = "keep"
    most_inputs: ClassVar[int | None] = None

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        """Keras's `Merge.compute_output_shape` (base_merge.py): shapes aligned from the right,
        new axes after the batch axis for the lower ranks, a 1 broadcasting; ShapeError otherwise."""
        out = shapes[0]
        for shape in shapes[1:]:
            a, b = out[1:], shape[1:]
            if len(a) < len(b):
                a, b = b, a
            b = (1,) * (len(a) - len(b)) + b
            dims = []
            for x, y in zip(a, b):
                if x == y or y == 1:
                    dims.append(x)
                elif x == 1:
                    dims.append(y)
                else:
                    raise ShapeError(f"the shapes of its inputs, {fmt_shape(out)} and {fmt_shape(shape)}, do not "
                                     "broadcast together (each dimension must be equal, or 1)",
                                     hint=_projection_hint(out, shape))
            out = (None, *dims)
        return out


def _projection_hint(a: Shape, b: Shape) -> str | None:
    """How to bring the branch of shape `b` to the main path's shape `a`: a 1x1 convolution
    (strided when its images are larger) or a dense layer."""
    if len(a) != len(b):
        return None
    if len(a) == 4:
        if b[1] % a[1] or b[2] % a[2] or b[1] // a[1] != b[2] // a[2]:
            return "bring both to one height and width first (strides, pooling or padding)"
        stride = b[1] // a[1]
        option = f" stride={stride}" if stride > 1 else ""
        return f"project the branch of shape {fmt_shape(b)} with `conv2d {a[3]} 1x1{option}` to {fmt_shape(a)}"
    if len(a) == 2:
        return f"project the branch of shape {fmt_shape(b)} with `dense {a[1]}` to {fmt_shape(a)}"
    return None


class Add(_Merge):
    keras_class: ClassVar[str] = "Add"
    kind: Literal["add"] = "add"


class Subtract(_Merge):
    keras_class: ClassVar[str] = "Subtract"
    kind: Literal["subtract"] = "subtract"
    most_inputs: ClassVar[int | None] = 2


class Multiply(_Merge):
    keras_class: ClassVar[str] = "Multiply"
    # with a mask Keras replaces the masked steps before it merges (keras/src/layers/merging/
    # base_merge.py, _apply_merge_op_and_or_mask; multiply.py), which no backend computes yet
    mask: ClassVar[str] = "refuse"
    kind: Literal["multiply"] = "multiply"


class Average(_Merge):
    keras_class: ClassVar[str] = "Average"
    kind: Literal["average"] = "average"


class Maximum(_Merge):
    keras_class: ClassVar[str] = "Maximum"
    # with a mask Keras replaces the masked steps before it merges (keras/src/layers/merging/
    # base_merge.py, _apply_merge_op_and_or_mask; multiply.py), which no backend computes yet
    mask: ClassVar[str] = "refuse"
    kind: Literal["maximum"] = "maximum"


class Minimum(_Merge):
    keras_class: ClassVar[str] = "Minimum"
    # with a mask Keras replaces the masked steps before it merges (keras/src/layers/merging/
    # base_merge.py, _apply_merge_op_and_or_mask; multiply.py), which no backend computes yet
    mask: ClassVar[str] = "refuse"
    kind: Literal["minimum"] = "minimum"


class Concat(_Merge):
    """Keras's Concatenate: equal ranks, equal dims but along `axis` (no broadcasting)."""

    keras_class: ClassVar[str] = "Concatenate"
    kind: Literal["concat"] = "concat"
    axis: Annotated[int, Arg("int", "the axis", keys=("axis",), minimum=-(2**31))] = -1

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ShapeError("its inputs must have one rank; received " + ", ".join(map(fmt_shape, shapes)),
                             hint="flatten the inputs first, or reshape one of them")
        axis = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= axis < rank:
            allowed = [str(a) for a in range(1, rank)] + [str(a) for a in range(-1, -rank, -1)]
            raise ShapeError(f"the axis of inputs of shape {fmt_shape(shapes[0])} is {', '.join(allowed[:-1])} or "
                             f"{allowed[-1]} (axis 0 is the batch); received {self.axis}",
                             hint="axis=-1 (the default) joins the last axis, the channels of an image")
        for shape in shapes[1:]:
            if any(x != y for i, (x, y) in enumerate(zip(shapes[0], shape)) if i != axis and i):
                raise ShapeError(f"the shapes of its inputs, {fmt_shape(shapes[0])} and {fmt_shape(shape)}, differ "
                                 f"outside axis {self.axis}, the one it joins",
                                 hint="bring the other dimensions to one size first (pooling, padding or strides)")
        return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:])


MERGE_TYPES = (Add, Subtract, Multiply, Average, Maximum, Minimum, Concat)


# ---------------------------------------------------------------------------------------
# The registry

LAYER_TYPES = (Dense, Conv2D, Flatten, Dropout, BatchNorm, MaxPool2D, AvgPool2D, GlobalAvgPool2D,
               GlobalMaxPool2D, ZeroPadding2D, UpSampling2D, Activation, Softmax, LeakyReLU, PReLU, Rescale, Normalize,
               Embedding, Conv1D, MaxPool1D, AvgPool1D, GlobalAvgPool1D, GlobalMaxPool1D, LayerNorm, Reshape,
               *RECURRENT_TYPES, Bidirectional, Attention, *MERGE_TYPES)
LAYER_CLASSES: dict[str, type[LayerBase]] = {cls.model_fields["kind"].default: cls for cls in LAYER_TYPES}
# statement keyword -> class (every activation name is a keyword of Activation)
LAYER_KEYWORDS: dict[str, type[LayerBase]] = {kw: cls for cls in LAYER_TYPES for kw in cls.keywords()}
# keyword -> (option, class): a statement of that keyword with that option is the class's kind.
# `softmax axis=1` is Keras's Softmax layer; a bare `softmax` its Activation("softmax").
LAYER_VARIANTS: dict[str, tuple[str, type[LayerBase]]] = {"softmax": ("axis", Softmax)}


def layer_class(keyword: str, option_keys: Any = ()) -> type[LayerBase]:
    """The class of a layer statement with this keyword and these option keys."""
    variant = LAYER_VARIANTS.get(keyword)
    if variant is not None and variant[0] in option_keys:
        return variant[1]
    return LAYER_KEYWORDS[keyword]


INPUT_LAYER = "input_layer"  # the name Keras gives a model's first Input in a fresh session


def snake_case(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case: BatchNormalization -> batch_normalization, the
    base of Keras's auto names."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


@functools.cache
def layer_args(cls: type[LayerBase]) -> tuple[tuple[str, Arg], ...]:
    """(field, Arg) of every option a kind declares, in declaration order."""
    out = []
    for field_name, info in cls.model_fields.items():
        arg = next((m for m in info.metadata if isinstance(m, Arg)), None)
        if arg is not None:
            out.append((field_name, arg))
    return tuple(out)
