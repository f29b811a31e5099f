"""Paddle exporter: models saved by paddle.jit.save in a subprocess, exported through the CLI
(each export verifies Paddle vs onnxruntime vs lstmrt native, streamed too), checked here."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export_helpers import onnx_path, ENV, ROOT, build_and_export, check_native_onnx, cli, output_of, run, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru2_last", "emb_lstm", "lstm_state", "lstm2_states", "simple_rnn", "srnn2_relu_state",
              "lstm_srnns", "causal_conv", "strided_conv"]
PLAIN = ["bigru_tm", "bisrnn2", "noncausal_conv", "seq_norm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("paddle_models.py", tmp_path_factory.mktemp("paddle"))


@pytest.mark.parametrize("name", STREAMABLE + PLAIN)
def test_cli_export_verifies_against_paddle(exported, name):
    _, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "max abs error vs framework" in proc.stdout and "B=1,T=1" in proc.stdout
    check_native_onnx(onnx_path(exported, name), streamable=name in STREAMABLE)


def test_stacked_state_output_has_every_layer(exported):
    """paddle2onnx alone returns only the last layer's h; the export restacks [2, B, H]."""
    model = onnx.load(onnx_path(exported, "lstm2_states"))
    out = next(o for o in model.graph.output if o.name == "fetch_name_1")
    assert out.type.tensor_type.shape.dim[0].dim_value == 2


def test_own_state_pairs(exported):
    """A state the model takes keeps its input name; the final state it returns is `<name>_out`."""
    meta = {p.key: p.value for p in onnx.load(onnx_path(exported, "lstm_state")).metadata_props}
    assert json.loads(meta["lstmrt.state_pairs"]) == {"h0": "h0_out", "c0": "c0_out"}


def test_saved_program_state_is_named_by_its_layer_classes(exported):
    """A saved program keeps no attribute names: lifted state is named by the layer classes
    Paddle recorded, repeated ones numbered in program order; stream() reads them from the file."""
    import lstmrt
    want = {"LSTM.h_in": "LSTM.h_out", "LSTM.c_in": "LSTM.c_out", "SimpleRNN_0.h_in": "SimpleRNN_0.h_out",
            "SimpleRNN_1.h_in": "SimpleRNN_1.h_out"}
    assert lstmrt.InferenceSession(onnx_path(exported, "lstm_srnns")).stream().pairs == want


