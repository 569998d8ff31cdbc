"""The IR's building blocks: the vocabulary (activations, initializers, optimizers, losses,
metrics), the base `Node`, and the parts layers are made of (initializers, regularizers).

Every node is a frozen pydantic model that keeps its source `span` for diagnostics; the
span is left out of equality, hashing and JSON, so two specs that mean the same thing
compare equal.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

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

OptimizerName = Literal["sgd", "rmsprop", "adam", "adamw", "adagrad", "nadam", "adadelta", "adamax", "lion"]
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
    "adadelta": {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7, "weight_decay": None},
    "adamax": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
               "weight_decay": None},
    "lion": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.99, "weight_decay": None},
}
# Every optimizer's gradient clipping (keras/src/optimizers/base_optimizer.py, _clip_gradients);
# at most one of them may be set.
CLIPPING: tuple[str, ...] = ("clipnorm", "clipvalue", "global_clipnorm")

LossName = Literal[
    "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
    "mse", "mae", "huber",
]
LOSSES: tuple[str, ...] = LossName.__args__  # type: ignore[attr-defined]

MetricName = Literal[
    "accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy",
    "binary_accuracy", "mse", "mae", "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy",
]
METRICS: tuple[str, ...] = MetricName.__args__  # type: ignore[attr-defined]
TOP_K_METRICS = ("top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy")
DEFAULT_TOP_K = 5  # keras/src/metrics/accuracy_metrics.py: top_k_categorical_accuracy(k=5)

# Learning-rate schedules (keras/src/optimizers/schedules/learning_rate_schedule.py): Keras's
# arguments and defaults besides initial_learning_rate; REQUIRED where Keras has no default.
REQUIRED: Any = object()
ScheduleName = Literal["exponential_decay", "inverse_time_decay", "polynomial_decay", "cosine_decay",
                       "piecewise_constant_decay"]
SCHEDULES: tuple[str, ...] = ScheduleName.__args__  # type: ignore[attr-defined]
SCHEDULE_ARGS: dict[str, dict[str, Any]] = {
    "exponential_decay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED,
                          "staircase": False},
    "inverse_time_decay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED,
                           "staircase": False},
    "polynomial_decay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED,
                         "end_learning_rate": 0.0001, "power": 1.0, "cycle": False},
    "cosine_decay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "alpha": 0.0,
                     "warmup_target": None, "warmup_steps": 0},
    "piecewise_constant_decay": {"boundaries": REQUIRED, "values": REQUIRED},
}
SCHEDULE_CLASSES = {"exponential_decay": "ExponentialDecay", "inverse_time_decay": "InverseTimeDecay",
                    "polynomial_decay": "PolynomialDecay", "cosine_decay": "CosineDecay",
                    "piecewise_constant_decay": "PiecewiseConstantDecay"}

# Spellings accepted besides the canonical names (Keras's class names, common synonyms).
INITIALIZER_ALIASES = {
    "GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal", "HeNormal": "he_normal",
    "HeUniform": "he_uniform", "LecunNormal": "lecun_normal", "LecunUniform": "lecun_uniform",
    "Zeros": "zeros", "Ones": "ones", "RandomNormal": "random_normal",
    "RandomUniform": "random_uniform", "TruncatedNormal": "truncated_normal",
    "Orthogonal": "orthogonal", "uniform": "random_uniform", "normal": "random_normal",
    "xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
}
OPTIMIZER_ALIASES = {"SGD": "sgd", "RMSprop": "rmsprop", "Adam": "adam", "AdamW": "adamw",
                     "Adagrad": "adagrad", "Nadam": "nadam", "Adadelta": "adadelta", "Adamax": "adamax",
                     "Lion": "lion"}
LOSS_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae",
                "CategoricalCrossentropy": "categorical_crossentropy",
                "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
                "BinaryCrossentropy": "binary_crossentropy", "MeanSquaredError": "mse",
                "MeanAbsoluteError": "mae", "Huber": "huber"}
ACTIVATION_ALIASES = {"silu": "swish", "none": "linear"}
HYPERPARAMETER_ALIASES = {"lr": "learning_rate"}

Padding = Literal["valid", "same"]
Padding1D = Literal["valid", "same", "causal"]
InputDtype = Literal["float32", "int32"]
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
