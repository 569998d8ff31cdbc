"""`modelspec check` as a user runs it: exit codes, the JSON report, --strict, --width, and
that it never imports a framework."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from corpus import ROOT, SPEC_FILES, modelspec_cli


def write(tmp_path, text: str, name: str = "spec.ms"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_prints_keras_summary_and_flops():
    done = modelspec_cli("check", "--width", 88, "specs/model1.ms")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('Model: "model1"\n┏')
    assert " Total params: 435,402 (1.66 MB)\n" in done.stdout
    assert " FLOPs: 869,632 per sample" in done.stdout
    assert "specs/model1.ms:6:1: warning: dense and dense_1 have no activation" in done.stderr


def test_check_json_has_exactly_the_documented_shape(tmp_path):
    # The language issue's example, for model1 written without advice warnings.
    spec = write(tmp_path, "model model1\ndense 512 relu he_normal in 784\ndense 64 relu he_normal\ndense 10 softmax\n")
    done = modelspec_cli("check", "--json", spec)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and [(f["file"], f["ok"], f["diagnostics"]) for f in doc["files"]] == [(str(spec), True, [])]
    assert doc["files"][0]["report"] == {
        "model": "model1", "input_shape": [None, 784], "input_dtype": "float32",
        "layers": [
            {"name": "dense", "kind": "dense", "output_shape": [None, 512], "params": 401920,
             "trainable": 401920, "non_trainable": 0, "flops": 802816, "inputs": ["input_layer"]},
            {"name": "dense_1", "kind": "dense", "output_shape": [None, 64], "params": 32832,
             "trainable": 32832, "non_trainable": 0, "flops": 2 * 512 * 64, "inputs": ["dense"]},
            {"name": "dense_2", "kind": "dense", "output_shape": [None, 10], "params": 650,
             "trainable": 650, "non_trainable": 0, "flops": 2 * 64 * 10, "inputs": ["dense_1"]},
        ],
        "total_params": 435402, "trainable_params": 435402, "non_trainable_params": 0,
        "bytes": 1741608, "flops": 869632, "warnings": []}


def test_check_json_warnings_carry_their_position():
    done = modelspec_cli("check", "--json", "specs/model1.ms")
    (file,) = json.loads(done.stdout)["files"]
    assert file["report"]["warnings"] == file["diagnostics"]
    first = file["diagnostics"][0]
    assert (first["severity"], first["file"], first["line"], first["column"], first["code"]) == (
        "warning", "specs/model1.ms", 6, 1, "composed-affine")
    assert first["hint"]


def test_check_json_several_specs_is_the_same_shape():
    done = modelspec_cli("check", "--json", "specs/model1.ms", "specs/model_b.ms")
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and [f["report"]["total_params"] for f in doc["files"]] == [435402, 221594]


def test_check_json_reports_failures_in_the_same_document(tmp_path):
    bad = write(tmp_path, "input 784\ndense 64 rleu\n", "bad.ms")
    done = modelspec_cli("check", "--json", "specs/model1.ms", bad, str(tmp_path / "missing.ms"))
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and [f["ok"] for f in doc["files"]] == [True, False, False]
    error = doc["files"][1]["diagnostics"][0]
    assert (error["severity"], error["file"], error["line"], error["column"], error["hint"]) == (
        "error", str(bad), 2, 10, "did you mean 'relu'?")
    assert doc["files"][1]["report"] is None
    assert doc["files"][2]["diagnostics"][0]["message"] == "cannot read the spec: No such file or directory"


@pytest.mark.parametrize("args", [
    ["train", "{bad}"], ["train", "specs/mnist.ms"], ["evaluate", "specs/digits.ms", "--weights", "{tmp}/none"],
    ["predict", "specs/digits.ms", "--weights", "{tmp}/none", "--input", "{tmp}/none.npy"],
    ["compare", "specs/digits_a.ms", "{bad}"], ["crosscheck", "{bad}"]])
def test_every_json_command_reports_a_failure_as_json(tmp_path, args):
    bad = write(tmp_path, "input 784\ndense 64 rleu\n", "bad.ms")
    done = modelspec_cli(*[a.format(bad=bad, tmp=tmp_path) for a in args], "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and doc["diagnostics"][0]["severity"] == "error"
    assert set(doc["diagnostics"][0]) >= {"file", "line", "column", "message", "hint"}


def test_invalid_spec_exits_1_with_compiler_style_errors(tmp_path):
    spec = write(tmp_path, "input 784\ndense 64 rleu\n", "bad.ms")
    done = modelspec_cli("check", "bad.ms", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines()[:3] == [
        "bad.ms:2:10: error: unknown word 'rleu' in dense; expected an activation (relu, softmax, ...), "
        "an initializer (he_normal, ...), nobias, l1 or l2",
        "  dense 64 rleu",
        "           ^^^^",
    ]
    assert "  hint: did you mean 'relu'?" in done.stderr
    assert spec.read_text() == "input 784\ndense 64 rleu\n"


def test_one_invalid_spec_among_several_still_checks_the_others(tmp_path):
    write(tmp_path, "dense 0 in 3\n", "bad.ms")
    done = modelspec_cli("check", "bad.ms", ROOT / "specs/model_a.ms", cwd=tmp_path)
    assert done.returncode == 1
    assert 'Model: "model_a"' in done.stdout
    assert "bad.ms:1:7: error: the number of units must be at least 1; received 0" in done.stderr


def test_strict_turns_warnings_into_errors(tmp_path):
    done = modelspec_cli("check", "--strict", "specs/model1.ms")
    assert done.returncode == 1
    assert "specs/model1.ms:6:1: error: dense and dense_1 have no activation" in done.stderr
    assert "warning:" not in done.stderr
    clean = write(tmp_path, "dense 10 softmax in 4\n")
    assert modelspec_cli("check", "--strict", clean).returncode == 0


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["check"], ["fmt"], ["check", "--bogus", "specs/model1.ms"],
    ["check", "--width", "abc", "specs/model1.ms"], ["check", "--width", "15", "specs/model1.ms"],
    ["check", "--width", "0", "specs/model1.ms"],
], ids=lambda a: " ".join(a) or "no arguments")
def test_usage_errors_exit_2(args):
    done = modelspec_cli(*args)
    assert done.returncode == 2, done.stderr
    assert "usage: modelspec" in done.stderr
    assert "Traceback" not in done.stderr


def test_narrowest_width_is_accepted():
    assert modelspec_cli("check", "--width", 16, "specs/model1.ms").returncode == 0


def test_check_never_imports_a_framework():
    code = (
        "import sys\n"
        "import modelspec as ms\n"
        "from modelspec.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    ms.check(ms.parse(path)).summary()\n"
        "assert main(['check', '--json', *sys.argv[1:]]) == 0\n"
        "assert main(['check', *sys.argv[1:]]) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'torch'))\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *map(str, SPEC_FILES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_check_reads_standard_input_for_a_dash():
    import subprocess
    import sys

    good = subprocess.run([sys.executable, "-m", "modelspec", "check", "-"], input="dense 10 softmax in 4\n",
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and 'Model: "sequential"' in good.stdout
    bad = subprocess.run([sys.executable, "-m", "modelspec", "check", "-"], input="dense 0 in 4\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[0] == "<stdin>:1:7: error: the number of units must be at least 1; received 0"
