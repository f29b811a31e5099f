"""Models exported by torch.onnx, tf2onnx and paddle2onnx (tests/fixtures/exporters/) run
natively and match onnxruntime, at two (batch, time) shapes."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import lstmrt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
RUNNABLE = sorted(name for name, m in MANIFEST.items() if m["recurrent_nodes"])
LOOP_MODELS = sorted(name for name, m in MANIFEST.items() if "Loop" in m["op_types"])


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


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("batch, steps", [(1, 1), (3, 11)])
def test_native_matches_onnxruntime(name, batch, steps):
    meta = MANIFEST[name]
    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend="native")
    ref = ort.InferenceSession(str(FIXTURES / name), providers=["CPUExecutionProvider"])
    feed = feed_for(meta, batch, steps, seed=steps)
    got, want = sess.run(None, feed), ref.run(None, feed)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_loop_models_are_refused_with_the_node_named(name):
    """tf2onnx turns Keras GRUs into Loop; running those natively is the next issue's work."""
    with pytest.raises(lstmrt.UnsupportedModelError, match=r"node '.*' uses op (Loop|Less|And)"):
        lstmrt.InferenceSession(str(FIXTURES / name), backend="native")
