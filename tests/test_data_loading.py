"""modelspec.data: the digits and their split, MNIST's IDX files and mnist.npz, .npz and .csv
files, and preparing arrays for a model (scale, reshape, label encoding)."""

from __future__ import annotations

import gzip
import struct
import zipfile

import numpy as np
import pytest

import modelspec as ms
from modelspec import data
from modelspec.data import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written from the format's description: 0x00 0x00, type 0x08 (unsigned
    byte), the number of dimensions, each size as a big-endian uint32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": np.arange(n_train, dtype=np.uint8) % 10,
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": np.arange(n_test, dtype=np.uint8) % 10}


def write_idx(folder, arrays, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.MNIST_IDX.items():
        raw = idx_bytes(arrays[key])
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def no_mnist(tmp_path, monkeypatch):
    """No MNIST anywhere: $MODELSPEC_DATA unset, Keras's cache an empty folder."""
    monkeypatch.delenv("MODELSPEC_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


# ---------------------------------------------------------------------------------------
# The digits


def test_digits_are_sklearns_with_a_stratified_20_percent_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = data.load("digits")
    # 1,797 images: 1,437 for training, 360 (ceil of 20%) for testing; pixels 0-16
    assert ds.x_train.shape == (1437, 8, 8) and ds.x_test.shape == (360, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.scale == 16.0 and ds.classes == 10 and ds.x_train.max() == 16
    # the split is exactly the one sklearn's documented call makes
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.2,
                                            stratify=digits.target, random_state=0)
    np.testing.assert_array_equal(ds.x_test, x_test)
    np.testing.assert_array_equal(ds.y_test, y_test)
    # stratified: each class keeps its share (within one image) in the test set
    np.testing.assert_allclose(np.bincount(ds.y_test), np.bincount(digits.target) * 0.2, atol=1)
    assert "stratified 20%" in ds.split


def test_the_split_is_the_same_every_time():
    a, b = data.load("digits"), data.load("digits")
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_an_unknown_name_suggests_the_close_one():
    with pytest.raises(DataError, match="unknown data 'digit'.*did you mean 'digits'"):
        data.load("digit")


# ---------------------------------------------------------------------------------------
# IDX files and MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_read_idx_images_and_labels(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images)
    assert raw[:4] == b"\x00\x00\x08\x03"  # the magic number of MNIST's image files, 2051
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    np.testing.assert_array_equal(data.read_idx(path), images)
    labels = np.array([7, 2, 1], dtype=np.uint8)
    (tmp_path / "y").write_bytes(idx_bytes(labels))
    assert idx_bytes(labels)[:4] == b"\x00\x00\x08\x01"  # 2049
    np.testing.assert_array_equal(data.read_idx(tmp_path / "y"), labels)


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=">f4")
    (tmp_path / "f").write_bytes(bytes([0, 0, 0x0D, 2]) + struct.pack(">2I", 2, 2) + values.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f"), values)


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 not idx", "not an IDX file: it starts with 0x504b0304"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated"),
    (bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc", "holds 3 bytes of values, but its header says (5,)"),
    (b"", "not an IDX file: it starts with 0xnothing"),
])
def test_read_idx_rejects_damaged_files(tmp_path, content, message):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.read_idx(tmp_path / "bad")


def test_read_idx_rejects_a_damaged_gzip(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((4, 2), np.uint8)))[:-12])
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_mnist_from_idx_files_in_data_dir(no_mnist, gz):
    arrays = fake_mnist()
    write_idx(no_mnist / "mnist", arrays, gz)
    ds = data.load("mnist", data_dir=no_mnist / "mnist")
    assert ds.name == "mnist" and ds.scale == 255.0 and "own test set" in ds.split
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_mnist_idx_with_dotted_names(no_mnist):
    arrays = fake_mnist()
    folder = no_mnist / "dotted"
    folder.mkdir()
    for key, stem in data.MNIST_IDX.items():
        (folder / stem.replace("-idx", ".idx")).write_bytes(idx_bytes(arrays[key]))
    assert len(data.load("mnist", data_dir=folder).x_test) == 10


def test_mnist_npz_in_keras_cache(no_mnist):
    arrays = fake_mnist(n_train=20, n_test=5)
    cache = no_mnist / "keras_home" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", **arrays)
    ds = data.load("mnist")
    assert ds.x_train.shape == (20, 28, 28) and ds.x_test.shape == (5, 28, 28)
    assert ds.name == "mnist" and ds.scale == 255.0


