"""The tutorial's printed figures for every spec in specs/.

model1/mnist and models A, B, C: the numbers the tutorial prints. The other specs: the
parameters worked out here from their layer sizes (units x inputs + biases; 4 per channel
for batch normalization, half of them the non-trainable moving statistics)."""

from __future__ import annotations

import pytest

import modelspec as ms
from corpus import SPEC_FILES


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(k: int, c_in: int, filters: int) -> int:
    return k * k * c_in * filters + filters


def batchnorm(c: int) -> tuple[int, int]:
    """(trainable gamma and beta, non-trainable moving mean and variance)"""
    return 2 * c, 2 * c


BN_DIGITS = [batchnorm(c) for c in (64, 32, 16)]

# name -> (total, trainable, non-trainable, output shape)
FIGURES = {
    # the tutorial's own numbers
    "model1": (435_402, 435_402, 0, (None, 10)),
    "mnist": (435_402, 435_402, 0, (None, 10)),
    "model_a": (220_186, 220_186, 0, (None, 10)),
    "model_b": (221_594, 220_890, 704, (None, 10)),
    "model_c": (221_594, 220_890, 704, (None, 10)),
    # worked out from the layer sizes
    "digits": (dense(64, 128) + dense(128, 64) + dense(64, 10),) * 2 + (0, (None, 10)),
    "digits_a": (dense(64, 64) + dense(64, 32) + dense(32, 16) + dense(16, 10),) * 2 + (0, (None, 10)),
    "digits_b": (
        dense(64, 64) + dense(64, 32) + dense(32, 16) + dense(16, 10) + sum(t + n for t, n in BN_DIGITS),
        dense(64, 64) + dense(64, 32) + dense(32, 16) + dense(16, 10) + sum(t for t, _ in BN_DIGITS),
        sum(n for _, n in BN_DIGITS), (None, 10)),
    # 8x8x1 -same-> 8x8x16 -bn, pool-> 4x4x16 -same-> 4x4x32 -avgpool stride 1 same-> 4x4x32 -global-> 32
    "digits_cnn": (conv(3, 1, 16) + sum(batchnorm(16)) + conv(3, 16, 32) + dense(32, 10),
                   conv(3, 1, 16) + batchnorm(16)[0] + conv(3, 16, 32) + dense(32, 10),
                   batchnorm(16)[1], (None, 10)),
    # 28x28x1 -> 26x26x32 -> 13x13x32 -> 11x11x64 -> 5x5x64 -> 1600 -> 10
    "cnn": (conv(3, 1, 32) + conv(3, 32, 64) + dense(5 * 5 * 64, 10),) * 2 + (0, (None, 10)),
    # normalize of 10 features: Keras's mean and variance (10 each) and its count (1), none trainable
    "diabetes": (21 + dense(10, 32) + dense(32, 1), dense(10, 32) + dense(32, 1), 21, (None, 1)),
    # the stem, the block's two convs (the second without a bias) and batchnorm twice, the 1x1
    # projection and its 3x3 path to 4x4x16, the 8 + 8 + 16 channels of the concat, the classifier
    "digits_resnet": (conv(3, 1, 8) + 2 * (2 * conv(3, 8, 8) - 8 + sum(batchnorm(8))) + conv(1, 8, 16)
                      + conv(3, 8, 16) + conv(1, 16, 8) + conv(3, 16, 8) + dense(32, 10),
                      conv(3, 1, 8) + 2 * (2 * conv(3, 8, 8) - 8 + batchnorm(8)[0]) + conv(1, 8, 16)
                      + conv(3, 8, 16) + conv(1, 16, 8) + conv(3, 16, 8) + dense(32, 10),
                      2 * batchnorm(8)[1], (None, 10)),
}
FIGURES["digits_c"] = FIGURES["digits_b"]
# 64 ids -> 17x4 embedding -> 56x16 (a window of 9, valid) -> 28x16 -> 448 -> 10
FIGURES["digits_tokens"] = (17 * 4 + (9 * 4 * 16 + 16) + dense(28 * 16, 10),) * 2 + (0, (None, 10))
# 8 rows of 8 pixels -> lstm 32 (gates i, f, c, o: 4·(8·32 + 32·32 + 32)) -> 10
FIGURES["digits_lstm"] = (4 * (8 * 32 + 32 * 32 + 32) + dense(32, 10),) * 2 + (0, (None, 10))
# 64 ids -> 17x8 embedding -> 8 rows of 64 -> conv1d 3 to 8x32 -> attention, 4 heads of 8 (query, key and
# value (32, 4, 8) + (4, 8), output (4, 8, 32) + 32) -> two layernorms and the block's dense 32->64->32 -> 10
FIGURES["digits_transformer"] = (17 * 8 + (3 * 64 * 32 + 32) + (4 * 32 * 4 * 8 + 3 * 4 * 8 + 32) + 2 * 64
                                 + dense(32, 64) + dense(64, 32) + dense(32, 10),) * 2 + (0, (None, 10))
