"""Convolution, padding and layer normalisation: the front-ends of streaming audio models."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import NodeInfo, as_ints, op, optional_input


def _conv_pads(node: NodeInfo, spatial, kernel, strides, dilations) -> list[tuple]:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    rank = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * rank
    flat = node.attrs.get("pads", [0] * 2 * rank)
    return list(zip(flat[:rank], flat[rank:]))


@op("Conv")
def _conv(node: NodeInfo):
    group = node.attrs.get("group", 1)

    def run(inputs):
        x, w, b = inputs[0], inputs[1], optional_input(inputs, 2)
        rank = x.ndim - 2
        kernel = w.shape[2:]
        strides = node.attrs.get("strides", [1] * rank)
        dilations = node.attrs.get("dilations", [1] * rank)
        pads = _conv_pads(node, x.shape[2:], kernel, strides, dilations)
        x = np.pad(x, [(0, 0), (0, 0)] + pads)
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        windows = sliding_window_view(x, span, axis=tuple(range(2, x.ndim)))
        picks = tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
        windows = windows[(slice(None), slice(None)) + picks]     # [N, C, *out, *kernel]
        n, c = x.shape[:2]
        out_shape = windows.shape[2:2 + rank]
        windows = windows.reshape(n, group, c // group, *out_shape, *kernel)
        weights = w.reshape(group, w.shape[0] // group, c // group, *kernel)
        letters = "abcdefgh"[:rank]
        k_letters = "pqrstuvw"[:rank]
        y = np.einsum(f"ngc{letters}{k_letters},gmc{k_letters}->ngm{letters}", windows, weights, optimize=True)
        y = y.reshape(n, w.shape[0], *out_shape)
        if b is not None:
            y = y + b.reshape(1, -1, *([1] * rank))
        return [y.astype(inputs[0].dtype, copy=False)]

    def output_shapes(shapes):
        """run's output shape without running it (None where run would refuse the shapes)."""
        x, w = shapes[0], shapes[1]
        rank = len(x) - 2
        if rank < 1 or len(w) != len(x) or x[1] != w[1] * group or w[0] % group or \
                (len(shapes) > 2 and shapes[2] is not None and tuple(shapes[2]) != (w[0],)):
            return None
        strides = node.attrs.get("strides", [1] * rank)
        dilations = node.attrs.get("dilations", [1] * rank)
        pads = _conv_pads(node, x[2:], w[2:], strides, dilations)
        out = [(size + lo + hi - (k - 1) * d - 1) // s + 1
               for size, (lo, hi), k, d, s in zip(x[2:], pads, w[2:], dilations, strides)]
        return [(x[0], w[0], *out)] if all(o > 0 for o in out) else None
    run.output_shapes = output_shapes
    return run


@op("Pad")
def _pad(node: NodeInfo):
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise node.fail(f"unsupported pad mode '{mode}'")

    def run(inputs):
        x = inputs[0]
        if node.opset < 11:
            pads, value, axes = node.attrs["pads"], node.attrs.get("value", 0.0), None
        else:
            pads = as_ints(inputs[1])
            value = optional_input(inputs, 2)
            value = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
            axes = optional_input(inputs, 3)
        axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in as_ints(axes)]
        widths = [(0, 0)] * x.ndim
        for i, axis in enumerate(axes):
            widths[axis] = (pads[i], pads[i + len(axes)])
        # negative pads crop
        crop = tuple(slice(-min(lo, 0), x.shape[a] + min(hi, 0)) for a, (lo, hi) in enumerate(widths))
        x = x[crop]
        widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
        if mode == "constant":
            return [np.pad(x, widths, mode="constant", constant_values=value)]
        return [np.pad(x, widths, mode=mode)]
    return run


@op("LayerNormalization")
def _layer_norm(node: NodeInfo):
    axis, epsilon = node.attrs.get("axis", -1), node.attrs.get("epsilon", 1e-5)

    def run(inputs):
        x, scale, bias = inputs[0], inputs[1], optional_input(inputs, 2)
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(np.square(x - mean).mean(axis=axes, keepdims=True) + epsilon)
        y = (x - mean) * inv_std * scale
        if bias is not None:
            y = y + bias
        return [y.astype(x.dtype, copy=False), mean.astype(x.dtype), inv_std.astype(x.dtype)][:len(node.outputs)]
    return run


@op("BatchNormalization")
def _batch_norm(node: NodeInfo):
    if node.attrs.get("training_mode", 0):
        raise node.fail("training_mode=1 is not supported (inference only)")
    epsilon = node.attrs.get("epsilon", 1e-5)

    def run(inputs):
        x, scale, bias, mean, var = inputs[:5]
        shape = [1, -1] + [1] * (x.ndim - 2)
        inv = scale.reshape(shape) / np.sqrt(var.reshape(shape) + epsilon)
        return [((x - mean.reshape(shape)) * inv + bias.reshape(shape)).astype(x.dtype, copy=False)]
    return run
