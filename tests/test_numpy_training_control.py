"""Training control on the numpy engine: exact resume (get_state/set_state), the learning
rate set between steps, and (against real Keras) the optimizers adadelta, adamax and lion,
gradient clipping, learning-rate schedules, the loss options from_logits and
label_smoothing, the top-k metrics and the softmax layer."""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec import ir
from modelspec.backends.numpy import NumpyEngine
from modelspec.training import LossConfig, MetricConfig, TrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # Keras's own __array__ warnings
              pytest.mark.filterwarnings("ignore::UserWarning")]

RESUMED = """
input 6
dense 8 relu
dropout 0.25
dense 8 tanh
dropout 0.1
dense 3 softmax
"""

ATTENTION = """
input 5x4
attention heads=2 key_dim=3 dropout=0.2
dropout 0.3
globalavgpool1d
dense 3 softmax
"""

OPTIMIZERS = ["sgd", "rmsprop", "adam", "adamw", "adagrad", "nadam", "adadelta", "adamax", "lion"]


def config(optimizer, loss="categorical_crossentropy", metrics=("categorical_accuracy",), **hyper):
    return TrainConfig(optimizer, ir.Optimizer(name=optimizer).config() | hyper, LossConfig(loss),
                       tuple(MetricConfig(m, m) for m in metrics))


def engine(text, seed=3):
    spec = ms.parse(text)
    return NumpyEngine(spec, ms.check(spec), seed=seed)


def epochs(engine, data, count, first=0):
    """Each epoch's loss sum, shuffled by an order that depends on the epoch only."""
    losses = []
    for epoch in range(first, first + count):
        order = np.random.default_rng(epoch).permutation(len(data))
        losses.append(engine.train_epoch(data, order, 5).loss_sum)
    return losses


def samples(shape, n=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]


