"""The numbers of the numpy backend: layers, activations, losses, metrics and optimizers.

This is the project's reference: every formula is Keras 3's on the TensorFlow backend
(keras/src/layers/, losses/losses.py, metrics/, optimizers/ and, where a naive port
differs, keras/src/backend/tensorflow/nn.py). The code is dtype-generic: constants are
Python scalars, which NumPy never lets widen an array, so float32 in gives float32 out
(the tests also run it in float64 for finite differences).

Everything here uses only NumPy (and the checker's pure padding functions): the emitter
copies the source of exactly the pieces a spec uses into standalone generated code, so
keep each definition self-contained, free of annotations and of other imports.
"""

import numpy as np

from modelspec.shapes import pads1d, same_padding

EPSILON = 1e-7  # keras.backend.epsilon(): how far probabilities are clipped from 0 and 1


# ---------------------------------------------------------------------------------------
# Activations: f(x) and f_grad(x, y, dy), where y = f(x) is the forward's output.


def linear(x):
    return x


def linear_grad(x, y, dy):
    return dy


def relu(x):
    return np.maximum(x, 0)


def relu_grad(x, y, dy):
    return dy * (x > 0)


def relu6(x):
    return np.clip(x, 0, 6)


def relu6_grad(x, y, dy):
    return dy * ((x > 0) & (x < 6))


def leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, x, x * negative_slope)


def leaky_relu_grad(x, y, dy, negative_slope=0.2):
    return np.where(x > 0, dy, dy * negative_slope)


def sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    # 1 where x >= 0, else e (e <= 1): the maximum is np.where(x >= 0, 1, e), value for value,
    # in a fraction of its time (the recurrent gates call this every step)
    return np.maximum(e, (x >= 0).astype(e.dtype)) / (1 + e)


def sigmoid_grad(x, y, dy):
    return dy * y * (1 - y)


def tanh(x):
    return np.tanh(x)


def tanh_grad(x, y, dy):
    return dy * (1 - y * y)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_grad(x, y, dy):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def elu_grad(x, y, dy):
    return np.where(x < 0, dy * (y + 1), dy)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def selu(x):
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))


def selu_grad(x, y, dy):
    return np.where(x < 0, dy * (y + SELU_SCALE * SELU_ALPHA), dy * SELU_SCALE)  # TF's side at 0


def erf(x):
    """erf as TensorFlow computes it for float32 (Eigen's rational approximation on
    [-4, 4], beyond which erf is ±1 in float32): NumPy has no erf of its own."""
    x = np.clip(x, -4, 4)
    x2 = x * x
    p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    for a in (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04,
              -2.95459980854025e-03, -1.60960333262415e-02):
        p = p * x2 + a
    q = x2 * -1.45660718464996e-05 - 2.13374055278905e-04
    for b in (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = q * x2 + b
    return x * p / q


def gelu(x):
    """The exact (erf) form: the string 'gelu' is approximate=False in Keras."""
    return 0.5 * x * (1 + erf(x * 2 ** -0.5))


def gelu_grad(x, y, dy):
    cdf = 0.5 * (1 + erf(x * 2 ** -0.5))
    pdf = np.exp(-0.5 * x * x) * (2 * np.pi) ** -0.5
    return dy * (cdf + x * pdf)


def swish(x):
    return x * sigmoid(x)


def swish_grad(x, y, dy):
    s = sigmoid(x)
    return dy * s * (1 + x * (1 - s))


def softplus(x):
    return np.logaddexp(x, 0)


def softplus_grad(x, y, dy):
    return dy * sigmoid(x)


# ---------------------------------------------------------------------------------------
# Layers. Each has `params` (trainable weights, Keras's order) with `grads` of the same
# shapes, forward(x, training) and backward(dy, need_dx) -> dx. backward reads what the
# last forward kept and writes the weight gradients into `grads`; need_dx=False skips the
# input gradient, which the first layer with weights never needs.


class Layer:
    params, grads = (), ()

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def update_moving(self):
        """Apply the state a training forward computed (batchnorm's moving statistics)."""


class Activation(Layer):
    """An activation on its own; Dense and Conv2D end in one too."""

    def __init__(self, fn, grad, **options):
        self.fn, self.grad, self.options = fn, grad, options

    def forward(self, x, training=False):
        self.x, self.y = x, self.fn(x, **self.options)
        return self.y

    def backward(self, dy, need_dx=True):
        return self.grad(self.x, self.y, dy, **self.options)


class Softmax(Layer):
    """Keras's Softmax layer (keras/src/layers/activations/softmax.py) over `axis`, counted
    with the batch axis as 0: exp(x - max) / Σ exp(x - max) along it."""

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x, training=False):
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        self.y = e / e.sum(axis=self.axis, keepdims=True)
        return self.y

    def backward(self, dy, need_dx=True):
        return self.y * (dy - (dy * self.y).sum(axis=self.axis, keepdims=True))


class Dense(Layer):
    """x·kernel + bias on the last axis, whatever the rank of x; kernel is (in, out)."""

    def __init__(self, kernel, bias=None):
        self.kernel, self.bias = kernel, bias
        self.params = [kernel] if bias is None else [kernel, bias]
        self.grads = [np.zeros(p.shape, p.dtype) for p in self.params]

    def forward(self, x, training=False):
        self.x = x.reshape(-1, x.shape[-1])  # one matmul, not one per leading index
        y = self.x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def backward(self, dy, need_dx=True):
        dy2 = dy.reshape(-1, dy.shape[-1])
        np.matmul(self.x.T, dy2, out=self.grads[0])
        if self.bias is not None:
            np.sum(dy2, axis=0, out=self.grads[1])
        if need_dx:
            return (dy2 @ self.kernel.T).reshape(*dy.shape[:-1], self.kernel.shape[0])


def pad2d(x, padding, window, strides, value=0):
    """x (n, h, w, c) padded for a window as TensorFlow pads it ('same': the extra pixel
    goes bottom/right), and the (top, left) offset of the original pixels."""
    if padding != "same":
        return x, (0, 0)
    (t, b), (l, r) = [same_padding(n, k, s) for n, k, s in zip(x.shape[1:3], window, strides)]
    if t == b == l == r == 0:
        return x, (0, 0)
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value), (t, l)


def window_view(x, window, strides):
    """Every window of x (n, h, w, c) as a read-only view (n, out_h, out_w, kh, kw, c)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = window, strides
    s = x.strides
    shape = (n, (h - kh) // sh + 1, (w - kw) // sw + 1, kh, kw, c)
    return np.lib.stride_tricks.as_strided(x, shape, (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]),
                                           writeable=False)


def window_slices(window, strides, out_hw):
    """For each offset (i, j) in the window, the slices of the padded input that the offset
    reads across all output positions: a loop over the window, never over pixels."""
    (sh, sw), (oh, ow) = strides, out_hw
    for i in range(window[0]):
        for j in range(window[1]):
            yield (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


class Conv2D(Layer):
    """Channels-last convolution as one matmul over the im2col matrix; kernel (kh, kw, in, out)."""

    def __init__(self, kernel, bias=None, strides=(1, 1), padding="valid"):
        self.kernel, self.bias, self.strides, self.padding = kernel, bias, strides, padding
        self.params = [kernel] if bias is None else [kernel, bias]
        self.grads = [np.zeros(p.shape, p.dtype) for p in self.params]

    def forward(self, x, training=False):
        kh, kw, c, f = self.kernel.shape
        xp, self.offset = pad2d(x, self.padding, (kh, kw), self.strides)
        self.x_shape, self.xp_shape = x.shape, xp.shape
        windows = window_view(xp, (kh, kw), self.strides)
        self.out_shape = windows.shape[:3]
        self.cols = windows.reshape(-1, kh * kw * c)  # the one copy: the im2col matrix
        y = self.cols @ self.kernel.reshape(-1, f)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*self.out_shape, f)

    def backward(self, dy, need_dx=True):
        kh, kw, c, f = self.kernel.shape
        dy2 = dy.reshape(-1, f)
        np.matmul(self.cols.T, dy2, out=self.grads[0].reshape(-1, f))
        if self.bias is not None:
            np.sum(dy2, axis=0, out=self.grads[1])
        if not need_dx:
            return None
        dcols = (dy2 @ self.kernel.reshape(-1, f).T).reshape(*self.out_shape, kh, kw, c)
        dxp = np.zeros(self.xp_shape, dy.dtype)
        for k, where in enumerate(window_slices((kh, kw), self.strides, self.out_shape[1:])):
            dxp[where] += dcols[:, :, :, k // kw, k % kw]
        (t, l), (h, w) = self.offset, self.x_shape[1:3]
        return dxp[:, t:t + h, l:l + w]


class MaxPool2D(Layer):
    """The max of each window; 'same' pads with -inf. The gradient goes to the first max."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid"):
        self.pool_size, self.strides, self.padding = pool_size, strides or pool_size, padding

    def forward(self, x, training=False):
        xp, self.offset = pad2d(x, self.padding, self.pool_size, self.strides, value=-np.inf)
        self.x_shape, self.xp_shape = x.shape, xp.shape
        out_hw = window_view(xp, self.pool_size, self.strides).shape[1:3]
        self.slices = list(window_slices(self.pool_size, self.strides, out_hw))
        y = xp[self.slices[0]].copy()
        self.argmax = np.zeros(y.shape, np.int8 if len(self.slices) < 128 else np.int32)
        for k, where in enumerate(self.slices[1:], 1):
            v = xp[where]
            better = v > y  # strictly: ties keep the first max
            np.copyto(y, v, where=better)
            np.copyto(self.argmax, k, where=better)
        return y

    def backward(self, dy, need_dx=True):
        dxp = np.zeros(self.xp_shape, dy.dtype)
        for k, where in enumerate(self.slices):
            dxp[where] += dy * (self.argmax == k)
        (t, l), (h, w) = self.offset, self.x_shape[1:3]
        return dxp[:, t:t + h, l:l + w]


