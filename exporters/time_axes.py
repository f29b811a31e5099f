"""Where the time axis is inside an exported graph: traced back from the recurrent nodes to
the inputs, followed forward from the inputs, or measured (the model run on onnxruntime at two
sequence lengths: the axis whose size follows is time).  Also the small graph reader the time
layers use (producers, consumers, values computed from constants)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TIME_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class GraphReader:
    """Producers, consumers and constant values of a graph, for reading patterns."""

    def __init__(self, graph):
        self.graph = graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and attr(n, "value") is not None:
                self.consts[n.output[0]] = numpy_helper.to_array(attr(n, "value"))
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


def followed_time_axes(g: GraphReader, model, seq_inputs: dict) -> dict:
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
        if op == "Transpose" and attr(node, "perm") is not None:
            out = list(attr(node, "perm")).index(a)
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
            out = 0 if attr(node, "layout", 0) == 0 else 1
        elif op in _SAME_AXES or op == "Concat":
            out = a
        if out is not None and node.output and node.output[0]:
            times[node.output[0]] = out
    return times


PROBE_STEPS = (16, 24)   # two sequence lengths, multiples of any common stride


def measured_time_axes(model: onnx.ModelProto, seq_inputs: dict) -> dict:
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


# ops through which a value keeps its batch and time axes where they were
_SAME_AXES = {"Identity", "Cast", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "Dropout", "Add", "Sub", "Mul",
              "Div", "Slice", "Pad", "MatMul", "Softmax", "Erf", "Abs", "Neg", "Sqrt", "Exp", "Conv", "MaxPool",
              "AveragePool", "BatchNormalization", "LayerNormalization", "Elu", "HardSigmoid", "Softplus"}


def trace_sequence_axes(model: onnx.ModelProto) -> dict:
    """{graph input: (batch axis, time axis)} for the inputs the recurrent nodes' X comes from,
    traced back through transposes, (un)squeezes, convolutions and elementwise ops."""
    g = GraphReader(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inputs = {i.name for i in model.graph.input} - set(g.consts)
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        layout = attr(node, "layout", 0)
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


def _axes_before(g: GraphReader, node, value: str, axes: tuple, ranks: dict):
    """(axes, value) of `node`'s data input that become `axes` of its output `value`."""
    op = node.op_type
    data = next((i for i in node.input if i and g.const(i) is None), None)
    if data is None:
        return None, None
    if op == "Transpose":
        perm = attr(node, "perm")
        return (tuple(perm[a] for a in axes), data) if perm is not None else (None, None)
    if op in ("Squeeze", "Unsqueeze"):
        listed = g.const(node.input[1]) if len(node.input) > 1 else np.asarray(attr(node, "axes", []))
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
