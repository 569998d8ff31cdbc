"""Round trips: IR -> JSON -> IR, IR -> canonical text -> IR, and `modelspec fmt` on files."""

from __future__ import annotations

import os

import numpy as np
import pytest

import modelspec as ms
from corpus import SPEC_FILES, VARIED, modelspec_cli
from modelspec.cli import main
from modelspec.printer import to_text

CASES = [pytest.param(p, id=p.stem) for p in SPEC_FILES] + [
    pytest.param(text, id=name) for name, text in VARIED.items()]


@pytest.mark.parametrize("source", CASES)
def test_json_round_trip(source):
    spec = ms.parse(source)
    again = ms.Spec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.model_dump() == spec.model_dump()


@pytest.mark.parametrize("source", CASES)
def test_the_parser_builds_valid_nodes(source):
    """The parser skips pydantic's validation for speed; full validation must agree."""
    spec = ms.parse(source)
    assert ms.Spec.model_validate(spec.model_dump()).model_dump() == spec.model_dump()


@pytest.mark.parametrize("source", CASES)
def test_text_round_trip(source):
    spec = ms.parse(source)
    text = to_text(spec)
    assert ms.parse(text).model_dump() == spec.model_dump()
    assert to_text(ms.parse(text)) == text  # canonical text is a fixed point


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_fmt_keeps_meaning_and_comments(path):
    spec = ms.parse(path)
    formatted = to_text(spec, source=spec.source)
    assert ms.parse(formatted, name=path.stem) == spec
    comments = [line.strip() for line in spec.source.splitlines() if line.strip().startswith("#")]
    assert [line.strip() for line in formatted.splitlines() if line.strip().startswith("#")] == comments


def test_defaults_are_left_out_and_spellings_made_canonical():
    spec = ms.parse("dense 512 in 784 activation=linear glorot_uniform use_bias=true\n"
                    "dropout rate=0.5\nbatchnorm momentum=0.99 eps=0.001\nleaky_relu alpha=0.3\n"
                    "optimizer Adam lr=0.01\nloss mean_squared_error")
    assert to_text(spec) == ("model sequential\ninput 784\ndense 512\ndropout 0.5\nbatchnorm\nleaky_relu\n"
                             "optimizer adam learning_rate=0.01\nloss mse\n")


@pytest.mark.parametrize("written, printed", [
    ("rescale 1/255", "rescale 1/255"),
    ("rescale scale=1/127.5 offset=-1", "rescale 1/127.5 offset=-1.0"),
    ("rescale 0.00392156862745098", "rescale 1/255"),  # the same float
    ("rescale 0.5 offset=0.25", "rescale 0.5 offset=1/4"),  # whichever is shorter
    ("rescale -1/3", "rescale -1/3"),
    ("rescale 1/3.0", "rescale 1/3"),
    ("rescale 2/6", "rescale 1/3"),  # 2/6 is the float 1/3
    ("rescale 3/7", "rescale 0.42857142857142855"),
])
def test_fractions_print_back_as_the_same_float(written, printed):
    spec = ms.parse(f"input 4\n{written}")
    text = to_text(spec)
    assert text.splitlines()[-1] == printed
    again = ms.parse(text).layers[0]
    assert (again.scale, again.offset) == (spec.layers[0].scale, spec.layers[0].offset)  # bit for bit


def test_every_float_scale_reads_back_bit_for_bit():
    rng = np.random.default_rng(0)
    values = np.concatenate([1 / rng.integers(1, 10**6, 300), -1 / (rng.integers(1, 10**4, 300) + 0.5),
                             rng.uniform(-3, 3, 300), rng.uniform(0, 1e-9, 100)])
    for x in values.tolist():
        spec = ms.parse(f"input 4\nrescale {x!r} offset={-x!r}")
        again = ms.parse(to_text(spec)).layers[0]
        assert (again.scale, again.offset) == (x, -x), to_text(spec)


SOURCE_WITH_COMMENTS = """\
# a header comment
model commented   # the name
input 784

# before the first layer
dense 64   relu he_normal ; dense 10 softmax   # two on a line
# a comment at the end
"""


def test_fmt_keeps_comments_and_blank_lines_in_place():
    spec = ms.parse(SOURCE_WITH_COMMENTS)
    assert to_text(spec, source=spec.source) == """\
# a header comment
model commented  # the name
input 784

# before the first layer
dense 64 relu he_normal
dense 10 softmax  # two on a line
# a comment at the end
"""


def test_a_hash_in_a_string_is_not_a_comment():
    spec = ms.parse('input 3\ndense 3 name="#1"  # real\n')
    assert to_text(spec, source=spec.source) == 'model sequential\ninput 3\ndense 3 name="#1"  # real\n'


def test_names_that_need_quotes():
    spec = ms.parse('model "my model"\ninput 3\ndense 3 name="in"\ndense 2 name="a \\"quoted\\" name"\n')
    text = to_text(spec)
    assert 'model "my model"' in text and 'name="in"' in text
    assert ms.parse(text) == spec
    assert spec.layers[1].name == 'a "quoted" name'


# ---------------------------------------------------------------------------------------
# modelspec fmt on files


def test_fmt_check_exit_codes(tmp_path):
    canonical = tmp_path / "canonical.ms"
    canonical.write_text("model canonical\ninput 3\ndense 3\n")
    messy = tmp_path / "messy.ms"
    messy.write_text("dense 3   in 3 # note\n")
    invalid = tmp_path / "invalid.ms"
    invalid.write_text("dense 0 in 3\n")

    assert modelspec_cli("fmt", "--check", canonical).returncode == 0
    done = modelspec_cli("fmt", "--check", messy)
    assert done.returncode == 1
    assert f"{messy}: not in canonical form" in done.stderr
    assert messy.read_text() == "dense 3   in 3 # note\n"  # --check changes nothing
    done = modelspec_cli("fmt", "--check", invalid)
    assert done.returncode == 1
    assert f"{invalid}:1:7: error:" in done.stderr
    assert modelspec_cli("fmt", "--check", canonical, messy).returncode == 1


def test_fmt_rewrites_in_place(tmp_path):
    messy = tmp_path / "messy.ms"
    messy.write_text("# keep me\ndense 3   in 3 # note\n")
    done = modelspec_cli("fmt", messy)
    assert done.returncode == 0, done.stderr
    assert f"reformatted {messy}" in done.stderr
    assert messy.read_text() == "# keep me\nmodel messy\ninput 3\ndense 3  # note\n"
    assert modelspec_cli("fmt", "--check", messy).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.ms"]  # no temporary left behind


def test_fmt_replaces_the_file_atomically(tmp_path):
    messy = tmp_path / "messy.ms"
    messy.write_text("dense 3 in 3\n")
    before = os.stat(messy).st_ino
    assert main(["fmt", str(messy)]) == 0
    assert os.stat(messy).st_ino != before  # a new file renamed over the old one


def test_fmt_failing_to_write_leaves_the_file_intact(tmp_path, monkeypatch, capsys):
    messy = tmp_path / "messy.ms"
    messy.write_text("dense 3 in 3\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main(["fmt", str(messy)]) == 1
    assert messy.read_text() == "dense 3 in 3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.ms"]
    err = capsys.readouterr().err
    assert f"{messy}: error: cannot write: No space left on device" in err
    assert "internal error" not in err
