"""Data-parallel training on torch.distributed (modelspec.distributed): two gloo workers on
this CPU against one process. The promise is one process's numbers: the weights, the history
(validation included) and the evaluation after training, up to float summation order. The
specs carry what couples a batch's samples or draws per sample: batchnorm (the global batch's
statistics, in dense and convolutional layouts), dropout and attention's dropout (the global
batch's masks), a weight penalty (counted once), an embedding's sparse gradient (Keras's
optimizers square it by occurrence: the squares are summed over the workers), batches that
neither divide the samples nor split evenly, and a last batch of one sample (a worker with
no rows). The two workers are launched once, as torchrun would (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and run every case; each test reads its case."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from modelspec.distributed import DistributedError, Group, shard  # noqa: E402

pytestmark = pytest.mark.torch

WORLD = 2

MLP = """model digits
input 64
dense 32 relu l2=0.001
batchnorm
dropout 0.25
dense 10 softmax
optimizer sgd learning_rate=0.1 momentum=0.9
loss sparse_categorical_crossentropy
metrics accuracy
"""

CONV = """model conv
input 8x8x1
conv2d 4 3x3 relu
batchnorm
dropout 0.2
flatten
dense 10 softmax
optimizer sgd learning_rate=0.1 momentum=0.9
loss sparse_categorical_crossentropy
metrics accuracy
"""

EMBEDDING = """model tokens
input 6 int
embedding 30 8
globalavgpool1d
dense 3 softmax
optimizer {optimizer}
loss sparse_categorical_crossentropy
metrics accuracy
"""

ATTENTION = """model attend
input 6 int
embedding 12 8 mask_zero
attention heads=2 key_dim=4 dropout=0.3
globalavgpool1d
dense 3 softmax
optimizer sgd learning_rate=0.1 momentum=0.9
loss sparse_categorical_crossentropy
metrics accuracy
"""


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data[:n] / 16.0).astype(np.float32), d.target[:n].astype(np.int64)


def tokens(n: int, vocabulary: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocabulary, size=(n, 6)).astype(np.int32)
    x[rng.random(x.shape) < 0.2] = 0  # padding for mask_zero
    x[:, 0] = np.maximum(x[:, 0], 1)  # (every row has a step to attend to)
    return x, (x.sum(axis=1) % 3).astype(np.int64)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """The CLI's digits training set (raw pixels; the spec rescales them), one-hot labels."""
    from modelspec.data import load_digits

    d = load_digits()
    return d.x_train, np.eye(10, dtype=np.float32)[d.y_train]


# name: (spec, training data, test data, fit options, engine options)
CASES = {
    # the tutorial's digits model as written (RMSprop with momentum; 1,149 samples in batches of 32)
    "digits_spec": (str(Path(__file__).parents[1] / "specs" / "digits.ms"), digits_split, None, dict(epochs=1), {}),
    # 800 training samples: 17 batches of 45 and one of 35; 200 for validation
    "mlp": (MLP, lambda: digits(1000), lambda: digits(1300)[0][1000:], dict(batch_size=45, epochs=2,
                                                                              validation_split=0.2), {}),
    "mlp_sync_free": (MLP, lambda: digits(1000), None, dict(batch_size=45, epochs=2, validation_split=0.2),
                      {"sync_free": True, "cuda_graphs": False}),
    # 46 samples in batches of 45: the last batch's one sample goes to worker 0, none to worker 1
    "one_sample_batch": (MLP, lambda: digits(46), None, dict(batch_size=45, epochs=2), {}),
    "conv": (CONV, lambda: tuple([digits(150)[0].reshape(-1, 8, 8, 1), digits(150)[1]]), None,
             dict(batch_size=25, epochs=2, validation_split=0.2), {}),
    "embedding_adam": (EMBEDDING.format(optimizer="adam learning_rate=0.05"), lambda: tokens(50, 30), None,
                       dict(batch_size=9, epochs=2), {}),
    "embedding_adamax_clipvalue": (EMBEDDING.format(optimizer="adamax learning_rate=0.05 clipvalue=0.004"),
                                   lambda: tokens(50, 30), None, dict(batch_size=9, epochs=2), {}),
    "attention_dropout": (ATTENTION, lambda: tokens(40, 12, seed=1), None, dict(batch_size=7, epochs=2), {}),
}


