"""Bad input of every kind gets a clear lstmrt exception naming what is wrong."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from models import random_feed, streaming_model


@pytest.fixture
def sess():
    return lstmrt.InferenceSession(streaming_model("LSTM"), backend="native")


@pytest.fixture
def feed(sess):
    return random_feed(sess.model.proto, {"batch": 2, "time": 4})


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("x"), r"missing input\(s\) \['x'\]"),
    (lambda f: f.update(bogus=f["x"]), r"unknown input name\(s\) \['bogus'\]"),
    (lambda f: f.update(x=f["x"].astype(np.float64)), "input 'x' has dtype float64; expected float32"),
    (lambda f: f.update(x=f["x"][0]), "input 'x' has rank 2"),
    (lambda f: f.update(x=f["x"][:, :, :3]), "input 'x' has shape .*dimension 2 must be 5"),
    (lambda f: f.update(x=f["x"].tolist()), "input 'x' must be a numpy.ndarray, got list"),
    (lambda f: f.update(h0=np.zeros((1, 3, 7), np.float32)), "node 'lstm_node' .*initial_h has shape"),
])
def test_bad_feeds(sess, feed, change, message):
    change(feed)
    with pytest.raises(lstmrt.InputError, match=message):
        sess.run(None, feed)


def test_input_error_is_a_value_error(sess):
    with pytest.raises(ValueError):
        sess.run(None, {})


def test_unknown_output_name(sess, feed):
    with pytest.raises(lstmrt.InputError, match="unknown output name"):
        sess.run(["nope"], feed)


def test_non_contiguous_input_is_read_correctly(sess, feed):
    """A strided view is copied, never read as if contiguous."""
    wide = np.repeat(feed["x"], 2, axis=2)
    view = wide[:, :, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(sess.run(None, {**feed, "x": view})[0], sess.run(None, feed)[0])


def test_missing_file_and_corrupt_bytes(tmp_path):
    with pytest.raises(lstmrt.ModelError, match="does not exist"):
        lstmrt.InferenceSession(str(tmp_path / "none.onnx"))
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07this is not protobuf \xff\xff\xff")
    with pytest.raises(lstmrt.ModelError, match="garbage.onnx"):
        lstmrt.InferenceSession(str(bad))


def test_every_truncation_is_refused_cleanly(tmp_path):
    data = streaming_model("GRU").SerializeToString()
    path = tmp_path / "cut.onnx"
    for cut in range(1, len(data), max(1, len(data) // 60)):
        path.write_bytes(data[:cut])
        with pytest.raises(lstmrt.ModelError):
            lstmrt.InferenceSession(str(path))


def _single_node_model(op_type, inputs, inits, outputs=("Y",), **attrs):
    node = helper.make_node(op_type, list(inputs), list(outputs), name="the_node", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, None])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_unsupported_op_names_op_and_node():
    model = _single_node_model("Atan", ["X"], {})
    with pytest.raises(lstmrt.UnsupportedModelError, match="node 'the_node' uses op Atan"):
        lstmrt.InferenceSession(model, backend="native")


def test_inconsistent_weights_name_the_node():
    W = np.zeros((1, 12, 2), np.float32)
    R = np.zeros((1, 12, 4), np.float32)   # 12 != 4 gates * 4
    model = _single_node_model("LSTM", ["X", "W", "R"], {"W": W, "R": R}, hidden_size=4)
    # a ModelError, not "unsupported": auto must not fall back to onnxruntime as if an op were missing
    for backend in ("native", "auto"):
        with pytest.raises(lstmrt.ModelError, match="node 'the_node' .*inconsistent") as caught:
            lstmrt.InferenceSession(model, backend=backend)
        assert not isinstance(caught.value, lstmrt.UnsupportedModelError)


def test_bad_attributes_are_refused():
    W = np.zeros((1, 3, 2), np.float32)
    R = np.zeros((1, 3, 3), np.float32)
    for attrs, message in [({"activations": ["Gelu"]}, "unsupported activation 'Gelu'"),
                           ({"activations": ["Tanh", "Tanh"]}, "'activations' has 2 entries; expected 1"),
                           ({"direction": "sideways"}, "direction 'sideways'"),
                           ({"layout": 2}, "layout 2"),
                           ({"clip": -1.0}, "clip must be positive")]:
        model = _single_node_model("RNN", ["X", "W", "R"], {"W": W, "R": R}, hidden_size=3, **attrs)
        with pytest.raises(lstmrt.UnsupportedModelError, match=message):
            lstmrt.InferenceSession(model, backend="native")


def test_non_float32_weights_are_refused():
    W = np.zeros((1, 3, 2), np.float64)
    R = np.zeros((1, 3, 3), np.float64)
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], name="the_node", hidden_size=3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None] * 3)],
                              [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None] * 4)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(lstmrt.UnsupportedModelError, match="only float32"):
        lstmrt.InferenceSession(model, backend="native")


def test_sequence_lens_out_of_range():
    W = np.zeros((1, 3, 2), np.float32)
    R = np.zeros((1, 3, 3), np.float32)
    model = _single_node_model("RNN", ["X", "W", "R", "", "L"], {"W": W, "R": R}, hidden_size=3)
    model.graph.input.append(helper.make_tensor_value_info("L", TensorProto.INT32, [None]))
    sess = lstmrt.InferenceSession(model, backend="native")
    x = np.zeros((4, 2, 2), np.float32)
    for lens in ([5, 1], [-1, 2]):
        with pytest.raises(lstmrt.InputError, match=r"node 'the_node' .*sequence_lens values must lie in \[0, 4\]"):
            sess.run(None, {"X": x, "L": np.array(lens, np.int32)})
    with pytest.raises(lstmrt.InputError, match="length 2"):
        sess.run(None, {"X": x, "L": np.array([1, 2, 3], np.int32)})


def test_old_opset_refused():
    W = np.zeros((1, 3, 2), np.float32)
    R = np.zeros((1, 3, 3), np.float32)
    model = _single_node_model("RNN", ["X", "W", "R"], {"W": W, "R": R}, hidden_size=3)
    model.opset_import[0].version = 6
    with pytest.raises(lstmrt.ModelError):
        lstmrt.InferenceSession(model, backend="native")


def test_unknown_backend_and_simd():
    with pytest.raises(ValueError, match="backend"):
        lstmrt.InferenceSession(streaming_model(), backend="tensorrt")
    with pytest.raises(ValueError, match="simd"):
        lstmrt.InferenceSession(streaming_model(), simd="neon")


def test_stream_misuse(sess):
    stream = sess.stream()
    with pytest.raises(lstmrt.StreamError, match="'x' is not a state input"):
        stream.set_state({"x": np.zeros((1, 1, 7), np.float32)})
    with pytest.raises(lstmrt.InputError, match="dtype"):
        stream.set_state({"h0": np.zeros((1, 1, 7), np.float64)})


def test_corrupt_model_is_valid_onnx_but_inconsistent():
    model = streaming_model("LSTM")
    model.graph.node[1].input[1] = "no_such_tensor"
    with pytest.raises(lstmrt.ModelError, match="no_such_tensor"):
        lstmrt.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("op, axes", [("Squeeze", [3]), ("Squeeze", [-4]), ("Unsqueeze", [4])])
def test_out_of_range_axes_name_the_node(op, axes):
    """ONNX axes lie in [-rank, rank - 1] (Unsqueeze: of the output's rank); numpy's modulo would
    wrap the others silently.  onnxruntime refuses them too."""
    model = _single_node_model(op, ["X", "axes"], {"axes": np.array(axes, np.int64)})
    x = {"X": np.zeros((1, 2, 1), np.float32)}
    with pytest.raises(Exception):
        lstmrt.InferenceSession(model, backend="onnxruntime").run(None, x)
    with pytest.raises(lstmrt.InputError, match=f"node 'the_node' \\({op}\\).*out of range for rank"):
        lstmrt.InferenceSession(model, backend="native").run(None, x)
