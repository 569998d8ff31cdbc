"""Data for the command line: what scikit-learn ships (the digits, the diabetes regression
set), MNIST from local files, .npz, .csv.

    ds = data.load("digits")                  # or "mnist", "diabetes", "file.npz", "file.csv"
    arrays = data.prepare(ds, report, "categorical_crossentropy", scale=1.0)

Nothing is downloaded. `load` returns a `Dataset` of raw values (pixels as stored: 0-16
for the digits, 0-255 for MNIST) with its targets: integer class ids, or real values
(float32) where a target is not a non-negative integer (regression). Where the data has no
test set (the digits, a single .npz pair, a .csv), the test set is 20% drawn with seed 0,
the split sklearn.model_selection.train_test_split(test_size=0.2, random_state=0) makes;
class ids are stratified (stratify=y), so every class keeps its share and every run is
scored on the same samples (data too small for that, with a class of one sample or more
classes than test samples, is split unstratified). The validation set is not made here: it
is the tail of the training set that Model.fit takes, as Keras does.

`prepare` makes the arrays a model takes: samples divided by the scale the caller chose
(1 where the spec scales its own input with `rescale` or `normalize`), reshaped to the
spec's input when their size fits (8x8 to `input 64`, 28x28 to `input 28x28x1`; the
digits' 8x8 images are already the 8 rows of 8 values that `input 8x8` reads as a
sequence); class ids one-hot for categorical cross-entropy and integer ids for the sparse
loss, real targets as a float32 column per output unit. A spec with integer inputs (`input
64 int`, token ids for an embedding) takes the samples unscaled, as int32, each a whole
number in [0, vocabulary) or a DataError naming the first that is not, where it is in the
data's own order (the digits' pixel intensities, 0 to 16, are such ids).

Samples keep their numbers as stored: a .npz's integer arrays stay integers, a .csv whose
sample values are all whole numbers is read as integers, anything else is float32; so ids
beyond float32's 2**24 stay exact.

Every problem is a DataError with a one-line message naming the file and what was
expected and received.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelspecError, one_line
from .shapes import tuple_text

TEST_FRACTION = 0.2
SPLIT_SEED = 0
BUILTIN = ("digits", "mnist", "diabetes")

# Keras caches MNIST here ($KERAS_HOME, default ~/.keras, then datasets/).
MNIST_NPZ = "mnist.npz"
MNIST_IDX = {  # array -> the file's stem, as published (also found with '.' before 'idx')
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}
# The IDX format's type codes (third byte of the magic number); values are big-endian.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CLASSIFICATION_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


class DataError(ModelspecError):
    """Data that cannot be loaded or does not fit the model; the message is one line."""


@dataclass
class Dataset:
    """Raw samples (float32, or an integer dtype for integer data, see `_samples`) and their
    targets, split into train and test: class ids (int64) or real values (float32,
    regression). `train_rows` and `test_rows` are the samples' positions in the data as
    loaded, where the test set was split off here (None where the data brought its own)."""

    name: str  # "digits", "mnist", or the file's path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float  # what brings the samples into [0, 1] (pixels), for a spec that does not scale them itself
    split: str  # where the test set came from, in words
    scale_why: str = ""  # where the scale comes from, in words
    train_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None

    @property
    def regression(self) -> bool:
        """Real targets rather than class ids."""
        return self.y_train.dtype.kind == "f"

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    @property
    def value_range(self) -> tuple[float, float]:
        """The training samples' smallest and largest raw value."""
        return float(self.x_train.min()), float(self.x_train.max())

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass
class Arrays:
    """What Model.fit and evaluate take: scaled, reshaped samples and encoded targets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ---------------------------------------------------------------------------------------
# Loading


def load(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, seed: int = SPLIT_SEED,
         label_column: str | None = None) -> Dataset:
    """`digits`, `diabetes`, `mnist` (from local files, see `find_mnist`), a .npz or a .csv file."""
    name = os.fspath(name_or_path)
    if name == "digits":
        return load_digits(seed)
    if name == "diabetes":
        return load_diabetes(seed)
    if name == "mnist":
        return load_mnist(data_dir)
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        import difflib

        close = difflib.get_close_matches(name, BUILTIN, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(f"unknown data '{name}': expected digits, diabetes, mnist, a .npz file or a .csv file{hint}")
    if not path.is_file():
        raise DataError(f"{name}: no such file" if not path.exists() else f"{name} is not a file")
    if suffix == ".npz":
        return load_npz(path, seed)
    return load_csv(path, seed, label_column)


def load_digits(seed: int = SPLIT_SEED) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, pixels 0-16, 10 classes)."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    return _split("digits", digits.images, digits.target, scale=16.0, seed=seed,
                  scale_why="the digits' pixels run from 0 to 16")


def load_diabetes(seed: int = SPLIT_SEED) -> Dataset:
    """scikit-learn's diabetes regression set: 442 patients, 10 features as measured (age in
    years, sex as 1 or 2, body mass index, blood pressure, six blood serum values), and a real
    target, a measure of disease progression a year later (25 to 346). The features are raw,
    on very different scales: a spec standardises them with `normalize`."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    data = sk_diabetes(scaled=False)
    return _split("diabetes", data.data, data.target.astype(np.float32), scale=1.0, seed=seed,
                  scale_why="the features as measured")


