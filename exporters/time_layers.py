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
from .time_axes import TIME_OPS, GraphReader, attr, followed_time_axes, measured_time_axes
from .time_axes import trace_sequence_axes  # noqa: F401  (exporters call it through time_layers)

CHUNKS_KEY = "lstmrt.stream_chunks"           # {"multiple": M, "inputs": {input: time axis}, "layers": {layer: stride}}
NOT_STREAMABLE_KEY = "lstmrt.not_streamable"  # why the model cannot stream, naming the layer
BIG = 2 ** 62


def layer_name(node) -> str:
    """The framework's layer path from an exporter's node name ('/front/conv/Conv' -> 'front.conv')."""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else (node.name or node.op_type)


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
        ceil = bool(attr(self.node, "ceil_mode", 0))
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
    auto = attr(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        return 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = max(0, (kernel - 1) * dilation + 1 - stride)   # for lengths that are multiples of stride
        small, large = total // 2, total - total // 2
        return (small, large) if auto == "SAME_UPPER" else (large, small)
    pads = list(attr(node, "pads", [0] * 2 * rank))
    return pads[axis - 2], pads[axis - 2 + rank]


def _zero_pad_on(g: GraphReader, node, axis: int) -> tuple[int, int] | None:
    """(left, right) of a constant-zero Pad node padding only `axis`, else None."""
    if node is None or node.op_type != "Pad" or attr(node, "mode", "constant") != "constant":
        return None
    if len(node.input) > 3 and node.input[3]:
        return None                                  # axes input: rare, not read
    pads = g.const(node.input[1]) if len(node.input) > 1 else np.asarray(attr(node, "pads", []))
    value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
    if pads is None or value is None or np.any(np.asarray(value) != 0):
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    if any(p < 0 for p in pads) or any(pads[a] or pads[a + rank] for a in range(rank) if a != axis):
        return None
    return pads[axis], pads[axis + rank]


def _end_crop(g: GraphReader, node, axis: int, rank: int) -> tuple[int, object] | None:
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


def _crop_after(g: GraphReader, node, axis: int, rank: int):
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


def _time_layer(g: GraphReader, node, time_axis: int | None = None):
    """The TimeLayer of a Conv/pool node; None if it mixes no steps; a string if it cannot be read.
    time_axis: the node input's time axis when traced from the streamed inputs, else None (then
    the one axis the node mixes is taken as time)."""
    if node.op_type == "Conv":
        w = g.const(node.input[1])
        kernels = list(attr(node, "kernel_shape", []) or (w.shape[2:] if w is not None else []))
    else:
        kernels = list(attr(node, "kernel_shape", []))
    rank = len(kernels)
    if not rank:
        return f"layer '{layer_name(node)}' ({node.op_type}): its kernel size is not a constant"
    strides = list(attr(node, "strides", [1] * rank))
    dilations = list(attr(node, "dilations", [1] * rank))
    active = []
    for i in range(rank):
        pads = _pads_of(node, i + 2, rank, kernels[i], strides[i], dilations[i])
        if kernels[i] > 1 or strides[i] > 1 or pads != (0, 0):
            active.append(i)
    if time_axis is not None:   # known: only that axis is time (a 2-D conv's other axis is frequency)
        if time_axis - 2 not in active:   # includes -1: time is not among its axes (TimeDistributed)
            return None
        if len(active) > 1 and attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
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
    g = GraphReader(model.graph)
    times = {}
    if seq_inputs:
        times = followed_time_axes(g, model, seq_inputs)
        times.update(measured_time_axes(model, seq_inputs))
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


def _along_time(model: onnx.ModelProto, layers: list, seq_inputs: dict):
    """(its time layer or None, f) for each node on a streamed input's path, in graph order:
    f is how many input steps one step of the node's input stands for (the strides before it)."""
    by_node = {id(l.node): l for l in layers}
    factor = {name: Fraction(1) for name in seq_inputs}
    for node in model.graph.node:
        known = [factor[i] for i in node.input if i in factor]
        if not known:
            continue
        f = max(known)
        layer = by_node.get(id(node))
        yield layer, f
        if layer is not None:
            f = f * layer.stride
        for o in node.output:
            if o:
                factor[o] = f


def chunk_multiple(model: onnx.ModelProto, layers: list, seq_inputs: dict) -> tuple[int, dict]:
    """(M, {layer: its compounded stride}): a chunk of M steps of the streamed inputs gives
    every strided layer whole strides."""
    needs = {layer.name: f * layer.stride for layer, f in _along_time(model, layers, seq_inputs)
             if layer is not None and layer.stride > 1}
    multiple = 1
    for f in needs.values():
        multiple = math.lcm(multiple, f.numerator)
    return multiple, {k: int(v) for k, v in needs.items()}


def min_steps(model: onnx.ModelProto, seq_inputs: dict) -> int:
    """The fewest input steps every time layer gets at least one step from (a valid conv or a
    pooling window needs its span); shorter inputs fail in the framework too."""
    layers, _ = find(model, seq_inputs)
    need = 1
    for layer, f in _along_time(model, layers, seq_inputs):
        if layer is None:
            continue
        span = (layer.kernel - 1) * layer.dilation + 1
        steps = max(1, span - layer.left - layer.right)
        while layer.kept(steps) < 1:
            steps += 1
        need = max(need, math.ceil(steps * f))
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
        return [batch, int(weight.shape[1]) * int(attr(layer.node, "group", 1)), layer.left]
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
    kernels = list(attr(node, "kernel_shape", []) or [1] * rank)
    strides, dilations = list(attr(node, "strides", [1] * rank)), list(attr(node, "dilations", [1] * rank))
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
    """Dead nodes out; the values If/Loop bodies read count as used (streamify's own pruning)."""
    from .streamify import _prune as prune_reading_bodies
    prune_reading_bodies(graph)


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
