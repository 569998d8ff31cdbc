"""The typed IR: what a spec means, independent of how it was written.

One frozen pydantic class per layer kind, joined in a discriminated union on `kind`.
Options a user did not write are stored as Keras's defaults, so a backend never has to
know a default. Every node keeps its source `span` for diagnostics; the span is left out
of equality, hashing and JSON, so two specs that mean the same thing compare equal.

The parser (modelspec.parser) builds these; backends consume them and never see text.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from .diagnostics import Span

# ---------------------------------------------------------------------------------------
# Vocabulary shared by the IR, the parser, the checker and the backends.

ActivationName = Literal[
    "linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "swish",
    "softplus", "relu6", "leaky_relu",
]
ACTIVATIONS: tuple[str, ...] = ActivationName.__args__  # type: ignore[attr-defined]

InitializerName = Literal[
    "glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal",
    "lecun_uniform", "zeros", "ones", "random_normal", "random_uniform",
    "truncated_normal", "orthogonal",
]
INITIALIZERS: tuple[str, ...] = InitializerName.__args__  # type: ignore[attr-defined]

# Keras's constructor arguments and defaults for each initializer (besides `seed`).
INITIALIZER_ARGS: dict[str, dict[str, float]] = {
    "glorot_uniform": {}, "glorot_normal": {}, "he_normal": {}, "he_uniform": {},
    "lecun_normal": {}, "lecun_uniform": {}, "zeros": {}, "ones": {},
    "random_normal": {"mean": 0.0, "stddev": 0.05},
    "random_uniform": {"minval": -0.05, "maxval": 0.05},
    "truncated_normal": {"mean": 0.0, "stddev": 0.05},
    "orthogonal": {"gain": 1.0},
}
SEEDLESS_INITIALIZERS = frozenset({"zeros", "ones"})

OptimizerName = Literal["sgd", "rmsprop", "adam", "adamw", "adagrad", "nadam"]
OPTIMIZERS: tuple[str, ...] = OptimizerName.__args__  # type: ignore[attr-defined]

# Keras 3's hyperparameters and defaults per optimizer (weight_decay None = off).
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": None},
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                "centered": False, "weight_decay": None},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
             "weight_decay": None},
    "adamw": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "weight_decay": 0.004},
    "adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7,
                "weight_decay": None},
    "nadam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "weight_decay": None},
}

LossName = Literal[
    "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
    "mse", "mae", "huber",
]
LOSSES: tuple[str, ...] = LossName.__args__  # type: ignore[attr-defined]

MetricName = Literal[
    "accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy",
    "binary_accuracy", "mse", "mae",
]
METRICS: tuple[str, ...] = MetricName.__args__  # type: ignore[attr-defined]

Padding = Literal["valid", "same"]
Seed = Annotated[int, Field(ge=0, lt=2**63)]  # Keras keeps seeds in an int64
PositiveInt = Annotated[int, Field(ge=1)]
Pair = tuple[PositiveInt, PositiveInt]
LayerName = Annotated[str, Field(min_length=1, pattern=r"^[^/]+$")]


# ---------------------------------------------------------------------------------------
# Base node


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    span: SkipJsonSchema[Span | None] = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _validate(self) -> "Node":
        self.check()
        return self

    def check(self) -> None:
        """Rules that involve several fields; raises ValueError. Subclasses extend it."""

    @classmethod
    def construct_checked(cls, **fields: Any) -> "Node":
        """A node from fields the caller has already validated one by one (the parser does,
        with better messages than pydantic's), skipping pydantic's validation: building its
        schemas would cost a noticeable part of `modelspec check`'s start-up. The
        cross-field rules in `check` still run."""
        node = cls.model_construct(**fields)
        node.check()
        return node

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


def _finite(*values: float | None) -> None:
    for v in values:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"expected a finite number, received {v}")


# ---------------------------------------------------------------------------------------
# Parts of layers


class Initializer(Node):
    """A Keras initializer: `he_normal(seed=2024)`, `random_normal(stddev=0.05)`."""

    name: InitializerName
    seed: Seed | None = None
    mean: float | None = None
    stddev: float | None = None
    minval: float | None = None
    maxval: float | None = None
    gain: float | None = None

    def check(self) -> None:
        allowed = INITIALIZER_ARGS[self.name]
        for arg in ("mean", "stddev", "minval", "maxval", "gain"):
            value = getattr(self, arg)
            if value is not None and arg not in allowed:
                raise ValueError(f"{self.name} takes no argument '{arg}'")
            _finite(value)
        if self.seed is not None and self.name in SEEDLESS_INITIALIZERS:
            raise ValueError(f"{self.name} takes no seed")
        if self.stddev is not None and self.stddev <= 0:
            raise ValueError(f"stddev must be positive, received {self.stddev}")
        a = self.args()
        if "minval" in a and a["minval"] >= a["maxval"]:
            raise ValueError(f"minval must be below maxval, received {a['minval']} and {a['maxval']}")

    def args(self) -> dict[str, float]:
        """The distribution's arguments with Keras's defaults filled in."""
        return {k: (getattr(self, k) if getattr(self, k) is not None else v)
                for k, v in INITIALIZER_ARGS[self.name].items()}


GLOROT_UNIFORM = Initializer.model_construct(name="glorot_uniform")
ZEROS = Initializer.model_construct(name="zeros")


class Regularizer(Node):
    """Keras's L1L2: l1·Σ|w| + l2·Σw², added to the loss."""

    l1: float = Field(default=0.0, ge=0)
    l2: float = Field(default=0.0, ge=0)

    def check(self) -> None:
        _finite(self.l1, self.l2)


# ---------------------------------------------------------------------------------------
# Layers


class LayerBase(Node):
    keras_class: ClassVar[str]
    name: LayerName | None = None


class Dense(LayerBase):
    keras_class: ClassVar[str] = "Dense"
    kind: Literal["dense"] = "dense"
    units: PositiveInt
    activation: ActivationName = "linear"
    kernel_initializer: Initializer = GLOROT_UNIFORM
    bias_initializer: Initializer = ZEROS
    use_bias: bool = True
    kernel_regularizer: Regularizer | None = None

    def check(self) -> None:
        _check_bias(self.bias_initializer)


class Conv2D(LayerBase):
    keras_class: ClassVar[str] = "Conv2D"
    kind: Literal["conv2d"] = "conv2d"
    filters: PositiveInt
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: Padding = "valid"
    activation: ActivationName = "linear"
    kernel_initializer: Initializer = GLOROT_UNIFORM
    bias_initializer: Initializer = ZEROS
    use_bias: bool = True
    kernel_regularizer: Regularizer | None = None

    def check(self) -> None:
        _check_bias(self.bias_initializer)


def _check_bias(init: Initializer) -> None:
    if init.name == "orthogonal":
        raise ValueError("orthogonal needs a weight of rank 2 or more; a bias is a vector")


class Flatten(LayerBase):
    keras_class: ClassVar[str] = "Flatten"
    kind: Literal["flatten"] = "flatten"


class Dropout(LayerBase):
    keras_class: ClassVar[str] = "Dropout"
    kind: Literal["dropout"] = "dropout"
    rate: float = Field(ge=0.0, le=1.0)
    seed: Seed | None = None


class BatchNorm(LayerBase):
    keras_class: ClassVar[str] = "BatchNormalization"
    kind: Literal["batchnorm"] = "batchnorm"
    momentum: float = Field(default=0.99, ge=0.0, le=1.0)
    epsilon: float = Field(default=1e-3, gt=0.0)


class _Pool2D(LayerBase):
    pool_size: Pair = (2, 2)
    strides: Pair | None = None  # None: the pool size, as in Keras
    padding: Padding = "valid"

    @property
    def resolved_strides(self) -> tuple[int, int]:
        return self.strides or self.pool_size


class MaxPool2D(_Pool2D):
    keras_class: ClassVar[str] = "MaxPooling2D"
    kind: Literal["maxpool2d"] = "maxpool2d"


class AvgPool2D(_Pool2D):
    keras_class: ClassVar[str] = "AveragePooling2D"
    kind: Literal["avgpool2d"] = "avgpool2d"


class GlobalAvgPool2D(LayerBase):
    keras_class: ClassVar[str] = "GlobalAveragePooling2D"
    kind: Literal["globalavgpool2d"] = "globalavgpool2d"


class Activation(LayerBase):
    """`relu`, `softmax`, ... as a layer of its own (Keras's `Activation`)."""

    keras_class: ClassVar[str] = "Activation"
    kind: Literal["activation"] = "activation"
    activation: ActivationName

    def check(self) -> None:
        if self.activation == "leaky_relu":
            raise ValueError("a leaky_relu layer is LeakyReLU, kind 'leaky_relu'")


class LeakyReLU(LayerBase):
    """Keras's LeakyReLU layer, whose default slope is 0.3 (the activation string's is 0.2)."""

    keras_class: ClassVar[str] = "LeakyReLU"
    kind: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: float = Field(default=0.3, ge=0.0)


Layer = Annotated[
    Union[Dense, Conv2D, Flatten, Dropout, BatchNorm, MaxPool2D, AvgPool2D, GlobalAvgPool2D,
          Activation, LeakyReLU],
    Field(discriminator="kind"),
]
LAYER_CLASSES: dict[str, type[LayerBase]] = {
    cls.model_fields["kind"].default: cls  # type: ignore[misc]
    for cls in (Dense, Conv2D, Flatten, Dropout, BatchNorm, MaxPool2D, AvgPool2D,
                GlobalAvgPool2D, Activation, LeakyReLU)
}


# ---------------------------------------------------------------------------------------
# Training


class Optimizer(Node):
    """An optimizer with only the hyperparameters the user wrote; `config()` adds Keras's defaults."""

    name: OptimizerName
    learning_rate: float | None = Field(default=None, gt=0)
    momentum: float | None = Field(default=None, ge=0, le=1)
    rho: float | None = Field(default=None, ge=0, le=1)
    beta_1: float | None = Field(default=None, ge=0, lt=1)
    beta_2: float | None = Field(default=None, ge=0, lt=1)
    epsilon: float | None = Field(default=None, ge=0)
    nesterov: bool | None = None
    centered: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    initial_accumulator_value: float | None = Field(default=None, ge=0)

    def check(self) -> None:
        allowed = OPTIMIZER_DEFAULTS[self.name]
        for key in HYPERPARAMETERS:
            value = getattr(self, key)
            if value is not None and key not in allowed:
                raise ValueError(f"{self.name} has no hyperparameter '{key}'")
            if isinstance(value, float):
                _finite(value)

    def config(self) -> dict[str, Any]:
        """Every hyperparameter of this optimizer, Keras's default where none was written."""
        return {k: (getattr(self, k) if getattr(self, k) is not None else v)
                for k, v in OPTIMIZER_DEFAULTS[self.name].items()}


HYPERPARAMETERS: tuple[str, ...] = tuple(k for k in Optimizer.model_fields if k not in ("span", "name"))


class Loss(Node):
    name: LossName
    delta: float | None = Field(default=None, gt=0)  # huber only; Keras's default is 1.0

    def check(self) -> None:
        if self.delta is not None and self.name != "huber":
            raise ValueError(f"only huber takes delta, not {self.name}")
        _finite(self.delta)


class Fit(Node):
    """The `fit` statement: only what the user wrote (None means Keras's default)."""

    batch_size: PositiveInt | None = None
    epochs: Annotated[int, Field(ge=0)] | None = None
    validation_split: float | None = Field(default=None, ge=0, lt=1)
    shuffle: bool | None = None
    seed: Seed | None = None


# ---------------------------------------------------------------------------------------
# The whole spec


class Spec(Node):
    name: LayerName = "sequential"
    input_shape: tuple[PositiveInt, ...] = Field(min_length=1)
    layers: tuple[Layer, ...] = Field(min_length=1)
    optimizer: Optimizer | None = None
    loss: Loss | None = None
    metrics: tuple[MetricName, ...] = ()
    fit: Fit | None = None
    # Where the spec came from, for diagnostics; never part of its meaning.
    path: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    source: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    statement_spans: SkipJsonSchema[dict[str, Span]] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def has_training(self) -> bool:
        return any(x is not None for x in (self.optimizer, self.loss, self.fit)) or bool(self.metrics)


def json_schema() -> dict:
    """The JSON Schema of the IR (`modelspec schema`)."""
    return Spec.model_json_schema()