class AvgPool2D(Layer):
    """The mean of each window; with 'same', padded cells are left out of the divisor."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid"):
        self.pool_size, self.strides, self.padding = pool_size, strides or pool_size, padding

    def forward(self, x, training=False):
        xp, self.offset = pad2d(x, self.padding, self.pool_size, self.strides)
        self.x_shape, self.xp_shape = x.shape, xp.shape
        out_hw = window_view(xp, self.pool_size, self.strides).shape[1:3]
        self.slices = list(window_slices(self.pool_size, self.strides, out_hw))
        ones, _ = pad2d(np.ones((1, *x.shape[1:3], 1), x.dtype), self.padding, self.pool_size, self.strides)
        self.count = sum(ones[where] for where in self.slices)  # (1, out_h, out_w, 1)
        return sum(xp[where] for where in self.slices) / self.count

    def backward(self, dy, need_dx=True):
        share = dy / self.count
        dxp = np.zeros(self.xp_shape, dy.dtype)
        for where in self.slices:
            dxp[where] += share
        (t, l), (h, w) = self.offset, self.x_shape[1:3]
        return dxp[:, t:t + h, l:l + w]


class GlobalAvgPool2D(Layer):
    def forward(self, x, training=False):
        self.x_shape = x.shape
        return x.mean(axis=(1, 2))

    def backward(self, dy, need_dx=True):
        n, h, w, c = self.x_shape
        return np.broadcast_to((dy / (h * w))[:, None, None, :], self.x_shape)


class Flatten(Layer):
    """Channels-last order (h, w, c), as Keras flattens."""

    def forward(self, x, training=False):
        self.x_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.x_shape)


class GlobalMaxPool2D(Layer):
    """The maximum over height and width; ties share the gradient equally, as TensorFlow's
    reduce_max gradient does (tensorflow/python/ops/math_grad.py, _MinOrMaxGrad)."""

    def forward(self, x, training=False):
        self.x, self.y = x, x.max(axis=(1, 2))
        return self.y

    def backward(self, dy, need_dx=True):
        hit = self.x == self.y[:, None, None, :]
        return hit * (dy / hit.sum(axis=(1, 2)))[:, None, None, :]


class ZeroPadding2D(Layer):
    """Zero rows above and below, zero columns left and right: ((top, bottom), (left, right))."""

    def __init__(self, padding):
        self.padding = padding

    def forward(self, x, training=False):
        self.x_shape = x.shape
        return np.pad(x, ((0, 0), *self.padding, (0, 0)))

    def backward(self, dy, need_dx=True):
        (t, _), (l, _) = self.padding
        return dy[:, t:t + self.x_shape[1], l:l + self.x_shape[2]]


class UpSampling2D(Layer):
    """Nearest-neighbour upsampling: each pixel repeated size[0] times down, size[1] across."""

    def __init__(self, size):
        self.size = size

    def forward(self, x, training=False):
        return x.repeat(self.size[0], axis=1).repeat(self.size[1], axis=2)

    def backward(self, dy, need_dx=True):
        n, h, w, c = dy.shape
        sh, sw = self.size
        return dy.reshape(n, h // sh, sh, w // sw, sw, c).sum(axis=(2, 4))


class PReLU(Layer):
    """relu(x) - alpha * relu(-x), one alpha per input unit, as Keras's PReLU computes it:
    the gradient is 0 at exactly 0 on both sides."""

    def __init__(self, alpha):
        self.alpha = alpha
        self.params = [alpha]
        self.grads = [np.zeros(alpha.shape, alpha.dtype)]

    def forward(self, x, training=False):
        self.x = x
        return np.maximum(x, 0) - self.alpha * np.maximum(-x, 0)

    def backward(self, dy, need_dx=True):
        np.sum(dy * np.minimum(self.x, 0), axis=0, out=self.grads[0])
        if need_dx:
            return dy * ((self.x > 0) + self.alpha * (self.x < 0))


class Rescale(Layer):
    """Keras's Rescaling: x * scale + offset, scale and offset cast to the input's dtype
    first (keras/src/layers/preprocessing/rescaling.py)."""

    def __init__(self, scale, offset=0.0):
        self.scale, self.offset = scale, offset

    def forward(self, x, training=False):
        self.factor = x.dtype.type(self.scale)
        return x * self.factor + x.dtype.type(self.offset)

    def backward(self, dy, need_dx=True):
        return dy * self.factor


class Normalize(Layer):
    """Keras's Normalization(axis=-1): (x - mean) / max(sqrt(variance), 1e-7), the floor
    being keras.backend.epsilon() (keras/src/layers/preprocessing/normalization.py, `call`).
    Mean and variance are constants to training: only adapt or set_weights change them."""

    def __init__(self, mean, variance):
        self.mean, self.variance = mean, variance

    def forward(self, x, training=False):
        self.scale = np.maximum(np.sqrt(self.variance), 1e-7)
        return (x - self.mean) / self.scale

    def backward(self, dy, need_dx=True):
        return dy / self.scale


def dropout_rng(seed, model_seed, index):
    """The masks of a dropout layer: fixed by its own seed, else by the model seed and the
    layer's index, else fresh."""
    if seed is not None:
        key = [2, seed % 2**64]
    elif model_seed is not None:
        key = [3, model_seed % 2**128, index]
    else:
        key = None
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


class Dropout(Layer):
    """Inverted dropout, only while training: kept units are scaled by 1/(1 - rate)."""

    def __init__(self, rate, rng):
        self.rate, self.rng = rate, rng
        self.mask = None

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self.mask = None
            return x
        if self.rate >= 1:
            self.mask = np.zeros_like(x)
        else:
            keep = self.rng.random(x.shape, dtype=x.dtype) >= self.rate
            self.mask = keep.astype(x.dtype) / (1 - self.rate)
        return x * self.mask

    def backward(self, dy, need_dx=True):
        return dy if self.mask is None else dy * self.mask


class BatchNorm(Layer):
    """Normalizes the last axis. Training uses the batch's mean and biased variance; the
    moving statistics move toward them only in update_moving(), which the training loop
    calls once the step is known to be good. Inference uses the moving statistics."""

    def __init__(self, gamma, beta, moving_mean, moving_variance, momentum=0.99, epsilon=1e-3):
        self.gamma, self.beta, self.moving_mean, self.moving_variance = gamma, beta, moving_mean, moving_variance
        self.momentum, self.epsilon = momentum, epsilon
        self.params = [gamma, beta]
        self.grads = [np.zeros(gamma.shape, gamma.dtype), np.zeros(beta.shape, beta.dtype)]

    def forward(self, x, training=False):
        axes = tuple(range(x.ndim - 1))
        self.training = training
        if training:
            mean = x.mean(axis=axes)
            variance = np.square(x - mean).mean(axis=axes)
            self.batch_stats = mean, variance
        else:
            mean, variance = self.moving_mean, self.moving_variance
        self.inv_std = 1 / np.sqrt(variance + self.epsilon)
        self.x_hat = (x - mean) * self.inv_std
        return self.x_hat * self.gamma + self.beta

    def update_moving(self):
        if not self.training:
            return
        mean, variance = self.batch_stats
        self.moving_mean[...] = self.moving_mean * self.momentum + mean * (1 - self.momentum)
        self.moving_variance[...] = self.moving_variance * self.momentum + variance * (1 - self.momentum)

    def backward(self, dy, need_dx=True):
        axes = tuple(range(dy.ndim - 1))
        np.sum(dy * self.x_hat, axis=axes, out=self.grads[0])
        np.sum(dy, axis=axes, out=self.grads[1])
        if not need_dx:
            return None
        scale = self.gamma * self.inv_std
        if not self.training:  # the moving statistics are constants
            return dy * scale
        m = dy.size // dy.shape[-1]
        return (scale / m) * (m * dy - self.grads[1] - self.x_hat * self.grads[0])


# ---------------------------------------------------------------------------------------
# Sequences: (batch, steps, channels) tensors, and the integer ids an embedding reads.


class Embedding(Layer):
    """Each id's row of `embeddings` (keras/src/layers/core/embedding.py). Ids that are not
    integers are truncated toward zero first, as Keras casts them to int32; negative ids
    count from the end, as TensorFlow's gather does on the CPU. The gradient is sparse: only
    the rows used receive one, each the sum over its uses (TensorFlow's IndexedSlices, which
    Keras's optimizer sums into its dense slots). The sum is one bincount over (row, column) cells,
    accumulated in float64: several times faster than np.add.at, and no less exact.

    While the gradient stays sparse (`sparse`: no penalty adds a dense term to it), Keras's
    optimizers clip and square its parts, one per use, before the parts of one id are summed:
    `ops.square` is elementwise on the IndexedSlices (keras/src/backend/tensorflow/sparse.py,
    elementwise_unary), so Adam's v, RMSprop's and Adagrad's accumulators take Σ g², not (Σ g)²,
    per row. `parts` holds them for the optimizer: (cells, values), the flat index of each
    part's element and its value (Optimizer.sparse_sum)."""

    def __init__(self, embeddings):
        self.embeddings = embeddings
        self.params = [embeddings]
        self.grads = [np.zeros(embeddings.shape, embeddings.dtype)]
        self.sparse = True  # False once a penalty makes the gradient dense
        self.parts = [None]

    def forward(self, x, training=False):
        if x.dtype.kind not in "iu":
            x = x.astype(np.int32)
        self.ids = x
        return np.take(self.embeddings, x, axis=0)

    def backward(self, dy, need_dx=True):
        grad = self.grads[0]
        rows, width = grad.shape
        flat = self.ids.reshape(-1).astype(np.intp)
        if flat.size and flat.min() < 0:
            flat = flat % rows  # the row that forward's negative id read
        cells = (flat[:, None] * width + np.arange(width)).reshape(-1)
        values = dy.reshape(-1)
        grad[...] = np.bincount(cells, values, minlength=grad.size).reshape(rows, width)
        if self.sparse:
            self.parts[0] = (cells, values)
        return None  # ids have no gradient


