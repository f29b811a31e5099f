"""PyTorch exporter: TorchScript models of every covered layer kind, trained and saved by
torch in a subprocess, exported through the CLI (each export verifies torch vs onnxruntime vs
lstmrt native, streamed too), then checked here."""
import numpy as np
import pytest

from export_helpers import onnx_path, CASES, build_and_export, check_native_onnx, cli, output_of, run, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru2_last", "rnn_act", "emb_gru", "lstm_state", "causal_conv", "strided_conv",
              "conv_pool"]
PLAIN = ["bilstm", "noncausal_conv", "seq_norm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("torch_models.py", tmp_path_factory.mktemp("torch"))


@pytest.mark.parametrize("name", STREAMABLE + PLAIN)
def test_cli_export_verifies_against_torch(exported, name):
    _, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    shortest = "B=1,T=2" if name == "conv_pool" else "B=1,T=1"    # a pooling window needs 2 steps
    assert "max abs error vs framework" in proc.stdout and shortest in proc.stdout
    if name in STREAMABLE:
        assert "streamed in chunks" in proc.stdout
    check_native_onnx(onnx_path(exported, name), streamable=name in STREAMABLE)


def test_gru_is_linear_before_reset(exported):
    model = check_native_onnx(onnx_path(exported, "gru2_last"), streamable=True)
    assert all(next(a.i for a in n.attribute if a.name == "linear_before_reset") == 1
               for n in model.graph.node if n.op_type == "GRU")


def test_own_state_inputs_pair_with_returned_states(exported):
    import json
    import onnx
    meta = {p.key: p.value for p in onnx.load(onnx_path(exported, "lstm_state")).metadata_props}
    assert json.loads(meta["lstmrt.state_pairs"]) == {"h0": "h0_out", "c0": "c0_out"}


def test_streams_here(exported):
    feed = {"x": np.random.default_rng(0).standard_normal((3, 10, 5)).astype(np.float32)}
    assert stream_matches_whole(onnx_path(exported, "lstm_seq"), feed, {"x": 1}) < 1e-5


def test_cell_loop_is_refused_naming_the_layer(exported):
    _, proc = exported["cell_loop"]
    assert proc.returncode != 0 and "'cell' (LSTMCell)" in output_of(proc)


def test_python_api_in_memory():
    proc = run([CASES / "torch_api.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "API OK" in proc.stdout


def test_missing_and_corrupt_files(tmp_path):
    proc = cli("export", tmp_path / "nope.pt", "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "does not exist" in output_of(proc)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    proc = cli("export", bad, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "not a TorchScript archive" in output_of(proc)
    assert "Traceback" not in output_of(proc)


def test_state_names_follow_module_paths_scripted_or_traced():
    """Lifted state by module path, a state the forward takes by its argument name (h0 -> h0_out),
    scripted, traced and eager alike; stream() finds the pairs in the exported file."""
    proc = run([CASES / "torch_state_names.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "STATE NAMES OK" in proc.stdout


def _x(batch, steps, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, steps, 4)).astype(np.float32)


@pytest.mark.parametrize("chunks", [(1,), (2,), (3, 1, 5, 2)])
def test_causal_conv_front_end_streams_exactly(exported, chunks):
    path = onnx_path(exported, "causal_conv")
    assert stream_matches_whole(path, {"x": _x(3, 11)}, {"x": 1}, chunks=chunks) < 1e-5
    _, proc = exported["causal_conv"]
    assert "layer 'conv' carries its last 2 input step(s)" in proc.stdout
    assert "layer 'conv2' carries its last 2 input step(s)" in proc.stdout


def test_strided_conv_streams_in_whole_strides_and_refuses_a_broken_chunk(exported):
    import lstmrt
    path = onnx_path(exported, "strided_conv")
    assert "multiple of 2 steps" in exported["strided_conv"][1].stdout
    assert stream_matches_whole(path, {"x": _x(2, 12)}, {"x": 1}, chunks=(2, 4, 6)) < 1e-5
    stream = lstmrt.InferenceSession(str(path), backend="native").stream()
    stream.run({"x": _x(2, 4)})
    before = stream.state
    with pytest.raises(lstmrt.InputError, match=r"input 'x' has 3 steps.*multiple of 2.*'conv' \(stride 2\)"):
        stream.run({"x": _x(2, 3)})
    assert all(np.array_equal(before[k], v) for k, v in stream.state.items())


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_non_causal_conv_exports_but_refuses_to_stream_naming_the_layer(exported, backend):
    import lstmrt
    _, proc = exported["noncausal_conv"]
    assert "not streamable: layer 'conv' (Conv" in proc.stdout and "looks 1 step(s) ahead" in proc.stdout
    sess = lstmrt.InferenceSession(onnx_path(exported, "noncausal_conv"), backend=backend)
    assert sess.run(None, {"x": _x(2, 5)})[0].shape == (2, 5, 5)
    with pytest.raises(lstmrt.StreamError, match="cannot stream: layer 'conv' \\(Conv"):
        sess.stream()


def test_stream_mismatch_downgrades_to_a_plain_model(exported):
    import lstmrt
    _, proc = exported["seq_norm"]
    assert "exported as a plain model (whole-sequence checks pass)" in proc.stdout, output_of(proc)[-3000:]
    with pytest.raises(lstmrt.StreamError, match="differs from the whole call"):
        lstmrt.InferenceSession(onnx_path(exported, "seq_norm")).stream()


def test_lstm_projection_is_refused_in_our_words(exported):
    _, proc = exported["proj_lstm"]
    out = output_of(proc)
    assert proc.returncode != 0 and "layer 'rnn' (LSTM, proj_size=3)" in out and "proj_size=0" in out, out[-2000:]
    assert "Traceback" not in out


def test_max_pooling_along_time_streams_in_whole_windows(exported):
    out = exported["conv_pool"][1].stdout
    assert "multiple of 2 steps (strided layers: 'pool' x2)" in out and "layer 'conv' carries its last 1" in out, out
    assert stream_matches_whole(onnx_path(exported, "conv_pool"), {"x": _x(2, 12)}, {"x": 1}, chunks=(2, 4)) < 1e-5


def test_unguessable_input_is_an_export_error(exported):
    _, proc = exported["crnn"]       # (the same model exports and streams from Python: torch_api.py)
    out = output_of(proc)
    assert proc.returncode != 0 and "the input was guessed from the first layer: pass example_input" in out, out
    assert "Traceback" not in out
