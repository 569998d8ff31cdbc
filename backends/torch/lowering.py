"""The spec as torch, held as data: one method per layer kind.

`Lowering().<kind>(step)` returns a `Unit`: the module the layer owns (a `Call`), its forward
pass as expressions of `X` (the layer's input; a merge's of `Operand(i)`, its inputs), its
weights in Keras's order with their layouts and initializers, and its kernel penalty.
`build` makes the live nn.Module from a unit, `emit` prints it as source; neither has code
of its own for any kind, so the module `ms.build` runs and the program `modelspec compile`
writes cannot drift apart.

Adding a layer kind is adding its method to `Lowering` (and its Keras-exact piece to
keras_ops.py when torch has none). Layout decisions (NHWC/NCHW switches, 'same' pads, the
split-off output activation) are plan.py's.

Call targets are `nn.*`, `F.*`, `torch.*`, `.method` (a method of the first argument),
`SELF` (the layer's own module) or a bare keras_ops name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from modelspec import ir

from .plan import TO_LAST, Node, Plan, Step, symmetric


class _Input:
    def __repr__(self) -> str:
        return "X"


X = _Input()  # the tensor a forward expression transforms
SELF = "self"  # the target that stands for the layer's own module


@dataclass(frozen=True)
class Operand:
    """A merge's input number `i`: its forward expression reads several tensors."""

    i: int

    def __repr__(self) -> str:
        return f"X{self.i}"


# Calls with these targets print as operators: `a + b`, each with its precedence.
OPERATORS = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True, eq=False)
class Call:
    """`target(*args, **kwargs)`; args may hold `X` or Calls. `note`: the emitted line's comment."""

    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


MODULE = Call(SELF, (X,))  # the layer's module applied to its input


@dataclass(frozen=True)
class Weight:
    tensor: str  # the module's attribute holding it
    layout: str | None  # a key of LAYOUTS, None when torch keeps Keras's layout
    initializer: ir.Initializer | None  # None: the module's reset_parameters sets Keras's values
    trainable: bool = True


@dataclass(frozen=True, eq=False)
class Unit:
    """One layer in torch. A penalty (l1, l2) applies to the weights at `penalized` (the kernel
    first; Bidirectional's two layers each have one)."""

    forward: tuple[Call, ...] = ()  # applied to X in turn
    module: Call | None = None
    weights: tuple[Weight, ...] = ()
    penalty: tuple[float, float] | None = None
    penalized: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Layout:
    """How torch stores a weight Keras stores otherwise: axis permutations both ways (none when
    empty) and, for a GRU's weights, the order of the gate blocks along Keras's last axis
    (`gates`: torch's block j is Keras's block gates[j]; keras_ops.reorder_gates moves them)."""

    to_keras: tuple[int, ...]
    to_torch: tuple[int, ...]
    keras: str
    torch: str
    gates: tuple[int, ...] | None = None

    @property
    def gates_back(self) -> tuple[int, ...] | None:
        """The inverse order: from torch's blocks back to Keras's."""
        return None if self.gates is None else tuple(self.gates.index(j) for j in range(len(self.gates)))


LAYOUTS = {"dense": Layout((1, 0), (1, 0), "(in, out)", "(out, in)"),
           "conv": Layout((2, 3, 1, 0), (3, 2, 0, 1), "(kh, kw, in, out)", "(out, in, kh, kw)"),
           "conv1d": Layout((2, 1, 0), (2, 1, 0), "(k, in, out)", "(out, in, k)"),
           # LSTM's gates i, f, c, o are torch's i, f, g, o: only the transpose
           "recurrent": Layout((1, 0), (1, 0), "(in, gates * units)", "(gates * units, in)"),
           # GRU's gates z, r, h are torch's r, z, n
           "gru": Layout((1, 0), (1, 0), "(in, z|r|h)", "(r|z|n, in)", gates=(1, 0, 2)),
           "gru_bias": Layout((), (), "(..., z|r|h)", "(..., r|z|n)", gates=(1, 0, 2))}