def test_state_names_follow_the_layers_the_user_wrote():
    """In memory: sublayer paths and forward argument names; saved: layer classes, the same on
    every save; each exported file streams by its metadata as Paddle computes."""
    proc = run([ROOT / "tests" / "export_cases" / "paddle_state_names.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "STATE NAMES OK" in proc.stdout


@pytest.mark.parametrize("name,features", [("gru2_last", 4), ("simple_rnn", 3)])
def test_streams_here(exported, name, features):
    feed = {"x": np.random.default_rng(0).standard_normal((2, 9, features)).astype(np.float32)}
    assert stream_matches_whole(onnx_path(exported, name), feed, {"x": 1}) < 1e-5


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("name,layers,direction,activation", [
    ("simple_rnn", 1, b"forward", b"Tanh"), ("srnn2_relu_state", 2, b"forward", b"Relu"),
    ("bisrnn2", 2, b"bidirectional", b"Tanh")])
def test_simple_rnn_is_native_rnn(exported, name, layers, direction, activation):
    """paddle2onnx 2.1 drops nn.SimpleRNN; the export grafts one native RNN node per layer."""
    model = onnx.load(onnx_path(exported, name))
    nodes = [n for n in model.graph.node if n.op_type == "RNN"]
    assert len(nodes) == layers, [n.op_type for n in model.graph.node]
    for node in nodes:
        attrs = _attrs(node)
        assert attrs["direction"] == direction and attrs.get("layout", 0) == 0
        assert set(attrs["activations"]) == {activation}


def test_simple_rnns_after_an_lstm(exported):
    model = onnx.load(onnx_path(exported, "lstm_srnns"))
    rnns = [n for n in model.graph.node if n.op_type == "RNN"]
    assert [n.op_type for n in model.graph.node if n.op_type in ("LSTM", "RNN")] == ["LSTM", "RNN", "RNN"]
    assert [_attrs(n)["activations"] for n in rnns] == [[b"Relu"], [b"Tanh"]]
    assert [_attrs(n)["hidden_size"] for n in rnns] == [4, 3]
    assert len(json.loads({p.key: p.value for p in model.metadata_props}["lstmrt.state_pairs"])) == 4


def test_simple_rnn_state_pairs(exported):
    """The initial state passed in pairs with the returned final state ([layers*dirs, B, H])."""
    meta = {p.key: p.value for p in onnx.load(onnx_path(exported, "srnn2_relu_state")).metadata_props}
    assert json.loads(meta["lstmrt.state_pairs"]) == {"h0": "h0_out"}
    out = next(o for o in onnx.load(onnx_path(exported, "bisrnn2")).graph.output if o.name == "fetch_name_1")
    assert out.type.tensor_type.shape.dim[0].dim_value == 4


def test_simple_rnn_sequence_length_is_refused(exported):
    _, proc = exported["srnn_seqlen"]
    out = output_of(proc)
    assert proc.returncode != 0 and re.search(r"layer 'SimpleRNN\w*' \(nn.SimpleRNN\) is called with sequence_length",
                                              out), out[-3000:]
    assert "Traceback" not in out


IN_MEMORY = """
import sys, numpy as np, paddle
from paddle import nn
from lstmrt.exporters import export
paddle.seed(1)
class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.SimpleRNN(3, 6, num_layers=2, activation="relu"), nn.Linear(6, 2)
    def forward(self, x):
        return self.head(self.rnn(x)[0])
x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype("float32")
print(export(Net(), sys.argv[1], example_input=x))
"""


def test_in_memory_simple_rnn(tmp_path):
    path, script = tmp_path / "layer.onnx", tmp_path / "in_memory.py"
    script.write_text(IN_MEMORY)        # paddle.jit.save reads the layer's source: not `python -c`
    proc = run([script, path])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "streamed in chunks" in proc.stdout and "B=1,T=1" in proc.stdout
    model = check_native_onnx(path, streamable=True)
    assert sum(n.op_type == "RNN" for n in model.graph.node) == 2


def test_export_needs_no_network(exported, tmp_path):
    """lstmrt[paddle] exports offline: paddle2onnx's polygraphy pip-installs missing helpers on first use,
    so the export runs with pip pointed at nothing (no index, a dead index URL and proxy) and an
    install command that only records being called; inside a network namespace of its own when
    `unshare` allows one."""
    marker = tmp_path / "install_attempted"
    fake_pip = tmp_path / "fake_pip.sh"
    fake_pip.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
    fake_pip.chmod(0o755)
    dead = "http://127.0.0.1:9"
    env = {**ENV, "PIP_NO_INDEX": "1", "PIP_INDEX_URL": dead + "/", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
           "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "ALL_PROXY": dead,
           "NO_PROXY": "", "no_proxy": "", "POLYGRAPHY_INSTALL_CMD": str(fake_pip)}
    args = [sys.executable, "-m", "lstmrt.exporters.cli", "export", exported["simple_rnn"][0], "-o", tmp_path / "off.onnx"]
    isolated = shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    if isolated:
        args = ["unshare", "-rn", *args]
    proc = subprocess.run(list(map(str, args)), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "max abs error vs framework" in proc.stdout and "streamed in chunks" in proc.stdout
    assert not marker.exists(), f"an install was attempted: {marker.read_text()}"
    assert os.path.getsize(tmp_path / "off.onnx") > 0


def test_missing_params_and_corrupt_files(exported, tmp_path):
    lone = tmp_path / "lone.json"
    lone.write_text("{}")
    proc = cli("export", lone, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "lone.pdiparams' is missing" in output_of(proc)
    (tmp_path / "lone.pdiparams").write_bytes(b"garbage")
    proc = cli("export", lone, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "ExportError" in output_of(proc) and "Traceback" not in output_of(proc)


def _x(batch, steps, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, steps, 4)).astype(np.float32)


@pytest.mark.parametrize("chunks", [(1,), (2,), (3, 1, 5, 2)])
def test_causal_conv_front_end_streams_exactly(exported, chunks):
    assert "carries its last 2 input step(s) across chunks" in exported["causal_conv"][1].stdout
    assert stream_matches_whole(onnx_path(exported, "causal_conv"), {"x": _x(3, 11)}, {"x": 1}, chunks=chunks) < 1e-5


def test_strided_conv_streams_in_whole_strides_and_refuses_a_broken_chunk(exported):
    import lstmrt
    path = onnx_path(exported, "strided_conv")
    assert "multiple of 2 steps" in exported["strided_conv"][1].stdout
    assert stream_matches_whole(path, {"x": _x(2, 12)}, {"x": 1}, chunks=(2, 4, 6)) < 1e-5
    stream = lstmrt.InferenceSession(path, backend="native").stream()
    stream.run({"x": _x(2, 4)})
    before = stream.state
    with pytest.raises(lstmrt.InputError, match=r"input 'x' has 5 steps.*multiple of 2"):
        stream.run({"x": _x(2, 5)})
    assert all(np.array_equal(before[k], v) for k, v in stream.state.items())


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_non_causal_conv_exports_but_refuses_to_stream_naming_the_layer(exported, backend):
    import lstmrt
    assert "not streamable: layer 'Conv.0' (Conv" in exported["noncausal_conv"][1].stdout
    sess = lstmrt.InferenceSession(onnx_path(exported, "noncausal_conv"), backend=backend)
    assert sess.run(None, {"x": _x(2, 5)})[0].shape == (2, 5, 5)
    with pytest.raises(lstmrt.StreamError, match=r"cannot stream: layer 'Conv.0' \(Conv.*looks 1 step\(s\) ahead"):
        sess.stream()


def test_stream_mismatch_downgrades_to_a_plain_model(exported):
    import lstmrt
    assert "exported as a plain model (whole-sequence checks pass)" in exported["seq_norm"][1].stdout
    with pytest.raises(lstmrt.StreamError, match="differs from the whole call"):
        lstmrt.InferenceSession(onnx_path(exported, "seq_norm")).stream()


def test_lstm_projection_is_refused_in_our_words(exported):
    _, proc = exported["proj_lstm"]
    out = output_of(proc)
    assert proc.returncode != 0 and "proj_size" in out and "while loop" in out, out[-2000:]
    assert "Traceback" not in out