def pad1d(x, before, after, value=0):
    """x (n, steps, c) with `before` and `after` cells of `value` around its steps."""
    if before == after == 0:
        return x
    return np.pad(x, ((0, 0), (before, after), (0, 0)), constant_values=value)


class Conv1D(Layer):
    """Channels-last 1-D convolution, kernel (k, in, out): y[b,t,f] = bias[f] +
    Σ_j Σ_c xpad[b, t·s + j·d, c]·kernel[j,c,f], one matmul over the im2col matrix."""

    def __init__(self, kernel, bias=None, strides=1, padding="valid", dilation_rate=1):
        self.kernel, self.bias = kernel, bias
        self.strides, self.padding, self.dilation_rate = strides, padding, dilation_rate
        self.params = [kernel] if bias is None else [kernel, bias]
        self.grads = [np.zeros(p.shape, p.dtype) for p in self.params]

    def forward(self, x, training=False):
        k, c, f = self.kernel.shape
        s, d = self.strides, self.dilation_rate
        self.pads = pads1d(self.padding, x.shape[1], k, s, d)
        xp = np.ascontiguousarray(pad1d(x, *self.pads))
        self.x_shape, self.xp_shape = x.shape, xp.shape
        out = (xp.shape[1] - d * (k - 1) - 1) // s + 1
        sb, st, sc = xp.strides
        windows = np.lib.stride_tricks.as_strided(xp, (len(xp), out, k, c), (sb, st * s, st * d, sc),
                                                  writeable=False)
        self.out = out
        self.cols = windows.reshape(-1, k * c)  # the one copy: the im2col matrix
        y = self.cols @ self.kernel.reshape(-1, f)
        if self.bias is not None:
            y += self.bias
        return y.reshape(len(x), out, f)

    def backward(self, dy, need_dx=True):
        k, c, f = self.kernel.shape
        s, d = self.strides, self.dilation_rate
        dy2 = dy.reshape(-1, f)
        np.matmul(self.cols.T, dy2, out=self.grads[0].reshape(-1, f))
        if self.bias is not None:  # a product with ones: BLAS sums the rows far faster than np.sum
            np.matmul(np.ones(len(dy2), dy2.dtype), dy2, out=self.grads[1])
        if not need_dx:
            return None
        dcols = (dy2 @ self.kernel.reshape(-1, f).T).reshape(len(dy), self.out, k, c)
        dxp = np.zeros(self.xp_shape, dy.dtype)
        for j in range(k):  # a loop over the taps, never over steps
            dxp[:, j * d:j * d + s * (self.out - 1) + 1:s] += dcols[:, :, j]
        before = self.pads[0]
        return dxp[:, before:before + self.x_shape[1]]


class _OverSteps:
    """A 2-D pool run over (steps, 1): a sequence is an image one column wide."""

    def __init__(self, pool_size=2, strides=None, padding="valid"):
        super().__init__((pool_size, 1), (strides or pool_size, 1), padding)

    def forward(self, x, training=False):
        return super().forward(x[:, :, None, :], training)[:, :, 0, :]

    def backward(self, dy, need_dx=True):
        return super().backward(dy[:, :, None, :], need_dx)[:, :, 0, :]


class MaxPool1D(_OverSteps, MaxPool2D):
    """'same' pads with -inf, the gradient goes to the first max of each window (TensorFlow's MaxPoolGrad)."""


class AvgPool1D(_OverSteps, AvgPool2D):
    """With 'same', the divisor is the number of real cells."""


class GlobalAvgPool1D(Layer):
    """The mean over the steps. With `masked`, the mean of the steps whose id is not 0:
    Σ_t mask·x / Σ_t mask, masked steps replaced by 0 first (keras/src/layers/pooling/
    global_average_pooling1d.py); a sample with every step masked gives NaN, as in Keras.
    The network sets `ids` (the model's input) before each forward pass."""

    def __init__(self, masked=False):
        self.masked = masked
        self.ids = None

    def forward(self, x, training=False):
        self.x_shape = x.shape
        if not self.masked:
            return x.mean(axis=1)
        self.mask = (self.ids != 0)[:, :, None]
        self.count = self.mask.sum(axis=1).astype(x.dtype)  # (n, 1)
        return np.where(self.mask, x, 0).sum(axis=1) / self.count

    def backward(self, dy, need_dx=True):
        if not self.masked:
            return np.broadcast_to((dy / self.x_shape[1])[:, None, :], self.x_shape)
        return np.where(self.mask, (dy / self.count)[:, None, :], 0)


class GlobalMaxPool1D(Layer):
    """The maximum over the steps; ties share the gradient equally (TensorFlow's reduce_max
    gradient, tensorflow/python/ops/math_grad.py, _MinOrMaxGrad). It ignores a mask, as Keras does."""

    def forward(self, x, training=False):
        self.x, self.y = x, x.max(axis=1)
        return self.y

    def backward(self, dy, need_dx=True):
        hit = self.x == self.y[:, None, :]
        return hit * (dy / hit.sum(axis=1))[:, None, :]


class LayerNorm(Layer):
    """Normalizes each sample's last axis with its own mean and biased variance, computed as
    Keras computes it: x·inv + (beta - mean·inv), inv = gamma·rsqrt(variance + epsilon)
    (keras/src/ops/nn.py, _layer_normalization; tf.nn.moments)."""

    def __init__(self, gamma, beta, epsilon=1e-3):
        self.gamma, self.beta, self.epsilon = gamma, beta, epsilon
        self.params = [gamma, beta]
        self.grads = [np.zeros(gamma.shape, gamma.dtype), np.zeros(beta.shape, beta.dtype)]

    def forward(self, x, training=False):
        mean = x.mean(axis=-1, keepdims=True)
        variance = np.square(x - mean).mean(axis=-1, keepdims=True)
        self.inv_std = 1 / np.sqrt(variance + self.epsilon)
        self.x_hat = (x - mean) * self.inv_std
        inv = self.inv_std * self.gamma
        return x * inv + (self.beta - mean * inv)

    def backward(self, dy, need_dx=True):
        d = dy.shape[-1]
        dy2, x_hat = dy.reshape(-1, d), self.x_hat.reshape(-1, d)
        np.sum(dy2 * x_hat, axis=0, out=self.grads[0])
        np.sum(dy2, axis=0, out=self.grads[1])
        if not need_dx:
            return None
        g = dy * self.gamma
        return (self.inv_std / d) * (d * g - g.sum(axis=-1, keepdims=True)
                                     - self.x_hat * (g * self.x_hat).sum(axis=-1, keepdims=True))


class Reshape(Layer):
    """The same values in row-major order under a new shape (one -1 allowed), batch axis kept."""

    def __init__(self, target_shape):
        self.target_shape = target_shape

    def forward(self, x, training=False):
        self.x_shape = x.shape
        return x.reshape(len(x), *self.target_shape)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.x_shape)


# ---------------------------------------------------------------------------------------
# Recurrent layers and attention. Inside the recurrent loop the arrays are time-major,
# (steps, batch, width), so each step's slice is contiguous.


