"""The C kernel directly: activation accuracy per SIMD path, and its own size checks."""
import numpy as np
import pytest

import lstmrt
from lstmrt.kernel import Activation, CellSpec, CellWeights, ffi, lib

PATHS = lstmrt.available_simd_paths()
N = 37   # not a multiple of any vector width: exercises the padded lanes


def identity_rnn(activation: str, simd: str) -> CellWeights:
    """h_t = act(x_t): W = identity, R = 0, so the kernel's activation is seen directly."""
    spec = CellSpec("RNN", N, N, (Activation(activation),))
    return CellWeights(spec, simd).pack(np.eye(N, dtype=np.float32), np.zeros((N, N), np.float32))


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("activation, exact, bound", [
    ("sigmoid", lambda x: 0.5 * (1 + np.tanh(0.5 * x)), 3e-7),
    ("tanh", np.tanh, 3e-7),
])
def test_vector_activation_max_error(simd, activation, exact, bound):
    """The bound stated in csrc/kernel_impl.h, over [-30, 30] plus extremes."""
    grid = np.concatenate([np.linspace(-30, 30, 200_003), [-1e30, -100, -1e-30, 0, 1e-30, 100, 1e30]])
    grid = np.resize(grid, (-(-grid.size // N), N)).astype(np.float32)
    weights = identity_rnn(activation, simd)
    y = np.empty((grid.shape[0], 1, N), np.float32)
    weights.run(np.ascontiguousarray(grid[:, None, :]), np.zeros((1, N), np.float32), y=y.reshape(-1),
                y_step_stride=N)
    err = np.abs(y[:, 0, :].astype(np.float64) - exact(grid.astype(np.float64)))
    assert err.max() < bound, f"{activation} on {simd}: max abs error {err.max():.3g}"


def test_forced_path_is_used_and_env_var_forces_it(monkeypatch):
    for simd in PATHS:
        assert identity_rnn("tanh", simd).simd_path == simd
        monkeypatch.setenv("LSTMRT_SIMD", simd)
        assert identity_rnn("tanh", None).simd_path == simd
    monkeypatch.setenv("LSTMRT_SIMD", "nonsense")
    with pytest.raises(lstmrt.KernelError, match="LSTMRT_SIMD"):
        identity_rnn("tanh", None)


def test_unknown_path_is_refused_not_crashed():
    desc = ffi.new("lrt_cell_desc *", {"cell": lib.LRT_RNN, "input_size": 1, "hidden_size": 1, "simd": 42})
    one = np.ones(1, np.float32)
    out = ffi.new("lrt_weights **")
    buf = ffi.from_buffer("float[]", one)
    assert lib.lrt_weights_create(desc, buf, 1, buf, 1, ffi.NULL, 0, ffi.NULL, 0, out) == lib.LRT_E_SIMD


def _args(**overrides):
    """lrt_run_args for a 1-step, batch-1 run of identity_rnn, with fields overridden."""
    keep = {}
    x = keep["x"] = np.zeros(N, np.float32)
    h = keep["h"] = np.zeros(N, np.float32)
    ws = keep["ws"] = np.zeros(100_000, np.float32)
    a = ffi.new("lrt_run_args *")
    a.batch, a.steps = 1, 1
    a.x, a.x_len = ffi.from_buffer("float[]", x), N
    a.h, a.h_len = ffi.from_buffer("float[]", h), N
    a.workspace, a.workspace_len = ffi.from_buffer("float[]", ws), ws.size
    for k, v in overrides.items():
        setattr(a, k, v)
    return a, keep


@pytest.mark.parametrize("field, value, status", [
    ("x_len", N - 1, "LRT_E_ARG"),
    ("h_len", N + 1, "LRT_E_ARG"),
    ("batch", -1, "LRT_E_ARG"),
    ("steps", 2, "LRT_E_ARG"),                   # x holds one step only
    ("workspace_len", 3, "LRT_E_WORKSPACE"),
    ("y_step_stride", 5, "LRT_E_ARG"),           # y given below, stride smaller than a row
])
def test_c_side_checks_sizes(field, value, status):
    weights = identity_rnn("tanh", "scalar")
    a, keep = _args(**{field: value})
    if field == "y_step_stride":
        y = keep["y"] = np.zeros(N, np.float32)
        a.y, a.y_len = ffi.from_buffer("float[]", y), N
    assert lib.lrt_run(weights._handle, a) == getattr(lib, status)
    a, keep = _args()
    assert lib.lrt_run(weights._handle, a) == lib.LRT_OK


def test_c_side_checks_weight_sizes():
    desc = ffi.new("lrt_cell_desc *", {"cell": lib.LRT_LSTM, "input_size": 3, "hidden_size": 2})
    W, R = np.zeros(4 * 2 * 3, np.float32), np.zeros(4 * 2 * 2, np.float32)
    out = ffi.new("lrt_weights **")
    fb = lambda a: ffi.from_buffer("float[]", a)  # noqa: E731
    assert lib.lrt_weights_create(desc, fb(W), W.size - 1, fb(R), R.size, ffi.NULL, 0, ffi.NULL, 0, out) == lib.LRT_E_ARG
    assert lib.lrt_weights_create(desc, fb(W), W.size, fb(R), R.size, ffi.NULL, 5, ffi.NULL, 0, out) == lib.LRT_E_ARG
    assert lib.lrt_weights_create(desc, fb(W), W.size, fb(R), R.size, ffi.NULL, 0, fb(W), 5, out) == lib.LRT_E_ARG
    desc.hidden_size = 0
    assert lib.lrt_weights_create(desc, fb(W), 0, fb(R), 0, ffi.NULL, 0, ffi.NULL, 0, out) == lib.LRT_E_ARG
    desc.hidden_size, desc.act[0].kind = 2, 99
    assert lib.lrt_weights_create(desc, fb(W), W.size, fb(R), R.size, ffi.NULL, 0, ffi.NULL, 0, out) == lib.LRT_E_ARG
    assert out[0] == ffi.NULL
