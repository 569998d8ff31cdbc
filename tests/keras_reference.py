"""Real Keras models built from modelspec's IR: the reference side of the differential tests.

Only for tests; modelspec's own Keras backend is separate. Unnamed layers are left to
Keras's auto-naming (after `clear_session()`), so the names are Keras's, not ours.
`checker_and_keras` pairs what the static checker reports with what Keras reports of the
model it builds (tests/test_keras_checker.py, tests/test_fuzz_crosscheck.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from modelspec import ir  # noqa: E402


def initializer(init: ir.Initializer) -> keras.initializers.Initializer:
    cls = type(keras.initializers.get(init.name))
    kwargs = dict(init.args())
    if init.name not in ir.SEEDLESS_INITIALIZERS:
        kwargs["seed"] = init.seed
    return cls(**kwargs)


def layer(node: ir.LayerBase) -> keras.layers.Layer:
    L = keras.layers
    named = {"name": node.name} if node.name else {}
    if isinstance(node, (ir.Dense, ir.Conv2D)):
        reg = node.kernel_regularizer
        weighted = dict(
            activation=node.activation, use_bias=node.use_bias,
            kernel_initializer=initializer(node.kernel_initializer),
            bias_initializer=initializer(node.bias_initializer),
            kernel_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None, **named)
        if isinstance(node, ir.Dense):
            return L.Dense(node.units, **weighted)
        return L.Conv2D(node.filters, node.kernel_size, strides=node.strides, padding=node.padding, **weighted)
    if isinstance(node, (ir.MaxPool2D, ir.AvgPool2D)):
        cls = L.MaxPooling2D if isinstance(node, ir.MaxPool2D) else L.AveragePooling2D
        return cls(node.pool_size, strides=node.strides, padding=node.padding, **named)
    if isinstance(node, ir.Dropout):
        return L.Dropout(node.rate, seed=node.seed, **named)
    if isinstance(node, ir.BatchNorm):
        return L.BatchNormalization(momentum=node.momentum, epsilon=node.epsilon, **named)
    if isinstance(node, ir.LeakyReLU):
        return L.LeakyReLU(negative_slope=node.negative_slope, **named)
    if isinstance(node, ir.Activation):
        return L.Activation(node.activation, **named)
    if isinstance(node, ir.Softmax):
        return L.Softmax(axis=node.axis, **named)
    if isinstance(node, ir.ZeroPadding2D):
        return L.ZeroPadding2D(node.padding, **named)
    if isinstance(node, ir.Rescale):
        return L.Rescaling(node.scale, offset=node.offset, **named)
    if isinstance(node, ir.UpSampling2D):
        return L.UpSampling2D(node.size, interpolation="nearest", **named)
    if isinstance(node, ir.Embedding):
        reg = node.embeddings_regularizer
        return L.Embedding(node.input_dim, node.output_dim, mask_zero=node.mask_zero,
                           embeddings_initializer=initializer(node.embeddings_initializer),
                           embeddings_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None, **named)
    if isinstance(node, ir.Conv1D):
        reg = node.kernel_regularizer
        return L.Conv1D(node.filters, node.kernel_size, strides=node.strides, padding=node.padding,
                        dilation_rate=node.dilation_rate, activation=node.activation, use_bias=node.use_bias,
                        kernel_initializer=initializer(node.kernel_initializer),
                        bias_initializer=initializer(node.bias_initializer),
                        kernel_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None, **named)
    if isinstance(node, (ir.MaxPool1D, ir.AvgPool1D)):
        cls = L.MaxPooling1D if isinstance(node, ir.MaxPool1D) else L.AveragePooling1D
        return cls(node.pool_size, strides=node.strides, padding=node.padding, **named)
    if isinstance(node, ir.LayerNorm):
        return L.LayerNormalization(epsilon=node.epsilon, **named)
    if isinstance(node, ir.Reshape):
        return L.Reshape(node.target_shape, **named)
    if isinstance(node, ir.Concat):
        return L.Concatenate(axis=node.axis, **named)
    if isinstance(node, (ir.LSTM, ir.GRU, ir.SimpleRNN)):
        return recurrent(node, **named)
    if isinstance(node, ir.Bidirectional):
        return L.Bidirectional(recurrent(node.layer), merge_mode=node.merge_mode, **named)
    if isinstance(node, ir.Attention):
        return L.MultiHeadAttention(node.num_heads, node.key_dim, value_dim=node.value_dim, dropout=node.dropout,
                                    use_bias=node.use_bias, kernel_initializer=initializer(node.kernel_initializer),
                                    bias_initializer=initializer(node.bias_initializer), seed=node.seed, **named)
    merges = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply, "average": L.Average,
              "maximum": L.Maximum, "minimum": L.Minimum}
    if node.kind in merges:
        return merges[node.kind](**named)
    simple = {"flatten": L.Flatten, "globalavgpool2d": L.GlobalAveragePooling2D,
              "globalmaxpool2d": L.GlobalMaxPooling2D, "globalavgpool1d": L.GlobalAveragePooling1D,
              "globalmaxpool1d": L.GlobalMaxPooling1D, "prelu": L.PReLU,
              "normalize": L.Normalization}
    return simple[node.kind](**named)


def recurrent(node: ir.LSTM | ir.GRU | ir.SimpleRNN, **named: Any) -> keras.layers.Layer:
    reg = node.kernel_regularizer
    kwargs: dict[str, Any] = dict(
        return_sequences=node.return_sequences, go_backwards=node.go_backwards, activation=node.activation,
        use_bias=node.use_bias, kernel_initializer=initializer(node.kernel_initializer),
        recurrent_initializer=initializer(node.recurrent_initializer),
        bias_initializer=initializer(node.bias_initializer),
        kernel_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None, **named)
    if isinstance(node, ir.LSTM):
        return keras.layers.LSTM(node.units, recurrent_activation=node.recurrent_activation,
                                 unit_forget_bias=node.unit_forget_bias, **kwargs)
    if isinstance(node, ir.GRU):
        return keras.layers.GRU(node.units, recurrent_activation=node.recurrent_activation,
                                reset_after=node.reset_after, **kwargs)
    return keras.layers.SimpleRNN(node.units, **kwargs)


def call(node: ir.LayerBase, built: keras.layers.Layer, tensors: list[Any]) -> Any:
    """A layer called in a functional model: a merge on its list, self-attention as mha(x, x)."""
    if node.merges:
        return built(tensors)
    if isinstance(node, ir.Attention):
        return built(tensors[0], tensors[0])
    return built(tensors[0])


def model(spec: ir.Spec) -> keras.Model:
    """The spec as a Keras model, built, in a fresh naming session: a Sequential for a chain,
    else a functional model whose layers are created and called in the spec's order."""
    keras.backend.clear_session(free_memory=False)  # names restart; skipping gc saves ~0.5 s
    # token ids (`input 20 int`) are int32, as keras.Input(dtype="int32") declares them
    dtype = spec.input_dtype
    if spec.is_chain:
        return keras.Sequential([keras.Input(spec.input_shape, dtype=dtype), *(layer(n) for n in spec.layers)],
                                name=spec.name)
    inputs = keras.Input(spec.input_shape, dtype=dtype)
    outputs: list[Any] = []
    for i, node in enumerate(spec.layers):
        tensors = [inputs if s < 0 else outputs[s] for s in spec.sources(i)]
        outputs.append(call(node, layer(node), tensors))
    return keras.Model(inputs, outputs[-1], name=spec.name)


