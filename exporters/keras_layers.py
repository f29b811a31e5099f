"""The Keras layers around the recurrent ones.

Layers along the time axis (Conv1D, SeparableConv1D, DepthwiseConv1D, pooling, ZeroPadding1D,
Cropping1D, UpSampling1D) are written here by hand, channels-first as ONNX's Conv/Pool
want, so that time_layers.py can read their padding and stride and carry a causal
convolution's context across stream chunks.  Every other layer (normalisation, merges,
reshapes, attention, TimeDistributed(...), Lambda and custom layers that TensorFlow can
trace) is converted by tf2onnx, one layer at a time, and spliced into the graph; a layer
tf2onnx cannot convert is refused, naming it.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

TIME_CONVS = ("Conv1D", "SeparableConv1D", "DepthwiseConv1D")
POOLS = {"MaxPooling1D": "MaxPool", "AveragePooling1D": "AveragePool"}
GLOBAL_POOLS = {"GlobalMaxPooling1D": "ReduceMax", "GlobalAveragePooling1D": "ReduceMean"}
TIME_LAYERS = TIME_CONVS + tuple(POOLS) + tuple(GLOBAL_POOLS) + ("ZeroPadding1D", "Cropping1D", "UpSampling1D")
BIG = 2 ** 62


def _error(message):
    from . import ExportError
    return ExportError(message)


def emit(em, layer, node, inputs: list) -> list:
    """ONNX for a non-recurrent Keras layer: [Val] per output of `node`."""
    from .keras import Val
    kind = type(layer).__name__
    if kind in TIME_LAYERS:
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _error(f"layer '{layer.name}' ({kind}): data_format={layer.data_format!r} is not supported "
                         "(channels_last: [batch, time, features])")
        x = em.to(inputs[0], "btf")
        if kind in TIME_CONVS:
            return [Val(_conv(em, layer, x), "btf", None)]
        if kind in POOLS:
            return [Val(_pool(em, layer, x), "btf", None)]
        if kind in GLOBAL_POOLS:
            return [_global_pool(em, layer, x)]
        return [Val(_reshape_time(em, layer, x), "btf", None)]
    if kind == "TimeDistributed":
        return [_time_distributed(em, layer, node, inputs[0])]
    return splice(em, layer, node, inputs)


def _needs_steps(em, steps: int) -> None:
    """Record that the model needs at least `steps` input steps (valid convs, pooling, cropping)."""
    em.min_steps = max(getattr(em, "min_steps", 1), steps * getattr(em, "time_stride", 1))


def _strides_time(em, stride: int) -> None:
    em.time_stride = getattr(em, "time_stride", 1) * stride


# --- along the time axis, by hand ------------------------------------------------------------

def _channels_first(em, x) -> str:
    """[B, F, T] of a [B, T, F] value, reusing the input of the Transpose that made it."""
    producer = next((n for n in reversed(em.g.nodes) if x.name in n.output), None)
    if producer is not None and producer.op_type == "Transpose" and \
            list(helper.get_attribute_value(producer.attribute[0])) == [0, 2, 1]:
        return producer.input[0]
    return em.g.transpose(x.name, [0, 2, 1], name=f"{x.name}/channels_first")


def _padding(layer, kernel: int, dilation: int) -> dict:
    span = (kernel - 1) * dilation
    if layer.padding == "causal":
        return {"pads": [span, 0]}
    if layer.padding == "valid":
        return {"pads": [0, 0]}
    if layer.padding == "same":
        if layer.strides[0] == 1:   # TensorFlow puts the odd frame on the right
            return {"pads": [span // 2, span - span // 2]}
        return {"auto_pad": "SAME_UPPER"}
    raise _error(f"layer '{layer.name}' ({type(layer).__name__}): padding={layer.padding!r} is not supported")


def _conv(em, layer, x) -> str:
    g, name, kind = em.g, layer.name, type(layer).__name__
    k, s, d = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
    attrs = dict(kernel_shape=[k], strides=[s], dilations=[d], **_padding(layer, k, d))
    xc = _channels_first(em, x)
    if layer.padding == "valid":
        _needs_steps(em, (k - 1) * d + 1)
    _strides_time(em, s)
    if kind == "Conv1D":
        w = np.asarray(layer.kernel.numpy(), np.float32).transpose(2, 1, 0)    # [k, in/g, out] -> [out, in/g, k]
        bias = [g.const(np.asarray(layer.bias.numpy(), np.float32), f"{name}.bias")] if layer.use_bias else []
        y = g.op("Conv", [xc, g.const(w, f"{name}.kernel")] + bias, name=f"{name}/Conv", group=layer.groups, **attrs)
    else:
        dk = layer.depthwise_kernel if kind == "SeparableConv1D" else layer.kernel
        dk = np.asarray(dk.numpy(), np.float32)                                 # [k, in, multiplier]
        channels, mult = dk.shape[1], dk.shape[2]
        w = dk.transpose(1, 2, 0).reshape(channels * mult, 1, k)               # channel c*mult+m <- (c, m)
        depth_bias = []
        if kind == "DepthwiseConv1D" and layer.use_bias:
            depth_bias = [g.const(np.asarray(layer.bias.numpy(), np.float32), f"{name}.bias")]
        y = g.op("Conv", [xc, g.const(w, f"{name}.depthwise")] + depth_bias, name=f"{name}/Conv",
                 group=channels, **attrs)
        if kind == "SeparableConv1D":
            pw = np.asarray(layer.pointwise_kernel.numpy(), np.float32).transpose(2, 1, 0)   # [out, in*m, 1]
            bias = [g.const(np.asarray(layer.bias.numpy(), np.float32), f"{name}.bias")] if layer.use_bias else []
            y = g.op("Conv", [y, g.const(pw, f"{name}.pointwise")] + bias, name=f"{name}/pointwise")
    y = em.activation(y, layer.activation, name)
    return g.transpose(y, [0, 2, 1], name=f"{name}/channels_last")


def _pool(em, layer, x) -> str:
    g, name = em.g, layer.name
    k, s = layer.pool_size[0], layer.strides[0]
    attrs = {"kernel_shape": [k], "strides": [s]}
    attrs.update({"auto_pad": "SAME_UPPER"} if layer.padding == "same" else {"pads": [0, 0]})
    if layer.padding == "valid":
        _needs_steps(em, k)
    _strides_time(em, s)
    op = POOLS[type(layer).__name__]
    y = g.op(op, [_channels_first(em, x)], name=f"{name}/{op}", **attrs)   # AveragePool: pads not counted, as TF
    return g.transpose(y, [0, 2, 1], name=f"{name}/channels_last")


def _global_pool(em, layer, x):
    from .keras import Val
    g, name, kind = em.g, layer.name, type(layer).__name__
    keep = int(bool(getattr(layer, "keepdims", False)))
    if x.mask is not None and kind == "GlobalAveragePooling1D":   # Keras averages the unmasked steps only
        m = g.unsqueeze(x.mask[0], [2], name=f"{name}/mask")
        total = g.op("ReduceSum", [g.op("Mul", [x.name, m], name=f"{name}/masked"), g.ints([1])],
                     name=f"{name}/sum", keepdims=keep)
        count = g.op("ReduceSum", [m, g.ints([1])], name=f"{name}/count", keepdims=keep)
        y = g.op("Div", [total, count], name=f"{name}/mean")
    else:
        y = g.op(GLOBAL_POOLS[kind], [x.name], name=f"{name}/{GLOBAL_POOLS[kind]}", axes=[1], keepdims=keep)
    return Val(y, "bnf" if keep else "bf", None)


def _reshape_time(em, layer, x) -> str:
    g, name, kind = em.g, layer.name, type(layer).__name__
    if kind == "ZeroPadding1D":
        left, right = layer.padding
        y = g.op("Pad", [_channels_first(em, x), g.ints([0, 0, left, 0, 0, right])], name=f"{name}/Pad")
        return g.transpose(y, [0, 2, 1], name=f"{name}/channels_last")
    if kind == "Cropping1D":
        left, right = layer.cropping
        _needs_steps(em, left + right + 1)
        return g.op("Slice", [x.name, g.ints([left]), g.ints([-right if right else BIG]), g.ints([1])],
                    name=f"{name}/Slice")
    # UpSampling1D: every step repeated `size` times
    size = layer.size
    y = g.op("Tile", [g.unsqueeze(x.name, [2], name=f"{name}/Unsqueeze"), g.ints([1, 1, size, 1])],
             name=f"{name}/Tile")
    features = g.op("Slice", [g.op("Shape", [x.name], name=f"{name}/Shape"), g.ints([2]), g.ints([3])],
                    name=f"{name}/features")
    shape = g.op("Concat", [g.ints([0, -1]), features], name=f"{name}/shape", axis=0)
    return g.op("Reshape", [y, shape], name=f"{name}/Reshape")


# --- everything else: tf2onnx, one layer at a time -----------------------------------------------

def _time_distributed(em, layer, node, x):
    """TimeDistributed(inner): the inner layer on [batch*time, ...], converted alone (tf2onnx
    turns the wrapper itself into a Loop)."""
    from . import ExportError
    from .keras import Val
    tf, tf2onnx = _import_tf2onnx(layer)
    g, name, inner = em.g, layer.name, layer.layer
    x = em.to(x, "btf") if x.layout == "tbf" else x
    in_shape = list(node.arguments.keras_tensors[0].shape)
    out_shape = list(node.output_tensors[0].shape)
    if any(d is None for d in in_shape[2:] + out_shape[2:]):
        raise ExportError(f"layer '{name}' (TimeDistributed({type(inner).__name__})): the per-step shapes "
                          f"{in_shape[2:]} -> {out_shape[2:]} must be known")
    flat = g.op("Reshape", [x.name, g.ints([-1] + in_shape[2:])], name=f"{name}/flatten_time")
    spec = [tf.TensorSpec([None] + in_shape[2:], node.arguments.keras_tensors[0].dtype, name="in0")]
    proto, bound = _convert(em, inner, tf.function(lambda a: inner(a), input_signature=spec), spec, tf, tf2onnx)
    bound[proto.graph.input[0].name] = flat
    y = _add_subgraph(g, proto.graph, bound, g.fresh(name))[0]
    batch_time = g.op("Slice", [g.op("Shape", [x.name], name=f"{name}/Shape"), g.ints([0]), g.ints([2])],
                      name=f"{name}/batch_time")
    shape = g.op("Concat", [batch_time, g.ints(out_shape[2:])], name=f"{name}/shape", axis=0) \
        if out_shape[2:] else batch_time
    return Val(g.op("Reshape", [y, shape], name=f"{name}/unflatten_time"), _layout(node.output_tensors[0]),
               x.mask if _layout(node.output_tensors[0]) == "btf" else None)


def _import_tf2onnx(layer):
    try:
        import logging

        import tensorflow as tf
        import tf2onnx
        for log in ("tf2onnx", "tensorflow"):
            logging.getLogger(log).setLevel(logging.ERROR)
        return tf, tf2onnx
    except ImportError as e:
        raise _error(f"layer '{layer.name}' ({type(layer).__name__}) is converted with tf2onnx, which is not "
                     f"installed ({e}); pip install 'lstmrt[keras]'") from None


def _layout(kt) -> str:
    shape = list(kt.shape)
    if len(shape) == 3:
        return "btf" if shape[1] is None else "bnf"
    return {2: "bf"}.get(len(shape), f"rank{len(shape)}")


def splice(em, layer, node, inputs: list) -> list:
    """Convert `layer` (called at `node`) with tf2onnx and add its nodes to the graph."""
    from .keras import Val
    tf, tf2onnx = _import_tf2onnx(layer)
    tensors = list(node.arguments.keras_tensors)
    values = [em.tensor(t) for t in tensors]
    values = [em.to(v, "btf") if v.layout == "tbf" else v for v in values]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=f"in{i}") for i, t in enumerate(tensors)]

    def call(*args):
        filled_args, filled_kwargs = node.arguments.fill_in({id(t): a for t, a in zip(tensors, args)})
        return tf.nest.flatten(layer(*filled_args, **filled_kwargs))
    proto, bound = _convert(em, layer, tf.function(call, input_signature=specs), specs, tf, tf2onnx)
    bound.update({i.name: v.name for i, v in zip(proto.graph.input, values)})
    names = _add_subgraph(em.g, proto.graph, bound, prefix=em.g.fresh(layer.name))
    mask = values[0].mask if len(values) == 1 and getattr(layer, "supports_masking", False) else None
    return [Val(n, _layout(kt), mask if _layout(kt) == "btf" else None)
            for n, kt in zip(names, node.output_tensors)]


def _convert(em, layer, fn, specs, tf, tf2onnx) -> tuple:
    """(ONNX graph of `fn`, {its inputs that are captured constants: our initializer})."""
    from . import ExportError
    kind = type(layer).__name__
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=em.g_opset)
    except Exception as e:   # tf2onnx raises anything from ValueError to its own errors
        text = str(e).strip().splitlines()
        raise ExportError(
            f"layer '{layer.name}' ({kind}) could not be converted: tf2onnx says {type(e).__name__}: "
            f"{text[0] if text else ''}; {_way_out(kind)}") from None
    bad = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)]
    if bad:
        raise ExportError(f"layer '{layer.name}' ({kind}) uses TensorFlow ops that have no ONNX equivalent "
                          f"({', '.join(sorted({n.op_type for n in bad}))}); {_way_out(kind)}")
    # tensors the function captures (not variables, which tf2onnx freezes) stay graph inputs: bind their values
    captured = {internal.name: external for external, internal in fn.get_concrete_function().graph.captures}
    bound = {}
    for extra in list(proto.graph.input)[len(specs):]:
        value = captured.get(extra.name)
        if value is None or not hasattr(value, "numpy"):
            raise ExportError(f"layer '{layer.name}' ({kind}) reads a value tf2onnx left as an input "
                              f"('{extra.name}'); {_way_out(kind)}")
        bound[extra.name] = em.g.const(np.asarray(value.numpy()), f"{layer.name}.captured")
    return proto, bound


def _way_out(kind: str) -> str:
    if kind == "Lambda":
        return ("rewrite the Lambda with built-in Keras layers (or keras.ops that TensorFlow traces), or export "
                "the part of the model before/after it")
    return "use built-in Keras layers there, or export the model without this layer"


def _add_subgraph(g, graph: onnx.GraphProto, bound: dict, prefix: str) -> list:
    """Copy `graph`'s nodes and constants into `g` under `prefix`; its inputs are read from
    `bound` {input: our value}.  Returns our names of its outputs."""
    rename = dict(bound)

    def name(v):
        if not v:
            return v
        if v not in rename:
            rename[v] = g.fresh(f"{prefix}/{v}")
        return rename[v]
    for init in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = name(init.name)
        g.initializers.append(copy)
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = g.fresh(f"{prefix}/{node.name or node.op_type}")
        copy.ClearField("input")
        copy.ClearField("output")
        copy.input.extend(name(i) for i in node.input)
        copy.output.extend(name(o) for o in node.output)
        g.nodes.append(copy)
    return [name(o.name) for o in graph.output]


def activation_layer(em, y: str, fn, layer_name: str) -> str:
    """An activation the graph builder has no op for, converted with tf2onnx as a Keras
    Activation layer (elementwise, so any layout)."""
    import keras
    act = keras.layers.Activation(fn, name=f"{layer_name}_activation")
    tf, tf2onnx = _import_tf2onnx(act)
    spec = [tf.TensorSpec(None, tf.float32, name="in0")]
    proto, bound = _convert(em, act, tf.function(lambda a: act(a), input_signature=spec), spec, tf, tf2onnx)
    bound[proto.graph.input[0].name] = y
    return _add_subgraph(em.g, proto.graph, bound, em.g.fresh(f"{layer_name}/activation"))[0]

