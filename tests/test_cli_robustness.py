"""No input makes `modelspec check` print a traceback: hostile files give exit 1 and
compiler-style errors, absurd but valid sizes are reported, usage errors give exit 2."""

from __future__ import annotations

import random

import pytest

from corpus import modelspec_cli


def check(tmp_path, content: str | bytes, *extra: str):
    path = tmp_path / "spec.ms"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    done = modelspec_cli("check", *extra, "spec.ms", cwd=tmp_path)
    assert "Traceback" not in done.stderr + done.stdout
    assert "internal error" not in done.stderr
    return done


def garbage(size: int, alphabet: str) -> str:
    rng = random.Random(size)
    return "".join(rng.choice(alphabet) for _ in range(size))


@pytest.mark.parametrize("content, first_error", [
    ("", "spec.ms:1:1: error: the spec has no layers"),
    ("# only a comment\n", "spec.ms:1:1: error: the spec has no layers"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "spec.ms:1:1: error: expected UTF-8 text; received the byte 0x89"),
    (bytes(range(256)), "spec.ms:2:118: error: expected UTF-8 text; received the byte 0x80"),
    (b"input 3\ndense\x00 3\n", "spec.ms:2:6: error: expected text; received a NUL byte"),
    ("dense 99999999999", "spec.ms:1:1: error: the model has no input shape"),
    ("dense " + "9" * 5000 + " in 3", "spec.ms:1:7: error: the number of units is too large to be a number"),
], ids=["empty", "comment only", "png", "all bytes", "nul", "huge units, no input", "5000 digits"])
def test_invalid_files_exit_1(tmp_path, content, first_error):
    done = check(tmp_path, content)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(first_error)


@pytest.mark.parametrize("alphabet", [
    "abcdefghij =(),;.x0123456789\"'#\n",
    "".join(chr(c) for c in range(32, 127)) + "\n\n\n",
    "(",
], ids=["spec-like", "printable", "open parens"])
def test_a_megabyte_of_garbage(tmp_path, alphabet):
    done = check(tmp_path, garbage(1_000_000, alphabet))
    assert done.returncode == 1
    assert done.stderr.startswith("spec.ms:")
    assert len(done.stderr) < 100_000  # at most 100 errors are shown


def test_a_megabyte_of_balanced_parentheses(tmp_path):
    done = check(tmp_path, "input 3\ndense " + "(" * 250_000 + "1" + ")" * 250_000 + "\n")
    assert done.returncode == 1
    assert done.stderr.startswith("spec.ms:2:7: error: the number of units must be a whole number")


def test_a_ten_thousand_layer_spec(tmp_path):
    done = check(tmp_path, "input 32\n" + "dense 32 relu he_normal\n" * 10_000, "--width", "88")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" (Dense) ") == 10_000
    assert f" Total params: {10_000 * (32 * 32 + 32):,} (" in done.stdout


def test_ten_thousand_errors(tmp_path):
    done = check(tmp_path, "input 3\n" + "dense 0\n" * 10_000)
    assert done.returncode == 1
    assert done.stderr.count(": error: ") == 100
    assert done.stderr.rstrip().endswith("... and 9900 more")


def test_absurd_sizes_are_reported(tmp_path):
    done = check(tmp_path, "dense 99999999999 in 784\n", "--width", "88")
    assert done.returncode == 0
    total = 784 * 99_999_999_999 + 99_999_999_999
    assert f" Total params: {total:,} (285.58 TB)" in done.stdout
    assert "warning: the model has 78,499,999,999,215 parameters" in done.stderr
    assert "hint: check the sizes: is a number mistyped?" in done.stderr


def test_sizes_beyond_a_float(tmp_path):
    done = check(tmp_path, "dense 1" + "0" * 400 + " in 784\n", "--json")
    assert done.returncode == 0
    assert '"total_params": 785' + "0" * 400 in done.stdout


def test_a_directory(tmp_path):
    done = modelspec_cli("check", tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"{tmp_path}: error: cannot read the spec: Is a directory"


def test_a_missing_file(tmp_path):
    done = modelspec_cli("check", "nowhere.ms", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "nowhere.ms: error: cannot read the spec: No such file or directory"
    assert "Traceback" not in done.stderr


def test_fmt_on_hostile_input(tmp_path):
    (tmp_path / "bin.ms").write_bytes(bytes(range(256)))
    done = modelspec_cli("fmt", "bin.ms", "missing.ms", tmp_path, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count(": error: ") == 3


def test_schema_is_json():
    import json

    done = modelspec_cli("schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["title"] == "Spec" and "layers" in schema["properties"]
