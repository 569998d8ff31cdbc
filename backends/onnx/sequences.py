"""Recurrent layers and attention as ONNX nodes, with embedding's mask.

A recurrent layer is an ONNX Loop over its steps whose body is one step of the cell: ONNX's
LSTM, GRU and RNN ops order the gates otherwise, apply Keras's GRU reset_after differently
and know neither a mask that repeats the previous output nor every activation a spec may
name, while the body is the NumPy kernels' operations one for one
(backends/numpy/kernels.py, Recurrent, LSTM, GRU, SimpleRNN, Bidirectional, Attention).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

from modelspec.checker import LayerReport

from .graph import Graph


def mask(g: Graph) -> str:
    """Embedding's mask, (n, steps) bool: the model's int32 input ids that are not 0 (the
    NumPy engine hands each layer that reads the mask the model's input)."""
    if g._mask is None:
        g._mask = g.op("Not", [g.op("Equal", [g.ids, g.const(0, np.int32)])], "mask")
    return g._mask


def _param(g: Graph, path: str, value: np.ndarray) -> str:
    return g.param(path, np.asarray(value, np.float32))


def _run(g: Graph, layer: Any, x: str, w: list[np.ndarray], paths: list[str], masked: bool,
         zero_output_for_mask: bool, steps: int) -> str:
    """The layer over its steps as one ONNX Loop: its output, (n, units), or with
    return_sequences (n, steps, units) in the order processed (reversed with go_backwards)."""
    units = layer.units
    kind = layer.kind
    kernel = _param(g, paths[0], w[0])
    bias = w[2] if layer.use_bias else None
    reset_after = kind == "gru" and layer.reset_after
    # x·kernel (+ the input bias) over every step at once, as the kernels' `start` does
    xk = g.op("MatMul", [x, kernel], f"{kind}_xk")
    if bias is not None and kind != "lstm":
        xk = g.op("Add", [xk, _param(g, paths[2], bias[0] if reset_after else bias)], f"{kind}_xk_bias")
    if kind == "gru" and not reset_after:
        recurrent = [_param(g, f"{paths[1]}:zr", w[1][:, :2 * units]), _param(g, f"{paths[1]}:h", w[1][:, 2 * units:])]
    else:
        recurrent = [_param(g, paths[1], w[1])]
    lstm_bias = _param(g, paths[2], bias) if bias is not None and kind == "lstm" else None
    gru_rec_bias = _param(g, f"{paths[2]}:recurrent", bias[1]) if bias is not None and reset_after else None
    act = layer.activation
    rec_act = getattr(layer, "recurrent_activation", None)
    zeros = g.zeros(x, units)
    m = mask(g) if masked else None
    states = ["h", "c"] if kind == "lstm" else ["h"]

    # the loop's body: (step, cond, states...) -> (cond, new states..., this step's output)
    step, cond = g.name(f"{kind}_step"), g.name(f"{kind}_cond")
    state_in = [g.name(f"{kind}_{s}") for s in states]
    outer, g.nodes = g.nodes, []
    h = state_in[0]
    c = state_in[1] if kind == "lstm" else None
    t = g.op("Sub", [g.const(steps - 1, np.int64), step], "reversed_step") if layer.go_backwards else step
    xt = g.op("Gather", [xk, t], f"{kind}_x", axis=1)  # (n, width)
    if kind == "simple_rnn":
        new = [g.activation(act, g.op("Add", [g.op("MatMul", [h, recurrent[0]]), xt]))]
    elif kind == "lstm":
        z = g.op("Add", [g.op("MatMul", [h, recurrent[0]]), xt])
        if lstm_bias is not None:
            z = g.op("Add", [z, lstm_bias])
        i, f, cc, o = (g.slice(z, 1, k * units, (k + 1) * units) for k in range(4))
        i, f, o = (g.activation(rec_act, v) for v in (i, f, o))
        c_new = g.op("Add", [g.op("Mul", [f, c]), g.op("Mul", [i, g.activation(act, cc)])])
        new = [g.op("Mul", [o, g.activation(act, c_new)]), c_new]
    else:  # gru
        mx_zr, mx_h = g.slice(xt, 1, 0, 2 * units), g.slice(xt, 1, 2 * units, 3 * units)
        if reset_after:
            rec = g.op("MatMul", [h, recurrent[0]])
            if gru_rec_bias is not None:
                rec = g.op("Add", [rec, gru_rec_bias])
            zr = g.activation(rec_act, g.op("Add", [mx_zr, g.slice(rec, 1, 0, 2 * units)]))
            r = g.slice(zr, 1, units, 2 * units)
            hp = g.op("Mul", [r, g.slice(rec, 1, 2 * units, 3 * units)])
        else:
            zr = g.activation(rec_act, g.op("Add", [mx_zr, g.op("MatMul", [h, recurrent[0]])]))
            r = g.slice(zr, 1, units, 2 * units)
            hp = g.op("MatMul", [g.op("Mul", [r, h]), recurrent[1]])
        hh = g.activation(act, g.op("Add", [mx_h, hp]))
        z = g.slice(zr, 1, 0, units)
        keep = g.op("Mul", [z, h])
        new = [g.op("Add", [keep, g.op("Mul", [g.op("Sub", [g.const(1.0), z]), hh])])]
    y = None
    if m is not None:
        # a masked step keeps the state and repeats the previous output (or outputs 0)
        mt = g.op("Unsqueeze", [g.op("Gather", [m, t], axis=1), g.ints([1])], f"{kind}_mask")
        if zero_output_for_mask:
            y = g.op("Where", [mt, new[0], g.const(0.0)])
        new = [g.op("Where", [mt, a, b]) for a, b in zip(new, state_in)]
    body_outputs = [g.op("Identity", [cond], f"{kind}_cond_out"), *(g.op("Identity", [v], f"{kind}_{s}_out")
                                                                    for v, s in zip(new, states))]
    if layer.return_sequences:
        body_outputs.append(g.op("Identity", [new[0] if y is None else y], f"{kind}_y"))
    body_nodes, g.nodes = g.nodes, outer
    width = ["batch", units]
    body = helper.make_graph(
        body_nodes, g.name(f"{kind}_body"),
        [helper.make_tensor_value_info(step, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(v, TensorProto.FLOAT, width) for v in state_in)],
        [helper.make_tensor_value_info(body_outputs[0], TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(v, TensorProto.FLOAT, width) for v in body_outputs[1:])])
    outputs = g.op("Loop", [g.const(steps, np.int64), "", *([zeros] * len(states))], f"{kind}_loop",
                   outputs=len(states) + int(layer.return_sequences), body=body)
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not layer.return_sequences:
        return outputs[0]  # the last state h
    return g.op("Transpose", [outputs[-1]], f"{kind}_sequence", perm=[1, 0, 2])  # (steps, n, u) -> (n, steps, u)


def recurrent(g: Graph, row: LayerReport, layer: Any, x: str, w: list[np.ndarray], decls: list[Any]) -> str:
    y = _run(g, layer, x, w, [d.path for d in decls], row.reads_mask, False, row.input_shape[1])
    return g.op("Identity", [y], row.name)


def bidirectional(g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
    """The layer as written, and its copy with go_backwards flipped; with return_sequences
    the backward outputs are put back in time order, and masked steps output 0 in both."""
    inner = row.layer.layer
    half = len(w) // 2
    backward = inner.model_copy(update={"go_backwards": not inner.go_backwards})
    zeroed = inner.return_sequences
    paths = [d.path for d in row.weights]
    steps = row.input_shape[1]
    a = _run(g, inner, x, w[:half], paths[:half], row.reads_mask, zeroed, steps)
    b = _run(g, backward, x, w[half:], paths[half:], row.reads_mask, zeroed, steps)
    if inner.return_sequences:  # the backward outputs back in time order
        b = g.op("Slice", [b, g.ints([-1]), g.ints([-2**63]), g.ints([1]), g.ints([-1])], "backward_in_time_order")
    mode = row.layer.merge_mode
    if mode == "concat":
        return g.op("Concat", [a, b], row.name, axis=-1)
    if mode == "sum":
        return g.op("Add", [a, b], row.name)
    if mode == "mul":
        return g.op("Mul", [a, b], row.name)
    return g.op("Div", [g.op("Add", [a, b]), g.const(2.0)], row.name)


def attention(g: Graph, row: LayerReport, x: str, w: list[np.ndarray]) -> str:
    """Keras's MultiHeadAttention as self-attention on (n, steps, D): each projection
    x·W + b as (n, heads, steps, dim); softmax(q·kᵀ/√key_dim) over the keys, masked scores
    -1e9; (p·v) back to (n, steps, heads·value_dim)·W_o + b_o. Dropout is the identity."""
    layer = row.layer
    _, steps, d = row.input_shape
    heads, key_dim, value_dim = layer.num_heads, layer.key_dim, layer.resolved_value_dim
    paths = [decl.path for decl in row.weights]
    arrays = list(zip(paths, w))
    pairs = [(arrays[2 * i], arrays[2 * i + 1]) for i in range(4)] if layer.use_bias \
        else [(arrays[i], None) for i in range(4)]

    def project(i: int, dim: int, hint: str) -> str:
        (path, kernel), bias = pairs[i]
        y = g.op("MatMul", [x, _param(g, f"{path}:onnx", np.reshape(kernel, (d, heads * dim)))], hint)
        if bias is not None:
            y = g.op("Add", [y, _param(g, f"{bias[0]}:onnx", np.reshape(bias[1], -1))])
        y = g.op("Reshape", [y, g.ints([0, steps, heads, dim])])
        return g.op("Transpose", [y], hint, perm=[0, 2, 1, 3])

    q, k, v = project(0, key_dim, "query"), project(1, key_dim, "key"), project(2, value_dim, "value")
    scale = g.const(key_dim ** -0.5)
    kt = g.op("Transpose", [k], "key_t", perm=[0, 1, 3, 2])
    if layer.dropout > 0:  # Keras's einsum path scales the query, its dot_product_attention path the scores
        scores = g.op("MatMul", [g.op("Mul", [q, scale]), kt], "scores")
    else:
        scores = g.op("Mul", [g.op("MatMul", [q, kt]), scale], "scores")
    both = None
    if row.reads_mask:
        valid = mask(g)
        both = g.op("And", [g.op("Unsqueeze", [valid, g.ints([1, 3])]), g.op("Unsqueeze", [valid, g.ints([1, 2])])],
                    "attention_mask")  # (n, 1, query, key)
        scores = g.op("Where", [both, scores, g.const(-1e9)])
    p = g.op("Softmax", [scores], "probabilities", axis=-1)
    if both is not None and layer.dropout > 0:
        p = g.op("Where", [both, p, g.const(0.0)])  # the einsum path's masked Softmax zeroes them
    o = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    o = g.op("Reshape", [o, g.ints([0, steps, heads * value_dim])])
    (path, kernel), bias = pairs[3]
    y = g.op("MatMul", [o, _param(g, f"{path}:onnx", np.reshape(kernel, (heads * value_dim, d)))], row.name)
    if bias is not None:
        y = g.op("Add", [y, _param(g, bias[0], bias[1])], row.name)
    return y