# regression cases found by differential fuzzing (tests/test_fuzz_crosscheck.py)
FIGURES["regression_one_layer"] = (dense(8, 4),) * 2 + (0, (None, 4))
FIGURES["regression_selu_at_zero"] = (dense(3, 7) + dense(7, 3),) * 2 + (0, (None, 3))


def test_every_spec_has_figures():
    assert sorted(FIGURES) == sorted(p.stem for p in SPEC_FILES)


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_figures(path):
    total, trainable, non_trainable, output_shape = FIGURES[path.stem]
    report = ms.check(ms.parse(path))
    assert (report.total_params, report.trainable_params, report.non_trainable_params) == (
        total, trainable, non_trainable)
    int64 = sum(1 for layer in report.layers if layer.kind == "normalize")  # Keras's count: 8 bytes
    assert report.bytes == 4 * total + 4 * int64
    assert report.output_shape == output_shape
    assert report.model == path.stem


def test_model1_layer_by_layer():
    report = ms.check(ms.parse("specs/model1.ms"))  # its rescale of raw pixels first: no weights
    assert [r.params for r in report.layers] == [0, 401_920, 32_832, 650]
    assert [r.output_shape for r in report.layers] == [(None, 784), (None, 512), (None, 64), (None, 10)]
    assert [r.name for r in report.layers] == ["rescaling", "dense", "dense_1", "dense_2"]
    assert report.bytes == 1_741_608  # 1.66 MB: 1,741,608 / 1024**2
    assert report.flops == 2 * (784 * 512 + 512 * 64 + 64 * 10)


def test_model_b_names_and_weights():
    report = ms.check(ms.parse("specs/model_b.ms"))
    assert [r.name for r in report.layers] == [
        "rescaling", "flatten", "dense", "batch_normalization", "dense_1", "batch_normalization_1", "dense_2",
        "batch_normalization_2", "dense_3", "dense_4"]
    assert [w.path for w in report.layers[3].weights] == [
        "model_b/batch_normalization/gamma", "model_b/batch_normalization/beta",
        "model_b/batch_normalization/moving_mean", "model_b/batch_normalization/moving_variance"]
    assert [w.trainable for w in report.layers[3].weights] == [True, True, False, False]


def test_the_tutorial_one_liner():
    report = ms.check(ms.parse("dense 512 in 784; dense 64 relu he_normal l2=0.01; batchnorm; dense 10 softmax"))
    assert report.total_params == 401_920 + 32_832 + 4 * 64 + 650
    assert report.non_trainable_params == 2 * 64


def test_absurd_sizes_are_reported_without_allocating():
    report = ms.check(ms.parse("dense 99999999999 in 784"))
    assert report.total_params == 784 * 99_999_999_999 + 99_999_999_999
    assert report.bytes == 4 * report.total_params
    (warning,) = [w for w in report.warnings if w.code == "size"]
    assert "78,499,999,999,215 parameters" in warning.message
    assert "285.58 TB" in warning.message


def test_a_ten_thousand_layer_spec():
    text = "input 8\n" + "dense 8 relu he_normal\n" * 10_000
    report = ms.check(ms.parse(text))
    assert len(report.layers) == 10_000
    assert report.total_params == 10_000 * dense(8, 8)
    assert report.layers[-1].name == "dense_9999"
