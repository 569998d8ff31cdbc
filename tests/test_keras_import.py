"""`modelspec import`: Keras Sequential models, built and saved by Keras itself, back to specs.

A spec built in Keras and imported again is the same spec, and checks to the names,
shapes and parameters Keras reports for the model; a saved .keras file brings its
optimizer, loss and metrics along. What a spec cannot express is named with its layer
and position, and a broken file is one line on stderr, exit status 1.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import modelspec as ms
from corpus import SPEC_FILES, VARIED
from modelspec.cli import main
from modelspec.keras_import import spec_from_config
from modelspec.printer import to_text

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402
import specgen  # noqa: E402

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # Keras's own, on NumPy 2

OPTIMIZER_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW",
                     "adagrad": "Adagrad", "nadam": "Nadam"}
SOURCES = ({p.stem: p for p in SPEC_FILES} | VARIED
           | {f"random_{i}": t for i, t in enumerate(specgen.spec_texts(100, seed=7, portable_names=False))})


def keras_model(spec: ms.ir.Spec, compiled: bool = False) -> keras.Model:
    model = kr.model(spec)  # a Sequential, or a functional model for a graph
    if compiled:
        opt = spec.optimizer or ms.ir.Optimizer(name="rmsprop")
        hyper = {k: v for k, v in opt.config().items() if v is not None}
        model.compile(optimizer=getattr(keras.optimizers, OPTIMIZER_CLASSES[opt.name])(**hyper),
                      loss=spec.loss.name, metrics=list(spec.metrics))
    return model


def layers_only(spec: ms.ir.Spec) -> dict:
    """The spec's architecture in Keras's layer order (an import may write a graph's layers in
    another order), each layer under its Keras name and with what it reads; pool strides equal
    to the pool size written as Keras's default."""
    report = ms.check(spec)
    layers = [row.layer.model_copy(update={"name": row.name}) for row in report.layers]
    layers = [layer.model_copy(update={"strides": None}) if layer.kind in ("maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d")
              and layer.strides == layer.pool_size else layer for layer in layers]
    return {"name": spec.name, "input_shape": spec.input_shape, "layers": [layer.model_dump() for layer in layers],
            "sources": [row.sources for row in report.layers]}


def keras_rows(model: keras.Model) -> list[tuple]:
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape), layer.count_params()) for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)]


@pytest.mark.parametrize("source", SOURCES.values(), ids=SOURCES.keys())
def test_a_keras_model_comes_back_as_its_spec(source):
    spec = ms.parse(source)
    model = keras_model(spec)
    imported, notes = spec_from_config(json.loads(model.to_json()))
    assert layers_only(imported) == layers_only(spec)
    report = ms.check(ms.parse(to_text(imported)))
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == keras_rows(model)
    assert report.total_params == model.count_params()


TRAINED = [p for p in SPEC_FILES if ms.parse(p).loss is not None] + ["nadam_and_defaults", "activations"]


