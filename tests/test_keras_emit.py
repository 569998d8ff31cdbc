"""`modelspec compile --backend keras`: the emitted program, run on its own.

All programs run in one subprocess in which `import modelspec` fails, each in a fresh
Keras naming session, as a program run by itself would be. Loaded with the weights of
`ms.build(spec, backend="keras")`, each must have the same layer names and weight paths,
give the same predictions and, compiled with the spec's settings, train one epoch to the
same history. Names from the spec, however hostile, must stay inside their strings.
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import modelspec as ms
from modelspec.training import synthetic_ids
from corpus import SPEC_FILES, VARIED
from modelspec import backends
from modelspec.cli import main

pytest.importorskip("keras")
import specgen  # noqa: E402

pytestmark = pytest.mark.keras

HOSTILE_MODEL = 'x"); open("PWNED", "w") #'
HOSTILE_LAYERS = ["a\nb", "'''", '"""', "back\\slash", "ünï €", "line\u2028sep", "x'); open('PWNED', 'w') #",
                  "{braces}", "\x00nul"]

DRIVER = r'''
import contextlib, importlib.util, io, json, sys
import numpy as np
sys.modules["modelspec"] = None  # a standalone program must not need modelspec
import keras

cases = json.load(open(sys.argv[1]))
results = {}
for case in cases:
    keras.backend.clear_session(free_memory=False)
    loader = importlib.util.spec_from_file_location(f"program_{len(results)}", case["program"])
    program = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(program)
    model = program.build_model()
    data = np.load(case["data"])
    weights = [data[f"w{i}"] for i in range(len(model.weights))]
    model.set_weights(weights)
    out = {"name": model.name, "layers": [layer.name for layer in model.layers
                                          if not isinstance(layer, keras.layers.InputLayer)],
           "paths": [w.path for w in model.weights],
           "predictions": keras.ops.convert_to_numpy(model(data["x"], training=False)).tolist()}
    out["configs"] = [layer.get_config() for layer in model.layers]
    out["compile"] = model.get_compile_config() if model.compiled else None
    if case["fit_call"]:
        calls = []

        class Called:
            history = {}

        model.fit = lambda *args, **kwargs: calls.append([len(args), kwargs]) or Called()
        program.train(model, data["x"], data["y"])
        out["fit_call"] = calls
        model = program.build_model()
        model.set_weights(weights)
    if case["train"]:
        out["history"] = model.fit(data["x"], data["y"], batch_size=16, epochs=1, shuffle=False, verbose=0).history
    if case["fit_settings"]:
        model = program.build_model()
        model.set_weights(weights)
        out["train"] = program.train(model, data["x"], data["y"]).history
    if case["main"]:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            keras.backend.clear_session(free_memory=False)
            import runpy
            runpy.run_path(case["program"], run_name="__main__")
        out["main"] = captured.getvalue()
    results[case["id"]] = out
json.dump(results, open(sys.argv[2], "w"), default=str)
'''


def hostile_spec() -> ms.ir.Spec:
    layers = [ms.ir.Dense(units=3, name=name) for name in HOSTILE_LAYERS] + [ms.ir.Dense(units=2)]
    return ms.ir.Spec(name=HOSTILE_MODEL, input_shape=(4,), layers=tuple(layers),
                      loss=ms.ir.Loss(name="mse"), optimizer=ms.ir.Optimizer(name="sgd"))


def labels(spec: ms.ir.Spec, n: int, rng: np.random.Generator) -> np.ndarray:
    out = ms.check(spec).output_shape[1:]
    loss = spec.loss.name
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, out[-1], n)
    if loss == "categorical_crossentropy":
        return np.eye(out[-1], dtype=np.float32)[rng.integers(0, out[-1], (n, *out[:-1]))]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, *out)).astype(np.float32)
    return rng.normal(size=(n, *out)).astype(np.float32)


def runs_in_keras(spec: ms.ir.Spec) -> bool:
    """False for names TensorFlow's name scopes reject: ms.build refuses those specs (Keras
    builds the model, but fit() and predict() fail), the program warns in a comment."""
    from modelspec.backends.keras import unscoped_names

    return not backends.get("keras").unsupported(spec) and not unscoped_names(spec)


