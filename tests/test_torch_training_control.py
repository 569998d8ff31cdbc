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


@pytest.mark.parametrize(("optimizer", "sync_free"), [*((o, False) for o in RESUMED),
                                                      *((o, True) for o in RESUMED[-4:])])
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


@pytest.mark.parametrize("optimizer", ["adam learning_rate=cosine_decay(0.01, decay_steps=7, warmup_target=0.05, "
                                       "warmup_steps=3) clipnorm=0.2",
                                       "nadam learning_rate=piecewise_constant_decay(boundaries=[4], values=[0.02, 0.005])"
                                       " global_clipnorm=0.3"])
def test_the_sync_free_loop_takes_each_step_s_rate_from_its_table(optimizer):
    """The CUDA loop (run here on the CPU) reads each step's rate from the epoch's table on the
    device, indexed by the device's step counter: the CPU loop's numbers, with a last partial
    batch whose step has its own rate."""
    text = DROPOUT.format(optimizer=optimizer)
    x, y = classes(38)
    plain, sync_free = torch_model(text), torch_model(text, sync_free=True)
    expected = plain.fit(x, y, batch_size=8, epochs=3, verbose=0).history
    got = sync_free.fit(x, y, batch_size=8, epochs=3, verbose=0).history
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-6)
    for a, b in zip(sync_free.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


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
                                       "rmsprop learning_rate=0.05 global_clipnorm=0.1",
                                       "sgd learning_rate=0.5 clipvalue=0.004", "adamax learning_rate=0.05 clipvalue=0.003",
                                       "adam learning_rate=0.05 clipvalue=0.004"])
