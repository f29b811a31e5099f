"""Backend choice, the onnxruntime backend's streams, layout-1 models, and `lstmrt verify`."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import lstmrt
import lstmrt.backends.onnxruntime as ort_backend
from lstmrt.cli import main
from models import random_feed, streaming_model
from onnx_cases import RecurrentSpec, make_recurrent_model, random_weights
from onnx_cases import random_feed as recurrent_feed


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(ort_backend, "cuda_listed", lambda: False)


def with_unsupported_op() -> onnx.ModelProto:
    """The streaming model with an Atan (which native lacks) on its output."""
    model = streaming_model("GRU")
    model.graph.node[-2].output[0] = "y_raw"          # MatMul -> y_raw -> Atan -> y
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("Atan", ["y_raw"], ["y"], name="the_atan"))
    return model


def test_auto_picks_native_when_it_runs_every_node(no_cuda):
    sess = lstmrt.InferenceSession(streaming_model("LSTM"))
    assert sess.backend == "native"
    assert sess.backend_reason == "native: compiled, all 7 nodes in one C call (no CUDA)"


def test_auto_falls_back_to_onnxruntime_cpu_and_says_why(no_cuda):
    sess = lstmrt.InferenceSession(with_unsupported_op())
    assert sess.backend == "onnxruntime" and sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.backend_reason == "onnxruntime CPU: native lacks Atan at node 'the_atan'"
    with pytest.raises(lstmrt.UnsupportedModelError, match="node 'the_atan' uses op Atan"):
        lstmrt.InferenceSession(with_unsupported_op(), backend="native")


def test_cuda_listed_but_not_loading_is_not_trusted(monkeypatch):
    """onnxruntime-gpu lists CUDA on machines where it cannot load: the created session decides."""
    monkeypatch.setattr(ort_backend, "cuda_listed", lambda: True)
    sess = lstmrt.InferenceSession(streaming_model("LSTM"))
    if sess.get_providers()[0] == "CUDAExecutionProvider":
        assert sess.backend == "onnxruntime" and sess.backend_reason == "onnxruntime CUDA: a CUDA session loads"
    else:
        assert sess.backend == "native"
        assert "CUDA is listed but a CUDA session did not load" in sess.backend_reason


def test_explicit_providers_mean_onnxruntime():
    sess = lstmrt.InferenceSession(streaming_model("RNN"), providers=["CPUExecutionProvider"])
    assert sess.backend == "onnxruntime" and sess.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_streams_on_both_backends_equal_whole_calls(cell):
    model = streaming_model(cell, input_size=6, hidden=9)
    x = random_feed(model, {"batch": 3, "time": 17}, seed=5)["x"]
    results = {}
    for backend in ("native", "onnxruntime"):
        sess = lstmrt.InferenceSession(model, backend=backend)
        stream = sess.stream()
        parts = [stream.run({"x": x[:, a:b]})[0] for a, b in [(0, 1), (1, 8), (8, 9), (9, 17)]]
        whole = sess.stream().run({"x": x})[0]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)
        results[backend] = (whole, stream.state)
    np.testing.assert_allclose(results["native"][0], results["onnxruntime"][0], atol=1e-5)
    for name, value in results["native"][1].items():
        np.testing.assert_allclose(value, results["onnxruntime"][1][name], atol=1e-5)


def test_onnxruntime_stream_state_stays_bound_on_the_session_device():
    """On CUDA a stream's state stays on the device as OrtValues (IO binding); on the CPU it is a
    numpy array and a step a plain run.  The binding path is forced here on the CPU too, so it is
    tested where no GPU is, and must give the plain path's results."""
    sess = lstmrt.InferenceSession(streaming_model("LSTM"), backend="onnxruntime")
    chunks = [random_feed(sess.model.proto, {"batch": 2, "time": 3}, seed=s)["x"] for s in range(3)]
    on_cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    assert sess._backend.bind_state == on_cuda
    plain = sess.stream()
    plain_out = [plain.run({"x": x})[0] for x in chunks]
    if not on_cuda:
        assert all(type(value) is np.ndarray for value in plain._state.values())
    sess._backend.bind_state = True
    bound = sess.stream()
    bound_out = [bound.run({"x": x})[0] for x in chunks]
    for value in bound._state.values():       # OrtValues, never copied to numpy between calls
        assert type(value).__name__ == "OrtValue" and value.device_name().lower() == ("cuda" if on_cuda else "cpu")
    for a, b in zip(plain_out, bound_out):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for name, value in plain.state.items():
        np.testing.assert_allclose(value, bound.state[name], atol=1e-6)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1_models_run_on_onnxruntime(cell, direction):
    """onnxruntime refuses layout=1 recurrent nodes; lstmrt rewrites them to layout 0 at load."""
    spec = RecurrentSpec(cell=cell, input_size=4, hidden_size=6, direction=direction, layout=1,
                         has_bias=True, has_peepholes=False, has_seq_lens=True, has_initial_h=True,
                         has_initial_c=cell == "LSTM", outputs=(True, True, cell == "LSTM"))
    rng = np.random.default_rng(1)
    weights = random_weights(spec, rng)
    model = make_recurrent_model(spec, weights)
    feed = recurrent_feed(spec, batch=3, steps=5, seq_lens=[5, 2, 4], rng=rng)
    native = lstmrt.InferenceSession(model, backend="native").run(None, feed)
    onnxrt = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, feed)
    for a, b in zip(native, onnxrt):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_verify_command_passes_and_fails_by_tolerance(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(streaming_model("GRU"), str(path))
    ok = CliRunner().invoke(main, ["verify", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "native" in ok.output and "onnxruntime CPU" in ok.output and "agree within" in ok.output
    strict = CliRunner().invoke(main, ["verify", str(path), "--tolerance", "-1"])
    assert strict.exit_code == 1 and "FAIL" in strict.output


def test_inspect_says_why_auto_chose(tmp_path, no_cuda):
    path = tmp_path / "m.onnx"
    onnx.save(with_unsupported_op(), str(path))
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert "backend auto: onnxruntime CPU: native lacks Atan at node 'the_atan'" in " ".join(result.output.split())


def test_a_feed_may_replace_an_initializer_listed_as_an_input(tmp_path):
    """An initializer that is also a graph input is a default: onnxruntime lets a feed replace it,
    and so must native, even where the default alone would have been folded at load."""
    consts = [onnx.numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "scale"),
              onnx.numpy_helper.from_array(np.array([10.0, 10.0], np.float32), "ten")]
    nodes = [helper.make_node("Mul", ["scale", "ten"], ["scaled"]),      # foldable from the default
             helper.make_node("Add", ["x", "scaled"], ["z"])]
    value = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [value("x"), value("scale")], [value("z")], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    native, reference = (lstmrt.InferenceSession(model, backend=b) for b in ("native", "onnxruntime"))
    assert [i.name for i in native.get_inputs()] == ["x"]
    x = np.array([1.0, -1.0], np.float32)
    for feed in ({"x": x}, {"x": x, "scale": np.array([-4.0, 0.5], np.float32)}):
        got, want = native.run(None, feed)[0], reference.run(None, feed)[0]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(native.run(None, {"x": x, "scale": np.array([-4.0, 0.5], np.float32)})[0],
                                  [-39.0, 4.0])
    with pytest.raises(lstmrt.InputError, match=r"unknown input name\(s\) \['ten'\].*may be fed too: \['scale'\]"):
        native.run(None, {"x": x, "ten": x})
    with pytest.raises(lstmrt.InputError, match="'scale' has dtype float64"):
        native.run(None, {"x": x, "scale": np.zeros(2)})
    with pytest.raises(lstmrt.InputError, match=r"missing input\(s\) \['x'\]"):
        native.run(None, {"scale": x})
    onnx.save(model, str(tmp_path / "m.onnx"))
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")]).output
    assert "initializers a feed may replace" in shown and "scale" in shown
