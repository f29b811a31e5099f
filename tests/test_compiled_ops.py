"""Every compiled op against the numpy reference plan (compiled=False) and onnxruntime, over
random shapes, broadcasts, axes and attributes, on every SIMD path this CPU has."""
import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.kernel import available_simd_paths

PATHS = available_simd_paths()
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.bool_): TensorProto.BOOL,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}


def op_model(op, feeds: dict, consts: dict, attrs: dict, n_out=1, opset=17, inputs_order=None, outputs=None):
    """One node: `feeds` become graph inputs, `consts` initializers, in `inputs_order`; the
    outputs' types come from onnx's shape inference."""
    order = inputs_order or list(feeds) + list(consts)
    outs = outputs or [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, order, outs, **attrs)
    graph = helper.make_graph(
        [node], "op",
        [helper.make_tensor_value_info(n, ELEM[a.dtype], list(a.shape)) for n, a in feeds.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items() if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    typed = onnx.shape_inference.infer_shapes(model).graph.output
    for out, t in zip(model.graph.output, typed):
        out.CopyFrom(t if t.type.HasField("tensor_type") else inferred.get(out.name, t))
    return model


def check(model, feeds, rtol=1e-5, atol=1e-6):
    """Compiled == reference plan (to float rounding) == onnxruntime, on every SIMD path."""
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    data = model.SerializeToString()
    want = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = lstmrt.InferenceSession(data, backend="native", compiled=False).run(None, feeds)
    for simd in PATHS:
        sess = lstmrt.InferenceSession(data, backend="native", simd=simd)
        assert "compiled" in sess.backend_reason, sess.backend_reason
        for _ in range(2):   # compiled on the first call, known on the second
            got = sess.run(None, feeds)
            for g, r, w in zip(got, ref, want):
                assert g.shape == w.shape and g.dtype == w.dtype
                scale = max(1.0, float(np.max(np.abs(w)))) if w.dtype.kind == "f" and w.size else 1.0
                np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale, err_msg=f"{simd} vs reference")
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale, err_msg=f"{simd} vs onnxruntime")


def randn(rng, shape, positive=False):
    a = np.asarray(rng.standard_normal(shape), np.float32)
    return np.asarray(np.abs(a) + np.float32(0.1), np.float32) if positive else a


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@st.composite
def broadcast_pair(draw):
    out = draw(shapes)
    def operand():
        rank = draw(st.integers(0, len(out)))
        tail = out[len(out) - rank:]
        return [1 if draw(st.booleans()) else d for d in tail]
    return out, operand(), operand()


UNARY = [("Relu", {}, False), ("Sigmoid", {}, False), ("Tanh", {}, False), ("Exp", {}, False),
         ("Log", {}, True), ("Neg", {}, False), ("Abs", {}, False), ("Sqrt", {}, True),
         ("Reciprocal", {}, True), ("Erf", {}, False), ("Floor", {}, False), ("Ceil", {}, False),
         ("Sin", {}, False), ("Cos", {}, False), ("Softplus", {}, False), ("Softsign", {}, False),
         ("LeakyRelu", {"alpha": 0.3}, False), ("Elu", {"alpha": 0.7}, False),
         ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, False), ("ThresholdedRelu", {"alpha": 0.2}, False)]


@pytest.mark.parametrize("op,attrs,positive", UNARY, ids=[u[0] for u in UNARY])
@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_unary(op, attrs, positive, shape, seed):
    x = randn(np.random.default_rng(seed), shape, positive) * 3
    check(op_model(op, {"x": x}, {}, attrs), {"x": x}, rtol=2e-5)


def test_unary_nan_and_inf_pass_through():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -2.0, 3.0] * 3, np.float32)
    for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg"):
        check(op_model(op, {"x": x}, {}, {}), {"x": x})
    check(op_model("Clip", {"x": x}, {"lo": np.float32(-1), "hi": np.float32(1)}, {}), {"x": x})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
                                "Less", "Greater", "Equal", "LessOrEqual", "GreaterOrEqual"])
@SETTINGS
@given(case=broadcast_pair(), seed=st.integers(0, 2**16), const_b=st.booleans())
def test_binary_broadcasts(op, case, seed, const_b):
    _, sa, sb = case
    rng = np.random.default_rng(seed)
    a, b = randn(rng, sa, op == "Pow"), randn(rng, sb, op == "Div")
    if op == "Equal":
        b = np.round(b)
        a = np.round(a)
    feeds, consts = ({"a": a}, {"b": b}) if const_b else ({"a": a, "b": b}, {})
    model = op_model(op, feeds, consts, {}, inputs_order=["a", "b"])
    check(model, feeds, rtol=2e-5)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
