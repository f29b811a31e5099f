"""Property-based sweep of single LSTM/GRU/RNN nodes against onnxruntime (and onnx.reference).

Every drawn model runs on lstmrt's native backend in its own layout; onnxruntime runs the
layout-0 twin (it refuses layout=1 recurrent nodes), with inputs/outputs transposed here.
onnx.reference.ReferenceEvaluator is a second oracle where it applies: it ignores
sequence_lens, activations, clip and input_forget, so it is used only when those are default.
Each SIMD path is also checked against the scalar path on the same models.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, event, given, settings, target
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import lstmrt
from onnx_cases import (
    ACT_SLOTS,
    ACTIVATIONS,
    CELLS,
    TAKES_ALPHA_BETA,
    RecurrentSpec,
    feed_to_layout,
    make_recurrent_model,
    numpy_reference,
    outputs_to_layout,
    random_weights,
)

ATOL = 1e-5
RTOL = 1e-5
SIMD_PATHS = list(lstmrt.available_simd_paths())

# ranges for the alpha / beta an activation consumes: kept moderate so values stay O(1)-ish
_ALPHA_RANGE = {"Affine": (-1.5, 1.5), "LeakyRelu": (0.0, 1.0), "ThresholdedRelu": (-0.5, 1.0),
                "ScaledTanh": (0.1, 2.0), "HardSigmoid": (0.05, 1.0), "Elu": (0.1, 2.0)}
_BETA_RANGE = {"Affine": (-1.0, 1.0), "ScaledTanh": (0.1, 2.0), "HardSigmoid": (0.0, 1.0)}


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Example:
    spec: RecurrentSpec
    batch: int
    steps: int
    seq_lens: list | None
    seed: int

    def build(self):
        rng = np.random.default_rng(self.seed)
        weights = random_weights(self.spec, rng)
        # keep the recurrence from blowing up with wide hidden states: R ~ U(-s, s), s <= 0.5
        s = min(0.5, 1.5 / np.sqrt(self.spec.hidden_size))
        weights["R"] = (weights["R"] * (s / 0.5)).astype(np.float32)
        feed = {"X": rng.uniform(-1, 1, (self.steps, self.batch, self.spec.input_size)).astype(np.float32)}
        D, H = self.spec.num_directions, self.spec.hidden_size
        if self.spec.has_seq_lens:
            feed["sequence_lens"] = np.asarray(self.seq_lens, dtype=np.int32)
        if self.spec.has_initial_h:
            feed["initial_h"] = rng.uniform(-1, 1, (D, self.batch, H)).astype(np.float32)
        if self.spec.has_initial_c:
            feed["initial_c"] = rng.uniform(-1, 1, (D, self.batch, H)).astype(np.float32)
        return weights, feed_to_layout(feed, self.spec.layout)


def _float(lo, hi):
    # values as float32 will store them in the attribute, so every runtime sees the same number
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda v: float(np.float32(v)))


@st.composite
def activation_attrs(draw, cell: str, num_directions: int):
    """(activations, activation_alpha, activation_beta), each possibly None (attribute absent)."""
    if draw(st.booleans()):
        return None, None, None
    names = tuple(draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=ACT_SLOTS[cell] * num_directions,
                                max_size=ACT_SLOTS[cell] * num_directions)))
    alphas = [draw(_float(*_ALPHA_RANGE[n])) for n in names if TAKES_ALPHA_BETA.get(n, (False, False))[0]]
    betas = [draw(_float(*_BETA_RANGE[n])) for n in names if TAKES_ALPHA_BETA.get(n, (False, False))[1]]
    # absent, truncated (later activations take their defaults) or complete lists
    alpha_mode = draw(st.sampled_from(["absent", "truncated", "complete"]))
    beta_mode = draw(st.sampled_from(["absent", "truncated", "complete"]))

    def shape(values, mode):
        if mode == "absent":
            return None
        if mode == "truncated":
            return tuple(values[:draw(st.integers(0, len(values)))])
        return tuple(values)

    return names, shape(alphas, alpha_mode), shape(betas, beta_mode)


@st.composite
def examples(draw, cells=CELLS, default_semantics=False):
    """A random example; default_semantics: only what onnx.reference honours (no activations,
    alpha/beta, clip, input_forget; sequence_lens, if present, all equal to T)."""
    cell = draw(st.sampled_from(cells))
    size = st.one_of(st.integers(1, 40), st.sampled_from([47, 48, 63, 64, 65]))
    input_size = draw(size)
    hidden_size = draw(size)
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    D = 2 if direction == "bidirectional" else 1
    layout = draw(st.sampled_from([0, 1]))
    batch = draw(st.integers(1, 5))
    steps = draw(st.integers(1, 9))
    has_seq_lens = draw(st.booleans())
    lens = st.just(steps) if default_semantics else st.integers(1, steps)
    seq_lens = draw(st.lists(lens, min_size=batch, max_size=batch)) if has_seq_lens else None
    acts, alpha, beta = (None, None, None) if default_semantics else draw(activation_attrs(cell, D))
    n_out = 3 if cell == "LSTM" else 2
    mask = draw(st.integers(1, 2**n_out - 1))  # a non-empty subset of the outputs
    outputs = [bool(mask & (1 << k)) for k in range(n_out)]
    spec = RecurrentSpec(
        cell=cell, input_size=input_size, hidden_size=hidden_size, direction=direction, layout=layout,
        has_bias=draw(st.booleans()),
        has_peepholes=cell == "LSTM" and draw(st.booleans()),
        has_seq_lens=has_seq_lens,
        has_initial_h=draw(st.booleans()),
        has_initial_c=cell == "LSTM" and draw(st.booleans()),
        outputs=tuple(outputs) + (False,) * (3 - n_out),
        activations=acts, activation_alpha=alpha, activation_beta=beta,
        clip=None if default_semantics else draw(st.one_of(st.none(), _float(0.1, 5.0))),
        input_forget=draw(st.sampled_from([None, 0] if default_semantics else [None, 0, 1]))
        if cell == "LSTM" else None,
        linear_before_reset=draw(st.sampled_from([None, 0, 1])) if cell == "GRU" else None,
    )
    return Example(spec, batch, steps, seq_lens, draw(st.integers(0, 2**32 - 1)))


# ---------------------------------------------------------------------------
# runners and comparison
# ---------------------------------------------------------------------------

def run_lstmrt(spec, weights, feed, simd=None):
    sess = lstmrt.InferenceSession(make_recurrent_model(spec, weights), backend="native", simd=simd)
    return sess.run(None, feed)


def run_onnxruntime(spec, weights, feed):
    """onnxruntime on the layout-0 twin; outputs converted back to spec.layout."""
    twin = make_recurrent_model(spec.with_layout(0), weights)
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(spec.output_names, feed_to_layout(feed, 0, from_layout=spec.layout))
    return outputs_to_layout(spec.output_names, outs, spec.layout, from_layout=0)


def run_reference(spec, weights, feed):
    from onnx.reference import ReferenceEvaluator

    twin = make_recurrent_model(spec.with_layout(0), weights)
    outs = ReferenceEvaluator(twin).run(None, feed_to_layout(feed, 0, from_layout=spec.layout))
    return outputs_to_layout(spec.output_names, outs, spec.layout, from_layout=0)


def reference_applies(ex: Example) -> bool:
    # onnx.reference ignores sequence_lens, activations, clip and input_forget; its RNN also
    # insists that activation_alpha/beta (if present) have one value per direction
    full_length = not ex.spec.has_seq_lens or all(n == ex.steps for n in ex.seq_lens)
    no_alpha_beta = ex.spec.activation_alpha is None and ex.spec.activation_beta is None
    return full_length and no_alpha_beta and ex.spec.uses_default_semantics()


# Unbounded activations (Relu, Affine, Softplus, LeakyRelu... as gates) can make the state grow
# without limit; float32 rounding then grows with it.  Examples whose state (|h|, |c| at any step,
# per a float64 numpy reference) exceeds MAX_PEAK are discarded; below it the absolute tolerance
# is ATOL * max(1, peak): 1e-5 for the usual O(1) states, relative for ones that grew.
# Some drawn models are also ill-conditioned (e.g. a GRU whose update gate is Elu): a relative
# perturbation of 1e-6 in the weights -- the size of the error of a fast tanh/exp, or of a
# different summation order -- moves their outputs by more than the tolerance.  Such examples
# say nothing about correctness and are discarded too: the float64 numpy reference is run on
# weights perturbed by PERTURBATION, and the example kept only if its outputs moved by less
# than MAX_SENSITIVITY of the tolerance.
MAX_PEAK = 1e3
PERTURBATION = 1e-6
MAX_SENSITIVITY = 0.5


def conditioning(ex: Example, weights, feed) -> tuple:
    """(peak |state|, max output change under a PERTURBATION-relative change of the weights)."""
    outs, peak = numpy_reference(ex.spec, weights, feed, return_peak=True)
    if not np.isfinite(peak):
        return peak, float("inf")
    rng = np.random.default_rng(ex.seed ^ 0x5EED)
    perturbed = {k: (v.astype(np.float64) * (1 + PERTURBATION * rng.choice([-1.0, 1.0], v.shape)))
                 for k, v in weights.items()}
    outs2 = numpy_reference(ex.spec, perturbed, feed)
    with np.errstate(invalid="ignore"):   # inf - inf in a runaway perturbed run: NaN, which discards it
        moved = [np.max(np.abs(a.astype(np.float64) - b)) for a, b in zip(outs, outs2) if a.size]
    return peak, float(np.max(moved)) if moved else 0.0


def state_peak(ex: Example, weights, feed) -> float:
    """The example's peak |state|; discards (assume) runaway or ill-conditioned examples."""
    peak, moved = conditioning(ex, weights, feed)
    ok = np.isfinite(peak) and peak < MAX_PEAK and moved < MAX_SENSITIVITY * ATOL * max(1.0, peak)
    if currently_in_test_context():
        assume(ok)
        target(min(peak, MAX_PEAK), label="state peak")
    else:
        assert ok, f"fixed example is not a usable test: state peak {peak}, sensitivity {moved}"
    return peak