@pytest.mark.parametrize("text", [RESUMED, ATTENTION],
                         ids=["dropout", "attention"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_is_bit_for_bit(text, optimizer):
    """2 epochs, the state and weights into a new engine, 1 more epoch == 3 epochs in one go."""
    hyper = {"momentum": 0.9} if optimizer in ("sgd", "rmsprop") else {}
    x, y = samples(ms.parse(text).input_shape)
    whole = engine(text)
    whole.set_training(config(optimizer, **hyper))
    data = whole.prepare(x, y)
    losses = epochs(whole, data, 3)

    first = engine(text)
    first.set_training(config(optimizer, **hyper))
    assert epochs(first, data, 2) == losses[:2]
    state, weights = first.get_state(), first.get_weights()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert any(k.startswith("rng/") for k in state)

    second = engine(text, seed=99)  # another seed: every random state must come from `state`
    second.set_training(config(optimizer, **hyper))
    second.set_weights(weights)
    second.set_state(state)
    assert epochs(second, data, 1, first=2) == losses[2:]
    for a, b in zip(second.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(second.optimizer_state(), whole.optimizer_state(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_before_any_step_leaves_the_optimizer_unbuilt():
    text = RESUMED
    fresh = engine(text)
    fresh.set_training(config("nadam"))
    state = fresh.get_state()
    assert int(state["optimizer/built"]) == 0 and not any(k.startswith("optimizer/slot") for k in state)
    other = engine(text)
    other.set_training(config("nadam"))
    other.set_state(state)
    assert other.optimizer_state() == []
    # into an engine that has trained: it forgets its slots and step count
    x, y = samples((6,))
    data = fresh.prepare(x, y)
    epochs(other, data, 1)
    weights = fresh.get_weights()
    other.set_weights(weights)
    other.set_state(state)
    assert epochs(other, data, 1) == epochs(fresh, data, 1)
    for a, b in zip(other.optimizer_state(), fresh.optimizer_state(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_state_of_another_training_is_refused():
    text = RESUMED
    x, y = samples((6,))
    adam = engine(text)
    adam.set_training(config("adam"))
    epochs(adam, adam.prepare(x, y), 1)
    sgd = engine(text)
    sgd.set_training(config("sgd"))
    with pytest.raises(ValueError, match="does not fit .* sgd training: missing nothing, unexpected"):
        sgd.set_state(adam.get_state())


def test_a_learning_rate_set_takes_effect_at_the_next_step():
    """SGD without momentum: each step moves the weights by lr·g, lr float32 as Keras keeps it."""
    text = "input 4\ndense 2\n"
    x, y = samples((4,), n=4, classes=2)
    e = engine(text)
    e.set_training(config("sgd", loss="mse", metrics=(), learning_rate=0.1))
    data = e.prepare(x, y)
    before = e.get_weights()
    e.set_learning_rate(0.0123)
    assert e.optimizer_state() == []  # not built yet; the rate is kept for the first step
    e.train_epoch(data, np.arange(4), 4)
    kernel_grad = e.net.grads[0]
    np.testing.assert_array_equal(e.get_weights()[0], before[0] - kernel_grad * np.float32(0.0123))
    assert e.optimizer_state()[1] == np.float32(0.0123)
    assert e.get_state()["optimizer/learning_rate"] == np.float32(0.0123)


def test_a_schedule_cannot_be_set():
    e = engine("input 4\ndense 2\n")
    schedule = ir.Schedule(name="exponential_decay", initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5)
    e.set_training(config("sgd", loss="mse", metrics=(), learning_rate=schedule))
    with pytest.raises(ValueError, match="schedule"):
        e.set_learning_rate(0.01)


# ---------------------------------------------------------------------------------------
# Against real Keras: the same initial weights and batches (no shuffling), per-epoch history
# and final weights to 1e-5.

RTOL = 1e-5


@pytest.fixture(scope="module")
def keras():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def parity(keras, text, x, y, optimizer, loss, metrics=(), epochs=3, batch_size=8, reference=None):
    """Fit the spec here and its Keras model (`reference`, else keras_reference's) from the
    same weights; the histories and the final weights must agree."""
    import keras_reference as kr

    model = ms.build(text, seed=0)
    reference = reference or kr.model(model.spec)
    reference.set_weights(model.get_weights())
    reference.compile(optimizer, loss, metrics=list(metrics))
    theirs = reference.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0).history
    ours = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0).history
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=RTOL, atol=1e-7, err_msg=key)
    for ours_w, theirs_w in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours_w, theirs_w, rtol=RTOL, atol=RTOL)
    # Keras's optimizer variables in its order: the iterations, the rate unless a schedule
    # gives it, the slots
    theirs_state = [keras.ops.convert_to_numpy(v) for v in reference.optimizer.variables]
    for ours_v, theirs_v in zip(model.engine.optimizer_state(), theirs_state, strict=True):
        np.testing.assert_allclose(ours_v, theirs_v, rtol=RTOL, atol=1e-6)
    return ours


def classes(n=24, features=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return x, np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]


DENSE = "input 5\ndense 6 tanh\ndense 3 softmax\n"


@pytest.mark.keras
@pytest.mark.parametrize("written, keras_name, hyper", [
    ("adadelta lr=1.0 rho=0.9 epsilon=1e-6", "Adadelta", {"learning_rate": 1.0, "rho": 0.9, "epsilon": 1e-6}),
    ("adamax lr=0.02 beta_1=0.8", "Adamax", {"learning_rate": 0.02, "beta_1": 0.8}),
    ("lion lr=0.003 beta_2=0.95 weight_decay=0.1", "Lion", {"learning_rate": 0.003, "beta_2": 0.95,
                                                            "weight_decay": 0.1}),
])
def test_new_optimizers_train_as_keras(keras, written, keras_name, hyper):
    x, y = classes()
    parity(keras, f"{DENSE}optimizer {written}\nloss categorical_crossentropy\n", x, y,
           getattr(keras.optimizers, keras_name)(**hyper), "categorical_crossentropy")


@pytest.mark.keras
@pytest.mark.parametrize("clip", ["clipnorm=0.05", "clipvalue=0.02", "global_clipnorm=0.08"])
@pytest.mark.parametrize("name, keras_name", [("sgd", "SGD"), ("adam", "Adam")])
def test_clipping_trains_as_keras(keras, clip, name, keras_name):
    """Limits small enough to clip every step (and one weight's gradient below clipnorm's)."""
    key, value = clip.split("=")
    x, y = classes()
    parity(keras, f"{DENSE}optimizer {name} lr=0.1 {clip}\nloss categorical_crossentropy\n", x, y,
           getattr(keras.optimizers, keras_name)(learning_rate=0.1, **{key: float(value)}),
           "categorical_crossentropy")


SCHEDULES = [
    ("exponential_decay(0.1, decay_steps=4, decay_rate=0.5)", "ExponentialDecay",
     dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.5)),
    ("exponential_decay(0.1, decay_steps=4, decay_rate=0.5, staircase=true)", "ExponentialDecay",
     dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.5, staircase=True)),
    ("inverse_time_decay(0.1, decay_steps=3, decay_rate=0.7, staircase=true)", "InverseTimeDecay",
     dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.7, staircase=True)),
    ("polynomial_decay(0.1, decay_steps=5, end_learning_rate=0.01, power=2.0, cycle=true)", "PolynomialDecay",
     dict(initial_learning_rate=0.1, decay_steps=5, end_learning_rate=0.01, power=2.0, cycle=True)),
    ("polynomial_decay(0.1, decay_steps=5)", "PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=5)),
    ("cosine_decay(0.05, decay_steps=6, alpha=0.1, warmup_target=0.1, warmup_steps=3)", "CosineDecay",
     dict(initial_learning_rate=0.05, decay_steps=6, alpha=0.1, warmup_target=0.1, warmup_steps=3)),
    ("piecewise_constant_decay(boundaries=[3, 7], values=[0.1, 0.05, 0.01])", "PiecewiseConstantDecay",
     dict(boundaries=[3, 7], values=[0.1, 0.05, 0.01])),
]


@pytest.mark.keras
@pytest.mark.parametrize("written, keras_name, arguments", SCHEDULES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedules_train_as_keras(keras, written, keras_name, arguments, name):
    """4 epochs of 3 steps: every schedule's rate moves within them."""
    x, y = classes()
    schedule = getattr(keras.optimizers.schedules, keras_name)(**arguments)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9) if name == "sgd" else keras.optimizers.Adam(schedule)
    extra = " momentum=0.9" if name == "sgd" else ""
    parity(keras, f"{DENSE}optimizer {name} lr={written}{extra}\nloss categorical_crossentropy\n", x, y,
           optimizer, "categorical_crossentropy", epochs=4)


@pytest.mark.keras
@pytest.mark.parametrize("clip", [{}, {"clipnorm": 0.5}, {"clipvalue": 0.3}, {"global_clipnorm": 0.7}],
                         ids=["none", "clipnorm", "clipvalue", "global_clipnorm"])
@pytest.mark.parametrize("name, keras_name", [("adam", "Adam"), ("adadelta", "Adadelta"), ("adamax", "Adamax"),
                                              ("sgd", "SGD")])
def test_a_sparse_gradient_is_clipped_as_keras_clips_it(keras, clip, name, keras_name):
    """An embedding's gradient, as TensorFlow's IndexedSlices with repeated rows, applied by
    Keras's optimizer; here the summed gradient and its parts (Embedding.parts)."""
    import tensorflow as tf

    from modelspec.backends.numpy import kernels as K
    from modelspec.backends.numpy.lowering import OPTIMIZERS as KERNELS

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 3)).astype(np.float32)
    ids = np.array([0, 2, 2, 4, 0, 2])
    steps = [rng.normal(size=(len(ids), 3)).astype(np.float32) for _ in range(3)]
    theirs_optimizer = getattr(keras.optimizers, keras_name)(learning_rate=0.1, **clip)
    theirs = keras.Variable(w0.copy())
    ours_optimizer: K.Optimizer = KERNELS[name](learning_rate=0.1, **clip)
    ours = w0.copy()
    cells = (ids[:, None] * 3 + np.arange(3)).reshape(-1)
    for values in steps:
        theirs_optimizer.apply([tf.IndexedSlices(tf.constant(values), tf.constant(ids), tf.constant([6, 3]))],
                               [theirs])
        summed = np.zeros_like(ours)
        np.add.at(summed, ids, values)
        ours_optimizer.step([ours], [summed], [(cells, values.reshape(-1))])
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(theirs), rtol=1e-6, atol=1e-7)