class Recurrent(Layer):
    """The loop shared by LSTM, GRU and SimpleRNN: keras/src/layers/rnn/rnn.py over the
    TensorFlow backend's loop (keras/src/backend/tensorflow/rnn.py). From a zero state the
    cell runs over the steps, in reverse with go_backwards (the outputs then stay in the
    order processed). With `masked`, a step whose id is 0 keeps the state and repeats the
    previous output, or outputs 0 with zero_output_for_mask (Bidirectional's
    return_sequences). The input projection x·kernel is one matmul over every step; a step
    adds h·recurrent_kernel. Backpropagation through time runs the steps in reverse: at a
    masked step the `where` passes the state's gradient straight through and the cell gets
    none. A subclass has `start` (the projections and caches), `step` and `step_back` (one
    cell step and its gradient) and `finish` (the weight gradients, and the input's if needed)."""

    n_states = 1

    def __init__(self, kernel, recurrent_kernel, bias=None, activation=tanh, activation_grad=tanh_grad,
                 recurrent_activation=sigmoid, recurrent_activation_grad=sigmoid_grad,
                 return_sequences=False, go_backwards=False, masked=False, zero_output_for_mask=False):
        self.kernel, self.recurrent_kernel, self.bias = kernel, recurrent_kernel, bias
        self.act, self.act_grad = activation, activation_grad
        self.rec_act, self.rec_act_grad = recurrent_activation, recurrent_activation_grad
        self.return_sequences, self.go_backwards = return_sequences, go_backwards
        self.masked, self.zero_output_for_mask = masked, zero_output_for_mask
        self.ids = None
        self.params = [kernel, recurrent_kernel] if bias is None else [kernel, recurrent_kernel, bias]
        self.grads = [np.zeros(p.shape, p.dtype) for p in self.params]

    def forward(self, x, training=False):
        n, steps, width = x.shape
        units = self.recurrent_kernel.shape[0]
        xt = x.transpose(1, 0, 2)
        if self.go_backwards:
            xt = xt[::-1]
        self.x2 = xt.reshape(-1, width)  # time-major, in the order processed: one copy
        self.mask = None
        if self.masked:
            mask = (self.ids != 0).T
            self.mask = (mask[::-1] if self.go_backwards else mask)[:, :, None]
        self.h_in = np.empty((steps, n, units), x.dtype)  # the state h each step reads
        self.start(steps, n, units)
        states = [np.zeros((n, units), x.dtype) for _ in range(self.n_states)]
        out = np.empty((n, steps, units), x.dtype) if self.return_sequences else None
        for t in range(steps):
            self.h_in[t] = states[0]
            new = self.step(t, states)
            y = None
            if self.mask is not None:
                m = self.mask[t]
                if self.zero_output_for_mask:
                    y = np.where(m, new[0], 0)
                new = [np.where(m, a, b) for a, b in zip(new, states)]
            states = new
            if out is not None:
                out[:, t] = new[0] if y is None else y  # unless zeroed, the output is the state h
        return out if out is not None else states[0]

    def backward(self, dy, need_dx=True):
        steps, n, units = self.h_in.shape
        d = [np.zeros((n, units), dy.dtype) for _ in range(self.n_states)]
        for t in range(steps - 1, -1, -1):
            dy_t = dy[:, t] if self.return_sequences else dy if t == steps - 1 else None
            if self.mask is None:
                if dy_t is not None:
                    d[0] = d[0] + dy_t
                d = self.step_back(t, d)
                continue
            m = self.mask[t]
            if dy_t is not None and not self.zero_output_for_mask:
                d[0] = d[0] + dy_t  # the output is the state after the where
            through = [np.where(m, 0, g) for g in d]
            into = [np.where(m, g, 0) for g in d]
            if dy_t is not None and self.zero_output_for_mask:
                into[0] += np.where(m, dy_t, 0)
            d = [a + b for a, b in zip(self.step_back(t, into), through)]
        dx = self.finish(need_dx)
        if not need_dx:
            return None
        dx = dx.reshape(steps, n, -1)
        return (dx[::-1] if self.go_backwards else dx).transpose(1, 0, 2)

    def input_grads(self, dz, need_dx):
        """The kernel's gradient from dz, the gradient of x·kernel at every step
        (steps, n, width), and dz·kernelᵀ, the input's gradient in time-major order."""
        dz2 = dz.reshape(-1, dz.shape[-1])
        np.matmul(self.x2.T, dz2, out=self.grads[0])
        return dz2 @ self.kernel.T if need_dx else None


def bias_sum(dz):
    """Σ over steps and samples of dz (steps, n, width): a product with ones, which BLAS sums far
    faster than np.sum."""
    dz2 = dz.reshape(-1, dz.shape[-1])
    return np.ones(len(dz2), dz.dtype) @ dz2


class SimpleRNN(Recurrent):
    """h' = activation(x·kernel + bias + h·recurrent_kernel) (keras/src/layers/rnn/simple_rnn.py)."""

    def start(self, steps, n, units):
        xk = self.x2 @ self.kernel
        if self.bias is not None:
            xk += self.bias
        self.xk = xk.reshape(steps, n, units)
        self.pre, self.h = np.empty_like(self.xk), np.empty_like(self.xk)
        self.dz = np.empty_like(self.xk)

    def step(self, t, states):
        pre = self.pre[t]
        np.matmul(states[0], self.recurrent_kernel, out=pre)
        pre += self.xk[t]
        self.h[t] = self.act(pre)
        return [self.h[t]]

    def step_back(self, t, d):
        dz = self.dz[t]
        dz[...] = self.act_grad(self.pre[t], self.h[t], d[0])
        return [dz @ self.recurrent_kernel.T]

    def finish(self, need_dx):
        np.matmul(self.h_in.reshape(-1, self.h_in.shape[-1]).T, self.dz.reshape(-1, self.dz.shape[-1]),
                  out=self.grads[1])
        if self.bias is not None:
            self.grads[2][...] = bias_sum(self.dz)
        return self.input_grads(self.dz, need_dx)


class LSTM(Recurrent):
    """Gate blocks i, f, c, o (keras/src/layers/rnn/lstm.py, implementation 2):
    z = x·kernel + h·recurrent_kernel + bias; c' = f·c + i·activation(z_c); h' = o·activation(c').
    Inside, the columns are reordered i, f, o, c, so that the three recurrent_activation gates
    are one block (one call a step); each column's numbers are the same."""

    n_states = 2

    def start(self, steps, n, units):
        u = units
        self.order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]  # i, f, o, c
        self.k, self.r = self.kernel[:, self.order], self.recurrent_kernel[:, self.order]
        self.b = None if self.bias is None else self.bias[self.order]
        self.xk = (self.x2 @ self.k).reshape(steps, n, 4 * u)
        self.z, self.gates, self.dz = np.empty_like(self.xk), np.empty_like(self.xk), np.empty_like(self.xk)
        self.c_in, self.c, self.c_act = (np.empty((steps, n, u), self.xk.dtype) for _ in range(3))

    def step(self, t, states):
        h, c = states
        u = h.shape[1]
        z, g = self.z[t], self.gates[t]
        np.matmul(h, self.r, out=z)
        z += self.xk[t]  # (x·kernel + h·recurrent_kernel) + bias, Keras's order
        if self.b is not None:
            z += self.b
        g[:, :3 * u] = self.rec_act(z[:, :3 * u])
        g[:, 3 * u:] = self.act(z[:, 3 * u:])
        self.c_in[t] = c
        c_new = self.c[t]
        np.multiply(g[:, u:2 * u], c, out=c_new)
        c_new += g[:, :u] * g[:, 3 * u:]
        self.c_act[t] = self.act(c_new)
        return [g[:, 2 * u:3 * u] * self.c_act[t], c_new]

    def step_back(self, t, d):
        dh, dc = d
        u = dh.shape[1]
        z, g, dz = self.z[t], self.gates[t], self.dz[t]
        dc = dc + self.act_grad(self.c[t], self.c_act[t], dh * g[:, 2 * u:3 * u])
        np.multiply(dc, g[:, 3 * u:], out=dz[:, :u])
        np.multiply(dc, self.c_in[t], out=dz[:, u:2 * u])
        np.multiply(dh, self.c_act[t], out=dz[:, 2 * u:3 * u])
        dz[:, :3 * u] = self.rec_act_grad(z[:, :3 * u], g[:, :3 * u], dz[:, :3 * u])
        dz[:, 3 * u:] = self.act_grad(z[:, 3 * u:], g[:, 3 * u:], dc * g[:, :u])
        return [dz @ self.r.T, dc * g[:, u:2 * u]]

    def finish(self, need_dx):
        dz = self.dz.reshape(-1, self.dz.shape[-1])
        self.grads[1][:, self.order] = self.h_in.reshape(-1, self.h_in.shape[-1]).T @ dz
        if self.bias is not None:
            self.grads[2][self.order] = bias_sum(self.dz)
        self.grads[0][:, self.order] = self.x2.T @ dz
        return dz @ self.k.T if need_dx else None


