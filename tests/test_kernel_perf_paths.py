"""The kernel's fast paths (issue 5): panel GEMM edges, batch-split threads, bf16/int8
weight precision, the per-thread run context and CellRunner, and their C size checks.
Speed is measured in benchmarks/, never here."""
import os
import threading
import time

import numpy as np
import pytest

import lstmrt
from lstmrt.kernel import Activation, CellSpec, CellWeights, ffi, lib

PATHS = lstmrt.available_simd_paths()
ACTS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def make(cell, I, H, simd=None, precision=None, lbr=True, peep=False, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    spec = CellSpec(cell, I, H, tuple(Activation(a) for a in ACTS[cell]), linear_before_reset=lbr and cell == "GRU")
    W = rng.uniform(-scale, scale, (G * H, I)).astype(np.float32)
    R = rng.uniform(-scale, scale, (G * H, H)).astype(np.float32)
    B = rng.uniform(-scale, scale, 2 * G * H).astype(np.float32)
    P = rng.uniform(-scale, scale, 3 * H).astype(np.float32) if peep else None
    return CellWeights(spec, simd, precision).pack(W, R, B, P), (W, R, B, P)


def run(weights, x, h0=None, c0=None, seq_lens=None, reverse=False, threads=1):
    T, B, _ = x.shape
    H = weights.spec.hidden_size
    h = np.zeros((B, H), np.float32) if h0 is None else h0.copy()
    c = None
    if weights.spec.cell == "LSTM":
        c = np.zeros((B, H), np.float32) if c0 is None else c0.copy()
    y = np.full((T, B, H), np.nan, np.float32)
    weights.run(x, h, c, y.reshape(-1), B * H, seq_lens, reverse, threads=threads)
    return y, h, c


def same_bits(got, want) -> bool:
    return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want) if a is not None)


def in_threads(worker, count: int) -> None:
    """worker(0..count-1), each on its own Python thread, all at once."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def inputs(T, B, I, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, I)) * scale).astype(np.float32), rng.uniform(-1, 1, (B, I)).astype(np.float32)


# sizes that hit: GEMV (B=1), full 6-row tiles plus remainders (B=7, 13), partial panels
# (H=37, 80 are not multiples of 64), K not a multiple of 4 (int8), several K blocks (I=300)
SHAPES = [(1, 1, 5, 37), (3, 7, 80, 37), (4, 13, 300, 80), (2, 6, 64, 64)]


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("T, B, I, H", SHAPES)
@pytest.mark.parametrize("simd", [p for p in PATHS if p != "scalar"])
def test_f32_paths_match_scalar(cell, T, B, I, H, simd):
    for lbr in ((True, False) if cell == "GRU" else (True,)):
        fast, _ = make(cell, I, H, simd, lbr=lbr, peep=cell == "LSTM")
        ref, _ = make(cell, I, H, "scalar", lbr=lbr, peep=cell == "LSTM")
        x, _ = inputs(T, B, I)
        seq = np.array([T - (b % (T + 1)) for b in range(B)], np.int32)
        for seq_lens, reverse in ((None, False), (None, True), (seq, True), (seq, False)):
            got, want = run(fast, x, seq_lens=seq_lens, reverse=reverse), run(ref, x, seq_lens=seq_lens, reverse=reverse)
            for g, w in zip(got, want):
                if g is not None:
                    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_threaded_calls_from_many_python_threads_share_the_pool_correctly():
    """Multi-threaded calls take the kernel's thread pool one at a time; a call that finds it
    busy starts its own threads (long calls) or runs alone (short ones).  Every way must give
    the one-thread bits, call after call."""
    weights, _ = make("LSTM", 48, 200)
    cases = [inputs(T, B, 48, seed=T + B)[0] for T, B in ((1, 1), (20, 1), (120, 1), (4, 6), (60, 8))]
    want = [run(weights, x) for x in cases]
    errors = []

    def worker(i):
        for k in range(12):
            x = cases[(i + k) % len(cases)]
            if not same_bits(run(weights, x, threads=2 + i % 2), want[(i + k) % len(cases)]):
                errors.append((i, k))

    in_threads(worker, 4)
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_forked_child_gets_a_pool_of_its_own():
    """The pool's threads do not survive fork; the child must start its own, not wait on them."""
    weights, _ = make("LSTM", 48, 200)
    x = inputs(20, 1, 48, seed=3)[0]
    want = run(weights, x)
    assert same_bits(run(weights, x, threads=2), want)
    pid = os.fork()
    if pid == 0:   # the child: exit 0 only if the threaded call completes with the same bits
        os._exit(0 if same_bits(run(weights, x, threads=2), want) else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung on the parent's pool")


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("simd", PATHS)
def test_threads_equal_one_thread_bit_for_bit(precision, cell, simd):
    weights, _ = make(cell, 48, 80, simd, precision)
    T, B = 5, 13
    x, _ = inputs(T, B, 48)
    seq = np.array([5, 1, 3, 5, 0, 2, 5, 4, 5, 5, 1, 5, 3], np.int32)
    for seq_lens, reverse in ((None, False), (seq, True), (seq, False)):
        one = run(weights, x, seq_lens=seq_lens, reverse=reverse)
        for threads in (2, 3, 5, 13, 64):
            many = run(weights, x, seq_lens=seq_lens, reverse=reverse, threads=threads)
            assert same_bits(many, one), f"threads={threads} differs"


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("cell, lbr", [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)])
@pytest.mark.parametrize("simd", PATHS)
def test_teams_equal_one_thread_bit_for_bit(precision, cell, lbr, simd):
    """Batches smaller than the threads run as a team (lstmrt.c): members split the hidden units
    and meet once per step (twice for GRU without linear_before_reset).  H=200 gives members
    unequal shares that start mid-panel; sequence lengths leave rows ended while others run."""
    weights, _ = make(cell, 48, 200, simd, precision, lbr=lbr, peep=cell == "LSTM")
    T = 340 if cell == "RNN" else 120   # long enough calls to be worth a team
    for B, threads, seq_lens, reverse in ((1, 2, None, False), (1, 3, None, True),
                                         (2, 3, np.array([T, 37], np.int32), False),
                                         (2, 3, np.array([0, T], np.int32), True)):
        assert weights.workspace_floats(B, T, threads) > weights.workspace_floats(B, T, 1)   # a team's h2
        x, h0 = inputs(T, B, 48, seed=B + threads)
        c0 = h0[:, :1] * np.ones((1, 200), np.float32)
        h0 = np.tile(h0, (1, 5))[:, :200]
        one = run(weights, x, h0, c0, seq_lens=seq_lens, reverse=reverse)
        team = run(weights, x, h0, c0, seq_lens=seq_lens, reverse=reverse, threads=threads)
        assert same_bits(team, one), f"B={B} threads={threads} differs"


