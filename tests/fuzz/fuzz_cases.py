"""The fuzz cases of tests/fuzz, and the worker process that runs a batch of them.

    python tests/fuzz/fuzz_cases.py KIND SEED START COUNT

runs cases START..START+COUNT-1 of KIND, each from its own random generator seeded by
(SEED, KIND, index), and prints "ok I" or "fail I <why>" per case, then "done".  A case that
kills the process (a crash, an abort) or hangs is the one after the last line printed:
test_fuzz.py runs each batch in its own process and reports it with the command above.

Kinds (each a real oracle, not just "did not crash"):
  model   mutated models (byte flips, truncation, attributes, initializers, dims, wiring):
          loading and running raise only LstmrtError; where native and onnxruntime both run
          it, they agree.
  feed    bad feeds (names, dtypes, ranks, zero/huge dims, scalars, lists, None) raise only
          InputError; equivalent feeds (strided, Fortran-order, read-only, big-endian) give
          bit-identical results; NaN/Inf in a feed: NaN wherever onnxruntime has NaN.
  stream  call sequences with failing calls mixed in: outputs and state bit-identical to a
          stream that saw only the good calls; stream groups of two, each member as its lone stream.
  threads streams of one session from threads, one stream shared by threads, failing calls in
          between: bit-identical to running them one after another.
  fork    a stream forked mid-sequence (after threads=2 calls too): on native, child and parent
          each finish it as an unforked stream does; on onnxruntime (which cannot run a session
          across fork) the child gets an LstmrtError; no child hangs.
  group   stream groups (native, compiled=False, threads=2, onnxruntime): members join (from zeros, a
          given or another member's state) and leave, each call steps a random subset in random
          order, chunks of a random length, some in odd layouts or with NaN/Inf: every member as a
          lone onnxruntime stream fed its chunks (NaN as a lone stream of its own session); bad
          calls (dtypes, shapes, non-members, bad feeds and add() states) raise an LstmrtError
          and move no member's state; threads with members of their own leave idle ones unmoved.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import lstmrt  # noqa: E402
from forking import fork_once_threads_sleep  # noqa: E402
from models import bare_cell, streaming_model  # noqa: E402

KINDS = ("model", "feed", "stream", "threads", "fork", "group")
CELLS = ("LSTM", "GRU", "RNN")


class Wrong(Exception):
    """A case's oracle disagreed, or something other than an LstmrtError escaped."""


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind) if kind in KINDS else 99, index])


# -- models and feeds ---------------------------------------------------------------------------
def _base_models() -> list:
    models = [(f"stream-{c}", streaming_model(c)) for c in CELLS]
    models += [(f"bare-{c}", bare_cell(c, hidden=8, inputs=4)) for c in CELLS]
    models.append(("example", onnx.load(ROOT / "examples" / "bracket_depth.onnx")))
    # exporters' output: Transpose/Slice/Concat glue, bidirectional and two-layer cells, a tf2onnx Loop
    for name in ("torch_bilstm_seq", "torch_gru2_last", "paddle_lstm_seq", "keras_gru_loop"):
        models.append((name, onnx.load(ROOT / "tests" / "fixtures" / "exporters" / f"{name}.onnx")))
    return models


def _streams(model) -> bool:
    try:
        return bool(lstmrt.InferenceSession(model, backend="native").stream().pairs)
    except lstmrt.LstmrtError:
        return False


BASES = _base_models()
STREAMABLE = [(n, m) for n, m in BASES if _streams(m)]    # for the stream, threads, fork and group kinds


def _dims_for(info, batch: int, steps: int, rng) -> list:
    shape = []
    for axis, d in enumerate(info.shape or []):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(d, str) and d.lower() in ("t", "time", "seq", "steps"):
            shape.append(steps)
        else:
            shape.append(batch)
    return shape


def valid_feed(sess, rng, batch: int, steps: int, names=None) -> dict:
    """Random inputs shaped by the declared dims: named time dims get `steps`, others `batch`.
    The example and the streaming models put time on axis 1 ('time'); bare cells on axis 0 ('T')."""
    feed = {}
    for info in sess.get_inputs():
        if names is not None and info.name not in names:
            continue
        shape = _dims_for(info, batch, steps, rng)
        dtype = np.dtype(info.dtype) if _known_dtype(info) else np.dtype(np.float32)
        if np.prod(shape, dtype=float) * dtype.itemsize > 1 << 26:   # a mutated huge dim: a view, not memory
            feed[info.name] = np.broadcast_to(np.ones((), dtype), shape)
        elif dtype.kind == "f":
            feed[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[info.name] = np.full(shape, steps, dtype)
        else:
            feed[info.name] = np.ones(shape, dtype)
    return feed


def _known_dtype(info) -> bool:
    try:
        return info.dtype is not None
    except Exception:   # noqa: BLE001
        return False


def _same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) and x.dtype == y.dtype and x.shape == y.shape
               for x, y in zip(a, b)) and len(a) == len(b)


def _close(a, b) -> bool:
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-3, atol=1e-3, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def expect_lstmrt(fn, what: str):
    """fn(); an LstmrtError is a fine answer (returned), anything else escaping is Wrong."""
    try:
        return fn()
    except lstmrt.LstmrtError as e:
        return e
    except Exception as e:  # noqa: BLE001
        raise Wrong(f"{what}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}") from None


