"""Checking an export: the source framework vs onnxruntime vs lstmrt's native backend, at
several (batch, time) shapes including T=1, and streamed in uneven chunks.

Needs only numpy, onnx, onnxruntime and lstmrt; the framework is reached through the
`reference` callable the exporter hands in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

TOL = 1e-4
SHAPES = [(2, 7), (1, 1), (3, 12)]          # (batch, time); the last one is also streamed
CHUNKS = [1, 3, 2, 5, 4, 7, 6]              # uneven chunk lengths, cycled until the sequence ends


class VerificationError(ValueError):
    """An export whose outputs differ from the framework's (or between backends) by more than TOL."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


@dataclass
class InputSpec:
    """How to make test values for one graph input.
    dims: ints, or "B" / "T" for the batch and time axes."""
    name: str
    dims: list
    dtype: str = "float32"
    vocab: int | None = None            # token ids drawn from [0, vocab) (0 excluded when padded)
    pad: str | None = None              # "tokens": trailing zeros mark padding; "value": trailing mask_value
    mask_value: float = 0.0
    state: str | None = None            # "own": the model's own state input; "added": lifted by the exporter

    @property
    def time_axis(self):
        return self.dims.index("T") if "T" in self.dims else None


@dataclass
class Check:
    shape: str
    backend: str
    output: str
    max_err: float
    against: str
    streamed: bool = False              # a chunked stream vs the whole call

    @property
    def ok(self) -> bool:
        return self.max_err <= TOL


@dataclass
class Verification:
    checks: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.ok]

    @property
    def max_err(self) -> float:
        return max((c.max_err for c in self.checks), default=0.0)


def make_feeds(specs: list, batch: int, steps: int, rng, lengths=None) -> dict:
    feeds = {}
    if lengths is None:
        lengths = [steps] + list(rng.integers(1, steps + 1, size=batch - 1)) if batch else []
    for s in specs:
        shape = [batch if d == "B" else steps if d == "T" else d for d in s.dims]
        if s.state == "added":
            feeds[s.name] = np.zeros(shape, np.float32)
            continue
        if s.vocab is not None:
            low = 1 if s.pad else 0
            value = rng.integers(low, max(s.vocab, low + 1), size=shape)
        else:
            value = rng.standard_normal(shape)
        if s.pad and s.time_axis is not None:
            b_axis = s.dims.index("B")
            for b, n in enumerate(lengths):
                index = [slice(None)] * len(shape)
                index[b_axis], index[s.time_axis] = b, slice(int(n), None)
                value[tuple(index)] = 0 if s.pad == "tokens" else s.mask_value
        feeds[s.name] = value.astype(s.dtype)
    return feeds


def _err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _ort_runner(model: onnx.ModelProto):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds)))


def _native_session(model: onnx.ModelProto):
    import lstmrt
    return lstmrt.InferenceSession(model, backend="native")


def _chunks(steps: int, multiple: int = 1):
    start, i = 0, 0
    while start < steps:
        n = min(CHUNKS[i % len(CHUNKS)] * multiple, steps - start)
        yield start, n
        start, i = start + n, i + 1


def _streamed(run_chunk, specs, feeds, out_time_axes, steps, multiple=1):
    """Outputs of a whole sequence fed chunk by chunk through `run_chunk(chunk_feeds) -> dict`."""
    pieces: dict = {}
    lens = [n for _, n in _chunks(steps, multiple)]
    for start, n in _chunks(steps, multiple):
        part = {s.name: np.ascontiguousarray(np.take(feeds[s.name], range(start, start + n), axis=s.time_axis))
                for s in specs if not s.state and s.time_axis is not None}
        part.update({s.name: feeds[s.name] for s in specs if not s.state and s.time_axis is None})
        for name, value in run_chunk(part).items():
            pieces.setdefault(name, []).append(value)
    def time_axis(name, vals):
        if out_time_axes.get(name) is not None:
            return out_time_axes[name]
        # undeclared: the axis along which every chunk's output is as long as the chunk (or a
        # fixed fraction of it, after strided layers)
        fits = [a for a in range(vals[0].ndim) if vals[0].shape[a]
                and all(v.shape[a] * lens[0] == vals[0].shape[a] * n for v, n in zip(vals, lens))]
        return fits[0] if fits and len(set(lens)) > 1 else None

    joined = {}
    for name, vals in pieces.items():
        axis = time_axis(name, vals)
        joined[name] = vals[-1] if axis is None else np.concatenate(vals, axis=axis)
    return joined


