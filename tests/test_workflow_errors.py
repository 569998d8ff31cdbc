"""Bad input to train, evaluate, predict and compare: exit 1 with exactly one line on standard
error, no traceback, nothing on standard output, and no output file started."""

from __future__ import annotations

import numpy as np
import pytest

from corpus import ROOT, modelspec_cli

SPECS = ROOT / "specs"


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Damaged and mismatched files, and no MNIST anywhere."""
    monkeypatch.delenv("MODELSPEC_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this zip was cut short")
    np.save(tmp_path / "wide.npy", np.zeros((3, 9, 9)))
    np.save(tmp_path / "good.npy", np.zeros((3, 8, 8)))
    return tmp_path


def _weights_of(spec: str, folder) -> str:
    """Real weights of another spec, saved by the library."""
    import modelspec as ms

    path = folder / f"{spec}.safetensors"
    ms.build(SPECS / f"{spec}.ms").save(path)
    return str(path)


CASES = {
    "missing spec": (["train", "{tmp}/nope.ms"], "{tmp}/nope.ms: error: cannot read the spec"),
    "missing data file": (["train", "{specs}/digits.ms", "--data", "{tmp}/missing.npz"],
                          "modelspec: error: {tmp}/missing.npz: no such file"),
    "corrupt npz": (["train", "{specs}/digits.ms", "--data", "{tmp}/corrupt.npz"],
                    "modelspec: error: {tmp}/corrupt.npz is not a valid .npz file"),
    "shape mismatch": (["train", "{specs}/mnist.ms"],
                       "modelspec: error: digits has samples of shape (8, 8) (64 values), but the spec's input "
                       "is (None, 784) (784 values)"),
    "unknown backend": (["train", "{specs}/digits.ms", "--backend", "nosuch"],
                        "modelspec: error: unknown backend 'nosuch'"),
    "missing mnist": (["train", "{specs}/mnist.ms", "--data", "mnist"], "modelspec: error: MNIST not found: put"),
    "corrupt weights": (["evaluate", "{specs}/digits.ms", "--weights", "{tmp}/corrupt.safetensors"],
                        "modelspec: error: {tmp}/corrupt.safetensors is not a modelspec weights file"),
    "missing weights": (["evaluate", "{specs}/digits.ms", "--weights", "{tmp}/none.safetensors"],
                        "modelspec: error: cannot read the weights file {tmp}/none.safetensors"),
    "weights of another spec": (["predict", "{specs}/digits.ms", "--weights", "{digits_a}", "--input",
                                 "{tmp}/good.npy"], "modelspec: error: {digits_a} does not fit this model"),
    "predict input shape": (["predict", "{specs}/digits.ms", "--weights", "{digits}", "--input", "{tmp}/wide.npy"],
                            "modelspec: error: {tmp}/wide.npy has samples of shape (9, 9) (81 values), but the "
                            "spec's input is (None, 8, 8) (64 values)"),
    "compare with a corrupt npz": (["compare", "{specs}/digits_a.ms", "{specs}/digits_b.ms", "--data",
                                    "{tmp}/corrupt.npz"], "modelspec: error: {tmp}/corrupt.npz is not a valid"),
    "compare with a shape mismatch": (["compare", "{specs}/digits_a.ms", "{specs}/mnist.ms"],
                                      "modelspec: error: digits has samples of shape (8, 8)"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_1(files, case):
    args, expected = CASES[case]
    names = {"tmp": files, "specs": SPECS}
    if "{digits_a}" in " ".join(args):
        names["digits_a"] = _weights_of("digits_a", files)
    if "{digits}" in " ".join(args):
        names["digits"] = _weights_of("digits", files)
    out = files / "out"
    extra = {"train": ["--out", out], "compare": ["--out", out], "predict": ["--output", out / "p.csv"]}
    done = modelspec_cli(*[a.format(**names) for a in args], *extra.get(args[0], []), cwd=files)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(expected.format(**names)), done.stderr
    assert done.stdout == ""
    assert not out.exists()


def test_device_the_backend_cannot_use_is_one_line(files):
    done = modelspec_cli("train", SPECS / "digits.ms", "--device", "cuda", "--out", files / "out", cwd=files)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (files / "out").exists()


def test_out_that_is_a_file(files):
    (files / "taken").write_text("")
    done = modelspec_cli("train", SPECS / "digits.ms", "--out", files / "taken", cwd=files)
    assert done.returncode == 1
    assert done.stderr == f"modelspec: error: --out {files / 'taken'}: exists and is not a folder\n"


@pytest.mark.parametrize("args", [["train"], ["train", "x.ms", "--epochs", "-1"],
                                  ["predict", "x.ms", "--weights", "w"], ["compare", "a.ms", "--validation", "1.5"]])
def test_usage_errors_exit_2(args):
    done = modelspec_cli(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr


@pytest.mark.parametrize("sizes", ["dense 10000000\ndense 10000000", "dense 99999999999999999999"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "keras"])
def test_a_model_too_large_to_train_is_refused_at_its_line_before_any_data_is_read(files, sizes, backend):
    (files / "big.ms").write_text(f"input 8x8\nflatten\n{sizes}\nloss mse\n")
    done = modelspec_cli("train", files / "big.ms", "--backend", backend, "--out", files / "out", cwd=files)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"{files / 'big.ms'}:{2 + sizes.count(chr(10)) + 1}:1: error: training this model needs at least ")
    assert "; this machine has " in first
    assert not (files / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "argument --seed: expected a whole number from 0 to 2**63 - 1; received '-1'"),
    (["--seed", "99999999999999999999"], "argument --seed: expected a whole number from 0 to 2**63 - 1; "
                                          "received '99999999999999999999'"),
    (["--device", "tpu"], "argument --device: expected auto, cpu, cuda or cuda:N; received 'tpu'"),
])
def test_option_values_are_named_and_refused_as_usage_errors(args, message):
    done = modelspec_cli("train", SPECS / "digits.ms", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == f"modelspec train: error: {message}"
