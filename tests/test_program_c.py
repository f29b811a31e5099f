"""The C program executor directly (csrc/program.c): it refuses any operand outside its buffer
and any op parameters its operands cannot hold, at creation; at run time it checks the
caller's arena and the data-dependent gather indices, failing before it writes."""
import numpy as np
import pytest

from lstmrt.kernel import DenseWeights, ffi, lib
from lstmrt.program import NONE, Instr, Operand, Program

ARENA = lib.LRT_LOC_ARENA


def arena(offset, nbytes):
    return Operand(ARENA, 0, offset, nbytes)


def build(instrs, arena_bytes, consts=(), inputs=(), outputs=()):
    return Program(list(instrs), list(consts), list(inputs), [64] * len(inputs), list(outputs), arena_bytes,
                   None, 1, [])


def copy(src, dst, dims, src_strides, dst_strides, esize=4):
    return Instr(lib.LRT_OP_COPY, [src, dst], [esize, len(dims), *dims, *src_strides, *dst_strides], [], [], "copy")


def run(program, feed=None):
    state = program.new_state()
    return state, state.run(feed or {})


def test_a_transposing_copy_runs_and_returns_its_output():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    program = build([copy(Operand(lib.LRT_LOC_CONST, 0, 0, 24), arena(0, 24), [3, 2], [1, 3], [2, 1])], 64,
                    consts=[x], outputs=[("y", (3, 2), np.float32, 0)])
    _, (y,) = run(program)
    np.testing.assert_array_equal(y, x.T)


@pytest.mark.parametrize("operand", [arena(40, 32), arena(-4, 8), arena(0, 100), Operand(lib.LRT_LOC_INPUT, 3, 0, 4),
                                     Operand(lib.LRT_LOC_CONST, 1, 0, 4), Operand(7, 0, 0, 4)])
def test_an_operand_outside_its_buffer_is_refused(operand):
    with pytest.raises(Exception, match="building the compiled program"):
        build([copy(operand, arena(0, 4), [1], [1], [1])], 64, consts=[np.zeros(1, np.float32)])


@pytest.mark.parametrize("dims, src_strides", [([4], [3]), ([2, 9], [9, 1]), ([1 << 50], [1]), ([3], [-1])])
def test_copy_parameters_reaching_past_an_operand_are_refused(dims, src_strides):
    with pytest.raises(Exception, match="instruction 0"):
        build([copy(arena(0, 32), arena(32, 32), dims, src_strides, [0] * len(dims))], 64)


def test_dense_operands_must_hold_the_product():
    weights = DenseWeights(np.ones((5, 7), np.float32), None)
    good = Instr(lib.LRT_OP_DENSE, [arena(0, 3 * 7 * 4), arena(128, 3 * 5 * 4), arena(256, 3 * 16 * 4)],
                 [3, lib.LRT_UN_IDENTITY], [], [weights.handle], "dense")
    build([good], 512)
    short = Instr(lib.LRT_OP_DENSE, [arena(0, 3 * 7 * 4), arena(128, 3 * 5 * 4 - 4), arena(256, 3 * 16 * 4)],
                  [3, lib.LRT_UN_IDENTITY], [], [weights.handle], "dense")
    with pytest.raises(Exception, match="instruction 0"):
        build([short], 512)
    with pytest.raises(Exception, match="instruction 0"):   # the wrong kind of weights object
        build([Instr(lib.LRT_OP_DENSE, good.operands, good.ints, [], [ffi.NULL], "dense")], 512)


def test_a_lookup_table_reaching_past_its_source_is_refused_at_creation():
    table = np.array([0, 1, 5], np.int64)
    instr = Instr(lib.LRT_OP_INDEX, [arena(0, 16), Operand(lib.LRT_LOC_CONST, 0, 0, 24), arena(64, 12)], [4, 3, 0],
                  [], [], "index")
    with pytest.raises(Exception, match="instruction 0"):
        build([instr], 128, consts=[table])
    build([Instr(instr.op, [arena(0, 24)] + instr.operands[1:], instr.ints, [], [], "index")], 128, consts=[table])


def test_an_out_of_range_gather_index_fails_the_call_before_writing():
    data = np.arange(10, dtype=np.float32).reshape(5, 2)
    gather = Instr(lib.LRT_OP_GATHER, [Operand(lib.LRT_LOC_CONST, 0, 0, 40), Operand(lib.LRT_LOC_INPUT, 0, 0, 16),
                                       arena(0, 16)], [4, 1, 5, 2, 2, lib.LRT_DT_I64], [], [], "'g' (Gather)")
    program = Program([gather], [data], ["i"], [16], [("y", (2, 2), np.float32, 0)], 64, None, 1, [])
    state = program.new_state()
    np.testing.assert_array_equal(state.run({"i": np.array([4, -5], np.int64)})[0], data[[4, 0]])
    before = state.arena.copy()
    with pytest.raises(Exception, match="out of range"):
        state.run({"i": np.array([1, 5], np.int64)})
    np.testing.assert_array_equal(state.arena, before)


