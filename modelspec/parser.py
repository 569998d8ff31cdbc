"""From statements to the IR: what each keyword accepts, and precise errors when it doesn't.

One method per statement keyword (`dense`, `conv2d`, `optimizer`, ...), in the style of
sqlglot's generators. Each reads its arguments through a `_Reader`, which knows how to
turn a literal into an int, a shape, an initializer... and how to say exactly what was
expected and what was received. Every error is collected; the spec is rejected with all
of them at once, in source order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from . import ir
from .diagnostics import Diagnostic, Span, SpecError, did_you_mean, one_of, sort_diagnostics
from .syntax import Call, Option, Statement, Value, parse_statements

# ---------------------------------------------------------------------------------------
# Vocabulary: spellings accepted besides the canonical ones

INITIALIZER_ALIASES = {
    "GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal", "HeNormal": "he_normal",
    "HeUniform": "he_uniform", "LecunNormal": "lecun_normal", "LecunUniform": "lecun_uniform",
    "Zeros": "zeros", "Ones": "ones", "RandomNormal": "random_normal",
    "RandomUniform": "random_uniform", "TruncatedNormal": "truncated_normal",
    "Orthogonal": "orthogonal", "xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
}
OPTIMIZER_ALIASES = {"SGD": "sgd", "RMSprop": "rmsprop", "Adam": "adam", "AdamW": "adamw",
                     "Adagrad": "adagrad", "Nadam": "nadam"}
LOSS_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae",
                "CategoricalCrossentropy": "categorical_crossentropy",
                "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
                "BinaryCrossentropy": "binary_crossentropy", "MeanSquaredError": "mse",
                "MeanAbsoluteError": "mae", "Huber": "huber"}
ACTIVATION_ALIASES = {"silu": "swish", "none": "linear"}
HYPERPARAMETER_ALIASES = {"lr": "learning_rate"}

LAYER_KEYWORDS = ("dense", "conv2d", "flatten", "dropout", "batchnorm", "maxpool2d", "avgpool2d",
                  "globalavgpool2d", "leaky_relu") + tuple(a for a in ir.ACTIVATIONS if a != "leaky_relu")
TRAINING_KEYWORDS = ("optimizer", "loss", "metrics", "fit")
KEYWORDS = ("model", "input") + LAYER_KEYWORDS + TRAINING_KEYWORDS
# Keras's layer class names and common spellings, mapped to our keyword, for hints only.
KEYWORD_HINTS = {
    "Dense": "dense", "Conv2D": "conv2d", "conv": "conv2d", "Flatten": "flatten",
    "Dropout": "dropout", "BatchNormalization": "batchnorm", "batch_normalization": "batchnorm",
    "batchnormalization": "batchnorm", "bn": "batchnorm", "MaxPooling2D": "maxpool2d",
    "max_pooling2d": "maxpool2d", "maxpool": "maxpool2d", "AveragePooling2D": "avgpool2d",
    "avgpool": "avgpool2d", "GlobalAveragePooling2D": "globalavgpool2d", "LeakyReLU": "leaky_relu",
    "linear_layer": "dense", "Input": "input", "inputs": "input", "compile": "optimizer",
    "metric": "metrics", "train": "fit",
}


def _canonical(word: str, names: Iterable[str], aliases: dict[str, str]) -> str | None:
    if word in aliases:
        return aliases[word]
    return word if word in names else None


# ---------------------------------------------------------------------------------------
# Public entry point


def parse(source: str | bytes | os.PathLike, *, name: str | None = None) -> ir.Spec:
    """Parse a spec from text, bytes, or a path to a `.ms` file. Raises SpecError."""
    text, path = _read(source)
    default_name = name or (Path(path).stem if path else "sequential")
    statements, diagnostics = parse_statements(text)
    builder = _Builder(default_name, path)
    spec = builder.build(statements, complete=not diagnostics)
    diagnostics = sort_diagnostics(d.with_file(path) for d in diagnostics + builder.diagnostics)
    if diagnostics or spec is None:
        raise SpecError(diagnostics or [Diagnostic("error", "invalid spec", file=path)], text)
    return spec.model_copy(update={"path": path, "source": text})


def _read(source: str | bytes | os.PathLike) -> tuple[str, str | None]:
    path: str | None = None
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and ";" not in source and len(source) < 4096
        and source.strip() == source and source != "" and _is_file(source)
    ):
        path = os.fspath(source)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SpecError([Diagnostic("error", f"cannot read the spec: {e.strerror or e}", file=path)]) from None
        return _decode(data, path), path
    if isinstance(source, bytes):
        return _decode(source, None), None
    if not isinstance(source, str):
        raise SpecError([Diagnostic("error", f"expected spec text, bytes or a path; received {type(source).__name__}")])
    return source, None


def _is_file(candidate: str) -> bool:
    try:
        return os.path.isfile(candidate)
    except (OSError, ValueError):
        return False


def _decode(data: bytes, path: str | None) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError([Diagnostic(
            "error", f"expected UTF-8 text; received the byte 0x{data[e.start]:02x}",
            Span(line, col, line, col + 1), hint="is this a binary file? A spec is plain text.",
            code="encoding", file=path)]) from None
    if "\x00" in text:
        before = text[: text.index("\x00")]
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError([Diagnostic("error", "expected text; received a NUL byte",
                                    Span(line, col, line, col + 1),
                                    hint="is this a binary file? A spec is plain text.",
                                    code="encoding", file=path)], text)
    return text


# ---------------------------------------------------------------------------------------
# Reading arguments


class _Skip(Exception):
    """Raised inside a statement handler after an error was recorded: drop the statement."""


class _Reader:
    """The arguments of one statement, consumed by its handler, with error reporting."""

    def __init__(self, builder: "_Builder", st: Statement) -> None:
        self.b = builder
        self.st = st
        self.kw = st.keyword
        self.positionals: list[Value] = []
        self.words: list[Value] = []
        self.options: dict[str, Option] = {}
        self.calls: list[Call] = []
        self.input_shape: tuple[tuple[int, ...] | None, Span] | None = None
        self._split()

    # -- classification -----------------------------------------------------------------

    def _split(self) -> None:
        args = self.st.args
        i = 0
        while i < len(args):
            a = args[i]
            if isinstance(a, Option):
                if a.key in self.options:
                    self.error(f"'{a.key}' is given twice", a.key_span,
                               hint=f"first given at column {self.options[a.key].span.column}")
                else:
                    self.options[a.key] = a
            elif isinstance(a, Call):
                self.calls.append(a)
            elif a.type == "word" and a.value == "in":
                got = args[i + 1] if i + 1 < len(args) and isinstance(args[i + 1], Value) else None
                shape = None
                if got is None or got.type not in ("int", "dims", "tuple"):
                    self.error("expected an input shape after 'in', such as 784, 28x28 or (28, 28); "
                               f"received {_describe(got)}", got.span if got else a.span)
                else:
                    shape = self.shape(got)
                # kept even when invalid (None), so that no "the model has no input shape" follows
                self.input_shape = (shape, _join(a.span, got.span if got else a.span))
                if got is not None:
                    i += 1
            elif a.type == "word":
                self.words.append(a)
            else:
                self.positionals.append(a)
            i += 1

    # -- errors ---------------------------------------------------------------------------

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        self.b.error(message, span or self.st.keyword_span, hint)

    def fail(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        self.error(message, span, hint)
        raise _Skip

    # -- positionals ---------------------------------------------------------------------

    def positional(self, what: str, example: str, required: bool = True) -> Value | None:
        """The next positional value; an error if missing and required."""
        if self.positionals:
            return self.positionals.pop(0)
        if required:
            self.fail(f"{self.kw} needs {what}; received nothing", self.st.span,
                      hint=f"for example: {example}")
        return None

    def no_more_positionals(self) -> None:
        for v in self.positionals:
            self.error(f"{self.kw} takes no further value; received {v.describe()}", v.span,
                       hint=self.b.hint_for_extra(self.kw))
        self.positionals = []

    # -- conversions ---------------------------------------------------------------------

    def int_(self, v: Value, what: str, minimum: int = 1) -> int | None:
        if v.type != "int" or v.value is None:
            if v.type == "int":
                self.error(f"{what} is too large to be a number; received {v.describe()}", v.span)
                return None
            if v.type == "float" and math.isfinite(v.value) and float(v.value).is_integer():
                return self.int_(Value("int", int(v.value), v.text, v.span), what, minimum)
            self.error(f"{what} must be a whole number; received {v.describe()}", v.span)
            return None
        if v.value < minimum:
            self.error(f"{what} must be at least {minimum}; received {v.value}", v.span)
            return None
        return v.value

    def float_(self, v: Value, what: str, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float | None:
        if v.type not in ("int", "float") or v.value is None:
            self.error(f"{what} must be a number; received {v.describe()}", v.span)
            return None
        x = float(v.value)
        if not math.isfinite(x):
            self.error(f"{what} must be a finite number; received {v.describe()}", v.span)
            return None
        too_low = low is not None and (x <= low if low_open else x < low)
        too_high = high is not None and (x >= high if high_open else x > high)
        if too_low or too_high:
            lo = "" if low is None else (f"above {low:g}" if low_open else f"at least {low:g}")
            hi = "" if high is None else (f"below {high:g}" if high_open else f"at most {high:g}")
            self.error(f"{what} must be {' and '.join(p for p in (lo, hi) if p)}; received {v.text}", v.span)
            return None
        return x

    def bool_(self, v: Value, what: str) -> bool | None:
        if v.type == "word" and v.value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return v.value.lower() in ("true", "yes", "on")
        if v.type == "int" and v.value in (0, 1):
            return bool(v.value)
        self.error(f"{what} must be true or false; received {v.describe()}", v.span)
        return None

    def seed(self, v: Value, what: str = "seed") -> int | None:
        seed = self.int_(v, what, minimum=0)
        if seed is not None and seed >= 2**63:  # Keras keeps seeds in an int64
            self.error(f"{what} must be below 2**63; received {seed}", v.span)
            return None
        return seed

    def shape(self, v: Value) -> tuple[int, ...] | None:
        if v.type == "int":
            dims = (v.value,)
        elif v.type == "dims":
            dims = v.value
        elif v.type == "tuple" and v.value and all(i.type == "int" for i in v.value):
            dims = tuple(i.value for i in v.value)
        else:
            self.error(f"expected a shape such as 784, 28x28 or (28, 28); received {v.describe()}", v.span)
            return None
        if dims is None or any(d is None for d in dims):
            self.error(f"a dimension of {v.describe()} is too large", v.span)
            return None
        if any(d < 1 for d in dims):
            self.error(f"every dimension of a shape must be at least 1; received {v.describe()}", v.span)
            return None
        return tuple(dims)

    def pair(self, v: Value, what: str) -> tuple[int, int] | None:
        """`3` (square), `3x3`, `3x2` or `(3, 2)`."""
        if v.type == "int":
            n = self.int_(v, what)
            return None if n is None else (n, n)
        if v.type == "dims" or v.type == "tuple":
            dims = self.shape(v)
            if dims is None:
                return None
            if len(dims) != 2:
                self.error(f"{what} must have two numbers (height x width); received {v.describe()}", v.span)
                return None
            return dims  # type: ignore[return-value]
        self.error(f"{what} must be a size such as 3 or 3x3; received {v.describe()}", v.span)
        return None

    def choice(self, v: Value, what: str, choices: Iterable[str], aliases: dict[str, str] | None = None) -> str | None:
        choices = tuple(choices)
        if v.type in ("word", "string"):
            found = _canonical(v.value, choices, aliases or {})
            if found:
                return found
        self.error(f"unknown {what} {v.describe()}; expected {one_of(choices)}", v.span,
                   hint=did_you_mean(str(v.value), choices) if v.type == "word" else None)
        return None

    def name(self, v: Value, what: str) -> str | None:
        if v.type not in ("word", "string"):
            self.error(f"{what} must be a name or a quoted string; received {v.describe()}", v.span)
            return None
        if not v.value or "/" in v.value:
            self.error(f"{what} must be non-empty and may not contain '/'; received {v.describe()}", v.span)
            return None
        return v.value

    def initializer(self, arg: Value | Call, what: str) -> ir.Initializer | None:
        if isinstance(arg, Value):
            name = self.choice(arg, "initializer", ir.INITIALIZERS, INITIALIZER_ALIASES) if arg.type == "word" else None
            if arg.type != "word":
                self.error(f"{what} must be an initializer such as he_normal or he_normal(seed=1); "
                           f"received {arg.describe()}", arg.span)
            return None if name is None else ir.Initializer.construct_checked(name=name, span=arg.span)
        name = _canonical(arg.name, ir.INITIALIZERS, INITIALIZER_ALIASES)
        if name is None:
            self.error(f"unknown initializer '{arg.name}'; expected {one_of(ir.INITIALIZERS)}", arg.span,
                       hint=did_you_mean(arg.name, ir.INITIALIZERS))
            return None
        allowed = ("seed",) + tuple(ir.INITIALIZER_ARGS[name])
        if name in ir.SEEDLESS_INITIALIZERS:
            allowed = ()
        fields: dict[str, Any] = {}
        for a in arg.args:
            if not isinstance(a, Option):
                self.error(f"{name}() takes named arguments such as seed=1; received {_describe(a)}", a.span)
                continue
            if a.key not in allowed:
                self.error(f"{name}() has no argument '{a.key}'; "
                           + (f"expected {one_of(allowed)}" if allowed else "it takes no arguments"),
                           a.key_span, hint=did_you_mean(a.key, allowed) if allowed else None)
                continue
            if a.key == "seed":
                fields["seed"] = self.seed(a.value)
            else:
                positive = a.key == "stddev"
                fields[a.key] = self.float_(a.value, a.key, low=0.0 if positive else None, low_open=positive)
        if any(v is None for v in fields.values()):
            return None
        try:
            return ir.Initializer.construct_checked(name=name, span=arg.span, **fields)
        except ValueError as e:
            self.error(_pydantic_message(e), arg.span)
            return None

    # -- options -------------------------------------------------------------------------

    def take(self, *keys: str) -> Option | None:
        """The option written under any of these spellings (first is canonical)."""
        found = [self.options.pop(k) for k in keys if k in self.options]
        if len(found) > 1:
            self.error(f"'{found[1].key}' repeats '{found[0].key}'", found[1].key_span)
        return found[0] if found else None

    def unknown_leftovers(self, allowed_words: Iterable[str] = (), allowed_options: Iterable[str] = (),
                          words_described: str | None = None) -> None:
        """Report every argument no handler consumed. `words_described` replaces the list of
        allowed words in the message when that list is long (an activation, an initializer...)."""
        allowed_options = tuple(allowed_options)
        for opt in self.options.values():
            expected = f"; {self.kw} takes {one_of(allowed_options)}" if allowed_options else f"; {self.kw} takes no options"
            self.error(f"unknown option '{opt.key}'{expected}", opt.key_span,
                       hint=did_you_mean(opt.key, allowed_options) if allowed_options else None)
        allowed_words = tuple(allowed_words)
        for w in self.words:
            if w.value in KEYWORDS and w.value not in allowed_words:
                hint = "separate statements with a new line or ';'"
            else:
                hint = did_you_mean(w.value, allowed_words) if allowed_words else None
            if words_described:
                what = f"expected {words_described}"
            elif allowed_words:
                what = f"{self.kw} takes {one_of(allowed_words)}"
            else:
                what = f"{self.kw} takes no words"
            self.error(f"unknown word '{w.value}' in {self.kw}; {what}", w.span, hint=hint)
        for c in self.calls:
            self.error(f"unexpected call '{c.name}(...)' in {self.kw}", c.span)
        self.options, self.words, self.calls = {}, [], []


def _describe(a: Any) -> str:
    if a is None:
        return "nothing"
    if isinstance(a, Value):
        return a.describe()
    return f"'{a.text}'"


def _join(a: Span, b: Span) -> Span:
    return Span(a.line, a.column, b.end_line, b.end_column)


def _pydantic_message(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        msgs = [str(err.get("msg", "")).removeprefix("Value error, ") for err in errors()]
        return "; ".join(msgs)
    return str(e)


# ---------------------------------------------------------------------------------------
# Statements


class _Builder:
    """Turns statements into a Spec, one handler method per keyword."""

    def __init__(self, default_name: str, path: str | None) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.default_name = default_name
        self.path = path
        self.model_name: tuple[str, Span] | None = None
        self.input: tuple[tuple[int, ...] | None, Span] | None = None  # None shape: invalid, reported
        self.layers: list[Any] = []
        self.first_layer_span: Span | None = None
        self.training: dict[str, tuple[Any, Span]] = {}
        self.ok = True

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.ok = False
        self.diagnostics.append(Diagnostic("error", message, span, hint=hint, code="spec"))

    def hint_for_extra(self, kw: str) -> str | None:
        if kw in LAYER_KEYWORDS:
            return "separate statements with a new line or ';'"
        return None

    # -- driver --------------------------------------------------------------------------

    def build(self, statements: list[Statement], complete: bool = True) -> ir.Spec | None:
        """The spec, or None. `complete` is False when lines were lost to syntax errors:
        then a missing input or layer may be on those lines, and is not reported."""
        for st in statements:
            self.statement(st)
        if not complete:
            return None
        return self.finish(statements)

    def statement(self, st: Statement) -> None:
        kw = st.keyword
        handler: Callable[[_Reader], Any] | None = getattr(self, "st_" + kw, None) if kw in KEYWORDS else None
        if handler is None:
            hint = (f"did you mean '{KEYWORD_HINTS[kw]}'?" if kw in KEYWORD_HINTS
                    else did_you_mean(kw, KEYWORDS))
            self.error(f"unknown statement '{kw}'; expected a layer ({', '.join(LAYER_KEYWORDS[:9])}, "
                       "an activation) or model, input, optimizer, loss, metrics, fit", st.keyword_span, hint)
            return
        r = _Reader(self, st)
        name_opt = r.take("name") if kw in LAYER_KEYWORDS else None
        try:
            result = handler(r)
        except _Skip:
            if kw not in LAYER_KEYWORDS:
                return
            result = None  # still a layer: its place and its `in` count, so no error follows from it
        if kw in LAYER_KEYWORDS:
            self.add_layer(r, result, name_opt)
        elif r.input_shape is not None:
            r.error(f"'in' is written on the first layer, not on {kw}", r.input_shape[1])

    def add_layer(self, r: _Reader, fields: dict[str, Any] | None, name_opt: Option | None) -> None:
        if name_opt is not None:
            name = r.name(name_opt.value, "a layer name")
            if fields is not None and name is not None:
                fields["name"] = name
        if r.input_shape is not None:
            shape, span = r.input_shape
            if self.layers or self.first_layer_span is not None:
                r.error("only the first layer may declare its input with 'in'", span,
                        hint="give the input once, on the first layer or as an `input` statement")
            elif self.input is not None:
                r.error("the input shape is already given by the `input` statement", span,
                        hint=f"remove one of them (the `input` statement is on line {self.input[1].line})")
            else:
                self.input = (shape, span)
        if self.first_layer_span is None:
            self.first_layer_span = r.st.span
        if fields is None:
            return
        r.unknown_leftovers()
        if not self.ok:
            return  # a spec with errors is never built; keep collecting diagnostics
        cls = ir.LAYER_CLASSES[fields.pop("kind")]
        try:
            self.layers.append(cls.construct_checked(span=r.st.span, **fields))
        except ValueError as e:
            r.error(f"invalid {r.kw}: {_pydantic_message(e)}", r.st.span)

    def finish(self, statements: list[Statement]) -> ir.Spec | None:
        if self.first_layer_span is None:
            end = statements[-1].span if statements else Span(1, 1, 1, 2)
            self.error("the spec has no layers; expected at least one, such as `dense 10 softmax`", end,
                       hint="a minimal spec: `dense 10 softmax in 784`")
        elif self.input is None:
            self.error("the model has no input shape; expected `input SHAPE` or `in SHAPE` on the first layer",
                       self.first_layer_span, hint="for example `input 784`, `input 28x28` or `dense 512 in 784`")
        if not self.ok:
            return None
        name = self.model_name[0] if self.model_name else self.default_name
        if "/" in name or not name:
            name = "sequential"
        training = {k: v[0] for k, v in self.training.items()}
        spans = {k: v[1] for k, v in self.training.items()}
        if self.model_name:
            spans["model"] = self.model_name[1]
        spans["input"] = self.input[1]  # type: ignore[index]
        try:
            return ir.Spec.construct_checked(name=name, input_shape=self.input[0], layers=tuple(self.layers),  # type: ignore[index]
                                            statement_spans=spans, **training)
        except ValueError as e:
            self.error(f"invalid spec: {_pydantic_message(e)}", None)
            return None

    def once(self, r: _Reader, key: str) -> None:
        if key in self.training:
            r.fail(f"'{r.kw}' is given twice", r.st.keyword_span,
                   hint=f"first given on line {self.training[key][1].line}")

    # -- model and input -----------------------------------------------------------------

    def st_model(self, r: _Reader) -> None:
        if self.model_name is not None:
            r.fail("'model' is given twice", r.st.keyword_span, hint=f"first given on line {self.model_name[1].line}")
        if not r.positionals and len(r.words) == 1:
            r.positionals = r.words
            r.words = []
        v = r.positional("a name", "model mnist_mlp")
        name = r.name(v, "the model name") if v else None
        r.no_more_positionals()
        r.unknown_leftovers()
        if name is not None:
            self.model_name = (name, r.st.span)

    def st_input(self, r: _Reader) -> None:
        if self.input is not None:
            r.fail("the input shape is given twice", r.st.keyword_span,
                   hint=f"first given on line {self.input[1].line}")
        if self.first_layer_span is not None:
            r.fail("`input` must come before the first layer", r.st.keyword_span,
                   hint=f"move it above line {self.first_layer_span.line}")
        # Recorded even when the shape is invalid (its error is reported, and the spec is
        # rejected), so that "the model has no input shape" does not follow.
        self.input = (None, r.st.span)
        v = r.positional("a shape", "input 784, input 28x28 or input (28, 28)")
        shape = r.shape(v) if v else None
        r.no_more_positionals()
        r.unknown_leftovers()
        self.input = (shape, r.st.span)

    # -- layers: each returns the IR fields, or None when an error was reported ----------

    def _activation_word(self, r: _Reader, fields: dict[str, Any], allowed: tuple[str, ...]) -> None:
        """Bare words of dense and conv2d: an activation, an initializer, nobias, l1, l2."""
        leftover = []
        for w in r.words:
            act = _canonical(w.value, ir.ACTIVATIONS, ACTIVATION_ALIASES)
            init = _canonical(w.value, ir.INITIALIZERS, INITIALIZER_ALIASES)
            if act is not None:
                self._set_once(r, fields, "activation", act, w)
            elif init is not None:
                self._set_once(r, fields, "kernel_initializer", ir.Initializer.construct_checked(name=init, span=w.span), w)
            elif w.value == "nobias":
                fields["use_bias"] = False
            elif w.value in ("l1", "l2"):
                reg = fields.setdefault("_reg", {})
                reg[w.value] = 0.01
            else:
                leftover.append(w)
        r.words = leftover
        for c in r.calls:
            init = r.initializer(c, "kernel initializer")
            if init is not None:
                self._set_once(r, fields, "kernel_initializer", init, c)
        r.calls = []
        for key in ("l1", "l2"):
            opt = r.take(key)
            if opt is not None:
                value = r.float_(opt.value, key, low=0.0)
                if value is not None:
                    fields.setdefault("_reg", {})[key] = value
        if "_reg" in fields:
            fields["kernel_regularizer"] = ir.Regularizer.construct_checked(**fields.pop("_reg"))
        opt = r.take("activation")
        if opt is not None:
            act = r.choice(opt.value, "activation", ir.ACTIVATIONS, ACTIVATION_ALIASES)
            if act is not None:
                self._set_once(r, fields, "activation", act, opt)
        opt = r.take("kernel_initializer", "kernel_init", "init")
        if opt is not None:
            init = r.initializer(opt.value, "kernel_initializer")
            if init is not None:
                self._set_once(r, fields, "kernel_initializer", init, opt)
        opt = r.take("bias_initializer", "bias_init")
        if opt is not None:
            init = r.initializer(opt.value, "bias_initializer")
            if init is not None and init.name == "orthogonal":
                r.error("orthogonal needs a weight of rank 2 or more; a bias is a vector", opt.value.span,
                        hint="use zeros (the default), ones or a random initializer for biases")
            elif init is not None:
                fields["bias_initializer"] = init
        opt = r.take("use_bias")
        if opt is not None:
            value = r.bool_(opt.value, "use_bias")
            if value is not None:
                fields["use_bias"] = value and fields.get("use_bias", True)
        r.unknown_leftovers(allowed + ir.ACTIVATIONS + ("nobias", "l1", "l2") + ir.INITIALIZERS,
                            _WEIGHTED_OPTIONS + self._extra_options(r.kw),
                            words_described="an activation (relu, softmax, ...), an initializer (he_normal, ...), "
                                            "nobias, l1 or l2")

    @staticmethod
    def _extra_options(kw: str) -> tuple[str, ...]:
        return ("strides", "padding") if kw == "conv2d" else ("units",)

    def _set_once(self, r: _Reader, fields: dict[str, Any], key: str, value: Any, node: Any) -> None:
        if key in fields:
            previous = fields[key]
            shown = previous.name if isinstance(previous, ir.Initializer) else previous
            r.error(f"{r.kw} takes one {key.replace('_', ' ')}; received '{shown}' and {_describe(node)}",
                    node.span)
            return
        fields[key] = value

    def st_dense(self, r: _Reader) -> dict[str, Any] | None:
        units_opt = r.take("units")
        v = units_opt.value if units_opt else r.positional("a number of units", "dense 64 relu")
        units = r.int_(v, "the number of units")  # type: ignore[arg-type]
        r.no_more_positionals()
        fields: dict[str, Any] = {"kind": "dense", "units": units}
        self._activation_word(r, fields, ())
        return fields if units is not None else None

    def st_conv2d(self, r: _Reader) -> dict[str, Any] | None:
        v = r.positional("a number of filters and a kernel size", "conv2d 32 3x3 relu")
        filters = r.int_(v, "the number of filters")  # type: ignore[arg-type]
        k = r.positional("a kernel size", "conv2d 32 3x3 relu")
        kernel = r.pair(k, "the kernel size")  # type: ignore[arg-type]
        r.no_more_positionals()
        fields: dict[str, Any] = {"kind": "conv2d", "filters": filters, "kernel_size": kernel}
        self._strides_padding(r, fields)
        self._activation_word(r, fields, ())
        return fields if filters is not None and kernel is not None else None

    def _strides_padding(self, r: _Reader, fields: dict[str, Any]) -> None:
        opt = r.take("stride", "strides")
        if opt is not None:
            s = r.pair(opt.value, "the stride")
            if s is not None:
                fields["strides"] = s
        opt = r.take("padding")
        if opt is not None:
            p = r.choice(opt.value, "padding", ("valid", "same"))
            if p is not None:
                fields["padding"] = p
        for w in list(r.words):
            if w.value in ("valid", "same"):
                r.words.remove(w)
                fields["padding"] = w.value

    def _pool(self, r: _Reader, kind: str) -> dict[str, Any]:
        v = r.positional("a pool size", f"{kind} 2x2", required=False)
        fields: dict[str, Any] = {"kind": kind}
        if v is not None:
            size = r.pair(v, "the pool size")
            if size is not None:
                fields["pool_size"] = size
        r.no_more_positionals()
        self._strides_padding(r, fields)
        r.unknown_leftovers(("valid", "same"), ("stride", "strides", "padding", "name"))
        return fields

    def st_maxpool2d(self, r: _Reader) -> dict[str, Any]:
        return self._pool(r, "maxpool2d")

    def st_avgpool2d(self, r: _Reader) -> dict[str, Any]:
        return self._pool(r, "avgpool2d")

    def st_globalavgpool2d(self, r: _Reader) -> dict[str, Any]:
        r.no_more_positionals()
        r.unknown_leftovers((), ("name",))
        return {"kind": "globalavgpool2d"}

    def st_flatten(self, r: _Reader) -> dict[str, Any]:
        r.no_more_positionals()
        r.unknown_leftovers((), ("name",))
        return {"kind": "flatten"}

    def st_dropout(self, r: _Reader) -> dict[str, Any] | None:
        opt = r.take("rate")
        v = opt.value if opt else r.positional("a rate between 0 and 1", "dropout 0.5")
        rate = r.float_(v, "the dropout rate", 0.0, 1.0)  # type: ignore[arg-type]
        r.no_more_positionals()
        fields: dict[str, Any] = {"kind": "dropout", "rate": rate}
        opt = r.take("seed")
        if opt is not None:
            fields["seed"] = r.seed(opt.value)
        r.unknown_leftovers((), ("rate", "seed", "name"))
        return fields if rate is not None and fields.get("seed", 0) is not None else None

    def st_batchnorm(self, r: _Reader) -> dict[str, Any] | None:
        r.no_more_positionals()
        fields: dict[str, Any] = {"kind": "batchnorm"}
        ok = True
        opt = r.take("momentum")
        if opt is not None:
            fields["momentum"] = r.float_(opt.value, "momentum", 0.0, 1.0)
            ok &= fields["momentum"] is not None
        opt = r.take("epsilon", "eps")
        if opt is not None:
            fields["epsilon"] = r.float_(opt.value, "epsilon", 0.0, low_open=True)
            ok &= fields["epsilon"] is not None
        r.unknown_leftovers((), ("momentum", "epsilon", "name"))
        return fields if ok else None

    def st_leaky_relu(self, r: _Reader) -> dict[str, Any] | None:
        opt = r.take("negative_slope", "alpha", "slope")
        v = opt.value if opt else r.positional("a slope", "leaky_relu 0.3", required=False)
        fields: dict[str, Any] = {"kind": "leaky_relu"}
        if v is not None:
            fields["negative_slope"] = r.float_(v, "the negative slope", 0.0)
        r.no_more_positionals()
        r.unknown_leftovers((), ("negative_slope", "name"))
        return None if fields.get("negative_slope", 0.0) is None else fields

    def _activation_layer(self, r: _Reader) -> dict[str, Any]:
        r.no_more_positionals()
        r.unknown_leftovers((), ("name",))
        return {"kind": "activation", "activation": r.kw}

    # -- training ------------------------------------------------------------------------

    def st_optimizer(self, r: _Reader) -> None:
        self.once(r, "optimizer")
        if not r.positionals and r.words:
            r.positionals = [r.words.pop(0)]
        v = r.positional("a name", "optimizer adam learning_rate=0.001")
        name = r.choice(v, "optimizer", ir.OPTIMIZERS, OPTIMIZER_ALIASES)  # type: ignore[arg-type]
        r.no_more_positionals()
        if name is None:
            raise _Skip
        allowed = tuple(ir.OPTIMIZER_DEFAULTS[name])
        hp: dict[str, Any] = {}
        for key, opt in list(r.options.items()):
            canon = HYPERPARAMETER_ALIASES.get(key, key)
            if canon not in allowed:
                hint = did_you_mean(key, allowed + ("lr",))
                if canon in ir.HYPERPARAMETERS:
                    hint = f"{name} takes {one_of(allowed)}"
                r.error(f"{name} has no hyperparameter '{key}'", opt.key_span, hint=hint)
                continue
            if canon in hp:
                r.error(f"'{key}' repeats '{canon}'", opt.key_span)
                continue
            if canon in ("nesterov", "centered"):
                hp[canon] = r.bool_(opt.value, canon)
            elif canon == "learning_rate":
                hp[canon] = r.float_(opt.value, canon, 0.0, low_open=True)
            elif canon in ("momentum", "rho"):
                hp[canon] = r.float_(opt.value, canon, 0.0, 1.0)
            elif canon in ("beta_1", "beta_2"):
                hp[canon] = r.float_(opt.value, canon, 0.0, 1.0, high_open=True)
            else:
                hp[canon] = r.float_(opt.value, canon, 0.0)
        r.options = {}
        r.unknown_leftovers((), allowed)
        if any(v is None for v in hp.values()):
            raise _Skip
        self.training["optimizer"] = (ir.Optimizer.construct_checked(name=name, span=r.st.span, **hp), r.st.span)

    def st_loss(self, r: _Reader) -> None:
        self.once(r, "loss")
        if not r.positionals and r.words:
            r.positionals = [r.words.pop(0)]
        v = r.positional("a name", "loss categorical_crossentropy")
        name = r.choice(v, "loss", ir.LOSSES, LOSS_ALIASES)  # type: ignore[arg-type]
        r.no_more_positionals()
        delta = None
        if name == "huber":
            opt = r.take("delta")
            if opt is not None:
                delta = r.float_(opt.value, "delta", 0.0, low_open=True)
                if delta is None:
                    raise _Skip
        r.unknown_leftovers((), ("delta",) if name == "huber" else ())
        if name is not None:
            self.training["loss"] = (ir.Loss.construct_checked(name=name, delta=delta, span=r.st.span), r.st.span)

    def st_metrics(self, r: _Reader) -> None:
        self.once(r, "metrics")
        names = []
        values = r.words + r.positionals
        values.sort(key=lambda v: (v.span.line, v.span.column))
        r.words, r.positionals = [], []
        if not values:
            r.fail("metrics needs at least one name; received nothing", r.st.span,
                   hint="for example: metrics accuracy")
        for v in values:
            m = r.choice(v, "metric", ir.METRICS)
            if m is not None:
                if m in names:
                    r.error(f"metric '{m}' is listed twice", v.span)
                names.append(m)
        r.unknown_leftovers()
        self.training["metrics"] = (tuple(names), r.st.span)

    def st_fit(self, r: _Reader) -> None:
        self.once(r, "fit")
        r.no_more_positionals()
        fields: dict[str, Any] = {}
        spellings = {"batch_size": ("batch", "batch_size"), "epochs": ("epochs",),
                     "validation_split": ("validation", "validation_split"), "shuffle": ("shuffle",),
                     "seed": ("seed",)}
        for key, names in spellings.items():
            opt = r.take(*names)
            if opt is None:
                continue
            if key == "batch_size":
                fields[key] = r.int_(opt.value, "the batch size")
            elif key == "epochs":
                fields[key] = r.int_(opt.value, "the number of epochs", minimum=0)
            elif key == "validation_split":
                fields[key] = r.float_(opt.value, "the validation fraction", 0.0, 1.0, high_open=True)
            elif key == "shuffle":
                fields[key] = r.bool_(opt.value, "shuffle")
            else:
                fields[key] = r.seed(opt.value)
        r.unknown_leftovers((), ("batch", "epochs", "validation", "shuffle", "seed"))
        if any(v is None for v in fields.values()):
            raise _Skip
        self.training["fit"] = (ir.Fit.construct_checked(span=r.st.span, **fields), r.st.span)


_WEIGHTED_OPTIONS = ("activation", "kernel_initializer", "bias_initializer", "use_bias", "l1", "l2", "name")

for _act in ir.ACTIVATIONS:
    if _act != "leaky_relu":
        setattr(_Builder, "st_" + _act, _Builder._activation_layer)
