"""Ctrl-C during `modelspec train`: training stops after the current epoch, what was trained is
saved complete, exit 130; a second Ctrl-C aborts at once, still leaving no half-written file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

import modelspec as ms
from corpus import ROOT

SPECS = ROOT / "specs"


def start_training(out, *extra):
    """`modelspec train` for far more epochs than the test waits for, SIGINT delivered normally."""
    return subprocess.Popen(
        [sys.executable, "-m", "modelspec", "train", str(SPECS / "digits.ms"), "--epochs", "100000",
         "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(proc, prefix: str) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the run ended before printing {prefix!r}: {''.join(seen)}{proc.stderr.read()}")


def assert_no_temporary_files(out) -> None:
    if out.exists():
        assert [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")] == []


def test_ctrl_c_saves_what_was_trained_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = start_training(out)
    try:
        wait_for(proc, "Epoch 2/")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "modelspec: interrupted; saved what was trained" in stderr
    assert "Test accuracy:" in stdout  # the test metrics of what was trained
    history = json.loads((out / "history.json").read_text())
    epochs = len(history["loss"])
    assert 2 <= epochs < 100000 and all(len(v) == epochs for v in history.values())
    assert len((out / "history.csv").read_text().splitlines()) == epochs + 1
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and run["epochs"] == epochs
    model = ms.load_model(out / "weights.safetensors")  # complete, and it loads
    assert model.name == "digits"
    for name in ("loss.png", "accuracy.png"):
        assert (out / name).read_bytes()[-8:-4] == b"IEND"
    assert_no_temporary_files(out)


@pytest.mark.parametrize("json_mode", [False, True], ids=["human", "json"])
def test_second_ctrl_c_aborts_without_partial_files(tmp_path, json_mode):
    out = tmp_path / "run"
    proc = start_training(out, *(["--json"] if json_mode else []))
    try:
        if json_mode:  # progress is on standard error, and stdout stays empty
            for line in proc.stderr:
                if line.startswith("Epoch 2/"):
                    break
        else:
            wait_for(proc, "Epoch 2/")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "modelspec: interrupted" in stderr
    assert_no_temporary_files(out)
    # whatever was written before the abort is whole
    if (out / "history.json").exists():
        json.loads((out / "history.json").read_text())
    if (out / "weights.safetensors").exists():
        ms.load_model(out / "weights.safetensors")
    if json_mode:
        assert stdout == "" or json.loads(stdout)
