"""A Keras Sequential or functional model as a spec: the library behind `modelspec import`.

Only the model's JSON configuration is read (config.json inside a .keras zip, or a file
holding `model.to_json()`): nothing is deserialized or executed, and Keras need not be
installed. Every layer must be expressible in the language; the first one that is not is
named with its position, and so is any setting (a constraint, a loss's reduction) a spec
cannot carry. A .keras file holds no callbacks (model.save writes the model's config, its
compile() arguments and its weights; fit()'s arguments are not the model's), so an imported
spec has no early_stopping or reduce_lr_on_plateau. Layer names are kept wherever modelspec would name the layer
differently, so an imported spec checks to the same names, shapes and parameters. A
functional model (one input, one output, each layer called once) becomes a spec with
references: `h = dense 64`, `from=h`, `in`, `add a b`; blocks are not recovered.

    config = read_config("model.keras")
    imported = convert(config)       # .text, .spec, .report, .notes

A layer kind is imported by one entry in `CONVERTERS`: the Keras class name and the
function that turns its config into the IR node (keras/src/layers/ holds each class's
`get_config`, which says what the config holds).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from typing import Any, Callable, NamedTuple

from . import ir
from .checker import Report, check, layer_names
from .shapes import fmt_shape
from .errors import ModelspecError
from .ir import INITIALIZER_ALIASES, LOSS_ALIASES, OPTIMIZER_ALIASES
from .parser import parse
from .printer import layer_text, to_text


class ModelFileError(ModelspecError):
    """A file that is not a readable Keras model: neither a .keras zip nor a JSON config."""


class UnsupportedError(ModelspecError, ValueError):
    """Something in the Keras model that a spec cannot express."""


class Imported(NamedTuple):
    """A converted model: the spec's text, the spec parsed back from it, its report, and notes
    on what the config did not say (the defaults the spec assumes instead)."""

    text: str
    spec: ir.Spec
    report: Report
    notes: list[str]


def convert(config: dict[str, Any], training: bool = True) -> Imported:
    """The spec for a model's config, printed and checked as it will be read back.
    Raises UnsupportedError for what a spec cannot express, SpecError for a model Keras would
    reject too (a window larger than its input, say)."""
    spec, notes = spec_from_config(config, training)
    text = spec_text(spec)
    parsed = parse(text, name=spec.name)
    return Imported(text, parsed, check(parsed), notes)


# ---------------------------------------------------------------------------------------
# Reading the file


def read_config(path: str) -> dict[str, Any]:
    """The model's config dict from a .keras zip or a JSON file; ModelFileError if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                if "config.json" not in z.namelist():
                    raise ModelFileError(f"{path} is a zip file without config.json: not a Keras model file "
                                         "(save one with model.save('model.keras'))")
                raw = z.read("config.json")
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelFileError(f"{path} is a damaged .keras file: {e}") from None
    elif head.startswith(b"\x89HDF"):
        raise ModelFileError(f"{path} is an HDF5 (.h5) file; modelspec reads .keras files and JSON configs: "
                             "re-save the model with model.save('model.keras'), or write model.to_json() to a file")
    elif str(path).endswith(".keras"):  # a .keras file is a zip archive, whatever else it holds
        raise ModelFileError(f"{path} is not a .keras file: expected a zip archive (as model.save('model.keras') "
                             f"writes); received a file starting with {head!r}")
    else:
        with open(path, "rb") as f:
            raw = f.read()
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{path}: expected a Keras model's JSON config; it is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: expected a Keras model's JSON config (an object); "
                             f"received {type(config).__name__}")
    return config


# ---------------------------------------------------------------------------------------
# Config to IR


def spec_from_config(config: dict[str, Any], training: bool = True) -> tuple[ir.Spec, list[str]]:
    """(IR spec, notes) for a Sequential or functional model's config, as saved by Keras 3 or
    tf.keras 2. Raises UnsupportedError naming the first thing a spec cannot express."""
    notes: list[str] = []
    kind = config.get("class_name", "Sequential" if "layers" in config else None)
    body = config.get("config", config) if "class_name" in config else config
    if kind not in ("Sequential", *FUNCTIONAL):
        raise UnsupportedError(f"only Sequential and functional models can be imported; this is a "
                               f"{kind or 'unknown'} model")
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise UnsupportedError("the config has no list of layers")
    entries = body["layers"]
    connections: tuple[tuple[int, ...], ...] = ()
    if kind in FUNCTIONAL:
        input_shape, input_entry, entries, connections = _functional(body, entries)
    else:
        input_shape = _input_shape(body, entries)
        input_entry = entries[0] if entries and isinstance(entries[0], dict) else None
    layers = [e for e in entries if isinstance(e, dict) and e.get("class_name") != "InputLayer"]
    if not layers:
        raise UnsupportedError("the model has no layers")
    nodes = []
    for index, entry in enumerate(layers, start=1):
        layer = _Layer(entry, index, len(layers))
        nodes.append(layer.convert())
    input_dtype = _input_dtype(input_entry, nodes, connections, notes)
    name = str(body.get("name") or "sequential")
    fields: dict[str, Any] = {}
    compile_config = config.get("compile_config") if training else None
    if compile_config:
        fields = _training(compile_config, notes)
    try:
        names = [e.get("config", {}).get("name") if isinstance(e.get("config"), dict) else None for e in layers]
        nodes = _keep_names(name, input_shape, nodes, names)
        spec = ir.Spec(name=name, input_shape=input_shape, input_dtype=input_dtype, layers=tuple(nodes),
                       connections=connections, **fields)
    except ValueError as e:
        raise UnsupportedError(f"the model cannot be a spec: {_reason(e)}") from None
    _check_axes(spec, layers)
    _wrapped_names(spec, layers, notes)
    return spec, notes


# ---------------------------------------------------------------------------------------
# A functional model's graph (keras/src/models/functional.py: get_config, functional_from_config)

FUNCTIONAL = ("Functional", "Model")
# The operations of an embedding's mask in a functional model's config (not_equal(ids, 0), the OR
# of merged masks), which a consumer such as GlobalAveragePooling1D reads as its `mask=`
MASK_OPERATIONS = ("NotEqual", "LogicalOr")