class GRU(Recurrent):
    """Gate blocks z, r, h (keras/src/layers/rnn/gru.py, implementation 2): mx = x·kernel + b_in;
    z, r = recurrent_activation(mx + h·R) on their blocks; the candidate
    hh = activation(mx_h + r·(h·R_h + b_rec_h)) with reset_after (bias (2, 3·units): input row,
    recurrent row), else activation(mx_h + (r·h)·R_h); h' = z·h + (1 - z)·hh."""

    def __init__(self, kernel, recurrent_kernel, bias=None, reset_after=True, **options):
        super().__init__(kernel, recurrent_kernel, bias, **options)
        self.reset_after = reset_after

    def start(self, steps, n, units):
        xk = self.x2 @ self.kernel
        if self.bias is not None:
            xk += self.bias[0] if self.reset_after else self.bias
        self.xk = xk.reshape(steps, n, 3 * units)
        self.dmx = np.empty_like(self.xk)  # the gradient of mx, every step
        self.zr_pre, self.zr = np.empty((steps, n, 2 * units), xk.dtype), np.empty((steps, n, 2 * units), xk.dtype)
        self.hh_pre, self.hh = np.empty((steps, n, units), xk.dtype), np.empty((steps, n, units), xk.dtype)
        if self.reset_after:
            self.rec = np.empty_like(self.xk)  # h·R + b_rec
            self.drec = np.empty_like(self.xk)
        else:
            self.rh = np.empty((steps, n, units), xk.dtype)  # r·h, what R_h multiplies
            r = self.recurrent_kernel
            self.r_zr, self.r_h = np.ascontiguousarray(r[:, :2 * units]), np.ascontiguousarray(r[:, 2 * units:])

    def step(self, t, states):
        h = states[0]
        u = h.shape[1]
        mx, pre, zr, hp = self.xk[t], self.zr_pre[t], self.zr[t], self.hh_pre[t]
        if self.reset_after:
            rec = self.rec[t]
            np.matmul(h, self.recurrent_kernel, out=rec)
            if self.bias is not None:
                rec += self.bias[1]
            np.add(mx[:, :2 * u], rec[:, :2 * u], out=pre)
            zr[...] = self.rec_act(pre)
            np.multiply(zr[:, u:], rec[:, 2 * u:], out=hp)
        else:
            np.add(mx[:, :2 * u], h @ self.r_zr, out=pre)
            zr[...] = self.rec_act(pre)
            np.multiply(zr[:, u:], h, out=self.rh[t])
            np.matmul(self.rh[t], self.r_h, out=hp)
        np.add(mx[:, 2 * u:], hp, out=hp)
        self.hh[t] = self.act(hp)
        z = zr[:, :u]
        return [z * h + (1 - z) * self.hh[t]]

    def step_back(self, t, d):
        dh = d[0]
        u = dh.shape[1]
        h, zr, hh, dmx = self.h_in[t], self.zr[t], self.hh[t], self.dmx[t]
        z, r = zr[:, :u], zr[:, u:]
        dgate = np.empty_like(zr)  # the gradients of z and r
        np.multiply(dh, h - hh, out=dgate[:, :u])
        dh_prev = dh * z
        dhp = dmx[:, 2 * u:]
        dhp[...] = self.act_grad(self.hh_pre[t], hh, dh * (1 - z))
        if self.reset_after:
            drec = self.drec[t]
            rec_h = self.rec[t][:, 2 * u:]
            np.multiply(dhp, rec_h, out=dgate[:, u:])
            np.multiply(dhp, r, out=drec[:, 2 * u:])
            dmx[:, :2 * u] = drec[:, :2 * u] = self.rec_act_grad(self.zr_pre[t], zr, dgate)
            dh_prev += drec @ self.recurrent_kernel.T
        else:
            drh = dhp @ self.r_h.T
            np.multiply(drh, h, out=dgate[:, u:])
            dh_prev += drh * r
            dmx[:, :2 * u] = self.rec_act_grad(self.zr_pre[t], zr, dgate)
            dh_prev += dmx[:, :2 * u] @ self.r_zr.T
        return [dh_prev]

    def finish(self, need_dx):
        u = self.h_in.shape[-1]
        h_in = self.h_in.reshape(-1, u)
        if self.reset_after:
            np.matmul(h_in.T, self.drec.reshape(-1, 3 * u), out=self.grads[1])
            if self.bias is not None:
                self.grads[2][0] = bias_sum(self.dmx)
                self.grads[2][1] = bias_sum(self.drec)
        else:
            dmx = self.dmx.reshape(-1, 3 * u)
            self.grads[1][:, :2 * u] = h_in.T @ dmx[:, :2 * u]
            self.grads[1][:, 2 * u:] = self.rh.reshape(-1, u).T @ dmx[:, 2 * u:]
            if self.bias is not None:
                self.grads[2][...] = bias_sum(self.dmx)
        return self.input_grads(self.dmx, need_dx)


class Bidirectional(Layer):
    """Keras's Bidirectional (keras/src/layers/rnn/bidirectional.py): `forward_layer` runs as
    written, `backward_layer` (its copy with go_backwards flipped) over the reversed steps;
    with return_sequences its outputs are flipped back into time order, then the two merge:
    concat, sum, mul or ave ((a + b) / 2). The weights are the forward layer's, then the
    backward one's; a kernel penalty applies to both kernels (`regularized`)."""

    def __init__(self, forward_layer, backward_layer, merge_mode="concat", masked=False):
        self.forward_layer, self.backward_layer = forward_layer, backward_layer
        self.merge_mode, self.masked = merge_mode, masked
        self.ids = None
        self.params = [*forward_layer.params, *backward_layer.params]
        self.grads = [*forward_layer.grads, *backward_layer.grads]
        self.regularized = (0, len(forward_layer.params))

    def forward(self, x, training=False):
        self.forward_layer.ids = self.backward_layer.ids = self.ids
        a = self.forward_layer.forward(x, training)
        b = self.backward_layer.forward(x, training)
        if self.backward_layer.return_sequences:
            b = b[:, ::-1]
        self.a, self.b = a, b
        if self.merge_mode == "concat":
            return np.concatenate([a, b], axis=-1)
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) / 2

    def backward(self, dy, need_dx=True):
        if self.merge_mode == "concat":
            units = self.a.shape[-1]
            da, db = dy[..., :units], dy[..., units:]
        elif self.merge_mode == "sum":
            da = db = dy
        elif self.merge_mode == "mul":
            da, db = dy * self.b, dy * self.a
        else:
            da = db = dy / 2
        if self.backward_layer.return_sequences:
            db = db[:, ::-1]
        dx = self.forward_layer.backward(da, need_dx)
        dx_back = self.backward_layer.backward(db, need_dx)
        return dx + dx_back if need_dx else None


class Attention(Layer):
    """Keras's MultiHeadAttention as self-attention, mha(x, x), on its einsum path (keras/src/
    layers/attention/multi_head_attention.py, _compute_attention): q, k, v = x·W + b per head;
    scores = q·kᵀ/√key_dim; with `masked`, a score whose query or key id is 0 is replaced by
    -1e9 (keras/src/layers/activations/softmax.py), so a masked query attends evenly to every
    step, except on Keras's einsum path (dropout > 0), whose masked softmax then zeroes the
    masked probabilities (a masked query attends to nothing); p = softmax over the keys,
    dropped out while training (Keras's Dropout on the
    probabilities, masks drawn as the Dropout layer's here); y = (p·v)·W_o + b_o. Kernels are
    (D, heads, dim), the output's (heads, value_dim, D). Computed as matmuls on (batch, heads,
    steps, dim) arrays."""

    def __init__(self, query_kernel, query_bias, key_kernel, key_bias, value_kernel, value_bias,
                 output_kernel, output_bias, dropout=0.0, rng=None, masked=False):
        self.kernels = [query_kernel, key_kernel, value_kernel, output_kernel]
        self.biases = [query_bias, key_bias, value_bias, output_bias]
        self.dropout, self.rng, self.masked = dropout, rng, masked
        self.ids = None
        self.kernel_grads = [np.zeros(k.shape, k.dtype) for k in self.kernels]
        self.bias_grads = [None if b is None else np.zeros(b.shape, b.dtype) for b in self.biases]
        self.params = [p for pair in zip(self.kernels, self.biases) for p in pair if p is not None]
        self.grads = [g for pair in zip(self.kernel_grads, self.bias_grads) for g in pair if g is not None]

    def project(self, x2, i, n, steps):
        """Projection i (query, key, value) of x2 (n·steps, D) as (n, heads, steps, dim)."""
        kernel, bias = self.kernels[i], self.biases[i]
        d, heads, dim = kernel.shape
        y = x2 @ kernel.reshape(d, heads * dim)
        if bias is not None:
            y += bias.reshape(-1)
        return y.reshape(n, steps, heads, dim).transpose(0, 2, 1, 3)

    def forward(self, x, training=False):
        n, steps, d = x.shape
        self.x2 = x.reshape(-1, d)
        key_dim = self.kernels[0].shape[2]
        self.scale = key_dim ** -0.5  # a Python float: the scores keep x's dtype
        self.q, self.k, self.v = (self.project(self.x2, i, n, steps) for i in range(3))
        # Keras's einsum path (taken when dropout > 0) scales the query, its
        # ops.dot_product_attention path the scores (keras/src/backend/tensorflow/nn.py)
        if self.dropout > 0:
            scores = (self.q * self.scale) @ self.k.transpose(0, 1, 3, 2)  # (n, heads, steps, steps)
        else:
            scores = (self.q @ self.k.transpose(0, 1, 3, 2)) * self.scale
        self.mask = None
        if self.masked:
            valid = self.ids != 0
            self.mask = (valid[:, :, None] & valid[:, None, :])[:, None]
            scores = np.where(self.mask, scores, -1e9)
        self.p = softmax(scores)
        if self.mask is not None and self.dropout > 0:
            # the einsum path's masked Softmax then zeroes the masked probabilities, so a masked
            # query row attends to nothing (keras/src/layers/activations/softmax.py); the
            # gradient needs nothing more: softmax_grad gives 0 wherever p is 0
            self.p = np.where(self.mask, self.p, 0)
        self.keep = None
        if training and self.dropout > 0:
            keep = self.rng.random(self.p.shape, dtype=self.p.dtype) >= self.dropout
            self.keep = keep.astype(self.p.dtype) / (1 - self.dropout)
        p = self.p if self.keep is None else self.p * self.keep
        self.p_used = p
        self.o = (p @ self.v).transpose(0, 2, 1, 3).reshape(n * steps, -1)  # (n·steps, heads·value_dim)
        y = self.o @ self.kernels[3].reshape(self.o.shape[1], d)
        if self.biases[3] is not None:
            y += self.biases[3]
        return y.reshape(n, steps, d)

    def backward(self, dy, need_dx=True):
        n, heads, steps, key_dim = self.q.shape
        d = dy.shape[-1]
        dy2 = dy.reshape(-1, d)
        out_kernel = self.kernels[3]
        self.kernel_grads[3][...] = (self.o.T @ dy2).reshape(out_kernel.shape)
        if self.biases[3] is not None:
            self.bias_grads[3][...] = np.ones(len(dy2), dy.dtype) @ dy2
        do = (dy2 @ out_kernel.reshape(-1, d).T).reshape(n, steps, heads, -1).transpose(0, 2, 1, 3)
        dv = self.p_used.transpose(0, 1, 3, 2) @ do
        dp = do @ self.v.transpose(0, 1, 3, 2)
        if self.keep is not None:
            dp *= self.keep
        ds = softmax_grad(None, self.p, dp)
        if self.mask is not None:
            ds = np.where(self.mask, ds, 0)  # a replaced score passes no gradient back
        ds *= self.scale
        dq = ds @ self.k
        dk = ds.transpose(0, 1, 3, 2) @ self.q
        dx = None
        for i, dz in enumerate((dq, dk, dv)):
            kernel = self.kernels[i]
            dz2 = dz.transpose(0, 2, 1, 3).reshape(n * steps, -1)
            self.kernel_grads[i][...] = (self.x2.T @ dz2).reshape(kernel.shape)
            if self.biases[i] is not None:
                self.bias_grads[i][...] = (np.ones(len(dz2), dz2.dtype) @ dz2).reshape(self.biases[i].shape)
            if need_dx:
                part = dz2 @ kernel.reshape(d, -1).T
                dx = part if dx is None else dx + part
        return dx.reshape(n, steps, d) if need_dx else None


