"""Recurrent layers and attention on the torch backend (lstm, gru with reset_after true and
false, simple_rnn, bidirectional in every merge mode, attention): the live module and the
emitted program against real Keras (TensorFlow backend) holding the same weights, forward and
gradients (tf.GradientTape), with embedding's mask (right and left padding, holes); training
steps against Keras's model.fit; the step loop's autograd against finite differences in float64."""

from __future__ import annotations

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
from modelspec.backends.torch import keras_ops  # noqa: E402
from modelspec.backends.torch.engine import TorchEngine  # noqa: E402

from corpus import load_program, transformer  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.keras]


def keras_layer(layer):
    """The Keras layer of a spec layer; this issue's kinds written out here."""
    L = keras.layers
    kind = layer.kind
    if kind in ("lstm", "gru", "simple_rnn"):
        reg = layer.kernel_regularizer
        kwargs = dict(activation=layer.activation, use_bias=layer.use_bias, return_sequences=layer.return_sequences,
                      go_backwards=layer.go_backwards,
                      kernel_regularizer=keras.regularizers.L1L2(reg.l1, reg.l2) if reg else None)
        if kind == "lstm":
            return L.LSTM(layer.units, recurrent_activation=layer.recurrent_activation, **kwargs)
        if kind == "gru":
            return L.GRU(layer.units, recurrent_activation=layer.recurrent_activation,
                         reset_after=layer.reset_after, **kwargs)
        return L.SimpleRNN(layer.units, **kwargs)
    if kind == "bidirectional":
        return L.Bidirectional(keras_layer(layer.layer), merge_mode=layer.merge_mode)
    if kind == "attention":
        return L.MultiHeadAttention(layer.num_heads, layer.key_dim, value_dim=layer.value_dim,
                                    dropout=layer.dropout, use_bias=layer.use_bias)
    if kind == "embedding":
        return L.Embedding(layer.input_dim, layer.output_dim, mask_zero=layer.mask_zero)
    if kind == "conv1d":
        return L.Conv1D(layer.filters, layer.kernel_size, padding=layer.padding, activation=layer.activation)
    if kind == "globalavgpool1d":
        return L.GlobalAveragePooling1D()
    if kind == "layernorm":
        return L.LayerNormalization(epsilon=layer.epsilon)
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
        k = keras_layer(layer)
        if layer.kind == "attention":
            outputs.append(k(reads[0], reads[0]))
        else:
            outputs.append(k(reads if layer.merges else reads[0]))
    return keras.Model(inputs, outputs[-1])


def random_weights(report, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.4, w.shape).astype(np.float32) for w in report.weights]


def inputs(spec: ms.Spec, n: int, seed: int, padding: str = "holes") -> np.ndarray:
    """Random inputs; ids with zeros (masked steps) as `padding` says: none, right (after the
    text), left (before), holes (here and there), empty (holes, and a row of zeros only)."""
    rng = np.random.default_rng(seed)
    if spec.input_dtype != "int32":
        return rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    ids = rng.integers(1, spec.id_limit, size=(n, *spec.input_shape)).astype(np.int32)
    t = spec.input_shape[0]
    if padding == "right":
        for i in range(n):
            ids[i, t - i % 3 - 1:] = 0
    elif padding == "left":
        for i in range(n):
            ids[i, :i % 3 + 1] = 0
    elif padding in ("holes", "empty"):
        ids[0, 1] = ids[0, -2:] = 0
        ids[1, ::2] = 0
        if padding == "empty":
            ids[-1] = 0
    return ids


def as_torch(x: np.ndarray):
    return torch.from_numpy(x.astype(np.int64) if x.dtype.kind in "iu" else x)