# -- kind: model ----------------------------------------------------------------------------------
def _mutate_bytes(data: bytes, rng) -> bytes:
    data = bytearray(data)
    if rng.random() < 0.3:
        return bytes(data[:int(rng.integers(0, len(data)))])          # truncation
    for _ in range(int(rng.integers(1, 9))):                           # byte flips
        data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
    return bytes(data)


WEIRD_INTS = [0, -1, 1, 2, 3, 7, 255, 1 << 16, 1 << 31, -(1 << 31), (1 << 62)]
WEIRD_FLOATS = [0.0, -1.0, 1e38, -1e-38, float("nan"), float("inf"), float("-inf")]


def _mutate_structure(model: onnx.ModelProto, rng) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    what = rng.integers(0, 7)
    if what == 0 and g.node:                          # an attribute: new value, other type, gone, garbage text
        node = g.node[int(rng.integers(0, len(g.node)))]
        choice = rng.integers(0, 4)
        if choice == 0 and node.attribute:
            del node.attribute[int(rng.integers(0, len(node.attribute)))]
        elif choice == 1:
            name = str(rng.choice(["hidden_size", "direction", "layout", "clip", "activations", "perm", "axis",
                                   "linear_before_reset", "input_forget", "keepdims", "to"]))
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept)
            value = {0: int(rng.choice(WEIRD_INTS)), 1: float(rng.choice(WEIRD_FLOATS)),
                     2: bytes(rng.integers(0, 256, int(rng.integers(0, 6))).astype(np.uint8)),
                     3: [int(v) for v in rng.choice(WEIRD_INTS, int(rng.integers(0, 4)))]}[int(rng.integers(0, 4))]
            node.attribute.append(helper.make_attribute(name, value) if value != [] else
                                  helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS))
        else:
            for a in node.attribute:
                if a.type == a.INT:
                    a.i = int(rng.choice(WEIRD_INTS))
                elif a.type == a.FLOAT:
                    a.f = float(rng.choice(WEIRD_FLOATS))
                elif a.type == a.INTS and len(a.ints):
                    a.ints[int(rng.integers(0, len(a.ints)))] = int(rng.choice(WEIRD_INTS))
    elif what == 1 and g.initializer:                 # an initializer: dims, type, data, values
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        choice = rng.integers(0, 4)
        if choice == 0 and len(t.dims):
            t.dims[int(rng.integers(0, len(t.dims)))] = int(rng.choice([0, 1, 2, 3, 5, 1 << 20, 1 << 40]))
        elif choice == 1:
            t.data_type = int(rng.choice([0, 2, 6, 7, 9, 10, 11, 16, 99]))
        elif choice == 2 and t.raw_data:
            t.raw_data = t.raw_data[:int(rng.integers(0, len(t.raw_data)))]
        else:
            try:
                a = numpy_helper.to_array(t).copy()
            except Exception:  # noqa: BLE001 - an earlier mutation left it unreadable: lstmrt's problem, not ours
                return m
            if a.size and a.dtype.kind == "f":
                a.reshape(-1)[int(rng.integers(0, a.size))] = rng.choice(WEIRD_FLOATS)
            elif a.size and a.dtype.kind in "iu":
                a.reshape(-1)[int(rng.integers(0, a.size))] = int(rng.choice([0, -1, 1 << 20, -(1 << 20)]))
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif what == 2:                                   # a declared dim of an input or output
        values = [*g.input, *g.output]
        v = values[int(rng.integers(0, len(values)))]
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            d = dims[int(rng.integers(0, len(dims)))]
            if rng.random() < 0.5:
                d.dim_value = int(rng.choice([0, 1, 2, 3, 5, 64, 1 << 40]))
            else:
                d.dim_param = str(rng.choice(["batch", "time", "other", ""]))
        elif rng.random() < 0.5:
            v.type.tensor_type.ClearField("shape")
    elif what == 3 and g.node:                        # wiring: an input renamed or dropped
        node = g.node[int(rng.integers(0, len(g.node)))]
        if len(node.input):
            k = int(rng.integers(0, len(node.input)))
            node.input[k] = str(rng.choice(["", "nope", g.input[0].name, node.output[0] if node.output else ""]))
    elif what == 4:                                   # an element type of an input or output
        values = [*g.input, *g.output]
        values[int(rng.integers(0, len(values)))].type.tensor_type.elem_type = int(
            rng.choice([0, 2, 6, 7, 9, 10, 11, 16, 99]))
    elif what == 5:                                   # opset and IR version
        m.opset_import[0].version = int(rng.choice([1, 6, 7, 13, 14, 17, 21, 99]))
        m.ir_version = int(rng.choice([3, 7, 8, 10, 14]))
    elif g.node:                                      # a node's op type, or a node gone
        k = int(rng.integers(0, len(g.node)))
        if rng.random() < 0.5:
            g.node[k].op_type = str(rng.choice(["LSTM", "GRU", "RNN", "Identity", "Scan", "Nope", "MatMul"]))
        else:
            del g.node[k]
    return m


