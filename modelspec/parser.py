"""From statements to the IR: the spec's statements and what each accepts.

`parse` reads the text (modelspec.syntax), then a `Builder` turns each statement into IR:
layers through their classes' declarations (modelspec.reader.read_layer), `model`,
`input` and the training statements through one handler each (`st_optimizer`, ...).
Every error is collected; the spec is rejected with all of them at once, in source order.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import ir
from .diagnostics import Diagnostic, Span, SpecError, did_you_mean, one_of, sort_diagnostics
from .layers import LAYER_CLASSES
from .layers import LAYER_KEYWORDS as LAYER_KEYWORDS_TO_CLASS, layer_class
from .nodes import HYPERPARAMETER_ALIASES, LOSS_ALIASES, OPTIMIZER_ALIASES
from .reader import KEYWORD_HINTS, KEYWORDS, LAYER_KEYWORDS, Reader, _Skip, _pydantic_message, read_layer
from .structure import BODY_KEYWORDS, Block, BlockUse, Item, nest, substitute
from .syntax import Brace, Call, Option, Statement, Value, parse_statements

# Limits that keep a runaway input from exhausting memory: ten times the largest spec the
# benchmarks check (benchmarks/check_latency.py: 10,000 layers, about 0.2 MB).
MAX_SPEC_BYTES = 2 * 1024 * 1024
MAX_LAYERS = 50_000

# The layer kinds named in "unknown statement": a kind with many keywords (Activation) as a phrase.
_LAYERS_LISTED = ", ".join(next(iter(cls.keywords())) if len(cls.keywords()) == 1 else "an activation"
                           for cls in LAYER_CLASSES.values() if cls.keywords())


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


class _TooMany(Exception):
    """Raised when expansion passes MAX_LAYERS (reported): stop reading."""


@dataclass
class Scope:
    """Where a statement is read: the file, or one use of a block."""

    refs: dict[str, int | None]  # reference -> layer index (None: its statement had an error)
    input: int  # what `in` is: -1 for the model's input, else the layer feeding the block
    prev: int  # the previous output
    nested: bool = False
    values: dict[str, Value] = field(default_factory=dict)  # the block's parameters
    parent_use: int | None = None  # the block use this scope is
    substituted: dict[int, tuple[str, Value]] = field(default_factory=dict)
    params_of: list[tuple[int, tuple[tuple[str, str], ...]]] = field(default_factory=list)
    later: dict[str, int] = field(default_factory=dict)  # references bound anywhere in the scope: line


def _bindings(items: list[Item]) -> dict[str, int]:
    """Every reference bound in `items` (repeat bodies included, block definitions not): its line."""
    found: dict[str, int] = {}
    for item in items:
        if item.st.binding:
            found.setdefault(item.st.binding[0], item.st.binding[1].line)
        if item.body is not None and item.st.keyword == "repeat":
            for name, line in _bindings(item.body).items():
                found.setdefault(name, line)
    return found


def _written_as_graph(items: list[Item]) -> bool:
    """Whether the spec uses references, bodies or merges: then `fmt` prints its statements as written."""
    for item in items:
        st = item.st
        if item.body is not None or st.binding or st.keyword in BODY_KEYWORDS or \
                getattr(LAYER_KEYWORDS_TO_CLASS.get(st.keyword), "merges", False) or \
                any(isinstance(a, Option) and a.key == "from" for a in st.args):
            return True
    return False


def _canonical_schedule(name: str) -> str | None:
    if name in ir.SCHEDULES:
        return name
    return next((k for k, cls in ir.SCHEDULE_CLASSES.items() if cls == name), None)


def _schedule_signature(name: str) -> str:
    parts = []
    for key, default in ir.SCHEDULE_ARGS[name].items():
        parts.append(key if default is ir.REQUIRED else f"{key}={str(default).lower() if isinstance(default, bool) else default}")
    return f"{name}({', '.join(parts)})"


def _describe_value(a: Any) -> str:
    return a.describe() if hasattr(a, "describe") else repr(a)


def _schedule_value(r: Reader, name: str, key: str, v: Any) -> Any:
    """One argument of a schedule, read as Keras takes it; None after an error."""
    if isinstance(v, Call):
        r.error(f"{name}(): {key} must be a value; received {v.describe()}", v.span)
        return None
    if key in ("boundaries", "values"):
        if v.type != "list":
            r.error(f"{name}(): {key} must be a list such as [100, 200]; received {v.describe()}", v.span,
                    hint=_schedule_signature(name))
            return None
        if not v.value:
            r.error(f"{name}(): {key} must not be empty", v.span)
            return None
        if key == "boundaries":
            items = [r.int_(x, "a boundary (an optimizer step)", minimum=0) for x in v.value]
        else:
            items = [r.float_(x, "a learning rate", 0.0, low_open=True) for x in v.value]
        return None if any(x is None for x in items) else tuple(items)
    if key in ("staircase", "cycle"):
        return r.bool_(v, key)
    if key == "decay_steps":
        return r.int_(v, "decay_steps")
    if key == "warmup_steps":
        return r.int_(v, "warmup_steps", minimum=0)
    if key in ("initial_learning_rate", "decay_rate", "warmup_target"):
        return r.float_(v, key, 0.0, low_open=True)
    if key == "end_learning_rate":
        return r.float_(v, key, 0.0)
    if key == "alpha":
        return r.float_(v, key, 0.0, 1.0)
    return r.float_(v, key)  # power


def _signature(block: Block) -> str:
    params = [p if p not in block.defaults else f"{p}={block.defaults[p].text}" for p in block.params]
    return f"{block.name} is defined as block {block.name}({', '.join(params)}) on line {block.item.st.span.line}"


class Builder:
    """Turns statements into a Spec, one handler method per keyword."""

    def __init__(self, default_name: str, path: str | None) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.default_name = default_name
        self.path = path
        self.model_name: tuple[str, Span] | None = None
        self.input: tuple[tuple[int, ...] | None, Span] | None = None  # None shape: invalid, reported
        self.input_dtype = "float32"
        self.layers: list[Any] = []
        self.first_layer_span: Span | None = None
        self.training: dict[str, tuple[Any, Span]] = {}
        self.monitors: dict[str, tuple[str, Span]] = {}  # each callback's monitor, where it was written
        self.ok = True
        # the graph: what each layer reads, the blocks, their uses
        self.count = 0  # layer statements read, with or without errors: the next layer's index
        self.connections: list[tuple[int, ...]] = []
        self.chain = True  # every layer reads the one before it
        self.blocks: dict[str, Block] = {}
        self.uses: list[BlockUse | None] = []
        self.items: list[Item] = []
        self.top_scope = Scope({}, -1, -1)

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.ok = False
        self.diagnostics.append(Diagnostic("error", message, span, hint=hint, code="spec"))

    # -- driver --------------------------------------------------------------------------

    def build(self, statements: list[Statement | Brace], complete: bool = True) -> ir.Spec | None:
        """The spec, or None. `complete` is False when lines were lost to syntax errors:
        then a missing input or layer may be on those lines, and is not reported."""
        items, errors = nest(statements)
        for d in errors:
            self.ok = False
            self.diagnostics.append(d)
        self.items = items
        for item in items:
            if item.st.keyword == "block":
                self.define(item)
        try:
            self.run(items, self.top_scope, ())
        except _TooMany:
            return None
        if not complete:
            return None
        return self.finish([s for s in statements if isinstance(s, Statement)])

    def run(self, items: list[Item], scope: "Scope", uses: tuple[str, ...], inside: bool = False) -> None:
        """Read `items` in order: layers join the graph at `scope`; repeats and block uses expand.
        `uses` names the blocks being expanded, innermost last (a block may not use itself);
        `inside` says the items are a body."""
        scope.later.update(_bindings(items))
        for item in items:
            st = substitute(item.st, scope.values, scope.substituted)
            if st.keyword == "{":
                continue  # a stray body, already reported
            if st.keyword == "block":
                if inside:
                    self.error("a block is defined at the top level of the spec, not inside a body",
                               st.keyword_span, hint="move the definition out of the braces")
                continue
            if st.keyword == "repeat":
                self.repeat(st, item, scope, uses)
            elif st.keyword in self.blocks and st.keyword not in LAYER_KEYWORDS_TO_CLASS:
                self.use(st, item, scope, uses)
            elif item.body is not None:
                continue  # reported by nest
            else:
                self.statement(st, scope, nested=inside)

    def statement(self, st: Statement, scope: "Scope", nested: bool) -> None:
        """A statement that is not a body: a layer joins the graph at `scope`; the others (top
        level only, not `nested` in a body) set the model, its input or its training."""
        kw = st.keyword
        handler: Callable[[Reader], Any] | None
        if kw in LAYER_KEYWORDS:
            cls = layer_class(kw, [a.key for a in st.args if isinstance(a, Option)])
            handler = functools.partial(read_layer, kind=cls.model_fields["kind"].default)
        else:
            handler = getattr(self, "st_" + kw, None) if kw in KEYWORDS and kw not in BODY_KEYWORDS else None
        if handler is None:
            hint = (f"did you mean '{KEYWORD_HINTS[kw]}'?" if kw in KEYWORD_HINTS
                    else did_you_mean(kw, KEYWORDS + tuple(self.blocks)))
            blocks = f", a block ({', '.join(self.blocks)})" if self.blocks else ""
            self.error(f"unknown statement '{kw}'; expected a layer ({_LAYERS_LISTED}){blocks} or model, input, "
                       "optimizer, loss, metrics, fit, early_stopping, reduce_lr_on_plateau, repeat, block",
                       st.keyword_span, hint)
            if st.binding:
                scope.refs[st.binding[0]] = None
            return
        if kw not in LAYER_KEYWORDS:
            if st.binding:
                self.error(f"only a layer's or a block's output can be bound to a reference; received '{kw}'",
                           st.binding[1], hint=f"remove '{st.binding[0]} ='")
            if nested:
                self.error(f"'{kw}' is written at the top level of the spec, not inside a body",
                           st.keyword_span, hint="move it out of the braces")
                return
        sources = None
        if kw in LAYER_KEYWORDS:
            sources, st = self.wiring_of(st, scope)
        r = Reader(self, st)
        r.substituted = scope.substituted
        name_opt = r.take("name") if kw in LAYER_KEYWORDS else None
        try:
            result = handler(r)
        except _Skip:
            if kw not in LAYER_KEYWORDS:
                return
            result = None  # still a layer: its place and its `in` count, so no error follows from it
        if kw in LAYER_KEYWORDS:
            self.add_layer(r, result, name_opt, sources, scope)
        elif r.input_shape is not None:
            r.error(f"'in' is written on the first layer, not on {kw}", r.input_shape[1])

    # -- the graph -----------------------------------------------------------------------

    def wiring_of(self, st: Statement, scope: "Scope") -> tuple[tuple[int, ...] | None, Statement]:
        """The layers a layer statement reads (-1: the model's input), None after an error, and
        the statement without its references (`from=REF`, a merge's operands)."""
        cls = LAYER_KEYWORDS_TO_CLASS[st.keyword]
        ok = True
        refs: list[Value] = []
        rest = []
        for a in st.args:
            if isinstance(a, Option) and a.key == "from":
                if cls.merges:
                    self.error(f"{st.keyword} names its inputs; 'from' is for layers that read one",
                               a.key_span, hint=f"list every input: {st.keyword} a b")
                    ok = False
                elif refs:
                    self.error("'from' is given twice", a.key_span)
                    ok = False
                elif a.value.type != "word":
                    self.error(f"from= names a reference or 'in'; received {a.value.describe()}", a.value.span,
                               hint="bind a layer's output first: `h = dense 64`, then `from=h`")
                    ok = False
                else:
                    refs.append(a.value)
                continue
            if cls.merges and isinstance(a, Value) and a.type == "word":
                refs.append(a)
                continue
            rest.append(a)
        rest_st = Statement(st.keyword, st.keyword_span, rest, st.binding)
        sources = []
        for ref in refs:
            index = self.resolve(ref, scope)
            ok &= index is not None
            sources.append(index)
        if not ok:
            return None, rest_st
        if cls.merges:
            if not refs:
                self.error(f"{st.keyword} needs the references it merges; received none", st.span,
                           hint=f"for example `{st.keyword} h` (the previous output and h) or `{st.keyword} a b`")
                return None, rest_st
            if len(refs) == 1:
                sources.insert(0, scope.prev)
            if cls.most_inputs is not None and len(sources) != cls.most_inputs:
                self.error(f"{st.keyword} takes exactly {cls.most_inputs} inputs; received {len(sources)}",
                           refs[-1].span, hint=f"`{st.keyword} h` is the previous output minus h; "
                                               f"`{st.keyword} a b` is a minus b")
                return None, rest_st
            return tuple(sources), rest_st
        return (tuple(sources) if sources else (scope.prev,)), rest_st

    def resolve(self, ref: Value, scope: "Scope") -> int | None:
        name = ref.value
        if name == "in":
            return scope.input
        if name in scope.refs:
            index = scope.refs[name]
            if index is None:
                self.ok = False  # its statement had an error, already reported
            return index
        if name in scope.later:
            self.error(f"'{name}' is used before it is bound; it is bound on line {scope.later[name]}", ref.span,
                       hint="a layer can only read what comes before it")
            return None
        hint = did_you_mean(name, [*scope.refs, "in"])
        where = "this block" if scope.nested else "the spec"
        known = ["in", *scope.refs]
        listed = ", ".join(f"'{n}'" for n in known[:-1]) + f" and '{known[-1]}'" if len(known) > 1 else "only 'in'"
        self.error(f"unknown reference '{name}'; the references of {where} here are {listed}", ref.span,
                   hint=hint or "bind a layer's output first: `h = dense 64`, then `from=h`")
        return None

    def repeat(self, st: Statement, item: Item, scope: "Scope", uses: tuple[str, ...]) -> None:
        """`repeat N { ... }`: the body read N times in the same scope (`st` is the statement
        with the enclosing block's parameters set: N may be one)."""
        r = Reader(self, st)
        r.substituted = scope.substituted
        try:
            v = r.positional("a number of repeats", "repeat 3 { dense 64 relu }")
            times = r.int_(v, "the number of repeats", minimum=1) if v is not None else None
            r.no_more_positionals()
            r.unknown_leftovers()
        except _Skip:
            times = None
        if st.binding:
            self.error("a repeat's output is its last layer's; bind that layer instead", st.binding[1],
                       hint=f"write '{st.binding[0]} =' before the last statement of the body")
        if item.body is None:
            self.error("repeat needs a body in braces; received none", st.span,
                       hint="for example: repeat 3 { dense 64 relu }")
            return
        for _ in range(times or 1):  # with an error, the body is still read once, for its own errors
            self.run(item.body, scope, uses, inside=True)

    def define(self, item: Item) -> None:
        st = item.st
        call = st.args[0] if st.args and isinstance(st.args[0], Call) else None
        if call is None or len(st.args) > 1:
            where = st.args[0].span if st.args else st.keyword_span
            self.error("a block is defined as `block NAME(PARAMETER, ...) { ... }`", where,
                       hint="for example: block residual(filters) { conv2d filters 3x3 padding=same; add in }")
            return
        name = call.name
        if name in LAYER_KEYWORDS or name in KEYWORDS or name == "in":
            self.error(f"a block may not be named '{name}', which is a keyword", call.span,
                       hint="choose another name, such as residual or conv_block")
            return
        if name in self.blocks:
            first = self.blocks[name].item.st.span.line
            self.error(f"the block '{name}' is defined twice", call.span, hint=f"first defined on line {first}")
            return
        params, defaults = [], {}
        for a in call.args:
            if isinstance(a, Option):
                key, default = a.key, a.value
                span = a.key_span
            elif a.type == "word":
                key, default, span = a.value, None, a.span
                if defaults:
                    self.error(f"the parameter '{key}' without a default follows one with a default", span,
                               hint="put parameters with defaults last, as in Python")
            else:
                self.error(f"a block's parameter is a name; received {a.describe()}", a.span)
                continue
            if key in params:
                self.error(f"the parameter '{key}' is listed twice", span)
                continue
            if key == "in" or key in ("from", "name"):
                self.error(f"a parameter may not be named '{key}'", span)
                continue
            params.append(key)
            if default is not None:
                defaults[key] = default
        if item.body is None:
            self.error(f"the block '{name}' needs a body in braces", st.span,
                       hint=f"block {call.text} {{ dense 64 relu }}")
            return
        self.blocks[name] = Block(name, params, defaults, item)

    def use(self, st: Statement, item: Item, scope: "Scope", uses: tuple[str, ...]) -> None:
        """A block used like a layer: its body, read in a scope of its own whose input is the
        previous output (or `from=REF`), with the parameters set."""
        block = self.blocks[st.keyword]
        if block.name in uses:
            chain = " -> ".join((*uses[uses.index(block.name):], block.name))
            self.error(f"the block '{block.name}' uses itself ({chain})", st.keyword_span,
                       hint="a block cannot contain itself; use repeat for a stack of them")
            return
        if item.body is not None:
            self.error(f"'{block.name}' is a block use; it takes no body", item.open)
        values: dict[str, Value] = {}
        source: int | None = scope.prev
        positional = [a for a in st.args if isinstance(a, Value)]
        ok = True
        for a in st.args:
            if isinstance(a, Option):
                if a.key == "from":
                    source = self.resolve(a.value, scope) if a.value.type == "word" else None
                    ok &= source is not None
                elif a.key not in block.params:
                    self.error(f"the block '{block.name}' has no parameter '{a.key}'", a.key_span,
                               hint=did_you_mean(a.key, block.params) or _signature(block))
                    ok = False
                elif a.key in values:
                    self.error(f"the parameter '{a.key}' is given twice", a.key_span)
                    ok = False
                else:
                    values[a.key] = a.value
            elif isinstance(a, Call):
                self.error(f"unexpected call '{a.name}(...)' in a use of '{block.name}'", a.span,
                           hint=_signature(block))
                ok = False
        if len(positional) > len(block.params):
            extra = positional[len(block.params)]
            self.error(f"the block '{block.name}' takes {len(block.params)} argument"
                       f"{'s' if len(block.params) != 1 else ''}; received {len(positional)}", extra.span,
                       hint=_signature(block))
            ok = False
        for param, v in zip(block.params, positional):
            if param in values:
                self.error(f"the parameter '{param}' is given twice", v.span, hint=_signature(block))
                ok = False
            values[param] = v
        missing = [p for p in block.params if p not in values and p not in block.defaults]
        if missing:
            self.error(f"the block '{block.name}' needs {one_of(missing)}; received no value for "
                       f"{'them' if len(missing) > 1 else 'it'}", st.span, hint=_signature(block))
            ok = False
        if not ok:
            if st.binding:
                scope.refs[st.binding[0]] = None
            return
        for param, default in block.defaults.items():
            values.setdefault(param, default)
        block.uses += 1
        start = self.count
        use_index = len(self.uses)
        self.uses.append(None)  # its place, so nested uses number after it
        inner = Scope({}, source, source, nested=True, values=values, parent_use=use_index,
                      substituted=scope.substituted)
        self.run(block.item.body or [], inner, (*uses, block.name), inside=True)
        arguments = tuple((p, values[p].text) for p in block.params)
        self.uses[use_index] = BlockUse(block.name, arguments, start, self.count, st.span, scope.parent_use,
                                        tuple(inner.params_of))
        scope.prev = inner.prev
        if st.binding:
            self.bind(st.binding, inner.prev, scope)

    def bind(self, binding: tuple[str, Span], index: int | None, scope: "Scope") -> None:
        name, span = binding
        if name == "in":
            self.error("'in' is the model's input (inside a block, the block's); it cannot be bound",
                       span, hint="choose another name, such as h or skip")
            return
        scope.refs[name] = index

    def add_layer(self, r: Reader, fields: dict[str, Any] | None, name_opt: Option | None,
                  sources: tuple[int, ...] | None, scope: "Scope") -> None:
        index = self.count
        self.count += 1
        if self.count > MAX_LAYERS:
            self.error(f"the spec has more than {MAX_LAYERS:,} layers, the limit", r.st.keyword_span,
                       hint="is the file generated by mistake, or a repeat count mistyped?")
            raise _TooMany
        if r.st.binding:
            self.bind(r.st.binding, index if sources is not None else None, scope)
        scope.prev = index
        if sources is None:
            self.ok = False  # the error is reported
        else:
            self.connections.append(sources)
            # self-attention reads its input twice, `mha(x, x)`, which Keras's Sequential cannot call
            if any(s != index - 1 for s in sources) or len(sources) != 1 or \
                    LAYER_KEYWORDS_TO_CLASS[r.kw].reads_input_times > 1:
                self.chain = False
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
                self.input_dtype = r.input_dtype
        if self.first_layer_span is None:
            self.first_layer_span = r.st.span
        if fields is None:
            return
        r.unknown_leftovers()
        if r.params_of:
            scope.params_of.append((index, tuple(r.params_of.items())))
        if not self.ok:
            return  # a spec with errors is never built; keep collecting diagnostics
        cls = ir.LAYER_CLASSES[fields.pop("kind")]
        try:
            self.layers.append(cls.construct_checked(span=r.st.span, **fields))
        except ValueError as e:
            r.error(f"invalid {r.kw}: {_pydantic_message(e)}", r.st.span)

    def finish(self, statements: list[Statement]) -> ir.Spec | None:
        self.check_callbacks()
        if self.first_layer_span is None and self.ok:  # (after another error, it is that error's doing)
            end = statements[-1].span if statements else Span(1, 1, 1, 2)
            self.error("the spec has no layers; expected at least one, such as `dense 10 softmax`", end,
                       hint="a minimal spec: `dense 10 softmax in 784`")
        elif self.input is None and self.first_layer_span is not None:
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
            graph = {} if self.chain else {"connections": tuple(self.connections)}
            if self.uses or _written_as_graph(self.items):
                graph.update(blocks=tuple(self.uses), syntax=tuple(self.items))
            return ir.Spec.construct_checked(name=name, input_shape=self.input[0], input_dtype=self.input_dtype,  # type: ignore[index]
                                            layers=tuple(self.layers), statement_spans=spans, **graph, **training)
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
        for w in [w for w in r.words if w.value in ("int", "float")]:  # `input 20 int`: token ids
            r.words.remove(w)
            self.input_dtype = "int32" if w.value == "int" else "float32"
        r.unknown_leftovers(("int", "float"), words_described="int (token ids) or float (the default)")
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
        allowed = tuple(ir.OPTIMIZER_DEFAULTS[name]) + ir.CLIPPING
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
            if canon == "learning_rate" and isinstance(opt.value, Call):
                hp[canon] = self.schedule(r, opt.value)
            elif isinstance(opt.value, Call):
                r.error(f"{canon} must be a number; received {opt.value.describe()}", opt.value.span)
                hp[canon] = None
            elif canon in ("nesterov", "centered"):
                hp[canon] = r.bool_(opt.value, canon)
            elif canon == "learning_rate":
                hp[canon] = r.float_(opt.value, canon, 0.0, low_open=True)
            elif canon in ir.CLIPPING:
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
        clipping = [k for k in ir.CLIPPING if k in hp]
        if len(clipping) > 1:
            r.fail(f"only one of clipnorm, clipvalue and global_clipnorm can be set; received {' and '.join(clipping)}",
                   r.st.span, hint="Keras clips by one rule; keep the one you mean")
        self.training["optimizer"] = (ir.Optimizer.construct_checked(name=name, span=r.st.span, **hp), r.st.span)

    def schedule(self, r: Reader, call: Call) -> ir.Schedule | None:
        """`exponential_decay(0.1, decay_steps=100, decay_rate=0.96)`: Keras's schedule, its
        arguments by Keras's names, the positional ones in Keras's order."""
        name = _canonical_schedule(call.name)
        if name is None:
            r.error(f"unknown learning-rate schedule '{call.name}'; expected {one_of(ir.SCHEDULES)}", call.span,
                    hint=did_you_mean(call.name, ir.SCHEDULES) or "or a number, such as lr=0.01")
            return None
        order = tuple(ir.SCHEDULE_ARGS[name])
        fields: dict[str, Any] = {}
        positional = 0
        ok = True
        for a in call.args:
            if isinstance(a, Option):
                key, value, span = a.key, a.value, a.key_span
                if key == "initial_learning_rate" and name == "piecewise_constant_decay":
                    key = ""  # (reported below as unknown)
            else:
                if positional >= len(order):
                    r.error(f"{name}() takes at most {len(order)} values without a name; received "
                            f"{_describe_value(a)}", a.span, hint=_schedule_signature(name))
                    ok = False
                    continue
                key, value, span = order[positional], a, a.span
                positional += 1
            if key not in order:
                r.error(f"{name}() has no argument '{a.key if isinstance(a, Option) else key}'; expected "
                        f"{one_of(order)}", span, hint=did_you_mean(getattr(a, "key", ""), order))
                ok = False
                continue
            if key in fields:
                r.error(f"{name}(): '{key}' is given twice", span, hint=_schedule_signature(name))
                ok = False
                continue
            fields[key] = _schedule_value(r, name, key, value)
            ok &= fields[key] is not None
        if not ok:
            return None
        missing = [k for k, v in ir.SCHEDULE_ARGS[name].items() if v is ir.REQUIRED and k not in fields]
        if missing:
            r.error(f"{name}() needs {' and '.join(missing)}; received no value for "
                    f"{'them' if len(missing) > 1 else 'it'}", call.span, hint=_schedule_signature(name))
            return None
        try:
            return ir.Schedule.construct_checked(name=name, span=call.span, **fields)
        except ValueError as e:
            r.error(f"{name}(): {_pydantic_message(e)}", call.span, hint=_schedule_signature(name))
            return None

    def st_loss(self, r: Reader) -> None:
        self.once(r, "loss")
        if not r.positionals and r.words:
            r.positionals = [r.words.pop(0)]
        v = r.positional("a name", "loss categorical_crossentropy")
        name = r.choice(v, "loss", ir.LOSSES, LOSS_ALIASES)  # type: ignore[arg-type]
        r.no_more_positionals()
        if name is None:
            raise _Skip
        fields: dict[str, Any] = {}
        allowed: tuple[str, ...] = ()
        if name == "huber":
            allowed = ("delta",)
            opt = r.take("delta")
            if opt is not None:
                fields["delta"] = r.float_(opt.value, "delta", 0.0, low_open=True)
        if name in ir.CROSSENTROPY_LOSSES:
            allowed = ("from_logits",)
            word = next((w for w in r.words if w.value == "from_logits"), None)
            opt = r.take("from_logits")
            if word is not None:
                r.words.remove(word)
                fields["from_logits"] = True
            if opt is not None:
                fields["from_logits"] = r.bool_(opt.value, "from_logits")
        if name in ("categorical_crossentropy", "binary_crossentropy"):
            allowed += ("label_smoothing",)
            opt = r.take("label_smoothing")
            if opt is not None:
                fields["label_smoothing"] = r.float_(opt.value, "label_smoothing", 0.0, 1.0)
        r.unknown_leftovers(("from_logits",) if "from_logits" in allowed else (), allowed)
        if any(v is None for v in fields.values()):
            raise _Skip
        self.training["loss"] = (ir.Loss.construct_checked(name=name, span=r.st.span, **fields), r.st.span)

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
        k = None
        opt = r.take("k")
        if opt is not None:
            k = r.int_(opt.value, "k, the number of top classes")
            if k is not None and not any(m in ir.TOP_K_METRICS for m in names):
                r.error("k is the option of the top-k metrics, and none is listed", opt.key_span,
                        hint="metrics top_k_categorical_accuracy k=3")
                k = None
        r.unknown_leftovers((), ("k",))
        self.training["metrics"] = (tuple(names), r.st.span)
        if k is not None:
            self.training["top_k"] = (k, opt.span)  # type: ignore[union-attr]

    def callback(self, r: Reader, key: str, node: type[ir.Node]) -> None:
        """`early_stopping ...` or `reduce_lr_on_plateau ...`: Keras's callback, its options
        by Keras's names (monitor, mode and its numbers)."""
        self.once(r, key)
        r.no_more_positionals()
        fields: dict[str, Any] = {}
        names = tuple(k for k in node.model_fields if k != "span")
        for w in list(r.words):
            if w.value in names and node.model_fields[w.value].annotation is bool:
                r.words.remove(w)
                fields[w.value] = True  # `restore_best_weights`
        for name in names:
            opt = r.take(name)
            if opt is None:
                continue
            if name in fields:
                r.error(f"'{name}' is given twice", opt.key_span)
                continue
            v = opt.value
            if isinstance(v, Call):
                r.error(f"{name} must be a {'name' if name == 'monitor' else 'number'}; received {v.describe()}",
                        v.span)
                fields[name] = None
            elif name == "monitor":
                fields[name] = r.name(v, "the monitored value") if v.type in ("word", "string") else None
                if v.type not in ("word", "string"):
                    r.error(f"monitor must be a name such as val_loss; received {v.describe()}", v.span)
            elif name == "mode":
                fields[name] = r.choice(v, "mode", ("auto", "min", "max"))
            elif name in ("patience", "start_from_epoch", "cooldown"):
                fields[name] = r.int_(v, name, minimum=0)
            elif name == "restore_best_weights":
                fields[name] = r.bool_(v, name)
            elif name == "factor":
                fields[name] = r.float_(v, "factor", 0.0, 1.0, high_open=True)
            elif name == "min_lr":
                fields[name] = r.float_(v, name, 0.0)
            else:
                fields[name] = r.float_(v, name)
            if name == "monitor" and fields[name] is not None:
                self.monitors[key] = (fields[name], v.span)
        r.unknown_leftovers(tuple(n for n in names if node.model_fields[n].annotation is bool), names)
        if any(v is None for v in fields.values()):
            raise _Skip
        self.monitors.setdefault(key, (node.model_fields["monitor"].default, r.st.keyword_span))
        self.training[key] = (node.construct_checked(span=r.st.span, **fields), r.st.span)

    def st_early_stopping(self, r: Reader) -> None:
        self.callback(r, "early_stopping", ir.EarlyStopping)

    def st_reduce_lr_on_plateau(self, r: Reader) -> None:
        self.callback(r, "reduce_lr_on_plateau", ir.ReduceLROnPlateau)

    def check_callbacks(self) -> None:
        """What the callbacks monitor must exist (an improvement direction too, for mode=auto),
        and ReduceLROnPlateau needs a learning rate it can set."""
        metrics = self.training.get("metrics", ((), None))[0]
        fit = self.training.get("fit", (None, None))[0]
        validation = bool(fit is not None and fit.validation_split)
        for key, (monitor, span) in self.monitors.items():
            if key not in self.training:
                continue
            base = monitor[4:] if monitor.startswith("val_") else monitor
            known = ("loss", *metrics)
            if base not in known:
                self.error(f"{key} monitors '{monitor}', which training does not report; expected "
                           f"{one_of([*known, *(f'val_{k}' for k in known)])}", span,
                           hint=did_you_mean(monitor, [*known, *(f"val_{k}" for k in known)]))
            elif monitor.startswith("val_") and not validation:
                self.error(f"{key} monitors '{monitor}', but training has no validation data: the spec's "
                           "`fit` has no validation split", span,
                           hint=f"add `fit validation=0.2`, or monitor {base} (monitor={base})")
        optimizer = self.training.get("optimizer", (None, None))[0]
        if "reduce_lr_on_plateau" in self.training and optimizer is not None and optimizer.schedule is not None:
            self.error("reduce_lr_on_plateau sets the learning rate, but the optimizer's is a schedule "
                       f"({optimizer.schedule.name}); Keras refuses it too (TypeError)",
                       self.training["reduce_lr_on_plateau"][1],
                       hint="use a constant learning rate with reduce_lr_on_plateau, or the schedule alone")

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
