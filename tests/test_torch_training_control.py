"""Training control on the torch backend: the engine's state for an exact resume, the
learning rate set from outside (ReduceLROnPlateau), Keras's adadelta, adamax and lion, the
gradient clipping options, learning-rate schedules, the loss options, the top-k metrics and
the softmax layer, against real Keras (same initial weights and batches) and the NumPy engine."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402
from modelspec.backends.torch.engine import TorchEngine  # noqa: E402
from modelspec.model import Model  # noqa: E402

pytestmark = pytest.mark.torch

DROPOUT = """model resumed
input 6
dense 8 relu
dropout 0.3
dense 5 relu
dropout 0.2
dense 3 softmax
optimizer {optimizer}
loss categorical_crossentropy
metrics accuracy
"""


def torch_model(text, sync_free=False, seed=3):
    """A Model over a CPU TorchEngine (sync_free: the CUDA training loop, run on the CPU),
    from the NumPy engine's initial weights."""
    spec = ms.parse(text)
    report = ms.check(spec)
    engine = TorchEngine(spec, report, device="cpu", seed=seed, sync_free=sync_free, cuda_graphs=False)
    model = Model(spec, report, TorchBackend(), engine, 0)
    model.set_weights(ms.build(spec, backend="numpy", seed=0).get_weights())
    return model


def classes(n=40, features=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]


# -- the engine's state: an exact resume -------------------------------------------------------

RESUMED = ["sgd momentum=0.9 nesterov=true", "rmsprop centered=true momentum=0.5", "adam", "adamw", "adagrad",
           "nadam", "adadelta learning_rate=1.0", "adamax", "lion",
           "sgd learning_rate=exponential_decay(0.1, decay_steps=3, decay_rate=0.5) clipnorm=0.5"]


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu", "sync_free"])
@pytest.mark.parametrize("optimizer", RESUMED)
def test_two_epochs_saved_and_one_more_equal_three_uninterrupted(optimizer, sync_free):
    """get_state after two epochs, set into a new engine with the weights: a third epoch gives
    the weights and loss of three uninterrupted epochs, dropout masks included, bit for bit."""
    text = DROPOUT.format(optimizer=optimizer)
    x, y = classes()
    whole = torch_model(text, sync_free)
    history = whole.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    first = torch_model(text, sync_free)
    first.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    state, weights = first.engine.get_state(), first.get_weights()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert any(k.startswith("generator/") and v.dtype == np.uint8 for k, v in state.items())
    resumed = torch_model(text, sync_free, seed=11)  # another seed: the generators' states are restored
    resumed._training_config(y.shape)
    resumed.set_weights(weights)
    resumed.engine.set_state(state)
    last = resumed.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert last.history["loss"][0] == history.history["loss"][2]
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_state_of_another_optimizer_is_refused():
    x, y = classes()
    adam = torch_model(DROPOUT.format(optimizer="adam"))
    adam.fit(x, y, epochs=1, verbose=0)
    sgd = torch_model(DROPOUT.format(optimizer="sgd momentum=0.5"))
    sgd._training_config(y.shape)
    with pytest.raises(ValueError, match="does not fit.*unexpected optimizer/velocity"):
        sgd.engine.set_state(adam.engine.get_state())


def test_set_learning_rate_takes_effect_from_the_next_step_in_float32():
    x, y = classes()
    model = torch_model(DROPOUT.format(optimizer="sgd learning_rate=0.1"))
    model.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0)
    model.engine.set_learning_rate(0.1 / 3)
    before = model.get_weights()
    assert model.engine.optimizer_state()[1] == np.float32(0.1 / 3)
    assert model.engine.get_state()["optimizer/learning_rate"] == np.float32(0.1 / 3)
    # the same step at the old rate moves the weights three times as far
    other = torch_model(DROPOUT.format(optimizer="sgd learning_rate=0.1"))
    other.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0)
    other.fit(x, y, batch_size=40, epochs=1, shuffle=False, verbose=0)
    slow = model.get_weights()[0] - before[0]
    fast = other.get_weights()[0] - before[0]
    np.testing.assert_allclose(fast, 3 * slow, rtol=1e-4, atol=1e-7)


