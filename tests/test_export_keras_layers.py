"""Keras exporter, the layers around the recurrent ones: one model per layer family, trained
and saved by Keras in a subprocess, exported through the CLI (each export verifies Keras vs
onnxruntime vs lstmrt native at three shapes, and streamed in chunks where it streams), then
streamed and refused here without TensorFlow."""
import json

import numpy as np
import onnx
import pytest

from export_helpers import CASES, build_and_export, check_native_onnx, onnx_path, output_of, run, stream_matches_whole

pytestmark = pytest.mark.export

STREAMS = ["conv_causal", "conv_strided", "separable", "pool_local", "norms", "merges", "reshapes", "padding",
           "rescaling", "multi_io"]
LOOKS_AHEAD = {"conv_same": "conv_same", "conv_valid": "conv_valid"}         # model: the layer named
STREAMS_WRONG = ["pool_global", "repeat_vector", "cropping", "attention"]    # downgraded to plain models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("keras_layer_models.py", tmp_path_factory.mktemp("keras_layers"))


def _x(batch, steps, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, steps, 4)).astype(np.float32)


def _meta(exported, name):
    return {p.key: p.value for p in onnx.load(onnx_path(exported, name)).metadata_props}


@pytest.mark.parametrize("name", STREAMS + list(LOOKS_AHEAD) + STREAMS_WRONG)
def test_cli_export_verifies_against_keras(exported, name):
    _, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    out = proc.stdout
    assert "max abs error vs framework" in out and "onnxruntime" in out and "native" in out, out
    assert len({line.split()[0] for line in out.splitlines() if line.strip().startswith("B=")}) >= 3, out
    assert ("streamed in chunks [" in out) == (name in STREAMS), out
    check_native_onnx(onnx_path(exported, name), streamable=name in STREAMS)


@pytest.mark.parametrize("name", ["conv_causal", "separable", "padding"])
@pytest.mark.parametrize("chunks", [(1,), (2,), (3, 1, 5, 2)])
def test_causal_convolutions_stream_exactly(exported, name, chunks):
    assert stream_matches_whole(onnx_path(exported, name), {"x": _x(3, 11)}, {"x": 1}, chunks=chunks) < 1e-5


def test_causal_context_is_lifted_state(exported):
    pairs = json.loads(_meta(exported, "conv_causal")["lstmrt.state_pairs"])
    assert pairs["conv_a.context_in"] == "conv_a.context_out" and pairs["conv_b.context_in"] == "conv_b.context_out"
    model = onnx.load(onnx_path(exported, "conv_causal"))
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes["conv_a.context_in"] == ["batch", 4, 4]      # (kernel 3 - 1) * dilation 2 steps of 4 features
    assert shapes["conv_b.context_in"] == ["batch", 6, 1]


@pytest.mark.parametrize("name, multiple, layer", [("conv_strided", 2, "conv_stride"), ("pool_local", 4, "avg_pool")])
def test_strided_layers_stream_in_whole_strides(exported, name, multiple, layer):
    import lstmrt
    assert f"multiple of {multiple} steps" in exported[name][1].stdout
    chunks = (multiple, 2 * multiple, 3 * multiple)
    assert stream_matches_whole(onnx_path(exported, name), {"x": _x(2, 12)}, {"x": 1}, chunks=chunks) < 1e-5
    stream = lstmrt.InferenceSession(onnx_path(exported, name), backend="native").stream()
    stream.run({"x": _x(2, multiple)})
    before = stream.state
    with pytest.raises(lstmrt.InputError, match=f"multiple of {multiple}.*'{layer}'"):
        stream.run({"x": _x(2, multiple + 1)})
    assert all(np.array_equal(before[k], v) for k, v in stream.state.items())


@pytest.mark.parametrize("name", list(LOOKS_AHEAD))
@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_look_ahead_layers_export_but_refuse_to_stream(exported, name, backend):
    import lstmrt
    layer = LOOKS_AHEAD[name]
    assert f"not streamable: layer '{layer}' (Conv" in exported[name][1].stdout
    sess = lstmrt.InferenceSession(onnx_path(exported, name), backend=backend)
    assert np.all(np.isfinite(sess.run(None, {"x": _x(2, 6)})[0]))
    with pytest.raises(lstmrt.StreamError, match=f"cannot stream: layer '{layer}'"):
        sess.stream()


@pytest.mark.parametrize("name", STREAMS_WRONG)
def test_sequence_wide_layers_downgrade_to_plain(exported, name):
    import lstmrt
    assert "exported as a plain model (whole-sequence checks pass)" in exported[name][1].stdout
    with pytest.raises(lstmrt.StreamError, match="differs from the whole call"):
        lstmrt.InferenceSession(onnx_path(exported, name)).stream()


def test_two_inputs_two_outputs_shared_layers(exported):
    model = onnx.load(onnx_path(exported, "multi_io"))
    assert {"xa", "xb"} <= {i.name for i in model.graph.input}
    assert [o.name for o in model.graph.output][:2] == ["per_step", "last"]
    pairs = json.loads(_meta(exported, "multi_io")["lstmrt.state_pairs"])
    assert {"shared_lstm.h_in", "shared_lstm_1.h_in"} <= set(pairs)   # the shared LSTM's two calls, two states
    feed = {"xa": _x(2, 9, 1), "xb": _x(2, 9, 2)}
    assert stream_matches_whole(onnx_path(exported, "multi_io"), feed, {"xa": 1, "xb": 1}) < 1e-5


def test_go_backwards_is_refused_in_our_words(exported):
    _, proc = exported["go_backwards"]
    text = output_of(proc)
    assert proc.returncode != 0 and "layer 'backwards' (LSTM): go_backwards=True outside Bidirectional" in text
    assert "wrap the layer in Bidirectional" in text and "Traceback" not in text


def test_lambda_in_a_file_says_how_to_load_it(exported):
    _, proc = exported["lambda_file"]
    text = output_of(proc)
    assert proc.returncode != 0 and "Lambda" in text and "safe_mode=False" in text and "Traceback" not in text


def test_custom_and_lambda_layers_in_memory():
    proc = run([CASES / "keras_custom_api.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "CUSTOM OK" in proc.stdout and "refused: layer 'py_sort' (Lambda)" in proc.stdout
