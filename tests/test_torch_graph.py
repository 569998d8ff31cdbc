"""Graph specs (references, merges, blocks, fan-out) on the torch backend: the live module and
the emitted program give Keras's numbers. The reference is a real keras.Model built here with
the functional API from the spec's layers and connections, holding the same weights: its
forward pass, and its gradients from tf.GradientTape."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import keras_reference  # noqa: E402

import modelspec as ms  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402
from corpus import TINY_RESNET, load_program

pytestmark = pytest.mark.torch


INCEPTION = """model inception
input 9x9x3
a = conv2d 4 1x1 relu padding=same
b = conv2d 4 3x3 relu padding=same from=in
c = maxpool2d 3x3 stride=1 padding=same from=in
concat a b c
main = conv2d 6 3x3 stride=2 padding=same relu
skip = conv2d 6 1x1 from=in stride=2
concat main skip axis=1
flatten
dense 5
"""

# every elementwise merge of three branches, a fan-out of `h` into several readers, penalties
MERGES = """model merges
input 6
h = dense 8 tanh
a = dense 8 from=h l2=0.01
b = dense 8 relu from=h
c = dense 8 from=in l1=0.01
s = add a b c
d = subtract a b
m = multiply a b c
v = average a b c
x = maximum a b c
n = minimum a b c
concat s d m v x n h
dense 3 sigmoid
"""

# Three dense layers given the same weights (TIED): exact ties everywhere, where Keras's
# gradient goes whole to the earlier input (torch.maximum would split it 0.5/0.5)
TIES = """model ties
input 5
a = dense 4
b = dense 4 from=in
c = dense 4 from=in
big = maximum a b
small = minimum c a
add big small
"""
TIED = {"ties"}

# (B, 4) meets (B, 3, 4): Keras inserts the new axis after the batch axis
BROADCAST = """model broadcast
input 3x4
h = dense 4
z = dense 4 from=in
flatten from=z
dense 4
add h
dense 2
"""

CHANNEL_MIX = """model channel_mix
input 8x8x4
c = conv2d 4 3x3 padding=same from=in
add in
p = avgpool2d 2x2
u = upsampling2d 2x2
multiply in
zeropadding2d 1
globalmaxpool2d
dense 3 softmax
"""

# an image output: the last layer's value is NCHW in torch, and its softmax is split off
IMAGE_OUT = """model image_out
input 6x6x2
a = conv2d 3 3x3 padding=same
b = conv2d 3 1x1 from=in
subtract a
softmax
"""

SPECS = {"image_out": IMAGE_OUT, "tiny_resnet": TINY_RESNET, "inception": INCEPTION, "merges": MERGES, "ties": TIES,
         "broadcast": BROADCAST, "channel_mix": CHANNEL_MIX}

MERGE_CLASSES = {"add": "Add", "subtract": "Subtract", "multiply": "Multiply", "average": "Average",
                 "maximum": "Maximum", "minimum": "Minimum"}


def keras_model(spec: ms.Spec) -> keras.Model:
    """The spec with Keras's functional API: each layer called on the layers it reads."""
    keras.backend.clear_session(free_memory=False)  # Keras's auto names restart
    inputs = keras.Input(spec.input_shape)
    outputs: list = []
    for i, layer in enumerate(spec.layers):
        reads = [inputs if j < 0 else outputs[j] for j in spec.sources(i)]
        if layer.kind == "concat":
            made = keras.layers.Concatenate(axis=layer.axis)
        elif layer.merges:
            made = getattr(keras.layers, MERGE_CLASSES[layer.kind])()
        else:
            made = keras_reference.layer(layer)
        outputs.append(made(reads if layer.merges else reads[0]))
    return keras.Model(inputs, outputs[-1], name=spec.name)


def parse(text: str) -> ms.Spec:
    return ms.parse(text)


def weights(report, seed: int, tied: bool = False) -> list[np.ndarray]:
    """Random weights of every shape, the moving variances positive; `tied`: every weight
    equal to the first of its shape and name."""
    rng = np.random.default_rng(seed)
    out, first = [], {}
    for w in report.weights:
        value = rng.normal(0, 0.5, w.shape)
        value = (np.abs(value) + 0.5 if w.path.endswith("variance") else value).astype(np.float32)
        out.append(first.setdefault((w.shape, w.path.rsplit("/", 1)[-1]), value) if tied else value)
    return out


