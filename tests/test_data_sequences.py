"""Integer inputs (token ids) in the data and the model API: ids checked against the
vocabulary with the first bad one's sample and step, the digits served as the spec asks
(`input 64 int`: pixel intensities as ids; `input 8x8`: 8 rows of 8 values), integer
columns of .npz and .csv files kept integer, and --scale refused for ids."""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec import data
from modelspec.data import DataError
from modelspec.backends.numpy import NumpyBackend
from modelspec.model import Model, check_x

from corpus import ROOT, modelspec_cli

TOKENS = "model tok\ninput 6 int\nembedding 10 4\nglobalavgpool1d\ndense 3 softmax\n" \
         "loss sparse_categorical_crossentropy\nmetrics accuracy\n"


def _report(text: str):
    return ms.check(ms.parse(text))


def _unbuilt_model(text: str) -> Model:
    """A Model whose engine is never reached: fit, evaluate and predict check x first."""
    spec = ms.parse(text)
    return Model(spec, ms.check(spec), NumpyBackend(), None, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The model API


def test_ids_come_back_as_contiguous_int32_from_ints_or_whole_floats():
    ints = np.arange(12, dtype=np.int64).reshape(6, 2)[:, ::-1]  # not contiguous
    out = check_x(ints, (2,), dtype="int32", id_limit=12)
    assert out.dtype == np.int32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ints)
    floats = check_x(np.array([[0.0, 3.0], [11.0, 7.0]]), (2,), dtype="int32", id_limit=12)
    assert floats.dtype == np.int32
    np.testing.assert_array_equal(floats, [[0, 3], [11, 7]])


@pytest.mark.parametrize("x, message", [
    ([[1, 2, 3], [4, 10, 5]], "x holds the id 10 at sample 1, step 1; expected ids in [0, 10)"),
    ([[1, 2, 3], [4, 5, -1]], "x holds the id -1 at sample 1, step 2; expected ids in [0, 10)"),
    ([[1, 2.5, 3], [4, 5, 6]], "x holds 2.5 at sample 0, step 1; the model's input is integer token ids: "
                               "expected whole numbers in [0, 10)"),
    ([[1, 2, 3], [np.nan, 5, 6]], "x holds nan at sample 1, step 0"),
    ([[99, 2, 3], [4, 5, 12]], "x holds the id 99 at sample 0, step 0"),  # the first, in sample order
])
def test_a_bad_id_names_its_value_sample_step_and_the_range(x, message):
    with pytest.raises(ValueError) as caught:
        check_x(np.array(x), (3,), dtype="int32", id_limit=10)
    assert str(caught.value).startswith(message)
    assert "the embedding's vocabulary of 10" in str(caught.value)


def test_ids_of_several_axes_name_the_position():
    x = np.zeros((2, 3, 4), np.int32)
    x[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"the id 7 at sample 1, position \(2, 3\)"):
        check_x(x, (3, 4), dtype="int32", id_limit=5)


def test_float_inputs_are_unchanged():
    x = np.array([[0.5, 2.0]], np.float64)
    out = check_x(x, (2,))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.5, 2.0]])


def test_the_smallest_vocabulary_bounds_the_ids():
    spec = ms.parse("input 4 int\ne1 = embedding 10 4\ne2 = embedding 7 4 from=in\nadd e1 e2\n"
                    "globalmaxpool1d\ndense 2 softmax\n")
    assert spec.id_limit == 7
    model = Model(spec, ms.check(spec), NumpyBackend(), None, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"the id 7 at sample 0, step 3; expected ids in \[0, 7\)"):
        model.predict([[0, 1, 6, 7]])


@pytest.mark.parametrize("call", ["fit", "evaluate", "predict", "validation"])
def test_fit_evaluate_predict_and_validation_data_check_the_ids_before_any_step(call):
    model = _unbuilt_model(TOKENS)
    good, bad = np.ones((4, 6), np.int32), np.ones((4, 6), np.int32)
    bad[2, 4] = 10
    y = np.zeros(4, np.int64)
    run = {"fit": lambda: model.fit(bad, y, verbose=0), "evaluate": lambda: model.evaluate(bad, y),
           "predict": lambda: model.predict(bad),
           "validation": lambda: model.fit(good, y, validation_data=(bad, y), verbose=0)}[call]
    what = "validation x" if call == "validation" else "x"
    with pytest.raises(ValueError, match=rf"^{what} holds the id 10 at sample 2, step 4; expected ids in \[0, 10\)"):
        run()


