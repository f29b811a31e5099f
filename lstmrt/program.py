"""A compiled program: the C side's flat instruction array for one input signature, and the
state one caller runs it with (plan -> program -> outputs).

`Program` owns the C object and what it borrows (constants, packed weights); it is immutable,
so threads share it.  `ProgramState` is one caller's arena and call arguments: a thread's for
`sess.run`, a stream's own (its state lives in the arena between calls).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from .errors import InputError, KernelError, LstmrtError, UnsupportedModelError
from .kernel import ffi, lib

ALIGN = 64


@dataclass(frozen=True)
class Operand:
    loc: int          # lib.LRT_LOC_*
    index: int
    offset: int       # bytes
    nbytes: int


NONE = Operand(lib.LRT_LOC_NONE, 0, 0, 0)


@dataclass
class Instr:
    op: int
    operands: list
    ints: list
    floats: list
    weights: list     # CellWeights/DenseWeights handles (cdata)
    label: str        # node name and op, for errors and the profiler


def contiguous_strides(shape) -> list:
    """Element strides of a C-contiguous array of `shape`."""
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return strides[::-1]


class Misfit(Exception):
    """A Python step's result came out another shape than the signature's compilation saw (an
    op whose output shape depends on the data): the call is run again on the numpy plan."""


@dataclass
class PyStep:
    """A node with no compiled form, run by its numpy kernel between two C segments, on views
    of the arena.  args: per input, ("const", array), ("arena", offset, shape, dtype),
    ("input", name, offset, shape, dtype) or None; outputs: (arena offset, shape, dtype) or None."""
    kernel: object
    args: list
    outputs: list
    label: str


class Program:
    """One signature's compiled program: C segments, with Python steps between them where a
    node has no compiled form (`python_steps` names them; most programs are one segment).

    inputs: names of the feed arrays passed by pointer, in order; outputs: (name, shape, dtype,
    arena offset) of the arrays each call leaves in the arena (returned as copies), in order;
    static_outputs: name -> array known when compiled; output_names: the outputs asked for, in
    order (default: `outputs`' names); state_slots: (state input, shape, dtype, arena offset) of
    a stream's program, whose state lives in the arena; banks: (state input, nbytes) of a stream
    group's program, whose members' state rows live in the group's arrays, passed as the C
    program's outputs (read and written: rows gathered at the start, scattered back at the end).
    """

    def __init__(self, instrs: list, consts: list, inputs: list, input_nbytes: list, outputs: list,
                 arena_bytes: int, simd: str | None, threads: int, keep: list, static_outputs: dict | None = None,
                 output_names: list | None = None, state_slots: list = (), banks: list = ()):
        self.instrs = instrs
        self.labels = [i.label for i in instrs]
        self.inputs = inputs
        self.outputs = outputs
        self.arena_bytes = arena_bytes
        self._keep = (consts, keep)        # borrowed by the C program: alive as long as it is
        self.banks = list(banks)
        bank_nbytes = [nbytes for _, nbytes in self.banks]
        self.segments = []                 # ("c", handle, first instruction) or ("py", PyStep, index)
        start = 0
        for i, item in enumerate(instrs + [None]):
            if item is None or isinstance(item, PyStep):
                if i > start:
                    self.segments.append(("c", _create(_local(instrs[start:i], start), consts, input_nbytes,
                                                       bank_nbytes, arena_bytes, simd, threads), start))
                if item is not None:
                    self.segments.append(("py", item, i))
                start = i + 1
        self.python_steps = [i.label for i in instrs if isinstance(i, PyStep)]
        self.static_outputs = static_outputs or {}
        self.output_names = output_names if output_names is not None else [name for name, _, _, _ in outputs]
        self.state_slots = list(state_slots)
        placed = {name: tuple(shape) for name, shape, _, _ in outputs}
        # the shapes of the outputs asked for, in order (a group splits them by these before it runs)
        self.output_shapes = tuple(placed[n] if n in placed else self.static_outputs[n].shape
                                   for n in self.output_names)

    def new_state(self) -> "ProgramState":
        return ProgramState(self)

    def assemble(self, results: list) -> list:
        """The requested outputs, in order: the arrays a call returned, and copies of the static ones."""
        if not self.static_outputs:
            return results
        by_name = dict(zip((name for name, _, _, _ in self.outputs), results))
        return [by_name[n] if n in by_name else self.static_outputs[n].copy() for n in self.output_names]

    def profile(self, state: "ProgramState", feed: dict, calls: int, rounds: int = 5) -> list:
        """[(instruction label, seconds per call)], slowest first: each instruction's mean time per
        call in the quickest of `rounds` rounds (a preempted call on a shared machine then lands
        in one round, not in the figure)."""
        try:
            state.run(feed)    # warm: the arena's pages, the caches
        except Misfit as e:
            raise UnsupportedModelError(f"nothing to profile: {e}, so this feed runs on the numpy plan") from None
        per_round = max(1, calls // rounds)
        best = [float("inf")] * len(self.instrs)
        for _ in range(rounds):
            seconds = ffi.new("double[]", max(1, len(self.instrs)))
            for _ in range(per_round):
                state.run(feed, seconds)
            best = [min(b, seconds[i] / per_round) for i, b in enumerate(best)]
        return sorted(zip(self.labels, best), key=lambda r: -r[1])


def _local(instrs: list, start: int) -> list:
    """A segment's instructions, branch targets and loop ends counted from its first (the
    compiler keeps branches and loop bodies inside one segment)."""
    return [Instr(i.op, i.operands, [i.ints[0] - start, *i.ints[1:]], i.floats, i.weights, i.label)
            if i.op in (lib.LRT_OP_BRANCH, lib.LRT_OP_LOOP) else i for i in instrs]


def _create(instrs, consts, input_nbytes, output_nbytes, arena_bytes, simd, threads):
    from .kernel import SIMD_PATHS
    operands = [op for ins in instrs for op in ins.operands]
    ints = [v for ins in instrs for v in ins.ints]
    floats = [v for ins in instrs for v in ins.floats]
    weights = [w for ins in instrs for w in ins.weights]
    c_instrs = ffi.new("lrt_instr[]", max(1, len(instrs)))
    n_op = n_int = n_flt = n_w = 0
    for c, ins in zip(c_instrs, instrs):
        c.op = ins.op
        c.first_operand, c.noperands = n_op, len(ins.operands)
        c.first_int, c.nints = n_int, len(ins.ints)
        c.first_float, c.nfloats = n_flt, len(ins.floats)
        c.first_weights, c.nweights = n_w, len(ins.weights)
        n_op += len(ins.operands); n_int += len(ins.ints); n_flt += len(ins.floats); n_w += len(ins.weights)
    c_ops = ffi.new("lrt_operand[]", max(1, len(operands)))
    for c, o in zip(c_ops, operands):
        c.loc, c.index, c.offset, c.nbytes = o.loc, o.index, o.offset, o.nbytes
    d = ffi.new("lrt_program_desc *")
    keep = [c_instrs, c_ops]
    d.instrs, d.ninstrs = c_instrs, len(instrs)
    d.operands, d.noperands = c_ops, len(operands)
    keep.append(ffi.new("int64_t[]", [int(v) for v in ints] or [0]))
    d.ints, d.nints = keep[-1], len(ints)
    keep.append(ffi.new("float[]", [float(v) for v in floats] or [0.0]))
    d.floats, d.nfloats = keep[-1], len(floats)
    keep.append(ffi.new("lrt_weights *[]", weights or [ffi.NULL]))
    d.weights, d.nweights = keep[-1], len(weights)
    const_ptrs = [ffi.from_buffer("char[]", c) for c in consts]
    keep.append(ffi.new("void *[]", const_ptrs or [ffi.NULL]))
    d.consts = keep[-1]
    keep.append(ffi.new("int64_t[]", [c.nbytes for c in consts] or [0]))
    d.const_nbytes, d.nconsts = keep[-1], len(consts)
    keep.append(ffi.new("int64_t[]", list(input_nbytes) or [0]))
    d.input_nbytes, d.ninputs = keep[-1], len(input_nbytes)
    keep.append(ffi.new("int64_t[]", list(output_nbytes) or [0]))
    d.output_nbytes, d.noutputs = keep[-1], len(output_nbytes)   # a group's state banks (outputs stay in the arena)
    d.arena_bytes = arena_bytes
    d.simd = SIMD_PATHS[simd] if simd else lib.LRT_SIMD_AUTO
    d.threads = threads
    out = ffi.new("lrt_program **")
    bad = ffi.new("int32_t *")
    status = lib.lrt_program_create(d, out, bad)
    if status != lib.LRT_OK:
        where = f" at instruction {bad[0]} ({instrs[bad[0]].label})" if bad[0] >= 0 else ""
        raise KernelError(f"building the compiled program{where}: "
                          f"{ffi.string(lib.lrt_status_string(status)).decode()}")
    return ffi.gc(out[0], lib.lrt_program_free)


class ProgramState:
    """One caller's arena and argument arrays for a Program: used by one thread at a time."""

    def __init__(self, program: Program):
        self.program = program
        raw = np.zeros(program.arena_bytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.arena = raw[start:start + program.arena_bytes]
        self._arena_ptr = ffi.from_buffer("char[]", self.arena) if program.arena_bytes else ffi.NULL
        self._inputs = ffi.new("void *[]", max(1, len(program.inputs)))
        self._banks = ffi.new("void *[]", max(1, len(program.banks)))
        self._bank_arrays: list = []
        self._failed = ffi.new("int32_t *")
        self._names = list(enumerate(program.inputs))
        self._feed: dict = {}
        self._segments = [(kind, self._c_call(item) if kind == "c" else item, first)
                          for kind, item, first in program.segments]
        # one C segment (the usual case): its call bound once
        self._call = self._segments[0][1] if [k for k, _, _ in self._segments] == ["c"] else None
        # the outputs as views of the arena: each call returns copies of them
        self._copiers = [self._view(offset, shape, dtype).copy for _, shape, dtype, offset in program.outputs]
        self._assemble = program.assemble if program.static_outputs else None   # None: outputs as copied
        # a stream program's state inputs, as views of the arena where they live between calls
        self.views = {name: self._view(offset, shape, dtype) for name, shape, dtype, offset in program.state_slots}

    def _c_call(self, handle):
        return functools.partial(lib.lrt_program_run, handle, self._inputs, self._banks, self._arena_ptr,
                                 self.program.arena_bytes)

    def _view(self, offset, shape, dtype):
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        return self.arena[offset:offset + nbytes].view(dtype).reshape(shape)

    def bind(self, feed: dict) -> list:
        """Points the call at the feed's arrays; a ValueError (or BufferError) for an array C
        cannot read as it is (not C-contiguous).  Returns what keeps them alive."""
        ptrs = self._inputs
        keep = []
        for i, name in self._names:
            keep.append(ffi.from_buffer(feed[name]))
            ptrs[i] = keep[-1]
        self._feed = feed
        return keep

    def bind_banks(self, banks: dict) -> None:
        """Points a group program at the group's state arrays (C-contiguous, of the compiled size),
        which its calls then read and write; a ValueError for any other array."""
        arrays = []
        for i, (name, nbytes) in enumerate(self.program.banks):
            array = banks[name]
            if not array.flags.c_contiguous or array.nbytes != nbytes:
                raise ValueError(f"state bank '{name}' is not {nbytes} contiguous bytes")
            arrays.append(ffi.from_buffer(array))
            self._banks[i] = arrays[-1]
        self._bank_arrays = arrays     # what keeps them alive

    def execute(self, seconds=None) -> list:
        """Runs the bound call; the outputs asked for, in order: copies of the arena's, and of
        those this signature fixed (a Shape of the feed, a constant)."""
        if self._call is not None:
            status = self._call(ffi.NULL if seconds is None else seconds, self._failed)
            if status:
                self._raise(status, 0)
        else:
            self._run_segments(seconds)
        results = [copy() for copy in self._copiers]
        return results if self._assemble is None else self._assemble(results)

    def _run_segments(self, seconds) -> None:
        for kind, item, first in self._segments:
            if kind == "c":
                status = item(ffi.NULL if seconds is None else seconds + first, self._failed)
                if status:
                    self._raise(status, first)
            else:
                t0 = time.perf_counter()
                self._python_step(item)
                if seconds is not None:
                    seconds[first] += time.perf_counter() - t0

    def _python_step(self, step: PyStep) -> None:
        args = []
        for arg in step.args:
            if arg is None:
                args.append(None)
            elif arg[0] == "const":
                args.append(arg[1])
            elif arg[0] == "input":
                name, offset, shape, dtype = arg[1:]
                size = math.prod(shape) * np.dtype(dtype).itemsize
                args.append(self._feed[name].reshape(-1).view(np.uint8)[offset:offset + size].view(dtype).reshape(shape))
            else:
                args.append(self._view(*arg[1:]))
        try:
            results = step.kernel(args)
        except LstmrtError:
            raise
        except Exception as e:   # numpy's own complaint, tied to the node, as the numpy plan does
            raise InputError(f"node {step.label.removesuffix(' [Python]')} failed on these inputs: {e}") from e
        for out, value in zip(step.outputs, results):
            if out is None:
                continue
            offset, shape, dtype = out
            value = np.asarray(value)
            if value.shape != tuple(shape):
                raise Misfit(f"node {step.label} gave {list(value.shape)}, compiled for {list(shape)}")
            np.copyto(self._view(offset, shape, dtype), value, casting="same_kind")

    def run(self, feed: dict, seconds=None) -> list:
        """The program's outputs for this feed (arrays of the compiled signature, C-contiguous)."""
        keep = self.bind(feed)
        results = self.execute(seconds)
        del keep
        return results

    def load_state(self, state: dict) -> bool:
        """Copies a state from elsewhere into the arena; False (nothing copied) when its shapes
        are not this program's (the caller's long path then names the mistake)."""
        views = self.views
        if any(state[name].shape != view.shape for name, view in views.items()):
            return False
        for name, view in views.items():
            np.copyto(view, state[name])
        return True

    def _raise(self, status, first: int = 0):
        i = self._failed[0] + first if self._failed[0] >= 0 else -1
        label = self.program.labels[i] if 0 <= i < len(self.program.labels) else "?"
        if status == lib.LRT_E_COUNT:
            raise Misfit(f"node {label} ran another number of iterations than its scan outputs were compiled for")
        if status == lib.LRT_E_ARG and label.endswith("(Loop)"):
            raise InputError(f"node {label}: its trip count and condition ask for more than "
                             f"{self.program.instrs[i].ints[1]} iterations, the cap (LSTMRT_MAX_LOOP_ITERATIONS)")
        if status == lib.LRT_E_ARG and "(Gather)" in label:
            raise InputError(f"node {label}: an index is out of range for the gathered axis")
        if status == lib.LRT_E_ARG and label.endswith(("(LSTM)", "(GRU)", "(RNN)")):
            steps = self.program.instrs[i].ints[0]
            raise InputError(f"node {label}: sequence_lens values must lie in [0, {steps}] (the steps of X)")
        raise KernelError(f"node {label}: {ffi.string(lib.lrt_status_string(status)).decode()}")
