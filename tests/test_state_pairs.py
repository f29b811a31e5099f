"""Streams of models lstmrt did not export: state found from metadata, recurrent nodes, dataflow
(through If/Loop bodies) and names as a tie-breaker; refusals that say why.  The oracle is
onnxruntime with the state carried by hand, and the same model run whole."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lstmrt
from lstmrt.state_pairs import names_match
from models import streaming_model

THIRD_PARTY = Path(__file__).resolve().parent / "fixtures" / "third_party"
BACKENDS = ["native", "onnxruntime"]


def ort_session(model):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def carried_by_hand(model, chunks: list, state: dict, pairs: dict, extra: dict) -> tuple:
    """onnxruntime, chunk after chunk, the state outputs fed back by hand: (outputs per chunk, state)."""
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for chunk in chunks:
        got = dict(zip(names, sess.run(None, {**chunk, **extra, **state})))
        state = {i: got[o] for i, o in pairs.items()}
        outs.append([got[n] for n in names if n not in pairs.values()])
    return outs, state


# (fixture, expected pairs, how found, chunk builder: (rng, batch, steps) -> feed without state, time axis,
#  zero state for a batch, extra constant inputs)
VAD_FEED = (lambda rng, b, t: {"x": rng.standard_normal((b, 8 * t)).astype(np.float32)})
KERAS_FEED = (lambda rng, b, t: {"x": rng.standard_normal((b, t, 4)).astype(np.float32)})
CASES = {
    "vad_cell_op14": ({"state": "stateN"}, "dataflow", VAD_FEED, lambda b: {"state": np.zeros((2, b, 16), np.float32)},
                      {"sr": np.array(16000, np.int64)}),
    "vad_cell_op17": ({"state": "stateN"}, "dataflow", VAD_FEED, lambda b: {"state": np.zeros((2, b, 16), np.float32)},
                      {"sr": np.array(8000, np.int64)}),
    "keras_gru_state": ({"gru_state": "next_state"}, "dataflow", KERAS_FEED,
                        lambda b: {"gru_state": np.zeros((b, 16), np.float32)}, {}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_third_party_models_stream_with_no_pairing_given(name, backend):
    pairs, found_by, make_feed, zero_state, extra = CASES[name]
    path = THIRD_PARTY / f"{name}.onnx"
    sess = lstmrt.InferenceSession(str(path), backend=backend)
    stream = sess.stream()
    assert stream.pairs == pairs
    assert {p.found_by for p in stream.pairing} == {found_by}
    rng = np.random.default_rng(4)
    batch, cuts = 3, [0, 1, 6, 7, 15]            # uneven chunks, one of a single step
    whole = make_feed(rng, batch, cuts[-1])
    axis = 1
    scale = whole["x"].shape[1] // cuts[-1]
    chunks = [{"x": np.ascontiguousarray(np.take(whole["x"], range(a * scale, b * scale), axis=axis))}
              for a, b in zip(cuts, cuts[1:])]
    streamed = [stream.run({**c, **extra}) for c in chunks]
    by_hand, state_by_hand = carried_by_hand(path, chunks, zero_state(batch), pairs, extra)
    names = [o.name for o in sess.get_outputs() if o.name not in pairs.values()]
    whole_ref = dict(zip([o.name for o in sess.get_outputs()],
                         ort_session(path).run(None, {**whole, **extra, **zero_state(batch)})))
    for k, out in enumerate(names):
        joined = np.concatenate([s[k] for s in streamed], axis=axis)
        np.testing.assert_allclose(joined, np.concatenate([h[k] for h in by_hand], axis=axis), atol=1e-5)
        np.testing.assert_allclose(joined, whole_ref[out], atol=1e-5)
    for inp, out in pairs.items():
        np.testing.assert_allclose(stream.state[inp], state_by_hand[inp], atol=1e-5)
        np.testing.assert_allclose(stream.state[inp], whole_ref[out], atol=1e-5)
    # the whole call through lstmrt itself, state given as zeros
    got_whole = sess.run(None, {**whole, **extra, **zero_state(batch)})
    for got, out in zip(got_whole, [o.name for o in sess.get_outputs()]):
        np.testing.assert_allclose(got, whole_ref[out], atol=1e-5)


def test_two_equally_plausible_pairings_are_refused_naming_both():
    sess = lstmrt.InferenceSession(str(THIRD_PARTY / "two_states_ambiguous.onnx"), backend="native")
    with pytest.raises(lstmrt.StreamError) as err:
        sess.stream()
    message = str(err.value)
    for name in ("'a'", "'b'", "'p'", "'q'", "sess.stream(state={"):
        assert name in message, message
    # the call the message shows settles it, and then streams like onnxruntime by hand
    stream = sess.stream(state={"a": "p", "b": "q"})
    rng = np.random.default_rng(0)
    chunks = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(3)]
    zeros = {n: np.zeros((2, 8), np.float32) for n in "ab"}
    by_hand, state = carried_by_hand(THIRD_PARTY / "two_states_ambiguous.onnx", chunks, zeros, {"a": "p", "b": "q"}, {})
    for chunk, want in zip(chunks, by_hand):
        np.testing.assert_allclose(stream.run(chunk)[0], want[0], atol=1e-6)
    np.testing.assert_allclose(stream.state["b"], state["b"], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateless_model_streams_only_when_told(backend):
    path = THIRD_PARTY / "stateless_mlp.onnx"
    sess = lstmrt.InferenceSession(str(path), backend=backend)
    with pytest.raises(lstmrt.StreamError, match=r"no recurrent state found.*state=\{\}"):
        sess.stream()
    stream = sess.stream(state={})
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    ref = ort_session(path)
    parts = [stream.run({"x": x[a:b]})[0] for a, b in [(0, 1), (1, 4), (4, 5)]]
    np.testing.assert_allclose(np.concatenate(parts), ref.run(None, {"x": x})[0], atol=1e-6)
    assert stream.state == {}


def test_names_break_ties_and_only_ties():
    for inp, out in [("state", "stateN"), ("state", "state_out"), ("state", "new_state"), ("h0", "hn"),
                     ("h_in", "h_out"), ("in_cache", "out_cache"), ("lstm.c_in", "lstm.c_out"),
                     ("past_kv", "present_kv")]:
        assert names_match(inp, out), (inp, out)
    for inp, out in [("state", "out"), ("h0", "cn"), ("x", "y"), ("h_in", "c_out")]:
        assert not names_match(inp, out), (inp, out)
    # the lifted LSTM-in-If model: h and c of one node are each computed from both; names settle it
    from exporters.streamify import streamify
    lifted, pairs = streamify(onnx.load(str(THIRD_PARTY / "lstm_in_if.onnx")))
    del lifted.metadata_props[:]
    stream = lstmrt.InferenceSession(lifted, backend="native").stream()
    assert stream.pairs == pairs
    found_by = {p.input: p.found_by for p in stream.pairing}
    assert set(found_by.values()) == {"dataflow", "dataflow + name"}, found_by   # a name settled h vs c


# -- bad input ---------------------------------------------------------------------------------------
def with_metadata(model, value: str):
    model.metadata_props.add(key="lstmrt.state_pairs", value=value)
    return model


@pytest.mark.parametrize("value, words", [
    ('{"h0": "hn", "c0": ', ["not valid JSON"]),
    ('["h0", "hn"]', ["JSON object"]),
    ('{"h9": "hn", "c0": "cn"}', ["'h9' is not a graph input"]),
    ('{"h0": "hn", "c0": "nope"}', ["'nope' is not a graph output"]),
    ('{"h0": "y", "c0": "cn"}', ["'y' has shape", "'h0' has shape"]),
    ('{"h0": "hn", "c0": "hn"}', ["paired with both"]),
])
def test_lying_metadata_is_a_model_error_naming_the_key(value, words):
    sess = lstmrt.InferenceSession(with_metadata(streaming_model("LSTM"), value), backend="native")
    with pytest.raises(lstmrt.ModelError) as err:
        sess.stream()
    assert "lstmrt.state_pairs" in str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_metadata_with_a_wrong_dtype_is_refused():
    model = streaming_model("GRU")
    model.graph.output[1].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    model.graph.node.append(onnx.helper.make_node("Cast", ["Y_h"], ["hn64"], to=onnx.TensorProto.DOUBLE))
    model.graph.node[-2].output[0] = "hn_unused"
    model.graph.output[1].name = "hn64"
    sess = lstmrt.InferenceSession(with_metadata(model, json.dumps({"h0": "hn64"})), backend="onnxruntime")
    with pytest.raises(lstmrt.ModelError, match=r"'hn64' is tensor\(double\) but 'h0' is tensor\(float\)"):
        sess.stream()


def test_pairing_a_packed_state_into_a_single_one_is_refused_before_running():
    """[2, B, 16] (stateN) would be fed into [1, B, 16]: the given pairing is refused with both shapes."""
    model = onnx.load(str(THIRD_PARTY / "vad_cell_op14.onnx"))
    extra = onnx.helper.make_tensor_value_info("h_only", onnx.TensorProto.FLOAT, [1, None, 16])
    model.graph.input.append(extra)
    model.graph.node.append(onnx.helper.make_node("Identity", ["h_only"], ["h_only_out"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("h_only_out", onnx.TensorProto.FLOAT, [1, None, 16]))
    sess = lstmrt.InferenceSession(model, backend="onnxruntime")
    with pytest.raises(lstmrt.StreamError) as err:
        sess.stream(state={"h_only": "stateN", "state": "h_only_out"})
    assert "'stateN' has shape [2, " in str(err.value) and "'h_only' has shape [1, None, 16]" in str(err.value)


def test_first_feed_contradicting_a_fixed_state_is_refused_before_running():
    model = streaming_model("LSTM")
    for value in model.graph.input[1:]:           # h0, c0 declared for batch 1 only
        value.type.tensor_type.shape.dim[1].dim_value = 1
    sess = lstmrt.InferenceSession(model, backend="native")
    stream = sess.stream()
    x = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(lstmrt.StreamError, match=r"state 'h0' would start as \[1, 1, 7\].*'hn' \[1, 3, 7\]"):
        stream.run({"x": x})
    assert stream.state == {}
    stream.run({"x": x[:1]})                      # a batch that fits still streams


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_run_leaves_the_state_exactly_as_it_was(backend):
    sess = lstmrt.InferenceSession(str(THIRD_PARTY / "vad_cell_op14.onnx"), backend=backend)
    stream = sess.stream()
    rng = np.random.default_rng(2)
    sr = np.array(16000, np.int64)
    stream.run({"x": rng.standard_normal((2, 24)).astype(np.float32), "sr": sr})
    saved = stream.state
    bad_feeds = [{"x": rng.standard_normal((2, 24)).astype(np.float64), "sr": sr},     # dtype
                 {"x": rng.standard_normal((3, 24)).astype(np.float32), "sr": sr},     # batch changed mid-stream
                 {"x": rng.standard_normal((2, 24)).astype(np.float32)}]               # sr missing
    for feed in bad_feeds:
        # onnxruntime's own error still passes through raw on a batch change (issue 12 wraps it)
        with pytest.raises(lstmrt.LstmrtError if backend == "native" else Exception):
            stream.run(feed)
        assert stream.state.keys() == saved.keys()
        np.testing.assert_array_equal(stream.state["state"], saved["state"])


def test_a_bad_first_feed_reports_the_backends_error_not_a_guess():
    """[2, None, 16] resolved by trying the feed's sizes: when no size runs at all, the feed is at
    fault (12 samples are no whole 8-sample frame), and that error is what the caller sees."""
    sess = lstmrt.InferenceSession(str(THIRD_PARTY / "vad_cell_op14.onnx"), backend="native")
    stream = sess.stream()
    with pytest.raises(lstmrt.LstmrtError, match="Reshape|reshape"):
        stream.run({"x": np.zeros((3, 12), np.float32), "sr": np.array(16000, np.int64)})
    assert stream.state == {}


# -- streamify: recurrent nodes inside If branches -------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_streamify_lifts_state_out_of_if_branches(tmp_path, backend):
    from export_helpers import cli, output_of
    out = tmp_path / "lifted.onnx"
    proc = cli("streamify", THIRD_PARTY / "lstm_in_if.onnx", "-o", out)
    assert proc.returncode == 0, output_of(proc)
    sess = lstmrt.InferenceSession(str(out), backend=backend)
    original = ort_session(THIRD_PARTY / "lstm_in_if.onnx")
    x = np.random.default_rng(6).standard_normal((2, 9, 8)).astype(np.float32)
    stream = sess.stream()
    assert len(stream.pairs) == 4 and {p.found_by for p in stream.pairing} == {"metadata"}
    for sr in (16000, 8000, 16000):     # switching branch mid-stream: each branch keeps its own state
        stream.reset()
        sr = np.array(sr, np.int64)
        parts = [stream.run({"x": x[:, a:b], "sr": sr})[0] for a, b in [(0, 1), (1, 5), (5, 9)]]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), original.run(None, {"x": x, "sr": sr})[0], atol=1e-5)


def test_streamify_says_what_it_cannot_lift():
    from exporters.streamify import StreamifyError, streamify
    model = onnx.load(str(THIRD_PARTY / "lstm_in_if.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "If")
    node.op_type = "Loop"          # the same LSTM, now in a loop body: its state restarts every iteration
    with pytest.raises(StreamifyError, match=r"LSTM\) in then_branch of Loop '/If'.*restarts at every iteration"):
        streamify(model)


def test_inspect_lists_each_pair_how_found_and_shapes_or_why_none():
    from click.testing import CliRunner

    from lstmrt.cli import main

    def inspect(name):
        result = CliRunner().invoke(main, ["inspect", str(THIRD_PARTY / name)])
        assert result.exit_code == 0, result.output
        return result.output
    assert "  stateN [2,ConcatstateN_dim_1,ConcatstateN_dim_2] -> state [2,?,16]  found by dataflow\n" \
        in inspect("vad_cell_op14.onnx")
    assert "  next_state [unk__170,16] -> gru_state [unk__169,16]  found by dataflow\n" \
        in inspect("keras_gru_state.onnx")
    text = " ".join(inspect("stateless_mlp.onnx").split())
    assert "streaming: not possible" in text and "no recurrent state found" in text and "state={}" in text
    assert "cannot tell the state pairs apart" in " ".join(inspect("two_states_ambiguous.onnx").split())


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_feed_contradicting_a_fixed_state_behind_a_loop_leaves_no_state(backend):
    """Where shape inference cannot follow the graph (a Loop's carried values), the contradiction
    shows in the first call's result, which is refused before the stream keeps anything."""
    model = onnx.load(str(THIRD_PARTY / "vad_cell_op14.onnx"))
    model.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 1      # state [2, 1, 16]
    stream = lstmrt.InferenceSession(model, backend=backend).stream()
    feed = {"x": np.ones((3, 16), np.float32), "sr": np.array(16000, np.int64)}
    with pytest.raises(lstmrt.StreamError,
                       match=r"'stateN' came out \[2, 3, 16\] but state input 'state' is \[2, 1, 16\]"):
        stream.run(feed)
    assert stream.state == {}


def test_recurrent_node_state_returned_twice_needs_a_name_or_is_refused():
    def model_with_copy(first_name):
        model = streaming_model("GRU")
        model.graph.node.append(onnx.helper.make_node("Identity", ["Y_h"], ["copy"]))
        model.graph.output.append(onnx.helper.make_tensor_value_info("copy", onnx.TensorProto.FLOAT, [1, "batch", 7]))
        node = next(n for n in model.graph.node if list(n.output) == ["hn"])
        node.output[0] = model.graph.output[1].name = first_name
        return model
    stream = lstmrt.InferenceSession(model_with_copy("hn"), backend="native").stream()
    assert [(p.input, p.output, p.found_by) for p in stream.pairing] == [("h0", "hn", "recurrent node + name")]
    with pytest.raises(lstmrt.StreamError, match=r"'h0' could be fed from 'copy' or 'first'.*state=\{'h0': 'copy'\}"):
        lstmrt.InferenceSession(model_with_copy("first"), backend="native").stream()


def test_without_telling_names_the_state_shaped_pair_is_kept():
    """The VAD-shaped model with its state renamed s_a/s_b: x -> out is as computed-from as the
    state, but [batch, samples] -> [batch, frames] is a sequence's shape; [2, ?, 16] a state's."""
    model = onnx.load(str(THIRD_PARTY / "vad_cell_op14.onnx"))
    renames = {"state": "s_a", "stateN": "s_b"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    stream = lstmrt.InferenceSession(model, backend="native").stream()
    assert [(p.input, p.output, p.found_by) for p in stream.pairing] == [("s_a", "s_b", "dataflow")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_state_with_a_dim_named_nowhere_else_takes_the_feeds_batch(backend):
    """a, b declared ['rows', 8], 'rows' on no other input: shape inference with the feed's shapes says 3."""
    model = onnx.load(str(THIRD_PARTY / "two_states_ambiguous.onnx"))
    for value in model.graph.input[1:]:
        value.type.tensor_type.shape.dim[0].dim_param = "rows"
    pairs = {"a": "p", "b": "q"}
    stream = lstmrt.InferenceSession(model, backend=backend).stream(state=pairs)
    chunks = [{"x": np.random.default_rng(k).standard_normal((3, 8)).astype(np.float32)} for k in range(3)]
    by_hand, state = carried_by_hand(model, chunks, {n: np.zeros((3, 8), np.float32) for n in pairs}, pairs, {})
    for chunk, want in zip(chunks, by_hand):
        np.testing.assert_allclose(stream.run(chunk)[0], want[0], atol=1e-6)
    np.testing.assert_allclose(stream.state["a"], state["a"], atol=1e-6)