def torch_model(name: str, seed: int = 0):
    m = ms.build(SPECS[name], backend="torch", device="cpu")
    m.set_weights(weights(m.report, seed, tied=name in TIED))
    return m


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_equals_keras(name):
    text = SPECS[name]
    m = torch_model(name)
    k = keras_model(parse(text))
    assert [w.path for w in k.weights] == [w.path for w in m.report.weights]
    k.set_weights(m.get_weights())
    x = np.random.default_rng(1).normal(size=(3, *m.report.input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=1e-5, atol=2e-6)


def keras_gradients(k: keras.Model, x: np.ndarray, probe: np.ndarray) -> list[np.ndarray]:
    """d(sum(probe * output)) / d(each trainable weight), in training mode, by tf.GradientTape."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(k(x, training=True) * probe)
    return [g.numpy() for g in tape.gradient(loss, k.trainable_weights)]


def torch_gradients(m, x: np.ndarray, probe: np.ndarray) -> list[np.ndarray]:
    engine = m.engine
    module = engine.native.train()
    for t in engine.params:
        t.grad = None
    loss = (module(torch.from_numpy(x)) * torch.from_numpy(probe)).sum()
    loss.backward()
    w = engine.weights
    return [to_keras(t.grad).numpy() for t, to_keras, trainable in zip(w.tensors, w.to_keras, w.trainable)
            if trainable]


@pytest.mark.parametrize("name", list(SPECS))
def test_gradients_equal_keras(name):
    text = SPECS[name]
    m = torch_model(name, seed=2)
    k = keras_model(parse(text))
    k.set_weights(m.get_weights())
    x = np.random.default_rng(3).normal(size=(6, *m.report.input_shape[1:])).astype(np.float32)
    probe = np.random.default_rng(4).normal(size=(6, *m.report.output_shape[1:])).astype(np.float32)
    ours, theirs = torch_gradients(m, x, probe), keras_gradients(k, x, probe)
    assert len(ours) == len(theirs)
    for a, b, w in zip(ours, theirs, [w for w in m.report.weights if w.trainable]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=w.path)


def test_layer_outputs_follow_keras_layer_order():
    """Every layer's output, channels-last, in report.layers's order (crosscheck compares them
    row by row): as Keras's own layers give them."""
    m = torch_model("channel_mix")
    k = keras_model(parse(SPECS["channel_mix"]))
    k.set_weights(m.get_weights())
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 4)).astype(np.float32)
    probe = keras.Model(k.inputs, [layer.output for layer in k.layers[1:]])
    theirs = probe.predict(x, verbose=0)
    ours = m.engine.layer_outputs(x)
    assert [layer.name for layer in k.layers[1:]] == [row.name for row in m.report.layers]
    for a, b, row in zip(ours, theirs, m.report.layers):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=row.name)


# ---------------------------------------------------------------------------------------
# The emitted program

# a block whose two uses differ in constructor values only (input channels, filters, rate):
# one class, with those values as its constructor's parameters
WIDEN = """model widen
input 8x8x3
block unit(f, r=0.0) {
  s = conv2d f 1x1 from=in
  conv2d f 3x3 relu padding=same from=in
  dropout r
  add s
}
unit 4
unit 6 r=0.25
flatten
dense 2
"""

# a block using a block, and a repeat
NESTED = """model nested
input 10
block pair(u) {
  h = dense u tanh
  dense u from=in
  maximum h
}
block stage(u) {
  pair u
  pair u
  concat in
}
stage 6
repeat 2 {
  stage 4
}
dense 3 softmax
"""

# a block reading its input in both layouts (a conv's NCHW, a dense's channels-last)
TWO_LAYOUTS = """model two_layouts
input 5x5x3
block mix(f) {
  a = conv2d f 1x1
  dense f from=in
  add a
}
mix 4
mix 4
globalavgpool2d
dense 2
"""

# a block of no weights, used alone and inside another block
WEIGHTLESS = """model weightless
input 4
block act() {
  h = relu
  tanh from=in
  add h
}
block outer(u) {
  dense u
  act
}
outer 4
act
dense 2
"""

EMITTED = {**SPECS, "widen": WIDEN, "nested": NESTED, "two_layouts": TWO_LAYOUTS, "weightless": WEIGHTLESS}



def emitted(text: str, tmp_path):
    """The emitted program's model class, and the live model with random weights."""
    spec = parse(text)
    source = TorchBackend().emit(spec, ms.check(spec))
    module = load_program(source, tmp_path / f"{spec.name}.py")
    cls = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
           and getattr(v, "keras_name", None) == spec.name][0]
    return source, cls


