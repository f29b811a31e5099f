"""If and Loop: their bodies are plans of their own (tf2onnx emits Loop for Keras GRUs)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from . import NodeInfo, op

DEFAULT_MAX_ITERATIONS = 1 << 24


def max_iterations() -> int:
    """The cap on one loop's iterations (LSTMRT_MAX_LOOP_ITERATIONS), compiled or not: a trip
    count or condition from the data must fail the call, not hang it."""
    value = os.environ.get("LSTMRT_MAX_LOOP_ITERATIONS", str(DEFAULT_MAX_ITERATIONS))
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"LSTMRT_MAX_LOOP_ITERATIONS must be a positive integer, not {value!r}")
    return int(value)


def free_names(graph) -> list[str]:
    """Names a graph reads from its enclosing scope (nested bodies included)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = []
    for node in graph.node:
        needed = list(node.input)
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                needed += free_names(attr.g)
        used += [n for n in needed if n and n not in defined and n not in used]
        defined.update(node.output)
    return [n for n in used if n not in defined]


def _outer_inputs(node: NodeInfo, bodies) -> list[str]:
    names = []
    for body in bodies:
        names += [n for n in free_names(body) if n not in names]
    return names


class _ControlKernel:
    """Base: appends the enclosing-scope values its bodies read to its inputs."""

    def __init__(self, node: NodeInfo, bodies):
        self.node = node
        self.outer_inputs = _outer_inputs(node, bodies)
        self.arity = len(node.inputs)

    def split(self, inputs: list):
        scope = dict(zip(self.outer_inputs, inputs[self.arity:]))
        return inputs[:self.arity], scope


class _If(_ControlKernel):
    def __init__(self, node: NodeInfo):
        self.branches = {True: node.attrs["then_branch"], False: node.attrs["else_branch"]}
        super().__init__(node, self.branches.values())
        self.plans = {k: node.options["subplan"](g) for k, g in self.branches.items()}

    def __call__(self, inputs):
        own, scope = self.split(inputs)
        taken = bool(np.asarray(own[0]).reshape(-1)[0])
        return self.plans[taken].run(scope, [o.name for o in self.branches[taken].output])


class _Loop(_ControlKernel):
    def __init__(self, node: NodeInfo):
        self.body = node.attrs["body"]
        super().__init__(node, [self.body])
        self.plan = node.options["subplan"](self.body)
        self.body_inputs = [i.name for i in self.body.input]
        self.body_outputs = [o.name for o in self.body.output]

    def __call__(self, inputs):
        own, scope = self.split(inputs)
        trip_limit, cond = own[0], own[1] if len(own) > 1 else None
        carried = list(own[2:])
        n_carried = len(carried)
        limit = None if trip_limit is None else int(np.asarray(trip_limit).reshape(-1)[0])
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        scans: list[list] = [[] for _ in range(len(self.body_outputs) - 1 - n_carried)]
        i, cap = 0, max_iterations()
        while keep_going and (limit is None or i < limit):
            if i == cap:
                raise InputError(f"node '{self.node.name}' (Loop): its trip count and condition ask for more than "
                                 f"{cap} iterations, the cap (LSTMRT_MAX_LOOP_ITERATIONS)")
            feed = {**scope, self.body_inputs[0]: np.array(i, np.int64),
                    self.body_inputs[1]: np.array(keep_going),
                    **dict(zip(self.body_inputs[2:], carried))}
            results = self.plan.run(feed, self.body_outputs)
            keep_going = bool(np.asarray(results[0]).reshape(-1)[0])
            carried = results[1:1 + n_carried]
            for acc, value in zip(scans, results[1 + n_carried:]):
                acc.append(value)
            i += 1
        stacked = [np.stack(acc) if acc else self._no_rows(1 + n_carried + k) for k, acc in enumerate(scans)]
        return carried + stacked

    def _no_rows(self, k: int) -> np.ndarray:
        """Scan output k of no iterations: empty, each row of the shape and type the body
        declares (when it declares them)."""
        from onnx.helper import tensor_dtype_to_np_dtype
        t = self.body.output[k].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim] if t.HasField("shape") else [-1]
        dtype = tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.float32
        return np.zeros((0, *dims) if min(dims, default=0) >= 0 else (0,), dtype)


@op("If")
def _if(node):
    return _If(node)


@op("Loop")
def _loop(node):
    return _Loop(node)
