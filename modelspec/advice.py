"""Advice: warnings about specs that are valid but probably not what was meant.

Each rule comes from the tutorial modelspec grew out of (composed affine maps, He vs
Glorot initialisation, matching the output layer to the loss, where softmax and dropout
belong). `modelspec check --strict` turns them into errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from . import ir
from .diagnostics import Diagnostic
from .shapes import fmt_shape

if TYPE_CHECKING:
    from .checker import LayerReport

RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "prelu", "elu", "gelu", "swish"})
SATURATING = frozenset({"sigmoid", "tanh"})
GLOROT = frozenset({"glorot_uniform", "glorot_normal"})
HE = frozenset({"he_normal", "he_uniform"})
LECUN = frozenset({"lecun_normal", "lecun_uniform"})
TRANSPARENT = frozenset({"batchnorm", "dropout"})  # between a weighted layer and its activation
HUGE_BYTES = 2 * 1024**3
WEIGHTED = frozenset({"dense", "conv2d", "conv1d"})  # the kinds with a kernel and an activation
# the kinds that treat every step of a sequence alike, wherever it stands: shuffle the steps of
# their input and their output's steps are shuffled the same way (prelu is not: an alpha per step)
STEPWISE = frozenset({"embedding", "dense", "activation", "leaky_relu", "rescale", "dropout", "layernorm",
                      "batchnorm", "normalize", "attention", "add", "subtract", "multiply", "average", "maximum",
                      "minimum", "concat"})


def _warn(message: str, layer: Any, hint: str | None = None, code: str = "advice") -> Diagnostic:
    return Diagnostic("warning", message, getattr(layer, "span", None), hint=hint, code=code)


class _Rows(list):
    """The report's rows with, for each, the one row that alone reads its output (None where
    the output fans out, feeds a merge with others, or is the model's): computed once."""

    def __init__(self, layers: list["LayerReport"]) -> None:
        super().__init__(layers)
        readers: list[list[int]] = [[] for _ in layers]
        for j, row in enumerate(layers):
            for i in set(row.sources):
                if i >= 0:
                    readers[i].append(j)
        self.next = [r[0] if len(r) == 1 and layers[r[0]].sources == (i,) else None
                     for i, r in enumerate(readers)]


def advise(spec: ir.Spec, layers: list["LayerReport"]) -> list[Diagnostic]:
    layers = _Rows(layers)
    out: list[Diagnostic] = []
    for rule in (_composed_affine, _initializers, _softmax_placement, _dropout_placement,
                 _dense_on_images, _mask_dropped, _order_blind_attention, _output_and_loss, _metrics_and_loss, _size):
        out.extend(rule(spec, layers))
    return out


def activation_after(layers: "_Rows", i: int) -> tuple[str, int]:
    """The nonlinearity that acts on layer i's output, and the index of the layer applying it."""
    own = getattr(layers[i].layer, "activation", "linear")
    if layers[i].kind in WEIGHTED and own != "linear":
        return own, i
    j = layers.next[i]
    while j is not None and layers[j].kind in TRANSPARENT:
        j = layers.next[j]
    if j is not None:
        if layers[j].kind == "activation":
            return layers[j].layer.activation, j
        if layers[j].kind in ("leaky_relu", "prelu"):
            return layers[j].kind, j
    return "linear", i


def _mask_dropped(spec: ir.Spec, layers: "_Rows") -> Iterator[Diagnostic]:
    """A layer that loses embedding's mask (Keras warns that it "does not support masking"): from
    there on the padding steps (id 0) count as data."""
    for rep in layers:
        if rep.mask_in and rep.layer.mask == "drop":
            source = next(r for r in layers if r.kind == "embedding" and r.masked)
            yield _warn(f"{rep.name} drops the mask of {source.name} (mask_zero): from here on the steps whose id is "
                        f"0 count as data, as in Keras (which warns the same)", rep.layer,
                        hint="pool with globalavgpool1d (it averages the unmasked steps), or drop mask_zero if "
                             "id 0 is an ordinary token", code="mask")
            return


