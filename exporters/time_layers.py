"""Convolutions and pooling along the time axis of an exported model, and what streaming
through them takes.

A stream cuts the sequence into chunks; a layer that mixes neighbouring steps then needs
the steps of the previous chunk.  Read from the ONNX graph (so it serves every framework):

- causal (left-padded) Conv: the zeros padded on the left become a state input holding the
  last `left` frames of the layer's input; its output pair returns them for the next chunk.
  From zero state this is exactly the padded layer, so whole calls are unchanged.
- strided layers: a chunk must hold a whole number of strides (compounded through the
  stack); recorded in metadata (CHUNKS_KEY), which `stream()` enforces with an InputError.
- a layer that looks ahead (centred / "same" padding), or that shortens the sequence
  ("valid" padding), cannot stream exactly: the model is exported without state and the
  reason goes to metadata (NOT_STREAMABLE_KEY), which `stream()` turns into a StreamError.

Padding is read from the layer's pads, a zero Pad node feeding it, and a Slice that crops
the end of its output (PyTorch's pad-both-sides-then-crop causal idiom).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_build import METADATA_KEY

CHUNKS_KEY = "lstmrt.stream_chunks"           # {"multiple": M, "inputs": {input: time axis}, "layers": {layer: stride}}
NOT_STREAMABLE_KEY = "lstmrt.not_streamable"  # why the model cannot stream, naming the layer
TIME_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")
BIG = 2 ** 62


def layer_name(node) -> str:
    """The framework's layer path from an exporter's node name ('/front/conv/Conv' -> 'front.conv')."""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else (node.name or node.op_type)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class _Graph:
    """Producers, consumers and constant values of a graph, for reading patterns."""

    def __init__(self, graph):
        self.graph = graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and _attr(n, "value") is not None:
                self.consts[n.output[0]] = numpy_helper.to_array(_attr(n, "value"))
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def const(self, name, depth: int = 0):
        """The value of `name` if it is computed from constants only (exporters build pads
        with small Shape-free subgraphs), else None."""
        if not name:
            return None
        if name in self.consts or depth > 32:
            return self.consts.get(name)
        node = self.producer.get(name)
        if node is None or node.op_type in ("Shape", "Size") or node.attribute and any(
                a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            return None
        values = [self.const(i, depth + 1) if i else None for i in node.input]
        if any(v is None for v, i in zip(values, node.input) if i):
            return None
        from onnx.reference import ReferenceEvaluator
        try:
            results = ReferenceEvaluator(node).run(None, {i: v for i, v in zip(node.input, values) if i})
        except Exception:   # an op the reference cannot run: treat as not constant
            return None
        for out, value in zip(node.output, results):
            self.consts[out] = np.asarray(value)
        return self.consts.get(name)

    def sole_consumer(self, value):
        users = self.consumers.get(value, [])
        return users[0] if len(users) == 1 and value not in self.outputs else None


@dataclass
class TimeLayer:
    node: object
    axis: int                 # the time axis of the node's input (a spatial axis, >= 2)
    kernel: int
    stride: int
    dilation: int
    left: int                 # zero frames before the sequence (node pads + a Pad node)
    right: int
    crop: int                 # frames a following Slice drops from the end
    pad_node: object = None   # a zero Pad feeding only this node, folded into left/right

    @property
    def name(self) -> str:
        return layer_name(self.node)

    def kept(self, steps: int) -> int:
        """Output steps for `steps` input steps, after the crop."""
        span = (self.kernel - 1) * self.dilation + 1
        room = steps + self.left + self.right - span
        ceil = bool(_attr(self.node, "ceil_mode", 0))
        return (-(-room // self.stride) if ceil else room // self.stride) + 1 - self.crop

    def problem(self) -> str | None:
        """Why a stream cannot reproduce this layer exactly, or None."""
        what = f"layer '{self.name}' ({self.node.op_type}, kernel {self.kernel}, stride {self.stride}, " \
               f"dilation {self.dilation}, padding {self.left} left / {self.right} right" \
               + (f", last {self.crop} output steps cropped" if self.crop else "") + ")"
        ahead = (self.kernel - 1) * self.dilation - self.left - (self.stride - 1)
        if ahead > 0:
            return (f"{what} looks {ahead} step(s) ahead: each output depends on later inputs, so chunks cannot "
                    "reproduce it; for streaming pad it causally (Keras padding='causal'; PyTorch: pad "
                    "(kernel-1)*dilation on the left only, or on both sides and crop the right)")
        for steps in (self.stride, 2 * self.stride):
            if self.kept(steps) != steps // self.stride:
                return (f"{what} turns {steps} steps into {self.kept(steps)}, not {steps // self.stride}: it "
                        "changes the sequence length, so chunks cannot add up to the whole call")
        if self.left and self.node.op_type != "Conv":
            return f"{what} pads its input with other than zeros, which a carried context cannot reproduce"
        return None


def _pads_of(node, axis: int, rank: int, kernel: int, stride: int, dilation: int) -> tuple[int, int] | None:
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        return 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = max(0, (kernel - 1) * dilation + 1 - stride)   # for lengths that are multiples of stride
        small, large = total // 2, total - total // 2
        return (small, large) if auto == "SAME_UPPER" else (large, small)
    pads = list(_attr(node, "pads", [0] * 2 * rank))
    return pads[axis - 2], pads[axis - 2 + rank]


def _zero_pad_on(g: _Graph, node, axis: int) -> tuple[int, int] | None:
    """(left, right) of a constant-zero Pad node padding only `axis`, else None."""
    if node is None or node.op_type != "Pad" or _attr(node, "mode", "constant") != "constant":
        return None
    if len(node.input) > 3 and node.input[3]:
        return None                                  # axes input: rare, not read
    pads = g.const(node.input[1]) if len(node.input) > 1 else np.asarray(_attr(node, "pads", []))
    value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
    if pads is None or value is None or np.any(np.asarray(value) != 0):
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    if any(p < 0 for p in pads) or any(pads[a] or pads[a + rank] for a in range(rank) if a != axis):
        return None
    return pads[axis], pads[axis + rank]


def _end_crop(g: _Graph, node, axis: int, rank: int) -> tuple[int, object] | None:
    """(frames dropped from the end of `axis`, the Slice) for a Slice [0:-n] on that axis only."""
    if node is None or node.op_type != "Slice" or len(node.input) < 3:
        return None
    starts, ends = g.const(node.input[1]), g.const(node.input[2])
    axes = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = g.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None):
        return None
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes.reshape(-1)]
    if len(axes) != 1 or axes[0] % rank != axis or int(starts.reshape(-1)[0]) != 0:
        return None
    if steps is not None and int(steps.reshape(-1)[0]) != 1:
        return None
    end = int(ends.reshape(-1)[0])
    if end >= BIG // 4:
        return 0, node
    return (-end, node) if end < 0 else None


def _crop_after(g: _Graph, node, axis: int, rank: int):
    """_end_crop of the Slice that follows `node` through a bias Add, Identity/Cast and (un)squeezes
    (paddle2onnx writes a 1-D conv as Unsqueeze, 2-D Conv, Add bias, Squeeze)."""
    value = node.output[0]
    for _ in range(8):
        user = g.sole_consumer(value)
        if user is None:
            return None
        if user.op_type == "Slice":
            return _end_crop(g, user, axis, rank)
        if user.op_type in ("Squeeze", "Unsqueeze") and len(user.input) > 1:
            listed = g.const(user.input[1])
            if listed is None:
                return None
            listed = [int(a) for a in listed.reshape(-1)]
            if user.op_type == "Squeeze":
                listed = [a % rank for a in listed]
                if axis in listed:
                    return None
                axis, rank = axis - sum(1 for a in listed if a < axis), rank - len(listed)
            else:
                rank += len(listed)
                for a in sorted(a % rank for a in listed):
                    axis += a <= axis
        elif not (user.op_type in ("Identity", "Cast") or
                  user.op_type == "Add" and any(g.const(i) is not None for i in user.input if i != value)):
            return None
        value = user.output[0]
    return None


def _time_layer(g: _Graph, node, time_axis: int | None = None):
    """The TimeLayer of a Conv/pool node; None if it mixes no steps; a string if it cannot be read.
    time_axis: the node input's time axis when traced from the streamed inputs, else None (then
    the one axis the node mixes is taken as time)."""
    if node.op_type == "Conv":
        w = g.const(node.input[1])
        kernels = list(_attr(node, "kernel_shape", []) or (w.shape[2:] if w is not None else []))
    else:
        kernels = list(_attr(node, "kernel_shape", []))
    rank = len(kernels)
    if not rank:
        return f"layer '{layer_name(node)}' ({node.op_type}): its kernel size is not a constant"
    strides = list(_attr(node, "strides", [1] * rank))
    dilations = list(_attr(node, "dilations", [1] * rank))
    active = []
    for i in range(rank):
        pads = _pads_of(node, i + 2, rank, kernels[i], strides[i], dilations[i])
        if kernels[i] > 1 or strides[i] > 1 or pads != (0, 0):
            active.append(i)
    if time_axis is not None:   # known: only that axis is time (a 2-D conv's other axis is frequency)
        if time_axis - 2 not in active:   # includes -1: time is not among its axes (TimeDistributed)
            return None
        if len(active) > 1 and _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return (f"layer '{layer_name(node)}' ({node.op_type}) pads several axes with auto_pad; give it explicit "
                    "pads to stream it")
        active = [time_axis - 2]
    if not active:
        return None
    if len(active) > 1:
        return (f"layer '{layer_name(node)}' ({node.op_type}) mixes steps along {len(active)} axes; lstmrt cannot "
                "tell which is time, so it does not stream it")
    i = active[0]
    axis = i + 2
    left, right = _pads_of(node, axis, rank, kernels[i], strides[i], dilations[i])
    pad_node = g.producer.get(node.input[0])
    folded = _zero_pad_on(g, pad_node, axis) if node.op_type == "Conv" else None
    if folded and g.sole_consumer(pad_node.output[0]) is node:
        left, right = left + folded[0], right + folded[1]
    else:
        pad_node = None
    crop = _crop_after(g, node, axis, rank + 2)
    return TimeLayer(node, axis, kernels[i], strides[i], dilations[i], left, right, crop[0] if crop else 0, pad_node)


def find(model: onnx.ModelProto, seq_inputs: dict | None = None) -> tuple[list, list]:
    """(TimeLayers, reasons the model cannot stream exactly) for the model's main graph.
    seq_inputs {input: (batch axis, time axis)}: where time is, followed through the graph."""
    _prune(model.graph)   # builders leave dead glue (e.g. a Transpose a later layer bypassed)
    g = _Graph(model.graph)
    times = {}
    if seq_inputs:
        times = _time_axes_forward(g, model, seq_inputs)
        times.update(_probe_time_axes(model, seq_inputs))
    layers, problems = [], []
    for node in model.graph.node:
        if node.op_type in TIME_OPS:
            found = _time_layer(g, node, times.get(node.input[0]))
            if isinstance(found, str):
                problems.append(found)
            elif found is not None:
                layers.append(found)
                if found.problem():
                    problems.append(found.problem())
    return layers, problems


def _time_axes_forward(g: _Graph, model, seq_inputs: dict) -> dict:
    """{value: its time axis} from the streamed inputs forward, through transposes, (un)squeezes,
    convolutions and elementwise ops; a value whose time axis is lost (reshaped into the batch,
    e.g. TimeDistributed) is left out."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)}
    times = {name: t for name, (_, t) in seq_inputs.items()}
    for node in model.graph.node:
        data = next((i for i in node.input if i in times), None)
        if data is None:
            continue
        a, op, out = times[data], node.op_type, None
        if op == "Transpose" and _attr(node, "perm") is not None:
            out = list(_attr(node, "perm")).index(a)
        elif op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and g.const(node.input[1]) is not None:
            listed = [int(x) for x in g.const(node.input[1]).reshape(-1)]
            if op == "Squeeze" and data in ranks:
                listed = [x % ranks[data] for x in listed]
                out = None if a in listed else a - sum(1 for x in listed if x < a)
            elif op == "Unsqueeze" and data in ranks:
                for x in sorted(x % (ranks[data] + len(listed)) for x in listed):
                    a += x <= a
                out = a
        elif op in ("LSTM", "GRU", "RNN"):
            out = 0 if _attr(node, "layout", 0) == 0 else 1
        elif op in _SAME_AXES or op == "Concat":
            out = a
        if out is not None and node.output and node.output[0]:
            times[node.output[0]] = out
    return times


