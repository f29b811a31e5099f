"""Rewrites of a plan's steps into fewer, before it first runs.

Exporters wrap a batch-first recurrent layer in glue: torch.onnx writes
    Transpose(perm=[1,0,2]) -> LSTM/GRU/RNN -> Squeeze(axes=[1]) -> Transpose(perm=[1,0,2])
for one `batch_first=True` direction.  Each glue op is a numpy call on a view, but on a
streaming call the three of them and their walk cost about as much as the kernel.  They run
here as one step around the recurrent node, with the same values and the node's own errors.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..ops.recurrent import RecurrentNode


class BatchFirstCell:
    """A recurrent node fed X [B, T, I] and giving Y [B, T, H] (one direction); its state
    inputs and outputs are the node's own."""

    def __init__(self, node: RecurrentNode):
        self.node = node

    def __call__(self, inputs: list) -> list:
        x = inputs[0]
        outputs = self.node([None if x is None else np.swapaxes(x, 0, 1)] + list(inputs[1:]))
        y = outputs[0]   # [T, 1, B, H]: squeezed and batch-first, as views of the node's fresh Y
        return [None if y is None else y[:, 0].swapaxes(0, 1)] + outputs[1:]


def _is_swap01(step) -> bool:
    return step.op_type == "Transpose" and list(step.attrs.get("perm") or []) == [1, 0, 2]


def _squeezes_axis_1(step, constants: dict, opset: int) -> bool:
    if step.op_type != "Squeeze":
        return False
    if opset < 13:
        axes = step.attrs.get("axes")
    else:
        axes = constants.get(step.inputs[1]) if len(step.inputs) > 1 and step.inputs[1] else None
    return axes is not None and [int(a) for a in np.asarray(axes).reshape(-1)] in ([1], [-3])


def fuse_batch_first(steps: list, constants: dict, opset: int, graph_outputs: set) -> list:
    """steps with each batch-first glue pattern around a one-direction recurrent node run as one
    BatchFirstCell step.  Only values nothing else reads (no other step, no graph output) fold."""
    readers = Counter(name for step in steps for name in step.inputs if name)
    producer = {name: step for step in steps for name in step.outputs if name}

    def private(name: str) -> bool:
        return readers[name] == 1 and name not in graph_outputs

    def sole_reader(name: str):
        found = [s for s in steps if name in s.inputs] if private(name) else []
        return found[0] if len(found) == 1 else None

    dropped, fused = set(), {}
    for step in steps:
        node = step.kernel
        if not isinstance(node, RecurrentNode) or node.num_directions != 1 or node.layout != 0 \
                or not step.outputs or not step.outputs[0]:
            continue
        before = producer.get(step.inputs[0])
        squeeze = sole_reader(step.outputs[0])
        after = sole_reader(squeeze.outputs[0]) if squeeze is not None else None
        if before is None or not _is_swap01(before) or not private(step.inputs[0]) or id(before) in dropped:
            continue
        if squeeze is None or not _squeezes_axis_1(squeeze, constants, opset) or after is None \
                or not _is_swap01(after):
            continue
        dropped.update({id(before), id(squeeze), id(after)})
        fused[id(step)] = type(step)(step.name, step.op_type, BatchFirstCell(node),
                                     [before.inputs[0]] + step.inputs[1:],
                                     [after.outputs[0]] + step.outputs[1:], step.attrs)
    return [fused.get(id(step), step) for step in steps if id(step) not in dropped]