def test_runs_from_many_python_threads_at_once():
    """run() keeps its workspace per thread: concurrent calls must not disturb each other."""
    weights, _ = make("LSTM", 32, 48)
    xs = [inputs(6, 3, 32, seed=s)[0] for s in range(4)]
    want = [run(weights, x)[0] for x in xs]
    errors = []

    def worker(i):
        for _ in range(40):
            if not np.array_equal(run(weights, xs[i])[0], want[i]):
                errors.append(i)

    in_threads(worker, 4)
    assert not errors


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
@pytest.mark.parametrize("cell, lbr", [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)])
@pytest.mark.parametrize("simd", PATHS)
def test_single_row_calls_alternate_sweeps_without_changing_a_bit(precision, cell, lbr, simd):
    """Single-row products sweep the panels forward on one call and backward on the next (a
    cache hint kept in the weights).  A call must give the same bits whichever way it ran:
    the same call on fresh weights (first sweep forward) is the oracle.  H=200 makes 13 panels
    with a partial last one, and GRU without linear_before_reset splits the product at 2*hp."""
    I, H = 70, 200
    for T in (1, 3):
        shared, _ = make(cell, I, H, simd, precision, lbr=lbr)
        h0 = np.random.default_rng(5).uniform(-1, 1, (1, H)).astype(np.float32)
        for call in range(4):
            x, _ = inputs(T, 1, I, seed=10 + call)
            fresh, _ = make(cell, I, H, simd, precision, lbr=lbr)
            got = run(shared, x, h0=h0, c0=h0)
            want = run(fresh, x, h0=h0, c0=h0)
            for a, b in zip(got, want):
                if a is not None:
                    assert np.array_equal(a, b), f"T={T}, call {call} differs from a fresh first call"


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_runner_streams_like_a_whole_run(cell):
    weights, _ = make(cell, 24, 40)
    x, _ = inputs(12, 2, 24)
    want_y, want_h, want_c = run(weights, x)
    runner = weights.runner(batch=2, steps=3)
    ys = []
    for k in range(4):
        np.copyto(runner.x, x[3 * k:3 * k + 3])
        runner.run()
        ys.append(runner.y.copy())
    np.testing.assert_array_equal(np.concatenate(ys), want_y)
    np.testing.assert_array_equal(runner.h, want_h)
    if cell == "LSTM":
        np.testing.assert_array_equal(runner.c, want_c)
    runner.reset()
    np.copyto(runner.x, x[:3])
    runner.run()
    np.testing.assert_array_equal(runner.y, want_y[:3])


