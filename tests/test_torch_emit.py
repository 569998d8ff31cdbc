"""`modelspec compile --backend torch`: a readable module that imports only torch, runs where
modelspec is not installed, and computes what the live backend computes; spec text never
becomes code."""

from __future__ import annotations

import ast
import inspect
import io
import math
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from corpus import ROOT, SPEC_FILES, SPEC_IDS, VARIED, load_program, modelspec_cli  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402
from modelspec.training import synthetic_ids  # noqa: E402

pytestmark = pytest.mark.torch

ALLOWED_IMPORTS = {"math", "torch", "torch.nn.functional", "torch.nn"}
SITE_PACKAGES = str(Path(torch.__file__).resolve().parent.parent)

# Runs a generated module with no site-packages processing (so the editable modelspec is not
# importable) and only torch's folder on the path: it loads weights with
# torch.load(weights_only=True), and writes predictions (and a history, if asked) back.
DRIVER = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
try:
    import modelspec
except ImportError:
    pass
else:
    raise SystemExit("modelspec must not be importable here")
import torch
import model as generated
inputs = torch.load(sys.argv[3], weights_only=True)
net = [v for k, v in vars(generated).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
       and getattr(v, "keras_name", None) is not None][0]()
net.load_keras_weights(inputs["weights"])
out = {"predict": net.eval()(inputs["x"]).detach()}
if "y" in inputs:
    history = generated.fit(net, inputs["x"], inputs["y"], epochs=2, batch_size=8, validation_split=0.25,
                            shuffle=False)
    out.update({k: torch.tensor(v) for k, v in history.items()})
    out["trained"] = net.eval()(inputs["x"]).detach()
