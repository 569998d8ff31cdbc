"""Every layer kind and option, every spec in specs/, every optimizer and loss: the same
numbers on every backend (layer_test.py says what is checked).

Expected shapes and parameter counts are hand-computed from Keras's rules: 'valid' gives
floor((n - k) / s) + 1, 'same' gives ceil(n / s); a dense layer has in·units + units
parameters, a conv2d kh·kw·in·filters + filters, a batchnorm 4·channels (2·channels of
them, the moving statistics, not trainable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import modelspec as ms
from layer_test import Standalone, layer_spec, run_layer_test, run_model_test, shared_directory
from modelspec import backends
from modelspec.crosscheck import without_dropout
from modelspec.diagnostics import SpecError


@dataclass(frozen=True)
class Case:
    layer: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    non_trainable: int = 0
    train_mode: str = "compare"
    model: str = "conformance"

    def spec(self) -> ms.Spec:
        return layer_spec(self.layer, self.input_shape, self.model)


def case(layer, input_shape, output_shape, params, *, marks=(), id=None, **options):
    return pytest.param(Case(layer, input_shape, output_shape, params, **options), marks=marks, id=id or layer)


V, IMG = (5,), (5, 5, 2)  # the usual inputs: 5 features; a 5x5 image with 2 channels
SEQ = (6, 3)  # a sequence of 6 steps of 3 features

LAYERS = [
    # dense: every activation, each with another initializer (seeded, with arguments), and
    # biases drawn by the variance-scaling initializers (whose fans, for a vector, are its length)
    case("dense 3", V, (3,), 18),
    case("dense 3 relu glorot_normal(seed=7) bias_init=glorot_uniform", V, (3,), 18),
    case("dense 3 sigmoid he_normal bias_init=he_uniform(seed=2)", V, (3,), 18),
    case("dense 3 tanh he_uniform(seed=11) bias_init=lecun_uniform", V, (3,), 18),
    case("dense 3 softmax lecun_normal(seed=3)", V, (3,), 18),
    case("dense 3 elu lecun_uniform", V, (3,), 18),
    case("dense 3 selu zeros", V, (3,), 18),
    case("dense 3 gelu ones", V, (3,), 18),
    case("dense 3 swish random_normal(mean=0.1, stddev=0.2, seed=4)", V, (3,), 18),
    case("dense 3 softplus random_uniform(minval=-0.2, maxval=0.3)", V, (3,), 18),
    case("dense 3 relu6 truncated_normal(stddev=0.3, seed=5)", V, (3,), 18),
    case("dense 3 leaky_relu orthogonal(gain=2.0, seed=6)", V, (3,), 18),
    # dense: bias and penalties, rank-3 inputs (the kernel applies to the last axis)
    case("dense 3 nobias l1=0.01", V, (3,), 15),
    case("dense 3 l2 bias_init=ones", V, (3,), 18),
    case("dense 3 l1=0.01 l2=0.02 bias_init=random_uniform(minval=-0.1, maxval=0.1, seed=2)", V, (3,), 18),
    case("dense 5 relu l2=0.01", (3, 4), (3, 5), 25),
    case("dense 2 use_bias=false orthogonal", (3, 4), (3, 2), 8),
    # conv2d: valid/same, strides, odd and even kernels ('same' pads 0 before, 1 after when
    # the total is odd), rectangular kernels and strides, activation, bias, penalties
    case("conv2d 3 3x3", IMG, (3, 3, 3), 57),
    case("conv2d 3 3x3 padding=same relu he_uniform(seed=1)", IMG, (5, 5, 3), 57),
    case("conv2d 3 2x2 padding=same tanh l2=0.01", IMG, (5, 5, 3), 27),
    case("conv2d 3 3x3 strides=2 padding=same nobias", (6, 6, 2), (3, 3, 3), 54),
    case("conv2d 3 3x3 strides=2", IMG, (2, 2, 3), 57),
    case("conv2d 4 (3, 2) strides=(2, 1) l1=0.01 l2=0.01", IMG, (2, 4, 4), 52),
    case("conv2d 4 (2, 3) strides=(1, 2) padding=same sigmoid", (5, 6, 2), (5, 3, 4), 52),
    case("conv2d 3 1x1 l1 bias_init=ones", IMG, (5, 5, 3), 9),
    # three input channels into a rectangular 'same' kernel with unequal strides, then
    # flattened: the outputs match only if each kernel index and each flattened position
    # lands where Keras puts it (channels last)
    case("conv2d 2 (3, 2) padding=same strides=(2, 1)", (5, 4, 3), (3, 4, 2), 38),
    case("conv2d 2 1x2 stride=1x2", (4, 3, 1), (4, 1, 2), 6, id="onednn-one-column", marks=pytest.mark.notimpl(
        ["keras"], reason="TensorFlow's oneDNN kernel computes a conv2d of one input channel, strides (1, 2) and "
        "one output column wrongly (a new answer each call): the Keras backend refuses it", raises=SpecError)),
    # pooling: valid/same, default and explicit strides, asymmetric 'same', rectangular
    case("maxpool2d 2x2", IMG, (2, 2, 2), 0),
    case("maxpool2d 2x2 strides=1 padding=same", IMG, (5, 5, 2), 0),
    case("maxpool2d 3x3 strides=2 padding=same", (6, 6, 2), (3, 3, 2), 0),
    case("maxpool2d (2, 3) strides=(1, 2)", (5, 6, 2), (4, 2, 2), 0),
    case("avgpool2d 2x2", IMG, (2, 2, 2), 0),
    case("avgpool2d 2x2 strides=1 padding=same", IMG, (5, 5, 2), 0),
    case("avgpool2d 3x3 strides=2 padding=same", (6, 6, 2), (3, 3, 2), 0),
    case("avgpool2d 3x3 strides=1", IMG, (3, 3, 2), 0),
    case("globalavgpool2d", IMG, (2,), 0),
    case("globalmaxpool2d", IMG, (2,), 0),
    # zero padding: Keras's default 1 on every side, rows x columns, each side its own
    case("zeropadding2d", IMG, (7, 7, 2), 0),
    case("zeropadding2d 1x2", IMG, (7, 9, 2), 0),
    case("zeropadding2d ((0, 1), (2, 0))", IMG, (6, 7, 2), 0),
    # nearest-neighbour upsampling, square and rectangular
    case("upsampling2d", IMG, (10, 10, 2), 0),
    case("upsampling2d 2x3", (3, 2, 2), (6, 6, 2), 0),
    # prelu: one alpha per input unit (an image's alphas are (height, width, channels))
    case("prelu", V, (5,), 5),
    case("prelu", IMG, (5, 5, 2), 50, id="prelu-image"),
    # flatten: after a conv (channels-last order), and of a rank-3 input
    case("flatten", (3, 3, 2), (18,), 0),
    case("flatten", (3, 4), (12,), 0, id="flatten-rank3"),
    # dropout: the identity in inference; masks cannot agree across frameworks, so training
    # is compared at rates 0 and 1 only
    case("dropout 0.5 seed=3", V, (5,), 0, train_mode="shapes"),
    case("dropout 0.3", IMG, (5, 5, 2), 0, train_mode="shapes"),
    case("dropout 0.0", V, (5,), 0),
    case("dropout 1.0", V, (5,), 0,  # the stem gets no gradient, and Keras says so
         marks=pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")),
    # batchnorm: training steps compare the moving statistics too
    case("batchnorm", V, (5,), 20, non_trainable=10),
    case("batchnorm momentum=0.9 epsilon=0.01", V, (5,), 20, non_trainable=10),
    case("batchnorm momentum=0.5 epsilon=1e-5", (4, 4, 3), (4, 4, 3), 12, non_trainable=6),
    case("batchnorm", (3, 4), (3, 4), 16, non_trainable=8, id="batchnorm-rank3"),
    # activation layers (softmax over the channels of an image), leaky_relu's two slopes
    *(case(name, V, (5,), 0) for name in
      ("linear", "relu", "sigmoid", "tanh", "elu", "selu", "gelu", "swish", "softplus", "relu6")),
    case("softmax", (3, 3, 4), (3, 3, 4), 0),
    # Keras's Softmax layer over another axis
    case("softmax axis=1", (3, 4), (3, 4), 0),
    case("softmax axis=-2", (3, 3, 4), (3, 3, 4), 0),
    case("leaky_relu", V, (5,), 0),
    case("leaky_relu 0.1", V, (5,), 0),
    # rescale: Keras's two usual scales (pixels to [0, 1], and to [-1, 1] with an offset),
    # a negative one, on vectors and images
    case("rescale 1/255", V, (5,), 0),
    case("rescale 1/127.5 offset=-1", IMG, (5, 5, 2), 0),
    case("rescale -2 offset=0.25", (3, 4), (3, 4), 0),
    # conv1d: valid/same/causal, odd and even kernels ('same' pads the extra zero after),
    # strides, dilations, activation, bias, penalties; on (steps, features) sequences
    case("conv1d 4 3", SEQ, (4, 4), 40),
    case("conv1d 4 3 padding=same relu he_uniform(seed=1)", SEQ, (6, 4), 40),
    case("conv1d 4 4 padding=same", SEQ, (6, 4), 52),
    case("conv1d 2 3 padding=causal dilation=2 tanh l2=0.01", SEQ, (6, 2), 20),
    case("conv1d 2 2 stride=2 padding=same nobias", SEQ, (3, 2), 12),
    case("conv1d 3 3 strides=2", SEQ, (2, 3), 30),
    case("conv1d 2 2 dilation=2 l1=0.01", SEQ, (4, 2), 14),
    case("conv1d 2 3 stride=3 padding=causal sigmoid", SEQ, (2, 2), 20),
    # 1-D pooling: the default pool of 2, valid/same, strides, the 'same' average's divisor
    case("maxpool1d", SEQ, (3, 3), 0),
    case("maxpool1d 3 stride=2 padding=same", SEQ, (3, 3), 0),
    case("maxpool1d 2 stride=1", SEQ, (5, 3), 0),
    case("avgpool1d", SEQ, (3, 3), 0),
    case("avgpool1d 3 stride=2 padding=same", SEQ, (3, 3), 0),
    case("avgpool1d 4 strides=1 padding=same", SEQ, (6, 3), 0),
    case("avgpool1d 3", SEQ, (2, 3), 0),
    case("globalavgpool1d", SEQ, (3,), 0),
    case("globalmaxpool1d", SEQ, (3,), 0),
    # layernorm: over the last axis of vectors, sequences and images; gamma and beta
    case("layernorm", SEQ, (6, 3), 6),
    case("layernorm epsilon=0.1", V, (5,), 10),
    case("layernorm", IMG, (5, 5, 2), 4, id="layernorm-image"),
    # reshape: row-major, one -1 resolved, an image into rows, anything flat
    case("reshape 3x6", SEQ, (3, 6), 0),
    case("reshape -1x2", SEQ, (9, 2), 0),
    case("reshape 2x-1", IMG, (2, 25), 0),
    case("reshape 50", IMG, (50,), 0),
    case("reshape 5x1", V, (5, 1), 0),
    # recurrent layers on (steps, features): the last output or every step's, go_backwards (the
    # outputs left in the reversed order processed), each option; LSTM 4·(in·U + U·U + U)
    # parameters, GRU 3·(in·U + U·U) + 2·3U (reset_after) or 3U, SimpleRNN in·U + U·U + U
    case("lstm 4", SEQ, (4,), 128),
    case("lstm 4 return_sequences", SEQ, (6, 4), 128),
    case("lstm 4 return_sequences go_backwards", SEQ, (6, 4), 128),
    case("lstm 3 go_backwards nobias", SEQ, (3,), 72),
    case("lstm 3 relu recurrent_activation=tanh unit_forget_bias=false he_uniform(seed=1) "
         "recurrent_init=glorot_uniform(seed=2) bias_init=random_uniform(minval=-0.2, maxval=0.2, seed=3) l2=0.01",
         SEQ, (3,), 84, id="lstm-every-option"),
    case("lstm 3 bias_init=ones l1=0.01", SEQ, (3,), 84),
    case("gru 4", SEQ, (4,), 108),
    case("gru 4 return_sequences", SEQ, (6, 4), 108),
    case("gru 4 reset_after=false", SEQ, (4,), 96),
    case("gru 3 reset_after=false return_sequences go_backwards sigmoid", SEQ, (6, 3), 63),
    case("gru 3 go_backwards recurrent_activation=relu6 recurrent_init=orthogonal(gain=0.5, seed=4) "
         "bias_init=random_normal(stddev=0.3, seed=5) l1=0.01 l2=0.01", SEQ, (3,), 72, id="gru-every-option"),
    case("gru 2 nobias", SEQ, (2,), 30),
    case("simple_rnn 4", SEQ, (4,), 32),
    case("simple_rnn 4 return_sequences go_backwards relu nobias", SEQ, (6, 4), 28),
    case("simple_rnn 3 sigmoid lecun_normal(seed=6) recurrent_init=he_normal(seed=7) bias_init=ones l2", SEQ,
         (3,), 21, id="simple_rnn-every-option"),
    # bidirectional: twice the layer's parameters; every merge mode, with and without sequences
    case("bidirectional lstm 3", SEQ, (6,), 168),
    case("bidirectional lstm 3 return_sequences merge=sum", SEQ, (6, 3), 168),
    case("bidirectional gru 2 return_sequences", SEQ, (6, 4), 84),
    case("bidirectional gru 2 reset_after=false merge=mul", SEQ, (2,), 72),
    case("bidirectional simple_rnn 3 return_sequences merge=ave", SEQ, (6, 3), 42),
    case("bidirectional lstm 2 merge=ave unit_forget_bias=false nobias l2=0.01", SEQ, (2,), 80),
    # self-attention: query and key (D, H, K) + (H, K), value (D, H, V) + (H, V), output
    # (H, V, D) + (D,); with and without bias, value_dim; dropout on the probabilities (masks
    # cannot agree across frameworks: trained as the dropout layers are)
    case("attention heads=2 key_dim=2", SEQ, (6, 3), 63),
    case("attention heads=1 key_dim=3 value_dim=2 nobias", SEQ, (6, 3), 30),
    case("attention heads=2 key_dim=1 value_dim=3 he_normal(seed=8) bias_init=random_uniform(seed=9)", SEQ, (6, 3),
         61, id="attention-initializers"),
    case("attention heads=2 key_dim=2 dropout=0.5 seed=3", SEQ, (6, 3), 63, train_mode="shapes"),
    case("attention heads=1 key_dim=2 dropout=0.2", (4, 5), (4, 5), 51, train_mode="shapes",
         id="attention-dropout-unseeded"),
    # names
    case('dense 3 name="ünï"', V, (3,), 18, id="non-ascii-layer-name", marks=pytest.mark.notimpl(
        ["keras"], reason="TensorFlow's name scopes take letters, digits and . _ - > only: the Keras backend "
        "refuses such a layer name", raises=SpecError)),
    case('dense 3 name="first layer"', V, (3,), 18, model='"a model, with spaces"', id="names-with-spaces",
         marks=pytest.mark.notimpl(["keras"], reason="TensorFlow's name scopes refuse spaces: the Keras backend "
                                   "refuses such a model or layer name", raises=SpecError)),
]


# Every spec in specs/, with dropout rates set to 0 (see above), one training step each
# with SGD (its update is the gradient; the first step of RMSprop or Adam divides each
# gradient by its own magnitude, so float32 noise in one that is nearly 0 becomes a
# full-size difference on every backend, NumPy included: the optimizers are compared on a
# small model below). The output shapes and counts are those the tutorial's specs state in
# their comments or that follow from the rules above; a spec not listed here (the fuzzers'
# regression cases) has its backend's arrays held to the checker's counts.
SPEC_COUNTS = {  # name: (output shape, total params, non-trainable)
    "cnn": ((10,), 320 + 18_496 + 16_010, 0),
    "digits": ((10,), 8_320 + 8_256 + 650, 0),
    "digits_a": ((10,), 4_160 + 2_080 + 528 + 170, 0),
    "digits_b": ((10,), 6_938 + 4 * (64 + 32 + 16), 2 * (64 + 32 + 16)),
    "digits_c": ((10,), 6_938 + 4 * (64 + 32 + 16), 2 * (64 + 32 + 16)),
    "digits_cnn": ((10,), 160 + 64 + 4_640 + 330, 32),
    # lstm 32 on 8 rows of 8: 4·(8·32 + 32·32 + 32); the embedding 17x8, conv1d 3·64·32 + 32, attention
    # 4·32·4·8 + 3·4·8 + 32, two layernorms, the block's dense 32->64->32, the classifier
    "digits_lstm": ((10,), 4 * (8 * 32 + 32 * 32 + 32) + 330, 0),
    "digits_transformer": ((10,), 136 + 6_176 + 4_224 + 2 * 64 + 2_112 + 2_080 + 330, 0),
    "digits_resnet": ((10,), 80 + 2 * (584 + 576) + 2 * 32 + 144 + 1_168 + 136 + 1_160 + 330, 2 * 16),
    "mnist": ((10,), 435_402, 0),
    "model1": ((10,), 435_402, 0),
    "model_a": ((10,), 220_186, 0),
    "model_b": ((10,), 221_594, 704),
    "model_c": ((10,), 221_594, 704),
    "regression_one_layer": ((4,), 8 * 4 + 4, 0),
    "regression_selu_at_zero": ((3,), 3 * 7 + 7 + 7 * 3 + 3, 0),
}
SPECS = {p.stem: without_dropout(ms.parse(p)) for p in sorted((Path(__file__).parents[2] / "specs").glob("*.ms"))}

# Each optimizer once, with hyperparameters off their defaults, each paired with a loss
# (and the output layer that loss expects) and metrics; then the cross-entropies' other
# paths: probabilities (an output that is not softmax or sigmoid, clipped) and rank-3
# outputs (a loss per position). `input 4; dense 5 relu l2=0.01` has 25 parameters.
MLP, MLP3 = "input 4\ndense 5 relu l2=0.01", "input 3x4\ndense 5 relu l2=0.01"
TRAINING = {  # name: (the spec, output shape, params)
    "sgd-categorical_crossentropy": (f"{MLP}\ndense 3 softmax\noptimizer sgd lr=0.05 momentum=0.9 nesterov=true\n"
                                     "loss categorical_crossentropy\nmetrics accuracy", (3,), 25 + 18),
    "rmsprop-sparse_categorical_crossentropy": (
        f"{MLP}\ndense 3 softmax\noptimizer rmsprop rho=0.8 momentum=0.1 centered=true\n"
        "loss sparse_categorical_crossentropy\nmetrics accuracy", (3,), 25 + 18),
    "adam-binary_crossentropy": (f"{MLP}\ndense 1 sigmoid\noptimizer adam lr=0.01 beta_1=0.8 beta_2=0.99 "
                                 "epsilon=1e-6\nloss binary_crossentropy\nmetrics binary_accuracy", (1,), 25 + 6),
    "adamw-mse": (f"{MLP}\ndense 2\noptimizer adamw lr=0.01 weight_decay=0.1\nloss mse\nmetrics mae", (2,), 25 + 12),
    "adagrad-mae": (f"{MLP}\ndense 2\noptimizer adagrad lr=0.1 initial_accumulator_value=0.2\nloss mae\n"
                    "metrics mse", (2,), 25 + 12),
    "nadam-huber": (f"{MLP}\ndense 2\noptimizer nadam lr=0.01\nloss huber delta=0.5", (2,), 25 + 12),
    "categorical_crossentropy-probabilities": (f"{MLP}\ndense 3 relu\noptimizer sgd lr=0.1\n"
                                               "loss categorical_crossentropy\nmetrics accuracy", (3,), 25 + 18),
    "sparse_categorical_crossentropy-rank3": (f"{MLP3}\ndense 4 softmax\noptimizer sgd lr=0.1\n"
                                              "loss sparse_categorical_crossentropy\nmetrics accuracy",
                                              (3, 4), 25 + 24),
    "sparse_categorical_crossentropy-probabilities-rank3": (
        f"{MLP3}\ndense 4 sigmoid\noptimizer sgd lr=0.1\nloss sparse_categorical_crossentropy\n"
        "metrics sparse_categorical_accuracy", (3, 4), 25 + 24),
}
# normalize adapts to the data that reaches it, so nothing with weights may come before it
# (the stem of the layer cases): whole models instead. Training starts with fit's automatic
# adapt, on the first batch; mean, variance and count (2·channels + 1 parameters, none
# trainable) are compared after it as every weight is. After a max pooling, torch runs it
# on NCHW tensors (channel axis 1); two in a row, the second adapts to the first's output.
NORMALIZE = {  # name: (the spec, output shape, params, non-trainable)
    "normalize": ("input 5\nnormalize\ndense 3", (3,), 11 + 18, 11),
    "rescale-normalize-image": ("input 5x5x2\nrescale 1/255\nnormalize\nconv2d 3 3x3\nflatten\ndense 2",
                                (2,), 5 + 57 + 56, 5),
    "normalize-nchw": ("input 6x6x2\nmaxpool2d 2x2\nnormalize\nconv2d 2 3x3\nflatten\ndense 2", (2,),
                       5 + 38 + 6, 5),
    "normalize-twice-rank3": ("input 3x4\nnormalize\nnormalize name=again\ndense 2", (3, 2), 9 + 9 + 10, 18),
}
# Graphs: every merge kind, fan-out (one output read by several layers, once twice by one
# merge), a block used twice, a repeat, a skip branch written before the main path (Keras
# lists it after), Keras's rank broadcasting (new axes after the batch axis), concat on
# another axis, normalize and batchnorm inside branches. `input 4; dense 5 relu l2=0.01`
# has 25 parameters; a dense 5->5 30, a conv2d 3x3 2->2 38, 1x1 2->2 6.
GRAPH_HEAD = "optimizer sgd lr=0.1\nloss mse"
GRAPHS = {  # name: (the spec, output shape, params, non-trainable)
    "add-residual": (f"{MLP}\nh = dense 5 tanh\ndense 5\nadd h\ndense 2", (2,), 25 + 30 + 30 + 12, 0),
    "subtract": (f"{MLP}\na = dense 3\nb = dense 3 sigmoid from=in\nsubtract a b", (3,), 25 + 18 + 15, 0),
    "multiply-three": (f"{MLP}\na = dense 3\nb = dense 3 tanh from=in\nc = dense 3 sigmoid from=in\nmultiply a b c",
                       (3,), 25 + 18 + 15 + 15, 0),
    "average-fan-out": (f"{MLP}\nh = relu\na = dense 5 from=h\nb = dense 5 from=h\naverage a b h\ndense 2",
                        (2,), 25 + 30 + 30 + 12, 0),
    "maximum-minimum": (f"{MLP}\na = dense 4\nb = dense 4 from=in\nm = maximum a b\nminimum b m a", (4,),
                        25 + 24 + 20, 0),
    "add-one-output-twice": (f"{MLP}\nh = dense 3\nadd h h", (3,), 25 + 18, 0),
    "concat-images": ("input 4x4x2\na = conv2d 2 1x1 relu\nb = conv2d 2 3x3 padding=same from=in\n"
                      "c = maxpool2d 3x3 stride=1 padding=same from=in\nconcat a b c\nflatten\ndense 2",
                      (2,), 6 + 38 + 4 * 4 * 6 * 2 + 2, 0),
    "concat-axis-1": ("input 3x4\na = dense 2\nb = dense 2 relu from=in\nconcat a b axis=1\nflatten\ndense 2",
                      (2,), 10 + 10 + 6 * 2 * 2 + 2, 0),
    "add-rank-broadcast": ("input 3x4\na = dense 4\nflatten from=in\ndense 4 tanh\nadd a\nflatten\ndense 2",
                           (2,), 20 + 52 + 12 * 2 + 2, 0),
    "skip-written-first": ("input 4\nskip = dense 3\ndense 6 relu from=in\ndense 3\nadd skip", (3,),
                           15 + 30 + 21, 0),
    "block-twice-repeat": ("input 5x5x2\nblock res(f, act=relu) {\n  conv2d f 3x3 act padding=same\n"
                           "  batchnorm\n  add in\n}\nres 2\nrepeat 2 { res 2 act=tanh }\nflatten\ndense 2",
                           (2,), 3 * (38 + 8) + 50 * 2 + 2, 3 * 4),
    "normalize-in-a-branch": ("input 5\nn = normalize\na = dense 3 from=in\ndense 3 from=n\nadd a", (3,),
                              11 + 18 + 18, 11),
}
# Sequences of token ids (`input ... int`): an embedding reads them first, so whole models.
# Its mask (mask_zero) passes through layernorm, dense and a merge of masked inputs to the
# masked mean of globalavgpool1d; conv1d drops it. An embedding of V ids into D has V·D
# parameters; a conv1d k·in·filters + filters.
SEQUENCES = {  # name: (the spec, output shape, params, non-trainable)
    "embedding": ("input 6 int\nembedding 10 3\nflatten\ndense 2", (2,), 30 + 38, 0),
    "embedding-mask-average": ("input 6 int\nembedding 10 4 mask_zero he_uniform(seed=2)\nglobalavgpool1d\ndense 2",
                               (2,), 40 + 10, 0),
    "embedding-penalties-conv1d": ("input 6 int\nembedding 10 3 l1=0.01 l2=0.02\nconv1d 2 3 padding=causal relu\n"
                                   "globalmaxpool1d\ndense 2", (2,), 30 + 20 + 6, 0),
    "mask-through-layernorm-dense-add": ("input 6 int\ne = embedding 12 4 mask_zero\nlayernorm\nh = dense 4 relu\n"
                                         "add e\nglobalavgpool1d\ndense 2", (2,), 48 + 8 + 20 + 10, 0),
    "mask-dropped-by-conv1d": ("input 6 int\nembedding 10 4 mask_zero\nconv1d 3 2 padding=same\nglobalavgpool1d\n"
                               "dense 2", (2,), 40 + 27 + 8, 0),
    "embedding-of-a-grid": ("input 3x4 int\nembedding 10 2\nreshape 3x8\nconv1d 2 2\nflatten\ndense 2", (2,),
                            20 + 34 + 10, 0),
    # embedding's mask into recurrent layers: a masked step keeps the state and repeats the
    # previous output (Bidirectional's sequences: 0 there); with return_sequences the mask goes
    # on to the next layer, without it the last unmasked step's output is the result.
    # Attention leaves masked keys out of the softmax, and its output keeps the mask.
    "lstm-mask": ("input 6 int\nembedding 10 3 mask_zero\nlstm 4\ndense 2", (2,), 30 + 128 + 10, 0),
    "lstm-gru-mask-sequences": ("input 6 int\nembedding 10 3 mask_zero\nlstm 4 return_sequences go_backwards\n"
                                "gru 3\ndense 2", (2,), 30 + 128 + 81 + 8, 0),
    "gru-reset-before-mask-average": ("input 6 int\nembedding 10 3 mask_zero\ngru 3 reset_after=false "
                                      "return_sequences\nglobalavgpool1d\ndense 2", (2,), 30 + 63 + 8, 0),
    "simple-rnn-mask-backwards": ("input 6 int\nembedding 10 3 mask_zero\nsimple_rnn 3 go_backwards\ndense 2",
                                  (2,), 30 + 21 + 8, 0),
    "bidirectional-mask-sequences": ("input 6 int\nembedding 10 3 mask_zero\nbidirectional lstm 2 "
                                     "return_sequences\nglobalavgpool1d\ndense 2", (2,), 30 + 96 + 10, 0),
    "bidirectional-mask-last": ("input 6 int\nembedding 10 3 mask_zero\nbidirectional gru 2 merge=ave\ndense 2",
                                (2,), 30 + 84 + 6, 0),
    "bidirectional-mask-into-lstm": ("input 6 int\nembedding 10 3 mask_zero\nbidirectional simple_rnn 2 "
                                     "return_sequences merge=mul\nlstm 2\ndense 2", (2,), 30 + 2 * 12 + 40 + 6, 0),
    "attention-mask": ("input 6 int\nembedding 10 4 mask_zero\nattention heads=2 key_dim=2\nglobalavgpool1d\n"
                       "dense 2", (2,), 40 + 80 + 10, 0),
    "attention-mask-into-gru": ("input 6 int\nembedding 10 4 mask_zero\nattention heads=1 key_dim=3 value_dim=2 "
                                "nobias\ngru 2\ndense 2", (2,), 40 + 40 + 48 + 6, 0),
    "transformer-block-mask": ("input 6 int\ne = embedding 12 4 mask_zero\nattention heads=2 key_dim=2 nobias\n"
                               "add e\nh = layernorm\ndense 8 relu\ndense 4\nadd h\nlayernorm\nglobalavgpool1d\n"
                               "dense 2", (2,), 48 + 64 + 8 + 40 + 36 + 8 + 10, 0),
    "attention-value-dim": ("input 5x4\nattention heads=2 key_dim=3 value_dim=2\nglobalmaxpool1d\ndense 2", (2,),
                            100 + 10, 0),
    "rows-as-a-sequence": ("input 8x8\nconv1d 4 3 relu\nmaxpool1d\nlayernorm\nglobalavgpool1d\ndense 3 softmax",
                           (3,), 100 + 8 + 15, 0),
    "reshape-into-conv1d": ("input 12\nreshape -1x3\nconv1d 2 2 stride=2\nflatten\ndense 2", (2,), 14 + 10, 0),
}
SEQUENCE_SPECS = {name: ms.parse(f"model {name.replace('-', '_')}\n{text}\n{GRAPH_HEAD}")
                  for name, (text, *_) in SEQUENCES.items()}
GRAPH_SPECS = {name: ms.parse(f"model {name.replace('-', '_')}\n{text}\n{GRAPH_HEAD}")
               for name, (text, *_) in GRAPHS.items()}
NORMALIZE_SPECS = {name: ms.parse(f"model {name.replace('-', '_')}\n{text}") for name, (text, *_) in NORMALIZE.items()}
TRAINING_SPECS = {name: ms.parse(f"model {name.replace('-', '_')}\n{text}") for name, (text, _, _) in TRAINING.items()}


@pytest.fixture(scope="module")
def standalone(backend, tmp_path_factory):
    if not backends.get(backend).emits_source:  # nothing to run on its own (layer_test, check 6)
        yield None
        return
    specs = [p.values[0].spec() for p in LAYERS] + list(SPECS.values()) + list(TRAINING_SPECS.values()) + list(
        NORMALIZE_SPECS.values()) + list(GRAPH_SPECS.values()) + list(SEQUENCE_SPECS.values())
    runner = Standalone(backend, specs, shared_directory(tmp_path_factory, f"standalone-{backend}"))
    yield runner
    runner.close()


@pytest.mark.parametrize("case", LAYERS)
def test_layer(backend, case, standalone, tmp_path):
    run_layer_test(backend, case.layer, case.input_shape, case.output_shape, case.params,
                   expected_non_trainable=case.non_trainable, train_mode=case.train_mode, model=case.model,
                   standalone=standalone, tmp_path=tmp_path)


@pytest.mark.parametrize("name", SPECS)
def test_spec(backend, name, standalone, tmp_path):
    output_shape, params, non_trainable = SPEC_COUNTS.get(name, (None, None, 0))
    run_model_test(backend, SPECS[name], output_shape, params, expected_non_trainable=non_trainable, steps=1,
                   optimizer={"name": "sgd", "learning_rate": 0.1},
                   standalone=standalone, tmp_path=tmp_path)


@pytest.mark.parametrize("name", TRAINING_SPECS)
def test_optimizer_and_loss(backend, name, standalone, tmp_path):
    _, output_shape, params = TRAINING[name]
    run_model_test(backend, TRAINING_SPECS[name], output_shape, params, standalone=standalone, tmp_path=tmp_path)


@pytest.mark.parametrize("name", NORMALIZE_SPECS)
def test_normalize(backend, name, standalone, tmp_path):
    _, output_shape, params, non_trainable = NORMALIZE[name]
    run_model_test(backend, NORMALIZE_SPECS[name], output_shape, params, expected_non_trainable=non_trainable,
                   standalone=standalone, tmp_path=tmp_path)


@pytest.mark.parametrize("name", GRAPH_SPECS)
def test_graph(backend, name, standalone, tmp_path):
    _, output_shape, params, non_trainable = GRAPHS[name]
    run_model_test(backend, GRAPH_SPECS[name], output_shape, params, expected_non_trainable=non_trainable,
                   standalone=standalone, tmp_path=tmp_path)


@pytest.mark.parametrize("name", SEQUENCE_SPECS)
def test_sequence(backend, name, standalone, tmp_path):
    _, output_shape, params, non_trainable = SEQUENCES[name]
    run_model_test(backend, SEQUENCE_SPECS[name], output_shape, params, expected_non_trainable=non_trainable,
                   standalone=standalone, tmp_path=tmp_path)
