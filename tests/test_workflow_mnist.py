"""`--data mnist` on the command line, from tiny synthetic MNIST files written here with the
format's magic numbers: IDX gzipped and raw, Keras's mnist.npz, found through --data-dir,
$MODELSPEC_DATA and Keras's cache; and a clear error when there is none."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from corpus import ROOT, modelspec_cli

TINY = """model tiny
input 28x28
flatten
dense 10 softmax
optimizer adam
loss categorical_crossentropy
metrics accuracy
fit batch=16 epochs=1
"""
STEMS = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def fake_mnist() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x_train": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
            "y_train": np.arange(50, dtype=np.uint8) % 10,
            "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
            "y_test": np.arange(20, dtype=np.uint8) % 10}


def write_idx(folder, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in fake_mnist().items():
        magic = 2051 if array.ndim == 3 else 2049  # 0x00000803 images, 0x00000801 labels
        raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
        name = STEMS[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELSPEC_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    (tmp_path / "tiny.ms").write_text(TINY)
    return tmp_path


def train(cwd, *args):
    done = modelspec_cli("train", *args, "--data", "mnist", "--out", cwd / "run", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_gzipped_idx_in_data_dir(env):
    write_idx(env / "idx_gz", gz=True)
    doc = train(env, env / "tiny.ms", "--data-dir", env / "idx_gz")
    assert doc["data"]["name"] == "mnist" and doc["data"]["train"] == 50 and doc["data"]["test"] == 20
    assert doc["data"]["split"] == "MNIST's own test set" and doc["data"]["scale"] == 255.0
    assert doc["epochs"] == 1


def test_raw_idx_through_modelspec_data_for_the_tutorial_spec(env, monkeypatch):
    write_idx(env / "idx_raw", gz=False)
    monkeypatch.setenv("MODELSPEC_DATA", str(env / "idx_raw"))
    # specs/mnist.ms takes `in 784`: each 28x28 image is flattened to it
    doc = train(env, ROOT / "specs" / "mnist.ms", "--epochs", 1)
    assert doc["model"] == "mnist" and doc["data"]["test"] == 20
    assert 0 <= doc["test"]["categorical_accuracy"] <= 1


def test_mnist_npz_in_keras_cache(env):
    cache = env / "keras_home" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", **fake_mnist())
    doc = train(env, env / "tiny.ms")
    assert doc["data"]["train"] == 50 and doc["data"]["test"] == 20


def test_no_mnist_says_where_to_put_it(env):
    done = modelspec_cli("train", env / "tiny.ms", "--data", "mnist", "--out", env / "run", cwd=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("modelspec: error: MNIST not found: put Keras's mnist.npz, or the four IDX files")
    assert str(env / "keras_home" / "datasets") in done.stderr and "--data-dir" in done.stderr
    assert not (env / "run").exists()
