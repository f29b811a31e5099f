"""Finding a model's recurrent state from its graph structure.

A graph input that reaches a recurrent node's initial_h / initial_c (through
glue ops) is paired with the graph output that comes from the same node's
Y_h / Y_c.  Output names ("Identity_1:0") carry no meaning; structure does.
"""
from __future__ import annotations

import json

from .errors import StreamError
from .model import Model

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
# ops that move or reshape data without mixing it: state flows through them unchanged in meaning
GLUE_OPS = {"Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Slice", "Split", "Gather",
            "Concat", "Cast", "Expand", "Flatten"}
STATE_INPUT_SLOTS = {5: "h", 6: "c"}     # initial_h, initial_c
STATE_OUTPUT_SLOTS = {1: "h", 2: "c"}    # Y_h, Y_c
METADATA_KEY = "lstmrt.state_pairs"      # JSON {state input: state output}, written by our exporter


def _node_key(model: Model, node) -> str:
    return node.name or f"#{list(model.graph.node).index(node)}"


def reached_state_slots(model: Model, value: str) -> frozenset:
    """(node, "h"|"c") for every recurrent state input `value` feeds through glue."""
    consumers, found, todo, seen = model.consumers(), set(), [value], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, slot in consumers.get(name, []):
            if node.op_type in RECURRENT_OPS and slot in STATE_INPUT_SLOTS:
                found.add((_node_key(model, node), STATE_INPUT_SLOTS[slot]))
            elif node.op_type in GLUE_OPS and (slot == 0 or node.op_type == "Concat"):
                todo.extend(o for o in node.output if o)
    return frozenset(found)


def source_state_slots(model: Model, value: str) -> frozenset:
    """(node, "h"|"c") for every recurrent final state that `value` is built from through glue."""
    producers, found, todo, seen = model.producers(), set(), [value], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        node, slot = producers[name]
        if node.op_type in RECURRENT_OPS and slot in STATE_OUTPUT_SLOTS:
            found.add((_node_key(model, node), STATE_OUTPUT_SLOTS[slot]))
        elif node.op_type in GLUE_OPS:
            todo.extend(i for i in (node.input if node.op_type == "Concat" else node.input[:1]) if i)
    return frozenset(found)


def find_state_pairs(model: Model) -> dict:
    """{state input name: state output name}: metadata first, else the graph's structure."""
    if METADATA_KEY in model.metadata:
        return dict(json.loads(model.metadata[METADATA_KEY]))
    sources = {o.name: source_state_slots(model, o.name) for o in model.outputs}
    pairs = {}
    for inp in model.inputs:
        reached = reached_state_slots(model, inp.name)
        match = next((o for o, s in sources.items() if s and s == reached and o not in pairs.values()), None)
        if reached and match:
            pairs[inp.name] = match
    return pairs


def _check_shapes(model: Model, pairs: dict) -> None:
    for inp, out in pairs.items():
        a, b = model.input(inp).shape, model.output(out).shape
        if a is None or b is None:
            continue
        fixed_differs = any(isinstance(x, int) and isinstance(y, int) and x and y and x != y for x, y in zip(a, b))
        if len(a) != len(b) or fixed_differs:
            raise StreamError(f"state output '{out}' has shape {b} but its input '{inp}' has shape {a}; "
                              "a stream must feed one back into the other")


def streaming_pairs(model: Model, explicit: dict | None = None) -> dict:
    """The state pairs a stream will carry, or StreamError saying why the model cannot stream."""
    recurrent = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    for node in recurrent:
        direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
        if direction != "forward":
            raise StreamError(f"node '{_node_key(model, node)}' ({node.op_type}) runs {direction} over time; "
                              "a stream only sees the past, so only forward recurrences can stream")
    if explicit is not None:
        pairs = dict(explicit)
        inputs, outputs = {i.name for i in model.inputs}, {o.name for o in model.outputs}
        for inp, out in pairs.items():
            if inp not in inputs or out not in outputs:
                raise StreamError(f"state pair {inp!r} -> {out!r}: {inp!r} must be a graph input "
                                  f"({sorted(inputs)}) and {out!r} a graph output ({sorted(outputs)})")
    else:
        pairs = find_state_pairs(model)
        carried = set().union(*[reached_state_slots(model, i) for i in pairs]) if pairs else set()
        for node in recurrent:
            kinds = ("h", "c") if node.op_type == "LSTM" else ("h",)
            missing = [k for k in kinds if (_node_key(model, node), k) not in carried]
            if missing:
                raise StreamError(
                    f"node '{_node_key(model, node)}' ({node.op_type}): its initial_{'/initial_'.join(missing)} "
                    "is not a graph input paired with its final state output, so its state would restart at "
                    "every chunk; pass state={input: output} to stream() if the pairing exists")
    _check_shapes(model, pairs)
    return pairs


def _traced_input_axes(model: Model, axis_of_layout: dict) -> dict:
    """{graph input: axis} for inputs that feed a recurrent node's X, traced back from the
    node's axis (by layout) through Transpose and shape-preserving ops."""
    producers, axes = model.producers(), {}
    graph_inputs = {i.name for i in model.inputs}
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if layout not in axis_of_layout or not node.input:   # a malformed node: nothing to trace
            continue
        name, axis = node.input[0], axis_of_layout[layout]
        while name not in graph_inputs and name in producers:
            prod, _ = producers[name]
            if prod.op_type == "Transpose":
                perm = next((list(a.ints) for a in prod.attribute if a.name == "perm"), None)
                if perm is None or not 0 <= axis < len(perm):   # no perm, or one of the wrong rank
                    break
                axis = perm[axis]
            elif prod.op_type not in ("Identity", "Cast", "Relu", "Tanh", "Sigmoid", "Dropout"):
                break
            name = prod.input[0]
        if name in graph_inputs:
            axes.setdefault(name, axis)
    return axes


def batch_axes(model: Model) -> dict:
    """{graph input: its batch axis} for inputs that feed recurrent nodes."""
    return _traced_input_axes(model, {0: 1, 1: 0})


def time_axes(model: Model) -> dict:
    """{graph input: its time axis} for inputs that feed recurrent nodes."""
    return _traced_input_axes(model, {0: 0, 1: 1})