def _functional(body: dict[str, Any], entries: list[Any]) -> tuple[tuple[int, ...], Any, list[Any], tuple]:
    """(input shape, the InputLayer's entry, the layers' entries in an order a spec can write
    them, what each reads as spec connections) for a functional model's config: one input,
    one output, each layer called once."""
    for key, what in (("input_layers", "inputs"), ("output_layers", "outputs")):
        ends = _history_list(body.get(key))
        if len(ends) != 1:
            raise UnsupportedError(f"the model has {len(ends)} {what}; a spec has one input and one output")
    ((input_name, _, _),), ((output_name, _, _),) = (_history_list(body["input_layers"]),
                                                      _history_list(body["output_layers"]))
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise UnsupportedError("the config's list of layers holds something that is not a layer")
        if entry.get("class_name") in MASK_OPERATIONS:  # the spec's mask_zero and merges remake them
            continue
        name = entry.get("name") or (entry.get("config") or {}).get("name")
        by_name[str(name)] = entry
    if by_name.get(input_name, {}).get("class_name") != "InputLayer":
        raise UnsupportedError(f"the model's input {input_name!r} is not an InputLayer")
    reads: dict[str, list[str]] = {}
    for name, entry in by_name.items():
        if entry.get("class_name") == "InputLayer":
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise UnsupportedError(
                f"the layer '{name}' ({entry.get('class_name')}) is called {len(nodes)} times; a spec's layers are "
                "each called once (a shared layer cannot be expressed)" if nodes else
                f"the layer '{name}' ({entry.get('class_name')}) is never called")
        reads[name] = []
        calls = _attention_inbound(name, nodes[0]) if entry.get("class_name") == ATTENTION else _inbound(nodes[0])
        for source, node_index, tensor_index in calls:
            if source not in by_name:
                raise UnsupportedError(f"the layer '{name}' reads '{source}', which the model does not hold")
            if node_index or tensor_index:  # the second call of a shared layer, or a second output
                raise UnsupportedError(f"the layer '{name}' reads call {node_index} of '{source}'; a spec's layers "
                                       "are each called once (a shared layer cannot be expressed)")
            if by_name[source].get("class_name") == "InputLayer" and source != input_name:
                raise UnsupportedError("the model has 2 inputs; a spec has one input and one output")
            reads[name].append(source)
    if output_name not in reads:
        raise UnsupportedError("the model's output is its input; a spec has at least one layer")
    order = _written_order(reads, input_name, output_name)
    position = {name: i for i, name in enumerate(order)}
    connections = tuple(tuple(-1 if s == input_name else position[s] for s in reads[name]) for name in order)
    # self-attention reads its input twice, mha(x, x): a graph, as the parser makes it
    chain = all(c == (i - 1,) for i, c in enumerate(connections)) and not any(
        by_name[name].get("class_name") == ATTENTION for name in order)
    shape = _input_shape({}, [by_name[input_name]])
    return shape, by_name[input_name], [by_name[name] for name in order], () if chain else connections


ATTENTION = "MultiHeadAttention"
# MultiHeadAttention.call's arguments (keras/src/layers/attention/multi_head_attention.py) that
# must keep their defaults in a spec's self-attention: the masks come from embedding's mask_zero
ATTENTION_CALL_DEFAULTS = {"query_mask": None, "value_mask": None, "key_mask": None, "attention_mask": None,
                           "return_attention_scores": False, "use_causal_mask": False}


def _attention_inbound(name: str, node: Any) -> list[tuple[str, int, int]]:
    """The one tensor a MultiHeadAttention call reads as query, value and key alike (a spec's
    self-attention, `mha(x, x)`), from its call as a functional config saves it: Keras 3's
    args and kwargs, or tf.keras 2's [layer, node, tensor, kwargs] with the value in kwargs.
    Anything else (cross-attention, a causal or explicit mask, the scores) is refused."""
    where = f"the layer '{name}' ({ATTENTION})"

    def history(value: Any) -> tuple[str, int, int]:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            layer, node_index, tensor_index = value["config"]["keras_history"]
        elif isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str):
            layer, node_index, tensor_index = value[:3]
        else:
            raise UnsupportedError(f"{where}: a call of it is not understood: {value!r}")
        return (str(layer), node_index, tensor_index)

    if isinstance(node, dict):
        args, kwargs = list(node.get("args") or []), dict(node.get("kwargs") or {})
    elif isinstance(node, list) and len(node) == 1 and isinstance(node[0], list) and len(node[0]) == 4:
        args, kwargs = [node[0][:3]], dict(node[0][3] or {})
    else:
        raise UnsupportedError(f"{where}: a call of it is not understood: {node!r}")
    tensors = {}
    for position, key in enumerate(("query", "value", "key")):
        if position < len(args):
            tensors[key] = args[position]
        elif kwargs.get(key) is not None:
            tensors[key] = kwargs[key]
    kwargs = {k: v for k, v in kwargs.items() if k not in ("query", "value", "key", "training")}
    for key, value in kwargs.items():
        if key not in ATTENTION_CALL_DEFAULTS:
            raise UnsupportedError(f"{where} is called with {key}=, which a spec's attention cannot express")
        if value != ATTENTION_CALL_DEFAULTS[key]:
            shown = "a tensor" if isinstance(value, (dict, list)) else repr(value)
            raise UnsupportedError(f"{where} is called with {key}={shown}, which a spec's attention cannot express "
                                   "(it is self-attention, mha(x, x), masked by embedding's mask_zero only)")
    if "query" not in tensors or "value" not in tensors:
        raise UnsupportedError(f"{where} is called without a query and a value")
    sources = {key: history(value) for key, value in tensors.items()}
    if len(set(sources.values())) != 1:
        reads = ", ".join(f"{key} {layer!r}" for key, (layer, _, _) in sources.items())
        raise UnsupportedError(f"{where} reads {reads}: cross-attention cannot be expressed in a spec; its "
                               "attention is self-attention, mha(x, x), query, value and key one tensor")
    return [sources["query"]]


def _history_list(value: Any) -> list[tuple[str, int, int]]:
    """`input_layers`/`output_layers`: [name, node, tensor], or a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == 3 for v in value):
        raise UnsupportedError(f"the config's model inputs or outputs are not understood: {value!r}")
    return [(str(v[0]), v[1], v[2]) for v in value]


def _inbound(node: Any) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) each input of one call comes from, in call order: Keras 3
    writes the call's args with each tensor's keras_history; tf.keras 2 a list of
    [layer, node, tensor, kwargs]."""
    if isinstance(node, dict):
        found: list[tuple[str, int, int]] = []

        def walk(value: Any) -> None:
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                name, node_index, tensor_index = value["config"]["keras_history"]
                found.append((str(name), node_index, tensor_index))
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)

        walk(node.get("args", []))
        return found
    if isinstance(node, list):
        return [(str(v[0]), v[1], v[2]) for v in node]
    raise UnsupportedError(f"a layer's call is not understood: {node!r}")


