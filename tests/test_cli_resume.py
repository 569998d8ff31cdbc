"""`modelspec train --out D` keeps D/checkpoint/; `--resume` continues it. A run killed with
SIGKILL at any moment (right after a checkpoint, in the middle of an epoch, in the middle of
writing the checkpoint's arrays or its state.json, or between the two) and resumed ends with
exactly the weights and history of the uninterrupted run; another run's checkpoint, a
damaged one or none at all is refused in one line, exit 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors import safe_open

from corpus import ROOT

EPOCHS = "5"
SPEC = (ROOT / "specs" / "digits.ms").read_text().replace(
    "dense 64 relu he_normal(seed=2)\n", "dense 64 relu he_normal(seed=2)\ndropout 0.3\n").replace(
    "optimizer rmsprop lr=0.001 momentum=0.5", "optimizer adam lr=0.01") + (
    "early_stopping patience=3 restore_best_weights\nreduce_lr_on_plateau patience=1 factor=0.5\n")

# Runs the CLI with modelspec.fileio.write_atomic replaced, to die (SIGKILL) at a chosen point
# of the checkpoint written at the end of epoch KILL_EPOCH, leaving what a real kill there leaves.
KILLER = """
import os, signal, sys
from pathlib import Path
import modelspec.fileio as fileio
point, target = os.environ["KILL_AT"], f"arrays-{int(os.environ['KILL_EPOCH']):06d}.safetensors"
original = fileio.write_atomic
def write_atomic(path, data):
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    ours = path.name == target if point == "arrays" else (
        path.name == "state.json" and (path.parent / target).exists())
    if ours:
        if point != "between":  # half of the temporary file that would have been renamed
            path.with_name(f".{path.name}.killed.tmp").write_bytes(data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    original(path, data)
fileio.write_atomic = write_atomic
from modelspec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train(spec, out, *extra, env=None, code=None):
    command = ["-c", code] if code else ["-m", "modelspec"]
    return subprocess.run([sys.executable, *command, "train", str(spec), "--epochs", EPOCHS, "--out", out.name,
                           *extra], capture_output=True, text=True, cwd=out.parent, env=env, timeout=300)


def start(spec, out):
    return subprocess.Popen([sys.executable, "-m", "modelspec", "train", str(spec), "--epochs", EPOCHS,
                             "--out", out.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=out.parent, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def outputs(out):
    """The run's weights (every tensor and the file's metadata) and history."""
    with safe_open(out / "weights.safetensors", "np") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return weights, metadata, json.loads((out / "history.json").read_text())


def assert_same_run(out, reference):
    weights, metadata, history = outputs(out)
    ref_weights, ref_metadata, ref_history = reference
    assert history == ref_history
    assert metadata == ref_metadata
    assert sorted(weights) == sorted(ref_weights)
    for key in weights:
        np.testing.assert_array_equal(weights[key], ref_weights[key])


def epoch_of(out):
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The spec and the outputs of its uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    spec = folder / "digits.ms"
    spec.write_text(SPEC)
    done = train(spec, folder / "run")
    assert done.returncode == 0, done.stderr
    history = outputs(folder / "run")[2]
    assert len(history["loss"]) == int(EPOCHS) and len(set(history["learning_rate"])) > 1
    return spec, outputs(folder / "run")


def resume_and_compare(spec, out, reference, done_before):
    resumed = train(spec, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {out.name}/checkpoint ({done_before} epoch(s) done)" in resumed.stdout
    assert json.loads((out / "run.json").read_text())["resumed_from"] == done_before
    assert_same_run(out, reference)
    assert [p.name for p in (out / "checkpoint").iterdir() if p.name.endswith(".tmp")] == []


def test_sigkill_right_after_a_checkpoint(tmp_path, reference):
    spec, ref = reference
    out = tmp_path / "run"
    proc = start(spec, out)
    try:
        deadline = time.monotonic() + 120
        while epoch_of(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    done = epoch_of(out)
    assert done >= 2 and not (out / "weights.safetensors").exists() or done == int(EPOCHS)
    resume_and_compare(spec, out, ref, done)


def test_sigkill_in_the_middle_of_an_epoch(tmp_path, reference):
    spec, ref = reference
    out = tmp_path / "run"
    proc = start(spec, out)
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 3/"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    resume_and_compare(spec, out, ref, epoch_of(out))


def test_ctrl_c_then_resume(tmp_path, reference):
    spec, ref = reference
    out = tmp_path / "run"
    proc = start(spec, out)
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 2/"):
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    done = epoch_of(out)
    assert 2 <= done < int(EPOCHS) and len(outputs(out)[2]["loss"]) == done  # what was trained, saved
    resume_and_compare(spec, out, ref, done)


@pytest.mark.parametrize("point", ["arrays", "between", "state"])
def test_sigkill_while_the_checkpoint_is_written(tmp_path, reference, point):
    spec, ref = reference
    out = tmp_path / "run"
    killed = train(spec, out, env={**os.environ, "KILL_AT": point, "KILL_EPOCH": "3"}, code=KILLER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert epoch_of(out) == 2 and "arrays-000002.safetensors" in names
    assert ("arrays-000003.safetensors" in names) == (point != "arrays")  # written, not yet named
    assert any(n.endswith(".killed.tmp") for n in names) == (point != "between")
    resume_and_compare(spec, out, ref, 2)


def test_a_finished_run_resumed_writes_the_same_results(tmp_path, reference):
    spec, ref = reference
    out = tmp_path / "run"
    assert train(spec, out).returncode == 0
    (out / "weights.safetensors").unlink()  # as if killed after its last checkpoint
    resumed = train(spec, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({EPOCHS} epoch(s) done): it is finished; writing its results again" in resumed.stdout
    assert "Epoch 1/" not in resumed.stdout
    assert_same_run(out, ref)


def refused(result, message):
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr


def test_another_run_or_a_damaged_or_missing_checkpoint_is_refused(tmp_path, reference):
    spec, _ = reference
    out = tmp_path / "run"
    refused(train(spec, out, "--resume"), f"--resume: there is no checkpoint in {out.name}/checkpoint")
    first = train(spec, out, env={**os.environ, "KILL_AT": "arrays", "KILL_EPOCH": "2"}, code=KILLER)
    assert first.returncode == -signal.SIGKILL
    other = tmp_path / "other.ms"
    other.write_text(SPEC.replace("dense 64 relu", "dense 32 relu"))
    refused(train(other, out, "--resume"), "the checkpoint in run/checkpoint is of another run (its spec differs: "
            "layer 4 was `dense 64 relu he_normal(seed=2)`, is `dense 32 relu he_normal(seed=2)`)")
    refused(train(spec, out, "--resume", "--batch", "16"), "its batch size differs: it was 32, this run's is 16")
    refused(train(spec, out, "--resume", "--seed", "3"), "its seed of the initial weights differs")
    state = out / "checkpoint" / "state.json"
    arrays = out / "checkpoint" / json.loads(state.read_text())["arrays"]
    arrays.write_bytes(arrays.read_bytes()[:100])
    refused(train(spec, out, "--resume"), "is damaged: arrays-000001.safetensors does not match the digest")
    state.write_text(state.read_text()[:50])
    refused(train(spec, out, "--resume"), "cannot read run/checkpoint/state.json")
