"""The static checker: every layer's output shape, parameters, bytes and FLOPs, as Keras counts them.

Pure Python integer arithmetic on the IR: nothing is allocated, no framework is imported,
so a 100-billion-parameter typo is reported in microseconds. Each layer kind owns its
shape rule, weights and FLOPs (modelspec.layers); this module walks them, names the layers
with Keras's auto names in a fresh session (dense, dense_1, batch_normalization, ...) and
totals the counts. `check` adds advice (modelspec.advice) as warnings; `strict=True` makes
them errors.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import ir
from .diagnostics import Diagnostic, Span, SpecError, sort_diagnostics
from .layers import INPUT_LAYER, snake_case
from .shapes import BYTES_PER_PARAM, Shape, ShapeError, fmt_shape


@dataclass(frozen=True)
class Weight:
    path: str  # model1/dense/kernel, as Keras's variable.path
    shape: tuple[int, ...]
    trainable: bool
    initializer: ir.Initializer | None = field(default=None, compare=False, repr=False)
    dtype: str = field(default="float32", compare=False, repr=False)  # Keras's variable's
    fans: tuple[int, int] | None = field(default=None, compare=False, repr=False)  # as WeightDecl's
    forget_units: int | None = field(default=None, compare=False, repr=False)

    @property
    def itemsize(self) -> int:
        return {"float32": BYTES_PER_PARAM, "int64": 8}[self.dtype]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        return self.size * self.itemsize


@dataclass
class LayerReport:
    name: str
    kind: str
    keras_class: str
    input_shape: Shape
    output_shape: Shape
    weights: list[Weight]
    flops: int
    layer: Any = field(repr=False)
    # the rows it reads, as positions in Report.layers (-1: the model's input), and their names
    sources: tuple[int, ...] = ()
    inputs: tuple[str, ...] = ()
    index: int = 0  # its place in spec.layers (the order it was written)
    # it reads a tensor that carries embedding's mask (mask_zero: the input's ids that are not 0),
    # and its output carries it on (modelspec.layers.LayerBase.mask)
    mask_in: bool = False
    masked: bool = False
    mask_input: str | None = None  # in a functional model, the mask operation a consumer reads (Report.mask_ops)

    @property
    def reads_mask(self) -> bool:
        """Its numbers use embedding's mask: it reaches a layer that consumes or uses it."""
        return self.mask_in and self.layer.mask in ("consume", "use")

    @property
    def params(self) -> int:
        return sum(w.size for w in self.weights)

    @property
    def trainable(self) -> int:
        return sum(w.size for w in self.weights if w.trainable)

    @property
    def non_trainable(self) -> int:
        return self.params - self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
            "params": self.params, "trainable": self.trainable, "non_trainable": self.non_trainable,
            "flops": self.flops, "inputs": list(self.inputs),
        }


