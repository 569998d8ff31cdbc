"""The training configuration, resolved from a spec as Keras resolves `compile`'s arguments.

The Model builds a `TrainConfig` here and hands it to its backend's Engine; the emitters
resolve the same settings for the code they write. Nothing here imports a framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ir

CROSSENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy")


@dataclass(frozen=True)
class LossConfig:
    """The loss as the engine computes it.

    from_logits: the cross-entropy is computed from logits, unclipped. Where those logits
    are: when the output layer ends in softmax or sigmoid, the values before it, in any pairing and whatever the spec's from_logits says: Keras's TensorFlow
    backend reads the pre-activation values cached on either activation's output
    (`_keras_logits` in keras/src/backend/tensorflow/nn.py::_get_logits, which also takes
    them, with a warning, when from_logits=True is given for such an output); so sigmoid +
    categorical_crossentropy is a softmax cross-entropy of the pre-sigmoid values, and
    softmax + binary_crossentropy a sigmoid one (verified against Keras 3.15.1). Otherwise,
    with the spec's `from_logits`, the output itself is the logits (`output_logits`);
    without it the probabilities are clipped to [1e-7, 1 - 1e-7] as keras.backend.epsilon()
    says.

    label_smoothing: the labels become y·(1 - ls) + ls/classes (categorical) or + ls/2
    (binary) before the loss (keras/src/losses/losses.py).
    """

    name: str  # categorical_crossentropy, sparse_categorical_crossentropy, binary_crossentropy, mse, mae, huber
    from_logits: bool = False
    delta: float = 1.0  # huber
    output_logits: bool = False  # the logits are the output itself, not the values before its activation
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class MetricConfig:
    """A metric: the name shown in history (as the user wrote it) and what it computes."""

    name: str  # 'accuracy', 'acc', 'categorical_accuracy', 'mse', ...
    kind: str  # categorical_accuracy | sparse_categorical_accuracy | binary_accuracy | mse | mae | top_k...
    k: int | None = None  # the top-k metrics' k


@dataclass(frozen=True)
class TrainConfig:
    """Everything an engine needs to train: resolved, with Keras's defaults filled in."""

    optimizer: str  # sgd | rmsprop | adam | adamw | adagrad | nadam | adadelta | adamax | lion
    # ir.Optimizer.config(): every hyperparameter, defaults included, and the clipping option
    # that is set (clipnorm, clipvalue or global_clipnorm), if one is; "learning_rate" is a float or an ir.Schedule (modelspec.schedules gives
    # the rate of each step)
    hyper: dict[str, Any]
    loss: LossConfig
    metrics: tuple[MetricConfig, ...]

    @property
    def schedule(self) -> Any:
        """The learning-rate schedule (an ir.Schedule), or None for a constant rate."""
        lr = self.hyper["learning_rate"]
        return lr if isinstance(lr, ir.Schedule) else None


def loss_from_logits(spec: ir.Spec, loss_name: str) -> bool:
    """Keras's TensorFlow-backend rule: the output of any softmax or sigmoid carries the values
    before it (`_keras_logits`), and every cross-entropy uses them, unclipped, when present.
    A Softmax layer (`softmax axis=N`) is a softmax too (keras/src/backend/tensorflow/nn.py)."""
    last = spec.layers[-1]
    if last.kind == "softmax":
        return loss_name in CROSSENTROPIES
    act = getattr(last, "activation", None) if last.kind in ("dense", "conv2d", "activation") else None
    return loss_name in CROSSENTROPIES and act in ("softmax", "sigmoid")


def resolve_loss(spec: ir.Spec, loss: ir.Loss) -> LossConfig:
    before_activation = loss_from_logits(spec, loss.name)
    return LossConfig(name=loss.name, from_logits=before_activation or bool(loss.from_logits),
                      delta=loss.delta if loss.delta is not None else 1.0,
                      output_logits=bool(loss.from_logits) and not before_activation,
                      label_smoothing=loss.label_smoothing or 0.0)


def resolve_metric(name: str, y_shape: tuple[int, ...], out_shape: tuple[Any, ...], k: int = 5) -> MetricConfig:
    """keras.src.trainers.compile_utils.get_metric: 'accuracy' depends on shapes only."""
    if name in ir.TOP_K_METRICS:
        return MetricConfig(name=name, kind=name, k=k)
    if name not in ("accuracy", "acc"):
        return MetricConfig(name=name, kind=name)
    if out_shape[-1] == 1:
        kind = "binary_accuracy"
    elif len(y_shape) < len(out_shape) or y_shape[-1] == 1:
        kind = "sparse_categorical_accuracy"
    else:
        kind = "categorical_accuracy"
    return MetricConfig(name=name, kind=kind)


def label_kind(loss: str) -> str:
    """The labels `loss` takes: "class_ids" (integers), "one_hot", "binary" (0 or 1) or "real"."""
    return {"sparse_categorical_crossentropy": "class_ids", "categorical_crossentropy": "one_hot",
            "binary_crossentropy": "binary"}.get(loss, "real")


def synthetic_labels(loss: str, output_shape: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` random labels of the kind `loss` takes (label_kind), for a model whose output for
    one sample has `output_shape` (no batch axis): class ids as int64, the others float32,
    real values drawn from N(0, 1)."""
    out, kind = tuple(output_shape), label_kind(loss)
    if kind in ("class_ids", "one_hot"):
        ids = rng.integers(0, out[-1], size=(n, *out[:-1]))
        return ids if kind == "class_ids" else np.eye(out[-1], dtype=np.float32)[ids]
    if kind == "binary":
        return (rng.random((n, *out)) < 0.5).astype(np.float32)
    return rng.normal(size=(n, *out)).astype(np.float32)


def synthetic_ids(spec: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of token ids for a spec with integer inputs: int32, uniform over the whole
    vocabulary (0 included, so that mask_zero masks some steps), but no sample all zeros
    (Keras's masked mean of no step is NaN)."""
    ids = rng.integers(0, spec.id_limit, size=(n, *spec.input_shape)).astype(np.int32)
    if n:
        flat = ids.reshape(n, -1)  # a view: a row's first id becomes 1
        flat[~flat.any(axis=1), 0] = 1
    return ids
