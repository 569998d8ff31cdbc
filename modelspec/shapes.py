"""Shapes as Keras prints them, window arithmetic, and byte sizes: pure integer helpers that
the IR's shape rules, the checker, the summary and the backends share."""

from __future__ import annotations

from .errors import ModelspecError

Shape = tuple  # (None, d1, d2, ...): the batch axis first, as Keras prints it

BYTES_PER_PARAM = 4  # float32


class ShapeError(ModelspecError):
    """A layer cannot take the shape it is given: a message, and a hint where one helps. The
    checker reports it as a SpecError at the layer's line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def fmt_shape(shape: Shape) -> str:
    """`(None, 28, 28)`, as Keras's summary prints a shape."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def tuple_text(shape: tuple) -> str:
    """A shape as Python writes the tuple: `(5,)`, `(None, 8, 8)`; how NumPy arrays and
    data are described in messages."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def window_output(n: int, k: int, s: int, padding: str) -> int:
    """Keras's output length of a convolution or pooling window along one axis."""
    if padding == "same":
        return -(-n // s)
    return (n - k) // s + 1


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after): the extra pixel goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def need_image(kind: str, shape: Shape) -> None:
    """Raise ShapeError unless `shape` is (batch, height, width, channels)."""
    if len(shape) != 4:
        received = fmt_shape(shape)
        if len(shape) == 3:
            hint = f"add a channel axis: `input {shape[1]}x{shape[2]}x1`"
        elif len(shape) == 2:
            hint = ("images are (height, width, channels): declare `input 28x28x1`, or remove the "
                    "layer that flattened them")
        else:
            hint = None
        raise ShapeError(f"{kind} needs an input of rank 3 (height, width, channels); received {received}",
                         hint)


def window(kind: str, shape: Shape, size: tuple[int, int], strides: tuple[int, int],
           padding: str) -> tuple[int, int]:
    """The output height and width of a 2-D window (convolution or pooling) over an image."""
    need_image(kind, shape)
    out = []
    for axis, (n, k, s) in enumerate(zip(shape[1:3], size, strides)):
        o = window_output(n, k, s, padding)
        if o < 1:
            what = "height" if axis == 0 else "width"
            raise ShapeError(
                f"{kind}'s window {size[0]}x{size[1]} is larger than its input {fmt_shape(shape)} "
                f"({what} {n} < {k}); the output would have no {'rows' if axis == 0 else 'columns'}",
                "use padding=same, a smaller window, or a larger input")
        out.append(o)
    return out[0], out[1]


def need_sequence(kind: str, shape: Shape) -> None:
    """Raise ShapeError unless `shape` is (batch, steps, features)."""
    if len(shape) != 3:
        if len(shape) == 2:
            hint = (f"a sequence is (steps, features): `reshape {shape[1]}x1` makes one of {shape[1]} steps, "
                    "or start from `embedding` on token ids")
        elif len(shape) == 4:
            hint = f"an image is not a sequence: `reshape {shape[1]}x{shape[2] * shape[3]}` makes one of its rows"
        else:
            hint = None
        raise ShapeError(f"{kind} needs an input of rank 2 (steps, features); received {fmt_shape(shape)}", hint)


def window1d(kind: str, shape: Shape, k: int, s: int, padding: str, dilation: int = 1) -> int:
    """The output length of a 1-D window (convolution or pooling) over a sequence
    (keras/src/ops/operation_utils.py, compute_conv_output_shape / compute_pooling_output_shape)."""
    need_sequence(kind, shape)
    n, span = shape[1], dilation * (k - 1) + 1
    out = window_output(n + (span - 1 if padding == "causal" else 0), span, s,
                        "valid" if padding == "causal" else padding)
    if out < 1:
        raise ShapeError(f"{kind}'s window of {span} steps is longer than its input {fmt_shape(shape)} "
                         f"({n} steps); the output would have none",
                         "use padding=same, a smaller window, or a longer sequence")
    return out



def pads1d(padding: str, n: int, k: int, s: int, dilation: int = 1) -> tuple[int, int]:
    """The (before, after) pads of a 1-D window of k taps `dilation` apart, stride s, over n
    steps, as Keras pads (keras/src/backend/tensorflow/nn.py): 'same' puts the odd one after,
    'causal' every one before, 'valid' none."""
    span = dilation * (k - 1) + 1
    if padding == "same":
        return same_padding(n, span, s)
    if padding == "causal":
        return span - 1, 0
    return 0, 0
