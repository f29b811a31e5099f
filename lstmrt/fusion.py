"""Elementwise fusion: float32 UNARY/BINARY instructions over one output merged into one
LRT_OP_FUSED instruction (csrc/ops_fused.c), which walks the output in blocks and keeps the
group's intermediates in L1-sized registers instead of writing each one to the arena.

A pass over the compiler's instruction list before the arena is planned: instruction indices
are the storages' lifetimes, renumbered here.  A group's instruction takes the place of its last
member, so the members before it move later; an instruction between them stays where it is and
must not read what a member writes, nor write what a member reads or writes (else the group ends
before it).  Branches, branch targets and Python steps end every open group.  A value a member
writes is an output of the group when anything after the group reads it (an instruction, a
Python step, the caller: a program output or a carried state is read "at the end"); otherwise it
lives only in a register and its storage leaves the arena.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .kernel import lib
from .program import Instr, PyStep, contiguous_strides

# members a group needs to be fused: each member absorbed saves a plain instruction's dispatch
# (a few ns), starting a FUSED instruction costs about two of them (measured on AVX-512: groups of
# 2 ops were no faster below 4096 floats, 3-4 broke even, 5+ gained; large outputs gain at any size)
MIN_GROUP = 3
MAX_REGS = lib.LRT_FUSED_MAX_REGS
# ops whose last operand is the only one written (others: every operand may be written)
LAST_WRITTEN = {lib.LRT_OP_UNARY, lib.LRT_OP_BINARY, lib.LRT_OP_COPY, lib.LRT_OP_CAST, lib.LRT_OP_WHERE,
                lib.LRT_OP_INDEX, lib.LRT_OP_GATHER, lib.LRT_OP_FILL}
# control flow: its instruction and its target (a branch's; a loop's end) end every group, and
# the target is renumbered
CONTROL = {lib.LRT_OP_BRANCH, lib.LRT_OP_LOOP}
# the ops this pass knows how to move instructions around; a program holding any other (one
# added later) is left unfused
KNOWN_OPS = set(range(lib.LRT_OP_COPY, lib.LRT_OP_BRANCH + 1)) | CONTROL | {
    lib.LRT_OP_FUSED, lib.LRT_OP_SCAN_ROW, lib.LRT_OP_SCATTER}


def fusion_enabled() -> bool:
    """LSTMRT_FUSE=0 compiles every elementwise op as its own instruction (to measure fusion)."""
    return os.environ.get("LSTMRT_FUSE", "1") != "0"


@dataclass(eq=False)
class Member:
    """One fusable instruction, as a step over its flattened output `dims`."""
    index: int
    instr: Instr
    unary: bool
    kind: int
    reads: list           # SymOperands
    strides: list         # per read: element strides over dims
    dims: list            # the output's collapsed dims
    out: object           # the written SymOperand

    @property
    def size(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


@dataclass(eq=False)
class Group:
    size: int
    bounds: set                                   # suffix products of every member's dims
    members: list = field(default_factory=list)
    reads: set = field(default_factory=set)       # storages members read
    writes: dict = field(default_factory=dict)    # storage -> the member writing it
    external_reads: int = 0                       # bounds the input registers
    inputs: set = field(default_factory=set)      # (storage, offset) of the values read from outside

    def registers_bound(self) -> int:
        return self.external_reads + len(self.members)


def fuse_elementwise(instrs: list, storages: list) -> list:
    """The instruction list with every group worth fusing replaced by one FUSED instruction;
    `storages` renumbered in place (the values kept in registers removed)."""
    if any(isinstance(i, Instr) and i.op not in KNOWN_OPS for i in instrs):
        return instrs
    groups = [g for g in find_groups(instrs) if worth_fusing(g)]
    if not groups:
        return instrs
    new, where, before, internal = _replace_groups(instrs, groups)
    for instr in new:                     # no group straddles a branch target or a loop's end
        if isinstance(instr, Instr) and instr.op in CONTROL:
            instr.ints[0] = before[instr.ints[0]]
    storages[:] = [s for s in storages if s not in internal]
    for s in storages:
        s.first, s.last = (_renumber(x, where, len(instrs), len(new)) for x in (s.first, s.last))
    for index, instr in enumerate(new):   # an input whose last other reader came before the group's end
        if isinstance(instr, Instr) and instr.op == lib.LRT_OP_FUSED:
            for op in instr.operands[:instr.ints[0]]:
                op.storage.last = max(op.storage.last, index)
    return new


def _replace_groups(instrs: list, groups: list):
    """(the new list; old index -> new index, a member's being its group's; per old index, the
    new instructions before it; the storages of values kept in registers)."""
    member_of = {m.index: g for g in groups for m in g.members}
    new, where, before, internal = [], {}, [], set()
    for i, instr in enumerate(instrs):
        before.append(len(new))
        group = member_of.get(i)
        if group is None:
            where[i] = len(new)
            new.append(instr)
        elif i == group.members[-1].index:
            for m in group.members:
                where[m.index] = len(new)
            fused, dropped = fused_instr(group)
            internal |= dropped
            if fused is not None:
                new.append(fused)
    before.append(len(new))
    return new, where, before, internal


def worth_fusing(group: Group) -> bool:
    """Enough members, and more members than inputs: each input costs the FUSED instruction about
    what one more plain instruction would (measured: a group of as many inputs as ops, e.g. 6 ops
    on 6 matmul results of 8 floats, was no faster fused)."""
    return len(group.members) >= MIN_GROUP and len(group.members) > len(group.inputs)


def _renumber(index: int, where: dict, old_count: int, new_count: int) -> int:
    if 0 <= index < old_count:
        return where[index]
    return new_count if index == old_count else index


# ---- finding groups ---------------------------------------------------------------------------
def find_groups(instrs: list) -> list:
    """Groups of fusable instructions, in program order, each legal to run at its last member."""
    targets = {i.ints[0] for i in instrs if isinstance(i, Instr) and i.op in CONTROL}
    found, open_groups = [], {}          # open: output size -> group
    for index, instr in enumerate(instrs):
        barrier = isinstance(instr, PyStep) or instr.op in CONTROL
        if index in targets or barrier:
            found += open_groups.values()
            open_groups = {}
            if barrier:
                continue
        member = as_member(index, instr)
        group = open_groups.get(member.size) if member is not None else None
        if group is not None and not can_join(group, member):
            found.append(open_groups.pop(member.size))
            group = None
        if member is not None and group is None:
            group = Group(member.size, set())
            if not can_join(group, member):
                member = group = None
        reads, writes = _touches(instr)
        for size, other in list(open_groups.items()):
            if other is not group and _conflicts(other, reads, writes):
                found.append(open_groups.pop(size))
        if member is not None:
            open_groups[member.size] = group
            join(group, member)
    return sorted(found + list(open_groups.values()), key=lambda g: g.members[0].index)


def as_member(index: int, instr: Instr) -> Member | None:
    """The instruction as a fusable step: float32 UNARY, or float32 arithmetic BINARY."""
    if instr.op == lib.LRT_OP_UNARY and instr.ints[0] != lib.LRT_UN_NOT:
        x, y = instr.operands
        return Member(index, instr, True, instr.ints[0], [x], [[1]], [instr.ints[1]], y)
    if instr.op == lib.LRT_OP_BINARY:
        kind, dtype, nd = instr.ints[:3]
        if dtype != lib.LRT_DT_F32 or kind > lib.LRT_BIN_MIN:
            return None
        dims, sa, sb = (instr.ints[3 + k * nd:3 + (k + 1) * nd] for k in range(3))
        a, b, y = instr.operands
        return Member(index, instr, False, kind, [a, b], [sa, sb], list(dims), y)
    return None


def can_join(group: Group, m: Member) -> bool:
    """m may run inside the group: it writes a fresh storage, its dims share a refinement with
    the group's, a value of the group it reads it reads whole, and the registers fit."""
    out = m.out     # a storage no earlier instruction touched, written whole
    if out.storage.first != m.index or out.offset or out.nbytes != out.storage.nbytes or \
            out.storage in group.reads or out.storage in group.writes:
        return False
    if not _chain(group.bounds | _bounds(m.dims)):
        return False
    for op, strides in zip(m.reads, m.strides):
        writer = group.writes.get(op.storage)
        if writer is not None and (op.offset != writer.out.offset or op.nbytes != writer.out.nbytes or
                                   list(strides) != contiguous_strides(m.dims)):
            return False
    external = sum(op.storage not in group.writes for op in m.reads)
    return group.registers_bound() + external + 1 <= MAX_REGS and len(group.members) < lib.LRT_FUSED_MAX_STEPS


