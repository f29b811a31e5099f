"""Elementwise arithmetic, products and activations around recurrent nodes."""
from __future__ import annotations

import numpy as np

from . import op


def _int_divide(a, b):
    # ONNX integer Div truncates toward zero; numpy's // floors
    q = np.floor_divide(a, b)
    return q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "Div": lambda a, b: _int_divide(a, b) if np.issubdtype(a.dtype, np.integer) else np.divide(a, b),
}


@op(*_BINARY)
def _binary(node):
    fn = _BINARY[node.op_type]
    return lambda inputs: [np.asarray(fn(inputs[0], inputs[1])).astype(inputs[0].dtype, copy=False)]


def _sigmoid(x):
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)   # overflow-free form


_UNARY = {"Relu": lambda x: np.maximum(x, 0).astype(x.dtype, copy=False), "Tanh": np.tanh, "Sigmoid": _sigmoid}


@op(*_UNARY)
def _unary(node):
    fn = _UNARY[node.op_type]
    return lambda inputs: [fn(inputs[0])]


@op("Softmax")
def _softmax(node):
    legacy = node.opset < 13     # before opset 13 Softmax flattens to 2-D at `axis` (default 1)
    axis = node.attrs.get("axis", 1 if legacy else -1)

    def softmax(x, ax):
        e = np.exp(x - np.max(x, axis=ax, keepdims=True))
        return e / np.sum(e, axis=ax, keepdims=True)

    def run(inputs):
        x = inputs[0]
        if legacy:
            a = axis % x.ndim
            flat = x.reshape(int(np.prod(x.shape[:a])), -1)
            return [softmax(flat, 1).reshape(x.shape)]
        return [softmax(x, axis)]
    return run


@op("MatMul")
def _matmul(node):
    return lambda inputs: [np.matmul(inputs[0], inputs[1])]


@op("Gemm")
def _gemm(node):
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)

    def run(inputs):
        a = inputs[0].T if trans_a else inputs[0]
        b = inputs[1].T if trans_b else inputs[1]
        y = np.matmul(a, b)
        if alpha != 1.0:
            y = y * y.dtype.type(alpha)
        if len(inputs) > 2 and inputs[2] is not None:
            y = y + inputs[2] * y.dtype.type(beta)
        return [y]
    return run
