"""Every op the native backend supports beside the recurrent ones, against onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.ops import supported_ops

RNG = np.random.default_rng(0)
F = lambda *shape: RNG.standard_normal(shape).astype(np.float32)  # noqa: E731
POS = lambda *shape: (RNG.random(shape) + 0.1).astype(np.float32)  # noqa: E731
I64 = lambda *values: np.array(values, np.int64)  # noqa: E731


def model_of(nodes, inputs: dict, constants: dict, outputs: list, opset: int):
    graph = helper.make_graph(
        nodes, "op_test",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # output types come from onnx's own shape inference (onnxruntime needs them declared)
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, typed in zip(model.graph.output, inferred.graph.output):
        out.type.tensor_type.elem_type = typed.type.tensor_type.elem_type
    return model


def case(op, inputs, constants=None, attrs=None, n_out=1, opset=17, order=None):
    """A one-node model: `inputs` are fed, `constants` are initializers; `order` gives input order."""
    constants = constants or {}
    names = order or [*inputs, *constants]
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    return pytest.param(model_of([node], inputs, constants, outs, opset), inputs, id=f"{op}-{opset}-{len(CASES)}")


CASES = []
add = CASES.append
# convolution front-ends
add(case("Conv", {"x": F(2, 4, 19)}, {"w": F(6, 4, 3), "b": F(6)}, {"pads": [1, 2], "strides": [2]}))
add(case("Conv", {"x": F(1, 4, 9, 11)}, {"w": F(8, 2, 3, 2)}, {"group": 2, "dilations": [2, 1], "pads": [1, 0, 2, 1]}))
add(case("Conv", {"x": F(2, 3, 8, 8)}, {"w": F(5, 3, 3, 3)}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}))
add(case("Conv", {"x": F(1, 6, 10)}, {"w": F(6, 1, 5)}, {"group": 6, "auto_pad": "SAME_LOWER"}))
for mode in ("constant", "reflect", "edge"):
    add(case("Pad", {"x": F(2, 3, 5)}, {"pads": I64(0, 1, 2, 0, 2, 1)}, {"mode": mode}))
add(case("Pad", {"x": F(2, 3, 5)}, {"pads": I64(0, -1, 2, 0, 1, -2), "v": np.array(1.5, np.float32)}))
# layers exporters put around recurrences: pooling, batch norm, variadic max/min/mean/sum, einsum
add(case("MaxPool", {"x": F(2, 3, 11)}, attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1]}))
add(case("MaxPool", {"x": F(1, 2, 4, 9)}, attrs={"kernel_shape": [1, 2], "strides": [1, 2], "auto_pad": "SAME_UPPER"}))
add(case("AveragePool", {"x": F(2, 3, 9)}, attrs={"kernel_shape": [2], "strides": [2], "auto_pad": "SAME_UPPER"}))
add(case("AveragePool", {"x": F(2, 3, 10)}, attrs={"kernel_shape": [3], "pads": [2, 0], "count_include_pad": 1}))
add(case("GlobalAveragePool", {"x": F(2, 3, 7)}))
add(case("GlobalMaxPool", {"x": F(2, 3, 4, 5)}))
for op in ("Max", "Min", "Mean", "Sum"):
    add(case(op, {"a": F(2, 3, 4), "b": F(3, 1), "c": F(4)}))
add(case("BatchNormalization", {"x": F(2, 3, 5)}, {"s": F(3), "b": F(3), "m": F(3), "v": POS(3)},
         attrs={"epsilon": 1e-3}, opset=15))
add(case("Einsum", {"q": F(2, 5, 3, 4), "k": F(2, 6, 3, 4)}, attrs={"equation": "abhd,achd->ahbc"}))
add(case("Reciprocal", {"x": POS(3, 4)}))
# elementwise
add(case("Pow", {"x": POS(3, 4), "y": F(4)}))
for op in ("Sqrt", "Log"):
    add(case(op, {"x": POS(3, 5)}))
for op in ("Exp", "Abs", "Neg", "Erf", "Softplus", "Relu", "Tanh", "Sigmoid"):
    add(case(op, {"x": F(3, 5) * 3}))
add(case("LeakyRelu", {"x": F(4, 4)}, attrs={"alpha": 0.2}))
add(case("HardSigmoid", {"x": F(4, 4) * 4}, attrs={"alpha": 0.3, "beta": 0.4}))
add(case("Gelu", {"x": F(4, 6) * 3}, opset=20))
add(case("Gelu", {"x": F(4, 6) * 3}, attrs={"approximate": "tanh"}, opset=20))
add(case("Clip", {"x": F(4, 5) * 3}, {"lo": np.array(-1, np.float32), "hi": np.array(0.5, np.float32)}))
add(case("Clip", {"x": F(4, 5) * 3}, {"hi": np.array(0.5, np.float32)}, order=["x", "", "hi"]))
for op in ("Add", "Sub", "Mul", "Div"):
    add(case(op, {"a": F(2, 3, 4), "b": F(3, 1) + 3}))
add(case("Div", {"a": np.array([7, -7, 6, -9], np.int64), "b": np.array([2, 2, -4, 4], np.int64)}))
# reductions (axes as input from opset 13/18, as attribute before)
for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"):
    add(case(op, {"x": F(3, 4, 5)}, {"axes": I64(1, -1)}, {"keepdims": 0}, opset=18))
    add(case(op, {"x": F(3, 4, 5)}, attrs={"axes": [1], "keepdims": 1}, opset=11))
    add(case(op, {"x": F(3, 4, 5)}, opset=18))
# logic
for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
    add(case(op, {"a": np.array([1, 2, 3, 4], np.float32), "b": np.array([2, 2, 2, 2], np.float32)}))
for op in ("And", "Or", "Xor"):
    add(case(op, {"a": np.array([True, False, True]), "b": np.array([True, True, False])}))
add(case("Not", {"a": np.array([True, False])}))
add(case("Where", {"c": np.array([[True, False, True]]), "a": F(2, 3), "b": F(3)}))
# shapes and data movement
add(case("ReverseSequence", {"x": F(6, 3, 2)}, {"lens": I64(6, 2, 4)}, {"batch_axis": 1, "time_axis": 0}))
add(case("ReverseSequence", {"x": F(3, 6, 2)}, {"lens": I64(1, 6, 3)}, {"batch_axis": 0, "time_axis": 1}))
add(case("Range", {}, {"s": np.array(2, np.int64), "l": np.array(11, np.int64), "d": np.array(3, np.int64)}))
add(case("Range", {}, {"s": np.array(1, np.float32), "l": np.array(-2, np.float32), "d": np.array(-0.5, np.float32)}))
add(case("Tile", {"x": F(2, 3)}, {"r": I64(2, 3)}))
add(case("Flatten", {"x": F(2, 3, 4, 5)}, attrs={"axis": 2}))
add(case("LayerNormalization", {"x": F(2, 5, 8)}, {"s": F(8), "b": F(8)}, {"epsilon": 1e-3}))
add(case("LayerNormalization", {"x": F(2, 5, 8)}, {"s": F(5, 8)}, {"axis": 1}, n_out=3))
add(case("Dropout", {"x": F(3, 3)}))
add(case("Softmax", {"x": F(2, 3, 4)}, attrs={"axis": 1}, opset=13))
add(case("Softmax", {"x": F(2, 3, 4)}, opset=11))
add(case("Split", {"x": F(7, 4)}, {"s": I64(2, 5)}, n_out=2, opset=13))
add(case("Split", {"x": F(7, 4)}, attrs={"num_outputs": 3}, n_out=3, opset=18))
add(case("Slice", {"x": F(6, 5)}, {"st": I64(5, 1), "en": I64(-100, 4), "ax": I64(0, 1), "sp": I64(-2, 2)}))
add(case("Gather", {"x": F(5, 3)}, {"i": I64(4, 0, -1)}, {"axis": 0}))
add(case("Gemm", {"a": F(4, 3), "b": F(5, 3)}, {"c": F(5)}, {"transB": 1, "alpha": 0.5, "beta": 2.0}))
add(case("Expand", {"x": F(3, 1)}, {"s": I64(2, 3, 4)}))
add(case("ConstantOfShape", {}, {"s": I64(2, 3)}, {"value": numpy_helper.from_array(np.array([7], np.int64))}))
add(case("Transpose", {"x": F(2, 3, 4)}, attrs={"perm": [2, 0, 1]}))
add(case("Unsqueeze", {"x": F(2, 3)}, {"a": I64(0, -1)}, opset=13))
add(case("Squeeze", {"x": F(1, 3, 1)}, attrs={"axes": [0]}, opset=11))
add(case("Squeeze", {"x": F(1, 3, 1), "a": I64(-1)}))           # axes known only at run time
add(case("Unsqueeze", {"x": F(2, 3), "a": I64(1)}))


def _if_model():
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])])
    node = helper.make_node("If", ["c"], ["out0"], then_branch=then_g, else_branch=else_g)
    return model_of([node], {"c": np.array(True), "x": F(3)}, {"two": np.array([2.0], np.float32)}, ["out0"], 17)


def _loop_model():
    """Sum x over a dynamic trip count, stopping early when the total passes a bound; scan out each total."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
         helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "bound"], ["cond_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3])])
    node = helper.make_node("Loop", ["M", "", "acc0"], ["out0", "out1"], body=body)
    return model_of([node], {"M": np.array(9, np.int64), "acc0": F(3), "x": POS(3)},
                    {"bound": np.array(6.0, np.float32)}, ["out0", "out1"], 17)


CASES.append(pytest.param(_if_model(), {"c": np.array(True), "x": F(3)}, id="If-true"))
CASES.append(pytest.param(_if_model(), {"c": np.array(False), "x": F(3)}, id="If-false"))
CASES.append(pytest.param(_loop_model(), {"M": np.array(9, np.int64), "acc0": F(3), "x": POS(3)}, id="Loop"))


@pytest.mark.parametrize("model, feed", CASES)
def test_native_op_matches_onnxruntime(model, feed):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = lstmrt.InferenceSession(model, backend="native").run(None, feed)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_every_supported_op_is_tested_here():
    tested = {p.values[0].graph.node[0].op_type for p in CASES}
    covered_elsewhere = {"LSTM", "GRU", "RNN", "Identity", "Reshape", "Concat", "Shape", "Constant", "Cast",
                         "MatMul"}   # recurrent sweep, exporter fixtures
    covered_elsewhere |= {"Reciprocal", "Floor", "Ceil", "Sin", "Cos", "Softsign", "Elu", "ThresholdedRelu", "Max",
                          "Min", "LogSoftmax", "BatchNormalization", "Size"}   # test_compiled_ops.py
    assert set(supported_ops()) - tested - covered_elsewhere == set()


def test_docs_list_the_supported_ops():
    """docs/native-ops.md is generated from the code (python -m lstmrt.ops) and kept in step."""
    from pathlib import Path

    from lstmrt.ops.__main__ import markdown
    assert (Path(__file__).resolve().parent.parent / "docs" / "native-ops.md").read_text() == markdown()
