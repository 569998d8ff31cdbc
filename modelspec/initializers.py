"""Keras's initializers in NumPy: the weights every backend starts from.

The random streams of TensorFlow, torch and NumPy can never agree, so modelspec draws the
initial weights once, here, with Keras's distributions (keras/src/initializers/
random_initializers.py) and loads the same values into every backend. Everything is
float32, in Keras's layouts and weight order.

Seeding follows Keras's rule: an initializer written with a seed (`he_normal(seed=7)`)
returns the same values on every call, whatever the model seed; an unseeded one draws
from the model seed and the weight's index, so one model seed always gives bit-identical
weights. The draw functions below use only NumPy: the numpy backend's emitter copies
their source into generated code, so a generated file draws the very same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from . import ir
    from .checker import Report

TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def generator(seed, model_seed, index):
    """PCG64 for one weight: from the initializer's own seed alone when it has one (every
    call then gives the same values, Keras's rule), else from the model seed and the
    weight's index. The leading 0/1 keeps the two kinds of stream apart."""
    if seed is not None:
        key = [0, seed % 2**64]
    else:
        key = [1, model_seed % 2**128, index]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def compute_fans(shape):
    """keras.src.initializers.random_initializers.compute_fans for Keras layouts."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = 1
    for k in shape[:-2]:
        receptive *= k
    return shape[-2] * receptive, shape[-1] * receptive


def truncated_normal(rng, shape, mean, stddev):
    """N(mean, stddev²) with every value beyond 2·stddev drawn again, as TensorFlow does."""
    z = rng.standard_normal(shape, dtype=np.float32).reshape(-1)
    redo = np.flatnonzero(np.abs(z) > 2)
    while redo.size:  # each pass redraws only the ~4.6% that fell outside
        z[redo] = rng.standard_normal(redo.size, dtype=np.float32)
        redo = redo[np.abs(z[redo]) > 2]
    return (z * stddev + mean).reshape(shape)


def random_normal(rng, shape, mean, stddev):
    return rng.standard_normal(shape, dtype=np.float32) * stddev + mean


def random_uniform(rng, shape, minval, maxval):
    return rng.random(shape, dtype=np.float32) * (maxval - minval) + minval


def variance_scaling(rng, shape, scale, mode, distribution, fans=None):
    """Keras's VarianceScaling: truncated normals are widened by 1/0.8796 so that the
    resulting std is √(scale/fan). `fans`: (fan_in, fan_out) where the layer gives them
    (EinsumDense's input and output axes), else from the shape."""
    fan_in, fan_out = fans or compute_fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    s = scale / max(1.0, fan)
    if distribution == "truncated_normal":
        return truncated_normal(rng, shape, 0.0, s ** 0.5 / TRUNCATED_STD)
    limit = (3.0 * s) ** 0.5
    return random_uniform(rng, shape, -limit, limit)


def orthogonal(rng, shape, gain):
    """Keras's Orthogonal: QR of a normal (max, min) matrix, columns signed by diag(r)."""
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a weight of rank 2 or more; received shape {tuple(shape)}")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)), dtype=np.float32)
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(np.float32, copy=False)


def zeros(rng, shape):
    return np.zeros(shape, np.float32)


def ones(rng, shape):
    return np.ones(shape, np.float32)


def unit_forget_bias(rng, units, fn, *args):
    """LSTM's bias with unit_forget_bias: the initializer's values for the input gate, ones
    for the forget gate, the initializer's for the cell and output gates (keras/src/layers/
    rnn/lstm.py, LSTMCell.build)."""
    return np.concatenate([fn(rng, (units,), *args), np.ones(units, np.float32), fn(rng, (2 * units,), *args)])


# Keras's named initializers: (scale, mode, distribution) of VarianceScaling.
VARIANCE_SCALING = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
}


def recipe(name: str, args: dict[str, float], fans: tuple[int, int] | None = None) -> tuple[Any, tuple]:
    """(function, its arguments after rng and shape) that draws initializer `name` with
    Keras's arguments `args`; `fans` as modelspec.layers.WeightDecl's."""
    if name in ("zeros", "ones"):
        return (zeros if name == "zeros" else ones), ()
    if name in VARIANCE_SCALING:
        return variance_scaling, (*VARIANCE_SCALING[name], *([fans] if fans else []))
    if name == "random_normal":
        return random_normal, (args["mean"], args["stddev"])
    if name == "truncated_normal":
        return truncated_normal, (args["mean"], args["stddev"])
    if name == "random_uniform":
        return random_uniform, (args["minval"], args["maxval"])
    if name == "orthogonal":
        return orthogonal, (args["gain"],)
    raise ValueError(f"unknown initializer '{name}'")


def initialize(name: str, args: dict[str, float], shape: tuple[int, ...], rng: np.random.Generator,
               fans: tuple[int, int] | None = None, forget_units: int | None = None) -> np.ndarray:
    """Values of the initializer `name` for `shape`, float32; `fans` and `forget_units` as
    modelspec.layers.WeightDecl's."""
    fn, extra = recipe(name, args, fans)
    if forget_units is not None:
        return unit_forget_bias(rng, forget_units, fn, *extra)
    return fn(rng, tuple(shape), *extra)


def draw(init: "ir.Initializer", shape: tuple[int, ...], model_seed: int | None = None,
         index: int = 0, fans: tuple[int, int] | None = None, forget_units: int | None = None) -> np.ndarray:
    """One weight's values. An unseeded initializer with model_seed None draws fresh entropy."""
    if init.seed is None and model_seed is None:
        model_seed = np.random.SeedSequence().entropy
    return initialize(init.name, init.args(), shape, generator(init.seed, model_seed, index), fans, forget_units)


def initial_weights(spec: "ir.Spec", report: "Report", seed: int | None) -> list[np.ndarray]:
    """Every weight of a checked spec, in Keras's layout and order, float32.

    The same seed gives bit-identical weights; seed None draws fresh ones."""
    if seed is None:
        seed = np.random.SeedSequence().entropy
    out = []
    for layer in report.layers:
        for w in layer.weights:
            out.append(draw(w.initializer, w.shape, seed, len(out), w.fans, w.forget_units))
    return out