torch.save(out, sys.argv[4])
"""


def emit(spec: ms.Spec) -> str:
    return TorchBackend().emit(spec, ms.check(spec))


def imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(f"{node.module}.{node.names[0].name}" if node.module == "torch" else node.module)
    return found



def model_class(module):
    return [v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, torch.nn.Module) and hasattr(v, "keras_name")][0]


def run_standalone(tmp_path: Path, source: str, weights: dict, x: np.ndarray, y: np.ndarray | None = None) -> dict:
    (tmp_path / "model.py").write_text(source, encoding="utf-8")
    inputs = {"weights": {k: torch.from_numpy(v) for k, v in weights.items()}, "x": torch.from_numpy(x)}
    if y is not None:
        inputs["y"] = torch.from_numpy(y)
    torch.save(inputs, tmp_path / "in.pt")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", DRIVER, str(tmp_path), SITE_PACKAGES,
                           str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "out.pt", weights_only=True)


def all_specs():
    specs = [pytest.param(ms.parse(p), id=i) for p, i in zip(SPEC_FILES, SPEC_IDS)]
    return specs + [pytest.param(ms.parse(text), id=name) for name, text in sorted(VARIED.items())]


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [pytest.param(ms.parse(text), id=name) for name, text in sorted(VARIED.items())])
def test_every_varied_spec_emits_a_module_that_predicts_as_the_backend(spec, tmp_path):
    """The corpus's varied specs (the tutorial's, every layer case, optimizer and loss are
    conformance cases, whose check 6 does this for every backend)."""
    source = emit(spec)
    assert imports(source) <= ALLOWED_IMPORTS
    module = load_program(source, tmp_path / "model.py")
    cls = model_class(module)
    assert cls.__name__.isidentifier() and cls.keras_name == spec.name
    net = cls()
    live = ms.build(spec, backend="torch", seed=5, device="cpu")
    net.load_keras_weights(dict(zip(live.weight_paths, live.get_weights())))
    for path, value in net.keras_weights().items():  # the layouts round-trip exactly
        assert value.numpy().tobytes() == live.get_weights()[live.weight_paths.index(path)].tobytes()
    rng = np.random.default_rng(1)
    x = (synthetic_ids(spec, 9, rng) if spec.input_dtype == "int32"
         else rng.normal(size=(9, *spec.input_shape)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(torch.from_numpy(x)).numpy(), live.predict(x), rtol=1e-6, atol=1e-7)


def test_the_module_runs_without_modelspec(tmp_path):
    """A subprocess where only torch can be imported: the emitted module predicts and trains
    as the backend does, history included."""
    spec = ms.parse(VARIED["every_layer"])
    spec = spec.model_copy(update={"layers": tuple(layer.model_copy(update={"rate": 0.0})
                                                   if layer.kind == "dropout" else layer for layer in spec.layers)})
    live = ms.build(spec, backend="torch", seed=2, device="cpu")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(24, 32, 32, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 24)]
    out = run_standalone(tmp_path, emit(spec), dict(zip(live.weight_paths, live.get_weights())), x, y)
    np.testing.assert_allclose(out["predict"].numpy(), live.predict(x), rtol=1e-6, atol=1e-7)
    history = live.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, shuffle=False, verbose=0).history
    assert sorted(k for k in out if k not in ("predict", "trained")) == sorted(history)
    for key, values in history.items():
        np.testing.assert_allclose(out[key].numpy(), values, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(out["trained"].numpy(), live.predict(x), rtol=1e-4, atol=1e-6)


TRAINED = {
    "bn_rmsprop_momentum": "input 5\ndense 6 relu l2=0.01\nbatchnorm\ndense 3 softmax\n"
                           "optimizer rmsprop momentum=0.5 centered=true\nloss categorical_crossentropy\nmetrics accuracy",
    "conv_nadam": "input 6x6x2\nconv2d 3 3x3 strides=2 padding=same relu l1=0.01\nmaxpool2d 2 padding=same\n"
                  "flatten\ndense 2 sigmoid\noptimizer nadam learning_rate=0.01\nloss binary_crossentropy\n"
                  "metrics accuracy",
    "sgd_sparse": "input 4\ndense 5 tanh\ndense 3 softmax\noptimizer sgd momentum=0.9 nesterov=true "
                  "weight_decay=0.01\nloss sparse_categorical_crossentropy\nmetrics accuracy",
    "adagrad_huber": "input 4\ndense 5 elu\ndense 2\noptimizer adagrad learning_rate=0.1\nloss huber delta=0.3\n"
                     "metrics mae mse",
    "adamw_probabilities": "input 4\ndense 3 softplus\noptimizer adamw learning_rate=0.01\n"
                           "loss categorical_crossentropy\nmetrics categorical_accuracy",
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_the_emitted_fit_trains_as_the_backend(name, tmp_path):
    spec = ms.parse(TRAINED[name])
    module = load_program(emit(spec), tmp_path / "model.py")
    net = model_class(module)()
    live = ms.build(spec, backend="torch", seed=1, device="cpu")
    net.load_keras_weights(dict(zip(live.weight_paths, live.get_weights())))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, *spec.input_shape)).astype(np.float32)
    out = ms.check(spec).output_shape[-1]
    if spec.loss.name == "sparse_categorical_crossentropy":
        y = rng.integers(0, out, 30)
    elif spec.loss.name == "huber":
        y = rng.normal(size=(30, out)).astype(np.float32)
    else:
        y = (rng.random((30, out)) > 0.5).astype(np.float32)
    expected = live.fit(x, y, epochs=3, batch_size=7, validation_split=0.2, shuffle=False, verbose=0).history
    got = module.fit(net, torch.from_numpy(x), torch.from_numpy(y), epochs=3, batch_size=7,
                     validation_split=0.2, shuffle=False)
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
    for path, w in zip(live.weight_paths, live.get_weights()):
        np.testing.assert_allclose(net.keras_weights()[path].numpy(), w, rtol=1e-5, atol=1e-7, err_msg=path)


def test_a_non_finite_step_stops_the_emitted_fit_before_its_update(tmp_path, capsys):
    spec = ms.parse("input 2\ndense 1\noptimizer sgd\nloss mse")
    module = load_program(emit(spec), tmp_path / "model.py")
    net = model_class(module)()
    before = {k: v.clone() for k, v in net.keras_weights().items()}
    x = torch.tensor([[1.0, 2.0], [3e38, 3e38]])
    history = module.fit(net, x, torch.zeros(2, 1), epochs=1, batch_size=2)
    assert history == {} and "not finite" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in net.keras_weights().items())


def test_keras_initializers_in_the_emitted_module(tmp_path):
    """Distributions of reset_parameters, from Keras's formulas (keras/src/initializers/random_initializers.py)."""
    spec = ms.parse("input 400\ndense 300 he_normal\ndense 200 glorot_normal bias_init=ones\n"
                    "dense 100 lecun_uniform bias_init=random_uniform(minval=0.1, maxval=0.3)\n"
                    "dense 50 truncated_normal(mean=0.5, stddev=0.1)\ndense 60 orthogonal(gain=2.0)\ndense 10")
    module = load_program(emit(spec), tmp_path / "model.py")
    torch.manual_seed(0)
    w = {k: v.numpy() for k, v in model_class(module)().keras_weights().items()}
    prefix = spec.name
    he = w[f"{prefix}/dense/kernel"]
    assert he.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert np.abs(he).max() <= 2 * math.sqrt(2 / 400) / 0.87962566103423978 + 1e-6  # truncated at 2σ
    assert not w[f"{prefix}/dense/bias"].any()
    glorot = w[f"{prefix}/dense_1/kernel"]
    assert glorot.std() == pytest.approx(math.sqrt(2 / 500), rel=0.03)
    assert (w[f"{prefix}/dense_1/bias"] == 1).all()
    lecun = w[f"{prefix}/dense_2/kernel"]
    assert np.abs(lecun).max() <= math.sqrt(3 / 200) and lecun.std() == pytest.approx(math.sqrt(1 / 200), rel=0.03)
    bias = w[f"{prefix}/dense_2/bias"]
    assert bias.min() >= 0.1 and bias.max() <= 0.3
    tn = w[f"{prefix}/dense_3/kernel"]
    assert tn.min() >= 0.3 - 1e-6 and tn.max() <= 0.7 + 1e-6 and tn.std() == pytest.approx(0.1 * 0.8796, rel=0.05)
    q = w[f"{prefix}/dense_4/kernel"]  # (50, 60): orthonormal rows, times the gain
    np.testing.assert_allclose(q @ q.T, 4 * np.eye(50), atol=1e-4)
    glorot_uniform = w[f"{prefix}/dense_5/kernel"]
    assert np.abs(glorot_uniform).max() <= math.sqrt(6 / 70)


