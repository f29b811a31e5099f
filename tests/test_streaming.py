"""Streams: any chunking equals one whole call; state pairs; refusals; threads."""
import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmrt
from models import random_feed, streaming_model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "exporters"


def whole_run(sess, x):
    """The oracle: onnxruntime on the whole sequence from zero state."""
    ref = ort.InferenceSession(sess.model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": x}
    for i in ref.get_inputs():
        if i.name != "x":
            feed[i.name] = np.zeros([d if isinstance(d, int) else x.shape[0] for d in i.shape], np.float32)
    return ref.run(None, feed)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_chunking_equals_whole(cell, data):
    batch = data.draw(st.integers(1, 4), label="batch")
    T = data.draw(st.integers(1, 30), label="T")
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=6), label="cuts")) if T > 1 else []
    sess = lstmrt.InferenceSession(streaming_model(cell, seed=T), backend="native")
    x = np.random.default_rng(T).standard_normal((batch, T, 5)).astype(np.float32)
    stream = sess.stream()
    bounds = [0] + cuts + [T]
    ys = [stream.run({"x": x[:, a:b]})[0] for a, b in zip(bounds, bounds[1:])]
    expected = whole_run(sess, x)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), expected[0], atol=1e-5)
    np.testing.assert_allclose(stream.state["h0"], expected[1], atol=1e-5)
    if cell == "LSTM":
        np.testing.assert_allclose(stream.state["c0"], expected[2], atol=1e-5)


STREAM_FIXTURES = ["torch_lstm_stream.onnx", "torch_lstm2_stream.onnx", "keras_lstm_stream.onnx"]


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_exporter_models_stream(name):
    """Third-party exports: state found from structure (tf2onnx's dims are unnamed), chunks equal whole."""
    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend="native")
    stream = sess.stream()
    assert stream.pairs == {"h0": "hn", "c0": "cn"}
    x_info = sess.model.input("x")
    time_major = x_info.shape[0] == "time"
    x = np.random.default_rng(0).standard_normal((3, 13, x_info.shape[2])).astype(np.float32)
    if time_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    axis = 0 if time_major else 1
    parts = [stream.run({"x": np.take(x, range(a, b), axis=axis)})[0] for a, b in [(0, 1), (1, 7), (7, 13)]]
    whole = sess.stream().run({"x": x})[0]
    np.testing.assert_allclose(np.concatenate(parts, axis=axis), whole, atol=1e-5)


def test_state_set_reset_and_feed_override():
    sess = lstmrt.InferenceSession(streaming_model("LSTM"), backend="native")
    x = random_feed(sess.model.proto, {"batch": 2, "time": 6})["x"]
    stream = sess.stream()
    assert stream.state == {}
    first = stream.run({"x": x})[0]
    saved = stream.state
    second = stream.run({"x": x})[0]
    assert not np.allclose(first, second)          # the state really carried over
    stream.reset()
    np.testing.assert_array_equal(stream.run({"x": x})[0], first)
    stream.set_state(saved)
    np.testing.assert_array_equal(stream.run({"x": x})[0], second)
    other = sess.stream()
    np.testing.assert_array_equal(other.run({"x": x, **saved})[0], second)   # state in the feed wins


def test_explicit_pairs_and_metadata():
    model = streaming_model("GRU")
    sess = lstmrt.InferenceSession(model, backend="native")
    assert sess.stream(state={"h0": "hn"}).pairs == {"h0": "hn"}
    with pytest.raises(lstmrt.StreamError, match="nope"):
        sess.stream(state={"h0": "nope"})
    # metadata written by an exporter takes precedence over structure; metadata that lies is the model's fault
    model.metadata_props.add(key="lstmrt.state_pairs", value=json.dumps({"h0": "y"}))
    with pytest.raises(lstmrt.ModelError, match="shape"):
        lstmrt.InferenceSession(model, backend="native").stream()


def test_refuses_bidirectional_and_unpaired_state():
    sess = lstmrt.InferenceSession(str(FIXTURES / "torch_bilstm_seq.onnx"), backend="native")
    with pytest.raises(lstmrt.StreamError, match="bidirectional"):
        sess.stream()
    sess = lstmrt.InferenceSession(str(FIXTURES / "torch_lstm_seq.onnx"), backend="native")
    with pytest.raises(lstmrt.StreamError, match="restart at every chunk"):
        sess.stream()


def test_state_output_shape_mismatch_is_refused():
    model = streaming_model("RNN")
    # declare hn with a different fixed size than h0
    model.graph.output[1].type.tensor_type.shape.dim[2].dim_value = 99
    with pytest.raises(lstmrt.StreamError, match="shape"):
        lstmrt.InferenceSession(model, backend="native").stream()


def test_two_threads_two_streams_match_sequential():
    sess = lstmrt.InferenceSession(streaming_model("LSTM", input_size=32, hidden=64), backend="native")
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 200, 32)).astype(np.float32) for _ in range(2)]

    def chunked(x, out, slot):
        stream = sess.stream()
        out[slot] = np.concatenate([stream.run({"x": x[:, t:t + 10]})[0] for t in range(0, 200, 10)], axis=1)

    sequential, threaded = [None, None], [None, None]
    for i in range(2):
        chunked(xs[i], sequential, i)
    threads = [threading.Thread(target=chunked, args=(xs[i], threaded, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_array_equal(threaded[i], sequential[i])
