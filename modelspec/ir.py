"""The typed IR: what a spec means, independent of how it was written.

One frozen pydantic class per layer kind (modelspec.layers), joined in a discriminated
union on `kind`, plus the training statements and the whole `Spec`. Options a user did
not write are stored as Keras's defaults, so a backend never has to know a default.
Every node keeps its source `span` for diagnostics; the span is left out of equality,
hashing and JSON, so two specs that mean the same thing compare equal.

The parser (modelspec.parser) builds these; backends consume them and never see text.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from .diagnostics import Span
from .layers import *  # noqa: F401,F403 - the layer kinds are part of the IR
from .layers import LAYER_TYPES
from .nodes import *  # noqa: F401,F403
from .nodes import (
    CLIPPING, DEFAULT_TOP_K, OPTIMIZER_DEFAULTS, REQUIRED, SCHEDULE_ARGS, TOP_K_METRICS, InputDtype, LayerName, LossName, MetricName, Node, OptimizerName, PositiveInt, ScheduleName, Seed, _finite,
)

Layer = Annotated[Union[LAYER_TYPES], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------
# Training


class Schedule(Node):
    """A Keras learning-rate schedule, `exponential_decay(0.1, decay_steps=100, decay_rate=0.96)`:
    only the arguments the user wrote; `config()` adds Keras's defaults. Its value at each
    step is modelspec.schedules.learning_rate."""

    name: ScheduleName
    initial_learning_rate: float | None = Field(default=None, gt=0)
    decay_steps: PositiveInt | None = None
    decay_rate: float | None = Field(default=None, gt=0)
    staircase: bool | None = None
    end_learning_rate: float | None = Field(default=None, ge=0)
    power: float | None = None
    cycle: bool | None = None
    alpha: float | None = Field(default=None, ge=0, le=1)
    warmup_target: float | None = Field(default=None, gt=0)
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    boundaries: tuple[int, ...] | None = None
    values: tuple[float, ...] | None = None

    def check(self) -> None:
        allowed = SCHEDULE_ARGS[self.name]
        for key in SCHEDULE_FIELDS:
            value = getattr(self, key)
            if value is not None and key not in allowed:
                raise ValueError(f"{self.name} takes no argument '{key}'")
            if isinstance(value, float):
                _finite(value)
        missing = [k for k, v in allowed.items() if v is REQUIRED and getattr(self, k) is None]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(missing)}")
        if self.values is not None:
            _finite(*self.values)
            if len(self.values) != len(self.boundaries or ()) + 1:
                raise ValueError(f"one value more than the boundaries is needed: "
                                 f"{len(self.boundaries or ())} boundaries take {len(self.boundaries or ()) + 1} "
                                 f"values; received {len(self.values)}")
            if any(b <= a for a, b in zip(self.boundaries, self.boundaries[1:])):  # type: ignore[arg-type]
                raise ValueError(f"the boundaries must increase; received {list(self.boundaries or ())}")

    def config(self) -> dict[str, Any]:
        """Every argument of Keras's schedule, its default where none was written."""
        return {k: (getattr(self, k) if getattr(self, k) is not None else v)
                for k, v in SCHEDULE_ARGS[self.name].items()}

    @property
    def initial(self) -> float:
        """The rate of step 0 (a piecewise schedule's first value)."""
        return self.values[0] if self.values is not None else self.initial_learning_rate  # type: ignore[index,return-value]


SCHEDULE_FIELDS: tuple[str, ...] = tuple(k for k in Schedule.model_fields if k not in ("span", "name"))


