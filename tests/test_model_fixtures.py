"""Whole models shaped like what people ship (tests/fixtures/models/: a VAD-shaped torch
model with a Conv front-end, an If on the sample rate and an LSTM cell written out; a
keyword-spotting GRU; a Keras embedding -> masked LSTM through tf2onnx) run on both backends
and match onnxruntime run directly: whole at two shapes, and streamed in uneven chunks
against onnxruntime with the state carried by hand."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import lstmrt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODELS = sorted(MANIFEST)
STREAMABLE = sorted(name for name in MODELS if MANIFEST[name]["state_pairs"])
BACKENDS = ["native", "onnxruntime"]
TOL = 1e-4


def value_choices(meta: dict) -> list:
    """Every combination to try of the inputs fed a fixed value (the VAD's sample rate)."""
    fixed = {n: s["values"] for n, s in meta["inputs"].items() if s["kind"] == "value"}
    if not fixed:
        return [{}]
    (name, values), = fixed.items()   # the fixtures have at most one such input
    return [{name: v} for v in values]


def random_input(spec: dict, sizes: dict, rng) -> np.ndarray:
    shape = [sizes[d] if isinstance(d, str) else d for d in spec["dims"]]
    if spec["kind"] == "tokens":   # ids, about one in five the padding id 0 that the mask skips
        ids = rng.integers(1, spec["high"], shape)
        ids[rng.random(shape) < 0.2] = 0
        return ids.astype(spec["dtype"])
    scale = {"audio": 0.3, "state": 0.5}.get(spec["kind"], 1.0)
    return (scale * rng.standard_normal(shape)).astype(spec["dtype"])


def make_feed(meta: dict, sizes: dict, values: dict, rng, skip=()) -> dict:
    feed = {}
    for name, spec in meta["inputs"].items():
        if name in skip:
            continue
        if spec["kind"] == "value":
            feed[name] = np.array(values[name], dtype=spec["dtype"])
        else:
            feed[name] = random_input(spec, sizes, rng)
    return feed


def ort_session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(FIXTURES / name), providers=["CPUExecutionProvider"])


def assert_close(got, want, what: str):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    assert err <= TOL, f"{what}: max abs error {err:.3e} > {TOL}"


def test_manifest_matches_the_files():
    """The manifest describes exactly the .onnx files present, and each is small with an IR
    version onnxruntime-gpu accepts."""
    assert sorted(p.name for p in FIXTURES.glob("*.onnx")) == MODELS
    for name, meta in MANIFEST.items():
        assert (FIXTURES / name).stat().st_size == meta["size_bytes"] < 1.5 * 2 ** 20
        assert 8 <= meta["ir_version"] <= 10
        outputs = [o.name for o in ort_session(name).get_outputs()]
        assert set(meta["state_pairs"].values()) <= set(outputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("name", MODELS)
def test_whole_model_matches_onnxruntime(name, shape, backend):
    meta = MANIFEST[name]
    sizes = meta["test_shapes"][shape]
    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend=backend)
    assert sess.backend == backend
    ref = ort_session(name)
    names = [o.name for o in ref.get_outputs()]
    assert [o.name for o in sess.get_outputs()] == names
    rng = np.random.default_rng(7 + shape)
    for values in value_choices(meta):
        feed = make_feed(meta, sizes, values, rng)
        got, want = sess.run(None, feed), ref.run(None, feed)
        assert len(got) == len(want)
        for out, g, w in zip(names, got, want):
            assert_close(np.asarray(g), w, f"{name} {backend} {sizes} {values} output '{out}'")


def stream_with_onnxruntime(ref, chunks, state: dict, pairs: dict) -> tuple:
    """Runs `chunks` one after the other, feeding each call's state outputs back in by hand;
    returns ({output: [per-chunk arrays]}, final state)."""
    names = [o.name for o in ref.get_outputs()]
    outs = {n: [] for n in names if n not in pairs.values()}
    for chunk in chunks:
        results = dict(zip(names, ref.run(None, {**chunk, **state})))
        for n in outs:
            outs[n].append(results[n])
        state = {inp: results[out] for inp, out in pairs.items()}
    return outs, state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", ["zeros", "given"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", STREAMABLE)
def test_streamed_in_uneven_chunks_matches_onnxruntime_carried_by_hand(name, batch, start, backend):
    meta = MANIFEST[name]
    pairs = meta["state_pairs"]
    (axis_name, axis), = meta["stream_axis"].items()
    dim = meta["inputs"][axis_name]["dims"][axis]
    rng = np.random.default_rng(batch)
    values = value_choices(meta)[0]
    chunks = [make_feed(meta, {"batch": batch, dim: n}, values, rng, skip=pairs)
              for n in meta["test_stream_chunks"]]
    sizes = {"batch": batch, dim: meta["stream_chunk"]}
    first = {s: random_input(meta["inputs"][s], sizes, rng) if start == "given"
             else np.zeros([sizes.get(d, d) for d in meta["inputs"][s]["dims"]], np.float32)
             for s in pairs}

    want, want_state = stream_with_onnxruntime(ort_session(name), chunks, first, pairs)

    sess = lstmrt.InferenceSession(str(FIXTURES / name), backend=backend)
    assert sess.backend == backend
    stream = sess.stream(state=pairs)
    if start == "given":
        stream.set_state(first)
    got = {n: [] for n in want}
    for chunk in chunks:
        for n, value in zip(want, stream.run(chunk)):
            got[n].append(np.asarray(value))
    label = f"{name} {backend} batch {batch} chunks {meta['test_stream_chunks']}"
    for n, out_axis in meta["stream_output_axis"].items():
        assert_close(np.concatenate(got[n], axis=out_axis), np.concatenate(want[n], axis=out_axis),
                     f"{label}: streamed output '{n}'")
    for n in want:   # outputs not concatenated along a stream axis are compared chunk by chunk
        for i, (g, w) in enumerate(zip(got[n], want[n])):
            assert_close(g, w, f"{label}: chunk {i} output '{n}'")
    final = stream.state
    for s in pairs:
        assert_close(final[s], want_state[s], f"{label}: final state '{s}'")
