"""Keras's semantics in plain PyTorch: the pieces where torch's own defaults differ.

Everything here imports only torch and math, and every function or class stands on its
own: the live backend imports them, and `modelspec compile --backend torch` copies the
source of the ones a spec needs into the generated module, so both run the same code.
Each piece names the Keras behaviour it reproduces, as Keras's own code has it:
keras/src/layers/normalization/batch_normalization.py, keras/src/optimizers/<name>.py,
keras/src/losses/losses.py (with the TensorFlow backend's cross-entropies from logits in
keras/src/backend/tensorflow/nn.py) and keras/src/initializers/random_initializers.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------
# Activations


def selu(x):
    """Keras's selu: torch's F.selu, with TensorFlow's gradient at exactly 0, the linear
    side's scale (1.0507) where torch takes the exponential side's scale * alpha (1.7581).
    A layer with a zeros kernel and no bias feeds it nothing but zeros."""
    return torch.where(x == 0, 1.0507009873554805 * x, F.selu(x))


def keras_maximum(a, b):
    """Keras's Maximum of two tensors: on ties the gradient goes whole to the first, as
    TensorFlow's Maximum gradient (math_grad.py: x where x >= y) gives it; torch.maximum
    splits it 0.5/0.5."""
    return torch.where(a >= b, a, b)


def keras_minimum(a, b):
    """Keras's Minimum of two tensors: on ties the whole gradient goes to the first, as
    TensorFlow's Minimum gradient (x where x <= y) gives it."""
    return torch.where(a <= b, a, b)


# ---------------------------------------------------------------------------------------
# Layers


class BatchNorm(nn.Module):
    """Keras's BatchNormalization over one axis (the last by default, 1 for NCHW images).

    Differs from torch's BatchNorm: `momentum` is the share of the moving statistics kept
    (0.99 in Keras is 0.01 in torch), epsilon defaults to 1e-3, and the moving variance
    takes the biased batch variance (torch's takes the unbiased one).
    """

    def __init__(self, channels, momentum=0.99, epsilon=1e-3, axis=-1):
        super().__init__()
        self.momentum, self.epsilon, self.axis = momentum, epsilon, axis
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("moving_mean", torch.zeros(channels))
        self.register_buffer("moving_variance", torch.ones(channels))

    @torch.no_grad()
    def reset_parameters(self):
        self.gamma.fill_(1.0)
        self.beta.zero_()
        self.moving_mean.zero_()
        self.moving_variance.fill_(1.0)

    def statistics(self, x, others):
        """The batch's biased variance and mean over the axes `others`."""
        return torch.var_mean(x, dim=others, correction=0)

    def forward(self, x):
        axis = self.axis % x.dim()
        if self.training:
            others = [d for d in range(x.dim()) if d != axis]
            variance, mean = self.statistics(x, others)
            with torch.no_grad():
                self.moving_mean.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
                self.moving_variance.mul_(self.momentum).add_(variance, alpha=1 - self.momentum)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        shape = [-1 if d == axis else 1 for d in range(x.dim())]
        scale = torch.rsqrt(variance + self.epsilon) * self.gamma  # as tf.nn.batch_normalization
        return x * scale.view(shape) + (self.beta - mean * scale).view(shape)


class Normalization(nn.Module):
    """Keras's Normalization(axis=-1) on one axis (1 for NCHW images): (x - mean) /
    max(sqrt(variance), 1e-7), 1e-7 being keras.backend.epsilon(). Its buffers are Keras's
    weights: mean (zeros), variance (ones) and count, a scalar Keras keeps for old saved
    models and never reads (keras/src/layers/preprocessing/normalization.py)."""

    def __init__(self, channels, axis=-1):
        super().__init__()
        self.axis = axis
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("count", torch.zeros(()))

    @torch.no_grad()
    def reset_parameters(self):
        self.mean.zero_()
        self.variance.fill_(1.0)
        self.count.zero_()

    def forward(self, x):
        shape = [-1 if d == self.axis % x.dim() else 1 for d in range(x.dim())]
        scale = torch.clamp_min(torch.sqrt(self.variance), 1e-7)
        return (x - self.mean.view(shape)) / scale.view(shape)


class PReLU(nn.Module):
    """Keras's PReLU on channels-last inputs: relu(x) - alpha * relu(-x), one alpha per input
    unit (keras/src/layers/activations/prelu.py; torch's PReLU shares alpha across positions)."""

    def __init__(self, shape):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(shape))

    @torch.no_grad()
    def reset_parameters(self):
        self.alpha.zero_()

    def forward(self, x):
        return F.relu(x) - self.alpha * F.relu(-x)


def avg_pool2d_same(x, kernel_size, stride, pads):
    """Keras's AveragePooling2D(padding='same') on NCHW: the padding cells are left out of
    each average (torch's count_include_pad counts them, and cannot pad asymmetrically)."""
    ones = torch.ones_like(x[:1, :1])
    sums = F.avg_pool2d(F.pad(x, pads), kernel_size, stride, divisor_override=1)
    counts = F.avg_pool2d(F.pad(ones, pads), kernel_size, stride, divisor_override=1)
    return sums / counts


def avg_pool1d_same(x, kernel_size, stride, pads):
    """Keras's AveragePooling1D(padding='same') on (batch, channels, steps): the padding cells
    (the odd one after) are left out of each average, the divisor being the number of real
    steps in the window (torch's avg_pool1d pads both sides alike and has no divisor_override)."""
    ones = torch.ones_like(x[:1, :1])
    sums = F.avg_pool1d(F.pad(x, pads), kernel_size, stride)
    counts = F.avg_pool1d(F.pad(ones, pads), kernel_size, stride)
    return sums / counts