def keras_gradients(k, x, probe):
    """d(sum(probe * output)) / d(each trainable weight), by tf.GradientTape."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(k(tf.constant(x), training=True) * probe)
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


def same_as_keras(text: str, n: int = 5, seed: int = 0, padding: str = "empty", rtol: float = 1e-5,
                  atol: float = 2e-6):
    """The torch model of `text` against Keras's with the same weights: outputs and gradients."""
    m = ms.build(text, backend="torch", device="cpu")
    spec = m.spec
    m.set_weights(random_weights(m.report, seed))
    k = keras_model(spec)
    assert [tuple(w.shape) for w in k.weights] == [w.shape for w in m.report.weights]
    k.set_weights(m.get_weights())
    x = inputs(spec, n, seed + 1, padding)
    np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=rtol, atol=atol)
    probe = np.random.default_rng(seed + 2).normal(size=(n, *m.report.output_shape[1:])).astype(np.float32)
    ours, theirs = torch_gradients(m, x, probe), keras_gradients(k, x, probe)
    assert len(ours) == len(theirs)
    for a, b, w in zip(ours, theirs, [w for w in m.report.weights if w.trainable]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=w.path)
    return m, k


# ---------------------------------------------------------------------------------------
# Each kind and option, on real numbers (float inputs) and after a masking embedding

CELLS = ["lstm 5", "gru 5", "gru 5 reset_after=false", "simple_rnn 5"]


@pytest.mark.parametrize("backwards", ["", " go_backwards"])
@pytest.mark.parametrize("sequences", ["", " return_sequences"])
@pytest.mark.parametrize("cell", CELLS)
def test_a_recurrent_layer_equals_keras(cell, sequences, backwards):
    same_as_keras(f"input 6x3\n{cell}{sequences}{backwards}\ndense 2")


@pytest.mark.parametrize("padding,backwards", [("none", ""), ("right", ""), ("right", " go_backwards"),
                                               ("left", " go_backwards"), ("holes", ""), ("empty", " go_backwards")])
@pytest.mark.parametrize("cell", CELLS)
def test_a_masked_recurrent_layer_equals_keras(cell, backwards, padding):
    """A masked step keeps the state and repeats the output; an all-masked row outputs 0."""
    same_as_keras(f"input 7 int\nembedding 9 3 mask_zero\n{cell}{backwards}\ndense 2", padding=padding)


