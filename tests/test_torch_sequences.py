"""Sequence layers on the torch backend (embedding with mask_zero, conv1d, 1-D pools, global
pools, layernorm, reshape, integer inputs): the live module and the emitted program against
real Keras (TensorFlow backend) holding the same weights, forward and gradients (tf.GradientTape),
ties included."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import keras_reference  # noqa: E402

import modelspec as ms  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402
from modelspec.backends.torch.engine import TorchEngine  # noqa: E402

from corpus import load_program  # noqa: E402

# Keras warns whenever a layer that drops the mask (conv1d, pools) reads one, as it should
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]


def keras_layer(layer):
    """The Keras layer of a spec layer; the kinds of this issue written out here."""
    L = keras.layers
    kind = layer.kind
    if kind == "embedding":
        reg = layer.embeddings_regularizer
        return L.Embedding(layer.input_dim, layer.output_dim, mask_zero=layer.mask_zero,
                           embeddings_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None)
    if kind == "conv1d":
        return L.Conv1D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                        dilation_rate=layer.dilation_rate, activation=layer.activation, use_bias=layer.use_bias)
    if kind in ("maxpool1d", "avgpool1d"):
        cls = L.MaxPooling1D if kind == "maxpool1d" else L.AveragePooling1D
        return cls(layer.pool_size, strides=layer.strides, padding=layer.padding)
    if kind == "globalavgpool1d":
        return L.GlobalAveragePooling1D()
    if kind == "globalmaxpool1d":
        return L.GlobalMaxPooling1D()
    if kind == "layernorm":
        return L.LayerNormalization(epsilon=layer.epsilon)
    if kind == "reshape":
        return L.Reshape(layer.target_shape)
    if kind == "add":
        return L.Add()
    return keras_reference.layer(layer)


def keras_model(spec: ms.Spec):
    """The spec with Keras's functional API (masks travel as Keras carries them)."""
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input(spec.input_shape, dtype="int32" if spec.input_dtype == "int32" else "float32")
    outputs: list = []
    for i, layer in enumerate(spec.layers):
        reads = [inputs if j < 0 else outputs[j] for j in spec.sources(i)]
        outputs.append(keras_layer(layer)(reads if layer.merges else reads[0]))
    return keras.Model(inputs, outputs[-1])


def random_weights(report, seed: int) -> list[np.ndarray]:
    """Random weights of every shape, the moving variances positive."""
    rng = np.random.default_rng(seed)
    out = []
    for w in report.weights:
        value = rng.normal(0, 0.5, w.shape)
        out.append((np.abs(value) + 0.5 if w.path.endswith("variance") else value).astype(np.float32))
    return out


def inputs(spec: ms.Spec, n: int, seed: int) -> np.ndarray:
    """Random inputs; ids with zeros (masked steps) in the first sample only."""
    rng = np.random.default_rng(seed)
    if spec.input_dtype == "int32":
        ids = rng.integers(1, spec.id_limit, size=(n, *spec.input_shape)).astype(np.int32)
        ids[0, 1] = ids[0, -2:] = 0
        return ids
    return rng.normal(size=(n, *spec.input_shape)).astype(np.float32)


def as_torch(x: np.ndarray):
    return torch.from_numpy(x.astype(np.int64) if x.dtype.kind in "iu" else x)


def keras_gradients(k, x, probe, wrt_input=False):
    """d(sum(probe * output)) / d(each trainable weight) (or d/d input), by tf.GradientTape."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        if wrt_input:
            tape.watch(xt)
        loss = tf.reduce_sum(k(xt, training=True) * probe)
    if wrt_input:
        return tape.gradient(loss, xt).numpy()
    # an embedding's gradient is IndexedSlices (the rows read): made dense here
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, k.trainable_weights)]


def torch_gradients(m, x, probe) -> list[np.ndarray]:
    engine = m.engine
    module = engine.native.train()
    for t in engine.params:
        t.grad = None
    (module(as_torch(x)) * torch.from_numpy(probe)).sum().backward()
    w = engine.weights
    return [to_keras(t.grad).numpy() for t, to_keras, trainable in zip(w.tensors, w.to_keras, w.trainable)
            if trainable]


def same_as_keras(text: str, n: int = 4, seed: int = 0, rtol: float = 1e-5, atol: float = 2e-6):
    """The torch model of `text` against Keras's with the same weights: outputs and gradients."""
    m = ms.build(text, backend="torch", device="cpu")
    spec = m.spec
    m.set_weights(random_weights(m.report, seed))
    k = keras_model(spec)
    assert [tuple(w.shape) for w in k.weights] == [w.shape for w in m.report.weights]
    k.set_weights(m.get_weights())
    x = inputs(spec, n, seed + 1)
    np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=rtol, atol=atol)
    probe = np.random.default_rng(seed + 2).normal(size=(n, *m.report.output_shape[1:])).astype(np.float32)
    ours, theirs = torch_gradients(m, x, probe), keras_gradients(k, x, probe)
    assert len(ours) == len(theirs)
    for a, b, w in zip(ours, theirs, [w for w in m.report.weights if w.trainable]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=w.path)
    return m, k