def masked_mean(x, ids, dim=1):
    """Keras's GlobalAveragePooling1D with embedding's mask (the ids that are not 0): the mean
    over the unmasked steps, sum(mask * x) / sum(mask) (keras/src/layers/pooling/
    global_average_pooling1d.py); a row of masked steps only is 0 / 0, NaN, as in Keras.
    `dim` is the steps axis: 1 for (batch, steps, channels), 2 for (batch, channels, steps)."""
    mask = (ids != 0).to(x.dtype)
    mask = mask.unsqueeze(-1) if dim == 1 else mask.unsqueeze(1)
    return (x * mask).sum(dim) / mask.sum(dim)


def reorder_gates(value, order):
    """The blocks of equal width along `value`'s last axis in `order` (block j of the result is
    block order[j] of `value`): Keras's GRU gates z, r, h are torch's r, z, n, order (1, 0, 2)."""
    blocks = value.chunk(len(order), -1)
    return torch.cat([blocks[i] for i in order], -1)


# ---------------------------------------------------------------------------------------
# Recurrent layers and attention

def keras_activation(name, x):
    """Keras's activation `name` of x (the recurrent cells take theirs by name; softmax over
    the last axis, leaky_relu's slope 0.2 as keras.activations.leaky_relu's)."""
    if name == "linear":
        return x
    if name == "softmax":
        return torch.softmax(x, -1)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.2)
    return {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": F.elu,
            "selu": selu, "gelu": F.gelu, "swish": F.silu, "softplus": F.softplus,
            "relu6": F.relu6}[name](x)