@pytest.mark.parametrize("padding", ["right", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_masked_sequences_pass_the_mask_on(cell, padding):
    """return_sequences repeats the previous output at a masked step; the next layer reads the mask."""
    same_as_keras(f"input 7 int\nembedding 9 3 mask_zero\n{cell} return_sequences go_backwards\nlstm 3\ndense 2",
                  padding=padding)


@pytest.mark.parametrize("cell,options", [
    (cell, options) for cell in ["lstm 4", "gru 4", "gru 4 reset_after=false", "simple_rnn 4"]
    for options in ["relu", "sigmoid recurrent_activation=tanh", "nobias", "elu nobias"]
    if not (cell.startswith("simple_rnn") and "recurrent_activation" in options)])  # SimpleRNN has none
def test_activations_and_no_bias_equal_keras(cell, options):
    same_as_keras(f"input 5x3\n{cell} {options} return_sequences\ndense 2")


@pytest.mark.parametrize("cell,merge", [("lstm 5", "concat"), ("lstm 5", "sum"), ("lstm 5", "mul"), ("lstm 5", "ave"),
                                        ("gru 5", "concat"), ("gru 5 reset_after=false", "ave"),
                                        ("simple_rnn 5", "concat"), ("simple_rnn 5 relu", "mul")])
@pytest.mark.parametrize("sequences", ["", " return_sequences"])
def test_bidirectional_equals_keras(cell, sequences, merge):
    text = f"input 6x3\nbidirectional {cell}{sequences} merge={merge}\n"
    same_as_keras(text + ("globalavgpool1d\n" if sequences else "") + "dense 2")


@pytest.mark.parametrize("padding", ["right", "left", "empty"])
@pytest.mark.parametrize("sequences", ["", " return_sequences"])
@pytest.mark.parametrize("cell", ["lstm 4", "gru 4 reset_after=false", "simple_rnn 4"])
def test_masked_bidirectional_equals_keras(cell, sequences, padding):
    """With return_sequences a masked step outputs 0 in both directions (zero_output_for_mask)."""
    text = f"input 7 int\nembedding 9 3 mask_zero\nbidirectional {cell}{sequences} merge=sum\n"
    same_as_keras(text + ("globalavgpool1d\n" if sequences else "") + "dense 2", padding=padding)


def test_a_bidirectional_penalty_applies_to_both_kernels():
    m = ms.build("input 4x2\nbidirectional lstm 3 l2=0.1\ndense 1", backend="torch", device="cpu")
    kernels = [t for t in m.engine.weights.tensors if t.shape == (12, 2)]
    assert [id(w) for w, *_ in m.engine.penalties] == [id(t) for t in kernels] and len(kernels) == 2


@pytest.mark.parametrize("options", ["", " value_dim=3", " nobias", " value_dim=5 nobias"])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_equals_keras(options, masked):
    text = f"input 6 int\nembedding 9 8{' mask_zero' if masked else ''}\nattention heads=2 key_dim=4{options}\n" \
           "globalavgpool1d\ndense 2"
    same_as_keras(text, padding="holes")


@pytest.mark.parametrize("padding", ["right", "holes"])
def test_attention_with_dropout_takes_keras_einsum_path_in_inference(padding):
    """With dropout Keras computes the scores itself and zeroes the masked probabilities, so an
    all-masked query row attends to nothing (without dropout it attends to every step)."""
    text = "input 6 int\nembedding 9 8 mask_zero\nattention heads=2 key_dim=4 dropout=0.3\nlayernorm\n" \
           "globalavgpool1d\ndense 2"
    m = ms.build(text, backend="torch", device="cpu")
    m.set_weights(random_weights(m.report, 3))
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    x = inputs(m.spec, 5, 4, padding)
    np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=1e-5, atol=2e-6)


def test_attention_dropout_drops_probabilities_in_training_only():
    module = keras_ops.MultiHeadAttention(4, 2, 3, 3, dropout=0.5)
    module.generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    x = torch.randn(3, 5, 4)
    module.eval()
    a, b = module(x), module(x)
    assert torch.equal(a, b)
    module.train()
    c, d = module(x), module(x)
    assert not torch.allclose(c, a) and not torch.allclose(c, d)


# the transformer encoder block, smaller, used twice
TRANSFORMER = transformer("input 8 int\nembedding 20 8 mask_zero", "encoder 2 4 16 8")
TWO_BLOCKS = TRANSFORMER.replace("encoder 2 4 16 8\n", "encoder 2 4 16 8\nencoder 2 3 8 8\n")


def test_the_transformer_block_equals_keras():
    same_as_keras(TRANSFORMER, padding="right")


def test_two_transformer_blocks_equal_keras():
    """The second block's attention runs unmasked in Keras: the first deletes its input's mask,
    so the residual add after it carries none at run time (modelspec.checker._masks_at_run_time)."""
    same_as_keras(TWO_BLOCKS, padding="right")


def test_recurrent_layers_after_a_convolution_read_keras_layout():
    same_as_keras("input 9x2\nconv1d 4 3 relu\nlstm 3 return_sequences\nconv1d 2 2\ngru 2\ndense 1")


# ---------------------------------------------------------------------------------------
# The step loop's gradients by finite differences (float64), and the fused kernels' choice


@pytest.mark.parametrize("kwargs", [
    dict(cell="lstm"), dict(cell="gru"), dict(cell="gru", reset_after=False), dict(cell="simple_rnn"),
    dict(cell="lstm", bidirectional=True, return_sequences=True, merge_mode="mul"),
    dict(cell="gru", reset_after=False, go_backwards=True, return_sequences=True),
])
def test_the_step_loops_gradients_equal_finite_differences(kwargs):
    torch.manual_seed(0)
    module = keras_ops.Recurrent(input_size=3, units=4, **kwargs).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    ids = torch.tensor([[1, 2, 0, 3, 0], [0, 0, 4, 5, 6], [7, 0, 0, 0, 0]])  # holes, left pad, right pad
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in module.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, *weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (x, ids))

    assert torch.autograd.gradcheck(f, (x, *weights))