def _order_blind_attention(spec: ir.Spec, layers: "_Rows") -> Iterator[Diagnostic]:
    """Attention that reaches a global 1-D pooling through layers that all treat the steps
    alike: self-attention has no notion of position (Keras's MultiHeadAttention adds none), so
    the pooled output depends on which tokens occur, not on where; a transformer needs something
    to give its steps an order."""
    if not any(rep.kind == "attention" for rep in layers):
        return
    blind: list[bool] = []  # the row's output is the same function of every step, position-free
    attention: list[int | None] = []  # the first attention row among those blind ancestors
    for rep in layers:
        sources = [s for s in rep.sources if s >= 0]
        blind.append(rep.kind in STEPWISE and all(blind[s] for s in sources))
        seen = [attention[s] for s in sources if attention[s] is not None]
        attention.append(min(seen) if seen else (len(attention) if rep.kind == "attention" else None))
    for i, rep in enumerate(layers):
        source = rep.sources[0] if rep.sources else -1
        if rep.kind in ("globalavgpool1d", "globalmaxpool1d") and source >= 0 and blind[source] \
                and attention[source] is not None:
            first = layers[attention[source]]
            yield _warn(f"{first.name} and {rep.name} do not see where a step stands, and neither does any layer "
                        f"before them, so the model's output depends on which tokens occur, not on their order "
                        f"(Keras's MultiHeadAttention adds no positions)", first.layer,
                        hint="give the steps an order before attention: conv1d over the steps, a recurrent layer "
                             "with return_sequences, or reshape so that each step holds several in order "
                             "(specs/digits_transformer.ms); or flatten instead of pooling", code="order")
            return


def _composed_affine(spec: ir.Spec, layers: "_Rows") -> Iterator[Diagnostic]:
    for i, a in enumerate(layers):
        j = layers.next[i]  # only a layer that alone reads a's output composes with it
        b = layers[j] if j is not None else None
        if b is not None and a.kind == b.kind == "dense" and a.layer.activation == "linear":
            n_in, n_out = a.input_shape[-1], b.output_shape[-1]
            bias = a.layer.use_bias or b.layer.use_bias
            merged = n_in * n_out + (n_out if bias else 0)
            spent = a.params + b.params
            wasted = max(spent - merged, 0)
            yield _warn(
                f"{a.name} and {b.name} have no activation between them, so together they are one "
                f"affine map {n_in} -> {n_out}: w2·(w1·x + b1) + b2 is a single dense layer. "
                f"Their {a.params:,} + {b.params:,} parameters could be {merged:,}"
                + (f" ({wasted:,} buy nothing)" if wasted else ""),
                a.layer,
                hint=f"give {a.name} an activation (`dense {a.layer.units} relu`), or replace both "
                     f"with `dense {n_out}`",
                code="composed-affine")


def _initializers(spec: ir.Spec, layers: "_Rows") -> Iterator[Diagnostic]:
    for i, rep in enumerate(layers):
        if rep.kind not in WEIGHTED:
            continue
        act, _ = activation_after(layers, i)
        init = rep.layer.kernel_initializer.name
        written = "" if rep.layer.kernel_initializer.span else " (the default)"
        if act in RELU_FAMILY and init in GLOROT:
            yield _warn(f"{rep.name} feeds {act} but uses {init}{written}; Glorot keeps the variance of "
                        f"symmetric activations such as tanh, while {act} zeroes (or shrinks) half its "
                        "inputs, so signals fade layer by layer",
                        rep.layer, hint="use he_normal or he_uniform with relu-family activations",
                        code="initializer")
        elif act == "selu" and init not in LECUN:
            yield _warn(f"{rep.name} feeds selu but uses {init}{written}; selu self-normalises only "
                        "with LeCun initialisation", rep.layer, hint="use lecun_normal with selu",
                        code="initializer")
        elif act in SATURATING and init in HE:
            yield _warn(f"{rep.name} feeds {act} but uses {init}; He initialisation is scaled for relu "
                        f"and pushes {act} into saturation", rep.layer,
                        hint="use glorot_uniform or glorot_normal with sigmoid and tanh",
                        code="initializer")


def _last_meaningful(layers: list["LayerReport"]) -> int:
    """Index of the last layer that is not a dropout."""
    i = len(layers) - 1
    while i > 0 and layers[i].kind == "dropout":
        i -= 1
    return i


def output_activation(layers: list["LayerReport"]) -> str:
    """The activation that produces the model's output (trailing dropout ignored)."""
    rep = layers[_last_meaningful(layers)]
    if rep.kind == "activation":
        return rep.layer.activation
    if rep.kind == "leaky_relu":
        return "leaky_relu"
    if rep.kind == "softmax":
        return "softmax"
    if rep.kind in WEIGHTED:
        return rep.layer.activation
    return "linear"


