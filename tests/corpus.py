"""Shared by the tests: the tutorial's specs in specs/, hand-written ones that use every layer
kind and option written in varied (non-canonical) ways, and a way to run the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILES = sorted((ROOT / "specs").glob("*.ms"))
SPEC_IDS = [p.stem for p in SPEC_FILES]

# The recurrent issue's transformer encoder block (tests of every backend and the language);
# `transformer` writes it into a model: its input and embedding, then its uses
ENCODER_BLOCK = """\
block encoder(heads, key_dim, ff, width) {
  attention heads=heads key_dim=key_dim
  add in
  h = layernorm
  dense ff relu
  dense width
  add h
  layernorm
}
"""


def transformer(head: str, *uses: str) -> str:
    return f"model transformer\n{head}\n\n{ENCODER_BLOCK}\n" + "".join(f"{u}\n" for u in uses) + \
        "globalavgpool1d\ndense 2 softmax\n"


TRANSFORMER = transformer("input 16 int\nembedding 200 32", "encoder 4 8 64 32")  # the issue's own

# The graphs issue's example: a residual block used twice (tests of every backend, draw and the language)
TINY_RESNET = """\
model tiny_resnet
input 16x16x3
conv2d 8 3x3 relu padding=same

block residual(filters) {
  conv2d filters 3x3 relu padding=same
  conv2d filters 3x3 padding=same
  batchnorm
  add in
  relu
}

residual 8
residual 8
globalavgpool2d
dense 10 softmax
"""

VARIED = {
    "every_layer": """
        model every_layer
        input 32x32x3
        conv2d 8 3x3 stride=2 padding=same relu he_uniform(seed=1) l2=0.001 name=stem
        batchnorm momentum=0.9 epsilon=0.0001
        leaky_relu 0.2
        conv2d 16 (3, 2) strides=(2, 1) nobias lecun_normal bias_init=ones
        relu
        maxpool2d 3x3 stride=2 padding=same
        avgpool2d 2 stride=1
        conv2d 4 1x1 activation=tanh kernel_initializer=glorot_normal(seed=3) l1=0.01 l2=0.02
        globalavgpool2d
        dense 10 use_bias=false random_normal(mean=0.1, stddev=0.2, seed=4)
        dropout rate=0.25 seed=5
        dense 10 orthogonal(gain=2.0)
        softmax name=probabilities
        optimizer adamw lr=0.003 beta_1=0.8 beta_2=0.99 epsilon=1e-6 weight_decay=0.01
        loss categorical_crossentropy
        metrics accuracy categorical_accuracy
        fit batch=16 epochs=3 validation=0.25 shuffle=false seed=9
    """,
    "activations": """
        input 6
        dense 6 linear; dense 6 sigmoid glorot_uniform; dense 6 tanh; dense 6 elu he_normal
        dense 6 selu lecun_normal; dense 6 gelu he_normal; dense 6 swish he_normal; dense 6 softplus
        dense 6 relu6 he_normal; dense 6 leaky_relu he_normal; dense 6 silu he_normal
        elu; selu; gelu; swish; softplus; relu6; sigmoid; tanh; linear; leaky_relu
        dense 1 sigmoid truncated_normal(stddev=0.1) bias_init=random_uniform(minval=-0.1, maxval=0.1)
        optimizer sgd learning_rate=0.1 momentum=0.9 nesterov=true weight_decay=0.001
        loss binary_crossentropy
        metrics binary_accuracy
    """,
    "training_variants": """
        model "a model, with spaces"
        input (4, 5)
        dense 7 relu he_normal(seed=0) name="first layer"
        dense units=3 activation=softmax
        optimizer RMSprop rho=0.8 momentum=0.1 centered=true epsilon=1e-5
        loss sparse_categorical_crossentropy
        metrics sparse_categorical_accuracy
        fit batch_size=8 epochs=0 validation_split=0.0 shuffle=yes
    """,
    "regression": """
        model regression  # a trailing comment
        dense 16 relu he_normal(seed=1) in 13
        dense 1
        optimizer adagrad lr=0.01 initial_accumulator_value=0.2
        loss huber delta=2.5
        metrics mae mse
    """,
    "nadam_and_defaults": """
        input 3x3x1
        conv2d 2 3x3 zeros bias_init=zeros l1
        flatten
        dense 2 softmax random_uniform(seed=1) l2
        dropout 0.0
        dense 2 softmax lecun_uniform
        optimizer nadam
        loss mse
        metrics acc
    """,
    "text_classifier": """
        model text_classifier
        input 24 int
        embedding input_dim=200 output_dim=8 mask_zero he_uniform(seed=2) l2=0.001
        layernorm eps=0.01
        dense 8 relu
        globalavgpool1d name=masked_mean
        dense 3 softmax
        optimizer adam lr=0.005
        loss sparse_categorical_crossentropy
        metrics accuracy
    """,
    "sequence_windows": """
        embedding 50 4 in 30 int
        conv1d 6 5 strides=2 padding=causal relu he_normal l1=0.001
        conv1d filters=4 kernel_size=3 dilation_rate=2 padding=same nobias
        maxpool1d pool_size=3 stride=1 padding=same
        avgpool1d 2
        reshape (-1, 2)
        globalmaxpool1d
        dense 2 softmax
        optimizer sgd lr=0.1
        loss categorical_crossentropy
    """,
    "rows_reshaped": """
        input 64
        reshape 8x-1
        conv1d 4 3 padding=valid
        layernorm
        flatten
        reshape 6x4x1
        conv2d 2 3x3 padding=same
        globalmaxpool2d
        dense 1
        loss mse
    """,
}


def modelspec_cli(*args: object, cwd: Path = ROOT, timeout: float = 120):
    """Run `python -m modelspec ARGS...` as a user would; the CompletedProcess, text mode."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "modelspec", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def load_program(source: str, path: Path):
    """An emitted program written to `path` and imported as a module."""
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"generated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
