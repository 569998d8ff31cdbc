"""The canonical printer: IR back to text. `modelspec fmt` rewrites a file with it.

The canonical form has one statement per line: `model`, `input`, the layers, then the
training statements. Options equal to Keras's defaults are left out, so
parse(to_text(spec)) == spec for every spec, and to_text is idempotent.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from . import ir
from .layers import LAYER_VARIANTS, Arg, layer_args

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _name(text: str) -> str:
    if _IDENT.match(text) and text != "in":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _num(x: float) -> str:
    return repr(float(x))


def _fraction(x: float) -> str:
    """`1/255` for a float that is exactly 1/n (as `rescale 1/255` reads) and shorter so
    than as a decimal (0.5 stays 0.5); either way the text reads back to the same float."""
    decimal = _num(x)
    if x != 0 and abs(x) < 1:
        n = abs(1 / x)
        for text in (repr(float(round(n))), repr(round(n, 1))):
            fraction = f"{'-' if x < 0 else ''}1/{text.removesuffix('.0')}"
            if 1 / float(text) == abs(x) and len(fraction) < len(decimal):
                return fraction
    return decimal


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)


def _stride(dims: tuple[int, int]) -> str:
    return str(dims[0]) if dims[0] == dims[1] else _shape(dims)


def _init(init: ir.Initializer) -> str:
    args = [f"{k}={_num(getattr(init, k))}" for k in ("mean", "stddev", "minval", "maxval", "gain")
            if getattr(init, k) is not None]
    if init.seed is not None:
        args.insert(0, f"seed={init.seed}")
    return f"{init.name}({', '.join(args)})" if args else init.name


def _option(arg: Arg, value: Any) -> str:
    """A layer option's value as the parser reads it back."""
    if arg.read == "initializer":
        return _init(value)
    if arg.read == "layer":
        return layer_text(value)
    if arg.read == "pair":
        return _shape(value) if arg.printed == "positional" else _stride(value)
    if arg.read == "target_shape":
        return _shape(value)
    if arg.read == "padding2d":
        (top, bottom), (left, right) = value
        if top == bottom and left == right:
            return str(top) if top == left else f"{top}x{left}"
        return f"(({top}, {bottom}), ({left}, {right}))"
    if arg.read == "float":
        return _num(value)
    if arg.read == "fraction":
        return _fraction(value)
    return str(value)


def layer_text(layer: ir.LayerBase) -> str:
    """A layer's canonical statement, from its class's declarations (modelspec.layers.Arg)."""
    args = layer_args(type(layer))
    fields = type(layer).model_fields
    keyword = next((getattr(layer, f) for f, arg in args if arg.printed == "keyword"),
                   next((kw for kw, (_, cls) in LAYER_VARIANTS.items() if cls is type(layer)), layer.kind))
    parts: list[str] = [keyword]
    for field, arg in args:
        value = getattr(layer, field)
        default = value == fields[field].default
        if arg.printed == "keyword":
            continue
        if arg.read == "regularizer":
            if value is not None:
                parts += [f"{k}={_num(getattr(value, k))}" for k in arg.keys if getattr(value, k)]
                if not any(getattr(value, k) for k in arg.keys):
                    parts.append(f"{arg.keys[0]}=0.0")
        elif arg.printed == "positional" or (arg.printed == "positional?" and not default):
            parts.append(_option(arg, value))
        elif default and arg.printed != "always":
            continue
        elif arg.read == "flag" and arg.words:
            parts.append(arg.words[0])  # nobias
        elif arg.read == "flag":
            parts.append(f"{arg.keys[0]}={str(value).lower()}")
        elif arg.printed == "word":
            parts.append(_option(arg, value))
        else:
            parts.append(f"{arg.print_key or arg.keys[0]}={_option(arg, value)}")
    if layer.name is not None:
        parts.append(f"name={_name(layer.name)}")
    return " ".join(parts)


def to_text(spec: ir.Spec, source: str | None = None) -> str:
    """The canonical text of `spec`. With the `source` it was parsed from, its comments are
    kept: a comment line stays above the statement that follows it, a trailing comment
    stays on its statement's line. A spec written with blocks, repeats or references keeps
    them (`spec.syntax`); a graph built otherwise (an import) gets references of its own."""
    spans = spec.statement_spans
    head = [(spans.get("model"), f"model {_name(spec.name)}"),
            (spans.get("input"), f"input {_shape(spec.input_shape)}" + (" int" if spec.input_dtype == "int32" else ""))]
    training = [(node.span, text) for node, text in _training_lines(spec)]  # type: ignore[attr-defined]
    if spec.syntax is not None:
        lines = _as_written(spec, head, training)
    elif spec.connections:
        lines = head + _with_references(spec) + training
    else:
        lines = head + [(layer.span, layer_text(layer)) for layer in spec.layers] + training
    if source is None:
        return "\n".join(text for _, text in lines) + "\n"
    return _with_comments(lines, source)


