"""The native backend: the graph as a plan of numpy ops plus the C recurrent kernel.

Built once per session (model -> plan): every node is checked and turned into
a callable, everything computable from constants is folded, and recurrent
weights are packed.  Running the plan is then a straight walk over the steps.
If/Loop bodies are plans of their own, run with the enclosing scope's values.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from onnx import numpy_helper

from ..errors import InputError, LstmrtError, UnsupportedModelError
from ..model import Model
from ..ops import Kernel, NodeInfo, make_kernel
from .rewrites import fuse_batch_first

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
NEVER_FOLDED = RECURRENT_OPS + ("If", "Loop")   # weights to pack / bodies that read runtime scope


@dataclass
class Step:
    name: str
    op_type: str
    kernel: Kernel
    inputs: list
    outputs: list
    attrs: dict


def _instruction(step: Step) -> tuple:
    """What the walk needs of a step, flat: (step, kernel, getter of its inputs from the values
    dict, one input?, the name of its one output or None).  A walk's own cost per step is then a
    few bytecodes around the kernel call, not attribute lookups and small function calls."""
    get = itemgetter(*step.inputs) if step.inputs else (lambda values: ())
    return step, step.kernel, get, len(step.inputs) == 1, step.outputs[0] if len(step.outputs) == 1 else None


class Plan:
    """One graph — the model's or a control-flow body — ready to run."""

    def __init__(self, graph, opset: int, options: dict, outer_constants: dict | None = None,
                 overridable=()):
        self.graph = graph
        self.constants = {**(outer_constants or {}),
                          **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
        # initializers a feed may replace are values of each call, with these defaults: nothing
        # is folded or bound from them at load
        self.defaults = {name: self.constants.pop(name) for name in overridable}
        self.steps: list[Step] = []
        options = {**options, "subplan": lambda body: Plan(body, opset, options, self.constants)}
        for index, node in enumerate(graph.node):
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedModelError(
                    f"node '{node.name or index}' uses op {node.domain}:{node.op_type}; "
                    "the native backend runs only the default ONNX domain",
                    f"{node.domain}:{node.op_type}", node.name or str(index))
            info = NodeInfo.from_proto(node, index, opset, self.constants, options)
            kernel = make_kernel(info)
            # control-flow bodies read enclosing-scope values: they arrive as extra inputs
            step = Step(info.name, node.op_type, kernel, info.inputs + getattr(kernel, "outer_inputs", []),
                        list(info.outputs), info.attrs)
            if node.op_type not in NEVER_FOLDED and all(not n or n in self.constants for n in step.inputs):
                self.constants.update(zip(step.outputs, self._execute(step, self.constants)))
            else:
                self.steps.append(step)
        self.steps = fuse_batch_first(self.steps, self.constants, opset, {o.name for o in graph.output})
        # the constants the steps read, and None for an omitted input (""): each call's values
        # start from these, so a step fetches all its arguments from one dict
        self._bound = {n: self.constants[n] for step in self.steps for n in step.inputs if n in self.constants}
        self._bound[""] = None
        self._program = [_instruction(step) for step in self.steps]

    @staticmethod
    def _execute(step: Step, values: dict) -> list:
        args = [values[n] if n else None for n in step.inputs]
        try:
            return step.kernel(args)
        except LstmrtError:
            raise
        except Exception as e:  # numpy's own complaint, tied to the node that raised it
            raise _node_failed(step, e) from e

    def run(self, scope: dict, output_names: list) -> list:
        # the scope last: a control-flow body's scope may rebind an outer constant
        values = {**self._bound, **self.defaults, **scope}
        step = None
        try:
            for step, kernel, get, one_input, one_output in self._program:
                outputs = kernel([get(values)] if one_input else list(get(values)))
                if one_output:
                    values[one_output] = outputs[0]
                else:
                    for name, value in zip(step.outputs, outputs):
                        if name:
                            values[name] = value
        except LstmrtError:
            raise
        except Exception as e:  # numpy's own complaint, tied to the node that raised it
            raise _node_failed(step, e) from e
        return [values[name] if name in values else self.constants[name] for name in output_names]


def _node_failed(step: Step, error: Exception) -> InputError:
    return InputError(f"node '{step.name}' ({step.op_type}) failed on these inputs: {error}")


def count_nodes(graph) -> int:
    """Nodes in a graph, bodies of If/Loop included."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                total += count_nodes(attr.g)
    return total


@dataclass(frozen=True)
class NativeOptions:
    """How the native backend runs: SIMD path, weight precision, threads per kernel call."""
    simd: str | None = None        # "scalar" | "avx2" | "avx512"; None: LSTMRT_SIMD or the best
    precision: str = "f32"         # "f32" | "bf16" | "int8" for the recurrent weight products
    threads: int = 1               # threads inside each kernel call (rows, or units: csrc/lstmrt.c)

    def __post_init__(self):
        if self.simd not in (None, "scalar", "avx2", "avx512"):
            raise ValueError(f"simd must be 'scalar', 'avx2' or 'avx512'; got {self.simd!r}")
        if self.precision not in ("f32", "bf16", "int8"):
            raise ValueError(f"precision must be 'f32', 'bf16' or 'int8'; got {self.precision!r}")
        from ..kernel import MAX_THREADS   # the C core's limit: one number on both sides
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}; got {self.threads!r}")


class NativeBackend:
    name = "native"

    def __init__(self, model: Model, options: NativeOptions = NativeOptions()):
        self.model = model
        self.options = options
        self.plan = Plan(model.graph, model.opset, {"native": options},
                         overridable=[i.name for i in model.overridable])

    def run(self, feeds: dict, output_names: list) -> list:
        return self.plan.run(feeds, output_names)

    def describe(self) -> str:
        return f"native: all {count_nodes(self.model.graph)} nodes supported"

    # -- streams: state stays a numpy array ------------------------------------
    from_host = to_host = staticmethod(lambda value: value)
    shape_of = staticmethod(lambda value: value.shape)

    def run_stateful(self, feeds: dict, state: dict, pairs: dict, output_names: list):
        results = self.run({**feeds, **state}, output_names + list(pairs.values()))
        return results[:len(output_names)], dict(zip(pairs, results[len(output_names):]))
