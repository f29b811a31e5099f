"""Which graph inputs each value's *data* is computed from, through every op and into
If/Loop/Scan bodies.

Inputs that only give a value its shape (Shape, Size, ConstantOfShape, the shape operand of
Reshape/Expand/Slice/...) and an If's condition or a Loop's trip count/condition are left out:
they say how much or which branch, not what the values are.  That makes "this output is
computed from that input" mean what a state pairing needs.
"""
from __future__ import annotations

from onnx import GraphProto

_EMPTY: frozenset = frozenset()
_ALL = None   # every input of the op is shape or control only
# op -> the input slots that carry shape or control, not data
SHAPE_OR_CONTROL_SLOTS = {
    "Shape": _ALL, "Size": _ALL, "ConstantOfShape": _ALL, "EyeLike": _ALL,
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1},
    "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Resize": {1, 2, 3}, "TopK": {1}, "CumSum": {1},
    "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
    "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSumExp": {1}, "ReduceSumSquare": {1},
    "If": {0}, "Loop": {0, 1},
}


def _data_inputs(node) -> list:
    skip = SHAPE_OR_CONTROL_SLOTS.get(node.op_type, set())
    if skip is _ALL:
        return []
    return [name for slot, name in enumerate(node.input) if name and slot not in skip]


def _bodies(node) -> list:
    graphs = []
    for attr in node.attribute:
        if attr.type == attr.GRAPH:
            graphs.append(attr.g)
        elif attr.type == attr.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _union(sets) -> frozenset:
    out = set()
    for s in sets:
        out |= s
    return frozenset(out)


def data_sources(graph: GraphProto, outer: dict) -> dict:
    """{value name: frozenset of source names} for every value of `graph`, given the sources of
    the names it can see from outside (`outer`: graph inputs map to themselves)."""
    sources = dict(outer)
    for init in graph.initializer:
        sources[init.name] = _EMPTY
    for value in graph.input:
        sources.setdefault(value.name, _EMPTY)
    for node in graph.node:
        from_inputs = _union(sources.get(name, _EMPTY) for name in _data_inputs(node))
        bodies = _bodies(node)
        if node.op_type == "If" and len(bodies) == 2:
            # each output is one branch's output k or the other's: follow both, precisely
            per_branch = [data_sources(body, sources) for body in bodies]
            for k, out in enumerate(node.output):
                sources[out] = _union(s.get(body.output[k].name, _EMPTY) for s, body in zip(per_branch, bodies)
                                      if k < len(body.output))
            continue
        if bodies:
            # Loop/Scan: a carried value may pass through any number of iterations; take everything
            # the bodies compute from, with their own inputs standing for the node's data inputs
            for body in bodies:
                inner_outer = dict(sources)
                inner_outer.update({v.name: from_inputs for v in body.input})
                inner = data_sources(body, inner_outer)
                from_inputs = from_inputs | _union(inner.get(o.name, _EMPTY) for o in body.output)
        for out in node.output:
            if out:
                sources[out] = from_inputs
    return sources


def graph_data_sources(model) -> dict:
    """{value name: frozenset of graph inputs} for the model's main graph."""
    return data_sources(model.graph, {i.name: frozenset([i.name]) for i in model.inputs})