class Optimizer(Node):
    """An optimizer with only the hyperparameters the user wrote; `config()` adds Keras's
    defaults. The learning rate is a number or a schedule; the clipping options apply to
    every optimizer (at most one of them)."""

    name: OptimizerName
    learning_rate: float | Schedule | None = Field(default=None)
    momentum: float | None = Field(default=None, ge=0, le=1)
    rho: float | None = Field(default=None, ge=0, le=1)
    beta_1: float | None = Field(default=None, ge=0, lt=1)
    beta_2: float | None = Field(default=None, ge=0, lt=1)
    epsilon: float | None = Field(default=None, ge=0)
    nesterov: bool | None = None
    centered: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    initial_accumulator_value: float | None = Field(default=None, ge=0)
    clipnorm: float | None = Field(default=None, gt=0)
    clipvalue: float | None = Field(default=None, gt=0)
    global_clipnorm: float | None = Field(default=None, gt=0)

    def check(self) -> None:
        allowed = OPTIMIZER_DEFAULTS[self.name]
        for key in HYPERPARAMETERS:
            value = getattr(self, key)
            if value is not None and key not in allowed and key not in CLIPPING:
                raise ValueError(f"{self.name} has no hyperparameter '{key}'")
            if isinstance(value, float):
                _finite(value)
        if isinstance(self.learning_rate, float) and self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, received {self.learning_rate}")
        clipping = [k for k in CLIPPING if getattr(self, k) is not None]
        if len(clipping) > 1:  # keras/src/optimizers/base_optimizer.py raises the same
            raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set; received "
                             f"{' and '.join(clipping)}")

    @property
    def schedule(self) -> Schedule | None:
        return self.learning_rate if isinstance(self.learning_rate, Schedule) else None

    def slots(self) -> int:
        """How many values the optimizer keeps per trainable weight (Keras's optimizer variables)."""
        c = self.config()
        if self.name == "sgd":
            return 1 if c["momentum"] else 0
        if self.name == "rmsprop":
            return 1 + bool(c["momentum"]) + bool(c["centered"])
        return 1 if self.name in ("adagrad", "lion") else 2

    def config(self) -> dict[str, Any]:
        """Every hyperparameter of this optimizer, Keras's default where none was written, and
        the clipping option that is set, if one is. The learning rate may be a Schedule."""
        out = {k: (getattr(self, k) if getattr(self, k) is not None else v)
               for k, v in OPTIMIZER_DEFAULTS[self.name].items()}
        return {**out, **{k: getattr(self, k) for k in CLIPPING if getattr(self, k) is not None}}


HYPERPARAMETERS: tuple[str, ...] = tuple(k for k in Optimizer.model_fields if k not in ("span", "name"))


class Loss(Node):
    """The loss. from_logits: the model's output is logits, which the cross-entropy turns into
    probabilities itself; label_smoothing: y·(1-ls) + ls/classes (categorical) or + ls/2
    (binary), as Keras's losses do."""

    name: LossName
    delta: float | None = Field(default=None, gt=0)  # huber only; Keras's default is 1.0
    from_logits: bool | None = None
    label_smoothing: float | None = Field(default=None, ge=0, le=1)

    def check(self) -> None:
        if self.delta is not None and self.name != "huber":
            raise ValueError(f"only huber takes delta, not {self.name}")
        if self.from_logits is not None and self.name not in CROSSENTROPY_LOSSES:
            raise ValueError(f"only the cross-entropies take from_logits, not {self.name}")
        if self.label_smoothing is not None and self.name not in ("categorical_crossentropy", "binary_crossentropy"):
            raise ValueError(f"only categorical_crossentropy and binary_crossentropy take label_smoothing, "
                             f"not {self.name}")
        _finite(self.delta, self.label_smoothing)


CROSSENTROPY_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy")

Mode = Literal["auto", "min", "max"]


class EarlyStopping(Node):
    """Keras's EarlyStopping callback (keras/src/callbacks/early_stopping.py), its defaults."""

    monitor: str = "val_loss"
    min_delta: float = 0.0
    patience: Annotated[int, Field(ge=0)] = 0
    mode: Mode = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: Annotated[int, Field(ge=0)] = 0

    def check(self) -> None:
        _finite(self.min_delta, self.baseline)


