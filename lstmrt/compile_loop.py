"""A Loop whose iterations are known only at run time, compiled as a counted sub-program: one
LOOP instruction running the instructions of its body while the trip count and the condition
allow (csrc/program.c), so one program serves every trip count.

The body is walked once, its iteration number and carried values living in the arena:
  - each carried value has a slot, written with the initial value before the loop and with the
    body's result at the end of each iteration (through staging copies where a result is read
    from a slot that another copy overwrites); a value the body passes through needs none;
  - a scan output gets one row per iteration (SCAN_ROW at the counter's row): compiled only for a
    static trip count, whose rows the loop must then fill exactly (a loop stopped early by its
    condition makes the call rerun on the numpy plan, as a Python step of another shape does);
  - a value live when the loop starts and read inside it stays alive to the loop's end, since
    the next iteration reads it again; the body's own values are reused from one to the next.
"""
from __future__ import annotations

import numpy as np

from .compiler import BOOL, I64, Val, _fail
from .errors import InputError
from .kernel import lib
from .ops.control import max_iterations
from .program import Instr, PyStep

MAX_SCAN_ROWS = 1 << 16          # rows of a scan output planned in the arena for a static trip count


def trip_count_inputs(graph) -> set:
    """Graph inputs read only as the trip counts of Loops without scan outputs: kept out of the
    signature (a counted loop runs any count) rather than compiled once per value."""
    from .backends.native import _all_nodes
    uses: dict = {}
    for node in _all_nodes(graph):
        for k, name in enumerate(node.input):
            uses.setdefault(name, set()).add(k == 0 and node.op_type == "Loop" and not _has_scans(node))
    graph_inputs = {i.name for i in graph.input}
    return {name for name, counts in uses.items() if counts == {True} and name in graph_inputs}


def _has_scans(node) -> bool:
    body = next(a.g for a in node.attribute if a.name == "body")
    return len(body.output) > 1 + len(node.input) - 2


def counted_loop(c, step, ins) -> None:
    kernel = step.kernel
    label = f"'{step.name}' (Loop)"
    own = ins[:kernel.arity]
    trip, cond = own[0], own[1] if len(own) > 1 else None
    _need_scalar(step, trip, I64, "trip count")
    _need_scalar(step, cond, BOOL, "condition")
    initial = own[2:]
    rows = _scan_rows(step, trip, len(kernel.body_outputs) - 1 - len(initial))
    slots = [_slot(c, step, kernel, k, val) for k, val in enumerate(initial)]
    counter = c.new_val((), I64)
    start = len(c.instrs)
    loop = Instr(lib.LRT_OP_LOOP, [c.ref(trip), c.ref(cond), c.ref(counter), None], [0, max_iterations(), rows],
                 [], [], label)
    c.instrs.append(loop)
    carried = [val if slot is None else slot for val, slot in zip(initial, slots)]
    results = _walk_body(c, kernel, counter, carried)
    slot_storages = {slot.storage for slot in slots if slot is not None}
    body_cond = _body_condition(c, step, results[0], slot_storages)
    loop.operands[3] = c.ref(body_cond)
    scans = [_scan_row(c, step, val, rows, counter, start) for val in results[1 + len(initial):]]
    _carry(c, step, results[1:1 + len(initial)], slots, slot_storages)
    end = loop.ints[0] = len(c.instrs)
    python = [i.label for i in c.instrs[start:] if isinstance(i, PyStep)]
    if python:
        raise _fail(step, f"its body holds a node without a compiled form, {python[0]}")
    _keep_alive(c, start, end, body_cond)
    for name, val in zip(step.outputs, carried + scans):
        if name:
            c.env[name] = val


def _need_scalar(step, val, dtype, what) -> None:
    if val is not None and (val.dtype != dtype or val.size != 1):
        raise _fail(step, f"a {what} of {val.dtype} {list(val.shape)}; a single {dtype} compiles")


def _scan_rows(step, trip, n_scans: int) -> int:
    """Rows of the scan outputs: the static trip count; -1 for a loop without scan outputs."""
    if not n_scans:
        return -1
    if trip is None or not trip.static:
        raise _fail(step, "its scan outputs are as long as its iterations, known only once it ran (a trip "
                          "count computed from the data); a constant trip count compiles them")
    rows = int(np.asarray(trip.const).reshape(-1)[0])
    if not 0 < rows <= MAX_SCAN_ROWS:
        raise _fail(step, f"scan outputs of {rows} rows have no compiled form (1 to {MAX_SCAN_ROWS} do)")
    return rows