def assert_outputs_close(ex: Example, got: list, expected: list, what: str, peak: float = 1.0,
                         weights=None, feed=None):
    atol = ATOL * max(1.0, peak)
    names = ex.spec.output_names
    assert len(got) == len(expected) == len(names), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape, f"{what}: {name} has shape {g.shape}, expected {e.shape}\n{ex}"
        assert g.dtype == np.float32, f"{what}: {name} has dtype {g.dtype}"
        if not np.allclose(g, e, rtol=RTOL, atol=atol):
            detail = ""
            if weights is not None:  # say which side the spec-following numpy reference agrees with
                ref = numpy_reference(ex.spec, weights, feed)[names.index(name)]
                detail = (f"\n  max|got-numpy_ref|={np.max(np.abs(g - ref)):.3g}"
                          f"  max|expected-numpy_ref|={np.max(np.abs(e - ref)):.3g}")
            err = np.abs(g - e)
            idx = np.unravel_index(np.argmax(err), err.shape)
            raise AssertionError(f"{what}: {name} differs: max abs err {err.max():.3g} at {idx} "
                                 f"(got {g[idx]}, expected {e[idx]}; atol {atol:.3g}){detail}\n{ex}")


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------
# the sweeps
# ---------------------------------------------------------------------------

def onnxruntime_diverges(spec) -> bool:
    """Found by this sweep (onnxruntime 1.31): a bidirectional LSTM with peepholes and clip that
    gates through Softplus grows one direction's cell state apart from the spec after some steps,
    while that direction run alone agrees.  Seen with Softplus as the reverse direction's f (Y_c
    7.08 where the float64 model, and lstmrt, give 89.1) and as the forward direction's h beside
    an Affine f (Y_c 4.59 against 0.09 at step 8; equal up to step 7).  Such examples are held to
    the float64 model instead."""
    return spec.cell == "LSTM" and spec.direction == "bidirectional" and spec.has_peepholes and \
        spec.clip is not None and "Softplus" in (spec.activations or ())