@pytest.mark.parametrize("source", TRAINED, ids=[getattr(s, "stem", s) for s in TRAINED])
def test_a_saved_keras_file_brings_its_training_settings(source, tmp_path, capsys):
    spec = ms.parse(VARIED.get(source, source) if isinstance(source, str) else source)
    model = keras_model(spec, compiled=True)
    model.save(tmp_path / "model.keras")
    out = tmp_path / "imported.ms"
    assert main(["import", str(tmp_path / "model.keras"), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    imported = ms.parse(out)
    assert layers_only(imported) == layers_only(spec.model_copy(update={"name": imported.name}))
    assert imported.name == spec.name
    assert imported.optimizer.config() == (spec.optimizer or ms.ir.Optimizer(name="rmsprop")).config()
    assert imported.loss == spec.loss and imported.metrics == spec.metrics


def test_training_settings_saved_as_objects(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")], name="objects")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
                  loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(), keras.metrics.MeanSquaredError()])
    model.save(tmp_path / "m.keras")
    spec, notes = spec_from_config(json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json")))
    assert to_text(spec).splitlines()[-3:] == [
        "optimizer sgd learning_rate=0.05 momentum=0.9 nesterov=true", "loss categorical_crossentropy",
        "metrics categorical_accuracy mse"]
    model.compile(optimizer="adam", loss=keras.losses.Huber(delta=2.0))
    model.save(tmp_path / "h.keras")
    spec, notes = spec_from_config(json.loads(zipfile.ZipFile(tmp_path / "h.keras").read("config.json")))
    assert spec.loss == ms.ir.Loss(name="huber") and "delta" in notes[0]


def test_import_prints_the_spec(tmp_path, capsys):
    keras_model(ms.parse("specs/digits_c.ms")).save(tmp_path / "c.keras")
    assert main(["import", str(tmp_path / "c.keras")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model digits_c\ninput 8x8\nrescale 1/16\nflatten\ndense 64 he_normal(seed=2024)\n"
                           "batchnorm\n")
    assert ms.check(ms.parse(text)).total_params == ms.check(ms.parse("specs/digits_c.ms")).total_params


def test_layer_names_are_kept_where_modelspec_would_differ():
    keras.backend.clear_session(free_memory=False)
    keras.layers.Dense(1), keras.layers.Dense(1)  # a session that has named two layers already
    layers = [keras.layers.Dense(4, name="encoder"), keras.layers.Dense(3), keras.layers.Dense(2, name="dense"),
              keras.layers.BatchNormalization()]
    model = keras.Sequential([keras.Input((5,)), *layers], name="named")
    spec, _ = spec_from_config(json.loads(model.to_json()))
    assert [layer.name for layer in spec.layers] == ["encoder", "dense_2", None, None]
    assert [r.name for r in ms.check(spec).layers] == ["encoder", "dense_2", "dense", "batch_normalization"]
    assert [r.name for r in ms.check(spec).layers] == [layer.name for layer in model.layers]


def test_a_tf_keras_2_config():
    """tf.keras 2 wrote batch_input_shape on the first layer, alpha for LeakyReLU, BN axes as lists."""
    config = {"class_name": "Sequential", "keras_version": "2.15.0", "config": {"name": "old", "layers": [
        {"class_name": "Conv2D", "config": {"name": "conv2d", "trainable": True, "batch_input_shape": [None, 8, 8, 1],
                                            "dtype": "float32", "filters": 2, "kernel_size": [3, 3], "strides": [1, 1],
                                            "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
                                            "groups": 1, "activation": "relu", "use_bias": True,
                                            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                            "bias_initializer": {"class_name": "Zeros", "config": {}},
                                            "kernel_regularizer": {"class_name": "L2", "config": {"l2": 0.009999999776482582}},
                                            "bias_regularizer": None, "activity_regularizer": None,
                                            "kernel_constraint": None, "bias_constraint": None}},
        {"class_name": "BatchNormalization", "config": {"name": "batch_normalization", "axis": [3], "momentum": 0.99,
                                                        "epsilon": 0.001, "center": True, "scale": True}},
        {"class_name": "LeakyReLU", "config": {"name": "leaky_re_lu", "alpha": 0.30000001192092896}},
        {"class_name": "Flatten", "config": {"name": "flatten", "data_format": "channels_last"}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 3, "activation": "softmax"}}]}}
    spec, _ = spec_from_config(config)
    assert to_text(spec) == ("model old\ninput 8x8x1\nconv2d 2 3x3 relu l2=0.01\nbatchnorm\nleaky_relu\n"
                                "flatten\ndense 3 softmax\n")


def sequential(*layers: dict, **config) -> dict:
    entries = [{"class_name": "InputLayer", "config": {"batch_shape": [None, 6, 6, 2], "name": "input"}}]
    entries += [{"class_name": cls, "config": {"name": name, **c}} for cls, name, c in layers]
    return {"class_name": "Sequential", "config": {"name": "m", "layers": entries}, **config}


DENSE = ("Dense", "dense", {"units": 2})
UNSUPPORTED = {
    "conv_lstm": (sequential(("ConvLSTM1D", "conv_lstm1d", {"filters": 2, "kernel_size": [2]}), ("Flatten", "flatten", {}),
                             DENSE),
                  "layer 1 of 3, 'conv_lstm1d' (ConvLSTM1D): modelspec has no ConvLSTM1D layer; a spec can hold Dense, "
                  "Conv2D"),
    "frozen": (sequential(("Flatten", "flatten", {}), ("Dense", "head", {"units": 2, "trainable": False})),
               "layer 2 of 2, 'head' (Dense): the layer is frozen (trainable=False)"),
    "constraint": (sequential(("Flatten", "f", {}), ("Dense", "d", {"units": 2, "kernel_constraint": {
        "class_name": "MaxNorm", "config": {"max_value": 2}}})),
        "layer 2 of 2, 'd' (Dense): kernel_constraint='MaxNorm' cannot be expressed in a spec"),
    "dilation": (sequential(("Conv2D", "c", {"filters": 1, "kernel_size": [2, 2], "dilation_rate": [2, 2]})),
                 "layer 1 of 1, 'c' (Conv2D): dilation_rate=(2, 2) cannot be expressed in a spec"),
    "channels_first": (sequential(("Flatten", "f", {"data_format": "channels_first"})),
                       "layer 1 of 1, 'f' (Flatten): data_format='channels_first' cannot be expressed"),
    "activation": (sequential(("Flatten", "f", {}), ("Dense", "d", {"units": 2, "activation": "hard_sigmoid"})),
                   "layer 2 of 2, 'd' (Dense): the activation 'hard_sigmoid' is not one a spec can use"),
    "bn_axis": (sequential(("BatchNormalization", "bn", {"axis": 1})),
                "layer 1 of 1, 'bn' (BatchNormalization): axis=1 cannot be expressed in a spec"),
    "normalization_axis": (sequential(("Normalization", "n", {"axis": [1]})),
                           "layer 1 of 1, 'n' (Normalization): axis=1 cannot be expressed in a spec: normalize "
                           "normalizes the last axis"),
    "normalization_no_axis": (sequential(("Normalization", "n", {"axis": []})),
                              "layer 1 of 1, 'n' (Normalization): axis=[] cannot be expressed in a spec"),
    "normalization_values": (sequential(("Normalization", "n", {"axis": [-1], "mean": 0.5, "variance": 2.0})),
                             "layer 1 of 1, 'n' (Normalization): mean and variance passed to the constructor "
                             "cannot be expressed in a spec"),
    "normalization_invert": (sequential(("Normalization", "n", {"invert": True})),
                             "layer 1 of 1, 'n' (Normalization): invert=True cannot be expressed in a spec"),
    "rescaling_per_channel": (sequential(("Rescaling", "r", {"scale": [0.5, 2.0]})),
                              "layer 1 of 1, 'r' (Rescaling): scale=[0.5, 2.0] cannot be expressed in a spec: "
                              "rescale takes one finite number"),
    "bad_units": (sequential(("Flatten", "f", {}), ("Dense", "d", {"units": "many"})),
                  "layer 2 of 2, 'd' (Dense): its config is not valid: units:"),
    "schedule": (sequential(("Flatten", "f", {}), DENSE, compile_config={"optimizer": {"class_name": "Adam", "config": {
        "learning_rate": {"class_name": "CosineDecayRestarts", "config": {}}}}}),
        "compile(): Adam's learning_rate is a schedule (CosineDecayRestarts) a spec cannot hold"),
    "ema": (sequential(("Flatten", "f", {}), DENSE, compile_config={"optimizer": {"class_name": "SGD", "config": {
        "use_ema": True}}}), "compile(): SGD(use_ema=True) cannot be expressed in a spec"),
    "reduction": (sequential(("Flatten", "f", {}), DENSE, compile_config={"loss": {
        "class_name": "CategoricalCrossentropy", "config": {"reduction": "sum"}}}),
        "compile(): CategoricalCrossentropy(reduction='sum') cannot be expressed in a spec"),
    "subclassed": ({"class_name": "MyModel", "config": {"layers": []}},
                   "only Sequential and functional models can be imported; this is a MyModel model"),
    "unbuilt": ({"class_name": "Sequential", "config": {"name": "m", "layers": [{"class_name": "Dense", "config": {
        "units": 2}}]}}, "the model has no input shape (it was never built)"),
    "too_small": (sequential(("Conv2D", "c", {"filters": 1, "kernel_size": [9, 9]})), "the model is not valid: c:"),
}


@pytest.mark.parametrize("case", UNSUPPORTED, ids=UNSUPPORTED)
def test_what_a_spec_cannot_express_is_named(case, tmp_path, capsys):
    config, message = UNSUPPORTED[case]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    assert main(["import", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"modelspec: error: {path}: ") and message in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1


def test_a_real_keras_model_with_a_layer_a_spec_cannot_hold(tmp_path, capsys):
    keras.backend.clear_session(free_memory=False)
    model = keras.Sequential([keras.Input((5, 4, 3)), keras.layers.ConvLSTM1D(2, 2), keras.layers.Flatten(),
                              keras.layers.Dense(2)], name="seq")
    model.save(tmp_path / "seq.keras")
    assert main(["import", str(tmp_path / "seq.keras")]) == 1
    assert "layer 1 of 3, 'conv_lstm1d' (ConvLSTM1D): modelspec has no ConvLSTM1D layer" in capsys.readouterr().err


BROKEN = {  # (file name, content, message)
    "not_json": ("model.json", b"this is not json", "it is not valid JSON"),
    "json_list": ("model.json", b"[1, 2]", "expected a Keras model's JSON config (an object); received list"),
    "truncated_zip": ("model.keras", b"PK\x03\x04" + b"\x00" * 20, "is a damaged .keras file"),
    "h5": ("model.keras", b"\x89HDF\r\n\x1a\n" + b"\x00" * 20, "is an HDF5 (.h5) file"),
    "binary": ("model.json", bytes(range(256)), "it is not valid JSON"),
    "garbage_keras": ("model.keras", bytes(range(256)), "is not a .keras file: expected a zip archive"),
    "json_as_keras": ("model.keras", b'{"class_name": "Sequential"}', "is not a .keras file: expected a zip archive"),
}


@pytest.mark.parametrize("case", BROKEN, ids=BROKEN)
def test_a_broken_file_is_one_clear_line(case, tmp_path, capsys):
    name, data, message = BROKEN[case]
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelspec: error: ") and message in err and err.count("\n") == 1, err


def test_a_zip_without_a_config_and_a_missing_file(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("model.weights.h5", b"")
    assert main(["import", str(tmp_path / "empty.keras")]) == 1
    assert "a zip file without config.json" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "missing.keras")]) == 1
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "out.ms").exists()


