"""NaN and Inf in, IEEE non-finite out, on every SIMD path (issue 12 item 4).

The kernel clamps before exp and clips gates with min/max; x86 min/max return their second
operand when one is NaN, so a clamp written value-first turned NaN into the clamp bound.
The oracle is a float64 numpy model of the ONNX cells (onnx.reference multiplies zero
peepholes into an infinite c, and onnxruntime's LSTM itself swallows NaN in X); where
onnxruntime does give NaN, lstmrt must too."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.kernel import available_simd_paths

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
H, I, T, B = 5, 3, 4, 2


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS = {   # name -> (float64 function, alpha, beta); None: the activation takes no such value
    "Sigmoid": (_sigmoid, None, None), "Tanh": (np.tanh, None, None),
    "Relu": (lambda x: np.where(x <= 0, 0.0, x), None, None),
    "Affine": (lambda x: 0.7 * x + 0.1, 0.7, 0.1),
    "LeakyRelu": (lambda x: np.where(x >= 0, x, 0.3 * x), 0.3, None),
    "ThresholdedRelu": (lambda x: np.where(x <= 0.2, 0.0, x), 0.2, None),
    "ScaledTanh": (lambda x: 0.9 * np.tanh(1.1 * x), 0.9, 1.1),
    "HardSigmoid": (lambda x: np.clip(0.2 * x + 0.5, 0, 1), 0.2, 0.5),
    "Elu": (lambda x: np.where(x >= 0, x, 0.8 * (np.exp(x) - 1)), 0.8, None),
    "Softsign": (lambda x: x / (1 + np.abs(x)), None, None),
    "Softplus": (lambda x: np.log1p(np.exp(x)), None, None),
}


def _weights(cell: str):
    rng = np.random.default_rng(3)
    G = GATES[cell]
    return {n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
            for n, s in (("W", (1, G * H, I)), ("R", (1, G * H, H)), ("B", (1, 2 * G * H)))}


def _cell_model(cell: str, activation: str | None = None, clip: float | None = None,
                linear_before_reset: int = 0) -> onnx.ModelProto:
    lstm = cell == "LSTM"
    attrs = {"hidden_size": H}
    if linear_before_reset:
        attrs["linear_before_reset"] = 1
    if clip is not None:
        attrs["clip"] = clip
    if activation is not None:
        _, alpha, beta = ACTIVATIONS[activation]
        attrs["activations"] = [activation]
        if alpha is not None:
            attrs["activation_alpha"] = [alpha]
        if beta is not None:
            attrs["activation_beta"] = [beta]
    state = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, B, H])  # noqa: E731
    node = helper.make_node(cell, ["X", "W", "R", "B", "", "h0"] + (["c0"] if lstm else []),
                            ["Y", "hn"] + (["cn"] if lstm else []), **attrs)
    graph = helper.make_graph(
        [node], "nan", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]), state("h0")]
        + ([state("c0")] if lstm else []),
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H]), state("hn")]
        + ([state("cn")] if lstm else []),
        [numpy_helper.from_array(a, n) for n, a in _weights(cell).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _reference(cell: str, feed: dict, activation: str | None = None, clip: float | None = None,
               linear_before_reset: int = 0) -> list:
    """The cell in float64 numpy, straight from the ONNX operator definitions."""
    w = {n: a.astype(np.float64)[0] for n, a in _weights(cell).items()}
    G = GATES[cell]
    Wb, Rb = w["B"][:G * H], w["B"][G * H:]
    f = ACTIVATIONS[activation][0] if activation else np.tanh   # an RNN's default
    gate = lambda v: f(np.clip(v, -clip, clip) if clip is not None else v)   # noqa: E731
    h = feed["h0"][0].astype(np.float64)
    c = feed["c0"][0].astype(np.float64) if cell == "LSTM" else None
    ys = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for x in feed["X"].astype(np.float64):
            xw, hr = x @ w["W"].T + Wb, h @ w["R"].T + Rb
            if cell == "RNN":
                h = gate(xw + hr)
            elif cell == "GRU":
                z, r = _sigmoid(xw[:, :H] + hr[:, :H]), _sigmoid(xw[:, H:2 * H] + hr[:, H:2 * H])
                if linear_before_reset:
                    cand = np.tanh(xw[:, 2 * H:] + r * (h @ w["R"][2 * H:].T + Rb[2 * H:]))
                else:
                    cand = np.tanh(xw[:, 2 * H:] + (r * h) @ w["R"][2 * H:].T + Rb[2 * H:])
                h = (1 - z) * cand + z * h
            else:
                s = xw + hr
                i, o, fg, cand = _sigmoid(s[:, :H]), _sigmoid(s[:, H:2 * H]), _sigmoid(s[:, 2 * H:3 * H]), np.tanh(s[:, 3 * H:])
                c = fg * c + i * cand
                h = o * np.tanh(c)
            ys.append(h)
    out = [np.stack(ys)[:, None], h[None]]
    return out + ([c[None]] if cell == "LSTM" else [])


def _feed(cell: str, where: str, value: float) -> dict:
    rng = np.random.default_rng(5)
    feed = {"X": rng.standard_normal((T, B, I)).astype(np.float32),
            "h0": rng.standard_normal((1, B, H)).astype(np.float32)}
    if cell == "LSTM":
        feed["c0"] = rng.standard_normal((1, B, H)).astype(np.float32)
    if where == "X":
        feed["X"][1, 0, :] = value       # step 1 of sequence 0 only: sequence 1 stays finite
    else:
        feed[where][0, 0, :] = value
    return feed


def _assert_same_nonfinite(ours: list, expected: list) -> None:
    for a, b in zip(ours, expected):
        assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
        assert np.array_equal(np.isposinf(a), np.isposinf(b)) and np.array_equal(np.isneginf(a), np.isneginf(b))
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], atol=1e-5)


def _ort(model, feed) -> list:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


CASES = [(cell, where, value) for cell in GATES for where in ("X", "h0", "c0") if where != "c0" or cell == "LSTM"
         for value in (np.nan, np.inf, -np.inf)]


@pytest.mark.parametrize("simd", available_simd_paths())
@pytest.mark.parametrize("cell,where,value", CASES)
def test_nonfinite_input_follows_ieee(simd, cell, where, value):
    model = _cell_model(cell)
    feed = _feed(cell, where, value)
    expected = _reference(cell, feed)
    assert not all(np.isfinite(e).all() for e in expected)   # the case is one where something is not finite
    ours = lstmrt.InferenceSession(model, backend="native", simd=simd).run(None, feed)
    _assert_same_nonfinite(ours, expected)
    for a, b in zip(ours, _ort(model, feed)):   # NaN wherever onnxruntime gives NaN
        assert np.isnan(a[np.isnan(b)]).all()


@pytest.mark.parametrize("simd", available_simd_paths())
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_nan_passes_every_activation_and_clip(simd, activation, clip):
    model = _cell_model("RNN", activation, clip)
    feed = _feed("RNN", "X", np.nan)
    ours = lstmrt.InferenceSession(model, backend="native", simd=simd).run(None, feed)
    _assert_same_nonfinite(ours, _reference("RNN", feed, activation, clip))
    for a, b in zip(ours, _ort(model, feed)):
        assert np.isnan(a[np.isnan(b)]).all()


@pytest.mark.parametrize("simd", available_simd_paths())
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_gru_linear_before_reset_with_infinite_state(simd, value):
    # sigmoid(-inf) must be exactly 0 (not 6e-39): r * (R h) is then 0 * inf = NaN, as in IEEE
    # (found by tests/fuzz: lstmrt gave inf where onnxruntime and a float64 model give NaN)
    model = _cell_model("GRU", linear_before_reset=1)
    feed = _feed("GRU", "h0", 0.0)
    feed["h0"][0, 0, 2] = value    # one unit: R h is +-inf per row, no inf - inf to hide the bug
    ours = lstmrt.InferenceSession(model, backend="native", simd=simd).run(None, feed)
    _assert_same_nonfinite(ours, _reference("GRU", feed, linear_before_reset=1))
    for a, b in zip(ours, _ort(model, feed)):
        assert np.isnan(a[np.isnan(b)]).all()