OPTIMIZERS = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
              "adamw": keras.optimizers.AdamW, "adagrad": keras.optimizers.Adagrad, "nadam": keras.optimizers.Nadam,
              "adadelta": keras.optimizers.Adadelta, "adamax": keras.optimizers.Adamax, "lion": keras.optimizers.Lion}
LOSSES = {"categorical_crossentropy": keras.losses.CategoricalCrossentropy,
          "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
          "binary_crossentropy": keras.losses.BinaryCrossentropy, "mse": keras.losses.MeanSquaredError,
          "mae": keras.losses.MeanAbsoluteError, "huber": keras.losses.Huber}
TOP_K = {"top_k_categorical_accuracy": keras.metrics.TopKCategoricalAccuracy,
         "sparse_top_k_categorical_accuracy": keras.metrics.SparseTopKCategoricalAccuracy}


def compile_as_written(model: keras.Model, spec: ir.Spec) -> keras.Model:
    """`model.compile` with the spec's training settings as a Keras user writes them: the
    optimizer's class (RMSprop without one), a schedule's class as its learning rate; the
    loss's name, or its class where an option is set; metric names, a top-k metric's class
    where a k is written."""
    opt = spec.optimizer or ir.Optimizer(name="rmsprop")
    hyper = {k: v for k, v in opt.config().items() if v is not None}
    if opt.schedule is not None:
        hyper["learning_rate"] = getattr(keras.optimizers.schedules, ir.SCHEDULE_CLASSES[opt.schedule.name])(
            **opt.schedule.config())
    loss: Any = spec.loss.name
    options = {k: v for k, v in (("delta", spec.loss.delta), ("from_logits", spec.loss.from_logits),
                                 ("label_smoothing", spec.loss.label_smoothing)) if v}
    if options:
        loss = LOSSES[spec.loss.name](**options)
    metrics = [TOP_K[m](k=spec.top_k, name=m) if m in TOP_K and spec.top_k is not None else m for m in spec.metrics]
    model.compile(optimizer=OPTIMIZERS[opt.name](**hyper), loss=loss, metrics=metrics or None)
    return model