def activation(name: str | None, x: Any = X, axis: int = -1) -> Any:
    """Keras's activation `name` applied to `x` (x itself for None or linear); softmax takes
    the channel axis (1 on NCHW tensors)."""
    if name is None or name == "linear":
        return x
    if name == "softmax":
        return Call("torch.softmax", (x,), {"dim": axis})
    if name == "leaky_relu":  # the activation's slope; the LeakyReLU layer's is 0.3
        return Call("F.leaky_relu", (x, 0.2))
    return Call({"relu": "F.relu", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh", "elu": "F.elu",
                 "selu": "selu", "gelu": "F.gelu", "swish": "F.silu", "softplus": "F.softplus",
                 "relu6": "F.relu6"}[name], (x,))


PERMUTES = {"nchw": ((0, 3, 1, 2), "Keras's NHWC to torch's NCHW"),
            "nct": ((0, 2, 1), "Keras's (batch, steps, channels) to torch's (batch, channels, steps)"),
            "nhwc": ((0, 2, 3, 1), "NHWC"), "ntc": ((0, 2, 1), "(batch, steps, channels)")}


def permute(to: str, before: str | None = None) -> Call:
    """The switch to channels-first ('nchw' for images, 'nct' for sequences) or back to
    channels-last ('nhwc', 'ntc') before the layer of kind `before` (None: after the last layer)."""
    axes, what = PERMUTES[to]
    if to in ("nchw", "nct"):
        return Call(".permute", (X, *axes), note=what)
    note = f"back to {what}: Keras's {before} reads channels last" if before else f"back to Keras's {what}"
    return Call(".permute", (X, *axes), note=note)


def _kernel(step: Step, module: Call, layout: str, forward: tuple[Call, ...]) -> Unit:
    """A dense or conv layer: a kernel in `layout`, maybe a bias, maybe a penalty."""
    layer = step.layer
    weights = [Weight("weight", layout, layer.kernel_initializer)]
    if layer.use_bias:
        weights.append(Weight("bias", None, layer.bias_initializer))
    reg = layer.kernel_regularizer
    penalty = (reg.l1, reg.l2) if reg is not None and (reg.l1 or reg.l2) else None
    return Unit(forward, module, tuple(weights), penalty)


def _pool(step: Step, function: str, note: str, **same: Any) -> Call:
    """A pooling window, 'valid' or padded alike on both sides (torch's own padding argument)."""
    layer, pads = step.layer, step.pads
    k, s = tuple(layer.pool_size), tuple(layer.resolved_strides)
    if pads is None:
        return Call(function, (X, k, s))
    return Call(function, (X, k, s), {"padding": (pads[2], pads[0]), **same}, note=note)


def _odd(pads: tuple[int, int, int, int] | None) -> bool:
    """A 'same' window whose odd pixel Keras pads right and bottom: torch pads both sides alike."""
    return pads is not None and not symmetric(pads)