PROBE_STEPS = (16, 24)   # two sequence lengths, multiples of any common stride


def _probe_time_axes(model: onnx.ModelProto, seq_inputs: dict) -> dict:
    """{input of each Conv/pool: its time axis, or -1 if none} measured: the model runs on
    onnxruntime at two sequence lengths and the axis whose size follows is time.  A conv inside
    TimeDistributed sees time folded into its batch axis: -1.  Empty if the model cannot run so."""
    import onnxruntime as ort
    targets = sorted({n.input[0] for n in model.graph.node if n.op_type in TIME_OPS})
    if not targets:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in targets
                              if t not in known)
    consts = {t.name for t in model.graph.initializer}
    names = {seq: (model_dims(model, seq)[b], model_dims(model, seq)[t]) for seq, (b, t) in seq_inputs.items()}
    batch_names = {b for b, _ in names.values() if isinstance(b, str)} | {"batch"}   # streamify's fallback name
    time_names = {t for _, t in names.values() if isinstance(t, str)}
    shapes = []
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for steps in PROBE_STEPS:
            feeds = {}
            for inp in sess.get_inputs():
                if inp.name in consts:
                    continue
                dims = []
                for a, d in enumerate(inp.shape):
                    if inp.name in seq_inputs and a == seq_inputs[inp.name][1] or d in time_names:
                        dims.append(steps)
                    elif inp.name in seq_inputs and a == seq_inputs[inp.name][0] or d in batch_names:
                        dims.append(2)
                    else:
                        dims.append(d if isinstance(d, int) and d > 0 else 1)
                dtype = np.int64 if "int64" in inp.type else np.int32 if "int32" in inp.type else np.float32
                feeds[inp.name] = np.zeros(dims, dtype) if dtype != np.float32 else \
                    np.random.default_rng(0).standard_normal(dims).astype(np.float32)
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            shapes.append({t: outs[t].shape for t in targets})
    except Exception:   # a model that cannot run at these lengths: fall back to tracing
        return {}
    found = {}
    for t in targets:
        moved = [a for a, (x, y) in enumerate(zip(shapes[0][t], shapes[1][t])) if x != y]
        if len(moved) == 1:
            found[t] = moved[0] if moved[0] >= 2 else -1
        elif not moved:
            found[t] = -1
    return found