@pytest.mark.keras
@pytest.mark.parametrize("loss, output", [("categorical_crossentropy", "dense 3 softmax"),
                                          ("binary_crossentropy", "dense 3 sigmoid")])
def test_label_smoothing_trains_as_keras(keras, loss, output):
    x, y = classes()
    keras_loss = getattr(keras.losses, {"categorical_crossentropy": "CategoricalCrossentropy",
                                        "binary_crossentropy": "BinaryCrossentropy"}[loss])(label_smoothing=0.2)
    metric = "categorical_accuracy" if loss == "categorical_crossentropy" else "binary_accuracy"
    parity(keras, f"input 5\ndense 6 tanh\n{output}\noptimizer adam lr=0.05\nloss {loss} label_smoothing=0.2\n"
           f"metrics {metric}\n", x, y, keras.optimizers.Adam(0.05), keras_loss, metrics=[metric])


@pytest.mark.keras
@pytest.mark.parametrize("loss, keras_class", [("categorical_crossentropy", "CategoricalCrossentropy"),
                                               ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"),
                                               ("binary_crossentropy", "BinaryCrossentropy")])
def test_a_linear_output_as_logits_trains_as_keras(keras, loss, keras_class):
    """from_logits on a linear output: the loss reads the output itself; the metrics read it
    raw (binary_accuracy's 0.5 threshold on the logits), as Keras's do."""
    x, y = classes()
    metric = {"categorical_crossentropy": "categorical_accuracy", "binary_crossentropy": "binary_accuracy",
              "sparse_categorical_crossentropy": "sparse_categorical_accuracy"}[loss]
    if loss == "sparse_categorical_crossentropy":
        y = y.argmax(axis=1)
    parity(keras, f"input 5\ndense 6 tanh\ndense 3\noptimizer sgd lr=0.5\nloss {loss} from_logits\n"
           f"metrics {metric}\n", x, y, keras.optimizers.SGD(0.5),
           getattr(keras.losses, keras_class)(from_logits=True), metrics=[metric])