class Lowering:
    """One method per layer kind, named as the IR's `kind`, each returning the layer's Unit."""

    def dense(self, step: Step) -> Unit:
        layer = step.layer
        module = Call("nn.Linear", (step.report.input_shape[-1], layer.units),
                      {} if layer.use_bias else {"bias": False})
        return _kernel(step, module, "dense", (activation(step.activation, MODULE),))

    def conv2d(self, step: Step) -> Unit:
        layer, pads = step.layer, step.pads
        kwargs: dict[str, Any] = {"kernel_size": tuple(layer.kernel_size)}
        if layer.strides != (1, 1):
            kwargs["stride"] = tuple(layer.strides)
        same = pads is not None and not _odd(pads)
        if same:
            kwargs["padding"] = (pads[2], pads[0])
        if not layer.use_bias:
            kwargs["bias"] = False
        module = Call("nn.Conv2d", (step.report.input_shape[-1], layer.filters), kwargs, "'same'" if same else "")
        pad = (Call("F.pad", (X, pads), note="'same' as in Keras: the odd pixel goes right and bottom"),) \
            if _odd(pads) else ()
        return _kernel(step, module, "conv", (*pad, activation(step.activation, MODULE, axis=1)))

    def maxpool2d(self, step: Step) -> Unit:
        window = _pool(step, "F.max_pool2d", "'same'")
        if _odd(step.pads):  # -inf never wins the max
            padded = Call("F.pad", (X, step.pads), {"value": -math.inf})
            window = Call(window.target, (padded, *window.args[1:]), note="'same', the odd pixel right and bottom")
        return Unit((window,))

    def avgpool2d(self, step: Step) -> Unit:
        window = _pool(step, "F.avg_pool2d", "'same': padding is not averaged", count_include_pad=False)
        if _odd(step.pads):  # keras_ops's: leaves the padding cells out of the average
            window = Call("avg_pool2d_same", (*window.args, step.pads))
        return Unit((window,))

    def globalavgpool2d(self, step: Step) -> Unit:
        return Unit((Call(".mean", (X,), {"dim": (2, 3) if step.nchw else (1, 2)}),))

    def globalmaxpool2d(self, step: Step) -> Unit:
        # amax shares the gradient among tied maxima, as TensorFlow's reduce_max does
        return Unit((Call(".amax", (X,), {"dim": (2, 3) if step.nchw else (1, 2)}),))

    def zeropadding2d(self, step: Step) -> Unit:
        (top, bottom), (left, right) = step.layer.padding
        pads = (left, right, top, bottom) if step.nchw else (0, 0, left, right, top, bottom)
        return Unit((Call("F.pad", (X, pads)),))

    def upsampling2d(self, step: Step) -> Unit:
        (sh, sw), h = step.layer.size, 2 if step.nchw else 1
        rows = Call(".repeat_interleave", (X, sh), {"dim": h})
        return Unit((Call(".repeat_interleave", (rows, sw), {"dim": h + 1}, note="nearest, as Keras"),))

    def prelu(self, step: Step) -> Unit:
        module = Call("PReLU", (tuple(step.report.input_shape[1:]),))
        return Unit((MODULE,), module, (Weight("alpha", None, None),))

    def flatten(self, step: Step) -> Unit:
        return Unit((Call(".flatten", (X, 1)),))

    def dropout(self, step: Step) -> Unit:
        module = Call("nn.Dropout", (step.layer.rate,), note="Keras's: inverted, training only")
        return Unit((MODULE,), module)

    def batchnorm(self, step: Step) -> Unit:
        layer = step.layer
        kwargs = {"momentum": layer.momentum, "epsilon": layer.epsilon, **({"axis": 1} if step.nchw else {})}
        module = Call("BatchNorm", (step.report.input_shape[-1],), kwargs)
        weights = (Weight("gamma", None, None), Weight("beta", None, None),
                   Weight("moving_mean", None, None, False), Weight("moving_variance", None, None, False))
        return Unit((MODULE,), module, weights)

    def rescale(self, step: Step) -> Unit:
        # the Python floats meet a float32 tensor, so torch casts them to float32, as Keras does
        layer = step.layer
        scaled = Call("torch.mul", (X, layer.scale))
        return Unit((Call("torch.add", (scaled, layer.offset)) if layer.offset else scaled,))

    def normalize(self, step: Step) -> Unit:
        module = Call("Normalization", (step.report.input_shape[-1],), {"axis": 1} if step.nchw else {})
        weights = (Weight("mean", None, None, False), Weight("variance", None, None, False),
                   Weight("count", None, None, False))
        return Unit((MODULE,), module, weights)

    def activation(self, step: Step) -> Unit:
        act = activation(step.activation, axis=step.channel_axis)
        return Unit(() if act is X else (act,))

    def softmax(self, step: Step) -> Unit:
        # Keras's Softmax layer; its axis counts channels-last axes (N, H, W, C are 0, 2, 3, 1 in NCHW)
        if step.activation is None:  # the model's output activation, split off (plan.py)
            return Unit()
        axis = step.layer.axis
        if step.nchw:
            axis = (0, 2, 3, 1)[axis % 4] if len(step.report.input_shape) == 4 else (0, 2, 1)[axis % 3]
        return Unit((Call("torch.softmax", (X,), {"dim": axis}),))

    def leaky_relu(self, step: Step) -> Unit:
        note = "Keras's LeakyReLU layer (torch's default slope is 0.01)"
        return Unit((Call("F.leaky_relu", (X, step.layer.negative_slope), note=note),))

    # Sequences: channels-first (N, C, T) between convolutions and pools, as torch's conv1d reads
    # them; Keras's 'same' and 'causal' pads (Step.pads1d) where torch's symmetric padding differs.

    def embedding(self, step: Step) -> Unit:
        # No padding_idx even with mask_zero: Keras's row 0 is an ordinary trainable row; the
        # mask is the model's ids that are not 0, which each layer computing with it reads itself.
        layer = step.layer
        reg = layer.embeddings_regularizer
        note = "mask_zero as Keras's: row 0 trains (no padding_idx)" if layer.mask_zero else ""
        module = Call("nn.Embedding", (layer.input_dim, layer.output_dim), note=note)
        return Unit((MODULE,), module, (Weight("weight", None, layer.embeddings_initializer),),
                    (reg.l1, reg.l2) if reg is not None and (reg.l1 or reg.l2) else None)

    def conv1d(self, step: Step) -> Unit:
        layer, pads = step.layer, step.pads1d
        kwargs: dict[str, Any] = {"kernel_size": layer.kernel_size}
        if layer.strides != 1:
            kwargs["stride"] = layer.strides
        if layer.dilation_rate != 1:
            kwargs["dilation"] = layer.dilation_rate
        even = pads is not None and pads[0] == pads[1]
        if even:
            kwargs["padding"] = pads[0]
        if not layer.use_bias:
            kwargs["bias"] = False
        module = Call("nn.Conv1d", (step.report.input_shape[-1], layer.filters), kwargs, "'same'" if even else "")
        pad = ()
        if pads is not None and not even:
            note = ("'causal' as in Keras: every zero before the sequence" if layer.padding == "causal"
                    else "'same' as in Keras: the odd zero goes after")
            pad = (Call("F.pad", (X, pads), note=note),)
        return _kernel(step, module, "conv1d", (*pad, activation(step.activation, MODULE, axis=step.channel_axis)))

    def maxpool1d(self, step: Step) -> Unit:
        layer, pads = step.layer, step.pads1d
        k, s = layer.pool_size, layer.resolved_strides
        if pads is None:
            return Unit((Call("F.max_pool1d", (X, k, s)),))
        if pads[0] == pads[1]:  # torch pads with -inf, which never wins the max
            return Unit((Call("F.max_pool1d", (X, k, s), {"padding": pads[0]}, note="'same'"),))
        padded = Call("F.pad", (X, pads), {"value": -math.inf})
        return Unit((Call("F.max_pool1d", (padded, k, s), note="'same', the odd step after"),))

    def avgpool1d(self, step: Step) -> Unit:
        layer, pads = step.layer, step.pads1d
        k, s = layer.pool_size, layer.resolved_strides
        if pads is None:
            return Unit((Call("F.avg_pool1d", (X, k, s)),))
        if pads[0] == pads[1]:
            return Unit((Call("F.avg_pool1d", (X, k, s), {"padding": pads[0], "count_include_pad": False},
                              note="'same': padding is not averaged"),))
        # keras_ops's: torch cannot pad one side more, nor leave the padding out of an average then
        return Unit((Call("avg_pool1d_same", (X, k, s, pads), note="'same', the odd step after"),))

    def globalavgpool1d(self, step: Step) -> Unit:
        dim = 2 if step.nchw else 1
        if step.reads_mask:  # Operand(1) is the model's ids
            return Unit((Call("masked_mean", (Operand(0), Operand(1)), {"dim": dim}),))
        return Unit((Call(".mean", (X,), {"dim": dim}),))

    def globalmaxpool1d(self, step: Step) -> Unit:
        # amax shares the gradient among tied maxima, as TensorFlow's reduce_max does
        return Unit((Call(".amax", (X,), {"dim": 2 if step.nchw else 1}),))

    def layernorm(self, step: Step) -> Unit:
        # torch's default eps is 1e-5; Keras's 1e-3 (keras/src/layers/normalization/layer_normalization.py)
        module = Call("nn.LayerNorm", (step.report.input_shape[-1],), {"eps": step.layer.epsilon})
        return Unit((MODULE,), module, (Weight("weight", None, None), Weight("bias", None, None)))

    def reshape(self, step: Step) -> Unit:
        # row-major on Keras's channels-last layout, as Keras's Reshape (plan.py switches back to it)
        shape = tuple(step.report.output_shape[1:])
        flat = X if len(step.report.input_shape) == 2 else Call(".flatten", (X, 1))
        if len(shape) == 1:
            return Unit(() if flat is X else (flat,))
        return Unit((Call(".unflatten", (flat, 1, shape)),))

    # Recurrent layers and attention: keras_ops's modules (torch's fused kernels where they
    # compute Keras's function, the step loop otherwise); with embedding's mask they read the
    # model's ids as a second operand.

    def lstm(self, step: Step) -> Unit:
        return _recurrent(step, step.layer)

    def gru(self, step: Step) -> Unit:
        return _recurrent(step, step.layer)

    def simple_rnn(self, step: Step) -> Unit:
        return _recurrent(step, step.layer)

    def bidirectional(self, step: Step) -> Unit:
        return _recurrent(step, step.layer.layer, step.layer.merge_mode)

    def attention(self, step: Step) -> Unit:
        layer = step.layer
        kwargs: dict[str, Any] = {}
        if layer.dropout:
            kwargs["dropout"] = layer.dropout
        if not layer.use_bias:
            kwargs["use_bias"] = False
        module = Call("MultiHeadAttention", (step.report.input_shape[-1], layer.num_heads, layer.key_dim,
                                             layer.resolved_value_dim), kwargs, note="self-attention, as Keras's")
        weights = tuple(Weight(f"{name}_{part}", None, layer.kernel_initializer if part == "kernel"
                               else layer.bias_initializer)
                        for name in ("query", "key", "value", "output")
                        for part in (("kernel", "bias") if layer.use_bias else ("kernel",)))
        return Unit((_masked(step),), module, weights)

    # Merges (keras/src/layers/merging/): one expression of the inputs, Operand(0), Operand(1)...,
    # folded left to right as Keras's _merge_function folds them.

    def add(self, step: Step) -> Unit:
        return Unit((_fold(step, "+"),))

    def subtract(self, step: Step) -> Unit:
        return Unit((_fold(step, "-"),))

    def multiply(self, step: Step) -> Unit:
        return Unit((_fold(step, "*"),))

    def average(self, step: Step) -> Unit:
        return Unit((Call("/", (_fold(step, "+"), len(step.input_ranks))),))

    def maximum(self, step: Step) -> Unit:
        return Unit((_fold(step, "keras_maximum"),))

    def minimum(self, step: Step) -> Unit:
        return Unit((_fold(step, "keras_minimum"),))

    def concat(self, step: Step) -> Unit:
        axis = step.layer.axis
        if step.nchw:  # Keras's axis counts channels-last axes: N, H, W, C are 0, 2, 3, 1 in NCHW
            axis = (0, 2, 3, 1)[axis % 4] if step.input_ranks[0] == 4 else (0, 2, 1)[axis % 3]
        return Unit((Call("torch.cat", (_operands(step),), {"dim": axis}),))


