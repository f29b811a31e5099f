"""Shape and data-movement glue that exporters put around recurrent nodes."""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..errors import InputError
from . import NodeInfo, as_ints, checked_shape, op


def _input_or_attr(node: NodeInfo, inputs: list, index: int, attr: str, since_opset: int):
    """Opsets moved several attributes (axes, split, starts...) into inputs."""
    if node.opset >= since_opset:
        return as_ints(inputs[index]) if len(inputs) > index and inputs[index] is not None else None
    value = node.attrs.get(attr)
    return None if value is None else [int(v) for v in value]


@op("Identity", "Dropout")
def _identity(node):
    # Dropout at inference is the identity; its optional mask output is all ones
    def run(inputs):
        x = inputs[0]
        return [x, np.ones(x.shape, dtype=bool)][:len(node.outputs)]
    return run


@op("Transpose")
def _transpose(node):
    perm = node.attrs.get("perm")
    return lambda inputs: [inputs[0].transpose(perm)]


def _axes_getter(node: NodeInfo, index: int, attr: str, since_opset: int):
    """inputs -> the node's axes (None if absent).  Axes from an attribute or a load-time
    constant are read once here, not converted from an array on every call."""
    computed = (node.opset >= since_opset and len(node.inputs) > index and node.inputs[index]
                and node.const_input(index) is None)   # an input known only at run time
    if computed:
        return lambda inputs: _input_or_attr(node, inputs, index, attr, since_opset)
    fixed = _input_or_attr(node, [node.const_input(i) for i in range(len(node.inputs))], index, attr, since_opset)
    return lambda inputs: fixed


def _numpy_axes(axes, rank: int) -> tuple:
    """ONNX axes (negative ones count from the end) as numpy's, each checked against the rank."""
    if any(not -rank <= a < rank for a in axes):
        raise ValueError(f"axes {list(axes)} out of range for rank {rank}")
    return tuple(a % rank for a in axes)


@op("Squeeze")
def _squeeze(node):
    axes_of = _axes_getter(node, 1, "axes", 13)

    def run(inputs):
        axes, x = axes_of(inputs), inputs[0]
        return [x.squeeze() if axes is None else x.squeeze(axis=_numpy_axes(axes, x.ndim))]
    return run


@op("Unsqueeze")
def _unsqueeze(node):
    axes_of = _axes_getter(node, 1, "axes", 13)

    def run(inputs):
        axes, x = axes_of(inputs), inputs[0]
        return [np.expand_dims(x, tuple(sorted(_numpy_axes(axes, x.ndim + len(axes)))))]
    return run


@op("Reshape")
def _reshape(node):
    allow_zero = node.attrs.get("allowzero", 0)

    def run(inputs):
        x, shape = inputs[0], as_ints(inputs[1])
        if min(shape, default=0) < -1 or shape.count(-1) > 1:   # numpy would read any negative as -1
            raise InputError(f"node '{node.name}' (Reshape): target shape {shape} has a dim below -1 or more "
                             "than one -1")
        if not allow_zero:
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return [np.reshape(x, shape)]
    return run


@op("Flatten")
def _flatten(node):
    axis = node.attrs.get("axis", 1)

    def run(inputs):
        x = inputs[0]
        a = axis + x.ndim if axis < 0 else axis     # axis may be the rank itself: [all, 1]
        return [np.reshape(x, (int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))))]
    return run


@op("Concat")
def _concat(node):
    axis = node.attrs["axis"]
    return lambda inputs: [np.concatenate([x for x in inputs if x is not None], axis=axis)]


@op("Slice")
def _slice(node):
    def run(inputs):
        x = inputs[0]
        if node.opset >= 10:
            starts, ends = as_ints(inputs[1]), as_ints(inputs[2])
            axes = as_ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
            steps = as_ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        else:
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes, steps = node.attrs.get("axes", range(len(starts))), [1] * len(starts)
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[axis % x.ndim] = slice(start, end, step)   # Python clamps out-of-range bounds as ONNX does
        return [x[tuple(index)]]
    return run


@op("Split")
def _split(node):
    axis = node.attrs.get("axis", 0)
    count = len(node.outputs)

    def run(inputs):
        x = inputs[0]
        sizes = _input_or_attr(node, inputs, 1, "split", 13)
        if sizes is None:
            chunk = -(-x.shape[axis] // count)   # ceil: the last part may be smaller (opset 18)
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
        return np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    return run


@op("Gather")
def _gather(node):
    axis = node.attrs.get("axis", 0)
    return lambda inputs: [np.take(inputs[0], inputs[1].astype(np.int64), axis=axis)]


@op("Shape")
def _shape(node):
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return lambda inputs: [np.array(inputs[0].shape[start:end], dtype=np.int64)]


@op("Size")
def _size(node):
    return lambda inputs: [np.array(inputs[0].size, np.int64)]


@op("Constant")
def _constant(node):
    attrs = node.attrs
    if "value" in attrs:
        value = numpy_helper.to_array(attrs["value"])
    elif "value_float" in attrs:
        value = np.array(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        value = np.array(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        value = np.array(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        value = np.array(attrs["value_ints"], dtype=np.int64)
    else:
        raise node.fail(f"unsupported constant attribute {sorted(attrs)}")
    return lambda inputs: [value]


@op("ConstantOfShape")
def _constant_of_shape(node):
    fill = numpy_helper.to_array(node.attrs["value"]) if "value" in node.attrs else np.zeros(1, np.float32)
    return lambda inputs: [np.full(checked_shape(node, as_ints(inputs[0]), fill.dtype), fill.reshape(-1)[0],
                                   dtype=fill.dtype)]


@op("Expand")
def _expand(node):
    def run(inputs):
        x, shape = inputs[0], as_ints(inputs[1])
        out = checked_shape(node, np.broadcast_shapes(x.shape, tuple(shape)), x.dtype)
        return [np.array(np.broadcast_to(x, out))]
    return run


@op("Cast")
def _cast(node):
    to = node.attrs["to"]
    try:
        dtype = helper.tensor_dtype_to_np_dtype(to)
    except KeyError:
        raise node.fail(f"cannot cast to ONNX type {to}") from None
    return lambda inputs: [inputs[0].astype(dtype)]


@op("ReverseSequence")
def _reverse_sequence(node):
    batch_axis, time_axis = node.attrs.get("batch_axis", 1), node.attrs.get("time_axis", 0)

    def run(inputs):
        x, lens = inputs[0].copy(), as_ints(inputs[1])
        for b, n in enumerate(lens):
            index = [slice(None)] * x.ndim
            index[batch_axis], index[time_axis] = b, slice(0, n)
            x[tuple(index)] = np.flip(inputs[0][tuple(index)], axis=time_axis - (batch_axis < time_axis))
        return [x]
    return run


@op("Range")
def _range(node):
    def run(inputs):
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in inputs[:3])
        if delta == 0:
            raise InputError(f"node '{node.name}' (Range): delta is 0")
        steps = max(0, int(np.ceil((float(limit) - float(start)) / float(delta))))
        checked_shape(node, [steps], np.asarray(inputs[0]).dtype)
        return [np.arange(start, limit, delta, dtype=np.asarray(inputs[0]).dtype)]
    return run


@op("Tile")
def _tile(node):
    def run(inputs):
        x, reps = inputs[0], as_ints(inputs[1])
        checked_shape(node, [d * r for d, r in zip(x.shape, reps)] if len(reps) == x.ndim else [], x.dtype)
        return [np.tile(x, reps)]
    return run