def _refs_text(spec: ir.Spec, index: int, ref: Any) -> tuple[list[str], str]:
    """The references layer `index` is written with: a merge's operands, or a `from=`."""
    sources = spec.sources(index)
    if spec.layers[index].merges:
        if len(sources) == 2 and sources[0] == index - 1:
            return [ref(sources[1])], ""
        return [ref(s) for s in sources], ""
    return [], ("" if sources[0] == index - 1 else f" from={ref(sources[0])}")


def _with_layer_refs(text: str, refs: list[str], from_: str) -> str:
    keyword, _, rest = text.partition(" ")
    return " ".join([keyword, *refs, *([rest] if rest else [])]) + from_


def _with_references(spec: ir.Spec) -> list[tuple[Any, str]]:
    """A graph's layers with references named after the layers (Keras's names): bound where
    a layer is read other than by the next one, as its first input."""
    from .checker import layer_names

    from .reader import KEYWORDS

    names = layer_names(spec)
    idents: dict[int, str] = {}
    taken = {"in", *KEYWORDS}  # `conv2d = conv2d 8 3x3` would read badly: conv2d_out

    def ref(i: int) -> str:
        if i < 0:
            return "in"
        if i not in idents:
            ident = re.sub(r"[^0-9A-Za-z_]", "_", names[i])
            ident = ident if _IDENT.match(ident) else f"layer_{ident}"
            base, n = (ident, 1) if ident not in taken else (f"{ident}_out", 2)
            ident = base
            while ident in taken:
                ident, n = f"{base}_{n}", n + 1
            taken.add(ident)
            idents[i] = ident
        return idents[i]

    texts = []
    for i, layer in enumerate(spec.layers):
        refs, from_ = _refs_text(spec, i, ref)
        texts.append(_with_layer_refs(layer_text(layer), refs, from_))
    return [(layer.span, f"{idents[i]} = {text}" if i in idents else text)
            for i, (layer, text) in enumerate(zip(spec.layers, texts))]


def _as_written(spec: ir.Spec, head: list[tuple[Any, str]], training: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """The statements as the source nests them: blocks and repeats with their bodies
    indented, references and `from=` as written; layers outside blocks canonical, a block's
    body as written (its parameters stand for values)."""
    from .layers import LAYER_KEYWORDS
    from .structure import BODY_KEYWORDS

    layers = {}
    for layer in spec.layers:  # the first layer a statement became (a repeat makes several)
        if layer.span is not None:
            layers.setdefault((layer.span.line, layer.span.column), layer)
    training_by_kind = {text.split(" ", 1)[0]: (span, text) for span, text in training}
    lines: list[tuple[Any, str]] = []
    seen = set()

    def words(st: Any) -> list[str]:
        return [a.text for a in st.args]

    def walk(items: list[Any], depth: int, in_block: bool) -> None:
        pad = "  " * depth
        for item in items:
            st = item.st
            bound = f"{st.binding[0]} = " if st.binding else ""
            if st.keyword in ("model", "input") and not depth:
                lines.append(next(line for line in head if line[1].startswith(st.keyword)))
                seen.add(st.keyword)
                continue
            if st.keyword in training_by_kind and not depth:
                lines.append(training_by_kind[st.keyword])
                continue
            layer = layers.get((st.span.line, st.span.column)) if not in_block else None
            if st.keyword in LAYER_KEYWORDS and layer is not None:
                refs = [a.text for a in st.args if getattr(a, "type", None) == "word"] if layer.merges else []
                from_ = next((f" from={a.value.text}" for a in st.args if getattr(a, "key", None) == "from"), "")
                text = _with_layer_refs(layer_text(layer), refs, from_)
            else:
                text = " ".join([st.keyword, *words(st)])
            if item.body is not None or st.keyword in BODY_KEYWORDS:
                lines.append((st.span, f"{pad}{bound}{text} {{"))
                walk(item.body or [], depth + 1, in_block or st.keyword == "block")
                lines.append((item.close, f"{pad}}}"))
            else:
                lines.append((st.span, f"{pad}{bound}{text}"))

    walk(list(spec.syntax or ()), 0, False)
    missing = [line for line in head if line[1].split(" ", 1)[0] not in seen]
    return missing + lines


def _training_lines(spec: ir.Spec) -> list[tuple[ir.Node, str]]:
    out: list[tuple[ir.Node, str]] = []
    if spec.optimizer is not None:
        opt = spec.optimizer
        parts = ["optimizer", opt.name]
        for key in ir.HYPERPARAMETERS:
            value = getattr(opt, key)
            if value is not None:
                parts.append(f"{key}={_value(value)}")
        out.append((opt, " ".join(parts)))
    if spec.loss is not None:
        loss = spec.loss
        parts = ["loss", loss.name]
        if loss.delta is not None:
            parts.append(f"delta={_num(loss.delta)}")
        if loss.from_logits is not None:
            parts.append("from_logits" if loss.from_logits else "from_logits=false")
        if loss.label_smoothing is not None:
            parts.append(f"label_smoothing={_num(loss.label_smoothing)}")
        out.append((loss, " ".join(parts)))
    if spec.metrics:
        k = f" k={spec.top_k}" if spec.top_k is not None else ""
        out.append((_Anchor(spec.statement_spans.get("metrics")), "metrics " + " ".join(spec.metrics) + k))
    if spec.fit is not None:
        parts = ["fit"]
        for key, word in (("batch_size", "batch"), ("epochs", "epochs"), ("validation_split", "validation"),
                          ("shuffle", "shuffle"), ("seed", "seed")):
            value = getattr(spec.fit, key)
            if value is not None:
                parts.append(f"{word}={_value(value)}")
        out.append((spec.fit, " ".join(parts)))
    for key in ("early_stopping", "reduce_lr_on_plateau"):
        callback = getattr(spec, key)
        if callback is not None:
            out.append((callback, callback_text(key, callback)))
    return out


def callback_text(keyword: str, callback: ir.Node) -> str:
    """`early_stopping patience=3 restore_best_weights`: the options that are not Keras's defaults."""
    parts = [keyword]
    for name, field in type(callback).model_fields.items():
        value = getattr(callback, name)
        if name == "span" or value == field.default:
            continue
        parts.append(name if value is True else f"{name}={_value(value)}")
    return " ".join(parts)


def schedule_text(schedule: ir.Schedule) -> str:
    """`exponential_decay(0.1, decay_steps=100, decay_rate=0.96)`: the initial rate first,
    then the arguments written, by name."""
    args = []
    for key in ir.SCHEDULE_FIELDS:
        value = getattr(schedule, key)
        if value is None:
            continue
        text = _value(value)
        args.append(text if key == "initial_learning_rate" else f"{key}={text}")
    return f"{schedule.name}({', '.join(args)})"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, ir.Schedule):
        return schedule_text(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, float):
        return _num(value)
    return str(value)