def _masked(step: Step) -> Call:
    """The layer's module on its input, and on the model's ids when it reads embedding's mask."""
    return Call(SELF, (Operand(0), Operand(1))) if step.reads_mask else MODULE


def _recurrent(step: Step, layer: Any, merge_mode: str | None = None) -> Unit:
    """keras_ops.Recurrent for an LSTM, GRU or SimpleRNN `layer`, or Bidirectional's pair of it
    (merge_mode set): each direction's kernel, recurrent kernel and bias, the kernels penalized."""
    kwargs: dict[str, Any] = {}
    if layer.activation != "tanh":
        kwargs["activation"] = layer.activation
    if getattr(layer, "recurrent_activation", "sigmoid") != "sigmoid":
        kwargs["recurrent_activation"] = layer.recurrent_activation
    if not layer.use_bias:
        kwargs["use_bias"] = False
    if layer.kind == "gru" and not layer.reset_after:
        kwargs["reset_after"] = False
    for flag in ("return_sequences", "go_backwards"):
        if getattr(layer, flag):
            kwargs[flag] = True
    if merge_mode is not None:
        kwargs["bidirectional"] = True
        if merge_mode != "concat":
            kwargs["merge_mode"] = merge_mode
    module = Call("Recurrent", (layer.kind, step.report.input_shape[-1], layer.units), kwargs)
    kernel = "gru" if layer.kind == "gru" else "recurrent"
    weights: list[Weight] = []
    for suffix in ("", "_reverse") if merge_mode is not None else ("",):
        weights += [Weight(f"weight_ih{suffix}", kernel, layer.kernel_initializer),
                    Weight(f"weight_hh{suffix}", kernel, layer.recurrent_initializer)]
        if layer.use_bias:
            weights.append(Weight(f"bias{suffix}", "gru_bias" if layer.kind == "gru" else None,
                                  layer.bias_initializer))
    reg = layer.kernel_regularizer
    penalty = (reg.l1, reg.l2) if reg is not None and (reg.l1 or reg.l2) else None
    per_direction = 3 if layer.use_bias else 2
    return Unit((_masked(step),), module, tuple(weights), penalty,
                (0, per_direction) if merge_mode is not None else (0,))


