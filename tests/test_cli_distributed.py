"""`modelspec train --backend torch --nproc 2` and the same command under torchrun: two gloo
workers give the weights, history and test metrics of one process (a spec with batchnorm,
dropout and a partial last batch); only rank 0 prints and writes; a worker killed mid-run ends
the run on every worker in one line, exit 1, within seconds; Ctrl-C stops every worker after the
same epoch and keeps its outputs, exit 130; --resume continues on two workers; what cannot run
on several processes is refused in one line before any worker starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from corpus import modelspec_cli  # noqa: E402
from modelspec.commands._launch import worker_command  # noqa: E402

pytestmark = pytest.mark.torch

# 1,437 digits for training, the last 288 for validation: 1,149 trained on, so the last batch of
# 32 holds 29 samples (15 on worker 0, 14 on worker 1)
SPEC = """model dp
input 8x8
rescale 1/16
flatten
dense 32 he_normal(seed=1) nobias  # batchnorm follows: a bias would be subtracted away, and its gradient is float noise
batchnorm
leaky_relu 0.3
dropout 0.3
dense 10 softmax
optimizer adam lr=0.01
loss categorical_crossentropy
metrics categorical_accuracy
fit batch=32 epochs=2 validation=0.2 seed=0
"""
TRAIN = ["train", "dp.ms", "--backend", "torch"]


def assert_same_run(one: Path, other: Path) -> None:
    """Weights (each tensor to 1e-5 of its norm), history and test metrics to 1e-5 relative."""
    a, b = load_file(one / "weights.safetensors"), load_file(other / "weights.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        scale = max(float(np.linalg.norm(a[key])), 1e-12)
        assert float(np.linalg.norm(a[key] - b[key])) <= 1e-5 * scale, key
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (one, other))
    assert sorted(ha) == sorted(hb) and all(len(ha[k]) == len(hb[k]) for k in ha)
    for key in ha:
        np.testing.assert_allclose(hb[key], ha[key], rtol=1e-5, err_msg=key)
    ta, tb = (json.loads((d / "run.json").read_text())["test"] for d in (one, other))
    assert sorted(ta) == sorted(tb)
    for key in ta:
        np.testing.assert_allclose(tb[key], ta[key], rtol=1e-5, err_msg=key)


def report_lines(stdout: str) -> list[str]:
    """The test table's rows and the accuracy line, as printed."""
    return [line for line in stdout.splitlines() if line.startswith(("│", "Test accuracy"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (--nproc 1: no launcher, no process group), --nproc 2 and torchrun
    --nproc-per-node 2, each for the spec's 2 epochs."""
    cwd = tmp_path_factory.mktemp("dist")
    (cwd / "dp.ms").write_text(SPEC)
    done = {
        "one": modelspec_cli(*TRAIN, "--nproc", 1, "--out", "one", cwd=cwd, timeout=300),
        "nproc": modelspec_cli(*TRAIN, "--nproc", 2, "--out", "nproc", cwd=cwd, timeout=300),
        "torchrun": subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
             "modelspec", *TRAIN, "--out", "torchrun"], cwd=cwd, capture_output=True, text=True, timeout=300),
    }
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    return cwd, done


def test_two_workers_give_the_weights_history_and_test_metrics_of_one_process(runs):
    cwd, done = runs
    assert_same_run(cwd / "one", cwd / "nproc")
    assert report_lines(done["nproc"].stdout) == report_lines(done["one"].stdout)
    assert len(report_lines(done["one"].stdout)) >= 3  # two metrics and the accuracy line
    run = json.loads((cwd / "nproc" / "run.json").read_text())
    assert run["workers"] == 2 and run["epochs"] == 2 and run["interrupted"] is False
    assert json.loads((cwd / "one" / "run.json").read_text())["workers"] == 1


def test_under_torchrun_the_same_run(runs):
    cwd, done = runs
    assert_same_run(cwd / "one", cwd / "torchrun")
    assert report_lines(done["torchrun"].stdout) == report_lines(done["one"].stdout)


@pytest.mark.parametrize("name", ["nproc", "torchrun"])
def test_rank_0_alone_prints(runs, name):
    """One summary, one progress line per epoch, one report: the other rank is silent."""
    cwd, done = runs
    out = done[name].stdout
    assert out.count('Model: "dp"') == 1 and out.count("Epoch 2/2") == 1 and out.count("Test accuracy") == 1
    assert out.count("Saved in") == 1
    if name == "nproc":
        assert done[name].stderr == ""
    assert sorted(p.name for p in (cwd / name).iterdir()) == sorted(p.name for p in (cwd / "one").iterdir())


def test_resume_on_two_workers_continues_to_the_run_of_one_process(runs, tmp_path):
    cwd, _ = runs
    (tmp_path / "dp.ms").write_text(SPEC)
    first = modelspec_cli(*TRAIN, "--nproc", 2, "--epochs", 1, "--out", "run", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    resumed = modelspec_cli(*TRAIN, "--nproc", 2, "--resume", "--out", "run", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout and resumed.stdout.count("Epoch 2/2") == 1
    assert "Epoch 1/2" not in resumed.stdout
    assert_same_run(cwd / "one", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["resumed_from"] == 1


# ---------------------------------------------------------------------------------------
# A worker that dies, Ctrl-C


def start(cwd: Path, out: str) -> subprocess.Popen:
    """`train --nproc 2` for far more epochs than the test waits for, in a session of its own
    (as a shell runs a command: Ctrl-C goes to its process group)."""
    (cwd / "dp.ms").write_text(SPEC)
    return subprocess.Popen([sys.executable, "-m", "modelspec", *TRAIN, "--nproc", "2", "--epochs", "100000",
                             "--out", out], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, prefix: str) -> None:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {''.join(seen)}{proc.stderr.read()}")


def workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes, read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if ppid == launcher and rank is not None:
            found[int(rank)] = int(entry)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_no_temporary_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        assert not (path.name.startswith(".") or path.name.endswith(".tmp")), path


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc (Linux)")


@needs_proc
@pytest.mark.parametrize("rank", [0, 1])
def test_a_killed_worker_ends_the_run_in_one_line(tmp_path, rank):
    proc = start(tmp_path, "run")
    try:
        wait_for(proc, "Epoch 3/")
        pids = workers(proc.pid)
        assert sorted(pids) == [0, 1]
        killed = time.monotonic()
        os.kill(pids[rank], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert took < 15, took
    assert stderr.splitlines() == [f"modelspec: error: worker rank {rank} of 2 (process {pids[rank]}) was killed by "
                                   "signal SIGKILL; the other workers were stopped"]
    assert not any(alive(pid) for pid in pids.values())
    # what the last completed epoch left: its checkpoint, whole; no result of an unfinished run
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]
    assert_no_temporary_files(out)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] >= 2 and len(state["history"]["loss"]) == state["epoch"]


@needs_proc
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_every_worker(tmp_path, presses):
    """Once: every worker stops after the same epoch, rank 0 saves it, exit 130. Twice: abort at
    once, exit 130, the last checkpoint whole and nothing half-written."""
    proc = start(tmp_path, "run")
    try:
        wait_for(proc, "Epoch 3/")
        pids = workers(proc.pid)
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    assert not any(alive(pid) for pid in pids.values())
    out = tmp_path / "run"
    assert_no_temporary_files(out)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    if presses == 2:
        assert stderr.splitlines()[-1] == "modelspec: interrupted"
        return
    epochs = state["epoch"]
    assert stderr.splitlines()[-1] == f"modelspec: interrupted; saved what was trained ({epochs} epoch(s)) in run"
    assert epochs >= 3 and "Test accuracy:" in stdout and stdout.count("Test accuracy:") == 1
    history = json.loads((out / "history.json").read_text())
    assert all(len(v) == epochs for v in history.values())
    assert history == state["history"]
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and run["epochs"] == epochs and run["workers"] == 2
    model = ms.load_model(out / "weights.safetensors")
    assert model.name == "dp"
    saved = load_file(out / "checkpoint" / f"arrays-{epochs:06d}.safetensors")
    weights = load_file(out / "weights.safetensors")
    for key, value in weights.items():  # the weights are the last completed epoch's
        np.testing.assert_array_equal(value, saved[f"weights/{key}"])


# ---------------------------------------------------------------------------------------
# Refused before any worker starts


@pytest.mark.parametrize("backend", ["numpy", "keras"])
def test_numpy_and_keras_refuse_several_processes(tmp_path, backend):
    (tmp_path / "dp.ms").write_text(SPEC)
    done = modelspec_cli("train", "dp.ms", "--backend", backend, "--nproc", 2, "--out", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == (f"modelspec: error: the {backend} backend trains in one process; --nproc 2 (data-parallel "
                           "training on torch.distributed) needs --backend torch (Keras 3's own keras.distribution "
                           "runs only on its JAX backend)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, expected", [("0", "a positive integer"), ("two", "a positive integer"),
                                             ("1.5", "a positive integer")])
def test_nproc_must_be_a_positive_integer(tmp_path, value, expected):
    (tmp_path / "dp.ms").write_text(SPEC)
    done = modelspec_cli("train", "dp.ms", "--backend", "torch", "--nproc", value, cwd=tmp_path)
    assert done.returncode == 2
    assert f"argument --nproc: expected {expected}; received '{value}'" in done.stderr
    assert "Traceback" not in done.stderr


def test_gpus_one_per_worker(tmp_path):
    import torch

    (tmp_path / "dp.ms").write_text(SPEC)
    done = modelspec_cli(*TRAIN, "--nproc", 2, "--device", "cuda:1", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("modelspec: error: --device cuda:1 names one GPU, but each of the 2 workers takes the GPU "
                           "of its local rank; give --device cuda\n")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 64:
        done = modelspec_cli(*TRAIN, "--nproc", 64, "--device", "cuda", cwd=tmp_path)
        assert done.returncode == 1
        assert done.stderr == (f"modelspec: error: --device cuda with 64 workers needs one GPU per local worker (64 on "
                               f"this machine); {count} {'is' if count == 1 else 'are'} available\n")


def test_nproc_under_torchrun_is_refused(tmp_path):
    (tmp_path / "dp.ms").write_text(SPEC)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "modelspec", *TRAIN, "--nproc", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("modelspec: error: --nproc 2: this process is already one of 2 workers")


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "abc", "RANK": "0", "LOCAL_RANK": "0"},
     "WORLD_SIZE must be a whole number (as torchrun sets it); received 'abc'"),
    ({"WORLD_SIZE": "2", "RANK": "3", "LOCAL_RANK": "0"},
     "the rank must be in [0, 2) for a world size of 2; received 3"),
], ids=["world size", "rank"])
def test_a_broken_torchrun_environment_is_one_line(tmp_path, env, expected):
    (tmp_path / "dp.ms").write_text(SPEC)
    done = subprocess.run([sys.executable, "-m", "modelspec", *TRAIN, "--epochs", "1", "--out", "run"], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (1, f"modelspec: error: {expected}\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("words, expected", [
    (["train", "a.ms", "--nproc", "2", "--epochs", "3"], ["train", "a.ms", "--epochs", "3"]),
    (["train", "a.ms", "--nproc=2"], ["train", "a.ms"]),
    (["train", "--np", "4", "a.ms"], ["train", "a.ms"]),
    (["train", "a.ms", "--out", "x", "--", "--nproc"], ["train", "a.ms", "--out", "x", "--", "--nproc"]),
])
def test_the_workers_run_the_command_without_nproc(words, expected):
    assert worker_command(words) == expected


# ---------------------------------------------------------------------------------------
# Which worker's failure the launcher reports, from the error files the workers write


def failure(tmp_path, monkeypatch, rank: int, exitcode: int, error: BaseException | None = None,
            message: str = "", outcome: bool = False):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from modelspec.commands import _launch

    path = tmp_path / f"error-{rank}-{len(list(tmp_path.iterdir()))}.json"  # a file of its own
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    if outcome:
        _launch.record_outcome(exitcode)
    elif message:
        _launch.record_error(message, error, exitcode)
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


def launcher_says(failures: dict, interrupted: bool = False):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from modelspec.commands import CommandError, _launch

    try:
        return _launch._failed(ChildFailedError("modelspec", failures), 2, interrupted)
    except CommandError as e:
        return str(e)


def test_the_launcher_reports_the_cause_not_its_consequences(tmp_path, monkeypatch):
    from modelspec.commands._launch import PeerLost

    lost = "worker 0 of 2: another worker stopped or stopped answering, so the run ends here (gloo: closed)"
    peer = failure(tmp_path, monkeypatch, 0, 1, PeerLost(lost), lost)
    assert launcher_says({0: peer, 1: failure(tmp_path, monkeypatch, 1, -signal.SIGKILL)}) == (
        "worker rank 1 of 2 (process 1001) was killed by signal SIGKILL; the other workers were stopped")
    # an error a worker reported comes before the launcher's SIGTERM of the other
    first = failure(tmp_path, monkeypatch, 1, 1, ValueError("x"), "cannot read d.npz")
    assert launcher_says({0: failure(tmp_path, monkeypatch, 0, -signal.SIGTERM), 1: first}) == (
        "cannot read d.npz (worker rank 1 of 2); the other workers were stopped")
    assert launcher_says({0: peer, 1: failure(tmp_path, monkeypatch, 1, 3)}) == (
        "worker rank 1 of 2 (process 1001) ended with exit code 3 and no message (its output, if any, is above); "
        "the other workers were stopped")
    assert launcher_says({0: peer}) == f"{lost}; the other workers were stopped"


def test_the_launcher_passes_on_the_outcome_rank_0_reported(tmp_path, monkeypatch):
    stopped = failure(tmp_path, monkeypatch, 0, 1, outcome=True)  # a non-finite loss: rank 0 said so
    assert launcher_says({0: stopped, 1: failure(tmp_path, monkeypatch, 1, 1, outcome=True)}) == 1
    assert launcher_says({0: failure(tmp_path, monkeypatch, 0, 130, outcome=True)}, interrupted=True) == 130
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: the CLI says "interrupted", exit 130
        launcher_says({0: failure(tmp_path, monkeypatch, 0, 130, KeyboardInterrupt(), "interrupted")},
                      interrupted=True)