def model_dims(model, name: str) -> list:
    info = next(i for i in model.graph.input if i.name == name)
    return [d.dim_param or (d.dim_value if d.dim_value > 0 else None) for d in info.type.tensor_type.shape.dim]


def chunk_multiple(model: onnx.ModelProto, layers: list, seq_inputs: dict) -> tuple[int, dict]:
    """(M, {layer: its compounded stride}): a chunk of M steps of the streamed inputs gives
    every strided layer whole strides."""
    by_node = {id(l.node): l for l in layers}
    factor = {name: Fraction(1) for name in seq_inputs}
    needs = {}
    for node in model.graph.node:
        known = [factor[i] for i in node.input if i in factor]
        if not known:
            continue
        f = max(known)
        layer = by_node.get(id(node))
        if layer is not None and layer.stride > 1:
            f = f * layer.stride
            needs[layer.name] = f
        for o in node.output:
            if o:
                factor[o] = f
    multiple = 1
    for f in needs.values():
        multiple = math.lcm(multiple, f.numerator)
    return multiple, {k: int(v) for k, v in needs.items()}


def min_steps(model: onnx.ModelProto, seq_inputs: dict) -> int:
    """The fewest input steps every time layer gets at least one step from (a valid conv or a
    pooling window needs its span); shorter inputs fail in the framework too."""
    layers, _ = find(model, seq_inputs)
    by_node = {id(l.node): l for l in layers}
    factor = {name: Fraction(1) for name in seq_inputs}
    need = 1
    for node in model.graph.node:
        known = [factor[i] for i in node.input if i in factor]
        if not known:
            continue
        f = max(known)
        layer = by_node.get(id(node))
        if layer is not None:
            span = (layer.kernel - 1) * layer.dilation + 1
            steps = max(1, span - layer.left - layer.right)
            while layer.kept(steps) < 1:
                steps += 1
            need = max(need, math.ceil(steps * f))
            f = f * layer.stride
        for o in node.output:
            if o:
                factor[o] = f
    return need