def test_mnist_search_order_is_data_dir_then_env_then_keras_cache(no_mnist, monkeypatch):
    for name, n in (("given", 11), ("env", 12), ("keras_home/datasets", 13)):
        (no_mnist / name).mkdir(parents=True)
        np.savez(no_mnist / name / "mnist.npz", **fake_mnist(n_train=n))
    monkeypatch.setenv("MODELSPEC_DATA", str(no_mnist / "env"))
    assert len(data.load("mnist", data_dir=no_mnist / "given").x_train) == 11
    assert len(data.load("mnist").x_train) == 12
    monkeypatch.delenv("MODELSPEC_DATA")
    assert len(data.load("mnist").x_train) == 13


def test_missing_mnist_says_where_to_put_it(no_mnist, monkeypatch):
    monkeypatch.setenv("MODELSPEC_DATA", str(no_mnist / "env"))
    with pytest.raises(DataError) as e:
        data.load("mnist")
    message = str(e.value)
    assert message.startswith("MNIST not found: put Keras's mnist.npz, or the four IDX files")
    assert str(no_mnist / "env") in message and str(no_mnist / "keras_home" / "datasets") in message
    assert "\n" not in message


def test_some_but_not_all_idx_files(no_mnist):
    write_idx(no_mnist / "m", fake_mnist(), gz=False)
    (no_mnist / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="but not t10k-labels-idx1-ubyte"):
        data.load("mnist", data_dir=no_mnist / "m")


def test_missing_data_dir(no_mnist):
    with pytest.raises(DataError, match="--data-dir .*: no such directory"):
        data.load("mnist", data_dir=no_mnist / "nowhere")


# ---------------------------------------------------------------------------------------
# .npz and .csv files


def test_npz_with_its_own_test_set(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((6, 2, 2)), y_train=np.arange(6) % 2,
             x_test=np.zeros((3, 2, 2)), y_test=[0, 1, 1])
    ds = data.load(tmp_path / "d.npz")
    assert ds.x_train.shape == (6, 2, 2) and ds.x_test.shape == (3, 2, 2)
    assert ds.split == "the file's own test set" and ds.scale == 1.0


def test_npz_without_test_arrays_is_split_and_accepts_one_hot_labels(tmp_path):
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x_train=np.random.default_rng(0).integers(0, 256, (20, 3)),
             y_train=np.eye(4)[y])
    ds = data.load(tmp_path / "d.npz")
    assert len(ds.x_train) == 16 and len(ds.x_test) == 4 and ds.classes == 4
    assert ds.scale == 255.0  # 8-bit values


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "is not a valid .npz file: it is not a zip archive"),
    (b"PK\x03\x04" + b"\0" * 40, "is not a valid .npz file"),
])
def test_corrupt_npz(tmp_path, content, message):
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.load(tmp_path / "bad.npz")


def test_npz_with_a_damaged_member(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((6, 2)), y_train=np.arange(6) % 2)
    with zipfile.ZipFile(tmp_path / "d.npz") as z:
        member = z.read("x_train.npy")
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:
        z.writestr("x_train.npy", member[:-8])
        z.writestr("y_train.npy", member)
    with pytest.raises(DataError, match="cut.npz is not a valid .npz file"):
        data.load(tmp_path / "cut.npz")


def test_npz_refuses_pickled_arrays(tmp_path):
    np.savez(tmp_path / "p.npz", x_train=np.array([{"a": 1}] * 5, dtype=object), y_train=np.zeros(5))
    with pytest.raises(DataError, match="not a valid .npz file.*allow_pickle=False"):
        data.load(tmp_path / "p.npz")


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 2)), y=np.zeros(5))
    with pytest.raises(DataError, match="has no array x_train.*it holds x, y"):
        data.load(tmp_path / "d.npz")


def test_npz_length_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((5, 2)), y_train=np.zeros(4))
    with pytest.raises(DataError, match="x_train has 5 samples but y_train has 4 labels"):
        data.load(tmp_path / "d.npz")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="nope.npz: no such file"):
        data.load(tmp_path / "nope.npz")
    (tmp_path / "d.txt").write_text("1,2")
    with pytest.raises(DataError, match="expected digits, diabetes, mnist, a .npz file or a .csv file"):
        data.load(tmp_path / "d.txt")


def _csv(tmp_path, text: str):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


def test_csv_with_a_label_header_column(tmp_path):
    rows = "\n".join(f"{i % 3},{i},{2 * i}" for i in range(10))
    ds = data.load(_csv(tmp_path, "label,a,b\n" + rows))
    assert ds.classes == 3 and ds.sample_shape == (2,)
    assert sorted(ds.x_train[:, 0].tolist() + ds.x_test[:, 0].tolist()) == list(range(10))