# ---------------------------------------------------------------------------------------
# Merges (keras/src/layers/merging/): forward(xs, training) takes the list of inputs and
# backward(dy) returns one gradient per input. The elementwise ones fold left to right, as
# each _merge_function does: ((x1 + x2) + x3).


def expand_ranks(xs):
    """Keras's rank rule (base_merge.py, `call`): a lower-rank input gets new axes right
    after the batch axis, then shapes broadcast as NumPy's do (a dim of 1 stretches)."""
    rank = max(x.ndim for x in xs)
    return [x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:]) for x in xs]


def unbroadcast(dx, shape):
    """A gradient of the merged shape back to an input's `shape`: summed over the axes its
    dims of 1 (or its missing axes after the batch axis) were stretched along."""
    expanded = shape[:1] + (1,) * (dx.ndim - len(shape)) + shape[1:]
    axes = tuple(i for i, (a, b) in enumerate(zip(expanded, dx.shape)) if a == 1 and b != 1)
    if axes:
        dx = dx.sum(axis=axes, keepdims=True)
    return dx.reshape(shape)


class Merge(Layer):
    """An elementwise merge: `merge` folds the rank-expanded inputs, `grads_of` gives each
    one's gradient at the merged shape, summed back to its own shape here."""

    merges = True

    def forward(self, xs, training=False):
        self.shapes = [x.shape for x in xs]
        return self.merge(expand_ranks(xs))

    def backward(self, dy, need_dx=True):
        return [unbroadcast(dx, shape) for dx, shape in zip(self.grads_of(dy), self.shapes)]


