"""The native backend: the graph as a plan of numpy ops plus the C recurrent kernel.

Built once per session (model -> plan): every node is checked and turned into
a callable, everything computable from constants is folded, and recurrent
weights are packed.  Running the plan is then a straight walk over the steps.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError, LstmrtError, UnsupportedModelError
from ..model import Model
from ..ops import Kernel, NodeInfo, make_kernel

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclass
class Step:
    name: str
    op_type: str
    kernel: Kernel
    inputs: list
    outputs: list


class NativeBackend:
    name = "native"

    def __init__(self, model: Model, simd: str | None = None):
        self.model = model
        self.constants = dict(model.initializers)
        self.steps: list[Step] = []
        options = {"simd": simd}
        for index, node in enumerate(model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedModelError(
                    f"node '{node.name or index}' uses op {node.domain}:{node.op_type}; "
                    "the native backend runs only the default ONNX domain")
            info = NodeInfo.from_proto(node, index, model.opset, self.constants, options)
            kernel = make_kernel(info)
            step = Step(info.name, node.op_type, kernel, info.inputs, [o for o in info.outputs])
            if node.op_type not in RECURRENT_OPS and all(not n or n in self.constants for n in step.inputs):
                self.constants.update(zip(step.outputs, self._execute(step, self.constants)))
            else:
                self.steps.append(step)

    @staticmethod
    def _execute(step: Step, values: dict) -> list:
        args = [values[n] if n else None for n in step.inputs]
        try:
            results = step.kernel(args)
        except LstmrtError:
            raise
        except Exception as e:  # numpy's own complaint, tied to the node that raised it
            raise InputError(f"node '{step.name}' ({step.op_type}) failed on these inputs: {e}") from e
        return results

    def run(self, feeds: dict, output_names: list) -> list:
        values = {**self.constants, **feeds}
        for step in self.steps:
            for name, value in zip(step.outputs, self._execute(step, values)):
                if name:
                    values[name] = value
        return [values[name] for name in output_names]

    def describe(self) -> str:
        return f"native: all {len(self.model.graph.node)} nodes supported"

    def recurrent_weights(self) -> list:
        """(node name, [CellWeights per direction]) for every recurrent node packed at load."""
        return [(s.name, s.kernel.packed) for s in self.steps if s.op_type in RECURRENT_OPS]