def trainable_in_keras(spec: ms.ir.Spec) -> bool:
    """Whether the program's fit() can give ms.build's numbers: a loss, no dropout masks
    drawn from Keras's global seed, names TensorFlow accepts."""
    unseeded = any(layer.kind == "dropout" and layer.seed is None and layer.rate > 0 for layer in spec.layers)
    return spec.loss is not None and not unseeded and runs_in_keras(spec)


TUTORIAL = """\
model tutorial
dense 512 in 784
dense 64 relu he_normal(seed=2024) l2=0.01
batchnorm
leaky_relu
dropout 0.2 seed=1
dense 10 softmax
optimizer rmsprop lr=0.001 momentum=0.5
loss categorical_crossentropy
metrics accuracy
fit batch=128 epochs=5 validation=0.1
"""
CASES = ({p.stem: ms.parse(p) for p in SPEC_FILES} | {"tutorial": ms.parse(TUTORIAL)} | {name: ms.parse(text) for name, text in VARIED.items()}
         | {f"random_{i}": ms.parse(t) for i, t in enumerate(specgen.spec_texts(5, seed=11))}
         | {"hostile": hostile_spec()})
FIT_SETTINGS = "every_layer"  # small, with every fit option: its train() runs too


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Each case's program, its ms.build model, and what the program did in the subprocess."""
    tmp = tmp_path_factory.mktemp("programs")
    cases, built = [], {}
    for index, (case_id, spec) in enumerate(CASES.items()):
        report = ms.check(spec)
        code = backends.get("keras").emit(spec, report)
        (tmp / f"p{index}.py").write_text(code, encoding="utf-8")
        # a spec the Keras backend refuses is still emitted; its weights come from NumPy
        model = ms.build(spec, backend="keras" if runs_in_keras(spec) else "numpy", seed=index)
        rng = np.random.default_rng(index)
        x = (synthetic_ids(spec, 40, rng) if spec.input_dtype == "int32"
             else rng.normal(size=(40, *spec.input_shape)).astype(np.float32))
        train = trainable_in_keras(spec)
        arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        arrays["x"] = x
        if spec.loss is not None:
            arrays["y"] = labels(spec, 40, rng)
        np.savez(tmp / f"d{index}.npz", **arrays)
        cases.append({"id": case_id, "program": str(tmp / f"p{index}.py"), "data": str(tmp / f"d{index}.npz"),
                      "train": train, "fit_settings": case_id == FIT_SETTINGS, "main": case_id == "mnist",
                      "fit_call": case_id == "tutorial"})
        built[case_id] = (spec, model, code, arrays)
    (tmp / "cases.json").write_text(json.dumps(cases))
    (tmp / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(tmp / "driver.py"), str(tmp / "cases.json"), str(tmp / "out.json")],
                            capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert not (tmp / "PWNED").exists()
    return built, json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("case_id", CASES)
def test_program_builds_the_same_model(programs, case_id):
    built, ran = programs
    spec, model, code, arrays = built[case_id]
    out = ran[case_id]
    report = ms.check(spec)
    assert out["name"] == spec.name
    assert out["layers"] == [r.name for r in report.layers]
    assert out["paths"] == [w.path for w in report.weights]
    tolerance = dict(rtol=1e-6, atol=1e-7) if runs_in_keras(spec) else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(out["predictions"], dtype=np.float32), model.predict(arrays["x"]),
                               **tolerance)


def fresh(spec: ms.ir.Spec, arrays: dict) -> ms.model.Model:
    """The case's model as the program starts it: its initial weights, no training yet."""
    model = ms.build(spec, backend="keras")
    model.set_weights([arrays[f"w{i}"] for i in range(len(model.weight_paths))])
    return model