# ---- reduced precision: exact semantics against numpy emulations ----------------------

def affine_rnn(I, H, simd, precision, seed=0):
    """h_t = x_t W^T + h_{t-1} R^T + Wb + Rb: the products are seen directly."""
    rng = np.random.default_rng(seed)
    spec = CellSpec("RNN", I, H, (Activation("affine", 1.0, 0.0),))
    W = rng.uniform(-0.5, 0.5, (H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (H, H)).astype(np.float32)
    B = rng.uniform(-0.5, 0.5, 2 * H).astype(np.float32)
    return CellWeights(spec, simd, precision).pack(W, R, B), (W, R, B)


def to_bf16(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def quant_rows(a):
    """symmetric int8 per row, as csrc/lstmrt.c lrt_quantize_row / pack_matrix"""
    a = np.asarray(a, np.float32)
    amax = np.abs(a).max(axis=-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(a * inv), -127, 127).astype(np.int64)
    return q, (amax / np.float32(127)).astype(np.float32)


def int8_product(a, W):
    """a [M, K] @ W[N, K]^T in lstmrt's int8 semantics, float32 like the kernel"""
    qa, sa = quant_rows(a)
    qw, sw = quant_rows(W)
    acc = (qa @ qw.T).astype(np.float32)
    return acc * sa * sw[:, 0][None, :]


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("I, H", [(37, 37), (300, 80), (3, 16)])
def test_int8_matches_its_numpy_emulation_exactly_on_one_step(simd, I, H):
    weights, (W, R, Bias) = affine_rnn(I, H, simd, "int8")
    x, h0 = inputs(1, 5, I)
    h0 = np.random.default_rng(3).uniform(-1, 1, (5, H)).astype(np.float32)
    y, h, _ = run(weights, x, h0=h0)
    bias = (Bias[:H] + Bias[H:]).astype(np.float32)
    want = (int8_product(x[0], W) + bias) + int8_product(h0, R)
    np.testing.assert_allclose(h, want, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("batch", [4, 9])   # 9 rows: the recurrent product widens bf16 blocks too
def test_bf16_matches_its_float64_emulation(simd, batch):
    weights, (W, R, Bias) = affine_rnn(70, 50, simd, "bf16")
    x, _ = inputs(3, batch, 70)
    y, h, _ = run(weights, x)
    Wb, Rb = to_bf16(W).astype(np.float64), to_bf16(R).astype(np.float64)
    hh = np.zeros((batch, 50))
    for t in range(3):
        hh = x[t].astype(np.float64) @ Wb.T + hh @ Rb.T + Bias[:50] + Bias[50:]
        np.testing.assert_allclose(y[t], hh, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_is_the_same_on_every_path(precision):
    """bf16: float32 sums in one order everywhere; int8: exact integer sums.  Paths differ
    only by the activations' last bits, so one step agrees to float32 rounding."""
    x, h0 = inputs(1, 7, 40)
    outs = {}
    for simd in PATHS:
        weights, _ = make("LSTM", 40, 40, simd, precision)
        outs[simd] = run(weights, x, h0=h0)
    for simd, got in outs.items():
        for a, b in zip(got, outs["scalar"]):
            np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)


# Stated bounds of reduced precision vs float32 (weights U(-0.3, 0.3), I = H = 64, T = 20,
# B = 4, inputs N(0,1)); benchmarks/RESULTS.md lists the measured figures.
BOUNDS = {"bf16": 2e-2, "int8": 8e-2}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_reduced_precision_error_vs_f32_is_bounded(precision, cell):
    x, _ = inputs(20, 4, 64)
    f32, _ = make(cell, 64, 64, precision="f32", scale=0.3)
    low, _ = make(cell, 64, 64, precision=precision, scale=0.3)
    assert low.packed_precision == precision and f32.packed_precision == "f32"
    err = np.abs(run(low, x)[0] - run(f32, x)[0]).max()
    assert 0 < err < BOUNDS[precision], f"{precision} {cell}: max abs error {err}"


def test_spec_precision_and_product_names():
    spec = CellSpec("GRU", 8, 8, (Activation("sigmoid"), Activation("tanh")), precision="bf16")
    w = CellWeights(spec).pack(np.zeros((24, 8), np.float32), np.zeros((24, 8), np.float32))
    assert w.packed_precision == "bf16" and w.product == "bf16-emulated"
    w8, _ = make("GRU", 8, 8, "scalar", "int8")
    assert w8.product == "int8-ref"
    if "avx512" in PATHS:
        assert make("GRU", 8, 8, "avx512", "int8")[0].product in ("int8-vnni", "int8-ref")
    with pytest.raises(ValueError, match="precision"):
        make("GRU", 8, 8, None, "fp16")


def test_int8_non_finite_input_gives_nan_not_garbage():
    weights, _ = affine_rnn(16, 16, None, "int8")
    x, _ = inputs(1, 2, 16)
    x[0, 1, 3] = np.inf
    y, _, _ = run(weights, x)
    assert np.isnan(y[0, 1]).all() and np.isfinite(y[0, 0]).all()


# ---- C size checks of the new fields ------------------------------------------------------

def _create(precision=0, I=4, H=4, W=None):
    desc = ffi.new("lrt_cell_desc *", {"cell": lib.LRT_RNN, "input_size": I, "hidden_size": H,
                                        "precision": precision})
    W = np.ones(H * I, np.float32) if W is None else W
    R = np.ones(H * H, np.float32)
    out = ffi.new("lrt_weights **")
    st = lib.lrt_weights_create(desc, ffi.from_buffer("float[]", W), W.size, ffi.from_buffer("float[]", R), R.size,
                                ffi.NULL, 0, ffi.NULL, 0, out)
    if st == lib.LRT_OK:
        lib.lrt_weights_free(out[0])
    return st


def test_c_checks_precision_field():
    assert _create(lib.LRT_PREC_INT8) == lib.LRT_OK
    assert _create(3) == lib.LRT_E_ARG
    assert _create(-1) == lib.LRT_E_ARG
    # int8 sums are int32: longer dot products than 65536 are refused, not overflowed
    assert _create(lib.LRT_PREC_INT8, I=65537, H=1) == lib.LRT_E_ARG
    bad = np.ones(16, np.float32)
    bad[5] = np.inf
    assert _create(lib.LRT_PREC_INT8, W=bad) == lib.LRT_E_ARG   # no int8 form of inf
    assert _create(lib.LRT_PREC_F32, W=bad) == lib.LRT_OK


@pytest.mark.parametrize("precision", ["f32", "int8"])
def test_c_checks_threads_and_threaded_workspace(precision):
    weights, _ = make("RNN", 8, 8, None, precision)
    B, T = 4, 2
    x, h = np.zeros((T, B, 8), np.float32), np.zeros((B, 8), np.float32)
    n1 = lib.lrt_workspace_floats_threads(weights._handle, B, T, 1)
    n4 = lib.lrt_workspace_floats_threads(weights._handle, B, T, 4)
    assert n1 == lib.lrt_workspace_floats(weights._handle, B, T)
    assert (n4 > n1) if precision == "int8" else (n4 == n1)   # int8 scratch is per thread
    SIZE_MAX = ffi.cast("size_t", -1)
    assert lib.lrt_workspace_floats_threads(weights._handle, B, T, -1) == SIZE_MAX
    assert lib.lrt_workspace_floats_threads(weights._handle, B, T, lib.LRT_MAX_THREADS + 1) == SIZE_MAX
    ws = np.zeros(n4, np.float32)
    keep = [ffi.from_buffer("float[]", a) for a in (x, h, ws)]
    a = ffi.new("lrt_run_args *", {"batch": B, "steps": T, "x": keep[0], "x_len": x.size, "h": keep[1],
                                    "h_len": h.size, "workspace": keep[2], "workspace_len": n1})
    assert lib.lrt_run(weights._handle, a) == lib.LRT_OK
    for bad in (-1, lib.LRT_MAX_THREADS + 1):
        a.threads = bad
        assert lib.lrt_run(weights._handle, a) == lib.LRT_E_ARG
    a.threads = 4
    if precision == "int8":
        assert lib.lrt_run(weights._handle, a) == lib.LRT_E_WORKSPACE
    a.workspace_len = n4
    assert lib.lrt_run(weights._handle, a) == lib.LRT_OK
    with pytest.raises(ValueError, match="threads"):
        weights.run(x, h, threads=-2)
