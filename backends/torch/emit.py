"""Standalone PyTorch source for a spec: `modelspec compile SPEC --backend torch`.

The generated module imports torch (and math) only. It holds an nn.Module subclass named
after the model, with one line per layer in `__init__` and in the forward pass, Keras's
initializers, a map of Keras's weight paths and layouts, and - when the spec has a
training section - the loss, penalties, optimizer and a Keras-like `fit`. A graph's forward
pass names each value (`add = batch_normalization + x`), and each block of the spec is a
small nn.Module class, built once per use with the values its uses differ in. Where Keras
and torch differ, the Keras-exact pieces are copied from keras_ops.py, the very code
the live backend runs.

Each layer's lines are printed from its unit (lowering.py), the data the live module is
built from. Text from the spec (the model's and layers' names) reaches the output only
through repr() as string literals, never as code, comments or docstrings; identifiers are
derived from it by keeping [A-Za-z0-9_].
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from modelspec import ir
from modelspec.checker import Report
from modelspec.nodes import SCHEDULE_CLASSES
from modelspec.shapes import fmt_shape
from modelspec.training import label_kind, resolve_loss, resolve_metric

from . import keras_ops
from .lowering import LAYOUTS, OPERATORS, SELF, Call, Unit, activation, calls, graph_units, literal, units
from .plan import GLOBALS, Node, Plan, Step, class_name, identifier, plan

LOSSES = {  # (loss, from logits) -> the keras_ops function, or torch's own when it is Keras's
    ("categorical_crossentropy", True): "softmax_cross_entropy",
    ("categorical_crossentropy", False): "categorical_crossentropy",
    ("sparse_categorical_crossentropy", True): "sparse_softmax_cross_entropy",
    ("sparse_categorical_crossentropy", False): "sparse_categorical_crossentropy",
    ("binary_crossentropy", True): "sigmoid_binary_crossentropy",
    ("binary_crossentropy", False): "binary_crossentropy",
    ("mse", False): "F.mse_loss", ("mae", False): "F.l1_loss", ("huber", False): "F.huber_loss",
}
OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "Adam", "adagrad": "Adagrad",
              "nadam": "Nadam", "adadelta": "Adadelta", "adamax": "Adamax", "lion": "Lion"}
METRICS = {"categorical_accuracy": "categorical_accuracy", "sparse_categorical_accuracy": "sparse_categorical_accuracy",
           "binary_accuracy": "binary_accuracy", "mse": "mean_squared_error", "mae": "mean_absolute_error",
           "top_k_categorical_accuracy": "top_k_categorical_accuracy",
           "sparse_top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy"}


@dataclass
class Lines:
    """What the layers contribute to each part of the class."""

    init: list[str] = field(default_factory=list)  # in __init__
    reset: list[str] = field(default_factory=list)  # in reset_parameters
    forward: list[str] = field(default_factory=list)  # the forward pass, each line transforming x
    weights: list[str] = field(default_factory=list)  # (Keras path, tensor, layout) entries
    layouts: set[str] = field(default_factory=set)  # the LAYOUTS keys among them
    penalty: list[str] = field(default_factory=list)  # terms of the weight penalty
    helpers: set[str] = field(default_factory=set)  # keras_ops definitions the module needs

    def add(self, step: Step | None, unit: Unit) -> None:
        """One layer's lines (a layout switch's when `step` is None), printed from its unit."""
        attr = step.attr if step else ""
        for call in (c for e in (unit.module, *unit.forward) for c in calls(e)):
            if "." not in call.target and call.target != SELF:
                self.helpers.add(call.target)
        if unit.module:
            self.init.append(_commented(f"self.{attr} = {literal(unit.module)}", unit.module.note, 8))
        self.add_weights(attr, step, unit)
        self.forward += [_commented(f"x = {literal(e, attr=attr)}", e.note, 8) for e in unit.forward]

    def add_weights(self, attr: str, step: Step | None, unit: Unit, reset: bool = True) -> None:
        """A layer's reset (unless not `reset`), keras_layout and penalty lines, its module at
        self.<attr>."""
        if reset:
            self.reset += self.resets(attr, step, unit)
        for weight, keras in zip(unit.weights, step.report.weights if step else ()):
            self.weights.append(_entry(keras.path, f"self.{attr}.{weight.tensor}", weight.layout))
            self.layouts.add(weight.layout)
        for i in unit.penalized if unit.penalty else ():
            kernel, (l1, l2) = f"self.{attr}.{unit.weights[i].tensor}", unit.penalty
            if l1:
                self.penalty.append(f"{l1!r} * {kernel}.abs().sum()")
            if l2:
                self.penalty.append(f"{l2!r} * {kernel}.square().sum()")
        if any(LAYOUTS[w.layout].gates for w in unit.weights if w.layout):
            self.helpers.add("reorder_gates")  # load_keras_weights and keras_weights move the gates


    def resets(self, attr: str, step: Step | None, unit: Unit) -> list[str]:
        """A layer's lines of reset_parameters, its module at self.<attr>."""
        lines = [f"self.{attr}.reset_parameters()"] if any(w.initializer is None for w in unit.weights) else []
        for weight, keras in zip(unit.weights, step.report.weights if step else ()):
            if weight.initializer is not None:
                tensor = f"self.{attr}.{weight.tensor}"
                code, _, note = initializer(tensor, weight.initializer, keras.shape, self.helpers,
                                            keras.fans).partition("  # ")
                lines.append(_commented(code, note, 8))
                if keras.forget_units:  # LSTM's unit_forget_bias: ones in the forget block (f of i, f, c, o)
                    lines.append(f"nn.init.ones_({tensor}[{keras.forget_units}:{2 * keras.forget_units}])"
                                 "  # unit_forget_bias")
        return lines


