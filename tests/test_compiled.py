"""Compiled programs give what the numpy reference plan gives (compiled=False) and what
onnxruntime gives, keep the stream API's state semantics, and are safe across threads."""
import threading

import numpy as np
import pytest

import lstmrt
from models import bare_cell, streaming_model


def _sessions(model, **kw):
    return (lstmrt.InferenceSession(model, backend="native", **kw),
            lstmrt.InferenceSession(model, backend="native", compiled=False, **kw),
            lstmrt.InferenceSession(model, backend="onnxruntime"))


@pytest.mark.parametrize("model", [bare_cell("LSTM"), bare_cell("GRU"), bare_cell("RNN"), streaming_model("LSTM"),
                                   streaming_model("GRU")], ids=["lstm", "gru", "rnn", "glue-lstm", "glue-gru"])
def test_streams_equal_the_reference_plan_and_onnxruntime(model):
    sessions = _sessions(model)
    compiled, reference, ort = (s.stream() for s in sessions)
    info = sessions[0].get_inputs()[0]
    name, sizes = info.name, {"T": 23, "B": 3, "batch": 3, "time": 23}
    shape = [sizes.get(d, d) for d in info.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    axis = next(a for a, d in enumerate(info.shape) if d in ("T", "time"))
    for a, b in [(0, 1), (1, 5), (5, 6), (6, 23)]:
        chunk = np.ascontiguousarray(np.take(x, range(a, b), axis=axis))
        got, want, ref = (s.run({name: chunk}) for s in (compiled, reference, ort))
        for g, w, r in zip(got, want, ref):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_allclose(g, r, atol=1e-5)
    for state in compiled.pairs:
        np.testing.assert_array_equal(compiled.state[state], reference.state[state])


def test_stream_state_api():
    sess = lstmrt.InferenceSession(bare_cell("LSTM"), backend="native")
    stream = sess.stream()
    x = np.random.default_rng(2).standard_normal((4, 2, 10)).astype(np.float32)
    first = stream.run({"X": x})[0]
    saved = stream.state
    second = stream.run({"X": x})[0]
    assert not np.allclose(first, second)
    stream.state["h0"][:] = 99                 # .state is a copy: changing it changes nothing
    stream.reset()
    np.testing.assert_array_equal(stream.run({"X": x})[0], first)
    stream.set_state(saved)
    np.testing.assert_array_equal(stream.run({"X": x})[0], second)
    stream.set_state({k: np.zeros_like(v) for k, v in saved.items()})   # zeros: back to the start
    np.testing.assert_array_equal(stream.run({"X": x})[0], first)
    stream.set_state(saved)
    np.testing.assert_array_equal(stream.run({"X": x, "h0": saved["h0"]})[0], second)   # state given in the feed
    with pytest.raises(lstmrt.StreamError, match="batch"):
        stream.run({"X": x[:, :1]})            # a batch change needs reset() or set_state()
    stream.reset()
    assert stream.run({"X": x[:, :1]})[0].shape == (4, 1, 1, 24)


def test_stream_without_y_and_bad_input_gets_the_usual_errors():
    sess = lstmrt.InferenceSession(bare_cell("GRU", with_y=False), backend="native")
    stream = sess.stream()
    assert stream.run({"X": np.zeros((3, 2, 10), np.float32)}) == []
    assert stream.state["h0"].shape == (1, 2, 24)
    for _ in range(2):   # the second time the signature is known: the same checks still hold
        with pytest.raises(lstmrt.InputError, match="dtype float64"):
            stream.run({"X": np.zeros((3, 2, 10))})
        with pytest.raises(lstmrt.InputError, match="dimension 2 must be 10"):
            stream.run({"X": np.zeros((3, 2, 9), np.float32)})
        stream.run({"X": np.zeros((3, 2, 10), np.float32)})


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_run_equals_the_reference_plan_and_onnxruntime(cell):
    compiled, reference, ort = _sessions(bare_cell(cell))
    rng = np.random.default_rng(3)
    feed = {i.name: rng.standard_normal([{"T": 6, "B": 3}.get(d, d) for d in i.shape]).astype(np.float32)
            for i in compiled.get_inputs()}
    before = {k: v.copy() for k, v in feed.items()}
    for _ in range(2):    # compiled on the first call, known on the second
        got, want, ref = compiled.run(None, feed), reference.run(None, feed), ort.run(None, feed)
        for g, w, r in zip(got, want, ref):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_allclose(g, r, atol=1e-5)
    for k in feed:
        np.testing.assert_array_equal(feed[k], before[k])       # the caller's arrays are left alone
    names = [o.name for o in compiled.get_outputs()][::-1]
    for g, w in zip(compiled.run(names, feed), reference.run(names, feed)):
        np.testing.assert_array_equal(g, w)
    returned = compiled.run(None, feed)
    returned[0][...] = 7                        # returned arrays are the caller's: the next call is unharmed
    np.testing.assert_array_equal(compiled.run(None, feed)[0], want[0])
    with pytest.raises(lstmrt.InputError, match="dimension 2 must be 10"):
        compiled.run(None, {**feed, "X": feed["X"][:, :, :9].copy()})


@pytest.mark.parametrize("model", [bare_cell("LSTM", hidden=48, inputs=16), streaming_model("GRU")],
                         ids=["bare", "glue"])
def test_concurrent_runs_are_bit_identical_to_sequential(model):
    sess = lstmrt.InferenceSession(model, backend="native")
    rng = np.random.default_rng(4)
    shapes = {i.name: [{"T": 5, "B": 2, "batch": 2, "time": 5}.get(d, d) for d in i.shape] for i in sess.get_inputs()}
    feeds = [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(2)]
    expected = [sess.run(None, f) for f in feeds]
    results = [[], []]

    def work(i):
        for _ in range(300):
            results[i].append(sess.run(None, feeds[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for outs in results[i]:
            for g, w in zip(outs, expected[i]):
                np.testing.assert_array_equal(g, w)


def test_strided_and_big_endian_arrays_are_converted_on_known_signatures_too():
    """Known signatures hand contiguous arrays to C as they are: a strided view must give what
    its contiguous copy gives, and a big-endian float32 array what its native-order copy gives
    (never its bytes read as if native)."""
    model = bare_cell("LSTM")
    sess = lstmrt.InferenceSession(model, backend="native")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 20)).astype(np.float32)[:, :, ::2]
    h0 = rng.standard_normal((1, 2, 48)).astype(np.float32)[:, :, ::2]
    c0 = rng.standard_normal((1, 2, 24)).astype(np.float32)
    assert not x.flags.c_contiguous and not h0.flags.c_contiguous
    plain = {"X": np.ascontiguousarray(x), "h0": np.ascontiguousarray(h0), "c0": c0}
    want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, plain)
    sess.run(None, plain)                       # the signature is known from here on
    for g, w in zip(sess.run(None, {"X": x, "h0": h0, "c0": c0}), want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    for g, w in zip(sess.run(None, {**plain, "c0": c0.astype(">f4")}), want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    stream, reference = sess.stream(), sess.stream()
    for chunk in (x[:2], np.asfortranarray(x[2:])):     # strided, then Fortran-ordered
        np.testing.assert_array_equal(stream.run({"X": chunk})[0], reference.run({"X": np.ascontiguousarray(chunk)})[0])
    np.testing.assert_array_equal(stream.run({"X": x.astype(">f4")})[0], reference.run({"X": np.ascontiguousarray(x)})[0])


def test_a_feed_whose_program_would_exceed_the_memory_limit_is_refused_before_running(monkeypatch):
    monkeypatch.setenv("LSTMRT_MAX_ARENA_MB", "1")
    sess = lstmrt.InferenceSession(bare_cell("LSTM"), backend="native")
    small = {"X": np.zeros((2, 1, 10), np.float32), "h0": np.zeros((1, 1, 24), np.float32),
             "c0": np.zeros((1, 1, 24), np.float32)}
    sess.run(None, small)
    long = {**small, "X": np.zeros((20000, 1, 10), np.float32)}     # Y alone: 20000 x 24 floats, ~1.8 MiB
    with pytest.raises(lstmrt.InputError, match="MiB of working memory.*LSTMRT_MAX_ARENA_MB.*LSTM"):
        sess.run(None, long)
    monkeypatch.setenv("LSTMRT_MAX_ARENA_MB", "0.1")     # a limit under 1 MiB is said as it is, not "0 MiB"
    fresh = lstmrt.InferenceSession(bare_cell("LSTM"), backend="native")
    with pytest.raises(lstmrt.InputError, match=r"over the limit of 0\.1 MiB"):
        fresh.run(None, {**small, "X": np.zeros((2000, 1, 10), np.float32)})


def _graph_model(nodes, inputs, inits, outputs=("y",)):
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_node_without_a_compiled_form_runs_in_python_between_c_segments():
    """Gemm with transA=1 has no compiled form: the program is two C segments and that node in
    Python, with onnxruntime's results; auto prefers onnxruntime and says why."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gemm", ["r", "w"], ["g"], transA=1),
             helper.make_node("Tanh", ["g"], ["y"])]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, [5, 3])], {"w": rng.standard_normal((5, 4)).astype(np.float32)})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    x = rng.standard_normal((5, 3)).astype(np.float32)
    sess = lstmrt.InferenceSession(model, backend="native")
    assert "Python at 'Gemm_1' (Gemm) [Python] between C segments: 2 in C, 1 in Python" in sess.backend_reason
    want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, {"x": x})
    for _ in range(2):
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want[0], atol=1e-6)
    assert any("[Python]" in label for label, _ in sess.profile({"x": x}, calls=3))
    auto = lstmrt.InferenceSession(model)
    if auto.get_providers()[0] != "CUDAExecutionProvider":
        assert auto.backend == "onnxruntime" and "does not compile it whole" in auto.backend_reason


def test_a_python_step_whose_shape_follows_the_data_falls_back_to_the_reference():
    """A Reshape to a shape read from the data: compiled for the first call's shape, and each
    call with another shape runs on the numpy plan instead of a wrong program."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Slice", ["s", "zero", "two"], ["shape"]), helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Neg", ["r"], ["y"])]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, [12]), ("s", TensorProto.INT64, [6])],
                         {"zero": np.array([0]), "two": np.array([2])})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    sess = lstmrt.InferenceSession(model, backend="native")
    x = np.arange(12, dtype=np.float32)
    for shape in ([3, 4], [4, 3], [3, 4], [2, 6]):
        s = np.array(shape + [0, 0, 0, 0], np.int64)
        got = sess.run(None, {"x": x, "s": s})[0]
        np.testing.assert_array_equal(got, -x.reshape(shape))


def _reshape_to_data_model():
    """z = Reshape(Tile(d, 5), d + 5): compiled for d = 0 (zeros), its Reshape a Python step."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Cast", ["d"], ["di"], to=TensorProto.INT64), helper.make_node("Add", ["di", "k5"], ["shp"]),
             helper.make_node("Tile", ["d", "k5"], ["d5"]), helper.make_node("Reshape", ["d5", "shp"], ["z"], name="reshape"),
             helper.make_node("ReduceSum", ["z"], ["y"], keepdims=0)]
    model = _graph_model(nodes, [("d", TensorProto.FLOAT, [1])], {"k5": np.array([5], np.int64)})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return model


@pytest.mark.parametrize("compiled", [True, False])
def test_a_python_step_failing_on_the_data_is_an_input_error_naming_its_node(compiled):
    """A Reshape to a shape from the data, run between C segments: a shape the data cannot take,
    or a dim below -1 (numpy would read it as -1; onnxruntime refuses it), fails as on the numpy
    plan, naming the node."""
    model = _reshape_to_data_model()
    sess = lstmrt.InferenceSession(model, backend="native", compiled=compiled)
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    if compiled:
        assert "[Python]" in sess.backend_reason
    np.testing.assert_allclose(sess.run(None, {"d": np.zeros(1, np.float32)})[0],
                               reference.run(None, {"d": np.zeros(1, np.float32)})[0])
    for d in (3.0, -10.0):
        feed = {"d": np.array([d], np.float32)}
        with pytest.raises(lstmrt.InputError):
            reference.run(None, feed)
        with pytest.raises(lstmrt.InputError, match="'reshape' \\(Reshape\\)"):
            sess.run(None, feed)


def test_profiling_a_feed_that_runs_on_the_numpy_plan_says_so():
    """Range from a count in the data: compiled for the count zeros give, so a feed with another
    count runs on the numpy plan, and there is no program of that call to profile."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Greater", ["x", "thr"], ["pos"]), helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["posf"], ["s"], keepdims=0), helper.make_node("Cast", ["s"], ["lim"], to=TensorProto.INT64),
             helper.make_node("Range", ["lim", "hundred", "one"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["rf"], ["y"], keepdims=0)]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, [1, 4])], {"thr": np.array(-0.5, np.float32),
                                                                      "hundred": np.array(100), "one": np.array(1)})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    sess = lstmrt.InferenceSession(model, backend="native")
    assert sess.profile({"x": -np.ones((1, 4), np.float32)}, calls=3)
    with pytest.raises(lstmrt.UnsupportedModelError, match="numpy plan"):
        sess.profile({"x": np.ones((1, 4), np.float32)}, calls=3)