def _slot(c, step, kernel, k: int, initial: Val | None) -> Val | None:
    """Where carried value k lives through the loop, holding its initial value; None when the
    body passes it through unchanged (its initial value is read as it is)."""
    if kernel.body_inputs[2 + k] == kernel.body_outputs[1 + k]:
        return None
    if initial is None or initial.size == 0:
        raise _fail(step, f"carried value {k} is {'absent' if initial is None else 'empty'}")
    slot = c.new_val(initial.shape, initial.dtype)
    c.copy_contiguous(initial, c.ref(slot), f"'{step.name}' (Loop initial)")
    return slot


def _walk_body(c, kernel, counter: Val, carried: list) -> list:
    """The body's instructions, emitted once; its outputs' values."""
    c.env[kernel.body_inputs[0]] = counter
    c.env[kernel.body_inputs[1]] = c.static(np.array(True))   # an iteration runs only while it holds
    for name, val in zip(kernel.body_inputs[2:], carried):
        c.env[name] = val
    saved = c._consumers
    c.walk(kernel.plan, kernel.body_outputs)
    c._consumers = saved
    return [c.lookup(n, kernel.plan) for n in kernel.body_outputs]


def _body_condition(c, step, cond: Val, slot_storages: set) -> Val | None:
    """The condition the LOOP reads after each iteration (None: always true).  The carried
    copies run before that read: a condition kept in a slot is staged first."""
    if cond.static:
        return None if bool(np.asarray(cond.const).reshape(-1)[0]) else cond
    _need_scalar(step, cond, BOOL, "body's condition")
    if cond.storage in slot_storages:
        staged = c.new_val((), BOOL)
        c.copy_contiguous(cond, c.ref(staged), f"'{step.name}' (Loop condition)")
        return staged
    return cond


def _scan_row(c, step, val: Val, rows: int, counter: Val, start: int) -> Val:
    if val.size == 0:
        raise _fail(step, "an empty scan output has no compiled form")
    buf = c.new_val((rows,) + val.shape, val.dtype)
    buf.storage.first = start           # written across the iterations
    c.emit(lib.LRT_OP_SCAN_ROW, [c.ref(val), c.ref(buf), c.ref(counter)], [val.nbytes, rows],
           label=f"'{step.name}' (Loop scan)")
    return buf


def _carry(c, step, results: list, slots: list, slot_storages: set) -> None:
    """The last instructions of each iteration: each carried result copied onto its slot, those
    read from a slot first staged (a copy onto a slot would clobber them)."""
    label = f"'{step.name}' (Loop carried)"
    moves = []
    for k, (val, slot) in enumerate(zip(results, slots)):
        if slot is None:
            continue
        if val.shape != slot.shape or val.dtype != slot.dtype:
            raise _fail(step, f"carried value {k} changes from {slot.dtype} {list(slot.shape)} to {val.dtype} "
                              f"{list(val.shape)} in an iteration; compiled loops keep their shapes")
        if not val.static and val.storage is slot.storage and val.offset == slot.offset:
            continue                    # the slot's own value: nothing moves
        if not val.static and val.storage in slot_storages:
            staged = c.new_val(val.shape, val.dtype)
            c.copy_contiguous(val, c.ref(staged), label)
            val = staged
        moves.append((val, slot))
    for val, slot in moves:
        c.copy_contiguous(val, c.ref(slot), label)


def _keep_alive(c, start: int, end: int, body_cond: Val | None) -> None:
    """Arena lifetimes across the iterations: a storage live when the loop starts (its counter,
    slots, scan rows, the outer values its body reads) and the condition read after each
    iteration last until the loop's last instruction, never reused inside it."""
    for s in c.storages:
        if s.first <= start <= s.last:
            s.last = max(s.last, end - 1)
    if body_cond is not None and not body_cond.static and body_cond.storage.loc == lib.LRT_LOC_ARENA:
        body_cond.storage.last = max(body_cond.storage.last, end - 1)