def test_layers_only_leaves_out_training(tmp_path, capsys):
    model = keras_model(ms.parse("specs/digits.ms"), compiled=True)
    model.compile(optimizer=keras.optimizers.SGD(use_ema=True), loss="mse")
    model.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras")]) == 1
    assert capsys.readouterr().err.endswith(
        "compile(): SGD(use_ema=True) cannot be expressed in a spec; --layers-only imports the layers without it\n")
    assert main(["import", str(tmp_path / "m.keras"), "--layers-only"]) == 0
    spec = ms.parse(capsys.readouterr().out)
    assert spec.optimizer is None and spec.loss is None and len(spec.layers) == 5  # rescale, flatten, 3 dense
    np.testing.assert_equal(ms.check(spec).total_params, model.count_params())


def test_rescaling_and_normalization_come_back_as_rescale_and_normalize():
    """Keras's usual preprocessing head: its scale kept to the bit (1/255 prints as 1/255);
    Normalization's last axis as -1 or, as tf.keras saved it, its index."""
    keras.backend.clear_session(free_memory=False)  # Keras's automatic names, from a fresh count
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Rescaling(1 / 127.5, offset=-1), keras.layers.Normalization(),
                              keras.layers.Flatten(), keras.layers.Dense(2)], name="m")
    spec, _ = spec_from_config(json.loads(model.to_json()))
    assert [layer.kind for layer in spec.layers] == ["rescale", "rescale", "normalize", "flatten", "dense"]
    assert (spec.layers[0].scale, spec.layers[1].scale, spec.layers[1].offset) == (1 / 255, 1 / 127.5, -1.0)
    assert "\nrescale 1/255\nrescale 1/127.5 offset=-1.0\nnormalize\n" in to_text(spec)
    config = sequential(("Normalization", "n", {"axis": [3]}))
    spec, _ = spec_from_config(config)
    assert spec.layers[0] == ms.ir.Normalize(name="n")


