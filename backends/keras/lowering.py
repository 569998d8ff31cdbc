"""The spec as Keras constructor calls, held as data.

One table serves both ways of lowering a spec: the engine instantiates these calls
(`make`), the emitter prints them as source code (`render`). Keeping them as data means
the program `modelspec compile` writes and the model `ms.build` runs cannot drift apart.
Nothing here imports keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelspec import ir

# keras.initializers class for each initializer keyword
INITIALIZER_CLASSES = {
    "glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal", "he_normal": "HeNormal",
    "he_uniform": "HeUniform", "lecun_normal": "LecunNormal", "lecun_uniform": "LecunUniform",
    "zeros": "Zeros", "ones": "Ones", "random_normal": "RandomNormal",
    "random_uniform": "RandomUniform", "truncated_normal": "TruncatedNormal", "orthogonal": "Orthogonal",
}
OPTIMIZER_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW",
                     "adagrad": "Adagrad", "nadam": "Nadam", "adadelta": "Adadelta", "adamax": "Adamax",
                     "lion": "Lion"}
METRIC_CLASSES = {"categorical_accuracy": "CategoricalAccuracy",
                  "sparse_categorical_accuracy": "SparseCategoricalAccuracy",
                  "binary_accuracy": "BinaryAccuracy", "mse": "MeanSquaredError",
                  "mae": "MeanAbsoluteError", "top_k_categorical_accuracy": "TopKCategoricalAccuracy",
                  "sparse_top_k_categorical_accuracy": "SparseTopKCategoricalAccuracy"}
LOSS_CLASSES = {"categorical_crossentropy": "CategoricalCrossentropy",
                "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
                "binary_crossentropy": "BinaryCrossentropy", "mse": "MeanSquaredError",
                "mae": "MeanAbsoluteError", "huber": "Huber"}


@dataclass(frozen=True)
class Code:
    """Python source written as it is: a variable or a function's parameter in emitted code."""

    text: str


@dataclass(frozen=True)
class Call:
    """`target(*args, **kwargs)`, where target is a dotted name under keras
    (`layers.Dense`, `keras.initializers.HeNormal`) and values may be Calls themselves."""

    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Layers


def initializer(init: ir.Initializer) -> str | Call:
    """`"he_normal"` when the initializer takes no arguments, else `HeNormal(seed=2024)`."""
    kwargs = {k: v for k, v in ((k, getattr(init, k)) for k in ("mean", "stddev", "minval", "maxval", "gain"))
              if v is not None}
    if init.seed is not None:
        kwargs["seed"] = init.seed
    if not kwargs:
        return init.name
    return Call(f"keras.initializers.{INITIALIZER_CLASSES[init.name]}", kwargs=kwargs)


def regularizer(reg: ir.Regularizer) -> Call:
    if reg.l1 and not reg.l2:
        return Call("keras.regularizers.L1", (reg.l1,))
    if reg.l2 and not reg.l1:
        return Call("keras.regularizers.L2", (reg.l2,))
    return Call("keras.regularizers.L1L2", kwargs={"l1": reg.l1, "l2": reg.l2})


def _weighted(layer: ir.Dense | ir.Conv2D | ir.Conv1D) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if layer.activation != "linear":
        kwargs["activation"] = layer.activation
    if not layer.use_bias:
        kwargs["use_bias"] = False
    if layer.kernel_initializer != ir.GLOROT_UNIFORM:
        kwargs["kernel_initializer"] = initializer(layer.kernel_initializer)
    if layer.use_bias and layer.bias_initializer != ir.ZEROS:
        kwargs["bias_initializer"] = initializer(layer.bias_initializer)
    if layer.kernel_regularizer is not None:
        kwargs["kernel_regularizer"] = regularizer(layer.kernel_regularizer)
    return kwargs


