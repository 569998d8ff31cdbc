"""Random valid specs, as text, for property tests of the checker and of every backend.

    import random, specgen
    text = specgen.spec_text(random.Random(7))        # one spec
    texts = specgen.spec_texts(200, seed=0)           # a reproducible batch
    @given(specgen.strategy())                        # with hypothesis

Every spec parses and checks: shapes are tracked while layers are drawn, so a window
never outgrows its input. Sizes are small (units up to 8, recurrent units up to 4, attention
of 1 or 2 heads of up to 3, sequences up to 10 steps, images up to 10x10), so a framework
builds and runs each in milliseconds. Every layer kind and option of the
language appears, written in its different spellings (`dense 8 relu` and
`dense units=8 activation=relu`, `stride=2` and `strides=(2, 1)`, `in` on the first
layer or an `input` statement, `;` or new lines). With `training=True` (the default) the
output layer, loss and metrics fit together as a classification, binary or regression
task, so the spec can also be trained; optimizer and fit settings are drawn too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from modelspec import ir

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "swish",
               "softplus", "relu6", "leaky_relu")
LAYER_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "leaky_relu")  # `leaky_relu` is the LeakyReLU layer
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal",
                "lecun_uniform", "zeros", "ones", "random_normal", "random_uniform", "truncated_normal",
                "orthogonal")
OPTIMIZERS = {
    "sgd": {"learning_rate": (0.001, 0.1), "momentum": (0.0, 0.95), "nesterov": None, "weight_decay": (0.0, 0.01)},
    "rmsprop": {"learning_rate": (1e-4, 0.01), "rho": (0.5, 0.99), "momentum": (0.0, 0.9), "epsilon": (1e-8, 1e-5),
                "centered": None, "weight_decay": (0.0, 0.01)},
    "adam": {"learning_rate": (1e-4, 0.01), "beta_1": (0.5, 0.95), "beta_2": (0.9, 0.999),
             "epsilon": (1e-8, 1e-5), "weight_decay": (0.0, 0.01)},
    "adamw": {"learning_rate": (1e-4, 0.01), "beta_1": (0.5, 0.95), "beta_2": (0.9, 0.999),
              "epsilon": (1e-8, 1e-5), "weight_decay": (0.0, 0.01)},
    "adagrad": {"learning_rate": (1e-3, 0.1), "initial_accumulator_value": (0.01, 0.5), "epsilon": (1e-8, 1e-5),
                "weight_decay": (0.0, 0.01)},
    "nadam": {"learning_rate": (1e-4, 0.01), "beta_1": (0.5, 0.95), "beta_2": (0.9, 0.999),
              "epsilon": (1e-8, 1e-5), "weight_decay": (0.0, 0.01)},
}
TASKS = ("categorical", "sparse", "binary", "regression")

# What `avoid_framework_bugs=True` leaves out, and why: constructions on which a framework
# itself computes wrong numbers, so no crosscheck can pass. (Constructions whose float32
# training merely drifts from float64 — a batchnorm under an adaptive optimizer, a `ones`
# kernel, a batchnorm of what is normalized already — are not left out: crosscheck judges
# them against float32's own spread.)
FRAMEWORK_BUGS = (
    "No conv2d with strides (1, 2) on one input channel: TensorFlow 2.21's oneDNN CPU convolution "
    "computes it from uninitialized memory when its output is one column wide (tf.nn.conv2d of a "
    "(2, 4, 3, 1) input with a (1, 2, 1, 1) kernel and strides (1, 1, 2, 1): different garbage on "
    "every call; right with TF_ENABLE_ONEDNN_OPTS=0), so Keras itself gives wrong numbers.",
    "No rescale to tiny values (1/255 of inputs in [0, 1)): TensorFlow's elu and selu are imprecise "
    "just below 0 (tf.nn.elu(-1e-6) in float32 is -1.0133e-6, 1.3% off; numpy's expm1 gives "
    "-1.0e-6), so a layer of them on such inputs is 1e-5 from float64 in Keras alone, a real "
    "difference that crosscheck rightly reports.",
    "No layernorm over one feature: its normalized value is exactly 0, which torch's fused "
    "layer_norm leaves a few ulps away (times 1/sqrt(epsilon)), so gamma's gradient, 0 in exact "
    "arithmetic, is 10x float32's own error in torch alone (fuzz seed 7, spec 29).",
)


def spec_text(rng: random.Random, *, training: bool = True, max_layers: int = 6, dropout: bool = True,
              task: str | None = None, portable_names: bool = True, max_image: int = 10, max_channels: int = 3,
              avoid_framework_bugs: bool = False) -> str:
    """One random valid spec. `dropout=False` leaves out dropout layers (whose masks no two
    frameworks share); `task` picks the head: categorical, sparse, binary or regression.
    `portable_names=False` also draws names with spaces and accents, which the language
    allows but TensorFlow's name scopes (so the Keras backend) do not. An image input is
    at most `max_image` pixels a side and `max_channels` deep.

    `avoid_framework_bugs=True` leaves out the constructions on which a framework computes
    wrong numbers, for `modelspec crosscheck` (FRAMEWORK_BUGS says which and why). A seed draws the same specs on every run and machine."""
    options = _Options(dropout, portable_names, max_image, max_channels, avoid_framework_bugs)
    return _Generator(rng, options).spec(training, max_layers, task or rng.choice(TASKS))


def spec_texts(n: int, seed: int = 0, **options: Any) -> list[str]:
    """`n` specs from one seed: the same list on every run and machine."""
    rng = random.Random(seed)
    return [spec_text(rng, **options) for _ in range(n)]


def strategy(**options: Any) -> Any:
    """A hypothesis strategy of spec texts (shrinking works on the underlying random draws)."""
    from hypothesis import strategies as st

    return st.builds(lambda r: spec_text(r, **options), st.randoms(use_true_random=False))


# ---------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.3g}"


@dataclass(frozen=True)
class _Options:
    dropout: bool = True
    portable_names: bool = True
    max_image: int = 10
    max_channels: int = 3
    avoid_framework_bugs: bool = False


class _Generator:
    def __init__(self, rng: random.Random, options: _Options) -> None:
        self.r = rng
        self.use_dropout = options.dropout
        self.portable = options.portable_names
        self.max_image, self.max_channels = options.max_image, options.max_channels
        self.avoid_framework_bugs = options.avoid_framework_bugs
        self.names = 0
        self.refs = 0  # references and blocks drawn so far, for fresh names
        self.nonlinear = False  # whether the layer just drawn has a nonlinear activation
        self.weighted = False  # a layer with weights so far: no normalize after it (it adapts to its input)
        self.tokens = False  # the input is token ids (`input T int`)
        self.masked = False  # the last output carries embedding's mask (mask_zero)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # -- the whole spec ----------------------------------------------------------------

    def spec(self, training: bool, max_layers: int, task: str) -> str:
        r = self.r
        shape = self.input_shape()
        lines: list[str] = []
        if self.chance(0.7):
            lines.append(f"model {self.model_name()}")
        inline_input = self.chance(0.3)
        if not inline_input:
            lines.append(f"input {self.shape_text(shape)}" + (" int" if self.tokens else ""))
        if self.tokens:  # token ids: an embedding reads them first
            text, shape = self.embedding(shape)
            lines.append(text)
        for i in range(r.randint(0, max_layers)):
            if (i or not inline_input or self.tokens) and self.chance(0.25):  # `in SHAPE` goes on a plain first layer
                texts, shape = self.graph(shape)
                lines += texts
                continue
            text, shape = self.layer(shape)
            lines.append(text)
        text, shape = self.to_flat(shape)
        if text:
            lines.append(text)
        lines += self.head(task, training)
        if inline_input:
            first = lines.index(next(line for line in lines if not line.startswith("model ")))
            lines[first] += f" in {self.shape_text(self.first_shape)}" + (" int" if self.tokens else "")
        if training:
            lines += self.training(task)
        if self.chance(0.15):  # one line: a body in braces as `{ dense n; add in }`
            return "; ".join(line.strip() for line in lines).replace("{; ", "{ ").replace("; }", " }") + "\n"
        return "\n".join(lines) + "\n"

    def model_name(self) -> str:
        return self.r.choice(["m", "net", "tiny_cnn", "Model_7"] + ([] if self.portable else ['"my model"', '"ünï"']))

    def input_shape(self) -> tuple[int, ...]:
        r = self.r
        kind = r.choice(("flat", "image", "image", "matrix", "tokens"))
        self.tokens = kind == "tokens"
        if kind == "tokens":
            shape = (r.randint(4, 10),)
        elif kind == "flat":
            shape = (r.randint(1, 8),)
        elif kind == "matrix":
            shape = (r.randint(1, 5), r.randint(1, 6))
        else:
            shape = (r.randint(3, self.max_image), r.randint(3, self.max_image), r.randint(1, self.max_channels))
        self.first_shape = shape
        return shape

    def shape_text(self, shape: tuple[int, ...]) -> str:
        if len(shape) > 1 and self.chance(0.2):
            return "(" + ", ".join(map(str, shape)) + ")"
        return "x".join(map(str, shape))

    def name_option(self) -> str:
        if not self.chance(0.15):
            return ""
        self.names += 1
        return " name=" + self.r.choice([f"block{self.names}", f"out_{self.names}x"]
                                        + ([] if self.portable else [f'"layer {self.names}"', f'"schicht-ü{self.names}"']))

    # -- layers ------------------------------------------------------------------------

    # the kinds that pass embedding's mask on (Keras's supports_masking); the others drop it,
    # but batchnorm and normalize refuse it (modelspec.layers.LayerBase.mask). Attention and a
    # recurrent layer with return_sequences pass it on too (their methods say so: self.passes)
    KEEP_MASK = ("dense", "batchnorm", "activation", "leaky_relu", "prelu", "rescale", "dropout", "layernorm",
                 "normalize")
    RECURRENT = ("lstm", "gru", "simple_rnn")
    WEIGHTED = ("dense", "conv2d", "conv1d", "batchnorm", "prelu", "layernorm", *RECURRENT, "bidirectional",
                "attention")

    def layer(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        kinds = ["dense", "activation", "leaky_relu", "prelu", "rescale", "layernorm", "reshape"] + (
            ["dropout"] if self.use_dropout else []) + ([] if self.weighted or self.masked else ["normalize"]) + (
            [] if self.masked else ["batchnorm"])
        if len(shape) == 2:
            kinds += ["conv1d", "conv1d", "conv1d", "maxpool1d", "avgpool1d", "globalavgpool1d", "globalmaxpool1d",
                      *self.RECURRENT, "bidirectional", "bidirectional", "attention"]  # (attention: keeping() too)
        if len(shape) == 3:
            kinds += ["conv2d", "conv2d", "conv2d", "maxpool2d", "avgpool2d", "globalavgpool2d", "globalmaxpool2d",
                      "zeropadding2d", "zeropadding2d", "flatten"]
            if shape[0] * shape[1] <= 36:  # keeps images small (twice: small images are rare)
                kinds += ["upsampling2d", "upsampling2d"]
        elif len(shape) == 2:
            kinds += ["flatten"]
        kind = self.r.choice(kinds)
        self.nonlinear = False
        self.passes = kind in self.KEEP_MASK
        text, shape = getattr(self, kind)(shape)
        self.weighted = self.weighted or kind in self.WEIGHTED
        self.masked = self.masked and self.passes
        return text + self.name_option(), shape

    def embedding(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        vocab, dim = r.randint(5, 30), r.randint(1, 6)
        text = f"embedding {vocab} {dim}" if self.chance(0.8) else f"embedding input_dim={vocab} output_dim={dim}"
        parts = []
        self.masked = self.chance(0.5)
        if self.masked:
            parts.append("mask_zero" if self.chance(0.8) else "mask_zero=true")
        if self.chance(0.4):
            parts.append(self.initializer())
        if self.chance(0.2):
            parts.append(r.choice(("l1", "l2", f"l2={_num(r.uniform(0.0001, 0.05))}")))
        r.shuffle(parts)
        self.weighted = True
        return text + "".join(" " + p for p in parts) + self.name_option(), (*shape, dim)

    def conv1d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        steps, _ = shape
        filters = r.randint(1, 4)
        padding = r.choice(("valid", "same", "causal"))
        stride = r.randint(1, 2) if self.chance(0.4) else 1
        dilation = r.randint(1, 2) if stride == 1 and self.chance(0.3) else 1
        limit = 3 if padding != "valid" else min(3, (steps - 1) // dilation + 1)
        kernel = r.randint(1, limit)
        text = f"conv1d {filters} {kernel}"
        if stride > 1:
            text += f" {r.choice(('stride', 'strides'))}={stride}"
        if dilation > 1:
            text += f" {r.choice(('dilation', 'dilation_rate'))}={dilation}"
        if padding != "valid" or self.chance(0.1):
            text += f" padding={padding}" if self.chance(0.7) else f" {padding}"
        activation = r.choice(ACTIVATIONS) if self.chance(0.7) else None
        if activation == "softmax" and filters == 1:
            activation = "sigmoid"
        self.nonlinear = activation not in (None, "linear")
        span = dilation * (kernel - 1) + 1
        out = -(-steps // stride) if padding != "valid" else (steps - span) // stride + 1
        return text + self.weighted_options(activation, filters), (out, filters)

    def pool1d(self, kind: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        steps, c = shape
        padding = r.choice(("valid", "same"))
        size = r.randint(1, 3 if padding == "same" else min(3, steps))
        stride = r.randint(1, 2) if self.chance(0.5) else None
        text = kind
        if size != 2 or self.chance(0.5):
            text += f" {size}" if self.chance(0.8) else f" pool_size={size}"
        if stride is not None:
            text += f" stride={stride}"
        if padding == "same":
            text += " padding=same"
        return text, (self.window(steps, size, stride or size, padding), c)

    def maxpool1d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.pool1d("maxpool1d", shape)

    def avgpool1d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.pool1d("avgpool1d", shape)

    def globalavgpool1d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return "globalavgpool1d", (shape[-1],)

    def globalmaxpool1d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return "globalmaxpool1d", (shape[-1],)

    def recurrent(self, kind: str, shape: tuple[int, ...], wrapped: bool = False) -> tuple[str, tuple[int, ...]]:
        """An lstm, gru or simple_rnn with each of its options, in their spellings; `wrapped`:
        inside a bidirectional, which Keras refuses for a go_backwards layer (its backward copy
        is go_backwards too: keras/src/layers/rnn/bidirectional.py)."""
        r = self.r
        units = r.randint(1, 4)
        parts = [f"{kind} {units}" if self.chance(0.8) else f"{kind} units={units}"]
        sequences = self.chance(0.5)
        if sequences or self.chance(0.1):
            parts.append("return_sequences" if sequences and self.chance(0.8) else f"return_sequences={str(sequences).lower()}")
        if not wrapped and self.chance(0.25):
            parts.append("go_backwards" if self.chance(0.8) else "go_backwards=true")
        if self.chance(0.3):
            activation = r.choice([a for a in ACTIVATIONS if a != "softmax" or units > 1])
            parts.append(activation if self.chance(0.8) else f"activation={activation}")
        if kind != "simple_rnn" and self.chance(0.25):
            parts.append(f"recurrent_activation={r.choice(('sigmoid', 'tanh', 'relu6', 'linear'))}")
        if self.chance(0.3):
            init = self.initializer()
            parts.append(f"kernel_initializer={init}" if self.chance(0.2) else init)
        if self.chance(0.3):
            parts.append(f"{r.choice(('recurrent_init', 'recurrent_initializer'))}={self.initializer()}")
        if self.chance(0.15):
            parts.append(r.choice(("nobias", "use_bias=false")))
        elif self.chance(0.2):
            parts.append(f"{r.choice(('bias_init', 'bias_initializer'))}={self.initializer(bias=True)}")
        if kind == "lstm" and self.chance(0.3):
            parts.append(f"unit_forget_bias={r.choice(('false', 'true'))}")
        if kind == "gru" and self.chance(0.4):
            parts.append(f"reset_after={r.choice(('false', 'true'))}")
        if self.chance(0.15):
            parts.append(r.choice(("l1", "l2", f"l2={_num(r.uniform(0.0001, 0.05))}")))
        self.passes = sequences  # with return_sequences the mask goes on; without, it ends here
        head, rest = parts[0], parts[1:]
        r.shuffle(rest)
        return " ".join([head, *rest]), ((shape[0], units) if sequences else (units,))

    def lstm(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.recurrent("lstm", shape)

    def gru(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.recurrent("gru", shape)

    def simple_rnn(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.recurrent("simple_rnn", shape)

    def bidirectional(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        text, out = self.recurrent(r.choice(self.RECURRENT), shape, wrapped=True)
        merge = r.choice(("concat", "sum", "mul", "ave"))
        if merge != "concat" or self.chance(0.2):
            text += f" {r.choice(('merge', 'merge_mode'))}={merge}"
        return f"bidirectional {text}", (*out[:-1], 2 * out[-1]) if merge == "concat" else out

    def attention(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        """Self-attention (the model becomes functional); it passes the mask on."""
        r = self.r
        heads, key_dim = r.randint(1, 2), r.randint(1, 3)
        parts = [f"{r.choice(('heads', 'num_heads'))}={heads}", f"key_dim={key_dim}"]
        if self.chance(0.3):
            parts.append(f"value_dim={r.randint(1, 3)}")
        if self.use_dropout and self.chance(0.2):
            parts.append(f"dropout={r.choice((0.0, 0.1, 0.5))}")
            if self.chance(0.5):
                parts.append(f"seed={r.randint(0, 99)}")
        if self.chance(0.2):
            parts.append(r.choice(("nobias", "use_bias=false")))
        elif self.chance(0.15):
            parts.append(f"{r.choice(('bias_init', 'bias_initializer'))}={self.initializer(bias=True)}")
        if self.chance(0.3):
            init = self.initializer()
            parts.append(f"kernel_initializer={init}" if self.chance(0.2) else init)
        r.shuffle(parts)
        # Keras's config cannot tell value_dim=key_dim from the default (dropped after the shuffle,
        # which keeps the draws that follow)
        parts = [p for p in parts if p != f"value_dim={key_dim}"]
        self.passes = True
        return "attention " + " ".join(parts), shape

    def layernorm(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        text = "layernorm"
        if self.chance(0.3):
            text += f" {self.r.choice(('epsilon', 'eps'))}={self.r.choice((1e-5, 0.01, 1e-3))}"
        if self.avoid_framework_bugs and shape[-1] == 1:  # torch's rounding: FRAMEWORK_BUGS (same draws)
            return "linear", shape
        return text, shape

    def reshape(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        """Into (steps, features) or flat, one dimension sometimes written -1."""
        r = self.r
        size = 1
        for d in shape:
            size *= d
        rows = r.choice([d for d in range(1, min(size, 10) + 1) if size % d == 0])
        target = (rows, size // rows) if self.chance(0.8) else (size,)
        dims = [str(d) for d in target]
        if self.chance(0.4):
            dims[r.randrange(len(dims))] = "-1"
        written = "x".join(dims) if len(dims) > 1 and self.chance(0.8) else f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"
        return f"reshape {written}", target

    def dense(self, shape: tuple[int, ...], units: int | None = None, activation: str | None = None) -> tuple[str, tuple[int, ...]]:
        units = units or self.r.randint(1, 8)
        if activation is None:
            activation = self.r.choice(ACTIVATIONS) if self.chance(0.7) else None
            if activation == "softmax" and units == 1:  # always 1: Keras warns about it
                activation = "sigmoid"
        self.nonlinear = activation not in (None, "linear")
        head = f"dense units={units}" if self.chance(0.2) else f"dense {units}"
        return head + self.weighted_options(activation, units), shape[:-1] + (units,)

    def conv2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        h, w, _ = shape
        filters = r.randint(1, 4)
        padding = r.choice(("valid", "same"))
        limit_h, limit_w = (3, 3) if padding == "same" else (min(3, h), min(3, w))
        kernel = (r.randint(1, limit_h), r.randint(1, limit_w))
        strides = (r.randint(1, 2), r.randint(1, 2)) if self.chance(0.4) else (1, 1)
        if self.avoid_framework_bugs and shape[2] == 1 and strides == (1, 2):  # TensorFlow's bug: FRAMEWORK_BUGS
            strides = (2, 2)
        text = f"conv2d {filters} {self.pair(kernel)}"
        if strides != (1, 1):
            text += f" {self.stride(strides)}"
        if padding == "same" or self.chance(0.1):
            text += f" padding={padding}" if self.chance(0.7) else f" {padding}"
        activation = r.choice(ACTIVATIONS) if self.chance(0.7) else None
        if activation == "softmax" and filters == 1:
            activation = "sigmoid"
        self.nonlinear = activation not in (None, "linear")
        out = tuple(self.window(n, k, s, padding) for n, k, s in zip((h, w), kernel, strides))
        return text + self.weighted_options(activation, filters), (*out, filters)

    def pool(self, kind: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        h, w, c = shape
        padding = r.choice(("valid", "same"))
        limit_h, limit_w = (3, 3) if padding == "same" else (min(3, h), min(3, w))
        size = (r.randint(1, limit_h), r.randint(1, limit_w))
        strides = (r.randint(1, 2), r.randint(1, 2)) if self.chance(0.5) else None
        text = kind
        if size != (2, 2) or self.chance(0.5):
            text += f" {self.pair(size)}"
        if strides is not None:
            text += f" {self.stride(strides)}"
        if padding == "same":
            text += " padding=same"
        out = tuple(self.window(n, k, s, padding) for n, k, s in zip((h, w), size, strides or size))
        return text, (*out, c)

    def maxpool2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.pool("maxpool2d", shape)

    def avgpool2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return self.pool("avgpool2d", shape)

    def globalavgpool2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return "globalavgpool2d", (shape[-1],)

    def globalmaxpool2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return "globalmaxpool2d", (shape[-1],)

    def zeropadding2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        (top, bottom), (left, right) = (r.randint(0, 1), r.randint(0, 2)), (r.randint(0, 2), r.randint(0, 1))
        if self.chance(0.5):
            bottom, right = top, left
        if self.chance(0.3):
            text = f"zeropadding2d (({top}, {bottom}), ({left}, {right}))"
        elif (top, left) == (bottom, right) == (1, 1) and self.chance(0.5):
            text = "zeropadding2d"
        elif top == bottom and left == right:
            text = f"zeropadding2d {self.pair((top, left)) if top or left else '0'}"
        else:
            text = f"zeropadding2d padding=(({top}, {bottom}), ({left}, {right}))"
        return text, (shape[0] + top + bottom, shape[1] + left + right, shape[2])

    def upsampling2d(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        size = (self.r.randint(1, 2), self.r.randint(1, 2))
        text = "upsampling2d" if size == (2, 2) and self.chance(0.5) else f"upsampling2d {self.pair(size)}"
        return text, (shape[0] * size[0], shape[1] * size[1], shape[2])

    def prelu(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        self.nonlinear = True
        return "prelu", shape

    def flatten(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        size = 1
        for d in shape:
            size *= d
        return "flatten", (size,)

    def dropout(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        rate = self.r.choice((0.0, 0.1, 0.25, 0.5, 0.9))
        text = f"dropout rate={rate}" if self.chance(0.2) else f"dropout {rate}"
        if self.chance(0.6):
            text += f" seed={self.r.randint(0, 99)}"
        return text, shape

    def batchnorm(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        text = "batchnorm"
        if self.chance(0.3):
            text += f" momentum={self.r.choice((0.9, 0.5, 0.0, 0.999))}"
        if self.chance(0.3):
            text += f" {self.r.choice(('epsilon', 'eps'))}={self.r.choice((1e-5, 0.01, 1e-3))}"
        return text, shape

    def rescale(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        # Keras's two usual ones (pixels to [0, 1] and to [-1, 1]) and plain factors; without
        # the tiny values that meet TensorFlow's imprecise elu and selu (FRAMEWORK_BUGS)
        scale, offset = self.r.choice((("1/255", None), ("1/127.5", "-1"), ("0.5", None), ("-2", "0.25"))
                                      if not self.avoid_framework_bugs else (("0.5", None), ("2", "-0.5")))
        text = f"rescale scale={scale}" if self.chance(0.2) else f"rescale {scale}"
        return text + (f" offset={offset}" if offset else ""), shape

    def normalize(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        return "normalize", shape

    def activation(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        choices = [a for a in LAYER_ACTIVATIONS if shape[-1] > 1 or a != "softmax"]
        name = self.r.choice(choices)
        self.nonlinear = name != "linear"
        if name == "softmax" and not self.masked and shape[-1] % 2:
            # Keras's Softmax layer (mask refused), chosen from the shape, so that no draw is added
            # and the fixed campaigns keep their specs
            return f"softmax axis={1 if len(shape) > 1 and shape[0] % 2 else -1}", shape
        return name, shape

    def leaky_relu(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        r = self.r
        self.nonlinear = True  # no slope drawn is 1
        choice = r.randint(0, 3)
        if choice == 0:
            return "leaky_relu", shape
        slope = r.choice((0.0, 0.01, 0.2, 0.3, 1.5))
        return (f"leaky_relu {slope}" if choice == 1 else f"leaky_relu negative_slope={slope}"), shape

    # -- graphs --------------------------------------------------------------------------

    MERGES = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concat")

    def keeping(self, shape: tuple[int, ...], channels: int | None = None) -> tuple[str, tuple[int, ...]]:
        """A layer that keeps the shape (to `channels` last-axis units, when given)."""
        c = channels or shape[-1]
        kinds = ["dense", "activation"] + ([] if self.masked else ["batchnorm"]) if channels is None else ["dense"]
        if len(shape) == 3:
            kinds += ["conv2d"]
        if len(shape) == 2 and channels is None:  # a residual self-attention, as in a transformer block
            kinds += ["attention"]
        kind = self.r.choice(kinds)
        if kind == "dense":
            text, out = self.dense(shape, units=c)
        elif kind == "conv2d":
            act = self.r.choice(ACTIVATIONS) if self.chance(0.6) else None
            if act == "softmax" and c == 1:
                act = "sigmoid"
            text, out = (f"conv2d {c} {self.pair((self.r.randint(1, 3), self.r.randint(1, 3)))} padding=same"
                         + self.weighted_options(act, c)), (*shape[:2], c)
        else:
            text, out = getattr(self, kind)(shape)
        self.weighted = self.weighted or kind in ("dense", "conv2d", "batchnorm", "attention")
        return text, out

    def ref(self) -> str:
        self.refs += 1
        return self.r.choice(("h", "skip", "a", "branch")) + str(self.refs)

    def graph(self, shape: tuple[int, ...]) -> tuple[list[str], tuple[int, ...]]:
        """A piece of graph: a residual merge, two branches from one tensor, a block used once
        or twice, or a repeat; every merge kind, written in its different forms."""
        r = self.r
        form = r.choice(("residual", "branches", "block", "repeat"))
        if form == "repeat":
            body, out = self.keeping(shape)
            times = r.randint(1, 3)
            if self.chance(0.5):
                return [f"repeat {times} {{ {body} }}"], out
            return [f"repeat {times} {{", f"  {body}", "}"], out
        if form == "block":
            name = f"blk{self.refs + 1}"
            self.refs += 1
            merge = r.choice(("add", "average") if self.masked else ("add", "multiply", "average", "maximum", "minimum"))
            layer, _ = self.keeping(shape, channels=shape[-1])
            first = layer.split(" ", 2)  # the units or filters become the parameter
            body = " ".join([first[0], "n", *first[2:]])
            act = r.choice(("relu", "tanh", "linear"))
            lines = [f"block {name}(n, act={act}) {{", f"  {body}", f"  {merge} in", "  act", "}"]
            for _ in range(r.randint(1, 2)):
                lines.append(f"{name} {shape[-1]}" if self.chance(0.5) else f"{name} n={shape[-1]} act=sigmoid")
            return lines, shape
        source = self.ref()
        head, out = self.keeping(shape)
        lines = [f"{source} = {head}"]
        # no concat, maximum, minimum or multiply of masked tensors (refused: modelspec.layers)
        merge = r.choice(("add", "subtract", "average") if self.masked else self.MERGES)
        if form == "residual":  # source, a path of one or two layers, then the merge of the two
            channels = None if merge != "concat" else r.randint(1, 4)
            path_shape = out
            for _ in range(r.randint(1, 2)):
                text, path_shape = self.keeping(path_shape, channels)
                channels = None
                lines.append(text)
            if merge == "concat":
                lines.append(f"concat {source}" if self.chance(0.5) else f"concat {source} axis=-1")
                return lines, (*out[:-1], out[-1] + path_shape[-1])
            lines.append(f"{merge} {source}")
            return lines, out
        # two branches read the source; the merge lists both (or three, the source too)
        left, right = self.ref(), self.ref()
        channels = (None, None) if merge != "concat" else (r.randint(1, 3), r.randint(1, 3))
        a, a_shape = self.keeping(out, channels[0])
        b, b_shape = self.keeping(out, channels[1])
        lines += [f"{left} = {a} from={source}", f"{right} = {b} from={source}"]
        operands = [left, right] + ([source] if merge not in ("subtract", "concat") and self.chance(0.3) else [])
        r.shuffle(operands)
        if merge == "concat":
            return lines + [f"concat {' '.join(operands)}"], (*out[:-1], a_shape[-1] + b_shape[-1])
        return lines + [f"{merge} {' '.join(operands)}"], out

    # -- options -----------------------------------------------------------------------

    def pair(self, size: tuple[int, int]) -> str:
        if size[0] == size[1] and self.chance(0.3):
            return str(size[0])
        return f"({size[0]}, {size[1]})" if self.chance(0.2) else f"{size[0]}x{size[1]}"

    def stride(self, strides: tuple[int, int]) -> str:
        if strides[0] == strides[1] and self.chance(0.5):
            return f"stride={strides[0]}"
        return f"strides=({strides[0]}, {strides[1]})" if self.chance(0.5) else f"stride={strides[0]}x{strides[1]}"

    @staticmethod
    def window(n: int, k: int, s: int, padding: str) -> int:
        return -(-n // s) if padding == "same" else (n - k) // s + 1

    def initializer(self, bias: bool = False, channels: int = 1) -> str:
        r = self.r
        # orthogonal needs a weight of rank 2 or more: Keras refuses it for a bias
        names = [i for i in INITIALIZERS if not (bias and i == "orthogonal")]
        name = r.choice(names)
        args = []
        if name not in ("zeros", "ones") and self.chance(0.5):
            args.append(f"seed={r.randint(0, 2**31 - 1) if self.chance(0.2) else r.randint(0, 99)}")
        if name in ("random_normal", "truncated_normal") and self.chance(0.5):
            args += [f"mean={_num(r.uniform(-0.2, 0.2))}", f"stddev={_num(r.uniform(0.01, 0.5))}"]
        if name == "random_uniform" and self.chance(0.5):
            lo = r.uniform(-0.5, 0.0)
            args += [f"minval={_num(lo)}", f"maxval={_num(lo + r.uniform(0.01, 0.5))}"]
        if name == "orthogonal" and self.chance(0.5):
            args.append(f"gain={_num(r.uniform(0.5, 2.0))}")
        return f"{name}({', '.join(args)})" if args else name

    def weighted_options(self, activation: str | None, channels: int) -> str:
        r = self.r
        parts = []
        if activation is not None:
            parts.append(f"activation={activation}" if self.chance(0.2) else activation)
        if self.chance(0.5):
            init = self.initializer(channels=channels)
            parts.append(f"kernel_initializer={init}" if self.chance(0.2) else init)
        if self.chance(0.15):
            parts.append(r.choice(("nobias", "use_bias=false")))
        if self.chance(0.15):
            parts.append(f"{r.choice(('bias_init', 'bias_initializer'))}={self.initializer(bias=True)}")
        if self.chance(0.25):
            reg = r.choice(("l1", "l2", "both", "bare"))
            if reg == "both":
                parts += [f"l1={_num(r.uniform(0, 0.05))}", f"l2={_num(r.uniform(0, 0.05))}"]
            elif reg == "bare":
                parts.append(r.choice(("l1", "l2")))
            else:
                parts.append(f"{reg}={_num(r.uniform(0.0001, 0.05))}")
        r.shuffle(parts)
        return "".join(" " + p for p in parts)

    # -- head and training ---------------------------------------------------------------

    def to_flat(self, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        if len(shape) == 1:
            return "", shape
        self.masked = False
        if len(shape) == 3 and self.chance(0.4):
            return self.globalavgpool2d(shape)
        if len(shape) == 2 and self.chance(0.5):
            return self.globalavgpool1d(shape) if self.chance(0.5) else self.globalmaxpool1d(shape)
        return self.flatten(shape)

    def head(self, task: str, training: bool) -> list[str]:
        r = self.r
        if task in ("categorical", "sparse"):
            units, activation = r.randint(2, 5), "softmax"
        elif task == "binary":
            units, activation = 1, "sigmoid"
        else:
            units, activation = r.randint(1, 3), None
        if activation is not None and self.chance(0.3):  # the activation as a layer of its own
            text, _ = self.dense((units,), units, activation="linear")
            if activation == "softmax" and units % 2:  # Keras's Softmax layer, chosen without a draw
                activation = "softmax axis=-1"
            return [text, activation + self.name_option()]
        text, _ = self.dense((units,), units, activation=activation)
        return [text + self.name_option()]

    # The optimizers and options added after the fixed campaigns were drawn take the place of
    # an older optimizer's draws, chosen by the input shape: no draw is added, so every seed
    # keeps its specs (tests/test_fuzz_crosscheck.py, tests/test_keras_checker.py).
    SUCCESSORS = {"adam": "adamax", "rmsprop": "adadelta", "nadam": "lion"}

    def later_training(self, parts: list[str]) -> str:
        """`optimizer NAME key=value ...` with, for some input shapes, a newer optimizer in
        the place of the one drawn (the options it does not take dropped), gradient clipping,
        or its learning rate as the initial rate of a schedule."""
        pick = sum(self.first_shape)
        name = parts[0].split()[1]
        if pick % 3 == 0 and name in self.SUCCESSORS:
            name = self.SUCCESSORS[name]
            takes = ir.OPTIMIZER_DEFAULTS[name]
            parts = [f"optimizer {name}"] + [p for p in parts[1:] if ir.HYPERPARAMETER_ALIASES.get(
                p.split("=")[0], p.split("=")[0]) in takes]
        if pick % 5 == 1:
            parts.append(("clipnorm=1.0", "clipvalue=0.5", "global_clipnorm=2.0")[pick % 3])
        for i, p in enumerate(parts):
            key, _, value = p.partition("=")
            if key in ("lr", "learning_rate") and pick % 7 in (2, 5):
                schedule = ("exponential_decay({}, decay_steps=3, decay_rate=0.5)",
                            "cosine_decay({}, decay_steps=5, alpha=0.1)",
                            "piecewise_constant_decay(boundaries=[2, 4], values=[{}, 0.001, 0.0005])")[pick // 7 % 3]
                parts[i] = f"{key}={schedule.format(value)}"
        return " ".join(parts)

    def training(self, task: str) -> list[str]:
        r = self.r
        lines = []
        if self.chance(0.85):  # (the default optimizer is RMSprop)
            name = r.choice(sorted(OPTIMIZERS))
            parts = [f"optimizer {name}"]
            for key, span in OPTIMIZERS[name].items():
                if not self.chance(0.4):
                    continue
                if span is None:
                    value = r.choice(("true", "false"))
                else:
                    value = _num(r.uniform(*span))
                    if key == "learning_rate" and self.chance(0.3):
                        key = "lr"
                parts.append(f"{key}={value}")
            lines.append(self.later_training(parts))
        losses = {"categorical": ["categorical_crossentropy"], "sparse": ["sparse_categorical_crossentropy"],
                  "binary": ["binary_crossentropy"], "regression": ["mse", "mae", "huber", "huber delta=0.5"]}
        loss = r.choice(losses[task])
        if loss in ("categorical_crossentropy", "binary_crossentropy") and sum(self.first_shape) % 4 == 3:
            loss += " label_smoothing=0.1"  # (chosen without a draw, as in later_training)
        lines.append("loss " + loss)
        metrics = {"categorical": ["accuracy", "categorical_accuracy", "acc", "mse"],
                   "sparse": ["accuracy", "sparse_categorical_accuracy"],
                   "binary": ["accuracy", "binary_accuracy", "mae"], "regression": ["mse", "mae"]}[task]
        chosen = r.sample(metrics, r.randint(0, min(2, len(metrics))))
        if chosen:
            lines.append("metrics " + " ".join(chosen))
        if self.chance(0.5):
            options = [f"batch={r.randint(1, 16)}", f"epochs={r.randint(1, 3)}",
                       f"validation={r.choice((0.1, 0.2, 0.5))}", f"shuffle={r.choice(('true', 'false'))}",
                       f"seed={r.randint(0, 9)}"]
            lines.append("fit " + " ".join(r.sample(options, r.randint(1, len(options)))))
        return lines