def test_csv_without_header_takes_the_last_column(tmp_path):
    rows = "\n".join(f"{i},{2 * i},{i % 2}" for i in range(10))
    ds = data.load(_csv(tmp_path, rows))
    assert ds.classes == 2 and ds.sample_shape == (2,)
    assert set((ds.x_train[:, 1] / 2 % 2).tolist()) == {0, 1}  # x[:,0] = i, label = i % 2


def test_csv_label_column_by_name_and_index(tmp_path):
    rows = "\n".join(f"{i},{i % 2},{i % 5}" for i in range(20))
    path = _csv(tmp_path, "a,two,five\n" + rows)
    assert data.load(path, label_column="two").classes == 2
    assert data.load(path, label_column="1").classes == 2
    assert data.load(path, label_column="-1").classes == 5
    with pytest.raises(DataError, match="no column named 'six'.*a, two, five"):
        data.load(path, label_column="six")
    with pytest.raises(DataError, match="3 columns; --label-column 3 is out of range"):
        data.load(path, label_column="3")


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,x\n", "not a CSV file of numbers"),
    ("a,b,c\n1,2\n", "the header names 3 columns but the rows have 2"),
    ("1,2\n1,2,3\n", "line 2 has 3 columns, but line 1 has 2; every row needs the same number of columns"),
    ("a,b\n", "holds no rows"),
])
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        data.load(_csv(tmp_path, text))


# ---------------------------------------------------------------------------------------
# Preparing arrays for a model


def report(text: str):
    return ms.check(ms.parse(text))


def test_prepare_scales_reshapes_and_one_hot_encodes():
    ds = data.load("digits")
    arrays = data.prepare(ds, report("input 64; dense 10 softmax"), "categorical_crossentropy")
    assert arrays.x_train.shape == (1437, 64) and arrays.x_train.dtype == np.float32
    assert arrays.x_train.min() == 0.0 and arrays.x_train.max() == 1.0
    np.testing.assert_array_equal(arrays.x_test[0], ds.x_test[0].reshape(64) / 16)
    assert arrays.y_train.shape == (1437, 10) and arrays.y_train.dtype == np.float32
    np.testing.assert_array_equal(arrays.y_train.argmax(1), ds.y_train)
    assert (arrays.y_train.sum(1) == 1).all()


def test_prepare_sparse_labels_and_a_channel_axis():
    ds = data.load("digits")
    arrays = data.prepare(ds, report("input 8x8x1; flatten; dense 10 softmax"), "sparse_categorical_crossentropy")
    assert arrays.x_train.shape == (1437, 8, 8, 1)
    assert arrays.y_train.dtype == np.int64 and arrays.y_train.shape == (1437,)


def test_prepare_scale_override():
    arrays = data.prepare(data.load("digits"), report("input 8x8; flatten; dense 10 softmax"),
                          "categorical_crossentropy", scale=32)
    assert arrays.x_train.max() == 0.5


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError) as e:
        data.prepare(data.load("digits"), report("dense 10 softmax in 784"), "categorical_crossentropy")
    assert str(e.value) == ("digits has samples of shape (8, 8) (64 values), but the spec's input is "
                            "(None, 784) (784 values); the shapes must match, or hold the same number of values")


@pytest.mark.parametrize("spec, loss, message", [
    ("input 64; dense 8 softmax", "categorical_crossentropy", "10 classes .* output has 8 unit"),
    ("input 64; dense 1 sigmoid", "binary_crossentropy", "binary_crossentropy on digits, which has 10 classes"),
    ("input 64; dense 8", "mse", "10 classes .* output has 8 unit"),
    ("input 64; dense 10 softmax", None, "the spec has no loss"),
])
def test_labels_that_do_not_fit_the_loss(spec, loss, message):
    with pytest.raises(DataError, match=message):
        data.prepare(data.load("digits"), report(spec), loss)


def test_binary_loss_on_two_classes_is_a_column_of_0_and_1(tmp_path):
    rows = "\n".join(f"{i},{i % 2}" for i in range(10))
    arrays = data.prepare(data.load(_csv(tmp_path, "x,label\n" + rows)), report("input 1; dense 1 sigmoid"),
                          "binary_crossentropy")
    assert arrays.y_train.shape == (8, 1) and set(arrays.y_train[:, 0].tolist()) == {0.0, 1.0}