@pytest.mark.parametrize("name", list(EMITTED))
def test_the_emitted_program_computes_what_the_engine_does(name, tmp_path):
    source, cls = emitted(EMITTED[name], tmp_path)
    net = cls()
    live = ms.build(EMITTED[name], backend="torch", device="cpu")
    live.set_weights(weights(live.report, 6, tied=name in TIED))
    net.load_keras_weights(dict(zip(live.weight_paths, live.get_weights())))
    for path, value in net.keras_weights().items():  # every weight, found by its Keras path
        assert value.numpy().tobytes() == live.get_weights()[live.weight_paths.index(path)].tobytes(), path
    x = np.random.default_rng(7).normal(size=(3, *live.report.input_shape[1:])).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(torch.from_numpy(x)).numpy(), live.predict(x), rtol=1e-6, atol=1e-7)
    # and the gradients, in training mode (no dropout: a rate of 0 or none)
    if "dropout" not in EMITTED[name]:
        probe = np.random.default_rng(8).normal(size=(3, *live.report.output_shape[1:])).astype(np.float32)
        (net.train()(torch.from_numpy(x)) * torch.from_numpy(probe)).sum().backward()
        grads = {path: t.grad for path, t, _ in net.keras_layout() if t.grad is not None}
        expected = torch_gradients(live, x, probe)
        trainable = [w.path for w in live.report.weights if w.trainable]
        assert sorted(grads) == sorted(trainable)
        for path, g in zip(trainable, expected):
            layout = dict((p, l) for p, _, l in net.keras_layout())[path]
            g_torch = grads[path]
            g_keras = g_torch.T if layout == "dense" else g_torch.permute(2, 3, 1, 0) if layout == "conv" else g_torch
            np.testing.assert_allclose(g_keras.numpy(), g, rtol=1e-5, atol=1e-6, err_msg=path)


def test_a_block_is_one_class_used_once_per_use(tmp_path):
    """tiny_resnet's residual block: one class, two instances; no layer of it unrolled in the model."""
    source, cls = emitted(TINY_RESNET, tmp_path)
    assert len(re.findall(r"^class Residual\(nn\.Module\):", source, re.M)) == 1
    assert re.findall(r"self\.(\w+) = Residual\(filters=8\)", source) == ["residual", "residual_2"]
    assert source.count("nn.Conv2d(") == 3  # the stem's, and the block's two
    assert "add = batch_normalization + x" in source
    net = cls()
    assert [type(m).__name__ for m in (net.residual, net.residual_2)] == ["Residual", "Residual"]


def test_uses_that_differ_in_values_share_a_class_with_those_values_as_parameters(tmp_path):
    source, _ = emitted(WIDEN, tmp_path)
    assert len(re.findall(r"^class Unit\(", source, re.M)) == 1
    assert "def __init__(self, f, r, in_channels):" in source
    assert "self.unit = Unit(f=4, r=0.0, in_channels=3)" in source
    assert "self.unit_2 = Unit(f=6, r=0.25, in_channels=4)" in source


def test_merges_read_as_keras_writes_them(tmp_path):
    source, _ = emitted(MERGES, tmp_path)
    for line in ["add = dense_1 + dense_2 + dense_3", "subtract = dense_1 - dense_2",
                 "multiply = dense_1 * dense_2 * dense_3", "average = (dense_1 + dense_2 + dense_3) / 3",
                 "maximum = keras_maximum(keras_maximum(dense_1, dense_2), dense_3)",
                 "minimum = keras_minimum(keras_minimum(dense_1, dense_2), dense_3)"]:
        assert line in source
    source, _ = emitted(BROADCAST, tmp_path)
    assert "add = dense_2.unsqueeze(1) + dense" in source  # (B, 4) as (B, 1, 4), not (1, B, 4)
    source, _ = emitted(INCEPTION, tmp_path)
    assert "torch.cat((conv2d_2, conv2d_3), dim=2)" in source  # Keras's axis 1 (H) of NHWC is NCHW's 2