def check_against_oracles(ex: Example):
    weights, feed = ex.build()
    peak = state_peak(ex, weights, feed)
    got = run_lstmrt(ex.spec, weights, feed)
    expected = run_onnxruntime(ex.spec, weights, feed)
    if not all(np.isfinite(e).all() for e in expected):
        # onnxruntime itself overflowed (seen: Softplus gates in onnxruntime-gpu 1.31) on an example
        # whose float64 spec reference stays bounded: that reference is the oracle here
        event("onnxruntime overflowed; checked against the float64 reference")
        expected = [r.astype(np.float32) for r in numpy_reference(ex.spec, weights, feed)]
    elif onnxruntime_diverges(ex.spec):
        event("onnxruntime's bidirectional Softplus gates diverge; checked against the float64 reference")
        expected = [r.astype(np.float32) for r in numpy_reference(ex.spec, weights, feed)]
    assert_outputs_close(ex, got, expected, "lstmrt vs onnxruntime", peak, weights, feed)
    if reference_applies(ex):
        event("also checked against onnx.reference")
        ref = run_reference(ex.spec, weights, feed)
        assert_outputs_close(ex, got, ref, "lstmrt vs onnx.reference", peak, weights, feed)


def check_simd_paths(ex: Example):
    weights, feed = ex.build()
    peak = state_peak(ex, weights, feed)
    scalar = run_lstmrt(ex.spec, weights, feed, simd="scalar")
    for simd in SIMD_PATHS:
        if simd != "scalar":
            got = run_lstmrt(ex.spec, weights, feed, simd=simd)
            assert_outputs_close(ex, got, scalar, f"simd={simd} vs scalar", peak)


