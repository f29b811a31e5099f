"""streamify on models from the official converters (no framework needed), and the
exporters package importing no framework."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import lstmrt
from export_helpers import ROOT, cli, output_of, stream_matches_whole

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"


@pytest.mark.parametrize("name, time_axis", [("torch_lstm_seq", 1), ("torch_gru2_last", 0),
                                             ("paddle_gru2_last", 1), ("keras_lstm2_last", 1)])
def test_streamify_lifts_state(tmp_path, name, time_axis):
    out = tmp_path / f"{name}_stream.onnx"
    proc = cli("streamify", FIXTURES / f"{name}.onnx", "-o", out)
    assert proc.returncode == 0, output_of(proc)
    model = onnx.load(str(out))
    assert "ConstantOfShape" not in {n.op_type for n in model.graph.node}
    pairs = json.loads({p.key: p.value for p in model.metadata_props}["lstmrt.state_pairs"])
    recurrent = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert len(pairs) == sum(2 if n.op_type == "LSTM" else 1 for n in recurrent)
    sess = lstmrt.InferenceSession(str(out), backend="native")
    assert sess.stream().pairs == pairs
    x = next(i for i in sess.get_inputs() if i.name not in pairs)
    shape = [3 if a == 1 - time_axis else 10 if a == time_axis else d for a, d in enumerate(x.shape)]
    feed = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    assert stream_matches_whole(out, feed, {x.name: time_axis}) < 1e-5


def test_streamify_keeps_existing_state_inputs(tmp_path):
    out = tmp_path / "s.onnx"
    assert cli("streamify", FIXTURES / "torch_lstm2_stream.onnx", "-o", out).returncode == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["lstmrt.state_pairs"]) == {"h0": "hn", "c0": "cn"}


def test_streamify_refuses_bidirectional_and_loop(tmp_path):
    proc = cli("streamify", FIXTURES / "torch_bilstm_seq.onnx", "-o", tmp_path / "b.onnx")
    assert proc.returncode != 0 and "bidirectional" in output_of(proc)
    proc = cli("streamify", FIXTURES / "keras_gru_loop.onnx", "-o", tmp_path / "l.onnx")
    assert proc.returncode != 0 and "no LSTM, GRU or RNN node" in output_of(proc)


def test_streamify_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    proc = cli("streamify", bad, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "not a readable ONNX model" in output_of(proc)


def test_importing_exporters_imports_no_framework():
    code = ("import sys, lstmrt.exporters, lstmrt.exporters.cli, lstmrt.exporters.streamify, lstmrt.exporters.verify; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'paddle', 'paddle2onnx', 'tf2onnx') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", output_of(proc)