HOSTILE = ['x"); import os #', "a'''b\"\"\"c", "line\nbreak\rreturn\u2028sep", "\\", "#", "é 模型", "forward",
           "__init__", "1st", "class", "self", "F", "BatchNorm", "x\x00y"]


@pytest.mark.parametrize("name", HOSTILE)
def test_spec_text_never_becomes_code(name, tmp_path):
    spec = ms.parse("input 4\ndense 3 relu\nbatchnorm\ndense 2 softmax\noptimizer adam\nloss categorical_crossentropy")
    layers = list(spec.layers)
    layers[0] = layers[0].model_copy(update={"name": name})
    layers[1] = layers[1].model_copy(update={"name": name + "_"})
    spec = spec.model_copy(update={"name": name.replace("/", "_"), "layers": tuple(layers)})
    source = emit(spec)
    tree = ast.parse(source)
    assert imports(source) <= ALLOWED_IMPORTS
    assert "os" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if len(name) > 1 and not name.replace("_", "a").isalnum():  # the rest appears in identifiers
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT]
        docstrings = [ast.get_docstring(n) or "" for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        assert not any(name in text for text in comments + docstrings)
    module = load_program(source, tmp_path / "model.py")
    cls = model_class(module)
    assert cls.keras_name == spec.name
    net = cls()
    assert [path for path, _, _ in net.keras_layout()][:2] == [f"{spec.name}/{name}/kernel", f"{spec.name}/{name}/bias"]
    x = torch.randn(8, 4)
    history = module.fit(net, x, torch.nn.functional.one_hot(torch.arange(8) % 2, 2).float(), epochs=1)
    assert set(history) == {"loss"}


def test_the_compile_command_writes_the_module(tmp_path):
    """The file `compile -o` writes runs as a script where only torch can be imported; its
    model class is the spec's model, and its fit(), called with its defaults, trains as
    Model.fit with the spec's fit statement (batch 512, 20% held out, shuffled; 100 epochs, of
    which 3 run): one batch an epoch, so the order of shuffling cannot change the numbers
    beyond float32 rounding."""
    done = modelspec_cli("compile", ROOT / "specs" / "mnist.ms", "--backend", "torch", "-o", tmp_path / "mnist.py")
    assert done.returncode == 0, done.stderr
    run = subprocess.run([sys.executable, "-I", "-S", "-c",
                          "import runpy, sys; sys.path[:0] = sys.argv[1:]; runpy.run_path('mnist.py', run_name='__main__')",
                          str(tmp_path), SITE_PACKAGES], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "(64, 10)" and "Epoch 2/2 - " in run.stdout
    module = load_program((tmp_path / "mnist.py").read_text(encoding="utf-8"), tmp_path / "mnist.py")
    spec = ms.parse(ROOT / "specs" / "mnist.ms")
    cls = model_class(module)
    assert cls.keras_name == "mnist" and cls.__name__ == "Mnist"
    live = ms.build(spec, backend="torch", seed=3, device="cpu")
    net = cls()
    net.load_keras_weights(dict(zip(live.weight_paths, live.get_weights())))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 20)]
    fit = inspect.signature(module.fit).parameters
    assert fit["epochs"].default == spec.fit.epochs == 100
    got = module.fit(net, torch.from_numpy(x), torch.from_numpy(y), epochs=3)  # the other settings its defaults
    expected = live.fit(x, y, epochs=3, verbose=0).history
    assert list(got) == list(expected) and len(expected["loss"]) == 3
    assert sorted(expected) == ["categorical_accuracy", "loss", "val_categorical_accuracy", "val_loss"]
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for path, w in zip(live.weight_paths, live.get_weights()):
        np.testing.assert_allclose(net.keras_weights()[path].numpy(), w, rtol=1e-4, atol=1e-6, err_msg=path)


