"""Reading a statement's arguments: turning literals into ints, shapes, initializers...,
and saying exactly what was expected and what was received when they don't fit.

`Reader` holds one statement's arguments as its handler consumes them; `read_layer` reads
any layer kind from the `Arg` declarations of its IR class (modelspec.layers), so no layer
kind has reading code of its own.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Iterable

from . import ir
from .diagnostics import Span, did_you_mean, one_of
from .layers import LAYER_CLASSES, RECURRENT_TYPES, Arg, layer_args, snake_case
from .nodes import ACTIVATION_ALIASES, INITIALIZER_ALIASES
from .layers import LAYER_KEYWORDS as LAYER_KEYWORDS_TO_CLASS
from .syntax import Call, Option, Statement, Value

# ---------------------------------------------------------------------------------------
# Keywords

NON_FINITE = frozenset({"nan", "inf", "infinity"})  # read as words; named as numbers in messages

LAYER_KEYWORDS = tuple(LAYER_KEYWORDS_TO_CLASS)
TRAINING_KEYWORDS = ("optimizer", "loss", "metrics", "fit", "early_stopping", "reduce_lr_on_plateau")
KEYWORDS = ("model", "input") + LAYER_KEYWORDS + TRAINING_KEYWORDS + ("repeat", "block")
# Keras's layer class names and auto names, and common spellings, mapped to our keyword,
# for hints only.
KEYWORD_HINTS = {
    **{cls.keras_class: kind for kind, cls in LAYER_CLASSES.items() if kind != "activation"},
    **{snake_case(cls.keras_class): kind for kind, cls in LAYER_CLASSES.items() if kind != "activation"},
    "conv": "conv2d", "batchnormalization": "batchnorm", "bn": "batchnorm", "maxpool": "maxpool2d",
    "avgpool": "avgpool2d", "linear_layer": "dense", "Input": "input", "inputs": "input",
    "compile": "optimizer", "metric": "metrics", "train": "fit",
    "EarlyStopping": "early_stopping", "earlystopping": "early_stopping", "early_stop": "early_stopping",
    "ReduceLROnPlateau": "reduce_lr_on_plateau", "reduce_lr": "reduce_lr_on_plateau",
}


def _canonical(word: str, names: Iterable[str], aliases: dict[str, str]) -> str | None:
    if word in aliases:
        return aliases[word]
    return word if word in names else None


class _Skip(Exception):
    """Raised inside a statement handler after an error was recorded: drop the statement."""


class Reader:
    """The arguments of one statement, consumed by its handler, with error reporting."""

    def __init__(self, builder: Any, st: Statement) -> None:
        self.b = builder
        self.st = st
        self.kw = st.keyword
        self.positionals: list[Value] = []
        self.words: list[Value] = []
        self.options: dict[str, Option] = {}
        self.calls: list[Call] = []
        self.input_shape: tuple[tuple[int, ...] | None, Span] | None = None
        self.input_dtype = "float32"
        # in a block's body: ids of the values a parameter put in (modelspec.structure.substitute),
        # and which fields they set
        self.substituted: dict[int, tuple[str, Any]] = {}
        self.params_of: dict[str, str] = {}
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
                    after = args[i + 1] if i + 1 < len(args) else None
                    if isinstance(after, Value) and after.type == "word" and after.value == "int":
                        self.input_dtype = "int32"  # `embedding 1000 16 in 20 int`
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
        for w in self.words:  # `dense nan`: a number that is not finite is a word to the grammar
            if w.value.lower() in NON_FINITE:
                self.words.remove(w)
                return w
        if required:
            self.fail(f"{self.kw} needs {what}; received nothing", self.st.span,
                      hint=f"for example: {example}")
        return None

    def no_more_positionals(self) -> None:
        for v in self.positionals:
            self.error(f"{self.kw} takes no further value; received {v.describe()}", v.span,
                       hint="separate statements with a new line or ';'" if self.kw in LAYER_KEYWORDS else None)
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
        if v.type == "word" and v.value.lower() in NON_FINITE:
            self.error(f"{what} must be a finite number; received {v.describe()}", v.span)
            return None
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

    def fraction(self, v: Value, what: str) -> float | None:
        """A number, or a fraction such as 1/255 or 1/127.5 (Keras users write scale=1./255),
        divided in float64 as Python divides `1./255`."""
        if v.type != "fraction":
            if v.type not in ("int", "float") and not (v.type == "word" and v.value.lower() in NON_FINITE):
                self.error(f"{what} must be a number or a fraction such as 1/255; received {v.describe()}", v.span)
                return None
            return self.float_(v, what)
        top, bottom = v.value
        if bottom == 0:
            self.error(f"{what} divides by zero; received {v.describe()}", v.span)
            return None
        x = top / bottom
        if not math.isfinite(x):
            self.error(f"{what} must be a finite number; received {v.describe()}", v.span)
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

    def shape(self, v: Value, free: bool = False) -> tuple[int, ...] | None:
        """`784`, `28x28` or `(28, 28)`; with `free`, one dimension may be -1 (Keras's Reshape)."""
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
        if free and dims.count(-1) > 1:
            self.error(f"only one dimension may be -1 (the one that makes the sizes agree); received "
                       f"{v.describe()}", v.span)
            return None
        if any(d < 1 and not (free and d == -1) for d in dims):
            self.error(f"every dimension of a shape must be at least 1{', or -1' if free else ''}; received "
                       f"{v.describe()}", v.span)
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

    def padding2d(self, v: Value, what: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Keras's ZeroPadding2D padding: `1` (all sides), `1x2` or `(1, 2)` (rows, columns),
        or `((top, bottom), (left, right))`."""
        def whole(x: Any) -> int | None:
            return x.value if x.type == "int" and x.value is not None and x.value >= 0 else None

        if v.type == "int":
            n = whole(v)
            pair = None if n is None else (n, n)
        elif v.type == "dims" and len(v.value) == 2 and None not in v.value:
            pair = tuple(v.value)
        elif v.type == "tuple" and len(v.value) == 2 and all(whole(x) is not None for x in v.value):
            pair = tuple(x.value for x in v.value)
        elif v.type == "tuple" and len(v.value) == 2 and all(
                x.type == "tuple" and len(x.value) == 2 and all(whole(y) is not None for y in x.value)
                for x in v.value):
            return tuple(tuple(y.value for y in x.value) for x in v.value)  # type: ignore[return-value]
        else:
            pair = None
        if pair is None:
            self.error(f"{what} must be whole numbers of at least 0, such as 1, 1x2 or ((0, 1), (0, 1)); "
                       f"received {v.describe()}", v.span)
            return None
        return (pair[0], pair[0]), (pair[1], pair[1])

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
# Layers, from their classes' declarations

# How a bare word of each reading is described in "unknown word" messages.
_WORD_DESCRIPTIONS = {"activation": "an activation (relu, softmax, ...)",
                      "initializer": "an initializer (he_normal, ...)", "regularizer": "l1 or l2"}
_WORD_ALIASES = {"activation": ACTIVATION_ALIASES, "initializer": INITIALIZER_ALIASES}


@functools.cache
def _plan(kind: str) -> tuple[tuple, tuple, tuple, tuple, str | None]:
    """A kind's declarations as read_layer walks them: (positional args, the others, the
    bare words it takes, the options it takes, what its words are, for messages)."""
    args = layer_args(LAYER_CLASSES[kind])
    positional = tuple((f, a) for f, a in args if a.positional or a.read == "keyword")
    others = tuple((f, a) for f, a in args if not (a.positional or a.read == "keyword"))
    words = tuple(w for _, a in args for w in a.words)
    options = tuple(a.keys[0] for _, a in others if a.keys) + ("name",) + tuple(
        a.keys[0] for _, a in positional if a.keys)
    described = ", ".join(d for _, a in args if a.words and (d := _describe_words(a)))
    return positional, others, words, options, described or None


def read_layer(r: Reader, kind: str, wrapper_options: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The IR fields of a layer statement, read as its class declares (modelspec.layers.Arg);
    None when an error was reported. Raises _Skip when the statement cannot be read on. A
    wrapped layer's (`wrapper_options`: its wrapper's own) has no name of its own."""
    positional, others, words, options, described = _plan(kind)
    if wrapper_options is not None:
        options = tuple(o for o in options if o != "name") + wrapper_options
    fields: dict[str, Any] = {"kind": kind}
    ok = True
    for field, arg in positional:  # in order; an option spelling wins
        if arg.read == "layer":
            ok &= _set(r, fields, field, arg, _wrapped_layer(r, arg, others), r.st)
            continue
        if arg.read == "keyword":
            fields[field] = r.kw
            continue
        opt = r.take(*arg.keys) if arg.keys else None
        if opt is None and arg.read == "fraction" and not r.positionals and not words and r.words:
            r.positionals.append(r.words.pop(0))  # `rescale abc`: a value that is not a number
        v = opt.value if opt else r.positional(arg.needs or arg.what.removeprefix("the "), arg.example,
                                               required=arg.needs is not None)
        ok &= v is None or _set(r, fields, field, arg, read_value(r, arg, v), opt or v)
    r.no_more_positionals()
    for field, arg in others:
        if arg.read == "regularizer":
            ok &= _regularizer(r, fields, field, arg)
            continue
        if arg.words and r.words:
            for w in list(r.words):
                value = _word_value(arg, w)
                if value is not None:
                    r.words.remove(w)
                    _set(r, fields, field, arg, value, w)
        if arg.read == "initializer" and arg.words and r.calls:  # he_normal(seed=1) is a call
            for c in r.calls:
                ok &= _set(r, fields, field, arg, r.initializer(c, arg.what.replace("_", " ")), c)
            r.calls = []
        opt = r.take(*arg.keys) if arg.keys and r.options else None
        if opt is not None:
            value = read_value(r, arg, opt.value)
            if arg.read == "flag" and value is not None and field in fields:
                value = fields[field]  # nobias and use_bias=true: no bias; the word wins
            ok &= _set(r, fields, field, arg, value, opt)
        elif arg.needs and field not in fields:  # a required option: `attention heads=4 key_dim=16`
            r.error(f"{r.kw} needs {arg.needs}; received nothing", r.st.span, hint=f"for example: {arg.example}")
            ok = False
    if r.options or r.words or r.calls:
        r.unknown_leftovers(words, options, words_described=described)
    return fields if ok else None


def _wrapped_layer(r: Reader, arg: Arg, own: tuple) -> Any:
    """The layer a wrapper statement (`bidirectional gru 6 merge=sum`) wraps: its first bare
    word is the wrapped layer's keyword, and everything after that is not the wrapper's own
    option (`own`) is the wrapped layer's. None when it cannot be read (reported)."""
    wrappable = {cls.model_fields["kind"].default for cls in RECURRENT_TYPES}
    word = r.words[0] if r.words else None
    if word is None or word.value not in wrappable:
        got = word.describe() if word is not None else _describe(r.positionals[0] if r.positionals else None)
        r.fail(f"{r.kw} needs {arg.needs}; received {got}", word.span if word is not None else r.st.span,
               hint=f"for example: {arg.example}")
    inner = copy.copy(r)
    inner.kw, inner.words = f"{r.kw} {word.value}", r.words[1:]  # messages: "bidirectional lstm takes ..."
    own_keys = {k for _, a in own for k in a.keys}
    inner.options = {k: o for k, o in r.options.items() if k not in own_keys}
    r.options = {k: o for k, o in r.options.items() if k in own_keys}
    r.words, r.positionals, r.calls = [], [], []
    fields = read_layer(inner, word.value, tuple(a.keys[0] for _, a in own if a.keys))
    if fields is None:
        return None
    cls = LAYER_CLASSES[fields.pop("kind")]
    try:
        return cls.construct_checked(span=r.st.span, **fields)
    except ValueError as e:
        r.error(f"invalid {inner.kw}: {_pydantic_message(e)}", r.st.span)
        return None


def read_value(r: Reader, arg: Arg, v: Any) -> Any:
    """A value as `arg` reads it; None (with the error reported) when it doesn't fit."""
    if arg.read == "int":
        return r.int_(v, arg.what, minimum=arg.minimum)
    if arg.read == "float":
        return r.float_(v, arg.what, arg.low, arg.high, arg.low_open, arg.high_open)
    if arg.read == "fraction":
        return r.fraction(v, arg.what)
    if arg.read == "seed":
        return r.seed(v)
    if arg.read == "pair":
        return r.pair(v, arg.what)
    if arg.read == "padding2d":
        return r.padding2d(v, arg.what)
    if arg.read == "target_shape":
        return r.shape(v, free=True)
    if arg.read == "choice":
        return r.choice(v, arg.what, arg.choices or arg.words)
    if arg.read == "activation":
        return r.choice(v, "activation", ir.ACTIVATIONS, ACTIVATION_ALIASES)
    if arg.read == "initializer":
        init = r.initializer(v, arg.what)
        if init is not None and "bias" in arg.what and init.name == "orthogonal":
            r.error("orthogonal needs a weight of rank 2 or more; a bias is a vector", v.span,
                    hint="use zeros (the default), ones or a random initializer for biases")
            return None
        return init
    if arg.read == "flag":
        return r.bool_(v, arg.what)
    raise AssertionError(f"no reading '{arg.read}'")


def _word_value(arg: Arg, word: Value) -> Any:
    """What a bare word sets the option to, or None when the word is not this option's."""
    if arg.read == "flag":
        return arg.word_value if word.value in arg.words else None  # `nobias`, `mask_zero`
    found = _canonical(word.value, arg.words, _WORD_ALIASES.get(arg.read, {}))
    if found is not None and arg.read == "initializer":
        return ir.Initializer.construct_checked(name=found, span=word.span)
    return found


def _describe_words(arg: Arg) -> str | None:
    if arg.read == "flag":
        return " or ".join(arg.words)
    return _WORD_DESCRIPTIONS.get(arg.read)


def _set(r: Reader, fields: dict[str, Any], field: str, arg: Arg, value: Any, node: Any) -> bool:
    """Record a value that was read (False when it was not: its error is reported)."""
    if value is None:
        return False
    if r.substituted:
        found = r.substituted.get(id(node.value if isinstance(node, Option) else node))
        if found is not None:
            r.params_of[field] = found[0]
    if arg.once and field in fields:
        previous = fields[field]
        shown = previous.name if isinstance(previous, ir.Initializer) else previous
        r.error(f"{r.kw} takes one {field.replace('_', ' ')}; received '{shown}' and {_describe(node)}",
                node.span)
        return True
    fields[field] = value
    return True


def _regularizer(r: Reader, fields: dict[str, Any], field: str, arg: Arg) -> bool:
    """`l1`, `l2` (0.01 each, as Keras's L1L2 strings), `l1=F`, `l2=F`: one L1L2 regularizer."""
    amounts: dict[str, float] = {}
    if not (r.words or r.options):
        return True
    for w in [w for w in r.words if w.value in arg.words]:
        r.words.remove(w)
        amounts[w.value] = 0.01
    ok = True
    for key in arg.keys:
        opt = r.take(key)
        if opt is not None:
            value = r.float_(opt.value, key, low=0.0)
            ok &= value is not None
            if value is not None:
                amounts[key] = value
    if amounts:
        fields[field] = ir.Regularizer.construct_checked(**amounts)
    return ok
