"""The native backend: the graph as a plan of numpy ops plus the C recurrent kernel.

Built once per session (model -> plan): every node is checked and turned into
a callable, everything computable from constants is folded, and recurrent
weights are packed.  Running the plan is then a straight walk over the steps.
If/Loop bodies are plans of their own, run with the enclosing scope's values.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable

import numpy as np

from onnx import numpy_helper

from ..errors import InputError, LstmrtError, UnsupportedModelError
from ..compile_loop import trip_count_inputs
from ..compiler import ROWS, Banked, CompileError, Compiler, ShapeMismatch, is_signature_scalar
from ..locks import lock_of, new_lock
from ..model import Model
from ..program import Misfit, ProgramState
from ..ops import Kernel, NodeInfo, make_kernel

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
    output_shapes: Callable | None = None   # input shapes -> output shapes, where the op says


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
        self.opset = opset
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
                        list(info.outputs), info.attrs, getattr(kernel, "output_shapes", None))
            if node.op_type not in NEVER_FOLDED and all(not n or n in self.constants for n in step.inputs):
                self.constants.update(zip(step.outputs, self._execute(step, self.constants)))
            else:
                self.steps.append(step)
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


def _all_nodes(graph):
    """Nodes of a graph and of the If/Loop bodies inside it."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield from _all_nodes(attr.g)


def count_nodes(graph) -> int:
    """Nodes in a graph, bodies of If/Loop included."""
    return sum(1 for _ in _all_nodes(graph))


@dataclass(frozen=True)
class NativeOptions:
    """How the native backend runs: SIMD path, weight precision, threads per kernel call."""
    simd: str | None = None        # "scalar" | "avx2" | "avx512"; None: LSTMRT_SIMD or the best
    precision: str = "f32"         # "f32" | "bf16" | "int8" for the recurrent weight products
    threads: int = 1               # threads inside each kernel call (rows, or units: csrc/lstmrt.c)
    compiled: bool = True          # False: walk the numpy plan, the reference programs are tested against

    def __post_init__(self):
        if self.simd not in (None, "scalar", "avx2", "avx512"):
            raise ValueError(f"simd must be 'scalar', 'avx2' or 'avx512'; got {self.simd!r}")
        if self.precision not in ("f32", "bf16", "int8"):
            raise ValueError(f"precision must be 'f32', 'bf16' or 'int8'; got {self.precision!r}")
        from ..kernel import MAX_THREADS   # the C core's limit: one number on both sides
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}; got {self.threads!r}")


class ProgramCache(OrderedDict):
    """Compiled programs by signature, least recently used dropped past `limit`.  A dropped
    signature costs one compilation (a walk of the plan on zeros and the C checks: ~1 ms for
    the shipped example) when it comes back; packed weights are kept apart and never repacked."""

    def __init__(self, limit: int = 32):
        super().__init__()
        self.limit = limit

    def recall(self, key):
        """The entry of `key`, made the most recently used, or None."""
        entry = self.get(key)
        if entry is not None:
            try:
                self.move_to_end(key)
            except KeyError:      # dropped by another thread since: still good for this call
                pass
        return entry

    def put(self, key, entry):
        self[key] = entry
        if len(self) > self.limit:
            self.popitem(last=False)


class _Fallback:
    """A signature the compiler refused: it runs on the numpy plan; `reason` says why."""

    def __init__(self, reason: str, shapes_misfit: bool = False):
        self.reason = reason
        self.shapes_misfit = shapes_misfit    # the feed does not fit the model, whatever compiles


_OFF = _Fallback("compilation turned off")