def defined_but_unused(source: str) -> set[str]:
    """Top-level functions, classes and constants that nothing in the module refers to (the
    `__main__` block refers to the entry points)."""
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    return defined - {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


@pytest.mark.parametrize("spec", all_specs())
def test_the_module_holds_only_what_the_spec_uses(spec, tmp_path):
    """No layer, optimizer, loss or helper the spec does not use: every definition is used.
    Without a training section, no training code at all: the module is its model class;
    `logits` gives the values before a final softmax, which forward() applies."""
    source = emit(spec)
    assert defined_but_unused(source) == set()
    module = load_program(source, tmp_path / "model.py")
    if spec.loss is not None:
        return
    tree = ast.parse(source)
    definitions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    root = model_class(module).__name__
    reached, todo = {root}, [definitions[root]]
    while todo:  # what the model class uses, and what that uses
        for name in {n.id for n in ast.walk(todo.pop()) if isinstance(n, ast.Name)} & set(definitions) - reached:
            reached.add(name)
            todo.append(definitions[name])
    assert reached == set(definitions) and not hasattr(module, "fit"), set(definitions) - reached
    if spec.layers[-1].kind == "dense" and spec.layers[-1].activation == "softmax":
        net = model_class(module)().eval()
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, *spec.input_shape)).astype(np.float32))
        with torch.no_grad():
            torch.testing.assert_close(torch.softmax(net.logits(x), dim=-1), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("spec", all_specs())
def test_the_module_reads_like_hand_written_code(spec):
    source = emit(spec)
    lines = source.splitlines()
    assert max(map(len, lines)) <= 100
    assert imports(source) <= ALLOWED_IMPORTS
    assert not re.search(r"\blambda\b|(?<![.\w])(exec|eval)\(", source)
    assert source.endswith("\n") and not any(line != line.rstrip() for line in lines)
    compile(source, "model.py", "exec")
