"""What an exporter recorded in a model's metadata about how it may stream (see
exporters/time_layers.py): a reason it cannot (a layer that looks ahead), and the
multiple a chunk's length must be (strided layers)."""
from __future__ import annotations

import json

import numpy as np

from .errors import InputError, ModelError, StreamError

NOT_STREAMABLE_KEY = "lstmrt.not_streamable"   # text naming the layer and why
CHUNKS_KEY = "lstmrt.stream_chunks"            # {"multiple": M, "inputs": {input: time axis}, "layers": {layer: stride}}


def refuse_if_not_streamable(model) -> None:
    reason = model.metadata.get(NOT_STREAMABLE_KEY)
    if reason:
        raise StreamError(f"this model cannot stream: {reason}")


def chunk_rule(model) -> dict | None:
    """The recorded chunk rule, or None when any chunk length works."""
    text = model.metadata.get(CHUNKS_KEY)
    if not text:
        return None
    try:
        rule = json.loads(text)
        int(rule["multiple"]), dict(rule["inputs"]), dict(rule.get("layers", {}))
    except (ValueError, TypeError, KeyError) as e:
        raise ModelError(f"metadata '{CHUNKS_KEY}' is not a chunk rule ({e}): {text[:200]!r}") from None
    return rule


def check_chunk(rule: dict | None, feed: dict) -> None:
    """InputError unless every streamed input's chunk is a whole number of the rule's steps."""
    if rule is None:
        return
    multiple = int(rule["multiple"])
    for name, axis in rule["inputs"].items():
        try:
            shape = np.shape(feed[name]) if name in feed else ()
        except Exception:   # a value run() will refuse with its own message
            continue
        if len(shape) <= axis:
            continue
        steps = shape[axis]
        if steps % multiple:
            layers = ", ".join(f"'{k}' (stride {v})" for k, v in rule.get("layers", {}).items())
            raise InputError(f"input '{name}' has {steps} steps along axis {axis}; this model streams in chunks "
                             f"whose length is a multiple of {multiple} because of its strided layers {layers}; "
                             "feed chunks of whole strides (the stream's state is unchanged)")