def verify(model: onnx.ModelProto, specs: list, reference: Callable | None, pairs: dict,
           out_time_axes: dict, shapes=None, seed: int = 0) -> Verification:
    """Run the framework (`reference(feeds) -> {output: array}`), onnxruntime and lstmrt's
    native backend on the same inputs and record every output's max abs difference.
    Outputs the framework does not produce (lifted states) are compared native vs onnxruntime."""
    rng = np.random.default_rng(seed)
    ort_run = _ort_runner(model)
    native = _native_session(model)
    native_names = [o.name for o in native.get_outputs()]
    result = Verification()
    shapes = list(shapes or SHAPES)
    multiple = _chunk_multiple(model)
    if multiple > 1:   # the streamed sequence: whole strides only
        batch, steps = shapes[-1]
        shapes[-1] = (batch, -(-steps // multiple) * multiple)
    for batch, steps in shapes:
        label = f"B={batch},T={steps}"
        streamed = bool(pairs) and (batch, steps) == shapes[-1]
        lengths = None
        if streamed and batch:
            # padded (masked) entries end inside the last chunk: onnxruntime resets the state of an
            # entry whose sequence_lens is 0, so a chunk of padding only would not carry its state
            last = list(_chunks(steps, multiple))[-1]
            lengths = [steps] + list(rng.integers(last[0] + 1, steps + 1, size=batch - 1))
        feeds = make_feeds(specs, batch, steps, rng, lengths)
        try:
            ref = reference(feeds) if reference is not None else {}
        except Exception as e:   # the framework itself refuses this input (e.g. too few steps)
            text = str(e).strip().splitlines()
            raise VerificationError(f"the framework model fails on the check input at {label} ({type(e).__name__}: "
                                    f"{text[0] if text else ''}); nothing was compared") from None
        got_ort = ort_run(feeds)
        got_nat = dict(zip(native_names, native.run(None, feeds)))
        for name in native_names:
            if name in ref:
                result.checks.append(Check(label, "onnxruntime", name, _err(got_ort[name], ref[name]), "framework"))
                result.checks.append(Check(label, "native", name, _err(got_nat[name], ref[name]), "framework"))
            else:
                result.checks.append(Check(label, "native", name, _err(got_nat[name], got_ort[name]), "onnxruntime"))
        if not streamed:
            continue
        # streamed in uneven chunks, from the same initial state as the whole run
        whole = {n: ref.get(n, got_ort[n]) for n in native_names}
        label = f"B={batch},T={steps} streamed in chunks {[n for _, n in _chunks(steps, multiple)]}"
        stream = native.stream()
        if set(stream.pairs) != set(pairs):
            raise VerificationError(f"lstmrt's stream() pairs {stream.pairs} but the export wrote {pairs}")
        own = {s.name: feeds[s.name] for s in specs if s.state}
        stream.set_state(own)
        stream_outs = [o for o in native_names if o not in pairs.values()]
        nat = _streamed(lambda part: dict(zip(stream_outs, stream.run(part))), specs, feeds, out_time_axes, steps,
                        multiple)
        nat.update({pairs[k]: v for k, v in stream.state.items()})
        carried = dict(own)

        def ort_chunk(part):
            out = ort_run({**part, **carried})
            carried.update({inp: out[o] for inp, o in pairs.items()})
            return {n: out[n] for n in stream_outs}
        via_ort = _streamed(ort_chunk, specs, feeds, out_time_axes, steps, multiple)
        via_ort.update({o: carried[i] for i, o in pairs.items()})
        for name in native_names:
            against = "framework" if name in ref else "onnxruntime whole"
            result.checks.append(Check(label, "onnxruntime", name, _err(via_ort[name], whole[name]), against, True))
            result.checks.append(Check(label, "native", name, _err(nat[name], whole[name]), against, True))
    return result


def _chunk_multiple(model: onnx.ModelProto) -> int:
    """The chunk length a stream of `model` must be a multiple of (strided time layers), from its metadata."""
    import json
    from .time_layers import CHUNKS_KEY
    meta = {p.key: p.value for p in model.metadata_props}
    return int(json.loads(meta[CHUNKS_KEY])["multiple"]) if CHUNKS_KEY in meta else 1