def _try_backend(source, backend: str, rng, batch: int, steps: int):
    """(outputs or None) running the model on `backend`; only LstmrtError may stop it."""
    sess = expect_lstmrt(lambda: lstmrt.InferenceSession(source, backend=backend), f"load on {backend}")
    if isinstance(sess, lstmrt.LstmrtError):
        return None
    feed = valid_feed(sess, np.random.default_rng(1), batch, steps)
    out = expect_lstmrt(lambda: sess.run(None, feed), f"run on {backend}")
    stream = expect_lstmrt(sess.stream, f"stream() on {backend}")
    if not isinstance(stream, lstmrt.LstmrtError):
        streamed = {k: v for k, v in feed.items() if k not in stream.pairs}
        for _ in range(2):
            expect_lstmrt(lambda: stream.run(streamed), f"stream.run on {backend}")
    return (out, feed, sess) if not isinstance(out, lstmrt.LstmrtError) else None


def case_model(rng) -> None:
    name, base = BASES[int(rng.integers(0, len(BASES)))]
    if rng.random() < 0.35:
        source = _mutate_bytes(base.SerializeToString(), rng)
    else:
        model = base
        for _ in range(int(rng.integers(1, 3))):
            model = _mutate_structure(model, rng)
        source = expect_lstmrt(lambda: model.SerializeToString(), "serialising the mutated model")
        if isinstance(source, lstmrt.LstmrtError):
            return
    batch, steps = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    native = _try_backend(source, "native", rng, batch, steps)
    ort = _try_backend(source, "onnxruntime", rng, batch, steps)
    _try_backend(source, "auto", rng, batch, steps)
    if native is not None and ort is not None and native[1].keys() == ort[1].keys():
        constants = native[2].model.initializers.values()
        if all(np.isfinite(c).all() for c in constants if c.dtype.kind == "f"):
            if not _close(native[0], ort[0]):
                raise Wrong(f"{name} mutated: native and onnxruntime disagree on the same feed")
        else:   # NaN/Inf weights: onnxruntime's clamped gates may swallow a NaN that IEEE keeps
            for a, b in zip(native[0], ort[0]):
                if a.shape == b.shape and a.dtype.kind == "f" and not np.isnan(a[np.isnan(b)]).all():
                    raise Wrong(f"{name} mutated: onnxruntime has NaN where native has a number")


# -- kind: feed -------------------------------------------------------------------------------------
def _equivalents(value: np.ndarray, rng) -> list:
    """The same values in other memory layouts: every one must give bit-identical results."""
    forms = [("fortran", np.asfortranarray(value))]
    big = np.empty(value.shape + (2,), value.dtype)
    big[..., 0] = value
    forms.append(("strided", big[..., 0]))
    readonly = value.copy()
    readonly.flags.writeable = False
    forms.append(("read-only", readonly))
    if value.dtype.kind in "fiu" and value.dtype.itemsize > 1:
        forms.append(("big-endian", value.astype(value.dtype.newbyteorder(">"))))
    if value.ndim:
        forms.append(("reversed twice", value[::-1][::-1]))
    return forms


def _bad_values(value: np.ndarray, rng) -> list:
    bad = [("None", None), ("list", value.tolist()), ("scalar", np.float32(1.0)), ("string", "x"),
           ("dict", {"a": value}), ("float64", value.astype(np.float64)), ("int32", value.astype(np.int32)),
           ("float16", value.astype(np.float16)), ("bool", value.astype(bool)), ("object", value.astype(object)),
           ("rank+1", value[None]), ("rank-1", value.reshape(-1) if value.ndim != 1 else value.reshape(1, -1))]
    if value.ndim:
        axis = int(rng.integers(0, value.ndim))
        zero = list(value.shape)
        zero[axis] = 0
        bad.append(("zero dim", np.zeros(zero, value.dtype)))
        huge = list(value.shape)
        huge[axis] = 1 << 40
        bad.append(("huge broadcast", np.broadcast_to(np.zeros((), value.dtype), huge)))
        other = list(value.shape)
        other[axis] += int(rng.integers(1, 4))
        bad.append(("other dim", np.zeros(other, value.dtype)))    # may be fine (a dynamic dim)
    return bad


def case_feed(rng) -> None:
    name, model = BASES[int(rng.integers(0, len(BASES)))]
    backend = str(rng.choice(["native", "onnxruntime"]))
    sess = lstmrt.InferenceSession(model, backend=backend)
    feed = valid_feed(sess, rng, int(rng.integers(1, 4)), int(rng.integers(1, 6)))
    reference = sess.run(None, feed)
    target = str(rng.choice(list(feed)))
    for form, value in _equivalents(feed[target], rng):
        got = expect_lstmrt(lambda: sess.run(None, {**feed, target: value}), f"{form} '{target}'")
        if isinstance(got, lstmrt.LstmrtError) or not _same(got, reference):
            raise Wrong(f"{name}/{backend}: a {form} '{target}' changed the result: {got!r:.200}")
    for label, value in _bad_values(feed[target], rng):
        expect_lstmrt(lambda: sess.run(None, {**feed, target: value}), f"{label} '{target}'")
    expect_lstmrt(lambda: sess.run(None, {**feed, "nope": feed[target]}), "an unknown input")
    expect_lstmrt(lambda: sess.run(None, {k: v for k, v in feed.items() if k != target}), "a missing input")
    expect_lstmrt(lambda: sess.run(["nope"], feed), "an unknown output")
    expect_lstmrt(lambda: sess.run("y", feed), "a string as output_names")
    for bad_feed in (None, [feed[target]], "x", 3):
        expect_lstmrt(lambda: sess.run(None, bad_feed), f"a {type(bad_feed).__name__} as feed")
    if feed[target].dtype.kind == "f" and feed[target].size:
        poisoned = feed[target].copy()
        poisoned.reshape(-1)[int(rng.integers(0, poisoned.size))] = rng.choice([np.nan, np.inf, -np.inf])
        ours = expect_lstmrt(lambda: sess.run(None, {**feed, target: poisoned}), "NaN/Inf in a feed")
        oracle = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, {**feed, target: poisoned})
        if not isinstance(ours, lstmrt.LstmrtError):
            for a, b in zip(ours, oracle):
                if not np.isnan(a[np.isnan(b)]).all():
                    raise Wrong(f"{name}/{backend}: onnxruntime has NaN where lstmrt has a number")


