"""Native implementations of ONNX ops, found by op type.

Each op is a *maker*: called once at load with the node, it checks the node's
attributes (raising UnsupportedModelError naming the node) and returns the
function that computes the node's outputs from its input arrays at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import helper

from ..errors import InputError, ModelError, UnsupportedModelError
from ..model import MEMORY_BYTES

Kernel = Callable[[list], list]
_MAKERS: dict[str, Callable[["NodeInfo"], Kernel]] = {}


def _decode(value):
    """String attributes arrive as bytes (or lists of bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


@dataclass
class NodeInfo:
    name: str
    op_type: str
    inputs: list          # names; "" for an omitted optional input
    outputs: list
    attrs: dict
    opset: int            # opset of the default domain
    constants: dict       # name -> array for values known at load
    options: dict         # session options (e.g. simd path)

    @classmethod
    def from_proto(cls, node, index, opset, constants, options):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: _decode(v) for k, v in attrs.items()}
        return cls(node.name or f"{node.op_type}_{index}", node.op_type, list(node.input),
                   list(node.output), attrs, opset, constants, options)

    def fail(self, message: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"node '{self.name}' ({self.op_type}): {message}", self.op_type, self.name)

    def invalid(self, message: str) -> ModelError:
        """The node contradicts itself (e.g. weights that disagree with hidden_size): no backend
        could run it, so `auto` must not fall back past it as if an op were missing."""
        return ModelError(f"node '{self.name}' ({self.op_type}) is inconsistent: {message}")

    def const_input(self, index: int):
        """A load-time constant input, or None if absent or computed at run time."""
        if index >= len(self.inputs) or not self.inputs[index]:
            return None
        return self.constants.get(self.inputs[index])


def op(*op_types: str):
    def register(maker):
        for name in op_types:
            _MAKERS[name] = maker
        return maker
    return register


def supported_ops() -> list[str]:
    return sorted(_MAKERS)


def make_kernel(node: NodeInfo) -> Kernel:
    maker = _MAKERS.get(node.op_type)
    if maker is None:
        raise UnsupportedModelError(
            f"node '{node.name}' uses op {node.op_type}, which the native backend does not support "
            f"(supported: {', '.join(supported_ops())})", node.op_type, node.name)
    return maker(node)


def optional_input(inputs: list, index: int):
    return inputs[index] if index < len(inputs) else None


def as_ints(array) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


def checked_shape(node: NodeInfo, shape, dtype) -> tuple:
    """A shape an op is about to allocate from values (ConstantOfShape, Expand, Tile, Range),
    refused before allocating when negative or larger than this machine's memory: with
    overcommit, numpy would take the allocation and die filling it."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InputError(f"node '{node.name}' ({node.op_type}): negative dimension in shape {list(shape)}")
    size = np.dtype(dtype).itemsize
    for d in shape:
        size *= d
    if size > MEMORY_BYTES:
        raise InputError(f"node '{node.name}' ({node.op_type}) would allocate {size / 2**30:,.0f} GiB "
                         f"(shape {list(shape)}, {np.dtype(dtype)}), more than this machine's "
                         f"{MEMORY_BYTES / 2**30:,.0f} GiB of memory")
    return shape


# registration happens on import
from . import control as _control, logic as _logic, math as _math, nn as _nn  # noqa: E402,F401
from . import recurrent as _recurrent, tensor as _tensor  # noqa: E402,F401
from . import layers as _layers  # noqa: E402,F401
