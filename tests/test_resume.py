"""fit(checkpoint=DIR) and fit(checkpoint=DIR, resume=True): a run stopped after any epoch
and resumed in a fresh model ends with exactly the weights and history of the uninterrupted
run (NumPy bit for bit, torch and Keras to 1e-6), with dropout, a schedule, early stopping
with restore_best_weights and reduce_lr_on_plateau; a checkpoint of another run, a damaged
one or none at all is refused."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import modelspec as ms
from modelspec.checkpoint import Checkpoint, CheckpointError

SCHEDULE = """model sched
input 6
dense 16 relu
dropout 0.3
dense 3 softmax
optimizer sgd lr=exponential_decay(0.2, decay_steps=5, decay_rate=0.8) momentum=0.9
loss categorical_crossentropy
metrics accuracy
fit batch=16 epochs=10 validation=0.25 seed=5
early_stopping patience=3 restore_best_weights
"""
PLATEAU = """model plateau
input 6
dense 16 relu
dropout 0.2
dense 3 softmax
optimizer adam lr=0.03
loss categorical_crossentropy
metrics accuracy
fit batch=16 epochs=10 validation=0.25 seed=2
early_stopping patience=4 restore_best_weights
reduce_lr_on_plateau patience=1 factor=0.5
"""


def data(n=80):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    classes = (x[:, 0] + rng.normal(size=n) > 0).astype(int) + (x[:, 1] > 1)
    return x, np.eye(3, dtype=np.float32)[classes]


class Epochs:
    """A progress stream (verbose=2) that acts at the start of the epochs it is given:
    snapshots the checkpoint as it is then (what a kill at that moment leaves), or asks the
    model to stop after that epoch (Ctrl-C)."""

    def __init__(self, model, folder=None, snapshots=(), stop_in=None):
        self.model, self.folder, self.snapshots, self.stop_in = model, folder, snapshots, stop_in
        self.copies = {}

    def write(self, text):
        if text.startswith("Epoch ") and "/" in text.split()[1]:
            epoch = int(text.split()[1].split("/")[0])
            if epoch in self.snapshots:
                self.copies[epoch - 1] = copy = f"{self.folder}-after-{epoch - 1}"
                shutil.copytree(self.folder, copy)
            if epoch == self.stop_in:
                self.model.stop_training = True

    def flush(self):
        pass


def assert_same(a, b, history_a, history_b, rtol):
    assert sorted(history_a) == sorted(history_b)
    for key in history_a:
        if rtol == 0:
            assert history_a[key] == history_b[key], key
        else:
            np.testing.assert_allclose(history_a[key], history_b[key], rtol=rtol, err_msg=key)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        if rtol == 0:
            np.testing.assert_array_equal(wa, wb)
        else:
            np.testing.assert_allclose(wa, wb, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("text", [SCHEDULE, PLATEAU], ids=["schedule", "plateau"])
def test_numpy_resumes_bit_for_bit_from_every_epoch(tmp_path, text):
    x, y = data()
    folder = tmp_path / "checkpoint"
    model = ms.build(text, seed=1)
    stream = Epochs(model, folder, snapshots=range(2, 11))
    history = model.fit(x, y, verbose=2, stream=stream, checkpoint=folder).history
    epochs = len(history["loss"])
    assert 3 < epochs < 10  # it stopped early, and restored the best epoch's weights
    if "reduce_lr" in text:
        assert len(set(history["learning_rate"])) > 2
    assert sorted(stream.copies) == list(range(1, epochs))
    for done, copy in stream.copies.items():
        resumed = ms.build(text, seed=1)
        again = resumed.fit(x, y, verbose=0, checkpoint=copy, resume=True).history
        assert_same(model, resumed, history, again, rtol=0)
    # the final checkpoint is of a finished run: resuming it trains nothing and ends the same
    assert Checkpoint(folder).read()[0]["finished"] is True
    finished = ms.build(text, seed=1)
    assert_same(model, finished, history, finished.fit(x, y, verbose=0, checkpoint=folder, resume=True).history, 0)


def test_a_run_stopped_on_request_resumes_exactly_and_can_be_extended(tmp_path):
    x, y = data()
    text = SCHEDULE.replace("early_stopping patience=3 restore_best_weights\n", "")
    reference = ms.build(text, seed=1)
    history = reference.fit(x, y, verbose=0, epochs=8).history
    first = ms.build(text, seed=1)
    stopped = first.fit(x, y, verbose=2, epochs=8, checkpoint=tmp_path, stream=Epochs(first, stop_in=3))
    assert stopped.stopped == "stopped on request after epoch 3" and len(stopped.history["loss"]) == 3
    assert Checkpoint(tmp_path).read()[0]["epoch"] == 3
    resumed = ms.build(text, seed=1)
    assert_same(reference, resumed, history, resumed.fit(x, y, verbose=0, epochs=8, checkpoint=tmp_path,
                                                         resume=True).history, rtol=0)
    # epochs is the total: a finished run resumed with more of them trains on as one longer run
    longer = ms.build(text, seed=1)
    longer_history = longer.fit(x, y, verbose=0, epochs=10).history
    extended = ms.build(text, seed=1)
    assert_same(longer, extended, longer_history,
                extended.fit(x, y, verbose=0, epochs=10, checkpoint=tmp_path, resume=True).history, rtol=0)


def test_another_run_a_damaged_checkpoint_or_none_is_refused(tmp_path):
    x, y = data()
    ms.build(PLATEAU, seed=1).fit(x, y, verbose=0, epochs=2, checkpoint=tmp_path)
    model = ms.build(PLATEAU, seed=1)
    with pytest.raises(CheckpointError, match=r"another run \(its batch size differs: it was 16, this run's is 8\)"):
        model.fit(x, y, verbose=0, batch_size=8, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"its spec differs: layer 1 was `dense 16 relu`, is `dense 16 tanh`"):
        ms.build(PLATEAU.replace("16 relu", "16 tanh")).fit(x, y, verbose=0, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="its training data differs"):
        model.fit(x + 1, y, verbose=0, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="its seed of the initial weights differs: it was 1, this run's is 0"):
        ms.build(PLATEAU, seed=0).fit(x, y, verbose=0, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="its reduce_lr_on_plateau differs"):
        model.fit(x, y, verbose=0, checkpoint=tmp_path, resume=True, reduce_lr_on_plateau={"patience": 2})
    with pytest.raises(CheckpointError, match="its early_stopping differs"):
        model.fit(x, y, verbose=0, checkpoint=tmp_path, resume=True, early_stopping=False)
    assert not model._trained  # refused before any step
    state = Checkpoint(tmp_path).read()[0]
    arrays = tmp_path / state["arrays"]
    arrays.write_bytes(arrays.read_bytes()[:-8])  # a damaged arrays file is never read
    with pytest.raises(CheckpointError, match="is damaged: arrays-000002.safetensors does not match the digest"):
        model.fit(x, y, verbose=0, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="there is no checkpoint to resume from in"):
        model.fit(x, y, verbose=0, checkpoint=tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="give checkpoint=DIR"):
        model.fit(x, y, verbose=0, resume=True)


def test_only_the_latest_arrays_are_kept_and_a_new_run_forgets_the_old(tmp_path):
    x, y = data()
    ms.build(PLATEAU, seed=1).fit(x, y, verbose=0, epochs=3, checkpoint=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays-000003.safetensors", "state.json"]
    (tmp_path / ".arrays-000004.safetensors.x.tmp").write_bytes(b"half")  # a write that was killed
    model = ms.build(PLATEAU, seed=1)
    model.fit(x, y, verbose=2, epochs=3, checkpoint=tmp_path, stream=Epochs(model, stop_in=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays-000001.safetensors", "state.json"]


def other_backend(backend, tmp_path, text, rtol):
    x, y = data()
    reference = ms.build(text, backend=backend, seed=1)
    history = reference.fit(x, y, verbose=0).history
    first = ms.build(text, backend=backend, seed=1)
    first.fit(x, y, verbose=2, checkpoint=tmp_path, stream=Epochs(first, stop_in=3))
    resumed = ms.build(text, backend=backend, seed=1)
    again = resumed.fit(x, y, verbose=0, checkpoint=tmp_path, resume=True).history
    assert_same(reference, resumed, history, again, rtol=rtol)
    with pytest.raises(CheckpointError, match=f"its backend differs: it was {backend}, this run's is numpy"):
        ms.build(text, seed=1).fit(x, y, verbose=0, checkpoint=tmp_path, resume=True)


@pytest.mark.torch
@pytest.mark.parametrize("text", [SCHEDULE, PLATEAU], ids=["schedule", "plateau"])
def test_torch_resumes_exactly(tmp_path, text):
    pytest.importorskip("torch")
    other_backend("torch", tmp_path, text, rtol=1e-6)


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_resumes_exactly(tmp_path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("keras")
    other_backend("keras", tmp_path, PLATEAU.replace("epochs=10", "epochs=6"), rtol=1e-6)