@pytest.mark.keras
def test_top_k_metrics_train_as_keras(keras):
    x, y = classes(k=5)
    text = ("input 5\ndense 5 softmax\noptimizer sgd lr=0.3\nloss categorical_crossentropy\n"
            "metrics top_k_categorical_accuracy k=2\n")
    parity(keras, text, x, y, keras.optimizers.SGD(0.3), "categorical_crossentropy",
           metrics=[keras.metrics.TopKCategoricalAccuracy(k=2, name="top_k_categorical_accuracy")])
    text = text.replace("loss categorical", "loss sparse_categorical").replace("top_k", "sparse_top_k")
    parity(keras, text, x, y.argmax(axis=1), keras.optimizers.SGD(0.3), "sparse_categorical_crossentropy",
           metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="sparse_top_k_categorical_accuracy")])


@pytest.mark.keras
def test_top_k_metrics_count_ties_and_non_finite_rows_as_keras(keras):
    """A tie with the k-th score is in; a row holding NaN or inf is out; an id outside the
    classes is out; sparse labels of shape (N, 1) are per sample as (N,)."""
    from modelspec.backends.numpy import kernels as K

    p = np.array([[0.1, 0.3, 0.3, 0.3], [0.4, 0.3, 0.2, 0.1], [0.1, np.nan, 0.5, 0.2],
                  [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, np.inf, 0.1], [0.1, 0.2, 0.3, 0.4]], np.float32)
    ids = np.array([3, 2, 2, 0, 0, 1])
    for k in (1, 2, 3):
        theirs = keras.ops.convert_to_numpy(keras.metrics.sparse_top_k_categorical_accuracy(ids, p, k=k))
        np.testing.assert_array_equal(K.sparse_top_k_categorical_accuracy(ids, p, k=k), theirs)
        theirs = keras.ops.convert_to_numpy(keras.metrics.sparse_top_k_categorical_accuracy(ids[:, None], p, k=k))
        np.testing.assert_array_equal(K.sparse_top_k_categorical_accuracy(ids[:, None], p, k=k), theirs.reshape(-1))
        onehot = np.eye(4, dtype=np.float32)[ids]
        theirs = keras.ops.convert_to_numpy(keras.metrics.top_k_categorical_accuracy(onehot, p, k=k))
        np.testing.assert_array_equal(K.top_k_categorical_accuracy(onehot, p, k=k), theirs)
    assert K.sparse_top_k_categorical_accuracy(ids, p, k=1).tolist() == [1, 0, 0, 1, 0, 0]
    assert K.sparse_top_k_categorical_accuracy(np.array([4, -1]), p[:2], k=4).tolist() == [0, 0]


