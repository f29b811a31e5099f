"""Convolutions along time in front of a recurrence, on hand-built ONNX models (no framework):
`lstmrt streamify` carries a causal conv's left context as state, records a strided conv's chunk
rule, and refuses a conv that looks ahead, naming it; lstmrt's stream() enforces the metadata."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from export_helpers import cli, output_of, stream_matches_whole

RNG = np.random.default_rng(0)


def conv_lstm(pads, kernel=3, stride=1, dilation=1, crop=0) -> onnx.ModelProto:
    """x [B, T, 4] -> Conv1d (named 'front') [-> crop the right end] -> LSTM(5) -> Y [B, T', 5]."""
    init = [numpy_helper.from_array(RNG.standard_normal((6, 4, kernel)).astype(np.float32) * 0.5, "w"),
            numpy_helper.from_array(RNG.standard_normal((1, 20, 6)).astype(np.float32) * 0.4, "W"),
            numpy_helper.from_array(RNG.standard_normal((1, 20, 5)).astype(np.float32) * 0.4, "R"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([-crop], np.int64), "end"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 2, 1], name="/to_channels/Transpose"),
             helper.make_node("Conv", ["xc", "w"], ["c"], pads=pads, strides=[stride], dilations=[dilation],
                              name="/front/Conv")]
    if crop:
        nodes.append(helper.make_node("Slice", ["c", "zero", "end", "axis2"], ["c_cropped"], name="/front/Slice"))
    nodes += [helper.make_node("Transpose", ["c_cropped" if crop else "c"], ["ct"], perm=[2, 0, 1], name="/tm"),
              helper.make_node("LSTM", ["ct", "W", "R"], ["Y"], hidden_size=5, name="/rnn/LSTM"),
              helper.make_node("Squeeze", ["Y", "axis1"], ["Ys"], name="/rnn/Squeeze"),
              helper.make_node("Transpose", ["Ys"], ["y"], perm=[1, 0, 2], name="/out")]
    graph = helper.make_graph(nodes, "conv_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["batch", "time", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def streamified(tmp_path, model):
    src, out = tmp_path / "m.onnx", tmp_path / "m_stream.onnx"
    onnx.save(model, str(src))
    return cli("streamify", src, "-o", out), out


def _x(batch, steps):
    return RNG.standard_normal((batch, steps, 4)).astype(np.float32)


@pytest.mark.parametrize("pads, crop, dilation, context", [([2, 0], 0, 1, 2), ([2, 2], 2, 1, 2), ([4, 0], 0, 2, 4)])
@pytest.mark.parametrize("chunks", [(1,), (2,), (3, 1, 5, 2)])
def test_causal_conv_context_is_carried(tmp_path, pads, crop, dilation, context, chunks):
    proc, out = streamified(tmp_path, conv_lstm(pads, dilation=dilation, crop=crop))
    assert proc.returncode == 0, output_of(proc)
    assert f"layer 'front' carries its last {context} input step(s)" in proc.stdout   # verified vs the original too
    model = onnx.load(str(out))
    pairs = json.loads({p.key: p.value for p in model.metadata_props}["lstmrt.state_pairs"])
    assert pairs["front.context_in"] == "front.context_out"
    shape = next(i for i in model.graph.input if i.name == "front.context_in").type.tensor_type.shape
    assert [d.dim_param or d.dim_value for d in shape.dim] == ["batch", 4, context]
    assert stream_matches_whole(out, {"x": _x(3, 11)}, {"x": 1}, chunks=chunks) < 1e-5


def test_strided_conv_streams_in_whole_strides(tmp_path):
    proc, out = streamified(tmp_path, conv_lstm([2, 0], stride=2))
    assert proc.returncode == 0 and "multiple of 2 steps (strided layers: 'front' x2)" in proc.stdout, output_of(proc)
    assert stream_matches_whole(out, {"x": _x(2, 12)}, {"x": 1}, chunks=(2, 6, 4)) < 1e-5
    for backend in ("native", "onnxruntime"):
        stream = lstmrt.InferenceSession(str(out), backend=backend).stream()
        stream.run({"x": _x(2, 4)})
        before = stream.state
        with pytest.raises(lstmrt.InputError, match=r"input 'x' has 3 steps along axis 1.*multiple of 2.*'front'"):
            stream.run({"x": _x(2, 3)})
        assert all(np.array_equal(before[k], v) for k, v in stream.state.items())


@pytest.mark.parametrize("pads, words", [([1, 1], "looks 1 step(s) ahead"), ([0, 0], "looks 2 step(s) ahead")])
def test_conv_that_looks_ahead_cannot_stream(tmp_path, pads, words):
    proc, _ = streamified(tmp_path, conv_lstm(pads))
    assert proc.returncode != 0 and "cannot stream: layer 'front' (Conv" in output_of(proc) and words in output_of(proc)
    assert "Traceback" not in output_of(proc)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_stream_refuses_a_model_marked_not_streamable(backend):
    from lstmrt.exporters import time_layers
    from lstmrt.exporters.streamify import lift_state_or_note
    model, pairs, notes = time_layers.prepare(conv_lstm([1, 1]), True, {"x": (0, 1)},
                                              lambda m: lift_state_or_note(m, True))
    assert pairs == {} and "not streamable: layer 'front'" in notes[0]
    sess = lstmrt.InferenceSession(model, backend=backend)
    assert sess.run(None, {"x": _x(2, 5)})[0].shape == (2, 5, 5)       # whole calls still run
    with pytest.raises(lstmrt.StreamError, match=r"cannot stream: layer 'front' \(Conv.*looks 1 step"):
        sess.stream()
