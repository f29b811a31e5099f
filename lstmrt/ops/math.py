"""Elementwise arithmetic, products and activations around recurrent nodes."""
from __future__ import annotations

import numpy as np

from . import as_ints, op, optional_input


def _int_divide(a, b):
    # ONNX integer Div truncates toward zero; numpy's // floors
    q = np.floor_divide(a, b)
    return q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
    "Div": lambda a, b: _int_divide(a, b) if np.issubdtype(a.dtype, np.integer) else np.divide(a, b),
}


@op(*_BINARY)
def _binary(node):
    fn = _BINARY[node.op_type]

    def run(inputs):
        a = inputs[0]
        result = fn(a, inputs[1])
        if type(result) is np.ndarray and result.dtype == a.dtype:   # the usual case, as is
            return [result]
        return [np.asarray(result).astype(a.dtype, copy=False)]      # a 0-d scalar, or mixed types
    return run


def _sigmoid(x):
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)   # overflow-free form


def _erf(x):
    """Abramowitz & Stegun 7.1.26 refined: |error| < 1.5e-7, enough for float32 (no scipy needed)."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x.astype(np.float64)))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x) * (1.0 - poly * np.exp(-np.square(x.astype(np.float64))))).astype(x.dtype)


def _softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


_UNARY = {"Relu": lambda x: np.maximum(x, 0).astype(x.dtype, copy=False), "Tanh": np.tanh, "Sigmoid": _sigmoid,
          "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Abs": np.abs, "Neg": np.negative, "Erf": _erf,
          "Softplus": _softplus, "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Sin": np.sin,
          "Cos": np.cos, "Softsign": lambda x: (x / (1 + np.abs(x))).astype(x.dtype, copy=False)}


@op(*_UNARY)
def _unary(node):
    fn = _UNARY[node.op_type]
    return lambda inputs: [fn(inputs[0])]


@op("LeakyRelu")
def _leaky_relu(node):
    alpha = node.attrs.get("alpha", 0.01)
    return lambda inputs: [np.where(inputs[0] >= 0, inputs[0], inputs[0] * inputs[0].dtype.type(alpha))]


@op("Elu")
def _elu(node):
    alpha = node.attrs.get("alpha", 1.0)
    return lambda inputs: [np.where(inputs[0] >= 0, inputs[0],
                                    (np.expm1(inputs[0]) * inputs[0].dtype.type(alpha)).astype(inputs[0].dtype))]


@op("ThresholdedRelu")
def _thresholded_relu(node):
    alpha = node.attrs.get("alpha", 1.0)
    return lambda inputs: [np.where(inputs[0] > alpha, inputs[0], inputs[0].dtype.type(0))]


@op("HardSigmoid")
def _hard_sigmoid(node):
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)

    def run(inputs):
        x = inputs[0]
        return [np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1).astype(x.dtype)]
    return run


@op("Gelu")
def _gelu(node):
    tanh_form = node.attrs.get("approximate", "none") == "tanh"

    def run(inputs):
        x = inputs[0]
        if tanh_form:
            inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
            return [(0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)]
        return [(0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))).astype(x.dtype)]
    return run


@op("Clip")
def _clip(node):
    def run(inputs):
        x = inputs[0]
        if node.opset < 11:
            low, high = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
        else:
            low, high = optional_input(inputs, 1), optional_input(inputs, 2)
        if low is not None:
            x = np.maximum(x, low)
        if high is not None:
            x = np.minimum(x, high)
        return [x.astype(inputs[0].dtype, copy=False)]
    return run


_REDUCE = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min,
           "ReduceProd": np.prod}
_AXES_AS_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceProd": 18}


@op(*_REDUCE)
def _reduce(node):
    fn = _REDUCE[node.op_type]
    keepdims = bool(node.attrs.get("keepdims", 1))
    noop_if_empty = bool(node.attrs.get("noop_with_empty_axes", 0))
    axes_as_input = node.opset >= _AXES_AS_INPUT_SINCE[node.op_type]

    def run(inputs):
        x = inputs[0]
        if axes_as_input:
            axes = optional_input(inputs, 1)
            axes = None if axes is None or axes.size == 0 else tuple(as_ints(axes))
        else:
            axes = tuple(node.attrs["axes"]) if "axes" in node.attrs else None
        if axes is None and noop_if_empty:
            return [x]
        return [np.asarray(fn(x, axis=axes, keepdims=keepdims)).astype(x.dtype, copy=False)]
    return run


@op("Softmax", "LogSoftmax")
def _softmax(node):
    legacy = node.opset < 13     # before opset 13 Softmax flattens to 2-D at `axis` (default 1)
    axis = node.attrs.get("axis", 1 if legacy else -1)
    log = node.op_type == "LogSoftmax"

    def softmax(x, ax):
        # ufunc reductions and in-place ufuncs: a network's last op runs on every call
        e = x - np.maximum.reduce(x, axis=ax, keepdims=True)
        if log:
            return e - np.log(np.add.reduce(np.exp(e), axis=ax, keepdims=True))
        np.exp(e, out=e)
        e /= np.add.reduce(e, axis=ax, keepdims=True)
        return e

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
    def run(inputs):
        return [np.matmul(inputs[0], inputs[1])]

    def output_shapes(shapes):
        """run's output shape without running it (None for vectors, or shapes run would refuse)."""
        a, b = shapes[0], shapes[1]
        if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
            return None
        try:
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        except ValueError:
            return None
        return [(*batch, a[-2], b[-1])]
    run.output_shapes = output_shapes
    return run


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
