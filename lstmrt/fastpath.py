"""The hot path: a model that is one forward recurrent node, wired straight to the graph's
inputs and outputs, runs as one C call per call on a CellRunner, in stream.run (CellFastPath)
and sess.run (RunFastPath) alike.

No feed check beyond type, dtype and a shape seen before, no plan walk, no allocation but the
returned arrays: this is the case where onnxruntime's per-call overhead dominates and lstmrt
should not add its own.  Anything else returns None and takes the general path, which runs it
or raises the usual errors.  The result is the same as the general path's
(tests/test_fastpath.py checks both).
"""
from __future__ import annotations

import threading

import numpy as np

from .backends.native import NativeBackend
from .errors import StreamError
from .kernel import F32, RunnerCache
from .ops.recurrent import RecurrentNode

class CellFastPath:
    def __init__(self, node: RecurrentNode, x_name: str, state_slots: dict, y_wanted: bool):
        self.node, self.x_name, self.y_wanted = node, x_name, y_wanted
        self.state_slots = state_slots        # state input name -> "h" | "c"
        self.weights = node.packed[0]
        self.input_size = self.weights.spec.input_size
        self.hidden = self.weights.spec.hidden_size
        self._runners = RunnerCache(self.weights, node.threads, y_wanted)   # x.shape -> CellRunner

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

    def runner_for(self, x):
        """The runner for chunk x, or None when x is not a float32 [T>0, B>0, input] array."""
        if type(x) is not np.ndarray or x.dtype is not F32:
            return None
        runner = self._runners.get(x.shape)
        if runner is None:
            if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[0] < 1 or x.shape[1] < 1:
                return None
            runner = self._new_runner(x.shape)
        return runner

    def _new_runner(self, shape):
        steps, batch = shape[0], shape[1]
        runner = self._runners.add(shape)
        runner.views = {name: getattr(runner, kind).reshape(1, batch, self.hidden)
                        for name, kind in self.state_slots.items()}
        runner.y4 = runner.y.reshape(steps, 1, batch, self.hidden) if self.y_wanted else None
        runner.state_shape = (1, batch, self.hidden)
        return runner

    def try_run(self, x, state: dict):
        """(Y of the chunk if the graph outputs it, new state), or None when x is not plain.
        The new state is the runner's own dict of views of its buffers, which the stream must
        replace, never change in place."""
        # runner_for inlined: this is the hot loop of a streaming server
        runner = self._runners.get(x.shape) if type(x) is np.ndarray and x.dtype is F32 else None
        if runner is None:
            runner = self.runner_for(x)
            if runner is None:
                return None
        if state is not runner.views:      # the state came from elsewhere: load it into the runner
            self._load_state(runner, state, x.shape[1])
        runner.step(x)
        return ([runner.y4.copy()] if self.y_wanted else []), runner.views

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
        self.inputs = {cell.x_name, *pairs}
        state_of_output = {out: inp for inp, out in pairs.items()}
        # output name -> state input whose runner view holds it, or None for Y
        self._source = {o: state_of_output.get(o) for o in self.outputs}
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
        if type(feed) is not dict or feed.keys() != self.inputs:
            return None
        try:
            path = self._local.path
        except AttributeError:
            c = self.cell
            path = self._local.path = CellFastPath(c.node, c.x_name, c.state_slots, True)
        x = feed[path.x_name]
        runner = path.runner_for(x)
        if runner is None:
            return None
        shape = runner.state_shape
        for name in path.state_slots:
            value = feed[name]
            if type(value) is not np.ndarray or value.dtype is not F32 or value.shape != shape:
                return None
        for name, kind in path.state_slots.items():
            runner.load(kind, feed[name])
        runner.step(x)
        if output_names is None:
            try:
                copiers = runner.copiers
            except AttributeError:   # bound once per runner: the attribute lookups cost more than the copies
                copiers = runner.copiers = [self._output_array(runner, n).copy for n in self.outputs]
            return [copy() for copy in copiers]
        return [self._output_array(runner, n).copy() for n in output_names]

    def _output_array(self, runner, name: str) -> np.ndarray:
        source = self._source[name]
        return runner.y4 if source is None else runner.views[source]