class Recurrent(nn.Module):
    """Keras's LSTM, GRU or SimpleRNN (`cell`: 'lstm', 'gru', 'simple_rnn'; keras/src/layers/rnn/
    lstm.py, gru.py, simple_rnn.py over rnn.py), or with `bidirectional` Keras's Bidirectional of
    it (keras/src/layers/rnn/bidirectional.py): the forward layer as configured, a copy with
    go_backwards flipped, the backward outputs flipped back into time order, merged.

    Weights in torch's layout: weight_ih (gates * units, in) is Keras's kernel transposed,
    weight_hh (gates * units, units) its recurrent kernel transposed, GRU's gate blocks in
    torch's order r, z, n (Keras's z, r, h); bias as Keras's, (2, 3 * units) for GRU with
    reset_after (the input bias, then the recurrent one). The backward layer's are the
    `_reverse` ones. Keras has one bias where torch's kernels add two: `zero_bias` stands for
    the second, a constant 0 that no optimizer sees (a trained copy would double the update).

    forward(x, ids=None): x (batch, steps, in); `ids`, the model's token ids, give embedding's
    mask (ids != 0). Without a mask, where torch's fused kernels compute Keras's function (the
    ones nn.LSTM, nn.GRU and nn.RNN call: default activations, GRU with reset_after) they run
    on x, or on x.flip(1) for go_backwards, whose outputs Keras leaves in that reversed order.
    Otherwise the step loop of keras/src/backend/tensorflow/rnn.py runs: a masked step keeps
    the state and repeats the previous output (Bidirectional with return_sequences outputs 0
    there: zero_output_for_mask)."""

    def __init__(self, cell, input_size, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, reset_after=True, return_sequences=False, go_backwards=False,
                 bidirectional=False, merge_mode="concat"):
        super().__init__()
        self.cell, self.units, self.use_bias, self.reset_after = cell, units, use_bias, reset_after
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self.return_sequences, self.go_backwards = return_sequences, go_backwards
        self.bidirectional, self.merge_mode = bidirectional, merge_mode
        width = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell] * units
        bias = (2, width) if cell == "gru" and reset_after else (width,)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            setattr(self, "weight_ih" + suffix, nn.Parameter(torch.zeros(width, input_size)))
            setattr(self, "weight_hh" + suffix, nn.Parameter(torch.zeros(width, units)))
            setattr(self, "bias" + suffix, nn.Parameter(torch.zeros(bias)) if use_bias else None)
        self.register_buffer("zero_bias", torch.zeros(width), persistent=False)
        if cell == "simple_rnn":
            self.fused = {"tanh": torch.rnn_tanh, "relu": torch.rnn_relu}.get(activation)
        elif (activation, recurrent_activation) == ("tanh", "sigmoid") and (
                cell == "lstm" or reset_after):
            self.fused = torch.lstm if cell == "lstm" else torch.gru
        else:
            self.fused = None

    def weights(self, suffix):
        """One direction's weights as torch's kernels take them: w_ih, w_hh[, b_ih, b_hh]."""
        names = ("weight_ih", "weight_hh", "bias")
        w_ih, w_hh, bias = (getattr(self, name + suffix) for name in names)
        if bias is None:
            return [w_ih, w_hh]
        if bias.dim() == 2:  # GRU's reset_after: the input bias, the recurrent bias
            return [w_ih, w_hh, bias[0], bias[1]]
        return [w_ih, w_hh, bias, self.zero_bias]

    def run_fused(self, x, suffixes):
        """torch's kernel over x with the weights of `suffixes` ('' forward, '_reverse' backward;
        both: torch's bidirectional kernel): the outputs (batch, steps, directions * units), and
        the last state of each direction."""
        h0 = x.new_zeros(len(suffixes), x.shape[0], self.units)
        params = [w for suffix in suffixes for w in self.weights(suffix)]
        state = (h0, h0) if self.cell == "lstm" else h0
        # (input, state, weights, has_biases, layers, dropout, train, bidirectional, batch_first)
        out = self.fused(x, state, params, self.use_bias, 1, 0.0, self.training, len(suffixes) == 2,
                         True)
        return out[0], out[1]

    def run_loop(self, x, mask, suffix, backwards, zero_output):
        """The step loop over one direction: every step's output (in the order processed) and
        the last one. The input's product with the kernel runs once, over all steps, first."""
        w_ih, w_hh, *biases = self.weights(suffix)
        b_in = biases[0] if biases else None
        # GRU's recurrent bias, with reset_after (otherwise zero_bias, which the loop leaves out)
        b_hh = biases[1] if biases and self.cell == "gru" and self.reset_after else None

        def act(v):
            return keras_activation(self.activation, v)

        def rec(v):
            return keras_activation(self.recurrent_activation, v)

        u = self.units
        xw = F.linear(x, w_ih, b_in)
        h = x.new_zeros(x.shape[0], u)
        c = h
        outputs = []
        for t in range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1]):
            z = xw[:, t]
            if self.cell == "lstm":  # torch's blocks i, f, g, o are Keras's i, f, c, o
                z = z + F.linear(h, w_hh)
                c_new = rec(z[:, u:2 * u]) * c + rec(z[:, :u]) * act(z[:, 2 * u:3 * u])
                h_new = rec(z[:, 3 * u:]) * act(c_new)
            elif self.cell == "gru":  # blocks r, z, n
                if self.reset_after:
                    inner = F.linear(h, w_hh, b_hh)
                    r = rec(z[:, :u] + inner[:, :u])
                    update = rec(z[:, u:2 * u] + inner[:, u:2 * u])
                    n = act(z[:, 2 * u:] + r * inner[:, 2 * u:])
                else:
                    inner = F.linear(h, w_hh[:2 * u])
                    r = rec(z[:, :u] + inner[:, :u])
                    update = rec(z[:, u:2 * u] + inner[:, u:])
                    n = act(z[:, 2 * u:] + F.linear(r * h, w_hh[2 * u:]))
                h_new = update * h + (1 - update) * n
            else:
                h_new = act(z + F.linear(h, w_hh))
            if mask is None:
                h, c = h_new, (c_new if self.cell == "lstm" else None)
                outputs.append(h)
                continue
            m = mask[:, t, None]
            h = torch.where(m, h_new, h)
            if self.cell == "lstm":
                c = torch.where(m, c_new, c)
            outputs.append(torch.where(m, h_new, 0.0) if zero_output else h)
        return torch.stack(outputs, 1), h

    def forward(self, x, ids=None):
        mask = None if ids is None else ids != 0
        fused = self.fused is not None and mask is None
        if self.bidirectional and fused and not self.go_backwards:
            out, last = self.run_fused(x, ("", "_reverse"))
            if self.return_sequences:
                if self.merge_mode == "concat":
                    return out
                forward, backward = out[..., :self.units], out[..., self.units:]
            else:
                forward, backward = last[0], last[1]
        else:
            directions = [("", self.go_backwards)]
            if self.bidirectional:
                directions.append(("_reverse", not self.go_backwards))
            results = []
            for suffix, backwards in directions:
                if fused:
                    out, last = self.run_fused(x.flip(1) if backwards else x, (suffix,))
                    results.append(out if self.return_sequences else last[0])
                else:
                    zero = self.bidirectional and self.return_sequences
                    out, last = self.run_loop(x, mask, suffix, backwards, zero)
                    results.append(out if self.return_sequences else last)
            if not self.bidirectional:
                return results[0]
            forward, backward = results
            if self.return_sequences:
                backward = backward.flip(1)
        if self.merge_mode == "concat":
            return torch.cat([forward, backward], -1)
        if self.merge_mode == "sum":
            return forward + backward
        if self.merge_mode == "ave":
            return (forward + backward) / 2
        return forward * backward