def test_a_feed_the_models_shapes_contradict_is_an_input_error_naming_the_node():
    from onnx import TensorProto, helper
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="the_matmul"), helper.make_node("Relu", ["m"], ["y"])]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, ["batch", "k"])], {"w": np.ones((6, 3), np.float32)})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    sess = lstmrt.InferenceSession(model, backend="native")
    assert sess.run(None, {"x": np.ones((2, 6), np.float32)})[0].shape == (2, 3)
    for _ in range(2):
        with pytest.raises(lstmrt.InputError, match="node 'the_matmul' \\(MatMul\\)"):
            sess.run(None, {"x": np.ones((2, 5), np.float32)})


def test_more_signatures_than_the_cache_holds_stay_exact():
    """Programs are kept for the 32 most recent signatures: a signature evicted and seen again
    is compiled again, with the same result."""
    compiled, reference, _ = _sessions(bare_cell("GRU"))
    rng = np.random.default_rng(13)
    feeds = [{"X": rng.standard_normal((steps, 1, 10)).astype(np.float32),
              "h0": rng.standard_normal((1, 1, 24)).astype(np.float32)} for steps in range(1, 41)]
    for feed in feeds + feeds[:3]:
        for g, w in zip(compiled.run(None, feed), reference.run(None, feed)):
            np.testing.assert_array_equal(g, w)


