"""Graphs on the Keras backend: the functional model the engine builds, the functional program
`modelspec compile` writes, and functional models imported back to specs.

For each graph spec below the test also writes the Keras model by hand, with Keras's functional
API, as a Keras user would: the checker's summary must equal `model.summary()` of both, character
for character, with the same names and weight paths in the same order. The engine's every layer
output must equal a float64 NumPy computation written here from Keras's definitions
(keras/src/layers/merging/base_merge.py: lower-rank inputs get new axes after the batch axis),
the emitted program must build the engine's model and give its numbers, and a hand-written
model imported with `modelspec import` must check to its own summary and load its weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends
from modelspec.cli import main
from modelspec.keras_import import UnsupportedError, convert, spec_from_config

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402
from corpus import TINY_RESNET

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # Keras's own, on NumPy 2

L = keras.layers


# A block using another, a parameter as a layer of its own (`act`), two uses that differ in it.
NESTED = """\
model nested
input 8x8x3
conv2d 4 3x3 relu padding=same
block unit(f, k=3) {
  conv2d f k padding=same
  batchnorm
}
block residual(filters, act=relu) {
  unit filters
  act
  unit filters k=1
  add in
  dense filters act
}
residual 4
residual 4 act=tanh
skip = globalavgpool2d
dense 4 from=skip
add skip
dense 3 softmax
"""


def tiny_resnet(inputs):
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    for _ in range(2):
        y = L.Conv2D(8, 3, padding="same", activation="relu")(x)
        y = L.Conv2D(8, 3, padding="same")(y)
        y = L.BatchNormalization()(y)
        y = L.Add()([y, x])
        x = L.Activation("relu")(y)
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(10, activation="softmax")(x)


def nested(inputs):
    def unit(x, f, k=3):
        return L.BatchNormalization()(L.Conv2D(f, k, padding="same")(x))

    def residual(x, filters, act="relu"):
        y = unit(x, filters)
        y = L.Activation(act)(y)
        y = unit(y, filters, k=1)
        y = L.Add()([y, x])
        return L.Dense(filters, activation=act)(y)

    x = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = residual(x, 4)
    x = residual(x, 4, act="tanh")
    skip = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4)(skip)
    x = L.Add()([x, skip])
    return L.Dense(3, activation="softmax")(x)


def dense_skip(inputs):
    h = L.Dense(64, activation="relu")(inputs)
    x = L.Dense(64, activation="relu")(h)
    return L.Add()([x, h])


def projection(inputs):
    skip = L.Conv2D(8, 1, strides=2)(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = L.Conv2D(8, 3, padding="same")(x)
    return L.Add()([x, skip])


def inception(inputs):
    a = L.Conv2D(4, 1, padding="same", activation="relu")(inputs)
    b = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    c = L.MaxPooling2D(3, strides=1, padding="same")(inputs)
    return L.Concatenate()([a, b, c])


def skip_first(inputs):
    skip = L.Dense(4)(inputs)  # created first, listed after the main path
    h = L.Dense(6, activation="relu")(inputs)
    h = L.Dense(4)(h)
    return L.Add()([h, skip])


def every_merge(inputs):
    a = L.Dense(4, activation="relu")(inputs)
    b = L.Dense(4)(inputs)
    c = L.Dense(4, activation="tanh")(inputs)
    s = L.Add()([a, b, c])
    d = L.Subtract()([a, b])
    m = L.Multiply()([a, c])
    v = L.Average()([a, b, c])
    mx = L.Maximum()([b, c])
    mn = L.Minimum()([a, b, c])
    x = L.Concatenate()([s, d, m, v, mx, mn])
    return L.Dense(3)(x)


def rank_broadcast(inputs):
    x = L.Conv2D(5, 1)(inputs)
    y = L.GlobalAveragePooling2D()(x)
    y = L.Dense(5)(y)
    return L.Add()([y, x])  # (None, 5) with (None, 4, 4, 5): Keras reshapes the first to (None, 1, 1, 5)


def concat_rows(inputs):
    a = L.Conv2D(3, 1)(inputs)
    b = L.Conv2D(3, 3, padding="same")(inputs)
    return L.Concatenate(axis=1)([a, b])


def normalized(inputs):
    n = L.Normalization()(inputs)
    a = L.Dense(4)(n)
    b = L.Dense(4, activation="relu")(n)
    x = L.Add()([a, b])
    return L.Dense(2)(x)


def named(inputs):
    skip = L.Dense(4, name="shortcut")(inputs)
    x = L.Dense(4, activation="relu")(inputs)
    x = L.Dense(4, name="head")(x)
    return L.Maximum()([x, skip])


# name -> (spec, the same model by hand: a function of the Input giving the output)
CASES = {
    "tiny_resnet": (TINY_RESNET, tiny_resnet),
    "nested": (NESTED, nested),
    "dense_skip": ("model dense_skip\ninput 32\nh = dense 64 relu\ndense 64 relu\nadd h\n", dense_skip),
    "projection": ("model projection\ninput 8x8x3\nskip = conv2d 8 1x1 stride=2\n"
                   "conv2d 8 3x3 stride=2 padding=same relu from=in\nconv2d 8 3x3 padding=same\nadd skip\n",
                   projection),
    "inception": ("model inception\ninput 8x8x3\na = conv2d 4 1x1 relu padding=same\n"
                  "b = conv2d 4 3x3 relu padding=same from=in\nc = maxpool2d 3x3 stride=1 padding=same from=in\n"
                  "concat a b c\n", inception),
    "skip_first": ("model skip_first\ninput 8\nskip = dense 4 from=in\ndense 6 relu from=in\ndense 4\nadd skip\n",
                   skip_first),
    "every_merge": ("model every_merge\ninput 6\na = dense 4 relu\nb = dense 4 from=in\nc = dense 4 tanh from=in\n"
                    "s = add a b c\nd = subtract a b\nm = multiply a c\nv = average a b c\nmx = maximum b c\n"
                    "mn = minimum a b c\nconcat s d m v mx mn\ndense 3\n", every_merge),
    "rank_broadcast": ("model rank_broadcast\ninput 4x4x3\nx = conv2d 5 1x1\nglobalavgpool2d\ndense 5\nadd x\n",
                       rank_broadcast),
    "concat_rows": ("model concat_rows\ninput 4x4x2\na = conv2d 3 1x1\nb = conv2d 3 3x3 padding=same from=in\n"
                    "concat a b axis=1\n", concat_rows),
    "normalized": ("model normalized\ninput 6\nn = normalize\na = dense 4 from=n\nb = dense 4 relu from=n\nadd a b\n"
                   "dense 2\n", normalized),
    "named": ("model named\ninput 5\nskip = dense 4 from=in name=shortcut\ndense 4 relu from=in\n"
              "dense 4 name=head\nmaximum skip\n", named),
}


def by_hand(case: str) -> keras.Model:
    """The case's model written with Keras's functional API, in a fresh naming session."""
    text, build = CASES[case]
    spec = ms.parse(text)
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input(spec.input_shape)
    return keras.Model(inputs, build(inputs), name=spec.name)


def functional(spec: ms.ir.Spec) -> keras.Model:
    """The spec as a Keras functional model built from its IR with the tests' own Keras layers
    (keras_reference.layer; a merge as its Keras class), in a fresh naming session."""
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input(spec.input_shape)
    outputs: list = []
    for index, node in enumerate(spec.layers):
        tensors = [inputs if s < 0 else outputs[s] for s in spec.sources(index)]
        if node.merges:
            options = {"axis": node.axis} if node.kind == "concat" else {}
            layer = getattr(L, node.keras_class)(**options, **({"name": node.name} if node.name else {}))
            outputs.append(layer(tensors))
        else:
            outputs.append(kr.layer(node)(tensors[0]))
    return keras.Model(inputs, outputs[-1], name=spec.name)


def random_weights(report, seed: int) -> list[np.ndarray]:
    """Weights that make every layer matter: moving variances and Normalization's variance
    positive, its count a whole number."""
    rng = np.random.default_rng(seed)
    out = []
    for w in report.weights:
        value = rng.normal(0, 0.5, w.shape)
        if w.path.endswith(("moving_variance", "/variance")):
            value = np.abs(value) + 0.5
        if w.path.endswith("/count"):
            value = np.array(7)
        out.append(value.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------
# A float64 reference, from Keras's definitions


def window(z: np.ndarray, size: tuple, strides: tuple, padding: str, fill: float) -> np.ndarray:
    """Every (size[0], size[1]) window of an NHWC batch: (n, rows, cols, kh, kw, c). 'same'
    pads as TensorFlow does, the extra row or column after (tf.nn.conv2d's SAME)."""
    (kh, kw), (sh, sw) = size, strides
    if padding == "same":
        pads = []
        for length, k, s in ((z.shape[1], kh, sh), (z.shape[2], kw, sw)):
            total = max((-(-length // s) - 1) * s + k - length, 0)
            pads.append((total // 2, total - total // 2))
        z = np.pad(z, ((0, 0), *pads, (0, 0)), constant_values=fill)
    rows, cols = (z.shape[1] - kh) // sh + 1, (z.shape[2] - kw) // sw + 1
    out = np.empty((z.shape[0], rows, cols, kh, kw, z.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = z[:, i:i + sh * rows:sh, j:j + sw * cols:sw, :]
    return out


ACTIVATIONS = {
    "linear": lambda z: z, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
    "softmax": lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True),
}


def forward64(layer, weights: list[np.ndarray], inputs: list[np.ndarray]) -> np.ndarray:
    z = inputs[0]
    if layer.merges:
        rank = max(t.ndim for t in inputs)
        if layer.kind == "concat":
            return np.concatenate(inputs, axis=layer.axis)
        shaped = [t.reshape(t.shape[:1] + (1,) * (rank - t.ndim) + t.shape[1:]) for t in inputs]
        fold = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "average": np.add,
                "maximum": np.maximum, "minimum": np.minimum}[layer.kind]
        out = shaped[0]
        for t in shaped[1:]:
            out = fold(out, t)
        return out / len(inputs) if layer.kind == "average" else out
    if layer.kind == "dense":
        return ACTIVATIONS[layer.activation](z @ weights[0] + weights[1])
    if layer.kind == "conv2d":
        patches = window(z, layer.kernel_size, layer.strides, layer.padding, 0.0)
        return ACTIVATIONS[layer.activation](np.einsum("nrcijk,ijko->nrco", patches, weights[0]) + weights[1])
    if layer.kind == "maxpool2d":
        return window(z, layer.pool_size, layer.resolved_strides, layer.padding, -np.inf).max(axis=(3, 4))
    if layer.kind == "batchnorm":
        gamma, beta, mean, variance = weights
        return (z - mean) / np.sqrt(variance + layer.epsilon) * gamma + beta
    if layer.kind == "normalize":  # keras/src/layers/preprocessing/normalization.py: call
        mean, variance, _ = weights
        return (z - mean) / np.maximum(np.sqrt(variance), 1e-7)
    if layer.kind == "globalavgpool2d":
        return z.mean(axis=(1, 2))
    if layer.kind == "activation":
        return ACTIVATIONS[layer.activation](z)
    raise AssertionError(f"no reference for {layer.kind}")


def reference_outputs(report, weights: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Each row's output, in report.layers order, reading the rows its `sources` name."""
    outputs: list[np.ndarray] = []
    first = 0
    for row in report.layers:
        own = [np.asarray(w, np.float64) for w in weights[first:first + len(row.weights)]]
        first += len(row.weights)
        outputs.append(forward64(row.layer, own, [x if s < 0 else outputs[s] for s in row.sources]))
    return outputs


# ---------------------------------------------------------------------------------------
# The engine's model


@pytest.fixture(scope="module")
def engines():
    """Each case's ms.build model on Keras, with random weights."""
    out = {}
    for seed, (case, (text, _)) in enumerate(CASES.items()):
        model = ms.build(ms.parse(text), backend="keras")
        model.set_weights(random_weights(model.report, seed))
        out[case] = model
    return out


@pytest.mark.parametrize("case", CASES)
def test_summary_equals_keras_for_the_engine_and_a_hand_written_model(case, engines, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    report, native, hand = engines[case].report, engines[case].engine.native, by_hand(case)
    assert report.functional and isinstance(native, keras.Model) and not isinstance(native, keras.Sequential)
    from_ir = functional(engines[case].spec)
    for line_length in (76, 100, 130):
        ours = report.summary(line_length=line_length)
        assert ours == kr.summary(native, line_length)
        assert ours == kr.summary(hand, line_length)
        assert ours == kr.summary(from_ir, line_length)
    names = [r.name for r in report.layers]
    assert [layer.name for layer in native.layers[1:]] == names == [layer.name for layer in hand.layers[1:]]
    paths = [w.path for w in report.weights]
    assert [w.path for w in native.weights] == paths == [w.path for w in hand.weights]
    assert [tuple(w.shape) for w in native.weights] == [w.shape for w in report.weights]


@pytest.mark.parametrize("case", CASES)
def test_every_layer_output_equals_a_float64_reference(case, engines):
    model = engines[case]
    x = np.random.default_rng(1).normal(size=(3, *model.spec.input_shape)).astype(np.float32)
    got = model.engine.layer_outputs(x)
    expected = reference_outputs(model.report, model.get_weights(), x.astype(np.float64))
    assert len(got) == len(expected) == len(model.report.layers)
    for row, g, e in zip(model.report.layers, got, expected):
        assert g.shape == e.shape == (3, *row.output_shape[1:]), row.name
        # float32 against float64: a relative error of a few 1e-6 of the layer's largest values
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(e).max()), err_msg=row.name)
    np.testing.assert_allclose(model.predict(x), got[-1], rtol=1e-6, atol=1e-6)


TRAINED = {
    "residual": TINY_RESNET.replace("16x16x3", "6x6x2").replace("residual 8\nresidual 8", "residual 8")
    + "optimizer adam learning_rate=0.01\nloss categorical_crossentropy\nmetrics accuracy\n",
    "every_merge": CASES["every_merge"][0] + "optimizer sgd learning_rate=0.05 momentum=0.9\nloss mse\nmetrics mae\n",
}


@pytest.mark.parametrize("case", TRAINED)
def test_training_a_graph_matches_keras_fit(case):
    """The engine's own training loop against model.fit of the model built from the IR by
    hand, from the same weights: history, weights after, predictions."""
    spec = ms.parse(TRAINED[case])
    model = ms.build(spec, backend="keras", seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, *spec.input_shape)).astype(np.float32)
    classes = model.report.output_shape[-1]
    y = (np.eye(classes, dtype=np.float32)[rng.integers(0, classes, 50)] if spec.loss.name != "mse"
         else rng.normal(size=(50, classes)).astype(np.float32))
    ref = functional(spec)
    ref.set_weights(model.get_weights())
    opt = spec.optimizer
    ref.compile(optimizer=getattr(keras.optimizers, {"adam": "Adam", "sgd": "SGD"}[opt.name])(
        **{k: v for k, v in opt.config().items() if v is not None}), loss=spec.loss.name, metrics=list(spec.metrics))
    got = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    want = ref.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=2e-6, atol=1e-7, err_msg=key)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_weights_move_between_the_engine_and_a_hand_written_model(engines):
    """Both hold their weights in report.weights order: one's get_weights is the other's set_weights."""
    model, hand = engines["every_merge"], by_hand("every_merge")
    hand.set_weights(model.get_weights())
    x = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# The emitted program

DRIVER = r'''
import contextlib, importlib.util, io, json, os, sys
import numpy as np
sys.modules["modelspec"] = None  # a standalone program must not need modelspec
import keras

os.environ["COLUMNS"] = "300"
cases = json.load(open(sys.argv[1]))
results = {}
for case in cases:
    keras.backend.clear_session(free_memory=False)
    loader = importlib.util.spec_from_file_location(f"program_{len(results)}", case["program"])
    program = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(program)
    model = program.build_model()
    data = np.load(case["data"])
    model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
    for layer in model.layers:  # Keras's set_weights leaves the copies Normalization divides by stale;
        if isinstance(layer, keras.layers.Normalization):  # its load_weights and adapt refresh them
            layer.finalize_state()
    captured = []
    model.summary(print_fn=lambda text, line_break=True: captured.append(text), line_length=100)
    out = {"layers": [layer.name for layer in model.layers], "paths": [w.path for w in model.weights],
           "summary": "".join(captured),
           "predictions": keras.ops.convert_to_numpy(model(data["x"], training=False)).tolist()}
    if hasattr(program, "adapt_normalization"):
        program.adapt_normalization(model, data["x"])
        norm = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)][0]
        out["adapted"] = [keras.ops.convert_to_numpy(w).tolist() for w in norm.weights[:2]]
    results[case["id"]] = out
json.dump(results, open(sys.argv[2], "w"))
'''


# More programs: a block's output kept for later (its variable must not hide the function), a
# block in a repeat, parameters and a block named as Python keywords, layer names that are no
# Python names or are the program's own, a layer named inside a block used once.
PROGRAMS = {
    "kept_use": "input 4\nblock b(n) {\n  dense n relu\n  add in\n}\nh = b 4\nb 4\nadd h\nconcat in\n",
    "repeat_block": "input 4\nblock b(n) {\n  dense n relu\n  add in\n}\nrepeat 3 {\n  b 4\n}\ndense 2\n",
    "keywords": "input 4\nblock lambda(class, def=relu) {\n  dense class def\n  add in\n}\nlambda 4\n"
                "lambda 4 def=tanh\n",
    "odd_names": 'input 4\nx = dense 4 name=x\ninputs = dense 4 from=in name=inputs\nadd x\nh = dense 4 name="a-b"\n'
                 'dense 4 name="1st"\nadd h\n',
    "named_once": "input 4\nblock b(n) {\n  dense n relu name=inner\n  dense n\n  add in\n}\nb 4\ndense 2\n",
}


@pytest.fixture(scope="module")
def programs(engines, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph_programs")
    cases, codes = [], {}
    built = {**engines, **{case: ms.build(ms.parse(text), backend="keras") for case, text in PROGRAMS.items()}}
    for index, (case, model) in enumerate(built.items()):
        codes[case] = backends.get("keras").emit(model.spec, model.report)
        (tmp / f"p{index}.py").write_text(codes[case], encoding="utf-8")
        x = np.random.default_rng(index).normal(size=(6, *model.spec.input_shape)).astype(np.float32)
        np.savez(tmp / f"d{index}.npz", x=x, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        cases.append({"id": case, "program": str(tmp / f"p{index}.py"), "data": str(tmp / f"d{index}.npz")})
    (tmp / "cases.json").write_text(json.dumps(cases))
    (tmp / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(tmp / "driver.py"), str(tmp / "cases.json"), str(tmp / "out.json")],
                            capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    ran = json.loads((tmp / "out.json").read_text())
    return codes, ran, {c["id"]: np.load(c["data"]) for c in cases}, built


@pytest.mark.parametrize("case", [*CASES, *PROGRAMS])
def test_the_program_builds_the_engines_model(case, programs):
    codes, ran, data, built = programs
    model, out = built[case], ran[case]
    assert out["layers"] == ["input_layer", *(r.name for r in model.report.layers)]
    assert out["paths"] == model.weight_paths
    assert out["summary"] == model.report.summary(line_length=100)
    # the program calls the model eagerly, the engine in a traced function: float32 rounding apart
    np.testing.assert_allclose(np.array(out["predictions"], np.float32), model.predict(data[case]["x"]),
                               rtol=1e-6, atol=1e-6)


def test_a_block_is_a_function_called_once_per_use(programs):
    codes = programs[0]
    code = codes["tiny_resnet"]
    assert code.count("def residual(inputs, filters):\n") == 1
    assert code.count("    x = residual(x, 8)\n") == 2
    assert code.count("layers.Conv2D(filters, (3, 3)") == 2  # the body once, not per use
    code = codes["nested"]
    assert "def unit(inputs, f, k):\n" in code and "def residual(inputs, filters, act):\n" in code
    assert code.index("def unit(") < code.index("def residual(")  # defined before its caller
    assert "    x = unit(inputs, filters, (3, 3))\n" in code and "    x = layers.Activation(act)(x)\n" in code
    assert '    x = residual(x, 4, "relu")\n' in code and '    x = residual(x, 4, "tanh")\n' in code
    assert "def lambda_(inputs, class_, def_):\n" in codes["keywords"]
    assert "    b_2 = b(inputs, 4)\n    x = b(b_2, 4)\n" in codes["kept_use"]
    assert codes["repeat_block"].count("def b(") == 1 and codes["repeat_block"].count(" = b(") == 3


def test_names_are_written_only_where_keras_would_choose_others(programs):
    codes = programs[0]
    assert "name=" not in codes["skip_first"].split("def build_model")[1].split("keras.Model(")[0]
    assert 'layers.Dense(4, name="shortcut")(inputs)' in codes["named"]
    assert 'layers.Dense(4, name="head")(x)' in codes["named"]


def test_the_program_adapts_a_normalization_inside_a_graph(programs):
    """adapt_normalization gives the layer reading the input the statistics of x, as
    Normalization.adapt does: the mean and the population variance over the batch."""
    _, ran, data, _ = programs
    mean, variance = ran["normalized"]["adapted"]
    x = data["normalized"]["x"].astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, x.var(0), rtol=1e-5, atol=1e-6)


def test_a_block_whose_uses_differ_beyond_its_parameters_is_inlined():
    """Where Keras's automatic names would differ from the checker's in one use only (a user's
    name later takes an automatic one), that use's layers must be named: the uses are then
    written out one by one. A named layer outside the block changes nothing."""
    block = "input 4\nblock b(n) {\n  dense n relu\n  dense n\n  add in\n}\n"
    spec = ms.parse(block + "b 4\ndense 4 name=mid\nb 4\n")
    code = backends.get("keras").emit(spec, ms.check(spec))
    assert "def b(inputs, n):" in code and code.count(" = b(") == 2
    spec = ms.parse(block + "b 4\nb 4\ndense 4 name=dense_2\n")
    code = backends.get("keras").emit(spec, ms.check(spec))
    assert "def b(" not in code and code.count("layers.Add()") == 2 and 'name="dense_3"' in code


# ---------------------------------------------------------------------------------------
# modelspec import


@pytest.mark.parametrize("case", CASES)
def test_a_functional_model_imports_to_a_spec_of_its_summary(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    hand = by_hand(case)
    imported = convert(json.loads(hand.to_json()))
    assert imported.spec.connections  # a graph, read back from the printed text
    assert imported.report.summary(line_length=100) == kr.summary(hand, 100)
    assert [w.path for w in imported.report.weights] == [w.path for w in hand.weights]
    hand.set_weights(random_weights(imported.report, 3))
    for layer in hand.layers:  # set_weights leaves the copies Normalization divides by stale
        if isinstance(layer, L.Normalization):
            layer.finalize_state()
    model = ms.build(imported.spec, backend="keras")
    model.set_weights(hand.get_weights())
    x = np.random.default_rng(3).normal(size=(4, *imported.spec.input_shape)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_an_imported_graph_is_the_spec_it_came_from():
    spec = ms.parse(CASES["skip_first"][0])
    imported = convert(json.loads(by_hand("skip_first").to_json()))
    assert imported.text == ("model skip_first\ninput 8\ndense = dense 4\ndense 6 relu from=in\ndense 4\n"
                             "add dense\n")
    assert imported.spec.layers == spec.layers and imported.spec.connections == spec.connections


def test_a_saved_functional_model_imports_on_the_command_line(tmp_path, capsys):
    hand = by_hand("inception")
    hand.compile(optimizer="adam", loss="mse")
    hand.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.ms")]) == 0
    text = (tmp_path / "m.ms").read_text()
    assert "concat conv2d conv2d_1 max_pooling2d\n" in text and "optimizer adam\nloss mse\n" in text
    assert ms.check(ms.parse(tmp_path / "m.ms")).total_params == hand.count_params()


def two_inputs() -> keras.Model:
    a, b = keras.Input((3,)), keras.Input((3,))
    return keras.Model([a, b], L.Add()([a, b]))


def two_outputs() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, [L.Dense(2)(inputs), L.Dense(1)(inputs)])


def shared() -> keras.Model:
    inputs = keras.Input((3,))
    dense = L.Dense(3)
    return keras.Model(inputs, L.Add()([dense(inputs), dense(dense(inputs))]))


@pytest.mark.parametrize("build, message", [
    (two_inputs, "the model has 2 inputs; a spec has one input and one output"),
    (two_outputs, "the model has 2 outputs; a spec has one input and one output"),
    (shared, "the layer 'dense' (Dense) is called 3 times; a spec's layers are each called once "
             "(a shared layer cannot be expressed)"),
])
def test_what_a_spec_cannot_wire_is_named(build, message, tmp_path, capsys):
    keras.backend.clear_session(free_memory=False)
    config = json.loads(build().to_json())
    with pytest.raises(UnsupportedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_config(config)
    (tmp_path / "m.json").write_text(json.dumps(config))
    assert main(["import", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
