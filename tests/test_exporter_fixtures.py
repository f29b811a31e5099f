"""Models exported by torch.onnx, tf2onnx and paddle2onnx (tests/fixtures/exporters/) run on
both backends and match onnxruntime run directly, at two (batch, time) shapes."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import lstmrt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODELS = sorted(MANIFEST)


def feed_for(meta: dict, batch: int, steps: int, seed: int) -> dict:
    """Random inputs; the batch and time dims read from each input's declared shape."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in meta["inputs"]:
        shape = list(inp["shape"])
        if inp["name"] in meta["state_inputs"]:   # [layers*dirs, batch, H] or [batch, H]
            shape = [batch if d is None or isinstance(d, str) else d for d in shape]
        else:
            dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
            order = (steps, batch) if "time-major" in meta["description"] else (batch, steps)
            for i, value in zip(dynamic, order):
                shape[i] = value
        feed[inp["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feed


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch, steps", [(1, 1), (3, 11)])
def test_backends_match_onnxruntime(name, batch, steps, backend):
    meta = MANIFEST[name]
    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend=backend)
    assert sess.backend == backend
    ref = ort.InferenceSession(str(FIXTURES / name), providers=["CPUExecutionProvider"])
    feed = feed_for(meta, batch, steps, seed=steps)
    got, want = sess.run(None, feed), ref.run(None, feed)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_tf2onnx_keras_gru_loop_compiles_under_auto():
    """tf2onnx turns Keras GRUs into a Loop over time steps: its trip count is known once the
    feed's shape is, so the compiler unrolls it and auto picks native."""
    sess = lstmrt.InferenceSession(str(FIXTURES / "keras_gru_loop.onnx"))
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        assert sess.backend == "native"
        assert sess.backend_reason.startswith("native: compiled")