@settings(max_examples=150, **SETTINGS)
@given(examples())
def test_sweep_vs_onnxruntime(ex):
    check_against_oracles(ex)


@settings(max_examples=100, **SETTINGS)
@given(examples(default_semantics=True))
def test_sweep_default_semantics_vs_onnxruntime_and_reference(ex):
    assert reference_applies(ex)
    check_against_oracles(ex)


@settings(max_examples=150, **SETTINGS)
@given(examples())
def test_sweep_simd_paths_agree_with_scalar(ex):
    check_simd_paths(ex)


@pytest.mark.slow
@settings(max_examples=3000, **SETTINGS)
@given(examples())
def test_sweep_vs_onnxruntime_slow(ex):
    check_against_oracles(ex)


@pytest.mark.slow
@settings(max_examples=1000, **SETTINGS)
@given(examples(default_semantics=True))
def test_sweep_default_semantics_slow(ex):
    check_against_oracles(ex)


@pytest.mark.slow
@settings(max_examples=1500, **SETTINGS)
@given(examples())
def test_sweep_simd_paths_agree_with_scalar_slow(ex):
    check_simd_paths(ex)


# a few fixed, hand-picked examples that always run (hypothesis may not hit them every time)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_everything_on(cell, layout, direction):
    D = 2 if direction == "bidirectional" else 1
    acts = {"LSTM": ("HardSigmoid", "ScaledTanh", "LeakyRelu"), "GRU": ("Sigmoid", "Affine"),
            "RNN": ("Elu",)}[cell] * D
    spec = RecurrentSpec(cell, input_size=17, hidden_size=33, direction=direction, layout=layout,
                         has_peepholes=cell == "LSTM", has_seq_lens=True, has_initial_h=True,
                         has_initial_c=cell == "LSTM", activations=acts,
                         activation_alpha=(0.3, 0.9, 0.2, 0.4, 1.1, 0.05), activation_beta=(0.4, 0.8, 0.6, 0.9),
                         clip=2.5, input_forget=1 if cell == "LSTM" else None,
                         linear_before_reset=1 if cell == "GRU" else None)
    check_against_oracles(Example(spec, batch=4, steps=6, seq_lens=[6, 1, 3, 5], seed=7))
    check_simd_paths(Example(spec, batch=4, steps=6, seq_lens=[6, 1, 3, 5], seed=7))
