"""modelspec.initializers: Keras's distributions (keras/src/initializers/random_initializers.py) on large samples, and seeding.

Expected figures come from the formulas (fans, variance scaling, the 0.8796 correction)
and from numbers measured in real Keras 3.15.1 runs."""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from modelspec import ir
from modelspec.initializers import compute_fans, draw, initial_weights

SHAPE = (1000, 600)  # 600,000 values: the std is estimated to about 0.1%
TRUNC = 0.87962566103423978


def init(name, **args):
    return ir.Initializer(name=name, **args)


def sample(name, shape=SHAPE, **args):
    w = draw(init(name, **args), shape, model_seed=123, index=0)
    assert w.dtype == np.float32 and w.shape == shape
    return w.astype(np.float64)


def test_fans_follow_keras_layouts():
    assert compute_fans((784, 512)) == (784, 512)
    assert compute_fans((3, 3, 32, 64)) == (288, 576)  # keras/src/initializers/random_initializers.py::compute_fans: same as torch's
    assert compute_fans((7,)) == (7, 7)
    assert compute_fans(()) == (1, 1)


@pytest.mark.parametrize("name, variance, limit", [
    # (expected variance, the bound of the support) with fan_in 1000, fan_out 600
    ("glorot_uniform", 2 / 1600, np.sqrt(6 / 1600)),
    ("he_uniform", 2 / 1000, np.sqrt(6 / 1000)),
    ("lecun_uniform", 1 / 1000, np.sqrt(3 / 1000)),
])
def test_uniform_variance_scaling(name, variance, limit):
    w = sample(name)
    assert w.std() == pytest.approx(np.sqrt(variance), rel=0.005)
    assert abs(w.mean()) < 3 * np.sqrt(variance / w.size)
    assert -limit <= w.min() < -0.999 * limit and 0.999 * limit < w.max() <= limit


@pytest.mark.parametrize("name, variance", [
    ("glorot_normal", 2 / 1600), ("he_normal", 2 / 1000), ("lecun_normal", 1 / 1000)])
def test_truncated_normal_variance_scaling(name, variance):
    """The draw is N(0, σ²) with σ = √s / 0.8796, cut at ±2σ, so the std comes out √s."""
    w = sample(name)
    sigma = np.sqrt(variance) / TRUNC
    assert w.std() == pytest.approx(np.sqrt(variance), rel=0.005)
    assert np.abs(w).max() <= 2 * sigma * (1 + 1e-6)
    assert np.abs(w).max() > 1.99 * sigma  # the tails reach the cut
    # a truncated normal keeps the normal's shape inside: P(|z| < σ) = 0.6827 / 0.9545
    assert np.mean(np.abs(w) < sigma) == pytest.approx(0.682689 / 0.954500, abs=0.003)


def test_he_normal_on_a_conv_kernel_uses_the_receptive_field():
    w = sample("he_normal", shape=(3, 3, 32, 64))  # fan_in = 288
    assert w.std() == pytest.approx(np.sqrt(2 / 288), rel=0.02)
    assert np.abs(w).max() <= 2 * np.sqrt(2 / 288) / TRUNC * (1 + 1e-6)


def test_semantics_he_normal_figures():
    """Keras 3.15.1: HeNormal on (784, 4000) gave std 0.050475 (√(2/784) = 0.050508) and
    max |w| = 0.1148387 = 2·√(2/784)/0.8796 in Keras."""
    w = sample("he_normal", shape=(784, 4000))
    assert w.std() == pytest.approx(0.050508, rel=0.003)
    assert np.abs(w).max() == pytest.approx(0.1148387, rel=1e-3)


def test_random_normal_and_uniform_and_truncated_normal_arguments():
    w = sample("random_normal", mean=1.0, stddev=0.5)
    assert w.mean() == pytest.approx(1.0, abs=0.003) and w.std() == pytest.approx(0.5, rel=0.005)
    assert np.abs(w - 1).max() > 4 * 0.5  # not truncated
    w = sample("random_normal")  # Keras's defaults: mean 0, stddev 0.05
    assert w.std() == pytest.approx(0.05, rel=0.005)
    w = sample("random_uniform", minval=-0.2, maxval=0.3)
    assert -0.2 <= w.min() < -0.199 and 0.299 < w.max() <= 0.3
    assert w.mean() == pytest.approx(0.05, abs=0.001)
    w = sample("random_uniform")  # U[-0.05, 0.05)
    assert -0.05 <= w.min() and w.max() <= 0.05
    w = sample("truncated_normal", mean=0.5, stddev=0.1)
    assert np.abs(w - 0.5).max() <= 0.2 * (1 + 1e-6)
    assert w.std() == pytest.approx(0.1 * TRUNC, rel=0.005)  # Keras 3.15.1: 0.05 gives 0.04398
    assert w.mean() == pytest.approx(0.5, abs=0.001)


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (3, 3, 4, 8), (50, 50)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    w = sample("orthogonal", shape=shape, gain=gain)
    flat = w.reshape(-1, shape[-1])
    small = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(small, gain ** 2 * np.eye(len(small)), atol=2e-5 * gain ** 2)