@pytest.mark.parametrize("text,fused", [
    ("lstm 3", True), ("gru 3", True), ("simple_rnn 3", True), ("simple_rnn 3 relu", True),
    ("gru 3 reset_after=false", False), ("lstm 3 relu", False), ("bidirectional lstm 3", True),
])
def test_torchs_fused_kernels_run_where_they_compute_keras_function(text, fused):
    m = ms.build(f"input 4x2\n{text}\ndense 1", backend="torch", device="cpu")
    recurrent = [mod for mod in m.engine.native.modules() if isinstance(mod, keras_ops.Recurrent)][0]
    assert (recurrent.fused is not None) == fused


def test_the_second_bias_is_a_constant_zero_outside_the_weights():
    """Keras has one bias where torch's kernels take two: the second is 0 and never trained."""
    m = ms.build("input 4x2\nlstm 3\ndense 1\nloss mse\noptimizer sgd learning_rate=0.5", backend="torch",
                 device="cpu")
    recurrent = [mod for mod in m.engine.native.modules() if isinstance(mod, keras_ops.Recurrent)][0]
    assert "zero_bias" not in dict(recurrent.named_parameters()) and "zero_bias" not in recurrent.state_dict()
    m.fit(np.ones((4, 4, 2), np.float32), np.ones((4, 1), np.float32), epochs=2, verbose=0)
    assert not recurrent.zero_bias.any()


def test_gru_weights_round_trip_through_torchs_gate_order():
    m = ms.build("input 4x2\nbidirectional gru 3 return_sequences\ngru 3 reset_after=false\ndense 1",
                 backend="torch", device="cpu")
    weights = random_weights(m.report, 9)
    m.set_weights(weights)
    for a, b in zip(m.get_weights(), weights):
        assert np.array_equal(a, b)
    recurrent = [mod for mod in m.engine.native.modules() if isinstance(mod, keras_ops.Recurrent)][0]
    kernel = torch.from_numpy(weights[0])  # Keras's (in, z|r|h)
    assert torch.equal(recurrent.weight_ih[:3], kernel[:, 3:6].T)  # torch's r block first
    assert torch.equal(recurrent.bias[1, 3:6], torch.from_numpy(weights[2][1, :3]))  # z second


# ---------------------------------------------------------------------------------------
# Training: whole specs against Keras's fit from the same weights


TRAINED = {
    "lstm": "input 7 int\nembedding 12 4 mask_zero\nlstm 5 return_sequences\ngru 3 l2=0.01\ndense 3 softmax",
    "bidirectional": "input 7 int\nembedding 12 4\nbidirectional gru 3 reset_after=false merge=ave\n"
                     "dense 3 softmax",
    "attention": "input 7 int\nembedding 12 8 mask_zero\nattention heads=2 key_dim=3 value_dim=2\n"
                 "globalavgpool1d\ndense 3 softmax",
    "rnn": "input 7x2\nsimple_rnn 4 go_backwards l1=0.01\ndense 3 softmax",
}


@pytest.mark.parametrize("sync_free", [False, True], ids=["eager", "sync_free"])
@pytest.mark.parametrize("name", list(TRAINED))
def test_training_equals_keras_fit(name, sync_free):
    """Keras's fit with Adam, three batches (the last partial): the losses and the weights after."""
    m = ms.build(TRAINED[name], backend="torch", device="cpu")
    if sync_free:  # the CUDA loop (one flat buffer, masked updates), on the CPU
        m.engine = TorchEngine(m.spec, m.report, device="cpu", sync_free=True, cuda_graphs=False)
    m.set_weights(random_weights(m.report, 5))
    k = keras_model(m.spec)
    k.set_weights(m.get_weights())
    x = inputs(m.spec, 20, 3, "right")
    y = np.random.default_rng(4).integers(0, 3, 20)
    m.compile(optimizer={"name": "adam", "learning_rate": 0.01}, loss="sparse_categorical_crossentropy")
    k.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    ours = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
    theirs = k.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(ours, theirs, rtol=2e-5)
    for a, b, w in zip(m.get_weights(), k.get_weights(), m.report.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=w.path)


# ---------------------------------------------------------------------------------------
# The emitted program

