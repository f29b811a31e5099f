"""Issue 12 items 10-13: the command line on the shipped example and on models that trip it:
one clear line and a non-zero exit, never a traceback; verify and bench work as the README says."""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lstmrt.cli import main
from models import streaming_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "bracket_depth.onnx"
INPUT = ROOT / "examples" / "bracket_depth_input.npy"


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    # click's own exits are SystemExit; anything else escaped as a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, " ".join(result.output.split())


def _save(model, path) -> Path:
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("axis", [5, -4])
def test_run_time_axis_out_of_range(axis):
    code, out = _invoke("run", MODEL, "-i", f"x={INPUT}", "--time-axis", axis)
    assert code == 2 and f"time axis {axis} is out of range for input 'x' of shape [1, 173, 61]" in out


def test_run_time_axis_on_a_scalar_input(tmp_path):
    np.save(tmp_path / "s.npy", np.float32(1.0))
    code, out = _invoke("run", MODEL, "-i", f"x={tmp_path / 's.npy'}", "--time-axis", 1)
    assert code == 2 and "time axis 1 is out of range for input 'x' of shape []" in out


def test_run_without_inputs_says_what_is_missing():
    code, out = _invoke("run", MODEL)
    assert code == 2
    assert "missing input(s) ['x']" in out and "x ['batch', 'time', 61], h0 [1, 'batch', 32]" in out
    assert "set()" not in out


def test_run_with_an_unknown_input_name_lists_the_inputs():
    code, out = _invoke("run", MODEL, "-i", f"nope={INPUT}")
    assert code == 2 and "the model has no input 'nope'; its inputs are x ['batch', 'time', 61]" in out


def test_verify_with_the_readmes_input_form_on_the_example():
    code, out = _invoke("verify", MODEL, "--input", f"x={INPUT}")   # batch 1: random state follows it
    assert code == 0, out
    assert "OK:" in out


def test_verify_reports_an_onnxruntime_failure_cleanly(tmp_path):
    model = streaming_model("LSTM")
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((1, 20, 5), np.float32), "W"))
    code, out = _invoke("verify", _save(model, tmp_path / "m.onnx"))
    assert code == 1 and "Error: InputError: onnxruntime failed on this feed" in out and "Input W must have shape" in out


def test_bench_onnxruntime_failure_is_reported_not_raised(tmp_path):
    model = streaming_model("LSTM")
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((1, 20, 5), np.float32), "W"))
    code, out = _invoke("bench", _save(model, tmp_path / "m.onnx"), "--backend", "onnxruntime", "--seconds", 0.01)
    assert code == 1
    assert "not timed: onnxruntime CPU run: InputError: onnxruntime failed on this feed" in out
    assert "no backend could run the model" in out


def _gated_model() -> onnx.ModelProto:
    """y = x + 1 when the scalar int input `sr` is 16000, else a Reshape that cannot succeed:
    like a VAD model's sample-rate input, a random value breaks it."""
    then = helper.make_graph([helper.make_node("Add", ["x", "one"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Reshape", ["x", "bad"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "rate"], ["ok"]),
         helper.make_node("If", ["ok"], ["y"], then_branch=then, else_branch=other)], "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 3]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 3])],
        [numpy_helper.from_array(np.array(16000, np.int64), "rate"),
         numpy_helper.from_array(np.ones(1, np.float32), "one"),
         numpy_helper.from_array(np.array([7, 7, 7, 7], np.int64), "bad")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_bench_takes_inputs_and_times_what_runs(tmp_path):
    path = _save(_gated_model(), tmp_path / "gated.onnx")
    sr = np.array(16000, np.int64)
    np.save(tmp_path / "sr.npy", sr)
    x = np.zeros((1, 1, 3), np.float32)
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "sr": sr})
    code, out = _invoke("bench", path, "--seconds", 0.02)          # random sr: nothing runs, said plainly
    assert code == 1 and "not timed: native run" in out and "give real inputs with --input" in out
    code, out = _invoke("bench", path, "--seconds", 0.02, "--input", f"sr={tmp_path / 'sr.npy'}")
    assert code == 0, out
    assert "native │ run" in out and "onnxruntime CPU │ run" in out


def test_bench_times_the_backends_that_load(tmp_path):
    model = streaming_model("LSTM")
    model.graph.node.append(helper.make_node("Atan", ["y"], ["y_atan"], name="the_atan"))
    model.graph.output.append(helper.make_tensor_value_info("y_atan", TensorProto.FLOAT, None))
    code, out = _invoke("bench", _save(model, tmp_path / "atan.onnx"), "--seconds", 0.02)
    assert code == 0, out
    assert "not timed: native: UnsupportedModelError" in out and "onnxruntime CPU │ run" in out


def test_bench_with_a_given_input_times_its_shape():
    code, out = _invoke("bench", MODEL, "--backend", "native", "--seconds", 0.02, "--input", f"x={INPUT}")
    assert code == 0 and "batch 1, 173 step(s) per call" in out


def test_bench_native_alone_has_no_nan_ratio():
    code, out = _invoke("bench", MODEL, "--backend", "native", "--seconds", 0.02)
    assert code == 0 and "nan" not in out and "native │ stream" in out


def test_export_without_the_framework_says_which_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):   # as on a core install, whether or not torch is here
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "model.pt").write_bytes(b"not really")
    code, out = _invoke("export", tmp_path / "model.pt", "-o", tmp_path / "o.onnx")
    assert code == 1 and "this needs torch, which is not installed: pip install 'lstmrt[torch]'" in out