def _written_order(reads: dict[str, list[str]], input_name: str, output_name: str) -> list[str]:
    """The layers in an order that has each after what it reads, and as close to the order
    they were created as their Keras names tell (dense before dense_1), so that few names need
    writing; the output last. Every layer must lead to the output."""
    used: set[str] = set()
    stack = [output_name]
    while stack:
        name = stack.pop()
        if name not in used and name != input_name:
            used.add(name)
            stack.extend(reads[name])
    unused = [name for name in reads if name not in used]
    if unused:
        raise UnsupportedError(f"the layer '{unused[0]}' does not lead to the model's output")

    def created(name: str) -> tuple[int, int]:
        base, _, n = name.rpartition("_")
        return (int(n), 0) if base and n.isdigit() else (0, 0)

    order: list[str] = []
    done = {input_name}
    waiting = [name for name in reads if name != output_name]
    while waiting:
        ready = [name for name in waiting if all(s in done for s in reads[name])]
        name = min(ready, key=lambda n: (created(n), waiting.index(n)))
        order.append(name)
        done.add(name)
        waiting.remove(name)
    return order + [output_name]


def spec_text(spec: ir.Spec) -> str:
    """The spec's text: the canonical printer's for a chain; for a graph, each layer on its
    line with the references it needs (`NAME = ` where a later layer reads it other than as
    its previous output, `from=NAME` or `from=in`, a merge's operands)."""
    text = to_text(spec)
    if spec.is_chain:
        return text
    lines = text.splitlines()
    n = len(spec.layers)
    written = [_written_sources(spec, j) for j in range(n)]
    refs: dict[int, str] = {-1: "in"}
    taken = {"in"}
    names = layer_names(spec)
    for i in sorted({s for sources in written for s in sources if s >= 0}):
        base = re.sub(r"\W", "_", names[i], flags=re.ASCII)  # a reference is a word: letters, digits, _
        base = base if re.match(r"[A-Za-z_]", base) else f"h_{base}"
        ref, k = base, 1
        while ref in taken:
            k += 1
            ref = f"{base}_{k}"
        taken.add(ref)
        refs[i] = ref
    body = []
    for j, layer in enumerate(spec.layers):
        keyword, _, rest = layer_text(layer).partition(" ")
        operands = [refs[s] for s in written[j]]
        if layer.merges:
            words = [keyword, *operands, rest]
        else:
            words = [keyword, rest, *(f"from={ref}" for ref in operands)]
        statement = " ".join(w for w in words if w)
        body.append(f"{refs[j]} = {statement}" if j in refs else statement)
    return "\n".join(lines[:2] + body + lines[2 + n:]) + "\n"


def _written_sources(spec: ir.Spec, j: int) -> tuple[int, ...]:
    """The sources layer j names in the text: none where it reads the previous output; a
    merge of [previous, h] names h only (`add h`)."""
    sources = spec.sources(j)
    if spec.layers[j].merges:
        return sources[1:] if len(sources) == 2 and sources[0] == j - 1 else sources
    return () if sources[0] == j - 1 else sources


def _input_shape(body: dict[str, Any], entries: list[Any]) -> tuple[int, ...]:
    shape = None
    for entry in entries[:1]:
        c = entry.get("config", {}) if isinstance(entry, dict) else {}
        shape = c.get("batch_shape") or c.get("batch_input_shape")
    shape = shape or body.get("build_input_shape")
    if not isinstance(shape, list) or not shape:
        raise UnsupportedError("the model has no input shape (it was never built); give it one with "
                               "keras.Input(shape=...) as its first layer and save it again")
    dims = list(shape)[1:]
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UnsupportedError(f"the input shape {fmt_shape(shape)} has a dimension of unknown size; "
                               "a spec needs a fixed input shape")
    return tuple(dims)


# keras.Input dtypes a spec's `input ... int` takes: Keras's Embedding casts any of them to
# int32 (keras/src/layers/core/embedding.py, call), which is what the spec feeds it
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _input_dtype(entry: Any, nodes: list[ir.LayerBase], connections: tuple, notes: list[str]) -> str:
    """The spec's input dtype: int32 for an InputLayer of integers; float32 for one of floats,
    except where only embeddings read it (a Sequential built without keras.Input, from its
    input shape, has a float32 input, which Keras's Embedding casts to int32 ids)."""
    c = entry.get("config", {}) if isinstance(entry, dict) and entry.get("class_name") == "InputLayer" else {}
    dtype = c.get("dtype") if isinstance(c, dict) else None
    if isinstance(dtype, dict):  # a dtype policy
        dtype = (dtype.get("config") or {}).get("name")
    dtype = dtype or "float32"
    if dtype in INT_DTYPES:
        return "int32"
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise UnsupportedError(f"the model's input has dtype {dtype}; a spec's input holds numbers (float32) or "
                               "integer ids (int32)")
    readers = [node for i, node in enumerate(nodes) if -1 in (connections[i] if connections else (i - 1,))]
    if readers and all(node.reads_ids for node in readers):
        notes.append(f"the model's input is {dtype}, which its embedding casts to int32 ids; the spec's input "
                     "is `int`")
        return "int32"
    return "float32"


def _reason(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic: the field and what was wrong with it
        return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in errors())
    return str(e)


def _tidy(x: Any) -> float:
    """A float as written: Keras saves some values through float32 (0.003000000026077032)."""
    import numpy as np

    x = float(x)
    f32 = np.float32(x)
    if math.isfinite(x) and float(f32) == x:
        return float(np.format_float_positional(f32, unique=True, trim="0"))
    return x