class MultiHeadAttention(nn.Module):
    """Keras's MultiHeadAttention as self-attention, mha(x, x) (keras/src/layers/attention/
    multi_head_attention.py), its weights in Keras's layouts: query/key/value kernels (dim,
    heads, key or value dim) and biases (heads, key or value dim), the output kernel (heads,
    value dim, dim) and bias (dim,).

    forward(x, ids=None): x (batch, steps, dim); `ids`, the model's token ids, give embedding's
    mask (ids != 0): a query step attends to the unmasked key steps only (q_mask & k_mask).
    Keras takes one of two paths, which differ on a masked query row:
    - dropout 0: ops.dot_product_attention (keras/src/backend/tensorflow/nn.py): the logits
      q·k scaled by 1/sqrt(key_dim), masked ones replaced by -0.7 * 3.38953e38, softmax; a
      row with every logit masked attends uniformly to every step;
    - dropout > 0: the query scaled first, masked logits replaced by -1e9, softmax, then the
      masked probabilities set to 0 (keras/src/layers/activations/softmax.py): such a row
      attends to nothing. The probabilities then go through an inverted dropout in training,
      its masks drawn from `generator` (None: torch's global one)."""

    def __init__(self, dim, num_heads, key_dim, value_dim, dropout=0.0, use_bias=True):
        super().__init__()
        self.scale = 1.0 / math.sqrt(float(key_dim))
        self.rate, self.use_bias, self.generator = dropout, use_bias, None
        for name, kernel, bias in (("query", (dim, num_heads, key_dim), (num_heads, key_dim)),
                                   ("key", (dim, num_heads, key_dim), (num_heads, key_dim)),
                                   ("value", (dim, num_heads, value_dim), (num_heads, value_dim)),
                                   ("output", (num_heads, value_dim, dim), (dim,))):
            setattr(self, name + "_kernel", nn.Parameter(torch.zeros(kernel)))
            setattr(self, name + "_bias", nn.Parameter(torch.zeros(bias)) if use_bias else None)

    def random(self, shape, device):
        """Uniform draws for the dropout mask."""
        return torch.rand(shape, generator=self.generator, device=device)

    def project(self, x, name):
        """EinsumDense 'abc,cde->abde' (a bias of its last two axes)."""
        y = torch.einsum("btd,dhk->bthk", x, getattr(self, name + "_kernel"))
        return y + getattr(self, name + "_bias") if self.use_bias else y

    def forward(self, x, ids=None):
        query, key, value = (self.project(x, name) for name in ("query", "key", "value"))
        attend = None
        if ids is not None:
            mask = ids != 0
            attend = (mask[:, :, None] & mask[:, None, :])[:, None]  # (batch, 1, query, key)
        if self.rate > 0:
            scores = torch.einsum("bshk,bthk->bhts", key, query * self.scale)
            if attend is not None:
                scores = torch.where(attend, scores, -1e9)
            probabilities = torch.softmax(scores, -1)
            if attend is not None:
                probabilities = torch.where(attend, probabilities, 0.0)
            if self.training:
                if self.rate >= 1:
                    probabilities = torch.zeros_like(probabilities)
                else:
                    keep = self.random(probabilities.shape, x.device) >= self.rate
                    probabilities = probabilities * keep / (1 - self.rate)
        else:
            scores = torch.einsum("bthk,bshk->bhts", query, key) * self.scale
            if attend is not None:
                scores = torch.where(attend, scores, -0.7 * 3.38953e38)
            probabilities = torch.softmax(scores, -1)
        heads = torch.einsum("bhts,bshv->bthv", probabilities, value)
        y = torch.einsum("bthv,hvd->btd", heads, self.output_kernel)
        return y + self.output_bias if self.use_bias else y


def truncated_normal_(tensor, mean=0.0, stddev=0.05):
    """Keras's TruncatedNormal: values beyond two stddevs are drawn again. (torch's
    trunc_normal_ takes absolute bounds, which default to -2 and 2.)"""
    return nn.init.trunc_normal_(tensor, mean, stddev, mean - 2 * stddev, mean + 2 * stddev)


def variance_scaling_uniform_(tensor, scale, fan):
    """Keras's glorot_uniform, he_uniform and lecun_uniform: U(-limit, limit), limit =
    sqrt(3 * scale / fan), with Keras's fan (torch's xavier_uniform_ and kaiming_uniform_ refuse
    a vector and take another tensor's fans as a convolution's)."""
    limit = math.sqrt(3 * scale / max(1.0, fan))
    return nn.init.uniform_(tensor, -limit, limit)


def variance_scaling_normal_(tensor, scale, fan):
    """Keras's he_normal, glorot_normal and lecun_normal: a normal truncated at two stddevs and
    widened so that the result's std is sqrt(scale / fan). (torch's kaiming_normal_ and
    xavier_normal_ are not truncated.)"""
    stddev = math.sqrt(scale / max(1.0, fan)) / 0.87962566103423978  # the std of N(0, 1) cut at ±2
    return truncated_normal_(tensor, 0.0, stddev)


# ---------------------------------------------------------------------------------------
# Losses: Keras's formulas, averaged over the batch ("sum_over_batch_size")

EPSILON = 1e-7  # keras.backend.epsilon(): where probabilities are clipped


def softmax_cross_entropy(logits, y):
    """Categorical cross-entropy of a softmax output, computed from its logits, unclipped:
    what Keras's TensorFlow backend does for `softmax` + categorical_crossentropy."""
    if logits.dim() > 2:  # torch wants the classes on axis 1
        logits, y = logits.movedim(-1, 1), y.movedim(-1, 1)
    return F.cross_entropy(logits, y)


def sparse_softmax_cross_entropy(logits, labels):
    """Sparse categorical cross-entropy of a softmax output, from its logits."""
    if logits.dim() > 2:  # torch wants the classes on axis 1
        logits = logits.movedim(-1, 1)
    return F.cross_entropy(logits, labels)


def sigmoid_binary_crossentropy(logits, y):
    """Binary cross-entropy of a sigmoid output, from its logits, unclipped (TensorFlow backend)."""
    return F.binary_cross_entropy_with_logits(logits, y)


def categorical_crossentropy(probabilities, y):
    """Keras's categorical cross-entropy of probabilities: renormalised, then clipped to
    [1e-7, 1 - 1e-7]."""
    p = probabilities / probabilities.sum(dim=-1, keepdim=True)
    return -(y * p.clamp(EPSILON, 1 - EPSILON).log()).sum(dim=-1).mean()


def sparse_categorical_crossentropy(probabilities, labels):
    """Keras's sparse categorical cross-entropy of probabilities: clipped, then (as TensorFlow's
    sparse_softmax_cross_entropy_with_logits of their log) renormalised."""
    log_p = probabilities.clamp(EPSILON, 1 - EPSILON).log()
    if log_p.dim() > 2:  # torch wants the classes on axis 1
        log_p = log_p.movedim(-1, 1)
    return F.cross_entropy(log_p, labels)