EMITTED = {
    "lstm": "input 7 int\nembedding 12 4 mask_zero\nlstm 5 return_sequences\ngru 3 reset_after=false\ndense 2",
    "fused": "input 6x3\nlstm 4 return_sequences go_backwards\nbidirectional gru 3 return_sequences\n"
             "simple_rnn 2 relu\ndense 2",
    "bidirectional": "input 7 int\nembedding 12 4 mask_zero\nbidirectional lstm 3 merge=mul l2=0.1\ndense 2",
    "attention": "input 7 int\nembedding 12 8 mask_zero\nattention heads=2 key_dim=3 value_dim=2\n"
                 "globalavgpool1d\ndense 2",
    "transformer": TWO_BLOCKS,
}



@pytest.mark.parametrize("name", list(EMITTED))
def test_the_emitted_program_computes_what_the_engine_does(name, tmp_path):
    spec = ms.parse(EMITTED[name])
    source = TorchBackend().emit(spec, ms.check(spec))
    assert max(map(len, source.splitlines())) <= 100 and "lambda" not in source
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
    grads = {path: t.grad for path, t, _ in net.keras_layout()}
    expected = torch_gradients(live, x, probe)
    live_grads = [t for t, trainable in zip(live.engine.weights.tensors, live.engine.weights.trainable) if trainable]
    assert len(live_grads) == len(expected)
    for path, t in zip([w.path for w in live.report.weights if w.trainable], live_grads):
        np.testing.assert_allclose(grads[path].numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=path)


def test_the_emitted_initializers_draw_keras_distributions(tmp_path):
    """The forget block of an LSTM's bias starts at 1; the recurrent kernel is orthogonal as
    Keras's (rows of Keras's (units, 4 units) orthonormal); attention's kernels take the
    einsum's fans (glorot's limit sqrt(6 / (dim + heads * key_dim)))."""
    spec = ms.parse("input 6 int\nembedding 12 16\nattention heads=2 key_dim=3\nlstm 4\ndense 2")
    module = load_program(TorchBackend().emit(spec, ms.check(spec)), tmp_path / "inits.py")
    net = module.Model() if hasattr(module, "Model") else [v for v in vars(module).values() if isinstance(v, type)
                                                             and getattr(v, "keras_name", None) == spec.name][0]()
    weights = net.keras_weights()
    bias = weights[[p for p in weights if p.endswith("lstm_cell/bias")][0]]
    assert torch.equal(bias, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))
    r = weights[[p for p in weights if p.endswith("recurrent_kernel")][0]]
    torch.testing.assert_close(r @ r.T, torch.eye(4), atol=1e-5, rtol=0)
    q = weights[[p for p in weights if p.endswith("query/kernel")][0]]
    limit = (6 / (16 + 2 * 3)) ** 0.5
    assert q.abs().max() <= limit and q.abs().max() > 0.8 * limit


def test_the_emitted_recurrent_program_trains_on_its_own(tmp_path):
    spec = ms.parse(EMITTED["lstm"] + "\nloss mse\noptimizer adam\nfit epochs=2 batch_size=8")
    source = TorchBackend().emit(spec, ms.check(spec))
    path = tmp_path / "recurrent.py"
    path.write_text(source, encoding="utf-8")
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Epoch 2/2" in done.stdout


# ---------------------------------------------------------------------------------------
# The LSTM benchmark's hand-written loops do Keras's math (benchmarks/train_epoch.py)


def test_the_lstm_benchmarks_hand_written_loops_train_as_keras_does():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import train_epoch as te
    finally:
        sys.path.remove(str(root / "benchmarks"))
    x, y = te.data(te.LSTM)
    x, y = x[:192], y[:192]  # three steps of backpropagation through time and Adam
    weights = te.initial_weights(te.LSTM)
    order = np.random.default_rng(1).permutation(len(x))
    expected, accuracy = te.CONTENDERS["lstm"][te.HAND["keras"]](x, y, weights)(order)
    for name in (te.HAND["numpy"], te.HAND["torch"], te.BACKEND["torch"]):
        loss, acc = te.CONTENDERS["lstm"][name](x, y, weights)(order)
        assert loss == pytest.approx(expected, rel=1e-5), name
        assert acc == pytest.approx(accuracy, rel=1e-6)
