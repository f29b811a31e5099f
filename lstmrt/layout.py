"""Rewriting layout=1 recurrent nodes to layout 0, which onnxruntime requires.

Layout 1 is batch-major: X [B, T, I], states [B, D, H], Y [B, T, D, H].  Transposes
around the node give the same results with a layout-0 node inside.
"""
from __future__ import annotations

import onnx
from onnx import helper

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
_STATE_INPUT_SLOTS = (5, 6)          # initial_h, initial_c
_OUTPUT_PERMS = {0: [2, 0, 1, 3], 1: [1, 0, 2], 2: [1, 0, 2]}   # layout-0 output -> layout-1 output


def _layout(node) -> int:
    return next((a.i for a in node.attribute if a.name == "layout"), 0)


def _rewrite_graph(graph) -> int:
    """Rewrites in place (bodies of If/Loop included); returns how many nodes changed."""
    changed, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                changed += _rewrite_graph(attr.g)
        if node.op_type not in RECURRENT_OPS or _layout(node) != 1:
            nodes.append(node)
            continue
        changed += 1
        tag = f"{node.name or node.op_type}_layout0"
        for slot in [0, *_STATE_INPUT_SLOTS]:
            if slot < len(node.input) and node.input[slot]:
                moved = f"{tag}_in{slot}"
                nodes.append(helper.make_node("Transpose", [node.input[slot]], [moved], perm=[1, 0, 2],
                                              name=f"{tag}_transpose_in{slot}"))
                node.input[slot] = moved
        after = []
        for slot, name in enumerate(node.output):
            if name:
                node.output[slot] = f"{tag}_out{slot}"
                after.append(helper.make_node("Transpose", [node.output[slot]], [name], perm=_OUTPUT_PERMS[slot],
                                              name=f"{tag}_transpose_out{slot}"))
        kept = [a for a in node.attribute if a.name != "layout"]
        del node.attribute[:]
        node.attribute.extend(kept)
        nodes += [node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def to_layout0(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with every recurrent node in layout 0 (the original if none needed it)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy if _rewrite_graph(copy.graph) else model