# ---------------------------------------------------------------------------------------
# Functional models

GRAPH_SOURCES = {
    "residual_block": """
        model residual_block
        input 8x8x3
        conv2d 4 3x3 relu padding=same
        block residual(filters) {
          conv2d filters 3x3 relu padding=same
          conv2d filters 3x3 padding=same
          batchnorm momentum=0.9
          add in
          relu
        }
        residual 4
        residual 4
        globalavgpool2d
        dropout 0.25 seed=3
        dense 3 softmax
        optimizer sgd learning_rate=0.05 momentum=0.9
        loss categorical_crossentropy
        metrics accuracy
    """,
    "branches_and_merges": """
        model branches_and_merges
        input 6
        a = dense 4 relu
        b = dense 4 from=in name=shortcut
        c = dense 4 tanh from=in
        concat a b c
    """,
    "merge_of_the_input": """
        model merge_of_the_input
        input 4
        dense 4 relu
        dense 4
        subtract in
        n = dense 4
        multiply n n
    """,
}


@pytest.mark.parametrize("source", GRAPH_SOURCES.values(), ids=GRAPH_SOURCES.keys())
def test_a_functional_model_comes_back_as_its_spec(source, tmp_path):
    from test_keras_graph import functional

    spec = ms.parse(source)
    model = functional(spec)
    imported, _ = spec_from_config(json.loads(model.to_json()))
    assert imported.connections == spec.connections
    assert layers_only(imported) == layers_only(spec)
    report = ms.check(ms.parse(convert_text(imported)))
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == keras_rows(model)
    assert [w.path for w in report.weights] == [w.path for w in model.weights]