class StreamPrograms:
    """One stream's compiled programs, one per signature it has run (at most `limit`).  The
    state lives in the program's arena between calls (its last instructions copy the state
    outputs onto the state inputs), so a step hands C only the streamed inputs.  The stream's
    state dict is then the arena's own views; a state from elsewhere (set_state, another
    signature's program, the long path) is copied in first."""

    limit = 8

    def __init__(self, backend, pairs: dict, outputs: list):
        self._backend, self._pairs, self._outputs = backend, pairs, outputs
        self._states: dict = {}

    def step(self, feed: dict, state: dict):
        """(outputs, new state) for a signature this stream has run, else None."""
        try:
            program_state = self._states[self._backend.signature(feed)]
            keep = program_state.bind(feed)
        except (KeyError, AttributeError, TypeError, ValueError, BufferError):
            return None
        views = program_state.views
        if state is not views and not program_state.load_state(state):
            return None
        try:
            results = program_state.execute()
        except Misfit:     # the state is untouched (its copies come last): the long path runs it
            return None
        del keep
        return results, views

    def learn(self, feed: dict, state: dict) -> None:
        """A checked feed of a new signature: compiles its stream program, if it compiles (state:
        the arrays it starts from, for their shapes and dtypes)."""
        key = self._backend.signature(feed)
        if key in self._states:
            return
        program = self._backend.stream_program({**feed, **state}, self._outputs, self._pairs)
        if type(program) is _Fallback:
            return
        if len(self._states) >= self.limit:
            self._states.pop(next(iter(self._states)))
        self._states[key] = program.new_state()


class GroupPrograms:
    """One stream group's compiled programs, one per call signature (members stepped, their
    inputs' shapes) and bank shapes, the `limit` most recent.  The members' state stays in the
    group's banks; each program gathers its call's rows from them in C and scatters the new state
    back.  A count of members not seen before costs one compilation (1-10 ms)."""

    limit = 64

    def __init__(self, backend, outputs: list):
        self._backend, self._outputs = backend, outputs
        self._states: OrderedDict = OrderedDict()

    def step(self, feed: dict, banks: dict, banked: Banked, before=None):
        """The outputs of one group call (feed: batched inputs and ROWS), the banks updated in
        place; None where the call does not compile (the caller then runs it the long way).
        before(output shapes) runs first: where it raises, nothing has moved."""
        state = self._state_for(feed, banks, banked)
        if type(state) is _Fallback:
            return None
        if before is not None:
            before(state.program.output_shapes)
        keep = state.bind(feed)
        state.bind_banks(banks)
        try:
            results = state.execute()
        except Misfit:      # before the scatters: the banks are untouched
            return None
        del keep
        return results

    def profile(self, feed: dict, banks: dict, banked: Banked, calls: int) -> list:
        """[(instruction label, seconds per call)] of this call's program, slowest first; its
        calls read and write copies of the banks, so the members' state stays as it was."""
        state = self._state_for(feed, banks, banked)
        if type(state) is _Fallback:
            raise UnsupportedModelError(f"nothing to profile: this group call does not compile ({state.reason})")
        state.bind_banks({name: bank.copy() for name, bank in banks.items()})
        return state.program.profile(state, feed, calls)   # the next step binds the real banks again

    def _state_for(self, feed: dict, banks: dict, banked: Banked):
        """The ProgramState of this call's signature (compiled on first sight), or its _Fallback."""
        key = (self._backend.signature(feed), banked)
        state = self._states.get(key)
        if state is None:
            state = self._learn(key, feed, banks, banked)
        else:
            self._states.move_to_end(key)
        return state

    def _learn(self, key, feed: dict, banks: dict, banked: Banked):
        count = len(feed[ROWS])
        shapes = {name: _with_axis(banks[name].shape, axis, count) for name, _, axis, _ in banked.entries}
        states = {name: np.zeros(shape, banks[name].dtype) for name, shape in shapes.items()}
        program = self._backend.group_program({**feed, **states}, self._outputs, banked)
        state = program if type(program) is _Fallback else program.new_state()
        self._states[key] = state
        if len(self._states) > self.limit:
            self._states.popitem(last=False)
        return state


def _with_axis(shape: tuple, axis: int, size: int) -> tuple:
    return shape[:axis] + (size,) + shape[axis + 1:]


