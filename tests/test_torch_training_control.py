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