class Lowering:
    """One method per layer kind, named after it: the Keras layer's constructor arguments
    (positional, keyword), Keras's defaults left out."""

    def dense(self, layer: ir.Dense) -> tuple[tuple, dict]:
        return (layer.units,), _weighted(layer)

    def conv2d(self, layer: ir.Conv2D) -> tuple[tuple, dict]:
        kwargs: dict[str, Any] = {}
        if layer.strides != (1, 1):
            kwargs["strides"] = tuple(layer.strides)
        if layer.padding != "valid":
            kwargs["padding"] = layer.padding
        return (layer.filters, tuple(layer.kernel_size)), {**kwargs, **_weighted(layer)}

    def _pool(self, layer: ir.MaxPool2D | ir.AvgPool2D) -> tuple[tuple, dict]:
        kwargs: dict[str, Any] = {}
        if layer.strides is not None:
            kwargs["strides"] = tuple(layer.strides)
        if layer.padding != "valid":
            kwargs["padding"] = layer.padding
        return (tuple(layer.pool_size),), kwargs

    maxpool2d = avgpool2d = _pool

    def dropout(self, layer: ir.Dropout) -> tuple[tuple, dict]:
        return (layer.rate,), ({"seed": layer.seed} if layer.seed is not None else {})

    def batchnorm(self, layer: ir.BatchNorm) -> tuple[tuple, dict]:
        defaults = ir.BatchNorm.model_fields
        return (), {k: getattr(layer, k) for k in ("momentum", "epsilon") if getattr(layer, k) != defaults[k].default}

    def leaky_relu(self, layer: ir.LeakyReLU) -> tuple[tuple, dict]:
        # always written out: the layer's 0.3 and the activation string's 0.2 are easy to confuse
        return (), {"negative_slope": layer.negative_slope}

    def activation(self, layer: ir.Activation) -> tuple[tuple, dict]:
        return (layer.activation,), {}

    def softmax(self, layer: ir.Softmax) -> tuple[tuple, dict]:
        # always written, as the spec writes it: what tells this layer from Activation("softmax")
        return (), {"axis": layer.axis}

    def zeropadding2d(self, layer: ir.ZeroPadding2D) -> tuple[tuple, dict]:
        (top, bottom), (left, right) = layer.padding
        if top == bottom and left == right:
            return ((top, left),), {}
        return (((top, bottom), (left, right)),), {}

    def upsampling2d(self, layer: ir.UpSampling2D) -> tuple[tuple, dict]:
        return (tuple(layer.size),), {}  # interpolation='nearest', Keras's default

    def rescale(self, layer: ir.Rescale) -> tuple[tuple, dict]:
        return (layer.scale,), ({"offset": layer.offset} if layer.offset != 0 else {})

    def _no_args(self, layer: ir.LayerBase) -> tuple[tuple, dict]:
        return (), {}

    # normalize: Normalization(axis=-1) without mean and variance, so that it has Keras's
    # mean/variance/count weights, which adapt (or set_weights) fill
    flatten = globalavgpool2d = globalmaxpool2d = prelu = normalize = _no_args

    # merges (keras/src/layers/merging/): which tensors they read is the graph's, not an argument
    add = subtract = multiply = average = maximum = minimum = _no_args

    def concat(self, layer: ir.Concat) -> tuple[tuple, dict]:
        return (), ({"axis": layer.axis} if layer.axis != -1 else {})

    # sequences: (batch, steps, features), channels last as Keras's default data_format

    def embedding(self, layer: ir.Embedding) -> tuple[tuple, dict]:
        kwargs: dict[str, Any] = {}
        if layer.embeddings_initializer != ir.UNIFORM:  # Keras's default 'uniform' is U(-0.05, 0.05)
            kwargs["embeddings_initializer"] = initializer(layer.embeddings_initializer)
        if layer.embeddings_regularizer is not None:
            kwargs["embeddings_regularizer"] = regularizer(layer.embeddings_regularizer)
        if layer.mask_zero:
            kwargs["mask_zero"] = True
        return (layer.input_dim, layer.output_dim), kwargs

    def conv1d(self, layer: ir.Conv1D) -> tuple[tuple, dict]:
        kwargs: dict[str, Any] = {}
        if layer.strides != 1:
            kwargs["strides"] = layer.strides
        if layer.padding != "valid":
            kwargs["padding"] = layer.padding
        if layer.dilation_rate != 1:
            kwargs["dilation_rate"] = layer.dilation_rate
        return (layer.filters, layer.kernel_size), {**kwargs, **_weighted(layer)}

    def _pool1d(self, layer: ir.MaxPool1D | ir.AvgPool1D) -> tuple[tuple, dict]:
        # the pool size is always written: AveragePooling1D has no default for it
        # (keras/src/layers/pooling/average_pooling1d.py), MaxPooling1D's is 2
        kwargs: dict[str, Any] = {}
        if layer.strides is not None:
            kwargs["strides"] = layer.strides
        if layer.padding != "valid":
            kwargs["padding"] = layer.padding
        return (layer.pool_size,), kwargs

    maxpool1d = avgpool1d = _pool1d

    # GlobalAveragePooling1D averages the unmasked steps by itself when a mask reaches it
    globalavgpool1d = globalmaxpool1d = _no_args

    def layernorm(self, layer: ir.LayerNorm) -> tuple[tuple, dict]:
        # axis=-1, center and scale: Keras's defaults, the only ones a spec has
        default = ir.LayerNorm.model_fields["epsilon"].default
        return (), ({"epsilon": layer.epsilon} if layer.epsilon != default else {})

    def reshape(self, layer: ir.Reshape) -> tuple[tuple, dict]:
        return (tuple(layer.target_shape),), {}

    # recurrent layers (keras/src/layers/rnn/): LSTM, GRU and SimpleRNN share their options

    def _recurrent(self, layer: ir.LSTM | ir.GRU | ir.SimpleRNN) -> tuple[tuple, dict]:
        kwargs: dict[str, Any] = {}
        if layer.return_sequences:
            kwargs["return_sequences"] = True
        if layer.go_backwards:
            kwargs["go_backwards"] = True
        if layer.activation != "tanh":
            kwargs["activation"] = layer.activation
        if getattr(layer, "recurrent_activation", "sigmoid") != "sigmoid":
            kwargs["recurrent_activation"] = layer.recurrent_activation
        if not layer.use_bias:
            kwargs["use_bias"] = False
        if layer.kernel_initializer != ir.GLOROT_UNIFORM:
            kwargs["kernel_initializer"] = initializer(layer.kernel_initializer)
        if layer.recurrent_initializer != ir.ORTHOGONAL:
            kwargs["recurrent_initializer"] = initializer(layer.recurrent_initializer)
        if layer.use_bias and layer.bias_initializer != ir.ZEROS:
            kwargs["bias_initializer"] = initializer(layer.bias_initializer)
        if not getattr(layer, "unit_forget_bias", True):
            kwargs["unit_forget_bias"] = False
        if not getattr(layer, "reset_after", True):
            kwargs["reset_after"] = False
        if layer.kernel_regularizer is not None:
            kwargs["kernel_regularizer"] = regularizer(layer.kernel_regularizer)
        return (layer.units,), kwargs

    lstm = gru = simple_rnn = _recurrent

    def bidirectional(self, node: ir.Bidirectional) -> tuple[tuple, dict]:
        # the wrapped layer is the first argument; Bidirectional clones it into forward_<its
        # name> and backward_<its name> (keras/src/layers/rnn/bidirectional.py)
        return (layer(node.layer),), ({"merge_mode": node.merge_mode} if node.merge_mode != "concat" else {})

    def attention(self, layer: ir.Attention) -> tuple[tuple, dict]:
        # keyword arguments, as Keras's own examples write MultiHeadAttention; called as
        # mha(x, x) (`arguments`): query, and value and key, are the one input
        kwargs: dict[str, Any] = {"num_heads": layer.num_heads, "key_dim": layer.key_dim}
        if layer.value_dim is not None:
            kwargs["value_dim"] = layer.value_dim
        if layer.dropout:
            kwargs["dropout"] = layer.dropout
        if not layer.use_bias:
            kwargs["use_bias"] = False
        if layer.kernel_initializer != ir.GLOROT_UNIFORM:
            kwargs["kernel_initializer"] = initializer(layer.kernel_initializer)
        if layer.use_bias and layer.bias_initializer != ir.ZEROS:
            kwargs["bias_initializer"] = initializer(layer.bias_initializer)
        if layer.seed is not None:
            kwargs["seed"] = layer.seed
        return (), kwargs