def test_an_if_decided_by_the_data_compiles_to_a_branch():
    """An If on a value computed from the data (not a signature constant): both branches in the
    program behind a branch instruction; each call takes the one its data says."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name, k, op):
        return helper.make_graph([helper.make_node(op, ["x", f"k{name}"], [f"o{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"o{name}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(np.full((3,), k, np.float32), f"k{name}")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["r"], then_branch=branch("t", 2.0, "Mul"),
                              else_branch=branch("e", -3.0, "Add")),
             helper.make_node("Tanh", ["r"], ["y"])]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, [2, 3])], {"zero": np.float32(0)})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    sess = lstmrt.InferenceSession(model, backend="native")
    assert "in one C call" in sess.backend_reason
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    rng = np.random.default_rng(17)
    for sign in (1, -1, 1, -1):
        x = (np.abs(rng.standard_normal((2, 3))) * sign).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], reference.run(None, {"x": x})[0], atol=1e-6)
    labels = [label for label, _ in sess.profile({"x": x}, calls=5)]
    assert "'If_2' (If)" in labels and any("Mul" in label for label in labels) and any("Add" in label for label in labels)


def test_a_python_step_reads_views_of_the_feed_at_their_own_shape():
    """A recurrent node with partial sequence lengths runs in Python; its initial state is an
    Unsqueeze of a graph input: the step gets the view's shape, not the input's."""
    from onnx import TensorProto, helper
    H, I = 7, 3
    rng = np.random.default_rng(18)
    nodes = [helper.make_node("Unsqueeze", ["h0", "ax"], ["h0u"]), helper.make_node("Unsqueeze", ["c0", "ax"], ["c0u"]),
             helper.make_node("LSTM", ["x", "W", "R", "", "seq", "h0u", "c0u"], ["y", "yh", "yc"], hidden_size=H)]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, ["T", "B", I]), ("seq", TensorProto.INT32, ["B"]),
                                 ("h0", TensorProto.FLOAT, ["B", H]), ("c0", TensorProto.FLOAT, ["B", H])],
                         {"W": rng.standard_normal((1, 4 * H, I)).astype(np.float32),
                          "R": rng.standard_normal((1, 4 * H, H)).astype(np.float32), "ax": np.array([0])},
                         outputs=("y", "yh"))
    for out in model.graph.output:
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    feed = {"x": rng.standard_normal((5, 2, I)).astype(np.float32), "seq": np.array([5, 3], np.int32),
            "h0": rng.standard_normal((2, H)).astype(np.float32), "c0": rng.standard_normal((2, H)).astype(np.float32)}
    sess = lstmrt.InferenceSession(model, backend="native")
    want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, feed)
    for _ in range(2):
        for g, w in zip(sess.run(None, feed), want):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_a_stream_output_that_is_its_state_input_is_the_state_before_the_call():
    """An output passed straight through from a state input reads the state the call started
    from, although the state lives in the program's arena and is overwritten at its end."""
    from onnx import TensorProto, helper
    H, I = 4, 3
    rng = np.random.default_rng(19)
    nodes = [helper.make_node("RNN", ["x", "W", "R", "", "", "h0"], ["y", "hn"], hidden_size=H),
             helper.make_node("Identity", ["h0"], ["h_before"])]
    model = _graph_model(nodes, [("x", TensorProto.FLOAT, ["T", 1, I]), ("h0", TensorProto.FLOAT, [1, 1, H])],
                         {"W": rng.standard_normal((1, H, I)).astype(np.float32),
                          "R": rng.standard_normal((1, H, H)).astype(np.float32)}, outputs=("y", "hn", "h_before"))
    for out in model.graph.output:
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    stream = lstmrt.InferenceSession(model, backend="native").stream(state={"h0": "hn"})
    ort = lstmrt.InferenceSession(model, backend="onnxruntime")
    h = np.zeros((1, 1, H), np.float32)
    for steps in (2, 1, 3, 1):
        x = rng.standard_normal((steps, 1, I)).astype(np.float32)
        y, hn, h_before = ort.run(None, {"x": x, "h0": h})
        got_y, got_before = stream.run({"x": x})
        np.testing.assert_allclose(got_y, y, atol=1e-6)
        np.testing.assert_allclose(got_before, h_before, atol=1e-6)
        h = hn