def load_npz(path: Path, seed: int = SPLIT_SEED) -> Dataset:
    """Arrays x_train, y_train and optionally x_test, y_test (Keras's mnist.npz layout)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a valid .npz file: it is not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            needed = ["x_train", "y_train"] + (["x_test", "y_test"] if {"x_test", "y_test"} <= keys else [])
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise DataError(f"{path} has no array {missing[0]}: expected arrays x_train, y_train and "
                                f"optionally x_test, y_test (it holds {', '.join(sorted(keys)) or 'nothing'})")
            arrays = {k: f[k] for k in needed}
    except DataError:
        raise
    except Exception as e:  # a damaged zip or array raises any of several types
        raise DataError(f"{path} is not a valid .npz file: {one_line(e)}") from None
    x, y = _samples(arrays["x_train"], path, "x_train"), _targets(arrays["y_train"], path, "y_train")
    _same_length(x, y, path, "x_train", "y_train")
    if "x_test" not in arrays:
        return _split(os.fspath(path), x, y, *_inferred(x), seed=seed)
    xt, yt = _samples(arrays["x_test"], path, "x_test"), _targets(arrays["y_test"], path, "y_test")
    if xt.shape[1:] == x.shape[1:] and y.dtype != yt.dtype:  # class ids in one part, real values in the other
        y, yt = y.astype(np.float32), yt.astype(np.float32)
    _same_length(xt, yt, path, "x_test", "y_test")
    if xt.shape[1:] != x.shape[1:]:
        raise DataError(f"{path}: x_train has samples of shape {tuple_text(x.shape[1:])} but x_test "
                        f"{tuple_text(xt.shape[1:])}")
    scale, why = _inferred(x)
    return Dataset(os.fspath(path), x, y, xt, yt, scale=scale, split="the file's own test set", scale_why=why)


def load_csv(path: Path, seed: int = SPLIT_SEED, label_column: str | None = None) -> Dataset:
    """One sample per row, comma-separated, with a header or without.

    The label column is `label_column` (a header name, or a 0-based index, negative from
    the end), else the first column named 'label' (any case), else the last column.
    """
    table, header = read_csv(path)
    column = _label_index(table.shape[1], header, label_column, path)
    y = _targets(table[:, column], path, f"the label column ({_column_name(column, header)})")
    x = _samples(_whole(np.delete(table, column, axis=1)), path, "the samples")
    return _split(os.fspath(path), x, y, *_inferred(x), seed=seed)


def _whole(table: np.ndarray) -> np.ndarray:
    """A CSV table (float64) as int64 where every value is a whole number within float64's
    exact integers, so that integer columns stay integer; else as it is."""
    if np.isfinite(table).all() and (table % 1 == 0).all() and (np.abs(table) <= 2**53).all():
        return table.astype(np.int64)
    return table


def read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """(numbers as a 2-D float64 array, the header's names or None). A first line that does
    not read as numbers is a header."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
            header = [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]
            try:
                [float(c) for c in header]
                header = None
            except ValueError:
                pass
            f.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": reported below
                table = np.loadtxt(f, delimiter=",", skiprows=1 if header else 0, dtype=np.float64, ndmin=2)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    except ValueError as e:
        raise DataError(_ragged(path) or f"{path} is not a CSV file of numbers: {one_line(e)}") from None
    if table.size == 0:
        raise DataError(f"{path} holds no rows of data")
    if header is not None and len(header) != table.shape[1]:
        raise DataError(f"{path}: the header names {len(header)} columns but the rows have {table.shape[1]}")
    return table, header


def _ragged(path: Path) -> str | None:
    """What is wrong with a CSV file whose rows have different numbers of columns, if they do."""
    with open(path, encoding="utf-8-sig") as f:
        widths = [(number, line.count(",") + 1) for number, line in enumerate(f, start=1) if line.strip()]
    first = widths[0][1] if widths else 0
    for number, width in widths:
        if width != first:
            return (f"{path}: line {number} has {width} columns, but line {widths[0][0]} has {first}; "
                    "every row needs the same number of columns")
    return None


def _label_index(columns: int, header: list[str] | None, label_column: str | None, path: Path) -> int:
    if columns < 2:
        raise DataError(f"{path} has one column: expected sample values and a label column")
    if label_column is None:
        names = [h.lower() for h in header or []]
        return names.index("label") if "label" in names else columns - 1
    try:
        index = int(label_column)
    except ValueError:
        if header is None or label_column not in header:
            where = f"its columns are {', '.join(header)}" if header else "it has no header"
            raise DataError(f"{path} has no column named '{label_column}' ({where})") from None
        return header.index(label_column)
    if not -columns <= index < columns:
        raise DataError(f"{path} has {columns} columns; --label-column {index} is out of range")
    return index % columns


def _column_name(index: int, header: list[str] | None) -> str:
    return f"'{header[index]}'" if header else f"column {index}"


# ---------------------------------------------------------------------------------------
# MNIST from local files


def mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where MNIST is looked for, in order: data_dir, $MODELSPEC_DATA, Keras's cache."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get("MODELSPEC_DATA"):
        dirs.append(Path(os.environ["MODELSPEC_DATA"]))
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    dirs.append(Path(keras_home) / "datasets")
    return dirs


def find_mnist(data_dir: str | os.PathLike | None = None) -> Path | dict[str, Path]:
    """Keras's mnist.npz, or the four IDX files (gzipped or not), from the first directory
    of `mnist_dirs` that has either."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {os.fspath(data_dir)}: no such directory")
    for folder in mnist_dirs(data_dir):
        if (folder / MNIST_NPZ).is_file():
            return folder / MNIST_NPZ
        found = {key: _idx_file(folder, stem) for key, stem in MNIST_IDX.items()}
        present = {k: p for k, p in found.items() if p is not None}
        if len(present) == len(MNIST_IDX):
            return present
        if present:
            missing = next(MNIST_IDX[k] for k in MNIST_IDX if k not in present)
            raise DataError(f"{folder} has some of MNIST's IDX files but not {missing}[.gz]; "
                            "expected all four (or Keras's mnist.npz)")
    places = ", ".join(os.fspath(d) for d in mnist_dirs(data_dir))
    raise DataError(f"MNIST not found: put Keras's {MNIST_NPZ}, or the four IDX files "
                    f"({', '.join(MNIST_IDX.values())}, gzipped or not), in one of: {places} "
                    "(or name a folder with --data-dir or $MODELSPEC_DATA); nothing is downloaded")


def _idx_file(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """MNIST's 60,000 training and 10,000 test images (28x28, pixels 0-255)."""
    found = find_mnist(data_dir)
    if isinstance(found, Path):
        ds = load_npz(found)
    else:
        arrays = {key: read_idx(path) for key, path in found.items()}
        for part in ("train", "test"):
            x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
            if x.ndim != 3 or y.ndim != 1:
                raise DataError(f"{found[f'x_{part}']} and {found[f'y_{part}']}: expected images of 3 "
                                f"dimensions and labels of 1; they have {x.ndim} and {y.ndim}")
            _same_length(x, y, found[f"x_{part}"].parent, found[f"x_{part}"].name, found[f"y_{part}"].name)
        ds = Dataset("mnist", arrays["x_train"].astype(np.float32), arrays["y_train"].astype(np.int64),
                     arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64),
                     scale=255.0, split="MNIST's own test set")
    ds.name, ds.scale, ds.scale_why = "mnist", 255.0, "8-bit pixels, 0 to 255"
    return ds


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not): magic 0x00 0x00 TYPE NDIM, NDIM big-endian uint32 sizes,
    then the values, big-endian."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        magic = raw[:4].hex() or "nothing"
        raise DataError(f"{path} is not an IDX file: it starts with 0x{magic}, expected 0x0000 then a type "
                        "code (0x08 for unsigned bytes) and the number of dimensions")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path} is truncated: its header names {ndim} dimensions but the file ends first")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - start != expected:
        raise DataError(f"{path} holds {len(raw) - start:,} bytes of values, but its header says "
                        f"{tuple_text(dims)} of {dtype.itemsize} byte(s), {expected:,} bytes")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims)