_LOWERING = Lowering()


def layer(node: ir.LayerBase, name: str | None = None, inner: str | None = None) -> Call:
    """The Keras layer for one IR layer; `name` is passed when given, and `inner` as the name
    of the layer it wraps (bidirectional's recurrent layer)."""
    args, kwargs = getattr(_LOWERING, node.kind)(node)  # type: ignore[attr-defined]
    if inner is not None:
        first = args[0]
        args = (Call(first.target, first.args, {**first.kwargs, "name": inner}), *args[1:])
    if name is not None:
        kwargs["name"] = name
    return Call(f"layers.{node.keras_class}", args, kwargs)


def arguments(node: ir.LayerBase, inputs: list[Any]) -> tuple[Any, ...]:
    """The positional arguments of a layer's call in a functional model, from the values it
    reads (tensors, or the variables of emitted code): a merge takes them as one list;
    self-attention its one input as query and value, `mha(x, x)`
    (keras/src/layers/attention/multi_head_attention.py: key defaults to value)."""
    if node.merges:
        return (list(inputs),)
    return (inputs[0],) * node.reads_input_times


def model_input(spec: ir.Spec, name: str | None = None) -> Call:
    """`keras.Input(shape=(20,), dtype="int32")`: the dtype is written for token ids only."""
    kwargs: dict[str, Any] = {"shape": tuple(spec.input_shape)}
    if spec.input_dtype != "float32":
        kwargs["dtype"] = spec.input_dtype
    if name is not None:
        kwargs["name"] = name
    return Call("keras.Input", kwargs=kwargs)