@SETTINGS
@given(case=broadcast_pair(), seed=st.integers(0, 2**16))
def test_logic_broadcasts(op, case, seed):
    _, sa, sb = case
    rng = np.random.default_rng(seed)
    feeds = {"a": rng.random(sa) > 0.5, "b": rng.random(sb) > 0.5}
    check(op_model(op, feeds, {}, {}, inputs_order=["a", "b"]), feeds)


@SETTINGS
@given(case=broadcast_pair(), seed=st.integers(0, 2**16))
def test_where_and_not(case, seed):
    out, sa, sb = case
    rng = np.random.default_rng(seed)
    feeds = {"c": rng.random(out) > 0.5, "a": randn(rng, sa), "b": randn(rng, sb)}
    check(op_model("Where", feeds, {}, {}, inputs_order=["c", "a", "b"]), feeds)
    check(op_model("Not", {"c": feeds["c"]}, {}, {}), {"c": feeds["c"]})


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL, TensorProto.FLOAT])
def test_cast(to):
    x = (np.random.default_rng(1).standard_normal((3, 5)) * 100).astype(np.float32)
    check(op_model("Cast", {"x": x}, {}, {"to": to}), {"x": x})
    i = np.arange(-7, 8, dtype=np.int64).reshape(3, 5)
    check(op_model("Cast", {"i": i}, {}, {"to": TensorProto.FLOAT}), {"i": i})


@SETTINGS
@given(m=st.lists(st.integers(1, 4), min_size=1, max_size=3), k=st.integers(1, 70), n=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_matmul_constant_weights(m, k, n, seed):
    rng = np.random.default_rng(seed)
    x, w = randn(rng, m + [k]), randn(rng, (k, n))
    check(op_model("MatMul", {"x": x}, {"w": w}, {}), {"x": x}, rtol=1e-5, atol=1e-5)


def test_matmul_bias_and_activation_fuse_and_stay_exact():
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, (3, 7, 33)), randn(rng, (33, 20)), randn(rng, (20,))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["a"]),
             helper.make_node("Tanh", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    check(model, {"x": x}, atol=1e-5)


@SETTINGS
@given(batch=st.lists(st.integers(1, 3), max_size=2), m=st.integers(1, 5), k=st.integers(1, 9), n=st.integers(1, 9),
       seed=st.integers(0, 2**16), broadcast_b=st.booleans())
def test_matmul_of_two_computed_values(batch, m, k, n, seed, broadcast_b):
    rng = np.random.default_rng(seed)
    a, b = randn(rng, batch + [m, k]), randn(rng, ([] if broadcast_b else batch) + [k, n])
    check(op_model("MatMul", {"a": a, "b": b}, {}, {}), {"a": a, "b": b}, atol=1e-5)


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [(0, 1.0, 1.0, (6,)), (1, 0.5, 2.0, (1, 6)), (1, 1.0, 1.0, None)])
def test_gemm(trans_b, alpha, beta, bias_shape):
    rng = np.random.default_rng(3)
    x, w = randn(rng, (4, 9)), randn(rng, (6, 9) if trans_b else (9, 6))
    consts = {"w": w}
    order = ["x", "w"]
    if bias_shape:
        consts["c"] = randn(rng, bias_shape)
        order.append("c")
    model = op_model("Gemm", {"x": x}, consts, {"transB": trans_b, "alpha": alpha, "beta": beta}, inputs_order=order)
    check(model, {"x": x}, atol=1e-5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 17])
@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), data=st.data())
def test_softmax(op, opset, shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = randn(np.random.default_rng(seed), shape) * 4
    check(op_model(op, {"x": x}, {}, {"axis": axis}, opset=opset), {"x": x}, atol=1e-6)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"])
@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), keepdims=st.integers(0, 1), data=st.data())
def test_reductions_over_a_run_of_axes(op, shape, seed, keepdims, data):
    first = data.draw(st.integers(0, len(shape) - 1))
    last = data.draw(st.integers(first, len(shape) - 1))
    axes = np.arange(first, last + 1, dtype=np.int64)
    x = randn(np.random.default_rng(seed), shape)
    model = op_model(op, {"x": x}, {"axes": axes}, {"keepdims": keepdims}, opset=18, inputs_order=["x", "axes"])
    check(model, {"x": x}, rtol=2e-5, atol=1e-5)


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4), seed=st.integers(0, 2**16), data=st.data())
def test_layer_normalization(shape, seed, data):
    axis = data.draw(st.integers(1, len(shape) - 1))
    rng = np.random.default_rng(seed)
    x, scale, bias = randn(rng, shape), randn(rng, shape[axis:]), randn(rng, shape[axis:])
    model = op_model("LayerNormalization", {"x": x}, {"s": scale, "b": bias}, {"axis": axis, "epsilon": 1e-3},
                     inputs_order=["x", "s", "b"])
    check(model, {"x": x}, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=5), seed=st.integers(0, 2**16), data=st.data())