def test_a_schedule_s_rate_cannot_be_set():
    x, y = classes()
    model = torch_model(DROPOUT.format(optimizer="sgd learning_rate=exponential_decay(0.1, decay_steps=3, "
                                                 "decay_rate=0.5)"))
    model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="schedule"):
        model.engine.set_learning_rate(0.01)


# -- against real Keras: optimizers, clipping, schedules, losses, metrics -----------------------

KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                    "nadam": "Nadam", "adadelta": "Adadelta", "adamax": "Adamax", "lion": "Lion"}
RTOL = 1e-5


def keras_optimizer(keras, optimizer):
    """The spec's optimizer as Keras's, a schedule as Keras's schedule."""
    from modelspec import ir
    from modelspec.nodes import SCHEDULE_CLASSES

    hyper = optimizer.config()
    rate = hyper["learning_rate"]
    if isinstance(rate, ir.Schedule):
        hyper["learning_rate"] = getattr(keras.optimizers.schedules, SCHEDULE_CLASSES[rate.name])(**rate.config())
    return getattr(keras.optimizers, KERAS_OPTIMIZERS[optimizer.name])(**hyper)


def keras_loss(keras, loss):
    options = {}
    if loss.from_logits:
        options["from_logits"] = True
    if loss.label_smoothing:
        options["label_smoothing"] = loss.label_smoothing
    if not options:
        return loss.name
    return {"categorical_crossentropy": keras.losses.CategoricalCrossentropy,
            "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
            "binary_crossentropy": keras.losses.BinaryCrossentropy}[loss.name](**options)


def keras_metric(keras, name, k):
    if name == "top_k_categorical_accuracy":
        return keras.metrics.TopKCategoricalAccuracy(k=k, name=name)
    if name == "sparse_top_k_categorical_accuracy":
        return keras.metrics.SparseTopKCategoricalAccuracy(k=k, name=name)
    return name


def against_keras(text, x, y, epochs=3, batch_size=8, keras_model=None, rtol=RTOL):
    """Trains the spec in real Keras and on the torch engine from the same initial weights and
    batches (no shuffling): the per-epoch losses and metrics, and the final weights, agree."""
    keras = pytest.importorskip("keras")
    import keras_reference as kr

    from modelspec.initializers import initial_weights

    spec = ms.parse(text)
    report = ms.check(spec)
    weights = initial_weights(spec, report, 0)
    model = kr.model(spec) if keras_model is None else keras_model(keras)
    model.set_weights(weights)
    model.compile(keras_optimizer(keras, spec.optimizer), keras_loss(keras, spec.loss),
                  metrics=[keras_metric(keras, m, spec.k) for m in spec.metrics])
    theirs = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0).history
    ours = ms.build(spec, backend="torch", device="cpu")
    ours.set_weights(weights)
    history = ours.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0).history
    for key in ["loss", *spec.metrics]:
        np.testing.assert_allclose(history[key], theirs[key], rtol=rtol, err_msg=key)
    # (an absolute tolerance at the weights' scale: a bias a softmax is blind to moves by rounding only)
    scale = max(np.abs(w).max() for w in model.get_weights())
    for a, b in zip(ours.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)
    return history, theirs


MLP = """model mlp
input 6
dense 8 tanh
dense 3 softmax
optimizer {optimizer}
loss categorical_crossentropy
"""

OPTIMIZERS = ["adadelta learning_rate=1.0", "adadelta rho=0.9 weight_decay=0.01", "adamax learning_rate=0.01",
              "adamax beta_2=0.9 weight_decay=0.05", "lion learning_rate=0.003", "lion beta_1=0.5 weight_decay=0.1",
              "sgd learning_rate=0.1 momentum=0.9 clipnorm=0.05", "adam learning_rate=0.01 clipnorm=0.2",
              "rmsprop learning_rate=0.01 global_clipnorm=0.1", "sgd learning_rate=0.5 global_clipnorm=0.3",
              "adam learning_rate=0.01 clipvalue=0.02", "adagrad learning_rate=0.1 clipvalue=0.05"]


