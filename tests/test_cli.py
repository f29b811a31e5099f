"""`lstmrt run` and `lstmrt inspect`, checked against onnxruntime on the shipped example."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from lstmrt.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "bracket_depth.onnx"
INPUT = ROOT / "examples" / "bracket_depth_input.npy"
FIXTURES = ROOT / "tests" / "fixtures" / "exporters"


def oracle():
    x = np.load(INPUT)
    zeros = np.zeros((1, x.shape[0], 32), np.float32)
    ref = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return dict(zip(["y", "hn", "cn"], ref.run(None, {"x": x, "h0": zeros, "c0": zeros})))


def test_run_streamed_matches_onnxruntime(tmp_path):
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(main, ["run", str(MODEL), "--input", f"x={INPUT}", "--stream", "--chunk", "7",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "[1, 173, 10]" in result.output
    saved, expected = np.load(out), oracle()
    for name in ("y", "hn", "cn"):
        np.testing.assert_allclose(saved[name], expected[name], atol=1e-5)


def test_run_whole_with_explicit_state(tmp_path):
    h0 = tmp_path / "h0.npy"
    np.save(h0, np.zeros((1, 1, 32), np.float32))
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(main, ["run", str(MODEL), "-i", f"x={INPUT}", "-i", f"h0={h0}", "-i", f"c0={h0}",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out)["y"], oracle()["y"], atol=1e-5)


def test_run_reports_bad_input_cleanly(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 4, 60), np.float32))
    result = CliRunner().invoke(main, ["run", str(MODEL), "-i", f"x={bad}"])
    assert result.exit_code != 0
    assert "InputError: input 'x' has shape [1, 4, 60]; dimension 2 must be 61" in result.output


def test_inspect_tells_layers_state_and_backend():
    result = CliRunner().invoke(main, ["inspect", str(MODEL)])
    assert result.exit_code == 0, result.output
    assert "/rnn/LSTM" in result.output and "h0 -> hn, c0 -> cn" in result.output
    assert "native: compiled, all 8 nodes in one C call" in result.output
    result = CliRunner().invoke(main, ["inspect", str(FIXTURES / "keras_gru_loop.onnx")])
    assert "native: compiled, all 58 nodes in one C call" in result.output   # its Loop unrolled
    result = CliRunner().invoke(main, ["inspect", str(FIXTURES / "torch_bilstm_seq.onnx")])
    assert "streaming: not possible" in result.output and "bidirectional" in result.output


def test_example_demo_streams_correctly():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "stream_demo.py"), "--chunk", "5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "streamed vs one whole sess.run(): max abs diff" in done.stdout


def test_bench_times_both_backends_and_both_call_paths():
    result = CliRunner().invoke(main, ["bench", str(MODEL), "--seconds", "0.05", "--chunk", "4", "--batch", "2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for cells in ("native run", "native stream", "onnxruntime CPU run", "onnxruntime CPU stream"):
        assert cells in text
    assert "× onnxruntime CPU" in text and "batch 2, 4 step(s) per call" in text


def test_bench_flops_count_the_recurrent_products():
    from lstmrt.bench import recurrent_flops
    from lstmrt.model import Model
    # one LSTM, input 61, hidden 32: 2 * 4*32 * (61+32) multiply-adds per step and sequence
    assert recurrent_flops(Model(str(MODEL)), batch=3, steps=5) == 2 * 128 * 93 * 15
