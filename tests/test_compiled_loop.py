"""Loops whose trip count or condition comes from the data, compiled as a counted sub-program
(one LOOP instruction running its body in C): against onnxruntime and the numpy reference plan
(compiled=False), for many trip counts on one compiled signature."""
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.kernel import available_simd_paths

H = 8
F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(10)
W = (RNG.standard_normal((H, H)) * 0.4).astype(np.float32)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def body(nodes, inputs, outputs, name="body", inits=()):
    return helper.make_graph(nodes, name, [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                             [numpy_helper.from_array(v, n) for n, v in inits])


def model(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    """nodes after xb = 1.5 x (read by rnn_body)."""
    nodes = [helper.make_node("Mul", ["x", "x_scale"], ["xb"])] + list(nodes)
    inits = [("x_scale", np.array(1.5, np.float32)), *inits]
    graph = helper.make_graph(nodes, "loops", [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                              [numpy_helper.from_array(v, n) for n, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m.SerializeToString()


def rnn_body(extra_nodes=(), extra_inits=(), cond_out="cond_in"):
    """h = tanh(h @ W + xb + i / 10): carried h, the iteration number read, and xb an outer
    value computed before the loop (its buffer must outlive every iteration)."""
    nodes = [helper.make_node("MatMul", ["h_in", "W"], ["hw0"]),
             helper.make_node("Add", ["xb", "hw0"], ["pre"]),
             helper.make_node("Cast", ["i"], ["if"], to=F),
             helper.make_node("Mul", ["if", "tenth"], ["it"]),
             helper.make_node("Add", ["pre", "it"], ["pre2"]),
             helper.make_node("Tanh", ["pre2"], ["h_out"]), *extra_nodes]
    return body(nodes, [("i", I64, []), ("cond_in", BOOL, []), ("h_in", F, [1, H])],
                [(cond_out, BOOL, []), ("h_out", F, [1, H])],
                inits=[("tenth", np.array(0.1, np.float32)), *extra_inits])


def trip_input_model(opset=17, ir=8):
    """A carried MatMul+Add+Tanh over a trip count given as a graph input."""
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h"], name="rnn_loop", body=rnn_body())
    return model([loop], [("M", I64, []), ("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])],
                 [("W", W)], opset, ir)


def sessions(data, **kw):
    compiled = lstmrt.InferenceSession(data, backend="native", **kw)
    reference = lstmrt.InferenceSession(data, backend="native", compiled=False, **kw)
    ort = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return compiled, reference, ort


def agree(sessions_, feed, atol=1e-5):
    compiled, reference, ort = sessions_
    got = compiled.run(None, feed)
    for g, r, w in zip(got, reference.run(None, feed), ort.run(None, feed)):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape)
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=atol, err_msg="compiled vs reference plan")
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, err_msg="compiled vs onnxruntime")
    return got


def h_feed(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"M": np.array(n, np.int64), "h0": rng.standard_normal((1, H)).astype(np.float32),
            "x": rng.standard_normal((1, H)).astype(np.float32)}


@pytest.mark.parametrize("opset, ir, simd", [(13, 8, None), (17, 9, None), (18, 10, None)] +
                         [(17, 8, path) for path in available_simd_paths()])
def test_a_trip_count_from_a_graph_input_runs_one_compiled_program(opset, ir, simd):
    trio = sessions(trip_input_model(opset, ir), simd=simd)
    compiled = trio[0]
    assert "in one C call" in compiled.backend_reason, compiled.backend_reason
    programs = set()
    for n in (0, 1, 7, 100, 3):
        got = agree(trio, h_feed(n, seed=n))
        if n == 0:
            np.testing.assert_array_equal(got[0], h_feed(0, seed=0)["h0"])
        # the same instructions whatever the count: one program, its body run n times in C
        programs.add(tuple(label for label, _ in sorted(compiled.profile(h_feed(n), calls=5))))
    assert len(programs) == 1
    labels = next(iter(programs))
    assert "'rnn_loop' (Loop)" in labels and sum("(Tanh)" in label for label in labels) == 1


def test_the_body_time_follows_the_trip_count_in_the_profile():
    sess = lstmrt.InferenceSession(trip_input_model(), backend="native")
    times = [dict(sess.profile(h_feed(n), calls=20)) for n in (2, 200)]
    matmul = next(label for label in times[0] if "(MatMul)" in label)
    assert times[1][matmul] > 10 * times[0][matmul]


def test_auto_picks_native_for_a_runtime_trip_count():
    sess = lstmrt.InferenceSession(trip_input_model())
    assert sess.backend == "native", sess.backend_reason


def test_a_trip_count_computed_from_data():
    """M = int(max(x)): known only once x is seen."""
    nodes = [helper.make_node("ReduceMax", ["steps"], ["mx"], keepdims=0),
             helper.make_node("Cast", ["mx"], ["M"], to=I64),
             helper.make_node("Loop", ["M", "", "h0"], ["h"], body=rnn_body())]
    data = model(nodes, [("steps", F, [4]), ("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])],
                 [("W", W)], opset=13)
    trio = sessions(data)
    assert "in one C call" in trio[0].backend_reason
    for n in (0, 1, 7, 100):
        feed = h_feed(n)
        del feed["M"]
        feed["steps"] = np.array([n * 0.5, n + 0.25, 0.0, -3.0], np.float32)
        agree(trio, feed)


def while_model(bound_from_input=True):
    """acc += x while sum(acc) < bound: no trip count, the condition computed in the body (and
    the first one from the data), a counter carried besides."""
    loop_body = body([helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
                      helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
                      helper.make_node("Less", ["total", "bound"], ["go"]),
                      helper.make_node("Add", ["n_in", "one"], ["n_out"])],
                     [("i", I64, []), ("c", BOOL, []), ("acc_in", F, [3]), ("n_in", I64, [])],
                     [("go", BOOL, []), ("acc_out", F, [3]), ("n_out", I64, [])],
                     inits=[("one", np.array(1, np.int64))])
    nodes = [helper.make_node("ReduceSum", ["acc0"], ["t0"], keepdims=0),
             helper.make_node("Less", ["t0", "bound"], ["c0"]),
             helper.make_node("Loop", ["", "c0", "acc0", "n0"], ["acc", "n"], name="while", body=loop_body)]
    return model(nodes, [("acc0", F, [3]), ("x", F, [3]), ("bound", F, [])], [("acc", F, [3]), ("n", I64, [])],
                 [("n0", np.array(0, np.int64))])


@pytest.mark.parametrize("bound", [-1.0, 0.5, 7.0, 100.0])
def test_a_while_loop_with_its_condition_computed_in_the_body(bound):
    trio = sessions(while_model())
    assert "in one C call" in trio[0].backend_reason
    feed = {"acc0": np.zeros(3, np.float32), "x": np.array([0.25, 0.5, 0.25], np.float32),
            "bound": np.array(bound, np.float32)}
    got = agree(trio, feed)
    assert got[1] == max(0, int(np.ceil(bound)))       # iterations of one unit each


@pytest.mark.parametrize("compiled", [True, False])
def test_a_loop_past_its_cap_fails_naming_the_node(monkeypatch, compiled):
    """In C and on the numpy plan alike (where a loop with data-long scan outputs runs)."""
    monkeypatch.setenv("LSTMRT_MAX_LOOP_ITERATIONS", "1000")
    sess = lstmrt.InferenceSession(while_model(), backend="native", compiled=compiled)
    feed = {"acc0": np.zeros(3, np.float32), "x": np.array([0.25, 0.5, 0.25], np.float32)}
    assert sess.run(None, {**feed, "bound": np.array(1000.0, np.float32)})[1] == 1000   # the cap itself runs
    with pytest.raises(lstmrt.InputError, match=r"'while' \(Loop\).*1000 iterations"):
        sess.run(None, {**feed, "x": -feed["x"], "bound": np.array(1.0, np.float32)})   # never stops
    with pytest.raises(lstmrt.InputError, match=r"'while' \(Loop\)"):
        sess.run(None, {**feed, "bound": np.array(1001.0, np.float32)})
    np.testing.assert_allclose(sess.run(None, {**feed, "bound": np.array(3.0, np.float32)})[0], feed["x"] * 3)


@pytest.mark.parametrize("inner_trip", [None, 3], ids=["inner-counted", "inner-unrolled"])
def test_a_loop_in_a_loop(inner_trip):
    """The outer loop carries h through an inner loop of its own count (an input: counted too,
    or a constant: unrolled inside the counted body), and a sum."""
    inner = helper.make_node("Loop", ["K", "", "h_in"], ["h_mid"], name="inner", body=rnn_body())
    outer_body = body([inner, helper.make_node("ReduceSum", ["h_mid"], ["s"], keepdims=0),
                       helper.make_node("Add", ["acc_in", "s"], ["acc_out"]),
                       helper.make_node("Identity", ["h_mid"], ["h_out"])],
                      [("j", I64, []), ("c", BOOL, []), ("h_in", F, [1, H]), ("acc_in", F, [])],
                      [("c", BOOL, []), ("h_out", F, [1, H]), ("acc_out", F, [])], name="outer_body")
    nodes = [helper.make_node("Loop", ["M", "", "h0", "zero"], ["h", "acc"], name="outer", body=outer_body)]
    inputs = [("M", I64, []), ("h0", F, [1, H]), ("x", F, [1, H])]
    inits = [("W", W), ("zero", np.array(0.0, np.float32))]
    if inner_trip is None:
        inputs.append(("K", I64, []))
    else:
        inits.append(("K", np.array(inner_trip, np.int64)))
    trio = sessions(model(nodes, inputs, [("h", F, [1, H]), ("acc", F, [])], inits))
    assert "in one C call" in trio[0].backend_reason
    for m, k in [(0, 3), (3, 0), (1, 1), (4, 7), (9, 2)]:
        feed = {**h_feed(m, seed=m + k), "K": np.array(k, np.int64)}
        if inner_trip is not None:
            del feed["K"]
        agree(trio, feed, atol=1e-4)


def test_an_if_decided_by_the_data_inside_a_loop_body():
    """Each iteration halves h when its sum is positive, else adds one."""
    then_g = helper.make_graph([helper.make_node("Mul", ["h_in", "half"], ["t"])], "then", [], [vi("t", F, [1, H])])
    else_g = helper.make_graph([helper.make_node("Add", ["h_in", "onef"], ["e"])], "else", [], [vi("e", F, [1, H])])
    loop_body = body([helper.make_node("ReduceSum", ["h_in"], ["s"], keepdims=0),
                      helper.make_node("Greater", ["s", "zerof"], ["pos"]),
                      helper.make_node("If", ["pos"], ["h_if"], then_branch=then_g, else_branch=else_g),
                      helper.make_node("Sub", ["h_if", "xb"], ["h_out"])],
                     [("i", I64, []), ("c", BOOL, []), ("h_in", F, [1, H])], [("c", BOOL, []), ("h_out", F, [1, H])],
                     inits=[("half", np.array(0.5, np.float32)), ("onef", np.array(1.0, np.float32)),
                            ("zerof", np.array(0.0, np.float32))])
    data = model([helper.make_node("Loop", ["M", "", "h0"], ["h"], body=loop_body)],
                 [("M", I64, []), ("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])])
    trio = sessions(data)
    assert "in one C call" in trio[0].backend_reason
    for n in (0, 1, 7, 100):
        agree(trio, {**h_feed(n, seed=n), "x": np.full((1, H), 0.1, np.float32)})


def swap_model():
    """Carried values that trade places each iteration (a = b, b = a): the copies onto the slots
    must not clobber what the other copy reads; and k passed through unchanged (no slot), read
    to grow d."""
    loop_body = body([helper.make_node("Identity", ["b_in"], ["a_out"]),
                      helper.make_node("Identity", ["a_in"], ["b_out"]),
                      helper.make_node("Add", ["d_in", "k_in"], ["d_out"])],
                     [("i", I64, []), ("c", BOOL, []), ("a_in", F, [2]), ("b_in", F, [2]), ("k_in", F, [2]),
                      ("d_in", F, [2])],
                     [("c", BOOL, []), ("a_out", F, [2]), ("b_out", F, [2]), ("k_in", F, [2]), ("d_out", F, [2])])
    return model([helper.make_node("Loop", ["M", "", "a0", "b0", "xb", "a0"], ["a", "b", "k", "d"], body=loop_body)],
                 [("M", I64, []), ("a0", F, [2]), ("b0", F, [2]), ("x", F, [2])],
                 [("a", F, [2]), ("b", F, [2]), ("k", F, [2]), ("d", F, [2])])


def test_carried_values_that_read_each_other_or_pass_through():
    trio = sessions(swap_model())
    for n in (0, 1, 2, 5, 20):
        agree(trio, {"M": np.array(n, np.int64), "a0": np.array([1, 2], np.float32),
                     "b0": np.array([3, -1], np.float32), "x": np.array([0.5, -2], np.float32)})


def scan_model(trip=None):
    """Carried h and a scan of each iteration's h, stopping once sum(h) passes a bound given as
    an input; the trip count a constant `trip`, else int(max(steps)) of an input."""
    extra = [helper.make_node("ReduceSum", ["h_out"], ["s"], keepdims=0),
             helper.make_node("Less", ["s", "bound"], ["go"]),
             helper.make_node("Identity", ["h_out"], ["row"])]
    b = rnn_body(extra, cond_out="go")
    b.output.append(vi("row", F, [1, H]))
    inputs = [("h0", F, [1, H]), ("x", F, [1, H]), ("bound", F, [])]
    nodes, inits = [], [("W", W)]
    if trip is None:
        inputs.append(("steps", F, [2]))
        nodes = [helper.make_node("ReduceMax", ["steps"], ["mx"], keepdims=0),
                 helper.make_node("Cast", ["mx"], ["M"], to=I64)]
    else:
        inits.append(("M", np.array(trip, np.int64)))
    nodes.append(helper.make_node("Loop", ["M", "", "h0"], ["h", "rows"], name="scan_loop", body=b))
    return model(nodes, inputs, [("h", F, [1, H]), ("rows", F, None)], inits, opset=13)


def scan_feed(bound, steps=None):
    feed = {**h_feed(0), "bound": np.array(bound, np.float32)}
    del feed["M"]
    return feed if steps is None else {**feed, "steps": np.array([steps, 0], np.float32)}


def test_scan_outputs_of_a_constant_trip_count_with_a_condition_from_the_data():
    trio = sessions(scan_model(trip=12))
    assert "in one C call" in trio[0].backend_reason
    for bound in (100.0, 0.0, -100.0, 1.5):   # all 12 rows (compiled), and fewer (rerun on the numpy plan)
        got = agree(trio, scan_feed(bound))
        assert got[1].shape[1:] == (1, H)
    assert agree(trio, scan_feed(100.0))[1].shape == (12, 1, H)
    profile = dict(trio[0].profile(scan_feed(100.0), calls=3))
    assert "'scan_loop' (Loop scan)" in profile


def test_scan_outputs_of_a_trip_count_from_the_data_stay_on_the_numpy_plan_saying_why():
    trio = sessions(scan_model())
    reason = trio[0].backend_reason
    assert "numpy plan" in reason and "'scan_loop' (Loop)" in reason and "scan outputs" in reason, reason
    assert lstmrt.InferenceSession(scan_model()).backend == "onnxruntime"
    for n in (0, 1, 7):
        agree(trio, scan_feed(100.0, steps=n))


def test_a_static_loop_longer_than_unrolling_allows_runs_counted():
    """A constant trip count of 3000: over the unrolling limit, one LOOP instruction instead."""
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h"], name="long", body=rnn_body())
    data = model([loop], [("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])],
                 [("W", W), ("M", np.array(3000, np.int64))])
    trio = sessions(data)
    assert "in one C call" in trio[0].backend_reason
    feed = h_feed(0)
    del feed["M"]
    agree(trio, feed, atol=1e-4)



def test_a_loop_after_a_python_step_and_a_python_step_inside_a_body():
    """Einsum has no compiled form: before the loop it is a Python step between two C segments
    (the loop's body counted within its own segment); inside the body it keeps the whole
    signature on the numpy plan, saying so."""
    einsum = helper.make_node("Einsum", ["h0"], ["h0e"], equation="ij->ij")
    before = model([einsum, helper.make_node("Loop", ["M", "", "h0e"], ["h"], body=rnn_body())],
                   [("M", I64, []), ("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])], [("W", W)])
    trio = sessions(before)
    assert "between C segments" in trio[0].backend_reason, trio[0].backend_reason
    for n in (0, 1, 7, 100):
        agree(trio, h_feed(n, seed=n))
    inside = rnn_body([helper.make_node("Einsum", ["h_mid"], ["h_out"], equation="ij->ij")])
    inside.node[5].output[0] = "h_mid"
    data = model([helper.make_node("Loop", ["M", "", "h0"], ["h"], name="py_loop", body=inside)],
                 [("M", I64, []), ("h0", F, [1, H]), ("x", F, [1, H])], [("h", F, [1, H])], [("W", W)])
    trio = sessions(data)
    assert "'py_loop' (Loop): its body holds a node without a compiled form" in trio[0].backend_reason
    for n in (0, 7):
        agree(trio, h_feed(n, seed=n))


def test_a_stream_carries_its_state_through_a_counted_loop():
    """h0 -> loop -> h as a stream's state: a different count each call, the state kept in the
    program's arena between calls; equal to chaining sess.run, and to the reference plan."""
    data = trip_input_model()
    compiled, reference = (lstmrt.InferenceSession(data, backend="native", compiled=c) for c in (True, False))
    stream = compiled.stream(state={"h0": "h"})
    h = h_ref = np.zeros((1, H), np.float32)
    for n in (3, 0, 5, 40, 1):
        feed = {k: v for k, v in h_feed(n, seed=n).items() if k != "h0"}
        assert stream.run(feed) == []
        h = compiled.run(None, {**feed, "h0": h})[0]
        h_ref = reference.run(None, {**feed, "h0": h_ref})[0]
        np.testing.assert_array_equal(stream.state["h0"], h)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)


def test_concurrent_runs_of_a_counted_loop_equal_sequential_ones():
    """Threads share the program, each with its own arena: counts differ per call."""
    import threading
    sess = lstmrt.InferenceSession(trip_input_model(), backend="native")
    feeds = [h_feed(n, seed=n) for n in (0, 1, 7, 100, 33, 2)]
    want = [sess.run(None, f)[0] for f in feeds]
    errors = []

    def work(k):
        for _ in range(50):
            for i in range(len(feeds)):
                j = (i + k) % len(feeds)
                if not np.array_equal(sess.run(None, feeds[j])[0], want[j]):
                    errors.append(j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