# -- kind: stream -----------------------------------------------------------------------------------
def _chunk_feed(sess, rng, steps: int, batch: int, stream) -> dict:
    feed = valid_feed(sess, rng, batch, steps)
    return {k: v for k, v in feed.items() if k not in stream.pairs}


def _bad_call(stream, good: dict, rng):
    """(what, a call on the stream that must fail)."""
    target = str(rng.choice(list(good)))
    calls = [(f"{label} '{target}'", lambda v=v: stream.run({**good, target: v}))
             for label, v in _bad_values(good[target], rng)
             if not isinstance(v, np.ndarray) or v.dtype != good[target].dtype or v.ndim != good[target].ndim
             or 0 in v.shape or v.size > 1 << 30]
    calls += [("None", lambda: stream.run(None)), ("a list", lambda: stream.run([good[target]])),
              ("an unknown name", lambda: stream.run({"nope": good[target]})),
              ("an unknown output", lambda: stream.run(good, output_names=["nope"])),
              ("set_state(None)", lambda: stream.set_state(None)),
              ("set_state of a non-state", lambda: stream.set_state({"nope": good[target]})),
              ("set_state of a wrong shape", lambda: stream.set_state(
                  {p: np.zeros((9, 9, 9, 9), np.float32) for p in stream.pairs})),
              ("set_state of a string", lambda: stream.set_state({p: "x" for p in stream.pairs}))]
    return calls[int(rng.integers(0, len(calls)))]


def case_stream(rng) -> None:
    name, model = STREAMABLE[int(rng.integers(0, len(STREAMABLE)))]
    backend = str(rng.choice(["native", "onnxruntime"]))
    if rng.random() < 0.3:
        return case_group(rng, name, model, backend)
    sess = lstmrt.InferenceSession(model, backend=backend)
    tried, clean = sess.stream(), sess.stream()
    batch = int(rng.integers(1, 3))
    for step in range(int(rng.integers(2, 8))):
        good = _chunk_feed(sess, rng, int(rng.integers(1, 5)), batch, tried)
        for _ in range(int(rng.integers(0, 3))):
            what, call = _bad_call(tried, good, rng)
            result = expect_lstmrt(call, f"{name}/{backend} step {step}: {what}")
            if not isinstance(result, lstmrt.LstmrtError):
                raise Wrong(f"{name}/{backend} step {step}: {what} succeeded: {result!r:.200}")
        if rng.random() < 0.15:
            tried.reset()
            clean.reset()
        a, b = tried.run(good), clean.run(good)
        if not _same(a, b):
            raise Wrong(f"{name}/{backend} step {step}: outputs differ after failed calls")
    sa, sb = tried.state, clean.state
    if sa.keys() != sb.keys() or not _same([sa[k] for k in sa], [sb[k] for k in sa]):
        raise Wrong(f"{name}/{backend}: state differs from a stream without the failed calls")


def case_group(rng, name, model, backend) -> None:
    """A stream group of two with failing calls mixed in: each member as its lone stream."""
    sess = lstmrt.InferenceSession(model, backend=backend)
    group = sess.stream_group()
    keys = [group.add(), group.add()]
    alone = {k: sess.stream() for k in keys}
    for step in range(int(rng.integers(2, 6))):
        steps = int(rng.integers(1, 4))
        feeds = {k: _chunk_feed(sess, rng, steps, 1, alone[k]) for k in keys}
        bad = [lambda: group.run([feeds[keys[0]]]), lambda: group.run({99: feeds[keys[0]]}),
               lambda: group.run({keys[0]: {"nope": 1}}), lambda: group.run({keys[0]: None}),
               lambda: group.run({k: _chunk_feed(sess, rng, steps + i, 1, alone[k]) for i, k in enumerate(keys)}),
               lambda: group.run({k: _chunk_feed(sess, rng, steps, 2, alone[k]) for k in keys})]
        for _ in range(int(rng.integers(0, 3))):
            result = expect_lstmrt(bad[int(rng.integers(0, len(bad)))], f"{name}/{backend} group step {step}")
            if not isinstance(result, lstmrt.LstmrtError):
                raise Wrong(f"{name}/{backend} group step {step}: a bad call succeeded")
        got = group.run(feeds)
        for k in keys:
            if not _close(got[k], alone[k].run(feeds[k])):
                raise Wrong(f"{name}/{backend} group step {step}: member {k} differs from its lone stream")
    for k in keys:
        mine, lone = group.state(k), alone[k].state
        if not _close([mine[n] for n in sorted(mine)], [lone[n] for n in sorted(lone)]):
            raise Wrong(f"{name}/{backend}: member {k}'s state differs from its lone stream's")