def _softmax_placement(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    last = _last_meaningful(layers)
    for i, rep in enumerate(layers):
        act = getattr(rep.layer, "activation", None)
        if act == "softmax" and i != last:
            yield _warn(f"{rep.name} applies softmax, but it is not the last layer; softmax turns scores "
                        "into class probabilities and belongs only at the output", rep.layer,
                        hint="use relu (or another activation) in hidden layers", code="softmax")
        if act == "softmax" and rep.output_shape[-1] == 1:
            yield _warn(f"{rep.name} applies softmax to a single unit, so its output is always 1.0 and "
                        "nothing can be learned", rep.layer,
                        hint="for a yes/no output use `dense 1 sigmoid` with binary_crossentropy",
                        code="softmax")


def _dropout_placement(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    for rep in layers:
        if rep.kind == "dropout" and rep.layer.rate == 1.0:
            yield _warn(f"{rep.name} has rate 1, so it drops every unit during training", rep.layer,
                        hint="dropout rates are usually 0.1 to 0.5", code="dropout")
    if layers and layers[-1].kind == "dropout":
        rep = layers[-1]
        yield _warn(f"{rep.name} is the last layer: it randomly zeroes the model's outputs during training",
                    rep.layer, hint="put dropout between hidden layers, not after the output",
                    code="dropout")


def _dense_on_images(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    for rep in layers:
        if rep.kind == "dense" and len(rep.input_shape) >= 4:
            yield _warn(f"{rep.name} receives {fmt_shape(rep.input_shape)}; dense acts on the last axis only, "
                        f"so it outputs {fmt_shape(rep.output_shape)}", rep.layer,
                        hint="add `flatten` (or `globalavgpool2d`) before this layer", code="dense-rank")


def _output_and_loss(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    if spec.loss is None or not layers:
        return
    loss = spec.loss.name
    i = _last_meaningful(layers)
    act = output_activation(layers)
    out = layers[-1].output_shape
    units = out[-1]
    where = layers[i].layer
    if len(out) > 2 and loss in ("categorical_crossentropy", "sparse_categorical_crossentropy",
                                 "binary_crossentropy"):
        yield _warn(f"the model outputs {fmt_shape(out)}, but {loss} compares one prediction per sample",
                    where, hint="add `flatten` or `globalavgpool2d` before the output layer", code="loss")
        return
    if spec.loss.from_logits:
        if act in ("softmax", "sigmoid"):
            yield _warn(f"{loss} takes logits (from_logits), but the output ends in {act}: Keras's TensorFlow "
                        f"backend then uses the values before the {act}, as it does without from_logits",
                        where, hint=f"drop the {act} from the output layer, or from_logits from the loss",
                        code="loss")
        return
    if units == 1:
        if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            yield _warn(f"{loss} needs one output per class, but the model has 1 output unit", where,
                        hint="one unit wants `sigmoid` with binary_crossentropy; several classes want "
                             "`dense N softmax`", code="loss")
        elif loss == "binary_crossentropy" and act != "sigmoid":
            yield _warn(f"binary_crossentropy expects a probability, but the output activation is {act}",
                        where, hint="end with `dense 1 sigmoid`", code="loss")
    else:
        if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy") and act != "softmax":
            yield _warn(f"{loss} expects class probabilities, but the output activation is {act}", where,
                        hint=f"end with `dense {units} softmax`", code="loss")
        elif loss == "binary_crossentropy" and act == "softmax":
            yield _warn("softmax with binary_crossentropy: softmax makes the classes compete, binary "
                        "cross-entropy scores each unit on its own", where,
                        hint="one class per sample: categorical_crossentropy (one-hot labels) or "
                             "sparse_categorical_crossentropy (integer labels); several labels per sample: "
                             "sigmoid", code="loss")


def _metrics_and_loss(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    if spec.loss is None:
        return
    loss = spec.loss.name
    for m in spec.metrics:
        if m == "top_k_categorical_accuracy" and loss == "sparse_categorical_crossentropy":
            yield _warn(f"{m} expects one-hot labels, but sparse_categorical_crossentropy takes integer labels",
                        spec.loss, hint=f"use sparse_{m}", code="metrics")
        elif m == "sparse_top_k_categorical_accuracy" and loss == "categorical_crossentropy":
            yield _warn(f"{m} expects integer labels, but categorical_crossentropy takes one-hot labels",
                        spec.loss, hint="use top_k_categorical_accuracy", code="metrics")
        elif m == "categorical_accuracy" and loss == "sparse_categorical_crossentropy":
            yield _warn("categorical_accuracy expects one-hot labels, but sparse_categorical_crossentropy "
                        "takes integer labels", spec.loss, hint="use sparse_categorical_accuracy or accuracy",
                        code="metrics")
        elif m == "sparse_categorical_accuracy" and loss == "categorical_crossentropy":
            yield _warn("sparse_categorical_accuracy expects integer labels, but categorical_crossentropy "
                        "takes one-hot labels", spec.loss, hint="use categorical_accuracy or accuracy",
                        code="metrics")


def _size(spec: ir.Spec, layers: list["LayerReport"]) -> Iterator[Diagnostic]:
    total = sum(rep.params for rep in layers)
    if total * 4 > HUGE_BYTES:
        from .summary import readable_size

        biggest = max(layers, key=lambda r: r.params)
        yield _warn(f"the model has {total:,} parameters ({readable_size(total * 4)} of float32 weights); "
                    f"{biggest.name} alone has {biggest.params:,}", biggest.layer,
                    hint="check the sizes: is a number mistyped?", code="size")
