"""Keras exporter: models of every covered layer kind, trained and saved by Keras in a
subprocess, exported through the CLI (each export verifies Keras vs onnxruntime vs lstmrt
native, streamed too), then checked here without TensorFlow."""
import sys

import numpy as np
import pytest

from export_helpers import build_and_export, check_native_onnx, output_of, run, CASES, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru_stack", "simplernn", "embedding_mask", "masking", "initial_state", "stateful",
              "sequential"]
PLAIN = ["bidirectional"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("keras_models.py", tmp_path_factory.mktemp("keras"))


@pytest.mark.parametrize("name", STREAMABLE + PLAIN)
def test_cli_export_verifies_against_keras(exported, name):
    path, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "max abs error vs framework" in proc.stdout and "onnxruntime" in proc.stdout and "native" in proc.stdout
    if name in STREAMABLE:
        assert "streamed in chunks" in proc.stdout
    model = check_native_onnx(path.rsplit(".", 1)[0] + ".onnx", streamable=name in STREAMABLE)
    assert {i.name for i in model.graph.input} >= {"x"} or name == "embedding_mask"


def test_keras_gru_both_reset_after_conventions(exported):
    path, _ = exported["gru_stack"]
    model = check_native_onnx(path.rsplit(".", 1)[0] + ".onnx", streamable=True)
    lbr = [next((a.i for a in n.attribute if a.name == "linear_before_reset"), 0)
           for n in model.graph.node if n.op_type == "GRU"]
    assert lbr == [1, 0]


def test_keras_mask_becomes_sequence_lens(exported):
    path, _ = exported["embedding_mask"]
    model = check_native_onnx(path.rsplit(".", 1)[0] + ".onnx", streamable=True)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert len(lstm.input) > 4 and lstm.input[4], "sequence_lens is wired"


def test_stateful_and_initial_state_pairs(exported):
    import json
    import onnx
    meta = lambda n: json.loads({p.key: p.value for p in onnx.load(
        exported[n][0].rsplit(".", 1)[0] + ".onnx").metadata_props}["lstmrt.state_pairs"])
    assert set(meta("initial_state")) == {"h0", "c0"}
    assert len(meta("stateful")) == 2


def test_streams_here_without_tensorflow(exported):
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    rng = np.random.default_rng(3)
    path, _ = exported["gru_stack"]
    feed = {"x": rng.standard_normal((2, 9, 4)).astype(np.float32)}
    assert stream_matches_whole(path.rsplit(".", 1)[0] + ".onnx", feed, {"x": 1}) < 1e-5


def test_unsupported_layer_is_named(exported):
    _, proc = exported["unsupported"]
    assert proc.returncode != 0
    assert "conv_front" in output_of(proc) and "Conv1D" in output_of(proc)


def test_no_state_and_no_verify(exported, tmp_path):
    from export_helpers import cli
    path, _ = exported["lstm_seq"]
    proc = cli("export", path, "-o", tmp_path / "plain.onnx", "--no-state", "--no-verify")
    assert proc.returncode == 0, output_of(proc)
    assert "not verified" in proc.stdout
    model = check_native_onnx(tmp_path / "plain.onnx", streamable=False)
    assert [i.name for i in model.graph.input] == ["x"]


def test_python_api_in_memory():
    proc = run([CASES / "keras_api.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "API OK" in proc.stdout


def test_missing_and_corrupt_files(tmp_path):
    from export_helpers import cli
    proc = cli("export", tmp_path / "nope.keras", "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "does not exist" in output_of(proc)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a zip")
    proc = cli("export", bad, "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "cannot load Keras model" in output_of(proc)
    assert "Traceback" not in output_of(proc)