def _operands(step: Step) -> tuple[Any, ...]:
    """The merge's inputs, each of lower rank given new axes right after the batch axis, as
    Keras's Merge.call does (base_merge.py: expand_dims(x, axis=1) until the ranks agree;
    torch's own broadcasting would align the batch axis with another one)."""
    top = max(step.input_ranks)
    out = []
    for i, rank in enumerate(step.input_ranks):
        operand: Any = Operand(i)
        for _ in range(top - rank):
            operand = Call(".unsqueeze", (operand, 1))
        out.append(operand)
    return tuple(out)


def _fold(step: Step, op: str) -> Any:
    """op(op(x0, x1), x2)...: an operator, or a keras_ops function of two tensors."""
    first, *rest = _operands(step)
    for operand in rest:
        first = Call(op, (first, operand))
    return first



def units(p: Plan) -> Iterator[tuple[str, Step | None, Unit]]:
    """(name, step, unit) of every layer in order, with the plan's layout switches between
    them (step None, named `to_nchw`, `to_nct`, `to_nhwc` or `to_ntc`)."""
    lowering = Lowering()
    for step in p.steps:
        if step.permute:
            yield f"to_{step.permute}", None, Unit((permute(step.permute, step.layer.kind),))
        yield step.attr, step, getattr(lowering, step.layer.kind)(step)
    if p.final_permute:
        to = TO_LAST[len(p.steps[-1].report.output_shape)]
        yield f"to_{to}", None, Unit((permute(to),))