def convert_text(spec: ms.ir.Spec) -> str:
    from modelspec.keras_import import spec_text

    return spec_text(spec)


def test_a_saved_functional_model_brings_its_training_settings(tmp_path, capsys):
    from test_keras_graph import functional

    spec = ms.parse(GRAPH_SOURCES["residual_block"])
    model = functional(spec)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.ms")]) == 0
    imported = ms.parse(tmp_path / "m.ms")
    assert imported.connections == spec.connections and layers_only(imported) == layers_only(spec)
    assert (imported.optimizer, imported.loss, imported.metrics) == (spec.optimizer, spec.loss, spec.metrics)


def test_a_tf_keras_2_functional_config():
    """tf.keras 2 wrote each call's inputs as [layer, node, tensor, kwargs] lists and the input
    and output as lists of such triples."""
    def layer(cls, name, inbound, **config):
        return {"class_name": cls, "name": name, "config": {"name": name, **config},
                "inbound_nodes": [[[source, 0, 0, {}] for source in inbound]] if inbound else []}

    config = {"class_name": "Functional", "keras_version": "2.15.0", "config": {
        "name": "old", "input_layers": [["input_1", 0, 0]], "output_layers": [["add", 0, 0]], "layers": [
            layer("InputLayer", "input_1", [], batch_input_shape=[None, 5], dtype="float32"),
            layer("Dense", "dense", ["input_1"], units=3, activation="relu"),
            layer("Dense", "dense_1", ["dense"], units=3),
            layer("Add", "add", ["dense_1", "dense"])]}}
    spec, _ = spec_from_config(config)
    assert convert_text(spec) == "model old\ninput 5\ndense = dense 3 relu\ndense 3\nadd dense\n"


def test_layer_names_that_are_no_references_become_references(monkeypatch):
    """A reference is a word: other names are made into one (and 'in', the input, is never one);
    the layers keep their Keras names, so the spec checks to Keras's own table."""
    monkeypatch.setenv("COLUMNS", "200")
    keras.backend.clear_session(free_memory=False)
    L = keras.layers
    inputs = keras.Input((8,))
    a = L.Dense(4, name="block1.dense-a")(inputs)
    b = L.Dense(4, name="in")(inputs)
    x = L.Add(name="my add")([a, b])
    x = L.Dense(3, name="3rd")(x)
    model = keras.Model(inputs, L.Add()([x, L.Dense(3, name="relu")(b)]), name="odd")
    from modelspec.keras_import import convert

    imported = convert(json.loads(model.to_json()))
    assert imported.text.splitlines()[2:] == [
        'block1_dense_a = dense 4 name="block1.dense-a"', 'in_2 = dense 4 name="in" from=in',
        'add block1_dense_a in_2 name="my add"', 'h_3rd = dense 3 name="3rd"', "relu = dense 3 name=relu from=in_2",
        "add h_3rd relu"]
    assert imported.report.summary(line_length=100) == kr.summary(model, 100)


def test_a_functional_chain_imports_as_a_chain():
    """A spec whose layers each read the one before is Keras's Sequential model: the same
    layers and parameters, the weights in the same order (Sequential's paths have the model's
    name in front)."""
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)), name="chain")
    spec, _ = spec_from_config(json.loads(model.to_json()))
    assert spec.is_chain and to_text(spec) == "model chain\ninput 8\ndense 4 name=dense_1\ndense 2\n"
    report = ms.check(spec)
    assert [w.path for w in report.weights] == [f"chain/{w.path}" for w in model.weights]
