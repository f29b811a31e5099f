"""The streaming hot path (one recurrent node wired to the graph's inputs and outputs) gives
what the general path gives, and keeps the stream API's state semantics."""
import numpy as np
import pytest

import lstmrt
from models import bare_cell


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_fast_path_equals_general_path_and_onnxruntime(cell):
    model = bare_cell(cell)
    native = lstmrt.InferenceSession(model, backend="native")
    fast, general = native.stream(), native.stream()
    assert fast._fast is not None
    general._fast = None                       # the same stream, forced down the general path
    reference = lstmrt.InferenceSession(model, backend="onnxruntime").stream()
    x = np.random.default_rng(1).standard_normal((23, 3, 10)).astype(np.float32)
    for a, b in [(0, 1), (1, 5), (5, 6), (6, 23)]:
        chunk = x[a:b]
        got, want, ref = fast.run({"X": chunk})[0], general.run({"X": chunk})[0], reference.run({"X": chunk})[0]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    for name in fast.pairs:
        np.testing.assert_array_equal(fast.state[name], general.state[name])


def test_fast_path_state_api():
    sess = lstmrt.InferenceSession(bare_cell("LSTM"), backend="native")
    stream = sess.stream()
    x = np.random.default_rng(2).standard_normal((4, 2, 10)).astype(np.float32)
    first = stream.run({"X": x})[0]
    saved = stream.state
    second = stream.run({"X": x})[0]
    assert not np.allclose(first, second)
    stream.state["h0"][:] = 99                 # .state is a copy: changing it changes nothing
    stream.reset()
    np.testing.assert_array_equal(stream.run({"X": x})[0], first)
    stream.set_state(saved)
    np.testing.assert_array_equal(stream.run({"X": x})[0], second)
    stream.set_state({k: np.zeros_like(v) for k, v in saved.items()})   # zeros: back to the start
    np.testing.assert_array_equal(stream.run({"X": x})[0], first)
    stream.set_state(saved)
    np.testing.assert_array_equal(stream.run({"X": x, "h0": saved["h0"]})[0], second)   # general path, same state
    with pytest.raises(lstmrt.StreamError, match="batch"):
        stream.run({"X": x[:, :1]})            # a batch change needs reset() or set_state()
    stream.reset()
    assert stream.run({"X": x[:, :1]})[0].shape == (4, 1, 1, 24)


def test_fast_path_without_y_and_bad_input_gets_the_usual_errors():
    sess = lstmrt.InferenceSession(bare_cell("GRU", with_y=False), backend="native")
    stream = sess.stream()
    assert stream._fast is not None
    assert stream.run({"X": np.zeros((3, 2, 10), np.float32)}) == []
    assert stream.state["h0"].shape == (1, 2, 24)
    with pytest.raises(lstmrt.InputError, match="dtype float64"):
        stream.run({"X": np.zeros((3, 2, 10))})
    with pytest.raises(lstmrt.InputError, match="dimension 2 must be 10"):
        stream.run({"X": np.zeros((3, 2, 9), np.float32)})


def test_models_with_glue_take_the_general_path():
    from models import streaming_model
    assert lstmrt.InferenceSession(streaming_model("LSTM"), backend="native").stream()._fast is None
    assert lstmrt.InferenceSession(bare_cell("LSTM"), backend="onnxruntime").stream()._fast is None


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_run_fast_path_equals_general_path_and_onnxruntime(cell):
    model = bare_cell(cell)
    fast = lstmrt.InferenceSession(model, backend="native")
    general = lstmrt.InferenceSession(model, backend="native")
    assert fast._fast_run is not None
    general._fast_run = None
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    rng = np.random.default_rng(3)
    feed = {i.name: rng.standard_normal([{"T": 6, "B": 3}.get(d, d) for d in i.shape]).astype(np.float32)
            for i in fast.get_inputs()}
    before = {k: v.copy() for k, v in feed.items()}
    got, want, ref = fast.run(None, feed), general.run(None, feed), reference.run(None, feed)
    for g, w, r in zip(got, want, ref):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(g, r, atol=1e-5)
    for k in feed:
        np.testing.assert_array_equal(feed[k], before[k])       # the caller's arrays are left alone
    names = [o.name for o in fast.get_outputs()][::-1]
    for g, w in zip(fast.run(names, feed), general.run(names, feed)):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(lstmrt.InputError, match="dimension 2 must be 10"):
        fast.run(None, {**feed, "X": feed["X"][:, :, :9].copy()})


