"""The hot path: a model that is one forward recurrent node, wired straight to the graph's
inputs and outputs, runs as one C call per call on a CellRunner, in stream.run (CellFastPath)
and sess.run (RunFastPath) alike.

No feed dict, no plan walk, no per-call allocation but the returned arrays: this is the
case where onnxruntime's per-call overhead dominates and lstmrt should not add its own.
The result is the same as the general path's (tests/test_fastpath.py checks both).
"""
from __future__ import annotations

import threading

import numpy as np

from .backends.native import NativeBackend
from .errors import StreamError
from .ops.recurrent import RecurrentNode

_MAX_SHAPES = 8     # runners kept per stream, one per (batch, steps) seen


class CellFastPath:
    def __init__(self, node: RecurrentNode, x_name: str, state_slots: dict, y_wanted: bool):
        self.node, self.x_name, self.y_wanted = node, x_name, y_wanted
        self.state_slots = state_slots        # state input name -> "h" | "c"
        self.weights = node.packed[0]
        self.input_size = self.weights.spec.input_size
        self.hidden = self.weights.spec.hidden_size
        self._runners: dict = {}

    @classmethod
    def detect(cls, backend, model, pairs: dict) -> "CellFastPath | None":
        if not isinstance(backend, NativeBackend) or len(backend.plan.steps) != 1:
            return None
        step = backend.plan.steps[0]
        node = step.kernel
        if (not isinstance(node, RecurrentNode) or node.packed is None or node.direction != "forward"
                or node.layout != 0):
            return None
        ins = step.inputs + [""] * (8 - len(step.inputs))
        outs = step.outputs + [""] * (3 - len(step.outputs))
        state_ins = {ins[5]: "h", ins[6]: "c"} if node.cell == "LSTM" else {ins[5]: "h"}
        state_outs = {"h": outs[1], "c": outs[2]}
        graph_inputs = {i.name for i in model.inputs}
        graph_outputs = [o.name for o in model.outputs]
        wired = (ins[0] in graph_inputs and not ins[4] and set(state_ins) <= graph_inputs
                 and graph_inputs == {ins[0], *state_ins}
                 and pairs == {name: state_outs[kind] for name, kind in state_ins.items()}
                 and set(graph_outputs) <= {outs[0], *pairs.values()} - {""})
        if not wired:
            return None
        return cls(node, ins[0], state_ins, outs[0] in graph_outputs)

    def _runner(self, batch: int, steps: int):
        runner = self._runners.get((batch, steps))
        if runner is None:
            if len(self._runners) >= _MAX_SHAPES:
                self._runners.pop(next(iter(self._runners)))
            runner = self.weights.runner(batch, steps, threads=self.node.threads, y=self.y_wanted)
            runner.views = {name: (runner.h if kind == "h" else runner.c).reshape(1, batch, self.hidden)
                            for name, kind in self.state_slots.items()}
            self._runners[(batch, steps)] = runner
        return runner

    def accepts(self, x) -> bool:
        return (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 3
                and x.shape[2] == self.input_size and x.shape[0] > 0 and x.shape[1] > 0)

    def run(self, x: np.ndarray, state: dict) -> tuple[list, dict]:
        """Y of the chunk (if the graph outputs it) and the new state: the runner's own dict of
        views of its buffers, which the stream must replace, never change in place."""
        steps, batch = x.shape[0], x.shape[1]
        runner = self._runner(batch, steps)
        if state is not runner.views:      # the state came from elsewhere: load it into the runner
            self._load_state(runner, state, batch)
        np.copyto(runner.x, x)
        runner.run()
        return ([runner.y.reshape(steps, 1, batch, self.hidden).copy()] if self.y_wanted else []), runner.views

    @staticmethod
    def _load_state(runner, state: dict, batch: int) -> None:
        for name, view in runner.views.items():
            current = state.get(name)
            if current is None:
                view.fill(0.0)
            elif current.shape != view.shape:
                raise StreamError(f"state '{name}' is {list(current.shape)} but this chunk has batch {batch}; "
                                  "reset() the stream or set_state() to change the batch")
            elif current is not view:
                np.copyto(view, current)


class RunFastPath:
    """sess.run on the same bare-cell models: state in, state out, one C call, no graph walk.
    Runners are per thread, since one session's run() may be called from many threads."""

    def __init__(self, cell: CellFastPath, model, pairs: dict):
        self.cell = cell
        self.outputs = [o.name for o in model.outputs]
        self.state_of_output = {out: inp for inp, out in pairs.items()}
        self.inputs = {cell.x_name, *pairs}
        self._local = threading.local()

    @classmethod
    def detect(cls, backend, model) -> "RunFastPath | None":
        from .state_pairs import find_state_pairs
        pairs = find_state_pairs(model)
        cell = CellFastPath.detect(backend, model, pairs) if pairs else None
        return cls(cell, model, pairs) if cell is not None else None

    def try_run(self, feed, output_names) -> list | None:
        """The outputs, or None when the feed is not the plain case (the general path then runs it,
        and raises the usual errors)."""
        if not isinstance(feed, dict) or feed.keys() != self.inputs:
            return None
        x = feed[self.cell.x_name]
        if not self.cell.accepts(x):
            return None
        state_shape = (1, x.shape[1], self.cell.hidden)
        if any(type(feed[n]) is not np.ndarray or feed[n].dtype != np.float32 or feed[n].shape != state_shape
               for n in self.cell.state_slots):
            return None
        path = getattr(self._local, "path", None)
        if path is None:
            path = self._local.path = CellFastPath(self.cell.node, self.cell.x_name, self.cell.state_slots, True)
        y, views = path.run(x, {n: feed[n] for n in self.cell.state_slots})
        values = {name: views[self.state_of_output[name]].copy() for name in self.state_of_output}
        if y:
            values.update({o: y[0] for o in self.outputs if o not in values})
        return [values[n] for n in (output_names or self.outputs)]