# ---------------------------------------------------------------------------------------
# Each kind and option


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_conv1d_equals_keras(padding, stride, dilation, k):
    # the dense before it: the convolution's input gradient reaches a weight
    same_as_keras(f"input 11x2\ndense 3\nconv1d 4 {k} stride={stride} padding={padding} dilation={dilation}\n"
                  "flatten\ndense 2")


def test_conv1d_activation_and_no_bias_equal_keras():
    same_as_keras("input 9x3\nconv1d 5 3 relu nobias padding=same\nconv1d 2 2 softmax")


@pytest.mark.parametrize("kind", ["maxpool1d", "avgpool1d"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("pool,stride", [(2, None), (3, None), (4, None), (2, 1), (3, 2), (4, 3), (3, 1)])
def test_pool1d_equals_keras(kind, padding, pool, stride):
    strides = f" stride={stride}" if stride else ""
    same_as_keras(f"input 11x2\ndense 3\n{kind} {pool}{strides} padding={padding}\nflatten\ndense 2")


def test_avgpool1d_same_divides_by_the_real_steps():
    # T=5, pool 2, stride 2: the last window holds one real step and one pad; Keras's average is that step
    m = ms.build("input 5x1\navgpool1d 2 padding=same", backend="torch", device="cpu")
    x = np.array([[[1.0], [3.0], [5.0], [7.0], [9.0]]], np.float32)
    np.testing.assert_array_equal(m.predict(x)[0, :, 0], [2.0, 6.0, 9.0])


def test_pools_after_a_convolution_keep_torchs_layout_and_equal_keras():
    m, _ = same_as_keras("input 16x2\nconv1d 4 3 relu padding=same\nmaxpool1d 2\nconv1d 4 3 padding=causal\n"
                         "avgpool1d 3 stride=2 padding=same\nglobalmaxpool1d\ndense 2")
    # one switch to (batch, channels, steps) for the whole stack, as a hand-written model has
    assert [name for name in dict(m.engine.native.layers.named_children()) if name.startswith("to_")] == ["to_nct"]


@pytest.mark.parametrize("text", [
    "input 9x3\nconv1d 4 3\nbatchnorm\nsoftmax\nmaxpool1d 2\nflatten\ndense 2",
    "input 9x3\na = conv1d 4 3 padding=same\nb = conv1d 2 1 from=in\nconcat a b\nconv1d 3 2\nflatten\ndense 2",
    "input 9x3\na = conv1d 4 3 padding=same\nb = conv1d 4 1 from=in\nadd a b\nconv1d 3 2\nflatten\ndense 2",
])
def test_layers_between_convolutions_read_torchs_layout(text):
    # batchnorm's axis, softmax's and concat's on (batch, channels, steps): Keras's channels axis
    same_as_keras(text)


@pytest.mark.parametrize("pool", ["globalavgpool1d", "globalmaxpool1d"])
def test_global_pools_equal_keras(pool):
    same_as_keras(f"input 7x3\ndense 4\n{pool}\ndense 2")
    same_as_keras(f"input 7x3\nconv1d 4 2\n{pool}\ndense 2")  # on torch's (batch, channels, steps)


def test_layernorm_equals_keras_with_its_epsilon():
    x = np.random.default_rng(0).normal(scale=0.05, size=(3, 5, 4)).astype(np.float32)  # small: epsilon counts
    for option, eps in [("", 1e-3), (" epsilon=0.1", 0.1)]:
        m, k = same_as_keras(f"input 5x4\ndense 4\nlayernorm{option}\ndense 2")
        assert m.engine.native.layers.layer_normalization.eps == eps
        np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("text", [
    "input 12\nreshape 3x-1\nconv1d 2 2\nreshape -1\ndense 2",
    "input 16\nreshape 4x4x1\nconv2d 2 2x2\nreshape 9x2\nconv1d 3 2\nreshape 8x3x1\nflatten\ndense 2",
    "input 6x4\nconv1d 4 1\nreshape 4x6\ndense 2\nflatten",
])
def test_reshape_is_row_major_on_keras_layout(text):
    # after a convolution torch holds (batch, channels, ...): the values are put back in Keras's order first
    same_as_keras(text)


# ---------------------------------------------------------------------------------------
# Integer inputs and the mask


def test_embedding_row_zero_is_trainable_with_mask_zero():
    text = "input 6 int\nembedding 5 3 mask_zero\nconv1d 2 2\nflatten\ndense 2"  # every step counts
    m, _ = same_as_keras(text)
    x = np.array([[0, 0, 1, 2, 0, 3]], np.int32)
    probe = np.ones((1, 2), np.float32)
    grads = torch_gradients(m, x, probe)
    assert np.abs(grads[0][0]).sum() > 0  # torch's padding_idx would keep row 0 at zero
    assert m.engine.native.layers.embedding.padding_idx is None


@pytest.mark.parametrize("text", [
    "input 7 int\nembedding 10 3 mask_zero\nglobalavgpool1d\ndense 2",
    "input 7 int\nembedding 10 3 mask_zero\nlayernorm\ndense 4 relu\nglobalavgpool1d\ndense 2 softmax",
    "input 7 int\ne = embedding 10 3 mask_zero\nd = dense 3\nadd e d\nglobalavgpool1d\ndense 2",
])
def test_masked_global_average_equals_keras(text):
    m, k = same_as_keras(text)
    x = inputs(m.spec, 4, 1)
    plain = ms.build(text.replace(" mask_zero", ""), backend="torch", device="cpu")
    plain.set_weights(m.get_weights())
    assert np.abs(m.predict(x)[0] - plain.predict(x)[0]).max() > 1e-4  # the mask changed the numbers (float noise: 1e-7)
    np.testing.assert_allclose(m.predict(x)[1:], plain.predict(x)[1:], rtol=1e-5, atol=1e-6)  # no zero ids


def test_a_masked_pooling_in_a_block_equals_keras():
    same_as_keras(BLOCK)


def test_a_fully_masked_row_averages_to_nan_as_in_keras():
    text = "input 4 int\nembedding 6 2 mask_zero\nglobalavgpool1d"
    m = ms.build(text, backend="torch", device="cpu")
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    x = np.array([[0, 0, 0, 0], [1, 0, 2, 0]], np.int32)
    ours, theirs = m.predict(x), k.predict(x, verbose=0)
    assert np.isnan(ours[0]).all() and np.isnan(theirs[0]).all()
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6)


def test_an_embedding_of_a_grid_of_ids_feeds_an_image_layer():
    same_as_keras("input 4x5 int\nembedding 7 3\nconv2d 2 2x2\nflatten\ndense 2")


def test_the_issues_token_model_equals_keras():
    same_as_keras("input 40 int\nembedding 500 8\nconv1d 16 5 relu\nmaxpool1d 2\n"
                  "conv1d 16 3 padding=same relu\nglobalmaxpool1d\ndense 3 softmax", n=6)


@pytest.mark.parametrize("text", [
    "input 10 int\nembedding 9 3 mask_zero\ndense 4\nglobalavgpool1d\ndense 2 softmax",
    "input 10 int\nembedding 9 3\nconv1d 4 3\nmaxpool1d 2\nconv1d 2 2 padding=causal",
])
def test_layer_outputs_are_keras_layers_outputs(text):
    # what the crosscheck compares layer by layer: channels-last, one per row, the masked chain's too
    m = ms.build(text, backend="torch", device="cpu")
    m.set_weights(random_weights(m.report, 3))
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    every = keras.Model(k.inputs, [layer.output for layer in k.layers[1:]])
    x = inputs(m.spec, 3, 4)
    ours, theirs = m.engine.layer_outputs(x), every.predict(x, verbose=0)
    assert len(ours) == len(theirs) == len(m.report.layers)
    for a, b, row in zip(ours, theirs, m.report.layers):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=row.name)