def test_run_fast_path_is_thread_safe():
    import threading
    sess = lstmrt.InferenceSession(bare_cell("LSTM", hidden=48, inputs=16), backend="native")
    rng = np.random.default_rng(4)
    feeds = [{"X": rng.standard_normal((5, 2, 16)).astype(np.float32),
              "h0": rng.standard_normal((1, 2, 48)).astype(np.float32),
              "c0": rng.standard_normal((1, 2, 48)).astype(np.float32)} for _ in range(2)]
    expected = [sess.run(None, f) for f in feeds]
    results = [[], []]

    def work(i):
        for _ in range(300):
            results[i].append(sess.run(None, feeds[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for outs in results[i]:
            for g, w in zip(outs, expected[i]):
                np.testing.assert_array_equal(g, w)


def test_fast_paths_copy_strided_arrays_correctly_and_refuse_foreign_dtypes():
    """The hot paths copy contiguous arrays raw: a strided view must give what its contiguous
    copy gives, and a big-endian float32 array is converted (by the general path), never copied raw."""
    model = bare_cell("LSTM")
    sess = lstmrt.InferenceSession(model, backend="native")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 20)).astype(np.float32)[:, :, ::2]
    h0 = rng.standard_normal((1, 2, 48)).astype(np.float32)[:, :, ::2]
    c0 = rng.standard_normal((1, 2, 24)).astype(np.float32)
    assert not x.flags.c_contiguous and not h0.flags.c_contiguous
    plain = {"X": np.ascontiguousarray(x), "h0": np.ascontiguousarray(h0), "c0": c0}
    want = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, plain)
    for g, w in zip(sess.run(None, {"X": x, "h0": h0, "c0": c0}), want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    for g, w in zip(sess.run(None, {**plain, "c0": c0.astype(">f4")}), sess.run(None, plain)):
        np.testing.assert_array_equal(g, w)
    stream, reference = sess.stream(), sess.stream()
    for chunk in (x[:2], np.asfortranarray(x[2:])):     # strided, then Fortran-ordered
        np.testing.assert_array_equal(stream.run({"X": chunk})[0], reference.run({"X": np.ascontiguousarray(chunk)})[0])
    np.testing.assert_array_equal(stream.run({"X": x.astype(">f4")})[0],
                                  reference.run({"X": np.ascontiguousarray(x)})[0])


@pytest.mark.parametrize("spec_kwargs", [
    dict(cell="LSTM", has_initial_h=True, has_initial_c=True, has_peepholes=True),
    dict(cell="LSTM", outputs=(False, True, True)),          # no Y; states from zeros
    dict(cell="GRU", direction="reverse", has_initial_h=True, linear_before_reset=1),
    dict(cell="RNN", clip=0.7),
])
def test_small_calls_on_cached_runners_equal_the_direct_call(monkeypatch, spec_kwargs):
    """A recurrent node's small calls run on runners kept per shape; they must give the bits the
    direct kernel call gives, call after call, whatever state the runner held before."""
    from onnx_cases import RecurrentSpec, make_recurrent_model, random_feed, random_weights
    import lstmrt.ops.recurrent as recurrent
    spec = RecurrentSpec(input_size=7, hidden_size=12, **spec_kwargs)
    rng = np.random.default_rng(11)
    model = make_recurrent_model(spec, random_weights(spec, rng))
    cached = lstmrt.InferenceSession(model, backend="native")
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    feeds = [random_feed(spec, batch=b, steps=t, rng=rng) for b, t in ((2, 5), (3, 1), (2, 5), (2, 5))]
    got = [cached.run(None, f) for f in feeds]
    monkeypatch.setattr(recurrent, "RUNNER_FLOATS", 0)       # every call on the direct path
    direct = lstmrt.InferenceSession(model, backend="native")
    for feed, outs in zip(feeds, got):
        for g, d, r in zip(outs, direct.run(None, feed), reference.run(None, feed)):
            np.testing.assert_array_equal(g, d)
            np.testing.assert_allclose(g, r, atol=1e-5)
