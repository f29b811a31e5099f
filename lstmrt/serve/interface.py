"""What a served model shows its clients: the non-state inputs and outputs, batch axis first.

Triton batches along a leading dimension; an lstmrt model keeps its batch wherever its graph
puts it (a bare LSTM's X is [T, B, I]).  A served tensor is the model's tensor with its batch
axis moved to the front; the state inputs/outputs, as `sess.stream()` pairs them, are not served.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import LstmrtError
from ..state_pairs import batch_axes

# numpy dtype name -> Triton config data type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "bool": "TYPE_BOOL"}


class ServeError(LstmrtError, ValueError):
    """The model cannot be served (its state or batch axis cannot be found)."""


@dataclass(frozen=True)
class ServedTensor:
    name: str
    dtype: str            # numpy dtype name
    dims: list            # the model's dims without the batch axis; -1 where dynamic
    batch_axis: int       # where the batch sits in the model's own layout

    def to_model(self, served: np.ndarray) -> np.ndarray:
        """[1, *dims] as Triton hands it -> the model's layout, batch 1 at batch_axis."""
        return np.moveaxis(served, 0, self.batch_axis)

    def to_served(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(value, self.batch_axis, 0))


@dataclass(frozen=True)
class ServedInterface:
    inputs: list
    outputs: list
    state_pairs: dict

    def to_json(self) -> str:
        return json.dumps({"inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs],
                           "state_pairs": self.state_pairs})

    @classmethod
    def from_json(cls, text: str) -> "ServedInterface":
        data = json.loads(text)
        return cls([ServedTensor(**t) for t in data["inputs"]], [ServedTensor(**t) for t in data["outputs"]],
                   dict(data["state_pairs"]))


def _served(info, batch_axis: int) -> ServedTensor:
    dtype = np.dtype(info.dtype).name
    if dtype not in TRITON_TYPES:
        raise ServeError(f"'{info.name}' has type {info.type}, which Triton cannot carry")
    dims = [d if isinstance(d, int) and d > 0 else -1 for a, d in enumerate(info.shape) if a != batch_axis]
    return ServedTensor(info.name, dtype, dims, batch_axis)


def served_interface(session) -> ServedInterface:
    """The interface `lstmrt serve` exposes for `session`; ServeError (or the StreamError that
    `sess.stream()` raises) when the model cannot be served as streams."""
    pairs = session.stream().pairs
    model = session.model
    traced = batch_axes(model)
    batch_name = next((model.input(n).shape[a] for n, a in traced.items() if n not in pairs
                       and model.input(n).shape and isinstance(model.input(n).shape[a], str)), None)

    def axis_of(info, kind: str) -> int:
        if info.shape is None:
            raise ServeError(f"{kind} '{info.name}' has no declared shape; a served model needs its shapes")
        if info.name in traced:
            return traced[info.name]
        if batch_name is not None and batch_name in info.shape:
            return info.shape.index(batch_name)
        raise ServeError(f"cannot tell the batch axis of {kind} '{info.name}' (shape {info.shape}): give it the "
                         f"batch dimension's name ({batch_name!r}) that the streamed inputs use")

    if batch_name is None:
        raise ServeError("no streamed input has a named (dynamic) batch dimension; Triton batches sequences along it")
    inputs = [_served(i, axis_of(i, "input")) for i in model.inputs if i.name not in pairs]
    outputs = [_served(o, axis_of(o, "output")) for o in model.outputs if o.name not in pairs.values()]
    return ServedInterface(inputs, outputs, dict(pairs))