def keras_report(model: keras.Model) -> dict:
    """What `modelspec check --json` reports, as Keras sees it."""
    def count(weights) -> int:
        return sum(int(np.prod(w.shape)) for w in weights)

    layers = [{"name": layer.name, "output_shape": list(layer.output.shape), "params": layer.count_params(),
               "trainable": count(layer.trainable_weights), "non_trainable": count(layer.non_trainable_weights)}
              for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return {"model": model.name, "input_shape": [None, *model.input_shape[1:]],
            "input_dtype": keras.backend.standardize_dtype(model.inputs[0].dtype), "layers": layers,
            "total_params": model.count_params(), "trainable_params": count(model.trainable_weights),
            "non_trainable_params": count(model.non_trainable_weights),
            "bytes": sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)}


def ours(report: dict) -> dict:
    """The same fields of a `modelspec check --json` report."""
    keys = ("model", "input_shape", "input_dtype", "total_params", "trainable_params", "non_trainable_params", "bytes")
    layer_keys = ("name", "output_shape", "params", "trainable", "non_trainable")
    return {**{k: report[k] for k in keys}, "layers": [{k: row[k] for k in layer_keys} for row in report["layers"]]}


def classes_and_weights(model: keras.Model) -> tuple[list, list]:
    return ([type(layer).__name__ for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)],
            [(w.path, tuple(w.shape), w.trainable) for w in model.weights])


def checker_and_keras(spec: ir.Spec) -> tuple[Any, keras.Model, list[tuple[Any, Any]]]:
    """The checker's report of `spec`, the Keras model built from it, and the (checker's,
    Keras's) pairs that must be equal: what `check --json` prints (names, output shapes,
    parameters trainable and not, bytes), then the layer classes and weights."""
    from modelspec.checker import check

    report = check(spec)
    m = model(spec)
    return report, m, [
        (ours(json.loads(json.dumps(report.to_dict()))), keras_report(m)),
        (([r.keras_class for r in report.layers], [(w.path, w.shape, w.trainable) for w in report.weights]),
         classes_and_weights(m))]


def summary(m: keras.Model, line_length: int) -> str:
    """Keras's summary text. rich crops its capture at the terminal's width, so the terminal
    is made wide enough for any table while it prints."""
    captured: list[str] = []
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "300"
    try:
        m.summary(print_fn=lambda text, line_break=True: captured.append(text), line_length=line_length)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "".join(captured)
