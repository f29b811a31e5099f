"""ONNX's own node conformance cases for LSTM, GRU and RNN, run on lstmrt's native backend.

The cases come from onnx.backend.test.case.node (the onnx wheel no longer ships their .pb data
files, so the models and expected outputs are regenerated in-process), and run on the default
SIMD path and on every path in lstmrt.available_simd_paths().
"""
from __future__ import annotations

import numpy as np
import pytest

import lstmrt
from onnx_cases import recurrent_test_cases

RTOL = 1e-5
ATOL = 1e-5

_CASES = recurrent_test_cases(("LSTM", "GRU", "RNN"))
_BY_NAME = {c.name: c for c in _CASES}
SIMD_PATHS = [None] + list(lstmrt.available_simd_paths())


def test_cases_were_collected():
    ops = {n.op_type for c in _CASES for n in c.model.graph.node}
    assert ops == {"LSTM", "GRU", "RNN"}, f"conformance cases found only for {sorted(ops)}"
    assert len(_CASES) >= 18


def _feed(case, inputs):
    names = [v.name for v in case.model.graph.input]
    assert len(names) == len(inputs), f"{case.name}: {len(names)} graph inputs, {len(inputs)} data inputs"
    return dict(zip(names, inputs))


@pytest.mark.parametrize("simd", SIMD_PATHS, ids=lambda s: s or "default")
@pytest.mark.parametrize("name", sorted(_BY_NAME))
def test_onnx_node_conformance(name, simd):
    case = _BY_NAME[name]
    # the cases ask for rtol=1e-3, atol=1e-7; we hold ourselves to the tighter of rtol and 1e-5
    rtol = min(case.rtol, RTOL)
    atol = max(case.atol, ATOL)
    sess = lstmrt.InferenceSession(case.model, backend="native", simd=simd)
    output_names = [o.name for o in case.model.graph.output]
    for inputs, expected in case.data_sets:
        got = sess.run(None, _feed(case, inputs))
        assert len(got) == len(expected) == len(output_names)
        for out_name, g, e in zip(output_names, got, expected):
            assert g.dtype == e.dtype, f"{name}/{out_name}: dtype {g.dtype}, expected {e.dtype}"
            assert g.shape == e.shape, f"{name}/{out_name}: shape {g.shape}, expected {e.shape}"
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"{name}/{out_name} simd={simd}")


@pytest.mark.parametrize("name", sorted(_BY_NAME))
def test_onnx_node_conformance_named_outputs(name):
    """Asking for outputs by name (reversed order) returns the same arrays as run(None, ...)."""
    case = _BY_NAME[name]
    sess = lstmrt.InferenceSession(case.model, backend="native")
    output_names = [o.name for o in case.model.graph.output]
    inputs, expected = case.data_sets[0]
    got = sess.run(output_names[::-1], _feed(case, inputs))
    for g, e in zip(got, expected[::-1]):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