# ---------------------------------------------------------------------------------------
# Checks, scale and split


def _samples(x: Any, path: Any, what: str) -> np.ndarray:
    """Samples as float32, or, for integer data, in their own integer dtype (native byte
    order; booleans as uint8): integers are kept exact for integer inputs, and as small as
    stored (MNIST's uint8)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} must hold numbers; it has dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{path}: {what} has shape {tuple_text(x.shape)}; expected one sample per row")
    if x.dtype.kind in "biu":
        return x.astype(np.uint8 if x.dtype.kind == "b" else x.dtype.newbyteorder("="), copy=False)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: NaN or infinite values in {what}")
    return x


def _targets(y: Any, path: Any, what: str) -> np.ndarray:
    """Class ids (int64) where every value is a non-negative integer, else real values
    (float32, regression). A (N, 1) column is squeezed and one-hot rows become their index;
    real targets may have one column per output unit."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} must hold numbers (class ids or real values); it has dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        y = y.argmax(axis=1)  # one-hot rows
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise DataError(f"{path}: {what} has shape {tuple_text(y.shape)}; expected one target per sample "
                        "(a class id or a real value), or one row of real values per sample")
    if not np.isfinite(y).all():
        raise DataError(f"{path}: NaN or infinite values in {what}")
    if y.ndim == 1 and (y % 1 == 0).all() and (y >= 0).all():
        return y.astype(np.int64)
    return y.astype(np.float32)