def initializer(tensor: str, init: ir.Initializer, shape: tuple[int, ...], helpers: set[str],
                fans: tuple[int, int] | None = None) -> str:
    """The torch call drawing Keras's initializer `init` for a weight of Keras shape `shape`
    (adding the keras_ops functions it needs to `helpers`). torch's own fans agree with
    Keras's for its layouts; `fans` are Keras's where its layer gives them (EinsumDense's).
    Seeds cannot carry over."""
    from modelspec.initializers import compute_fans

    fan_in, fan_out = fans or compute_fans(shape)
    a = init.args()
    name = init.name
    if name in ("glorot_normal", "he_normal", "lecun_normal"):
        helpers.add("variance_scaling_normal_")
        scale, fan = {"glorot_normal": (1.0, (fan_in + fan_out) / 2), "he_normal": (2.0, fan_in),
                      "lecun_normal": (1.0, fan_in)}[name]
        return f"variance_scaling_normal_({tensor}, scale={scale!r}, fan={fan!r})  # {name}"
    if name in ("glorot_uniform", "he_uniform", "lecun_uniform") and (len(shape) < 2 or fans):
        # torch's xavier_uniform_ and kaiming_uniform_ refuse a vector (a bias), and take a
        # tensor's fans as a convolution's; Keras takes a vector's length as both fans
        helpers.add("variance_scaling_uniform_")
        scale, fan = {"glorot_uniform": (1.0, (fan_in + fan_out) / 2), "he_uniform": (2.0, fan_in),
                      "lecun_uniform": (1.0, fan_in)}[name]
        return f"variance_scaling_uniform_({tensor}, scale={scale!r}, fan={fan!r})  # {name}"
    if name == "truncated_normal":
        helpers.add("truncated_normal_")
        return f"truncated_normal_({tensor}, mean={a['mean']!r}, stddev={a['stddev']!r})"
    return {
        "glorot_uniform": f"nn.init.xavier_uniform_({tensor})  # glorot_uniform",
        "he_uniform": f"nn.init.kaiming_uniform_({tensor}, nonlinearity='relu')  # he_uniform",
        "lecun_uniform": f"nn.init.kaiming_uniform_({tensor}, nonlinearity='linear')  # lecun_uniform",
        "zeros": f"nn.init.zeros_({tensor})",
        "ones": f"nn.init.ones_({tensor})",
        "random_normal": f"nn.init.normal_({tensor}, mean={a.get('mean')!r}, std={a.get('stddev')!r})",
        "random_uniform": f"nn.init.uniform_({tensor}, {a.get('minval')!r}, {a.get('maxval')!r})",
        "orthogonal": f"nn.init.orthogonal_({tensor}, gain={a.get('gain')!r})",
    }[name]


def _commented(code: str, note: str, indent: int) -> str:
    """`code  # note`, the note on a line of its own above when that line would pass 100 characters."""
    if not note:
        return code
    line = f"{code}  # {note}"
    return line if indent + len(line) <= 100 else f"# {note}\n{code}"


def _call(function: str, arguments: str, indent: int) -> str:
    """`function(arguments)` after a `return`, its arguments wrapped to lines of 100 characters."""
    import textwrap

    line = f"{function}({arguments})"
    if indent + len("return ") + len(line) <= 100:
        return line
    lines = textwrap.wrap(arguments, width=100 - indent - 4, break_long_words=False, break_on_hyphens=False)
    return f"{function}(\n" + "".join(" " * (indent + 4) + part + "\n" for part in lines) + " " * indent + ")"


def _wrapped(function: str, arguments: str, indent: int) -> str:
    """`function(arguments)` to be indented by `indent`, its arguments wrapped to lines of 100
    characters."""
    import textwrap

    line = f"{function}({arguments})"
    if indent + len(line) + 1 <= 100:
        return line
    lines = textwrap.wrap(arguments, width=100 - indent - 4, break_long_words=False, break_on_hyphens=False)
    return f"{function}(\n" + "".join("    " + part + "\n" for part in lines) + ")"


def _table(entries: list[str], indent: int) -> str:
    """A list's entries on its line, or one a line when they would pass 100 characters."""
    line = ", ".join(entries)
    if indent + len(line) + 1 <= 100:
        return line
    return "\n" + "".join(f"    {entry},\n" for entry in entries)


def _entry(path: str, tensor: str, layout: str | None) -> str:
    """One (Keras path, tensor, layout) line of keras_layout, wrapped as black would."""
    line = f"({path!r}, {tensor}, {layout!r}),"
    return line if len(line) <= 88 else f"({path!r},\n {tensor}, {layout!r}),"


def _indent(lines: list[str], spaces: int) -> str:
    lines = [part for line in lines for part in line.split("\n")]
    return "\n".join(" " * spaces + line if line else "" for line in lines)


# ---------------------------------------------------------------------------------------
# Helpers copied from keras_ops, with what they use


def _definitions() -> dict[str, tuple[int, str]]:
    """keras_ops's top-level definitions: name -> (position, source)."""
    source = inspect.getsource(keras_ops)
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        names = []
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for name in names:
            out[name] = (node.lineno, "\n".join(lines[start - 1:node.end_lineno]))
    return out


def helpers_source(names: set[str]) -> str:
    """The source of `names` and of every keras_ops definition they use, in file order."""
    defs = _definitions()
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(defs[name][1])):
            if isinstance(node, ast.Name) and node.id in defs and node.id != name:
                todo.append(node.id)
    ordered = sorted(seen, key=lambda n: defs[n][0])
    constants = [defs[n][1] for n in ordered if not defs[n][1].lstrip().startswith(("def ", "class ", "@"))]
    code = [defs[n][1] for n in ordered if defs[n][1].lstrip().startswith(("def ", "class ", "@"))]
    return "\n".join(constants) + ("\n\n\n" if constants else "") + "\n\n\n".join(code)


# ---------------------------------------------------------------------------------------
# The file

HEADER = '''"""A PyTorch model generated by modelspec. It needs torch and nothing else.

Its numbers are Keras 3's (TensorFlow backend): Keras's initializers and weight layouts
(see keras_layout), channels-last inputs and outputs, and Keras's behaviour wherever
torch's defaults differ{training_note}.

    model = {cls}()
    outputs = model(x)  # x: {input_kind}, shape (batch, {input_shape}){fit_note}

modelspec's weights (Model.save writes a safetensors file keyed by Keras's weight paths)
load with `model.load_keras_weights(safetensors.torch.load_file(path))`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
'''


