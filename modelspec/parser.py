"""From statements to the IR: the spec's statements and what each accepts.

`parse` reads the text (modelspec.syntax), then a `Builder` turns each statement into IR:
layers through their classes' declarations (modelspec.reader.read_layer), `model`,
`input` and the training statements through one handler each (`st_optimizer`, ...).
Every error is collected; the spec is rejected with all of them at once, in source order.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from . import ir
from .diagnostics import Diagnostic, Span, SpecError, did_you_mean, one_of, sort_diagnostics
from .layers import LAYER_CLASSES
from .layers import LAYER_KEYWORDS as LAYER_KEYWORDS_TO_CLASS
from .nodes import HYPERPARAMETER_ALIASES, LOSS_ALIASES, OPTIMIZER_ALIASES
from .reader import KEYWORD_HINTS, KEYWORDS, LAYER_KEYWORDS, Reader, _Skip, _pydantic_message, read_layer
from .syntax import Option, Statement, parse_statements

# Limits that keep a runaway input from exhausting memory: ten times the largest spec the
# benchmarks check (benchmarks/check_latency.py: 10,000 layers, about 0.2 MB).
MAX_SPEC_BYTES = 2 * 1024 * 1024
MAX_LAYERS = 50_000

# The layer kinds named in "unknown statement": a kind with many keywords (Activation) as a phrase.
_LAYERS_LISTED = ", ".join(next(iter(cls.keywords())) if len(cls.keywords()) == 1 else "an activation"
                           for cls in LAYER_CLASSES.values())


# ---------------------------------------------------------------------------------------
# Public entry point


def parse(source: str | bytes | os.PathLike, *, name: str | None = None, file: str | None = None) -> ir.Spec:
    """Parse a spec from text, bytes, or a path to a `.ms` file. Raises SpecError. `file`
    names where text came from in diagnostics (`<stdin>`)."""
    text, path = _read(source)
    default_name = name or (Path(path).stem if path else "sequential")
    path = path or file
    statements, diagnostics = parse_statements(text)
    builder = Builder(default_name, path)
    spec = builder.build(statements, complete=not diagnostics)
    diagnostics = sort_diagnostics(d.with_file(path) for d in diagnostics + builder.diagnostics)
    if diagnostics or spec is None:
        raise SpecError(diagnostics or [Diagnostic("error", "invalid spec", file=path)], text)
    return spec.model_copy(update={"path": path, "source": text})


def _read(source: str | bytes | os.PathLike) -> tuple[str, str | None]:
    path: str | None = None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SPEC_BYTES + 1)  # /dev/zero or a runaway file: stop at the limit
        except OSError as e:
            raise SpecError([Diagnostic("error", f"cannot read the spec: {e.strerror or e}", file=path)]) from None
        _check_size(len(data), path)
        return _decode(data, path), path
    if isinstance(source, bytes):
        _check_size(len(source), None)
        return _decode(source, None), None
    if not isinstance(source, str):
        raise SpecError([Diagnostic("error", f"expected spec text, bytes or a path; received {type(source).__name__}")])
    _check_size(len(source.encode("utf-8", "surrogatepass")), None)
    return source, None


def _looks_like_path(source: str) -> bool:
    """A one-line string that names a file, or looks like a file name (`missing.ms`, `a/b`):
    spec text always has a statement keyword and no path separator outside quotes."""
    if "\n" in source or ";" in source or "\x00" in source or len(source) >= 4096 or source.strip() != source \
            or not source:
        return False
    return _is_file(source) or (" " not in source and (source.endswith(".ms") or os.sep in source))


def _check_size(size: int, path: str | None) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError([Diagnostic(
            "error", f"expected a spec of at most {MAX_SPEC_BYTES:,} bytes (2 MiB); received more",
            hint="a spec is a few lines of text; is this the right file?", code="limit", file=path)])


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
# Statements


class Builder:
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

    # -- driver --------------------------------------------------------------------------

    def build(self, statements: list[Statement], complete: bool = True) -> ir.Spec | None:
        """The spec, or None. `complete` is False when lines were lost to syntax errors:
        then a missing input or layer may be on those lines, and is not reported."""
        layers = [st for st in statements if st.keyword in LAYER_KEYWORDS]
        if len(layers) > MAX_LAYERS:
            self.error(f"the spec has {len(layers):,} layers; the limit is {MAX_LAYERS:,}",
                       layers[MAX_LAYERS].keyword_span, hint="is this file generated by mistake?")
            return None
        for st in statements:
            self.statement(st)
        if not complete:
            return None
        return self.finish(statements)

    def statement(self, st: Statement) -> None:
        kw = st.keyword
        handler: Callable[[Reader], Any] | None
        if kw in LAYER_KEYWORDS:
            handler = functools.partial(read_layer, kind=LAYER_KEYWORDS_TO_CLASS[kw].model_fields["kind"].default)
        else:
            handler = getattr(self, "st_" + kw, None) if kw in KEYWORDS else None
        if handler is None:
            hint = (f"did you mean '{KEYWORD_HINTS[kw]}'?" if kw in KEYWORD_HINTS
                    else did_you_mean(kw, KEYWORDS))
            self.error(f"unknown statement '{kw}'; expected a layer ({_LAYERS_LISTED}) or model, input, "
                       "optimizer, loss, metrics, fit", st.keyword_span, hint)
            return
        r = Reader(self, st)
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

    def add_layer(self, r: Reader, fields: dict[str, Any] | None, name_opt: Option | None) -> None:
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

    def once(self, r: Reader, key: str) -> None:
        if key in self.training:
            r.fail(f"'{r.kw}' is given twice", r.st.keyword_span,
                   hint=f"first given on line {self.training[key][1].line}")

    # -- model and input -----------------------------------------------------------------

    def st_model(self, r: Reader) -> None:
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

    def st_input(self, r: Reader) -> None:
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

    # -- training ------------------------------------------------------------------------

    def st_optimizer(self, r: Reader) -> None:
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

    def st_loss(self, r: Reader) -> None:
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

    def st_metrics(self, r: Reader) -> None:
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

    def st_fit(self, r: Reader) -> None:
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
