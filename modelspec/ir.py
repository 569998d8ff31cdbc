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
    OPTIMIZER_DEFAULTS, InputDtype, LayerName, LossName, MetricName, Node, OptimizerName, PositiveInt, Seed, _finite,
)

Layer = Annotated[Union[LAYER_TYPES], Field(discriminator="kind")]


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

    def slots(self) -> int:
        """How many values the optimizer keeps per trainable weight (Keras's optimizer variables)."""
        c = self.config()
        if self.name == "sgd":
            return 1 if c["momentum"] else 0
        if self.name == "rmsprop":
            return 1 + bool(c["momentum"]) + bool(c["centered"])
        return 1 if self.name == "adagrad" else 2

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
    fit: Fit | None = None
    # Where the spec came from, for diagnostics; never part of its meaning.
    path: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    source: SkipJsonSchema[str | None] = Field(default=None, exclude=True, repr=False)
    statement_spans: SkipJsonSchema[dict[str, Span]] = Field(default_factory=dict, exclude=True, repr=False)
    # How a graph was written, for the emitters, `draw` and `fmt`: the block uses
    # (modelspec.structure.BlockUse, in the order they begin) and the nested statements.
    blocks: SkipJsonSchema[tuple[Any, ...]] = Field(default=(), exclude=True, repr=False)
    syntax: SkipJsonSchema[tuple[Any, ...] | None] = Field(default=None, exclude=True, repr=False)

    def check(self) -> None:
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
        return any(x is not None for x in (self.optimizer, self.loss, self.fit)) or bool(self.metrics)


def json_schema() -> dict:
    """The JSON Schema of the IR (`modelspec schema`)."""
    return Spec.model_json_schema()