CLASS = '''class {cls}(nn.Module):
    """The spec's layers; output {output_shape}."""

    keras_name = {name}
    input_shape = {input_shape}

    def __init__(self):
        super().__init__()
{init}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Keras's initializers (torch's defaults: kaiming-uniform kernels, random biases)."""
{reset}

{forward}

{penalty}    def keras_layout(self):
        """(Keras weight path, tensor, layout) in Keras's order. Keras keeps dense kernels as
        (in, out) and conv kernels as (kh, kw, in, out) or (k, in, out); torch as (out, in),
        (out, in, kh, kw), (out, in, k)."""
        return [
{entries}
        ]

    @torch.no_grad()
    def load_keras_weights(self, weights):
        """Set every weight from arrays in Keras's layout, keyed by Keras's weight paths."""
        for path, tensor, layout in self.keras_layout():
            value = torch.as_tensor(weights[path], dtype=torch.float32)
{to_torch}            tensor.copy_(value)

    @torch.no_grad()
    def keras_weights(self):
        """Every weight in Keras's layout, keyed by Keras's weight path."""
        weights = {{}}
        for path, tensor, layout in self.keras_layout():
            value = tensor.detach()
{to_keras}            weights[path] = value.clone()
        return weights'''

FORWARD = '''    def forward(self, x):
{body}'''

LOGITS = '''    def logits(self, x):
        """Every layer but the final {activation}: Keras's TensorFlow backend computes the
        matching cross-entropy from these values."""
{body}

    def forward(self, x):
        return {output}'''

PENALTY = '''    def penalty(self):
        """The kernel regularizers' L1/L2 terms, added to the loss as Keras adds them."""
        return {terms}

'''


def _forward_body(spec: ir.Spec, out: Lines, graph: list[str] | None = None) -> str:
    """The input check, then every layer's lines; the last one returns its value. `graph`: a
    functional spec's lines, which end in their return."""
    shape_text = ", ".join(map(str, spec.input_shape))
    if spec.input_dtype == "int32":  # token ids: nn.Embedding takes int64 or int32
        lines = ["if x.shape[1:] != self.input_shape or x.dtype not in (torch.int64, torch.int32):",
                 f"    raise ValueError(f\"expected integer ids of shape (batch, {shape_text}); \""]
    else:
        lines = ["if x.shape[1:] != self.input_shape or x.dtype != torch.float32:",
                 f"    raise ValueError(f\"expected float32 inputs of shape (batch, {shape_text}); \""]
    lines += ["                     f\"received {x.dtype} {tuple(x.shape)}\")", *out.forward]
    if graph is not None:
        lines += graph
    elif lines[-1].startswith("x = ") and "#" not in lines[-1]:
        lines[-1] = "return " + lines[-1][len("x = "):]
    else:
        lines.append("return x")
    return _indent(lines, 8)


def _conversions(layouts: set[str], to_torch: bool) -> str:
    """load_keras_weights's (or keras_weights's) conversion of each layout the model uses: to
    torch's, the gate blocks reordered, then the axes permuted; back, the other way round."""
    lines: list[str] = []
    for name, layout in LAYOUTS.items():
        if name in layouts:
            axes = layout.to_torch if to_torch else layout.to_keras
            value = "value" if not axes else "value.T" if axes == (1, 0) else f"value.permute{axes}"
            if to_torch and layout.gates:
                value = ("reorder_gates(value, " + repr(layout.gates) + ")" + value[len("value"):])
            elif layout.gates:
                value = f"reorder_gates({value}, {layout.gates_back!r})"
            note = f"  # {layout.keras} -> {layout.torch}" if to_torch else ""
            lines += [f"{'el' if lines else ''}if layout == {name!r}:{note}", f"    value = {value}"]
    return _indent(lines, 12) + "\n" if lines else ""


def _class(spec: ir.Spec, report: Report, p: Plan, out: Lines, cls: str, graph: list[str] | None = None) -> str:
    body = _forward_body(spec, out, graph)
    if p.output_activation:
        forward = LOGITS.format(activation=p.output_activation, body=body,
                                output=literal(activation(p.output_activation, axis=p.output_axis), x="self.logits(x)"))
    else:
        forward = FORWARD.format(body=body)
    terms = out.penalty[0] if len(out.penalty) == 1 else "(" + "\n                + ".join(out.penalty) + ")"
    return CLASS.format(
        cls=cls, output_shape=fmt_shape(report.output_shape), name=repr(spec.name),
        input_shape=repr(tuple(spec.input_shape)), init=_indent(out.init, 8), reset=_indent(out.reset or ["pass"], 8),
        forward=forward, penalty=PENALTY.format(terms=terms) if out.penalty else "",
        entries=_indent(out.weights, 12), to_torch=_conversions(out.layouts, True),
        to_keras=_conversions(out.layouts, False))