def test_an_embedding_s_sparse_gradient_as_keras(optimizer):
    """Keras's optimizers see an embedding's gradient as one row per id read: squared (and
    made absolute, Adamax's) row by row before one id's rows are summed; clipnorm takes the
    norm of those rows and scales them; global_clipnorm's product makes the gradient dense;
    clipvalue clips each row before an id's rows are summed (so a sum may exceed it)."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, (24, 6)).astype(np.int32), rng.integers(0, 2, 24)
    against_keras(TOKENS.format(optimizer=optimizer), x, y, epochs=2)


def test_clipvalue_clips_an_embedding_s_rows_before_they_are_summed():
    """The clip binds on the rows, and the summed rows of one id exceed it: a clamp of the
    summed gradient would differ (the parity above would then fail too)."""
    spec = ms.parse(TOKENS.format(optimizer="sgd learning_rate=1.0 clipvalue=0.004"))
    model = ms.build(spec, backend="torch", device="cpu", seed=0)
    x = np.zeros((4, 6), dtype=np.int32)  # id 0 six times in every sample
    before = model.get_weights()[0][0].copy()
    model.fit(x, np.zeros(4, dtype=np.int64), batch_size=4, epochs=1, shuffle=False, verbose=0)
    step = np.abs(model.get_weights()[0][0] - before)
    assert step.max() > 0.004 + 1e-6 and step.max() <= 24 * 0.004 + 1e-6


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


# -- the callbacks (keras_ops, which emitted programs copy) against Keras's own numbers ---------


def scripted(callback, values, model=None):
    """Runs `callback` over epochs whose monitored val_loss is `values` (stopping when it
    says so): the learning rate each epoch used, and the epochs run."""
    from modelspec.backends.torch import keras_ops as K

    model = model or torch.nn.Linear(1, 1)
    optimizer = K.SGD(model.parameters(), learning_rate=1.0)
    rates = []
    for epoch, value in enumerate(values):
        rates.append(float(optimizer.learning_rate))
        with torch.no_grad():
            model.weight.fill_(epoch)  # the weights of the end of each epoch
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs, model, optimizer)
        if getattr(callback, "stop_training", False):
            break
    callback.on_train_end(model)
    return rates, epoch + 1, model


def test_early_stopping_as_keras_documents_it():
    """keras/src/callbacks/early_stopping.py, as run in Keras 3 (SEMANTICS_NEXT.md §7.2)."""
    from modelspec.backends.torch import keras_ops as K

    es = K.EarlyStopping(patience=0)
    assert scripted(es, [5, 4, 4, 3])[1] == 3 and (es.stopped_epoch, es.best, es.best_epoch, es.wait) == (2, 4, 1, 1)
    es = K.EarlyStopping(patience=2, restore_best_weights=True)
    _, epochs, model = scripted(es, [5, 3, 4, 4.5, 6])
    assert epochs == 4 and es.best_epoch == 1 and model.weight.item() == 1  # the best epoch's weights
    # no early stop: the best epoch's weights are restored all the same
    _, epochs, model = scripted(K.EarlyStopping(patience=5, restore_best_weights=True), [5, 3, 4])
    assert epochs == 3 and model.weight.item() == 1
    # an improvement that misses the baseline does not reset the patience
    assert scripted(K.EarlyStopping(patience=2, baseline=2), [5, 4, 3, 1, 1.5, 1.6])[1] == 6
    es = K.EarlyStopping(start_from_epoch=2, restore_best_weights=True, patience=10)
    _, _, model = scripted(es, [1, 6, 7, 8, 9])
    assert es.best == 7 and es.best_epoch == 2 and model.weight.item() == 2
    for delta in (0.5, -0.5):
        assert scripted(K.EarlyStopping(min_delta=delta), [5, 5, 5])[1] == 2  # equal is no improvement


def test_reduce_lr_on_plateau_as_keras_documents_it():
    """keras/src/callbacks/reduce_lr_on_plateau.py, as run in Keras 3 (SEMANTICS_NEXT.md §7.3):
    the rate each epoch used, in float32."""
    from modelspec.backends.torch import keras_ops as K

    # a reduced rate is the float32 of the float64 product of the float32 rate and the factor
    r1 = float(np.float32(0.1))
    r2 = float(np.float32(r1 * 0.1))
    r3 = float(np.float32(r2 * 0.1))
    flat = [1.0] * 10
    assert scripted(K.ReduceLROnPlateau(patience=2), flat[:8])[0] == [1, 1, 1, r1, r1, r2, r2, r3]
    assert scripted(K.ReduceLROnPlateau(patience=2, cooldown=2), flat)[0] == [1, 1, 1, r1, r1, r1, r2, r2, r2, r3]
    half = float(np.float32(0.05))
    assert scripted(K.ReduceLROnPlateau(patience=1, min_lr=0.05), flat[:6])[0] == [1, 1, r1, half, half, half]
    slow = [1, .99995, .99989, .99985]
    assert scripted(K.ReduceLROnPlateau(patience=1), slow)[0] == [1, 1, r1, r1]
    assert scripted(K.ReduceLROnPlateau(patience=1, min_delta=0), slow)[0] == [1.0] * 4
    logs = {"val_loss": 1.0}
    optimizer = K.SGD(torch.nn.Linear(1, 1).parameters(), learning_rate=0.001)
    K.ReduceLROnPlateau().on_epoch_end(0, logs, None, optimizer)
    assert logs["learning_rate"] == 0.0010000000474974513  # the float32 rate, as Keras's history shows it


# -- the emitted program ---------------------------------------------------------------------


def emitted(text, tmp_path, weights):
    """The spec's emitted program, loaded, and its model holding `weights` (Keras's order)."""
    from corpus import load_program

    spec = ms.parse(text)
    source = TorchBackend().emit(spec, ms.check(spec))
    assert max(map(len, source.splitlines())) <= 100 and "lambda" not in source
    program = load_program(source, tmp_path / "program.py")
    net = [v for v in vars(program).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
           and getattr(v, "keras_name", None) == spec.name][0]()
    paths = [w.path for w in ms.check(spec).weights]
    net.load_keras_weights(dict(zip(paths, weights)))
    return program, net, paths


EMITTED = {
    "softmax axis, smoothing, top-k, adamax, decay, clipnorm": (
        "model emitted\ninput 3x4\ndense 5 tanh\ndense 6\nsoftmax axis=1\n"
        "optimizer adamax learning_rate=exponential_decay(0.05, decay_steps=3, decay_rate=0.6, staircase=true) "
        "clipnorm=0.3\nloss categorical_crossentropy label_smoothing=0.2\n"
        "metrics accuracy top_k_categorical_accuracy k=2\n", (3, 6)),
    "binary logits, smoothing, lion, piecewise, global_clipnorm": (
        "model emitted\ninput 6\ndense 8 relu\ndense 1\n"
        "optimizer lion learning_rate=piecewise_constant_decay(boundaries=[5], values=[0.01, 0.002]) "
        "global_clipnorm=0.5\nloss binary_crossentropy from_logits label_smoothing=0.1\nmetrics accuracy\n", (1,)),
    "sparse logits, sparse top-k, adadelta, warmup, clipvalue": (
        "model emitted\ninput 6\ndense 8 tanh\ndense 5\n"
        "optimizer adadelta learning_rate=cosine_decay(0.5, decay_steps=6, warmup_target=1.0, warmup_steps=4) "
        "clipvalue=0.05\nloss sparse_categorical_crossentropy from_logits\n"
        "metrics sparse_top_k_categorical_accuracy k=3\n", ()),
}


@pytest.mark.parametrize("case", list(EMITTED))
def test_the_emitted_program_gives_the_engine_s_history(case, tmp_path):
    text, out = EMITTED[case]
    spec = ms.parse(text)
    live = ms.build(spec, backend="torch", device="cpu")
    weights = live.get_weights()
    program, net, paths = emitted(text, tmp_path, weights)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, *spec.input_shape)).astype(np.float32)
    if not out:
        y = rng.integers(0, 5, 30)
    elif out == (1,):
        y = (rng.random((30, 1)) < 0.5).astype(np.float32)
    else:
        y = np.eye(out[-1], dtype=np.float32)[rng.integers(0, out[-1], (30, *out[:-1]))]
    expected = live.fit(x, y, epochs=4, batch_size=4, validation_split=0.2, shuffle=False, verbose=0).history
    got = program.fit(net, torch.from_numpy(x), torch.from_numpy(y), epochs=4, batch_size=4,
                      validation_split=0.2, shuffle=False)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
    trained = net.keras_weights()
    for path, w in zip(paths, live.get_weights()):
        np.testing.assert_allclose(trained[path].numpy(), w, rtol=1e-5, atol=1e-6, err_msg=path)


CALLBACKS = """model stopped
input 6
dense 8 tanh
dense 3 softmax
optimizer sgd learning_rate=0.5 momentum=0.9
loss categorical_crossentropy
metrics accuracy
fit epochs=12 batch=8 validation=0.25 shuffle=false
{callbacks}
"""


@pytest.mark.keras
@pytest.mark.parametrize("callbacks", [
    "early_stopping monitor=val_loss patience=3 restore_best_weights\n"
    "reduce_lr_on_plateau monitor=val_loss factor=0.5 patience=1",
    "early_stopping monitor=val_accuracy patience=2 baseline=0.9 start_from_epoch=1 restore_best_weights",
    "reduce_lr_on_plateau monitor=val_accuracy factor=0.3 patience=0 cooldown=1 min_lr=0.1 min_delta=0.01",
])
def test_the_emitted_program_s_callbacks_as_keras(callbacks, tmp_path):
    """The emitted fit with EarlyStopping and ReduceLROnPlateau against Keras's own callbacks:
    the same epochs, history (learning_rate included) and final (restored) weights."""
    keras = pytest.importorskip("keras")
    import keras_reference as kr

    from modelspec.initializers import initial_weights

    text = CALLBACKS.format(callbacks=callbacks)
    spec = ms.parse(text)
    weights = initial_weights(spec, ms.check(spec), 0)
    program, net, paths = emitted(text, tmp_path, weights)
    x, y = classes(48)
    model = kr.model(spec)
    model.set_weights(weights)
    model.compile(keras_optimizer(keras, spec.optimizer), "categorical_crossentropy", metrics=["accuracy"])
    made = []
    if spec.early_stopping is not None:
        made.append(keras.callbacks.EarlyStopping(**spec.early_stopping.model_dump(exclude={"span"})))
    if spec.reduce_lr_on_plateau is not None:
        made.append(keras.callbacks.ReduceLROnPlateau(**spec.reduce_lr_on_plateau.model_dump(exclude={"span"})))
    theirs = model.fit(x, y, batch_size=8, epochs=12, validation_split=0.25, shuffle=False, verbose=0,
                       callbacks=made).history
    ours = program.fit(net, torch.from_numpy(x), torch.from_numpy(y))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, err_msg=key)
    trained = net.keras_weights()
    scale = max(np.abs(w).max() for w in model.get_weights())  # twelve epochs at a high rate
    for path, w in zip(paths, model.get_weights()):
        np.testing.assert_allclose(trained[path].numpy(), w, rtol=1e-5, atol=1e-5 * scale, err_msg=path)


def test_the_emitted_program_refuses_clipvalue_on_an_embedding_at_the_optimizer_line():
    from modelspec import backends

    spec = ms.parse(TOKENS.format(optimizer="sgd clipvalue=0.1"))
    with pytest.raises(ms.SpecError) as caught:
        backends.get("torch").emit(spec, ms.check(spec))
    (d,) = caught.value.diagnostics
    assert tuple(d.span)[:2] == (6, 1) and "does not clip an embedding's sparse gradient by value" in d.message
    # with a penalty the embedding's gradient is dense, and the program clips it as Keras does
    penalized = ms.parse(TOKENS.format(optimizer="sgd clipvalue=0.1").replace("embedding 5 3", "embedding 5 3 l2=0.01"))
    assert "clipvalue" in backends.get("torch").emit(penalized, ms.check(penalized))
