"""Standalone PyTorch source for a spec: `modelspec compile SPEC --backend torch`.

The generated module imports torch (and math) only. It holds an nn.Module subclass named
after the model, with one line per layer in `__init__` and in the forward pass, Keras's
initializers, a map of Keras's weight paths and layouts, and - when the spec has a
training section - the loss, penalties, optimizer and a Keras-like `fit`. Where Keras
and torch differ, the Keras-exact pieces are copied from keras_ops.py, the very code
the live backend runs.

One method per layer kind writes that layer's lines. Text from the spec (the model's and
layers' names) reaches the output only through repr() as string literals, never as code,
comments or docstrings; identifiers are derived from it by keeping [A-Za-z0-9_].
"""

from __future__ import annotations

import ast
import inspect
import math
from dataclasses import dataclass, field

from modelspec import ir
from modelspec.checker import Report, fmt_shape
from modelspec.training import resolve_loss, resolve_metric

from . import keras_ops
from .plan import Step, class_name, plan, symmetric

TRUNCATED_STD = 0.87962566103423978

ACTIVATIONS = {
    "relu": "F.relu({x})", "sigmoid": "torch.sigmoid({x})", "tanh": "torch.tanh({x})",
    "softmax": "torch.softmax({x}, dim={axis})", "elu": "F.elu({x})", "selu": "selu({x})",
    "gelu": "F.gelu({x})", "swish": "F.silu({x})", "softplus": "F.softplus({x})", "relu6": "F.relu6({x})",
    "leaky_relu": "F.leaky_relu({x}, 0.2)",  # the activation's slope; the LeakyReLU layer's is 0.3
}
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
              "nadam": "Nadam"}
METRICS = {"categorical_accuracy": "categorical_accuracy", "sparse_categorical_accuracy": "sparse_categorical_accuracy",
           "binary_accuracy": "binary_accuracy", "mse": "mean_squared_error", "mae": "mean_absolute_error"}


def activation(name: str | None, x: str, axis: int = -1) -> str:
    return x if name is None else ACTIVATIONS[name].format(x=x, axis=axis)


def _tuple(values) -> str:
    return repr(tuple(values))


@dataclass
class Lines:
    """What the layers contribute to each part of the class."""

    init: list[str] = field(default_factory=list)  # in __init__
    reset: list[str] = field(default_factory=list)  # in reset_parameters
    forward: list[str] = field(default_factory=list)  # the forward pass, each line transforming x
    weights: list[str] = field(default_factory=list)  # (Keras path, tensor, layout) entries
    penalty: list[str] = field(default_factory=list)  # terms of the weight penalty
    helpers: set[str] = field(default_factory=set)  # keras_ops definitions the module needs


