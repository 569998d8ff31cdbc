"""Graph specs (references, merges, blocks, fan-out) on the torch backend: the live module and
the emitted program give Keras's numbers. The reference is a real keras.Model built here with
the functional API from the spec's layers and connections, holding the same weights: its
forward pass, and its gradients from tf.GradientTape."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import keras_reference  # noqa: E402

import modelspec as ms  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402

pytestmark = pytest.mark.torch

TINY_RESNET = """model tiny_resnet
input 16x16x3
conv2d 8 3x3 relu padding=same
block residual(filters) {
  conv2d filters 3x3 relu padding=same
  conv2d filters 3x3 padding=same
  batchnorm
  add in
  relu
}
residual 8
residual 8
globalavgpool2d
dense 10 softmax
"""

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

# every elementwise merge of three branches, a fan-out of `h` into five readers
MERGES = """model merges
input 6
h = dense 8 tanh
a = dense 8 from=h
b = dense 8 relu from=h
c = dense 8 from=in
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

SPECS = {"tiny_resnet": TINY_RESNET, "inception": INCEPTION, "merges": MERGES, "ties": TIES,
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