@pytest.mark.parametrize("precision, bound", [("bf16", 2e-2), ("int8", 6e-2)])
def test_reduced_precision_reaches_the_compiled_dense_products(precision, bound):
    """precision= applies to a compiled MatMul's packed weights too: a model that is one MatMul
    comes out changed by the narrower weights, and within the stated error of onnxruntime."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(20)
    model = _graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", TensorProto.FLOAT, [4, 40])],
                         {"w": rng.standard_normal((40, 24)).astype(np.float32) * 0.2})
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    x = rng.standard_normal((4, 40)).astype(np.float32)
    want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, {"x": x})[0]
    exact = lstmrt.InferenceSession(model, backend="native").run(None, {"x": x})[0]
    narrow = lstmrt.InferenceSession(model, backend="native", precision=precision).run(None, {"x": x})[0]
    np.testing.assert_allclose(exact, want, atol=1e-5)
    assert not np.array_equal(narrow, exact)
    assert np.max(np.abs(narrow - want)) < bound * np.max(np.abs(want))


def test_threads_give_the_same_bits_on_compiled_programs():
    sess_one = lstmrt.InferenceSession(streaming_model("LSTM", input_size=64, hidden=256), backend="native")
    sess_two = lstmrt.InferenceSession(streaming_model("LSTM", input_size=64, hidden=256), backend="native", threads=2)
    x = np.random.default_rng(21).standard_normal((1, 6, 64)).astype(np.float32)
    one, two = sess_one.stream(), sess_two.stream()
    for chunk in (x[:, :2], x[:, 2:3], x[:, 3:]):
        for g, w in zip(two.run({"x": chunk}), one.run({"x": chunk})):
            np.testing.assert_array_equal(g, w)