class _Anchor:
    def __init__(self, span: object) -> None:
        self.span = span


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """line number -> (comment text, whether code precedes it on that line)."""
    found: dict[int, tuple[str, bool]] = {}
    for number, line in enumerate(source.split("\n"), start=1):
        quote = None
        for i, ch in enumerate(line):
            if quote:
                if ch == "\\":
                    continue
                if ch == quote and line[i - 1] != "\\":
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                found[number] = (line[i:].rstrip(), bool(line[:i].strip()))
                break
    return found


def _with_comments(lines: list[tuple[object, str]], source: str) -> str:
    comments = _comments(source)
    blank = {n for n, line in enumerate(source.split("\n"), start=1) if not line.strip()}
    code_lines = sorted(span.line for span, _ in lines if span is not None)
    # each standalone comment belongs to the next line holding a statement we print
    leading: dict[int, list[tuple[int, str]]] = {}
    trailer: list[str] = []
    for number, (text, after_code) in sorted(comments.items()):
        if after_code:
            continue
        k = bisect.bisect_left(code_lines, number)
        if k == len(code_lines):
            trailer.append(text)
        else:
            leading.setdefault(code_lines[k], []).append((number, text))
    last_on_line: dict[int, int] = {}
    for index, (span, _) in enumerate(lines):
        if span is not None:
            last_on_line[span.line] = index
    # the comments above the first statement (a file's header) stay above the `model` and
    # `input` lines the printer adds when the source had none
    out: list[str] = [text for _, text in leading.pop(code_lines[0], [])] if code_lines else []
    for index, (span, text) in enumerate(lines):
        if span is not None:
            block = leading.pop(span.line, [])
            first = block[0][0] if block else span.line
            if out and out[-1] and first - 1 in blank:  # a blank line before it in the source stays
                out.append("")
            out.extend(t for _, t in block)
            trailing = comments.get(span.line)
            if trailing and trailing[1] and last_on_line[span.line] == index:
                text = f"{text}  {trailing[0]}"
        out.append(text)
    return "\n".join(out + trailer) + "\n"


def differences(saved: ir.Spec, spec: ir.Spec) -> list[str]:
    """How the layers of `spec` differ from those of `saved`, in words: "layer 2 was `dense 8`,
    is `dense 16`" (a file's weights or a checkpoint of another spec)."""
    out = []
    for index, (a, b) in enumerate(zip(saved.layers, spec.layers), start=1):
        if a != b:
            out.append(f"layer {index} was `{layer_text(a)}`, is `{layer_text(b)}`")
    if saved.connections != spec.connections:
        out.append("its layers were connected otherwise")
    return out