class ReduceLROnPlateau(Node):
    """Keras's ReduceLROnPlateau callback (keras/src/callbacks/reduce_lr_on_plateau.py)."""

    monitor: str = "val_loss"
    factor: float = Field(default=0.1, ge=0, lt=1)  # Keras: factor >= 1 raises ValueError
    patience: Annotated[int, Field(ge=0)] = 10
    mode: Mode = "auto"
    min_delta: float = 1e-4
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: float = Field(default=0.0, ge=0)

    def check(self) -> None:
        _finite(self.factor, self.min_delta, self.min_lr)


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
    """A model: its input, its layers in the order they were written (blocks and repeats
    expanded), what each layer reads, and how to train it.

    `connections` holds, for each layer, the layers it reads as indices into `layers`, -1
    standing for the model's input; it is empty for a plain chain, where each layer reads the
    one before it. The output is the last layer's. (Several inputs would be -2, -3, ...;
    several outputs a list of indices.)"""

    name: LayerName = "sequential"
    input_shape: tuple[PositiveInt, ...] = Field(min_length=1)
    input_dtype: InputDtype = "float32"  # `input 20 int`: token ids, Keras's Input(dtype="int32")
    layers: tuple[Layer, ...] = Field(min_length=1)
    connections: tuple[tuple[int, ...], ...] = ()
    optimizer: Optimizer | None = None
    loss: Loss | None = None
    metrics: tuple[MetricName, ...] = ()
    top_k: PositiveInt | None = None  # the k of the top-k metrics (Keras's default 5)
    fit: Fit | None = None
    early_stopping: EarlyStopping | None = None
    reduce_lr_on_plateau: ReduceLROnPlateau | None = None
    # Where the spec came from, for diagnostics; never part of its meaning.
    path: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    source: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    statement_spans: SkipJsonSchema[dict[str, Span]] = Field(default_factory=dict, exclude=True, repr=False)
    # How a graph was written, for the emitters, `draw` and `fmt`: the block uses
    # (modelspec.structure.BlockUse, in the order they begin) and the nested statements.
    blocks: SkipJsonSchema[tuple[Any, ...]] = Field(default=(), exclude=True, repr=False)
    syntax: SkipJsonSchema[tuple[Any, ...] | None] = Field(default=None, exclude=True, repr=False)

    def check(self) -> None:
        if self.top_k is not None and not any(m in TOP_K_METRICS for m in self.metrics):
            raise ValueError("k is the top-k metrics' option; the metrics include none of them")
        if not self.connections:
            return
        if len(self.connections) != len(self.layers):
            raise ValueError(f"connections must list the inputs of each of the {len(self.layers)} layers; "
                             f"received {len(self.connections)}")
        for i, (layer, sources) in enumerate(zip(self.layers, self.connections)):
            if not sources or any(not -1 <= s < i for s in sources):
                raise ValueError(f"layer {i} must read the input (-1) or earlier layers; received {list(sources)}")
            if layer.merges and len(sources) < 2:
                raise ValueError(f"layer {i} ({layer.kind}) merges at least two inputs; received {list(sources)}")
            if not layer.merges and len(sources) != 1:
                raise ValueError(f"layer {i} ({layer.kind}) reads one input; received {list(sources)}")

    def sources(self, index: int) -> tuple[int, ...]:
        """The layers layer `index` reads (-1: the model's input)."""
        return self.connections[index] if self.connections else (index - 1,)

    @property
    def id_limit(self) -> int | None:
        """For integer inputs, the smallest vocabulary of the embeddings that read them: every
        id must lie in [0, id_limit). None for float inputs."""
        if self.input_dtype != "int32":
            return None
        return min((getattr(layer, "input_dim") for layer in self.layers if layer.reads_ids), default=None)

    @property
    def is_chain(self) -> bool:
        return not self.connections

    @property
    def has_training(self) -> bool:
        return any(x is not None for x in (self.optimizer, self.loss, self.fit, self.early_stopping,
                                           self.reduce_lr_on_plateau)) or bool(self.metrics)

    @property
    def k(self) -> int:
        """The k of the top-k metrics."""
        return self.top_k if self.top_k is not None else DEFAULT_TOP_K


def json_schema() -> dict:
    """The JSON Schema of the IR (`modelspec schema`)."""
    return Spec.model_json_schema()