def binary_crossentropy(probabilities, y):
    """Keras's binary cross-entropy of probabilities, clipped to [1e-7, 1 - 1e-7] (torch's
    BCELoss clamps the log at -100 instead)."""
    p = probabilities.clamp(EPSILON, 1 - EPSILON)
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


def smooth_labels(y, label_smoothing, binary=False):
    """Keras's label smoothing (keras/src/losses/losses.py): y * (1 - ls) + ls / classes for the
    categorical cross-entropy, + 0.5 * ls for the binary one. Only the loss sees these labels."""
    if binary:
        return y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    classes = torch.tensor(y.shape[-1], dtype=y.dtype, device=y.device)
    return y * (1.0 - label_smoothing) + label_smoothing / classes


# ---------------------------------------------------------------------------------------
# Optimizers: Keras's update rules (torch's RMSprop, Adam and Nadam put epsilon elsewhere
# or use other schedules; Keras's weight_decay is decoupled on every optimizer)


class KerasOptimizer(torch.optim.Optimizer):
    """What every Keras optimizer shares (keras/src/optimizers/base_optimizer.py, `apply`): the
    learning rate as a variable, one step counter, the gradients clipped (clipnorm,
    global_clipnorm or clipvalue), the decoupled weight decay w -= lr * weight_decay * w, then
    the optimizer's own `update` of each parameter.

    `learning_rate` is a 0-d tensor in the weights' dtype, read by every update: set it (a
    schedule's rate of step `iterations`, read before the step) with `learning_rate.fill_`."""

    uses_step = False  # whether `update` reads t, the 1-based step number

    def __init__(self, params, learning_rate=0.001, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, **hyperparameters):
        super().__init__(params, hyperparameters)
        first = self.param_groups[0]["params"][0]
        self.dtype = first.dtype  # Keras computes step-dependent factors in the weights' dtype
        self.iterations = torch.zeros((), dtype=torch.int64, device=first.device)
        self.learning_rate = torch.tensor(learning_rate, dtype=self.dtype, device=first.device)
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        # param -> what Keras's ops.square gives for its gradient where that differs from
        # grad²: an embedding's gradient is sparse (TensorFlow's IndexedSlices, one row per id
        # read), squared row by row before one id's rows are summed, so Adam's v takes Σ g²
        # (keras/src/backend/tensorflow/sparse.py, elementwise_unary)
        self.squares = {}
        self.absolutes = {}  # and its ops.abs (Adamax's), summed per id in the same way
        # param -> where its gradient is a sparse one's rows already clipped by value and summed
        # (the torch engine's), which clipvalue must not clip again
        self.preclipped = {}
        # param -> the sizes of the Keras variables it holds end to end, when one buffer holds
        # several weights: clipnorm clips each of them by its own norm
        self.sizes, self.counts = {}, {}

    def square(self, param, grad):
        """Keras's ops.square of `param`'s gradient (see `squares`)."""
        sq = self.squares.get(param)
        return grad.square() if sq is None else sq

    def absolute(self, param, grad):
        """Keras's ops.abs of `param`'s gradient (see `absolutes`)."""
        value = self.absolutes.get(param)
        return grad.abs() if value is None else value

    def slot(self, param, name, initial=0.0):
        """A per-parameter variable (momentum, velocity...), created on first use."""
        state = self.state[param]
        if name not in state:
            state[name] = torch.full_like(param, initial)
        return state[name]

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_gradients()
        return loss

    def norms(self, param, grad):
        """The L2 norm of each Keras variable in `param` (one, unless `sizes` says otherwise),
        from Keras's square of its gradient, and the sizes."""
        sizes = self.sizes.get(param, [param.numel()])
        sq = self.square(param, grad).reshape(-1)
        return torch.stack([part.sum() for part in sq.split(sizes)]), sizes

    def spread(self, param, values, sizes):
        """One value per variable of `param` repeated over that variable's elements."""
        if param not in self.counts:  # made once: a captured CUDA graph cannot copy from the host
            self.counts[param] = torch.tensor(sizes, device=param.device)
        spread = values.repeat_interleave(self.counts[param], output_size=param.numel())
        return spread.view_as(param)

    def clip_gradients(self, params):
        """Each gradient as Keras's `_clip_gradients` leaves it: clipnorm scales each variable's
        by clipnorm / max(norm, clipnorm) (tf.clip_by_norm; a zero norm leaves it as it is),
        global_clipnorm all of them by clip * min(1 / global norm, 1 / clip), NaN when that norm
        is not finite (clip_by_global_norm), clipvalue clamps each element."""
        grads = [p.grad for p in params]
        if self.clipnorm and self.clipnorm > 0:
            out = []
            for param, grad in zip(params, grads):
                l2sum, sizes = self.norms(param, grad)
                l2norm = torch.where(l2sum > 0, l2sum.sqrt(), l2sum)
                denominator = l2norm.clamp_min(self.clipnorm)
                if len(sizes) > 1:  # each variable's denominator over its elements
                    denominator = self.spread(param, denominator, sizes)
                out.append(grad * self.clipnorm / denominator)
                if param in self.squares:  # the sparse rows scale alike
                    self.squares[param] = self.squares[param] * (self.clipnorm / denominator) ** 2
                if param in self.absolutes:
                    self.absolutes[param] = self.absolutes[param] * (self.clipnorm / denominator)
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            norm = torch.cat([self.norms(p, g)[0] for p, g in zip(params, grads)]).sum().sqrt()
            scale = self.global_clipnorm * torch.clamp(1.0 / norm, max=1.0 / self.global_clipnorm)
            scale = scale + (norm - norm)
            # the product of a sparse gradient and a dense scale is dense: squared as it is
            self.squares.clear()
            self.absolutes.clear()
            return [g * scale for g in grads]
        if self.clipvalue and self.clipvalue > 0:
            if any(p not in self.preclipped for p in self.squares):
                raise ValueError("clipvalue clips each row of an embedding's sparse gradient "
                                 "before Keras sums them, which is not implemented here: use "
                                 "clipnorm or global_clipnorm, or a penalty on the embedding "
                                 "(then its gradient is dense)")
            out = []
            for param, grad in zip(params, grads):
                clipped = grad.clamp(-self.clipvalue, self.clipvalue)
                done = self.preclipped.get(param)
                if done is not None:  # the sparse rows are clipped and summed already; the rest now
                    clipped = torch.where(done, grad, clipped)
                    for kept, of in ((self.squares, torch.square), (self.absolutes, torch.abs)):
                        if param in kept:
                            kept[param] = torch.where(done, kept[param], of(clipped))
                out.append(clipped)
            return out
        return grads

    @torch.no_grad()
    def apply_gradients(self):
        """The update of every parameter from its .grad (`step` without torch's hooks)."""
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        grads = dict(zip(params, self.clip_gradients(params)))
        lr = self.learning_rate
        self.iterations += 1
        t = self.iterations.to(self.dtype) if self.uses_step else None  # Keras's `iterations + 1`
        for group in self.param_groups:
            for param in group["params"]:
                if param not in grads:
                    continue
                if group["weight_decay"]:
                    param.sub_(param * group["weight_decay"] * lr)
                self.update(param, grads[param], t, group)

    def update(self, param, grad, t, group):
        raise NotImplementedError