class Emitter:
    """One method per layer kind, writing that layer's lines."""

    def __init__(self, spec: ir.Spec, report: Report) -> None:
        self.spec, self.report = spec, report
        self.plan = plan(spec, report)
        self.out = Lines()

    # -- shared pieces ---------------------------------------------------------------------

    def initializer(self, tensor: str, init: ir.Initializer, shape: tuple[int, ...]) -> str:
        """The torch call drawing Keras's initializer `init` for a weight of Keras shape `shape`.
        torch's own fans agree with Keras's for its layouts; seeds cannot carry over."""
        from modelspec.initializers import compute_fans

        fan_in, fan_out = compute_fans(shape)
        a = init.args()
        name = init.name
        if name in ("glorot_normal", "he_normal", "lecun_normal"):
            self.out.helpers.add("variance_scaling_normal_")
            scale, fan = {"glorot_normal": (1.0, (fan_in + fan_out) / 2), "he_normal": (2.0, fan_in),
                          "lecun_normal": (1.0, fan_in)}[name]
            return f"variance_scaling_normal_({tensor}, scale={scale!r}, fan={fan!r})  # {name}"
        if name in ("glorot_uniform", "he_uniform", "lecun_uniform") and len(shape) < 2:
            # torch's xavier_uniform_ and kaiming_uniform_ refuse a vector (a bias); Keras takes
            # its length as both fans
            scale, fan = {"glorot_uniform": (1.0, (fan_in + fan_out) / 2), "he_uniform": (2.0, fan_in),
                          "lecun_uniform": (1.0, fan_in)}[name]
            limit = math.sqrt(3 * scale / max(1.0, fan))
            return f"nn.init.uniform_({tensor}, {-limit!r}, {limit!r})  # {name}"
        if name == "truncated_normal":
            self.out.helpers.add("truncated_normal_")
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

    def _kernel(self, step: Step, layout: str) -> None:
        """A dense or conv layer's weights: initializers, Keras paths, penalty."""
        layer, attr = step.layer, f"self.{step.attr}"
        kernel, *bias = step.report.weights
        self.out.reset.append(self.initializer(f"{attr}.weight", layer.kernel_initializer, kernel.shape))
        self.out.weights.append(_entry(kernel.path, f"{attr}.weight", layout))
        if bias:
            self.out.reset.append(self.initializer(f"{attr}.bias", layer.bias_initializer, bias[0].shape))
            self.out.weights.append(_entry(bias[0].path, f"{attr}.bias", None))
        reg = layer.kernel_regularizer
        if reg is not None:
            if reg.l1:
                self.out.penalty.append(f"{reg.l1!r} * {attr}.weight.abs().sum()")
            if reg.l2:
                self.out.penalty.append(f"{reg.l2!r} * {attr}.weight.square().sum()")

    def forward(self, line: str) -> None:
        self.out.forward.append(line)

    # -- layers ----------------------------------------------------------------------------

    def dense(self, step: Step) -> None:
        layer = step.layer
        n_in = step.report.input_shape[-1]
        self.out.init.append(f"self.{step.attr} = nn.Linear({n_in}, {layer.units}"
                             f"{'' if layer.use_bias else ', bias=False'})")
        self.forward(f"x = {activation(step.activation, f'self.{step.attr}(x)')}")
        self._kernel(step, "dense")

    def conv2d(self, step: Step) -> None:
        layer, pads = step.layer, step.pads
        args = [str(step.report.input_shape[-1]), str(layer.filters), f"kernel_size={_tuple(layer.kernel_size)}"]
        if layer.strides != (1, 1):
            args.append(f"stride={_tuple(layer.strides)}")
        same = pads is not None and symmetric(pads)
        if same:
            args.append(f"padding={_tuple((pads[2], pads[0]))}")
        if not layer.use_bias:
            args.append("bias=False")
        self.out.init.append(f"self.{step.attr} = nn.Conv2d({', '.join(args)})" + ("  # 'same'" if same else ""))
        if pads and not same:
            self.forward(f"x = F.pad(x, {_tuple(pads)})  # 'same' as in Keras: the odd pixel goes right and bottom")
        self.forward(f"x = {activation(step.activation, f'self.{step.attr}(x)', axis=1)}")
        self._kernel(step, "conv")

    def maxpool2d(self, step: Step) -> None:
        layer, pads = step.layer, step.pads
        k, s = _tuple(layer.pool_size), _tuple(layer.resolved_strides)
        if pads is None:
            self.forward(f"x = F.max_pool2d(x, {k}, {s})")
        elif symmetric(pads):
            self.forward(f"x = F.max_pool2d(x, {k}, {s}, padding={_tuple((pads[2], pads[0]))})  # 'same'")
        else:
            self.forward(f"x = F.max_pool2d(F.pad(x, {_tuple(pads)}, value=-math.inf), {k}, {s})  "
                         "# 'same', the odd pixel right and bottom")

    def avgpool2d(self, step: Step) -> None:
        layer, pads = step.layer, step.pads
        k, s = _tuple(layer.pool_size), _tuple(layer.resolved_strides)
        if pads is None:
            self.forward(f"x = F.avg_pool2d(x, {k}, {s})")
        elif symmetric(pads):
            self.forward(f"x = F.avg_pool2d(x, {k}, {s}, padding={_tuple((pads[2], pads[0]))}, "
                         "count_include_pad=False)  # 'same': padding is not averaged")
        else:
            self.out.helpers.add("avg_pool2d_same")
            self.forward(f"x = avg_pool2d_same(x, {k}, {s}, {_tuple(pads)})")

    def globalavgpool2d(self, step: Step) -> None:
        self.forward(f"x = x.mean(dim={(2, 3) if step.nchw else (1, 2)})")

    def flatten(self, step: Step) -> None:
        self.forward("x = x.flatten(1)")

    def dropout(self, step: Step) -> None:
        self.out.init.append(f"self.{step.attr} = nn.Dropout({step.layer.rate!r})  # Keras's: inverted, training only")
        self.forward(f"x = self.{step.attr}(x)")

    def batchnorm(self, step: Step) -> None:
        layer, attr = step.layer, f"self.{step.attr}"
        self.out.helpers.add("BatchNorm")
        axis = "" if step.channel_axis == -1 else ", axis=1"
        self.out.init.append(f"{attr} = BatchNorm({step.report.input_shape[-1]}, momentum={layer.momentum!r}, "
                             f"epsilon={layer.epsilon!r}{axis})")
        self.out.reset.append(f"{attr}.reset_parameters()")
        self.forward(f"x = {attr}(x)")
        for w, tensor in zip(step.report.weights, ("gamma", "beta", "moving_mean", "moving_variance")):
            self.out.weights.append(_entry(w.path, f"{attr}.{tensor}", None))

    def activation(self, step: Step) -> None:
        if step.activation is not None:
            self.forward(f"x = {activation(step.activation, 'x', step.channel_axis)}")

    def leaky_relu(self, step: Step) -> None:
        self.forward(f"x = F.leaky_relu(x, {step.layer.negative_slope!r})  # Keras's LeakyReLU layer "
                     "(torch's default slope is 0.01)")

    # -- the module ------------------------------------------------------------------------

    def layers(self) -> None:
        for step in self.plan.steps:
            if step.permute == "nchw":
                self.forward("x = x.permute(0, 3, 1, 2)  # Keras's NHWC to torch's NCHW")
            elif step.permute == "nhwc":
                self.forward("x = x.permute(0, 2, 3, 1)  # back to NHWC: Keras flattens and reads channels last")
            getattr(self, step.layer.kind)(step)
        if self.plan.final_permute:
            self.forward("x = x.permute(0, 2, 3, 1)  # back to Keras's NHWC")