def shapes_from(steps: int):
    """Verification shapes (batch, time) for a model that needs at least `steps` steps, or None
    for the default ones (T=1 included)."""
    return None if steps <= 1 else [(2, max(7, steps)), (1, steps), (3, max(12, 2 * steps))]


def _fresh(model, base: str) -> str:
    used = ({v for n in model.graph.node for v in list(n.input) + list(n.output)}
            | {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
            | {t.name for t in model.graph.initializer})
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    return name


def _context_shape(model, layer: TimeLayer, batch) -> list | None:
    """[batch, channels, ..., left] of the frames a Conv carries, or None if a dim is unknown."""
    source = layer.pad_node.input[0] if layer.pad_node is not None else layer.node.input[0]
    weight = next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == layer.node.input[1]), None)
    if weight is not None and weight.ndim == 3:   # 1-D: [batch, channels, time]
        return [batch, int(weight.shape[1]) * int(_attr(layer.node, "group", 1)), layer.left]
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    info = infos.get(source)
    if info is None:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    if len(dims) < 3 or any(d is None for a, d in enumerate(dims) if a not in (0, layer.axis)):
        return None
    dims[0], dims[layer.axis] = batch, layer.left
    return dims


def lift_context(model: onnx.ModelProto, layer: TimeLayer, batch) -> tuple[str, str] | None:
    """Replace the layer's left zero padding by a state input of its last `left` input frames
    (in place); returns (state input, state output), or None if its shape cannot be read."""
    shape = _context_shape(model, layer, batch)
    if shape is None:
        return None
    node, base = layer.node, layer.name.replace("/", ".")
    # a folded Pad node is bypassed (pruned later): its right side moves into the node's pads
    source = layer.pad_node.input[0] if layer.pad_node is not None else node.input[0]
    state_in = _fresh(model, f"{base}.context_in")
    joined = _fresh(model, f"{base}.with_context")
    state_out = _fresh(model, f"{base}.context_out")
    consts = []
    for cname, value in ((f"{base}.context_start", -layer.left), (f"{base}.context_end", BIG),
                         (f"{base}.context_axis", layer.axis)):
        cname = _fresh(model, cname)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray([value], np.int64), cname))
        consts.append(cname)
    new = [helper.make_node("Concat", [state_in, source], [joined], name=_fresh(model, f"{base}/context_concat"),
                            axis=layer.axis),
           helper.make_node("Slice", [joined] + consts, [state_out], name=_fresh(model, f"{base}/context_keep"))]
    node.input[0] = joined
    rank = len(shape) - 2
    kernels = list(_attr(node, "kernel_shape", []) or [1] * rank)
    strides, dilations = list(_attr(node, "strides", [1] * rank)), list(_attr(node, "dilations", [1] * rank))
    pads = [0] * (2 * rank)
    for i in range(rank):   # other spatial axes (frequency) keep their padding
        pads[i], pads[i + rank] = _pads_of(node, i + 2, rank, kernels[i], strides[i], dilations[i])
    pads[layer.axis - 2], pads[layer.axis - 2 + rank] = 0, layer.right
    for a in [a for a in node.attribute if a.name in ("pads", "auto_pad")]:
        node.attribute.remove(a)
    node.attribute.append(helper.make_attribute("pads", pads))
    position = list(model.graph.node).index(node)
    for offset, n in enumerate(new):
        model.graph.node.insert(position + offset, n)
    model.graph.input.append(helper.make_tensor_value_info(state_in, TensorProto.FLOAT, shape))
    model.graph.output.append(helper.make_tensor_value_info(state_out, TensorProto.FLOAT, shape))
    return state_in, state_out