# ---------------------------------------------------------------------------------------
# Training


def optimizer(name: str, hyper: dict[str, Any]) -> Call:
    """`RMSprop(learning_rate=0.001, momentum=0.5, clipnorm=1.0)`; hyperparameters that are
    None are left out, a schedule is its Keras class."""
    kwargs = {k: (schedule(v) if isinstance(v, ir.Schedule) else v) for k, v in hyper.items() if v is not None}
    return Call(f"keras.optimizers.{OPTIMIZER_CLASSES[name]}", kwargs=kwargs)


def schedule(node: ir.Schedule) -> Call:
    """`keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.96)`:
    the initial rate first, as the spec writes it, then Keras's other arguments; the ones at
    their defaults are left out, the required ones always written."""
    config = node.config()
    required = [k for k, v in ir.SCHEDULE_ARGS[node.name].items() if v is ir.REQUIRED]
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
              if k in required or v != ir.SCHEDULE_ARGS[node.name][k]}
    args = (kwargs.pop("initial_learning_rate"),) if "initial_learning_rate" in kwargs else ()
    return Call(f"keras.optimizers.schedules.{ir.SCHEDULE_CLASSES[node.name]}", args, kwargs)


def loss(name: str, delta: float | None = None, from_logits: bool = False, label_smoothing: float = 0.0) -> str | Call:
    """The loss's name, or its class where an option is set:
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`."""
    kwargs: dict[str, Any] = {"delta": delta} if name == "huber" and delta is not None else {}
    if from_logits:
        kwargs["from_logits"] = True
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    return Call(f"keras.losses.{LOSS_CLASSES[name]}", kwargs=kwargs) if kwargs else name


def metric(name: str, kind: str, k: int | None = None) -> Call:
    """A resolved metric (modelspec.training.resolve_metric did Keras's 'accuracy' rule), shown
    as `name`; a top-k metric with its k."""
    kwargs: dict[str, Any] = {"k": k} if k is not None else {}
    return Call(f"keras.metrics.{METRIC_CLASSES[kind]}", kwargs={**kwargs, "name": name})


def callbacks(spec: ir.Spec) -> list[Call]:
    """`keras.callbacks.EarlyStopping(monitor="loss", patience=3)` and ReduceLROnPlateau's
    call, the options that differ from Keras's defaults (the IR's) written out."""
    out = []
    for node, target in ((spec.early_stopping, "EarlyStopping"), (spec.reduce_lr_on_plateau, "ReduceLROnPlateau")):
        if node is not None:
            fields = type(node).model_fields
            kwargs = {k: getattr(node, k) for k in fields if k != "span" and getattr(node, k) != fields[k].default}
            out.append(Call(f"keras.callbacks.{target}", kwargs=kwargs))
    return out


# ---------------------------------------------------------------------------------------
# Making and printing calls


def make(value: Any, keras: Any) -> Any:
    """Instantiate a Call (recursively) with the given keras module."""
    if isinstance(value, Call):
        parts = value.target.split(".")
        obj = keras.layers if parts[0] == "layers" else keras
        for part in parts[1:]:
            obj = getattr(obj, part)
        return obj(*(make(a, keras) for a in value.args), **{k: make(v, keras) for k, v in value.kwargs.items()})
    return value


def literal(value: Any) -> str:
    """Python source for a value. Strings are always escaped: text from a spec can never
    end a string literal or start a statement in generated code."""
    if isinstance(value, Call):
        args = [literal(a) for a in value.args] + [f"{k}={literal(v)}" for k, v in value.kwargs.items()]
        return f"{value.target}({', '.join(args)})"
    if isinstance(value, Code):
        return value.text
    if isinstance(value, str):
        text = repr(value)  # always a valid literal; non-printable characters are escaped
        if text.startswith("'") and "'" not in value and '"' not in value:
            text = '"' + text[1:-1] + '"'
        return text
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    raise TypeError(f"no literal for {type(value).__name__}")
