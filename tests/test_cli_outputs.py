"""Every command that writes a file or a folder, through the three ways an output can be
wrong: it is one of the command's inputs, it is a folder (or, for a run folder, a file), or
it cannot be written. Each is one line on stderr, exit 1, before any work, and the inputs
are left exactly as they were. `fmt` writes through a link and keeps a file's permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import modelspec as ms
from corpus import ROOT, modelspec_cli

SPEC = ROOT / "specs" / "digits.ms"


@pytest.fixture
def work(tmp_path):
    (tmp_path / "spec.ms").write_text(SPEC.read_text())
    ms.build(SPEC).save(tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), np.float32))
    (tmp_path / "x.csv").write_text("\n".join(",".join(["0"] * 64) for _ in range(2)) + "\n")
    (tmp_path / "model.json").write_text('{"class_name": "Sequential", "config": {"name": "m", "layers": ['
                                         '{"class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},'
                                         '{"class_name": "Dense", "config": {"units": 2}}]}}')
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    return tmp_path


# command, the option, the inputs it could be pointed at
FILE_OUTPUTS = {
    "compile": (["compile", "spec.ms", "--backend", "numpy"], "-o", ["spec.ms"]),
    "export": (["export", "spec.ms", "--weights", "w.safetensors"], "-o", ["spec.ms", "w.safetensors"]),
    "draw": (["draw", "spec.ms"], "-o", ["spec.ms"]),
    "import": (["import", "model.json"], "-o", ["model.json"]),
    "predict": (["predict", "spec.ms", "--weights", "w.safetensors", "--input", "x.csv"], "--output",
                ["x.csv", "spec.ms", "w.safetensors"]),
}


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_an_output_never_replaces_an_input(work, command):
    args, option, inputs = FILE_OUTPUTS[command]
    for name in inputs:
        before = snapshot(work)
        done = modelspec_cli(*args, option, name, cwd=work)
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr == (f"modelspec: error: {option} {name}: that is the input {name}; an output never "
                               "replaces an input, choose another name\n")
        assert snapshot(work) == before


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_an_output_that_is_a_folder_or_cannot_be_written(work, command):
    args, option, _ = FILE_OUTPUTS[command]
    done = modelspec_cli(*args, option, "folder", cwd=work)
    assert done.returncode == 1 and done.stderr == f"modelspec: error: {option} folder: is a folder; expected a file name\n"
    done = modelspec_cli(*args, option, "a_file/out.txt", cwd=work)  # below a file: no folder can be made there
    assert done.returncode == 1 and done.stderr.startswith(f"modelspec: error: {option} a_file/out.txt: cannot write in ")
    assert "Traceback" not in done.stderr and not list((work / "folder").iterdir())


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_run_folder_that_cannot_be_used_is_found_before_training(work, command):
    args = ["train", "spec.ms"] if command == "train" else ["compare", "spec.ms", "spec.ms"]
    done = modelspec_cli(*args, "--out", "a_file", "--epochs", "1", cwd=work)
    assert done.returncode == 1 and done.stderr == "modelspec: error: --out a_file: exists and is not a folder\n"
    done = modelspec_cli(*args, "--out", "a_file/run", "--epochs", "1", cwd=work)
    assert done.returncode == 1 and done.stderr == "modelspec: error: --out a_file/run: cannot write there\n"
    assert done.stdout == ""


def test_the_default_run_folder_is_a_safe_name_never_a_path(work):
    (work / "up.ms").write_text(SPEC.read_text().replace("model digits", 'model ".."'))
    done = modelspec_cli("train", work / "up.ms", "--epochs", "1", cwd=work / "folder")
    assert done.returncode == 0, done.stderr
    assert (work / "folder" / "runs" / "model" / "weights.safetensors").exists()
    assert not (work / "weights.safetensors").exists()


def test_fmt_writes_through_a_link_and_keeps_the_mode(work):
    target = work / "target.ms"
    target.write_text("dense 10 in 4")
    os.chmod(target, 0o600)
    (work / "link.ms").symlink_to(target)
    done = modelspec_cli("fmt", "link.ms", cwd=work)
    assert done.returncode == 0, done.stderr
    assert (work / "link.ms").is_symlink()
    assert target.read_text() == "model link\ninput 4\ndense 10\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_run_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(work):
    run = work / "run"
    run.mkdir()
    (run / ".modelspec-run.lock").write_text(str(os.getpid()))  # this test's process: alive
    done = modelspec_cli("train", "spec.ms", "--epochs", "1", "--out", "run", cwd=work)
    assert done.returncode == 1
    assert done.stderr == (f"modelspec: error: --out run: another run (process {os.getpid()}) is writing there; "
                           "wait for it, or choose another --out\n")
    assert sorted(p.name for p in run.iterdir()) == [".modelspec-run.lock"]
    (run / ".modelspec-run.lock").write_text("999999999")  # no such process
    done = modelspec_cli("train", "spec.ms", "--epochs", "1", "--out", "run", cwd=work)
    assert done.returncode == 0, done.stderr
    assert not (run / ".modelspec-run.lock").exists() and (run / "weights.safetensors").exists()


def test_a_new_run_leaves_no_file_of_the_old_one(work):
    done = modelspec_cli("train", "spec.ms", "--epochs", "1", "--out", "run", cwd=work)
    assert done.returncode == 0 and (work / "run" / "accuracy.png").exists()
    (work / "plain.ms").write_text(SPEC.read_text().replace("metrics categorical_accuracy", ""))
    done = modelspec_cli("train", "plain.ms", "--epochs", "1", "--out", "run", cwd=work)
    assert done.returncode == 0, done.stderr
    assert not (work / "run" / "accuracy.png").exists() and (work / "run" / "loss.png").exists()
