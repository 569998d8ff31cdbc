"""Shape inference of conv2d, maxpool2d and avgpool2d: 'valid' and 'same' padding, strides
1 to 3, odd and even sizes, kernels 1 to 5. Expected shapes come from Keras's own
compute_output_shape, and a few from hand arithmetic that runs without Keras."""

from __future__ import annotations

import itertools

import pytest

import modelspec as ms

SIZES = [(3, 4), (7, 8), (9, 10), (10, 9), (28, 28)]
KERNELS = [(k, k) for k in range(1, 6)] + [(1, 5), (5, 2), (2, 3)]
CHANNELS = 3


def layer_text(kind: str, kernel: tuple[int, int], stride: int | None, padding: str) -> str:
    head = f"conv2d 6 {kernel[0]}x{kernel[1]}" if kind == "conv2d" else f"{kind} {kernel[0]}x{kernel[1]}"
    return head + (f" stride={stride}" if stride else "") + f" padding={padding}"


def checked_shape(text: str, h: int, w: int):
    """The output shape modelspec reports, or 'error' when it rejects the layer (code 'shape')."""
    try:
        return ms.check(ms.parse(f"input {h}x{w}x{CHANNELS}\n{text}")).output_shape
    except ms.SpecError as e:
        (d,) = e.diagnostics
        assert (d.code, d.line, d.column) == ("shape", 2, 1), d
        return "error"


# ---------------------------------------------------------------------------------------
# Hand-computed: valid = floor((n - k) / s) + 1, same = ceil(n / s)

HAND = [
    ("conv2d 32 3x3", 28, 28, (None, 26, 26, 32)),
    ("conv2d 8 5x5 stride=2", 28, 28, (None, 12, 12, 8)),          # (28-5)//2+1 = 12
    ("conv2d 8 3x3 stride=2 padding=same", 7, 7, (None, 4, 4, 8)),  # ceil(7/2) = 4
    ("conv2d 4 4x4 stride=3", 10, 9, (None, 3, 2, 4)),              # (10-4)//3+1, (9-4)//3+1
    ("conv2d 4 1x1 stride=3 padding=same", 10, 10, (None, 4, 4, 4)),
    ("conv2d 2 5x2", 9, 10, (None, 5, 9, 2)),
    ("maxpool2d 2x2", 13, 13, (None, 6, 6, 3)),                     # floor, the pool is its stride
    ("maxpool2d 3x3 stride=2 padding=same", 8, 8, (None, 4, 4, 3)),
    ("maxpool2d 3x3", 8, 9, (None, 2, 3, 3)),
    ("avgpool2d 2 stride=1 padding=same", 5, 5, (None, 5, 5, 3)),
    ("avgpool2d 3x3 stride=2", 9, 10, (None, 4, 4, 3)),             # (9-3)//2+1, (10-3)//2+1
    ("avgpool2d 5x5 padding=same", 7, 8, (None, 2, 2, 3)),          # ceil(7/5), ceil(8/5)
]


@pytest.mark.parametrize("text, h, w, expected", HAND, ids=[c[0] for c in HAND])
def test_hand_computed_shapes(text, h, w, expected):
    assert checked_shape(text, h, w) == expected


def test_conv2d_parameters_by_hand():
    report = ms.check(ms.parse("input 9x10x3\nconv2d 6 5x2 stride=2 padding=same"))
    assert report.total_params == 5 * 2 * 3 * 6 + 6
    assert report.output_shape == (None, 5, 5, 6)


@pytest.mark.parametrize("text, h, w", [("conv2d 2 3x3", 2, 2), ("maxpool2d 5x5", 4, 9),
                                        ("avgpool2d 3x3 stride=3", 9, 2), ("conv2d 2 1x5", 5, 4)])
def test_window_larger_than_input_is_an_error(text, h, w):
    assert checked_shape(text, h, w) == "error"
    assert checked_shape(text.replace("stride=3", "") + " padding=same", h, w) != "error"


# ---------------------------------------------------------------------------------------
# Against Keras: every combination


def keras_shape(kind: str, kernel, stride, padding: str, h: int, w: int):
    keras = pytest.importorskip("keras")
    if kind == "conv2d":
        layer = keras.layers.Conv2D(6, kernel, strides=stride or 1, padding=padding)
    else:
        cls = keras.layers.MaxPooling2D if kind == "maxpool2d" else keras.layers.AveragePooling2D
        layer = cls(kernel, strides=stride, padding=padding)
    try:
        shape = tuple(layer.compute_output_shape((None, h, w, CHANNELS)))
    except ValueError:  # "Computed output size would be zero or negative"
        return "error"
    return "error" if min(shape[1:]) < 1 else shape


COMBINATIONS = [(kind, padding, stride)
                for kind in ("conv2d", "maxpool2d", "avgpool2d") for padding in ("valid", "same")
                for stride in ((1, 2, 3) if kind == "conv2d" else (None, 1, 2, 3))]  # None: the pool size


@pytest.mark.keras
@pytest.mark.parametrize("kind, padding, stride", COMBINATIONS)
def test_shapes_match_keras(kind, padding, stride):
    mismatches = []
    for (h, w), kernel in itertools.product(SIZES, KERNELS):
        text = layer_text(kind, kernel, stride, padding)
        expected = keras_shape(kind, kernel, stride, padding, h, w)
        got = checked_shape(text, h, w)
        if got != expected:
            mismatches.append((text, (h, w), got, expected))
    assert mismatches == []