def test_integer_ids_reach_the_embedding_as_int64():
    m = ms.build("input 5 int\nembedding 9 2\nglobalavgpool1d", backend="torch", device="cpu")
    data = m.engine.prepare(np.array([[1, 2, 3, 4, 8]], np.int32), None)
    assert data.x.dtype == torch.int64
    with pytest.raises(ValueError, match="integer ids"):
        m.engine.native(torch.zeros(1, 5))


# ---------------------------------------------------------------------------------------
# Gradient ties, as TensorFlow's


def test_maxpool1d_gives_a_tie_to_the_first_maximum():
    m = ms.build("input 6x1\nmaxpool1d 2\nflatten", backend="torch", device="cpu")
    x = np.array([[[1.0], [1.0], [2.0], [2.0], [0.0], [0.0]]], np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    m.engine.native(xt).sum().backward()
    expected = keras_gradients(keras_model(m.spec), x, np.ones((1, 3), np.float32), wrt_input=True)
    np.testing.assert_array_equal(xt.grad.numpy(), expected)
    np.testing.assert_array_equal(expected[0, :, 0], [1, 0, 1, 0, 1, 0])


@pytest.mark.parametrize("layer", ["", "conv1d 2 1\n"])  # channels-last, and torch's (batch, channels, steps)
def test_globalmaxpool1d_splits_a_tie_equally(layer):
    m = ms.build(f"input 4x2\n{layer}globalmaxpool1d", backend="torch", device="cpu")
    if layer:
        m.set_weights([np.eye(2, dtype=np.float32)[None], np.zeros(2, np.float32)])
    x = np.array([[[1.0, 3.0], [2.0, 3.0], [2.0, 0.0], [0.0, 3.0]]], np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    m.engine.native(xt).sum().backward()
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    expected = keras_gradients(k, x, np.ones((1, 2), np.float32), wrt_input=True)
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[0, :, 1], [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Training: the CPU loop and the sync-free (CUDA) loop on integer inputs

TOKENS = """model tokens
input 10 int
embedding 20 4 mask_zero l2=0.01
conv1d 6 3 relu padding=same
avgpool1d 2
layernorm
globalmaxpool1d
dense 3 softmax
loss sparse_categorical_crossentropy
optimizer adam
fit epochs=1 batch_size=8
"""


@pytest.mark.parametrize("sync_free", [False, True], ids=["eager", "sync_free"])
def test_training_on_ids_equals_keras_fit(sync_free):
    """Keras's fit with SGD and momentum, three batches (the last partial), the embedding's L2
    penalty included: the loss and the weights after."""
    m = ms.build(TOKENS, backend="torch", device="cpu")
    if sync_free:  # the CUDA loop (one flat buffer, masked updates), on the CPU
        m.engine = TorchEngine(m.spec, m.report, device="cpu", sync_free=True, cuda_graphs=False)
    m.set_weights(random_weights(m.report, 5))
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    x = inputs(m.spec, 20, 3)
    y = np.random.default_rng(4).integers(0, 3, 20)
    m.compile(optimizer={"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}, loss="sparse_categorical_crossentropy")
    k.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    ours = m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"]
    theirs = k.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for a, b, w in zip(m.get_weights(), k.get_weights(), m.report.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=w.path)


# ---------------------------------------------------------------------------------------
# The emitted program

# a masked pooling inside a block: the block's class takes the ids besides its input
BLOCK = """model blocky
input 9 int
block head(u) {
  d = dense u relu
  add in d
  globalavgpool1d
}
e = embedding 12 4 mask_zero
c = conv1d 4 3 padding=same
g = globalmaxpool1d
head 4 from=e
concat g
dense 2
"""

EMITTED = {
    "tokens": TOKENS,
    "masked": "input 7 int\nembedding 10 3 mask_zero\nlayernorm epsilon=0.01\nglobalavgpool1d\ndense 2 sigmoid",
    "windows": "input 13x2\nconv1d 3 4 padding=same stride=2\nmaxpool1d 3 stride=2 padding=same\n"
               "conv1d 3 3 padding=causal dilation=2\navgpool1d 2 padding=same\nreshape -1\ndense 2",
    "graph": "input 9 int\ne = embedding 12 4 mask_zero\nc = conv1d 4 3 padding=same from=e\nadd e c\n"
             "g = globalavgpool1d\nglobalmaxpool1d from=c\nconcat g\ndense 2",
    "block": BLOCK,
}



@pytest.mark.parametrize("name", list(EMITTED))
def test_the_emitted_program_computes_what_the_engine_does(name, tmp_path):
    spec = ms.parse(EMITTED[name])
    source = TorchBackend().emit(spec, ms.check(spec))
    assert max(map(len, source.splitlines())) <= 100 and "lambda" not in source
    if name == "block":
        assert "def forward(self, x, ids):" in source and "masked_mean(add, ids, dim=1)" in source
    module = load_program(source, tmp_path / f"{name}.py")
    cls = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
           and getattr(v, "keras_name", None) == spec.name][0]
    net = cls()
    live = ms.build(spec, backend="torch", device="cpu")
    live.set_weights(random_weights(live.report, 6))
    net.load_keras_weights(dict(zip(live.weight_paths, live.get_weights())))
    for path, value in net.keras_weights().items():
        assert value.numpy().tobytes() == live.get_weights()[live.weight_paths.index(path)].tobytes(), path
    x = inputs(spec, 3, 7)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(as_torch(x)).numpy(), live.predict(x), rtol=1e-6, atol=1e-7)
    probe = np.random.default_rng(8).normal(size=(3, *live.report.output_shape[1:])).astype(np.float32)
    (net.train()(as_torch(x)) * torch.from_numpy(probe)).sum().backward()
    layouts = {p: (t, layout) for p, t, layout in net.keras_layout()}
    expected = torch_gradients(live, x, probe)
    for path, g in zip([w.path for w in live.report.weights if w.trainable], expected):
        t, layout = layouts[path]
        to_keras = {"dense": lambda v: v.T, "conv1d": lambda v: v.permute(2, 1, 0)}.get(layout, lambda v: v)
        np.testing.assert_allclose(to_keras(t.grad).numpy(), g, rtol=1e-5, atol=1e-6, err_msg=path)


def test_the_emitted_token_program_trains_on_its_own(tmp_path):
    spec = ms.parse(TOKENS)
    source = TorchBackend().emit(spec, ms.check(spec))
    assert "padding_idx=" not in source and "torch.randint(0, 20, (n, 10))" in source
    path = tmp_path / "tokens.py"
    path.write_text(source, encoding="utf-8")
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Epoch 2/2" in done.stdout and done.stdout.strip().endswith("(64, 3)")


def test_the_finiteness_check_of_a_step_sees_every_value():
    from modelspec.backends.torch.engine import _finite

    big = torch.full((4,), 3e38)  # finite values whose sum overflows
    assert _finite(big) and _finite(torch.tensor([1.0, -2.0]))
    assert not _finite(torch.tensor([1.0, float("nan")]))
    assert not _finite(torch.tensor([float("inf"), -float("inf")]))  # a sum of NaN
    assert not _finite(torch.tensor([3e38, 3e38, float("inf")]))


@pytest.mark.keras
def test_the_emitted_programs_adam_updates_an_embedding_as_keras_does(tmp_path):
    """The emitted program's fit squares the embedding's gradient by occurrence, as Keras's
    Adam does (keep_sparse_squares): its weights after three steps are Keras's."""
    keras = pytest.importorskip("keras")
    keras.backend.clear_session()
    text = "model tokens\ninput 6 int\nembedding 5 3\nflatten\ndense 2 softmax\noptimizer adam lr=0.05\n" \
           "loss sparse_categorical_crossentropy\nfit batch=8 shuffle=false\n"
    spec = ms.parse(text)
    path = tmp_path / "program.py"
    path.write_text(TorchBackend().emit(spec, ms.check(spec)))
    loader = importlib.util.spec_from_file_location("program", path)
    program = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(program)
    model = program.Tokens()
    weights = ms.build(spec, backend="numpy", seed=4).get_weights()
    paths = [path for path, _, _ in model.keras_layout()]
    model.load_keras_weights(dict(zip(paths, weights)))
    reference = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(5, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    reference.set_weights(weights)
    reference.compile(keras.optimizers.Adam(learning_rate=0.05), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, (24, 6)), rng.integers(0, 2, 24)
    program.fit(model, torch.as_tensor(x), torch.as_tensor(y))
    reference.fit(x.astype(np.int32), y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for path, theirs in zip(paths, reference.get_weights()):
        np.testing.assert_allclose(model.keras_weights()[path].numpy(), theirs, rtol=2e-5, atol=2e-6, err_msg=path)