TRAINING = '''{top_k}# (name in the history, per-sample values)
METRICS = [{metric_table}]


def make_optimizer(model):
    return {optimizer}
{schedule}{callbacks}

def compute_loss(model, x, y):
    """{what}; and the outputs."""
{compute}


def batch_sums(loss, outputs, y):
    """The batch's loss times its size, then each metric summed over its samples."""
    values = [loss.detach().double() * len(y)]
    for _, metric in METRICS:
        v = metric(outputs, y)
        values.append((v if v.dim() == 1 else v.reshape(len(v), -1).mean(dim=1)).sum().double())
    return torch.stack(values)


@torch.no_grad()
def evaluate(model, x, y, batch_size=32):
    """Keras's evaluate: the loss (with penalties) and metrics in inference mode, batch by batch."""
    model.eval()
    sums = torch.zeros(1 + len(METRICS), dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        sums += batch_sums(*compute_loss(model, xb, yb), yb)
    return dict(zip(["loss"] + [name for name, _ in METRICS], (sums / len(x)).tolist()))


{adapt_function}def fit(model, x, y, {fit_arguments},
        optimizer=None{callbacks_arg}{adapt_arg}):
    """Keras's fit: the validation split is the tail of the data, taken before shuffling; the
    history holds each epoch's batch-size-weighted mean loss (penalties included) and metrics.
    A step whose loss or gradients are not finite is not applied, and training stops there."""{adapt_call}
    optimizer = optimizer or make_optimizer(model){sparse_squares}{callbacks_init}
    split = int(len(x) * (1 - validation_split))
    (x, y), (x_val, y_val) = (x[:split], y[:split]), (x[split:], y[split:])
    names = ["loss"] + [name for name, _ in METRICS]
    history = {{}}
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x)) if shuffle else torch.arange(len(x))
        sums = torch.zeros(len(names), dtype=torch.float64)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            loss, outputs = compute_loss(model, xb, yb)
            optimizer.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
                print(f"epoch {{epoch + 1}}, step {{start // batch_size + 1}}: not finite; stopped")
                {not_finite}{set_rate}
            optimizer.step()
            sums += batch_sums(loss, outputs, yb)
        logs = dict(zip(names, (sums / len(x)).tolist()))
        if len(x_val):
            validation = evaluate(model, x_val, y_val, batch_size)
            logs.update(("val_" + k, v) for k, v in validation.items()){epoch_end}
        for key in sorted(logs):
            history.setdefault(key, []).append(logs[key])
        shown = " - ".join(f"{{k}}: {{logs[k]:.4f}}" for k in sorted(logs))
        print(f"Epoch {{epoch + 1}}/{{epochs}} - {{shown}}"){stop}{train_end}
    return history'''

# With callbacks: each one sees the epoch's logs before the history records them (Keras's
# History callback comes last), and stops training, and ends it, as in Keras's fit.
CALLBACKS_EPOCH_END = """
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs, model, optimizer)"""
CALLBACKS_STOP = """
        if any(getattr(callback, "stop_training", False) for callback in callbacks):
            break"""
CALLBACKS_TRAIN_END = """
    for callback in callbacks:
        callback.on_train_end(model)"""
NOT_FINITE_CALLBACKS = """for callback in callbacks:
                    callback.on_train_end(model)
                return history"""
SET_RATE = """
            # the schedule's rate of the step count before this update, as Keras reads it
            optimizer.learning_rate.fill_(learning_rate(int(optimizer.iterations)))"""


def _compute_loss(spec: ir.Spec, p: Plan, out: Lines) -> tuple[str, list[str]]:
    """compute_loss's docstring and body: Keras's loss, from the logits where Keras's
    TensorFlow backend computes it from them, plus the penalties."""
    loss = resolve_loss(spec, spec.loss)
    loss_fn = LOSSES[(loss.name, loss.from_logits)]
    if not loss_fn.startswith("F."):
        out.helpers.add(loss_fn)
    extra = f", delta={loss.delta!r}" if loss.name == "huber" else ""
    penalty = " + model.penalty()" if out.penalty else ""
    what = f"Keras's {loss.name}"
    labels = "y"
    if loss.label_smoothing and loss.name in ("categorical_crossentropy", "binary_crossentropy"):
        out.helpers.add("smooth_labels")
        binary = ", binary=True" if loss.name == "binary_crossentropy" else ""
        labels = f"smooth_labels(y, {loss.label_smoothing!r}{binary})"
        what += f" of the labels smoothed by {loss.label_smoothing!r}"
    if loss.from_logits:
        what += ", from the logits\n    (as Keras's TensorFlow backend computes it)"
        # (logits that are the output itself: the model's output, read as it is by the metrics)
        logits = "model.logits(x)" if p.output_activation else "model(x)"
        lines = [f"logits = {logits}", f"loss = {loss_fn}(logits, {labels}{extra}){penalty}",
                 f"return loss, {literal(activation(p.output_activation, axis=p.output_axis), x='logits.detach()')}"]
    else:
        lines = ["outputs = model(x)", f"loss = {loss_fn}(outputs, {labels}{extra}){penalty}",
                 "return loss, outputs.detach()"]
    return what + (", plus the weight penalties" if penalty else ""), lines


