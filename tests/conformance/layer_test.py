"""One reusable conformance check, in the spirit of Keras's `run_layer_test`.

`run_layer_test(backend, "conv2d 3 3x3 padding=same", (5, 5, 2), (5, 5, 3), 57)` builds a
tiny spec around the layer - a trainable stem before it (so that the gradient through the
layer is exercised), a dense head after it, SGD and MSE - and checks on `backend`:

  1. the layer's output shape and parameter count, against the values the test states
     (hand-computed, or Keras's documented rules), in the checker's report and in the
     backend's own arrays;
  2. the initial weights: bit-identical to the NumPy backend's;
  3. STEPS training steps from them against the NumPy backend: each step's loss (1e-5)
     and the weights after them (1e-4), moving statistics included;
  4. every layer's output (engine.layer_outputs) against the NumPy backend, 1e-5
     relative (and Model.predict, in the whole-model cases);
  5. a save/load round trip: ms.load_model on the same backend gives the same weights and
     outputs, bit for bit;
  6. the backend's emitted program, run on its own where modelspec cannot be imported,
     loaded with the same weights, holds them bit for bit under the same paths and model
     name and reproduces the built model's outputs (1e-6 relative, and each value within
     1e-6 of itself plus 1e-7).

A backend that runs inference only (`trains` False: onnx) is held instead of 3 to fit's
refusal, with every weight unchanged, and to the NumPy backend's evaluate (loss with its
penalties, and metrics, 1e-5); one that emits no source (`emits_source` False) has no check 6.

`run_model_test` does the same for a whole spec. Checks 4 to 6 run from weights moved off
their initial values (`case_weights`), so that biases, gamma, beta and the moving
statistics are not trivial there. Errors are relative to the reference's largest
magnitude, as in `modelspec crosscheck`.

Check 6 is batched: a subprocess that imports torch or TensorFlow costs seconds, so a
`Standalone` writes every case's program at once and runs one subprocess per backend
(one per test session, shared by xdist's workers) in the background; a case waits for it
only when it reaches check 6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends, ir
from modelspec.crosscheck import default_loss, trajectory_verdict, ulp_neighbours
from modelspec.initializers import initial_weights
from modelspec.training import synthetic_ids, synthetic_labels

BATCH = 4
STEPS = 2
SEED = 0
FORWARD_RTOL = 1e-5
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-4
STANDALONE_RTOL = 1e-6
STANDALONE_ELEMENTWISE = dict(rtol=1e-6, atol=1e-7)  # each value too, as the emitters' own tests held it
TRAINING = "optimizer sgd learning_rate=0.1\nloss mse"


# ---------------------------------------------------------------------------------------
# Specs and data


def layer_spec(layer: str, input_shape: tuple[int, ...], model: str = "conformance") -> ir.Spec:
    """`layer` between a shape-keeping trainable stem and a dense head, trained with SGD on MSE."""
    dims = "x".join(map(str, input_shape))
    stem = f"conv2d {input_shape[-1]} 1x1 name=stem" if len(input_shape) == 3 else f"dense {input_shape[-1]} name=stem"
    text = f"model {model}\ninput {dims}\n{stem}\n{layer}\nflatten name=head_flatten\ndense 2 name=head\n{TRAINING}"
    spec = ms.parse(text)
    if len(ms.check(spec).layers[1].output_shape) == 2:  # already flat: no flatten in the head
        spec = spec.model_copy(update={"layers": spec.layers[:2] + spec.layers[3:]})
    return spec


def loss_of(spec: ir.Spec) -> str:
    return spec.loss.name if spec.loss is not None else default_loss(spec)


def case_weights(spec: ir.Spec, report: Any) -> list[np.ndarray]:
    """The initial weights moved off their initial values: variances (batchnorm's moving
    ones, normalize's) in [0.5, 1.5), normalize's count (an int64 in Keras) a whole number,
    everything else plus N(0, 0.1²) noise."""
    rng = np.random.default_rng(SEED + 1)
    out = []
    for w, value in zip(report.weights, initial_weights(spec, report, SEED)):
        if w.path.rpartition("/")[2] in ("moving_variance", "variance"):
            out.append(rng.uniform(0.5, 1.5, value.shape).astype(np.float32))
        elif w.dtype == "int64":
            out.append(rng.integers(1, 100, value.shape).astype(np.float32))
        else:
            out.append((value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32))
    return out


def case_data(spec: ir.Spec, report: Any, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0, x, y): one batch for the forward checks, then `steps` batches to train on."""
    x0 = inputs(spec, BATCH, np.random.default_rng(SEED + 2))
    rng = np.random.default_rng(SEED + 3)
    n = BATCH * steps
    x = inputs(spec, n, rng)
    return x0, x, synthetic_labels(loss_of(spec), report.output_shape[1:], n, rng)


def inputs(spec: ir.Spec, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples: N(0, 1) numbers, or token ids over the whole vocabulary for integer inputs."""
    if spec.input_dtype == "int32":
        return synthetic_ids(spec, n, rng)
    return rng.standard_normal((n, *spec.input_shape), dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Comparisons


def assert_close(got: Any, ref: Any, rtol: float, what: str, scale: float | None = None) -> None:
    """max |got - ref| <= rtol · scale, by default max |ref|; shapes equal, the reference finite."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.isfinite(ref).all(), f"{what}: the reference is not finite"
    scale = float(np.abs(ref).max(initial=0.0)) if scale is None else scale
    error = float(np.abs(got - ref).max(initial=0.0))
    assert error <= rtol * max(scale, 1e-30), \
        f"{what}: max |error| {error:.3g} exceeds {rtol:g} of the reference's scale {scale:.3g}"


def layer_weights(report: Any, weights: list[np.ndarray], index: int) -> list[np.ndarray]:
    start = sum(len(row.weights) for row in report.layers[:index])
    return weights[start:start + len(report.layers[index].weights)]


def train(model: Any, x: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """One step per batch of x, in order: each step's logs (loss before its update). A spec
    without a loss trains on the one its output suggests, as in crosscheck."""
    if model.spec.loss is None:
        model.compile(loss=default_loss(model.spec))
    logs = []
    for start in range(0, len(x), BATCH):
        batch = slice(start, start + BATCH)
        history = model.fit(x[batch], y[batch], batch_size=BATCH, epochs=1, shuffle=False,
                            validation_split=0.0, verbose=0)
        assert history.stopped is None, history.stopped
        logs.append({k: v[0] for k, v in history.history.items()})
    return logs


# ---------------------------------------------------------------------------------------
# The checks


def run_layer_test(backend: str, layer: str, input_shape: tuple[int, ...], expected_output_shape: tuple[int, ...],
                   expected_params: int, *, expected_non_trainable: int = 0, train_mode: str = "compare",
                   model: str = "conformance", standalone: "Standalone | None" = None,
                   tmp_path: Path | None = None) -> None:
    """Every check on one layer (the module docstring lists them). Shapes exclude the batch.
    train_mode "compare" checks the steps against NumPy; "shapes" (dropout masks, which
    cannot agree across frameworks) only that they run, change the weights and keep shapes."""
    spec = layer_spec(layer, input_shape, model)
    run_model_test(backend, spec, expected_output_shape, expected_params, expected_non_trainable=expected_non_trainable,
                   layer_index=1, train_mode=train_mode, predict=False, standalone=standalone, tmp_path=tmp_path)


def run_model_test(backend: str, spec: ir.Spec, expected_output_shape: tuple[int, ...] | None,
                   expected_params: int | None, *, expected_non_trainable: int = 0, layer_index: int | None = None,
                   train_mode: str = "compare", steps: int = STEPS, optimizer: Any = None, predict: bool = True,
                   standalone: "Standalone | None" = None, tmp_path: Path | None = None) -> None:
    """Every check on a spec. The expected shape and counts are the layer's at `layer_index`,
    or the whole model's; None where no independent figure is known (the backend's arrays are
    then held to the checker's). Training starts from the initial weights, as a user's does
    (a zeros kernel puts activations at exactly 0), with the spec's optimizer or `optimizer`;
    the other checks run from `case_weights`. `predict` checks Model.predict too (in Keras,
    one more traced graph per model; layer cases leave it to the whole-model cases)."""
    report = ms.check(spec)
    model = ms.build(spec, backend=backend, seed=SEED)
    reference = ms.build(spec, backend="numpy", seed=SEED)
    what = f"{backend}, layer {report.layers[layer_index].name!r}" if layer_index is not None else backend
    check_counts(what, report, model.get_weights(), layer_index, expected_output_shape, expected_params,
                 expected_non_trainable)
    for w, got, ref in zip(report.weights, model.get_weights(), reference.get_weights()):
        assert got.dtype == np.float32 and got.tobytes() == ref.tobytes(), f"{what}: initial {w.path}"
    x0, x, y = case_data(spec, report, steps)
    if optimizer is not None:
        model.compile(optimizer=optimizer)
        reference.compile(optimizer=optimizer)
    if backends.get(backend).trains:
        check_training(what, report, model, reference if train_mode == "compare" else None, x, y)
    else:
        check_inference_only(what, model, reference, x, y)

    start = case_weights(spec, report)
    model.set_weights(start)
    reference.set_weights(start)
    check_weights_in_and_out(what, report, model, start)
    predictions = check_forward(what, report, model, reference, x0, predict)
    if tmp_path is not None:
        check_round_trip(what, report, model, x0, tmp_path)
    if standalone is not None:
        check_standalone(what, report, standalone.result(spec), predictions)


def check_counts(what: str, report: Any, weights: list[np.ndarray], layer_index: int | None,
                 expected_output_shape: tuple[int, ...] | None, expected_params: int | None,
                 expected_non_trainable: int) -> None:
    """The output shape and parameter counts in the checker's report, and in the backend's arrays."""
    assert [w.shape for w in weights] == [w.shape for w in report.weights], f"{what}: weight shapes"
    if layer_index is None:
        shape, params, non_trainable = report.output_shape, report.total_params, report.non_trainable_params
        own = sum(w.size for w in weights)
    else:
        row = report.layers[layer_index]
        shape, params, non_trainable = row.output_shape, row.params, row.non_trainable
        own = sum(w.size for w in layer_weights(report, weights, layer_index))
    if expected_params is not None:
        assert tuple(shape) == (None, *expected_output_shape), f"{what}: the checker's output shape"
        assert (params, non_trainable) == (expected_params, expected_non_trainable), f"{what}: the checker's counts"
    assert own == params, f"{what}: the backend holds {own} parameters, expected {params}"


def check_weights_in_and_out(what: str, report: Any, model: Any, weights: list[np.ndarray]) -> None:
    """get_weights after set_weights: the same bits, float32, C-contiguous, and copies (writing
    to them leaves the model as it was)."""
    got = model.get_weights()
    assert len(got) == len(weights), f"{what}: get_weights' length"
    for w, a, b in zip(report.weights, got, weights):
        assert a.dtype == np.float32 and a.flags.c_contiguous, f"{what}: {w.path}'s array"
        assert a.tobytes() == b.tobytes(), f"{what}: {w.path} after set_weights"
    if got:
        got[0][...] = 7
        assert model.get_weights()[0].tobytes() == weights[0].tobytes(), f"{what}: get_weights returns a view"


def check_forward(what: str, report: Any, model: Any, reference: Any, x0: np.ndarray, predict: bool) -> np.ndarray:
    """Every layer's output in inference mode (and predict()'s) against the reference; the
    model's outputs."""
    outputs, expected = model.engine.layer_outputs(x0), reference.engine.layer_outputs(x0)
    assert len(outputs) == len(report.layers), f"{what}: one output per layer"
    for row, got, ref in zip(report.layers, outputs, expected):
        assert got.shape == (BATCH, *row.output_shape[1:]), f"{what}: {row.name}'s output shape"
        assert_close(got, ref, FORWARD_RTOL, f"{what}, forward, {row.name}")
    if not predict:
        return outputs[-1]
    predictions = model.predict(x0)
    assert predictions.dtype == np.float32
    assert_close(predictions, expected[-1], FORWARD_RTOL, f"{what}, predict")
    return predictions


def check_training(what: str, report: Any, model: Any, reference: Any, x: np.ndarray, y: np.ndarray) -> None:
    """The steps change some weight and keep every shape; with a reference, each step's logs
    and the weights after the last (moving statistics included) match it."""
    start = model.get_weights()
    logs = train(model, x, y)
    after = model.get_weights()
    assert [w.shape for w in after] == [w.shape for w in report.weights], f"{what}: weight shapes after training"
    assert any(not np.array_equal(a, b) for a, b in zip(after, start)), f"{what}: training changed no weight"
    assert all(np.isfinite(v) for step in logs for v in step.values()), f"{what}: {logs}"
    if reference is None:
        return
    reference_logs = train(reference, x, y)
    for step, (got, ref) in enumerate(zip(logs, reference_logs)):
        assert sorted(got) == sorted(ref), f"{what}: history keys"
        for key in ref:
            if key != "loss":
                assert_close(got[key], ref[key], LOSS_RTOL, f"{what}, step {step + 1}, {key}")
    # the loss per step is judged as `modelspec crosscheck` judges it: against the numpy engine
    # in float64, within float32's own spread (the float32 reference and runs from its ulp neighbours)
    truth = [step["loss"] for step in train(_numpy_from(model.spec, start, np.float64), x, y)]
    members = [[step["loss"] for step in reference_logs]]
    for weights in ulp_neighbours(start, (1, 4)):
        members.append([step["loss"] for step in train(_numpy_from(model.spec, weights, np.float32), x, y)])
    left = trajectory_verdict(truth, members, [step["loss"] for step in logs])
    assert left is None, (f"{what}: the loss left float32's noise band around float64 at step {left}: "
                          f"{[step['loss'] for step in logs]} vs float64 {truth}, float32 {members}")
    # relative to the layer's largest weight: a bias followed by batchnorm has a gradient of
    # exactly 0, so it holds nothing but float32 noise, different in each framework
    expected = reference.get_weights()
    for index, row in enumerate(report.layers):
        refs = layer_weights(report, expected, index)
        scale = max((float(np.abs(w).max(initial=0.0)) for w in refs), default=0.0)
        for w, got, ref in zip(row.weights, layer_weights(report, after, index), refs):
            assert_close(got, ref, WEIGHT_RTOL, f"{what}, {w.path} after {len(logs)} steps", scale=scale)


def check_inference_only(what: str, model: Any, reference: Any, x: np.ndarray, y: np.ndarray) -> None:
    """A backend that does not train: fit refuses before any step, leaving every weight as it
    was, and evaluate gives the reference's loss (with penalties) and metrics."""
    if model.spec.loss is None:
        model.compile(loss=default_loss(model.spec))
        reference.compile(loss=default_loss(reference.spec))
    start = model.get_weights()
    with pytest.raises(backends.InferenceOnly, match="runs inference only"):
        train(model, x, y)
    for w, got, ref in zip(model.report.weights, model.get_weights(), start):
        assert got.tobytes() == ref.tobytes(), f"{what}: {w.path} after fit refused"
    got, expected = model.evaluate(x, y, batch_size=BATCH), reference.evaluate(x, y, batch_size=BATCH)
    assert sorted(got) == sorted(expected), f"{what}: evaluate's keys"
    for key, value in expected.items():
        assert_close(got[key], value, LOSS_RTOL, f"{what}, evaluate {key}")


def _numpy_from(spec: ir.Spec, weights: list[np.ndarray], dtype: Any) -> Any:
    model = ms.build(spec, backend="numpy", dtype=dtype)
    model.set_weights(weights)
    return model


def check_round_trip(what: str, report: Any, model: Any, x0: np.ndarray, tmp_path: Path) -> None:
    """ms.load_model on the same backend: the same weights and every layer's output, bit for bit
    (layer outputs rather than predict(), which would trace one more graph in Keras)."""
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = ms.load_model(path, backend=model.backend.name)
    assert loaded.backend.name == model.backend.name
    for w, got, ref in zip(report.weights, loaded.get_weights(), model.get_weights()):
        assert got.tobytes() == ref.tobytes(), f"{what}: {w.path} after loading"
    for row, got, ref in zip(report.layers, loaded.engine.layer_outputs(x0), model.engine.layer_outputs(x0)):
        np.testing.assert_array_equal(got, ref, err_msg=f"{what}: {row.name} after loading")


def check_standalone(what: str, report: Any, ran: dict[str, Any], predictions: np.ndarray) -> None:
    """The emitted program's model name and predictions, with the same weights; where it
    exposes them, its weight paths, the weights it holds once loaded (the same bits: the
    layouts round-trip exactly) and its own initial weights."""
    assert str(ran["name"]) == report.spec.name, f"{what}: the program's model name"
    if "loaded" in ran:
        expected = case_weights(report.spec, report)
        assert len(ran["loaded"]) == len(expected), f"{what}: the program's weights"
        for w, got, ref in zip(report.weights, ran["loaded"], expected):
            if w.dtype == "int64":  # Normalization's count: an int64 in Keras, float32 in the others
                assert got.dtype in (np.int64, np.float32), f"{what}: the program's {w.path}"
                got = got.astype(np.float32)
            assert got.dtype == np.float32 and got.tobytes() == ref.tobytes(), f"{what}: the program's {w.path}"
    if "paths" in ran:
        assert list(ran["paths"]) == [w.path for w in report.weights], f"{what}: the program's weight paths"
    if "initial" in ran:
        for w, got, ref in zip(report.weights, ran["initial"], initial_weights(report.spec, report, SEED)):
            assert got.tobytes() == ref.tobytes(), f"{what}: the program's initial {w.path}"
    assert_close(ran["predictions"], predictions, STANDALONE_RTOL, f"{what}, the emitted program's predictions")
    np.testing.assert_allclose(ran["predictions"], predictions, **STANDALONE_ELEMENTWISE,
                               err_msg=f"{what}, the emitted program's predictions")


# ---------------------------------------------------------------------------------------
# Emitted programs, run on their own


# Each backend's way to load its emitted program with given weights (as each emitter's
# docstring and tests say) and predict the case's first batch. A case's failure is written
# next to its outputs; `done` marks the end of the run, whatever happened.
DRIVER = r"""
import importlib.util, json, os, sys, traceback
sys.modules["modelspec"] = None  # an emitted program must run where modelspec cannot be imported
import numpy as np


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_numpy(program, weights, case, x):
    initial = {f"i{k}": w for k, w in enumerate(program.initial_weights(case["seed"]))}  # its own draw
    return {"predictions": program.predict(program.build(weights), x), "name": np.array(program.MODEL_NAME),
            **initial}


def run_torch(program, weights, case, x):
    import torch

    net = [v for v in vars(program).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
           and getattr(v, "keras_name", None) is not None][0]()
    net.load_keras_weights({p: torch.from_numpy(w) for p, w in zip(case["paths"], weights)})
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(x)).numpy()
    loaded = {f"l{k}": w.numpy() for k, w in enumerate(net.keras_weights().values())}
    return {"predictions": out, "paths": np.array(list(net.keras_weights())), "name": np.array(net.keras_name),
            **loaded}


def run_keras(program, weights, case, x):
    import keras

    keras.backend.clear_session(free_memory=False)  # a fresh naming session, as a program run alone
    model = program.build_model()
    model.set_weights(weights)
    for layer in model.layers:  # Keras's set_weights leaves the copies Normalization divides by stale;
        if isinstance(layer, keras.layers.Normalization):  # its load_weights and adapt refresh them
            layer.finalize_state()
    out = keras.ops.convert_to_numpy(model(x, training=False))
    loaded = {f"l{k}": w for k, w in enumerate(model.get_weights())}
    return {"predictions": out, "paths": np.array([w.path for w in model.weights]), "name": np.array(model.name),
            **loaded}


def main(backend, cases):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run = {"numpy": run_numpy, "torch": run_torch, "keras": run_keras}[backend]
    for case in cases:
        try:
            data = np.load(case["data"])
            weights = [data[f"w{i}"] for i in range(len(case["paths"]))]
            out = run(load(case["program"], f"program_{case['index']}"), weights, case, data["x"])
            np.savez(case["out"], **out)
        except Exception:
            with open(case["out"] + ".error", "w") as f:
                f.write(traceback.format_exc())


try:
    main(sys.argv[1], json.load(open(sys.argv[2])))
finally:
    open("done", "w").close()
"""


def spec_key(spec: ir.Spec) -> str:
    return spec.model_dump_json()


class Standalone:
    """Every case's emitted program for one backend, run in one background subprocess.

    `directory` must be shared by every process of the test session (pytest-xdist's
    workers): the first to create it writes the programs and runs them; the others wait
    for its `done` file. `result(spec)` returns what that spec's program did: its
    predictions for the case's weights and first batch and, where the program exposes
    them, its weight paths (torch, keras) and its own initial weights (numpy). An emitter
    that raises is that case's failure, raised again by `result`."""

    def __init__(self, backend: str, specs: list[ir.Spec], directory: Path) -> None:
        self.backend, self.directory = backend, directory
        self.index: dict[str, int] = {}
        self.errors: dict[int, Exception] = {}
        emitter = backends.get(backend)
        sources: dict[int, tuple[str, ir.Spec]] = {}
        for spec in specs:
            key = spec_key(spec)
            if key not in self.index:
                i = self.index[key] = len(self.index)
                try:
                    sources[i] = emitter.emit(spec, ms.check(spec)), spec
                except Exception as e:
                    self.errors[i] = e
        self.process = None
        try:
            directory.mkdir()
        except FileExistsError:
            return  # another process runs them
        cases = []
        for i, (source, spec) in sources.items():
            report = ms.check(spec)
            x0, _, _ = case_data(spec, report, steps=0)
            (directory / f"program_{i}.py").write_text(source, encoding="utf-8")
            np.savez(directory / f"data_{i}.npz", x=x0,
                     **{f"w{k}": w for k, w in enumerate(case_weights(spec, report))})
            cases.append({"index": i, "program": str(directory / f"program_{i}.py"),
                          "data": str(directory / f"data_{i}.npz"), "out": str(directory / f"out_{i}.npz"),
                          "paths": [w.path for w in report.weights], "seed": SEED})
        (directory / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
        (directory / "driver.py").write_text(DRIVER, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with open(directory / "log.txt", "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(directory / "driver.py"), backend, str(directory / "cases.json")],
                cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)

    def result(self, spec: ir.Spec) -> dict[str, Any]:
        key = spec_key(spec)
        assert key in self.index, "this spec was not given to the Standalone fixture"
        i = self.index[key]
        if i in self.errors:
            raise self.errors[i]
        self.wait()
        out_file = self.directory / f"out_{i}.npz"
        error = self.directory / f"out_{i}.npz.error"
        assert not error.exists(), f"the emitted {self.backend} program failed:\n{error.read_text()}"
        assert out_file.exists(), f"the {self.backend} driver wrote nothing for this case:\n{self.log()}"
        out = dict(np.load(out_file))
        for prefix, name in (("i", "initial"), ("l", "loaded")):
            keys = sorted((k for k in out if k[0] == prefix and k[1:].isdigit()), key=lambda k: int(k[1:]))
            if keys:
                out[name] = [out.pop(k) for k in keys]
        return out

    def wait(self, timeout: float = 600) -> None:
        if self.process is not None:
            code = self.process.wait(timeout=timeout)
            assert code == 0, f"the {self.backend} driver failed:\n{self.log()}"
        deadline = time.monotonic() + timeout
        while not (self.directory / "done").exists():
            assert time.monotonic() < deadline, f"the {self.backend} driver did not finish:\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        path = self.directory / "log.txt"
        return path.read_text()[-5000:] if path.exists() else "(no log)"

    def close(self) -> None:
        """Let the run finish: a later Standalone for this backend (pytest may set the fixture up
        again after other backends' tests) reads its results."""
        if self.process is not None:
            self.process.wait(timeout=600)


def shared_directory(tmp_path_factory: Any, name: str) -> Path:
    """A directory every process of this test session sees (xdist's workers have their own
    base temporary directories, under one for the session)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


# ---------------------------------------------------------------------------------------
# Whole training runs: Model.fit over several epochs of several batches


# Elementwise tolerances (|got - ref| <= atol + rtol·|ref|), those of the per-backend parity
# files these runs replace (tests/test_torch_parity.py, tests/test_keras_parity.py,
# tests/test_torch_keras.py), the tighter one where they differed.
FIT_PREDICT = dict(rtol=1e-5, atol=1e-6)    # before training
FIT_HISTORY = dict(rtol=1e-4, atol=1e-7)    # each epoch's loss, metrics, validation figures
FIT_EVALUATE = dict(rel=1e-4, abs=1e-6)     # Model.evaluate after training
FIT_TRAINED = dict(rtol=1e-4, atol=1e-5)    # predictions after training
FIT_WEIGHTS = dict(rtol=1e-3, atol=2e-5)    # weights after training, moving statistics included
FIT_SLOTS = dict(rtol=1e-3, atol=1e-6)      # optimizer variables after training
KERAS_FIT_HISTORY = dict(rtol=1e-4, atol=0.0)   # against a Keras model built by the tests
KERAS_FIT_TRAINED = dict(rtol=1e-4, atol=1e-6)
KERAS_FIT_WEIGHTS = dict(rtol=1e-3, atol=1e-5)
KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                    "nadam": "Nadam"}


def labels(loss: str, out: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels of the kind `loss` takes for outputs of shape `out` (the batch excluded)."""
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        ids = rng.integers(0, out[-1], size=(n, *out[:-1]))
        return ids if loss.startswith("sparse") else np.eye(out[-1], dtype=np.float32)[ids]
    if loss == "binary_crossentropy":
        return (rng.random((n, *out)) < 0.5).astype(np.float32)
    return rng.standard_normal((n, *out), dtype=np.float32)


def fit_data(spec: ir.Spec, report: Any, n: int, loss: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 4)
    x = inputs(spec, n, rng)
    return x, labels(loss, tuple(report.output_shape[1:]), n, rng)


def fit_run(backend: str, spec: ir.Spec, n: int, fit: dict[str, Any], compile: dict[str, Any] | None) -> dict[str, Any]:
    """Build on `backend` (the conformance seed), predict, fit, evaluate, predict again: what
    each step gave, the weights and the optimizer's variables after it."""
    model = ms.build(spec, backend=backend, seed=SEED)
    if compile:
        model.compile(**compile)
    x, y = fit_data(spec, model.report, n, (compile or {}).get("loss") or loss_of(spec))
    before = model.predict(x)
    history = model.fit(x, y, verbose=0, **fit)
    assert history.stopped is None, f"{backend}: {history.stopped}"
    return {"before": before, "history": history.history, "evaluate": model.evaluate(x, y),
            "after": model.predict(x), "weights": model.get_weights(),
            "slots": model.engine.optimizer_state(), "paths": model.weight_paths}


def keras_fit_run(spec: ir.Spec, n: int, fit: dict[str, Any]) -> dict[str, Any]:
    """The same run in a Keras model the tests build from the IR (tests/keras_reference.py),
    started from the same initial weights: an independent reference. No shuffling: Keras
    draws its own order."""
    import keras

    import keras_reference as kr

    assert not fit.get("shuffle"), "Keras shuffles in its own order"
    report = ms.check(spec)
    model = kr.model(spec)
    model.set_weights(initial_weights(spec, report, SEED))
    optimizer = getattr(keras.optimizers, KERAS_OPTIMIZERS[spec.optimizer.name])(**spec.optimizer.config())
    model.compile(optimizer, spec.loss.name, metrics=list(spec.metrics))
    x, y = fit_data(spec, report, n, spec.loss.name)
    before = model.predict(x, verbose=0)
    history = model.fit(x, y, verbose=0, **fit).history
    return {"before": before, "history": history, "evaluate": model.evaluate(x, y, verbose=0, return_dict=True),
            "after": model.predict(x, verbose=0), "weights": model.get_weights()}


def check_fit_inference_only(what: str, backend: str, spec: ir.Spec, n: int, fit: dict[str, Any],
                             compile: dict[str, Any] | None, expected: dict[str, Any], reference: str) -> None:
    """A backend that does not train, in a fit run: its predictions before training, fit's
    refusal, then evaluate and predict with the weights the reference trained, against the
    reference's."""
    model = ms.build(spec, backend=backend, seed=SEED)
    if compile:
        model.compile(**compile)
    x, y = fit_data(spec, model.report, n, (compile or {}).get("loss") or loss_of(spec))
    np.testing.assert_allclose(model.predict(x), expected["before"], **FIT_PREDICT, err_msg=f"{what}: predictions")
    with pytest.raises(backends.InferenceOnly, match="runs inference only"):
        model.fit(x, y, verbose=0, **fit)
    model.set_weights(expected["weights"])
    evaluated = model.evaluate(x, y)
    order = list if reference == "numpy" else sorted  # Keras orders its results as it pleases
    assert order(evaluated) == order(expected["evaluate"]), f"{what}: evaluate's keys"
    for name, value in expected["evaluate"].items():
        assert evaluated[name] == pytest.approx(value, **FIT_EVALUATE), f"{what}: evaluate {name}"
    np.testing.assert_allclose(model.predict(x), expected["after"], **(KERAS_FIT_TRAINED if reference == "keras"
                                                                       else FIT_TRAINED),
                               err_msg=f"{what}: predictions with the trained weights")


def run_fit_test(backend: str, spec: ir.Spec, *, n: int, batch_size: int, epochs: int = 3,
                 validation_split: float = 0.0, shuffle: bool = False, compile: dict[str, Any] | None = None,
                 reference: str = "numpy", cache: dict[str, Any] | None = None) -> None:
    """`epochs` epochs of Model.fit on `backend` against the same run on `reference`: "numpy"
    (the reference backend: predictions before, every epoch's history, evaluate, predictions
    after, weights and optimizer variables after) or "keras" (a Keras model the tests build,
    `keras_fit_run`: the same but the optimizer's variables). Both start from the conformance
    seed's initial weights, which run_model_test holds bit-identical across backends. A
    backend that does not train is held to what it does (check_fit_inference_only)."""
    fit = dict(batch_size=batch_size, epochs=epochs, validation_split=validation_split, shuffle=shuffle)
    if shuffle:
        fit["seed"] = SEED + 1
    key = f"{reference}|{spec_key(spec)}|{n}|{sorted(fit.items())}|{compile}"
    if cache is not None and key in cache:
        expected = cache[key]
    elif reference == "keras":
        assert compile is None
        expected = keras_fit_run(spec, n, {k: v for k, v in fit.items() if k != "seed"})
    else:
        expected = fit_run("numpy", spec, n, fit, compile)
    if cache is not None:
        cache[key] = expected
    what = f"{backend} against {reference}"
    if not backends.get(backend).trains:
        check_fit_inference_only(what, backend, spec, n, fit, compile, expected, reference)
        return
    got = fit_run(backend, spec, n, fit, compile)
    np.testing.assert_allclose(got["before"], expected["before"], **FIT_PREDICT, err_msg=f"{what}: predictions")
    order = list if reference == "numpy" else sorted  # Keras orders its history as it pleases
    assert order(got["history"]) == order(expected["history"]), f"{what}: history keys"
    history_tol = KERAS_FIT_HISTORY if reference == "keras" else FIT_HISTORY
    runs = len(expected["history"]["loss"])  # epochs, or fewer when a callback stopped training
    assert runs == epochs or spec.early_stopping is not None, f"{reference}: {runs} epochs"
    for name, values in expected["history"].items():
        assert len(got["history"][name]) == runs, f"{what}: {name} has one value per epoch"
        np.testing.assert_allclose(got["history"][name], values, **history_tol, err_msg=f"{what}: history {name}")
    assert order(got["evaluate"]) == order(expected["evaluate"]), f"{what}: evaluate's keys"
    for name, value in expected["evaluate"].items():
        assert got["evaluate"][name] == pytest.approx(value, **FIT_EVALUATE), f"{what}: evaluate {name}"
    np.testing.assert_allclose(got["after"], expected["after"], **(KERAS_FIT_TRAINED if reference == "keras"
                                                                   else FIT_TRAINED),
                               err_msg=f"{what}: predictions after training")
    paths = got["paths"]
    assert len(got["weights"]) == len(expected["weights"]) == len(paths)
    for path, ours, theirs in zip(paths, got["weights"], expected["weights"]):
        np.testing.assert_allclose(ours, theirs, **(KERAS_FIT_WEIGHTS if reference == "keras" else FIT_WEIGHTS),
                                   err_msg=f"{what}: {path} after training")
    if reference == "numpy":
        ours, theirs = got["slots"], expected["slots"]
        assert [a.shape for a in ours] == [a.shape for a in theirs], f"{what}: optimizer variables' shapes"
        assert [a.dtype for a in ours] == [a.dtype for a in theirs], f"{what}: optimizer variables' dtypes"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(a, b, **FIT_SLOTS, err_msg=f"{what}: optimizer variable {i}")