class Add(Merge):
    def merge(self, xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y

    def grads_of(self, dy):
        return [dy] * len(self.shapes)


class Subtract(Merge):
    def merge(self, xs):
        return xs[0] - xs[1]

    def grads_of(self, dy):
        return [dy, -dy]


class Average(Merge):
    """(x1 + ... + xn) / n: a division, as Keras writes it (average.py)."""

    def merge(self, xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y / len(xs)

    def grads_of(self, dy):
        return [dy / len(self.shapes)] * len(self.shapes)


class Multiply(Merge):
    """The product folded left to right; the gradient runs the fold backward, as the chain
    of TensorFlow's Mul gradients does: input k gets dy·x_(k+1)·...·x_n times x_1·...·x_(k-1)."""

    def merge(self, xs):
        self.xs, self.partials = xs, [xs[0]]
        for x in xs[1:]:
            self.partials.append(self.partials[-1] * x)
        return self.partials[-1]

    def grads_of(self, dy):
        g, grads = dy, []
        for k in range(len(self.xs) - 1, 0, -1):
            grads.append(g * self.partials[k - 1])
            g = g * self.xs[k]
        return [g, *reversed(grads)]


class Maximum(Merge):
    """The elementwise maximum folded left to right. TensorFlow's gradient of maximum(a, b)
    goes to a where a >= b (math_grad.py, _MaximumGrad): on ties the earlier input takes all."""

    def merge(self, xs):
        self.xs, self.partials = xs, [xs[0]]
        for x in xs[1:]:
            self.partials.append(self.pick(self.partials[-1], x))
        return self.partials[-1]

    @staticmethod
    def pick(a, b):
        return np.maximum(a, b)

    @staticmethod
    def left(a, b):
        return a >= b

    def grads_of(self, dy):
        g, grads = dy, []
        for k in range(len(self.xs) - 1, 0, -1):
            left = self.left(self.partials[k - 1], self.xs[k])
            grads.append(np.where(left, 0, g))
            g = np.where(left, g, 0)
        return [g, *reversed(grads)]


class Minimum(Maximum):
    """The elementwise minimum; the gradient goes to a where a <= b (_MinimumGrad)."""

    @staticmethod
    def pick(a, b):
        return np.minimum(a, b)

    @staticmethod
    def left(a, b):
        return a <= b


class Concatenate(Layer):
    """Inputs joined along `axis` (batch axis first, as Keras counts it); no broadcasting."""

    merges = True

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, xs, training=False):
        self.sizes = [x.shape[self.axis] for x in xs]
        return np.concatenate(xs, axis=self.axis)

    def backward(self, dy, need_dx=True):
        return np.split(dy, np.cumsum(self.sizes[:-1]), axis=self.axis)


# ---------------------------------------------------------------------------------------
# Losses: loss(y_true, y_pred) -> (batch loss, d loss / d y_pred). The batch loss is
# Keras's sum_over_batch_size: the per-sample losses (each reduced over the last axis)
# summed and divided by their number. With from_logits, y_pred holds the values before
# the output's softmax/sigmoid and nothing is clipped (the TensorFlow backend's rule).


def categorical_crossentropy(y, z, from_logits=False, label_smoothing=0.0):
    """With label_smoothing, the labels become y·(1 - ls) + ls/classes first
    (keras/src/losses/losses.py, categorical_crossentropy)."""
    count = z.size // z.shape[-1]
    if label_smoothing:
        y = y * (1 - label_smoothing) + label_smoothing / z.dtype.type(z.shape[-1])
    if from_logits:
        shifted = z - z.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = -(y * log_p).sum(axis=-1)
        return loss.sum() / count, (np.exp(log_p) - y) / count  # TF's gradient: softmax - y
    total = z.sum(axis=-1, keepdims=True)
    q = z / total  # Keras renormalizes probabilities first
    c = np.clip(q, EPSILON, 1 - EPSILON)
    loss = -(y * np.log(c)).sum(axis=-1)
    dq = -y / c * ((q >= EPSILON) & (q <= 1 - EPSILON))
    dz = (dq - (dq * q).sum(axis=-1, keepdims=True)) / total
    return loss.sum() / count, dz / count


def sparse_categorical_crossentropy(y, z, from_logits=False):
    """Integer labels of shape z.shape[:-1]."""
    count = y.size
    onehot = y[..., None] == np.arange(z.shape[-1])
    if from_logits:
        shifted = z - z.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = -log_p[onehot]
        return loss.sum() / count, (np.exp(log_p) - onehot) / count
    # TF clips, takes the log and applies its sparse softmax cross-entropy to the result:
    # -log(c_y / Σc), so probabilities are renormalized after clipping.
    c = np.clip(z, EPSILON, 1 - EPSILON)
    total = c.sum(axis=-1, keepdims=True)
    loss = np.log(total[..., 0]).ravel() - np.log(c[onehot])  # c[onehot] is flat, in the same order
    dz = (1 / total - onehot / c) * ((z >= EPSILON) & (z <= 1 - EPSILON))
    return loss.sum() / count, dz / count


def binary_crossentropy(y, z, from_logits=False, label_smoothing=0.0):
    """The mean over the last axis then over the samples is the mean over all elements. With
    label_smoothing, the labels become y·(1 - ls) + ls/2 first (keras/src/losses/losses.py)."""
    if label_smoothing:
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        return loss.sum() / z.size, (sigmoid(z) - y) / z.size
    c = np.clip(z, EPSILON, 1 - EPSILON)
    loss = -(y * np.log(c) + (1 - y) * np.log(1 - c))
    dz = ((1 - y) / (1 - c) - y / c) * ((z >= EPSILON) & (z <= 1 - EPSILON))
    return loss.sum() / z.size, dz / z.size


def mse(y, z):
    e = z - y
    return np.square(e).sum() / z.size, e * (2 / z.size)


def mae(y, z):
    e = z - y
    return np.abs(e).sum() / z.size, np.sign(e) / z.size


def huber(y, z, delta=1.0):
    e = z - y
    small = np.abs(e) <= delta
    loss = np.where(small, 0.5 * np.square(e), delta * np.abs(e) - 0.5 * delta * delta)
    return loss.sum() / z.size, np.where(small, e, delta * np.sign(e)) / z.size


# ---------------------------------------------------------------------------------------
# Metrics: metric(y_true, y_pred) -> one value per sample (Keras averages over every axis
# but the batch's); the training loop sums them.


def per_sample(values):
    return values.reshape(len(values), -1).mean(axis=1)


def categorical_accuracy(y, p):
    return per_sample((y.argmax(axis=-1) == p.argmax(axis=-1)).astype(p.dtype))


def sparse_categorical_accuracy(y, p):
    return per_sample((y == p.argmax(axis=-1)).astype(p.dtype))


def binary_accuracy(y, p):
    return per_sample(((p > 0.5) == y).astype(p.dtype))  # strictly above the threshold


def in_top_k(ids, p, k):
    """tf.math.in_top_k on rows of p (..., classes) and their class ids: fewer than k classes
    score strictly above the target's, so a tie with the k-th is in; a row holding a
    non-finite score, or an id outside the classes, is not (tensorflow/core/kernels/in_topk_op.h)."""
    classes = p.shape[-1]
    rows, ids = p.reshape(-1, classes), ids.reshape(-1).astype(np.int64)  # Keras casts the ids to int
    valid = (ids >= 0) & (ids < classes)
    target = np.take_along_axis(rows, np.where(valid, ids, 0)[:, None], axis=1)
    above = (rows > target).sum(axis=1)
    return valid & np.isfinite(rows).all(axis=1) & (above < k)


def top_k_categorical_accuracy(y, p, k=5):
    """The one-hot label's class (its first largest value) among the k highest scores."""
    return per_sample(in_top_k(y.argmax(axis=-1), p, k).reshape(len(p), -1).astype(p.dtype))


def sparse_top_k_categorical_accuracy(y, p, k=5):
    """Class ids of the output's shape but its last axis, or with a last axis of 1."""
    return per_sample(in_top_k(y, p, k).reshape(len(p), -1).astype(p.dtype))


def mse_metric(y, p):
    return per_sample(np.square(p - y))


def mae_metric(y, p):
    return per_sample(np.abs(p - y))


# ---------------------------------------------------------------------------------------
# Optimizers. Keras's step (keras/src/optimizers/base_optimizer.py, `apply`): the rate of
# this step (a schedule's value at `iterations`, read before it counts this step), the
# gradients clipped, decoupled weight decay w -= w·wd·lr when weight_decay is set (on any
# optimizer), then each optimizer's rule in update(). The slots are made at the first step,
# as Keras builds its optimizer, and updated in place.


class Optimizer:
    """`learning_rate`: a number, kept in float32 as Keras's learning_rate variable, or a
    schedule: a function of the 0-based step giving that step's rate. At most one of
    clipnorm, clipvalue and global_clipnorm is set."""

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        self.schedule = learning_rate if callable(learning_rate) else None
        self.learning_rate = None if self.schedule else np.float32(learning_rate)
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.iterations = 0
        self.built = False

    def rate(self):
        """This step's learning rate (float32)."""
        return self.learning_rate if self.schedule is None else self.schedule(self.iterations)

    def step(self, params, grads, parts=None):
        """`parts`: for each weight, None, or its sparse gradient's parts (Embedding.parts), which
        Keras clips and squares part by part before summing them per row."""
        if not self.built:
            self.build(params)
            self.built = True
        lr = self.rate()
        self.parts = parts or [None] * len(params)
        grads = self.clip(grads)
        self.begin(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.weight_decay:
                p -= p * self.weight_decay * lr
            self.update(i, p, g, lr)
        self.iterations += 1

    def begin(self, params):
        """What a step computes once before the weights' updates."""

    def clip(self, grads):
        """The gradients clipped as Keras clips them (base_optimizer.py, `_clip_gradients`), a
        sparse one part by part (its parts in self.parts replaced): clipnorm is TensorFlow's
        clip_by_norm on each gradient (keras/src/backend/tensorflow/optimizer.py, `_clip_by_norm`),
        g·c / max(‖g‖, c), ‖g‖ over a sparse gradient's parts, a gradient of zeros kept;
        global_clipnorm scales every gradient by c·min(1/‖all‖, 1/c), NaN when that norm is not
        finite (`clip_by_global_norm`), the norm over a sparse gradient's parts but the scaled
        gradient dense (TensorFlow multiplies IndexedSlices densified); clipvalue clips each element (each part) to [-c, c]."""
        if not (self.clipnorm or self.global_clipnorm or self.clipvalue):
            return grads
        values = [g if part is None else part[1] for g, part in zip(grads, self.parts)]
        if self.clipnorm:
            c = self.clipnorm
            values = [v * c / np.maximum(np.sqrt(np.vdot(v, v)), v.dtype.type(c)) for v in values]
        elif self.global_clipnorm:
            c = self.global_clipnorm
            norm = np.sqrt(np.sum([np.vdot(v, v) for v in values], dtype=values[0].dtype))
            scale = c * np.minimum(1 / norm, 1 / c) + (norm - norm)
            # a sparse gradient times a tensor is the dense sum times it: the gradient is dense
            self.parts = [None] * len(grads)
            return [g * scale for g in grads]
        else:
            c = self.clipvalue
            values = [np.clip(v, -c, c) for v in values]
        for i, part in enumerate(self.parts):
            if part is not None:
                self.parts[i] = (part[0], values[i])
                values[i] = self.sparse_sum(i, values[i], grads[i])
        return values

    def sparse_sum(self, i, values, like):
        """Weight i's sparse parts `values` summed into a dense array shaped as `like`."""
        total = np.bincount(self.parts[i][0], values.reshape(-1), minlength=like.size)
        return total.reshape(like.shape).astype(like.dtype)

    def slots(self):
        """The slot arrays in the order Keras creates its optimizer variables (the arrays
        themselves, updated in place by each step)."""
        return []

    def square(self, i, g, out=None):
        """Keras's ops.square of weight i's gradient: a sparse one's parts squared, then summed."""
        if self.parts[i] is None:
            return np.square(g, out=out)
        sq = self.sparse_sum(i, np.square(self.parts[i][1]), g)
        if out is None:
            return sq
        out[...] = sq
        return out


class SGD(Optimizer):
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.momentum, self.nesterov = momentum, nesterov

    def build(self, params):
        self.momentums = [np.zeros_like(p) for p in params] if self.momentum != 0 else []

    def update(self, i, p, g, lr):
        if not self.momentums:
            p -= g * lr
            return
        m = self.momentums[i]
        m *= self.momentum
        m -= g * lr  # Keras keeps lr inside m: m = μ·m - lr·g
        if self.nesterov:
            p += m * self.momentum - g * lr
        else:
            p += m

    def slots(self):
        return self.momentums


class RMSprop(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def build(self, params):
        self.velocities = [np.zeros_like(p) for p in params]
        self.momentums = [np.zeros_like(p) for p in params] if self.momentum > 0 else []
        self.average_gradients = [np.zeros_like(p) for p in params] if self.centered else []
        self.scratch = [np.empty_like(p) for p in params]

    def update(self, i, p, g, lr):
        v, s = self.velocities[i], self.scratch[i]
        v *= self.rho
        self.square(i, g, out=s)
        s *= 1 - self.rho
        v += s
        if self.centered:
            a = self.average_gradients[i]
            a *= self.rho
            a += (1 - self.rho) * g
            np.subtract(v, np.square(a), out=s)
            s += self.epsilon
        else:
            np.add(v, self.epsilon, out=s)
        np.sqrt(s, out=s)  # ε inside the square root, unlike torch
        np.divide(np.multiply(g, lr), s, out=s)  # the increment lr·g/√(v+ε)
        if self.momentums:
            m = self.momentums[i]
            m *= self.momentum
            m += s
            p -= m
        else:
            p -= s

    def slots(self):
        return self.velocities + self.momentums + self.average_gradients


class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.scratch = [np.empty_like(p) for p in params]

    def update(self, i, p, g, lr):
        m, v, s = self.m[i], self.v[i], self.scratch[i]
        f = p.dtype.type  # Keras computes the step's scalars in the weight's dtype: 1 - β2^t
        t = f(self.iterations + 1)  # loses digits in float32, and Keras's numbers include that
        alpha = lr * np.sqrt(1 - f(self.beta_2) ** t) / (1 - f(self.beta_1) ** t)
        np.subtract(g, m, out=s)
        s *= 1 - self.beta_1
        m += s
        self.square(i, g, out=s)
        s -= v
        s *= 1 - self.beta_2
        v += s
        np.sqrt(v, out=s)
        s += self.epsilon  # ε on the uncorrected √v ("epsilon hat")
        np.divide(m * alpha, s, out=s)
        p -= s

    def slots(self):
        return [a for pair in zip(self.m, self.v) for a in pair]  # Keras interleaves them


class AdamW(Adam):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.004,
                 **clipping):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, **clipping)


class Adagrad(Optimizer):
    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def build(self, params):
        self.accumulators = [np.full_like(p, self.initial_accumulator_value) for p in params]

    def update(self, i, p, g, lr):
        acc = self.accumulators[i]
        acc += self.square(i, g)
        p -= np.multiply(g, lr) / np.sqrt(acc + self.epsilon)

    def slots(self):
        return self.accumulators


class Nadam(Optimizer):
    """Adam with Nesterov momentum and Keras's momentum schedule u_t = β1·(1 - ½·0.96^t); the
    product Π u_1..u_t is an optimizer variable (`u_product`, a 0-d array of the weights' dtype)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.u_product = np.ones((), params[0].dtype if params else np.float32)

    def begin(self, params):
        f = self.u_product.dtype.type  # Keras's scalars are in the weights' dtype
        t, self.b1, self.b2 = f(self.iterations + 1), f(self.beta_1), f(self.beta_2)
        self.u_t = self.b1 * (1 - 0.5 * f(0.96) ** t)
        self.u_next = self.b1 * (1 - 0.5 * f(0.96) ** (t + 1))
        self.u_product[...] = self.u_product * self.b1 * (1 - 0.5 * f(0.96) ** t)
        self.beta_2_power = self.b2 ** t

    def update(self, i, p, g, lr):
        m, v = self.m[i], self.v[i]
        m += (g - m) * (1 - self.b1)
        v += (self.square(i, g) - v) * (1 - self.b2)
        u_product = self.u_product[()]
        m_hat = m * self.u_next / (1 - u_product * self.u_next) + g * (1 - self.u_t) / (1 - u_product)
        v_hat = v / (1 - self.beta_2_power)
        p -= m_hat * lr / (np.sqrt(v_hat) + self.epsilon)

    def slots(self):
        return [a for pair in zip(self.m, self.v) for a in pair] + [self.u_product]


class Adadelta(Optimizer):
    """Keras's Adadelta (keras/src/optimizers/adadelta.py): a = ρ·a + (1 - ρ)·g²;
    Δ = -(√(d + ε)·g) / √(a + ε); d = ρ·d + (1 - ρ)·Δ²; w += lr·Δ. A sparse gradient's Δ is
    sparse too: Δ² is summed over its parts."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.rho, self.epsilon = rho, epsilon

    def build(self, params):
        self.accumulated_grads = [np.zeros_like(p) for p in params]
        self.accumulated_deltas = [np.zeros_like(p) for p in params]

    def update(self, i, p, g, lr):
        a, d = self.accumulated_grads[i], self.accumulated_deltas[i]
        a[...] = self.rho * a + (1 - self.rho) * self.square(i, g)
        rms_d, rms_a = np.sqrt(d + self.epsilon), np.sqrt(a + self.epsilon)
        delta = -(rms_d * g) / rms_a
        if self.parts[i] is None:
            delta_sq = np.square(delta)
        else:
            cells, values = self.parts[i]
            delta_sq = self.sparse_sum(i, np.square(rms_d.reshape(-1)[cells] * values / rms_a.reshape(-1)[cells]), g)
        d[...] = self.rho * d + (1 - self.rho) * delta_sq
        p += lr * delta

    def slots(self):
        return [a for pair in zip(self.accumulated_grads, self.accumulated_deltas) for a in pair]


class Adamax(Optimizer):
    """Keras's Adamax (keras/src/optimizers/adamax.py): m += (g - m)·(1 - β1);
    u = max(β2·u, |g|); w -= lr·m / ((1 - β1^t)·(u + ε)), β1^t in the weights' dtype. A sparse
    gradient's |g| is Σ |part| per element (Keras's maximum densifies the absolute parts)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, params):
        self.m = [np.zeros_like(p) for p in params]
        self.u = [np.zeros_like(p) for p in params]

    def update(self, i, p, g, lr):
        m, u = self.m[i], self.u[i]
        f = p.dtype.type
        beta_1_power = f(self.beta_1) ** f(self.iterations + 1)
        m += (g - m) * (1 - self.beta_1)
        magnitude = np.abs(g) if self.parts[i] is None else self.sparse_sum(i, np.abs(self.parts[i][1]), g)
        np.maximum(self.beta_2 * u, magnitude, out=u)
        p -= (lr * m) / ((1 - beta_1_power) * (u + self.epsilon))

    def slots(self):
        return [a for pair in zip(self.m, self.u) for a in pair]


class Lion(Optimizer):
    """Keras's Lion (keras/src/optimizers/lion.py): w -= lr·sign(β1·m + (1 - β1)·g), then
    m = β2·m + (1 - β2)·g, β1 and β2 in the weights' dtype."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, **clipping):
        super().__init__(learning_rate, weight_decay, **clipping)
        self.beta_1, self.beta_2 = beta_1, beta_2

    def build(self, params):
        self.momentums = [np.zeros_like(p) for p in params]

    def update(self, i, p, g, lr):
        m = self.momentums[i]
        f = p.dtype.type
        b1, b2 = f(self.beta_1), f(self.beta_2)
        p -= lr * np.sign(m * b1 + g * (1 - b1))
        m[...] = m * b2 + g * (1 - b2)

    def slots(self):
        return self.momentums


# ---------------------------------------------------------------------------------------
# A whole model: Keras's training step, the optimizer aside.


class Network:
    """Layers with their loss. With from_logits, the loss reads the values before the output
    activation (Keras's TensorFlow rule), which still runs for the metrics. penalties are
    (layer position, l1, l2) of each layer whose kernel is regularized (its first weight, or
    the weights its `regularized` names): l1·Σ|w| + l2·Σw², from the current
    weights, added to the batch loss unscaled. A layer with `masked` (a global average over
    embedding's mask) reads the model's input, the ids, which each pass hands it (`feed`)."""

    def __init__(self, layers, loss=None, from_logits=False, penalties=()):
        self.layers, self.loss = layers, loss
        self.id_readers = [layer for layer in layers if getattr(layer, "masked", False)]
        self.body = layers[:-1] if from_logits else layers
        self.head = layers[-1] if from_logits else None
        # A layer's penalized kernels: its first weight, or those it names (Bidirectional's two)
        self.penalties = [(layers[i].params[j], layers[i].grads[j], l1, l2) for i, l1, l2 in penalties
                          for j in getattr(layers[i], "regularized", (0,))]
        for i, _, _ in penalties:  # a penalty's gradient is dense: so is the sum (Embedding.parts)
            if hasattr(layers[i], "parts"):
                layers[i].sparse = False
        self.params = [p for layer in layers for p in layer.params]
        self.grads = [g for layer in layers for g in layer.grads]
        with_params = [i for i, layer in enumerate(self.body) if layer.params]
        self.first = with_params[0] if with_params else len(self.body)  # backward stops here

    def feed(self, x):
        """Hand the model's input to the layers that read its ids (the mask is ids != 0)."""
        for layer in self.id_readers:
            layer.ids = x

    def forward(self, x, training=False):
        self.feed(x)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def penalty(self):
        total = 0
        for kernel, _, l1, l2 in self.penalties:
            if l1:
                total = total + l1 * np.abs(kernel).sum()
            if l2:
                total = total + l2 * np.vdot(kernel, kernel)
        return total

    def evaluate(self, x, y, training=False):
        """(batch loss with penalties, outputs, d data loss / d the loss's input)."""
        self.feed(x)
        z = x
        for layer in self.body:
            z = layer.forward(z, training)
        outputs = z if self.head is None else self.head.forward(z)
        loss, dz = self.loss(y, z)
        return loss + self.penalty(), outputs, dz

    def gradients(self, x, y):
        """A training-mode forward and backward: (loss, outputs); gradients go to self.grads.
        The layer before the first one with weights never runs backward."""
        loss, outputs, dy = self.evaluate(x, y, training=True)
        for i in range(len(self.body) - 1, self.first - 1, -1):
            dy = self.body[i].backward(dy, need_dx=i > self.first)
        self.penalty_gradients()
        return loss, outputs

    def penalty_gradients(self):
        """Each regularized kernel's penalty gradient, added to its loss gradient."""
        for kernel, grad, l1, l2 in self.penalties:
            if l1:
                grad += l1 * np.sign(kernel)
            if l2:
                grad += (2 * l2) * kernel

    def apply(self, optimizer):
        """The step's updates, once its loss and gradients are known to be finite."""
        for layer in self.layers:
            layer.update_moving()
        parts = [part for layer in self.layers for part in getattr(layer, "parts", [None] * len(layer.params))]
        optimizer.step(self.params, self.grads, parts)


class Graph(Network):
    """Layers wired as a graph (a functional model): sources[k] are the positions of the
    layers that layer k reads, -1 the model's input, every source before its reader; a
    merge (`merges`) reads the list. The forward pass runs in order, the backward pass in
    reverse: the gradients of an output that several layers read are summed, and a layer
    from which no weight can be reached is never run backward."""

    def __init__(self, layers, loss=None, from_logits=False, penalties=(), sources=()):
        super().__init__(layers, loss, from_logits, penalties)
        self.sources = sources
        self.merging = [getattr(layer, "merges", False) for layer in layers]
        self.reach = []  # whether a weight lies at or behind layer k
        for layer, reads in zip(layers, sources, strict=True):
            self.reach.append(bool(layer.params) or any(self.reach[s] for s in reads if s >= 0))
        # The loss reads the last layer's output, or with from_logits the head's input.
        self.loss_input = sources[-1][0] if from_logits else len(layers) - 1

    def run(self, x, stop, training=False):
        """Every output of layers[:stop], by position; the list's extra last slot holds the
        input, so position -1 reads it."""
        self.feed(x)
        values = [None] * len(self.layers) + [x]
        for k in range(stop):
            reads = self.sources[k]
            z = [values[s] for s in reads] if self.merging[k] else values[reads[0]]
            values[k] = self.layers[k].forward(z, training)
        return values

    def forward(self, x, training=False):
        return self.run(x, len(self.layers), training)[len(self.layers) - 1]

    def evaluate(self, x, y, training=False):
        z = self.run(x, len(self.body), training)[self.loss_input]
        outputs = z if self.head is None else self.head.forward(z)
        loss, dz = self.loss(y, z)
        return loss + self.penalty(), outputs, dz

    def gradients(self, x, y):
        loss, outputs, dz = self.evaluate(x, y, training=True)
        d = [None] * len(self.layers) + [None]  # the gradient of each output, as the values are kept
        d[self.loss_input] = dz
        for k in range(len(self.body) - 1, -1, -1):
            dy, d[k] = d[k], None
            if dy is None or not self.reach[k]:
                continue
            reads = self.sources[k]
            need = [s >= 0 and self.reach[s] for s in reads]
            dx = self.layers[k].backward(dy, need_dx=any(need))
            if not any(need):
                continue
            for s, g, needed in zip(reads, dx if self.merging[k] else [dx], need):
                if needed:
                    d[s] = g if d[s] is None else d[s] + g  # fan-out: the readers' gradients add up
        self.penalty_gradients()
        return loss, outputs
