"""Specialising a plan to one input signature and compiling it into a Program (plan -> program).

The walk follows the plan's steps with every value's shape known from the feed's shapes:
  - a value computed only from constants, shapes (Shape, Size) and small integer scalar inputs
    (a sample rate) is *static*: folded to a constant for this signature, so shape arithmetic and
    an If whose condition becomes constant vanish (the taken branch is inlined);
  - every other value is *dynamic*: an instruction computes it, into the arena, or it is a view
    (Reshape, Squeeze, a Transpose or Slice that moves no data) of a value that is.
Shapes come from running the numpy plan's own kernels on zeros of the signature (the reference
semantics, once per signature).  Data movement with static parameters (Transpose, Slice, Expand,
Tile, Pad, Split, Gather of constant indices, ...) is compiled by applying the op to an array
of element indices: an affine result is a strided copy or a view, any other a lookup table.
Anything else without a compiled form raises CompileError naming the node; the backend then runs
that signature on the numpy plan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, LstmrtError, UnsupportedModelError
from .fusion import fuse_elementwise, fusion_enabled
from .kernel import lib
from .program import ALIGN, NONE, Instr, Operand, Program, PyStep, contiguous_strides

MAX_ND = 8
MAX_UNROLL = 64  # iterations of a Loop unrolled (~1 ms of compiling each); longer ones run counted


def max_arena_bytes() -> int:
    """The most working memory one program may plan: LSTMRT_MAX_ARENA_MB, else half of RAM."""
    import os
    limit = os.environ.get("LSTMRT_MAX_ARENA_MB")
    if limit:
        return int(float(limit) * 2**20)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30
SMALL_SCALAR = 4   # integer inputs of at most this many elements are part of the signature


class CompileError(UnsupportedModelError):
    """A node without a compiled form for this signature."""


class ShapeMismatch(CompileError):
    """A node whose reference kernel fails on the signature's shapes: the feed does not fit the
    model (the numpy plan then names the node to the caller)."""


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3g} MiB"


def _count(shape) -> int:
    """Elements of a shape, in Python ints (numpy's int64 product would wrap on a huge one)."""
    return math.prod(int(d) for d in shape)


@dataclass(eq=False)
class Storage:
    nbytes: int
    first: int                  # the instruction that writes it first
    last: int                   # the last instruction that reads it
    loc: int = lib.LRT_LOC_ARENA
    index: int = 0              # input number / constant number
    offset: int = 0             # arena offset, once planned
    name: str = ""              # a graph input's name


@dataclass(eq=False)
class Val:
    shape: tuple
    dtype: np.dtype
    const: np.ndarray | None = None          # static: known for this signature
    storage: Storage | None = None           # dynamic: where it lives
    offset: int = 0                          # bytes into the storage (views)
    sample: np.ndarray | None = field(default=None, repr=False)   # zeros of the shape (dynamic)

    @property
    def static(self) -> bool:
        return self.const is not None

    @property
    def size(self) -> int:
        return _count(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def value(self):
        return self.const if self.static else self.sample


@dataclass
class SymOperand:
    storage: Storage
    offset: int
    nbytes: int


F32 = np.dtype(np.float32)
BOOL = np.dtype(np.bool_)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)
DTYPE_CODES = {F32: lib.LRT_DT_F32, BOOL: lib.LRT_DT_BOOL, np.dtype(np.int32): lib.LRT_DT_I32,
               np.dtype(np.int64): lib.LRT_DT_I64, np.dtype(np.float64): lib.LRT_DT_F64}

UNARY = {"Relu": lib.LRT_ACT_RELU, "Sigmoid": lib.LRT_ACT_SIGMOID, "Tanh": lib.LRT_ACT_TANH,
         "Exp": lib.LRT_UN_EXP, "Log": lib.LRT_UN_LOG, "Neg": lib.LRT_UN_NEG, "Abs": lib.LRT_UN_ABS,
         "Sqrt": lib.LRT_UN_SQRT, "Reciprocal": lib.LRT_UN_RECIPROCAL, "Erf": lib.LRT_UN_ERF,
         "Floor": lib.LRT_UN_FLOOR, "Ceil": lib.LRT_UN_CEIL, "Sin": lib.LRT_UN_SIN, "Cos": lib.LRT_UN_COS,
         "Softplus": lib.LRT_ACT_SOFTPLUS, "Softsign": lib.LRT_ACT_SOFTSIGN}
# op -> (kind, attribute defaults (alpha, beta))
UNARY_WITH_ATTRS = {"LeakyRelu": (lib.LRT_ACT_LEAKYRELU, (0.01, 0.0)), "Elu": (lib.LRT_ACT_ELU, (1.0, 0.0)),
                    "HardSigmoid": (lib.LRT_ACT_HARDSIGMOID, (0.2, 0.5)),
                    "ThresholdedRelu": (lib.LRT_ACT_THRESHOLDEDRELU, (1.0, 0.0))}
FUSABLE_ACTIVATIONS = {"Relu": lib.LRT_ACT_RELU, "Sigmoid": lib.LRT_ACT_SIGMOID, "Tanh": lib.LRT_ACT_TANH}
ARITHMETIC = {"Add": lib.LRT_BIN_ADD, "Sub": lib.LRT_BIN_SUB, "Mul": lib.LRT_BIN_MUL, "Div": lib.LRT_BIN_DIV,
              "Pow": lib.LRT_BIN_POW, "Max": lib.LRT_BIN_MAX, "Min": lib.LRT_BIN_MIN}
COMPARISONS = {"Less": lib.LRT_BIN_LESS, "LessOrEqual": lib.LRT_BIN_LESS_EQ, "Greater": lib.LRT_BIN_GREATER,
               "GreaterOrEqual": lib.LRT_BIN_GREATER_EQ, "Equal": lib.LRT_BIN_EQUAL}
LOGIC = {"And": lib.LRT_BIN_AND, "Or": lib.LRT_BIN_OR, "Xor": lib.LRT_BIN_XOR}
REDUCTIONS = {"ReduceSum": lib.LRT_RED_SUM, "ReduceMean": lib.LRT_RED_MEAN, "ReduceMax": lib.LRT_RED_MAX,
              "ReduceMin": lib.LRT_RED_MIN, "ReduceProd": lib.LRT_RED_PROD}
# ops whose first input is the data and whose other inputs are parameters: static ones make
# them pure data movement
MOVEMENT = {"Identity", "Dropout", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice",
            "Expand", "Tile", "Pad", "Split", "Gather", "ReverseSequence"}
SHAPE_ONLY = {"Shape", "Size"}


def _broadcast_strides(shape, out_shape) -> list:
    """Element strides of a contiguous `shape` broadcast to out_shape (0 along broadcast dims)."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return [0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out_shape, contiguous_strides(shape))]


def _collapse(dims, *stride_lists):
    """Drops size-1 dims and merges neighbours every stride list allows: fewer, longer loops."""
    kept = [(d, [s[i] for s in stride_lists]) for i, d in enumerate(dims) if d != 1]
    if not kept:
        return [1], [[0] for _ in stride_lists]
    out_dims, out_strides = [kept[0][0]], [[s] for s in kept[0][1]]
    for d, strides in kept[1:]:
        if all(ss[-1] == s * d for ss, s in zip(out_strides, strides)):
            out_dims[-1] *= d
            for ss, s in zip(out_strides, strides):
                ss[-1] = s
        else:
            out_dims.append(d)
            for ss, s in zip(out_strides, strides):
                ss.append(s)
    return out_dims, out_strides


def _affine(table: np.ndarray):
    """(base, strides) when table[i...] == base + sum(i_d * strides_d), else None."""
    flat = table.reshape(-1)
    base = int(flat[0])
    strides = []
    for d, n in enumerate(table.shape):
        if n == 1:
            strides.append(0)
            continue
        index = [0] * table.ndim
        index[d] = 1
        strides.append(int(table[tuple(index)]) - base)
    expected = np.full(table.shape, base, np.int64)
    for d, (n, s) in enumerate(zip(table.shape, strides)):
        if n > 1:
            expected += (np.arange(n, dtype=np.int64) * s).reshape([-1 if a == d else 1 for a in range(table.ndim)])
    if not np.array_equal(expected, table) or any(s < 0 for s in strides):
        return None
    return base, strides


ROWS = "<member rows>"    # a group program's input: the bank rows of the members it steps


@dataclass(frozen=True)
class Banked:
    """A stream group's state: (state input, state output, batch axis, bank shape) each.  A bank
    holds one row per member along the axis; a call gathers the rows named by ROWS, and
    scatters the state outputs back into them as its last instructions.  Hashable: part of
    a group program's key."""
    entries: tuple

    @property
    def states(self) -> dict:
        return {name: (out, axis, shape) for name, out, axis, shape in self.entries}

    def bank_nbytes(self, name: str, dtype) -> int:
        return _count(self.states[name][2]) * np.dtype(dtype).itemsize


def is_signature_scalar(info) -> bool:
    """An integer input small enough that its value is part of the signature (a sample rate)."""
    if info.dtype.kind not in "iu" or info.shape is None:
        return False
    fixed = [d for d in info.shape if isinstance(d, int) and d > 0]
    return len(fixed) == len(info.shape) and _count(fixed) <= SMALL_SCALAR


class Compiler:
    """One compilation: a plan, a signature, the outputs wanted."""

    def __init__(self, plan, options, packed_cache: dict):
        self.plan = plan
        self.options = options
        self.packed = packed_cache       # shared by a backend's programs: weights packed once
        self.instrs: list[Instr] = []
        self.storages: list[Storage] = []
        self.consts: list[np.ndarray] = []
        self._const_storage: dict = {}
        self.keep: list = []
        self.env: dict[str, Val] = {}
        self.skipped: set = set()           # outputs of steps fused into an earlier instruction

    # -- values and operands ----------------------------------------------------
    def static(self, array) -> Val:
        array = np.asarray(array)
        return Val(tuple(array.shape), array.dtype, const=array)

    def new_val(self, shape, dtype) -> Val:
        dtype = np.dtype(dtype)
        size = _count(shape)
        storage = Storage(max(size * dtype.itemsize, 1), len(self.instrs), len(self.instrs))
        self.storages.append(storage)
        return Val(tuple(shape), dtype, storage=storage, sample=np.zeros(shape, dtype))

    def temp(self, nbytes: int) -> SymOperand:
        storage = Storage(max(int(nbytes), 1), len(self.instrs), len(self.instrs))
        self.storages.append(storage)
        return SymOperand(storage, 0, storage.nbytes)

    def ref(self, val: Val | None, extra_offset: int = 0):
        """An operand reading or writing `val` from `extra_offset` bytes on."""
        if val is None:
            return None
        if val.static:
            storage = self._const_for(val.const)
            return SymOperand(storage, extra_offset, storage.nbytes - extra_offset)
        val.storage.last = max(val.storage.last, len(self.instrs))
        return SymOperand(val.storage, val.offset + extra_offset, val.nbytes - extra_offset)

    def _const_for(self, array: np.ndarray) -> Storage:
        key = id(array)
        if key not in self._const_storage:
            data = np.ascontiguousarray(array)
            self.consts.append(data)
            self.keep.append(array)
            self._const_storage[key] = Storage(data.nbytes, -1, -1, lib.LRT_LOC_CONST, len(self.consts) - 1)
        return self._const_storage[key]

    def emit(self, op, operands, ints=(), floats=(), weights=(), label=""):
        self.instrs.append(Instr(op, list(operands), [int(i) for i in ints], [float(f) for f in floats],
                                 list(weights), label))

    # -- the walk ---------------------------------------------------------------
    def compile(self, feed: dict, signature_inputs: set, output_names: list, carried: dict | None = None,
                banked: Banked | None = None) -> Program:
        """carried: {state input: state output} of a stream: those inputs live in the arena
        between calls, and the program's last instructions copy each state output onto them.
        banked: a stream group's state (the feed gives its shapes for this call's members)."""
        inputs, input_nbytes, carried = [], [], carried or {}
        state_storage = {}
        banks = {}
        for name, array in feed.items():
            if banked is not None and name in banked.states:
                banks[name] = Storage(banked.bank_nbytes(name, array.dtype), -1, -1, lib.LRT_LOC_OUTPUT, len(banks))
                continue
            if name in signature_inputs:
                self.env[name] = self.static(array.copy())
                continue
            if name in carried:
                storage = state_storage[name] = Storage(max(array.nbytes, 1), -1, 1 << 62)
                self.storages.append(storage)
                self.env[name] = Val(tuple(array.shape), array.dtype, storage=storage,
                                     sample=np.zeros(array.shape, array.dtype))
                continue
            storage = Storage(max(array.nbytes, 1), -1, -1, lib.LRT_LOC_INPUT, len(inputs), name=name)
            inputs.append(name)
            input_nbytes.append(array.nbytes)
            self.env[name] = Val(tuple(array.shape), array.dtype, storage=storage,
                                 sample=np.zeros(array.shape, array.dtype))
        self.gather_rows(feed, banks, banked)
        self.walk(self.plan, output_names)
        outputs, static_outputs = [], {}
        for name in output_names:
            val = self.lookup(name, self.plan)
            if val.static:
                static_outputs[name] = val.const
                continue
            if val.storage.loc != lib.LRT_LOC_ARENA or val.storage in state_storage.values():
                # an input passed through, or a carried state the last instructions overwrite: a copy
                moved = self.new_val(val.shape, val.dtype)
                self.copy_contiguous(val, self.ref(moved), f"output '{name}'")
                val = moved
            val.storage.last = 1 << 62            # read by the caller after the call: never reused
            outputs.append((name, val))
        self.carry_state(carried, state_storage)
        self.scatter_rows(banks, banked)
        if fusion_enabled():
            self.instrs = fuse_elementwise(self.instrs, self.storages)
        arena = self.plan_arena()
        if arena > max_arena_bytes():
            biggest = max((s for s in self.storages if s.loc == lib.LRT_LOC_ARENA), key=lambda s: s.nbytes)
            raise InputError(f"this feed ({', '.join(f'{n} {list(a.shape)}' for n, a in feed.items())}) needs "
                             f"{_mib(arena)} of working memory, over the limit of "
                             f"{_mib(max_arena_bytes())} (LSTMRT_MAX_ARENA_MB); its largest value is "
                             f"{_mib(biggest.nbytes)}, made by {self.instrs[max(biggest.first, 0)].label}")
        instrs = [self.resolve_instr(i) for i in self.instrs]
        placed = [(name, val.shape, val.dtype, val.storage.offset + val.offset) for name, val in outputs]
        slots = [(name, feed[name].shape, feed[name].dtype, storage.offset) for name, storage in state_storage.items()]
        return Program(instrs, self.consts, inputs, input_nbytes, placed, arena, self.options.simd,
                       self.options.threads, self.keep, static_outputs, list(output_names), slots,
                       [(name, storage.nbytes) for name, storage in banks.items()])

    def gather_rows(self, feed: dict, banks: dict, banked: Banked | None) -> None:
        """A group program's first instructions: each state's rows for this call's members,
        gathered from the group's bank by the ROWS input."""
        for name, bank in banks.items():
            _, axis, shape = banked.states[name]
            array = feed[name]
            val = self.env[name] = self.new_val(array.shape, array.dtype)
            self.emit(lib.LRT_OP_GATHER, [SymOperand(bank, 0, bank.nbytes), self.ref(self.env[ROWS]), self.ref(val)],
                      self._row_params(shape, axis, array), label=f"state '{name}': the members' rows gathered")

    def scatter_rows(self, banks: dict, banked: Banked | None) -> None:
        """A group program's last instructions: each state output written back into its
        members' rows of the bank (after every other instruction, so a failed call leaves the
        bank as it was)."""
        for name, bank in banks.items():
            out, axis, shape = banked.states[name]
            val, slot = self.lookup(out, self.plan), self.env[name]
            if val.shape != slot.shape or val.dtype != slot.dtype:
                raise ShapeMismatch(f"state output '{out}' comes out {list(val.shape)} {val.dtype} but state input "
                                    f"'{name}' is {list(slot.shape)} {slot.dtype}")
            self.emit(lib.LRT_OP_SCATTER, [SymOperand(bank, 0, bank.nbytes), self.ref(self.env[ROWS]), self.ref(val)],
                      self._row_params(shape, axis, slot), label=f"state '{out}': the members' rows scattered")

    @staticmethod
    def _row_params(bank_shape, axis: int, part) -> list:
        """GATHER/SCATTER's parameters between a bank and `part`, its rows for one call."""
        outer = _count(bank_shape[:axis])
        inner = _count(bank_shape[axis + 1:])
        return [part.dtype.itemsize, outer, bank_shape[axis], inner, part.shape[axis], lib.LRT_DT_I64]

    def carry_state(self, carried: dict, state_storage: dict) -> None:
        """The last instructions: each state output copied onto its state input's storage (through
        temporaries when an output is itself read from a state input, which a copy would clobber)."""
        finals = []
        for inp, out in carried.items():
            val, slot = self.lookup(out, self.plan), self.env[inp]
            if val.shape != slot.shape or val.dtype != slot.dtype:
                raise ShapeMismatch(f"state output '{out}' comes out {list(val.shape)} {val.dtype} but state input "
                                    f"'{inp}' is {list(slot.shape)} {slot.dtype}")
            finals.append((val, SymOperand(state_storage[inp], 0, slot.nbytes), out))
        if any(not v.static and v.storage in state_storage.values() for v, _, _ in finals):
            staged = []
            for val, dst, out in finals:
                tmp = self.new_val(val.shape, val.dtype)
                self.copy_contiguous(val, self.ref(tmp), f"state '{out}'")
                staged.append((tmp, dst, out))
            finals = staged
        for val, dst, out in finals:
            self.copy_contiguous(val, dst, f"state '{out}'")

    def lookup(self, name: str, plan) -> Val:
        val = self.env.get(name)
        if val is None:
            if name in plan.constants:
                val = self.env[name] = self.static(plan.constants[name])
            elif name in plan.defaults:
                val = self.env[name] = self.static(plan.defaults[name])
            else:
                raise CompileError(f"value '{name}' is not computed before it is read")
        return val

    def walk(self, plan, wanted: list):
        consumers: dict = {}
        for step in plan.steps:
            for n in step.inputs:
                consumers.setdefault(n, []).append(step)
        for n in wanted:
            consumers.setdefault(n, []).append(None)
        self._consumers = consumers
        for step in plan.steps:
            if all(o in self.skipped or not o for o in step.outputs):
                continue
            self.step(plan, step)

    def sole_consumer(self, name: str):
        users = self._consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def step(self, plan, step):
        ins = [self.lookup(n, plan) if n else None for n in step.inputs]
        label = f"'{step.name}' ({step.op_type})"
        if step.op_type == "If":
            return self.inline_if(plan, step, ins)
        if step.op_type == "Loop":
            return self.loop(step, ins)
        if all(v is None or v.static for v in ins) or step.op_type in SHAPE_ONLY:
            return self.fold(step, ins)
        if any(v is not None and not v.static and v.size == 0 for v in ins):
            raise CompileError(f"node {label}: a zero-size value has no compiled form", step.op_type, step.name)
        outs = self.run_reference(step, ins)
        emitter = EMITTERS.get(step.op_type)
        marks = len(self.instrs), len(self.storages), set(self.skipped)
        try:
            if emitter is None:
                raise CompileError(f"node {label}: {step.op_type} has no compiled form", step.op_type, step.name)
            results = emitter(self, step, ins, outs, label)
        except ShapeMismatch:
            raise
        except CompileError:
            del self.instrs[marks[0]:], self.storages[marks[1]:]
            self.skipped = marks[2]
            results = self.python_step(step, ins, outs, label)
        for name, val in zip(step.outputs, results):
            if name:
                self.env[name] = val

    def run_reference(self, step, ins) -> list:
        """The output shapes and dtypes of this signature: from the op's shape rule where it has
        one (a Conv over a long chunk cost milliseconds to run on zeros), else from its numpy
        kernel run on this signature's values (zeros where dynamic)."""
        shapes = _by_shape_rule(step, ins)
        if shapes is not None:
            return [np.zeros(shape, ins[0].dtype) for shape in shapes]
        args = [None if v is None else v.value() for v in ins]
        with np.errstate(all="ignore"):
            try:
                outs = step.kernel(args)
            except LstmrtError:
                raise
            except Exception as e:
                raise ShapeMismatch(f"node '{step.name}' ({step.op_type}) cannot run on these shapes: {e}",
                                    step.op_type, step.name) from e
        return [None if o is None else np.asarray(o) for o in outs]

    def python_step(self, step, ins, outs, label) -> list:
        """The node's numpy kernel, run between two C segments on views of the arena."""
        args = []
        for name, v in zip(step.inputs, ins):
            if v is None:
                args.append(None)
            elif v.static:
                args.append(("const", v.const))
            elif v.storage.loc == lib.LRT_LOC_INPUT:    # the feed's array, or a view of it (Unsqueeze)
                args.append(("input", v.storage.name, v.offset, v.shape, v.dtype))
            else:
                args.append(("arena", self.ref(v), v.shape, v.dtype))
        results, places = [], []
        for name, ref in zip(step.outputs, outs):
            if not name or ref is None:
                results.append(None)
                places.append(None)
                continue
            val = self.new_val(ref.shape, ref.dtype)
            results.append(val)
            places.append((self.ref(val), val.shape, val.dtype))
        self.instrs.append(PyStep(step.kernel, args, places, f"{label} [Python]"))
        return results

    def fold(self, step, ins):
        if step.op_type in SHAPE_ONLY:
            x = ins[0]
            shape = np.array(x.shape, np.int64)
            if step.op_type == "Size":
                value = np.array(x.size, np.int64)
            else:
                start, end = step.attrs.get("start", 0), step.attrs.get("end")
                value = shape[start:end]
            self.env[step.outputs[0]] = self.static(value)
            return
        outs = self.run_reference(step, ins)
        for name, value in zip(step.outputs, outs):
            if name:
                self.env[name] = self.static(value)

    def inline_if(self, plan, step, ins):
        """An If whose condition is known for the signature: the taken branch, inlined.  One
        decided by the data: both branches, behind a branch instruction, each copying its
        results into the same values."""
        cond = ins[0]
        if not cond.static:
            return self.branch_if(plan, step, ins)
        taken = bool(np.asarray(cond.const).reshape(-1)[0])
        names = self.walk_branch(step.kernel, taken)
        for out, inner in zip(step.outputs, names):
            if out:
                self.env[out] = self.lookup(inner, step.kernel.plans[taken])

    def walk_branch(self, kernel, taken: bool) -> list:
        names = [o.name for o in kernel.branches[taken].output]
        saved = self._consumers
        self.walk(kernel.plans[taken], names)
        self._consumers = saved
        return names

    def branch_if(self, plan, step, ins):
        cond = ins[0]
        if cond.dtype != BOOL or cond.size != 1:
            raise _fail(step, f"a condition of {cond.dtype} {list(cond.shape)}; a single bool compiles")
        refs = self.run_reference(step, ins)
        start = len(self.instrs)
        outs = []
        for ref in refs:
            out = self.new_val(ref.shape, ref.dtype)
            out.storage.first = start
            outs.append(out)
        to_else = Instr(lib.LRT_OP_BRANCH, [self.ref(cond)], [0, 0], [], [], f"'{step.name}' (If)")
        self.instrs.append(to_else)
        self.results_of_branch(step, True, outs)
        to_end = Instr(lib.LRT_OP_BRANCH, [], [0, 1], [], [], f"'{step.name}' (If)")
        self.instrs.append(to_end)
        to_else.ints[0] = len(self.instrs)
        self.results_of_branch(step, False, outs)
        to_end.ints[0] = len(self.instrs)
        if any(isinstance(i, PyStep) for i in self.instrs[start:]):
            raise _fail(step, "a branch decided by the data holds a node without a compiled form")
        for name, out in zip(step.outputs, outs):
            if name:
                self.env[name] = out

    def results_of_branch(self, step, taken: bool, outs: list) -> None:
        """One branch's instructions, its results copied into the If's values."""
        kernel = step.kernel
        for name, out in zip(self.walk_branch(kernel, taken), outs):
            val = self.lookup(name, kernel.plans[taken])
            if val.shape != out.shape or val.dtype != out.dtype:
                raise _fail(step, f"its branches give {list(val.shape)} and {list(out.shape)} for output '{name}'; "
                                  "compiled branches must agree")
            self.copy_contiguous(val, self.ref(out), f"'{step.name}' (If)")

    def loop(self, step, ins):
        """A Loop: unrolled when its iterations are known for the signature and few (short
        loops run faster so), else one LOOP instruction running its body (compile_loop.py)."""
        from .compile_loop import counted_loop
        marks = len(self.instrs), len(self.storages), set(self.skipped)
        try:
            return self.unroll_loop(step, ins)
        except ShapeMismatch:
            raise
        except CompileError:      # a count or condition from the data, or too many iterations
            del self.instrs[marks[0]:], self.storages[marks[1]:]
            self.skipped = marks[2]
        return counted_loop(self, step, ins)

    def unroll_loop(self, step, ins):
        """A Loop whose trip count and condition are known for the signature (tf2onnx's loop over
        time steps, T from the feed's shape), unrolled: its body once per iteration, the carried
        values handed from one to the next, the scan outputs stacked."""
        kernel = step.kernel
        own = ins[:kernel.arity]
        trip, cond = own[0], own[1] if len(own) > 1 else None
        for what, val in (("trip count", trip), ("condition", cond)):
            if val is not None and not val.static:
                raise _fail(step, f"its {what} is computed from the data, so the iterations are not known")
        limit = None if trip is None else int(np.asarray(trip.const).reshape(-1)[0])
        if limit is None or limit > MAX_UNROLL:
            raise _fail(step, f"a trip count of {limit} is not unrolled (at most {MAX_UNROLL})")
        keep_going = True if cond is None else bool(np.asarray(cond.const).reshape(-1)[0])
        carried = list(own[2:])
        n_scans = len(kernel.body_outputs) - 1 - len(carried)
        scans: list = [None] * n_scans     # each scan output's buffer of `limit` rows, made at its first row
        count = 0
        saved = self._consumers
        for i in range(limit):
            if not keep_going:
                break
            self.env[kernel.body_inputs[0]] = self.static(np.array(i, np.int64))
            self.env[kernel.body_inputs[1]] = self.static(np.array(keep_going))
            for name, val in zip(kernel.body_inputs[2:], carried):
                self.env[name] = val
            self.walk(kernel.plan, kernel.body_outputs)
            results = [self.lookup(n, kernel.plan) for n in kernel.body_outputs]
            if not results[0].static:
                raise _fail(step, "its condition is computed from the data, so the iterations are not known")
            keep_going = bool(np.asarray(results[0].const).reshape(-1)[0])
            carried = results[1:1 + len(carried)]
            for k, val in enumerate(results[1 + len(carried):]):
                scans[k] = self.scan_row(scans[k], val, i, limit, step)
            count += 1
        self._consumers = saved
        if count == 0 and n_scans:
            raise _fail(step, "a scan output of no iterations has no compiled form")
        stacked = [Val((count,) + buf.shape[1:], buf.dtype, storage=buf.storage, offset=buf.offset,
                       sample=np.zeros((count,) + buf.shape[1:], buf.dtype)) for buf in scans]
        for name, val in zip(step.outputs, carried + stacked):
            if name:
                self.env[name] = val

    def scan_row(self, buf, val: Val, i: int, rows: int, step) -> Val:
        """Row i of a scan output, copied in as soon as its iteration made it (so that each
        iteration's values die with it, not at the loop's end)."""
        if buf is None:
            buf = self.new_val((rows,) + val.shape, val.dtype)
        elif buf.shape[1:] != val.shape or buf.dtype != val.dtype:
            raise _fail(step, f"its scan output changes shape between iterations "
                              f"({list(buf.shape[1:])}, {list(val.shape)})")
        self.copy_contiguous(val, self.ref(buf, i * val.nbytes), f"'{step.name}' (Loop scan)")
        return buf

    # -- shared emitters --------------------------------------------------------
    def copy_contiguous(self, src: Val, dst: SymOperand, label: str):
        self.emit(lib.LRT_OP_COPY, [self.ref(src), dst], [src.dtype.itemsize, 1, max(src.size, 1), 1, 1],
                  label=label)

    # -- the arena ----------------------------------------------------------------
    def plan_arena(self) -> int:
        """Offsets for the arena's storages: each lives from its first write to its last read;
        a storage whose life is over is reused (first fit)."""
        live: list[Storage] = []
        end = 0
        for s in sorted((s for s in self.storages if s.loc == lib.LRT_LOC_ARENA), key=lambda s: s.first):
            live = [o for o in live if o.last >= s.first]
            size = -(-s.nbytes // ALIGN) * ALIGN
            offset = 0
            for o in sorted(live, key=lambda o: o.offset):
                if o.offset - offset >= size:
                    break
                offset = max(offset, o.offset + -(-o.nbytes // ALIGN) * ALIGN)
            s.offset = offset
            live.append(s)
            end = max(end, offset + size)
        return end

    def resolve_instr(self, i):
        if isinstance(i, PyStep):
            args = [a if a is None or a[0] != "arena" else ("arena", self.resolve(a[1]).offset, a[2], a[3])
                    for a in i.args]
            outs = [None if o is None else (self.resolve(o[0]).offset, o[1], o[2]) for o in i.outputs]
            return PyStep(i.kernel, args, outs, i.label)
        return Instr(i.op, [self.resolve(o) for o in i.operands], i.ints, i.floats, i.weights, i.label)

    def resolve(self, o) -> Operand:
        if o is None:
            return NONE
        base = o.storage.offset if o.storage.loc == lib.LRT_LOC_ARENA else 0
        return Operand(o.storage.loc, o.storage.index, base + o.offset, o.nbytes)


def _by_shape_rule(step, ins: list):
    """The step's output shapes by its op's shape rule: None where it has none, or its inputs
    are not of one dtype (the outputs take it), or the rule does not cover these shapes."""
    if step.output_shapes is None or not ins or ins[0] is None or len({v.dtype for v in ins if v is not None}) != 1:
        return None
    return step.output_shapes([None if v is None else v.shape for v in ins])


# ---- emitters: (compiler, step, input Vals, reference outputs, label) -> output Vals ----------
EMITTERS = {}


def emitter(*ops):
    def register(fn):
        for name in ops:
            EMITTERS[name] = fn
        return fn
    return register


def _fail(step, message):
    return CompileError(f"node '{step.name}' ({step.op_type}): {message}", step.op_type, step.name)


def _need_static(step, ins, first: int = 1):
    for i, v in enumerate(ins[first:], first):
        if v is not None and not v.static:
            raise _fail(step, f"input {i} ('{step.inputs[i]}') is computed from the data; "
                              "only a constant has a compiled form here")


def _need_f32(step, *vals):
    for v in vals:
        if v is not None and v.dtype != F32:
            raise _fail(step, f"computes on {v.dtype} values; compiled ops compute float32")


@emitter(*MOVEMENT)
def _movement(c: Compiler, step, ins, outs, label):
    if step.op_type == "Gather" and not ins[1].static:
        return [_gather(c, step, ins, outs, label)]
    _need_static(step, ins)
    x = ins[0]
    if step.op_type == "Pad" and step.attrs.get("value", 0.0) != 0.0:
        raise _fail(step, "a legacy Pad with a non-zero value attribute has no compiled form")
    # element indices, shifted by one so that 0 marks a padded (constant) element
    index = np.arange(1, x.size + 1, dtype=np.int64).reshape(x.shape)
    args = [index] + [None if v is None else v.const for v in ins[1:]]
    if step.op_type == "Pad" and len(args) > 2 and args[2] is not None:
        fill = args[2]
        args[2] = np.zeros_like(np.asarray(fill), dtype=np.int64)
    else:
        fill = None
    tables = step.kernel(args)
    results = []
    for table, ref in zip(tables, outs):
        results.append(_moved(c, x, np.asarray(table) - 1, ref, fill, label))
    return results


def _moved(c: Compiler, x: Val, table: np.ndarray, ref, fill, label) -> Val:
    shape = tuple(ref.shape)
    if table.size == 0:
        raise CompileError(f"node {label}: a zero-size value has no compiled form")
    fit = _affine(table) if table.min() >= 0 else None
    esize = x.dtype.itemsize
    if fit is not None:
        base, strides = fit
        if [s for s, n in zip(strides, shape) if n > 1] == [s for s, n in zip(contiguous_strides(shape), shape) if n > 1]:
            return Val(shape, x.dtype, storage=x.storage, offset=x.offset + base * esize,
                       sample=np.zeros(shape, x.dtype))         # a view: no instruction
        dims, (src, dst) = _collapse(list(shape), strides, contiguous_strides(shape))
        if len(dims) <= MAX_ND:
            out = c.new_val(shape, x.dtype)
            c.emit(lib.LRT_OP_COPY, [c.ref(x, base * esize), c.ref(out)], [esize, len(dims), *dims, *src, *dst],
                   label=label)
            return out
    out = c.new_val(shape, x.dtype)
    table = np.ascontiguousarray(table.reshape(-1), dtype=np.int64)
    bits = 0
    if fill is not None:
        bits = int(np.frombuffer(np.asarray(fill, x.dtype).reshape(-1)[:1].tobytes().ljust(8, b"\0"), np.int64)[0])
    c.emit(lib.LRT_OP_INDEX, [c.ref(x), c.ref(c.static(table)), c.ref(out)], [esize, table.size, bits], label=label)
    return out


def _gather(c: Compiler, step, ins, outs, label) -> Val:
    data, idx = ins
    axis = step.attrs.get("axis", 0) % max(len(data.shape), 1)
    if idx.dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
        raise _fail(step, f"indices of type {idx.dtype}")
    out = c.new_val(outs[0].shape, data.dtype)
    outer = _count(data.shape[:axis])
    inner = _count(data.shape[axis + 1:])
    c.emit(lib.LRT_OP_GATHER, [c.ref(data), c.ref(idx), c.ref(out)],
           [data.dtype.itemsize, outer, data.shape[axis], inner, idx.size, DTYPE_CODES[idx.dtype]], label=label)
    return out


@emitter("Concat")
def _concat(c: Compiler, step, ins, outs, label):
    ref = outs[0]
    out = c.new_val(ref.shape, ref.dtype)
    axis = step.attrs["axis"] % ref.ndim
    out_strides = contiguous_strides(ref.shape)
    at = 0
    for v in ins:
        if v is None or v.size == 0:
            at += 0 if v is None else v.shape[axis]
            continue
        dims, (src, dst) = _collapse(list(v.shape), contiguous_strides(v.shape), out_strides)
        c.emit(lib.LRT_OP_COPY, [c.ref(v), c.ref(out, at * out_strides[axis] * ref.dtype.itemsize)],
               [ref.dtype.itemsize, len(dims), *dims, *src, *dst], label=label)
        at += v.shape[axis]
    return [out]


def _fusable_activation(c: Compiler, name: str):
    """(kind, the activation step's output) when `name` feeds only a Relu/Sigmoid/Tanh."""
    user = c.sole_consumer(name)
    if user is not None and user.op_type in FUSABLE_ACTIVATIONS:
        return FUSABLE_ACTIVATIONS[user.op_type], user.outputs[0]
    return lib.LRT_UN_IDENTITY, None


def _fusable_bias(c: Compiler, name: str, n: int):
    """(bias [n], the Add's output) when `name` feeds only an Add of a constant vector of n."""
    user = c.sole_consumer(name)
    if user is None or user.op_type != "Add":
        return None, None
    other = [i for i in user.inputs if i != name]
    if len(other) != 1 or user.inputs.count(name) != 1:
        return None, None
    val = c.env.get(other[0])
    if val is None and other[0] in c.plan.constants:
        val = c.static(c.plan.constants[other[0]])
    if val is None or not val.static or val.dtype != F32 or val.const.size != n or \
            (val.const.ndim and val.const.shape[-1] != n):
        return None, None
    return val.const.reshape(n), user.outputs[0]


def _foldable_batch_norm(c: Compiler, name: str, channels: int):
    """(multiplier, addend, its output) when `name` feeds only an inference BatchNormalization
    of constant parameters, to fold into the weights producing it."""
    user = c.sole_consumer(name)
    if user is None or user.op_type != "BatchNormalization" or user.inputs[0] != name or \
            user.attrs.get("training_mode", 0) or any(o for o in user.outputs[1:]):
        return None
    params = [c.env.get(n) or (c.static(c.plan.constants[n]) if n in c.plan.constants else None) for n in user.inputs[1:5]]
    if any(v is None or not v.static or v.const.size != channels for v in params):
        return None
    scale, bias, mean, var = (np.asarray(v.const, np.float64).reshape(-1) for v in params)
    mul = scale / np.sqrt(var + user.attrs.get("epsilon", 1e-5))
    return mul, bias - mean * mul, user.outputs[0]


def _dense_weights(c: Compiler, key, W_nk: np.ndarray, bias):
    """Packed once per node and contents: a constant folded per signature may differ from one
    signature to the next, so the weights packed before are reused only for the same values
    (the same memory, for the plan's own constants: no comparison)."""
    from .kernel import DenseWeights
    seen = c.packed.setdefault((key, W_nk.shape, bias is not None), [])
    for w, b, weights in seen:
        if _same_values(w, W_nk) and (bias is None or _same_values(b, bias)):
            return weights
    weights = DenseWeights(W_nk, bias, c.options.simd, c.options.precision)
    seen.append((W_nk, bias, weights))      # W_nk kept: its memory cannot be reused for other values
    return weights


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays: one view of the same (never written) memory, else equal contents."""
    if a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype and \
            a.__array_interface__["data"][0] == b.__array_interface__["data"][0]:
        return True
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _emit_dense(c: Compiler, step, a: Val, W_nk: np.ndarray, bias, label, key):
    """y = act(a @ W^T + bias) over a's leading dims, fusing a following bias Add and activation."""
    n = W_nk.shape[0]
    out_name = step.outputs[0]
    if bias is None:
        bias, fused_add = _fusable_bias(c, out_name, n)
        if fused_add is not None:
            c.skipped.add(fused_add)
            out_name = fused_add
    act, fused_act = _fusable_activation(c, out_name)
    if fused_act is not None:
        c.skipped.add(fused_act)
    weights = _dense_weights(c, key, W_nk, bias)
    m = a.size // W_nk.shape[1]
    out = c.new_val(a.shape[:-1] + (n,), F32)
    scratch = (0 if n == weights.ldc else m * weights.ldc) + weights.scratch_floats
    c.emit(lib.LRT_OP_DENSE, [c.ref(a), c.ref(out), c.temp(scratch * 4) if scratch else None], [m, act],
           weights=[weights.handle], label=label)
    for fused in (out_name if out_name != step.outputs[0] else None, fused_act):
        if fused:
            c.env[fused] = out
    return out


@emitter("MatMul")
def _matmul(c: Compiler, step, ins, outs, label):
    a, b = ins
    _need_f32(step, a, b)
    if b.static and b.const.ndim == 2 and not a.static and a.shape and a.shape[-1] == b.shape[0]:
        return [_emit_dense(c, step, a, np.ascontiguousarray(b.const.T), None, label, (step.name, "W"))]
    ref = outs[0]
    if a.static or len(a.shape) < 2 or len(b.shape) < 2:
        raise _fail(step, "this MatMul form (a constant left operand or a vector) has no compiled form")
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = ref.shape[:-2]
    count = _count(batch)
    strides = []
    for v in (a, b):
        vb = v.shape[:-2]
        if _count(vb) == 1:
            strides.append(0)
        elif tuple(vb) == tuple(batch):
            strides.append(v.shape[-2] * v.shape[-1])
        else:
            raise _fail(step, "batch dims broadcast partially")
    out = c.new_val(ref.shape, F32)
    c.emit(lib.LRT_OP_MATMUL, [c.ref(a), c.ref(b), c.ref(out)], [count, M, K, N, *strides], label=label)
    return [out]


@emitter("Gemm")
def _gemm(c: Compiler, step, ins, outs, label):
    a, b = ins[0], ins[1]
    bias_val = ins[2] if len(ins) > 2 else None
    _need_static(step, ins)
    _need_f32(step, a, b)
    if step.attrs.get("transA", 0):
        raise _fail(step, "transA=1 has no compiled form")
    alpha, beta = step.attrs.get("alpha", 1.0), step.attrs.get("beta", 1.0)
    B = b.const if step.attrs.get("transB", 0) else b.const.T
    W = np.ascontiguousarray(B * np.float32(alpha), dtype=np.float32)
    n = W.shape[0]
    bias = None
    if bias_val is not None:
        cst = np.asarray(bias_val.const, np.float32) * np.float32(beta)
        if cst.size == 1:
            bias = np.full(n, cst.reshape(-1)[0], np.float32)
        elif cst.size == n and (cst.ndim == 1 or cst.shape[-1] == n):
            bias = cst.reshape(n)
        else:
            raise _fail(step, f"a bias C of shape {list(cst.shape)} has no compiled form")
    return [_emit_dense(c, step, a, W, bias, label, (step.name, "gemm"))]


@emitter("Conv")
def _conv(c: Compiler, step, ins, outs, label):
    from .ops.nn import _conv_pads
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    _need_static(step, ins)
    _need_f32(step, x, w)
    rank = len(x.shape) - 2
    if rank not in (1, 2):
        raise _fail(step, f"a {rank}-D convolution has no compiled form (1-D and 2-D do)")
    W = w.const
    kernel = list(W.shape[2:])
    strides = step.attrs.get("strides", [1] * rank)
    dilations = step.attrs.get("dilations", [1] * rank)
    pads = _conv_pads(step, x.shape[2:], kernel, strides, dilations)
    group = step.attrs.get("group", 1)
    ref = outs[0]
    out_spatial = list(ref.shape[2:])
    if rank == 1:
        ih, iw, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow = (1, x.shape[2], 1, kernel[0], 0, pads[0][0], 1, strides[0],
                                                          1, dilations[0], 1, out_spatial[0])
    else:
        ih, iw = x.shape[2:]
        kh, kw = kernel
        (ph, _), (pw, _) = pads
        sh, sw = strides
        dh, dw = dilations
        oh, ow = out_spatial
    cout, cin = W.shape[0], x.shape[1]
    cout_g = cout // group
    bias_all = None if b is None else np.asarray(b.const, np.float32)
    out_name = step.outputs[0]
    folded = _foldable_batch_norm(c, out_name, cout)
    if folded is not None:     # y = (conv(x) - mean) * scale / sqrt(var + eps) + bias, in the weights
        mul, add, out_name = folded
        W = (W.astype(np.float64) * mul.reshape([-1] + [1] * (W.ndim - 1))).astype(np.float32)
        bias_all = ((0.0 if bias_all is None else bias_all.astype(np.float64)) * mul + add).astype(np.float32)
        c.skipped.add(out_name)
    act, fused_act = _fusable_activation(c, out_name)
    if fused_act is not None:
        c.skipped.add(fused_act)
    weights = []
    for g in range(group):
        # K ordered (kh, kw, ci): the order of the channel-last windows csrc/program.c reads
        taps = W[g * cout_g:(g + 1) * cout_g].reshape(cout_g, cin // group, kh, kw).transpose(0, 2, 3, 1)
        rows = np.ascontiguousarray(taps.reshape(cout_g, -1), np.float32)
        bias = None if bias_all is None else np.ascontiguousarray(bias_all[g * cout_g:(g + 1) * cout_g])
        weights.append(_dense_weights(c, (step.name, "conv", g, folded is not None), rows, bias))
    out = c.new_val(ref.shape, F32)
    c.emit(lib.LRT_OP_CONV, [c.ref(x), c.ref(out), c.temp(_conv_scratch(weights[0], cin // group, oh, ow, kh, kw,
                                                                        sh, sw, dh, dw) * 4)],
           [x.shape[0], cin, cout, group, act, ih, iw, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow],
           weights=[wt.handle for wt in weights], label=label)
    for fused in (out_name if folded is not None else None, fused_act):
        if fused:
            c.env[fused] = out
    return [out]


def _conv_scratch(weights, cin_g, oh, ow, kh, kw, sh, sw, dh, dw) -> int:
    """Floats of scratch a CONV instruction needs: as conv_plan_of in csrc/program.c."""
    padded = ((oh - 1) * sh + (kh - 1) * dh + 1) * ((ow - 1) * sw + (kw - 1) * dw + 1) * cin_g
    cols = 0 if kh == 1 and dw == 1 else oh * ow * cin_g * kh * kw
    return padded + cols + oh * ow * weights.ldc + weights.scratch_floats


@emitter(*UNARY, *UNARY_WITH_ATTRS, "Clip", "Gelu", "Not")
def _unary(c: Compiler, step, ins, outs, label):
    x = ins[0]
    alpha = beta = 0.0
    if step.op_type == "Not":
        if x.dtype != BOOL:
            raise _fail(step, f"Not of {x.dtype}")
        kind = lib.LRT_UN_NOT
    else:
        _need_f32(step, x)
        if step.op_type in UNARY:
            kind = UNARY[step.op_type]
        elif step.op_type in UNARY_WITH_ATTRS:
            kind, (da, db) = UNARY_WITH_ATTRS[step.op_type]
            alpha, beta = step.attrs.get("alpha", da), step.attrs.get("beta", db)
        elif step.op_type == "Gelu":
            if step.attrs.get("approximate", "none") != "none":
                raise _fail(step, "the tanh approximation has no compiled form")
            kind = lib.LRT_UN_GELU
        else:
            _need_static(step, ins)
            kind = lib.LRT_UN_CLIP
            lo = ins[1].const if len(ins) > 1 and ins[1] is not None else step.attrs.get("min", -np.inf)
            hi = ins[2].const if len(ins) > 2 and ins[2] is not None else step.attrs.get("max", np.inf)
            alpha, beta = float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])
    out = c.new_val(x.shape, x.dtype)
    c.emit(lib.LRT_OP_UNARY, [c.ref(x), c.ref(out)], [kind, x.size], [alpha, beta], label=label)
    return [out]


def _broadcast(c: Compiler, op, vals, out: Val, head: list, label: str):
    """An elementwise instruction over `vals` broadcast to out's shape (collapsed dims)."""
    stride_lists = [_broadcast_strides(v.shape, out.shape) for v in vals]
    dims, strides = _collapse(list(out.shape), *stride_lists, contiguous_strides(out.shape))
    if len(dims) > MAX_ND:
        raise CompileError(f"node {label}: broadcasting over more than {MAX_ND} dims")
    c.emit(op, [c.ref(v) for v in vals] + [c.ref(out)], head + [len(dims), *dims, *[s for ss in strides[:-1] for s in ss]],
           label=label)


@emitter(*ARITHMETIC, *COMPARISONS, *LOGIC)
def _binary(c: Compiler, step, ins, outs, label):
    op = step.op_type
    vals = [v for v in ins if v is not None]
    if op in LOGIC:
        if any(v.dtype != BOOL for v in vals):
            raise _fail(step, "logic on non-bool values")
        kind = LOGIC[op]
    else:
        if len({v.dtype for v in vals}) != 1 or vals[0].dtype not in (F32, I32, I64) or \
                (op == "Pow" and vals[0].dtype != F32):
            raise _fail(step, f"{op} of {' and '.join(str(v.dtype) for v in vals)} has no compiled form")
        kind = ARITHMETIC.get(op, COMPARISONS.get(op))
    if len(vals) != 2:
        if op not in ("Max", "Min") or len(vals) < 2:
            raise _fail(step, f"{len(vals)} operands")
    ref = outs[0]
    result = vals[0]
    for i, v in enumerate(vals[1:]):   # variadic Max/Min: a chain of pairs
        shape = ref.shape if i == len(vals) - 2 else np.broadcast_shapes(result.shape, v.shape)
        out = c.new_val(shape, ref.dtype)
        _broadcast(c, lib.LRT_OP_BINARY, [result, v], out, [kind, DTYPE_CODES[v.dtype]], label)
        result = out
    return [result]


@emitter("Sum", "Mean")
def _sum_mean(c: Compiler, step, ins, outs, label):
    vals = [v for v in ins if v is not None]
    _need_f32(step, *vals)
    ref = outs[0]
    result = vals[0]
    for i, v in enumerate(vals[1:]):
        out = c.new_val(np.broadcast_shapes(result.shape, v.shape), F32)
        _broadcast(c, lib.LRT_OP_BINARY, [result, v], out, [lib.LRT_BIN_ADD, lib.LRT_DT_F32], label)
        result = out
    if step.op_type == "Mean" and len(vals) > 1:
        out = c.new_val(ref.shape, F32)
        _broadcast(c, lib.LRT_OP_BINARY, [result, c.static(np.float32(1.0 / len(vals)))], out,
                   [lib.LRT_BIN_MUL, lib.LRT_DT_F32], label)
        result = out
    return [result]


@emitter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Compiler, step, ins, outs, label):
    x = ins[0]
    _need_f32(step, x)
    kind = lib.LRT_RED_MEAN if step.op_type == "GlobalAveragePool" else lib.LRT_RED_MAX
    out = c.new_val(outs[0].shape, F32)
    c.emit(lib.LRT_OP_REDUCE, [c.ref(x), c.ref(out)],
           [kind, x.shape[0] * x.shape[1], _count(x.shape[2:]), 1], label=label)
    return [out]


@emitter("MaxPool", "AveragePool")
def _pool(c: Compiler, step, ins, outs, label):
    """Windows gathered by a lookup table (padding: -inf for max, 0 for average), then a
    reduction over each window, and for an average the division by its count."""
    from numpy.lib.stride_tricks import sliding_window_view

    from .ops.nn import _conv_pads
    x = ins[0]
    _need_f32(step, x)
    kernel = list(step.attrs["kernel_shape"])
    rank = len(kernel)
    strides = step.attrs.get("strides", [1] * rank)
    dilations = step.attrs.get("dilations", [1] * rank)
    pads = [(0, 0), (0, 0)] + _conv_pads(step, x.shape[2:], kernel, strides, dilations)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    axes = tuple(range(2, len(x.shape)))
    picks = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
        + tuple(slice(None, None, d) for d in dilations)
    index = np.pad(np.arange(1, x.size + 1, dtype=np.int64).reshape(x.shape), pads)   # 0: padding
    windows = sliding_window_view(index, span, axis=axes)[picks]
    ref = outs[0]
    taps = _count(kernel)
    table = np.ascontiguousarray(windows.reshape(-1), dtype=np.int64) - 1
    is_max = step.op_type == "MaxPool"
    fill = np.float32(-np.inf if is_max else 0.0)
    gathered = c.new_val((ref.size, taps), F32)
    c.emit(lib.LRT_OP_INDEX, [c.ref(x), c.ref(c.static(table)), c.ref(gathered)],
           [4, table.size, int(np.frombuffer(fill.tobytes() + b"\0" * 4, np.int64)[0])], label=label)
    summed = c.new_val(ref.shape, F32)
    c.emit(lib.LRT_OP_REDUCE, [c.ref(gathered), c.ref(summed)],
           [lib.LRT_RED_MAX if is_max else lib.LRT_RED_SUM, ref.size, taps, 1], label=label)
    if is_max:
        return [summed]
    if step.attrs.get("count_include_pad", 0):
        count = np.full(ref.shape[2:], float(taps))
    else:
        count = (windows[0, 0] > 0).reshape(*ref.shape[2:], taps).sum(axis=-1).astype(np.float64)
    out = c.new_val(ref.shape, F32)
    _broadcast(c, lib.LRT_OP_BINARY, [summed, c.static((1.0 / count).astype(np.float32))], out,
               [lib.LRT_BIN_MUL, lib.LRT_DT_F32], label)
    return [out]


@emitter("Where")
def _where(c: Compiler, step, ins, outs, label):
    cond, a, b = ins
    if cond.dtype != BOOL or a.dtype != b.dtype:
        raise _fail(step, "operand types")
    out = c.new_val(outs[0].shape, a.dtype)
    _broadcast(c, lib.LRT_OP_WHERE, [cond, a, b], out, [a.dtype.itemsize], label)
    return [out]


@emitter("Cast")
def _cast(c: Compiler, step, ins, outs, label):
    x, ref = ins[0], outs[0]
    if x.dtype == ref.dtype:
        return [x]
    if x.dtype not in DTYPE_CODES or ref.dtype not in DTYPE_CODES:
        raise _fail(step, f"a cast from {x.dtype} to {ref.dtype}")
    out = c.new_val(x.shape, ref.dtype)
    c.emit(lib.LRT_OP_CAST, [c.ref(x), c.ref(out)], [DTYPE_CODES[x.dtype], DTYPE_CODES[ref.dtype], x.size],
           label=label)
    return [out]


@emitter("Softmax", "LogSoftmax")
def _softmax(c: Compiler, step, ins, outs, label):
    x = ins[0]
    _need_f32(step, x)
    nd = len(x.shape)
    legacy = c.plan.opset < 13
    axis = step.attrs.get("axis", 1 if legacy else -1) % max(nd, 1)
    outer = _count(x.shape[:axis])
    if legacy:
        n, inner = _count(x.shape[axis:]), 1
    else:
        n, inner = x.shape[axis], _count(x.shape[axis + 1:])
    out = c.new_val(x.shape, F32)
    c.emit(lib.LRT_OP_SOFTMAX, [c.ref(x), c.ref(out)], [outer, n, inner, step.op_type == "LogSoftmax"], label=label)
    return [out]


@emitter(*REDUCTIONS)
def _reduce(c: Compiler, step, ins, outs, label):
    from .ops.math import _AXES_AS_INPUT_SINCE
    x = ins[0]
    _need_f32(step, x)
    _need_static(step, ins)
    if c.plan.opset >= _AXES_AS_INPUT_SINCE[step.op_type]:
        axes = ins[1].const if len(ins) > 1 and ins[1] is not None and ins[1].const.size else None
    else:
        axes = step.attrs.get("axes")
    nd = len(x.shape)
    if axes is None:
        if step.attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(nd))
    axes = sorted(int(a) % nd for a in np.asarray(axes).reshape(-1))
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise _fail(step, f"reducing over axes {axes}, not one run of neighbours")
    outer = _count(x.shape[:axes[0]])
    r = _count(x.shape[axes[0]:axes[-1] + 1])
    inner = _count(x.shape[axes[-1] + 1:])
    out = c.new_val(outs[0].shape, F32)
    c.emit(lib.LRT_OP_REDUCE, [c.ref(x), c.ref(out)], [REDUCTIONS[step.op_type], outer, r, inner], label=label)
    return [out]


@emitter("LayerNormalization")
def _layer_norm(c: Compiler, step, ins, outs, label):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    _need_f32(step, x, scale, bias)
    if any(o for o in step.outputs[1:]):
        raise _fail(step, "the Mean and InvStdDev outputs have no compiled form")
    axis = step.attrs.get("axis", -1) % len(x.shape)
    n = _count(x.shape[axis:])
    for v in (scale, bias):
        if v is not None and v.size != n:
            raise _fail(step, "a scale or bias that broadcasts")
    out = c.new_val(x.shape, F32)
    c.emit(lib.LRT_OP_LAYERNORM, [c.ref(x), c.ref(scale), c.ref(bias), c.ref(out)], [x.size // n, n],
           [step.attrs.get("epsilon", 1e-5)], label=label)
    return [out]


@emitter("BatchNormalization")
def _batch_norm(c: Compiler, step, ins, outs, label):
    """Inference batch norm as one multiply-add per channel, its constants folded here."""
    x = ins[0]
    _need_static(step, ins)
    _need_f32(step, x)
    if any(o for o in step.outputs[1:]) or step.attrs.get("training_mode", 0):
        raise _fail(step, "training mode has no compiled form")
    scale, bias, mean, var = (np.asarray(v.const, np.float64) for v in ins[1:5])
    mul = scale / np.sqrt(var + step.attrs.get("epsilon", 1e-5))
    add = bias - mean * mul
    channel = [1, -1] + [1] * (len(x.shape) - 2)
    scaled = c.new_val(x.shape, F32)
    _broadcast(c, lib.LRT_OP_BINARY, [x, c.static(mul.astype(np.float32).reshape(channel))], scaled,
               [lib.LRT_BIN_MUL, lib.LRT_DT_F32], label)
    out = c.new_val(x.shape, F32)
    _broadcast(c, lib.LRT_OP_BINARY, [scaled, c.static(add.astype(np.float32).reshape(channel))], out,
               [lib.LRT_BIN_ADD, lib.LRT_DT_F32], label)
    return [out]


def _transposed(c: Compiler, val: Val | None, perm: list, label: str) -> Val | None:
    """val with its axes permuted, as one strided copy (None stays None)."""
    if val is None:
        return None
    shape = [val.shape[p] for p in perm]
    strides = contiguous_strides(val.shape)
    dims, (src, dst) = _collapse(shape, [strides[p] for p in perm], contiguous_strides(shape))
    out = c.new_val(tuple(shape), val.dtype)
    c.emit(lib.LRT_OP_COPY, [c.ref(val), c.ref(out)], [val.dtype.itemsize, len(dims), *dims, *src, *dst], label=label)
    return out


@emitter("LSTM", "GRU", "RNN")
def _recurrent(c: Compiler, step, ins, outs, label):
    """The cell on the kernel; layout 1 (batch first) through transposes around it."""
    node = step.kernel
    if node.packed is None:
        raise _fail(step, "weights computed at run time have no compiled form")
    ins = list(ins) + [None] * (8 - len(ins))
    x, seq, h0, c0 = ins[0], ins[4], ins[5], ins[6]
    _need_f32(step, x, h0, c0)
    if len(x.shape) != 3:
        raise _fail(step, "X must be rank 3")
    if node.layout == 1:   # [B, T, I] and [B, D, H] in, [B, T, D, H] and [B, D, H] out
        x, h0, c0 = (_transposed(c, v, [1, 0, 2], label) for v in (x, h0, c0))
    T, B, _ = x.shape
    if seq is not None and seq.static and np.all(np.asarray(seq.const) == T):
        seq = None            # every sequence whole: no lengths to pass
    if seq is not None and (seq.dtype != I32 or seq.size != B):
        raise _fail(step, f"sequence_lens of {seq.dtype} {list(seq.shape)}; int32 [{B}] compiles")
    weights = node.packed
    H, D = weights[0].spec.hidden_size, node.num_directions
    lstm = node.cell == "LSTM"
    names = list(step.outputs) + [""] * (3 - len(step.outputs))
    y = c.new_val((T, D, B, H), F32) if names[0] else None
    yh = c.new_val((D, B, H), F32)
    yc = c.new_val((D, B, H), F32) if lstm else None
    ws_floats = weights[0].workspace_floats(B, T, c.options.threads)
    c.emit(lib.LRT_OP_RECURRENT, [c.ref(x), c.ref(h0), c.ref(c0) if lstm else None, c.ref(y), c.ref(yh),
                                  c.ref(yc), c.temp(ws_floats * 4), c.ref(seq)],
           [T, B, D, node.direction == "reverse"], weights=[w.handle for w in weights], label=label)
    if node.layout == 1:
        y = _transposed(c, y, [2, 0, 1, 3], label)
        yh, yc = (_transposed(c, v, [1, 0, 2], label) for v in (yh, yc))
    return [y, yh, yc][:len(step.outputs)]