def _training(spec: ir.Spec, report: Report, p: Plan, out: Lines) -> str:
    what, compute = _compute_loss(spec, p, out)
    loss = resolve_loss(spec, spec.loss)
    y_shape = (None,) if loss.name == "sparse_categorical_crossentropy" else report.output_shape
    resolved = [resolve_metric(m, y_shape, report.output_shape, spec.k) for m in spec.metrics]
    out.helpers.update(METRICS[m.kind] for m in resolved)
    metrics = [(m.name, METRICS[m.kind] if m.k is None else f"top_{m.k}_{METRICS[m.kind].replace('top_k_', '')}")
               for m in resolved]
    top_k = "".join(TOP_K.format(name=name, metric=METRICS[m.kind], k=m.k)
                    for m, (_, name) in zip(resolved, metrics) if m.k is not None)
    optimizer = spec.optimizer or ir.Optimizer(name="rmsprop")  # Keras compile's default
    out.helpers.add(OPTIMIZERS[optimizer.name])
    # the hyperparameters that differ from the class's defaults, which are Keras's
    defaults = ir.OPTIMIZER_DEFAULTS["adam" if optimizer.name == "adamw" else optimizer.name]
    config = optimizer.config()
    schedule = optimizer.schedule
    if schedule is not None:  # the rate of step 0; fit sets each step's
        config["learning_rate"] = schedule.initial
        out.helpers.add(schedule.name)
    opt_args = "".join(f", {k}={v!r}" for k, v in config.items() if v != defaults.get(k))
    callbacks = _callbacks(spec, out)
    embeddings = [layer for layer in spec.layers if layer.kind == "embedding"]
    squares = optimizer.name != "sgd" and embeddings and not any(e.embeddings_regularizer for e in embeddings)
    if squares:
        out.helpers.add("keep_sparse_squares")
    fit = spec.fit or ir.Fit()
    fit_defaults = {"epochs": fit.epochs if fit.epochs is not None else 1, "batch_size": fit.batch_size or 32,
                    "validation_split": fit.validation_split or 0.0,
                    "shuffle": fit.shuffle if fit.shuffle is not None else True}
    return TRAINING.format(
        metric_table=_table([f"({name!r}, {fn})" for name, fn in metrics], len("METRICS = [")),
        optimizer=_call(OPTIMIZERS[optimizer.name], "model.parameters()" + opt_args, 4),
        what=what, compute=_indent(compute, 4),
        fit_arguments=", ".join(f"{k}={v!r}" for k, v in fit_defaults.items()), top_k=top_k,
        schedule=SCHEDULE.format(name=SCHEDULE_CLASSES[schedule.name], call=_call(
            schedule.name, "step, " + ", ".join(f"{k}={v!r}" for k, v in schedule.config().items()), 4))
        if schedule is not None else "",
        callbacks=CALLBACKS.format(callbacks=_indent(callbacks, 8)) if callbacks else "",
        callbacks_arg=", callbacks=None" if callbacks else "",
        callbacks_init="\n    callbacks = make_callbacks() if callbacks is None else callbacks" if callbacks else "",
        not_finite=NOT_FINITE_CALLBACKS if callbacks else "return history",
        set_rate=SET_RATE if schedule is not None else "",
        epoch_end=CALLBACKS_EPOCH_END if callbacks else "",
        stop=CALLBACKS_STOP if callbacks else "",
        train_end=CALLBACKS_TRAIN_END if callbacks else "",
        sparse_squares="\n    # Keras squares an embedding's gradient row by row before summing each id's rows\n"
                       "    keep_sparse_squares(optimizer, [m for m in model.modules() if isinstance(m, nn.Embedding)])"
        if squares else "",
        **({"adapt_function": ADAPT_FUNCTION, "adapt_arg": ", adapt=True", "adapt_call": ADAPT_CALL}
           if any(layer.adapts for layer in spec.layers)
           else {"adapt_function": "", "adapt_arg": "", "adapt_call": ""}))


TOP_K = '''def {name}(y_pred, y):
    return {metric}(y_pred, y, k={k})


'''
SCHEDULE = '''

def learning_rate(step):
    """Keras's {name} at 0-based optimizer step `step` (float32)."""
    return {call}
'''
CALLBACKS = '''

def make_callbacks():
    return [
{callbacks}
    ]
'''


def _callbacks(spec: ir.Spec, out: Lines) -> list[str]:
    """The spec's callbacks as keras_ops constructor calls, mode 'auto' resolved as Keras
    resolves it: the losses and the error metrics are minimised, the accuracies maximised."""
    lines = []
    for node, cls in ((spec.early_stopping, "EarlyStopping"), (spec.reduce_lr_on_plateau, "ReduceLROnPlateau")):
        if node is None:
            continue
        out.helpers.add(cls)
        declared = type(node).model_fields
        # the monitor, its direction, and what differs from Keras's defaults
        fields = {k: getattr(node, k) for k in declared
                  if k in ("monitor", "mode") or k != "span" and getattr(node, k) != declared[k].default}
        if fields["mode"] == "auto":
            base = fields["monitor"].removeprefix("val_")
            fields["mode"] = "min" if base in ("loss", "mse", "mae") else "max"
        lines.append(_wrapped(cls, ", ".join(f"{k}={v!r}" for k, v in fields.items()), 8) + ",")
    return lines


# For a spec with `normalize`: its statistics are set from the training data before the first
# step, as modelspec's Model.fit does (Model.adapt: the mean and population variance over every
# axis but the layer's own, of the data reaching it, on all of x before the validation split).
ADAPT_FUNCTION = '''@torch.no_grad()
def adapt_normalization(model, x):
    """Each Normalization's mean and variance from x, as Keras's Normalization.adapt sets them:
    the mean and population variance over every axis but the layer's own, of the data reaching
    it (summed in float64), one layer after the other."""
    model.eval()
    seen = []

    def capture(module, args):
        seen.append(args[0])

    for module in model.modules():
        if isinstance(module, Normalization):
            seen.clear()
            hook = module.register_forward_pre_hook(capture)
            model(x)
            hook.remove()
            z = seen[0].double()
            dims = [d for d in range(z.dim()) if d != module.axis % z.dim()]
            module.mean.copy_(z.mean(dims))
            module.variance.copy_(z.var(dims, unbiased=False))


'''
ADAPT_CALL = """
    if adapt:  # the statistics from all of x, before the split, as modelspec's fit sets them
        adapt_normalization(model, x)"""


# Random labels of each kind (modelspec.training.label_kind), for the smoke run.
LABELS = {"class_ids": "torch.randint(0, {units}, {samples})",
          "one_hot": "F.one_hot(torch.randint(0, {units}, {samples}), {units}).float()",
          "binary": "torch.randint(0, 2, {values}).float()",
          "real": "torch.randn{values}"}


def _labels_example(spec: ir.Spec, report: Report) -> str:
    out = report.output_shape[1:]

    def shape(dims) -> str:
        return "(n" + "".join(f", {d}" for d in dims) + ("" if dims else ",") + ")"

    return LABELS[label_kind(spec.loss.name)].format(units=out[-1], samples=shape(out[:-1]), values=shape(out))


