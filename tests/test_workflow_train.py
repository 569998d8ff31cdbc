"""The tutorial's workflow on the command line, driven as a user drives it (subprocesses):
train on the digits, evaluate and predict with the saved weights, compare three variants."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

import modelspec as ms
from corpus import ROOT, modelspec_cli

SPECS = ROOT / "specs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    """A complete PNG that decodes: the signature, then IHDR first and IEND last."""
    from matplotlib.image import imread

    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE and raw[12:16] == b"IHDR" and raw[-8:-4] == b"IEND", path
    assert imread(path).shape[:2] == (480, 640)


def digits_test_split():
    """The test images as the documented call draws them, independently of modelspec."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.2,
                                            stratify=digits.target, random_state=0)
    return x_test, y_test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`modelspec train specs/digits.ms --json` with every default: (its JSON, the run folder)."""
    cwd = tmp_path_factory.mktemp("train")
    done = modelspec_cli("train", SPECS / "digits.ms", "--out", "run", "--json", cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), cwd / "run"


def test_train_digits_reaches_95_percent_on_the_test_set(trained):
    doc, out = trained
    assert doc["test"]["categorical_accuracy"] >= 0.95
    assert doc["model"] == "digits" and doc["backend"] == "numpy" and doc["params"] == 17226
    assert doc["data"] == {"name": "digits", "train": 1437, "test": 360, "validation": 0.2,
                           "split": "a stratified 20% test split (seed 0)", "scale": 1.0,
                           "scaling": "the spec's rescale at line 4 scales the raw samples",
                           "batch_size": 32, "seed": {"weights": 0, "shuffle": 0}}
    assert doc["epochs"] == 20 and doc["stopped"] is None and doc["interrupted"] is False


def test_train_writes_weights_history_and_plots(trained):
    doc, out = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy.png", "checkpoint", "history.csv", "history.json", "loss.png", "run.json",
                     "weights.safetensors"]
    history = json.loads((out / "history.json").read_text())
    assert sorted(history) == ["categorical_accuracy", "loss", "val_categorical_accuracy", "val_loss"]
    assert history == doc["history"] and all(len(v) == 20 for v in history.values())
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and rows[0]["epoch"] == "0" and rows[-1]["epoch"] == "19"  # as Keras's CSVLogger
    assert float(rows[-1]["val_loss"]) == history["val_loss"][-1]
    assert_png(out / "loss.png")
    assert_png(out / "accuracy.png")
    assert json.loads((out / "run.json").read_text())["test"] == doc["test"]
    # the weights reload, with the spec inside, and give the same test metrics
    model = ms.load_model(out / "weights.safetensors")
    x_test, y_test = digits_test_split()
    metrics = model.evaluate(x_test, np.eye(10)[y_test])  # raw pixels: the spec rescales them
    assert metrics["categorical_accuracy"] == pytest.approx(doc["test"]["categorical_accuracy"])


def test_train_prints_summary_progress_and_test_metrics(tmp_path):
    done = modelspec_cli("train", SPECS / "digits.ms", "--epochs", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == 'Model: "digits"' and " Total params: 17,226 (67.29 KB)" in lines
    # piped: one line per epoch, Keras's layout; 1,437 * 0.8 = 1,149 training samples in 36 batches of 32
    assert lines.index("Epoch 1/2") + 2 == lines.index("Epoch 2/2")
    progress = re.compile(r"36/36 ━{20} \d+s \d+(ms|us|s)/step - categorical_accuracy: \d\.\d{4} - "
                          r"loss: \d\.\d{4} - val_categorical_accuracy: \d\.\d{4} - val_loss: \d\.\d{4}$")
    assert progress.match(lines[lines.index("Epoch 2/2") + 1])
    assert re.search(r"^Test accuracy: \d+\.\d\d%$", done.stdout, re.M)
    assert "Plots: runs/digits/loss.png, runs/digits/accuracy.png" in done.stdout  # default --out
    assert (tmp_path / "runs" / "digits" / "weights.safetensors").is_file()
    assert done.stderr == ""


def test_evaluate_gives_the_test_metrics_of_training(trained):
    doc, out = trained
    done = modelspec_cli("evaluate", SPECS / "digits.ms", "--weights", out / "weights.safetensors", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["samples"] == 360
    assert result["metrics"] == pytest.approx(doc["test"])
    human = modelspec_cli("evaluate", SPECS / "digits.ms", "--weights", out / "weights.safetensors")
    assert f"Test accuracy: {doc['test']['categorical_accuracy']:.2%}" in human.stdout


def test_predict_probabilities_and_argmax(trained, tmp_path):
    doc, out = trained
    x_test, y_test = digits_test_split()
    np.save(tmp_path / "x.npy", x_test)  # raw pixels 0-16, as the spec's rescale takes them
    done = modelspec_cli("predict", SPECS / "digits.ms", "--weights", out / "weights.safetensors",
                         "--input", tmp_path / "x.npy", "--output", tmp_path / "p.csv", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rows"] == 360 and result["scale"] == 1.0
    probs = np.array([p["probabilities"] for p in result["predictions"]])
    classes = np.array([p["class"] for p in result["predictions"]])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(classes, probs.argmax(axis=1))
    assert np.mean(classes == y_test) == pytest.approx(doc["test"]["categorical_accuracy"])
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 360 and [int(r["class"]) for r in rows] == classes.tolist()

    # a CSV of flattened rows with a label column; the weights file alone says how training scaled
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "weights.safetensors").write_bytes((out / "weights.safetensors").read_bytes())
    table = np.column_stack([y_test[:5], x_test[:5].reshape(5, 64)])
    header = "label," + ",".join(f"px{i}" for i in range(64))
    np.savetxt(tmp_path / "x.csv", table, delimiter=",", header=header, comments="", fmt="%g")
    done = modelspec_cli("predict", SPECS / "digits.ms", "-w", tmp_path / "w" / "weights.safetensors",
                         "-i", tmp_path / "x.csv")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    shown = [int(m.group(1)) for m in re.finditer(r"^│\s+\d+ │\s+(\d) │", done.stdout, re.M)]
    assert shown == classes[:5].tolist()


def test_predict_warns_when_the_samples_are_not_scaled_as_in_training(trained, tmp_path):
    """Digits divided by 16 already, for a model trained on raw 0-16 pixels: the answers would be
    wrong without a sign, so predict and evaluate say so."""
    doc, out = trained
    x_test, _ = digits_test_split()
    np.save(tmp_path / "x.npy", x_test / 16)
    done = modelspec_cli("predict", SPECS / "digits.ms", "--weights", out / "weights.safetensors",
                         "--input", tmp_path / "x.npy", "--json")
    assert done.returncode == 0, done.stderr
    assert ("x.npy holds values from 0 to 1, but the training samples ran from 0 to 16; give the samples as "
            "training had them (raw, before any scaling)") in done.stderr
    np.save(tmp_path / "x.npy", x_test)
    done = modelspec_cli("predict", SPECS / "digits.ms", "--weights", out / "weights.safetensors",
                         "--input", tmp_path / "x.npy", "--json")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


def test_compare_three_variants_on_one_plot(tmp_path):
    specs = [SPECS / f"digits_{v}.ms" for v in "abc"]
    done = modelspec_cli("compare", *specs, "--epochs", 3, "--out", "cmp", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "cmp"
    assert_png(out / "compare.png")
    doc = json.loads((out / "compare.json").read_text())
    assert doc["curves"]["key"] == "val_loss"
    series = doc["curves"]["series"]
    assert list(series) == ["digits_a", "digits_b", "digits_c"]
    assert all(len(v) == 3 and all(x > 0 for x in v) for v in series.values())
    # the curves are each model's own validation losses, all scored on the same test split
    for m in doc["models"]:
        assert series[m["name"]] == m["history"]["val_loss"]
        assert (out / m["name"] / "weights.safetensors").is_file()
    assert [m["params"] for m in doc["models"]] == [6938, 7386, 7386]
    assert {m["data"]["test"] for m in doc["models"]} == {360}
    for name, params in (("digits_a", "6,938"), ("digits_b", "7,386"), ("digits_c", "7,386")):
        assert re.search(rf"│ {name} +│ +{params} │ +3 │", done.stdout)
    assert "Plot: cmp/compare.png (3 curves of val_loss)" in done.stdout


def test_compare_json_is_the_only_thing_on_stdout(tmp_path):
    done = modelspec_cli("compare", SPECS / "digits_a.ms", SPECS / "digits_a.ms", "--epochs", 1,
                         "--validation", 0.1, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert list(doc["curves"]["series"]) == ["digits_a", "digits_a_2"]  # the same name twice
    assert "Epoch 1/1" in done.stderr
    assert (tmp_path / "runs" / "compare" / "digits_a_2" / "run.json").is_file()


def test_train_on_csv_and_npz_files(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    table = np.column_stack([digits.data, digits.target])  # 64 pixel columns, then the label
    np.savetxt(tmp_path / "digits.csv", table, delimiter=",", fmt="%g")
    # a spec without its own rescale: the scale is inferred from the file
    (tmp_path / "bare.ms").write_text("".join(line for line in (SPECS / "digits.ms").read_text().splitlines(True)
                                              if not line.startswith("rescale")))
    done = modelspec_cli("train", "bare.ms", "--data", "digits.csv", "--epochs", 2, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    # the last column is the label; 64 values per row reshape to the spec's 8x8; 1,797 rows split 1,437 + 360;
    # the pixels are divided by their largest value, 16, as the built-in digits are
    assert doc["data"]["train"] == 1437 and doc["data"]["test"] == 360 and doc["data"]["scale"] == 16
    assert doc["data"]["scaling"] == "inferred: the largest value in the samples is 16"
    assert "Samples divided by 16 (inferred: the largest value in the samples is 16)" in done.stderr
    np.savez(tmp_path / "d.npz", x_train=digits.images[:1000], y_train=digits.target[:1000],
             x_test=digits.images[1000:], y_test=digits.target[1000:])
    done = modelspec_cli("train", SPECS / "digits_cnn.ms", "--data", "d.npz", "--epochs", 1, "--json",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    # 8x8 images into `input 8x8x1`, integer labels for the sparse loss, raw pixels for the spec's rescale
    assert doc["data"]["train"] == 1000 and doc["data"]["test"] == 797 and doc["data"]["scale"] == 1.0
    done = modelspec_cli("train", SPECS / "digits_cnn.ms", "--data", "d.npz", "--epochs", 1, "--scale", 16,
                         cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("modelspec: error: --scale 16: the spec scales its own input (`rescale` at line 4), "
                           "so the samples go in raw; drop --scale, or change the spec's scaling\n")
    assert doc["data"]["split"] == "the file's own test set" and "accuracy" in doc["test"]


def test_a_loss_that_becomes_nan_saves_what_was_trained_and_exits_1(tmp_path):
    (tmp_path / "wild.ms").write_text("input 8x8\nflatten\ndense 64 relu he_normal\ndense 10 softmax\n"
                                      "optimizer sgd lr=1e30\nloss categorical_crossentropy\nmetrics accuracy\n"
                                      "fit epochs=5\n")
    done = modelspec_cli("train", "wild.ms", "--out", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert "the loss became NaN or infinite" in done.stderr and "Traceback" not in done.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stopped"].startswith("the loss became NaN or infinite at epoch 1")
    ms.load_model(tmp_path / "run" / "weights.safetensors")


def test_regression_from_the_command_line(tmp_path):
    """Real targets train with mse and report mae: the report, the plot of the metric, value
    predictions; and lists of files stay one line, with no trailing space, when piped."""
    from sklearn.datasets import load_diabetes

    (tmp_path / "r.ms").write_text("model r\ninput 10\ndense 16 relu he_normal(seed=1)\ndense 1\n"
                                   "optimizer adam lr=0.01\nloss mse\nmetrics mae\nfit epochs=3 validation=0.2\n")
    out = "a_run_folder_whose_name_is_long_enough_to_need_a_wrap_at_eighty_columns"
    done = modelspec_cli("train", "r.ms", "--data", "diabetes", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.endswith(" ")]
    assert f"Saved in {out}: weights.safetensors, history.json, history.csv, run.json" in lines
    assert f"Plots: {out}/loss.png, {out}/mae.png" in lines
    assert "Samples as given (the features as measured)" in lines
    run = json.loads((tmp_path / out / "run.json").read_text())
    assert sorted(run["history"]) == ["loss", "mae", "val_loss", "val_mae"]
    assert f"Test mean absolute error: {run['test']['mae']:.4g}" in lines
    assert_png(tmp_path / out / "mae.png")
    # the model's values, one per row, as the library's predict gives them
    x = load_diabetes(scaled=False).data[:4].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = modelspec_cli("predict", "r.ms", "-w", f"{out}/weights.safetensors", "-i", "x.npy", "-o", "p.csv",
                         "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    values = [p["values"][0] for p in json.loads(done.stdout)["predictions"]]
    np.testing.assert_allclose(values, ms.load_model(tmp_path / out / "weights.safetensors").predict(x)[:, 0],
                               rtol=1e-6)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "row,value" and len(rows) == 5
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows[1:]], values, rtol=1e-6)


def test_compare_never_cuts_a_name_or_a_figure(tmp_path):
    """Piped, the comparison table of two regression specs with long names keeps every name,
    header and figure whole (wider than 80 columns if it must), and names the metric's columns."""
    text = (SPECS / "diabetes.ms").read_text()
    (tmp_path / "a.ms").write_text(text.replace("model diabetes", "model diabetes_with_a_long_name"))
    (tmp_path / "b.ms").write_text(text.replace("model diabetes", "model diabetes_small")
                                   .replace("dense 32 relu", "dense 8 relu"))
    done = modelspec_cli("compare", "a.ms", "b.ms", "--data", "diabetes", "--epochs", 2, "--out", "cmp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert "│ diabetes_with_a_long_name │" in done.stdout and "│ diabetes_small " in done.stdout
    assert re.search(r"┃ val mae ┃ test loss ┃ test mae ┃", done.stdout)