# ---------------------------------------------------------------------------------------
# The digits, served as the spec asks


def test_input_64_int_gets_sklearns_pixel_intensities_as_ids():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = data.load("digits")
    arrays = data.prepare(ds, _report("input 64 int\nembedding 17 4\nflatten\ndense 10 softmax"),
                          "sparse_categorical_crossentropy")
    assert arrays.x_train.dtype == np.int32 and arrays.x_train.shape == (1437, 64)
    assert arrays.x_test.dtype == np.int32 and arrays.x_test.shape == (360, 64)
    # the very values of digits.data (whole numbers 0-16), unscaled, in the split's rows
    np.testing.assert_array_equal(arrays.x_train, digits.data[ds.train_rows])
    np.testing.assert_array_equal(arrays.x_test, digits.data[ds.test_rows])
    np.testing.assert_array_equal(arrays.y_test, digits.target[ds.test_rows])
    assert arrays.x_train.min() == 0 and arrays.x_train.max() == 16


def test_input_8x8_gets_each_image_as_8_rows_of_8_scaled_values():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = data.load("digits")
    arrays = data.prepare(ds, _report("input 8x8\nconv1d 4 3 relu\nflatten\ndense 10 softmax"),
                          "sparse_categorical_crossentropy")
    assert arrays.x_train.dtype == np.float32 and arrays.x_train.shape == (1437, 8, 8)
    # row t of sample i is the image's row t, divided by 16 as float digits are
    np.testing.assert_array_equal(arrays.x_test, (digits.images[ds.test_rows] / 16).astype(np.float32))


def test_a_vocabulary_smaller_than_the_digits_names_the_first_pixel_in_sklearns_order():
    from sklearn.datasets import load_digits

    flat = load_digits().data
    first = np.argwhere(flat >= 10)[0]  # the first pixel of 10 or more, in sample then step order
    with pytest.raises(DataError) as caught:
        data.prepare(data.load("digits"), _report("input 64 int\nembedding 10 4\nflatten\ndense 10 softmax"),
                     "sparse_categorical_crossentropy")
    assert str(caught.value) == (f"digits holds the id {int(flat[tuple(first)])} at sample {first[0]}, step "
                                 f"{first[1]}; expected ids in [0, 10), the embedding's vocabulary of 10")


# ---------------------------------------------------------------------------------------
# Files: integer columns stay integer


def test_npz_integers_stay_exact_beyond_float32(tmp_path):
    big = 2**24 + 1  # float32 would make it 2**24
    x = np.full((10, 3), big, np.int64)
    np.savez(tmp_path / "ids.npz", x_train=x, y_train=np.arange(10) % 2)
    ds = data.load(tmp_path / "ids.npz")
    assert ds.x_train.dtype == np.int64
    arrays = data.prepare(ds, _report(f"input 3 int\nembedding {big + 1} 2\nflatten\ndense 2 softmax"),
                          "sparse_categorical_crossentropy")
    assert arrays.x_train.dtype == np.int32 and (arrays.x_train == big).all()


def test_csv_of_whole_numbers_reads_as_integers_and_floats_stay_float(tmp_path):
    (tmp_path / "ids.csv").write_text("a,b,label\n" + "".join(f"{i % 5},{(i * 3) % 5},{i % 2}\n" for i in range(10)))
    ds = data.load(tmp_path / "ids.csv")
    assert ds.x_train.dtype == np.int64
    arrays = data.prepare(ds, _report("input 2 int\nembedding 5 2\nflatten\ndense 2 softmax"),
                          "sparse_categorical_crossentropy")
    assert arrays.x_train.dtype == np.int32
    every = np.empty((10, 2), np.int32)
    every[ds.train_rows], every[ds.test_rows] = arrays.x_train, arrays.x_test
    np.testing.assert_array_equal(every, [[i % 5, (i * 3) % 5] for i in range(10)])
    # a float spec reads the same file as float32, divided by the inferred scale (the largest value, 4)
    floats = data.prepare(ds, _report("input 2\ndense 2 softmax"), "sparse_categorical_crossentropy")
    assert floats.x_train.dtype == np.float32
    np.testing.assert_array_equal(floats.x_train * 4, arrays.x_train)