def _call(function: str, arguments: str, indent: int) -> str:
    """`function(arguments)` after a `return`, its arguments wrapped to lines of 100 characters."""
    import textwrap

    line = f"{function}({arguments})"
    if indent + len("return ") + len(line) <= 100:
        return line
    lines = textwrap.wrap(arguments, width=100 - indent - 4, break_long_words=False, break_on_hyphens=False)
    return f"{function}(\n" + "".join(" " * (indent + 4) + part + "\n" for part in lines) + " " * indent + ")"


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
    outputs = model(x)  # x: float32, shape (batch, {input_shape}){fit_note}

modelspec's weights (Model.save writes a safetensors file keyed by Keras's weight paths)
load with `model.load_keras_weights(safetensors.torch.load_file(path))`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
'''


def _class(em: Emitter, cls: str) -> str:
    spec, out, p = em.spec, em.out, em.plan
    shape_text = ", ".join(map(str, spec.input_shape))
    check = [
        "if x.shape[1:] != self.input_shape or x.dtype != torch.float32:",
        f"    raise ValueError(f\"expected float32 inputs of shape (batch, {shape_text}); \"",
        "                     f\"received {x.dtype} {tuple(x.shape)}\")",
    ]
    body_lines = check + out.forward
    returns = body_lines[:-1] + ["return " + body_lines[-1].split(" = ", 1)[1]] \
        if body_lines[-1].startswith("x = ") and "#" not in body_lines[-1] else body_lines + ["return x"]
    parts = [f"class {cls}(nn.Module):",
             f'    """The spec\'s layers; output {fmt_shape(em.report.output_shape)}."""',
             "",
             f"    keras_name = {spec.name!r}",
             f"    input_shape = {tuple(spec.input_shape)!r}",
             "",
             "    def __init__(self):",
             "        super().__init__()",
             _indent(out.init, 8),
             "        self.reset_parameters()",
             "",
             "    @torch.no_grad()",
             "    def reset_parameters(self):",
             '        """Keras\'s initializers (torch\'s defaults: kaiming-uniform kernels, random biases)."""',
             _indent(out.reset or ["pass"], 8),
             ""]
    if p.output_activation:
        parts += ["    def logits(self, x):",
                  f'        """Every layer but the final {p.output_activation}: Keras\'s TensorFlow backend computes the',
                  '        matching cross-entropy from these values."""',
                  _indent(returns, 8),
                  "",
                  "    def forward(self, x):",
                  f"        return {activation(p.output_activation, 'self.logits(x)')}",
                  ""]
    else:
        parts += ["    def forward(self, x):", _indent(returns, 8), ""]
    if out.penalty:
        parts += ["    def penalty(self):",
                  '        """The kernel regularizers\' L1/L2 terms, added to the loss as Keras adds them."""',
                  "        return " + out.penalty[0] if len(out.penalty) == 1 else
                  "        return (" + "\n                + ".join(out.penalty) + ")",
                  ""]
    layouts = {layout for line in out.weights for layout in ("dense", "conv") if f"'{layout}')," in line}
    to_torch, to_keras = [], []
    if "dense" in layouts:
        to_torch += ["if layout == 'dense':  # (in, out) -> (out, in)", "    value = value.T"]
        to_keras += ["if layout == 'dense':", "    value = value.T"]
    if "conv" in layouts:
        to_torch += [f"{'el' if to_torch else ''}if layout == 'conv':  # (kh, kw, in, out) -> (out, in, kh, kw)",
                     "    value = value.permute(3, 2, 0, 1)"]
        to_keras += [f"{'el' if to_keras else ''}if layout == 'conv':", "    value = value.permute(2, 3, 1, 0)"]
    parts += ["    def keras_layout(self):",
              '        """(Keras weight path, tensor, layout) in Keras\'s order. Keras keeps dense kernels as',
              '        (in, out) and conv kernels as (kh, kw, in, out); torch as (out, in), (out, in, kh, kw)."""',
              "        return [",
              _indent(out.weights, 12),
              "        ]",
              "",
              "    @torch.no_grad()",
              "    def load_keras_weights(self, weights):",
              '        """Set every weight from arrays in Keras\'s layout, keyed by Keras\'s weight paths."""',
              "        for path, tensor, layout in self.keras_layout():",
              "            value = torch.as_tensor(weights[path], dtype=torch.float32)",
              _indent(to_torch, 12),
              "            tensor.copy_(value)",
              "",
              "    @torch.no_grad()",
              "    def keras_weights(self):",
              '        """Every weight in Keras\'s layout, keyed by Keras\'s weight path."""',
              "        weights = {}",
              "        for path, tensor, layout in self.keras_layout():",
              "            value = tensor.detach()",
              _indent(to_keras, 12),
              "            weights[path] = value.clone()",
              "        return weights"]
    return "\n".join(parts)


def _training(em: Emitter, cls: str) -> str:
    spec, report, p = em.spec, em.report, em.plan
    loss = resolve_loss(spec, spec.loss)
    optimizer = spec.optimizer or ir.Optimizer(name="rmsprop")  # Keras compile's default
    loss_fn = LOSSES[(loss.name, loss.from_logits)]
    if not loss_fn.startswith("F."):
        em.out.helpers.add(loss_fn)
    extra = f", delta={loss.delta!r}" if loss.name == "huber" else ""
    y_shape = (None,) if loss.name == "sparse_categorical_crossentropy" else report.output_shape
    metrics = [(m, METRICS[resolve_metric(m, y_shape, report.output_shape).kind]) for m in spec.metrics]
    em.out.helpers.update(fn for _, fn in metrics)
    em.out.helpers.add(OPTIMIZERS[optimizer.name])
    penalty = " + model.penalty()" if em.out.penalty else ""
    if loss.from_logits:
        compute = ["logits = model.logits(x)",
                   f"loss = {loss_fn}(logits, y{extra}){penalty}",
                   f"return loss, {activation(p.output_activation, 'logits.detach()')}"]
        what = f"Keras's {loss.name}, from the logits\n    (as Keras's TensorFlow backend computes it)"
    else:
        compute = ["outputs = model(x)", f"loss = {loss_fn}(outputs, y{extra}){penalty}",
                   "return loss, outputs.detach()"]
        what = f"Keras's {loss.name}"
    fit = spec.fit or ir.Fit()
    fit_defaults = {"epochs": fit.epochs if fit.epochs is not None else 1, "batch_size": fit.batch_size or 32,
                "validation_split": fit.validation_split or 0.0,
                "shuffle": fit.shuffle if fit.shuffle is not None else True}
    # the hyperparameters that differ from the class's defaults, which are Keras's
    defaults = ir.OPTIMIZER_DEFAULTS["adam" if optimizer.name == "adamw" else optimizer.name]
    opt_args = "".join(f", {k}={v!r}" for k, v in optimizer.config().items() if v != defaults[k])
    metric_table = ", ".join(f"({name!r}, {fn})" for name, fn in metrics)
    return f'''# (name in the history, per-sample values)
