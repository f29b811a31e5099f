"""Elementwise fusion in compiled programs (lstmrt/fusion.py, csrc/ops_fused.c): random chains
and DAGs of float32 elementwise ops, with broadcasts, shared values, several outputs and
non-fusable ops in between, against the numpy plan and onnxruntime on every SIMD path, and
bit-identical to the same program compiled without fusion (LSTMRT_FUSE=0); the profile shows a
fused group as one instruction naming its nodes; the C executor refuses a FUSED instruction
that does not hold together."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.kernel import available_simd_paths, lib
from lstmrt.program import Instr, Operand, Program

PATHS = available_simd_paths()
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURES = Path(__file__).resolve().parent / "fixtures"
UNARY = ["Sigmoid", "Tanh", "Relu", "Neg", "Abs", "Softsign", "LeakyRelu", "HardSigmoid", "Clip"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min", "Div", "Pow"]


def model_of(nodes, inputs: dict, consts: dict, outputs: list) -> bytes:
    used = {name for node in nodes for name in node.input}
    consts = {n: a for n, a in consts.items() if n in used}
    graph = helper.make_graph(
        nodes, "fusion",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inputs.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outputs],
        [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model).graph
    for out, typed in zip(model.graph.output, inferred.output):   # typed as shape inference finds them
        out.CopyFrom(typed)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@st.composite
def elementwise_graphs(draw):
    """(model bytes, feed): ops over an output shape, each reading earlier values (a graph input
    of the whole shape, broadcast rows/columns, constants, earlier results: a value may be read
    twice, or by one op twice), some intermediates also graph outputs, maybe a Where between."""
    rank = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 9), min_size=rank - 1, max_size=rank - 1)) + [draw(st.integers(1, 700))]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def broadcast():
        return [1 if draw(st.booleans()) else d for d in shape[len(shape) - draw(st.integers(0, rank)):]]

    inputs = {"x": rng.standard_normal(shape).astype(np.float32)}
    consts = {"two": np.float32(2.0), "lo": np.float32(-0.5), "hi": np.float32(0.75)}
    whole, partial = ["x"], []
    for name in ("b", "c"):
        part = rng.standard_normal(broadcast()).astype(np.float32)
        (consts if draw(st.booleans()) else inputs)[name] = part
        (whole if list(part.shape) == shape else partial).append(name)
    consts["pos"] = (np.abs(rng.standard_normal(broadcast())) + 0.5).astype(np.float32)
    nodes, made = [], []

    def recent():          # mostly the latest whole value: chains, with a DAG's shared reads
        return whole[-1] if draw(st.integers(0, 3)) else draw(st.sampled_from(whole))
    barrier_at = draw(st.integers(0, 24))
    for k in range(draw(st.integers(4, 20))):
        out = f"v{k}"
        if k == barrier_at:       # max(a, x) as Greater and Where, neither fusable: a group ends before them
            a = recent()
            nodes += [helper.make_node("Greater", [a, "x"], [f"g{k}"], name=f"g{k}"),
                      helper.make_node("Where", [f"g{k}", a, "x"], [out], name=f"n{k}")]
        elif draw(st.booleans()):
            op = draw(st.sampled_from(UNARY))
            src = recent() if draw(st.integers(0, 3)) else draw(st.sampled_from(whole + partial))
            attrs = {"alpha": draw(st.floats(0.05, 0.9))} if op in ("LeakyRelu", "HardSigmoid") else {}
            extra = ["lo", "hi"] if op == "Clip" else []
            nodes.append(helper.make_node(op, [src, *extra], [out], name=f"n{k}", **attrs))
        else:
            op = draw(st.sampled_from(BINARY))
            a = recent()
            b = {"Div": "pos", "Pow": "two"}.get(op) or draw(st.sampled_from(whole + partial))
            nodes.append(helper.make_node(op, [a, b], [out], name=f"n{k}"))
        (whole if nodes[-1].input[0] in whole or nodes[-1].op_type == "Where" else partial).append(out)
        made.append(out)
    outputs = list(dict.fromkeys([made[-1]] + draw(st.lists(st.sampled_from(made), max_size=2))))
    return model_of(nodes, inputs, consts, outputs), inputs


def check_all_ways(data: bytes, feed: dict, rtol=1e-5):
    """Compiled == numpy plan == onnxruntime (to float rounding) on every SIMD path, and fused ==
    unfused bit for bit."""
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)
    ref = lstmrt.InferenceSession(data, backend="native", compiled=False).run(None, feed)
    for simd in PATHS:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LSTMRT_FUSE", "0")
            plain = lstmrt.InferenceSession(data, backend="native", simd=simd).run(None, feed)
        sess = lstmrt.InferenceSession(data, backend="native", simd=simd)
        assert "compiled" in sess.backend_reason, sess.backend_reason
        for _ in range(2):       # compiled on the first call, known on the second
            got = sess.run(None, feed)
            for g, p, r, w in zip(got, plain, ref, want):
                scale = max(1.0, float(np.max(np.abs(w))))
                np.testing.assert_array_equal(g, p, err_msg=f"{simd}: fused vs unfused")
                np.testing.assert_allclose(g, r, rtol=rtol, atol=1e-6 * scale, err_msg=f"{simd} vs reference")
                np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6 * scale, err_msg=f"{simd} vs onnxruntime")


@SETTINGS
@given(case=elementwise_graphs())
def test_random_elementwise_graphs(case):
    data, feed = case
    check_all_ways(data, feed)


def chain(n_ops: int, shape=(3, 40)):
    """x -> Mul(x, x) -> Sigmoid -> Add(row) -> Tanh -> Mul(scalar) ... as nodes n0.., the
    in-place-looking x = x * x first; every other value read once."""
    kinds = [("Mul", "self"), ("Sigmoid", None), ("Add", "row"), ("Tanh", None), ("Mul", "s"), ("Relu", None)]
    nodes, prev = [], "x"
    for k in range(n_ops):
        op, other = kinds[k % len(kinds)]
        ins = [prev] + ([] if other is None else [prev if other == "self" else other])
        nodes.append(helper.make_node(op, ins, [f"v{k}"], name=f"n{k}"))
        prev = f"v{k}"
    rng = np.random.default_rng(1)
    consts = {"row": rng.standard_normal(shape[-1]).astype(np.float32), "s": np.float32(0.5)}
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    return nodes, feed, consts


def test_a_chain_is_one_profiled_instruction_naming_its_nodes():
    nodes, feed, consts = chain(6)
    data = model_of(nodes, feed, consts, ["v5"])
    check_all_ways(data, feed)
    rows = lstmrt.InferenceSession(data, backend="native").profile(feed, calls=3)
    assert len(rows) == 1, rows
    assert all(f"'n{k}'" in rows[0][0] for k in range(6)), rows


def test_a_group_with_two_outputs_and_an_intermediate_graph_output():
    nodes, feed, consts = chain(6)
    data = model_of(nodes, feed, consts, ["v5", "v1", "v3"])     # v1, v3 also read inside the group
    check_all_ways(data, feed)
    rows = lstmrt.InferenceSession(data, backend="native").profile(feed, calls=3)
    assert len(rows) == 1 and all(f"'n{k}'" in rows[0][0] for k in range(6)), rows


def test_a_non_fusable_op_splits_the_chain():
    head, feed, consts = chain(6)
    tail = [helper.make_node("Softmax", ["v5"], ["sm"], name="soft", axis=-1)] + [
        helper.make_node(op, ins, [f"t{k}"], name=f"m{k}") for k, (op, ins) in enumerate(
            [("Sigmoid", ["sm"]), ("Mul", ["t0", "v2"]), ("Tanh", ["t1"]), ("Add", ["t2", "row"]), ("Abs", ["t3"]),
             ("Sub", ["t4", "s"])])]
    data = model_of(head + tail, feed, consts, ["t5"])
    check_all_ways(data, feed)
    rows = [label for label, _ in lstmrt.InferenceSession(data, backend="native").profile(feed, calls=3)]
    assert len(rows) == 3, rows
    before = [r for r in rows if "'n0'" in r]
    after = [r for r in rows if "'m0'" in r]
    assert before and all(f"'n{k}'" in before[0] for k in range(6)) and "'m0'" not in before[0], rows
    assert after and all(f"'m{k}'" in after[0] for k in range(6)), rows


def test_groups_stop_at_branches_and_python_steps():
    """Chains before, inside both branches of, and after an If decided by the data, then a node
    run in Python (Gemm transA=1) reading a value from the middle of a chain: each chain fused
    on its own side of every branch and segment boundary."""
    def branch(name, ops):
        chain_nodes = [helper.make_node(op, [f"{name}{k}", f"k{name}"] if op in ("Mul", "Add") else [f"{name}{k}"],
                                        [f"{name}{k + 1}"], name=f"{name}_{k}") for k, op in enumerate(ops)]
        return helper.make_graph([helper.make_node("Identity", ["v3"], [f"{name}0"])] + chain_nodes, name, [],
                                 [helper.make_tensor_value_info(f"{name}{len(ops)}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(np.full((3,), 0.7, np.float32), f"k{name}")])
    head, feed, consts = chain(6, (5, 3))

    def tail(prefix, first, other):       # six ops on `first`, one of them reading `other`
        ops = [("Sigmoid", [first]), ("Mul", ["0", first]), ("Tanh", ["1"]), ("Add", ["2", other]), ("Abs", ["3"]),
               ("Neg", ["4"])]
        return [helper.make_node(op, [a if a in (first, other) else f"{prefix}{a}" for a in args], [f"{prefix}{k}"],
                                 name=f"{prefix}{k}") for k, (op, args) in enumerate(ops)]
    nodes = head + [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["r"], name="if",
                         then_branch=branch("t", ["Sigmoid", "Mul", "Tanh", "Add", "Relu"]),
                         else_branch=branch("e", ["Tanh", "Add", "Relu", "Mul", "Sigmoid", "Neg"])),
        *tail("a", "r", "v1"),
        helper.make_node("Gemm", ["v2", "w"], ["g"], transA=1, name="py"),
        *tail("b", "g", "g")]
    consts.update(zero=np.float32(0), w=np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32))
    data = model_of(nodes, feed, consts, ["a5", "b5", "v3"])
    for sign in (1, -1):
        check_all_ways(data, {"x": np.abs(feed["x"]) * sign})
    rows = [label for label, _ in lstmrt.InferenceSession(data, backend="native").profile(feed, calls=3)]
    groups = [r for r in rows if r.startswith("fused")]
    names = ["'n0'", "'t_0'", "'e_0'", "'a0'", "'b0'"]
    assert len(groups) == 5 and all(sum(n in g for n in names) == 1 for g in groups), rows


def test_chains_fuse_inside_a_counted_loop_body_and_on_either_side_of_it():
    """A Loop whose trip count is a graph input runs counted in C: a chain inside its body fuses
    within the body, chains before and after it on their own side, and every trip count gives
    what onnxruntime and the numpy plan give."""
    body_ops = [("Sigmoid", ["h_in"]), ("Mul", ["b0", "h_in"]), ("Tanh", ["b1"]), ("Add", ["b2", "k"])]
    body = helper.make_graph(
        [helper.make_node(op, args, [f"b{k}" if k < 3 else "h_out"], name=f"body{k}")
         for k, (op, args) in enumerate(body_ops)], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [3, 40])],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [3, 40])],
        [numpy_helper.from_array(np.full((40,), 0.25, np.float32), "k")])
    head, feed, consts = chain(6)
    after = [helper.make_node(op, args, [f"a{k}"], name=f"a{k}") for k, (op, args) in enumerate(
        [("Tanh", ["h"]), ("Mul", ["a0", "v1"]), ("Sigmoid", ["a1"]), ("Add", ["a2", "row"])])]
    nodes = head + [helper.make_node("Loop", ["trips", "", "v5"], ["h"], name="loop", body=body)] + after
    graph = helper.make_graph(
        nodes, "loop_fusion", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 40]),
                               helper.make_tensor_value_info("trips", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("a3", TensorProto.FLOAT, [3, 40])],
        [numpy_helper.from_array(np.asarray(consts[n], np.float32), n) for n in ("row", "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    for trips in (0, 1, 7):
        check_all_ways(data, {**feed, "trips": np.array(trips, np.int64)})
    rows = [label for label, _ in lstmrt.InferenceSession(data, backend="native").profile(
        {**feed, "trips": np.array(3, np.int64)}, calls=3)]
    groups = [r for r in rows if r.startswith("fused")]
    assert len(groups) == 3 and all(sum(n in g for n in ("'n0'", "'body0'", "'a0'")) == 1 for g in groups), rows


def test_a_short_chain_stays_unfused():
    """Two ops on a small tensor are no faster fused (lstmrt/fusion.py MIN_GROUP): left as they are."""
    nodes, feed, consts = chain(2)
    rows = lstmrt.InferenceSession(model_of(nodes, feed, consts, ["v1"]), backend="native").profile(feed, calls=3)
    assert len(rows) == 2, rows


@pytest.mark.parametrize("name", ["models/torch_vad_op13.onnx", "third_party/vad_cell_op14.onnx"])
def test_the_lstm_cell_gate_math_of_the_vad_models_is_one_instruction(name):
    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend="native")
    feed = {"sr": np.array(16000, np.int64)}
    for info in sess.get_inputs():
        if info.name != "sr":
            dims = [d if isinstance(d, int) else 1 for d in info.shape]
            if len(dims) == 2:
                dims[1] = 512
            feed[info.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32) * 0.3
    rows = [label for label, _ in sess.profile(feed, calls=2)]
    gates = [r for r in rows if r.count("(Sigmoid)") == 3 and r.count("(Tanh)") == 2 and r.count("(Mul)") == 3]
    assert gates, rows
    assert all("(Add)" in r for r in gates)


# ---- the C executor, handed FUSED instructions directly --------------------------------------
ARENA = lib.LRT_LOC_ARENA


def arena(offset, nbytes):
    return Operand(ARENA, 0, offset, nbytes)


def fused(operands, nin, ntemp, dims, strides, steps, out_regs, block=16, floats=None):
    ints = [nin, len(out_regs), ntemp, len(steps), block, len(dims), *dims, *[s for ss in strides for s in ss],
            *[v for step in steps for v in step], *out_regs]
    if floats is None:
        floats = [0.0, 0.0] * sum(step[0] == lib.LRT_FUSED_UNARY for step in steps)
    return Instr(lib.LRT_OP_FUSED, operands, ints, floats, [], "fused")


U, B = lib.LRT_FUSED_UNARY, lib.LRT_FUSED_BINARY
# y = tanh(x * row) + x over x [3, 5], row [5] broadcast: registers 0 x, 1 row, 2-3 temporaries
GOOD = dict(nin=2, ntemp=2, dims=[3, 5], strides=[[5, 1], [0, 1]],
            steps=[[B, lib.LRT_BIN_MUL, 2, 0, 1], [U, lib.LRT_ACT_TANH, 3, 2, 0], [B, lib.LRT_BIN_ADD, 2, 3, 0]],
            out_regs=[2])


def good_operands():
    return [arena(0, 60), Operand(lib.LRT_LOC_CONST, 0, 0, 20), arena(64, 60)]


def build(instr, arena_bytes=256):
    x = np.arange(15, dtype=np.float32).reshape(3, 5) / 10
    row = np.linspace(-1, 1, 5).astype(np.float32)
    return Program([instr], [row], [], [], [("y", (3, 5), np.float32, 64)], arena_bytes, None, 1, []), x, row


def test_a_fused_instruction_computes_its_steps():
    program, x, row = build(fused(good_operands(), **GOOD))
    state = program.new_state()
    state.arena[:60] = np.frombuffer(x.tobytes(), np.uint8)
    (y,) = state.execute()
    np.testing.assert_allclose(y, np.tanh(x * row) + x, rtol=1e-6)


@pytest.mark.parametrize("case", [
    dict(steps=[[B, lib.LRT_BIN_MUL, 2, 0, 9]] + GOOD["steps"][1:]),        # a register out of range
    dict(steps=[[B, lib.LRT_BIN_MUL, 2, 0, 3]] + GOOD["steps"][1:]),        # read before it is written
    dict(steps=[[B, lib.LRT_BIN_MUL, 1, 0, 0]] + GOOD["steps"][1:]),        # writes an input register
    dict(out_regs=[3], steps=GOOD["steps"][:1]),                             # an output never written
    dict(strides=[[5, 1], [1, 1]]),                                          # row read past its 5 floats
    dict(strides=[[6, 1], [0, 1]]),                                          # x read past its 15 floats
    dict(dims=[4, 5]),                                                       # more than the output holds
    dict(steps=[[U, lib.LRT_UN_NOT, 2, 0, 0]] + GOOD["steps"][1:]),         # a bool op
    dict(steps=[[B, lib.LRT_BIN_LESS, 2, 0, 1]] + GOOD["steps"][1:]),       # a comparison
    dict(steps=[[7, lib.LRT_BIN_MUL, 2, 0, 1]] + GOOD["steps"][1:]),        # an unknown step kind
    dict(block=24),                                                          # not a multiple of 16
    dict(block=4096),                                                        # registers past the L1 budget
    dict(ntemp=40),                                                          # too many registers
    dict(ntemp=2**62), dict(nin=2**62), dict(block=2**62),                   # counts that would overflow
    dict(dims=[3, 5, 1, 1, 1, 1, 1, 1, 1], strides=[[5, 1] + [0] * 7, [0, 1] + [0] * 7]),   # 9 dims
])
def test_a_fused_instruction_that_does_not_hold_together_is_refused(case):
    with pytest.raises(Exception, match="instruction 0"):
        build(fused(good_operands(), **{**GOOD, **case}))


def test_fused_counts_and_aliasing_are_checked():
    good = fused(good_operands(), **GOOD)
    build(good)
    refused = [
        Instr(good.op, good.operands, good.ints, good.floats + [1.0], [], "extra float"),
        Instr(good.op, good.operands, good.ints[:-1], good.floats, [], "short ints"),
        Instr(good.op, good.operands[:2], good.ints, good.floats, [], "no output operand"),
        Instr(good.op, [arena(0, 60), good.operands[1], arena(32, 60)], good.ints, good.floats, [], "over an input"),
        Instr(good.op, good.operands[:2] + [arena(64, 56)], good.ints, good.floats, [], "short output"),
        Instr(good.op, good.operands, good.ints[:5], [], [], "truncated"),
    ]
    for instr in refused:
        with pytest.raises(Exception, match="instruction 0"):
            build(instr)