def test_the_run_checks_the_callers_arena():
    program = build([copy(arena(0, 4), arena(64, 4), [1], [1], [1])], 128)
    small = np.zeros(64 + 64, np.uint8)
    start = (-small.ctypes.data) % 64
    status = lib.lrt_program_run(program.segments[0][1], ffi.new("void *[]", 1), ffi.NULL,
                                 ffi.from_buffer("char[]", small[start:start + 64]), 64, ffi.NULL, ffi.NULL)
    assert status == lib.LRT_E_ARG
    assert lib.lrt_program_run(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL) == lib.LRT_E_ARG


def test_an_unknown_op_or_operand_count_is_refused():
    with pytest.raises(Exception, match="instruction 0"):
        build([Instr(999, [arena(0, 4)], [], [], [], "x")], 64)
    with pytest.raises(Exception, match="instruction 0"):
        build([Instr(lib.LRT_OP_UNARY, [arena(0, 4)], [lib.LRT_ACT_RELU, 1], [0.0, 0.0], [], "x")], 64)
    assert NONE.loc == lib.LRT_LOC_NONE


def test_a_branch_must_jump_forward_within_the_program():
    cond = Operand(lib.LRT_LOC_INPUT, 0, 0, 1)
    for target in (0, -1, 3):      # back to itself, before the start, past the end
        with pytest.raises(Exception, match="instruction 0"):
            Program([Instr(lib.LRT_OP_BRANCH, [cond], [target, 0], [], [], "b"),
                     copy(arena(0, 4), arena(64, 4), [1], [1], [1])], [], ["c"], [1], [], 128, None, 1, [])
    with pytest.raises(Exception, match="instruction 0"):   # a conditional branch needs its condition
        build([Instr(lib.LRT_OP_BRANCH, [], [1, 0], [], [], "b"), copy(arena(0, 4), arena(64, 4), [1], [1], [1])], 128)


def scatter_into_bank(bank_loc):
    """A group's state write-back: rows of a [2, 5, 3] bank (rows on axis 1) from a [2, 2, 3] value."""
    return Instr(lib.LRT_OP_SCATTER, [Operand(bank_loc, 0, 0, 120), Operand(lib.LRT_LOC_INPUT, 0, 0, 16),
                                      Operand(lib.LRT_LOC_CONST, 0, 0, 48)], [4, 2, 5, 3, 2, lib.LRT_DT_I64], [], [],
                 "state: the members' rows scattered")


def test_a_scatter_writes_the_rows_it_is_given_into_a_bank_and_checks_them_first():
    src = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    program = Program([scatter_into_bank(lib.LRT_LOC_OUTPUT)], [src], ["rows"], [16], [], 0, None, 1, [],
                      banks=[("bank", 120)])
    state = program.new_state()
    bank = np.zeros((2, 5, 3), np.float32)
    state.bind_banks({"bank": bank})
    state.run({"rows": np.array([3, 0], np.int64)})
    want = np.zeros_like(bank)
    want[:, [3, 0]] = src
    np.testing.assert_array_equal(bank, want)
    with pytest.raises(Exception, match="state"):        # row 5 of 5: the call fails, nothing written
        state.run({"rows": np.array([1, 5], np.int64)})
    np.testing.assert_array_equal(bank, want)
    with pytest.raises(ValueError, match="bank"):        # a bank of another size is never handed to C
        state.bind_banks({"bank": np.zeros((2, 4, 3), np.float32)})


def test_a_scatter_into_a_constant_or_an_input_is_refused_at_creation():
    for loc in (lib.LRT_LOC_CONST, lib.LRT_LOC_INPUT):
        with pytest.raises(Exception, match="instruction 0"):
            Program([scatter_into_bank(loc)], [np.zeros(30, np.float32)], ["rows"], [120], [], 0, None, 1, [])


# ---- LOOP: a counted sub-program over the instructions after it ----
I64_IN = Operand(lib.LRT_LOC_INPUT, 0, 0, 8)


def loop(end, trip=I64_IN, counter=None, cap=100, rows=-1, cond=NONE, body_cond=NONE):
    return Instr(lib.LRT_OP_LOOP, [trip, cond, counter or arena(0, 8), body_cond], [end, cap, rows], [], [],
                 "'l' (Loop)")