@dataclass
class Report:
    """What `modelspec check` prints: per-layer rows, totals, and warnings."""

    model: str
    input_shape: Shape
    layers: list[LayerReport]
    warnings: list[Diagnostic]
    spec: ir.Spec = field(repr=False)
    # a functional model's mask operations, which Keras's summary lists among its layers:
    # (the position among the rows it comes before, its summary row: name (class), shape, params, inputs)
    mask_ops: list[tuple[int, tuple[str, str, str, str]]] = field(default_factory=list)

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def functional(self) -> bool:
        """Whether Keras builds the spec as a functional model (it is not a plain chain): its
        summary then has an InputLayer row and a "Connected to" column."""
        return not self.spec.is_chain

    @property
    def adapts(self) -> bool:
        """Whether a layer's weights are statistics of the data (normalize), set by adapt."""
        return any(row.layer.adapts for row in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable for layer in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def bytes(self) -> int:
        return sum(w.bytes for w in self.weights)

    @property
    def trainable_bytes(self) -> int:
        return sum(w.bytes for w in self.weights if w.trainable)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def weights(self) -> list[Weight]:
        return [w for layer in self.layers for w in layer.weights]

    def training_memory(self, batch_size: int, optimizer: ir.Optimizer) -> dict[str, int]:
        """A lower bound of the bytes training needs: the weights, their gradients, the
        optimizer's slots, and every layer's output for one batch."""
        trainable = self.trainable_params
        return {"weights": self.bytes, "gradients": trainable * BYTES_PER_PARAM,
                "optimizer slots": trainable * optimizer.slots() * BYTES_PER_PARAM,
                f"activations of a batch of {batch_size}":
                    batch_size * sum(math.prod(r.output_shape[1:]) for r in self.layers) * BYTES_PER_PARAM}

    def summary(self, line_length: int | None = None, flops: bool = False) -> str:
        """The table of Keras's `model.summary()`, character for character."""
        from .summary import render_summary

        return render_summary(self, line_length=line_length, flops=flops)

    def to_dict(self) -> dict[str, Any]:
        """`modelspec check --json`: exactly these keys, which scripts rely on; weights are in `.weights`."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "input_dtype": self.spec.input_dtype,
            "layers": [layer.to_dict() for layer in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "bytes": self.bytes,
            "flops": self.flops,
            "warnings": [w.to_dict() for w in self.warnings],
        }


# ---------------------------------------------------------------------------------------
# Keras's naming


_SNAKE = {cls.keras_class: snake_case(cls.keras_class) for cls in ir.LAYER_CLASSES.values()}


def layer_names(spec: ir.Spec, inner: bool = False) -> Any:
    """Keras's names for the spec's layers (in spec order) in a fresh session; auto names skip
    the user's. With `inner`, also each layer's wrapped layer's name (None without one): the
    recurrent layer `bidirectional` wraps is made first, and takes its name as if it stood
    alone. Layers a layer makes itself (attention's dropout, at its first call) take their names too."""
    taken = {layer.name for layer in spec.layers if layer.name}
    counters: dict[str, int] = {}

    def auto(keras_class: str) -> str:
        base = _SNAKE.get(keras_class) or snake_case(keras_class)
        while True:
            n = counters.get(base, 0)
            counters[base] = n + 1
            candidate = base if n == 0 else f"{base}_{n}"
            if candidate not in taken:
                return candidate

    names: list[str] = []
    inners: list[str | None] = []
    for layer in spec.layers:
        wrapped = getattr(layer, "layer", None)
        inners.append(auto(wrapped.keras_class) if isinstance(wrapped, ir.LayerBase) else None)
        names.append(layer.name or auto(layer.keras_class))
        for made in layer.inner_layers:
            auto(made)
    return (names, inners) if inner else names


# ---------------------------------------------------------------------------------------
# Entry point


def infer(spec: ir.Spec) -> Report:
    """Every layer's output shape, weights and FLOPs, without advice. Raises SpecError on a
    duplicate layer name or a shape a layer cannot take."""
    errors: list[Diagnostic] = []
    names, inner_names = layer_names(spec, inner=True)
    seen: dict[str, Span | None] = {}
    for name, layer in zip(names, spec.layers):
        if name in seen and layer.name:
            first = seen[name]
            if first is not None and first == layer.span:  # one statement of a block used more than once
                errors.append(Diagnostic(
                    "error", f"the layer name '{name}' is used twice: its block is used more than once, and Keras "
                    "needs unique names", layer.span, code="names",
                    hint="leave the name out (Keras names each use's layer), or make it a parameter of the block: "
                         "name=NAME_PARAMETER"))
            else:
                errors.append(Diagnostic(
                    "error", f"the layer name '{name}' is used twice; Keras needs unique names", layer.span,
                    hint=f"first used on line {first.line}" if first else None, code="names"))
        seen.setdefault(name, layer.span)

    shapes: list[Shape] = []
    rows: list[LayerReport] = []
    # per layer, a layer with weights on a path to it (itself included): a normalize may have none before it
    weighted: list[tuple[str, ir.LayerBase] | None] = []
    prefix = "" if spec.connections else f"{spec.name}/"  # a functional model's weights have no model scope
    input_shape: Shape = (None, *spec.input_shape)
    # per layer (and, at -1, the input): its output holds integer ids, carries embedding's mask
    ids, masks = _LastIsInput([spec.input_dtype == "int32"]), _LastIsInput([False])
    for index, (name, layer) in enumerate(zip(names, spec.layers)):
        sources = spec.sources(index)
        ins = [input_shape if s < 0 else shapes[s] for s in sources]
        reads_ids = any(ids[s] for s in sources)
        if reads_ids != layer.reads_ids:
            errors.append(_dtype_error(spec, name, layer, reads_ids))
            break
        try:
            out = layer.merge_shape(ins) if layer.merges else layer.output_shape(ins[0])
        except ShapeError as e:
            errors.append(Diagnostic("error", f"{name}: {e.message}", layer.span, hint=e.hint, code="shape"))
            break
        mask_in, masked = _mask(name, layer, [masks[s] for s in sources], errors)
        shape = ins[0]
        path = f"{prefix}{name}"
        decls = layer.weights(shape, inner_names[index]) if inner_names[index] else layer.weights(shape)
        weights = [Weight(f"{path}/{w.name}", w.shape, w.trainable, w.initializer, w.dtype, w.fans, w.forget_units)
                   for w in decls]
        rows.append(LayerReport(name, layer.kind, layer.keras_class, shape, out, weights,
                                layer.flops(shape, out), layer, sources,
                                tuple(INPUT_LAYER if s < 0 else names[s] for s in sources) * layer.reads_input_times,
                                index, mask_in, masked))
        shapes.append(out)
        ids.append(False)
        masks.append(masked)
        before = next((weighted[s] for s in sources if s >= 0 and weighted[s] is not None), None)
        if layer.adapts and before is not None:
            errors.append(_adapts_after(layer, *before))
        weighted.append(before or ((name, layer) if weights and not layer.adapts else None))
    if not errors and rows[-1].masked:
        errors.append(Diagnostic(
            "error", f"the model's output ({rows[-1].name}) carries the mask of embedding ... mask_zero, so Keras "
            "would average the loss over the unmasked steps only; modelspec does not train such a model yet",
            rows[-1].layer.span, code="mask",
            hint="end with a pooling layer (globalavgpool1d averages the unmasked steps), or drop mask_zero"))
    if not errors and spec.connections:
        rows = _keras_order(spec, rows, errors)
    if errors:
        raise SpecError(sort_diagnostics(d.with_file(spec.path) for d in errors), spec.source)
    report = Report(spec.name, input_shape, rows, [], spec)
    if spec.connections and any(row.mask_in and row.layer.mask_argument for row in rows):
        report.mask_ops = _mask_ops(spec, rows)
    if spec.connections and any(row.mask_in and row.layer.clears_input_masks for row in rows):
        _masks_at_run_time(rows)
    return report


def _masks_at_run_time(rows: list[LayerReport]) -> None:
    """Which attention layers compute with the mask when Keras runs the model.

    A layer whose `call` takes `mask=` gets the mask the functional graph recorded when it was
    built, which is the checker's (`mask_in`). Attention reads its query's and value's masks
    from the tensors at run time, and then deletes them from those tensors (keras/src/layers/
    attention/multi_head_attention.py, `call`): a layer that reads the same tensor after it
    sees no mask there, nor do the layers whose masks come from that one (a merge of an input
    without a mask has none, keras/src/layers/merging/base_merge.py, compute_mask). Keras runs
    the layers in the order of `Report.layers`."""
    at: dict[int, bool] = {-1: False}  # each row's output's mask at run time
    for i, row in enumerate(rows):
        layer, ins = row.layer, [at[s] for s in row.sources]
        if layer.clears_input_masks:
            row.mask_in = ins[0]
            for s in row.sources:
                at[s] = False
            at[i] = ins[0]
        elif layer.mask == "make" or layer.mask_argument:
            at[i] = row.masked  # the recorded mask, passed to `call` and set on its output
        elif layer.merges:
            at[i] = row.masked and all(ins)
        else:
            at[i] = row.masked and ins[0]


class _LastIsInput(list):
    """A per-layer list whose index -1 is the model's input (stored first): `sources` use -1."""

    def __getitem__(self, i):  # type: ignore[override]
        return super().__getitem__(0 if i < 0 else i + 1)


def _dtype_error(spec: ir.Spec, name: str, layer: ir.LayerBase, reads_ids: bool) -> Diagnostic:
    """A layer that reads token ids but is not an embedding, or an embedding that reads numbers."""
    if reads_ids:
        return Diagnostic("error", f"{name} reads the model's integer input (token ids, `input ... int`); only "
                          "embedding reads ids", layer.span, code="dtype",
                          hint="begin with `embedding VOCAB DIM`, or declare a float input: "
                               f"`input {'x'.join(map(str, spec.input_shape))}`")
    return Diagnostic("error", f"{name} reads integer ids (token ids), but its input holds numbers (float32)",
                      layer.span, code="dtype",
                      hint=f"declare integer inputs: `input {'x'.join(map(str, spec.input_shape))} int`, and put "
                           "embedding first")


def _mask(name: str, layer: ir.LayerBase, masks: list[bool],
          errors: list[Diagnostic]) -> tuple[bool, bool]:
    """(whether the layer reads embedding's mask, whether its output carries it), as Keras's
    compute_mask: a merge's output is masked when all its inputs are (keras/src/layers/merging/
    base_merge.py ORs the masks and gives None when one is missing; Concatenate's mask along
    the last axis is then all true). Every mask is the input's ids that are not 0."""
    rule = layer.mask
    # Keras's Concatenate builds its mask from several operations (keras/src/layers/merging/
    # concatenate.py, compute_mask) whose names and summary rows modelspec does not reproduce yet
    joins = layer.kind == "concat"
    if any(masks) and (rule == "refuse" or joins):
        errors.append(Diagnostic(
            "error", f"{name} reads the mask of embedding ... mask_zero, and modelspec does not compute "
                     f"{'the mask of a concat' if joins else 'its masked values'} yet",
            layer.span, code="mask", hint="drop mask_zero, or put this layer where no mask reaches it"))
    mask_in = all(masks)
    return mask_in, rule == "make" or (mask_in and rule in ("keep", "use"))


def _mask_ops(spec: ir.Spec, rows: list[LayerReport]) -> list[tuple[int, tuple[str, str, str, str]]]:
    """The mask's operations in a functional model, where Keras's summary lists them: each
    `embedding ... mask_zero` makes `not_equal(ids, 0)` (keras/src/layers/core/embedding.py,
    compute_mask), each merge of masked inputs ORs their masks pairwise (keras/src/layers/
    merging/base_merge.py), and a layer that consumes the mask reads it as a second input.
    Named in the order Keras creates them; listed, where a consumer reads them, in Keras's
    functional order over layers and operations together (as `_keras_order`)."""
    n = len(spec.layers)
    by_index = {row.index: row for row in rows}
    sources: list[list[int]] = [list(spec.sources(i)) for i in range(n)]  # nodes: layers, then operations
    ops: list[tuple[str, str, Shape, list[int]]] = []  # (name, class, shape, sources)
    creation: list[int] = []  # every node in the order Keras creates it
    mask_of: dict[int, int] = {}  # layer -> the node whose output is its mask
    counters: dict[str, int] = {}

    def make(base: str, cls: str, reads: list[int]) -> int:
        k = counters.get(base, 0)
        counters[base] = k + 1
        ops.append((base if k == 0 else f"{base}_{k}", cls, (None, *spec.input_shape), reads))
        creation.append(n + len(ops) - 1)
        return n + len(ops) - 1

    for i, layer in enumerate(spec.layers):
        row = by_index[i]
        if row.mask_in and layer.mask_argument:
            sources[i].append(mask_of[sources[i][0]])
        creation.append(i)
        if layer.mask == "make" and row.masked:
            mask_of[i] = make("not_equal", "NotEqual", [-1])
        elif row.masked and layer.merges:
            mask = mask_of[sources[i][0]]
            for s in sources[i][1:]:
                mask = make("logical_or", "LogicalOr", [mask, mask_of[s]])
            mask_of[i] = mask
        elif row.masked:
            mask_of[i] = mask_of[sources[i][0]]
    nodes = sources + [reads for *_, reads in ops]
    depth = [-1] * len(nodes)
    depth[n - 1] = 0
    for k in reversed(creation):
        if depth[k] >= 0:
            for s in nodes[k]:
                if s >= 0:
                    depth[s] = max(depth[s], depth[k] + 1)
    seen: dict[int, int] = {}
    stack = [n - 1]
    while stack:
        k = stack.pop()
        if k not in seen:
            seen[k] = len(seen)
            stack.extend(s for s in reversed(nodes[k]) if s >= 0)
    order = sorted(seen, key=lambda k: (-depth[k], seen[k]))
    name = {row.index: row.name for row in rows} | {n + j: op[0] for j, op in enumerate(ops)}
    for i in range(n):
        if len(sources[i]) > len(spec.sources(i)):
            by_index[i].mask_input = name[sources[i][-1]]
    out, layers_before = [], 0
    for k in order:
        if k < n:
            layers_before += 1
            continue
        op_name, cls, shape, reads = ops[k - n]
        out.append((layers_before, (f"{op_name} ({cls})", fmt_shape(shape), "0",
                                    ", ".join(f"{INPUT_LAYER if s < 0 else name[s]}[0][0]" for s in reads))))
    return out


def _keras_order(spec: ir.Spec, rows: list[LayerReport], errors: list[Diagnostic]) -> list[LayerReport]:
    """The rows in the order of a Keras functional model's `layers` (keras/src/ops/function.py,
    `_build_map`; keras/src/models/functional.py): by depth from the output, deepest first, ties
    broken by the order a depth-first walk from the output first reaches them, each layer's
    inputs in call order. Each row's `sources` become positions in that order. A layer whose
    output never reaches the model's output is an error: Keras would leave it out."""
    n = len(rows)
    depth = [-1] * n
    depth[-1] = 0
    for i in range(n - 1, -1, -1):
        if depth[i] < 0:
            continue
        for s in spec.sources(i):
            if s >= 0 and depth[s] < depth[i] + 1:
                depth[s] = depth[i] + 1
    dead = [i for i in range(n) if depth[i] < 0]
    for i in dead:
        errors.append(Diagnostic(
            "error", f"the output of {rows[i].name} is never used: it does not lead to the model's output "
            f"({rows[-1].name}, the last layer)", rows[i].layer.span,
            hint="merge it into the main path (add, concat, ...) or remove it", code="graph"))
    if dead:
        return rows
    seen: dict[int, int] = {}
    stack = [n - 1]
    while stack:  # pre-order, marking at pop: the order a recursive walk reaches them
        i = stack.pop()
        if i in seen:
            continue
        seen[i] = len(seen)
        stack.extend(s for s in reversed(spec.sources(i)) if s >= 0)
    order = sorted(range(n), key=lambda i: (-depth[i], seen[i]))
    position = {i: p for p, i in enumerate(order)}
    out = []
    for i in order:
        row = rows[i]
        row.sources = tuple(-1 if s < 0 else position[s] for s in row.sources)
        out.append(row)
    return out


def _adapts_after(layer: ir.LayerBase, name: str, weighted: ir.LayerBase) -> Diagnostic:
    """A layer that adapts (normalize) after one with weights: its statistics come from the
    data that reaches it before training (Model.adapt), which a weighted layer before it would
    change with every step."""
    where = f" at line {weighted.span.line}" if weighted.span else ""
    return Diagnostic("error", f"{layer.kind} adapts to the data that reaches it before training; {name}{where} "
                      "before it has weights", layer.span, hint=f"put {layer.kind} before {name}", code=layer.kind)


def machine_memory() -> int | None:
    """The machine's physical memory in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def refuse_oversized(report: Report, batch_size: int, optimizer: ir.Optimizer) -> None:
    """SpecError, at the largest layer, when training the model cannot fit in this machine's
    memory: said before anything is allocated, with both figures."""
    from .summary import readable_size

    parts = report.training_memory(batch_size, optimizer)
    needed, available = sum(parts.values()), machine_memory()
    if available is None or needed <= available:
        return
    biggest = max(report.layers, key=lambda r: (r.params, math.prod(r.output_shape[1:])))
    shown = ", ".join(f"{name} {readable_size(n)}" for name, n in parts.items() if n)
    raise SpecError([Diagnostic(
        "error", f"training this model needs at least {readable_size(needed)} ({shown}); this machine has "
        f"{readable_size(available)}", biggest.layer.span,
        hint=f"{biggest.name} has {biggest.params:,} parameters: is a size mistyped?", code="memory",
        file=report.spec.path)], report.spec.source)


def check(spec: ir.Spec | str, *, strict: bool = False) -> Report:
    """Check a spec (IR, text or path), with advice as warnings (errors when `strict`).
    Raises SpecError on an invalid one."""
    if not isinstance(spec, ir.Spec):
        from .parser import parse

        spec = parse(spec)
    report = infer(spec)
    from .advice import advise

    warnings = advise(spec, report.layers)
    if strict and warnings:
        raise SpecError(sort_diagnostics(w.as_error().with_file(spec.path) for w in warnings), spec.source)
    report.warnings = [w.with_file(spec.path) for w in sort_diagnostics(warnings)]
    return report