def _prune(graph) -> None:
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _set_meta(model, key: str, value: str) -> None:
    for entry in [p for p in model.metadata_props if p.key == key]:
        model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def mark_not_streamable(model: onnx.ModelProto, reason: str) -> None:
    """Record why `model` cannot stream (stream() raises a StreamError quoting it); drops state pairs."""
    for entry in [p for p in model.metadata_props if p.key in (METADATA_KEY, CHUNKS_KEY)]:
        model.metadata_props.remove(entry)
    _set_meta(model, NOT_STREAMABLE_KEY, reason)


def prepare(model: onnx.ModelProto, state: bool, seq_inputs: dict, lift_recurrent) -> tuple:
    """(model, state pairs, notes) ready to stream through its time layers.

    seq_inputs: {graph input: (batch axis, time axis)} of the streamed inputs.
    lift_recurrent: model -> (model, pairs, notes), lifting the recurrent state (streamify).
    """
    layers, problems = find(model, seq_inputs)
    if not state:
        return model, {}, []
    if problems:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        mark_not_streamable(out, problems[0])
        return out, {}, [f"not streamable: {p}; exported without state" for p in problems]
    original = model
    model, pairs, notes = lift_recurrent(model)
    if not pairs or not layers:
        return model, pairs, notes
    batch = _batch_dim(model, seq_inputs)
    _name_state_batch(model, pairs, batch)
    layers, _ = find(model, seq_inputs)
    for layer in layers:
        if layer.left:
            pair = lift_context(model, layer, batch)
            if pair is None:
                reason = (f"layer '{layer.name}' ({layer.node.op_type}): the shape of its input is not known, so its "
                          "left context cannot be carried")
                plain = onnx.ModelProto()
                plain.CopyFrom(original)
                mark_not_streamable(plain, reason)
                return plain, {}, [f"not streamable: {reason}; exported without state"]
            pairs[pair[0]] = pair[1]
            notes.append(f"layer '{layer.name}' carries its last {layer.left} input step(s) across chunks "
                         f"as state {pair[0]} -> {pair[1]}")
    _prune(model.graph)
    _set_meta(model, METADATA_KEY, json.dumps(pairs))
    multiple, strides = chunk_multiple(model, layers, seq_inputs)
    if multiple > 1:
        _set_meta(model, CHUNKS_KEY, json.dumps({"multiple": multiple,
                                                 "inputs": {n: t for n, (_, t) in seq_inputs.items()},
                                                 "layers": strides}))
        notes.append(f"streams in chunks whose length is a multiple of {multiple} steps (strided layers: "
                     + ", ".join(f"'{k}' x{v}" for k, v in strides.items()) + ")")
    onnx.checker.check_model(model)
    return model, pairs, notes