def emit(spec: ir.Spec, report: Report) -> str:
    p, out = plan(spec, report), Lines()
    trains = spec.loss is not None
    defined = set(_definitions()) | {"F", "nn", "torch", "math", "METRICS", "fit", "evaluate", "compute_loss",
                                     "make_optimizer", "batch_sums"}
    cls = class_name(spec.name, defined)
    blocks, graph = [], None
    if p.nodes is None:
        for _, step, unit in units(p):
            out.add(step, unit)
    else:
        blocks, graph = _emit_graph(spec, p, out, defined | {cls})
    training = _training(spec, report, p, out) if trains else ""
    class_source = "\n\n\n".join([*blocks, _class(spec, report, p, out, cls, graph)])
    header = HEADER.format(
        cls=cls, input_shape=", ".join(map(str, spec.input_shape)),
        input_kind=f"integer token ids in [0, {spec.id_limit})" if spec.input_dtype == "int32" else "float32",
        training_note=", in the layers as in the loss, penalties and optimizer" if trains else "",
        fit_note="\n    history = fit(model, x, y)  # the spec's training settings, as Keras's fit" if trains else "")
    main = ['if __name__ == "__main__":',
            "    # A smoke run on random data of the model's shapes.",
            f"    model, n = {cls}(), 64",
            f"    x = torch.randint(0, {spec.id_limit}, (n, {', '.join(map(str, spec.input_shape))}))"
            if spec.input_dtype == "int32" else f"    x = torch.randn(n, {', '.join(map(str, spec.input_shape))})"]
    if trains:
        main += [f"    y = {_labels_example(spec, report)}",
                 "    fit(model, x, y, epochs=2, validation_split=0.0)"]
    main += ["    print(tuple(model.eval()(x).shape))"]
    helpers = helpers_source(out.helpers) if out.helpers else ""
    body = [helpers, class_source, training, "\n".join(main)]
    if not any("math." in part for part in body):  # import only what the module uses
        header = header.replace("import math\n\n", "")
    if not any("F." in part for part in body):
        header = header.replace("import torch.nn.functional as F\n", "")
    return "\n\n\n".join(part for part in [header.rstrip("\n"), *body] if part) + "\n"


# ---------------------------------------------------------------------------------------
# Graphs: a forward pass of named values; each block a small nn.Module class used once per use

# A block's class: its docstring, then __init__ and reset_parameters where it has modules and
# weights, then forward.
BLOCK = '''class {cls}(nn.Module):
    """A block of the spec, used {uses}."""'''
INIT = '''    def __init__(self{params}):
        super().__init__()
{lines}'''
RESET = '''    @torch.no_grad()
    def reset_parameters(self):
{lines}'''
FORWARD_BLOCK = '''    def forward(self, {inputs}):
{body}'''


@dataclass
class Owner:
    """One forward pass of the emitted program: the model's (use None) or a block use's. It
    computes its `nodes` (positions in Plan.nodes) and calls its `children` (uses of blocks
    within it), in the order the spec writes them; `inputs` are the values it reads from
    outside, `names` the local name of every value it reads or makes (and of each child, by
    its index in spec.blocks)."""

    use: Any
    nodes: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    names: dict[Any, str] = field(default_factory=dict)
    items: list[tuple[str, int]] = field(default_factory=list)  # ('node', i) or ('use', k), in order


def _owners(spec: ir.Spec, p: Plan, units_of: dict[int, Unit]) -> tuple[Owner, list[Owner]]:
    """The model's forward pass and each block use's. A layout switch belongs to the innermost
    use holding its value and all its readers: the switch of a block's input stays outside, so
    that uses reading their input in either layout can share a class."""
    last = len(p.nodes) - 1
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(p.nodes):
        for j in node.inputs:
            readers.setdefault(j, []).append(i)
    uses = spec.blocks

    innermost: list[int | None] = [None] * len(spec.layers)  # the innermost use holding each spec layer
    for k, use in enumerate(uses):  # a use nested in another comes after it
        innermost[use.start:use.stop] = [k] * (use.stop - use.start)

    def within(k: int | None, index: int) -> bool:
        return k is None or uses[k].start <= index < uses[k].stop

    def position(i: int) -> float:  # where a value is written: its layer's line, a switch just before its reader
        node = p.nodes[i]
        if node.step:
            return node.step.report.index
        return min((position(r) for r in readers.get(i, [])), default=len(spec.layers)) - 0.5

    def nchw(i: int) -> bool:  # whether a value is channels-first (an NCHW image, an NCT sequence)
        node = p.nodes[i] if i >= 0 else None
        if node is None or node.step is None:
            return node is not None and node.permute in ("nchw", "nct")
        return node.step.nchw and len(node.step.report.output_shape) in (3, 4)

    def layout(i: int) -> str:  # a channels-first value's layout, for its name
        node = p.nodes[i]
        return node.permute if node.step is None else "nct" if len(node.step.report.output_shape) == 3 else "nchw"

    owner_of: dict[int, int | None] = {}
    for i, node in enumerate(p.nodes):
        if node.step:
            owner_of[i] = innermost[node.step.report.index]
            continue
        k = owner_of.get(node.inputs[0]) if node.inputs[0] >= 0 else None
        while k is not None and (i == last or not all(within(k, p.nodes[r].step.report.index) for r in readers[i])):
            k = uses[k].parent
        owner_of[i] = k
    top, blocks = Owner(None), [Owner(use) for use in uses]
    for i, k in owner_of.items():
        (top if k is None else blocks[k]).nodes.append(i)
    for k, use in enumerate(uses):
        (top if use.parent is None else blocks[use.parent]).children.append(k)

    subtree: list[set[int]] = [set() for _ in uses]  # the nodes of each use, its children's included
    for i, k in owner_of.items():
        while k is not None:
            subtree[k].add(i)
            k = uses[k].parent
    outputs = {}
    for k, inside in enumerate(subtree):
        outputs[k] = max(inside, key=position)
        inputs = dict.fromkeys(j for i in sorted(inside) for j in p.nodes[i].inputs if j not in inside)
        blocks[k].inputs = sorted(inputs, key=nchw)  # the block's input, then its NCHW copy, if both are read
    for owner in (top, *blocks):
        items = [(position(i), "node", i) for i in owner.nodes] + [(position(outputs[k]), "use", k)
                                                                    for k in owner.children]
        owner.items = [(kind, i) for _, kind, i in sorted(items)]
        taken: set[str] = {*GLOBALS} if owner.use is not None else {"x", *GLOBALS}
        owner.names = {-1: "x"} if owner.use is None else {}
        for j in owner.inputs:
            if j < 0 and spec.input_dtype == "int32":  # the model's token ids (masked layers' mask)
                owner.names[j] = identifier("ids", taken)
            else:
                owner.names[j] = identifier(f"x_{layout(j)}" if len(owner.inputs) > 1 and nchw(j) else "x", taken)
        for kind, i in owner.items:  # names in the spec's order: the first conv2d is conv2d
            if kind == "use":
                owner.names[("use", i)] = owner.names[outputs[i]] = identifier(uses[i].block, taken)
            elif not units_of[i].forward:  # a layer that computes nothing (its activation is the output's)
                owner.names[i] = owner.names[p.nodes[i].inputs[0]]
            elif p.nodes[i].step is None:
                owner.names[i] = identifier(f"{owner.names[p.nodes[i].inputs[0]]}_{p.nodes[i].permute}", taken)
            elif owner.use is None:
                owner.names[i] = identifier(p.nodes[i].name, taken)
            else:
                owner.names[i] = identifier(_local_base(p.nodes[i]), taken)
    return top, blocks