class NativeBackend:
    name = "native"

    def __init__(self, model: Model, options: NativeOptions = NativeOptions()):
        self.model = model
        self.options = options
        self.plan = Plan(model.graph, model.opset, {"native": options},
                         overridable=[i.name for i in model.overridable])
        self._signature_inputs = ({i.name for i in model.inputs if is_signature_scalar(i)}
                                  - trip_count_inputs(model.graph))
        self._programs = ProgramCache()
        self._group_programs = ProgramCache(GroupPrograms.limit)
        self._packed: dict = {}                # dense weights, shared by every program
        self._local = threading.local()        # per thread: a ProgramState per program
        self._lock = new_lock(self)
        self.compile_note = self._probe() if options.compiled else "compilation turned off"

    # -- compiled programs -------------------------------------------------------
    def signature(self, feeds: dict) -> tuple:
        """What a program is compiled for: the feed's names, shapes and dtypes (byte order
        included), and the values of its small integer inputs."""
        key = tuple([(name, value.shape, value.dtype) for name, value in feeds.items()])
        scalars = self._signature_inputs
        return key + tuple(feeds[n].tobytes() for n in scalars if n in feeds) if scalars else key

    def program_for(self, feeds: dict, output_names: list):
        """The Program for this feed's signature (compiled on first sight), or a _Fallback."""
        if not self.options.compiled:
            return _OFF
        return self._cached((self.signature(feeds), tuple(output_names)), feeds, output_names)

    def stream_program(self, feeds: dict, output_names: list, pairs: dict):
        """The program of a stream's signature (feeds: streamed inputs and state), its state kept
        in the arena between calls; a _Fallback where it does not compile."""
        key = ("stream", self.signature(feeds), tuple(output_names), tuple(pairs.items()))
        return self._cached(key, feeds, output_names, carried=pairs)

    def group_program(self, feeds: dict, output_names: list, banked: Banked):
        """The program of one stream-group call (feeds: the members' streamed inputs, batched,
        their state's shapes and ROWS), reading and writing the state rows of banks shaped as
        `banked` says; a _Fallback where it does not compile.  Kept apart from the others, 64
        of them: a server's calls step any number of members, each count a program, and its
        groups come and go."""
        key = (self.signature(feeds), tuple(output_names), banked)
        return self._cached(key, feeds, output_names, self._group_programs, banked=banked)

    def _cached(self, key, feeds: dict, output_names: list, cache=None, **mode):
        cache = self._programs if cache is None else cache
        entry = cache.recall(key)
        if entry is None:
            with lock_of(self):
                entry = cache.get(key)
                if entry is None:
                    entry = self._compile(feeds, output_names, **mode)
                    cache.put(key, entry)
        return entry

    def _compile(self, feeds: dict, output_names: list, carried: dict | None = None, banked: Banked | None = None):
        try:
            return Compiler(self.plan, self.options, self._packed).compile(
                feeds, self._signature_inputs, list(output_names), carried, banked)
        except CompileError as e:
            return _Fallback(str(e), isinstance(e, ShapeMismatch))

    def stream_programs(self, pairs: dict, outputs: list) -> "StreamPrograms | None":
        return StreamPrograms(self, pairs, outputs) if self.options.compiled else None

    def group_programs(self, outputs: list) -> "GroupPrograms | None":
        return GroupPrograms(self, outputs) if self.options.compiled else None

    def _state(self, program) -> ProgramState:
        states = getattr(self._local, "states", None)
        if states is None:
            states = self._local.states = {}
        state = states.get(id(program))
        if state is None or state.program is not program:
            if len(states) >= 2 * self._programs.limit:
                states.clear()
            state = states[id(program)] = program.new_state()
        return state

    def run(self, feeds: dict, output_names: list) -> list:
        program = self.program_for(feeds, output_names)
        if type(program) is _Fallback:
            return self.plan.run(feeds, output_names)
        state = self._state(program)
        try:
            results = state.run(feeds)
        except Misfit:     # an op whose output shape follows the data: this call on the numpy plan
            return self.plan.run(feeds, output_names)
        self._remember(feeds, output_names, program, state)
        return results

    # -- signatures already checked: the call goes straight to its program ------
    def _remember(self, feeds: dict, output_names, program, state) -> None:
        """After a checked call: the same signature (names, shapes, dtypes, scalar values, outputs
        asked) needs no feed check again (the session's check depends on nothing else)."""
        known = getattr(self._local, "known", None)
        if known is None:
            known = self._local.known = {}
        if len(known) >= self._programs.limit:
            known.clear()
        known[(self.signature(feeds), tuple(output_names))] = (program, state)

    def run_known(self, feeds: dict, output_names):
        """The outputs when this exact signature ran before on this thread, else None (the caller
        then checks the feed and runs it the long way).  Not for arrays other than numpy's own
        C-contiguous ones: anything else returns None."""
        try:
            program, state = self._local.known[(self.signature(feeds), tuple(output_names))]
            return state.run(feeds)
        except (AttributeError, KeyError, TypeError, ValueError, BufferError, Misfit):
            return None

    def profile(self, feeds: dict, output_names: list, calls: int = 100) -> list:
        """[(instruction label, seconds per call)] of the compiled program, slowest first."""
        program = self.program_for(feeds, output_names)
        if type(program) is _Fallback:
            raise UnsupportedModelError(f"nothing to profile: {program.reason}")
        return program.profile(self._state(program), feeds, calls)

    PROBE_SIZES = (1, 64, 512)

    def _probe(self) -> str:
        """Whether the model compiles: '' when it does, else why not.  Compiles a signature with
        every unknown dim set to each of PROBE_SIZES in turn (scalar inputs zero) until one fits
        the model (a 512-sample audio chunk does not fit in one sample); if none fits, nothing
        is known against it."""
        outputs = [o.name for o in self.model.outputs]
        for size in self.PROBE_SIZES:
            feeds = self._probe_feed(size)
            if feeds is None:
                break
            try:
                entry = self._compile(feeds, outputs)
            except LstmrtError:
                continue
            if type(entry) is not _Fallback:
                return self._segments_note(entry)
            if not entry.shapes_misfit:
                return entry.reason
        return ""

    @staticmethod
    def _segments_note(program) -> str:
        steps = program.python_steps
        if not steps:
            return ""
        c_parts = sum(1 for kind, _, _ in program.segments if kind == "c")
        return (f"{', '.join(steps[:3])}{' and more' if len(steps) > 3 else ''} between C segments: "
                f"{c_parts} in C, {len(steps)} in Python")

    def _probe_feed(self, size: int) -> dict | None:
        feeds = {}
        for info in self.model.inputs:
            if info.shape is None:
                return None
            shape = [d if isinstance(d, int) and d > 0 else size for d in info.shape]
            if info.name in self._signature_inputs:
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
            feeds[info.name] = np.zeros(shape, info.dtype)
        return feeds

    def describe(self) -> str:
        nodes = count_nodes(self.model.graph)
        if " between C segments" in self.compile_note:
            return f"native: compiled, all {nodes} nodes, Python at {self.compile_note}"
        if self.compile_note:
            return f"native: all {nodes} nodes supported, numpy plan where not compiled ({self.compile_note})"
        return f"native: compiled, all {nodes} nodes in one C call"

    # -- streams: state stays a numpy array ------------------------------------
    from_host = to_host = staticmethod(lambda value: value)
    shape_of = staticmethod(lambda value: value.shape)

    def run_stateful(self, feeds: dict, state: dict, pairs: dict, output_names: list):
        results = self.run({**feeds, **state}, output_names + list(pairs.values()))
        return results[:len(output_names)], dict(zip(pairs, results[len(output_names):]))