def keep_sparse_squares(optimizer, embeddings):
    """Give `optimizer` what Keras's optimizers square for each of `embeddings` (nn.Embedding
    modules without a penalty, whose gradient Keras keeps sparse): each training step's
    gradient rows squared one by one, then summed per id (KerasOptimizer.squares), and their
    absolute values summed alike (KerasOptimizer.absolutes)."""
    def hook(module, inputs, output):
        if output.requires_grad:
            ids = inputs[0].reshape(-1)

            def keep(dy):
                rows = dy.reshape(len(ids), -1)
                zeros = torch.zeros_like(module.weight)
                optimizer.squares[module.weight] = zeros.index_add(0, ids, rows.square())
                optimizer.absolutes[module.weight] = zeros.index_add(0, ids, rows.abs())
            output.register_hook(keep)
    return [module.register_forward_hook(hook) for module in embeddings]


class SGD(KerasOptimizer):
    """Keras's SGD: m = momentum * m - lr * g; w += m (Nesterov: w += momentum * m - lr * g)."""

    def __init__(self, params, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 **clipping):
        super().__init__(params, learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        lr, momentum = self.learning_rate, group["momentum"]
        if momentum == 0:
            param.sub_(grad * lr)
            return
        m = self.slot(param, "momentum")
        m.mul_(momentum).sub_(grad * lr)
        if group["nesterov"]:
            param.add_(m * momentum - grad * lr)
        else:
            param.add_(m)


class RMSprop(KerasOptimizer):
    """Keras's RMSprop: w -= lr * g / sqrt(v + epsilon), epsilon inside the square root
    (torch adds it outside); with momentum, the lr-scaled steps are what accumulates."""

    def __init__(self, params, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, **clipping):
        super().__init__(params, learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
                         centered=centered, weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        rho, momentum = group["rho"], group["momentum"]
        velocity = self.slot(param, "velocity")
        velocity.mul_(rho).add_(self.square(param, grad), alpha=1 - rho)
        if group["centered"]:
            average = self.slot(param, "average_gradient")
            average.mul_(rho).add_(grad, alpha=1 - rho)
            denominator = velocity - average.square() + group["epsilon"]
        else:
            denominator = velocity + group["epsilon"]
        increment = (grad * self.learning_rate).div_(denominator.sqrt_())
        if momentum > 0:
            param.sub_(self.slot(param, "momentum").mul_(momentum).add_(increment))
        else:
            param.sub_(increment)


class Adam(KerasOptimizer):
    """Keras's Adam: epsilon is added to the uncorrected sqrt(v) ("epsilon hat"); torch adds
    it to the bias-corrected one. Keras's AdamW is this with weight_decay=0.004."""

    uses_step = True

    def __init__(self, params, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, **clipping):
        super().__init__(params, learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        beta_1, beta_2 = group["beta_1"], group["beta_2"]
        alpha = self.learning_rate * torch.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        m, v = self.slot(param, "momentum"), self.slot(param, "velocity")
        m.add_((grad - m) * (1 - beta_1))
        v.add_((self.square(param, grad) - v) * (1 - beta_2))
        param.sub_((m * alpha).div_(v.sqrt().add_(group["epsilon"])))


class Nadam(KerasOptimizer):
    """Keras's Nadam: the momentum schedule u_t = beta_1 * (1 - 0.5 * 0.96^t) (torch's NAdam
    uses 0.96^(0.004 t) by default), epsilon outside the square root."""

    uses_step = True

    def __init__(self, params, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, **clipping):
        super().__init__(params, learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         weight_decay=weight_decay, **clipping)
        # the product u_1 ... u_t of the momentum schedule
        self.u_product = torch.ones((), dtype=self.dtype, device=self.iterations.device)

    @torch.no_grad()
    def apply_gradients(self):
        t = (self.iterations + 1).to(self.dtype)
        self.u_product.mul_(self.param_groups[0]["beta_1"] * (1 - 0.5 * 0.96 ** t))
        super().apply_gradients()

    def update(self, param, grad, t, group):
        beta_1, beta_2 = group["beta_1"], group["beta_2"]
        u_t = beta_1 * (1 - 0.5 * 0.96 ** t)
        u_next = beta_1 * (1 - 0.5 * 0.96 ** (t + 1))
        m, v = self.slot(param, "momentum"), self.slot(param, "velocity")
        m.add_((grad - m) * (1 - beta_1))
        v.add_((self.square(param, grad) - v) * (1 - beta_2))
        m_hat = u_next * m / (1 - self.u_product * u_next) + (1 - u_t) * grad / (1 - self.u_product)
        v_hat = v / (1 - beta_2 ** t)
        param.sub_((m_hat * self.learning_rate).div_(v_hat.sqrt_().add_(group["epsilon"])))


class Adagrad(KerasOptimizer):
    """Keras's Adagrad: the accumulator starts at 0.1 and epsilon is inside the square root."""

    def __init__(self, params, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, **clipping):
        super().__init__(params, learning_rate, epsilon=epsilon,
                         initial_accumulator_value=initial_accumulator_value,
                         weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        accumulator = self.slot(param, "accumulator", group["initial_accumulator_value"])
        accumulator.add_(self.square(param, grad))
        param.sub_((grad * self.learning_rate).div_((accumulator + group["epsilon"]).sqrt_()))


class Adadelta(KerasOptimizer):
    """Keras's Adadelta (keras/src/optimizers/adadelta.py): the step is
    -sqrt(delta + epsilon) * g / sqrt(accumulated g² + epsilon), scaled by the learning rate
    (0.001 by default, where the paper and torch take 1)."""

    def __init__(self, params, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
                 **clipping):
        super().__init__(params, learning_rate, rho=rho, epsilon=epsilon, weight_decay=weight_decay,
                         **clipping)

    def update(self, param, grad, t, group):
        rho, epsilon = group["rho"], group["epsilon"]
        accumulated_grad = self.slot(param, "accumulated_grad")
        accumulated_delta = self.slot(param, "accumulated_delta_var")
        accumulated_grad.copy_(rho * accumulated_grad + (1 - rho) * self.square(param, grad))
        rms_delta = (accumulated_delta + epsilon).sqrt()
        rms_grad = (accumulated_grad + epsilon).sqrt()
        delta = -(rms_delta * grad) / rms_grad
        if param in self.squares:  # a sparse gradient's delta is squared row by row, as its rows
            delta_square = (rms_delta / rms_grad).square() * self.squares[param]
        else:
            delta_square = delta.square()
        accumulated_delta.copy_(rho * accumulated_delta + (1 - rho) * delta_square)
        param.add_(self.learning_rate * delta)


class Adamax(KerasOptimizer):
    """Keras's Adamax (keras/src/optimizers/adamax.py): u = max(beta_2 * u, |g|), and
    w -= lr * m / ((1 - beta_1^t) * (u + epsilon))."""

    uses_step = True

    def __init__(self, params, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, **clipping):
        super().__init__(params, learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        beta_1 = group["beta_1"]
        m, u = self.slot(param, "momentum"), self.slot(param, "norm")
        m.add_((grad - m) * (1 - beta_1))
        torch.maximum(group["beta_2"] * u, self.absolute(param, grad), out=u)
        param.sub_((self.learning_rate * m) / ((1 - beta_1 ** t) * (u + group["epsilon"])))


class Lion(KerasOptimizer):
    """Keras's Lion (keras/src/optimizers/lion.py): w -= lr * sign(beta_1 * m + (1 - beta_1) * g),
    then m = beta_2 * m + (1 - beta_2) * g."""

    def __init__(self, params, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None,
                 **clipping):
        super().__init__(params, learning_rate, beta_1=beta_1, beta_2=beta_2,
                         weight_decay=weight_decay, **clipping)

    def update(self, param, grad, t, group):
        beta_1, beta_2 = group["beta_1"], group["beta_2"]
        m = self.slot(param, "momentum")
        param.sub_(self.learning_rate * torch.sign(m * beta_1 + grad * (1.0 - beta_1)))
        m.copy_(m * beta_2 + grad * (1.0 - beta_2))


# ---------------------------------------------------------------------------------------
# Metrics: one value per sample, as Keras's MeanMetricWrapper averages them


def categorical_accuracy(y_pred, y):
    return (y_pred.argmax(dim=-1) == y.argmax(dim=-1)).float()


def sparse_categorical_accuracy(y_pred, labels):
    return (y_pred.argmax(dim=-1) == labels).float()


def binary_accuracy(y_pred, y):
    """Keras's threshold: a prediction above 0.5 is a 1."""
    return ((y_pred > 0.5).float() == y).float().mean(dim=-1)


def mean_squared_error(y_pred, y):
    return (y_pred - y).square().mean(dim=-1)


def mean_absolute_error(y_pred, y):
    return (y_pred - y).abs().mean(dim=-1)


def in_top_k(scores, targets, k):
    """tf.math.in_top_k, which Keras's top-k metrics call: a target is in when fewer than k
    classes score strictly higher (a tie with the k-th is in); never when a score of its
    sample is not finite."""
    target = scores.gather(-1, targets.unsqueeze(-1))
    return ((scores > target).sum(dim=-1) < k) & scores.isfinite().all(dim=-1)


def top_k_categorical_accuracy(y_pred, y, k=5):
    return in_top_k(y_pred, y.argmax(dim=-1), k).float()


def sparse_top_k_categorical_accuracy(y_pred, labels, k=5):
    return in_top_k(y_pred, labels, k).float()


# ---------------------------------------------------------------------------------------
# Learning-rate schedules (keras/src/optimizers/schedules/learning_rate_schedule.py): the rate
# of 0-based optimizer step `step`, in float32 as Keras computes it. Keras reads the rate from
# the step counter before it increments it: the n-th update (n = 1, 2, ...) uses step n - 1.


def _f32(value):
    return torch.tensor(value, dtype=torch.float32)


def exponential_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = _f32(step) / _f32(decay_steps)
    if staircase:
        p = torch.floor(p)
    return (_f32(initial_learning_rate) * torch.pow(_f32(decay_rate), p)).item()


def inverse_time_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = _f32(step) / _f32(decay_steps)
    if staircase:
        p = torch.floor(p)
    return (_f32(initial_learning_rate) / (1 + _f32(decay_rate) * p)).item()


def polynomial_decay(step, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                     cycle=False):
    s, d = _f32(step), _f32(decay_steps)
    if cycle:  # the first multiple of decay_steps at or above the step (decay_steps at step 0)
        d = d * (torch.ceil(s / d) if step > 0 else 1)
    else:
        s = torch.minimum(s, d)
    end = _f32(end_learning_rate)
    return ((_f32(initial_learning_rate) - end) * torch.pow(1 - s / d, _f32(power)) + end).item()


def cosine_decay(step, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None,
                 warmup_steps=0):
    s, d = _f32(step), _f32(decay_steps)
    start = _f32(initial_learning_rate)
    if warmup_target is not None:
        warmup = _f32(warmup_steps)
        s = torch.minimum(s, d + warmup)
        if s < warmup:
            return ((_f32(warmup_target) - start) * (s / warmup) + start).item()
        s, start = s - warmup, _f32(warmup_target)
    else:
        s = torch.minimum(s, d)
    decayed = 0.5 * (1.0 + torch.cos(_f32(math.pi) * (s / d)))
    return (start * ((1 - alpha) * decayed + alpha)).item()


def piecewise_constant_decay(step, boundaries, values):
    """values[i] up to and including boundaries[i]; the last value after the last boundary."""
    return _f32(values[sum(step > b for b in boundaries)]).item()


# ---------------------------------------------------------------------------------------
# Callbacks, for a training loop that calls them at each epoch's end with that epoch's logs
# (loss, metrics, val_*), as Keras's fit does, then `on_train_end` (keras/src/callbacks/).


def is_improvement(current, reference, mode, min_delta):
    """Keras's MonitorCallback test (monitor_callback.py): strictly better than `reference` by
    more than |min_delta| (anything is better than None), compared in float32 as Keras's ops
    compare two Python floats."""
    if reference is None:
        return True
    if mode == "min":
        return bool(_f32(current + abs(min_delta)) < _f32(reference))
    return bool(_f32(current - abs(min_delta)) > _f32(reference))


class EarlyStopping:
    """Keras's EarlyStopping (early_stopping.py). `mode` is 'min' or 'max'. Epochs before
    start_from_epoch are ignored; an epoch that improves on the best resets the patience only
    if it also beats `baseline`; training stops once `patience` epochs in a row have not
    improved (never after the first epoch). With restore_best_weights, the best epoch's
    weights are put back at the end of training, whether it stopped early or not."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="min", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        self.monitor, self.min_delta, self.patience, self.mode = monitor, min_delta, patience, mode
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait, self.best, self.best_weights, self.best_epoch = 0, None, None, 0
        self.stopped_epoch, self.stop_training = 0, False

    def on_epoch_end(self, epoch, logs, model, optimizer):
        current = logs.get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.weights(model), epoch
        self.wait += 1
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.weights(model)
            baseline = self.baseline
            if baseline is None or is_improvement(current, baseline, self.mode, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch, self.stop_training = epoch, True

    def on_train_end(self, model):
        if self.restore_best_weights and self.best_weights is not None:
            model.load_state_dict(self.best_weights)

    @staticmethod
    def weights(model):
        return {name: value.detach().clone() for name, value in model.state_dict().items()}


class ReduceLROnPlateau:
    """Keras's ReduceLROnPlateau (reduce_lr_on_plateau.py) on a KerasOptimizer: each epoch's
    logs gain the rate it used (`learning_rate`); after `patience` epochs without improvement
    (outside the cooldown) the rate becomes max(rate * factor, min_lr), stored in float32, from
    the next epoch on; none is made once the rate is at min_lr."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="min", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        self.monitor, self.factor, self.patience, self.mode = monitor, factor, patience, mode
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def on_epoch_end(self, epoch, logs, model, optimizer):
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            old_lr = float(optimizer.learning_rate)
            if self.wait >= self.patience and old_lr > _f32(self.min_lr).item():
                optimizer.learning_rate.fill_(max(old_lr * self.factor, self.min_lr))
                self.cooldown_counter, self.wait = self.cooldown, 0

    def on_train_end(self, model):
        pass