def graph_units(p: Plan) -> Iterator[tuple[Node, Unit]]:
    """A graph's nodes (plan.Node) in order, each with its unit: a layer's, or a layout switch."""
    lowering = Lowering()
    for i, node in enumerate(p.nodes):
        if node.step is None:  # the note names its first reader (none: the model's output)
            before = next((n.step.layer.kind for n in p.nodes[i + 1:] if n.step and i in n.inputs), None)
            yield node, Unit((permute(node.permute, before),))
        else:
            yield node, getattr(lowering, node.step.layer.kind)(node.step)


# ---------------------------------------------------------------------------------------
# Printing and walking calls


def literal(value: Any, x: str = "x", attr: str = "") -> str:
    """Python source for a value; `X` prints as `x`, `Operand(i)` as `x[i]` (x a list of names),
    `SELF` as `self.<attr>`. Strings go through repr(): text from a spec can never end a literal
    or start a statement."""
    if value is X:
        return x
    if isinstance(value, Operand):
        return x[value.i]
    if isinstance(value, Call) and value.target in OPERATORS:
        (a, b), rank = value.args, OPERATORS[value.target]
        left, right = literal(a, x, attr), literal(b, x, attr)
        if isinstance(a, Call) and OPERATORS.get(a.target, 3) < rank:
            left = f"({left})"
        if isinstance(b, Call) and OPERATORS.get(b.target, 3) <= rank:
            right = f"({right})"
        return f"{left} {value.target} {right}"
    if isinstance(value, Call):
        first, *rest = value.args or (None,)
        if value.target.startswith("."):
            return f"{literal(first, x, attr)}{value.target}({_arguments(rest, value.kwargs, x, attr)})"
        target = f"self.{attr}" if value.target == SELF else value.target
        return f"{target}({_arguments(value.args, value.kwargs, x, attr)})"
    if isinstance(value, float) and math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    if isinstance(value, tuple) and any(isinstance(v, (Call, Operand, _Input)) for v in value):
        return "(" + ", ".join(literal(v, x, attr) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (tuple, list, str, bool, int, float)) or value is None:
        return repr(tuple(value) if isinstance(value, tuple) else value)
    raise TypeError(f"no literal for {type(value).__name__}")


def _arguments(args: Any, kwargs: dict[str, Any], x: str, attr: str) -> str:
    return ", ".join([literal(a, x, attr) for a in args] + [f"{k}={literal(v, x, attr)}" for k, v in kwargs.items()])


def calls(value: Any):
    """Every Call in a value, outermost first."""
    if isinstance(value, Call):
        yield value
        for v in (*value.args, *value.kwargs.values()):
            yield from calls(v)
    elif isinstance(value, tuple):
        for v in value:
            yield from calls(v)