def test_transpose(shape, seed, data):
    perm = data.draw(st.permutations(range(len(shape))))
    x = randn(np.random.default_rng(seed), shape)
    check(op_model("Transpose", {"x": x}, {}, {"perm": list(perm)}), {"x": x})


@SETTINGS
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), seed=st.integers(0, 2**16), data=st.data())
def test_slice(shape, seed, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    step = data.draw(st.sampled_from([1, 2, -1, 3]))
    n = shape[axis]
    start, end = (data.draw(st.integers(0, n - 1)), n) if step > 0 else (n - 1, -n - 1)
    x = randn(np.random.default_rng(seed), shape)
    consts = {"s": np.array([start]), "e": np.array([end]), "a": np.array([axis]), "p": np.array([step])}
    check(op_model("Slice", {"x": x}, consts, {}, inputs_order=["x", "s", "e", "a", "p"]), {"x": x})


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**16), data=st.data())
def test_concat_split_and_a_constant_part(shape, seed, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    rng = np.random.default_rng(seed)
    a, b = randn(rng, shape), randn(rng, shape)
    check(op_model("Concat", {"a": a, "b": b}, {"k": randn(rng, shape)}, {"axis": axis},
                   inputs_order=["a", "k", "b"]), {"a": a, "b": b})
    if shape[axis] >= 2:
        check(op_model("Split", {"a": a}, {"s": np.array([1, shape[axis] - 1])}, {"axis": axis}, n_out=2,
                       inputs_order=["a", "s"]), {"a": a})


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_gather_with_runtime_indices_and_constant_ones(dtype):
    rng = np.random.default_rng(5)
    table = randn(rng, (50, 16))
    idx = rng.integers(-50, 50, (2, 7)).astype(dtype)
    check(op_model("Gather", {"i": idx}, {"t": table}, {"axis": 0}, inputs_order=["t", "i"]), {"i": idx})
    x = randn(rng, (3, 6, 4))
    check(op_model("Gather", {"x": x}, {"i": np.array([5, 0, 0, 2])}, {"axis": 1}, inputs_order=["x", "i"]), {"x": x})


def test_gather_out_of_range_index_is_an_input_error():
    table = np.zeros((5, 3), np.float32)
    sess = lstmrt.InferenceSession(op_model("Gather", {"i": np.zeros(2, np.int64)}, {"t": table}, {},
                                            inputs_order=["t", "i"]).SerializeToString(), backend="native")
    sess.run(None, {"i": np.array([1, 4], np.int64)})
    with pytest.raises(lstmrt.InputError, match="Gather"):
        sess.run(None, {"i": np.array([1, 5], np.int64)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@SETTINGS
@given(shape=st.lists(st.integers(2, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16), data=st.data())
def test_pad(mode, shape, seed, data):
    pads = [data.draw(st.integers(0, d - 1)) for d in shape] + [data.draw(st.integers(0, d - 1)) for d in shape]
    x = randn(np.random.default_rng(seed), shape)
    consts = {"p": np.array(pads, np.int64)}
    order = ["x", "p"]
    if mode == "constant":
        consts["v"] = np.float32(1.5)
        order.append("v")
    check(op_model("Pad", {"x": x}, consts, {"mode": mode}, inputs_order=order), {"x": x})


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16), data=st.data())
def test_expand_tile_and_views(shape, seed, data):
    x = randn(np.random.default_rng(seed), shape)
    target = [data.draw(st.sampled_from([d, 3])) if d == 1 else d for d in shape]
    check(op_model("Expand", {"x": x}, {"s": np.array([2] + target, np.int64)}, {}, inputs_order=["x", "s"]), {"x": x})
    reps = np.array([data.draw(st.integers(1, 3)) for _ in shape], np.int64)
    check(op_model("Tile", {"x": x}, {"r": reps}, {}, inputs_order=["x", "r"]), {"x": x})
    check(op_model("Reshape", {"x": x}, {"s": np.array([-1], np.int64)}, {}, inputs_order=["x", "s"]), {"x": x})
    check(op_model("Unsqueeze", {"x": x}, {"a": np.array([0, -1], np.int64)}, {}, inputs_order=["x", "a"]), {"x": x})
    check(op_model("Flatten", {"x": x}, {}, {"axis": data.draw(st.integers(0, len(shape)))}), {"x": x})


@pytest.mark.parametrize("rank", [1, 2])
@SETTINGS
@given(seed=st.integers(0, 2**16), data=st.data())
def test_conv(rank, seed, data):
    group = data.draw(st.sampled_from([1, 2]))
    cin, cout = 2 * data.draw(st.integers(1, 3)), 2 * data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [data.draw(st.integers(0, 2)) for _ in range(2 * rank)]
    spatial = [data.draw(st.integers(6, 12)) for _ in range(rank)]
    rng = np.random.default_rng(seed)
    x, w, b = randn(rng, [2, cin] + spatial), randn(rng, [cout, cin // group] + kernel), randn(rng, [cout])
    attrs = {"group": group, "strides": strides, "dilations": dilations, "pads": pads, "kernel_shape": kernel}
    auto_pad = data.draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = attrs.pop("pads") and auto_pad
    if auto_pad.startswith("SAME"):
        attrs["dilations"] = [1] * rank      # onnxruntime refuses dilations with SAME padding
    check(op_model("Conv", {"x": x}, {"w": w, "b": b}, attrs, inputs_order=["x", "w", "b"]), {"x": x}, atol=1e-5)


def test_conv_relu_fuses_and_batch_norm_folds():
    rng = np.random.default_rng(7)
    x, w = randn(rng, (1, 4, 20)), randn(rng, (8, 4, 3))
    bn = [randn(rng, (8,)), randn(rng, (8,)), randn(rng, (8,)), randn(rng, (8,), positive=True)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1], strides=[2]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in zip([w] + bn, ["w", "s", "b", "m", "v"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    check(model, {"x": x}, atol=1e-5)


def test_if_on_a_scalar_input_is_part_of_the_signature():
    """An If on a small integer input compiles per value: each value takes its own branch."""
    def branch(name, k):
        return helper.make_graph([helper.make_node("Mul", ["x", f"k{name}"], [f"o{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"o{name}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(np.float32(k), f"k{name}")])
    nodes = [helper.make_node("Equal", ["sr", "r"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("t", 2.0), else_branch=branch("e", -3.0))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(16000, np.int64), "r")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = randn(np.random.default_rng(8), (2, 3))
    for sr in (16000, 8000, 16000):
        check(model, {"x": x, "sr": np.array(sr, np.int64)})


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("rank", [1, 2])
@SETTINGS
@given(seed=st.integers(0, 2**16), data=st.data())
def test_pooling(op, rank, seed, data):
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    attrs = {"kernel_shape": kernel, "strides": [data.draw(st.integers(1, 2)) for _ in range(rank)],
             "pads": [data.draw(st.integers(0, k - 1)) for k in kernel] * 2}
    if op == "AveragePool":
        attrs["count_include_pad"] = data.draw(st.integers(0, 1))
    x = randn(np.random.default_rng(seed), [2, 3] + [data.draw(st.integers(3, 8)) for _ in range(rank)])
    check(op_model(op, {"x": x}, {}, attrs), {"x": x}, atol=1e-6)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pooling(op):
    x = randn(np.random.default_rng(14), (2, 3, 5, 4))
    check(op_model(op, {"x": x}, {}, {}), {"x": x})


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic_elementwise(op):
    rng = np.random.default_rng(15)
    feeds = {"a": randn(rng, (2, 3)), "b": randn(rng, (3,)), "c": randn(rng, (1, 3))}
    check(op_model(op, feeds, {}, {}, inputs_order=["a", "b", "c"]), feeds, atol=1e-6)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_layout_1_compiles_through_transposes(cell, direction):
    """Batch-first nodes (which onnxruntime refuses; lstmrt's onnxruntime backend rewrites them)
    compile to the cell between two transposes."""
    from onnx_cases import RecurrentSpec, make_recurrent_model, random_feed, random_weights
    spec = RecurrentSpec(cell=cell, input_size=4, hidden_size=6, direction=direction, layout=1, has_bias=True,
                         has_peepholes=False, has_seq_lens=False, has_initial_h=True, has_initial_c=cell == "LSTM",
                         outputs=(True, True, cell == "LSTM"))
    rng = np.random.default_rng(16)
    model = make_recurrent_model(spec, random_weights(spec, rng))
    feed = random_feed(spec, batch=3, steps=5, rng=rng)
    for simd in PATHS:
        sess = lstmrt.InferenceSession(model, backend="native", simd=simd)
        assert "in one C call" in sess.backend_reason
        want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, feed)
        for g, w in zip(sess.run(None, feed), want):
            np.testing.assert_allclose(g, w, atol=1e-5)