@pytest.mark.parametrize("name", ["tiny_resnet", "merges"])
@pytest.mark.parametrize("sync_free", [False, True], ids=["eager", "sync_free"])
def test_two_training_steps_equal_keras_fit(name, sync_free):
    """Keras's fit with SGD and momentum, two batches: the weights after (BatchNormalization's
    moving statistics included) and the loss. (Not Adam: a conv bias before a batchnorm has a
    gradient of round-off alone, which Adam's normalised step would magnify.)"""
    from modelspec.backends.torch.engine import TorchEngine

    text = SPECS[name]
    m = ms.build(text, backend="torch", device="cpu")
    if sync_free:  # the CUDA loop (one flat buffer, masked updates), on the CPU
        m.engine = TorchEngine(m.spec, m.report, device="cpu", sync_free=True, cuda_graphs=False)
    m.set_weights(weights(m.report, 9))
    k = keras_model(parse(text))
    k.set_weights(m.get_weights())
    rng = np.random.default_rng(10)
    x = rng.normal(size=(8, *m.report.input_shape[1:])).astype(np.float32)
    out = m.report.output_shape[-1]
    y = np.eye(out, dtype=np.float32)[rng.integers(0, out, 8)]
    loss = "categorical_crossentropy" if name == "tiny_resnet" else "binary_crossentropy"
    m.compile(optimizer={"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}, loss=loss)
    k.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
    ours = m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"]
    theirs = k.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for a, b, w in zip(m.get_weights(), k.get_weights(), m.report.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=w.path)


def test_a_nested_block_is_built_by_its_parent_class(tmp_path):
    source, cls = emitted(NESTED, tmp_path)
    assert len(re.findall(r"^class Pair\(nn\.Module\):", source, re.M)) == 1
    assert len(re.findall(r"^class Stage\(nn\.Module\):", source, re.M)) == 1
    assert "self.pair = Pair(u=u, in_features=in_features)" in source
    assert re.findall(r"self\.stage\w* = Stage\(.*\)", source) == [
        "self.stage = Stage(u=6, in_features=10)", "self.stage_2 = Stage(u=4, in_features=16)",
        "self.stage_3 = Stage(u=4, in_features=20)"]
    assert source.count("nn.Linear(") == 3  # Pair's two, and the model's output layer
    assert "        self.pair.reset_parameters()\n        self.pair_2.reset_parameters()\n" in source
    source, _ = emitted(WEIGHTLESS, tmp_path)  # one class, used in a block and on its own
    assert len(re.findall(r"^class Act\(nn\.Module\):", source, re.M)) == 1
    assert "self.act.reset_parameters()" not in source  # it has nothing to reset


# Runs the emitted module where only torch can be imported (-I -S, torch's folder alone on the
# path): it loads Keras-layout weights by path, predicts, and trains with its own fit.
DRIVER = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
try:
    import modelspec
except ImportError:
    pass
else:
    raise SystemExit("modelspec must not be importable here")
import torch
import model as generated
inputs = torch.load(sys.argv[3], weights_only=True)
net = generated.TinyResnet()
net.load_keras_weights(inputs["weights"])
out = {"predict": net.eval()(inputs["x"]).detach()}
history = generated.fit(net, inputs["x"], inputs["y"], epochs=2, batch_size=4, shuffle=False)
out["loss"] = torch.tensor(history["loss"])
out.update(net.keras_weights())
torch.save(out, sys.argv[4])
"""


def test_the_emitted_program_trains_without_modelspec_as_the_engine(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    text = TINY_RESNET + "optimizer sgd learning_rate=0.1 momentum=0.9\nloss categorical_crossentropy\n"
    spec = parse(text)
    (tmp_path / "model.py").write_text(TorchBackend().emit(spec, ms.check(spec)), encoding="utf-8")
    live = ms.build(text, backend="torch", device="cpu")
    live.set_weights(weights(live.report, 11))
    rng = np.random.default_rng(12)
    x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
    torch.save({"weights": {p: torch.from_numpy(w) for p, w in zip(live.weight_paths, live.get_weights())},
                "x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "in.pt")
    site = str(Path(torch.__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", DRIVER, str(tmp_path), site, str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    np.testing.assert_allclose(out["predict"].numpy(), live.predict(x), rtol=1e-6, atol=1e-7)
    history = live.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0).history
    np.testing.assert_allclose(out["loss"].numpy(), history["loss"], rtol=1e-5)
    for path, w in zip(live.weight_paths, live.get_weights()):
        np.testing.assert_allclose(out[path].numpy(), w, rtol=1e-4, atol=1e-6, err_msg=path)


@pytest.mark.parametrize("name", list(EMITTED))
def test_the_emitted_graph_reads_like_hand_written_code(name):
    from test_torch_emit import ALLOWED_IMPORTS, defined_but_unused, imports

    spec = parse(EMITTED[name])
    source = TorchBackend().emit(spec, ms.check(spec))
    lines = source.splitlines()
    assert max(map(len, lines)) <= 100
    assert imports(source) <= ALLOWED_IMPORTS and defined_but_unused(source) == set()
    assert not re.search(r"\blambda\b|(?<![.\w])(exec|eval)\(", source)
    assert source.endswith("\n") and not any(line != line.rstrip() for line in lines)


def test_the_live_module_keeps_a_value_only_while_it_is_read():
    """tiny_resnet's forward pass: each block's input is read by its first conv and its add, and
    dropped after the add; at the end only the output is held."""
    m = torch_model("tiny_resnet")
    module = m.native.eval()
    names = list(module.layers)
    x = torch.from_numpy(np.random.default_rng(13).normal(size=(2, 16, 16, 3)).astype(np.float32))
    with torch.no_grad():
        kept = module.values(x, keep=True)
        dropped = module.values(x)
    assert [n for n, v in zip(names, dropped) if v is not None] == [names[-1]]
    assert torch.equal(dropped[-1], kept[-1])
    assert names[:3] == ["x_nchw", "conv2d", "conv2d_1"] and names.index("add") > names.index("conv2d_1")
    assert module.drop[names.index("add")] == [names.index("batch_normalization"), names.index("conv2d")]
