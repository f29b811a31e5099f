"""Shapes the graph does not declare, inferred through it (onnx shape inference).

A state declared `[2, None, 128]` or a state output declared with no shape at all is common in
models from elsewhere.  Its shape follows from the graph and the shapes of a feed, without
running the model: onnx's shape inference (with data propagation, so Shape/Gather/Concat
arithmetic on shapes is followed) is asked once per model and feed signature, and cached.
"""
from __future__ import annotations

import weakref

import onnx
from onnx import shape_inference

from .locks import lock_of
from .model import Model

_CACHE: "weakref.WeakKeyDictionary[Model, dict]" = weakref.WeakKeyDictionary()
_CACHE_PER_MODEL = 32      # feed signatures remembered per model (a stream asks once, at its first call)


def _dims(value_info) -> list | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _set_dims(value_info, shape) -> None:
    t = value_info.type.tensor_type
    t.ClearField("shape")
    for d in shape:
        dim = t.shape.dim.add()
        if isinstance(d, int) and d >= 0:
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def inferred_output_shapes(model: Model, input_shapes: dict | None = None) -> dict:
    """{graph output: shape (int, str or None per dim) or None} as inference finds them when the
    inputs named in `input_shapes` have those shapes (the others keep their declared ones).
    Declared output shapes are left out of the question, so a contradiction shows.  {} when
    inference cannot follow the model (an op it does not know, a custom domain)."""
    key = tuple(sorted((n, tuple(s)) for n, s in (input_shapes or {}).items()))
    cached = _CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    proto = onnx.ModelProto()
    with lock_of(model):      # the proto, read by one thread at a time (model.py)
        proto.CopyFrom(model.proto)
    for value in proto.graph.input:
        if input_shapes and value.name in input_shapes:
            _set_dims(value, input_shapes[value.name])
    for value in proto.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        shapes = {o.name: _dims(o) for o in inferred.graph.output}
    except Exception:   # noqa: BLE001 - inference is best effort; the caller says what it could not tell
        shapes = {}
    if len(cached) >= _CACHE_PER_MODEL:
        cached.pop(next(iter(cached)))
    cached[key] = shapes
    return shapes


def merged_shape(declared, inferred) -> list | None:
    """The declared shape with its unknown dims filled from the inferred one (ranks must agree).
    A fixed size inference proves beats a declared symbolic name (exporters name output dims
    they could not work out, e.g. torch.onnx's 'ConcatstateN_dim_2')."""
    if declared is None:
        return None if inferred is None else list(inferred)
    if inferred is None or len(inferred) != len(declared):
        return list(declared)

    def pick(d, i):
        if isinstance(d, int) and d > 0:
            return d
        if isinstance(i, int) and i > 0:
            return i
        return d if isinstance(d, str) else i
    return [pick(d, i) for d, i in zip(declared, inferred)]