# -- kind: threads ----------------------------------------------------------------------------------
def case_threads(rng) -> None:
    name, model = STREAMABLE[int(rng.integers(0, len(STREAMABLE)))]
    backend = str(rng.choice(["native", "onnxruntime"]))
    sess = lstmrt.InferenceSession(model, backend=backend)
    probe = sess.stream()
    workers = int(rng.integers(2, 5))
    plans = [[_chunk_feed(sess, rng, int(rng.integers(1, 4)), 1, probe) for _ in range(int(rng.integers(2, 6)))]
             for _ in range(workers)]
    expected = []
    for plan in plans:
        s = sess.stream()
        expected.append([s.run(f) for f in plan] + [s.state])
    shared_chunk = _chunk_feed(sess, rng, 1, 1, probe)
    rounds = int(rng.integers(5, 20))
    alone = sess.stream()
    for _ in range(rounds * workers):
        alone.run(shared_chunk)
    shared = sess.stream()
    got, errors = [None] * workers, []

    def work(i):
        try:
            s = sess.stream()
            outs = []
            for f in plans[i]:
                outs.append(s.run(f))
                expect_lstmrt(lambda: sess.run(None, {"nope": 1}), "a bad sess.run in a thread")
                shared.run(shared_chunk)
                expect_lstmrt(lambda: shared.run({"nope": 1}), "a bad call on the shared stream")
            for _ in range(rounds - len(plans[i])):
                shared.run(shared_chunk)
            got[i] = outs + [s.state]
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
    ended = _in_threads(work, workers)
    if errors or not ended:
        raise Wrong(f"{name}/{backend}: threads failed or hung: {errors}")
    for i in range(workers):
        outs, state = got[i][:-1], got[i][-1]
        want, want_state = expected[i][:-1], expected[i][-1]
        if not all(_same(a, b) for a, b in zip(outs, want)) or not _same(list(state.values()), list(want_state.values())):
            raise Wrong(f"{name}/{backend}: thread {i}'s stream differs from the same calls made alone")
    if rounds >= max(len(p) for p in plans):
        sa, sb = shared.state, alone.state
        if not _same([sa[k] for k in sorted(sa)], [sb[k] for k in sorted(sb)]):
            raise Wrong(f"{name}/{backend}: a stream shared by threads lost or tore an update")


def _in_threads(work, count: int) -> bool:
    """work(i) for each i < count in its own thread, switching often; whether all ended in 60 s."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(previous)
    return not any(t.is_alive() for t in threads)


# -- kind: fork -------------------------------------------------------------------------------------
def case_fork(rng) -> None:
    name, model = STREAMABLE[int(rng.integers(0, len(STREAMABLE)))]
    options = {"backend": str(rng.choice(["native", "onnxruntime"]))}
    if options["backend"] == "native" and rng.random() < 0.5:
        options["threads"] = 2     # the kernel's thread pool does not survive fork: the child must cope
    sess = lstmrt.InferenceSession(model, **options)
    probe = sess.stream()
    chunks = [_chunk_feed(sess, rng, int(rng.integers(1, 4)), 1, probe) for _ in range(int(rng.integers(2, 6)))]
    alone = sess.stream()
    expected = [alone.run(c) for c in chunks]
    split = int(rng.integers(1, len(chunks)))
    stream = sess.stream()
    for c in chunks[:split]:
        stream.run(c)
    pid = fork_once_threads_sleep()   # not inside onnxruntime's thread start-up: see forking.py
    if pid == 0:   # the child: finish the sequence, exit 0 if it matches; SIGALRM kills a hang
        signal.alarm(30)
        try:
            if options["backend"] == "onnxruntime":   # cannot run across fork: must refuse, not hang
                try:
                    stream.run(chunks[split])
                    ok = False
                except lstmrt.LstmrtError as e:
                    ok = "fork" in str(e)
            else:
                ok = all(_same(stream.run(c), e) for c, e in zip(chunks[split:], expected[split:]))
                ok = ok and _same(sess.run(None, valid_feed(sess, np.random.default_rng(0), 1, 2)),
                                  sess.run(None, valid_feed(sess, np.random.default_rng(0), 1, 2)))
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 3)
    mine = [stream.run(c) for c in chunks[split:]]
    _, status = os.waitpid(pid, 0)
    if not all(_same(a, b) for a, b in zip(mine, expected[split:])):
        raise Wrong(f"{name}/{options}: the parent's stream changed after a fork")
    if os.WIFSIGNALED(status):
        raise Wrong(f"{name}/{options}: the forked child died of signal {os.WTERMSIG(status)} "
                    f"({'a hang' if os.WTERMSIG(status) == signal.SIGALRM else 'a crash'})")
    if os.WEXITSTATUS(status) != 0:
        raise Wrong(f"{name}/{options}: the forked child's stream differs from an unforked one")


# -- kind: group ------------------------------------------------------------------------------------
GROUP_OPTIONS = ({"backend": "native"}, {"backend": "native", "compiled": False}, {"backend": "onnxruntime"},
                 {"backend": "native", "threads": 2})   # the kernel splits a group's batch between threads
# the streamable models, and a two-layer GRU whose state [2, batch, 64] has its rows on axis 1
GROUP_MODELS = STREAMABLE + [("torch_kws_gru2", onnx.load(ROOT / "tests" / "fixtures" / "models" /
                                                           "torch_kws_gru2.onnx"))]
_ORACLES: dict = {}   # model name -> its onnxruntime session (None: onnxruntime cannot run it), per process


def _oracle_of(name: str, model, sess):
    """The session lone streams run on as the oracle: onnxruntime's, else (it cannot run the
    model) the group's own session, as the other kinds do."""
    if name not in _ORACLES:
        try:
            _ORACLES[name] = lstmrt.InferenceSession(model, backend="onnxruntime")
        except lstmrt.LstmrtError:
            _ORACLES[name] = None
    return _ORACLES[name] or sess


