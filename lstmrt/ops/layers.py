"""Ops that exported layers around recurrences bring: pooling, inference batch
normalisation, elementwise max/min/mean of several inputs, einsum (attention)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import NodeInfo, op
from .nn import _conv_pads


@op("MaxPool", "AveragePool")
def _pool(node: NodeInfo):
    kernel = list(node.attrs.get("kernel_shape", []))
    if not kernel:
        raise node.fail("kernel_shape is required")
    if node.attrs.get("ceil_mode", 0) or node.attrs.get("storage_order", 0) or len(node.outputs) > 1:
        raise node.fail("ceil_mode, storage_order and the Indices output are not supported")
    is_max = node.op_type == "MaxPool"
    include_pad = bool(node.attrs.get("count_include_pad", 0))

    def run(inputs):
        x = inputs[0]
        rank = x.ndim - 2
        strides = node.attrs.get("strides", [1] * rank)
        dilations = node.attrs.get("dilations", [1] * rank)
        pads = [(0, 0), (0, 0)] + _conv_pads(node, x.shape[2:], kernel, strides, dilations)
        fill = -np.inf if is_max else 0.0
        padded = np.pad(x, pads, constant_values=fill)
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        axes = tuple(range(2, x.ndim))
        picks = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
            + tuple(slice(None, None, d) for d in dilations)
        windows = sliding_window_view(padded, span, axis=axes)[picks]
        window_axes = tuple(range(x.ndim, windows.ndim))
        if is_max:
            return [windows.max(axis=window_axes).astype(x.dtype, copy=False)]
        total = windows.sum(axis=window_axes, dtype=np.float64)
        if include_pad:
            count = float(np.prod(kernel))
        else:   # divide by the real (unpadded) elements of each window
            ones = np.pad(np.ones((1, 1) + x.shape[2:]), pads, constant_values=0.0)
            count = sliding_window_view(ones, span, axis=axes)[picks].sum(axis=window_axes)
        return [(total / count).astype(x.dtype, copy=False)]
    return run


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: NodeInfo):
    fn = np.mean if node.op_type == "GlobalAveragePool" else np.max
    return lambda inputs: [fn(inputs[0], axis=tuple(range(2, inputs[0].ndim)), keepdims=True)
                           .astype(inputs[0].dtype, copy=False)]


@op("Max", "Min", "Mean", "Sum")
def _variadic(node: NodeInfo):
    reduce = {"Max": np.maximum, "Min": np.minimum, "Mean": np.add, "Sum": np.add}[node.op_type]

    def run(inputs):
        out = inputs[0]
        for other in inputs[1:]:
            out = reduce(out, other)
        if node.op_type == "Mean":
            out = out / len(inputs)
        return [np.asarray(out).astype(inputs[0].dtype, copy=False)]
    return run


@op("BatchNormalization")
def _batch_norm(node: NodeInfo):
    if node.attrs.get("training_mode", 0) or len(node.outputs) > 1:
        raise node.fail("training mode is not supported (inference only)")
    epsilon = node.attrs.get("epsilon", 1e-5)

    def run(inputs):
        x, scale, bias, mean, var = inputs[:5]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv = scale / np.sqrt(var + epsilon)
        return [(x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)).astype(x.dtype, copy=False)]
    return run


@op("Einsum")
def _einsum(node: NodeInfo):
    equation = node.attrs.get("equation")
    if not equation:
        raise node.fail("equation is required")
    return lambda inputs: [np.einsum(equation, *inputs, optimize=True).astype(inputs[0].dtype, copy=False)]


@op("Reciprocal")
def _reciprocal(node: NodeInfo):
    return lambda inputs: [np.reciprocal(inputs[0])]