@pytest.mark.keras
def test_a_softmax_layer_over_axis_1_trains_as_keras(keras):
    """softmax axis=1 on a (steps, classes) output: Keras's cross-entropy then reads the values
    before it, over the last axis (_keras_logits)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4, 3)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, (16, 4))]
    reference = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(5), keras.layers.Softmax(axis=1)])
    parity(keras, "input 4x3\ndense 5\nsoftmax axis=1\noptimizer adam lr=0.05\nloss categorical_crossentropy\n"
           "metrics categorical_accuracy\n", x, y, keras.optimizers.Adam(0.05), "categorical_crossentropy",
           metrics=["categorical_accuracy"], reference=reference)
    reference = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(5), keras.layers.Softmax(axis=1)])
    # the bias, the same at every step, has no gradient but rounding's: SGD, which does not
    # magnify it as Adam would
    parity(keras, "input 4x3\ndense 5\nsoftmax axis=1\noptimizer sgd lr=0.5\nloss mse\n", x, y,
           keras.optimizers.SGD(0.5), "mse", reference=reference)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_the_softmax_layer_gradient_matches_finite_differences(axis):
    from modelspec.backends.numpy import kernels as K

    rng = np.random.default_rng(0)
    layer = K.Softmax(axis)
    x, r = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    y = layer.forward(x)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)
    dx = layer.backward(r)
    numeric = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (np.sum(K.Softmax(axis).forward(up) * r) - np.sum(K.Softmax(axis).forward(down) * r)) / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------
# The emitted program trains as the engine does.

EMITTED = {
    "adadelta": ("input 5\ndense 6 relu\ndropout 0.2\ndense 3 softmax\n"
                 "optimizer adadelta lr=exponential_decay(1.0, decay_steps=2, decay_rate=0.8) clipnorm=0.1\n"
                 "loss categorical_crossentropy label_smoothing=0.1\nmetrics top_k_categorical_accuracy k=2\n",
                 "one_hot"),
    "lion": ("input 5\ndense 6 tanh\ndense 3 sigmoid\n"
             "optimizer lion lr=cosine_decay(0.001, decay_steps=4, warmup_target=0.01, warmup_steps=2) "
             "global_clipnorm=0.5\nloss binary_crossentropy label_smoothing=0.2\nmetrics binary_accuracy\n",
             "one_hot"),
    "adamax": ("input 5\ndense 6 tanh\ndense 3\n"
               "optimizer adamax lr=piecewise_constant_decay(boundaries=[2, 5], values=[0.05, 0.02, 0.01]) "
               "clipvalue=0.05\nloss sparse_categorical_crossentropy from_logits\n"
               "metrics sparse_top_k_categorical_accuracy k=2\n", "ids"),
    "softmax": ("input 4x3\ndense 5\nsoftmax axis=1\n"
                "optimizer nadam lr=polynomial_decay(0.05, decay_steps=3, cycle=true)\n"
                "loss categorical_crossentropy\nmetrics categorical_accuracy\n", "steps"),
}


@pytest.mark.parametrize("name", list(EMITTED))
def test_the_emitted_program_trains_as_the_engine(name, tmp_path):
    from corpus import load_program

    from test_numpy_engine import defined_but_unused

    text, labels = EMITTED[name]
    model = ms.build(text, seed=0)
    source = model.backend.emit(model.spec, model.report)
    assert defined_but_unused(source) == set()  # only what the spec uses
    program = load_program(source, tmp_path / f"{name}.py")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, *model.spec.input_shape)).astype(np.float32)
    if labels == "steps":
        y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, (20, 4))]
    else:
        y = rng.integers(0, 3, 20)
        y = y if labels == "ids" else np.eye(3, dtype=np.float32)[y]
    net = program.network(program.initial_weights())
    theirs = program.fit(net, program.make_optimizer(), x, y, epochs=3, batch_size=6, shuffle=False)
    ours = model.fit(x, y, epochs=3, batch_size=6, shuffle=False, verbose=0).history
    assert set(theirs) == set(ours)
    for key in ours:
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-6, err_msg=key)
    for theirs_w, ours_w in zip([p for layer in net.layers for p in layer.params], model.get_weights(), strict=True):
        np.testing.assert_array_equal(theirs_w, ours_w)


CALLBACKS = {
    "early_stopping": ("early_stopping monitor=val_loss patience=1 restore_best_weights",
                       lambda keras: [keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)]),
    "plateau": ("reduce_lr_on_plateau monitor=val_categorical_accuracy factor=0.5 patience=1 cooldown=1",
                lambda keras: [keras.callbacks.ReduceLROnPlateau("val_categorical_accuracy", factor=0.5, patience=1,
                                                                 cooldown=1)]),
    "both": ("early_stopping monitor=loss min_delta=0.01 patience=2 baseline=0.9\n"
             "reduce_lr_on_plateau monitor=val_loss factor=0.2 patience=0 min_lr=0.05",
             lambda keras: [keras.callbacks.EarlyStopping("loss", min_delta=0.01, patience=2, baseline=0.9),
                            keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=0, min_lr=0.05)]),
}


@pytest.mark.keras
@pytest.mark.parametrize("name", list(CALLBACKS))
def test_the_emitted_program_runs_callbacks_as_keras(keras, name, tmp_path, capsys):
    """Its history (learning_rate included) and final weights, stopped early or not, are Keras's."""
    import keras_reference as kr
    from corpus import load_program

    from test_numpy_engine import defined_but_unused

    written, make = CALLBACKS[name]
    text = (f"{DENSE}optimizer sgd lr=0.5 momentum=0.5\nloss categorical_crossentropy\n"
            f"metrics categorical_accuracy\nfit epochs=12 batch=8 validation=0.25 shuffle=false\n{written}\n")
    model = ms.build(text, seed=0)
    source = model.backend.emit(model.spec, model.report)
    assert defined_but_unused(source) == set()  # only the callbacks the spec has
    program = load_program(source, tmp_path / f"{name}.py")
    x, y = classes(n=32, seed=5)
    net = program.network(program.initial_weights())
    ours = program.fit(net, program.make_optimizer(), x, y)
    reference = kr.model(model.spec)
    reference.set_weights(model.get_weights())
    reference.compile(keras.optimizers.SGD(0.5, momentum=0.5), "categorical_crossentropy",
                      metrics=["categorical_accuracy"])
    theirs = reference.fit(x, y, batch_size=8, epochs=12, validation_split=0.25, shuffle=False, verbose=0,
                           callbacks=make(keras)).history
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=RTOL, atol=1e-7, err_msg=key)
    for ours_w, theirs_w in zip(net.weights, reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours_w, theirs_w, rtol=RTOL, atol=RTOL)
