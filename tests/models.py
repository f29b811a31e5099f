"""Small ONNX models built in code for the runtime tests (the oracle runs them too)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def bare_cell(cell: str, hidden: int = 24, inputs: int = 10, with_y: bool = True) -> onnx.ModelProto:
    """X [T, B, inputs] -> one recurrent node, its state wired to h0/c0 -> hn/cn: the fast-path shape."""
    rng = np.random.default_rng(7)
    G, lstm = GATES[cell], cell == "LSTM"
    inits = [numpy_helper.from_array(rng.uniform(-0.4, 0.4, s).astype(np.float32), n)
             for n, s in (("W", (1, G * hidden, inputs)), ("R", (1, G * hidden, hidden)), ("B", (1, 2 * G * hidden)))]
    state = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", hidden])  # noqa: E731
    node = helper.make_node(cell, ["X", "W", "R", "B", "", "h0"] + (["c0"] if lstm else []),
                            ["Y" if with_y else "", "hn"] + (["cn"] if lstm else []), hidden_size=hidden)
    outputs = ([helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden])] if with_y else []) \
        + [state("hn")] + ([state("cn")] if lstm else [])
    graph = helper.make_graph([node], "bare", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", inputs]),
                                               state("h0")] + ([state("c0")] if lstm else []), outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def streaming_model(cell: str = "LSTM", input_size: int = 5, hidden: int = 7, seed: int = 0,
                    head: int = 3, opset: int = 14) -> onnx.ModelProto:
    """x [batch, time, I] -> cell (layout 0 between Transposes) -> MatMul head; state in h0/c0, out hn/cn."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    inits = [
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, G * hidden, input_size)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, G * hidden, hidden)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 2 * G * hidden)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (hidden, head)).astype(np.float32), "head"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    is_lstm = cell == "LSTM"
    attrs = {"hidden_size": hidden}
    if cell == "GRU":
        attrs["linear_before_reset"] = 1
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node(cell, ["xt", "W", "R", "B", "", "h0"] + (["c0"] if is_lstm else []),
                         ["Y", "Y_h"] + (["Y_c"] if is_lstm else []), name=f"{cell.lower()}_node", **attrs),
        helper.make_node("Squeeze", ["Y", "axis1"], ["Ys"]),
        helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["Yb", "head"], ["y"]),
        helper.make_node("Identity", ["Y_h"], ["hn"]),
    ] + ([helper.make_node("Identity", ["Y_c"], ["cn"])] if is_lstm else [])
    state = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "batch", hidden])  # noqa: E731
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", input_size]), state("h0")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", head]), state("hn")]
    if is_lstm:
        inputs.append(state("c0"))
        outputs.append(state("cn"))
    graph = helper.make_graph(nodes, f"{cell.lower()}_stream", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8   # loadable by every onnxruntime build we support
    return model


def random_feed(model: onnx.ModelProto, dims: dict, seed: int = 0) -> dict:
    """Random float32 inputs, named dims resolved from `dims`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for v in model.graph.input:
        shape = [d.dim_value or dims[d.dim_param] for d in v.type.tensor_type.shape.dim]
        feed[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feed