@pytest.mark.parametrize("case_id", [c for c, s in CASES.items() if trainable_in_keras(s)])
def test_program_compiles_the_spec_training(programs, case_id):
    built, ran = programs
    spec, _, code, arrays = built[case_id]
    model = fresh(spec, arrays)
    history = model.fit(arrays["x"], arrays["y"], batch_size=16, epochs=1, shuffle=False, validation_split=0.0,
                        verbose=0).history
    got = ran[case_id]["history"]
    assert sorted(got) == sorted(history)
    for key in history:
        np.testing.assert_allclose(got[key], history[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_program_trains_with_the_fit_settings(programs):
    built, ran = programs
    spec, _, code, arrays = built[FIT_SETTINGS]
    history = fresh(spec, arrays).fit(arrays["x"], arrays["y"], verbose=0).history  # the spec's fit statement
    got = ran[FIT_SETTINGS]["train"]
    assert sorted(got) == sorted(history) and len(history["loss"]) == spec.fit.epochs
    for key in history:
        np.testing.assert_allclose(got[key], history[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_program_run_as_a_script_prints_the_summary(programs):
    built, ran = programs
    report = ms.check(built["mnist"][0])
    assert ran["mnist"]["main"].startswith('Model: "mnist"')
    for row in report.layers:
        assert f"{row.name} ({row.keras_class})" in ran["mnist"]["main"]


def test_hostile_names_stay_inside_their_strings(programs):
    built, _ = programs
    code = built["hostile"][2]
    tree = ast.parse(code)
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert HOSTILE_MODEL in strings and set(HOSTILE_LAYERS) <= strings
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not any("open" in c or "system" in c for c in calls)
    assert [line for line in code.splitlines() if line.startswith("import") or line.startswith("from")] == \
        ["import keras", "from keras import layers"]


def comparable(config):
    """A layer's or compile's config as JSON gives it back, a penalty as its float32 (l1, l2)
    pair (keras.regularizers.L2(0.01) and L1L2(0, 0.01) are the same penalty), a layer without
    a bias without its bias initializer."""
    def norm(value):
        if isinstance(value, dict):
            if value.get("module") == "keras.regularizers":
                c = value["config"]
                return ("penalty", np.float32(c.get("l1", 0.0)), np.float32(c.get("l2", 0.0)))  # as applied
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value
    config = norm(json.loads(json.dumps(config, default=str)))
    if isinstance(config, dict) and config.get("use_bias") is False:
        config.pop("bias_initializer")  # no bias: its initializer does nothing
    return config


def keras_reference_model(spec: ms.ir.Spec) -> "keras.Model":
    """The spec as a Keras model the tests build (tests/keras_reference.py), compiled as a user
    would compile it with the spec's training section."""
    import keras

    import keras_reference as kr

    keras.backend.clear_session(free_memory=False)
    model = kr.model(spec)
    if spec.loss is not None:
        kr.compile_as_written(model, spec)
    return model


@pytest.mark.parametrize("case_id", [c for c, s in CASES.items() if c != "hostile"])
def test_program_configures_keras_as_a_hand_built_model(programs, case_id):
    """Every layer's configuration (initializers and their seeds, penalties, slopes, dropout
    seeds, Keras's defaults) and the compile settings (optimizer and its hyperparameters,
    loss, metrics) of the program's model: those of the Keras model the tests build."""
    built, ran = programs
    spec = built[case_id][0]
    reference = keras_reference_model(spec)
    configs = ran[case_id]["configs"]
    assert len(configs) == len(reference.layers)
    for got, layer in zip(configs, reference.layers):
        assert comparable(got) == comparable(layer.get_config()), layer.name
    expected = comparable(reference.get_compile_config()) if spec.loss is not None else None
    assert comparable(ran[case_id]["compile"]) == expected


def test_the_tutorial_program_trains_with_its_fit_statement(programs):
    """train() calls fit(x, y) with the spec's batch size, epochs and validation split."""
    assert programs[1]["tutorial"]["fit_call"] == [[2, {"batch_size": 128, "epochs": 5, "validation_split": 0.1}]]


def test_names_tensorflow_rejects_are_emitted_with_a_warning_and_refused_by_build(tmp_path, capsys):
    path = tmp_path / "spaced.ms"
    path.write_text(VARIED["training_variants"].replace("\n        ", "\n").strip() + "\n")
    assert main(["compile", str(path), "--backend", "keras"]) == 0
    code = capsys.readouterr().out
    assert "# Warning: Keras on TensorFlow builds this model but cannot fit()" in code
    assert '#   "a model, with spaces"\n#   "first layer"\n' in code
    with pytest.raises(ms.SpecError) as caught:
        ms.build(path, backend="keras")
    assert [(d.line, d.message.split(":")[0]) for d in caught.value.diagnostics] == [
        (1, "Keras on TensorFlow cannot run a model named 'a model, with spaces'"),
        (3, "Keras on TensorFlow cannot run a layer named 'first layer'")]


def test_a_hostile_model_name_compiles_to_harmless_code(tmp_path, capsys):
    path = tmp_path / "hostile.ms"
    path.write_text('model "x\\"); import os #"\ninput 3\ndense 2 name="a\\nb"\n')
    assert ms.parse(path).name == 'x"); import os #'
    assert main(["compile", str(path), "--backend", "keras"]) == 0
    tree = ast.parse(capsys.readouterr().out)
    assert not any(isinstance(node, ast.Import) and node.names[0].name == "os" for node in ast.walk(tree))
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert {'x"); import os #', "a\nb"} <= strings


@pytest.mark.parametrize("line, column, message", [
    ("dense 2 bias_init=orthogonal", 19, "orthogonal needs a weight of rank 2 or more; a bias is a vector"),
    ("dense 2 he_normal(seed=18446744073709551616)", 24, "seed must be below 2**63"),
    ("dropout 0.5 seed=9223372036854775808", 18, "seed must be below 2**63"),
], ids=["orthogonal_bias", "initializer_seed", "dropout_seed"])
def test_what_keras_cannot_build_is_refused_by_the_language(line, column, message, tmp_path, capsys):
    path = tmp_path / "m.ms"
    path.write_text(f"input 3\n{line}\n")
    assert main(["compile", str(path), "--backend", "keras"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:2:{column}: error: {message}") and "Traceback" not in err
    with pytest.raises(ValueError):  # the IR refuses it too, whoever builds it
        ms.Spec.model_validate({"input_shape": [3], "layers": [_bad_layer(line)]})


def _bad_layer(line: str) -> dict:
    if line.startswith("dropout"):
        return {"kind": "dropout", "rate": 0.5, "seed": 2**63}
    if "orthogonal" in line:
        return {"kind": "dense", "units": 2, "bias_initializer": {"name": "orthogonal"}}
    return {"kind": "dense", "units": 2, "kernel_initializer": {"name": "he_normal", "seed": 2**64}}


def test_compile_command(tmp_path, capsys):
    path = tmp_path / "m.ms"
    path.write_text("dense 3 relu in 4\ndense 2 softmax\nloss categorical_crossentropy\n")
    assert main(["compile", str(path), "--backend", "keras"]) == 0
    printed = capsys.readouterr().out
    assert main(["compile", str(path), "--backend", "keras", "-o", str(tmp_path / "m.py")]) == 0
    assert (tmp_path / "m.py").read_text() == printed
    compile(printed, "m.py", "exec")


def test_compile_does_not_start_tensorflow(tmp_path):
    path = tmp_path / "m.ms"
    path.write_text("dense 3 relu in 4\n")
    code = ("import sys; from modelspec.cli import main; main(['compile', sys.argv[1], '--backend', 'keras']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'framework imported'")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    program = ast.parse(result.stdout)
    assert "build_model" in {node.name for node in program.body if isinstance(node, ast.FunctionDef)}


def test_literal_round_trips_every_string():
    from modelspec.backends.keras.lowering import literal

    rng = random.Random(0)
    alphabet = "a'\"\\\n\r\t\x00\x0c\u2028\u202e😀é{}#"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert ast.literal_eval(literal(text)) == text
        assert "\n" not in literal(text) and "\r" not in literal(text)
