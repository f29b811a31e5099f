"""PyTorch exporter: TorchScript models of every covered layer kind, trained and saved by
torch in a subprocess, exported through the CLI (each export verifies torch vs onnxruntime vs
lstmrt native, streamed too), then checked here."""
import numpy as np
import pytest

from export_helpers import onnx_path, CASES, build_and_export, check_native_onnx, cli, output_of, run, stream_matches_whole

pytestmark = pytest.mark.export

STREAMABLE = ["lstm_seq", "gru2_last", "rnn_act", "emb_gru", "lstm_state"]
PLAIN = ["bilstm"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return build_and_export("torch_models.py", tmp_path_factory.mktemp("torch"))


@pytest.mark.parametrize("name", STREAMABLE + PLAIN)
def test_cli_export_verifies_against_torch(exported, name):
    _, proc = exported[name]
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "max abs error vs framework" in proc.stdout and "B=1,T=1" in proc.stdout
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
    assert json.loads(meta["lstmrt.state_pairs"]) == {"h0": "output_1", "c0": "output_2"}


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
    proc = run([CASES / "torch_state_names.py"])
    assert proc.returncode == 0, output_of(proc)[-4000:]
    assert "STATE NAMES OK" in proc.stdout