def _local_base(node: Node) -> str:
    """A block's own name for a layer: its Keras name without the counter (conv2d_3 -> conv2d)."""
    return re.sub(r"_\d+$", "", node.name)


def _argument_value(text: str) -> Any:
    """A block argument's text as the lowering's values hold it: 8, 0.5, (3, 3), 'relu'."""
    if re.fullmatch(r"\d+(x\d+)+", text):
        return tuple(int(v) for v in text.split("x"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class _Slot:
    """A constructor value a block class takes as a parameter."""

    def __init__(self, name: str) -> None:
        self.name = name


def _leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """The constant numbers (and tuples of them) in a module's constructor call, by position."""
    if isinstance(value, Call):
        return [leaf for k, v in [*enumerate(value.args), *value.kwargs.items()] for leaf in _leaves(v, (*path, k))]
    if isinstance(value, (int, float, tuple)) and not isinstance(value, bool):
        return [(path, value)]
    return []


def _replace(value: Any, slots: dict[tuple, str], path: tuple = ()) -> Any:
    if isinstance(value, Call):
        args = tuple(_replace(v, slots, (*path, k)) for k, v in enumerate(value.args))
        kwargs = {k: _replace(v, slots, (*path, k)) for k, v in value.kwargs.items()}
        return Call(value.target, args, kwargs, value.note)
    return _Slot(slots[path]) if path in slots else value


def _skeleton(value: Any) -> Any:
    """A constructor call with its numbers taken out: uses whose skeletons agree share a class."""
    if isinstance(value, Call):
        return (value.target, tuple(_skeleton(v) for v in value.args),
                tuple((k, _skeleton(v)) for k, v in value.kwargs.items()))
    return "#" if isinstance(value, (int, float, tuple)) and not isinstance(value, bool) else repr(value)


def _node_line(name: str, inputs: list[str], node: Node, unit: Unit, attr: str) -> list[str]:
    """The forward lines of one value: `name = expression` (a layer of several calls takes
    its input, then its own value, in turn)."""
    lines = []
    for k, expr in enumerate(unit.forward):
        x: Any = tuple(inputs) if node.step and node.step.operands else (inputs[0] if k == 0 else name)
        lines.append(_commented(f"{name} = {literal(expr, x=x, attr=attr)}", getattr(expr, "note", ""), 8))
    return lines


def _return(lines: list[str], name: str) -> list[str]:
    if lines and lines[-1].startswith(f"{name} = ") and "#" not in lines[-1] and "\n" not in lines[-1]:
        return [*lines[:-1], "return " + lines[-1][len(f"{name} = "):]]
    return [*lines, f"return {name}"]


def _slot_literal(value: Any) -> str:
    """literal() with a block's constructor parameters printed as their names."""
    if isinstance(value, _Slot):
        return value.name
    if isinstance(value, Call):
        args = [_slot_literal(a) for a in value.args] + [f"{k}={_slot_literal(v)}" for k, v in value.kwargs.items()]
        return f"{value.target}({', '.join(args)})"
    return literal(value)


def _render(owner: Owner, p: Plan, units_of: dict[int, Unit], ctors: dict[int, Call], resetting: set[int],
            blocks: list[Owner], out: Lines) -> tuple[list, list[str], list[str]]:
    """An owner's constructor entries ((attribute, Call), for its layers' modules and its
    children's classes), its forward lines, the last one returning its value, and its lines
    of reset_parameters (a child resets its own weights)."""
    init, lines, reset = [], [], []
    names = owner.names
    for kind, i in owner.items:
        if kind == "use":
            attr = names["use", i]
            child = ctors[i]
            init.append((attr, child))
            if i in resetting:  # its class has weights to reset
                reset.append(f"self.{attr}.reset_parameters()")
            lines.append(f"{attr} = self.{attr}(" + ", ".join(names[j] for j in blocks[i].inputs) + ")")
            continue
        node, unit = p.nodes[i], units_of[i]
        if not unit.forward:  # nothing to compute: named as its input (_owners)
            continue
        if unit.module:
            init.append((names[i], unit.module))
        reset += out.resets(names[i], node.step, unit)
        lines += _node_line(names[i], [names[j] for j in node.inputs], node, unit, names[i])
    output = owner.items[-1]
    return init, _return(lines, names["use", output[1]] if output[0] == "use" else names[output[1]]), reset


def _emit_graph(spec: ir.Spec, p: Plan, out: Lines, defined: set[str]) -> tuple[list[str], list[str]]:
    """The block classes and the model's forward body lines of a functional spec; the model's
    __init__, reset, weights and penalty lines go to `out`."""
    units_of = dict(enumerate(u for _, u in graph_units(p)))
    for unit in units_of.values():
        for call in (c for e in (unit.module, *unit.forward) for c in calls(e)):
            if "." not in call.target and call.target != SELF and call.target not in OPERATORS:
                out.helpers.add(call.target)
    top, blocks = _owners(spec, p, units_of)

    # the uses with no block in them first: a class's constructor builds its children's classes
    classes: list[tuple[int, str]] = []  # (first use, source), a class after those it builds
    ctors: dict[int, Call] = {}
    resetting: set[int] = set()  # the uses whose class has a reset_parameters
    class_taken = set(defined)
    rendered = {}
    height: dict[int, int] = {}  # 0 for a use with no block in it, 1 + its children's most otherwise
    for k in reversed(range(len(blocks))):  # a child comes after its parent in spec.blocks
        height[k] = 1 + max((height[c] for c in blocks[k].children), default=-1)
    for level in sorted(set(height.values())):
        groups: dict[Any, list[int]] = {}
        for k in (k for k in range(len(blocks)) if height[k] == level):
            init, lines, reset = rendered[k] = _render(blocks[k], p, units_of, ctors, resetting, blocks, out)
            key = (spec.blocks[k].block, tuple(blocks[k].names[j] for j in blocks[k].inputs), tuple(lines),
                   tuple(reset),
                   tuple((attr, _skeleton(call)) for attr, call in init))
            groups.setdefault(key, []).append(k)
        for members in groups.values():
            source, calls_of = _block_class(spec, p, members, rendered, blocks, class_taken)
            classes.append((members[0], source))
            ctors.update(calls_of)
            if rendered[members[0]][2]:
                resetting.update(members)

    init, forward, out.reset = _render(top, p, units_of, ctors, resetting, blocks, out)
    out.init += [_commented(f"self.{attr} = {literal(call)}", call.note, 8) for attr, call in init]
    paths: dict[int, str] = {}  # the module attribute path of each node's layer

    def place(owner: Owner, prefix: str) -> None:
        for kind, i in owner.items:
            if kind == "use":
                place(blocks[i], f"{prefix}{owner.names['use', i]}.")
            else:
                paths[i] = prefix + owner.names[i]

    place(top, "")
    for i, node in enumerate(p.nodes):
        out.add_weights(paths[i], node.step, units_of[i], reset=False)
    return [source for _, source in classes], forward


def _block_class(spec: ir.Spec, p: Plan, members: list[int], rendered: dict, blocks: list[Owner],
                 class_taken: set[str]) -> tuple[str, dict[int, Call]]:
    """The class of block uses whose code is the same but for constructor values: those that
    differ between the uses, or that are the value of a block parameter in every use, become
    the constructor's parameters (named after the block's parameter, or the argument's)."""
    uses = spec.blocks
    first_use = uses[members[0]]
    cls = base = class_name(first_use.block)
    n = 2
    while cls in class_taken:  # a second class of one block: its uses differ in structure
        cls, n = f"{base}{n}", n + 1
    class_taken.add(cls)
    first_init, body, reset = rendered[members[0]]
    params: dict[str, list[Any]] = {}  # constructor parameter -> its value per use
    slots: list[dict[tuple, str]] = []
    for entry, (attr, call) in enumerate(first_init):
        values = [_leaves(rendered[k][0][entry][1]) for k in members]
        layer = next((i for i in blocks[members[0]].nodes if blocks[members[0]].names.get(i) == attr), None)
        spec_index = p.nodes[layer].step.report.index if layer is not None else None
        setting = [param for index, pairs in first_use.params_of if index == spec_index for _, param in pairs]
        slots.append({})
        for leaf, (path, _) in enumerate(values[0]):
            per_use = [v[leaf][1] for v in values]
            # a block parameter whose value it is in every use: first one setting this
            # layer's fields, then any (BatchNorm's channels are the filters set before it)
            candidates = [*setting, *(param for param, _ in first_use.arguments)]
            name = next((param for param in candidates
                         if all(_argument_value(dict(uses[k].arguments)[param]) == v
                                for k, v in zip(members, per_use))), None)
            if name is None and len(set(map(repr, per_use))) > 1:  # a value the uses differ in
                label = path[-1] if isinstance(path[-1], str) else _positional(_module_class(call.target), path[-1])
                name = next((n for n, v in params.items() if repr(v) == repr(per_use)), None)
                if name is None:
                    name = label if label not in params else f"{attr}_{label}"
            if name is not None:
                params.setdefault(name, per_use)
                slots[-1][path] = name
    block_params = [param for param, _ in first_use.arguments]
    params = dict(sorted(params.items(), key=lambda kv: block_params.index(kv[0]) if kv[0] in block_params
                         else len(block_params)))  # the block's own parameters first, in its order
    param_taken: set[str] = {"self", *GLOBALS}  # nn.Linear(...) must still find nn
    param_names = {n: identifier(n, param_taken) for n in params}
    init = [_commented(f"self.{attr} = "
                       + _slot_literal(_replace(call, {path: param_names[n] for path, n in slots[e].items()})),
                       call.note, 8) for e, (attr, call) in enumerate(first_init)]
    inputs = ", ".join(blocks[members[0]].names[j] for j in blocks[members[0]].inputs)
    parts = [BLOCK.format(cls=cls, uses={1: "once", 2: "twice"}.get(len(members), f"{len(members)} times"))]
    if init:
        parts.append(INIT.format(params="".join(f", {param_names[n]}" for n in params), lines=_indent(init, 8)))
    if reset:
        parts.append(RESET.format(lines=_indent(reset, 8)))
    source = "\n\n".join([*parts, FORWARD_BLOCK.format(inputs=inputs, body=_indent(body, 8))])
    calls_of = {k: Call(cls, (), {param_names[n]: v[m] for n, v in params.items()}) for m, k in enumerate(members)}
    return source, calls_of


def _positional(target: Any, index: int) -> str:
    """The name of a constructor's positional parameter `index` (nn.Conv2d's 0: in_channels)."""
    try:
        params = [n for n in inspect.signature(target).parameters if n != "self"]
        return params[index]
    except (TypeError, ValueError, IndexError):
        return f"arg{index}"


def _module_class(target: str) -> Any:
    """The class a module's constructor call names (its parameters name a block's arguments)."""
    from torch import nn

    return getattr(nn, target[3:]) if target.startswith("nn.") else getattr(keras_ops, target, None)