def test_csv_fractions_on_an_int_input_name_the_row_in_the_file(tmp_path):
    rows = [f"{i % 5},1,{i % 2}" for i in range(10)]
    rows[7] = "2,0.5,1"  # sample 7 in the file's order, whatever part the split puts it in
    (tmp_path / "f.csv").write_text("\n".join(rows) + "\n")
    ds = data.load(tmp_path / "f.csv")
    assert ds.x_train.dtype == np.float32
    with pytest.raises(DataError, match=r"f\.csv holds 0\.5 at sample 7, step 1; the model's input is integer "
                                        r"token ids: expected whole numbers in \[0, 5\)"):
        data.prepare(ds, _report("input 2 int\nembedding 5 2\nflatten\ndense 2 softmax"),
                     "sparse_categorical_crossentropy")


def test_an_npz_with_its_own_test_set_names_the_array(tmp_path):
    x_test = np.ones((4, 3), np.int32)
    x_test[3, 0] = 9
    np.savez(tmp_path / "own.npz", x_train=np.ones((6, 3), np.int32), y_train=np.arange(6) % 2,
             x_test=x_test, y_test=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"own\.npz's x_test holds the id 9 at sample 3, step 0"):
        data.prepare(data.load(tmp_path / "own.npz"), _report("input 3 int\nembedding 4 2\nflatten\ndense 2 softmax"),
                     "sparse_categorical_crossentropy")


# ---------------------------------------------------------------------------------------
# The command line: one line on stderr, exit 1, before any model is built


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tok.ms").write_text(TOKENS)
    x = np.tile(np.arange(6, dtype=np.int64), (20, 1)) % 10
    x[13, 5] = 12
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(20) % 3)
    np.save(tmp_path / "bad.npy", x[10:14])
    return tmp_path


def _one_line_error(done) -> str:
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    return done.stderr


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_train_and_evaluate_name_the_bad_id(files, command):
    extra = ["--out", files / "out"] if command == "train" else ["--weights", files / "none.safetensors"]
    err = _one_line_error(modelspec_cli(command, files / "tok.ms", "--data", files / "bad.npz", *extra, cwd=files))
    assert err == (f"modelspec: error: {files / 'bad.npz'} holds the id 12 at sample 13, step 5; expected ids in "
                   "[0, 10), the embedding's vocabulary of 10\n")
    assert not (files / "out").exists()


def test_cli_predict_names_the_bad_id(files):
    err = _one_line_error(modelspec_cli("predict", files / "tok.ms", "--weights", files / "none.safetensors",
                                        "--input", files / "bad.npy", cwd=files))
    assert err.startswith(f"modelspec: error: {files / 'bad.npy'} holds the id 12 at sample 3, step 5; expected ids")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_refuses_scale_on_token_ids(files, command):
    extra = ["--out", files / "out"] if command == "train" else ["--weights", files / "none.safetensors"]
    err = _one_line_error(modelspec_cli(command, files / "tok.ms", "--scale", "16", *extra, cwd=files))
    assert err == ("modelspec: error: --scale 16: the spec's input is integer token ids (`input ... int` at line 2), "
                   "which are never scaled; drop --scale\n")


def test_the_digits_tokens_spec_reads_the_digits_as_ids():
    spec = ms.parse(ROOT / "specs" / "digits_tokens.ms")
    assert spec.input_dtype == "int32" and spec.input_shape == (64,) and spec.id_limit == 17
    arrays = data.prepare(data.load("digits"), ms.check(spec), spec.loss.name)
    assert arrays.x_train.dtype == np.int32 and arrays.x_train.max() == 16


# ---------------------------------------------------------------------------------------
# The tokens benchmark's hand-written loops do Keras's math (benchmarks/train_epoch.py)


def test_the_tokens_benchmarks_hand_written_loops_train_as_keras_does():
    import sys

    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_epoch as te
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from modelspec.backends.keras.engine import keras

    x, y = te.data(te.TOKENS)
    x, y = x[:96], y[:96]  # three steps: the ids repeat within a batch, so Adam's sparse rule matters
    weights = te.initial_weights(te.TOKENS)
    order = np.random.default_rng(1).permutation(len(x))
    keras_epoch = te.CONTENDERS["tokens"][te.HAND["keras"]](x, y, weights)
    expected, accuracy = keras_epoch(order)
    for name in (te.HAND["numpy"], te.HAND["torch"]):
        loss, acc = te.CONTENDERS["tokens"][name](x, y, weights)(order)
        assert loss == pytest.approx(expected, rel=2e-6), name
        assert acc == pytest.approx(accuracy, rel=1e-6)  # Keras keeps it in float32
    keras.backend.clear_session()
