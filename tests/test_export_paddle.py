"""Paddle exporter: models saved by paddle.jit.save in a subprocess, exported through the CLI
(each export verifies Paddle vs onnxruntime vs lstmrt native, streamed too), checked here."""
import json

import numpy as np
import onnx
import pytest

from export_helpers import build_and_export, check_native_onnx, cli, output_of, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru2_last", "emb_lstm", "lstm_state", "lstm2_states"]
PLAIN = ["bigru_tm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("paddle_models.py", tmp_path_factory.mktemp("paddle"))


def onnx_path(exported, name):
    return exported[name][0].rsplit(".", 1)[0] + ".onnx"


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
    meta = {p.key: p.value for p in onnx.load(onnx_path(exported, "lstm_state")).metadata_props}
    assert set(json.loads(meta["lstmrt.state_pairs"])) == {"h0", "c0"}


def test_streams_here(exported):
    feed = {"x": np.random.default_rng(0).standard_normal((2, 9, 4)).astype(np.float32)}
    assert stream_matches_whole(onnx_path(exported, "gru2_last"), feed, {"x": 1}) < 1e-5


def test_dropped_op_is_refused(exported):
    _, proc = exported["simple_rnn"]
    assert proc.returncode != 0 and "dropped the Paddle op(s) ['rnn']" in output_of(proc)


def test_missing_params_and_corrupt_files(exported, tmp_path):
    lone = tmp_path / "lone.json"
    lone.write_text("{}")
    proc = cli("export", lone, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "lone.pdiparams' is missing" in output_of(proc)
    (tmp_path / "lone.pdiparams").write_bytes(b"garbage")
    proc = cli("export", lone, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "ExportError" in output_of(proc) and "Traceback" not in output_of(proc)