def run_case(name: str, group: Group | None) -> dict[str, np.ndarray]:
    """Train case `name` (in this process, or as this worker of `group`): the weights, each
    history row, the evaluation of the test data, predictions."""
    from modelspec.backends.torch import TorchBackend
    from modelspec.backends.torch.engine import TorchEngine
    from modelspec.initializers import initial_weights
    from modelspec.model import Model

    text, train, test, fit, options = CASES[name]
    spec = ms.parse(text)
    report = ms.check(spec)
    # the engine as modelspec.build makes it, with the tests' internal options (sync_free on a CPU)
    engine = TorchEngine(spec, report, seed=0, device="cpu", distributed=group, **options)
    model = Model(spec, report, TorchBackend(), engine, 0)
    model.distributed = group
    model.set_weights(initial_weights(spec, report, 0))
    x, y = train()
    history = model.fit(x, y, verbose=0, seed=3, **fit)
    out = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
    out.update({f"history/{k}": np.array(v) for k, v in history.history.items()})
    x_test = test() if test is not None else x
    y_test = digits(1300)[1][1000:] if test is not None else y
    out.update({f"evaluate/{k}": np.array(v) for k, v in model.evaluate(x_test, y_test, batch_size=16).items()})
    out["predict"] = model.predict(x_test[:20])
    out["state"] = np.concatenate([v.reshape(-1).astype(np.float64) for k, v in sorted(engine.get_state().items())
                                   if k.startswith("optimizer/")])
    return out


def fit_run(group: Group | None, **fit) -> tuple[ms.model.Model, ms.model.History]:
    model = ms.build(MLP, backend="torch", device="cpu", distributed=group if group is not None else None)
    x, y = digits(120)
    return model, model.fit(x, y, batch_size=25, verbose=0, seed=3, **fit)


def scenarios(folder: Path, group: Group) -> dict:
    """fit's checkpoint, a stop requested on one worker, workers given different data."""
    import torch.distributed as dist

    out = {}
    # worker 0 alone writes the checkpoint; every worker resumes from it
    fit_run(group, epochs=1, checkpoint=folder / f"checkpoint{group.rank}")
    out["wrote"] = (folder / f"checkpoint{group.rank}" / "state.json").exists()
    dist.barrier()
    model, history = fit_run(group, epochs=3, checkpoint=folder / "checkpoint0", resume=True)
    out["resumed"] = {"history": history.history, "weights": [w.tolist() for w in model.get_weights()]}
    # a stop requested on worker 1 only (as Ctrl-C would) ends the same epoch on both
    model = ms.build(MLP, backend="torch", device="cpu", distributed=group)
    if group.rank == 1:
        train_epoch = model.engine.train_epoch

        def then_stop(*args, **kwargs):
            model.stop_training = True
            return train_epoch(*args, **kwargs)

        model.engine.train_epoch = then_stop
    x, y = digits(120)
    history = model.fit(x, y, batch_size=25, epochs=3, verbose=0, seed=3)
    out["stopped"] = [len(history.epoch), history.stopped]
    # the same call on every worker, or a clear error on every worker (not a hang, not garbage)
    try:
        model.fit(x, y if group.rank == 0 else (y + 1) % 10, batch_size=25, epochs=1, verbose=0)
    except DistributedError as e:
        out["disagree"] = str(e)
    return out


def worker(folder: str) -> None:
    """One worker of the launch below: every case, its results in folder/rank<R>-<case>.npz,
    then the scenarios', in folder/rank<R>.json."""
    group = Group.from_env()
    for name in CASES:
        np.savez(Path(folder) / f"rank{group.rank}-{name}.npz", **run_case(name, group))
    (Path(folder) / f"rank{group.rank}.json").write_text(json.dumps(scenarios(Path(folder), group)))
    import torch.distributed as dist

    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder: Path, code: str, world: int = WORLD, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`world` workers of `code`, with the variables torchrun gives its workers."""
    port = free_port()
    tests = str(Path(__file__).parent)
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=folder, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    for p in launch(folder, f"from test_torch_distributed import worker; worker({str(folder)!r})"):
        assert p.returncode == 0, p.stderr[-3000:]
    return folder


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / (|b| + 0.01 sqrt(size)) in the Euclidean norm: a tensor's relative error,
    which float summation order alone moves by ~1e-7 per step. The floor stands for the
    scale of a tensor that stays near 0: attention's key bias, whose gradient is 0 but for
    rounding (softmax ignores a constant added to every key's score), and a dense bias whose
    units a batchnorm recentres. (Adam and RMSprop divide such a gradient by its own size:
    they make rounding a step of the learning rate, and one process reordered differs from
    itself as much; these specs train those layers with SGD.)"""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 0.01 * np.sqrt(b.size)))


def same(a: dict, b: dict, keys: list[str], rtol: float = 1e-5) -> None:
    errors = {key: relative(a[key], b[key]) for key in keys}
    assert max(errors.values()) <= rtol, {k: f"{e:.1e}" for k, e in errors.items() if e > rtol}