def scan_row(rows=10):
    """Row `counter` of an int64 [rows] at arena 64 = the counter itself."""
    return Instr(lib.LRT_OP_SCAN_ROW, [arena(0, 8), arena(64, 8 * rows), arena(0, 8)], [8, rows], [], [],
                 "'l' (Loop scan)")


def loop_program(instrs, outputs=(("rows", (10,), np.int64, 64), ("count", (), np.int64, 0))):
    return Program(list(instrs), [], ["trip"], [8], list(outputs), 192, None, 1, [])


def test_a_loop_runs_its_body_trip_count_times_writing_its_counter():
    state = loop_program([loop(2), scan_row()]).new_state()
    for n in (0, 4, 10):
        state.arena[:] = 0
        rows, count = state.run({"trip": np.array(n, np.int64)})
        np.testing.assert_array_equal(rows, np.r_[np.arange(n), np.zeros(10 - n)])
        assert count == n
    with pytest.raises(Exception, match="Loop scan"):     # a counter past the rows: refused, not written
        state.run({"trip": np.array(11, np.int64)})


def test_a_loop_past_its_cap_or_off_its_rows_fails_the_call():
    from lstmrt.errors import InputError
    from lstmrt.program import Misfit
    state = loop_program([loop(2, cap=5), scan_row()]).new_state()
    state.run({"trip": np.array(5, np.int64)})
    with pytest.raises(InputError, match="more than 5 iterations"):
        state.run({"trip": np.array(6, np.int64)})
    state = loop_program([loop(2, rows=4), scan_row()]).new_state()
    state.run({"trip": np.array(4, np.int64)})
    with pytest.raises(Misfit):
        state.run({"trip": np.array(3, np.int64)})


def test_a_loop_stops_when_its_body_condition_turns_false():
    """The body's condition: counter < 2 as a byte (the counter's low byte compared by BINARY)."""
    less = Instr(lib.LRT_OP_BINARY, [arena(0, 8), Operand(lib.LRT_LOC_CONST, 0, 0, 8), arena(128, 1)],
                 [lib.LRT_BIN_LESS, lib.LRT_DT_I64, 1, 1, 1, 0], [], [], "less")
    program = Program([loop(3, body_cond=arena(128, 1)), scan_row(), less], [np.array([2], np.int64)], ["trip"], [8],
                      [("count", (), np.int64, 0)], 192, None, 1, [])
    assert program.new_state().run({"trip": np.array(50, np.int64)})[0] == 3


@pytest.mark.parametrize("instrs, bad", [
    ([loop(3), scan_row()], 0),                                   # its body past the end
    ([loop(0), scan_row()], 0),                                   # a body before itself
    ([loop(2, cap=0), scan_row()], 0),                            # no iterations allowed
    ([loop(2, rows=-2), scan_row()], 0),
    ([loop(2, trip=Operand(lib.LRT_LOC_INPUT, 0, 0, 4)), scan_row()], 0),    # a trip count of 4 bytes
    ([loop(2, counter=arena(0, 4)), scan_row()], 0),
    ([loop(2, counter=I64_IN), scan_row()], 0),                   # a counter it cannot write
    ([loop(3), loop(4), scan_row(), scan_row()], 1),              # overlapping bodies
    ([loop(3), Instr(lib.LRT_OP_BRANCH, [], [4, 1], [], [], "b"), scan_row(), scan_row()], 1),   # out of a body
    ([Instr(lib.LRT_OP_BRANCH, [], [2, 1], [], [], "b"), loop(3), scan_row(), scan_row()], 0),   # into a body
])
def test_a_badly_formed_loop_is_refused_at_creation(instrs, bad):
    with pytest.raises(Exception, match=f"at instruction {bad} "):
        loop_program(instrs)


def test_loops_and_branches_that_nest_are_accepted():
    """A loop in a loop's body ending with it, a branch to the end of a body (skipping its scan
    row), then a scan row after both loops (row 3, the outer count)."""
    program = loop_program([loop(4), loop(4, counter=arena(8, 8)), Instr(lib.LRT_OP_BRANCH, [], [4, 1], [], [], "b"),
                            scan_row(), scan_row()])
    rows, count = program.new_state().run({"trip": np.array(3, np.int64)})
    assert count == 3
    np.testing.assert_array_equal(rows, [0, 0, 0, 3, 0, 0, 0, 0, 0, 0])


def test_loops_nested_too_deep_are_refused():
    deep = [loop(70, counter=arena(0, 8)) for _ in range(70)]
    with pytest.raises(Exception, match="building the compiled program"):
        loop_program(deep)
    loop_program(deep[:60] + [scan_row()] * 10)