def _name_state_batch(model, pairs: dict, batch) -> None:
    """Give lifted states the streamed input's batch dim name: streamify falls back to 'batch'
    when a conv front-end hides the input from it, and stream() sizes zero states by name."""
    if not isinstance(batch, str) or batch == "batch":
        return
    names = set(pairs) | set(pairs.values())
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in names:
            for d in value.type.tensor_type.shape.dim:
                if d.dim_param == "batch":
                    d.dim_param = batch


def _batch_dim(model, seq_inputs: dict):
    for inp in model.graph.input:
        if inp.name in seq_inputs:
            d = inp.type.tensor_type.shape.dim[seq_inputs[inp.name][0]]
            return d.dim_param or (d.dim_value if d.dim_value > 0 else "batch")
    return "batch"


# ops through which a value keeps its batch and time axes where they were
_SAME_AXES = {"Identity", "Cast", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "Dropout", "Add", "Sub", "Mul",
              "Div", "Slice", "Pad", "MatMul", "Softmax", "Erf", "Abs", "Neg", "Sqrt", "Exp", "Conv", "MaxPool",
              "AveragePool", "BatchNormalization", "LayerNormalization", "Elu", "HardSigmoid", "Softplus"}


def trace_sequence_axes(model: onnx.ModelProto) -> dict:
    """{graph input: (batch axis, time axis)} for the inputs the recurrent nodes' X comes from,
    traced back through transposes, (un)squeezes, convolutions and elementwise ops."""
    g = _Graph(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inputs = {i.name for i in model.graph.input} - set(g.consts)
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        layout = _attr(node, "layout", 0)
        value, axes = node.input[0], ((1, 0) if layout == 0 else (0, 1))   # (batch, time)
        for _ in range(200):
            if value in inputs:
                found.setdefault(value, axes)
                break
            prod = g.producer.get(value)
            if prod is None:
                break
            axes, value = _axes_before(g, prod, value, axes, ranks)
            if axes is None:
                break
    return found


def _axes_before(g: _Graph, node, value: str, axes: tuple, ranks: dict):
    """(axes, value) of `node`'s data input that become `axes` of its output `value`."""
    op = node.op_type
    data = next((i for i in node.input if i and g.const(i) is None), None)
    if data is None:
        return None, None
    if op == "Transpose":
        perm = _attr(node, "perm")
        return (tuple(perm[a] for a in axes), data) if perm is not None else (None, None)
    if op in ("Squeeze", "Unsqueeze"):
        listed = g.const(node.input[1]) if len(node.input) > 1 else np.asarray(_attr(node, "axes", []))
        rank_in, rank_out = ranks.get(data), ranks.get(value)
        if listed is None or rank_in is None or rank_out is None:
            return None, None
        if op == "Squeeze":
            gone = sorted(int(a) % rank_in for a in listed.reshape(-1))
            kept = [a for a in range(rank_in) if a not in gone]
            return tuple(kept[a] for a in axes), data
        added = sorted(int(a) % rank_out for a in listed.reshape(-1))
        if any(a in added for a in axes):
            return None, None
        return tuple(a - sum(1 for b in added if b < a) for a in axes), data
    if op == "Concat":   # a lifted context joins the sequence: follow the sequence
        rest = [i for i in node.input if i and g.const(i) is None and not i.endswith(".context_in")]
        return (axes, rest[-1]) if rest else (None, None)
    if op in _SAME_AXES:
        return axes, data
    return None, None