@pytest.mark.keras
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizers_and_clipping_as_keras(optimizer):
    x, y = classes()
    against_keras(MLP.format(optimizer=optimizer), x, y)


SCHEDULES = [
    "sgd learning_rate=exponential_decay(0.2, decay_steps=3, decay_rate=0.5)",
    "sgd learning_rate=exponential_decay(0.2, decay_steps=3, decay_rate=0.5, staircase=true) momentum=0.5",
    "adam learning_rate=inverse_time_decay(0.05, decay_steps=2, decay_rate=1.5, staircase=true)",
    "rmsprop learning_rate=polynomial_decay(0.02, decay_steps=4, end_learning_rate=0.001, power=2.0, cycle=true)",
    "sgd learning_rate=polynomial_decay(0.2, decay_steps=7, power=0.5)",
    "adamw learning_rate=cosine_decay(0.05, decay_steps=8, alpha=0.1)",
    "nadam learning_rate=cosine_decay(0.001, decay_steps=6, warmup_target=0.02, warmup_steps=5)",
    "lion learning_rate=piecewise_constant_decay(boundaries=[4, 9], values=[0.01, 0.003, 0.001])",
]


@pytest.mark.keras
@pytest.mark.parametrize("optimizer", SCHEDULES)
def test_schedules_as_keras(optimizer):
    """Three epochs of five steps: the n-th update uses the rate of step n - 1, on both sides."""
    x, y = classes()
    against_keras(MLP.format(optimizer=optimizer), x, y)


TOKENS = """model tokens
input 6 int
embedding 5 3
flatten
dense 2 softmax
optimizer {optimizer}
loss sparse_categorical_crossentropy
"""


@pytest.mark.keras
@pytest.mark.parametrize("optimizer", ["adadelta learning_rate=1.0", "adamax learning_rate=0.05", "lion learning_rate=0.01",
                                       "adamax learning_rate=0.05 clipnorm=0.05", "adam learning_rate=0.05 clipnorm=0.1",
                                       "rmsprop learning_rate=0.05 global_clipnorm=0.1"])
