"""Keras exporter: models of every covered layer kind, trained and saved by Keras in a
subprocess, exported through the CLI (each export verifies Keras vs onnxruntime vs lstmrt
native, streamed too), then checked here without TensorFlow."""
import sys

import numpy as np
import pytest

from export_helpers import onnx_path, build_and_export, check_native_onnx, output_of, run, CASES, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru_stack", "simplernn", "embedding_mask", "masking", "initial_state", "stateful",
              "sequential"]
PLAIN = ["bidirectional"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("keras_models.py", tmp_path_factory.mktemp("keras"))


@pytest.mark.parametrize("name", STREAMABLE + PLAIN)
def test_cli_export_verifies_against_keras(exported, name):
    _, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "max abs error vs framework" in proc.stdout and "onnxruntime" in proc.stdout and "native" in proc.stdout
    if name in STREAMABLE:
        assert "streamed in chunks" in proc.stdout
    model = check_native_onnx(onnx_path(exported, name), streamable=name in STREAMABLE)
    assert {i.name for i in model.graph.input} >= {"x"} or name == "embedding_mask"


def test_keras_gru_both_reset_after_conventions(exported):
    model = check_native_onnx(onnx_path(exported, "gru_stack"), streamable=True)
    lbr = [next((a.i for a in n.attribute if a.name == "linear_before_reset"), 0)
           for n in model.graph.node if n.op_type == "GRU"]
    assert lbr == [1, 0]


def test_keras_mask_becomes_sequence_lens(exported):
    model = check_native_onnx(onnx_path(exported, "embedding_mask"), streamable=True)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert len(lstm.input) > 4 and lstm.input[4], "sequence_lens is wired"


def test_stateful_and_initial_state_pairs(exported):
    import json
    import onnx
    meta = lambda n: json.loads({p.key: p.value for p in onnx.load(
        onnx_path(exported, n)).metadata_props}["lstmrt.state_pairs"])
    assert set(meta("initial_state")) == {"h0", "c0"}
    assert len(meta("stateful")) == 2


def test_streams_here_without_tensorflow(exported):
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    rng = np.random.default_rng(3)
    feed = {"x": rng.standard_normal((2, 9, 4)).astype(np.float32)}
    assert stream_matches_whole(onnx_path(exported, "gru_stack"), feed, {"x": 1}) < 1e-5


def test_unsupported_layer_is_named(exported):
    _, proc = exported["unsupported"]
    assert proc.returncode != 0
    assert "layer 'cell_rnn' (RNN)" in output_of(proc) and "LSTM, GRU or SimpleRNN" in output_of(proc)
    assert "Traceback" not in output_of(proc)


def test_same_padded_conv_front_exports_without_state(exported):
    _, proc = exported["conv_front"]
    assert proc.returncode == 0, output_of(proc)[-3000:]
    assert "not streamable: layer 'conv_front' (Conv" in proc.stdout
    check_native_onnx(onnx_path(exported, "conv_front"), streamable=False)


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


# --- TensorFlow SavedModel folders (Keras 3 model.export), converted by tf2onnx ------------

@pytest.fixture(scope="module")
def savedmodels(tmp_path_factory):
    return build_and_export("keras_savedmodels.py", tmp_path_factory.mktemp("savedmodel"))


@pytest.mark.parametrize("name", ["sm_lstm", "sm_stateful"])
def test_savedmodel_lstm_exports_verifies_and_streams(savedmodels, name):
    import json
    path, proc = savedmodels[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    out = proc.stdout
    assert out.startswith("tensorflow ") and "streamed in chunks" in out and "native" in out, out
    model = check_native_onnx(path + ".onnx", streamable=True)
    assert [i.name for i in model.graph.input][0] == "x"            # the signature's names
    assert [o.name for o in model.graph.output][0] == "output_0"
    layers = ["enc", "dec"] if name == "sm_lstm" else ["live"]
    pairs = json.loads({p.key: p.value for p in model.metadata_props}["lstmrt.state_pairs"])
    assert pairs == {f"{l}.{k}_in": f"{l}.{k}_out" for l in layers for k in "hc"}
    assert "tensorflow" not in sys.modules
    feed = {"x": np.random.default_rng(4).standard_normal((2, 9, 5 if name == "sm_lstm" else 3)).astype(np.float32)}
    assert stream_matches_whole(path + ".onnx", feed, {"x": 1}) < 1e-5
    if name == "sm_stateful":
        assert "live/rnn_state" in out and "replaced by the state inputs" in out


def test_savedmodel_stateful_no_state_keeps_saved_state(savedmodels, tmp_path):
    from export_helpers import cli
    path, _ = savedmodels["sm_stateful"]
    proc = cli("export", path, "-o", tmp_path / "plain.onnx", "--no-state")
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "their saved values are the fixed initial state" in proc.stdout   # and verified against them
    model = check_native_onnx(tmp_path / "plain.onnx", streamable=False)
    assert [i.name for i in model.graph.input] == ["x"]


def test_savedmodel_gru_is_refused_naming_the_layer(savedmodels):
    _, proc = savedmodels["sm_gru"]
    text = output_of(proc)
    assert proc.returncode != 0
    assert "layer 'gru_middle' (GRU)" in text and "Loop" in text and ".keras" in text, text[-2000:]
    assert "front_lstm" not in text and "Traceback" not in text


def test_savedmodel_missing_or_corrupt(savedmodels, tmp_path):
    from export_helpers import cli
    _, proc = savedmodels["sm_corrupt"]
    assert proc.returncode != 0 and "cannot load TensorFlow SavedModel" in output_of(proc)
    assert "Traceback" not in output_of(proc)
    proc = cli("export", tmp_path / "no_such_savedmodel", "-o", tmp_path / "o.onnx")
    assert proc.returncode != 0 and "does not exist" in output_of(proc)
    (tmp_path / "empty").mkdir()
    proc = cli("export", tmp_path / "empty", "-o", tmp_path / "o.onnx", "--framework", "keras")
    assert proc.returncode != 0 and "no saved_model.pb" in output_of(proc)
    assert "Traceback" not in output_of(proc)


def test_savedmodel_without_tf2onnx_says_pip_install(savedmodels, tmp_path):
    path, _ = savedmodels["sm_lstm"]
    code = ("import sys; sys.modules['tf2onnx'] = None; from lstmrt.exporters.cli import main; "
            f"main(['export', {path!r}, '-o', {str(tmp_path / 'o.onnx')!r}])")
    proc = run(["-c", code])
    assert proc.returncode != 0 and "pip install tf2onnx" in output_of(proc), output_of(proc)[-2000:]
    assert "Traceback" not in output_of(proc)