def _same_length(x: np.ndarray, y: np.ndarray, path: Any, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{path}: {x_name} has {len(x):,} samples but {y_name} has {len(y):,} labels")


def infer_scale(x: np.ndarray) -> float:
    """What to divide a file's samples by when the spec does not scale them itself: 1 if they
    already lie in [0, 1] or hold negative values (taken as normalised already), else their
    maximum, which brings them into [0, 1] (16 for the digits, 255 for 8-bit pixels that reach
    white). A guess: a spec that starts with `rescale` or `normalize` needs none."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi <= 1:
        return 1.0
    return hi


def _inferred(x: np.ndarray) -> tuple[float, str]:
    """infer_scale(x) and why, in words."""
    scale = infer_scale(x)
    if scale == 1.0:
        return scale, "inferred: the values lie in [0, 1] or are signed, taken as scaled already"
    return scale, f"inferred: the largest value in the samples is {scale:g}"


def _split(name: str, x: Any, y: Any, scale: float, scale_why: str, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
    if len(x) < 5:
        raise DataError(f"{name} has {len(x)} sample{'' if len(x) == 1 else 's'}; a 20% test split needs at least 5")
    rows = np.arange(len(x))  # split alongside (the same indices split every array), for messages
    try:  # class ids: stratified where every class can have a share in both parts
        if y.dtype.kind == "f":
            raise ValueError("real targets have no classes to stratify")
        parts = train_test_split(x, y, rows, test_size=TEST_FRACTION, random_state=seed, stratify=y)
        how = "a stratified"
    except ValueError:  # real targets, a class of one sample, or more classes than test samples
        parts = train_test_split(x, y, rows, test_size=TEST_FRACTION, random_state=seed)
        how = "a random" if y.dtype.kind == "f" else "an unstratified"
    x_train, x_test, y_train, y_test, train_rows, test_rows = parts
    return Dataset(name, x_train, y_train, x_test, y_test, scale=scale,
                   split=f"{how} {TEST_FRACTION:.0%} test split (seed {seed})", scale_why=scale_why,
                   train_rows=train_rows, test_rows=test_rows)


# ---------------------------------------------------------------------------------------
# Preparing for a model


def prepare(ds: Dataset, report: Any, loss: str | None, scale: float | None = None) -> Arrays:
    """Samples divided by `scale` (default ds.scale) and reshaped, targets encoded for `loss`,
    for a model with `report`'s input and output shapes."""
    input_shape = tuple(report.input_shape[1:])
    units = report.output_shape[-1]
    scale = ds.scale if scale is None else scale
    if report.spec.input_dtype == "int32":
        x_train, x_test = token_ids(ds, report.spec)
    else:
        x_train = fit_input(ds.x_train.astype(np.float32, copy=False) / np.float32(scale), input_shape, ds.name)
        x_test = fit_input(ds.x_test.astype(np.float32, copy=False) / np.float32(scale), input_shape, ds.name)
    classes = 0 if ds.regression else ds.classes
    return Arrays(x_train, encode_labels(ds.y_train, units, loss, classes, ds.name),
                  x_test, encode_labels(ds.y_test, units, loss, classes, ds.name))


def token_ids(ds: Dataset, spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """The training and test samples as the int32 token ids of a spec with integer inputs:
    unscaled, reshaped to the input, every one checked (model.check_ids) in the data's own
    order, so that a bad id's sample is the one the user finds at that place in the file."""
    from .model import check_ids

    shape = tuple(spec.input_shape)
    x_train, x_test = (fit_input(x, shape, ds.name, dtype=None) for x in (ds.x_train, ds.x_test))
    try:
        if ds.train_rows is None or ds.test_rows is None:  # the data's own test set
            return check_ids(x_train, spec.id_limit, f"{ds.name}'s x_train"), \
                check_ids(x_test, spec.id_limit, f"{ds.name}'s x_test")
        every = np.empty((len(x_train) + len(x_test), *shape), np.result_type(x_train, x_test))
        every[ds.train_rows], every[ds.test_rows] = x_train, x_test
        every = check_ids(every, spec.id_limit, ds.name)
    except ValueError as e:
        raise DataError(str(e)) from None
    return every[ds.train_rows], every[ds.test_rows]


def fit_input(x: np.ndarray, input_shape: tuple[int, ...], name: Any = "the data",
              dtype: Any = np.float32) -> np.ndarray:
    """x as (N, *input_shape) of `dtype` (None: x's own), reshaping samples whose size is the
    input's size."""
    if tuple(x.shape[1:]) == input_shape:
        return np.ascontiguousarray(x, dtype)
    size = math.prod(input_shape)
    if math.prod(x.shape[1:]) == size:
        return np.ascontiguousarray(x.reshape((len(x), *input_shape)), dtype)
    raise DataError(f"{name} has samples of shape {tuple_text(x.shape[1:])} ({math.prod(x.shape[1:]):,} values), "
                    f"but the spec's input is {tuple_text((None, *input_shape))} ({size:,} values); "
                    "the shapes must match, or hold the same number of values")


def encode_labels(y: np.ndarray, units: int, loss: str | None, classes: int, name: Any = "the data") -> np.ndarray:
    """Class ids: one-hot (float32) for categorical cross-entropy, ids (int64) for the sparse
    loss; for the other losses a float32 column on a one-unit output (binary labels, or whole
    numbers to regress on), else one-hot rows. Real targets (float y, `classes` 0): a float32
    column per output unit, for any loss but the two that take class ids."""
    if loss is None:
        raise DataError("the spec has no loss: add a `loss` statement (e.g. `loss categorical_crossentropy`)")
    if y.dtype.kind == "f":
        if loss in CLASSIFICATION_LOSSES:
            raise DataError(f"{name} has real-valued targets (such as {_non_integer(y):g}), but {loss} takes "
                            "class ids 0, 1, 2, ...; to regress on real values use loss mse, mae or huber "
                            "with a linear output")
        column = y[:, None] if y.ndim == 1 else y
        if column.shape[1] != units:
            raise DataError(f"{name} has {column.shape[1]} real target(s) per sample, but the model's output has "
                            f"{units} unit(s); expected one unit per target")
        return np.ascontiguousarray(column, np.float32)
    if loss in CLASSIFICATION_LOSSES or units > 1:
        if classes > units:
            raise DataError(f"{name} has {classes} classes (labels 0 to {classes - 1}), but the model's output "
                            f"has {units} unit(s); expected one unit per class")
        if loss == "sparse_categorical_crossentropy":
            return y.astype(np.int64)
        one_hot = np.zeros((len(y), units), np.float32)  # not np.eye(units): units² floats
        one_hot[np.arange(len(y)), y] = 1
        return one_hot
    if loss == "binary_crossentropy" and classes > 2:
        raise DataError(f"binary_crossentropy on {name}, which has {classes} classes: binary_crossentropy "
                        "takes labels 0 or 1; for class labels use categorical_crossentropy (one-hot) or "
                        "sparse_categorical_crossentropy (integer ids) with a softmax output of one unit "
                        "per class")
    return y.astype(np.float32)[:, None]


def _non_integer(y: np.ndarray) -> float:
    """A value of `y` that is not a class id (the first, if every one could be)."""
    flat = y.ravel()
    odd = flat[(flat % 1 != 0) | (flat < 0)]
    return float(odd[0] if odd.size else flat[0])


def load_inputs(path: str | os.PathLike, input_shape: tuple[int, ...]) -> np.ndarray:
    """Samples to predict, raw, from a .npy file or a .csv file (one sample per row; a column
    named 'label' is dropped). A single sample of the input's shape, or a 1-D row, is one sample."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise DataError(f"{path}: expected a .npy or a .csv file")
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    if suffix == ".csv":
        x, header = read_csv(path)
        names = [h.lower() for h in header or []]
        if "label" in names:
            x = np.delete(x, names.index("label"), axis=1)
        x = _whole(x)
    else:
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # a damaged file raises any of several types
            raise DataError(f"{path} is not a valid .npy file: {one_line(e)}") from None
    if x.ndim == 1 or (tuple(x.shape) == tuple(input_shape) and len(input_shape) > 1):
        x = x[None]
    return _samples(x, path, "the samples")


def model_input(raw: np.ndarray, spec: Any, scale: float, name: Any = "the data") -> np.ndarray:
    """Raw samples (load_inputs) as the spec's model takes them: divided by `scale` and
    reshaped to its input as float32, or, for integer inputs, unscaled int32 token ids, each
    checked (model.check_ids)."""
    shape = tuple(spec.input_shape)
    if spec.input_dtype != "int32":
        return fit_input(raw.astype(np.float32, copy=False) / np.float32(scale), shape, name)
    from .model import check_ids

    try:
        return check_ids(fit_input(raw, shape, name, dtype=None), spec.id_limit, str(name))
    except ValueError as e:
        raise DataError(str(e)) from None