class _Layer:
    """One layer's config and the checks its converter (in CONVERTERS) makes of it."""

    def __init__(self, entry: dict[str, Any], index: int, count: int) -> None:
        self.cls = str(entry.get("class_name"))
        self.c = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        self.name = str(self.c.get("name") or "?")
        self.where = f"layer {index} of {count}, '{self.name}' ({self.cls})"

    def fail(self, why: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where}: {why}")

    def convert(self) -> ir.LayerBase:
        converter = CONVERTERS.get(self.cls)
        if converter is None:
            raise self.fail(f"modelspec has no {self.cls} layer; a spec can hold "
                            + ", ".join(cls.keras_class for cls in ir.LAYER_CLASSES.values()))
        if self.c.get("trainable", True) is not True:
            raise self.fail("the layer is frozen (trainable=False); a spec's layers are all trainable")
        dtype = self.c.get("dtype")
        dtype_name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if dtype_name not in (None, "float32"):
            raise self.fail(f"its dtype policy is {dtype_name}; a spec computes in float32")
        try:
            return converter(self)
        except UnsupportedError:
            raise
        except (ValueError, TypeError, AttributeError) as e:  # a malformed config: wrong types, missing keys
            raise self.fail(f"its config is not valid: {_reason(e)}") from None

    # -- helpers -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.c.get(key, default)

    def require(self, key: str, *allowed: Any) -> None:
        value = self.c.get(key, allowed[0])
        if isinstance(value, list):
            value = tuple(value)
        if value not in allowed:
            shown = value.get("class_name", value) if isinstance(value, dict) else value
            raise self.fail(f"{key}={shown!r} cannot be expressed in a spec")

    def pair(self, key: str) -> tuple[int, int] | None:
        value = self.c.get(key)
        if value is None:
            return None
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return (value[0], value[1])
        raise self.fail(f"{key}={value!r} is not a pair of sizes")

    def single(self, key: str) -> int | None:
        """A 1-D size: Keras 3 saves `[3]`, tf.keras 2 `[3]` or `3`."""
        value = self.c.get(key)
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key}={value!r} is not a size")
        return value

    def activation(self, key: str = "activation", default: str = "linear") -> str:
        value = self.c.get(key, default)
        if isinstance(value, dict):  # a serialized function: {"class_name": "function", "config": "relu"}
            value = value.get("config")
        value = {None: "linear", "silu": "swish"}.get(value, value)
        if value not in ir.ACTIVATIONS:
            raise self.fail(f"the activation {value!r} is not one a spec can use; expected one of "
                            + ", ".join(ir.ACTIVATIONS))
        return value

    def initializer(self, key: str, default: str) -> Any:
        value = self.c.get(key) or default
        cls, conf = (value, {}) if isinstance(value, str) else (value.get("class_name"), value.get("config") or {})
        name = INITIALIZER_ALIASES.get(cls, cls)
        if cls == "Constant" and conf.get("value") in (0, 1):
            name, conf = ("zeros" if conf["value"] == 0 else "ones"), {}
        if name not in ir.INITIALIZERS:
            raise self.fail(f"{key}={cls} cannot be expressed in a spec; expected one of "
                            + ", ".join(ir.INITIALIZERS))
        defaults = ir.INITIALIZER_ARGS[name]
        fields = {k: _tidy(v) for k, v in conf.items() if k in defaults and v is not None}
        fields = {k: v for k, v in fields.items() if v != defaults[k]}  # Keras saves its defaults too
        if conf.get("seed") is not None and name not in ir.SEEDLESS_INITIALIZERS:
            fields["seed"] = conf["seed"]
        for k, v in conf.items():
            if v is not None and k not in defaults and k not in ("seed", "dtype"):
                raise self.fail(f"{key}={cls}({k}={v!r}) cannot be expressed in a spec")
        return ir.Initializer(name=name, **fields)

    def regularizer(self, key: str) -> Any:
        value = self.c.get(key)
        if value is None:
            return None
        cls, conf = (value, {}) if isinstance(value, str) else (value.get("class_name"), value.get("config") or {})
        defaults = {"L1": {"l1": 0.01}, "l1": {"l1": 0.01}, "L2": {"l2": 0.01}, "l2": {"l2": 0.01},
                    "L1L2": {}, "l1l2": {}}
        if cls not in defaults:
            raise self.fail(f"{key}={cls} cannot be expressed in a spec; expected L1, L2 or L1L2")
        amounts = {**defaults[cls], **{k: v for k, v in conf.items() if k in ("l1", "l2") and v is not None}}
        return ir.Regularizer(**{k: _tidy(v) for k, v in amounts.items()})

    def weighted(self) -> dict[str, Any]:
        """What Dense and Conv2D share."""
        for key in ("bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
                    "quantization_config", "lora_rank"):
            self.require(key, None)
        return dict(activation=self.activation(), use_bias=bool(self.get("use_bias", True)),
                    kernel_initializer=self.initializer("kernel_initializer", "glorot_uniform"),
                    bias_initializer=self.initializer("bias_initializer", "zeros"),
                    kernel_regularizer=self.regularizer("kernel_regularizer"))

    def channels_last(self) -> None:
        self.require("data_format", None, "channels_last")


# ---------------------------------------------------------------------------------------
# One function per Keras class, and the table that names them


def _dense(layer: _Layer) -> ir.LayerBase:
    return ir.Dense(units=layer.get("units"), **layer.weighted())


def _conv2d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    layer.require("dilation_rate", (1, 1), 1)
    layer.require("groups", 1)
    layer.require("padding", "valid", "same")
    return ir.Conv2D(filters=layer.get("filters"), kernel_size=layer.pair("kernel_size"),
                     strides=layer.pair("strides") or (1, 1), padding=layer.get("padding", "valid"),
                     **layer.weighted())


def _pool(cls: Any) -> Callable[[_Layer], ir.LayerBase]:
    def convert(layer: _Layer) -> ir.LayerBase:
        layer.channels_last()
        layer.require("padding", "valid", "same")
        size, strides = layer.pair("pool_size") or (2, 2), layer.pair("strides")
        # Keras saves strides=None as the pool size; the spec leaves them out the same way
        return cls(pool_size=size, strides=None if strides == size else strides,
                   padding=layer.get("padding", "valid"))

    return convert


def _global_avg_pool2d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    layer.require("keepdims", False)
    return ir.GlobalAvgPool2D()


def _global_max_pool2d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    layer.require("keepdims", False)
    return ir.GlobalMaxPool2D()


def _zero_padding2d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    padding = layer.get("padding", 1)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    elif all(isinstance(p, int) for p in padding):
        padding = ((padding[0], padding[0]), (padding[1], padding[1]))
    return ir.ZeroPadding2D(padding=tuple(tuple(p) for p in padding))


def _up_sampling2d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    layer.require("interpolation", "nearest")
    return ir.UpSampling2D(size=layer.pair("size") or (2, 2))


def _prelu(layer: _Layer) -> ir.LayerBase:
    layer.require("shared_axes", None)
    layer.require("alpha_regularizer", None)
    layer.require("alpha_constraint", None)
    if layer.initializer("alpha_initializer", "zeros").name != "zeros":
        raise layer.fail("alpha_initializer cannot be expressed in a spec (it must be zeros)")
    return ir.PReLU()