def test_class_ids_on_other_losses_are_one_hot_rows_or_a_column_of_values():
    ds = data.load("digits")
    one_hot = data.prepare(ds, report("input 64; dense 10"), "mse")
    np.testing.assert_array_equal(one_hot.y_train.argmax(axis=1), ds.y_train)
    assert one_hot.y_train.sum() == len(ds.y_train)
    column = data.prepare(ds, report("input 64; dense 1"), "mae")  # whole numbers to regress on
    np.testing.assert_array_equal(column.y_train[:, 0], ds.y_train.astype(np.float32))


def test_real_targets_from_csv_and_npz_are_kept_as_values(tmp_path):
    rows = "\n".join(f"{i},{i * 0.5 - 1.25}" for i in range(20))
    ds = data.load(_csv(tmp_path, "x,label\n" + rows))
    assert ds.regression and ds.y_train.dtype == np.float32 and "a random 20% test split" in ds.split
    arrays = data.prepare(ds, report("input 1; dense 1"), "mse", scale=1.0)
    np.testing.assert_array_equal(arrays.y_train[:, 0], arrays.x_train[:, 0] * 0.5 - 1.25)
    # two targets per sample from an .npz: one output unit per target
    x = np.arange(30, dtype=np.float32).reshape(15, 2)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=x * 2 + 0.5)
    arrays = data.prepare(data.load(tmp_path / "r.npz"), report("input 2; dense 2"), "huber", scale=1.0)
    np.testing.assert_array_equal(arrays.y_train, arrays.x_train * 2 + 0.5)
    with pytest.raises(DataError, match=r"2 real target\(s\) per sample, but the model's output has 1 unit"):
        data.prepare(data.load(tmp_path / "r.npz"), report("input 2; dense 1"), "mse")
    with pytest.raises(DataError, match=r"real-valued targets \(such as [0-9.]+\), but categorical_crossentropy "
                                        "takes class ids .* use loss mse, mae or huber"):
        data.prepare(data.load(tmp_path / "r.npz"), report("input 2; dense 2 softmax"), "categorical_crossentropy")


def test_diabetes_is_sklearns_raw_regression_set():
    from sklearn.datasets import load_diabetes

    ds, sk = data.load("diabetes"), load_diabetes(scaled=False)
    assert ds.regression and len(ds.x_train) + len(ds.x_test) == 442 and ds.sample_shape == (10,)
    assert len(ds.x_test) == 89 and ds.scale == 1.0
    np.testing.assert_allclose(sorted(np.concatenate([ds.y_train, ds.y_test])), sorted(sk.target))
    assert ds.x_train[:, 1].min() == 1 and ds.x_train[:, 1].max() == 2  # sex as measured, not standardised


@pytest.mark.parametrize("values, scale", [([0, 0.5, 1], 1.0), ([-1, 3], 1.0), ([0, 16], 16.0),
                                           ([0, 255], 255.0), ([0, 1000], 1000.0)])
def test_infer_scale(values, scale):
    assert data.infer_scale(np.array(values, np.float32)) == scale


def test_load_inputs(tmp_path):
    np.save(tmp_path / "one.npy", np.ones((8, 8)))
    assert data.load_inputs(tmp_path / "one.npy", (8, 8)).shape == (1, 8, 8)  # one sample
    np.save(tmp_path / "row.npy", np.ones(64))
    assert data.load_inputs(tmp_path / "row.npy", (64,)).shape == (1, 64)
    np.save(tmp_path / "many.npy", np.ones((5, 8, 8)))
    assert data.load_inputs(tmp_path / "many.npy", (8, 8)).shape == (5, 8, 8)
    (tmp_path / "x.csv").write_text("a,label,b\n1,9,2\n3,9,4\n")
    np.testing.assert_array_equal(data.load_inputs(tmp_path / "x.csv", (2,)), [[1, 2], [3, 4]])
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="bad.npy is not a valid .npy file"):
        data.load_inputs(tmp_path / "bad.npy", (2,))
    with pytest.raises(DataError, match="expected a .npy or a .csv file"):
        data.load_inputs(tmp_path / "x.txt", (2,))


@pytest.mark.parametrize("content, message", [
    ("1,2,3\n4,5\n6,7,8\n", "{path}: line 2 has 2 columns, but line 1 has 3; every row needs the same number of columns"),
    ("a,b,label\n1,2,0\n3,4,5,1\n", "{path}: line 3 has 4 columns, but line 1 has 3; every row needs the same number of columns"),
    ("1,2,0\nnan,2,1\n" * 5, "{path}: NaN or infinite values in the samples"),
    ("1,2,0\n", "{path} has 1 sample; a 20% test split needs at least 5"),
])
def test_a_bad_csv_is_described_in_its_own_terms(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        data.load(str(path))
    assert str(caught.value) == message.format(path=path)