class _Member:
    """A group member's oracles: a lone stream on the oracle session and one on the group's own
    session, fed the same chunks.  `poisoned`: NaN/Inf reached it, so onnxruntime (whose clamped
    gates may swallow a NaN) only bounds it and its own session's lone stream decides."""

    def __init__(self, oracle, sess, state: dict):
        self.oracle, self.own = oracle.stream(), sess.stream()
        if state:
            self.oracle.set_state(state)
            self.own.set_state(state)
        self.poisoned = any(not np.isfinite(v).all() for v in state.values())

    def run(self, feed: dict) -> tuple:
        if any(not np.isfinite(v).all() for v in feed.values() if v.dtype.kind == "f"):
            self.poisoned = True
        return self.oracle.run(feed), self.own.run(feed)

    def agrees(self, got: list, want: tuple) -> bool:
        oracle, own = want
        if len(got) != len(oracle):
            return False
        if not self.poisoned:
            return _close(got, oracle)
        return _close(got, own) and all(np.isnan(np.asarray(a)[np.isnan(b)]).all()
                                        for a, b in zip(got, oracle) if np.shape(a) == np.shape(b))

    def state_agrees(self, mine: dict) -> bool:
        """The group's state of it (every state input, zeros where never set) against the lone one's."""
        lone = (self.own if self.poisoned else self.oracle).state
        if not lone.keys() <= mine.keys():
            return False
        names = sorted(mine)
        return _close([mine[n] for n in names], [lone.get(n, np.zeros_like(mine[n])) for n in names])


def _states(group, keys) -> dict:
    return {k: group.state(k) for k in keys}


def _same_states(before: dict, after: dict) -> bool:
    """Bit-identical, except that a state never set (absent before the group first ran) may come
    back as zeros: a failing first call may make the banks before it fails."""
    def same(a, b):
        return a.keys() <= b.keys() and _same([a.get(n, np.zeros_like(b[n])) for n in sorted(b)],
                                              [b[n] for n in sorted(b)])
    return before.keys() == after.keys() and all(same(before[k], after[k]) for k in before)


def _state_shapes(oracle, group) -> dict:
    """{state input: (shape, dtype)} of one sequence, as a lone stream carries it."""
    probe = oracle.stream()
    probe.run(_chunk_feed(oracle, np.random.default_rng(0), 1, 1, group))
    return {n: (v.shape, v.dtype) for n, v in probe.state.items()}


def _join(group, sess, oracle, members: dict, shapes: dict, issued: set, rng, where: str) -> None:
    """A new member, from zeros, a random (maybe partial) state, or another member's state."""
    state, choice = {}, rng.random()
    if choice < 0.3:
        state = {n: rng.standard_normal(s).astype(d) for n, (s, d) in shapes.items() if rng.random() < 0.8}
    elif choice < 0.45 and members:
        state = group.state(int(rng.choice(list(members))))    # empty before the group first ran
    given = {n: _odd_layout(v.copy(), rng) if rng.random() < 0.3 else v.copy() for n, v in state.items()}
    key = group.add(state=given) if given or rng.random() < 0.5 else group.add()
    if key in issued:
        raise Wrong(f"{where}: add() gave key {key} again")
    issued.add(key)
    for v in given.values():   # the caller's arrays are theirs again: the member keeps its own copy
        if v.flags.writeable:
            v[...] = 7
    mine = group.state(key)
    if not state.keys() <= mine.keys() or not all(
            _same([mine[n]], [state.get(n, np.zeros_like(mine[n]))]) for n in mine):
        raise Wrong(f"{where}: member {key} does not start from the state it was given")
    members[key] = _Member(oracle, sess, state)


def _odd_layout(value: np.ndarray, rng) -> np.ndarray:
    """The same values in another memory layout: a group must take what a lone stream takes."""
    forms = _equivalents(value, rng)
    return forms[int(rng.integers(0, len(forms)))][1]


def _poison(feed: dict, rng) -> dict:
    floats = [n for n, v in feed.items() if v.dtype.kind == "f" and v.size]
    if not floats:
        return feed
    name = str(rng.choice(floats))
    value = feed[name].copy()
    value.reshape(-1)[int(rng.integers(0, value.size))] = rng.choice([np.nan, np.nan, np.inf, -np.inf])
    return {**feed, name: value}