def test_orthogonal_is_haar_distributed():
    """With the sign fix, each entry of a random orthogonal n×n matrix has mean 0 and variance 1/n."""
    entries = np.concatenate([draw(init("orthogonal"), (20, 20), 7, i).ravel() for i in range(200)])
    assert entries.mean() == pytest.approx(0, abs=0.005)
    assert entries.var() == pytest.approx(1 / 20, rel=0.03)


def test_orthogonal_needs_a_matrix():
    with pytest.raises(ValueError, match="rank 2"):
        draw(init("orthogonal"), (5,), 0, 0)


def test_constants():
    assert (sample("zeros", shape=(3, 2)) == 0).all()
    assert (sample("ones", shape=(4,)) == 1).all()


SPEC = """
model m
input 8x8x1
conv2d 4 3x3 he_normal(seed=11)
conv2d 4 3x3 he_normal(seed=11)
batchnorm
flatten
dense 16 relu orthogonal
dense 16 relu lecun_uniform(seed=5)
dense 16 relu lecun_uniform(seed=5)
dense 3 softmax random_normal(stddev=0.2)
"""


@pytest.fixture(scope="module")
def model():
    spec = ms.parse(SPEC)
    return spec, ms.check(spec)


def test_canonical_order_shapes_and_dtype(model):
    spec, report = model
    weights = initial_weights(spec, report, 0)
    assert [w.shape for w in weights] == [w.shape for w in report.weights]
    assert all(w.dtype == np.float32 for w in weights)
    names = [w.path.rsplit("/", 1)[1] for w in report.weights]
    for name, w in zip(names, weights):
        if name in ("bias", "beta", "moving_mean"):
            assert (w == 0).all()
        if name in ("gamma", "moving_variance"):
            assert (w == 1).all()


def test_same_seed_same_bits_other_seed_other_values(model):
    spec, report = model
    a, b, c = (initial_weights(spec, report, s) for s in (42, 42, 43))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    paths = [w.path for w in report.weights]
    unseeded = [i for i, p in enumerate(paths) if p.endswith(("/dense/kernel", "dense_3/kernel"))]
    seeded = [i for i, p in enumerate(paths) if p.endswith(("dense_1/kernel", "dense_2/kernel", "conv2d/kernel"))]
    assert len(unseeded) == 2 and len(seeded) == 3
    assert all((a[i] != c[i]).any() for i in unseeded)
    # an explicit seed gives the same values whatever the model seed (Keras's rule) ...
    assert all(a[i].tobytes() == c[i].tobytes() for i in seeded)
    # ... and on every call: two layers with lecun_uniform(seed=5) and one shape are equal
    first, second = (paths.index(f"m/{name}/kernel") for name in ("dense_1", "dense_2"))
    assert a[first].tobytes() == a[second].tobytes()


def test_unseeded_weights_differ_between_layers(model):
    """The weight's index enters the stream: two unseeded (16, 16) kernels are not copies."""
    spec = ms.parse("input 16\ndense 16\ndense 16")
    a = initial_weights(spec, ms.check(spec), 0)
    assert (a[0] != a[2]).any()


def test_no_seed_draws_fresh_weights(model):
    spec, report = model
    a, b = initial_weights(spec, report, None), initial_weights(spec, report, None)
    assert (a[-2] != b[-2]).any()


def test_negative_and_huge_seeds(model):
    spec, report = model
    for seed in (-1, 2**70):
        assert initial_weights(spec, report, seed)[-2].tobytes() == initial_weights(spec, report, seed)[-2].tobytes()
    assert (initial_weights(spec, report, -1)[-2] != initial_weights(spec, report, 1)[-2]).any()