@pytest.mark.parametrize("name", list(CASES))
def test_two_workers_train_as_one_process(workers, name):
    torch.set_num_threads(1)
    one = run_case(name, None)
    ranks = [dict(np.load(workers / f"rank{r}-{name}.npz")) for r in range(WORLD)]
    for got in ranks:
        assert sorted(got) == sorted(one)
        same(got, one, [k for k in one if k.startswith(("weight/", "history/"))])
        same(got, one, [k for k in one if k.startswith("evaluate/")])
        same(got, one, ["predict", "state"])
    # every worker holds the same model and the same history, to the last bit
    for key in ranks[0]:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


def test_worker_0_alone_writes_the_checkpoint_and_every_worker_resumes_from_it(workers):
    torch.set_num_threads(1)
    model, history = fit_run(None, epochs=3)  # uninterrupted, one process
    ranks = [json.loads((workers / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["wrote"] for r in ranks] == [True, False]
    for r in ranks:
        got = r["resumed"]
        assert list(got["history"]) == list(history.history) and len(got["history"]["loss"]) == 3
        same({k: np.array(v) for k, v in got["history"].items()}, history.history, list(history.history))
        same(dict(enumerate(np.array(w, np.float32) for w in got["weights"])), dict(enumerate(model.get_weights())),
             list(range(len(got["weights"]))))


def test_a_stop_requested_on_one_worker_stops_every_worker_after_the_same_epoch(workers):
    ranks = [json.loads((workers / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["stopped"] for r in ranks] == [[1, "stopped on request after epoch 1"]] * WORLD


def test_workers_that_call_fit_differently_all_stop_with_one_clear_error(workers):
    ranks = [json.loads((workers / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["disagree"] == ranks[1]["disagree"]
    assert ranks[0]["disagree"].startswith("the workers called fit differently (their data differ)")


# -- without workers ------------------------------------------------------------------------


def test_shard_splits_a_batch_in_order_the_first_workers_taking_one_more():
    def shares(n, world):
        return [shard(n, Group(r, world, r)) for r in range(world)]

    assert shares(45, 2) == [slice(0, 23), slice(23, 45)]
    assert shares(10, 4) == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert shares(1, 2) == [slice(0, 1), slice(1, 1)]  # a worker may take no row
    assert shard(7, None) == slice(0, 7)
    for n in range(0, 30):
        for world in (1, 2, 3, 5):
            rows = [i for s in shares(n, world) for i in range(n)[s]]
            assert rows == list(range(n))


def test_the_group_comes_from_torchrun_s_variables():
    assert Group.from_env({}) is None
    assert Group.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Group(1, 4, 1)
    assert Group.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}).local_rank == 1
    assert Group.from_env({"RANK": "0", "WORLD_SIZE": "2"}).is_main
    with pytest.raises(DistributedError, match="RANK must be a whole number .*received 'one'"):
        Group.from_env({"RANK": "one", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="WORLD_SIZE is set but RANK is not"):
        Group.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match=r"the rank must be in \[0, 2\)"):
        Group.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_distributed_true_outside_a_launcher_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DistributedError, match="launch it with torchrun"):
        ms.build(MLP, backend="torch", device="cpu", distributed=True)


def test_one_worker_is_one_process():
    """A group of one (torchrun --nproc-per-node 1) joins no process group and changes nothing."""
    model = ms.build(MLP, backend="torch", device="cpu", distributed=Group(0, 1, 0))
    assert model.distributed is None and model.engine.group is None
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("backend", ["numpy", "keras"])
def test_the_numpy_and_keras_backends_refuse_several_workers_naming_torch(backend):
    with pytest.raises(ms.ModelspecError) as e:
        ms.build(MLP, backend=backend, distributed=Group(0, 2, 0))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"the {backend} backend trains in one process only")
    assert "torch backend" in message and "keras.distribution runs only on its JAX backend" in message


def test_the_collective_timeout_is_30_seconds_unless_set(monkeypatch):
    from modelspec.distributed import timeout_seconds

    monkeypatch.delenv("MODELSPEC_DIST_TIMEOUT", raising=False)
    assert timeout_seconds() == 30.0 and timeout_seconds(5) == 5.0
    monkeypatch.setenv("MODELSPEC_DIST_TIMEOUT", "7.5")
    assert timeout_seconds() == 7.5
    monkeypatch.setenv("MODELSPEC_DIST_TIMEOUT", "soon")
    with pytest.raises(DistributedError, match="MODELSPEC_DIST_TIMEOUT must be a number of seconds; received 'soon'"):
        timeout_seconds()
    with pytest.raises(DistributedError, match="positive"):
        timeout_seconds(0)


def test_distributed_takes_true_false_none_or_a_group():
    with pytest.raises(DistributedError, match="distributed must be True, False, None or a modelspec.distributed.Group; "
                                               "received int"):
        ms.build(MLP, backend="torch", device="cpu", distributed=2)