def _bad_group_calls(group, sess, feeds: dict, shapes: dict, gone: list, rng) -> list:
    """[(what, a call that must raise an LstmrtError and move no member's state)]."""
    keys = list(feeds)
    target = keys[int(rng.integers(0, len(keys)))]
    name = str(rng.choice(list(feeds[target])))
    value = feeds[target][name]
    info = next(i for i in sess.get_inputs() if i.name == name)
    everyone = bool(rng.random() < 0.3)

    def changed(v):   # the target member's `name` (or everyone's) set to v
        return {k: ({**f, name: v} if everyone or k == target else f) for k, f in feeds.items()}
    who = "every member's" if everyone else f"member {target}'s"
    batch_axes = [a for a, d in enumerate(valid_feed(sess, np.random.default_rng(0), 2, 1)[name].shape) if d == 2]
    one_length = everyone or len(keys) == 1   # another chunk length for every member is fine
    bad = [(f"{label} '{name}'", v) for label, v in
           [("float64", value.astype(np.float64)), ("float16", value.astype(np.float16)),
            ("int32", value.astype(np.int32)), ("bool", value.astype(bool)), ("object", value.astype(object)),
            ("rank+1", value[None]), ("rank-1", value[0]), ("None", None),
            ("a list", value.tolist()), ("a string", "x")]]
    for axis in range(value.ndim):
        for label, size in (("zero", 0), ("huge", 1 << 40), ("other", value.shape[axis] + int(rng.integers(1, 3)))):
            shape = list(value.shape)
            shape[axis] = size
            fixed = isinstance((info.shape or [None] * value.ndim)[axis], int)
            if label == "other" and not fixed and axis not in batch_axes and one_length:   # the time axis
                continue
            v = np.broadcast_to(np.zeros((), value.dtype), shape) if size > 1 << 20 else np.zeros(shape, value.dtype)
            bad.append((f"{label} dim {axis} ({size}) of '{name}'", v))
    calls = [(f"{who} {label}", lambda v=v: group.run(changed(v))) for label, v in bad]
    stranger = [*gone, 1 << 40, -1, "a", None, 0.5][int(rng.integers(0, len(gone) + 5))]
    state_name = str(rng.choice(list(group.pairs)))
    one_row = np.zeros(*shapes[state_name]) if state_name in shapes else np.zeros((1, 1, 1), np.float32)
    calls += [
        (f"a non-member {stranger!r} in the call", lambda: group.run({**feeds, stranger: feeds[target]})),
        (f"member {target}'s feed None", lambda: group.run({**feeds, target: None})),
        (f"member {target}'s feed a list", lambda: group.run({**feeds, target: [value]})),
        (f"member {target}'s feed empty", lambda: group.run({**feeds, target: {}})),
        (f"member {target}'s feed with an unknown name",
         lambda: group.run({**feeds, target: {**feeds[target], "nope": value}})),
        (f"member {target}'s feed with its state '{state_name}'",
         lambda: group.run({**feeds, target: {**feeds[target], state_name: one_row}})),
        ("feeds a list", lambda: group.run([feeds[target]])),
        ("feeds None", lambda: group.run(None)),
        (f"remove({stranger!r})", lambda: group.remove(stranger)),
        (f"state({stranger!r})", lambda: group.state(stranger)),
        ("add(state=a string)", lambda: group.add(state="x")),
        ("add(state={'nope': ...})", lambda: group.add(state={"nope": one_row})),
        (f"add(state='{state_name}' float64)", lambda: group.add(state={state_name: one_row.astype(np.float64)})),
        (f"add(state='{state_name}' a string)", lambda: group.add(state={state_name: "x"})),
        (f"add(state='{state_name}' rank+1)", lambda: group.add(state={state_name: one_row[None]})),
    ]
    for axis in range(one_row.ndim):   # two rows (a batch of 2), or another fixed dim
        calls.append((f"add(state='{state_name}' doubled on axis {axis})",
                      lambda axis=axis: group.add(state={state_name: np.concatenate([one_row, one_row], axis)})))
    if group.pairs and rng.random() < 0.5:
        calls.append(("profile() of a bad feed", lambda: group.profile(changed(bad[0][1]), calls=1)))
    return calls


def _fail_and_move_nothing(group, sess, feeds, shapes, gone, members, rng, at: str) -> None:
    calls = _bad_group_calls(group, sess, feeds, shapes, gone, rng)
    what, call = calls[int(rng.integers(0, len(calls)))]
    before = _states(group, members)
    result = expect_lstmrt(call, f"{at}: {what}")
    if not isinstance(result, lstmrt.LstmrtError):
        raise Wrong(f"{at}: {what} succeeded: {result!r:.200}")
    if len(group) != len(members) or not _same_states(before, _states(group, members)):
        raise Wrong(f"{at}: {what} failed ({type(result).__name__}) but moved a member's state or membership")


def _no_op_calls(group, feeds, members, options, at: str) -> None:
    """An empty call, profile() (native compiled: on copies; elsewhere refused) and writing to
    what state() gave: no state moves."""
    before = _states(group, members)
    empty = expect_lstmrt(lambda: group.run({}), f"{at}: run({{}})")
    if empty != {}:
        raise Wrong(f"{at}: run({{}}) gave {empty!r:.200}")
    profiled = expect_lstmrt(lambda: group.profile(feeds, calls=1), f"{at}: profile()")
    compiled = options.get("backend") == "native" and options.get("compiled", True)
    if isinstance(profiled, lstmrt.LstmrtError) == compiled:
        raise Wrong(f"{at}: profile() on {options} gave {profiled!r:.200}")
    for v in group.state(next(iter(members))).values():   # a copy: writing to it moves nothing
        v[...] = 7
    if not _same_states(before, _states(group, members)):
        raise Wrong(f"{at}: run({{}}), profile() or writing to a state() copy moved a member's state")