def test_an_embedding_s_sparse_gradient_as_keras(optimizer):
    """Keras's optimizers see an embedding's gradient as one row per id read: squared (and
    made absolute, Adamax's) row by row before one id's rows are summed; clipnorm takes the
    norm of those rows and scales them; global_clipnorm's product makes the gradient dense."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, (24, 6)).astype(np.int32), rng.integers(0, 2, 24)
    against_keras(TOKENS.format(optimizer=optimizer), x, y, epochs=2)


def test_clipvalue_with_an_embedding_is_refused_clearly():
    spec = ms.parse(TOKENS.format(optimizer="sgd clipvalue=0.1"))
    model = ms.build(spec, backend="torch", device="cpu")
    with pytest.raises(ValueError, match="clipvalue with an embedding is not supported.*clipnorm"):
        model.fit(np.ones((4, 6), dtype=np.int32), np.zeros(4, dtype=np.int64), verbose=0)


LOSSES = {
    "categorical label_smoothing": ("dense 3 softmax", "categorical_crossentropy label_smoothing=0.2", "accuracy"),
    "binary label_smoothing": ("dense 1 sigmoid", "binary_crossentropy label_smoothing=0.3", "accuracy"),
    "categorical from_logits": ("dense 3", "categorical_crossentropy from_logits label_smoothing=0.1", "accuracy"),
    "sparse from_logits": ("dense 3", "sparse_categorical_crossentropy from_logits", "accuracy"),
    # the accuracy thresholds the raw output, the logits, at 0.5, as Keras's does
    "binary from_logits": ("dense 1", "binary_crossentropy from_logits", "accuracy"),
}


@pytest.mark.keras
@pytest.mark.parametrize("case", list(LOSSES))
def test_loss_options_as_keras(case):
    output, loss, metric = LOSSES[case]
    text = f"model losses\ninput 6\ndense 8 tanh\n{output}\noptimizer sgd learning_rate=0.3\nloss {loss}\nmetrics {metric}\n"
    x, y = classes()
    if "binary" in case:
        y = y[:, :1]
    elif "sparse" in case:
        y = y.argmax(axis=1)
    against_keras(text, x, y)


@pytest.mark.keras
@pytest.mark.parametrize("sparse", [False, True], ids=["one_hot", "sparse"])
def test_top_k_metrics_with_ties_as_keras(sparse):
    """A zero kernel and bias make every sample's scores tie: a target tied with
    the k-th score is in the top k (tf.math.in_top_k), so the first epoch's first batch
    counts every tied target."""
    keras = pytest.importorskip("keras")
    metric = "sparse_top_k_categorical_accuracy" if sparse else "top_k_categorical_accuracy"
    text = (f"model topk\ninput 6\ndense 5 kernel_initializer=zeros\noptimizer sgd learning_rate=0.5\n"
            f"loss {'sparse_' if sparse else ''}categorical_crossentropy from_logits\nmetrics {metric} k=2\n")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    ids = rng.integers(0, 5, 30)
    y = ids if sparse else np.eye(5, dtype=np.float32)[ids]
    ours, theirs = against_keras(text, x, y, batch_size=10)
    assert ours[metric][0] > 1 / 3  # the tied first batch is counted whole
    del keras


def test_in_top_k_is_tensorflow_s():
    """Ties with the k-th score are in; a sample with a non-finite score is never in."""
    tf = pytest.importorskip("tensorflow")
    from modelspec.backends.torch import keras_ops as K

    scores = np.array([[0.1, 0.5, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3], [0.9, 0.1, 0.0, 0.0], [np.nan, 1.0, 0.0, 0.0],
                       [np.inf, 1.0, 0.0, 0.0], [0.0, 1.0, -np.inf, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    targets = np.array([2, 3, 2, 1, 1, 1, 1])
    for k in (1, 2, 3):
        expected = tf.math.in_top_k(targets, scores, k).numpy()
        ours = K.in_top_k(torch.from_numpy(scores), torch.from_numpy(targets), k).numpy()
        np.testing.assert_array_equal(ours, expected, err_msg=f"k={k}")


SOFTMAX = {
    # the last layer: the loss takes the values before it as logits over the last axis, as
    # Keras's TensorFlow backend does (its _keras_logits), whatever the Softmax's axis
    "output axis=1": ("input 4x5\ndense 6\nsoftmax axis=1\n", (4, 6),
                      lambda L: [L.Dense(6), L.Softmax(axis=1)]),
    "inner axis=1": ("input 4x5\ndense 6\nsoftmax axis=1\nflatten\ndense 3 softmax\n", (3,),
                     lambda L: [L.Dense(6), L.Softmax(axis=1), L.Flatten(), L.Dense(3, activation="softmax")]),
    # on an NCHW tensor in torch: Keras's axis 1 (rows) is torch's 2
    "after conv2d": ("input 5x5x2\nconv2d 3 3x3\nsoftmax axis=1\nflatten\ndense 3 softmax\n", (3,),
                     lambda L: [L.Conv2D(3, 3), L.Softmax(axis=1), L.Flatten(), L.Dense(3, activation="softmax")]),
}


@pytest.mark.keras
@pytest.mark.parametrize("case", list(SOFTMAX))
def test_the_softmax_layer_as_keras(case):
    body, out_shape, layers = SOFTMAX[case]
    text = f"model soft\n{body}optimizer sgd learning_rate=0.5\nloss categorical_crossentropy\nmetrics accuracy\n"
    spec = ms.parse(text)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(24, *spec.input_shape)).astype(np.float32)
    y = np.eye(out_shape[-1], dtype=np.float32)[rng.integers(0, out_shape[-1], (24, *out_shape[:-1]))]

    def keras_model(keras):
        keras.backend.clear_session(free_memory=False)
        return keras.Sequential([keras.Input(spec.input_shape), *layers(keras.layers)])

    against_keras(text, x, y, keras_model=keras_model)