def join(group: Group, m: Member) -> None:
    group.external_reads += sum(op.storage not in group.writes for op in m.reads)
    group.inputs |= {(op.storage, op.offset) for op in m.reads if op.storage not in group.writes}
    group.bounds |= _bounds(m.dims)
    group.members.append(m)
    group.reads |= {op.storage for op in m.reads}
    group.writes[m.out.storage] = m


def _touches(instr) -> tuple:
    """(storages read, storages written) by an instruction."""
    ops = [o.storage for o in instr.operands if o is not None]
    if instr.op in LAST_WRITTEN:
        return set(ops[:-1]), set(ops[-1:])
    return set(ops), set(ops)


def _conflicts(group: Group, reads: set, writes: set) -> bool:
    """An instruction that cannot stay before the group's (delayed) members."""
    return bool(reads & group.writes.keys() or writes & group.reads or writes & group.writes.keys())


def _bounds(dims) -> set:
    """The suffix products of dims: where a flattened index splits into them."""
    out, n = {1}, 1
    for d in reversed(dims):
        n *= d
        out.add(n)
    return out


def _chain(bounds: set) -> bool:
    ordered = sorted(bounds)
    return all(b % a == 0 for a, b in zip(ordered, ordered[1:]))


# ---- building the FUSED instruction -----------------------------------------------------------
def fused_instr(group: Group):
    """(the FUSED instruction, or None when nothing the group writes is read after it; the
    storages of the values kept in registers)."""
    last = group.members[-1].index
    outputs = [m for m in group.members if m.out.storage.last > last]
    internal = {m.out.storage for m in group.members if m not in outputs}
    if not outputs:
        return None, internal
    chain = sorted(group.bounds)
    dims = [hi // lo for lo, hi in zip(chain, chain[1:])][::-1] or [1]
    inputs, in_strides, sources = _input_registers(group, chain, len(dims))
    steps, floats, out_regs, ntemp = _micro_program(group, inputs, sources, outputs)
    from .compiler import _collapse       # (the compiler imports this module)
    dims, strides = _collapse(dims, *in_strides, contiguous_strides(dims))
    nregs = len(inputs) + ntemp
    block = max(16, min(lib.LRT_FUSED_MAX_FLOATS // nregs // 16 * 16, -(-group.size // 16) * 16))
    ints = [len(inputs), len(outputs), ntemp, len(steps), block, len(dims), *dims,
            *[s for ss in strides[:-1] for s in ss], *[v for st in steps for v in st], *out_regs]
    labels = list(dict.fromkeys(m.instr.label for m in group.members))
    return Instr(lib.LRT_OP_FUSED, list(inputs) + [m.out for m in outputs], ints, floats, [],
                 f"fused {len(group.members)}: {', '.join(labels)}"), internal


def _input_registers(group: Group, chain: list, nd: int):
    """The group's external inputs (register = position) with their strides over the refined
    dims, and per member read: ('in', register) or ('value', writing member)."""
    inputs, in_strides, sources = {}, [], {}
    for m in group.members:
        for k, (op, strides) in enumerate(zip(m.reads, m.strides)):
            writer = group.writes.get(op.storage)
            if writer is not None and writer.index < m.index:
                sources[m, k] = ("value", writer)
                continue
            fine = _refine(m.dims, strides, chain) or [0] * nd
            key = (op.storage, op.offset, op.nbytes, tuple(fine))
            if key not in inputs:
                inputs[key] = len(inputs)
                in_strides.append(fine)
            sources[m, k] = ("in", inputs[key])
    from .compiler import SymOperand      # (the compiler imports this module)
    return [SymOperand(storage, offset, nbytes) for storage, offset, nbytes, _ in inputs], in_strides, sources


def _refine(dims, strides, chain) -> list:
    """Strides over `dims` re-expressed over the finer dims the chain of suffix products gives."""
    out, inner = [], 1
    for d, s in zip(reversed(dims), reversed(strides)):
        outer = inner * d
        out += [s * (lo // inner) for lo, hi in zip(chain, chain[1:]) if inner <= lo and hi <= outer]
        inner = outer
    return out[::-1]


def _micro_program(group: Group, inputs: list, sources: dict, outputs: list):
    """Steps over registers (inputs first, then temporaries reused after a value's last read; an
    output's never), each unary's alpha/beta, the outputs' registers, the temporaries' count."""
    nin = len(inputs)
    last_read = {}
    for (m, _), (kind, writer) in sources.items():
        if kind == "value":
            last_read[writer] = max(last_read.get(writer, -1), m.index)
    kept = set(outputs)
    free, ntemp, holder = [], 0, {}
    steps, floats = [], []
    for m in group.members:
        reads = [sources[m, k] for k in range(len(m.reads))]
        srcs = [reg if kind == "in" else holder[reg] for kind, reg in reads]
        for kind, reg in reads:   # freed before dst is chosen: a step may write over its source
            if kind == "value" and last_read[reg] == m.index and reg not in kept and holder[reg] not in free:
                free.append(holder[reg])
        if free:
            dst = free.pop()
        else:
            dst, ntemp = nin + ntemp, ntemp + 1
        holder[m] = dst
        if m not in kept and m not in last_read:
            free.append(dst)          # a value nobody reads: its register is free at once
        if m.unary:
            steps.append([lib.LRT_FUSED_UNARY, m.kind, dst, srcs[0], 0])
            floats += m.instr.floats
        else:
            steps.append([lib.LRT_FUSED_BINARY, m.kind, dst, *srcs])
    return steps, floats, [holder[m] for m in outputs], ntemp
