"""`lstmrt verify`: every available backend on the same inputs, differences tabulated."""
from __future__ import annotations

import numpy as np

from .backends.native import NativeBackend
from .backends.onnxruntime import OnnxruntimeBackend, cuda_listed
from .errors import LstmrtError
from .model import Model
from .state_pairs import batch_axes, time_axes

REFERENCE = "onnxruntime CPU"


def available_backends(model: Model) -> tuple[dict, list]:
    """({label: backend} for every backend that loads the model, [why others are missing])."""
    found, missing = {}, []
    try:
        found["native"] = NativeBackend(model)
    except LstmrtError as e:
        missing.append(f"native: {e}")
    found[REFERENCE] = OnnxruntimeBackend(model, ["CPUExecutionProvider"])
    if cuda_listed():
        gpu = OnnxruntimeBackend(model)
        if gpu.device == "cuda":
            found["onnxruntime CUDA"] = gpu
        else:
            missing.append("onnxruntime CUDA: listed, but a CUDA session did not load")
    else:
        missing.append("onnxruntime CUDA: not installed or no GPU")
    return found, missing


def _given_dims(model: Model, given: dict) -> tuple[dict, set]:
    """(named dim -> size, the batch sizes) read from the given inputs: random ones must agree."""
    named, batch_sizes = {}, set()
    batches = batch_axes(model)
    for info in model.inputs:
        value = given.get(info.name)
        if value is None or info.shape is None or np.ndim(value) != len(info.shape):
            continue
        for axis, (d, n) in enumerate(zip(info.shape, np.shape(value))):
            if isinstance(d, str):
                named.setdefault(d, n)
            if batches.get(info.name) == axis:
                batch_sizes.add(n)
    return named, batch_sizes


def random_feed(model: Model, batch: int = 2, steps: int = 7, given: dict | None = None, seed: int = 0) -> dict:
    """Inputs not given are random; unnamed dims are the time axis (traced from the graph) or batch.
    Named dims, and the batch, follow the given inputs (a given x of batch 1 gets state of batch 1)."""
    rng = np.random.default_rng(seed)
    times, batches = time_axes(model), batch_axes(model)
    feed = dict(given or {})
    named, given_batches = _given_dims(model, feed)
    if len(given_batches) == 1:
        batch = given_batches.pop()
    for info in model.inputs:
        if info.name in feed:
            continue
        shape = []
        for axis, d in enumerate(info.shape or []):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                guess = steps if times.get(info.name) == axis and batches.get(info.name) != axis else batch
                shape.append(named.setdefault(d, guess) if isinstance(d, str) else guess)
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            feed[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[info.name] = np.full(shape, steps, dtype)   # e.g. sequence lengths: the whole sequence
        else:
            feed[info.name] = np.ones(shape, dtype)
    return feed


def compare(model: Model, feed: dict) -> tuple[list, dict, list]:
    """(output names, {backend label: [max abs diff vs the reference per output]}, missing backends)."""
    backends, missing = available_backends(model)
    names = [o.name for o in model.outputs]
    results = {label: b.run(feed, names) for label, b in backends.items()}
    reference = results[REFERENCE]
    diffs = {label: [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
                     for a, b in zip(outs, reference)]
             for label, outs in results.items()}
    return names, diffs, missing