def _threaded_members(group, sess, oracle, members: dict, rng, at: str) -> None:
    """Threads each adding members of their own, stepping them (a failing call before each step)
    and removing them, while the case's members sit idle: every thread's member gets what a lone
    stream gets, and no idle member's state moves through the banks' growing and shrinking."""
    idle = _states(group, members)
    plans = [[[_chunk_feed(sess, rng, steps, 1, group) for _ in range(count)]
              for steps in rng.integers(1, 4, int(rng.integers(2, 5)))]
             for count in rng.integers(1, 4, int(rng.integers(2, 4)))]
    got, errors = [None] * len(plans), []

    def work(i):
        try:
            keys = [group.add() for _ in plans[i][0]]
            outs = []
            for chunks in plans[i]:
                bad = expect_lstmrt(lambda: group.run({keys[0]: {"nope": chunks[0]}}), "an unknown name")
                if not isinstance(bad, lstmrt.LstmrtError):
                    errors.append("a call with an unknown input name succeeded")
                outs.append(group.run(dict(zip(keys, chunks))))
            got[i] = (keys, outs, [group.state(k) for k in keys])
            for k in keys:
                group.remove(k)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
    ended = _in_threads(work, len(plans))
    if errors or not ended:
        raise Wrong(f"{at}: members of threads failed or hung: {errors}")
    for plan, (keys, outs, states) in zip(plans, got):
        for j, key in enumerate(keys):
            member = _Member(oracle, sess, {})
            if not all(member.agrees(out[key], member.run(chunks[j])) for chunks, out in zip(plan, outs)):
                raise Wrong(f"{at}: member {key} of a thread differs from its lone stream")
            if not member.state_agrees(states[j]):
                raise Wrong(f"{at}: member {key} of a thread ended in another state than its lone stream")
    if len(group) != len(members) or not _same_states(idle, _states(group, members)):
        raise Wrong(f"{at}: members of threads joining, stepping and leaving moved an idle member's state")


def case_groups(rng) -> None:
    """A stream group whose members join (from zeros or a given state) and leave, each call
    stepping a random subset in random order, failing calls mixed in: every member gets what
    a lone stream fed its chunks gets; a failing call moves no member's state."""
    name, model = GROUP_MODELS[int(rng.integers(0, len(GROUP_MODELS)))]
    options = GROUP_OPTIONS[int(rng.integers(0, len(GROUP_OPTIONS)))]
    where = f"{name}/{options}"
    sess = lstmrt.InferenceSession(model, **options)
    oracle = _oracle_of(name, model, sess)
    group = sess.stream_group()
    shapes = _state_shapes(oracle, group)
    members, issued, gone = {}, set(), []
    for step in range(int(rng.integers(3, 10))):
        at = f"{where} step {step}"
        for _ in range(int(rng.integers(0 if members else 1, 4))):
            _join(group, sess, oracle, members, shapes, issued, rng, at)
        leaving = list(members) if rng.random() < 0.05 else [k for k in members if rng.random() < 0.2]
        for k in leaving:
            group.remove(k)
            del members[k]
            gone.append(k)
        if len(group) != len(members):
            raise Wrong(f"{at}: the group has {len(group)} members, not {len(members)}")
        if not members:
            continue
        keys = [int(k) for k in rng.permutation(list(members)) if rng.random() < 0.7] or [next(iter(members))]
        steps = int(rng.integers(1, 5))
        feeds = {k: _chunk_feed(sess, rng, steps, 1, group) for k in keys}
        for k in keys:
            if rng.random() < 0.08:
                feeds[k] = _poison(feeds[k], rng)
            if rng.random() < 0.15:
                n = str(rng.choice(list(feeds[k])))
                feeds[k] = {**feeds[k], n: _odd_layout(feeds[k][n], rng)}
        for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.4 else 0):
            _fail_and_move_nothing(group, sess, feeds, shapes, gone, members, rng, at)
        if rng.random() < 0.1:
            _no_op_calls(group, feeds, members, options, at)
        if rng.random() < 0.05:
            _threaded_members(group, sess, oracle, members, rng, at)
        got = expect_lstmrt(lambda: group.run(feeds), f"{at}: a good call")
        if isinstance(got, lstmrt.LstmrtError):
            raise Wrong(f"{at}: a good call failed: {type(got).__name__}: {got}")
        if list(got) != keys:
            raise Wrong(f"{at}: the call answered members {list(got)}, not {keys}")
        for k in keys:
            if not members[k].agrees(got[k], members[k].run(feeds[k])):
                raise Wrong(f"{at}: member {k} differs from its lone stream")
    for k, member in members.items():
        if not member.state_agrees(group.state(k)):
            raise Wrong(f"{where}: member {k}'s state differs from its lone stream's")


_current = [-1]   # the index of the case running (for the self-test's scripted failures)


def case_selftest(rng) -> None:
    """For the driver's own test: case 1 aborts the process, case 3 hangs, the rest pass."""
    index = _current[0]
    if index == 1:
        os.abort()
    if index == 3:
        signal.pause()


CASES = {"selftest": case_selftest, "model": case_model, "feed": case_feed, "stream": case_stream,
         "threads": case_threads, "fork": case_fork, "group": case_groups}


def main(argv: list) -> int:
    kind, seed, start, count = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    for index in range(start, start + count):
        _current[0] = index
        try:
            CASES[kind](_rng(seed, kind, index))
            print(f"ok {index}", flush=True)
        except Wrong as e:
            print(f"fail {index} {str(e)!r}", flush=True)
        except Exception as e:  # noqa: BLE001 - the case's own set-up failed: a bug to report too
            print(f"fail {index} {('set-up: ' + type(e).__name__ + ': ' + str(e))!r}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