METRICS = [{metric_table}]


def make_optimizer(model):
    return {_call(OPTIMIZERS[optimizer.name], "model.parameters()" + opt_args, 4)}


def compute_loss(model, x, y):
    """{what}{', plus the weight penalties' if penalty else ''}; and the outputs."""
{_indent(compute, 4)}


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


def fit(model, x, y, {", ".join(f"{k}={v!r}" for k, v in fit_defaults.items())},
        optimizer=None):
    """Keras's fit: the validation split is the tail of the data, taken before shuffling; the
    history holds each epoch's batch-size-weighted mean loss (penalties included) and metrics.
    A step whose loss or gradients are not finite is not applied, and training stops there."""
    optimizer = optimizer or make_optimizer(model)
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
                return history
            optimizer.step()
            sums += batch_sums(loss, outputs, yb)
        logs = dict(zip(names, (sums / len(x)).tolist()))
        if len(x_val):
            validation = evaluate(model, x_val, y_val, batch_size)
            logs.update(("val_" + k, v) for k, v in validation.items())
        for key in sorted(logs):
            history.setdefault(key, []).append(logs[key])
        shown = " - ".join(f"{{k}}: {{logs[k]:.4f}}" for k in sorted(logs))
        print(f"Epoch {{epoch + 1}}/{{epochs}} - {{shown}}")
    return history'''


def _labels_example(spec: ir.Spec, report: Report) -> str:
    """Random labels of the kind the loss expects, for the smoke run."""
    out = report.output_shape[1:]
    units = out[-1]

    def shape(dims) -> str:
        return "(n" + "".join(f", {d}" for d in dims) + ("" if dims else ",") + ")"

    name = spec.loss.name
    if name == "sparse_categorical_crossentropy":
        return f"torch.randint(0, {units}, (n,))"
    if name == "categorical_crossentropy":
        return f"F.one_hot(torch.randint(0, {units}, {shape(out[:-1])}), {units}).float()"
    if name == "binary_crossentropy":
        return f"torch.randint(0, 2, {shape(out)}).float()"
    return f"torch.randn{shape(out)}"


def emit(spec: ir.Spec, report: Report) -> str:
    em = Emitter(spec, report)
    em.layers()
    if any(getattr(layer, "activation", None) == "selu" for layer in spec.layers):
        em.out.helpers.add("selu")  # keras_ops's: TensorFlow's gradient at 0
    trains = spec.loss is not None
    defined = set(_definitions()) | {"F", "nn", "torch", "math", "METRICS", "fit", "evaluate", "compute_loss",
                                     "make_optimizer", "batch_sums"}
    cls = class_name(spec.name, defined)
    training = _training(em, cls) if trains else ""
    class_source = _class(em, cls)
    header = HEADER.format(
        cls=cls, input_shape=", ".join(map(str, spec.input_shape)),
        training_note=", in the layers as in the loss, penalties and optimizer" if trains else "",
        fit_note="\n    history = fit(model, x, y)  # the spec's training settings, as Keras's fit" if trains else "")
    main = ['if __name__ == "__main__":',
            "    # A smoke run on random data of the model's shapes.",
            f"    model, n = {cls}(), 64",
            f"    x = torch.randn(n, {', '.join(map(str, spec.input_shape))})"]
    if trains:
        main += [f"    y = {_labels_example(spec, report)}",
                 "    fit(model, x, y, epochs=2, validation_split=0.0)"]
    main += ["    print(tuple(model.eval()(x).shape))"]
    helpers = helpers_source(em.out.helpers) if em.out.helpers else ""
    body = [helpers, class_source, training, "\n".join(main)]
    if not any("math." in part for part in body):  # import only what the module uses
        header = header.replace("import math\n\n", "")
    if not any("F." in part for part in body):
        header = header.replace("import torch.nn.functional as F\n", "")
    return "\n\n\n".join(part for part in [header.rstrip("\n"), *body] if part) + "\n"