def _flatten(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    return ir.Flatten()


def _dropout(layer: _Layer) -> ir.LayerBase:
    layer.require("noise_shape", None)
    return ir.Dropout(rate=_tidy(layer.get("rate")), seed=layer.get("seed"))


def _batchnorm(layer: _Layer) -> ir.LayerBase:
    for key, default in (("center", True), ("scale", True), ("synchronized", False), ("renorm", False)):
        layer.require(key, default)
    for key, default in (("beta_initializer", "zeros"), ("gamma_initializer", "ones"),
                         ("moving_mean_initializer", "zeros"), ("moving_variance_initializer", "ones")):
        init = layer.initializer(key, default)
        if init.name != default:
            raise layer.fail(f"{key}={init.name} cannot be expressed in a spec (it must be {default})")
    for key in ("beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"):
        layer.require(key, None)
    return ir.BatchNorm(momentum=_tidy(layer.get("momentum", 0.99)), epsilon=_tidy(layer.get("epsilon", 1e-3)))


def _number(layer: _Layer, key: str, default: float) -> float:
    """A Rescaling option: one number, kept as Keras holds it (a float64, never rounded:
    1/255 stays 1/255). Keras also takes a scale per channel, which a spec cannot hold."""
    value = layer.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise layer.fail(f"{key}={value!r} cannot be expressed in a spec: rescale takes one finite number")
    return float(value)


def _rescaling(layer: _Layer) -> ir.LayerBase:
    return ir.Rescale(scale=_number(layer, "scale", 1.0), offset=_number(layer, "offset", 0.0))


def _normalization(layer: _Layer) -> ir.LayerBase:
    # the axis is checked against the input's rank in _check_axes
    layer.require("invert", False)
    if layer.get("mean") is not None or layer.get("variance") is not None:
        raise layer.fail("mean and variance passed to the constructor cannot be expressed in a spec (such a "
                         "layer has no weights); a spec's normalize holds them as weights: build the layer "
                         "without them and adapt it")
    return ir.Normalize()


def _leaky_relu(layer: _Layer) -> ir.LayerBase:
    slope = layer.get("negative_slope", layer.get("alpha", 0.3))
    return ir.LeakyReLU(negative_slope=_tidy(slope))


def _activation(layer: _Layer) -> ir.LayerBase:
    act = layer.activation()
    if act == "leaky_relu":  # keras.activations.leaky_relu: slope 0.2
        return ir.LeakyReLU(negative_slope=0.2)
    return ir.Activation(activation=act)


def _relu(layer: _Layer) -> ir.LayerBase:
    layer.require("negative_slope", 0, 0.0)
    layer.require("threshold", 0, 0.0)
    layer.require("max_value", None, 6, 6.0)
    return ir.Activation(activation="relu" if layer.get("max_value") is None else "relu6")


def _softmax(layer: _Layer) -> ir.LayerBase:
    # Keras's Softmax layer, not Activation("softmax"): the two differ in their class's name
    # and under a mask, which the layer adds to its input (keras/src/layers/activations/softmax.py)
    axis = layer.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise layer.fail(f"axis={axis!r} cannot be expressed in a spec: softmax takes one axis")
    return ir.Softmax(axis=axis)


def _elu(layer: _Layer) -> ir.LayerBase:
    layer.require("alpha", 1.0, 1)
    return ir.Activation(activation="elu")


def _concatenate(layer: _Layer) -> ir.LayerBase:
    axis = layer.get("axis", -1)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise layer.fail(f"axis={axis!r} is not an axis")
    return ir.Concat(axis=axis)


# Sequences (keras/src/layers/core/embedding.py, convolutional/conv1d.py, pooling/, normalization/
# layer_normalization.py, reshaping/reshape.py: each get_config)


def _embedding(layer: _Layer) -> ir.LayerBase:
    for key in ("activity_regularizer", "embeddings_constraint", "quantization_config", "lora_rank"):
        layer.require(key, None)
    layer.require("sparse", False)
    # input_length (tf.keras 2) only restated the input's length; Keras 3 drops it too
    return ir.Embedding(input_dim=layer.get("input_dim"), output_dim=layer.get("output_dim"),
                        mask_zero=bool(layer.get("mask_zero", False)),
                        embeddings_initializer=layer.initializer("embeddings_initializer", "uniform"),
                        embeddings_regularizer=layer.regularizer("embeddings_regularizer"))


def _conv1d(layer: _Layer) -> ir.LayerBase:
    layer.channels_last()
    layer.require("groups", 1)
    layer.require("padding", "valid", "same", "causal")
    return ir.Conv1D(filters=layer.get("filters"), kernel_size=layer.single("kernel_size"),
                     strides=layer.single("strides") or 1, dilation_rate=layer.single("dilation_rate") or 1,
                     padding=layer.get("padding", "valid"), **layer.weighted())


def _pool1d(cls: Any) -> Callable[[_Layer], ir.LayerBase]:
    def convert(layer: _Layer) -> ir.LayerBase:
        layer.channels_last()
        layer.require("padding", "valid", "same")
        size, strides = layer.single("pool_size") or 2, layer.single("strides")
        # Keras saves strides=None as the pool size; the spec leaves them out the same way
        return cls(pool_size=size, strides=None if strides == size else strides,
                   padding=layer.get("padding", "valid"))

    return convert


def _global_pool1d(cls: Any) -> Callable[[_Layer], ir.LayerBase]:
    def convert(layer: _Layer) -> ir.LayerBase:
        layer.channels_last()
        layer.require("keepdims", False)
        return cls()

    return convert


def _layer_normalization(layer: _Layer) -> ir.LayerBase:
    # the axis is checked against the input's rank in _check_axes
    for key, default in (("center", True), ("scale", True), ("rms_scaling", False)):
        layer.require(key, default)
    for key, default in (("beta_initializer", "zeros"), ("gamma_initializer", "ones")):
        init = layer.initializer(key, default)
        if init.name != default:
            raise layer.fail(f"{key}={init.name} cannot be expressed in a spec (it must be {default})")
    for key in ("beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"):
        layer.require(key, None)
    return ir.LayerNorm(epsilon=_tidy(layer.get("epsilon", 1e-3)))


def _reshape(layer: _Layer) -> ir.LayerBase:
    target = layer.get("target_shape")
    if not isinstance(target, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in target):
        raise layer.fail(f"target_shape={target!r} is not a list of sizes")
    return ir.Reshape(target_shape=tuple(target))


# Recurrent layers and attention (keras/src/layers/rnn/lstm.py, gru.py, simple_rnn.py, rnn.py,
# bidirectional.py; attention/multi_head_attention.py: each get_config)

# options a spec's recurrent layers do not have, with the values that leave Keras's numbers
# as the spec's. unroll is not among them: a layer's unrolled loop computes the loop's numbers
# to the bit, masked or not (tests/test_keras_recurrent.py), so it is left out, but in a
# Bidirectional layer that returns sequences (see _recurrent)
RECURRENT_NEUTRAL = (("return_state", (False,)), ("stateful", (False,)), ("dropout", (0, 0.0)),
                     ("recurrent_dropout", (0, 0.0)), ("recurrent_regularizer", (None,)),
                     ("bias_regularizer", (None,)), ("activity_regularizer", (None,)),
                     ("kernel_constraint", (None,)), ("recurrent_constraint", (None,)), ("bias_constraint", (None,)),
                     ("time_major", (False,)))


def _recurrent(cls: Any) -> Callable[[_Layer], ir.LayerBase]:
    def convert(layer: _Layer, wrapped: bool = False) -> ir.LayerBase:
        for key, allowed in RECURRENT_NEUTRAL:
            layer.require(key, *allowed)
        # a masked step outputs 0 instead of the previous output; Bidirectional sets it to its
        # return_sequences itself, which the spec's bidirectional does too
        if not wrapped:
            layer.require("zero_output_for_mask", False)
        elif layer.get("return_sequences") and layer.get("unroll"):
            # with a mask, Keras's unrolled loop zeroes the backward half's outputs, which are in
            # reversed order, by the mask in time order (keras/src/backend/tensorflow/rnn.py, rnn:
            # `if zero_output_for_mask` under `if unroll`): valid steps lose their outputs
            raise layer.fail("unroll=True cannot be expressed in a spec here: in a Bidirectional layer that "
                             "returns sequences, Keras's unrolled loop computes other numbers than its loop "
                             "for masked inputs")
        fields: dict[str, Any] = dict(
            units=layer.get("units"), return_sequences=bool(layer.get("return_sequences", False)),
            go_backwards=bool(layer.get("go_backwards", False)), activation=layer.activation(default="tanh"),
            use_bias=bool(layer.get("use_bias", True)),
            kernel_initializer=layer.initializer("kernel_initializer", "glorot_uniform"),
            recurrent_initializer=layer.initializer("recurrent_initializer", "orthogonal"),
            bias_initializer=layer.initializer("bias_initializer", "zeros"),
            kernel_regularizer=layer.regularizer("kernel_regularizer"))
        if cls is not ir.SimpleRNN:
            fields["recurrent_activation"] = layer.activation("recurrent_activation", default="sigmoid")
        if cls is ir.LSTM:
            fields["unit_forget_bias"] = bool(layer.get("unit_forget_bias", True))
        if cls is ir.GRU:
            fields["reset_after"] = bool(layer.get("reset_after", True))
        return cls(**fields)

    return convert


RECURRENT_CONVERTERS = {cls.keras_class: _recurrent(cls) for cls in ir.RECURRENT_TYPES}


def _bidirectional(layer: _Layer) -> ir.LayerBase:
    merge = layer.get("merge_mode", "concat")
    if merge is None:
        raise layer.fail("merge_mode=None (the two directions' outputs as a pair) cannot be expressed in a spec; "
                         "bidirectional merges them: concat, sum, mul or ave")
    layer.require("merge_mode", "concat", "sum", "mul", "ave")
    forward, backward = layer.get("layer"), layer.get("backward_layer")
    if not isinstance(forward, dict) or forward.get("class_name") not in RECURRENT_CONVERTERS:
        shown = forward.get("class_name") if isinstance(forward, dict) else forward
        raise layer.fail(f"it wraps {shown}; a spec's bidirectional wraps LSTM, GRU or SimpleRNN")
    inner = _Layer(forward, 0, 0)
    inner.where = f"{layer.where}, its layer '{inner.name}' ({inner.cls})"
    node = RECURRENT_CONVERTERS[inner.cls](inner, wrapped=True)  # type: ignore[call-arg]
    if backward is not None:
        _mirror(layer, forward, backward)
    return ir.Bidirectional(layer=node, merge_mode=merge)


# what a backward layer may differ in from the forward one and still be its mirror: its name,
# the direction, and the dropout seed (the dropout is 0: the seed draws nothing)
MIRROR_FREE = ("name", "go_backwards", "seed")


def _mirror(layer: _Layer, forward: dict[str, Any], backward: dict[str, Any]) -> None:
    """A backward_layer that is not the forward layer run backward (Keras saves the one it
    makes too) cannot be expressed: the spec's bidirectional makes the mirror."""
    f, b = forward.get("config") or {}, backward.get("config") if isinstance(backward, dict) else None
    if not isinstance(b, dict) or backward.get("class_name") != forward.get("class_name"):
        shown = backward.get("class_name") if isinstance(backward, dict) else backward
        raise layer.fail(f"its backward_layer is a {shown}, not the {forward.get('class_name')} it wraps run "
                         "backward; a spec's bidirectional makes that mirror itself")
    differ = sorted(k for k in set(f) | set(b) if k not in MIRROR_FREE and _unshared(f.get(k)) != _unshared(b.get(k)))
    if bool(f.get("go_backwards", False)) == bool(b.get("go_backwards", False)):
        differ.insert(0, "go_backwards")
    if differ:
        shown = ", ".join(f"{k}={b.get(k)!r} (forward: {f.get(k)!r})" for k in differ)
        raise layer.fail(f"its backward_layer is not the mirror of the layer it wraps: {shown}; a spec's "
                         "bidirectional runs the same layer backward")


def _unshared(value: Any) -> Any:
    """A config value without the `shared_object_id` a saved .keras file gives each object
    (keras/src/saving/serialization_lib.py): two equal initializers differ only in it."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _attention(layer: _Layer) -> ir.LayerBase:
    # which tensors it reads (query, value and key one tensor) is checked in _attention_inbound
    for key, allowed in (("output_shape", (None,)), ("attention_axes", (None, 1, (1,))),
                         ("use_gate", (False,)), ("sliding_window", (None,)), ("kernel_regularizer", (None,)),
                         ("bias_regularizer", (None,)), ("activity_regularizer", (None,)),
                         ("kernel_constraint", (None,)), ("bias_constraint", (None,))):
        layer.require(key, *allowed)
    key_dim = layer.get("key_dim")
    value_dim = layer.get("value_dim")
    return ir.Attention(num_heads=layer.get("num_heads"), key_dim=key_dim,
                        value_dim=None if value_dim in (None, key_dim) else value_dim,
                        dropout=_tidy(layer.get("dropout", 0.0)), use_bias=bool(layer.get("use_bias", True)),
                        kernel_initializer=layer.initializer("kernel_initializer", "glorot_uniform"),
                        bias_initializer=layer.initializer("bias_initializer", "zeros"), seed=layer.get("seed"))


# Keras class name -> its converter: importing a new layer kind is one entry here.
CONVERTERS: dict[str, Callable[[_Layer], ir.LayerBase]] = {
    "Dense": _dense,
    "Conv2D": _conv2d,
    "MaxPooling2D": _pool(ir.MaxPool2D),
    "AveragePooling2D": _pool(ir.AvgPool2D),
    "GlobalAveragePooling2D": _global_avg_pool2d,
    "GlobalMaxPooling2D": _global_max_pool2d,
    "ZeroPadding2D": _zero_padding2d,
    "UpSampling2D": _up_sampling2d,
    "PReLU": _prelu,
    "Flatten": _flatten,
    "Dropout": _dropout,
    "BatchNormalization": _batchnorm,
    "LeakyReLU": _leaky_relu,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Activation": _activation,
    "ReLU": _relu,
    "Softmax": _softmax,
    "ELU": _elu,
    **{cls.keras_class: (lambda cls: lambda layer: cls())(cls) for cls in ir.MERGE_TYPES if cls is not ir.Concat},
    "Concatenate": _concatenate,
    "Embedding": _embedding,
    "Conv1D": _conv1d,
    "MaxPooling1D": _pool1d(ir.MaxPool1D),
    "AveragePooling1D": _pool1d(ir.AvgPool1D),
    "GlobalAveragePooling1D": _global_pool1d(ir.GlobalAvgPool1D),
    "GlobalMaxPooling1D": _global_pool1d(ir.GlobalMaxPool1D),
    "LayerNormalization": _layer_normalization,
    "Reshape": _reshape,
    **RECURRENT_CONVERTERS,
    "Bidirectional": _bidirectional,
    ATTENTION: _attention,
}


def _keep_names(model: str, input_shape: tuple[int, ...], nodes: list[Any], names: list[str | None]) -> list[Any]:
    """Give a layer its Keras name in the spec wherever modelspec's own naming would differ."""
    named = list(nodes)
    for _ in range(len(nodes) + 1):
        probe = ir.Spec(name=model, input_shape=input_shape, layers=tuple(named))
        differ = [i for i, (got, want) in enumerate(zip(layer_names(probe), names)) if want and got != want]
        if not differ:
            return named
        # one at a time: naming a layer can change the auto names after it
        named[differ[0]] = named[differ[0]].model_copy(update={"name": names[differ[0]]})
    return named


def _wrapped_names(spec: ir.Spec, layers: list[dict[str, Any]], notes: list[str]) -> None:
    """A note for each bidirectional whose wrapped layer Keras named otherwise than a fresh
    session would: a spec does not name it, so its weights' paths differ (forward_gru_3/...)."""
    names, inners = layer_names(spec, inner=True)
    for name, inner, entry in zip(names, inners, layers):
        forward = (((entry.get("config") or {}).get("layer") or {}).get("config") or {}).get("name")
        if inner is not None and isinstance(forward, str) and forward != f"forward_{inner}":
            notes.append(f"the layer {name!r} wraps a layer named {forward.removeprefix('forward_')!r}, which a "
                         f"spec cannot name: its weights' paths say forward_{inner}/ and backward_{inner}/, "
                         f"not {forward}/")


def _check_axes(spec: ir.Spec, layers: list[dict[str, Any]]) -> None:
    """BatchNormalization, Normalization and LayerNormalization must normalize the last axis
    (tf.keras saved it as [3], say; Normalization(axis=None), one mean for everything, is
    saved as []; LayerNormalization over several axes as a longer list)."""
    report = check(spec)
    for row in report.layers:
        index, entry = row.index + 1, layers[row.index]  # layers are in spec order
        if row.kind not in ("batchnorm", "normalize", "layernorm"):
            continue
        axis = entry.get("config", {}).get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if isinstance(axis, bool) or axis not in (-1, len(row.input_shape) - 1):
            raise _Layer(entry, index, len(layers)).fail(
                f"axis={axis!r} cannot be expressed in a spec: {row.kind} normalizes the last axis")


# ---------------------------------------------------------------------------------------
# compile_config


def _training(cc: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    for key in ("loss_weights", "weighted_metrics"):
        if cc.get(key):
            raise UnsupportedError(f"compile(): {key} cannot be expressed in a spec")
    out: dict[str, Any] = {}
    if cc.get("optimizer") is not None:
        out["optimizer"] = _optimizer(cc["optimizer"])
    if cc.get("loss") is not None:
        out["loss"] = _loss(cc["loss"], notes)
    metrics = cc.get("metrics") or []
    if not isinstance(metrics, list):
        raise UnsupportedError(f"compile(): metrics={metrics!r} cannot be expressed in a spec")
    read = [_metric(m) for m in metrics]
    out["metrics"] = tuple(name for name, _ in read)
    if len(set(out["metrics"])) != len(out["metrics"]):
        raise UnsupportedError(f"compile(): a metric is listed twice in {list(out['metrics'])}")
    ks = sorted({k for _, k in read if k is not None})
    if len(ks) > 1:
        raise UnsupportedError(f"compile(): the top-k metrics have different k ({', '.join(map(str, ks))}); "
                               "a spec's top-k metrics share one k")
    if ks and ks[0] != ir.DEFAULT_TOP_K:
        out["top_k"] = ks[0]
    if not out["metrics"]:
        del out["metrics"]
    return out


def _optimizer(value: Any) -> Any:
    cls, conf = (value, {}) if isinstance(value, str) else (value.get("class_name"), value.get("config") or {})
    name = OPTIMIZER_ALIASES.get(cls, str(cls).lower())
    if name not in ir.OPTIMIZERS:
        raise UnsupportedError(f"compile(): the optimizer {cls} cannot be expressed in a spec; expected one of "
                               + ", ".join(OPTIMIZER_ALIASES))
    defaults = ir.OPTIMIZER_DEFAULTS[name]
    ignored = ("name", "ema_momentum", "ema_overwrite_frequency", "jit_compile", "is_legacy_optimizer")
    neutral = {"use_ema": False, "loss_scale_factor": None, "gradient_accumulation_steps": None, "amsgrad": False,
               "decay": 0.0}
    hyper: dict[str, Any] = {}
    for key, v in conf.items():
        if key == "learning_rate" and isinstance(v, dict):
            hyper[key] = _schedule(cls, v)
        elif key in defaults:
            if isinstance(v, dict):
                raise UnsupportedError(f"compile(): {cls}'s {key} is a {v.get('class_name')}; a spec's "
                                       f"{key} is a number")
            v = _tidy(v) if isinstance(v, float) else v
            if v != defaults[key]:
                hyper[key] = v
        elif key in ir.CLIPPING:
            if v is not None:
                hyper[key] = _tidy(v)
        elif key in neutral:
            if v not in (None, neutral[key]):
                raise UnsupportedError(f"compile(): {cls}({key}={v!r}) cannot be expressed in a spec")
        elif key not in ignored:
            raise UnsupportedError(f"compile(): {cls}'s {key} cannot be expressed in a spec")
    if name == "adamw" and "weight_decay" in conf and conf["weight_decay"] is None:
        raise UnsupportedError("compile(): AdamW without weight decay cannot be expressed in a spec")
    try:
        return ir.Optimizer(name=name, **hyper)
    except ValueError as e:
        raise UnsupportedError(f"compile(): {cls} cannot be expressed in a spec: {_reason(e)}") from None


_SCHEDULE_NAMES = {cls: name for name, cls in ir.SCHEDULE_CLASSES.items()}


def _schedule(optimizer: str, value: dict[str, Any]) -> ir.Schedule:
    """A learning-rate schedule saved in the optimizer's config, {"module":
    "keras.optimizers.schedules", "class_name": "ExponentialDecay", "config": {...}}: its
    arguments, those at Keras's defaults left out."""
    cls, conf = value.get("class_name"), value.get("config") or {}
    name = _SCHEDULE_NAMES.get(cls)
    if name is None:
        raise UnsupportedError(f"compile(): {optimizer}'s learning_rate is a schedule ({cls}) a spec cannot hold; "
                               "expected one of " + ", ".join(ir.SCHEDULE_CLASSES.values()))
    allowed = ir.SCHEDULE_ARGS[name]
    fields: dict[str, Any] = {}
    for key, v in conf.items():
        if key == "name":
            continue
        if key not in allowed:
            raise UnsupportedError(f"compile(): {cls}({key}={v!r}) cannot be expressed in a spec")
        if isinstance(v, list):
            v = tuple(_tidy(x) if isinstance(x, float) else x for x in v)
        elif isinstance(v, float):
            v = _tidy(v)
        if allowed[key] is ir.REQUIRED or v != allowed[key]:
            fields[key] = v
    try:
        return ir.Schedule(name=name, **fields)
    except ValueError as e:
        raise UnsupportedError(f"compile(): {cls} cannot be expressed in a spec: {_reason(e)}") from None


def _loss(value: Any, notes: list[str]) -> Any:
    cls, conf = (value, {}) if isinstance(value, str) else (value.get("class_name"), value.get("config") or {})
    name = LOSS_ALIASES.get(cls, cls)
    if name not in ir.LOSSES:
        raise UnsupportedError(f"compile(): the loss {cls} cannot be expressed in a spec; expected one of "
                               + ", ".join(ir.LOSSES))
    # a spec's loss is the batch's mean (Keras's default reduction) over the last axis
    for key, neutral in (("axis", (-1,)), ("ignore_class", (None,)),
                         ("reduction", ("sum_over_batch_size", "auto", None))):
        if conf.get(key, neutral[0]) not in neutral:
            raise UnsupportedError(f"compile(): {cls}({key}={conf[key]!r}) cannot be expressed in a spec")
    from_logits, smoothing = conf.get("from_logits", False), conf.get("label_smoothing", 0)
    if from_logits not in (True, False) or (from_logits and name not in ir.CROSSENTROPY_LOSSES):
        raise UnsupportedError(f"compile(): {cls}(from_logits={from_logits!r}) cannot be expressed in a spec")
    delta = conf.get("delta")
    if name == "huber" and delta is None and isinstance(value, dict):
        notes.append("Keras does not save a Huber loss's delta; the spec uses Keras's default, 1.0")
    try:
        return ir.Loss(name=name, delta=_tidy(delta) if delta is not None and delta != 1.0 else None,
                       from_logits=True if from_logits else None,
                       label_smoothing=_tidy(smoothing) if smoothing else None)
    except ValueError as e:
        raise UnsupportedError(f"compile(): {cls} cannot be expressed in a spec: {_reason(e)}") from None


_METRIC_NAMES = {"CategoricalAccuracy": "categorical_accuracy",
                 "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
                 "BinaryAccuracy": "binary_accuracy", "MeanSquaredError": "mse", "MeanAbsoluteError": "mae",
                 "mean_squared_error": "mse", "mean_absolute_error": "mae",
                 "TopKCategoricalAccuracy": "top_k_categorical_accuracy",
                 "SparseTopKCategoricalAccuracy": "sparse_top_k_categorical_accuracy"}


def _metric(value: Any) -> tuple[str, int | None]:
    """(the metric's name, its k: a top-k metric's, Keras's 5 for the name alone; else None)."""
    cls = value if isinstance(value, str) else value.get("class_name") if isinstance(value, dict) else None
    name = _METRIC_NAMES.get(cls, cls)
    if name not in ir.METRICS:
        raise UnsupportedError(f"compile(): the metric {cls or value!r} cannot be expressed in a spec; "
                               "expected one of " + ", ".join(ir.METRICS))
    conf = (value.get("config") or {}) if isinstance(value, dict) else {}
    if conf.get("threshold", 0.5) != 0.5:
        raise UnsupportedError(f"compile(): {cls}(threshold={conf['threshold']}) cannot be expressed in a spec")
    if name not in ir.TOP_K_METRICS:
        return name, None
    if conf.get("from_sorted_ids", False) is not False:  # SparseTopKCategoricalAccuracy's ids instead of scores
        raise UnsupportedError(f"compile(): {cls}(from_sorted_ids={conf['from_sorted_ids']!r}) cannot be "
                               "expressed in a spec")
    k = conf.get("k", ir.DEFAULT_TOP_K)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UnsupportedError(f"compile(): {cls}(k={k!r}) cannot be expressed in a spec: k is a positive integer")
    return name, k
